//! Grafana connector: answers the JSON-datasource protocol (simPod's
//! `simpod-json-datasource`, and the older simple-json routes) from the host's history.
//! It keeps no copy of the data: every answer comes from the host's downsampled reads,
//! so a request costs the same at any history length.

mod dates;
mod numbers;
mod query;
mod validate;

use serde_json::{Value, json};
use telemetry_plugin::log::{Level, write as log};
use telemetry_plugin::{Connector, ConnectorError, Rows, Start, StartContext};
use telemetry_plugin_http::{HttpHandler, Request, Response};

/// The OpenAPI document of the endpoints below, served at `/openapi.json`.
const OPENAPI: &str = include_str!("openapi.json");

/// Settings from the plugin's config.
#[derive(Clone, Debug)]
pub struct Settings {
    pub max_points_limit: u32,
    pub default_points: u32,
    pub authorization: Option<String>,
    pub cors_origin: Option<String>,
    pub step_series: Option<String>,
    /// Answer a `/query` without `targets` as the original node did (an object of every
    /// series) rather than `[]`, as the JSON datasource's OpenAPI document demands.
    pub original_untargeted_answer: bool,
}

fn parse_settings(config: &Value, context: &StartContext) -> Result<Settings, String> {
    let number = |key: &str, default: u32| -> Result<u32, String> {
        match config.get(key) {
            None => Ok(default),
            Some(value) => value
                .as_u64()
                .filter(|n| (1..=1_000_000).contains(n))
                .map(|n| n as u32)
                .ok_or_else(|| format!("`{key}` must be a whole number from 1 to 1000000, not {value}")),
        }
    };
    let text = |key: &str| -> Result<Option<String>, String> {
        match config.get(key) {
            None => Ok(None),
            Some(Value::String(text)) if !text.is_empty() => Ok(Some(text.clone())),
            Some(other) => Err(format!("`{key}` must be a non-empty string, not {other}")),
        }
    };
    let authorization = match (text("basic_auth")?, text("bearer_token")?) {
        (Some(_), Some(_)) => return Err("give either `basic_auth` or `bearer_token`, not both".into()),
        (Some(user_password), None) => {
            if !user_password.contains(':') {
                return Err("`basic_auth` must be \"user:password\"".into());
            }
            Some(format!("Basic {}", base64(user_password.as_bytes())))
        }
        (None, Some(token)) => Some(format!("Bearer {token}")),
        (None, None) => None,
    };
    if let Some(unknown) = config.as_object().and_then(|object| {
        object.keys().find(|key| {
            !["max_points_limit", "default_points", "basic_auth", "bearer_token", "cors_origin", "original_untargeted_answer"]
                .contains(&key.as_str())
        })
    }) {
        return Err(format!(
            "unknown key `{unknown}` (known: max_points_limit, default_points, basic_auth, bearer_token, cors_origin, original_untargeted_answer)"
        ));
    }
    Ok(Settings {
        max_points_limit: number("max_points_limit", 10_000)?,
        default_points: number("default_points", 1000)?,
        authorization,
        cors_origin: text("cors_origin")?,
        step_series: context.step_series.clone(),
        original_untargeted_answer: match config.get("original_untargeted_answer") {
            None => false,
            Some(Value::Bool(flag)) => *flag,
            Some(other) => return Err(format!("`original_untargeted_answer` must be true or false, not {other}")),
        },
    })
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let triple = (u32::from(chunk[0]) << 16) | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8) | u32::from(*chunk.get(2).unwrap_or(&0));
        for index in 0..4 {
            if index <= chunk.len() {
                out.push(ALPHABET[(triple >> (18 - 6 * index) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

struct Grafana {
    settings: Settings,
}

impl Connector for Grafana {
    /// Checked key by key (it keeps its own messages).
    type Config = Value;

    fn start(start: Start<Value>) -> Result<Grafana, ConnectorError> {
        let settings = parse_settings(&start.config, &start.context).map_err(ConnectorError::InvalidConfig)?;
        // Debug: every handler instance of the pool starts too, and the host already logs
        // where the plugin is served.
        log(Level::Debug, &format!("serving {} series", start.context.series.len()));
        Ok(Grafana { settings })
    }

    fn update(&mut self, _batch: Rows) -> Result<(), ConnectorError> {
        // Nothing to keep: requests read the host's history directly.
        Ok(())
    }
}

/// An answer before CORS headers are added.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(status: u16, value: &Value) -> Answer {
        Answer::json_text(status, value.to_string())
    }

    pub fn json_text(status: u16, text: String) -> Answer {
        Answer { status, headers: vec![("content-type".into(), "application/json".into())], body: text.into_bytes() }
    }

    /// The error shape the JSON datasource shows in the panel: `message` and `error`.
    pub fn error(status: u16, code: &str, message: &str) -> Answer {
        Answer::json(status, &json!({ "message": message, "error": { "code": code, "message": message } }))
    }
}

/// Endpoints whose request body is required.
const BODY_REQUIRED: &[&str] = &["/query", "/variable", "/tag-values"];

/// The routes, with the methods each accepts.
const ROUTES: &[(&str, &[&str])] = &[
    ("/", &["GET", "HEAD"]),
    ("/metrics", &["POST"]),
    ("/metric-payload-options", &["POST"]),
    ("/query", &["POST"]),
    ("/variable", &["POST"]),
    ("/tag-keys", &["POST"]),
    ("/tag-values", &["POST"]),
    ("/search", &["POST"]),
    ("/annotations", &["POST"]),
    ("/openapi.json", &["GET"]),
];

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
}

/// The path with runs of slashes made one: a datasource URL ending in `/` asks for `//query`.
fn normalised_path(target: &str) -> String {
    let mut path = String::with_capacity(target.len());
    for character in target.chars() {
        if !(character == '/' && path.ends_with('/')) {
            path.push(character);
        }
    }
    path
}

/// `Authorization` as given, its scheme compared case-insensitively (RFC 9110 11.1).
fn authorized(given: Option<&str>, expected: &str) -> bool {
    let split = |value: &str| value.split_once(' ').map(|(scheme, rest)| (scheme.to_string(), rest.trim().to_string()));
    match (given.and_then(split), split(expected)) {
        (Some((scheme, credentials)), Some((expected_scheme, expected_credentials))) => {
            scheme.eq_ignore_ascii_case(&expected_scheme) && credentials == expected_credentials
        }
        _ => false,
    }
}

fn route(request: &Request, settings: &Settings) -> Answer {
    let path = normalised_path(&request.target);
    let path = path.as_str();
    let Some((_, methods)) = ROUTES.iter().find(|(route, _)| *route == path) else {
        return Answer::error(404, "not_found", &format!("no endpoint {path}; see /openapi.json"));
    };
    if request.method == "OPTIONS" {
        let mut answer =
            Answer { status: 204, headers: vec![("allow".into(), format!("{}, OPTIONS", methods.join(", ")))], body: Vec::new() };
        if settings.cors_origin.is_some() {
            answer.headers.push(("access-control-allow-methods".into(), format!("{}, OPTIONS", methods.join(", "))));
            answer.headers.push(("access-control-allow-headers".into(), "accept, content-type, authorization".into()));
            answer.headers.push(("access-control-max-age".into(), "600".into()));
        }
        return answer;
    }
    if !methods.contains(&request.method.as_str()) {
        let mut answer =
            Answer::error(405, "method_not_allowed", &format!("{path} accepts {}, not {}", methods.join(", "), request.method));
        answer.headers.push(("allow".into(), methods.join(", ")));
        return answer;
    }
    if let Some(expected) = &settings.authorization
        && !authorized(header(request, "authorization"), expected)
    {
        let mut answer = Answer::error(401, "unauthorized", "missing or wrong credentials");
        let scheme = if expected.starts_with("Basic") { "Basic realm=\"telemetry-host\"" } else { "Bearer" };
        answer.headers.push(("www-authenticate".into(), scheme.into()));
        return answer;
    }
    if path == "/" {
        return Answer {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: if request.method == "HEAD" { Vec::new() } else { b"OK".to_vec() },
        };
    }
    if path == "/openapi.json" {
        return Answer::json_text(200, OPENAPI.to_string());
    }
    // Bodies may be absent (Grafana sends none for some option lookups), except where the
    // OpenAPI document requires one.
    let absent = request.body.is_empty();
    if absent && BODY_REQUIRED.contains(&path) {
        return Answer::error(400, "bad_request", &format!("{path} needs a JSON object as its body"));
    }
    let body: Value = if absent {
        json!({})
    } else {
        match serde_json::from_slice(&request.body) {
            Ok(body) => body,
            Err(error) => return Answer::error(400, "bad_json", &format!("the request body is not valid JSON: {error}")),
        }
    };
    if !body.is_object() {
        return Answer::error(400, "bad_request", "the request body must be a JSON object");
    }
    if let Err(answer) = validate::request(path, &body).and_then(|()| if absent { Ok(()) } else { validate::required(path, &body) }) {
        return answer;
    }
    if path == "/query" {
        return match query::query(&body, settings) {
            Ok(text) => Answer::json_text(200, text),
            Err(answer) => answer,
        };
    }
    let result = match path {
        "/metrics" => Ok(query::metrics(settings)),
        "/metric-payload-options" => Ok(query::payload_options(&body, settings)),
        "/variable" => query::variable(&body),
        "/tag-keys" => Ok(json!([{ "type": "string", "text": query::SERIES_KEY }])),
        "/tag-values" => Ok(query::tag_values(&body)),
        "/search" => query::search(&body),
        "/annotations" => Ok(json!([])),
        _ => unreachable!("every route is handled"),
    };
    match result {
        Ok(value) => Answer::json(200, &value),
        Err(answer) => answer,
    }
}

impl HttpHandler for Grafana {
    fn handle(&mut self, request: Request) -> Response {
        let settings = &self.settings;
        let mut answer = route(&request, settings);
        if let Some(origin) = &settings.cors_origin {
            answer.headers.push(("access-control-allow-origin".into(), origin.clone()));
            if origin != "*" {
                answer.headers.push(("vary".into(), "origin".into()));
            }
        }
        Response { status: answer.status, headers: answer.headers, body: answer.body }
    }
}

telemetry_plugin_http::export_http_connector!(Grafana);
