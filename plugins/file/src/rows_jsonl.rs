//! `telemetry.jsonl`: one row object per line, appended. On `start` the file is made to
//! hold exactly the rows before the plugin's cursor: a partial last line (a crash in
//! mid-write) and rows the host never saw acknowledged are cut, rows it misses are read
//! back from the host's history.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::telemetry::connector::history::{self, RowRange};
use crate::telemetry::connector::types::Rows;

/// Rows read back from the host per call when backfilling.
const BACKFILL_CHUNK: u64 = 16_384;

pub struct RowsFile {
    file: File,
    series: Vec<String>,
    next_row: u64,
    fsync: bool,
    line: String,
}

/// Appends a JSON number: NaN as `null` (JSONL is for any tool), infinities as the
/// largest finite value would lie, so they are `null` too.
pub fn push_number(out: &mut String, value: f64, nan_token: &str) {
    if value.is_finite() {
        let mut buffer = ryu::Buffer::new();
        let text = buffer.format_finite(value);
        out.push_str(text);
    } else if value.is_nan() {
        out.push_str(nan_token);
    } else if nan_token == "NaN" {
        out.push_str(if value > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        out.push_str("null");
    }
}

impl RowsFile {
    pub fn open(path: &Path, series: &[String], next_row: u64, fsync: bool) -> std::io::Result<RowsFile> {
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(path)?;
        let kept_rows = truncate_to(&mut file, path, next_row)?;
        let mut rows = RowsFile { file, series: series.to_vec(), next_row: kept_rows, fsync, line: String::new() };
        // Rows before the cursor that the file lacks (it was removed, or cut above).
        while rows.next_row < next_row {
            let count = (next_row - rows.next_row).min(BACKFILL_CHUNK);
            let range = RowRange { first: rows.next_row, count };
            let timestamps = history::read_timestamps(range).unwrap_or_default();
            if timestamps.is_empty() {
                break;
            }
            let columns = series.iter().map(|name| history::read_series(name, range).unwrap_or_default()).collect();
            rows.append(&Rows { first_row: range.first, timestamps_ms: timestamps, columns })?;
        }
        Ok(rows)
    }

    pub fn next_row(&self) -> u64 {
        self.next_row
    }

    pub fn append(&mut self, batch: &Rows) -> std::io::Result<()> {
        let text = &mut self.line;
        text.clear();
        for (offset, timestamp) in batch.timestamps_ms.iter().enumerate() {
            text.push_str("{\"row\":");
            text.push_str(&(batch.first_row + offset as u64).to_string());
            text.push_str(",\"timestamp_ms\":");
            text.push_str(&timestamp.to_string());
            for (name, column) in self.series.iter().zip(&batch.columns) {
                text.push(',');
                text.push_str(&serde_json::to_string(name).unwrap_or_default());
                text.push(':');
                push_number(text, column.get(offset).copied().unwrap_or(f64::NAN), "null");
            }
            text.push_str("}\n");
        }
        self.file.write_all(text.as_bytes())?;
        if self.fsync {
            self.file.sync_data()?;
        }
        self.next_row = batch.first_row + batch.timestamps_ms.len() as u64;
        Ok(())
    }
}

/// Cuts `file` after its last complete line and before the first row >= `next_row`;
/// returns the index of the row after the last one kept.
fn truncate_to(file: &mut File, path: &Path, next_row: u64) -> std::io::Result<u64> {
    let length = file.metadata()?.len();
    if length == 0 {
        return Ok(0);
    }
    // The tail holds the last complete line in all but absurd cases.
    let tail_start = length.saturating_sub(1 << 16);
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(tail_start))?;
    file.read_to_end(&mut tail)?;
    let Some(last_newline) = tail.iter().rposition(|byte| *byte == b'\n') else {
        if tail_start == 0 {
            // Not one complete line: nothing worth keeping.
            OpenOptions::new().write(true).open(path)?.set_len(0)?;
            return Ok(0);
        }
        return scan_and_cut(path, next_row);
    };
    let complete_end = tail_start + last_newline as u64 + 1;
    let line_start = tail[..last_newline].iter().rposition(|byte| *byte == b'\n').map_or(0, |position| position + 1);
    if line_start == 0 && tail_start > 0 {
        return scan_and_cut(path, next_row);
    }
    match row_of(&tail[line_start..last_newline]) {
        Some(last) if last < next_row => {
            if complete_end < length {
                OpenOptions::new().write(true).open(path)?.set_len(complete_end)?;
            }
            Ok(last + 1)
        }
        _ => scan_and_cut(path, next_row),
    }
}

/// Reads the file from the start and cuts it at the first line that is not a row before
/// `next_row` (or is not a complete row at all).
fn scan_and_cut(path: &Path, next_row: u64) -> std::io::Result<u64> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut kept_bytes = 0u64;
    let mut kept_rows = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line)?;
        if read == 0 || line.last() != Some(&b'\n') {
            break;
        }
        match row_of(&line) {
            Some(row) if row < next_row && row == kept_rows => {
                kept_bytes += read as u64;
                kept_rows += 1;
            }
            _ => break,
        }
    }
    OpenOptions::new().write(true).open(path)?.set_len(kept_bytes)?;
    Ok(kept_rows)
}

fn row_of(line: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    value.get("row")?.as_u64()
}
