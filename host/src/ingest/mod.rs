//! Telemetry in: samples (JSON objects) become rows of the history, from HTTP
//! (`http`), Redis pub/sub and streams (`redis`), NDJSON (a file or stdin) or a built-in
//! demo generator. Every source parses its samples and hands them to the history's writer
//! (`writer`), which transforms, stores and commits them for all sources at once: the rows
//! are durable and visible to plugins before the source acknowledges them.

pub mod http;
pub mod redis;
pub mod transforms;
pub mod writer;

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::callbacks::Callbacks;
use crate::config::TelemetryConfig;
use crate::history::{History, SharedHistory};
use transforms::{Fault, RowBuilder};

/// Largest accepted NDJSON line; longer lines are refused without being parsed.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Lines of an NDJSON input (its own durable source) committed together.
pub const NDJSON_GROUP_LINES: usize = 16_384;

/// Samples accepted and refused, and faults by kind: kept by ingest, read by `/metrics`
/// from any thread (the faults' lock is held for one map update or copy, never for I/O).
#[derive(Debug, Default)]
pub struct IngestCounters {
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    faults: Mutex<HashMap<String, u64>>,
}

impl IngestCounters {
    pub fn faults(&self) -> HashMap<String, u64> {
        self.faults.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Counts one fault of `kind`; true for the first of its kind.
    fn count_fault(&self, kind: String) -> bool {
        let mut faults = self.faults.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = faults.entry(kind).or_insert(0);
        *count += 1;
        *count == 1
    }
}

/// Turns samples into rows of the history it owns, commits them, and says when plugins
/// should be updated. In the host it runs on the history's writer thread (`writer`);
/// `plugin test` and the test kit drive it directly.
pub struct Ingest {
    rows: RowBuilder,
    history: History,
    update_interval: u64,
    log_keys: Vec<usize>,
    /// Committed rows at the last update.
    rows_at_update: u64,
    callbacks: Callbacks,
    field_faults: Vec<Fault>,
    counters: Arc<IngestCounters>,
    /// Accepted since the last commit (counted when it succeeds).
    pending_accepted: u64,
    /// When `log_keys` were last logged: at most once a second, however fast updates come.
    last_progress_log: Option<std::time::Instant>,
}

/// Shortest time between two progress lines (`log_keys`).
const PROGRESS_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What happened to one sample.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Stored, once committed.
    Accepted,
    Refused(String),
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as i64)
}

impl Ingest {
    /// Ingest into `history`; moving averages and the timer continue from its last rows.
    pub fn new(config: &TelemetryConfig, history: History, callbacks: Callbacks) -> Ingest {
        let mut rows = RowBuilder::new(config.transforms.clone(), config.moving_average);
        let snapshot = history.snapshot();
        rows.resume(&snapshot);
        let log_keys = config.log_keys.iter().filter_map(|key| snapshot.series_index(key)).collect();
        Ingest {
            rows,
            rows_at_update: history.row_count(),
            history,
            update_interval: config.update_interval,
            log_keys,
            callbacks,
            field_faults: Vec::new(),
            counters: Arc::default(),
            pending_accepted: 0,
            last_progress_log: None,
        }
    }

    /// The history, for readers.
    pub fn shared(&self) -> SharedHistory {
        self.history.shared()
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    /// The history itself, for tests and benchmarks that fill it directly.
    pub fn history_mut(&mut self) -> &mut History {
        &mut self.history
    }

    pub fn counters(&self) -> Arc<IngestCounters> {
        self.counters.clone()
    }

    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::Relaxed)
    }

    pub fn refused(&self) -> u64 {
        self.counters.refused.load(Ordering::Relaxed)
    }

    /// Parses and stores one NDJSON line; `origin` says where it came from in logs.
    pub fn accept_line(&mut self, line: &[u8], origin: &str) -> Outcome {
        match parse_line(line) {
            Ok(sample) => self.accept(&sample, origin),
            Err((kind, problem)) => self.refuse(kind, format!("{origin}: {problem}")),
        }
    }

    /// Stores one sample, seen by readers from the next commit.
    pub fn accept(&mut self, sample: &Value, origin: &str) -> Outcome {
        if !sample.is_object() {
            return self.refuse("not-an-object", format!("{origin}: a sample must be a JSON object"));
        }
        let row = match self.rows.row(sample, &mut self.field_faults) {
            Ok(row) => row,
            Err(fault) => return self.refuse(&fault_kind(&fault), format!("{origin}: sample refused: {fault}")),
        };
        for fault in std::mem::take(&mut self.field_faults) {
            self.count_fault(fault_kind(&fault), || format!("{origin}: {fault}; stored as NaN"));
        }
        if let Err(error) = self.history.push_row(now_ms(), &row) {
            return self.refuse("storage", format!("{origin}: not stored: {error:#}"));
        }
        self.pending_accepted += 1;
        Outcome::Accepted
    }

    /// Records where `source` stands, stored atomically with the rows of the next commit.
    pub fn set_mark(&mut self, source: &str, position: &str) {
        self.history.set_mark(source, position);
    }

    /// Makes the accepted samples durable and visible to plugins. When an update interval
    /// was reached since the last update, also logs `log_keys`, runs the callbacks and
    /// returns true: the caller then wakes the plugins. A source acknowledges its samples
    /// only after this returns `Ok`; after an error none of them is stored, ever.
    pub fn commit(&mut self) -> anyhow::Result<bool> {
        if let Err(error) = self.history.commit() {
            self.pending_accepted = 0;
            // The moving averages and the timer saw rows that are not stored.
            self.rows.resume(&self.history.snapshot());
            return Err(error);
        }
        self.counters.accepted.fetch_add(std::mem::take(&mut self.pending_accepted), Ordering::Relaxed);
        let rows = self.history.row_count();
        let interval = self.update_interval.max(1);
        let update_due = rows / interval > self.rows_at_update / interval;
        if update_due {
            let snapshot = self.history.snapshot();
            // Every interval this commit completed, on the row that completed it.
            let first_boundary = (self.rows_at_update / interval + 1) * interval;
            for boundary in (first_boundary..=rows).step_by(interval as usize) {
                self.callbacks.on_update(&snapshot, boundary - 1);
            }
            self.log_update(&snapshot);
        }
        self.rows_at_update = rows;
        Ok(update_due)
    }

    /// Reads NDJSON until the end of `reader`, committing every `NDJSON_GROUP_LINES`
    /// lines and at the end.
    pub fn read_ndjson(&mut self, reader: impl BufRead, origin: &str) -> anyhow::Result<()> {
        for (index, line) in reader.split(b'\n').enumerate() {
            let line = line?;
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            if !line.iter().all(u8::is_ascii_whitespace) {
                self.accept_line(line, &format!("{origin}:{}", index + 1));
            }
            if (index + 1) % NDJSON_GROUP_LINES == 0 {
                self.commit()?;
            }
        }
        self.commit().map(drop)
    }

    /// How many samples or values failed, by kind of fault.
    pub fn faults(&self) -> HashMap<String, u64> {
        self.counters.faults()
    }

    /// Where `source` stood at the last commit (see `set_mark`).
    pub fn history_mark(&self, source: &str) -> Option<String> {
        self.history.snapshot().mark(source).map(str::to_string)
    }

    /// Counts and reports a sample that a source could not hand over.
    pub fn refuse(&mut self, kind: &str, message: String) -> Outcome {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        self.count_fault(kind.to_string(), || message.clone());
        Outcome::Refused(message)
    }

    /// Logs the first fault of each kind; later ones are only counted.
    fn count_fault(&mut self, kind: String, message: impl FnOnce() -> String) {
        if self.counters.count_fault(kind.clone()) {
            tracing::warn!(fault = %kind, "{} (further faults of this kind are counted, not logged)", message());
        }
    }

    fn log_update(&mut self, history: &crate::history::Snapshot) {
        if self.log_keys.is_empty() || self.last_progress_log.is_some_and(|at| at.elapsed() < PROGRESS_LOG_EVERY) {
            return;
        }
        self.last_progress_log = Some(std::time::Instant::now());
        let last = history.row_count().saturating_sub(1);
        let names = history.series_names();
        let fields: Vec<String> = self
            .log_keys
            .iter()
            .map(|&index| {
                let value = history.read_series(&names[index], last, 1).ok().and_then(|v| v.first().copied()).unwrap_or(f64::NAN);
                format!("{}: {value:.3}", names[index])
            })
            .collect();
        tracing::info!(rows = last + 1, "{}", fields.join(" | "));
    }
}

/// One NDJSON line as a sample, or why it is refused (kind, message).
pub fn parse_line(line: &[u8]) -> Result<Value, (&'static str, String)> {
    if line.len() > MAX_LINE_BYTES {
        return Err(("line-too-long", format!("line of {} bytes exceeds the limit of {MAX_LINE_BYTES}", line.len())));
    }
    serde_json::from_slice(line).map_err(|error| match std::str::from_utf8(line) {
        Err(problem) => ("invalid-utf8", format!("not UTF-8: {problem}")),
        Ok(_) => ("invalid-json", format!("invalid JSON: {error}")),
    })
}

/// Reads NDJSON lines until the end of `reader`, parses them and hands them to the writer
/// in groups of `NDJSON_GROUP_LINES` (the input is its own durable source: committed in
/// large groups, not every update interval); returns once every line is committed.
pub fn read_ndjson_to(reader: impl BufRead, origin: &str, pipeline: &mut writer::Pipeline) -> anyhow::Result<()> {
    let origin: Arc<str> = Arc::from(origin);
    let mut items = Vec::with_capacity(NDJSON_GROUP_LINES);
    let job = |items: Vec<writer::Item>| writer::Job { origin: origin.clone(), items, mark: None };
    for (index, line) in reader.split(b'\n').enumerate() {
        let line = line?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        items.push(writer::Item { at: writer::At::Line(index + 1), sample: parse_line(line) });
        if items.len() == NDJSON_GROUP_LINES {
            pipeline.submit(job(std::mem::replace(&mut items, Vec::with_capacity(NDJSON_GROUP_LINES))))?;
        }
    }
    if !items.is_empty() {
        pipeline.submit(job(items))?;
    }
    pipeline.finish()
}

/// Samples of a fake training run, one episode each, forever.
pub fn demo_samples() -> impl Iterator<Item = Value> {
    let mut total_steps = 0u64;
    (1u64..).map(move |episode| {
        let progress = 1.0 - (-(episode as f64) / 500.0).exp();
        let noise = ((episode as f64 * 12.9898).sin() * 43758.5453).fract();
        let steps = 200 + (noise.abs() * 300.0) as u64;
        total_steps += steps;
        serde_json::json!({
            "ep_reward": -100.0 + 400.0 * progress + 80.0 * noise,
            "ep_steps": steps,
            "total_steps": total_steps,
            "model_id": episode / 10,
        })
    })
}

fn fault_kind(fault: &Fault) -> String {
    match fault {
        Fault::MissingKey(key) => format!("missing-key:{key}"),
        Fault::NotNumeric(key) => format!("not-numeric:{key}"),
        Fault::NoElement { key, .. } => format!("no-element:{key}"),
        Fault::NothingReadable => "nothing-readable".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HostConfig;
    use transforms::series_names;

    /// What the fuzz target (`fuzz/`, nightly) checks, on a fixed pseudo-random corpus so
    /// that the stable test suite runs it too.
    #[test]
    fn mutated_samples_are_stored_as_one_row_or_refused_never_a_panic() {
        let config = HostConfig::builtin_default();
        let mut ingest = Ingest::new(&config.telemetry, History::new(series_names(&config.telemetry.transforms)), Callbacks::none());
        let history = ingest.shared();
        let seeds: [&[u8]; 4] = [
            br#"{"ep_reward": 1.5, "ep_steps": 200, "total_steps": 1000}"#,
            br#"{"ep_reward": [[1, 2, 3]], "ep_steps": [7], "total_steps": true, "obs": {"a": [1e308, -0.0]}}"#,
            br#"{"ep_reward": "1", "ep_steps": null, "total_steps": {"x": []}}"#,
            "{\"ep_reward\": 1, \"\u{e9}\": \"\u{1F600}\"}".as_bytes(),
        ];
        let tokens: [&[u8]; 10] = [b"NaN", b"1e999", b"-", b"\"", b"\\u0000", b"[", b"}", b"\xff", b",", b"{\"ep_reward\":"];
        let mut state = 0x2545f4914f6cdd1du64;
        let mut random = move |below: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % below.max(1) as u64) as usize
        };
        for _ in 0..20_000 {
            let mut line = seeds[random(seeds.len())].to_vec();
            for _ in 0..random(4) {
                let at = random(line.len() + 1);
                match random(3) {
                    0 => line.truncate(at),
                    1 if at < line.len() => line[at] = random(256) as u8,
                    _ => line.splice(at..at, tokens[random(tokens.len())].iter().copied()).for_each(drop),
                }
            }
            let rows_before = history.snapshot().row_count();
            let outcome = ingest.accept_line(&line, "test");
            ingest.commit().unwrap();
            let added = history.snapshot().row_count() - rows_before;
            match outcome {
                Outcome::Accepted => assert_eq!(added, 1, "{}", String::from_utf8_lossy(&line)),
                Outcome::Refused(_) => assert_eq!(added, 0, "{}", String::from_utf8_lossy(&line)),
            }
        }
        assert!(ingest.accepted() > 1000 && ingest.refused() > 1000, "the corpus has both: {} / {}", ingest.accepted(), ingest.refused());
    }
}
