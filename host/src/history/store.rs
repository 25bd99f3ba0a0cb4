//! The writer's side of the history: the one owner of the folder (it holds the folder's
//! lock), which appends rows to the log and the tail, commits them with one write and one
//! sync, seals full chunks, and publishes a new snapshot after every commit. Readers only
//! ever see published snapshots (`query`), so nothing they do waits for the log, and the
//! writer never waits for them.
//!
//! A failed commit is rolled back whole: its rows leave the tail and the log is cut back
//! to the last commit, so they are never stored later behind the caller's back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result, bail, ensure};

use super::chunk::{self, Access, CHUNK_ROWS, Chunk};
use super::lock::FolderLock;
use super::query::{Schema, Snapshot};
use super::sealer::{self, Sealer};
use super::tail::TailWriter;
use super::wal::{self, LoggedRow, Recovered, Wal};

const SERIES_FILE: &str = "series.json";
/// Full tails waiting to be sealed before the writer waits for the sealer.
const MAX_SEALING_BACKLOG: usize = 4;

/// Where the writer publishes snapshots and readers take them.
pub struct Published {
    current: RwLock<Arc<Snapshot>>,
    dir: Option<PathBuf>,
}

impl Published {
    /// The latest snapshot. The lock is held for the copy of one pointer, never across
    /// I/O, so this does not wait for the writer.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn replace(&self, snapshot: Snapshot) {
        let previous = {
            let mut current = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            std::mem::replace(&mut *current, Arc::new(snapshot))
        };
        // Dropped outside the lock: the last reference may unmap a chunk.
        drop(previous);
    }
}

/// The folder of a durable history, its log and its lock.
struct Store {
    dir: PathBuf,
    wal: Wal,
    _lock: FolderLock,
    sealer: Sealer,
    /// The next chunk index to hand to the sealer.
    next_to_seal: usize,
    /// Chunks written, not yet served (they wait for the ones before them).
    sealed: BTreeMap<usize, Chunk>,
    /// The log still starts before the last sealed chunk's end: a new one is due.
    log_behind: bool,
    /// Sealing failed (and was logged): retried at every commit, logged again once it works.
    sealing_failed: bool,
}

/// The history as its writer holds it.
pub struct History {
    schema: Arc<Schema>,
    chunks: Arc<Vec<Arc<Chunk>>>,
    /// The rows after the sealed chunks, one writer per chunk's worth; all but the last
    /// are full (awaiting sealing). Never empty.
    tails: Vec<TailWriter>,
    committed: u64,
    last_timestamp_ms: i64,
    committed_last_timestamp_ms: i64,
    marks: Arc<BTreeMap<String, String>>,
    pending_marks: Vec<(String, String)>,
    store: Option<Store>,
    published: Arc<Published>,
}

impl History {
    /// A history kept in memory only (tests, `plugin test`, benchmarks).
    pub fn new(names: Vec<String>) -> History {
        History::empty(names, None)
    }

    fn empty(names: Vec<String>, dir: Option<PathBuf>) -> History {
        let schema = Arc::new(Schema::new(names));
        let series = schema.names.len();
        let snapshot = Snapshot { schema: schema.clone(), chunks: Arc::default(), tails: Vec::new(), committed: 0, marks: Arc::default() };
        History {
            schema,
            chunks: Arc::default(),
            tails: vec![TailWriter::new(0, series)],
            committed: 0,
            last_timestamp_ms: i64::MIN,
            committed_last_timestamp_ms: i64::MIN,
            marks: Arc::default(),
            pending_marks: Vec::new(),
            store: None,
            published: Arc::new(Published { current: RwLock::new(Arc::new(snapshot)), dir }),
        }
    }

    /// Opens (or creates) the durable history in `dir` and takes its lock for as long as
    /// the `History` lives: sealed chunks are mapped and verified, the log is replayed up
    /// to its last commit (a torn end after it is cut, and said). The folder must hold the
    /// same series.
    pub fn open(dir: &Path, names: Vec<String>) -> Result<History> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the history folder {}", dir.display()))?;
        let lock = FolderLock::acquire(dir)?;
        let existed = check_series(dir, &names)?;
        let mut history = History::empty(names, Some(dir.to_path_buf()));
        let series = history.schema.names.len();
        history.chunks = Arc::new(open_chunks(dir, series, Access::Writer)?);
        let sealed = history.sealed_rows();
        history.tails = vec![TailWriter::new(sealed, series)];
        history.last_timestamp_ms = last_sealed_timestamp(&history.chunks);
        let wal = match wal::recover(dir, series)? {
            Some(recovered) => {
                report_cut(dir, &recovered);
                let wal = Wal::reopen(dir, &recovered)?;
                history.replay(recovered, sealed)?;
                wal
            }
            None if existed => bail!(missing_log(dir, sealed)),
            None => Wal::create(dir, series, sealed, &BTreeMap::new(), &[])?,
        };
        if !existed {
            write_series(dir, &history.schema.names)?;
        }
        history.committed = history.total_rows();
        history.committed_last_timestamp_ms = history.last_timestamp_ms;
        let sealer = Sealer::spawn(dir.to_path_buf(), series)?;
        let next_to_seal = history.chunks.len();
        history.store = Some(Store {
            dir: dir.to_path_buf(),
            wal,
            _lock: lock,
            sealer,
            next_to_seal,
            sealed: BTreeMap::new(),
            log_behind: false,
            sealing_failed: false,
        });
        history.seal_full_tails();
        history.publish();
        Ok(history)
    }

    /// The committed rows of the history in `dir`, read beside a running writer without
    /// its lock: nothing is recovered, cut, rewritten or renamed.
    pub fn read_only(dir: &Path, names: Vec<String>) -> Result<Snapshot> {
        ensure!(dir.join(SERIES_FILE).is_file(), "{} is not a history folder (it has no {SERIES_FILE})", dir.display());
        check_series(dir, &names)?;
        // The writer may seal a chunk (and start a new log) while this reads: read again.
        for _ in 0..5 {
            let mut history = History::empty(names.clone(), Some(dir.to_path_buf()));
            let series = history.schema.names.len();
            history.chunks = Arc::new(open_chunks(dir, series, Access::ReadOnly)?);
            let sealed = history.sealed_rows();
            history.tails = vec![TailWriter::new(sealed, series)];
            history.last_timestamp_ms = last_sealed_timestamp(&history.chunks);
            let Some(recovered) = wal::recover(dir, series)? else { bail!(missing_log(dir, sealed)) };
            if recovered.first_row > sealed {
                continue;
            }
            history.replay(recovered, sealed)?;
            history.committed = history.total_rows();
            history.publish();
            return Ok((*history.snapshot()).clone());
        }
        bail!("{}: the history kept changing while it was read; try again", dir.display())
    }

    /// A handle for readers, to take snapshots from any thread.
    pub fn shared(&self) -> super::SharedHistory {
        super::SharedHistory(self.published.clone())
    }

    /// The latest published snapshot (the committed rows).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.published.snapshot()
    }

    /// The folder of a durable history.
    pub fn dir(&self) -> Option<&Path> {
        self.store.as_ref().map(|store| store.dir.as_path())
    }

    pub fn series_names(&self) -> &[String] {
        &self.schema.names
    }

    /// Committed rows.
    pub fn row_count(&self) -> u64 {
        self.committed
    }

    /// Appends one row, seen by readers from the next `commit`. Timestamps are made
    /// strictly increasing: time ranges map to row ranges by binary search, and no two rows
    /// share a time a panel would join on.
    pub fn push_row(&mut self, timestamp_ms: i64, values: &[f64]) -> Result<()> {
        ensure!(
            values.len() == self.schema.names.len(),
            "a row needs one value per series ({}), got {}",
            self.schema.names.len(),
            values.len()
        );
        // Strictly increasing (see `rows.timestamps-ms` in the WIT): Grafana joins series on time.
        let timestamp_ms = timestamp_ms.max(self.last_timestamp_ms.saturating_add(1));
        let row = self.total_rows();
        if let Some(store) = &mut self.store {
            store.wal.append_row(row, timestamp_ms, values);
        }
        if self.tails.last().is_none_or(TailWriter::is_full) {
            self.tails.push(TailWriter::new(row, self.schema.names.len()));
        }
        self.tails.last_mut().expect("a tail").push(timestamp_ms, values);
        self.last_timestamp_ms = timestamp_ms;
        Ok(())
    }

    /// Records where a source stands, stored atomically with the rows of the next commit.
    pub fn set_mark(&mut self, source: &str, position: &str) {
        if let Some(store) = &mut self.store {
            store.wal.append_mark(source, position);
        }
        self.pending_marks.push((source.to_string(), position.to_string()));
    }

    /// Rows and marks pushed since the last commit.
    pub fn has_pending(&self) -> bool {
        self.total_rows() > self.committed || !self.pending_marks.is_empty()
    }

    /// Makes every pushed row and mark durable (one write, one sync) and visible in a new
    /// snapshot, then seals full chunks. On failure nothing pushed since the last commit
    /// is kept: not in the log, not in the tail, not later.
    pub fn commit(&mut self) -> Result<()> {
        if !self.has_pending() {
            return Ok(());
        }
        let total = self.total_rows();
        if let Some(store) = &mut self.store
            && let Err(error) = store.wal.commit(total)
        {
            self.roll_back();
            return Err(error);
        }
        self.committed = total;
        self.committed_last_timestamp_ms = self.last_timestamp_ms;
        if !self.pending_marks.is_empty() {
            let mut marks = (*self.marks).clone();
            marks.extend(self.pending_marks.drain(..));
            self.marks = Arc::new(marks);
        }
        self.seal_full_tails();
        self.publish();
        Ok(())
    }

    /// Forgets everything pushed since the last commit.
    pub fn roll_back(&mut self) {
        if let Some(store) = &mut self.store {
            store.wal.discard_pending();
        }
        let committed = self.committed;
        self.tails.retain(|tail| tail.first_row < committed);
        match self.tails.last_mut() {
            Some(tail) => tail.truncate((committed - tail.first_row) as usize),
            None => self.tails.push(TailWriter::new(committed, self.schema.names.len())),
        }
        self.last_timestamp_ms = self.committed_last_timestamp_ms;
        self.pending_marks.clear();
    }

    fn sealed_rows(&self) -> u64 {
        (self.chunks.len() * CHUNK_ROWS) as u64
    }

    fn total_rows(&self) -> u64 {
        self.tails.last().map_or(self.sealed_rows(), |tail| tail.first_row + tail.len() as u64)
    }

    /// Appends the committed rows of a recovered log that are not sealed yet.
    fn replay(&mut self, recovered: Recovered, sealed: u64) -> Result<()> {
        let dir = self.published.dir().map(Path::to_path_buf).unwrap_or_default();
        ensure!(
            recovered.first_row <= sealed,
            "{}: the log starts at row {} but only {sealed} rows are sealed; a chunk file is missing",
            dir.display(),
            recovered.first_row
        );
        self.marks = Arc::new(recovered.marks);
        // Rows already sealed stay in the log when a crash came between sealing and
        // starting the next log.
        for row in recovered.rows.into_iter().filter(|row| row.row >= sealed) {
            self.push_row(row.timestamp_ms, &row.values)?;
        }
        Ok(())
    }

    fn publish(&mut self) {
        let snapshot = Snapshot {
            schema: self.schema.clone(),
            chunks: self.chunks.clone(),
            tails: self.tails.iter_mut().filter(|tail| tail.len() > 0).map(TailWriter::publish).collect(),
            committed: self.committed,
            marks: self.marks.clone(),
        };
        self.published.replace(snapshot);
    }

    /// Seals full tails into chunks. A durable history hands every full tail to the
    /// sealer thread and, as their chunk files are written, serves them from their maps and
    /// starts a new log holding the rows after them; until then the rows are served from
    /// the tails and kept in the log. The writer waits for the sealer only when it falls
    /// `MAX_SEALING_BACKLOG` chunks behind (memory stays bounded). A failure is logged once
    /// and retried at the next commit. A history in memory seals at once.
    fn seal_full_tails(&mut self) {
        if self.store.is_none() {
            while self.tails.first().is_some_and(TailWriter::is_full) {
                let chunk = sealer::encode(&self.tails[0].publish(), self.schema.names.len());
                self.swap_in(chunk);
            }
            return;
        }
        self.hand_over_full_tails();
        let behind = self.tails.iter().filter(|tail| tail.is_full()).count() > MAX_SEALING_BACKLOG;
        self.take_sealed(behind);
    }

    /// Waits until every full tail is sealed and served from its chunk.
    pub fn wait_for_sealing(&mut self) {
        self.hand_over_full_tails();
        while self.store.as_ref().is_some_and(|store| store.sealer.in_flight() > 0) {
            self.take_sealed(true);
            self.hand_over_full_tails();
        }
    }

    fn hand_over_full_tails(&mut self) {
        let sealed = self.chunks.len();
        let Some(store) = &mut self.store else { return };
        for (offset, tail) in self.tails.iter_mut().enumerate() {
            let index = sealed + offset;
            if tail.is_full() && index >= store.next_to_seal {
                store.sealer.submit(index, tail.publish());
                store.next_to_seal = index + 1;
            }
        }
    }

    /// Takes the chunks written (waiting for one when `wait`), serves those next in line
    /// from their maps, and starts a new log after them.
    fn take_sealed(&mut self, wait: bool) {
        let Some(store) = &mut self.store else { return };
        let mut wait = wait;
        while let Some((index, result)) = store.sealer.finished(wait) {
            wait = false;
            match result {
                Ok(chunk) => {
                    store.sealed.insert(index, chunk);
                }
                Err(error) => {
                    // Handed over again from this one on.
                    store.next_to_seal = store.next_to_seal.min(index);
                    if !std::mem::replace(&mut store.sealing_failed, true) {
                        tracing::error!("{error:#}; the rows stay in the log, sealing is retried at every commit");
                    }
                }
            }
        }
        let mut swapped = false;
        while let Some(chunk) = self.store.as_mut().and_then(|store| store.sealed.remove(&self.chunks.len())) {
            self.swap_in(chunk);
            swapped = true;
        }
        if swapped && let Some(store) = &mut self.store {
            store.log_behind = true;
        }
        self.restart_log();
    }

    /// Starts a new log after the sealed chunks (between commits only: what is pending was
    /// appended to the current one). Until it works the current log, which holds every row
    /// since its first, stays.
    fn restart_log(&mut self) {
        let pending = self.has_pending();
        let first_row = self.sealed_rows();
        let Some(store) = &mut self.store else { return };
        if pending || !store.log_behind {
            return;
        }
        let rest: Vec<LoggedRow> = self.tails.iter().flat_map(logged_rows).collect();
        match Wal::create(&store.dir, self.schema.names.len(), first_row, &self.marks, &rest) {
            Ok(wal) => {
                store.wal = wal;
                store.log_behind = false;
                if std::mem::take(&mut store.sealing_failed) {
                    tracing::info!("{}: sealing chunks works again", store.dir.display());
                }
            }
            Err(error) => {
                if !std::mem::replace(&mut store.sealing_failed, true) {
                    tracing::error!("{error:#}; the rows stay in the log, sealing is retried at every commit");
                }
            }
        }
    }

    /// Serves the first tail's rows from `chunk` from now on.
    fn swap_in(&mut self, chunk: Chunk) {
        let mut chunks = Vec::with_capacity(self.chunks.len() + 1);
        chunks.extend(self.chunks.iter().cloned());
        chunks.push(Arc::new(chunk));
        self.chunks = Arc::new(chunks);
        let sealed = self.tails.remove(0);
        if self.tails.is_empty() {
            self.tails.push(TailWriter::new(sealed.first_row + CHUNK_ROWS as u64, self.schema.names.len()));
        }
    }
}

/// A history closed with a chunk being sealed finishes it first, so the folder is left
/// with whole chunk files and the log after them.
impl Drop for History {
    fn drop(&mut self) {
        // What was never committed goes, as a crash would take it.
        self.roll_back();
        self.wait_for_sealing();
    }
}

/// The rows of a tail as the log holds them.
fn logged_rows(tail: &TailWriter) -> impl Iterator<Item = LoggedRow> + '_ {
    (0..tail.len()).map(move |local| LoggedRow {
        row: tail.first_row + local as u64,
        timestamp_ms: tail.timestamps()[local],
        values: (0..tail.series()).map(|series| tail.values(series)[local]).collect(),
    })
}

fn last_sealed_timestamp(chunks: &[Arc<Chunk>]) -> i64 {
    chunks.last().and_then(|chunk| chunk.timestamps().last().copied()).unwrap_or(i64::MIN)
}

/// The chunk files of `dir`, in order.
fn open_chunks(dir: &Path, series: usize, access: Access) -> Result<Vec<Arc<Chunk>>> {
    let mut chunks = Vec::new();
    while chunk::chunk_path(dir, chunks.len()).try_exists().unwrap_or(false) {
        let chunk = Chunk::open(&chunk::chunk_path(dir, chunks.len()), series, access)?;
        let expected = (chunks.len() * CHUNK_ROWS) as u64;
        ensure!(
            chunk.first_row == expected,
            "{}: starts at row {}, expected {expected}",
            chunk::chunk_path(dir, chunks.len()).display(),
            chunk.first_row
        );
        chunks.push(Arc::new(chunk));
    }
    Ok(chunks)
}

/// Checks the folder's series against `names`; false if the folder has none yet.
fn check_series(dir: &Path, names: &[String]) -> Result<bool> {
    let path = dir.join(SERIES_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let stored: Vec<String> =
                serde_json::from_str(&text).with_context(|| format!("{}: not a list of series names", path.display()))?;
            ensure!(
                stored == names,
                "the history in {} holds the series [{}] but the configuration produces [{}]: use the same transforms, \
                 or another history folder (runtime.history_dir) for a new run",
                dir.display(),
                stored.join(", "),
                names.join(", ")
            );
            Ok(true)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes `series.json` atomically (temporary file, sync, rename, directory sync); it is
/// written after the first log, so a folder with series always has a log.
fn write_series(dir: &Path, names: &[String]) -> Result<()> {
    let text = serde_json::to_string(names)?;
    super::write_atomically(&dir.join(SERIES_FILE), text.as_bytes())
}

fn missing_log(dir: &Path, sealed: u64) -> String {
    format!(
        "{}: the write-ahead log is missing, but {} says this folder holds a history ({sealed} rows in sealed chunks); the rows \
         after them were in the log. Restore {} from a backup; nothing was changed",
        dir.join(wal::WAL_FILE).display(),
        dir.join(SERIES_FILE).display(),
        wal::WAL_FILE
    )
}

/// Says what recovery found after the log's last commit; the writer cuts it.
fn report_cut(dir: &Path, recovered: &Recovered) {
    if let Some(cut) = &recovered.uncommitted {
        tracing::warn!(
            "{}: cut {} bytes after the last commit (at byte {}): {} rows and {} source positions written but never committed, \
             so never acknowledged; every acknowledged row is kept",
            dir.join(wal::WAL_FILE).display(),
            cut.bytes,
            recovered.committed_bytes,
            cut.rows,
            cut.marks
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Points, Span};

    fn spiky(row: usize) -> f64 {
        match row {
            40_001 => 1e9,
            70_123 => -1e9,
            _ if row % 1000 == 7 => f64::NAN,
            _ => (row % 13) as f64,
        }
    }

    /// Points as bits, so that NaN values compare equal.
    fn bits(points: &Points) -> (Vec<u64>, Vec<i64>, Vec<u64>) {
        (points.rows.clone(), points.timestamps_ms.clone(), points.values.iter().map(|value| value.to_bits()).collect())
    }

    fn fill(history: &mut History, rows: std::ops::Range<usize>) {
        for row in rows {
            history.push_row(row as i64 * 10, &[spiky(row), row as f64]).unwrap();
        }
    }

    #[test]
    fn reads_across_sealed_chunks_match_the_rows_pushed() {
        let dir = tempfile::tempdir().unwrap();
        let mut durable = History::open(dir.path(), vec!["x".into(), "row".into()]).unwrap();
        let mut in_memory = History::new(vec!["x".into(), "row".into()]);
        for history in [&mut durable, &mut in_memory] {
            fill(history, 0..100_000);
            history.commit().unwrap();
            history.wait_for_sealing();
            assert_eq!(history.chunks.len(), 100_000 / CHUNK_ROWS);
            let batch = history.snapshot().batch(CHUNK_ROWS as u64 - 3, 6);
            assert_eq!(batch.columns[1], (CHUNK_ROWS - 3..CHUNK_ROWS + 3).map(|row| row as f64).collect::<Vec<_>>());
            let points = history.snapshot().downsample("x", Span::All, 400).unwrap();
            assert!(points.rows.contains(&40_001) && points.rows.contains(&70_123));
            for ((row, ms), value) in points.rows.iter().zip(&points.timestamps_ms).zip(&points.values) {
                assert_eq!((*ms, value.to_bits()), (*row as i64 * 10, spiky(*row as usize).to_bits()), "row {row}");
            }
            assert_eq!(points.rows.last(), Some(&99_999));
            let (start, end) = history.snapshot().resolve(Span::Time { from_ms: 327_675, to_ms: 327_700 });
            assert_eq!((start, end), (32_768, 32_771));
        }
        assert_eq!(
            durable.snapshot().downsample("x", Span::All, 1000).unwrap().rows,
            in_memory.snapshot().downsample("x", Span::All, 1000).unwrap().rows
        );
    }

    #[test]
    fn rows_of_one_millisecond_get_strictly_increasing_timestamps_also_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut history = History::open(dir.path(), vec!["x".into()]).unwrap();
        // A burst: 400 rows accepted within the same millisecond, then one from the past.
        for _ in 0..400 {
            history.push_row(1_000, &[1.0]).unwrap();
        }
        history.push_row(900, &[1.0]).unwrap();
        history.commit().unwrap();
        let stamps = history.snapshot().read_timestamps(0, 401);
        assert_eq!(stamps, (1_000..1_401).collect::<Vec<_>>());
        drop(history);
        let mut reopened = History::open(dir.path(), vec!["x".into()]).unwrap();
        reopened.push_row(1_000, &[2.0]).unwrap();
        reopened.commit().unwrap();
        assert_eq!(reopened.snapshot().read_timestamps(401, 1), vec![1_401], "a resumed run goes on after its last row");
    }

    #[test]
    fn a_chunk_of_an_earlier_format_is_rewritten_and_reads_the_same() {
        // Earlier layouts: the same header and rows, then summaries of four words per
        // block (version 1), of six words (version 2), of ten words without a checksum
        // (version 3) and with one (version 4). Only the rows are read back.
        for (magic, words_per_block) in [(b"THCHUNK1", 4), (b"THCHUNK2", 6), (b"THCHUNK3", 10), (b"THCHUNK4", 10)] {
            let dir = tempfile::tempdir().unwrap();
            let names = vec!["x".to_string(), "row".to_string()];
            let mut history = History::open(dir.path(), names.clone()).unwrap();
            fill(&mut history, 0..40_000);
            history.commit().unwrap();
            let expected = history.snapshot().downsample("x", Span::All, 1000).unwrap();
            drop(history);
            let path = chunk::chunk_path(dir.path(), 0);
            let rows_bytes = (8 + CHUNK_ROWS * 3) * 8;
            // Their five levels of blocks of 8, 64, ... 32768 rows.
            let blocks_per_series: usize = (1..=5).map(|level| CHUNK_ROWS >> (3 * level)).sum();
            let mut old = std::fs::read(&path).unwrap()[..rows_bytes].to_vec();
            old[..8].copy_from_slice(magic);
            old.resize(rows_bytes + 2 * blocks_per_series * words_per_block * 8, 0);
            std::fs::write(&path, old).unwrap();
            let reopened = History::open(dir.path(), names).unwrap();
            assert_eq!(reopened.row_count(), 40_000);
            assert_eq!(bits(&reopened.snapshot().downsample("x", Span::All, 1000).unwrap()), bits(&expected));
            assert_eq!(&std::fs::read(&path).unwrap()[..8], b"THCHUNK5");
            // A truncated chunk of an earlier format is refused, by name, never half rewritten.
            drop(reopened);
            let mut torn = magic.to_vec();
            torn.resize(4096, 0);
            std::fs::write(&path, &torn).unwrap();
            let error = format!("{:#}", History::open(dir.path(), vec!["x".into(), "row".into()]).err().unwrap());
            assert!(error.contains("chunk-00000000.bin") && error.contains("too short"), "{error}");
            assert_eq!(std::fs::read(&path).unwrap(), torn);
        }
    }

    #[test]
    fn a_reopened_history_has_every_committed_row_and_its_marks() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["x".to_string(), "row".to_string()];
        {
            let mut history = History::open(dir.path(), names.clone()).unwrap();
            fill(&mut history, 0..40_000);
            history.set_mark("redis-stream:telemetry", "1700000000000-5");
            history.commit().unwrap();
            // Pushed but never committed: gone after a crash.
            fill(&mut history, 40_000..40_010);
        }
        let mut history = History::open(dir.path(), names.clone()).unwrap();
        assert_eq!(history.row_count(), 40_000);
        assert_eq!(history.snapshot().mark("redis-stream:telemetry"), Some("1700000000000-5"));
        assert_eq!(history.snapshot().read_series("row", 39_998, 10).unwrap(), vec![39_998.0, 39_999.0]);
        fill(&mut history, 40_000..40_001);
        history.commit().unwrap();
        let error = format!("{:#}", History::open(dir.path(), names.clone()).err().unwrap());
        assert!(error.contains("is in use by process") && error.contains(&std::process::id().to_string()), "{error}");
        // A reader beside the writer sees every committed row and changes nothing.
        let beside = History::read_only(dir.path(), names.clone()).unwrap();
        assert_eq!(beside.row_count(), 40_001);
        drop(history);
        assert_eq!(History::open(dir.path(), names).unwrap().snapshot().read_series("row", 40_000, 1).unwrap(), vec![40_000.0]);
    }

    #[test]
    fn a_torn_log_end_is_cut_back_to_the_last_commit() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["x".to_string(), "row".to_string()];
        {
            let mut history = History::open(dir.path(), names.clone()).unwrap();
            fill(&mut history, 0..10);
            history.commit().unwrap();
        }
        let log = dir.path().join(wal::WAL_FILE);
        let intact = std::fs::metadata(&log).unwrap().len();
        let mut bytes = std::fs::read(&log).unwrap();
        bytes.extend_from_slice(&[0x30, 0, 0, 0, 0xde, 0xad]);
        std::fs::write(&log, &bytes).unwrap();
        let history = History::open(dir.path(), names.clone()).unwrap();
        assert_eq!(history.row_count(), 10);
        assert_eq!(std::fs::metadata(&log).unwrap().len(), intact);
    }

    #[test]
    fn a_history_of_other_series_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        History::open(dir.path(), vec!["x".into()]).unwrap();
        let error = History::open(dir.path(), vec!["y".into()]).err().unwrap().to_string();
        assert!(error.contains("holds the series [x]") && error.contains("produces [y]"), "{error}");
    }

    fn names() -> Vec<String> {
        vec!["x".to_string(), "row".to_string()]
    }

    /// A durable history of `rows` rows in commits of 10, closed again.
    fn written(rows: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut history = History::open(dir.path(), names()).unwrap();
        for start in (0..rows).step_by(10) {
            fill(&mut history, start..(start + 10).min(rows));
            history.commit().unwrap();
        }
        dir
    }

    #[test]
    fn a_damaged_record_before_acknowledged_commits_is_an_error_naming_file_and_offset() {
        let dir = written(100);
        let log = dir.path().join(wal::WAL_FILE);
        let mut bytes = std::fs::read(&log).unwrap();
        let at = bytes.len() / 3;
        bytes[at] ^= 0x40;
        std::fs::write(&log, &bytes).unwrap();
        let error = format!("{:#}", History::open(dir.path(), names()).err().unwrap());
        assert!(error.contains("wal.log: damaged at byte") && error.contains("were acknowledged after the damage"), "{error}");
        assert_eq!(std::fs::read(&log).unwrap(), bytes, "nothing was cut");
        assert!(History::read_only(dir.path(), names()).is_err(), "a reader refuses it too");
    }

    #[test]
    fn a_flipped_byte_in_a_chunk_is_reported_by_name_never_served() {
        let dir = written(CHUNK_ROWS + 5);
        let path = chunk::chunk_path(dir.path(), 0);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8 * 8 + 8 * 1234] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        for error in [History::open(dir.path(), names()).err(), History::read_only(dir.path(), names()).err()] {
            let error = format!("{:#}", error.unwrap());
            assert!(error.contains("chunk-00000000.bin: damaged: its checksum"), "{error}");
        }
    }

    #[test]
    fn a_missing_log_is_an_error_not_a_shorter_history() {
        let dir = written(50);
        std::fs::remove_file(dir.path().join(wal::WAL_FILE)).unwrap();
        let error = format!("{:#}", History::open(dir.path(), names()).err().unwrap());
        assert!(error.contains("wal.log: the write-ahead log is missing"), "{error}");
        assert!(!dir.path().join(wal::WAL_FILE).exists(), "no new empty log was made");
    }

    #[test]
    fn a_torn_end_is_cut_and_said_but_a_reader_cuts_nothing() {
        let dir = written(20);
        let log = dir.path().join(wal::WAL_FILE);
        let intact = std::fs::read(&log).unwrap();
        let mut torn = intact.clone();
        // Half of a row record, as a crash in the middle of a write leaves it.
        torn.extend_from_slice(&intact[24..24 + 20]);
        std::fs::write(&log, &torn).unwrap();
        assert_eq!(History::read_only(dir.path(), names()).unwrap().row_count(), 20);
        assert_eq!(std::fs::read(&log).unwrap(), torn, "a reader changes nothing");
        let history = History::open(dir.path(), names()).unwrap();
        assert_eq!(history.row_count(), 20);
        assert_eq!(std::fs::read(&log).unwrap(), intact);
    }

    #[test]
    fn a_failed_commit_keeps_nothing_and_the_next_one_lands_after_the_last_commit() {
        let dir = written(10);
        let mut history = History::open(dir.path(), names()).unwrap();
        fill(&mut history, 10..15);
        history.set_mark("source", "lost");
        history.store.as_mut().unwrap().wal.fail_writes(true);
        assert!(history.commit().is_err());
        assert_eq!((history.row_count(), history.snapshot().row_count()), (10, 10));
        assert!(!history.has_pending(), "the failed rows are gone, not stored later");
        history.store.as_mut().unwrap().wal.fail_writes(false);
        fill(&mut history, 15..18);
        history.commit().unwrap();
        drop(history);
        let reopened = History::open(dir.path(), names()).unwrap().snapshot();
        let expected: Vec<f64> = (0..10).chain(15..18).map(|row| row as f64).collect();
        assert_eq!(reopened.read_series("row", 0, 100).unwrap(), expected);
        assert_eq!(reopened.mark("source"), None);
    }

    #[test]
    fn chunks_sealed_in_the_background_while_commits_go_on_keep_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut history = History::open(dir.path(), names()).unwrap();
        let rows = 3 * CHUNK_ROWS + 123;
        for start in (0..rows).step_by(1000) {
            fill(&mut history, start..(start + 1000).min(rows));
            history.commit().unwrap();
            // Readers see every committed row whether or not its chunk is sealed yet.
            let snapshot = history.snapshot();
            let last = snapshot.row_count() - 1;
            assert_eq!(snapshot.read_series("row", last, 1).unwrap(), vec![last as f64]);
        }
        fill(&mut history, rows..rows + 7);
        drop(history);
        let reopened = History::open(dir.path(), names()).unwrap();
        assert_eq!(reopened.row_count(), rows as u64, "the uncommitted rows are gone, every committed one is there");
        let values = reopened.snapshot().read_series("row", 0, u64::MAX).unwrap();
        assert!(values.iter().enumerate().all(|(row, value)| *value == row as f64));
        assert!(chunk::chunk_path(dir.path(), 2).exists());
    }
}
