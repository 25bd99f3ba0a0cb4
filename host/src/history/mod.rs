//! The history of a run: one row per accepted sample, one column per series, a timestamp
//! per row. The host owns it; plugins read it through the `history` import and receive
//! new rows from their own cursor.
//!
//! - `store`: the writer, the one owner of the folder. Rows fill the tail (`tail`), are
//!   logged (`wal`) and synced once per commit for everything pending; every `CHUNK_ROWS`
//!   committed rows are sealed into an immutable, checksummed chunk file (`chunk`) read
//!   through a memory map. A restart finds every committed row.
//! - `query`: snapshots of the committed rows, published after every commit, and every
//!   read (batches, series, downsampling with block `summaries`). Readers never wait for
//!   the writer's I/O and the writer never waits for them.
//!
//! A history without a folder keeps its chunks in memory.

mod append;
mod chunk;
mod lock;
mod query;
mod sealer;
pub mod stats_file;
mod store;
mod summaries;
mod tail;
mod wal;

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

pub use chunk::CHUNK_ROWS;
pub use query::Snapshot;
pub use store::History;

/// What readers hold: a handle that gives the latest snapshot, from any thread.
#[derive(Clone)]
pub struct SharedHistory(Arc<store::Published>);

impl SharedHistory {
    /// The committed rows as of the last commit; cheap, and never waits for I/O.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.0.snapshot()
    }

    /// The folder of a durable history.
    pub fn dir(&self) -> Option<&Path> {
        self.0.dir()
    }
}

/// Which rows a read covers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Span {
    All,
    Rows {
        first: u64,
        count: u64,
    },
    /// Rows whose timestamp lies in `from_ms..=to_ms`.
    Time {
        from_ms: i64,
        to_ms: i64,
    },
}

/// Points of one series, column by column, in row order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Points {
    pub rows: Vec<u64>,
    pub timestamps_ms: Vec<i64>,
    pub values: Vec<f64>,
}

/// A batch of consecutive rows, column by column.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowBatch {
    pub first_row: u64,
    pub timestamps_ms: Vec<i64>,
    pub columns: Vec<Vec<f64>>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReadError {
    #[error("no series is named `{0}`")]
    UnknownSeries(String),
    #[error("row {row} is not in the history, which has {rows} rows")]
    OutOfRange { row: u64, rows: u64 },
}

/// Writes `path` whole or not at all: a temporary file beside it, synced, renamed into
/// place, and the folder synced. A failure removes the temporary file (a full disk gets
/// its space back).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().context("a file to write has a folder")?;
    let name = path.file_name().context("a file to write has a name")?.to_string_lossy();
    let temporary = dir.join(format!("{name}.partial"));
    let written = std::fs::File::create(&temporary)
        .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()))
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(error).with_context(|| format!("cannot write {}", path.display()));
    }
    chunk::sync_dir(dir)
}
