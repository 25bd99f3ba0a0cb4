//! Feeding one plugin: a thread of its own, a cursor of its own. Ingest never waits for a
//! plugin; a slow plugin gets bigger batches, a failed one is restarted with backoff from
//! its cursor, so it receives every row exactly once as far as the host can tell.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::cursor::{Cursor, CursorFile};
use super::handler_pool::HandlerPool;
use super::instance::{CallFailure, Instance, PluginEnv};
use super::loader::LoadedPlugin;
use crate::bindings::http_types::{Request, Response};
use crate::bindings::types::{ConnectorError, StartContext};
use crate::history::RowBatch;

/// How long a plugin waits without rows before it gets an empty update.
const IDLE_UPDATE: Duration = Duration::from_secs(1);

/// What a plugin's thread is asked to do.
pub enum Command {
    /// The history grew.
    RowsAvailable,
    /// Answer an HTTP request.
    Http(Request, tokio::sync::oneshot::Sender<Response>),
    /// Deliver what is left, call `stop` and end.
    Stop,
}

/// Counters of one plugin, readable while it runs.
#[derive(Debug, Default)]
pub struct PluginStats {
    /// Index of the next row the plugin will receive.
    pub cursor: AtomicU64,
    pub rows_delivered: AtomicU64,
    pub rows_rejected: AtomicU64,
    pub calls: AtomicU64,
    pub call_nanos: AtomicU64,
    pub traps: AtomicU64,
    pub restarts: AtomicU64,
    pub denied: Arc<AtomicU64>,
    /// The plugin's log lines over its allowance, dropped.
    pub log_budget: Arc<crate::capabilities::log::LogBudget>,
    /// Its allowance in its data directory, when it may write there.
    pub disk_quota: Option<Arc<crate::capabilities::disk_quota::DiskQuota>>,
    /// The plugin refused its configuration and is disabled until the host restarts.
    pub disabled: AtomicBool,
    /// The last failure, as logged.
    pub last_failure: Mutex<Option<String>>,
}

#[derive(Clone, Copy, Debug)]
pub struct RunnerOptions {
    pub backoff_first: Duration,
    pub backoff_longest: Duration,
    pub max_batch_rows: u64,
    /// Rows that make an update: fewer are delivered only after a pause or at stop.
    pub update_interval: u64,
}

/// The host's handle on one plugin's thread.
pub struct PluginRunner {
    pub name: String,
    sender: Sender<Command>,
    notified: Arc<AtomicBool>,
    pub stats: Arc<PluginStats>,
    thread: Option<JoinHandle<()>>,
    /// Disconnected once the thread has ended.
    exited: std::sync::mpsc::Receiver<()>,
    /// How long `stop` waits for the thread before it goes on without it.
    stop_grace: Duration,
    pool: Option<Arc<HandlerPool>>,
}

/// Tells one plugin the history grew, from any thread.
#[derive(Clone)]
pub struct Notifier {
    sender: Sender<Command>,
    notified: Arc<AtomicBool>,
}

impl Notifier {
    /// At most one pending notice: a plugin busy with a batch finds all new rows anyway.
    pub fn notify(&self) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            let _ = self.sender.send(Command::RowsAvailable);
        }
    }
}

/// Sends requests to a plugin's handler from the HTTP server: to its runner, or to its
/// pool of handler instances when the manifest asks for more than one.
#[derive(Clone)]
pub struct HttpEndpoint {
    pub plugin: String,
    target: HttpTarget,
}

#[derive(Clone)]
enum HttpTarget {
    Runner(Sender<Command>),
    Pool(Arc<HandlerPool>),
}

impl HttpEndpoint {
    /// The plugin's answer, or `None` if the plugin is gone.
    pub async fn call(&self, request: Request) -> Option<Response> {
        match &self.target {
            HttpTarget::Runner(sender) => {
                let (reply, answer) = tokio::sync::oneshot::channel();
                sender.send(Command::Http(request, reply)).ok()?;
                answer.await.ok()
            }
            HttpTarget::Pool(pool) => pool.call(&request).await,
        }
    }
}

impl PluginRunner {
    /// Starts the plugin's thread; it delivers rows from `cursor` on.
    pub fn spawn(plugin: LoadedPlugin, env: PluginEnv, cursor: Cursor, options: RunnerOptions) -> std::io::Result<PluginRunner> {
        PluginRunner::spawn_reporting(plugin, env, cursor, options, None)
    }

    /// Starts the plugin's thread and returns once its first `start` succeeded; if that
    /// fails, the thread ends without retrying (nothing delivered, the cursor untouched)
    /// and the error says why: a new version in a swap is judged by it.
    pub fn spawn_checked(plugin: LoadedPlugin, env: PluginEnv, cursor: Cursor, options: RunnerOptions) -> Result<PluginRunner, String> {
        let (report, started) = std::sync::mpsc::sync_channel(1);
        let runner = PluginRunner::spawn_reporting(plugin, env, cursor, options, Some(report))
            .map_err(|error| format!("cannot start a thread: {error}"))?;
        match started.recv_timeout(runner.stop_grace) {
            Ok(Ok(())) => Ok(runner),
            Ok(Err(message)) => {
                runner.stop();
                Err(message)
            }
            Err(_) => {
                let waited = runner.stop_grace.as_secs_f64();
                runner.stop();
                Err(format!("`start` did not return within {waited} s"))
            }
        }
    }

    fn spawn_reporting(
        plugin: LoadedPlugin,
        env: PluginEnv,
        cursor: Cursor,
        options: RunnerOptions,
        first_start: Option<std::sync::mpsc::SyncSender<Result<(), String>>>,
    ) -> std::io::Result<PluginRunner> {
        let (sender, receiver) = channel();
        let notified = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(PluginStats {
            cursor: AtomicU64::new(cursor.next_row),
            denied: env.denied.clone(),
            log_budget: env.log_budget.clone(),
            disk_quota: plugin.disk_quota.clone(),
            ..PluginStats::default()
        });
        let name = plugin.manifest.name.clone();
        let pool = HandlerPool::of(&plugin, &env, &stats, options.backoff_first).map(Arc::new);
        // The plugin's calls run on a runtime of the thread's own: WASI waits are timers on
        // it, so a call waiting past its limit is abandoned like one computing past it.
        let calls = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (exited_sender, exited) = std::sync::mpsc::sync_channel::<()>(0);
        let stop_grace = stop_grace(&plugin);
        let mut worker = Worker {
            calls,
            plugin,
            env,
            options,
            commands: receiver,
            notified: notified.clone(),
            stats: stats.clone(),
            cursor_file: cursor.file,
            failures: 0,
            reports: FailureReports::default(),
            first_start,
        };
        let thread = std::thread::Builder::new().name(format!("plugin-{name}")).spawn(move || {
            // Dropped when the thread ends, however it ends: what `stop` waits for.
            let _exited = exited_sender;
            worker.run()
        })?;
        Ok(PluginRunner { name, sender, notified, stats, thread: Some(thread), exited, stop_grace, pool })
    }

    /// Tells the plugin the history grew; cheap and never blocks.
    pub fn notify(&self) {
        self.notifier().notify();
    }

    pub fn notifier(&self) -> Notifier {
        Notifier { sender: self.sender.clone(), notified: self.notified.clone() }
    }

    pub fn http_endpoint(&self) -> HttpEndpoint {
        let target = match &self.pool {
            Some(pool) => HttpTarget::Pool(pool.clone()),
            None => HttpTarget::Runner(self.sender.clone()),
        };
        HttpEndpoint { plugin: self.name.clone(), target }
    }

    /// Delivers the remaining rows, calls `stop` and waits for the thread (and the
    /// handler instances), at most `stop_grace`: a plugin that takes longer is left
    /// behind (its cursor file has every delivery it acknowledged; the rest is offered again
    /// at the next start).
    pub fn stop(mut self) {
        if let Some(pool) = self.pool.take() {
            pool.stop();
        }
        let _ = self.sender.send(Command::Stop);
        match self.exited.recv_timeout(self.stop_grace) {
            Err(RecvTimeoutError::Timeout) => {
                tracing::error!(
                    plugin = %self.name,
                    "did not stop within {} s; going on without it (rows it did not acknowledge are offered again at the next start)",
                    self.stop_grace.as_secs_f64()
                );
            }
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
            }
        }
    }
}

/// The time a stopping plugin gets: its last deliveries and `stop`, each call within its
/// limit, with room for a few of them.
fn stop_grace(plugin: &LoadedPlugin) -> Duration {
    Duration::from_millis(plugin.manifest.limits.call_timeout_ms).saturating_mul(3).max(Duration::from_secs(5))
}

struct Worker {
    /// Where the plugin's calls run.
    calls: tokio::runtime::Runtime,
    plugin: LoadedPlugin,
    env: PluginEnv,
    options: RunnerOptions,
    commands: Receiver<Command>,
    notified: Arc<AtomicBool>,
    stats: Arc<PluginStats>,
    cursor_file: Option<CursorFile>,
    failures: u32,
    reports: FailureReports,
    /// Told how the first `start` went; a failed first start then ends the thread.
    first_start: Option<std::sync::mpsc::SyncSender<Result<(), String>>>,
}

/// Keeps a plugin that fails the same way again and again (a service down, no network)
/// from flooding the log, as Vector rate-limits its repeated internal logs: a failure is
/// reported when it differs from the last one reported, or when `INTERVAL` has passed
/// since, with how many like it were left out meanwhile. Left-out ones go to debug.
#[derive(Default)]
struct FailureReports {
    last: Option<(String, Instant)>,
    left_out: u32,
}

impl FailureReports {
    const INTERVAL: Duration = Duration::from_secs(60);

    /// `Some(left out since the last report)` if `message` is to be reported now.
    fn admit(&mut self, message: &str, now: Instant) -> Option<u32> {
        match &self.last {
            Some((last, at)) if last == message && now.duration_since(*at) < Self::INTERVAL => {
                self.left_out += 1;
                None
            }
            _ => {
                self.last = Some((message.to_string(), now));
                Some(std::mem::take(&mut self.left_out))
            }
        }
    }

    /// After a success, the next failure is news again.
    fn clear(&mut self) {
        *self = FailureReports::default();
    }
}

/// What a report says of the failures like it that were left out since the last one.
fn left_out_note(left_out: u32) -> String {
    match left_out {
        0 => String::new(),
        _ => format!("; {left_out} more like it since the last report"),
    }
}

/// How a delivery attempt ended.
enum Delivery {
    UpToDate,
    RetryLater,
    InstanceLost,
}

impl Worker {
    fn name(&self) -> &str {
        &self.plugin.manifest.name
    }

    fn run(&mut self) {
        loop {
            let started = self.start_instance();
            if let Some(report) = self.first_start.take() {
                let outcome = started.as_ref().map(|_| ()).map_err(|failure| format!("`start` failed: {failure}"));
                let failed = outcome.is_err();
                let _ = report.send(outcome);
                if failed {
                    return;
                }
            }
            match started {
                Ok(mut instance) => {
                    if self.serve(&mut instance) {
                        return;
                    }
                }
                Err(CallFailure::Plugin(ConnectorError::InvalidConfig(message))) => {
                    tracing::error!(plugin = self.name(), "disabled: invalid config: {message}");
                    self.record_failure(format!("invalid config: {message}"));
                    self.stats.disabled.store(true, Ordering::Release);
                    return self.serve_disabled(&format!("plugin `{}` is disabled: invalid config: {message}", self.name()));
                }
                Err(failure) => self.fail(&failure, "start"),
            }
            if self.wait_backoff() {
                // Stopping while down: one last attempt to hand over the rest.
                if let Ok(mut instance) = self.start_instance() {
                    self.finish(&mut instance);
                }
                return;
            }
        }
    }

    fn start_instance(&mut self) -> Result<Instance, CallFailure> {
        let next_row = self.stats.cursor.load(Ordering::Acquire);
        self.call(start_instance(&self.plugin, &self.env, next_row))
    }

    /// Delivers rows and answers requests until the instance is lost (false) or the
    /// host stops (true). Rows go out every `update_interval` rows (or, when fewer wait,
    /// after `IDLE_UPDATE` without more), however often new rows are announced; after a
    /// plugin says it is unavailable, nothing is offered before its backoff has passed.
    fn serve(&mut self, instance: &mut Instance) -> bool {
        let mut retry_at: Option<Instant> = None;
        let mut flush = false;
        loop {
            if retry_at.is_none_or(|at| Instant::now() >= at) {
                retry_at = match self.deliver(instance, flush) {
                    Delivery::UpToDate => None,
                    Delivery::RetryLater => Some(Instant::now() + self.backoff()),
                    Delivery::InstanceLost => return false,
                };
                flush = false;
            }
            let wait = retry_at.map_or(IDLE_UPDATE, |at| at.saturating_duration_since(Instant::now()));
            let command = match self.commands.recv_timeout(wait) {
                Ok(command) => command,
                Err(RecvTimeoutError::Timeout) if retry_at.is_some() => continue,
                Err(RecvTimeoutError::Timeout) => {
                    if self.rows_waiting() > 0 {
                        flush = true;
                    } else if let Delivery::InstanceLost = self.idle_update(instance) {
                        return false;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => Command::Stop,
            };
            match command {
                Command::RowsAvailable => {}
                Command::Http(request, reply) => {
                    let answer = self.call(instance.handle(&request));
                    match answer {
                        Ok(response) => {
                            let _ = reply.send(response);
                        }
                        Err(failure) => {
                            let _ = reply.send(unavailable_response(&format!("plugin `{}` failed: {}", self.name(), failure.summary())));
                            self.fail(&failure, "handle");
                            return false;
                        }
                    }
                }
                Command::Stop => {
                    self.finish(instance);
                    return true;
                }
            }
        }
    }

    /// Committed rows past the cursor.
    fn rows_waiting(&self) -> u64 {
        self.env.history.snapshot().row_count().saturating_sub(self.stats.cursor.load(Ordering::Acquire))
    }

    /// Hands over the rows past the cursor, in batches: all of them when `flush`, else
    /// only once `update_interval` rows are waiting.
    fn deliver(&mut self, instance: &mut Instance, flush: bool) -> Delivery {
        self.notified.store(false, Ordering::Release);
        loop {
            let cursor = self.stats.cursor.load(Ordering::Acquire);
            let batch = {
                let history = self.env.history.snapshot();
                let waiting = history.row_count().saturating_sub(cursor);
                if waiting == 0 || (!flush && waiting < self.options.update_interval) {
                    return Delivery::UpToDate;
                }
                history.batch(cursor, self.options.max_batch_rows)
            };
            let rows = batch.timestamps_ms.len() as u64;
            match self.call(instance.update(batch)) {
                Ok(()) => {
                    self.advance(cursor + rows);
                    self.stats.rows_delivered.fetch_add(rows, Ordering::Relaxed);
                    if self.failures > 0 {
                        tracing::info!(plugin = self.name(), "delivering again after {} failed attempts", self.failures);
                    }
                    self.failures = 0;
                    self.reports.clear();
                }
                Err(CallFailure::Plugin(ConnectorError::Rejected(message))) => {
                    // Reported as failures are: a plugin refusing every batch says so once a minute.
                    let report = format!("rows rejected by the plugin: {message}");
                    let kind = report.split(';').next().unwrap_or_default().to_string();
                    match self.reports.admit(&kind, Instant::now()) {
                        Some(left_out) => {
                            tracing::warn!(plugin = self.name(), rows, first_row = cursor, "{report}{}", left_out_note(left_out))
                        }
                        None => tracing::debug!(plugin = self.name(), rows, first_row = cursor, "{report}"),
                    }
                    self.advance(cursor + rows);
                    self.stats.rows_rejected.fetch_add(rows, Ordering::Relaxed);
                }
                Err(CallFailure::Plugin(ConnectorError::Unavailable(message))) => {
                    self.failures += 1;
                    let report = format!("unavailable, will offer the rows again: {message}");
                    match self.reports.admit(&report, Instant::now()) {
                        Some(left_out) => tracing::warn!(plugin = self.name(), first_row = cursor, "{report}{}", left_out_note(left_out)),
                        None => tracing::debug!(plugin = self.name(), first_row = cursor, "{report}"),
                    }
                    self.record_failure(format!("unavailable: {message}"));
                    return Delivery::RetryLater;
                }
                Err(failure) => {
                    self.fail(&failure, "update");
                    return Delivery::InstanceLost;
                }
            }
        }
    }

    fn advance(&self, next_row: u64) {
        self.stats.cursor.store(next_row, Ordering::Release);
        if let Some(file) = &self.cursor_file {
            file.store(next_row);
        }
    }

    /// No row for a while: an empty update lets the plugin flush queues or send heartbeats.
    fn idle_update(&mut self, instance: &mut Instance) -> Delivery {
        let batch = RowBatch {
            first_row: self.stats.cursor.load(Ordering::Acquire),
            timestamps_ms: Vec::new(),
            columns: vec![Vec::new(); self.env.history.snapshot().series_names().len()],
        };
        match self.call(instance.update(batch)) {
            Ok(()) | Err(CallFailure::Plugin(_)) => Delivery::UpToDate,
            Err(failure) => {
                self.fail(&failure, "update");
                Delivery::InstanceLost
            }
        }
    }

    /// The host is stopping: deliver what is left (a few attempts), then `stop`.
    fn finish(&mut self, instance: &mut Instance) {
        for _ in 0..3 {
            match self.deliver(instance, true) {
                Delivery::UpToDate => break,
                // Shutting down: short waits, the whole stop must stay bounded.
                Delivery::RetryLater => std::thread::sleep(self.backoff().min(Duration::from_secs(2))),
                Delivery::InstanceLost => return,
            }
        }
        if let Some(file) = &self.cursor_file {
            file.sync();
        }
        if let Err(failure) = self.call(instance.stop()) {
            tracing::error!(plugin = self.name(), "stop failed: {failure}");
            self.record_failure(format!("stop: {failure}"));
        }
    }

    /// Answers requests with 503 until the host stops.
    fn serve_disabled(&mut self, message: &str) {
        while let Ok(command) = self.commands.recv() {
            match command {
                Command::RowsAvailable => {}
                Command::Http(_, reply) => {
                    let _ = reply.send(unavailable_response(message));
                }
                Command::Stop => return,
            }
        }
    }

    /// Waits out the backoff, answering requests with 503; true if asked to stop.
    fn wait_backoff(&mut self) -> bool {
        let deadline = std::time::Instant::now() + self.backoff();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.commands.recv_timeout(left) {
                Ok(Command::RowsAvailable) => {}
                Ok(Command::Http(_, reply)) => {
                    let _ = reply.send(unavailable_response(&format!("plugin `{}` is restarting", self.plugin.manifest.name)));
                }
                Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return true,
                Err(RecvTimeoutError::Timeout) => return false,
            }
        }
    }

    fn backoff(&self) -> Duration {
        let exponent = self.failures.saturating_sub(1).min(20);
        let base = self.options.backoff_first.saturating_mul(1 << exponent).min(self.options.backoff_longest);
        base.mul_f64(1.0 + rand::random::<f64>() * 0.25)
    }

    fn fail(&mut self, failure: &CallFailure, call: &str) {
        self.failures += 1;
        if let CallFailure::Trapped(_) = failure {
            self.stats.traps.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.restarts.fetch_add(1, Ordering::Relaxed);
        let report = format!("`{call}` failed: {failure}");
        let (cursor, attempt) = (self.stats.cursor.load(Ordering::Relaxed), self.failures);
        match self.reports.admit(&report, Instant::now()) {
            Some(left_out) => {
                tracing::error!(
                    plugin = self.name(),
                    cursor,
                    "{report}; restarting the plugin (attempt {attempt}{})",
                    left_out_note(left_out)
                )
            }
            None => tracing::debug!(plugin = self.name(), cursor, "{report}; restarting the plugin (attempt {attempt})"),
        }
        self.record_failure(format!("{call}: {failure}"));
    }

    fn record_failure(&self, message: String) {
        *self.stats.last_failure.lock().expect("stats lock") = Some(message);
    }

    /// Runs one call into the plugin to its end (or its time limit), counting it.
    fn call<F: Future>(&self, call: F) -> F::Output {
        self.stats.timed(|| self.calls.block_on(call))
    }
}

impl PluginStats {
    /// Runs one call into the plugin, counting it and its time.
    pub fn timed<R>(&self, call: impl FnOnce() -> R) -> R {
        let started = std::time::Instant::now();
        let result = call();
        self.count_call(started);
        result
    }

    /// Counts one call into the plugin that began at `started` and has just ended.
    pub fn count_call(&self, started: std::time::Instant) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.call_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

/// A new instance of `plugin`, started with the context of a plugin whose next row is
/// `next_row`.
pub(super) async fn start_instance(plugin: &LoadedPlugin, env: &PluginEnv, next_row: u64) -> Result<Instance, CallFailure> {
    let mut instance = Instance::new(plugin, env).await?;
    instance.start(&start_context(plugin, env, next_row)).await?;
    Ok(instance)
}

/// What `start` tells an instance of `plugin` whose next row is `next_row`.
pub(super) fn start_context(plugin: &LoadedPlugin, env: &PluginEnv, next_row: u64) -> StartContext {
    let history = env.history.snapshot();
    StartContext {
        plugin_name: plugin.manifest.name.clone(),
        config_json: serde_json::to_string(&plugin.manifest.config).unwrap_or_else(|_| "{}".into()),
        host_config_json: env.host_config_json.clone(),
        series: history.series_names().to_vec(),
        step_series: env.step_series.clone(),
        next_row,
        run_started_ms: env.run_started_ms,
    }
}

pub(super) fn unavailable_response(message: &str) -> Response {
    let body = serde_json::json!({ "message": message, "error": { "code": "plugin_unavailable", "message": message } });
    Response {
        status: 503,
        headers: vec![("content-type".into(), "application/json".into()), ("retry-after".into(), "1".into())],
        body: body.to_string().into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_repeated_is_reported_once_a_minute_with_how_many_were_left_out() {
        let mut reports = FailureReports::default();
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        assert_eq!(reports.admit("`start` failed: dns error", at(0)), Some(0));
        assert_eq!(reports.admit("`start` failed: dns error", at(1)), None);
        assert_eq!(reports.admit("`start` failed: dns error", at(30)), None);
        assert_eq!(reports.admit("`start` failed: dns error", at(61)), Some(2));
        // Another failure is news at once, and so is the first after a success.
        assert_eq!(reports.admit("`start` failed: refused", at(62)), Some(0));
        reports.clear();
        assert_eq!(reports.admit("`start` failed: refused", at(63)), Some(0));
        assert_eq!(left_out_note(0), "");
        assert_eq!(left_out_note(2), "; 2 more like it since the last report");
    }
}
