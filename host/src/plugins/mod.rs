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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
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
use runner::{HttpEndpoint, Notifier, PluginRunner, PluginStats, RunnerOptions};

/// Every plugin of the host: the running ones, and those whose component is still being
/// compiled in the background (they join when ready, from their cursor; their rows wait in
/// the history meanwhile, as for a restarting plugin). Other threads read the set through
/// an immutable view replaced on each change, so a notice from the writer, an HTTP request
/// or `/metrics` never waits for a compile or for a plugin's start.
pub struct PluginSet {
    runners: Mutex<Vec<PluginRunner>>,
    view: RwLock<Arc<PluginView>>,
    /// Plugins that could not be loaded, with the reason (already logged).
    failed: Mutex<Vec<String>>,
    /// Where plugins serve HTTP, known from their manifests before any compile.
    listen: Mutex<Vec<(ListenGrant, String)>>,
    /// Set by `stop_all`: a compile that ends later starts nothing.
    closed: AtomicBool,
    compiles: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// The plugins as they are at one moment.
#[derive(Default)]
pub struct PluginView {
    pub notifiers: Vec<Notifier>,
    pub endpoints: Vec<(String, HttpEndpoint)>,
    pub stats: Vec<(String, Arc<PluginStats>)>,
    /// Plugins whose component is being compiled.
    pub compiling: Vec<String>,
}

/// Where an HTTP request for a plugin goes.
pub enum Endpoint {
    Ready(HttpEndpoint),
    /// The plugin's component is still being compiled.
    Compiling,
    /// The plugin is not running (it failed to load, or the host is stopping).
    Absent,
}

/// A plugin checked against the host configuration, ready to compile.
struct Admitted {
    manifest: Manifest,
    secrets: Secrets,
}

impl PluginSet {
    /// A set without plugins, to `add` them one by one.
    pub fn empty() -> PluginSet {
        PluginSet {
            runners: Mutex::new(Vec::new()),
            view: RwLock::new(Arc::default()),
            failed: Mutex::new(Vec::new()),
            listen: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            compiles: Mutex::new(Vec::new()),
        }
    }

    /// Reads every manifest of `dir` and, for each plugin the configuration does not
    /// disable, compiles its component on a thread of its own and starts it when ready;
    /// returns at once. A plugin that fails to load is reported and the others still start.
    pub fn start(runtime: Arc<Runtime>, dir: &Path, config: &HostConfig, history: &SharedHistory) -> Result<Arc<PluginSet>> {
        let set = Arc::new(PluginSet::empty());
        let mut admitted = Vec::new();
        for manifest in manifest::discover(dir)? {
            match manifest.and_then(|manifest| admit(manifest, config)) {
                Ok(Some(plugin)) => admitted.push(plugin),
                Ok(None) => {}
                Err(error) => set.record_failure(format!("{error:#}")),
            }
        }
        if admitted.is_empty() && set.failed().is_empty() {
            tracing::warn!("no plugin in {} (expected folders holding a {})", dir.display(), manifest::MANIFEST_FILE);
        }
        let transport = Transport::network()?;
        {
            let mut listen = set.listen.lock().expect("plugin set lock");
            listen
                .extend(admitted.iter().filter_map(|plugin| Some((plugin.manifest.grants.listen.clone()?, plugin.manifest.name.clone()))));
        }
        set.publish(|view| view.compiling = admitted.iter().map(|plugin| plugin.manifest.name.clone()).collect());
        for plugin in admitted {
            let env = plugin_env(config, history, &plugin.secrets, &transport);
            let (set_for_thread, runtime, history) = (set.clone(), runtime.clone(), history.clone());
            let (data_root, options) = (config.runtime.data_dir.clone(), runner_options(config));
            let name = plugin.manifest.name.clone();
            let compile = std::thread::Builder::new().name(format!("compile-{name}")).spawn(move || {
                let set = set_for_thread;
                let outcome = runtime.load(plugin.manifest, &data_root).and_then(|loaded| {
                    tracing::info!(plugin = %name, origin = ?loaded.origin, "loaded in {:.1} ms", loaded.load_time.as_secs_f64() * 1e3);
                    let rows = history.snapshot().row_count();
                    let cursor = match history.dir().map(|dir| dir.join("cursors")) {
                        Some(dir) => Cursor::open(&dir, &name, rows)?,
                        None => Cursor::from(0),
                    };
                    if cursor.next_row > 0 {
                        tracing::info!(plugin = %name, "resuming at row {} of {rows}", cursor.next_row);
                    }
                    set.add(loaded, env, cursor, options)
                });
                if let Err(error) = outcome {
                    set.record_failure(format!("{error:#}"));
                }
                set.publish(|view| view.compiling.retain(|compiling| *compiling != name));
            })?;
            set.compiles.lock().expect("plugin set lock").push(compile);
        }
        Ok(set)
    }

    /// Waits until every plugin being compiled has started or failed.
    pub fn wait_compiled(&self) {
        let compiles = std::mem::take(&mut *self.compiles.lock().expect("plugin set lock"));
        for compile in compiles {
            let _ = compile.join();
        }
    }

    /// Starts one loaded plugin from `cursor` (not once the set is stopping).
    pub fn add(&self, plugin: LoadedPlugin, env: PluginEnv, cursor: impl Into<Cursor>, options: RunnerOptions) -> Result<()> {
        let mut runners = self.runners.lock().expect("plugin set lock");
        if self.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let serves = plugin.http_handler.is_some();
        if let (Some(grant), true) = (plugin.manifest.grants.listen.clone(), serves) {
            let mut listen = self.listen.lock().expect("plugin set lock");
            if !listen.iter().any(|(_, name)| *name == plugin.manifest.name) {
                listen.push((grant, plugin.manifest.name.clone()));
            }
        }
        let runner = PluginRunner::spawn(plugin, env, cursor.into(), options)?;
        let (notifier, stats, endpoint) = (runner.notifier(), runner.stats.clone(), serves.then(|| runner.http_endpoint()));
        let name = runner.name.clone();
        runners.push(runner);
        drop(runners);
        self.publish(|view| {
            view.notifiers.push(notifier);
            view.stats.push((name.clone(), stats));
            if let Some(endpoint) = endpoint {
                view.endpoints.push((name, endpoint));
            }
        });
        // Rows may have come while it compiled.
        self.notify_all();
        Ok(())
    }

    /// Replaces the view by `change` applied to a copy of it.
    fn publish(&self, change: impl FnOnce(&mut PluginView)) {
        let mut view = self.view.write().expect("plugin view lock");
        let mut next = PluginView {
            notifiers: view.notifiers.clone(),
            endpoints: view.endpoints.clone(),
            stats: view.stats.clone(),
            compiling: view.compiling.clone(),
        };
        change(&mut next);
        *view = Arc::new(next);
    }

    /// The plugins as they are now.
    pub fn view(&self) -> Arc<PluginView> {
        self.view.read().expect("plugin view lock").clone()
    }

    fn record_failure(&self, error: String) {
        tracing::error!("{error}");
        self.failed.lock().expect("plugin set lock").push(error);
    }

    /// Plugins that could not be loaded, with the reason.
    pub fn failed(&self) -> Vec<String> {
        self.failed.lock().expect("plugin set lock").clone()
    }

    /// Where each plugin serving HTTP is to be served, by name.
    pub fn listen_grants(&self) -> Vec<(ListenGrant, String)> {
        self.listen.lock().expect("plugin set lock").clone()
    }

    /// Where a request for `plugin` goes now.
    pub fn endpoint(&self, plugin: &str) -> Endpoint {
        let view = self.view();
        if let Some((_, endpoint)) = view.endpoints.iter().find(|(name, _)| name == plugin) {
            return Endpoint::Ready(endpoint.clone());
        }
        if view.compiling.iter().any(|name| name == plugin) { Endpoint::Compiling } else { Endpoint::Absent }
    }

    pub fn notify_all(&self) {
        for notifier in &self.view().notifiers {
            notifier.notify();
        }
    }

    /// The counters of every running plugin.
    pub fn stats(&self) -> Vec<(String, Arc<PluginStats>)> {
        self.view().stats.clone()
    }

    /// The counters of one plugin, if it runs.
    pub fn stats_of(&self, name: &str) -> Option<Arc<PluginStats>> {
        self.view().stats.iter().find(|(plugin, _)| plugin == name).map(|(_, stats)| stats.clone())
    }

    /// Every plugin receives what is left, then `stop`; plugins stop in parallel. A plugin
    /// still compiling is not started (its rows wait in the history for the next run).
    pub fn stop_all(&self) {
        let runners = {
            let mut runners = self.runners.lock().expect("plugin set lock");
            self.closed.store(true, Ordering::Release);
            std::mem::take(&mut *runners)
        };
        let still_compiling = self.view().compiling.clone();
        if !still_compiling.is_empty() {
            tracing::warn!("stopping while {} still compile; they start at the next run", still_compiling.join(", "));
        }
        std::thread::scope(|scope| {
            for runner in runners {
                scope.spawn(move || runner.stop());
            }
        });
        self.publish(|view| {
            view.notifiers.clear();
            view.endpoints.clear();
        });
    }
}

/// Checks a manifest against the host configuration: `None` for a plugin the
/// configuration disables or whose credential is not set (a warning says where to set it).
fn admit(mut manifest: Manifest, config: &HostConfig) -> Result<Option<Admitted>> {
    let overrides = config.plugins.get(&manifest.name).cloned().unwrap_or_default();
    if !overrides.enabled {
        tracing::info!(plugin = %manifest.name, "disabled by the host configuration");
        return Ok(None);
    }
    merge_tables(&mut manifest.config, overrides.config);
    let name = manifest.name.clone();
    let secret_names =
        manifest.grants.outbound.iter().filter_map(|grant| grant.credential.as_ref().map(|credential| credential.secret.as_str()));
    let secrets = Secrets::resolve(&name, secret_names, &config.secrets)
        .map_err(|error| anyhow::anyhow!("{}: {error:#}", manifest.source.display()))?;
    if !secrets.missing().is_empty() {
        // Not a failure: a fresh machine runs the default configuration without a key.
        tracing::warn!(
            plugin = %name,
            "not started: its granted requests need a credential and {}; set it and restart the host",
            secrets.missing().join(", ")
        );
        return Ok(None);
    }
    Ok(Some(Admitted { manifest, secrets }))
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
