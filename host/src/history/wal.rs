//! The write-ahead log of the rows not yet sealed in a chunk. Rows, source positions
//! ("marks", e.g. the last Redis stream entry stored) and commits are checksummed
//! records. A commit gathers everything appended since the last one into one buffer,
//! written with one write at the end of the last commit and synced before anyone is told
//! the rows are stored. After a failed write or sync the log is cut back to its last
//! commit before anything else is written, so a later commit never lands behind a torn
//! record, and what failed is never acknowledged.
//!
//! Recovery keeps what the last intact commit covers. Bytes after it (a torn end, never
//! acknowledged) are cut, and the warning says what they held; a damaged record followed
//! by an intact commit is acknowledged data in danger, so it is an error that names the
//! file and offset and leaves the file as it is.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};

use super::chunk::sync_dir;

pub const WAL_FILE: &str = "wal.log";
const MAGIC: u64 = u64::from_le_bytes(*b"THWAL001");
const HEADER_BYTES: usize = 24;
/// Length and checksum before each record's payload.
const FRAME_BYTES: usize = 8;
const ROW: u8 = 1;
const MARK: u8 = 2;
const COMMIT: u8 = 3;
const COMMIT_BYTES: usize = 9;

/// A row as the log holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedRow {
    pub row: u64,
    pub timestamp_ms: i64,
    pub values: Vec<f64>,
}

/// What a log held up to its last intact commit.
#[derive(Debug, Default)]
pub struct Recovered {
    pub first_row: u64,
    pub rows: Vec<LoggedRow>,
    pub marks: BTreeMap<String, String>,
    /// Where the last commit ends: what is after it was never acknowledged.
    pub committed_bytes: u64,
    /// What lies after the last commit, if anything (a torn or uncommitted end).
    pub uncommitted: Option<Uncommitted>,
}

/// The end of a log past its last commit.
#[derive(Debug, Default, PartialEq)]
pub struct Uncommitted {
    pub bytes: u64,
    /// Intact rows and marks in it (written, never committed).
    pub rows: u64,
    pub marks: u64,
}

pub struct Wal {
    file: File,
    path: PathBuf,
    /// Records appended since the last commit, framed.
    pending: Vec<u8>,
    /// Length of the log up to its last commit.
    committed_bytes: u64,
    /// A write or sync failed: the file may hold bytes past `committed_bytes`.
    needs_repair: bool,
}

impl Wal {
    /// Starts a new log for rows from `first_row` on, holding `marks` and the committed
    /// `rows` still to be sealed, and puts it in place of the old one in one rename.
    pub fn create(dir: &Path, series: usize, first_row: u64, marks: &BTreeMap<String, String>, rows: &[LoggedRow]) -> Result<Wal> {
        let path = dir.join(WAL_FILE);
        let temporary = dir.join(format!("{WAL_FILE}.partial"));
        let file = File::create(&temporary).with_context(|| format!("cannot create {}", temporary.display()))?;
        let mut wal = Wal { file, path: temporary.clone(), pending: Vec::new(), committed_bytes: 0, needs_repair: false };
        wal.pending.extend(MAGIC.to_le_bytes());
        wal.pending.extend(first_row.to_le_bytes());
        wal.pending.extend((series as u64).to_le_bytes());
        for (source, position) in marks {
            wal.append_mark(source, position);
        }
        for row in rows {
            wal.append_row(row.row, row.timestamp_ms, &row.values);
        }
        let placed = wal
            .commit(first_row + rows.len() as u64)
            .and_then(|()| std::fs::rename(&temporary, &path).with_context(|| format!("cannot rename {} into place", temporary.display())));
        if let Err(error) = placed {
            // The old log stays in place; its space is given back.
            let _ = std::fs::remove_file(&temporary);
            return Err(error);
        }
        sync_dir(dir)?;
        wal.path = path;
        Ok(wal)
    }

    /// Opens the log that `recover` read, to append after its last commit (an end past
    /// it is cut first).
    pub fn reopen(dir: &Path, recovered: &Recovered) -> Result<Wal> {
        let path = dir.join(WAL_FILE);
        let file = OpenOptions::new().write(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut wal = Wal { file, path, pending: Vec::new(), committed_bytes: recovered.committed_bytes, needs_repair: false };
        if recovered.uncommitted.is_some() {
            wal.cut_back()?;
        }
        Ok(wal)
    }

    pub fn append_row(&mut self, row: u64, timestamp_ms: i64, values: &[f64]) {
        let start = self.begin_record(ROW);
        self.pending.extend(row.to_le_bytes());
        self.pending.extend(timestamp_ms.to_le_bytes());
        for value in values {
            self.pending.extend(value.to_le_bytes());
        }
        self.end_record(start);
    }

    pub fn append_mark(&mut self, source: &str, position: &str) {
        let start = self.begin_record(MARK);
        self.pending.extend((source.len() as u32).to_le_bytes());
        self.pending.extend(source.as_bytes());
        self.pending.extend(position.as_bytes());
        self.end_record(start);
    }

    /// Forgets what was appended since the last commit.
    pub fn discard_pending(&mut self) {
        self.pending.clear();
    }

    /// Records that the history holds `rows` rows and makes everything appended since the
    /// last commit durable, in one write and one sync. On failure nothing of it counts:
    /// the log is cut back to its last commit (now, or before the next commit if that
    /// fails too).
    pub fn commit(&mut self, rows: u64) -> Result<()> {
        let start = self.begin_record(COMMIT);
        self.pending.extend(rows.to_le_bytes());
        self.end_record(start);
        let result = self.write_pending();
        self.pending.clear();
        if result.is_err() {
            self.needs_repair = true;
            // Best effort now; `write_pending` insists before the next write.
            let _ = self.cut_back();
        }
        result
    }

    fn write_pending(&mut self) -> Result<()> {
        if self.needs_repair {
            self.cut_back()?;
        }
        let path = &self.path;
        self.file.write_all_at(&self.pending, self.committed_bytes).with_context(|| format!("cannot append to {}", path.display()))?;
        self.file.sync_data().with_context(|| format!("cannot sync {}", path.display()))?;
        self.committed_bytes += self.pending.len() as u64;
        Ok(())
    }

    /// Cuts the file back to its last commit and syncs that.
    fn cut_back(&mut self) -> Result<()> {
        self.file
            .set_len(self.committed_bytes)
            .and_then(|()| self.file.sync_all())
            .with_context(|| format!("cannot cut {} back to its last commit ({} bytes)", self.path.display(), self.committed_bytes))?;
        self.needs_repair = false;
        Ok(())
    }

    /// Starts a record of `kind` in `pending`; its frame is filled in by `end_record`.
    fn begin_record(&mut self, kind: u8) -> usize {
        let start = self.pending.len();
        self.pending.extend([0; FRAME_BYTES]);
        self.pending.push(kind);
        start
    }

    fn end_record(&mut self, start: usize) {
        let payload = start + FRAME_BYTES;
        let length = (self.pending.len() - payload) as u32;
        let checksum = crc32fast::hash(&self.pending[payload..]);
        self.pending[start..start + 4].copy_from_slice(&length.to_le_bytes());
        self.pending[start + 4..payload].copy_from_slice(&checksum.to_le_bytes());
    }
}

#[cfg(test)]
impl Wal {
    /// Makes writes fail (a read-only descriptor), as a full or failing disk does.
    pub fn fail_writes(&mut self, fail: bool) {
        self.file = if fail { File::open(&self.path) } else { OpenOptions::new().write(true).open(&self.path) }.expect("the log");
    }
}

/// Reads `dir`'s log up to its last intact commit, changing nothing. `None` when there is
/// no log. A damaged record followed by an intact later commit is an error.
pub fn recover(dir: &Path, series: usize) -> Result<Option<Recovered>> {
    let path = dir.join(WAL_FILE);
    let mut bytes = Vec::new();
    match File::open(&path) {
        Ok(mut file) => file.read_to_end(&mut bytes).with_context(|| format!("cannot read {}", path.display()))?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("cannot open {}", path.display())),
    };
    ensure!(bytes.len() >= HEADER_BYTES, "{}: shorter than its header; the history folder is damaged", path.display());
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    ensure!(word(0) == MAGIC, "{}: not a telemetry-host write-ahead log", path.display());
    ensure!(word(16) == series as u64, "{}: rows of {} series, the history has {series}", path.display(), word(16));
    let first_row = word(8);
    let mut recovered = Recovered { first_row, ..Recovered::default() };
    let mut pending_rows = Vec::new();
    let mut pending_marks = Vec::new();
    let mut at = HEADER_BYTES;
    let mut committed_at = HEADER_BYTES;
    let row_bytes = 1 + 16 + 8 * series;
    let mut damaged = false;
    while at < bytes.len() {
        let Some(record) = next_record(&bytes, at) else {
            damaged = true;
            break;
        };
        let intact = match record[0] {
            ROW if record.len() == row_bytes => {
                let word = |offset: usize| record[1 + offset * 8..9 + offset * 8].try_into().expect("8 bytes");
                let row = LoggedRow {
                    row: u64::from_le_bytes(word(0)),
                    timestamp_ms: i64::from_le_bytes(word(1)),
                    values: (0..series).map(|index| f64::from_le_bytes(word(2 + index))).collect(),
                };
                let expected = first_row + (recovered.rows.len() + pending_rows.len()) as u64;
                let in_order = row.row == expected;
                pending_rows.push(row);
                in_order
            }
            MARK if record.len() >= 5 => {
                let length = u32::from_le_bytes(record[1..5].try_into().expect("4 bytes")) as usize;
                match (record.get(5..5 + length), record.get(5 + length..)) {
                    (Some(source), Some(position)) => {
                        pending_marks.push((String::from_utf8_lossy(source).into_owned(), String::from_utf8_lossy(position).into_owned()));
                        true
                    }
                    _ => false,
                }
            }
            COMMIT if record.len() == COMMIT_BYTES => {
                let rows = u64::from_le_bytes(record[1..9].try_into().expect("8 bytes"));
                let matches = rows == first_row + (recovered.rows.len() + pending_rows.len()) as u64;
                if matches {
                    recovered.rows.append(&mut pending_rows);
                    recovered.marks.extend(pending_marks.drain(..));
                    committed_at = at + FRAME_BYTES + record.len();
                }
                matches
            }
            _ => false,
        };
        if !intact {
            damaged = true;
            break;
        }
        at += FRAME_BYTES + record.len();
    }
    let committed_rows = first_row + recovered.rows.len() as u64;
    if damaged && let Some((offset, rows)) = later_commit(&bytes, at + 1, committed_rows) {
        bail!(
            "{}: damaged at byte {at}, but an intact commit of {rows} rows follows at byte {offset}: rows {committed_rows}..{rows} \
             were acknowledged after the damage. Nothing was changed. Keep a copy of the folder; to go on with the {committed_rows} \
             rows before the damage, cut the log at byte {at} (truncate -s {at} {}) and start again",
            path.display(),
            path.display()
        );
    }
    recovered.committed_bytes = committed_at as u64;
    if committed_at < bytes.len() {
        recovered.uncommitted = Some(Uncommitted {
            bytes: (bytes.len() - committed_at) as u64,
            rows: pending_rows.len() as u64,
            marks: pending_marks.len() as u64,
        });
    }
    Ok(Some(recovered))
}

/// The first intact commit record at or after `from` that covers more than
/// `committed_rows` rows: its offset and rows.
fn later_commit(bytes: &[u8], from: usize, committed_rows: u64) -> Option<(usize, u64)> {
    let frame_of_commit = (COMMIT_BYTES as u32).to_le_bytes();
    (from..bytes.len().saturating_sub(FRAME_BYTES + COMMIT_BYTES - 1)).find_map(|at| {
        if bytes[at..at + 4] != frame_of_commit || bytes[at + FRAME_BYTES] != COMMIT {
            return None;
        }
        let record = next_record(bytes, at)?;
        let rows = u64::from_le_bytes(record[1..9].try_into().ok()?);
        (rows > committed_rows).then_some((at, rows))
    })
}

/// The payload of the intact record at `at`, if there is one.
fn next_record(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let length = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
    let checksum = u32::from_le_bytes(bytes.get(at + 4..at + 8)?.try_into().ok()?);
    let record = bytes.get(at + FRAME_BYTES..at + FRAME_BYTES + length)?;
    (length > 0 && crc32fast::hash(record) == checksum).then_some(record)
}
