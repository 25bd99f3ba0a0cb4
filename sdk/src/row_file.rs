//! The restart-safe append-only file every file-writing connector needs: one line per row,
//! appended on every update. On `start` the file is made to hold exactly the rows before
//! the plugin's cursor: a partial last line (a crash in mid-write) and rows the host never
//! saw acknowledged are cut, rows it lacks (the file was deleted, or cut) are read back
//! from the host's history. Only the end of the file is read, backwards, as far as the cut
//! goes: a restart costs the same at 1k and 10M rows.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::history::{self, RowRange};
use crate::types::Rows;

/// Rows read back from the host per call when filling in.
const BACKFILL_CHUNK: u64 = 16_384;

/// How rows become lines, and back.
pub trait RowFormat {
    /// The first line of an empty file (without its newline), if the format has one.
    fn header(&self) -> Option<String> {
        None
    }
    /// Appends one line per row of `rows` to `out`, each ending with `\n`.
    fn write(&mut self, rows: &Rows, out: &mut String);
    /// The row a line written by `write` holds (the line without its newline); `None`
    /// for the header or a line this format did not write. By default the number the line
    /// starts with, up to the first separator (CSV, TSV, space-separated).
    fn row_of(&self, line: &[u8]) -> Option<u64> {
        let digits = line.iter().take_while(|byte| byte.is_ascii_digit()).count();
        let separated = line.get(digits).is_none_or(|byte| !byte.is_ascii_alphanumeric() && *byte != b'.');
        if digits == 0 || !separated {
            return None;
        }
        std::str::from_utf8(&line[..digits]).ok()?.parse().ok()
    }
}

/// A file of one line per row, in row order, each row once.
pub struct RowFile<F: RowFormat> {
    file: File,
    path: PathBuf,
    format: F,
    next_row: u64,
    fsync: bool,
    text: String,
}

impl<F: RowFormat> RowFile<F> {
    /// Opens (or creates) `path` holding exactly the rows before `next_row`: lines past
    /// them cut, missing ones filled in from the history with `format`. `fsync`: sync the
    /// file after every append. Errors name the file.
    pub fn resume(path: impl AsRef<Path>, format: F, next_row: u64, fsync: bool) -> std::io::Result<RowFile<F>> {
        let path = path.as_ref();
        let named = |error: std::io::Error| std::io::Error::new(error.kind(), format!("{}: {error}", path.display()));
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(named)?;
        let (kept_rows, end) = truncate_to(path, next_row, &format).map_err(named)?;
        let mut rows = RowFile { file, path: path.to_path_buf(), format, next_row: kept_rows, fsync, text: String::new() };
        if end == 0
            && let Some(header) = rows.format.header()
        {
            rows.file.write_all(format!("{header}\n").as_bytes()).map_err(named)?;
        }
        let series = history::series_names();
        while rows.next_row < next_row {
            let range = RowRange { first: rows.next_row, count: (next_row - rows.next_row).min(BACKFILL_CHUNK) };
            let timestamps = history::read_timestamps(range).unwrap_or_default();
            if timestamps.is_empty() {
                break;
            }
            let columns = series.iter().map(|name| history::read_series(name, range).unwrap_or_default()).collect();
            rows.append(&Rows { first_row: range.first, timestamps_ms: timestamps, columns })?;
        }
        Ok(rows)
    }

    /// The row after the last one in the file.
    pub fn next_row(&self) -> u64 {
        self.next_row
    }

    /// The format, for settings it keeps.
    pub fn format(&self) -> &F {
        &self.format
    }

    /// Appends the rows' lines in one write. Errors name the file.
    pub fn append(&mut self, rows: &Rows) -> std::io::Result<()> {
        self.text.clear();
        self.format.write(rows, &mut self.text);
        let written = self.file.write_all(self.text.as_bytes()).and_then(|()| if self.fsync { self.file.sync_data() } else { Ok(()) });
        written.map_err(|error| std::io::Error::new(error.kind(), format!("{}: {error}", self.path.display())))?;
        self.next_row = rows.first_row + rows.timestamps_ms.len() as u64;
        Ok(())
    }
}

/// Bytes read at a time while looking backwards for the last row to keep.
const TAIL_BLOCK: u64 = 1 << 16;
/// A longer line is no row a connector wrote: the file is refused rather than read into
/// memory whole.
const MAX_LINE_BYTES: usize = 16 << 20;

/// The end of a file read backwards, a block at a time, line by line.
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
/// row after the last one kept (0 when none is) and where the file now ends. A header
/// stays when a row is kept.
fn truncate_to(path: &Path, next_row: u64, format: &impl RowFormat) -> std::io::Result<(u64, u64)> {
    let file = File::open(path)?;
    let length = file.metadata()?.len();
    let mut lines = Backwards { file, buffer: Vec::new(), start: length };
    let mut end = lines.complete_end()?;
    let kept = loop {
        if end == 0 {
            break 0;
        }
        let (start, line) = lines.previous_line()?;
        match format.row_of(&line) {
            Some(row) if row < next_row => break row + 1,
            _ => end = start,
        }
    };
    if end < length {
        OpenOptions::new().write(true).open(path)?.set_len(end)?;
    }
    Ok((kept, end))
}
