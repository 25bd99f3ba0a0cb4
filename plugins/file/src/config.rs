//! The file connector's configuration, checked once at `start`.

use std::path::PathBuf;

use serde_json::Value;

/// Where the granted data directory appears inside the plugin.
pub const DATA_DIR: &str = "/data";

#[derive(Debug, Clone)]
pub struct Settings {
    /// The folder of the files, inside the data directory.
    pub dir: PathBuf,
    /// Seconds between rewrites of telemetry.json; 0 rewrites it only at `stop`.
    pub json_interval_s: f64,
    pub fsync: bool,
    /// Write NaN as `null` in telemetry.json (the default `NaN` is what Python's json
    /// module writes and reads, as the original did).
    pub nan_as_null: bool,
    pub plot: Option<PlotSettings>,
}

#[derive(Debug, Clone)]
pub struct PlotSettings {
    pub xkey: String,
    pub ykeys: Vec<String>,
    pub moving_average: usize,
    pub width: u32,
    pub height: u32,
    pub min_interval_s: f64,
}

const KEYS: &[&str] = &["path", "save_dir", "json_interval_s", "fsync", "nan", "plot", "moving_average"];
const PLOT_KEYS: &[&str] = &["xkey", "ykeys", "moving_average", "width", "height", "min_interval_s"];

fn check_keys(object: &serde_json::Map<String, Value>, known: &[&str], section: &str) -> Result<(), String> {
    match object.keys().find(|key| !known.contains(&key.as_str())) {
        Some(key) => Err(format!("unknown key `{section}{key}` (known: {})", known.join(", "))),
        None => Ok(()),
    }
}

fn relative_folder(value: &Value, key: &str) -> Result<PathBuf, String> {
    let text = value.as_str().ok_or_else(|| format!("`{key}` must be a string"))?;
    let path = PathBuf::from(text);
    let inside = path.strip_prefix(DATA_DIR).map(PathBuf::from).unwrap_or_else(|_| path.clone());
    if inside.is_absolute() || inside.components().any(|part| matches!(part, std::path::Component::ParentDir)) {
        return Err(format!(
            "`{key}` = {text:?} must be a folder inside the plugin's data directory (relative, or under {DATA_DIR}); grant the directory in plugin.toml instead"
        ));
    }
    Ok(inside)
}

fn positive_number(value: Option<&Value>, key: &str, default: f64) -> Result<f64, String> {
    match value {
        None => Ok(default),
        Some(value) => {
            value.as_f64().filter(|n| n.is_finite() && *n >= 0.0).ok_or_else(|| format!("`{key}` must be a number >= 0, not {value}"))
        }
    }
}

pub fn parse(config: &Value, series: &[String]) -> Result<Settings, String> {
    let object = config.as_object().cloned().unwrap_or_default();
    check_keys(&object, KEYS, "")?;
    let mut dir = PathBuf::from(DATA_DIR);
    for key in ["path", "save_dir"] {
        if let Some(value) = object.get(key) {
            let folder = relative_folder(value, key)?;
            dir.extend(folder.components().filter(|part| !matches!(part, std::path::Component::CurDir)));
        }
    }
    let nan_as_null = match object.get("nan").map(|value| value.as_str()) {
        None | Some(Some("NaN")) => false,
        Some(Some("null")) => true,
        Some(_) => return Err("`nan` must be \"NaN\" or \"null\"".into()),
    };
    let default_average = object.get("moving_average").and_then(Value::as_u64).unwrap_or(20);
    let plot = match object.get("plot") {
        None | Some(Value::Bool(false)) | Some(Value::Null) => None,
        Some(Value::Object(plot)) => Some(parse_plot(plot, series, default_average)?),
        Some(other) => return Err(format!("`plot` must be a table with xkey and ykeys, not {other}")),
    };
    Ok(Settings {
        dir,
        json_interval_s: positive_number(object.get("json_interval_s"), "json_interval_s", 60.0)?,
        fsync: object.get("fsync").and_then(Value::as_bool).unwrap_or(true),
        nan_as_null,
        plot,
    })
}

fn parse_plot(plot: &serde_json::Map<String, Value>, series: &[String], default_average: u64) -> Result<PlotSettings, String> {
    check_keys(plot, PLOT_KEYS, "plot.")?;
    let series_name = |value: &Value, key: &str| -> Result<String, String> {
        let name = value.as_str().ok_or_else(|| format!("`{key}` must be a series name"))?;
        if series.iter().any(|known| known == name) {
            Ok(name.to_string())
        } else {
            Err(format!("`{key}` names `{name}`, which is not a series; the series are: {}", series.join(", ")))
        }
    };
    let xkey = series_name(plot.get("xkey").ok_or("`plot.xkey` is missing")?, "plot.xkey")?;
    let ykeys = plot.get("ykeys").and_then(Value::as_array).ok_or("`plot.ykeys` is missing or not a list")?;
    if ykeys.is_empty() {
        return Err("`plot.ykeys` is empty".into());
    }
    let ykeys = ykeys.iter().map(|key| series_name(key, "plot.ykeys")).collect::<Result<Vec<_>, _>>()?;
    let size = |key: &str, default: u64| -> Result<u32, String> {
        match plot.get(key) {
            None => Ok(default as u32),
            Some(value) => value
                .as_u64()
                .filter(|n| (100..=8000).contains(n))
                .map(|n| n as u32)
                .ok_or_else(|| format!("`plot.{key}` must be a whole number of pixels from 100 to 8000")),
        }
    };
    let moving_average = match plot.get("moving_average") {
        None => default_average,
        Some(value) => value.as_u64().filter(|n| *n >= 1).ok_or("`plot.moving_average` must be a whole number >= 1")?,
    };
    Ok(PlotSettings {
        xkey,
        ykeys,
        moving_average: moving_average as usize,
        width: size("width", 1200)?,
        height: size("height", 800)?,
        min_interval_s: positive_number(plot.get("min_interval_s"), "plot.min_interval_s", 10.0)?,
    })
}
