//! A plugin's cursor (the next row it will receive), kept in the history folder so that
//! a restarted host resumes each plugin exactly where it stopped: 8 bytes of row and 8
//! bytes of its complement, so a damaged file is recognised. After every delivered batch
//! it is replaced whole (a temporary file renamed over it), so a crash of the process
//! keeps the last cursor; it is synced to disk at most once a second and at stop, so a
//! power loss can only move it back (rows offered again), never forward.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Where rows start for a plugin, and where that position is kept.
pub struct Cursor {
    pub next_row: u64,
    pub file: Option<CursorFile>,
}

impl From<u64> for Cursor {
    fn from(next_row: u64) -> Cursor {
        Cursor { next_row, file: None }
    }
}

pub struct CursorFile {
    path: PathBuf,
    last_sync: Cell<Option<Instant>>,
    unsynced: Cell<Option<u64>>,
}

const SYNC_EVERY: Duration = Duration::from_secs(1);

impl Cursor {
    /// The cursor of `plugin` kept in `dir` (0 for a plugin new to this history), at most
    /// `rows`.
    pub fn open(dir: &Path, plugin: &str, rows: u64) -> Result<Cursor> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("{plugin}.cursor"));
        let next_row = match std::fs::read(&path) {
            Ok(bytes) => match decode(&bytes) {
                Some(row) => row,
                None => {
                    tracing::error!(
                        plugin,
                        "{} is damaged ({} bytes that do not check): the plugin receives the history again from row 0",
                        path.display(),
                        bytes.len()
                    );
                    0
                }
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
            Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
        };
        if next_row > rows {
            tracing::warn!(plugin, "{} says row {next_row}, but the history has {rows} rows", path.display());
        }
        let file = CursorFile { path, last_sync: Cell::new(None), unsynced: Cell::new(None) };
        Ok(Cursor { next_row: next_row.min(rows), file: Some(file) })
    }
}

fn encode(next_row: u64) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&next_row.to_le_bytes());
    bytes[8..].copy_from_slice(&(!next_row).to_le_bytes());
    bytes
}

fn decode(bytes: &[u8]) -> Option<u64> {
    let bytes: [u8; 16] = bytes.try_into().ok()?;
    let row = u64::from_le_bytes(bytes[..8].try_into().ok()?);
    let check = u64::from_le_bytes(bytes[8..].try_into().ok()?);
    (check == !row).then_some(row)
}

impl CursorFile {
    /// Replaces the cursor file with `next_row`; synced when the last sync is a second old.
    pub fn store(&self, next_row: u64) {
        if self.last_sync.get().is_none_or(|at| at.elapsed() >= SYNC_EVERY) {
            self.write_synced(next_row);
            return;
        }
        let temporary = self.path.with_extension("cursor.partial");
        match std::fs::write(&temporary, encode(next_row)).and_then(|()| std::fs::rename(&temporary, &self.path)) {
            Ok(()) => self.unsynced.set(Some(next_row)),
            Err(error) => tracing::error!("cannot write {}: {error}", self.path.display()),
        }
    }

    /// Makes the last cursor stored durable.
    pub fn sync(&self) {
        if let Some(next_row) = self.unsynced.get() {
            self.write_synced(next_row);
        }
    }

    fn write_synced(&self, next_row: u64) {
        match crate::history::write_atomically(&self.path, &encode(next_row)) {
            Ok(()) => {
                self.last_sync.set(Some(Instant::now()));
                self.unsynced.set(None);
            }
            Err(error) => tracing::error!("{error:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_reopening_and_is_clamped_to_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let cursor = Cursor::open(dir.path(), "file", 100).unwrap();
        assert_eq!(cursor.next_row, 0);
        cursor.file.unwrap().store(42);
        assert_eq!(Cursor::open(dir.path(), "file", 100).unwrap().next_row, 42);
        assert_eq!(Cursor::open(dir.path(), "file", 10).unwrap().next_row, 10);
        std::fs::write(dir.path().join("file.cursor"), [1u8; 16]).unwrap();
        assert_eq!(Cursor::open(dir.path(), "file", 100).unwrap().next_row, 0);
        std::fs::write(dir.path().join("file.cursor"), [1u8; 3]).unwrap();
        assert_eq!(Cursor::open(dir.path(), "file", 100).unwrap().next_row, 0);
    }
}
