//! Request fields checked against the OpenAPI document: a field of the wrong type is a 400
//! that names it, never silently ignored. Unknown fields are ignored.

use serde_json::Value;

use crate::Answer;

#[derive(Clone, Copy)]
pub enum Kind {
    String,
    Number,
    Bool,
    Object,
    Array,
    /// An RFC 3339 string.
    Date,
}

impl Kind {
    fn accepts(self, value: &Value) -> bool {
        match self {
            Kind::String => value.is_string(),
            Kind::Number => value.is_number(),
            Kind::Bool => value.is_boolean(),
            Kind::Object => value.is_object(),
            Kind::Array => value.is_array(),
            Kind::Date => value.is_string(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::String => "a string",
            Kind::Number => "a number",
            Kind::Bool => "a boolean",
            Kind::Object => "an object",
            Kind::Array => "an array",
            Kind::Date => "an RFC 3339 date",
        }
    }
}

/// `object[key]`, which must be of `kind` if present (and be present if `required`);
/// `path` names the field in the error.
pub fn field<'a>(object: &'a Value, key: &str, path: &str, kind: Kind, required: bool) -> Result<Option<&'a Value>, Answer> {
    match object.get(key) {
        None if required => Err(Answer::error(400, "bad_request", &format!("`{path}` is required"))),
        None => Ok(None),
        Some(value) if kind.accepts(value) => Ok(Some(value)),
        Some(value) => Err(Answer::error(400, "bad_request", &format!("`{path}` must be {}, not {}", kind.name(), short(value)))),
    }
}

/// `object[key]`, which must be one of `allowed` if present.
pub fn choice<'a>(object: &'a Value, key: &str, path: &str, allowed: &[&str]) -> Result<Option<&'a str>, Answer> {
    match field(object, key, path, Kind::String, false)?.and_then(Value::as_str) {
        Some(value) if !allowed.contains(&value) => {
            Err(Answer::error(400, "bad_request", &format!("`{path}` must be one of {}, not {value:?}", allowed.join(", "))))
        }
        other => Ok(other),
    }
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 60 { format!("{}...", text.chars().take(60).collect::<String>()) } else { text }
}

/// Checks the fields of each endpoint's body (the body is already known to be an object).
pub fn request(path: &str, body: &Value) -> Result<(), Answer> {
    match path {
        "/metrics" => {
            field(body, "metric", "metric", Kind::String, false)?;
            field(body, "payload", "payload", Kind::Object, false)?;
        }
        "/metric-payload-options" => {
            field(body, "metric", "metric", Kind::String, false)?;
            field(body, "payload", "payload", Kind::Object, false)?;
            field(body, "name", "name", Kind::String, false)?;
        }
        "/query" => {
            range(body)?;
            if let Some(raw) = field(body, "rangeRaw", "rangeRaw", Kind::Object, false)? {
                raw_time_frame(raw, "rangeRaw")?;
            }
            if let Some(panel) = body.get("panelId").filter(|panel| !panel.is_string() && !panel.is_number()) {
                return Err(Answer::error(400, "bad_request", &format!("`panelId` must be a string or a number, not {}", short(panel))));
            }
            field(body, "interval", "interval", Kind::String, false)?;
            field(body, "scopedVars", "scopedVars", Kind::Object, false)?;
            field(body, "maxDataPoints", "maxDataPoints", Kind::Number, false)?;
            field(body, "intervalMs", "intervalMs", Kind::Number, false)?;
            for (index, filter) in
                field(body, "filters", "filters", Kind::Array, false)?.and_then(Value::as_array).into_iter().flatten().enumerate()
            {
                if !filter.is_object() {
                    return Err(Answer::error(400, "bad_request", &format!("`filters[{index}]` must be an object")));
                }
                for key in ["key", "operator", "value"] {
                    field(filter, key, &format!("filters[{index}].{key}"), Kind::String, false)?;
                }
            }
            if let Some(targets) = field(body, "targets", "targets", Kind::Array, false)? {
                for (index, target) in targets.as_array().into_iter().flatten().enumerate() {
                    let at = |key: &str| format!("targets[{index}].{key}");
                    if !target.is_object() {
                        return Err(Answer::error(400, "bad_request", &format!("`targets[{index}]` must be an object")));
                    }
                    field(target, "target", &at("target"), Kind::String, true)?;
                    field(target, "refId", &at("refId"), Kind::String, false)?;
                    field(target, "hide", &at("hide"), Kind::Bool, false)?;
                    field(target, "type", &at("type"), Kind::String, false)?;
                    if let Some(payload) = field(target, "payload", &at("payload"), Kind::Object, false)? {
                        choice(payload, "x_axis", &at("payload.x_axis"), &["time", "step"])?;
                        choice(payload, "format", &at("payload.format"), &["time_series", "table"])?;
                    }
                }
            }
        }
        "/variable" => {
            if let Some(payload) = field(body, "payload", "payload", Kind::Object, false)? {
                field(payload, "target", "payload.target", Kind::String, true)?;
                field(payload, "variables", "payload.variables", Kind::Object, false)?;
            }
            range(body)?;
        }
        "/tag-values" => {
            field(body, "key", "key", Kind::String, false)?;
        }
        "/search" => {
            field(body, "target", "target", Kind::String, false)?;
        }
        _ => {}
    }
    Ok(())
}

/// Fields a present body must have.
pub fn required(path: &str, body: &Value) -> Result<(), Answer> {
    let keys: &[(&str, Kind)] = match path {
        "/metric-payload-options" => &[("metric", Kind::String), ("payload", Kind::Object), ("name", Kind::String)],
        "/tag-values" => &[("key", Kind::String)],
        _ => &[],
    };
    for (key, kind) in keys {
        field(body, key, key, *kind, true)?;
    }
    Ok(())
}

fn range(body: &Value) -> Result<(), Answer> {
    if let Some(range) = field(body, "range", "range", Kind::Object, false)? {
        for key in ["from", "to"] {
            if let Some(value) = field(range, key, &format!("range.{key}"), Kind::Date, false)? {
                crate::dates::epoch_ms(value).map_err(|message| Answer::error(400, "bad_range", &format!("range.{key}: {message}")))?;
            }
        }
        if let Some(raw) = field(range, "raw", "range.raw", Kind::Object, false)? {
            raw_time_frame(raw, "range.raw")?;
        }
    }
    Ok(())
}

/// Grafana's relative range as typed (`now-1h`): two strings.
fn raw_time_frame(raw: &Value, path: &str) -> Result<(), Answer> {
    for key in ["from", "to"] {
        field(raw, key, &format!("{path}.{key}"), Kind::String, false)?;
    }
    Ok(())
}
