//! `telemetry.jsonl`: one row object per line, appended. On `start` the file is made to
//! hold exactly the rows before the plugin's cursor: a partial last line (a crash in
//! mid-write) and rows the host never saw acknowledged are cut, rows it misses are read
//! back from the host's history. Only the end of the file is read, backwards, as far as
//! the cut goes: a restart costs the same at 1k and 10M rows.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
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
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let kept_rows = truncate_to(path, next_row)?;
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

/// Bytes read at a time while looking backwards for the last row to keep.
const TAIL_BLOCK: u64 = 1 << 16;
/// A longer line is no row this connector wrote: the file is refused rather than read
/// into memory whole.
const MAX_LINE_BYTES: usize = 16 << 20;

/// The end of `path` read backwards, a block at a time, line by line.
struct Backwards {
    file: File,
    /// Bytes `start..start + buffer.len()` of the file, the lines not yet given out.
    buffer: Vec<u8>,
    start: u64,
}

impl Backwards {
    /// Reads the block before the buffer; false at the start of the file.
    fn read_before(&mut self) -> std::io::Result<bool> {
        if self.start == 0 {
            return Ok(false);
        }
        if self.buffer.len() > MAX_LINE_BYTES {
            return Err(std::io::Error::other(format!(
                "a line of more than {MAX_LINE_BYTES} bytes ends at byte {}: not a file this connector wrote; move it away",
                self.start + self.buffer.len() as u64
            )));
        }
        let first = self.start.saturating_sub(TAIL_BLOCK);
        let mut block = vec![0; (self.start - first) as usize];
        self.file.seek(SeekFrom::Start(first))?;
        self.file.read_exact(&mut block)?;
        block.extend_from_slice(&self.buffer);
        (self.buffer, self.start) = (block, first);
        Ok(true)
    }

    /// The end of the last complete line (just past its newline), 0 if there is none.
    fn complete_end(&mut self) -> std::io::Result<u64> {
        loop {
            if let Some(at) = self.buffer.iter().rposition(|byte| *byte == b'\n') {
                self.buffer.truncate(at + 1);
                return Ok(self.start + at as u64 + 1);
            }
            if !self.read_before()? {
                self.buffer.clear();
                return Ok(0);
            }
        }
    }

    /// The line that ends (newline included) where the buffer ends, without its newline,
    /// and where it starts; the buffer then ends where the line started.
    fn previous_line(&mut self) -> std::io::Result<(u64, Vec<u8>)> {
        loop {
            // Recomputed after each read: a block read before shifts the buffer.
            let newline = self.buffer.len() - 1;
            if let Some(at) = self.buffer[..newline].iter().rposition(|byte| *byte == b'\n') {
                let line = self.buffer[at + 1..newline].to_vec();
                self.buffer.truncate(at + 1);
                return Ok((self.start + at as u64 + 1, line));
            }
            if !self.read_before()? {
                let line = self.buffer[..newline].to_vec();
                self.buffer.clear();
                return Ok((0, line));
            }
        }
    }
}

/// Cuts the file at `path` after the last complete line whose row is before `next_row`
/// (dropping a partial last line and rows the host never saw acknowledged); returns the
/// row after the last one kept (0 when none is).
fn truncate_to(path: &Path, next_row: u64) -> std::io::Result<u64> {
    let file = File::open(path)?;
    let length = file.metadata()?.len();
    let mut lines = Backwards { file, buffer: Vec::new(), start: length };
    let mut end = lines.complete_end()?;
    let kept = loop {
        if end == 0 {
            break 0;
        }
        let (start, line) = lines.previous_line()?;
        match row_of(&line) {
            Some(row) if row < next_row => break row + 1,
            _ => end = start,
        }
    };
    if end < length {
        OpenOptions::new().write(true).open(path)?.set_len(end)?;
    }
    Ok(kept)
}

fn row_of(line: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    value.get("row")?.as_u64()
}
