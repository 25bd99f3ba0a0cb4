//! The W&B connector's configuration, checked once at `start`.

use serde_json::Value;

use telemetry_plugin::StartContext;

#[derive(Debug, Clone)]
pub struct Settings {
    pub base_url: String,
    pub project: String,
    pub entity: Option<String>,
    pub group: Option<String>,
    /// The series whose value becomes `_step`; `None`: the row index.
    pub step_series: Option<String>,
    /// Series sent, with their column index.
    pub series: Vec<(String, usize)>,
    /// The run's config, already in W&B's `{"key": {"value": v}}` form.
    pub run_config: Value,
    pub transmit_interval_s: f64,
    pub heartbeat_s: f64,
    pub max_queue_rows: usize,
    pub stop_timeout_s: f64,
    pub request_timeout_s: f64,
    /// Continue the run recorded in the data directory, if any.
    pub resume: bool,
}

const KEYS: &[&str] = &[
    "project",
    "entity",
    "group",
    "base_url",
    "step",
    "series",
    "run_config",
    "transmit_interval_s",
    "heartbeat_s",
    "max_queue_rows",
    "stop_timeout_s",
    "request_timeout_s",
    "save_dir",
    "resume",
];

pub fn parse(config: &Value, context: &StartContext) -> Result<Settings, String> {
    let object = config.as_object().cloned().unwrap_or_default();
    if let Some(unknown) = object.keys().find(|key| !KEYS.contains(&key.as_str())) {
        return Err(format!("unknown key `{unknown}` (known: {})", KEYS.join(", ")));
    }
    let text = |key: &str| -> Result<Option<String>, String> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if !text.trim().is_empty() => Ok(Some(text.trim().to_string())),
            Some(other) => Err(format!("`{key}` must be a non-empty string, not {other}")),
        }
    };
    let number = |key: &str, default: f64, min: f64| -> Result<f64, String> {
        match object.get(key) {
            None => Ok(default),
            Some(value) => value
                .as_f64()
                .filter(|n| n.is_finite() && *n >= min)
                .ok_or_else(|| format!("`{key}` must be a number >= {min}, not {value}")),
        }
    };
    let project = text("project")?.ok_or("`project` is missing: name the W&B project to log to")?;
    let base_url = text("base_url")?.unwrap_or_else(|| "https://api.wandb.ai".into()).trim_end_matches('/').to_string();
    if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
        return Err(format!("`base_url` = {base_url:?} must start with https:// or http://"));
    }
    let step_series = match text("step")?.as_deref() {
        None | Some("row") => None,
        Some("step_key") => {
            Some(context.step_series.clone().ok_or("`step = \"step_key\"` needs telemetry.step_key in the host configuration")?)
        }
        Some(other) => return Err(format!("`step` must be \"row\" or \"step_key\", not {other:?}")),
    };
    let series = match object.get("series") {
        None => context.series.iter().cloned().enumerate().map(|(index, name)| (name, index)).collect(),
        Some(Value::Array(names)) => names
            .iter()
            .map(|name| {
                let name = name.as_str().ok_or("`series` must list series names")?;
                let index = context.series.iter().position(|series| series == name).ok_or_else(|| {
                    format!("`series` names `{name}`, which is not a series; the series are: {}", context.series.join(", "))
                })?;
                Ok((name.to_string(), index))
            })
            .collect::<Result<Vec<_>, String>>()?,
        Some(other) => return Err(format!("`series` must be a list of series names, not {other}")),
    };
    let plain_config = match object.get("run_config") {
        Some(Value::Object(config)) => Value::Object(config.clone()),
        Some(other) => return Err(format!("`run_config` must be a table, not {other}")),
        None => serde_json::from_str(&context.host_config_json).unwrap_or(Value::Null),
    };
    let run_config = Value::Object(
        plain_config
            .as_object()
            .map(|config| config.iter().map(|(key, value)| (key.clone(), serde_json::json!({ "value": value }))).collect())
            .unwrap_or_default(),
    );
    Ok(Settings {
        base_url,
        project,
        entity: text("entity")?,
        group: text("group")?,
        step_series,
        series,
        run_config,
        transmit_interval_s: number("transmit_interval_s", 15.0, 0.0)?,
        heartbeat_s: number("heartbeat_s", 30.0, 1.0)?,
        max_queue_rows: number("max_queue_rows", 100_000.0, 1.0)? as usize,
        stop_timeout_s: number("stop_timeout_s", 30.0, 0.0)?,
        request_timeout_s: number("request_timeout_s", 20.0, 0.1)?,
        resume: match object.get("resume") {
            None => true,
            Some(Value::Bool(resume)) => *resume,
            Some(other) => return Err(format!("`resume` must be true or false, not {other}")),
        },
    })
}
