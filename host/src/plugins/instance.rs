//! One running instance of a plugin: its store (capabilities, limits) and the calls into
//! it, each under the plugin's time limit. A call that traps or runs out of time leaves the
//! instance unusable; its owner (the runner, a handler pool) then makes a new one.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::limiter::PluginLimiter;
use super::loader::LoadedPlugin;
use super::manifest::Limits;
use crate::bindings::connector_async::exports::telemetry::connector as exports;
use crate::bindings::http_types::{Request, Response};
use crate::bindings::types::{ConnectorError, Rows, StartContext};
use crate::capabilities::disk_quota::{DiskQuota, DiskQuotaView};
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
    disk_quota: Option<Arc<DiskQuota>>,
}

impl DiskQuotaView for PluginState {
    fn disk_quota(&self) -> Option<&Arc<DiskQuota>> {
        self.disk_quota.as_ref()
    }
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

impl CallFailure {
    /// The first line: what an HTTP client is told (the log has the whole chain).
    pub fn summary(&self) -> String {
        self.to_string().lines().next().unwrap_or_default().to_string()
    }
}

pub struct Instance {
    store: Store<PluginState>,
    connector: exports::telemetry_connector::Guest,
    http_handler: Option<exports::http_handler::Guest>,
    limits: Limits,
}

/// Every call into a plugin, of every kind of instance, is asynchronous and bounded the same
/// two ways: the epoch callback yields to the runtime at every tick and interrupts a
/// computation past the deadline, and a wall-clock timeout abandons a call waiting past it
/// (a WASI sleep, a pollable, a blocking read), which no epoch can interrupt. An abandoned
/// call leaves the instance unusable: it is dropped and replaced, as after a trap.
impl Instance {
    /// Instantiates the plugin (without calling `start`).
    pub async fn new(plugin: &LoadedPlugin, env: &PluginEnv) -> Result<Instance, CallFailure> {
        let mut store = new_store(plugin, env)?;
        store.epoch_deadline_callback(|store| {
            let expired = store.data().outgoing.call_deadline.is_none_or(|deadline| Instant::now() >= deadline);
            // tokio's yield lets the runtime poll for I/O and timers before the call resumes.
            Ok(if expired { UpdateDeadline::Interrupt } else { UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())) })
        });
        let limits = plugin.manifest.limits;
        arm_deadline(&mut store, &limits);
        let loaded = within(&limits, async {
            let wasm = plugin.pre.instantiate_async(&mut store).await?;
            let connector = plugin.connector.load(&mut store, &wasm)?;
            let http_handler = plugin.http_handler.as_ref().map(|indices| indices.load(&mut store, &wasm)).transpose()?;
            Ok((connector, http_handler))
        })
        .await;
        let (connector, http_handler) = loaded.map_err(|error| trap_reason(error, &limits))?;
        Ok(Instance { store, connector, http_handler, limits })
    }

    pub async fn start(&mut self, context: &StartContext) -> Result<(), CallFailure> {
        self.arm_deadline();
        let connector = self.connector.clone();
        let result = within(&self.limits, connector.call_start(&mut self.store, context)).await;
        self.finish(result)
    }

    /// Hands the rows over; the batch is moved into the call, never copied on the host.
    pub async fn update(&mut self, batch: RowBatch) -> Result<(), CallFailure> {
        let rows = Rows { first_row: batch.first_row, timestamps_ms: batch.timestamps_ms, columns: batch.columns };
        self.arm_deadline();
        let connector = self.connector.clone();
        let result = within(&self.limits, connector.call_update(&mut self.store, &rows)).await;
        self.finish(result)
    }

    pub async fn stop(&mut self) -> Result<(), CallFailure> {
        self.arm_deadline();
        let connector = self.connector.clone();
        let result = within(&self.limits, connector.call_stop(&mut self.store)).await;
        self.finish(result)
    }

    pub fn serves_http(&self) -> bool {
        self.http_handler.is_some()
    }

    pub async fn handle(&mut self, request: &Request) -> Result<Response, CallFailure> {
        let handler = self.http_handler.clone().ok_or_else(|| CallFailure::Trapped("the plugin serves no HTTP".into()))?;
        self.arm_deadline();
        let result = within(&self.limits, handler.call_handle(&mut self.store, request)).await;
        self.store.data_mut().outgoing.call_deadline = None;
        result.map_err(|error| trap_reason(error, &self.limits))
    }

    fn arm_deadline(&mut self) {
        arm_deadline(&mut self.store, &self.limits);
    }

    fn finish(&mut self, result: wasmtime::Result<Result<(), ConnectorError>>) -> Result<(), CallFailure> {
        self.store.data_mut().outgoing.call_deadline = None;
        // What a plugin says of a failure is logged by the host: without its secrets.
        let log = &self.store.data().log;
        let result = result.map(|outcome| {
            outcome.map_err(|error| match error {
                ConnectorError::InvalidConfig(message) => ConnectorError::InvalidConfig(log.scrub(message)),
                ConnectorError::Unavailable(message) => ConnectorError::Unavailable(log.scrub(message)),
                ConnectorError::Rejected(message) => ConnectorError::Rejected(log.scrub(message)),
                ConnectorError::Internal(message) => ConnectorError::Internal(log.scrub(message)),
            })
        });
        call_outcome(result, &self.limits)
    }
}

fn call_limit(limits: &Limits) -> Duration {
    Duration::from_millis(limits.call_timeout_ms)
}

/// A call abandoned at its wall-clock limit while it waited.
#[derive(Debug)]
struct WaitedPastLimit;

impl std::fmt::Display for WaitedPastLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the call was still waiting (a sleep, a poll or a blocking read) at its time limit")
    }
}

impl std::error::Error for WaitedPastLimit {}

/// `call`, abandoned if it has not returned within `limit`.
async fn within<R>(limits: &Limits, call: impl Future<Output = wasmtime::Result<R>>) -> wasmtime::Result<R> {
    match tokio::time::timeout(call_limit(limits), call).await {
        Ok(result) => result,
        Err(_) => Err(wasmtime::Error::new(WaitedPastLimit)),
    }
}

/// What a call of `start`, `update` or `stop` came to.
fn call_outcome(result: wasmtime::Result<Result<(), ConnectorError>>, limits: &Limits) -> Result<(), CallFailure> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(CallFailure::Plugin(error)),
        Err(error) => Err(trap_reason(error, limits)),
    }
}

/// A store for an instance of `plugin`, with its capabilities and memory limit.
fn new_store(plugin: &LoadedPlugin, env: &PluginEnv) -> Result<Store<PluginState>, CallFailure> {
    let manifest = &plugin.manifest;
    let data_dir = plugin.data_dir.as_deref().zip(manifest.grants.data_dir.as_ref().map(|grant| grant.access));
    let memory_bytes = usize::try_from(manifest.limits.memory_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
    let mut outgoing = OutgoingHttp::new(&manifest.name, manifest.grants.outbound.clone(), env.secrets.clone(), env.transport.clone());
    let log = match &env.log_capture {
        Some(capture) => PluginLog::captured(&manifest.name, capture.clone(), env.log_budget.clone()),
        None => PluginLog::to_tracing(&manifest.name, env.log_budget.clone()),
    }
    .scrubbing(outgoing.scrubber());
    let stderr = crate::capabilities::stderr::PluginStderr::new(log.clone());
    let wasi =
        crate::capabilities::filesystem::wasi_context(data_dir, stderr).map_err(|error| CallFailure::Trapped(format!("{error:#}")))?;
    outgoing.denied = env.denied.clone();
    outgoing.max_response_bytes = memory_bytes / 2;
    let mut table = ResourceTable::new();
    table.set_max_capacity(manifest.limits.handles as usize);
    let state = PluginState {
        wasi,
        table,
        limits: PluginLimiter::new(memory_bytes),
        log,
        history: HistoryReader::new(env.history.clone()),
        outgoing,
        disk_quota: plugin.disk_quota.clone(),
    };
    let mut store = Store::new(plugin.pre.engine(), state);
    store.limiter(|state| &mut state.limits);
    Ok(store)
}

/// The next epoch tick runs the callback, which decides whether the call has run out of
/// time; the wall-clock limit of `within` covers the waits between ticks.
fn arm_deadline(store: &mut Store<PluginState>, limits: &Limits) {
    store.set_epoch_deadline(1);
    store.data_mut().outgoing.call_deadline = Some(Instant::now() + call_limit(limits));
}

/// What a failed call came to: a one-line reason (which limit, or which trap) and, below
/// it, the whole error chain with the plugin's backtrace.
fn trap_reason(error: wasmtime::Error, limits: &Limits) -> CallFailure {
    let Limits { call_timeout_ms, memory_mb, handles, .. } = *limits;
    let text = format!("{error:?}");
    let reason = match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => format!("exceeded its call time limit of {} ms", call_timeout_ms),
        _ if error.is::<WaitedPastLimit>() => {
            return CallFailure::Trapped(format!("exceeded its call time limit of {} ms: {WaitedPastLimit}", call_timeout_ms));
        }
        _ if text.contains("resource table has no free keys") => {
            format!("ran out of handles (limit {handles} open files, streams and pollables at once: limits.handles)")
        }
        _ if text.contains("past the plugin's limit") => {
            format!("ran out of memory (limit {memory_mb} MiB) counting all its memories and tables")
        }
        Some(Trap::UnreachableCodeReached) => "trapped: unreachable code, usually a panic or abort in the plugin".to_string(),
        Some(trap) => format!("trapped: {trap}"),
        None => text.lines().next().unwrap_or_default().to_string(),
    };
    let details = text.trim_end();
    match details.contains('\n') || details != reason {
        true => CallFailure::Trapped(format!("{reason}\n{}", indent(details))),
        false => CallFailure::Trapped(reason),
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("    {line}")).collect::<Vec<_>>().join("\n")
}
