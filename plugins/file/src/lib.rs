//! File connector: the history on disk, in the files the original node's users read.
//!
//! - `telemetry.jsonl`: one row object per line (`row`, `timestamp_ms`, then every
//!   series; NaN as `null`), appended on every update: cost per update is the size of
//!   the update, not of the history.
//! - `telemetry.json`: the original's dict of columns `{series: [values...]}`, rewritten
//!   atomically (temporary file, fsync, rename) at most every `json_interval_s` and at
//!   `stop`. After `stop` both files hold the same rows.
//! - `telemetry.png` when `plot` is configured.

mod columns_json;
mod config;
mod plot;
mod rows_jsonl;
mod text_backend;

use std::cell::RefCell;
use std::time::Instant;

wit_bindgen::generate!({
    path: "../../wit",
    world: "connector",
});

use config::Settings;
use exports::telemetry::connector::telemetry_connector::Guest;
use telemetry::connector::log::{Level, write as log};
use telemetry::connector::types::{ConnectorError, Rows, StartContext};

struct State {
    settings: Settings,
    series: Vec<String>,
    jsonl: rows_jsonl::RowsFile,
    last_json: Option<Instant>,
    last_plot: Option<Instant>,
    rows_since_json: u64,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

fn with_state<R>(action: impl FnOnce(&mut State) -> Result<R, ConnectorError>) -> Result<R, ConnectorError> {
    STATE.with(|state| match state.borrow_mut().as_mut() {
        Some(state) => action(state),
        None => Err(ConnectorError::Internal("update or stop before start".into())),
    })
}

fn unavailable(what: &str, error: std::io::Error) -> ConnectorError {
    ConnectorError::Unavailable(format!("{what}: {error}"))
}

impl State {
    fn write_json(&mut self) -> Result<(), ConnectorError> {
        let path = self.settings.dir.join("telemetry.json");
        columns_json::write_atomically(&path, &self.series, self.settings.nan_as_null)
            .map_err(|error| unavailable(&path.display().to_string(), error))?;
        self.last_json = Some(Instant::now());
        self.rows_since_json = 0;
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

struct FileConnector;

impl Guest for FileConnector {
    fn start(context: StartContext) -> Result<(), ConnectorError> {
        let settings = config::parse(&context).map_err(ConnectorError::InvalidConfig)?;
        if !settings.dir.is_dir() {
            std::fs::create_dir_all(&settings.dir).map_err(|error| {
                ConnectorError::InvalidConfig(format!(
                    "cannot create {}: {error} (is the data directory granted read-write?)",
                    settings.dir.display()
                ))
            })?;
        }
        let jsonl = rows_jsonl::RowsFile::open(&settings.dir.join("telemetry.jsonl"), &context.series, context.next_row, settings.fsync)
            .map_err(|error| {
                ConnectorError::InvalidConfig(format!(
                    "cannot write {}: {error} (is the data directory granted read-write?)",
                    settings.dir.join("telemetry.jsonl").display()
                ))
            })?;
        log(Level::Info, &format!("writing to {} from row {}", settings.dir.display(), context.next_row));
        STATE.with(|state| {
            *state.borrow_mut() =
                Some(State { settings, series: context.series, jsonl, last_json: None, last_plot: None, rows_since_json: 0 })
        });
        Ok(())
    }

    fn update(batch: Rows) -> Result<(), ConnectorError> {
        with_state(|state| {
            let rows = batch.timestamps_ms.len() as u64;
            if rows > 0 {
                state.jsonl.append(&batch).map_err(|error| unavailable("telemetry.jsonl", error))?;
                state.rows_since_json += rows;
            }
            if state.rows_since_json > 0
                && state.settings.json_interval_s > 0.0
                && State::due(state.last_json, state.settings.json_interval_s)
            {
                state.write_json()?;
            }
            let plot_due = state.settings.plot.as_ref().is_some_and(|plot| State::due(state.last_plot, plot.min_interval_s));
            if rows > 0 && plot_due {
                state.draw_plot()?;
            }
            Ok(())
        })
    }

    fn stop() -> Result<(), ConnectorError> {
        with_state(|state| {
            state.write_json()?;
            state.draw_plot()?;
            log(Level::Info, &format!("stopped with {} rows on disk", state.jsonl.next_row()));
            Ok(())
        })
    }
}

export!(FileConnector);
