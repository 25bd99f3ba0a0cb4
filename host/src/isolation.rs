//! One plugin alone: a temporary data directory, a recording stand-in for outgoing HTTP,
//! captured logs, and direct calls, one at a time. `telemetry-host plugin test` and the
//! test kit are built on it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::bindings::http_types::{Request, Response};
use crate::bindings::types::StartContext;
use crate::callbacks::Callbacks;
use crate::capabilities::log::LogLine;
use crate::capabilities::outgoing_http::{Exchange, Responder, Transport};
use crate::capabilities::secrets::Secrets;
use crate::config::HostConfig;
use crate::history::{History, SharedHistory};
use crate::ingest::transforms::series_names;
use crate::ingest::{Ingest, Outcome};
use crate::plugins::instance::{CallFailure, Instance, PluginEnv};
use crate::plugins::loader::{LoadedPlugin, Runtime};
use crate::plugins::manifest::{self, Access, DataDirGrant, ListenGrant, Manifest};

/// Most rows in one update, as the host's default `runtime.max_batch_rows`.
const MAX_BATCH_ROWS: u64 = 65_536;

/// How to run the plugin.
pub struct IsolationOptions {
    /// Transforms and other host settings; the built-in default if not changed.
    pub host_config: HostConfig,
    /// Merged over the manifest's `[config]`.
    pub plugin_config: toml::Table,
    /// The plugin's data directory; a fresh temporary one if `None`.
    pub data_dir: Option<PathBuf>,
    /// Answers outgoing requests; `200 {}` if `None`. `Some(Transport::Network)` is not
    /// offered on purpose: isolation never reaches the network.
    pub responder: Option<Responder>,
    pub secrets: Secrets,
    /// Compiled components are cached here, if set.
    pub cache_dir: Option<PathBuf>,
}

impl Default for IsolationOptions {
    fn default() -> Self {
        IsolationOptions {
            host_config: HostConfig::builtin_default(),
            plugin_config: toml::Table::new(),
            data_dir: None,
            responder: None,
            secrets: Secrets::default(),
            cache_dir: None,
        }
    }
}

pub struct IsolatedPlugin {
    plugin: LoadedPlugin,
    env: PluginEnv,
    pub history: SharedHistory,
    ingest: Ingest,
    instance: Option<Instance>,
    /// Where the plugin's calls run, one at a time, as on a runner's thread.
    calls: tokio::runtime::Runtime,
    cursor: u64,
    data_dir: PathBuf,
    _temp_dir: Option<tempfile::TempDir>,
    pub exchanges: Arc<Mutex<Vec<Exchange>>>,
    pub logs: Arc<Mutex<Vec<LogLine>>>,
    // Last: the engine must outlive the plugin's store.
    _runtime: Runtime,
}

impl IsolatedPlugin {
    /// Loads `path` (a component, its folder, or its `plugin.toml`) with the grants of
    /// its manifest, the data directory replaced by `options.data_dir` or a temporary
    /// one. A bare component without a manifest gets a data directory and a listen grant.
    pub fn load(path: &Path, options: IsolationOptions) -> Result<IsolatedPlugin> {
        let mut manifest = manifest_beside(path)?;
        crate::plugins::merge_tables(&mut manifest.config, options.plugin_config);
        let (data_dir, temp_dir) = match options.data_dir {
            Some(dir) => (dir, None),
            None => {
                let temp = tempfile::Builder::new().prefix("telemetry-plugin-").tempdir()?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let access = manifest.grants.data_dir.as_ref().map_or(Access::ReadWrite, |grant| grant.access);
        std::fs::create_dir_all(&data_dir)?;
        let data_dir = data_dir.canonicalize()?;
        manifest.grants.data_dir = Some(DataDirGrant { path: data_dir.clone(), access });
        let runtime = Runtime::new(options.cache_dir)?;
        let plugin = runtime.load(manifest, &data_dir)?;
        let ingest = Ingest::new(
            &options.host_config.telemetry,
            History::new(series_names(&options.host_config.telemetry.transforms)),
            Callbacks::none(),
        );
        let history = ingest.shared();
        let exchanges = Arc::new(Mutex::new(Vec::new()));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let mut transport = Transport::recording(exchanges.clone());
        if let (Transport::Recording { responder, .. }, Some(custom)) = (&mut transport, options.responder) {
            *responder = custom;
        }
        let env = PluginEnv {
            history: history.clone(),
            secrets: options.secrets,
            transport,
            log_capture: Some(logs.clone()),
            host_config_json: options.host_config.plugin_view_json(),
            step_series: options.host_config.telemetry.step_key.clone(),
            run_started_ms: crate::ingest::now_ms(),
            denied: Arc::new(AtomicU64::new(0)),
            log_budget: Arc::default(),
        };
        Ok(IsolatedPlugin {
            plugin,
            env,
            history,
            ingest,
            instance: None,
            calls: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start a runtime for the plugin's calls")?,
            cursor: 0,
            data_dir,
            _temp_dir: temp_dir,
            exchanges,
            logs,
            _runtime: runtime,
        })
    }

    /// Instantiates the plugin and calls `start`, from the current cursor.
    pub fn start(&mut self) -> Result<(), CallFailure> {
        let mut instance = self.calls.block_on(Instance::new(&self.plugin, &self.env))?;
        let context = StartContext {
            plugin_name: self.plugin.manifest.name.clone(),
            config_json: serde_json::to_string(&self.plugin.manifest.config).unwrap_or_else(|_| "{}".into()),
            host_config_json: self.env.host_config_json.clone(),
            series: self.history.snapshot().series_names().to_vec(),
            step_series: self.env.step_series.clone(),
            next_row: self.cursor,
            run_started_ms: self.env.run_started_ms,
        };
        self.calls.block_on(instance.start(&context))?;
        self.instance = Some(instance);
        Ok(())
    }

    /// The history itself, to fill it directly (benchmarks, tests of long histories);
    /// rows pushed are seen after `commit`.
    pub fn history_mut(&mut self) -> &mut History {
        self.ingest.history_mut()
    }

    /// Adds one sample to the history (not yet delivered).
    pub fn push_sample(&mut self, sample: &Value) -> Result<()> {
        match self.ingest.accept(sample, "test") {
            Outcome::Accepted => self.ingest.commit().map(drop),
            Outcome::Refused(reason) => anyhow::bail!(reason),
        }
    }

    /// Adds NDJSON samples; returns how many were refused.
    pub fn push_ndjson(&mut self, text: &str) -> u64 {
        let refused = self.ingest.refused();
        if let Err(error) = self.ingest.read_ndjson(text.as_bytes(), "input") {
            tracing::error!("{error:#}");
        }
        self.ingest.refused() - refused
    }

    /// Delivers every row past the cursor, in batches of at most `MAX_BATCH_ROWS` as the
    /// host's runners do.
    pub fn deliver(&mut self) -> Result<(), CallFailure> {
        loop {
            let instance = self.instance.as_mut().ok_or_else(|| CallFailure::Trapped("the plugin is not started".into()))?;
            let batch = self.history.snapshot().batch(self.cursor, MAX_BATCH_ROWS);
            if batch.timestamps_ms.is_empty() {
                return Ok(());
            }
            let rows = batch.timestamps_ms.len() as u64;
            match self.calls.block_on(instance.update(batch)) {
                Ok(()) => self.cursor += rows,
                Err(failure) => {
                    if let CallFailure::Trapped(_) = failure {
                        self.instance = None;
                    }
                    return Err(failure);
                }
            }
        }
    }

    /// Treats the rows before `row` as delivered, as a plugin resumed at `row` would (for
    /// benchmarks and tests that start a plugin late in a long history).
    pub fn skip_to(&mut self, row: u64) {
        self.cursor = row;
    }

    /// Hands `batch` to the plugin as is, without moving the cursor (for benchmarks).
    pub fn update_raw(&mut self, batch: crate::history::RowBatch) -> Result<(), CallFailure> {
        let instance = self.instance.as_mut().ok_or_else(|| CallFailure::Trapped("the plugin is not started".into()))?;
        self.calls.block_on(instance.update(batch))
    }

    /// Sends one HTTP request to the plugin's handler.
    pub fn request(&mut self, method: &str, target: &str, body: &[u8]) -> Result<Response, CallFailure> {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let request = Request {
            method: method.to_string(),
            target: path.to_string(),
            query: query.to_string(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_vec(),
        };
        self.request_raw(&request)
    }

    pub fn request_raw(&mut self, request: &Request) -> Result<Response, CallFailure> {
        let instance = self.instance.as_mut().ok_or_else(|| CallFailure::Trapped("the plugin is not started".into()))?;
        if !instance.serves_http() {
            return Err(CallFailure::Trapped("the plugin exports no http-handler".into()));
        }
        self.calls.block_on(instance.handle(request))
    }

    /// Delivers what is left and calls `stop`.
    pub fn stop(&mut self) -> Result<(), CallFailure> {
        self.deliver()?;
        let mut instance = self.instance.take().ok_or_else(|| CallFailure::Trapped("the plugin is not started".into()))?;
        self.calls.block_on(instance.stop())
    }

    /// Drops the instance without `stop`, as a crash would, and starts a new one from the
    /// cursor.
    pub fn crash_and_restart(&mut self) -> Result<(), CallFailure> {
        self.instance = None;
        self.start()
    }

    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn name(&self) -> &str {
        &self.plugin.manifest.name
    }

    /// What the plugin wrote, sent and logged, as `plugin test` prints it.
    pub fn report(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "plugin `{}`: {} rows delivered", self.name(), self.cursor);
        let _ = writeln!(text, "files in its data directory ({}):", self.data_dir.display());
        let mut files = Vec::new();
        collect_files(&self.data_dir, &mut files);
        files.sort();
        for (path, size) in files {
            let _ = writeln!(text, "  {} ({size} bytes)", path.strip_prefix(&self.data_dir).unwrap_or(&path).display());
        }
        let exchanges = self.exchanges.lock().expect("recording lock");
        let _ = writeln!(text, "outgoing requests ({}):", exchanges.len());
        for exchange in exchanges.iter() {
            let status = exchange.response.as_ref().map_or_else(Clone::clone, |response| response.status.to_string());
            let _ = writeln!(
                text,
                "  {} {} ({} bytes) -> {status}",
                exchange.request.method,
                exchange.request.target,
                exchange.request.body.len()
            );
        }
        let logs = self.logs.lock().expect("log lock");
        let _ = writeln!(text, "log ({} lines):", logs.len());
        for line in logs.iter() {
            let _ = writeln!(text, "  [{:?}] {}", line.level, line.message);
        }
        text
    }
}

fn collect_files(dir: &Path, files: &mut Vec<(PathBuf, u64)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, files);
        } else if let Ok(metadata) = entry.metadata() {
            files.push((path, metadata.len()));
        }
    }
}

/// The manifest for `path`: the file itself if it is one, the `plugin.toml` of a folder,
/// or the `plugin.toml` beside a component (pointed at that component); otherwise a
/// minimal one.
pub fn manifest_beside(path: &Path) -> Result<Manifest> {
    let beside = path.with_file_name(manifest::MANIFEST_FILE);
    if path.extension().is_some_and(|extension| extension == "wasm") && beside.is_file() {
        let mut manifest = Manifest::load(&beside)?;
        manifest.component = path.to_path_buf();
        return Ok(manifest);
    }
    let bare = path.extension().is_some_and(|extension| extension == "wasm");
    let mut manifest = crate::plugins::manifest_for(path).with_context(|| format!("cannot find a plugin at {}", path.display()))?;
    if bare {
        // No manifest: grant what a handler needs; isolation never listens anyway.
        manifest.grants.listen = Some(ListenGrant { address: None, prefix: Some(format!("/{}", manifest.name)) });
    }
    Ok(manifest)
}
