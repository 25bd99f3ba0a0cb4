//! The host configuration (`telemetry.toml`), parsed once into typed data. Every error
//! names the file, and the TOML parser adds the line, column and key. A `.yml`/`.yaml`
//! file is read as the original node's configuration (`original_yaml`).

mod original_yaml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::callbacks::CallbackSpec;
use crate::ingest::redis::RedisConfig;
use crate::ingest::transforms::TransformSpec;

/// The configuration the host runs with when none is given: the original node's
/// reference configuration.
pub const DEFAULT_CONFIG: &str = include_str!("default-config.toml");

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Samples from Redis pub/sub and streams, and where callbacks publish; no Redis
    /// without this section.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// Where the host reads each named secret.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretSource>,
    /// Per-plugin overrides, by plugin name.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginOverride>,
}

impl HostConfig {
    /// What every plugin is told of the host configuration (`host-config-json`): the
    /// `telemetry` section and nothing else. Other plugins' configurations, the ingest
    /// token, Redis URLs and secret sources stay with the host.
    pub fn plugin_view_json(&self) -> String {
        serde_json::json!({ "telemetry": self.telemetry }).to_string()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Plugins are updated after this many samples.
    #[serde(default = "default_update_interval")]
    pub update_interval: u64,
    /// Window of the `<name>_av` moving averages.
    #[serde(default = "default_moving_average")]
    pub moving_average: usize,
    /// The series holding the run's step counter (e.g. `n_env_steps`), offered to
    /// connectors as an x axis.
    #[serde(default)]
    pub step_key: Option<String>,
    /// Series logged on every update.
    #[serde(default)]
    pub log_keys: Vec<String>,
    pub transforms: Vec<TransformSpec>,
    /// Run at every update interval (e.g. `SaveBest`).
    #[serde(default)]
    pub callbacks: Vec<CallbackSpec>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The host's own HTTP server, which serves plugins granted a path prefix.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Largest request body handed to a plugin, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Largest body of `POST /v1/samples`, in bytes.
    #[serde(default = "default_max_ingest")]
    pub max_ingest_bytes: usize,
    /// When set, `POST /v1/samples` needs `Authorization: Bearer <token>`. Never
    /// serialized: the configuration handed to plugins must not carry it.
    #[serde(default, skip_serializing)]
    pub ingest_token: Option<String>,
    /// When set, `POST /v1/plugins/reload` needs `Authorization: Bearer <token>`; when
    /// not, only clients on this machine may call it. Never serialized.
    #[serde(default, skip_serializing)]
    pub admin_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Compiled components, keyed by component hash and engine compatibility.
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
    /// The durable history: sealed chunks, the write-ahead log, plugins' cursors. A
    /// restart with the same folder continues the run.
    #[serde(default = "default_history_dir")]
    pub history_dir: PathBuf,
    /// Relative data directories of plugin manifests resolve against this.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// First and longest wait before a failed plugin is restarted, in milliseconds.
    #[serde(default = "default_backoff")]
    pub restart_backoff_ms: (u64, u64),
    /// Most rows handed to a plugin in one update call.
    #[serde(default = "default_batch_rows")]
    pub max_batch_rows: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// A file holding the secret (trailing whitespace is trimmed).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// An environment variable of the host holding the secret (never passed to plugins).
    #[serde(default)]
    pub env: Option<String>,
    /// The plugins that may use it (by name); no other plugin can, whatever its manifest
    /// asks.
    #[serde(default)]
    pub plugins: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginOverride {
    /// `false` skips the plugin.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Merged over the manifest's `[config]`, key by key.
    #[serde(default)]
    pub config: toml::Table,
}

fn default_update_interval() -> u64 {
    1
}
fn default_moving_average() -> usize {
    20
}
fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_max_body() -> usize {
    1 << 20
}
fn default_max_ingest() -> usize {
    16 << 20
}
fn default_cache_dir() -> PathBuf {
    ".telemetry-host/cache".into()
}
fn default_history_dir() -> PathBuf {
    ".telemetry-host/history".into()
}
fn default_data_dir() -> PathBuf {
    ".telemetry-host/data".into()
}
fn default_backoff() -> (u64, u64) {
    (100, 30_000)
}
fn default_batch_rows() -> u64 {
    65_536
}
fn default_true() -> bool {
    true
}

impl Default for PluginOverride {
    fn default() -> Self {
        PluginOverride { enabled: true, config: toml::Table::new() }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            max_body_bytes: default_max_body(),
            max_ingest_bytes: default_max_ingest(),
            ingest_token: None,
            admin_token: None,
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: default_cache_dir(),
            history_dir: default_history_dir(),
            data_dir: default_data_dir(),
            restart_backoff_ms: default_backoff(),
            max_batch_rows: default_batch_rows(),
        }
    }
}

impl HostConfig {
    /// Reads and checks a configuration file: TOML, or the original node's YAML.
    pub fn load(path: &Path) -> Result<HostConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        let origin = path.display().to_string();
        match path.extension().and_then(|extension| extension.to_str()) {
            Some("yml" | "yaml") => original_yaml::parse(&text, &origin),
            _ => Self::parse(&text, &origin),
        }
    }

    /// Parses and checks a configuration; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<HostConfig> {
        let config: HostConfig = toml::from_str(text).map_err(|error| anyhow::anyhow!("{origin}: {error}"))?;
        config.check().with_context(|| format!("{origin}: invalid configuration"))?;
        Ok(config)
    }

    pub fn builtin_default() -> HostConfig {
        Self::parse(DEFAULT_CONFIG, "built-in default config").expect("the built-in default config is valid")
    }

    fn check(&self) -> Result<()> {
        let telemetry = &self.telemetry;
        anyhow::ensure!(telemetry.update_interval >= 1, "telemetry.update_interval must be at least 1");
        anyhow::ensure!(telemetry.moving_average >= 1, "telemetry.moving_average must be at least 1");
        anyhow::ensure!(!telemetry.transforms.is_empty(), "telemetry.transforms is empty: nothing would be recorded");
        let series = crate::ingest::transforms::series_names(&telemetry.transforms);
        for (index, name) in series.iter().enumerate() {
            anyhow::ensure!(
                !series[..index].contains(name),
                "series `{name}` is produced by two transforms; give one of them another `name`"
            );
        }
        for key in telemetry.log_keys.iter().chain(telemetry.step_key.iter()) {
            anyhow::ensure!(
                series.contains(key),
                "`{key}` (in telemetry.log_keys or telemetry.step_key) is not a series; the series are: {}",
                series.join(", ")
            );
        }
        for crate::callbacks::CallbackSpec::SaveBest { key, .. } in &telemetry.callbacks {
            anyhow::ensure!(series.contains(key), "SaveBest key `{key}` is not a series; the series are: {}", series.join(", "));
            anyhow::ensure!(self.redis.is_some(), "SaveBest publishes on Redis: add a [redis] section");
        }
        let (first, longest) = self.runtime.restart_backoff_ms;
        anyhow::ensure!(first >= 1 && first <= longest, "runtime.restart_backoff_ms must be [first, longest] with 1 <= first <= longest");
        anyhow::ensure!(self.runtime.max_batch_rows >= 1, "runtime.max_batch_rows must be at least 1");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_default_gives_the_ten_reference_series() {
        let config = HostConfig::builtin_default();
        let names = crate::ingest::transforms::series_names(&config.telemetry.transforms);
        assert_eq!(
            names,
            ["rewards", "rewards_av", "steps", "steps_av", "n_env_steps", "n_env_steps_av", "wins", "wins_av", "time", "time_av"]
        );
    }

    #[test]
    fn errors_name_the_origin_line_and_key() {
        let error = HostConfig::parse("[telemetry]\nupdate_interval = \"five\"\ntransforms = []\n", "my.toml").unwrap_err();
        let text = format!("{error:#}");
        assert!(text.contains("my.toml"), "{text}");
        assert!(text.contains("line 2"), "{text}");
        assert!(text.contains("update_interval"), "{text}");
    }

    #[test]
    fn plugins_are_told_the_telemetry_section_and_nothing_else() {
        let text = format!(
            "{DEFAULT_CONFIG}\n[http]\ningest_token = \"s3cret-token\"\n[redis]\nurl = \"redis://:hunter2@db:6379\"\n\
             [plugins.wandb.config]\npassword = \"other-plugins-secret\"\n[secrets.key]\nenv = \"MY_SECRET_VAR\"\n"
        );
        let config = HostConfig::parse(&text, "c.toml").unwrap();
        let json = config.plugin_view_json();
        for hidden in ["s3cret-token", "hunter2", "other-plugins-secret", "MY_SECRET_VAR", "history_dir"] {
            assert!(!json.contains(hidden), "{hidden} in {json}");
        }
        let view: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(view.as_object().unwrap().keys().collect::<Vec<_>>(), ["telemetry"]);
        assert_eq!(view["telemetry"]["update_interval"], 5);
    }

    #[test]
    fn unknown_log_keys_are_refused_with_the_known_series() {
        let text = "[telemetry]\nlog_keys = [\"nope\"]\n[[telemetry.transforms]]\ntype = \"MetricByKey\"\nkey = \"r\"\n";
        let error = format!("{:#}", HostConfig::parse(text, "c.toml").unwrap_err());
        assert!(error.contains("`nope`") && error.contains("r, r_av"), "{error}");
    }
}
