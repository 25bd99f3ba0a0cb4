//! Weights & Biases connector: every row of the training run becomes one history line
//! of a W&B run, sent through the host's outgoing HTTP (which attaches the API key).
//!
//! - Every row becomes the next line of `wandb-history.jsonl`: offsets are contiguous, a
//!   retry resends the same offsets (idempotent), and a restart continues the same run at
//!   the next offset (run id and counters kept in `/data/wandb-run.json`; `resume = false`
//!   or deleting that file starts a new run).
//! - `_step` is the line index by default, which always increases (it equals the row
//!   index unless the host's history started over); with
//!   `step = "step_key"` it is the step series, and a row whose step is not larger than
//!   the last one gets the last step + 1 (warned once) instead of being dropped by W&B.
//!   A line's step and runtime are fixed when it is built from its row, and the state file
//!   keeps the step of the last line W&B accepted, so a line rebuilt after a restart is the
//!   same line.
//! - The send path: rows the host handed over wait in the host's history (`queued_row ..
//!   host_row`); at most `max_queue_rows` of them are built into lines at a time (the
//!   queue), and a line leaves the queue only when W&B accepts it. Memory stays bounded at
//!   any backlog, `update` always takes the rows, and a full queue drains at W&B's allowed
//!   rate (2 requests a second) instead of waiting for the transmit interval.
//! - Sending: at most one request per `transmit_interval_s` while caught up, retries with
//!   exponential backoff and jitter honouring `Retry-After`; statuses the official client
//!   treats as fatal, and `stopped` (Stop pressed in the W&B interface), end the stream and
//!   are logged. The finish marker is retried like any request until `stop_timeout_s`; a
//!   run not finished is resumed at the next start.

mod config;
mod protocol;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use config::Settings;
use protocol::Outcome;
use telemetry_plugin::history::{self, RowRange};
use telemetry_plugin::log::{Level, write as log};
use telemetry_plugin::{Connector, ConnectorError, Rows, Start};

const STATE_FILE: &str = "/data/wandb-run.json";
/// The longest `start` waits in all for the `Retry-After`s of run creation, well inside the
/// shipped call limit (60 s).
const UPSERT_WAIT_BUDGET: Duration = Duration::from_secs(20);
/// Below wandb-core's 10 MiB request cap, with room for the summary.
const MAX_REQUEST_BYTES: usize = 8 << 20;
/// W&B allows 2 file_stream requests a second per run.
const MIN_REQUEST_GAP: Duration = Duration::from_millis(500);
const BACKOFF_FIRST: Duration = Duration::from_secs(2);
const BACKOFF_LONGEST: Duration = Duration::from_secs(60);
/// How long one `update` keeps draining a backlog at the allowed rate, so that rows keep
/// flowing to the host's other calls (well inside the call limit).
const DRAIN_BUDGET: Duration = Duration::from_secs(10);
/// Rows read back from the host's history at a time.
const HISTORY_READ_ROWS: u64 = 16_384;

/// What survives a restart, in `/data/wandb-run.json`.
#[derive(Debug, Clone, PartialEq)]
struct RunState {
    run_id: String,
    base_url: String,
    project: String,
    entity: Option<String>,
    /// History lines W&B accepted.
    lines_sent: u64,
    /// The host row after the last accepted line.
    row_sent: u64,
    /// The step of the last accepted line.
    last_step: Option<i64>,
    /// The summary W&B last accepted: on resume it holds the keys not logged since, as the
    /// official client's resumed run does.
    summary: Map<String, Value>,
}

impl RunState {
    fn load() -> Option<RunState> {
        let value: Value = serde_json::from_slice(&std::fs::read(STATE_FILE).ok()?).ok()?;
        Some(RunState {
            run_id: value["run_id"].as_str()?.to_string(),
            base_url: value["base_url"].as_str()?.to_string(),
            project: value["project"].as_str()?.to_string(),
            entity: value["entity"].as_str().map(String::from),
            lines_sent: value["lines_sent"].as_u64()?,
            row_sent: value["row_sent"].as_u64()?,
            last_step: value["last_step"].as_i64(),
            summary: value["summary"].as_object().cloned().unwrap_or_default(),
        })
    }

    fn save(&self) -> std::io::Result<()> {
        let value = json!({
            "run_id": self.run_id, "base_url": self.base_url, "project": self.project, "entity": self.entity,
            "lines_sent": self.lines_sent, "row_sent": self.row_sent, "last_step": self.last_step,
            "summary": self.summary,
        });
        let temporary = format!("{STATE_FILE}.tmp");
        std::fs::write(&temporary, value.to_string())?;
        std::fs::rename(&temporary, STATE_FILE)
    }
}

struct Stream {
    settings: Settings,
    run: RunState,
    run_started_ms: i64,
    /// History lines not yet accepted, in order; the first is line `run.lines_sent`, row
    /// `run.row_sent`.
    queue: VecDeque<Line>,
    /// Row index after the last queued row.
    queued_row: u64,
    /// Row index after the last row the host handed over; the rows from `queued_row` on
    /// wait in the host's history.
    host_row: u64,
    /// Last value of each series, for the summary.
    summary: Map<String, Value>,
    last_line_step: Option<i64>,
    backwards_steps: u64,
    last_request: Option<Instant>,
    last_transmit: Option<Instant>,
    failures: u32,
    not_before: Option<Instant>,
    fatal: Option<String>,
    dropped_rows: u64,
}

/// One history line, built once from its row.
struct Line {
    text: String,
    step: i64,
    /// Its size inside the request body: quoted, with its quotes escaped, and a comma.
    body_bytes: usize,
}

impl Line {
    fn new(text: String, step: i64) -> Line {
        let escapes = text.bytes().filter(|byte| matches!(byte, b'"' | b'\\')).count();
        Line { body_bytes: text.len() + escapes + 3, text, step }
    }
}

/// Random bits from WASI's random source (which seeds `RandomState`).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

/// 8 characters of `[a-z0-9]`, as the official client makes run ids.
fn random_run_id() -> String {
    let mut bits = random_u64();
    (0..8)
        .map(|_| {
            let digit = (bits % 36) as u32;
            bits /= 36;
            char::from_digit(digit, 36).unwrap_or('0')
        })
        .collect()
}

fn format_number(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 9e15 {
        json!(value as i64)
    } else {
        serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
    }
}

impl Stream {
    fn history_url(&self) -> String {
        let entity = self.run.entity.as_deref().unwrap_or("");
        format!("{}/files/{entity}/{}/{}/file_stream", self.settings.base_url, self.run.project, self.run.run_id)
    }

    /// Creates (or resumes) the run with `UpsertBucket`.
    /// Creates (or resumes) the run. A `Retry-After` is honoured here, in `start`, while
    /// the waits add up to at most `UPSERT_WAIT_BUDGET`; beyond it, or without one, the
    /// call fails as unavailable and the host restarts the plugin after its backoff, with
    /// the same run id (saved before the first attempt). GraphQL errors and the statuses
    /// the official client gives up on are fatal: the plugin is disabled with the reason.
    fn upsert(&mut self, timeout: Duration) -> Result<(), ConnectorError> {
        let body = protocol::upsert_bucket_body(
            &self.run.run_id,
            &self.run.project,
            self.run.entity.as_deref(),
            self.settings.group.as_deref(),
            &self.settings.run_config,
        );
        let refused = |reason: String| {
            ConnectorError::InvalidConfig(format!(
                "W&B refused to create run {} in project {}: {reason}",
                self.run.run_id, self.run.project
            ))
        };
        let mut waited = Duration::ZERO;
        let answer = loop {
            match protocol::post_json(&format!("{}/graphql", self.settings.base_url), &body, timeout, true) {
                Outcome::Ok(answer) => break answer,
                Outcome::Retry { retry_after: Some(wait), .. } if waited + wait <= UPSERT_WAIT_BUDGET => {
                    std::thread::sleep(wait);
                    waited += wait;
                }
                Outcome::Retry { reason, .. } => return Err(ConnectorError::Unavailable(format!("creating the W&B run: {reason}"))),
                Outcome::Fatal(reason) => return Err(refused(reason)),
            }
        };
        let bucket = protocol::parse_bucket(&answer).map_err(refused)?;
        if let Some(entity) = bucket.entity {
            self.run.entity = Some(entity);
        }
        if let Some(project) = bucket.project {
            self.run.project = project;
        }
        if let Some(lines) = bucket.history_line_count
            && lines > self.run.lines_sent
        {
            log(
                Level::Warn,
                &format!("W&B holds {lines} history lines, more than this plugin recorded; the extra lines will be overwritten"),
            );
        }
        self.run.save().map_err(|error| ConnectorError::Unavailable(format!("{STATE_FILE}: {error}")))?;
        Ok(())
    }

    /// Turns rows into history lines at the back of the queue.
    fn enqueue(&mut self, batch: &Rows) {
        for (offset, timestamp_ms) in batch.timestamps_ms.iter().enumerate() {
            let row = batch.first_row + offset as u64;
            if row < self.queued_row {
                continue; // Already queued (the host re-offered rows).
            }
            let mut line = Map::new();
            for (name, column) in &self.settings.series {
                let value = batch.columns.get(*column).and_then(|values| values.get(offset)).copied().unwrap_or(f64::NAN);
                if value.is_finite() {
                    let number = format_number(value);
                    self.summary.insert(name.clone(), number.clone());
                    line.insert(name.clone(), number);
                }
            }
            let step = self.step_of(batch, offset, row);
            let runtime = (*timestamp_ms - self.run_started_ms) as f64 / 1000.0;
            line.insert("_step".into(), json!(step));
            line.insert("_runtime".into(), json!(runtime.max(0.0)));
            line.insert("_timestamp".into(), json!(*timestamp_ms as f64 / 1000.0));
            for key in ["_step", "_runtime", "_timestamp"] {
                self.summary.insert(key.into(), line[key].clone());
            }
            self.queue.push_back(Line::new(Value::Object(line).to_string(), step));
            self.queued_row = row + 1;
            self.host_row = self.host_row.max(self.queued_row);
        }
    }

    /// Takes the rows the host hands over: built into lines at once when they fit in the
    /// queue, else left in the host's history and read back as the queue drains.
    fn take(&mut self, batch: &Rows) {
        let end = batch.first_row + batch.timestamps_ms.len() as u64;
        let fits = self.queue.len() + batch.timestamps_ms.len() <= self.settings.max_queue_rows;
        if self.queued_row >= batch.first_row && self.queued_row < end && fits {
            self.enqueue(batch);
        }
        self.host_row = self.host_row.max(end);
        self.fill_from_history();
    }

    /// Builds lines from the rows waiting in the host's history, as far as the queue has room.
    fn fill_from_history(&mut self) {
        while self.queued_row < self.host_row && self.queue.len() < self.settings.max_queue_rows {
            let room = (self.settings.max_queue_rows - self.queue.len()) as u64;
            let first = self.queued_row;
            let end = self.host_row.min(first + room.min(HISTORY_READ_ROWS));
            self.enqueue(&rows_from_history(first, end));
            if self.queued_row == first {
                log(Level::Warn, &format!("rows {first}..{} are no longer in the host's history; W&B will miss them", self.host_row));
                self.dropped_rows += self.host_row - first;
                self.queued_row = self.host_row;
                if self.queue.is_empty() {
                    self.run.row_sent = self.host_row;
                }
                return;
            }
        }
    }

    /// Rows handed over but not yet accepted by W&B: queued or waiting in the history.
    fn backlog(&self) -> u64 {
        self.queue.len() as u64 + (self.host_row - self.queued_row)
    }

    fn step_of(&mut self, batch: &Rows, offset: usize, row: u64) -> i64 {
        let previous = self.last_line_step;
        let step = match &self.settings.step_series {
            None => (self.run.lines_sent + self.queue.len() as u64) as i64,
            Some(name) => {
                let column = self.settings.series.iter().find(|(series, _)| series == name).map(|(_, column)| *column);
                let column = column.or_else(|| batch_column_of(name));
                let value =
                    column.and_then(|column| batch.columns.get(column)).and_then(|values| values.get(offset)).copied().unwrap_or(f64::NAN);
                match (value.is_finite(), previous) {
                    (true, Some(last)) if (value as i64) <= last => {
                        self.backwards_steps += 1;
                        // The first, then every power of two: the count stays visible without a line per row.
                        if self.backwards_steps.is_power_of_two() {
                            log(
                                Level::Warn,
                                &format!(
                                    "step `{name}` went backwards at row {row} ({value} after {last}); such rows get the last step + 1 ({} rows so far)",
                                    self.backwards_steps
                                ),
                            );
                        }
                        last + 1
                    }
                    (true, _) => value as i64,
                    (false, last) => last.map_or(0, |last| last + 1),
                }
            }
        };
        self.last_line_step = Some(step);
        step
    }

    fn summary_line(&self) -> String {
        let mut summary = self.summary.clone();
        let runtime = summary.get("_runtime").and_then(Value::as_f64).unwrap_or(0.0);
        summary.insert("_wandb".into(), json!({ "runtime": runtime as i64 }));
        Value::Object(summary).to_string()
    }

    /// Sends what is due. `flush` ignores the transmit interval (not the rate limit).
    fn pump(&mut self, flush: bool, deadline: Instant) {
        if self.fatal.is_some() {
            return;
        }
        let now = Instant::now();
        if self.not_before.is_some_and(|not_before| now < not_before) {
            return;
        }
        if let Some(last) = self.last_request
            && now.duration_since(last) < MIN_REQUEST_GAP
        {
            if !flush {
                return;
            }
            std::thread::sleep(MIN_REQUEST_GAP - now.duration_since(last));
        }
        let interval = Duration::from_secs_f64(self.settings.transmit_interval_s);
        // A backlog of more than a request goes out at the allowed rate, not the interval.
        let transmit_due = flush || self.behind() || self.last_transmit.is_none_or(|last| last.elapsed() >= interval);
        let body = if !self.queue.is_empty() && transmit_due {
            let mut content = Vec::new();
            let mut bytes = 0;
            for line in &self.queue {
                if !content.is_empty() && bytes + line.body_bytes > MAX_REQUEST_BYTES {
                    break;
                }
                bytes += line.body_bytes;
                content.push(line.text.clone());
            }
            let offset = self.run.lines_sent;
            Some((
                content.len(),
                json!({ "files": {
                    "wandb-history.jsonl": { "offset": offset, "content": content },
                    "wandb-summary.json": { "offset": 0, "content": [self.summary_line()] },
                }}),
            ))
        } else if self.last_request.is_none_or(|last| last.elapsed().as_secs_f64() >= self.settings.heartbeat_s)
            && self.last_request.is_some()
        {
            Some((0, json!({})))
        } else {
            None
        };
        let Some((lines, body)) = body else { return };
        let timeout = Duration::from_secs_f64(self.settings.request_timeout_s).min(deadline.saturating_duration_since(Instant::now()));
        if timeout.is_zero() {
            return;
        }
        self.last_request = Some(Instant::now());
        match protocol::post_json(&self.history_url(), &body, timeout, false) {
            Outcome::Ok(answer) => {
                self.failures = 0;
                self.not_before = None;
                if lines > 0 {
                    self.last_transmit = self.last_request;
                    let last_step = self.queue.drain(..lines).next_back().map(|line| line.step);
                    self.run.last_step = last_step.or(self.run.last_step);
                    self.run.lines_sent += lines as u64;
                    self.run.row_sent += lines as u64;
                    self.run.summary = self.summary.clone();
                    if let Err(error) = self.run.save() {
                        log(Level::Warn, &format!("{STATE_FILE}: {error}; a restart may resend lines"));
                    }
                    self.fill_from_history();
                }
                if answer["stopped"].as_bool() == Some(true) {
                    log(
                        Level::Warn,
                        &format!(
                            "run {} was stopped from the W&B interface; as the official client does, no more data is sent to it ({} rows not sent)",
                            self.run.run_id,
                            self.backlog()
                        ),
                    );
                    self.fatal = Some("the run was stopped from the W&B interface".into());
                }
            }
            Outcome::Retry { reason, retry_after } => {
                self.failures += 1;
                let wait = retry_after.unwrap_or_else(|| self.backoff());
                self.not_before = Some(Instant::now() + wait);
                log(
                    Level::Warn,
                    &format!("W&B file_stream failed ({reason}); {} rows waiting, retrying in {:.1} s", self.backlog(), wait.as_secs_f64()),
                );
            }
            Outcome::Fatal(reason) => {
                log(
                    Level::Error,
                    &format!(
                        "W&B refused the data of run {} ({reason}); as the official client does, no more data is sent to this run",
                        self.run.run_id
                    ),
                );
                self.fatal = Some(reason);
            }
        }
    }

    /// More waits than one request carries: send at the allowed rate.
    fn behind(&self) -> bool {
        self.queued_row < self.host_row || self.queue.iter().map(|line| line.body_bytes).sum::<usize>() > MAX_REQUEST_BYTES
    }

    /// Sends while a backlog waits, at the allowed rate, for at most `DRAIN_BUDGET`.
    fn drain(&mut self, deadline: Instant) {
        let deadline = deadline.min(Instant::now() + DRAIN_BUDGET);
        while self.behind() && self.fatal.is_none() && Instant::now() < deadline {
            if self.not_before.is_some_and(|not_before| Instant::now() < not_before) {
                return;
            }
            let sent = self.run.lines_sent;
            self.pump(true, deadline);
            if self.run.lines_sent == sent {
                return;
            }
        }
    }

    /// The finish marker, retried like any request (honouring `Retry-After`) until `deadline`.
    fn send_finish(&mut self, deadline: Instant) -> Result<(), String> {
        loop {
            let timeout = Duration::from_secs_f64(self.settings.request_timeout_s).min(deadline.saturating_duration_since(Instant::now()));
            if let Some(last) = self.last_request
                && last.elapsed() < MIN_REQUEST_GAP
            {
                std::thread::sleep(MIN_REQUEST_GAP - last.elapsed());
            }
            self.last_request = Some(Instant::now());
            let body = json!({ "complete": true, "exitcode": 0 });
            match protocol::post_json(&self.history_url(), &body, timeout.max(Duration::from_millis(1)), false) {
                Outcome::Ok(_) => return Ok(()),
                Outcome::Fatal(reason) => return Err(reason),
                Outcome::Retry { reason, retry_after } => {
                    self.failures += 1;
                    let wait = retry_after.unwrap_or_else(|| self.backoff());
                    if Instant::now() + wait >= deadline {
                        return Err(format!("{reason}; no time left to retry before stop_timeout_s"));
                    }
                    log(Level::Warn, &format!("sending the finish marker failed ({reason}); retrying in {:.1} s", wait.as_secs_f64()));
                    std::thread::sleep(wait);
                }
            }
        }
    }

    fn backoff(&self) -> Duration {
        let exponent = self.failures.saturating_sub(1).min(10);
        let jitter = 1.0 + (random_u64() % 26) as f64 / 100.0;
        BACKOFF_FIRST.saturating_mul(1 << exponent).min(BACKOFF_LONGEST).mul_f64(jitter)
    }
}

/// The column of a series in the host's order (for a step series not sent itself).
fn batch_column_of(name: &str) -> Option<usize> {
    history::series_names().iter().position(|series| series == name)
}

/// Rows `first..end` from the host's history, for rows taken by an earlier instance but
/// never sent.
fn rows_from_history(first: u64, end: u64) -> Rows {
    let range = RowRange { first, count: end.saturating_sub(first) };
    Rows {
        first_row: first,
        timestamps_ms: history::read_timestamps(range).unwrap_or_default(),
        columns: history::series_names().iter().map(|name| history::read_series(name, range).unwrap_or_default()).collect(),
    }
}

impl Connector for Stream {
    /// Checked key by key in `config` (it keeps its own messages).
    type Config = Value;

    fn start(start: Start<Value>) -> Result<Stream, ConnectorError> {
        let context = &start.context;
        let settings = config::parse(&start.config, context).map_err(ConnectorError::InvalidConfig)?;
        let resumed = RunState::load().filter(|_| settings.resume).filter(|run| {
            run.base_url == settings.base_url
                && run.project == settings.project
                && (settings.entity.is_none() || run.entity == settings.entity)
        });
        let mut run = resumed.clone().unwrap_or_else(|| RunState {
            run_id: random_run_id(),
            base_url: settings.base_url.clone(),
            project: settings.project.clone(),
            entity: settings.entity.clone(),
            lines_sent: 0,
            row_sent: 0,
            last_step: None,
            summary: Map::new(),
        });
        if context.next_row < run.row_sent {
            // The host's history started over (it is not durable across host restarts):
            // its rows continue the run after the lines already sent.
            run.row_sent = context.next_row;
        }
        let timeout = Duration::from_secs_f64(settings.request_timeout_s);
        let mut stream = Stream {
            last_line_step: run.last_step,
            queued_row: run.row_sent,
            host_row: context.next_row.max(run.row_sent),
            summary: run.summary.clone(),
            run,
            settings,
            run_started_ms: context.run_started_ms,
            queue: VecDeque::new(),
            backwards_steps: 0,
            last_request: None,
            last_transmit: None,
            failures: 0,
            not_before: None,
            fatal: None,
            dropped_rows: 0,
        };
        // Saved before the run is created, so that every retry of the creation (a restart
        // of this plugin) asks for the same run id.
        if resumed.is_none() {
            stream.run.save().map_err(|error| ConnectorError::Unavailable(format!("{STATE_FILE}: {error}")))?;
        }
        stream.upsert(timeout)?;
        // Rows an earlier instance took from the host but W&B never accepted: read back from
        // the host's history as the queue has room.
        stream.fill_from_history();
        log(
            Level::Info,
            &format!(
                "{} W&B run {} ({}/{}) at line {}{}",
                if resumed.is_some() { "resuming" } else { "created" },
                stream.run.run_id,
                stream.run.entity.as_deref().unwrap_or("default entity"),
                stream.run.project,
                stream.run.lines_sent,
                match stream.backlog() {
                    0 => String::new(),
                    rows => format!(", {rows} rows to catch up"),
                }
            ),
        );
        Ok(stream)
    }

    fn update(&mut self, batch: Rows) -> Result<(), ConnectorError> {
        let deadline = Instant::now() + Duration::from_secs_f64(self.settings.request_timeout_s);
        if let Some(reason) = &self.fatal {
            if batch.timestamps_ms.is_empty() {
                return Ok(());
            }
            self.dropped_rows += batch.timestamps_ms.len() as u64;
            return Err(ConnectorError::Rejected(format!("the W&B stream stopped ({reason}); {} rows not sent", self.dropped_rows)));
        }
        self.take(&batch);
        self.pump(false, deadline);
        self.drain(deadline);
        Ok(())
    }

    fn stop(&mut self) -> Result<(), ConnectorError> {
        let deadline = Instant::now() + Duration::from_secs_f64(self.settings.stop_timeout_s);
        while self.backlog() > 0 && self.fatal.is_none() && Instant::now() < deadline {
            if let Some(not_before) = self.not_before {
                let wait = not_before.saturating_duration_since(Instant::now()).min(deadline.saturating_duration_since(Instant::now()));
                std::thread::sleep(wait);
            }
            self.pump(true, deadline);
        }
        if let Some(reason) = &self.fatal {
            return Err(ConnectorError::Rejected(format!("the W&B stream stopped: {reason}")));
        }
        if self.backlog() > 0 {
            return Err(ConnectorError::Unavailable(format!(
                "W&B unreachable until the stop timeout; {} rows not sent (the run stays open and resumes at the next start)",
                self.backlog()
            )));
        }
        self.send_finish(deadline + Duration::from_secs(5)).map_err(|reason| {
            ConnectorError::Unavailable(format!(
                "sending the finish marker: {reason} (the run stays open and is finished at the next stop)"
            ))
        })?;
        log(Level::Info, &format!("W&B run {} finished with {} history lines", self.run.run_id, self.run.lines_sent));
        Ok(())
    }
}

telemetry_plugin::export_connector!(Stream);
