//! A plugin's cursor (the next row it will receive), kept in the history folder so that
//! a restarted host resumes each plugin exactly where it stopped. It is rewritten in
//! place after every delivered batch: 8 bytes of row and 8 bytes of its complement, so a
//! torn write is recognised. A crash of the process keeps the last write (the page cache
//! survives it); it is synced to disk at stop.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

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
    file: File,
    path: PathBuf,
}

impl Cursor {
    /// The cursor of `plugin` kept in `dir` (0 for a plugin new to this history), at most
    /// `rows`.
    pub fn open(dir: &Path, plugin: &str, rows: u64) -> Result<Cursor> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("{plugin}.cursor"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut bytes = [0u8; 16];
        let next_row = match file.read_exact_at(&mut bytes, 0) {
            Ok(()) => {
                let row = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
                let check = u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes"));
                if check != !row {
                    tracing::warn!(plugin, "{} is damaged: the plugin starts from row 0", path.display());
                    0
                } else {
                    row
                }
            }
            Err(_) => 0,
        };
        if next_row > rows {
            tracing::warn!(plugin, "{} says row {next_row}, but the history has {rows} rows", path.display());
        }
        Ok(Cursor { next_row: next_row.min(rows), file: Some(CursorFile { file, path }) })
    }
}

impl CursorFile {
    pub fn store(&self, next_row: u64) {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&next_row.to_le_bytes());
        bytes[8..].copy_from_slice(&(!next_row).to_le_bytes());
        if let Err(error) = self.file.write_all_at(&bytes, 0) {
            tracing::error!("cannot write {}: {error}", self.path.display());
        }
    }

    pub fn sync(&self) {
        if let Err(error) = self.file.sync_data() {
            tracing::error!("cannot sync {}: {error}", self.path.display());
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
    }
}
