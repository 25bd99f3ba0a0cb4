//! Compatibility mode: the original node's YAML configuration, unchanged. Its
//! `telemetry:` section maps one to one (transforms and callbacks as `{type, kwargs}`);
//! `monitoring:` turns on the connectors it names and passes their settings:
//!
//! - `file_storage: {path, plot: {xkey, ykeys}}`: the file connector; `path` becomes the
//!   host's data directory, so its files land in `<path>/file/`;
//! - `grafana: true`: the Grafana connector, answering a `/query` without targets with the
//!   original's object of every series (`original_untargeted_answer`);
//! - `wandb: {project, entity, group}`: the W&B connector (`save_dir` has no use here).
//!
//! Connectors it does not name are off. Samples arrive on Redis pub/sub `telemetry` as
//! they did for the original; an optional top-level `redis:` mapping takes the keys of
//! our `[redis]` section (e.g. `url`), and any of our own sections (`http`, `runtime`,
//! `secrets`) may be added the same way.

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use super::HostConfig;

/// The connectors the original's `monitoring:` section can name, by their key there.
const MONITORS: [(&str, &str); 3] = [("file_storage", "file"), ("grafana", "grafana"), ("wandb", "wandb")];

pub fn parse(text: &str, origin: &str) -> Result<HostConfig> {
    let yaml: Value = serde_yaml::from_str(text).map_err(|error| anyhow::anyhow!("{origin}: {error}"))?;
    let Value::Object(mut top) = yaml else { bail!("{origin}: expected a mapping with `telemetry:` and `monitoring:`") };
    let telemetry = top.remove("telemetry").with_context(|| format!("{origin}: no `telemetry:` section"))?;
    let monitoring = top.remove("monitoring").unwrap_or_else(|| json!({}));
    let mut config = Map::new();
    config.insert("telemetry".into(), telemetry_section(telemetry).with_context(|| format!("{origin}: in `telemetry:`"))?);
    let mut plugins = Map::new();
    let Value::Object(monitoring) = monitoring else { bail!("{origin}: `monitoring:` must be a mapping") };
    for key in monitoring.keys() {
        if !MONITORS.iter().any(|(known, _)| known == key) {
            bail!("{origin}: `monitoring.{key}` is not a connector of the original (known: file_storage, grafana, wandb)");
        }
    }
    let mut runtime = top.remove("runtime").unwrap_or_else(|| json!({}));
    for (key, plugin) in MONITORS {
        let settings = monitoring.get(key).cloned().unwrap_or(Value::Bool(false));
        let (enabled, mut plugin_config) = match settings {
            Value::Bool(enabled) => (enabled, Map::new()),
            Value::Null => (true, Map::new()),
            Value::Object(settings) => (true, settings),
            other => bail!("{origin}: `monitoring.{key}` must be true, false or a mapping, not {other}"),
        };
        if plugin == "file"
            && let Some(path) = plugin_config.remove("path")
        {
            runtime.as_object_mut().context("`runtime:` must be a mapping")?.entry("data_dir").or_insert(path);
        }
        if plugin == "wandb" {
            plugin_config.remove("save_dir");
        }
        if plugin == "grafana" {
            // Scripts written for the original POST /query without targets and read its
            // object of every series.
            plugin_config.entry("original_untargeted_answer").or_insert(Value::Bool(true));
        }
        plugins.insert(plugin.into(), json!({ "enabled": enabled, "config": plugin_config }));
    }
    config.insert("plugins".into(), Value::Object(plugins));
    config.insert("runtime".into(), runtime);
    let mut redis = top.remove("redis").unwrap_or_else(|| json!({}));
    // The original read samples from pub/sub only.
    redis.as_object_mut().context("`redis:` must be a mapping")?.entry("stream").or_insert_with(|| json!(""));
    config.insert("redis".into(), redis);
    config.extend(top);
    let config: HostConfig = serde_json::from_value(Value::Object(config)).map_err(|error| anyhow::anyhow!("{origin}: {error}"))?;
    config.check().with_context(|| format!("{origin}: invalid configuration"))?;
    Ok(config)
}

/// `{type: X, kwargs: {...}}` items become `{type = X, ...}` as our TOML writes them.
fn telemetry_section(telemetry: Value) -> Result<Value> {
    let Value::Object(mut telemetry) = telemetry else { bail!("expected a mapping") };
    for list in ["transforms", "callbacks"] {
        let Some(Value::Array(items)) = telemetry.get_mut(list) else { continue };
        for (index, item) in items.iter_mut().enumerate() {
            let Value::Object(fields) = item else { bail!("`{list}[{index}]` must be a mapping with `type` and `kwargs`") };
            if let Some(kwargs) = fields.remove("kwargs") {
                let Value::Object(kwargs) = kwargs else { bail!("`{list}[{index}].kwargs` must be a mapping") };
                fields.extend(kwargs);
            }
        }
    }
    Ok(Value::Object(telemetry))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The original node's reference configuration, as its README gives it.
    const ORIGINAL: &str = r#"
telemetry:
  update_interval: 5
  moving_average: 20
  transforms:
    - {type: MetricByKey, kwargs: {key: ep_reward, name: rewards}}
    - {type: MetricByKey, kwargs: {key: ep_steps, name: steps}}
    - {type: MetricByKey, kwargs: {key: total_steps, name: n_env_steps}}
    - {type: CompareValue, kwargs: {key: ep_reward, name: wins, value: 200, op: gt}}
    - {type: Timer}
  log_keys: [rewards_av, steps_av]
  callbacks:
    - {type: SaveBest, kwargs: {key: rewards_av, channel: save_best}}
monitoring:
  file_storage:
    path: /home/SoulsAI/saves
    plot: {xkey: n_env_steps, ykeys: [rewards_av, steps_av, wins_av, time]}
  grafana: true
  wandb: {project: soulsai_iudex, entity: amacati, group: state_obs, save_dir: /home/SoulsAI/saves}
"#;

    #[test]
    fn the_original_reference_configuration_works_unchanged() {
        let config = parse(ORIGINAL, "config.yml").unwrap();
        let builtin = HostConfig::builtin_default();
        assert_eq!(config.telemetry.transforms, builtin.telemetry.transforms);
        assert_eq!(config.telemetry.log_keys, ["rewards_av", "steps_av"]);
        assert_eq!(
            config.telemetry.callbacks,
            [crate::callbacks::CallbackSpec::SaveBest { key: "rewards_av".into(), channel: "save_best".into() }]
        );
        assert_eq!(config.runtime.data_dir, std::path::PathBuf::from("/home/SoulsAI/saves"));
        let redis = config.redis.as_ref().expect("samples come from Redis, as in the original");
        assert_eq!((redis.channel.as_str(), redis.stream.as_str()), ("telemetry", ""));
        let file = &config.plugins["file"];
        assert!(file.enabled && file.config["plot"]["xkey"].as_str() == Some("n_env_steps"));
        assert!(config.plugins["grafana"].enabled);
        let wandb = &config.plugins["wandb"];
        assert_eq!(wandb.config["entity"].as_str(), Some("amacati"));
        assert!(!wandb.config.contains_key("save_dir"));
    }

    #[test]
    fn unnamed_connectors_are_off_and_errors_say_where() {
        let config = parse("telemetry:\n  transforms:\n    - {type: Timer}\nmonitoring:\n  grafana: true\n", "c.yml").unwrap();
        assert!(!config.plugins["file"].enabled && !config.plugins["wandb"].enabled && config.plugins["grafana"].enabled);
        assert_eq!(config.plugins["grafana"].config.get("original_untargeted_answer"), Some(&toml::Value::Boolean(true)));
        let error = format!("{:#}", parse("telemetry:\n  transforms: [{type: Nope}]\n", "c.yml").unwrap_err());
        assert!(error.contains("c.yml") && error.contains("Nope"), "{error}");
        let error =
            format!("{:#}", parse("telemetry:\n  transforms: [{type: Timer}]\nmonitoring: {tensorboard: true}\n", "c.yml").unwrap_err());
        assert!(error.contains("`monitoring.tensorboard`"), "{error}");
        let error = format!("{:#}", parse("telemetry:\n  update_interval: [\n", "c.yml").unwrap_err());
        assert!(error.contains("c.yml") && error.contains("line"), "{error}");
    }
}
