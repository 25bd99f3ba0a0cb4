//! The `outgoing-http` import: the host performs a plugin's HTTP requests, only to the
//! URLs its manifest grants, and attaches the granted credential itself so the secret
//! never enters the plugin's memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use reqwest::Url;
use serde::Deserialize;

use crate::bindings::http_types::{Request, Response};
use crate::bindings::outgoing_http::{Host, SendError};
use crate::capabilities::secrets::{Scrubber, Secrets};

/// `[[grants.outbound]]`: one scheme, host (or `*.domain`) and port the plugin may call.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutboundGrant {
    /// `scheme://host[:port]`; the port defaults to the scheme's.
    pub url: String,
    /// A credential the host adds to every request to this URL.
    #[serde(default)]
    pub credential: Option<Credential>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// The name of a secret the host configuration says how to read.
    pub secret: String,
    pub scheme: CredentialScheme,
    /// For `basic`: the user name (W&B uses `api`).
    #[serde(default)]
    pub username: Option<String>,
    /// For `header`: the header that carries the secret.
    #[serde(default)]
    pub header: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CredentialScheme {
    Basic,
    Bearer,
    Header,
}

/// A parsed grant pattern.
#[derive(Debug, Clone, PartialEq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl OutboundGrant {
    pub fn check(&self) -> Result<()> {
        let origin = parse_pattern(&self.url).with_context(|| format!("grants.outbound url `{}`", self.url))?;
        if let Some(credential) = &self.credential {
            // A secret sent in clear text over the network is a secret given away.
            let loopback = origin.host == "localhost"
                || origin.host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if origin.scheme == "http" && !loopback {
                bail!(
                    "grants.outbound url `{}` carries a credential over plain http: credentials travel only over https \
                     (plain http is allowed to this machine, 127.0.0.1 or localhost, for local stand-ins); use https://{}",
                    self.url,
                    origin.host
                );
            }
            match credential.scheme {
                CredentialScheme::Header if credential.header.is_none() => {
                    bail!("grants.outbound credential with scheme `header` needs `header = \"Header-Name\"`")
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl Origin {
    fn matches(&self, url: &Url) -> bool {
        let pattern = self;
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        let host_matches = match pattern.host.strip_prefix("*.") {
            Some(domain) => host.len() > domain.len() + 1 && host.ends_with(&format!(".{domain}")),
            None => host == pattern.host,
        };
        url.scheme() == pattern.scheme && port == pattern.port && host_matches
    }
}

fn parse_pattern(pattern: &str) -> Result<Origin> {
    let (scheme, rest) = pattern.split_once("://").context("needs a scheme, as in https://host")?;
    anyhow::ensure!(scheme == "http" || scheme == "https", "scheme must be http or https");
    let rest = rest.trim_end_matches('/');
    anyhow::ensure!(!rest.contains('/'), "must be scheme://host[:port] without a path");
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || rest.starts_with('[') => {
            (host, port.parse::<u16>().with_context(|| format!("port `{port}` is not a number"))?)
        }
        _ => (rest, if scheme == "https" { 443 } else { 80 }),
    };
    anyhow::ensure!(!host.is_empty(), "host is empty");
    let bare = host.strip_prefix("*.").unwrap_or(host);
    anyhow::ensure!(!bare.contains('*'), "a wildcard may only be a leading `*.`");
    Ok(Origin { scheme: scheme.to_string(), host: host.to_ascii_lowercase(), port })
}

/// One request a plugin sent and what it got back, as the recording stand-in keeps it.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub request: Request,
    pub response: Result<Response, String>,
}

/// Answers requests in place of the network, for running a plugin alone.
pub type Responder = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Where granted requests go.
#[derive(Clone)]
pub enum Transport {
    Network(reqwest::blocking::Client),
    /// Requests are recorded and answered by `responder` (by default `200 {}`).
    Recording {
        exchanges: Arc<Mutex<Vec<Exchange>>>,
        responder: Responder,
    },
}

impl Transport {
    pub fn network() -> Result<Transport> {
        let client = reqwest::blocking::Client::builder()
            .user_agent(concat!("telemetry-host/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Transport::Network(client))
    }

    pub fn recording(exchanges: Arc<Mutex<Vec<Exchange>>>) -> Transport {
        let responder: Responder =
            Arc::new(|_| Response { status: 200, headers: vec![("content-type".into(), "application/json".into())], body: b"{}".to_vec() });
        Transport::Recording { exchanges, responder }
    }
}

/// The capability as one plugin's store holds it.
pub struct OutgoingHttp {
    plugin: Arc<str>,
    /// Each grant with its pattern, parsed once.
    grants: Vec<(Origin, OutboundGrant)>,
    secrets: Secrets,
    transport: Transport,
    /// When the current call into the plugin must end; requests are cut short to keep it.
    pub call_deadline: Option<Instant>,
    pub denied: Arc<AtomicU64>,
    /// The largest response body read for the plugin: it is read in pieces and refused past
    /// this, so a huge answer never sits whole in the host.
    pub max_response_bytes: usize,
    /// The plugin's secrets, as they travel, hidden from what it is told and logs.
    scrubber: Scrubber,
}

impl OutgoingHttp {
    pub fn new(plugin: &str, grants: Vec<OutboundGrant>, secrets: Secrets, transport: Transport) -> OutgoingHttp {
        // Manifests are checked at load, so every pattern parses.
        let grants: Vec<(Origin, OutboundGrant)> =
            grants.into_iter().filter_map(|grant| Some((parse_pattern(&grant.url).ok()?, grant))).collect();
        let forms = grants.iter().filter_map(|(_, grant)| grant.credential.as_ref()).flat_map(|credential| {
            let secret = secrets.get(&credential.secret).map(str::to_string);
            let sent = secret.as_deref().map(|secret| credential.header(secret).1);
            let token = sent.map(|value| value.rsplit(' ').next().unwrap_or_default().to_string());
            [secret, token].into_iter().flatten().map(|form| (form, credential.secret.clone()))
        });
        let scrubber = Scrubber::new(forms.collect::<Vec<_>>());
        OutgoingHttp {
            plugin: plugin.into(),
            grants,
            secrets,
            transport,
            call_deadline: None,
            denied: Arc::default(),
            max_response_bytes: usize::MAX,
            scrubber,
        }
    }

    pub fn scrubber(&self) -> Scrubber {
        self.scrubber.clone()
    }

    fn deny(&self, url: &Url) -> SendError {
        self.denied.fetch_add(1, Ordering::Relaxed);
        let origin = format!("{}://{}:{}", url.scheme(), url.host_str().unwrap_or(""), url.port_or_known_default().unwrap_or(0));
        let granted: Vec<&str> = self.grants.iter().map(|(_, grant)| grant.url.as_str()).collect();
        let message = if granted.is_empty() {
            format!("plugin `{}` may not call {origin}: its manifest grants no outbound host", self.plugin)
        } else {
            format!("plugin `{}` may not call {origin}: its manifest grants only {}", self.plugin, granted.join(", "))
        };
        tracing::warn!(plugin = &*self.plugin, "denied outgoing request: {message}");
        SendError::Denied(message)
    }

    fn credential_header(&self, credential: &Credential) -> Option<(String, String)> {
        Some(credential.header(self.secrets.get(&credential.secret)?))
    }
}

impl Credential {
    /// The header that carries `secret`, as sent.
    fn header(&self, secret: &str) -> (String, String) {
        match self.scheme {
            CredentialScheme::Basic => {
                let user = self.username.as_deref().unwrap_or("");
                let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
                ("authorization".into(), format!("Basic {token}"))
            }
            CredentialScheme::Bearer => ("authorization".into(), format!("Bearer {secret}")),
            CredentialScheme::Header => (self.header.clone().unwrap_or_default().to_ascii_lowercase(), secret.to_string()),
        }
    }
}

impl Host for OutgoingHttp {
    fn send(&mut self, mut request: Request, timeout_ms: u32) -> Result<Response, SendError> {
        let url = Url::parse(&request.target)
            .map_err(|error| SendError::InvalidRequest(format!("`{}` is not an absolute URL: {error}", request.target)))?;
        let Some((_, grant)) = self.grants.iter().find(|(origin, _)| origin.matches(&url)) else {
            return Err(self.deny(&url));
        };
        if let Some((name, value)) = grant.credential.as_ref().and_then(|credential| self.credential_header(credential)) {
            request.headers.retain(|(header, _)| !header.eq_ignore_ascii_case(&name));
            request.headers.push((name, value));
        }
        let mut timeout = Duration::from_millis(u64::from(timeout_ms.max(1)));
        if let Some(deadline) = self.call_deadline {
            // Leave the plugin a little time to handle the answer within its call limit.
            let left = deadline.saturating_duration_since(Instant::now()).mul_f64(0.9);
            timeout = timeout.min(left);
        }
        let outcome = match &self.transport {
            Transport::Network(client) => send_over_network(client, request, url, timeout, self.max_response_bytes),
            Transport::Recording { exchanges, responder } => {
                let response = responder(&request);
                let mut recorded = request;
                recorded.headers.retain(|(name, _)| !name.eq_ignore_ascii_case("authorization"));
                exchanges.lock().expect("recording lock").push(Exchange { request: recorded, response: Ok(response.clone()) });
                Ok(response)
            }
        };
        // The response itself is the plugin's to read; only the host's own words are scrubbed.
        outcome.map_err(|error| match error {
            SendError::Connection(message) => SendError::Connection(self.scrubber.scrub(message)),
            SendError::InvalidRequest(message) => SendError::InvalidRequest(self.scrubber.scrub(message)),
            other => other,
        })
    }
}

fn send_over_network(
    client: &reqwest::blocking::Client,
    request: Request,
    url: Url,
    timeout: Duration,
    max_body: usize,
) -> Result<Response, SendError> {
    if timeout.is_zero() {
        return Err(SendError::Timeout);
    }
    let method = reqwest::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| SendError::InvalidRequest(format!("`{}` is not an HTTP method", request.method)))?;
    let mut builder = client.request(method, url).timeout(timeout).body(request.body);
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    off_the_async_worker(|| {
        let response = builder.send().map_err(|error| classify(&error))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect();
        let mut body = Vec::new();
        let mut reader = std::io::Read::take(response, max_body.saturating_add(1) as u64);
        std::io::Read::read_to_end(&mut reader, &mut body).map_err(|error| classify_read(&error))?;
        if body.len() > max_body {
            return Err(SendError::Connection(format!(
                "the response body is larger than {max_body} bytes, the most this plugin may receive (half its limits.memory_mb); the rest was not read"
            )));
        }
        Ok(Response { status, headers, body })
    })
}

/// Runs `wait`, a wait for the network, where reqwest's blocking client may wait: on a
/// worker of the host's HTTP runtime (where the handler instances of a pool answer) the
/// tasks queued behind it move to another worker; on a plugin's own runtime (every call
/// runs inside one) it waits on a thread of its own, as blocking is not allowed there.
fn off_the_async_worker<R: Send>(wait: impl FnOnce() -> R + Send) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(wait),
        Ok(_) => std::thread::scope(|scope| scope.spawn(wait).join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))),
        Err(_) => wait(),
    }
}

/// An error reading the body: reqwest's own error (a timeout among them) inside an I/O one.
fn classify_read(error: &std::io::Error) -> SendError {
    match error.get_ref().and_then(|inner| inner.downcast_ref::<reqwest::Error>()) {
        Some(error) => classify(error),
        None if error.kind() == std::io::ErrorKind::TimedOut => SendError::Timeout,
        None => SendError::Connection(error.to_string()),
    }
}

fn classify(error: &reqwest::Error) -> SendError {
    if error.is_timeout() {
        SendError::Timeout
    } else if error.is_builder() {
        SendError::InvalidRequest(error.to_string())
    } else {
        // The error chain says why (refused, reset, DNS); the URL is the plugin's own.
        let mut message = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        SendError::Connection(message)
    }
}

/// Links the `outgoing-http` import, reading the capability out of the store's data with `get`.
pub fn add_to_linker<T: 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> &mut OutgoingHttp,
) -> wasmtime::Result<()> {
    crate::bindings::outgoing_http::add_to_linker::<T, wasmtime::component::HasSelf<OutgoingHttp>>(linker, get)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(url: &str) -> OutboundGrant {
        OutboundGrant { url: url.into(), credential: None }
    }

    impl OutboundGrant {
        fn matches(&self, url: &Url) -> bool {
            parse_pattern(&self.url).is_ok_and(|origin| origin.matches(url))
        }
    }

    #[test]
    fn grants_match_scheme_host_and_port() {
        let url = |text: &str| Url::parse(text).unwrap();
        assert!(grant("https://api.wandb.ai").matches(&url("https://api.wandb.ai/graphql")));
        assert!(grant("https://api.wandb.ai:443").matches(&url("https://API.wandb.ai/x")));
        assert!(!grant("https://api.wandb.ai").matches(&url("http://api.wandb.ai/x")));
        assert!(!grant("https://api.wandb.ai").matches(&url("https://api.wandb.ai:8443/x")));
        assert!(!grant("https://api.wandb.ai").matches(&url("https://api.wandb.ai.evil.com/x")));
        assert!(grant("https://*.example.com").matches(&url("https://a.b.example.com/")));
        assert!(!grant("https://*.example.com").matches(&url("https://example.com/")));
        assert!(!grant("https://*.example.com").matches(&url("https://badexample.com/")));
        assert!(grant("http://127.0.0.1:9000").matches(&url("http://127.0.0.1:9000/files")));
    }

    #[test]
    fn credentials_travel_only_over_https_or_to_this_machine() {
        let with_credential = |url: &str| OutboundGrant {
            url: url.into(),
            credential: Some(Credential { secret: "key".into(), scheme: CredentialScheme::Bearer, username: None, header: None }),
        };
        for allowed in ["https://api.wandb.ai", "http://127.0.0.1:9000", "http://localhost:8080", "http://[::1]:80"] {
            assert!(with_credential(allowed).check().is_ok(), "{allowed}");
        }
        for refused in ["http://api.wandb.ai", "http://10.0.0.5:8080", "http://*.example.com"] {
            let error = format!("{:#}", with_credential(refused).check().unwrap_err());
            assert!(error.contains(refused) && error.contains("only over https"), "{error}");
        }
        assert!(grant("http://api.example.com").check().is_ok(), "plain http without a credential is the operator's choice");
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for pattern in ["api.wandb.ai", "ftp://x", "https://x/path", "https://a*.b", "https://x:port"] {
            assert!(grant(pattern).check().is_err(), "{pattern}");
        }
    }
}
