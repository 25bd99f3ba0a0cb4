//! Plugins: manifests, loading (with the compile cache), instances and their runners.
//! Capability code lives in `crate::capabilities`; this module only wires it up.

pub mod cache;
pub mod cursor;
pub mod handler_pool;
pub mod instance;
pub mod limiter;
pub mod loader;
pub mod manifest;
pub mod reload;
pub mod runner;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
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
use reload::{Fingerprint, ReloadState};
use runner::{HttpEndpoint, Notifier, PluginRunner, PluginStats, RunnerOptions};

/// Every plugin of the host: the running ones, and those whose component is still being
/// compiled in the background (they join when ready, from their cursor; their rows wait in
/// the history meanwhile, as for a restarting plugin). Other threads read the set through
/// an immutable view replaced on each change, so a notice from the writer, an HTTP request
/// or `/metrics` never waits for a compile, a plugin's start or a swap.
pub struct PluginSet {
    /// Taken for a change of the running plugins (start, swap, removal, stop), never by a
    /// reader: a swap holds it from the old version's stop to the new one's start.
    members: Mutex<Vec<Member>>,
    view: RwLock<Arc<PluginView>>,
    /// Bumped on every change of the view: a request waiting out a swap wakes on it.
    changes: tokio::sync::watch::Sender<u64>,
    /// Plugins that could not be loaded at start, with the reason (already logged).
    failed: Mutex<Vec<String>>,
    /// Where plugins serve HTTP, known from their manifests before any compile: the
    /// servers `http_server::serve` binds at start.
    listen: Mutex<Vec<(ListenGrant, String)>>,
    /// Set by `stop_all`: a compile that ends later starts nothing.
    closed: AtomicBool,
    compiles: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// What loading a plugin needs: set by `start`, so the set can reload its directory.
    sources: OnceLock<Sources>,
    reload: ReloadState,
}

/// What the set loads plugins from and with.
struct Sources {
    runtime: Arc<Runtime>,
    dir: PathBuf,
    config: HostConfig,
    history: SharedHistory,
    transport: Transport,
}

/// One running plugin and what it was started from (to roll a failed swap back to it).
struct Member {
    /// The plugin's folder in the plugin directory; `None` for one added directly.
    folder: Option<PathBuf>,
    /// Manifest and component as loaded: a reload that finds them unchanged does nothing.
    fingerprint: Option<Fingerprint>,
    plugin: LoadedPlugin,
    env: PluginEnv,
    options: RunnerOptions,
    runner: PluginRunner,
}

impl Member {
    fn name(&self) -> &str {
        &self.plugin.manifest.name
    }

    fn running(&self) -> RunningPlugin {
        RunningPlugin {
            name: self.name().to_string(),
            notifier: self.runner.notifier(),
            stats: self.runner.stats.clone(),
            endpoint: self.plugin.http_handler.is_some().then(|| self.runner.http_endpoint()),
        }
    }
}

/// The plugins as they are at one moment.
#[derive(Default, Clone)]
pub struct PluginView {
    pub running: Vec<RunningPlugin>,
    /// Plugins whose component is being compiled.
    pub compiling: Vec<String>,
    /// Plugins between two versions: requests for them wait for the next view.
    pub swapping: Vec<String>,
    /// Path prefixes on the host's server and the plugin each belongs to.
    pub prefixes: Vec<(String, String)>,
}

/// What others may reach of one running plugin.
#[derive(Clone)]
pub struct RunningPlugin {
    pub name: String,
    pub notifier: Notifier,
    pub stats: Arc<PluginStats>,
    pub endpoint: Option<HttpEndpoint>,
}

/// Where an HTTP request for a plugin goes.
pub enum Endpoint {
    Ready(HttpEndpoint),
    /// The plugin's component is still being compiled.
    Compiling,
    /// The plugin is being swapped for its new version: wait for the next view.
    Swapping,
    /// The plugin is not running (it failed to load, or the host is stopping).
    Absent,
}

/// A plugin checked against the host configuration, ready to compile.
struct Admitted {
    folder: PathBuf,
    manifest: Manifest,
    secrets: Secrets,
}

impl PluginSet {
    /// A set without plugins, to `add` them one by one.
    pub fn empty() -> PluginSet {
        PluginSet {
            members: Mutex::new(Vec::new()),
            view: RwLock::new(Arc::default()),
            changes: tokio::sync::watch::Sender::new(0),
            failed: Mutex::new(Vec::new()),
            listen: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            compiles: Mutex::new(Vec::new()),
            sources: OnceLock::new(),
            reload: ReloadState::default(),
        }
    }

    /// Reads every manifest of `dir` and, for each plugin the configuration does not
    /// disable, compiles its component on a thread of its own and starts it when ready;
    /// returns at once. A plugin that fails to load is reported and the others still start.
    pub fn start(runtime: Arc<Runtime>, dir: &Path, config: &HostConfig, history: &SharedHistory) -> Result<Arc<PluginSet>> {
        let set = Arc::new(PluginSet::empty());
        let sources =
            Sources { runtime, dir: dir.to_path_buf(), config: config.clone(), history: history.clone(), transport: Transport::network()? };
        let _ = set.sources.set(sources);
        let mut admitted = Vec::new();
        for found in manifest::discover(dir)? {
            match found.manifest.and_then(|manifest| admit(manifest, &found.folder, config)) {
                Ok(Some(plugin)) => admitted.push(plugin),
                Ok(None) => {}
                Err(error) => set.record_failure(format!("{error:#}")),
            }
        }
        if admitted.is_empty() && set.failed().is_empty() {
            tracing::warn!("no plugin in {} (expected folders holding a {})", dir.display(), manifest::MANIFEST_FILE);
        }
        {
            let mut listen = set.listen.lock().expect("plugin set lock");
            listen
                .extend(admitted.iter().filter_map(|plugin| Some((plugin.manifest.grants.listen.clone()?, plugin.manifest.name.clone()))));
        }
        set.publish(|view| {
            view.compiling = admitted.iter().map(|plugin| plugin.manifest.name.clone()).collect();
            view.prefixes =
                admitted.iter().filter_map(|plugin| Some((prefix_of(&plugin.manifest)?, plugin.manifest.name.clone()))).collect();
        });
        for plugin in admitted {
            let set_for_thread = set.clone();
            let name = plugin.manifest.name.clone();
            let compile = std::thread::Builder::new().name(format!("compile-{name}")).spawn(move || {
                let set = set_for_thread;
                let folder = plugin.folder.clone();
                let outcome = reload::fingerprint(&plugin.manifest).and_then(|fingerprint| {
                    let (loaded, env) = set.compile(plugin)?;
                    let cursor = set.open_cursor(&name)?;
                    set.install(Some(folder), Some(fingerprint), loaded, env, cursor)
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

    fn sources(&self) -> Result<&Sources> {
        self.sources.get().ok_or_else(|| anyhow::anyhow!("this plugin set was not started from a plugin directory"))
    }

    /// Compiles (or takes from the cache) an admitted plugin's component and prepares
    /// what its instances get.
    fn compile(&self, plugin: Admitted) -> Result<(LoadedPlugin, PluginEnv)> {
        let sources = self.sources()?;
        let name = plugin.manifest.name.clone();
        let env = plugin_env(&sources.config, &sources.history, &plugin.secrets, &sources.transport);
        let loaded = sources.runtime.load(plugin.manifest, &sources.config.runtime.data_dir)?;
        tracing::info!(plugin = %name, origin = ?loaded.origin, inlined = loaded.inlined, "loaded in {:.1} ms", loaded.load_time.as_secs_f64() * 1e3);
        Ok((loaded, env))
    }

    /// The plugin's cursor as its file says now (0 for a plugin new to this history).
    fn open_cursor(&self, name: &str) -> Result<Cursor> {
        let history = &self.sources()?.history;
        let rows = history.snapshot().row_count();
        let cursor = match history.dir().map(|dir| dir.join("cursors")) {
            Some(dir) => Cursor::open(&dir, name, rows)?,
            None => Cursor::from(0),
        };
        if cursor.next_row > 0 {
            tracing::info!(plugin = %name, "resuming at row {} of {rows}", cursor.next_row);
        }
        Ok(cursor)
    }

    fn options(&self) -> RunnerOptions {
        self.sources.get().map(|sources| runner_options(&sources.config)).unwrap_or(RunnerOptions {
            backoff_first: Duration::from_millis(100),
            backoff_longest: Duration::from_secs(30),
            max_batch_rows: 65_536,
            update_interval: 1,
        })
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
        // Added before the servers are bound, its grant is served like one found at start.
        if let Some(grant) = plugin.manifest.grants.listen.clone() {
            self.listen.lock().expect("plugin set lock").push((grant, plugin.manifest.name.clone()));
        }
        self.install_with(None, None, plugin, env, cursor.into(), options)
    }

    fn install(
        &self,
        folder: Option<PathBuf>,
        fingerprint: Option<Fingerprint>,
        plugin: LoadedPlugin,
        env: PluginEnv,
        cursor: Cursor,
    ) -> Result<()> {
        self.install_with(folder, fingerprint, plugin, env, cursor, self.options())
    }

    fn install_with(
        &self,
        folder: Option<PathBuf>,
        fingerprint: Option<Fingerprint>,
        plugin: LoadedPlugin,
        env: PluginEnv,
        cursor: Cursor,
        options: RunnerOptions,
    ) -> Result<()> {
        let mut members = self.members();
        if self.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let runner = PluginRunner::spawn(plugin.clone(), env.clone(), cursor, options)?;
        let member = Member { folder, fingerprint, plugin, env, options, runner };
        let running = member.running();
        let prefix = prefix_of(&member.plugin.manifest);
        members.push(member);
        drop(members);
        self.publish(|view| {
            set_prefix(view, &running.name, prefix);
            view.running.push(running);
        });
        // Rows may have come while it compiled.
        self.notify_all();
        Ok(())
    }

    fn members(&self) -> MutexGuard<'_, Vec<Member>> {
        self.members.lock().expect("plugin set lock")
    }

    /// Replaces the view by `change` applied to a copy of it.
    fn publish(&self, change: impl FnOnce(&mut PluginView)) {
        {
            let mut view = self.view.write().expect("plugin view lock");
            let mut next = PluginView::clone(&view);
            change(&mut next);
            *view = Arc::new(next);
        }
        self.changes.send_modify(|version| *version += 1);
    }

    /// The plugins as they are now.
    pub fn view(&self) -> Arc<PluginView> {
        self.view.read().expect("plugin view lock").clone()
    }

    /// Marks every change of the view: what a request waiting out a swap waits on.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn record_failure(&self, error: String) {
        tracing::error!("{error}");
        self.failed.lock().expect("plugin set lock").push(error);
    }

    /// Plugins that could not be loaded, with the reason.
    pub fn failed(&self) -> Vec<String> {
        self.failed.lock().expect("plugin set lock").clone()
    }

    /// Where each plugin serving HTTP was to be served when the host started, by name.
    pub fn listen_grants(&self) -> Vec<(ListenGrant, String)> {
        self.listen.lock().expect("plugin set lock").clone()
    }

    /// The plugin serving `path` on the host's server now, and the prefix it is served at.
    pub fn route(&self, path: &str) -> Option<(String, String)> {
        let view = self.view();
        let serves = |prefix: &str| path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'));
        view.prefixes.iter().filter(|(prefix, _)| serves(prefix)).max_by_key(|(prefix, _)| prefix.len()).cloned()
    }

    /// Where a request for `plugin` goes now.
    pub fn endpoint(&self, plugin: &str) -> Endpoint {
        let view = self.view();
        if view.swapping.iter().any(|name| name == plugin) {
            return Endpoint::Swapping;
        }
        if let Some(endpoint) = view.running.iter().find(|running| running.name == plugin).and_then(|running| running.endpoint.clone()) {
            return Endpoint::Ready(endpoint);
        }
        if view.compiling.iter().any(|name| name == plugin) { Endpoint::Compiling } else { Endpoint::Absent }
    }

    pub fn notify_all(&self) {
        for running in &self.view().running {
            running.notifier.notify();
        }
    }

    /// The counters of every running plugin.
    pub fn stats(&self) -> Vec<(String, Arc<PluginStats>)> {
        self.view().running.iter().map(|running| (running.name.clone(), running.stats.clone())).collect()
    }

    /// The counters of one plugin, if it runs.
    pub fn stats_of(&self, name: &str) -> Option<Arc<PluginStats>> {
        self.view().running.iter().find(|running| running.name == name).map(|running| running.stats.clone())
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Every plugin receives what is left, then `stop`; plugins stop in parallel. A plugin
    /// still compiling is not started (its rows wait in the history for the next run).
    pub fn stop_all(&self) {
        let members = {
            let mut members = self.members();
            self.closed.store(true, Ordering::Release);
            std::mem::take(&mut *members)
        };
        let still_compiling = self.view().compiling.clone();
        if !still_compiling.is_empty() {
            tracing::warn!("stopping while {} still compile; they start at the next run", still_compiling.join(", "));
        }
        std::thread::scope(|scope| {
            for member in members {
                scope.spawn(move || member.runner.stop());
            }
        });
        self.publish(|view| {
            for running in &mut view.running {
                running.endpoint = None;
            }
        });
    }
}

/// The path prefix a manifest is granted on the host's server.
fn prefix_of(manifest: &Manifest) -> Option<String> {
    manifest.grants.listen.as_ref().and_then(|listen| listen.prefix.clone())
}

/// Routes `prefix` (or nothing) to `plugin`, in place of what it had.
fn set_prefix(view: &mut PluginView, plugin: &str, prefix: Option<String>) {
    view.prefixes.retain(|(_, name)| name != plugin);
    if let Some(prefix) = prefix {
        view.prefixes.push((prefix, plugin.to_string()));
    }
}

/// Checks a manifest against the host configuration: `None` for a plugin the
/// configuration disables or whose credential is not set (a warning says where to set it).
fn admit(mut manifest: Manifest, folder: &Path, config: &HostConfig) -> Result<Option<Admitted>> {
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
    Ok(Some(Admitted { folder: folder.to_path_buf(), manifest, secrets }))
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
