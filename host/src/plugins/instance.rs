//! One running instance of a plugin: its store (capabilities, limits) and the calls into
//! it, each under the plugin's time limit. A call that traps leaves the instance
//! unusable; the runner then makes a new one.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::limiter::PluginLimiter;
use super::loader::{EPOCH_TICK, LoadedPlugin, PooledHandler};
use crate::bindings::connector_async::exports::telemetry::connector as exports_async;
use crate::bindings::http_types::{Request, Response};
use crate::bindings::types::{ConnectorError, Rows, StartContext};
use crate::bindings::{http_handler, telemetry_connector};
use crate::capabilities::history::HistoryReader;
use crate::capabilities::log::{LogLine, PluginLog};
use crate::capabilities::outgoing_http::{OutgoingHttp, Transport};
use crate::capabilities::secrets::Secrets;
use crate::history::{RowBatch, SharedHistory};

/// The data of a plugin's store: one field per capability.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: PluginLimiter,
    pub log: PluginLog,
    pub history: HistoryReader,
    pub outgoing: OutgoingHttp,
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// What the host gives every instance of a plugin.
#[derive(Clone)]
pub struct PluginEnv {
    pub history: SharedHistory,
    pub secrets: Secrets,
    pub transport: Transport,
    /// When set, plugin log lines are also kept here.
    pub log_capture: Option<Arc<Mutex<Vec<LogLine>>>>,
    pub host_config_json: String,
    pub step_series: Option<String>,
    pub run_started_ms: i64,
    /// Shared by all instances of the plugin: outgoing requests refused.
    pub denied: Arc<AtomicU64>,
    /// The plugin's allowance of log lines, shared by its instances.
    pub log_budget: Arc<crate::capabilities::log::LogBudget>,
}

/// Why a call did not return normally.
#[derive(Debug)]
pub enum CallFailure {
    /// The plugin returned an error.
    Plugin(ConnectorError),
    /// The instance trapped (panic, time or memory limit, bug): it must be replaced.
    Trapped(String),
}

impl std::fmt::Display for CallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallFailure::Plugin(ConnectorError::InvalidConfig(message)) => write!(f, "invalid config: {message}"),
            CallFailure::Plugin(ConnectorError::Unavailable(message)) => write!(f, "unavailable: {message}"),
            CallFailure::Plugin(ConnectorError::Rejected(message)) => write!(f, "rejected: {message}"),
            CallFailure::Plugin(ConnectorError::Internal(message)) => write!(f, "internal error: {message}"),
            CallFailure::Trapped(reason) => f.write_str(reason),
        }
    }
}

pub struct Instance {
    store: Store<PluginState>,
    connector: telemetry_connector::Guest,
    http_handler: Option<http_handler::Guest>,
    call_timeout: Duration,
    memory_mb: u64,
}

impl Instance {
    /// Instantiates the plugin (without calling `start`).
    pub fn new(plugin: &LoadedPlugin, env: &PluginEnv) -> Result<Instance, CallFailure> {
        let mut store = new_store(plugin, env)?;
        store.epoch_deadline_trap();
        let (call_timeout, memory_mb) = limits(plugin);
        arm_deadline(&mut store, call_timeout);
        let loaded = plugin.pre.instantiate(&mut store).and_then(|wasm| {
            let connector = plugin.connector.load(&mut store, &wasm)?;
            let http_handler = plugin.http_handler.as_ref().map(|indices| indices.load(&mut store, &wasm)).transpose()?;
            Ok((connector, http_handler))
        });
        let (connector, http_handler) = loaded.map_err(|error| trap_reason(error, call_timeout, memory_mb))?;
        Ok(Instance { store, connector, http_handler, call_timeout, memory_mb })
    }

    pub fn start(&mut self, context: &StartContext) -> Result<(), CallFailure> {
        self.arm_deadline();
        let connector = self.connector.clone();
        let result = connector.call_start(&mut self.store, context);
        self.finish(result)
    }

    /// Hands the rows over; the batch is moved into the call, never copied on the host.
    pub fn update(&mut self, batch: RowBatch) -> Result<(), CallFailure> {
        let rows = Rows { first_row: batch.first_row, timestamps_ms: batch.timestamps_ms, columns: batch.columns };
        self.arm_deadline();
        let connector = self.connector.clone();
        let result = connector.call_update(&mut self.store, &rows);
        self.finish(result)
    }

    pub fn stop(&mut self) -> Result<(), CallFailure> {
        self.arm_deadline();
        let connector = self.connector.clone();
        let result = connector.call_stop(&mut self.store);
        self.finish(result)
    }

    pub fn serves_http(&self) -> bool {
        self.http_handler.is_some()
    }

    pub fn handle(&mut self, request: &Request) -> Result<Response, CallFailure> {
        let handler = self.http_handler.clone().ok_or_else(|| CallFailure::Trapped("the plugin serves no HTTP".into()))?;
        self.arm_deadline();
        let result = handler.call_handle(&mut self.store, request);
        self.store.data_mut().outgoing.call_deadline = None;
        result.map_err(|error| self.trap_reason(error))
    }

    fn arm_deadline(&mut self) {
        arm_deadline(&mut self.store, self.call_timeout);
    }

    fn finish(&mut self, result: wasmtime::Result<Result<(), ConnectorError>>) -> Result<(), CallFailure> {
        self.store.data_mut().outgoing.call_deadline = None;
        call_outcome(result, self.call_timeout, self.memory_mb)
    }

    fn trap_reason(&self, error: wasmtime::Error) -> CallFailure {
        trap_reason(error, self.call_timeout, self.memory_mb)
    }
}

/// A handler instance of a pool: called asynchronously on the HTTP server's workers, it
/// yields to them at every epoch tick, so a long call holds up no other request, and traps
/// at the plugin's call time limit.
pub struct PooledInstance {
    store: Store<PluginState>,
    connector: exports_async::telemetry_connector::Guest,
    http_handler: exports_async::http_handler::Guest,
    call_timeout: Duration,
    memory_mb: u64,
}

impl PooledInstance {
    /// Instantiates the plugin and calls its `start`.
    pub async fn start(
        plugin: &LoadedPlugin,
        pooled: &PooledHandler,
        env: &PluginEnv,
        context: &StartContext,
    ) -> Result<PooledInstance, CallFailure> {
        let mut store = new_store(plugin, env)?;
        store.epoch_deadline_callback(|store| {
            let expired = store.data().outgoing.call_deadline.is_none_or(|deadline| Instant::now() >= deadline);
            // tokio's yield lets the worker poll for I/O before it resumes the call.
            Ok(if expired { UpdateDeadline::Interrupt } else { UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())) })
        });
        let (call_timeout, memory_mb) = limits(plugin);
        arm_yielding_deadline(&mut store, call_timeout);
        let loaded = async {
            let wasm = pooled.pre.instantiate_async(&mut store).await?;
            Ok((pooled.connector.load(&mut store, &wasm)?, pooled.http_handler.load(&mut store, &wasm)?))
        };
        let (connector, http_handler) = loaded.await.map_err(|error| trap_reason(error, call_timeout, memory_mb))?;
        let mut instance = PooledInstance { store, connector, http_handler, call_timeout, memory_mb };
        instance.arm_deadline();
        let connector = instance.connector.clone();
        let result = connector.call_start(&mut instance.store, context).await;
        instance.finish(result)?;
        Ok(instance)
    }

    pub async fn handle(&mut self, request: &Request) -> Result<Response, CallFailure> {
        self.arm_deadline();
        let handler = self.http_handler.clone();
        let result = handler.call_handle(&mut self.store, request).await;
        self.store.data_mut().outgoing.call_deadline = None;
        result.map_err(|error| trap_reason(error, self.call_timeout, self.memory_mb))
    }

    pub async fn stop(&mut self) -> Result<(), CallFailure> {
        self.arm_deadline();
        let connector = self.connector.clone();
        let result = connector.call_stop(&mut self.store).await;
        self.finish(result)
    }

    fn arm_deadline(&mut self) {
        arm_yielding_deadline(&mut self.store, self.call_timeout);
    }

    fn finish(&mut self, result: wasmtime::Result<Result<(), ConnectorError>>) -> Result<(), CallFailure> {
        self.store.data_mut().outgoing.call_deadline = None;
        call_outcome(result, self.call_timeout, self.memory_mb)
    }
}

/// What a call of `start`, `update` or `stop` came to.
fn call_outcome(result: wasmtime::Result<Result<(), ConnectorError>>, call_timeout: Duration, memory_mb: u64) -> Result<(), CallFailure> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(CallFailure::Plugin(error)),
        Err(error) => Err(trap_reason(error, call_timeout, memory_mb)),
    }
}

/// A store for an instance of `plugin`, with its capabilities and memory limit.
fn new_store(plugin: &LoadedPlugin, env: &PluginEnv) -> Result<Store<PluginState>, CallFailure> {
    let manifest = &plugin.manifest;
    let data_dir = plugin.data_dir.as_deref().zip(manifest.grants.data_dir.as_ref().map(|grant| grant.access));
    let memory_bytes = usize::try_from(manifest.limits.memory_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
    let log = match &env.log_capture {
        Some(capture) => PluginLog::captured(&manifest.name, capture.clone(), env.log_budget.clone()),
        None => PluginLog::to_tracing(&manifest.name, env.log_budget.clone()),
    };
    let stderr = crate::capabilities::stderr::PluginStderr::new(log.clone());
    let wasi =
        crate::capabilities::filesystem::wasi_context(data_dir, stderr).map_err(|error| CallFailure::Trapped(format!("{error:#}")))?;
    let mut outgoing = OutgoingHttp::new(&manifest.name, manifest.grants.outbound.clone(), env.secrets.clone(), env.transport.clone());
    outgoing.denied = env.denied.clone();
    let state = PluginState {
        wasi,
        table: ResourceTable::new(),
        limits: PluginLimiter::new(memory_bytes),
        log,
        history: HistoryReader::new(env.history.clone()),
        outgoing,
    };
    let mut store = Store::new(plugin.pre.engine(), state);
    store.limiter(|state| &mut state.limits);
    Ok(store)
}

/// A call's time limit and the memory limit, for explaining traps.
fn limits(plugin: &LoadedPlugin) -> (Duration, u64) {
    (Duration::from_millis(plugin.manifest.limits.call_timeout_ms), plugin.manifest.limits.memory_mb)
}

/// The next epoch tick yields (the callback above decides whether the call has run out
/// of time), whatever the time limit.
fn arm_yielding_deadline(store: &mut Store<PluginState>, call_timeout: Duration) {
    store.set_epoch_deadline(1);
    store.data_mut().outgoing.call_deadline = Some(Instant::now() + call_timeout);
}

fn arm_deadline(store: &mut Store<PluginState>, call_timeout: Duration) {
    let ticks = call_timeout.as_micros().div_ceil(EPOCH_TICK.as_micros()) as u64 + 1;
    store.set_epoch_deadline(ticks);
    store.data_mut().outgoing.call_deadline = Some(Instant::now() + call_timeout);
}

fn trap_reason(error: wasmtime::Error, call_timeout: Duration, memory_mb: u64) -> CallFailure {
    {
        let text = format!("{error:#}");
        let reason = match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => format!("exceeded its call time limit of {} ms", call_timeout.as_millis()),
            _ if text.contains("past the plugin's limit") => {
                format!("ran out of memory (limit {memory_mb} MiB) counting all its memories and tables")
            }
            Some(Trap::UnreachableCodeReached) => {
                format!("trapped: unreachable code, usually a panic or abort in the plugin ({})", first_line(&text))
            }
            Some(trap) => format!("trapped: {trap}"),
            None => first_line(&text).to_string(),
        };
        CallFailure::Trapped(reason)
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}
