//! Plugins: manifests, loading (with the compile cache), instances and their runners.
//! Capability code lives in `crate::capabilities`; this module only wires it up.

pub mod cache;
pub mod cursor;
pub mod handler_pool;
pub mod instance;
pub mod limiter;
pub mod loader;
pub mod manifest;
pub mod runner;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Result;

use crate::capabilities::outgoing_http::Transport;
use crate::capabilities::secrets::Secrets;
use crate::config::HostConfig;
use crate::history::SharedHistory;
use cursor::Cursor;
use instance::PluginEnv;
use loader::{LoadedPlugin, Runtime};
use manifest::{ListenGrant, Manifest};
use runner::{HttpEndpoint, Notifier, PluginRunner, RunnerOptions};

/// Every running plugin of the host.
pub struct PluginSet {
    pub runners: Vec<PluginRunner>,
    /// Plugins that could not be loaded, with the reason (already logged).
    pub failed: Vec<String>,
    listen: Vec<(ListenGrant, HttpEndpoint)>,
}

impl PluginSet {
    /// A set without plugins, to `add` them one by one.
    pub fn empty() -> PluginSet {
        PluginSet { runners: Vec::new(), failed: Vec::new(), listen: Vec::new() }
    }

    /// Loads every plugin of `dir` that the configuration does not disable and starts it;
    /// a plugin that fails to load is reported and the others still start.
    pub fn start(runtime: &Runtime, dir: &Path, config: &HostConfig, history: &SharedHistory) -> Result<PluginSet> {
        let mut manifests = Vec::new();
        let mut failed = Vec::new();
        for manifest in manifest::discover(dir)? {
            match manifest {
                Ok(manifest) => manifests.push(manifest),
                Err(error) => {
                    tracing::error!("{error:#}");
                    failed.push(format!("{error:#}"));
                }
            }
        }
        if manifests.is_empty() && failed.is_empty() {
            tracing::warn!("no plugin in {} (expected folders holding a {})", dir.display(), manifest::MANIFEST_FILE);
        }
        let transport = Transport::network()?;
        let (cursors_dir, rows) = (history.dir().map(|dir| dir.join("cursors")), history.snapshot().row_count());
        let mut set = PluginSet { runners: Vec::new(), failed, listen: Vec::new() };
        for mut manifest in manifests {
            let overrides = config.plugins.get(&manifest.name).cloned().unwrap_or_default();
            if !overrides.enabled {
                tracing::info!(plugin = %manifest.name, "disabled by the host configuration");
                continue;
            }
            merge_tables(&mut manifest.config, overrides.config);
            let name = manifest.name.clone();
            let secret_names =
                manifest.grants.outbound.iter().filter_map(|grant| grant.credential.as_ref().map(|credential| credential.secret.as_str()));
            let secrets = match Secrets::resolve(&name, secret_names, &config.secrets) {
                Ok(secrets) => secrets,
                Err(error) => {
                    let error = format!("{}: {error:#}", manifest.source.display());
                    tracing::error!("{error}");
                    set.failed.push(error);
                    continue;
                }
            };
            if !secrets.missing().is_empty() {
                // Not a failure: a fresh machine runs the default configuration without a key.
                tracing::warn!(
                    plugin = %name,
                    "not started: its granted requests need a credential and {}; set it and restart the host",
                    secrets.missing().join(", ")
                );
                continue;
            }
            match runtime.load(manifest, &config.runtime.data_dir) {
                Ok(plugin) => {
                    tracing::info!(plugin = %name, origin = ?plugin.origin, "loaded in {:.1} ms", plugin.load_time.as_secs_f64() * 1e3);
                    let env = plugin_env(config, history, &secrets, &transport);
                    let cursor = match &cursors_dir {
                        Some(dir) => Cursor::open(dir, &name, rows)?,
                        None => Cursor::from(0),
                    };
                    if cursor.next_row > 0 {
                        tracing::info!(plugin = %name, "resuming at row {} of {rows}", cursor.next_row);
                    }
                    set.add(plugin, env, cursor, runner_options(config))?;
                }
                Err(error) => {
                    tracing::error!("{error:#}");
                    set.failed.push(format!("{error:#}"));
                }
            }
        }
        Ok(set)
    }

    /// Starts one loaded plugin from `cursor`.
    pub fn add(&mut self, plugin: LoadedPlugin, env: PluginEnv, cursor: impl Into<Cursor>, options: RunnerOptions) -> Result<()> {
        let listen = plugin.manifest.grants.listen.clone().filter(|_| plugin.http_handler.is_some());
        let runner = PluginRunner::spawn(plugin, env, cursor.into(), options)?;
        if let Some(grant) = listen {
            self.listen.push((grant, runner.http_endpoint()));
        }
        self.runners.push(runner);
        Ok(())
    }

    /// Where each plugin serving HTTP is to be served.
    pub fn http_routes(&self) -> Vec<(ListenGrant, HttpEndpoint)> {
        self.listen.clone()
    }

    pub fn notify_all(&self) {
        for runner in &self.runners {
            runner.notify();
        }
    }

    /// Notifies every plugin from another thread (ingest).
    pub fn notifiers(&self) -> Vec<Notifier> {
        self.runners.iter().map(PluginRunner::notifier).collect()
    }

    pub fn runner(&self, name: &str) -> Option<&PluginRunner> {
        self.runners.iter().find(|runner| runner.name == name)
    }

    /// Every plugin receives what is left, then `stop`; plugins stop in parallel.
    pub fn stop_all(self) {
        std::thread::scope(|scope| {
            for runner in self.runners {
                scope.spawn(move || runner.stop());
            }
        });
    }
}

pub fn plugin_env(config: &HostConfig, history: &SharedHistory, secrets: &Secrets, transport: &Transport) -> PluginEnv {
    PluginEnv {
        history: history.clone(),
        secrets: secrets.clone(),
        transport: transport.clone(),
        log_capture: None,
        host_config_json: config.plugin_view_json(),
        step_series: config.telemetry.step_key.clone(),
        // A resumed run started when its first row arrived.
        run_started_ms: history.snapshot().read_timestamps(0, 1).first().copied().unwrap_or_else(crate::ingest::now_ms),
        denied: Arc::new(AtomicU64::new(0)),
        log_budget: Arc::default(),
    }
}

/// Merges `over` into `base` key by key, into nested tables too: `[plugins.file.config.plot]
/// min_interval_s = 60` changes that one key of the manifest's `plot` table.
pub fn merge_tables(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(value)) => merge_tables(inner, value),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

pub fn runner_options(config: &HostConfig) -> RunnerOptions {
    let (first, longest) = config.runtime.restart_backoff_ms;
    RunnerOptions {
        backoff_first: Duration::from_millis(first),
        backoff_longest: Duration::from_millis(longest),
        max_batch_rows: config.runtime.max_batch_rows,
        update_interval: config.telemetry.update_interval.max(1),
    }
}

/// Loads a manifest from a file path, or makes one for a bare component file.
pub fn manifest_for(path: &Path) -> Result<Manifest> {
    if path.extension().is_some_and(|extension| extension == "toml") {
        return Manifest::load(path);
    }
    if path.is_dir() {
        return Manifest::load(&path.join(manifest::MANIFEST_FILE));
    }
    let name =
        path.file_stem().and_then(|stem| stem.to_str()).unwrap_or("plugin").replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-");
    let text = format!("name = {name:?}\ncomponent = {:?}\n", path.file_name().and_then(|name| name.to_str()).unwrap_or_default());
    Manifest::parse(&text, &path.with_file_name(manifest::MANIFEST_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_merge_key_by_key_into_nested_tables() {
        let mut base: toml::Table = toml::from_str("xkey = \"row\"\n[plot]\nwidth = 1200\nmin_interval_s = 5\n").unwrap();
        let over: toml::Table = toml::from_str("[plot]\nmin_interval_s = 60\n").unwrap();
        merge_tables(&mut base, over);
        assert_eq!(base["plot"]["width"].as_integer(), Some(1200), "the rest of the table stays");
        assert_eq!(base["plot"]["min_interval_s"].as_integer(), Some(60));
        assert_eq!(base["xkey"].as_str(), Some("row"));
    }
}
