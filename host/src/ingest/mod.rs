//! Telemetry in: samples (JSON objects) become rows of the history, from HTTP
//! (`http`), Redis pub/sub and streams (`redis`), NDJSON (a file or stdin) or a built-in
//! demo generator. Every source accepts a batch of samples, then `commit`s: the rows are
//! durable and visible to plugins before the source acknowledges them.

pub mod http;
pub mod redis;
pub mod transforms;

use std::collections::HashMap;
use std::io::BufRead;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::callbacks::Callbacks;
use crate::config::TelemetryConfig;
use crate::history::SharedHistory;
use transforms::{Fault, RowBuilder};

/// Largest accepted NDJSON line; longer lines are refused without being parsed.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Turns samples into rows of the shared history and says when plugins should be updated.
pub struct Ingest {
    rows: RowBuilder,
    history: SharedHistory,
    update_interval: u64,
    log_keys: Vec<usize>,
    since_update: u64,
    /// An update interval was reached since the last commit.
    update_pending: bool,
    callbacks: Callbacks,
    faults: HashMap<String, u64>,
    field_faults: Vec<Fault>,
    pub accepted: u64,
    pub refused: u64,
}

/// What happened to one sample.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Stored; `update_due` says the update interval was reached.
    Accepted {
        update_due: bool,
    },
    Refused(String),
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as i64)
}

impl Ingest {
    /// Ingest into `history`; moving averages and the timer continue from its last rows.
    pub fn new(config: &TelemetryConfig, history: SharedHistory, callbacks: Callbacks) -> Ingest {
        let mut rows = RowBuilder::new(config.transforms.clone(), config.moving_average);
        let log_keys = {
            let history = history.read().expect("history lock");
            rows.resume(&history);
            config.log_keys.iter().filter_map(|key| history.series_index(key)).collect()
        };
        Ingest {
            rows,
            history,
            update_interval: config.update_interval,
            log_keys,
            since_update: 0,
            update_pending: false,
            callbacks,
            faults: HashMap::new(),
            field_faults: Vec::new(),
            accepted: 0,
            refused: 0,
        }
    }

    /// Parses and stores one NDJSON line; `origin` says where it came from in logs.
    pub fn accept_line(&mut self, line: &[u8], origin: &str) -> Outcome {
        if line.len() > MAX_LINE_BYTES {
            return self.refuse("line-too-long", format!("{origin}: line of {} bytes exceeds the limit of {MAX_LINE_BYTES}", line.len()));
        }
        let sample: Value = match serde_json::from_slice(line) {
            Ok(sample) => sample,
            Err(error) => return self.refuse("invalid-json", format!("{origin}: invalid JSON: {error}")),
        };
        self.accept(&sample, origin)
    }

    /// Stores one sample.
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
        let stored = self.history.write().expect("history lock").push_row(now_ms(), &row);
        if let Err(error) = stored {
            return self.refuse("storage", format!("{origin}: not stored: {error:#}"));
        }
        self.accepted += 1;
        self.since_update += 1;
        let update_due = self.since_update >= self.update_interval;
        if update_due {
            self.since_update = 0;
            self.update_pending = true;
        }
        Outcome::Accepted { update_due }
    }

    /// Records where `source` stands, stored atomically with the rows of the next commit.
    pub fn set_mark(&mut self, source: &str, position: &str) -> anyhow::Result<()> {
        self.history.write().expect("history lock").set_mark(source, position)
    }

    /// Makes the accepted samples durable and visible to plugins. When an update interval
    /// was reached since the last commit, also logs `log_keys`, runs the callbacks and
    /// returns true: the caller then wakes the plugins. A source acknowledges its samples
    /// only after this returns `Ok`.
    pub fn commit(&mut self) -> anyhow::Result<bool> {
        self.history.write().expect("history lock").commit()?;
        let update_due = std::mem::take(&mut self.update_pending);
        if update_due {
            self.log_update();
            self.callbacks.on_update(&self.history.read().expect("history lock"));
        }
        Ok(update_due)
    }

    /// Reads NDJSON until the end of `reader`, committing at every update interval and
    /// at the end.
    pub fn read_ndjson(&mut self, reader: impl BufRead, origin: &str) -> anyhow::Result<()> {
        let ingest = std::cell::RefCell::new(self);
        read_ndjson_with(reader, origin, |line, at| ingest.borrow_mut().accept_line(line, at), || ingest.borrow_mut().commit().map(drop))
    }

    /// How many samples or values failed, by kind of fault.
    pub fn faults(&self) -> &HashMap<String, u64> {
        &self.faults
    }

    /// Where `source` stood at the last commit (see `set_mark`).
    pub fn history_mark(&self, source: &str) -> Option<String> {
        self.history.read().expect("history lock").mark(source).map(str::to_string)
    }

    /// Counts and reports a sample that a source could not hand over.
    pub fn refuse(&mut self, kind: &str, message: String) -> Outcome {
        self.refused += 1;
        self.count_fault(kind.to_string(), || message.clone());
        Outcome::Refused(message)
    }

    /// Logs the first fault of each kind; later ones are only counted.
    fn count_fault(&mut self, kind: String, message: impl FnOnce() -> String) {
        let count = self.faults.entry(kind.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            tracing::warn!(fault = %kind, "{} (further faults of this kind are counted, not logged)", message());
        }
    }

    fn log_update(&self) {
        if self.log_keys.is_empty() {
            return;
        }
        let history = self.history.read().expect("history lock");
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

/// Reads NDJSON lines until the end of `reader`, handing each to `accept` (which may lock
/// an ingest shared with other inputs one line at a time) and calling `commit` at every
/// update interval and once at the end.
pub fn read_ndjson_with(
    reader: impl BufRead,
    origin: &str,
    mut accept: impl FnMut(&[u8], &str) -> Outcome,
    mut commit: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for (index, line) in reader.split(b'\n').enumerate() {
        let line = line?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let Outcome::Accepted { update_due: true } = accept(line, &format!("{origin}:{}", index + 1)) {
            commit()?;
        }
    }
    commit()
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
    use crate::history::History;
    use transforms::series_names;

    /// What the fuzz target (`fuzz/`, nightly) checks, on a fixed pseudo-random corpus so
    /// that the stable test suite runs it too.
    #[test]
    fn mutated_samples_are_stored_as_one_row_or_refused_never_a_panic() {
        let config = HostConfig::builtin_default();
        let history = History::new(series_names(&config.telemetry.transforms)).shared();
        let mut ingest = Ingest::new(&config.telemetry, history.clone(), Callbacks::none());
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
            let rows_before = history.read().unwrap().row_count();
            let outcome = ingest.accept_line(&line, "test");
            ingest.commit().unwrap();
            let added = history.read().unwrap().row_count() - rows_before;
            match outcome {
                Outcome::Accepted { .. } => assert_eq!(added, 1, "{}", String::from_utf8_lossy(&line)),
                Outcome::Refused(_) => assert_eq!(added, 0, "{}", String::from_utf8_lossy(&line)),
            }
        }
        assert!(ingest.accepted > 1000 && ingest.refused > 1000, "the corpus has both: {} / {}", ingest.accepted, ingest.refused);
    }
}
