//! File connector: the history on disk, in the files the original node's users read.
//!
//! - `telemetry.jsonl`: one row object per line (`row`, `timestamp_ms`, then every
//!   series; NaN as `null`), appended on every update: cost per update is the size of
//!   the update, not of the history.
//! - `telemetry.json`: the original's dict of columns `{series: [values...]}`, rewritten
//!   atomically (temporary file, fsync, rename) at most every `json_interval_s` and at
//!   `stop`, a bounded piece per update (see `columns_json`). After `stop` both files
//!   hold the same rows.
//! - `telemetry.png` when `plot` is configured.

mod columns_json;
mod config;
mod plot;
mod rows_jsonl;
mod text_backend;

use std::time::Instant;

use config::Settings;
use telemetry_plugin::log::{Level, write as log};
use telemetry_plugin::{Connector, ConnectorError, RowFile, Rows, Start, history};

/// Values of `telemetry.json` written per update while it is rewritten: about 25 ms of
/// an update (some 200 ns a value, read from the host and formatted), so a rewrite of a
/// 10M-row run spreads over several hundred updates instead of stalling one past its call
/// limit.
const JSON_VALUES_PER_UPDATE: u64 = 1 << 17;

struct State {
    settings: Settings,
    series: Vec<String>,
    jsonl: RowFile<rows_jsonl::Jsonl>,
    /// The rewrite of `telemetry.json` under way, if any.
    json: Option<columns_json::Rewrite>,
    /// When the last rewrite of `telemetry.json` was completed.
    last_json: Option<Instant>,
    /// Rows of the last complete `telemetry.json` this instance wrote.
    json_rows: u64,
    last_plot: Option<Instant>,
}

fn unavailable(what: &str, error: std::io::Error) -> ConnectorError {
    ConnectorError::Unavailable(format!("{what}: {error}"))
}

impl State {
    fn json_path(&self) -> std::path::PathBuf {
        self.settings.dir.join("telemetry.json")
    }

    /// Starts a rewrite of `telemetry.json` when one is due and rows came since the last,
    /// and moves the one under way on by a bounded piece.
    fn advance_json(&mut self) -> std::io::Result<()> {
        let interval = self.settings.json_interval_s;
        let grown = history::row_count() > self.json.as_ref().map_or(self.json_rows, |rewrite| rewrite.rows);
        if self.json.is_none() && interval > 0.0 && grown && State::due(self.last_json, interval) {
            self.json = Some(columns_json::Rewrite::begin(&self.json_path(), self.settings.nan_as_null)?);
        }
        if let Some(rewrite) = &mut self.json
            && rewrite.advance(&self.series, JSON_VALUES_PER_UPDATE)?
        {
            self.json_rows = rewrite.rows;
            self.json = None;
            self.last_json = Some(Instant::now());
        }
        Ok(())
    }

    /// Brings `telemetry.json` to every row of the history, now.
    fn finish_json(&mut self) -> Result<(), ConnectorError> {
        let path = self.json_path();
        let complete = self.json.as_ref().is_some_and(|rewrite| rewrite.rows == history::row_count());
        let mut rewrite = match self.json.take() {
            Some(rewrite) if complete => rewrite,
            _ => columns_json::Rewrite::begin(&path, self.settings.nan_as_null)
                .map_err(|error| unavailable(&path.display().to_string(), error))?,
        };
        while !rewrite.advance(&self.series, u64::MAX).map_err(|error| unavailable(&path.display().to_string(), error))? {}
        self.json_rows = rewrite.rows;
        self.last_json = Some(Instant::now());
        Ok(())
    }

    fn draw_plot(&mut self) -> Result<(), ConnectorError> {
        let Some(plot) = &self.settings.plot else { return Ok(()) };
        plot::draw(plot, &self.settings.dir).map_err(|error| ConnectorError::Unavailable(format!("plot: {error}")))?;
        self.last_plot = Some(Instant::now());
        Ok(())
    }

    fn due(last: Option<Instant>, interval_s: f64) -> bool {
        last.is_none_or(|last| last.elapsed().as_secs_f64() >= interval_s)
    }
}

impl Connector for State {
    /// Checked key by key in `config` (it predates typed configuration and keeps its
    /// messages).
    type Config = serde_json::Value;

    fn start(start: Start<serde_json::Value>) -> Result<State, ConnectorError> {
        let context = &start.context;
        let settings = config::parse(&start.config, &context.series).map_err(ConnectorError::InvalidConfig)?;
        if !settings.dir.is_dir() {
            std::fs::create_dir_all(&settings.dir).map_err(|error| {
                ConnectorError::InvalidConfig(format!(
                    "cannot create {}: {error} (is the data directory granted read-write?)",
                    settings.dir.display()
                ))
            })?;
        }
        let path = settings.dir.join("telemetry.jsonl");
        let jsonl = RowFile::resume(&path, rows_jsonl::Jsonl::new(&context.series), context.next_row, settings.fsync).map_err(|error| {
            ConnectorError::InvalidConfig(format!("cannot write {}: {error} (is the data directory granted read-write?)", path.display()))
        })?;
        log(Level::Info, &format!("writing to {} from row {}", settings.dir.display(), context.next_row));
        Ok(State { settings, series: context.series.clone(), jsonl, json: None, last_json: None, json_rows: 0, last_plot: None })
    }

    fn update(&mut self, batch: Rows) -> Result<(), ConnectorError> {
        let rows = batch.timestamps_ms.len() as u64;
        if rows > 0 {
            self.jsonl.append(&batch).map_err(|error| unavailable("telemetry.jsonl", error))?;
        }
        // The rows are in telemetry.jsonl now: a failure of what is derived from them is
        // logged and tried again later, never reported as a failed update (the host would
        // offer the same rows again and they would be appended twice).
        if let Err(error) = self.advance_json() {
            self.json = None;
            self.last_json = Some(Instant::now());
            log(Level::Warn, &format!("{}: {error}; tried again in {} s", self.json_path().display(), self.settings.json_interval_s));
        }
        let plot_due = self.settings.plot.as_ref().is_some_and(|plot| State::due(self.last_plot, plot.min_interval_s));
        if rows > 0
            && plot_due
            && let Err(error) = self.draw_plot()
        {
            self.last_plot = Some(Instant::now());
            log(Level::Warn, &format!("{error:?}"));
        }
        Ok(())
    }

    fn stop(&mut self) -> Result<(), ConnectorError> {
        self.finish_json()?;
        self.draw_plot()?;
        log(Level::Info, &format!("stopped with {} rows on disk", self.jsonl.next_row()));
        Ok(())
    }
}

telemetry_plugin::export_connector!(State);
