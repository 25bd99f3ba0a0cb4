//! The write-ahead log of the rows not yet sealed in a chunk. Rows, source positions
//! ("marks", e.g. the last Redis stream entry stored) and commits are appended as
//! checksummed records; a commit is synced before anyone is told the rows are stored.
//! Recovery keeps what the last intact commit covers and cuts off the rest, so a crash
//! at any instant leaves exactly the acknowledged rows.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

use super::chunk::sync_dir;

pub const WAL_FILE: &str = "wal.log";
const MAGIC: u64 = u64::from_le_bytes(*b"THWAL001");
const HEADER_BYTES: usize = 24;
const ROW: u8 = 1;
const MARK: u8 = 2;
const COMMIT: u8 = 3;

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
    pub rows: Vec<LoggedRow>,
    pub marks: BTreeMap<String, String>,
    /// Bytes cut off: records after the last commit, or a torn or corrupt end.
    pub discarded_bytes: u64,
}

pub struct Wal {
    file: BufWriter<File>,
    path: PathBuf,
    record: Vec<u8>,
}

impl Wal {
    /// Starts a new log for rows from `first_row` on, holding `marks` and the committed
    /// `rows` still to be sealed, and puts it in place of the old one in one rename.
    pub fn create(dir: &Path, series: usize, first_row: u64, marks: &BTreeMap<String, String>, rows: &[LoggedRow]) -> Result<Wal> {
        let path = dir.join(WAL_FILE);
        let temporary = dir.join(format!("{WAL_FILE}.partial"));
        let file = File::create(&temporary).with_context(|| format!("cannot create {}", temporary.display()))?;
        let mut wal = Wal { file: BufWriter::with_capacity(1 << 16, file), path: temporary.clone(), record: Vec::new() };
        let mut header = Vec::with_capacity(HEADER_BYTES);
        header.extend(MAGIC.to_le_bytes());
        header.extend(first_row.to_le_bytes());
        header.extend((series as u64).to_le_bytes());
        wal.file.write_all(&header).with_context(|| format!("cannot write {}", temporary.display()))?;
        for (source, position) in marks {
            wal.append_mark(source, position)?;
        }
        for row in rows {
            wal.append_row(row.row, row.timestamp_ms, &row.values)?;
        }
        wal.commit(first_row + rows.len() as u64)?;
        std::fs::rename(&temporary, &path).with_context(|| format!("cannot rename {} into place", temporary.display()))?;
        sync_dir(dir)?;
        wal.path = path;
        Ok(wal)
    }

    /// Opens an existing log for appending after `recover` cut it to its last commit.
    pub fn reopen(dir: &Path) -> Result<Wal> {
        let path = dir.join(WAL_FILE);
        let file = OpenOptions::new().append(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Wal { file: BufWriter::with_capacity(1 << 16, file), path, record: Vec::new() })
    }

    pub fn append_row(&mut self, row: u64, timestamp_ms: i64, values: &[f64]) -> Result<()> {
        self.record.clear();
        self.record.push(ROW);
        self.record.extend(row.to_le_bytes());
        self.record.extend(timestamp_ms.to_le_bytes());
        for value in values {
            self.record.extend(value.to_le_bytes());
        }
        self.write_record()
    }

    pub fn append_mark(&mut self, source: &str, position: &str) -> Result<()> {
        self.record.clear();
        self.record.push(MARK);
        self.record.extend((source.len() as u32).to_le_bytes());
        self.record.extend(source.as_bytes());
        self.record.extend(position.as_bytes());
        self.write_record()
    }

    /// Records that the history holds `rows` rows and makes everything so far durable.
    pub fn commit(&mut self, rows: u64) -> Result<()> {
        self.record.clear();
        self.record.push(COMMIT);
        self.record.extend(rows.to_le_bytes());
        self.write_record()?;
        self.file.flush().and_then(|()| self.file.get_ref().sync_data()).with_context(|| format!("cannot sync {}", self.path.display()))
    }

    fn write_record(&mut self) -> Result<()> {
        let length = self.record.len() as u32;
        let checksum = crc32fast::hash(&self.record);
        let path = &self.path;
        (|| {
            self.file.write_all(&length.to_le_bytes())?;
            self.file.write_all(&checksum.to_le_bytes())?;
            self.file.write_all(&self.record)
        })()
        .with_context(|| format!("cannot append to {}", path.display()))
    }
}

/// Reads `dir`'s log, keeps what its last intact commit covers and truncates the file
/// there. `None` when there is no log yet.
pub fn recover(dir: &Path, series: usize) -> Result<Option<(u64, Recovered)>> {
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
    let mut recovered = Recovered::default();
    let mut pending_rows = Vec::new();
    let mut pending_marks = Vec::new();
    let mut at = HEADER_BYTES;
    let mut committed_at = HEADER_BYTES;
    let row_bytes = 1 + 16 + 8 * series;
    while let Some(record) = next_record(&bytes, at) {
        at += 8 + record.len();
        match record[0] {
            ROW if record.len() == row_bytes => {
                let word = |offset: usize| record[1 + offset * 8..9 + offset * 8].try_into().expect("8 bytes");
                let row = LoggedRow {
                    row: u64::from_le_bytes(word(0)),
                    timestamp_ms: i64::from_le_bytes(word(1)),
                    values: (0..series).map(|index| f64::from_le_bytes(word(2 + index))).collect(),
                };
                let expected = first_row + (recovered.rows.len() + pending_rows.len()) as u64;
                if row.row != expected {
                    break;
                }
                pending_rows.push(row);
            }
            MARK if record.len() >= 5 => {
                let length = u32::from_le_bytes(record[1..5].try_into().expect("4 bytes")) as usize;
                let (Some(source), Some(position)) = (record.get(5..5 + length), record.get(5 + length..)) else { break };
                pending_marks.push((String::from_utf8_lossy(source).into_owned(), String::from_utf8_lossy(position).into_owned()));
            }
            COMMIT if record.len() == 9 => {
                recovered.rows.append(&mut pending_rows);
                recovered.marks.extend(pending_marks.drain(..));
                committed_at = at;
            }
            _ => break,
        }
    }
    recovered.discarded_bytes = (bytes.len() - committed_at) as u64;
    if recovered.discarded_bytes > 0 {
        let file = OpenOptions::new().write(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        file.set_len(committed_at as u64)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot cut {} back to its last commit", path.display()))?;
    }
    Ok(Some((first_row, recovered)))
}

/// The payload of the intact record at `at`, if there is one.
fn next_record(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let length = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
    let checksum = u32::from_le_bytes(bytes.get(at + 4..at + 8)?.try_into().ok()?);
    let record = bytes.get(at + 8..at + 8 + length)?;
    (length > 0 && crc32fast::hash(record) == checksum).then_some(record)
}
