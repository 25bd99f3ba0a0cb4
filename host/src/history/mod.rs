//! The history of a run: one row per accepted sample, one column per series, a timestamp
//! per row. The host owns it; plugins read it through the `history` import and receive
//! new rows from their own cursor.
//!
//! Rows fill an in-memory tail; committed rows are logged (`wal`) and synced before
//! anyone is told they are stored; every `CHUNK_ROWS` committed rows are sealed into an
//! immutable chunk file (`chunk`) read through a memory map. So memory holds at most
//! one chunk's rows plus what a commit adds, at any history length, and a restart finds
//! every committed row. A history without a folder keeps its chunks in memory.

mod chunk;
pub mod stats_file;
mod summaries;
mod wal;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result, ensure};

pub use chunk::CHUNK_ROWS;
use chunk::{Chunk, ChunkData};
use summaries::{BLOCK_ROWS, Block, MinMax, Summaries};
use wal::{LoggedRow, Wal};

/// The history shared between ingest (the only writer) and the plugins (readers).
pub type SharedHistory = Arc<RwLock<History>>;

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

/// The rows not yet sealed, column by column.
struct Tail {
    first_row: u64,
    timestamps_ms: Vec<i64>,
    columns: Vec<TailColumn>,
}

#[derive(Default, Clone)]
struct TailColumn {
    values: Vec<f64>,
    summaries: Summaries,
}

impl Tail {
    fn new(first_row: u64, series: usize) -> Tail {
        Tail { first_row, timestamps_ms: Vec::new(), columns: vec![TailColumn::default(); series] }
    }

    fn push(&mut self, timestamp_ms: i64, values: &[f64]) {
        self.timestamps_ms.push(timestamp_ms);
        for (column, value) in self.columns.iter_mut().zip(values) {
            column.values.push(*value);
            // Blocks never straddle chunks: the summaries of rows past the first chunk's
            // end are rebuilt when that chunk is sealed.
            if column.values.len() <= CHUNK_ROWS {
                column.summaries.on_push(&column.values, &self.timestamps_ms, self.first_row);
            }
        }
    }

    fn logged_row(&self, local: usize) -> LoggedRow {
        LoggedRow {
            row: self.first_row + local as u64,
            timestamp_ms: self.timestamps_ms[local],
            values: self.columns.iter().map(|column| column.values[local]).collect(),
        }
    }

    /// Removes the first `CHUNK_ROWS` rows (just sealed).
    fn drop_first_chunk(&mut self) {
        let mut rest = Tail::new(self.first_row + CHUNK_ROWS as u64, self.columns.len());
        for local in CHUNK_ROWS..self.timestamps_ms.len() {
            let row = self.logged_row(local);
            rest.push(row.timestamp_ms, &row.values);
        }
        *self = rest;
    }
}

/// One stretch of rows: a sealed chunk or the tail.
#[derive(Clone, Copy)]
enum Segment<'a> {
    Chunk(&'a Chunk),
    Tail(&'a Tail),
}

impl<'a> Segment<'a> {
    fn first_row(&self) -> u64 {
        match self {
            Segment::Chunk(chunk) => chunk.first_row,
            Segment::Tail(tail) => tail.first_row,
        }
    }

    fn timestamps(&self) -> &'a [i64] {
        match self {
            Segment::Chunk(chunk) => chunk.timestamps(),
            Segment::Tail(tail) => &tail.timestamps_ms,
        }
    }

    fn values(&self, series: usize) -> &'a [f64] {
        match self {
            Segment::Chunk(chunk) => chunk.values(series),
            Segment::Tail(tail) => &tail.columns[series].values,
        }
    }

    /// The block summaries of one series, finest first.
    fn levels(&self, series: usize) -> [&'a [Block]; chunk::LEVELS] {
        match self {
            Segment::Chunk(chunk) => chunk.levels(series),
            Segment::Tail(tail) => {
                // At most `LEVELS` levels: blocks never straddle chunks.
                let mut levels: [&[Block]; chunk::LEVELS] = [&[]; chunk::LEVELS];
                for (slot, level) in levels.iter_mut().zip(tail.columns[series].summaries.levels()) {
                    *slot = level;
                }
                levels
            }
        }
    }
}

/// One series of one segment with everything a read needs resolved once, so that a read
/// walking forward through the history (downsampling) looks each segment up once rather
/// than once per bucket or point.
struct SeriesView<'a> {
    /// History rows `first_row..end_row` are in this segment.
    first_row: usize,
    end_row: usize,
    timestamps: &'a [i64],
    values: &'a [f64],
    levels: [&'a [Block]; chunk::LEVELS],
}

impl<'a> SeriesView<'a> {
    const EMPTY: SeriesView<'static> = SeriesView { first_row: 0, end_row: 0, timestamps: &[], values: &[], levels: [&[]; chunk::LEVELS] };

    fn of(segment: Segment<'a>, series: usize) -> SeriesView<'a> {
        let first_row = segment.first_row() as usize;
        let timestamps = segment.timestamps();
        SeriesView {
            first_row,
            end_row: first_row + timestamps.len(),
            timestamps,
            values: segment.values(series),
            levels: segment.levels(series),
        }
    }

    fn holds(&self, row: usize) -> bool {
        (self.first_row..self.end_row).contains(&row)
    }
}

/// Reads of one series at rows that only move forward.
struct SeriesReader<'a> {
    history: &'a History,
    series: usize,
    view: SeriesView<'a>,
}

impl<'a> SeriesReader<'a> {
    fn new(history: &'a History, series: usize) -> SeriesReader<'a> {
        SeriesReader { history, series, view: SeriesView::EMPTY }
    }

    #[inline]
    fn view_of(&mut self, row: usize) -> &SeriesView<'a> {
        if !self.view.holds(row) {
            self.move_to(row);
        }
        &self.view
    }

    /// Out of line: a read changes segment once per chunk, and calls `view_of` per bucket.
    #[cold]
    #[inline(never)]
    fn move_to(&mut self, row: usize) {
        self.view = SeriesView::of(self.history.locate(row).0, self.series);
    }

    fn value(&mut self, row: usize) -> f64 {
        let view = self.view_of(row);
        view.values[row - view.first_row]
    }

    /// The point at `row`.
    fn point(&mut self, row: usize) -> (i64, f64) {
        let view = self.view_of(row);
        (view.timestamps[row - view.first_row], view.values[row - view.first_row])
    }

    /// The complete summary of `level` whose block starts at `row`, if any.
    fn block(&mut self, level: usize, row: usize) -> Option<&'a Block> {
        let view = self.view_of(row);
        summaries::block_at(&view.levels, level, row - view.first_row)
    }

    /// The summary of rows `first..stop`, from their values (narrow buckets, the ends of
    /// a range) or their values and blocks.
    fn summary(&mut self, first: usize, stop: usize) -> Block {
        let view = self.view_of(first);
        if stop <= view.end_row && stop - first <= summaries::BLOCK_ROWS {
            let rows = first - view.first_row..stop - view.first_row;
            return Block::of_rows(&view.values[rows.clone()], &view.timestamps[rows], first as u64);
        }
        // In row order, so that the reader's segment only moves forward.
        let (first_ms, first_value) = self.point(first);
        let extremes = self.extremes(first, stop);
        let (last_ms, last_value) = self.point(stop - 1);
        Block { extremes, first_ms, first: first_value, last_ms, last: last_value }
    }

    /// The extremes of rows `start..end`.
    fn extremes(&mut self, start: usize, end: usize) -> MinMax {
        let mut result = MinMax::EMPTY;
        let mut row = start;
        while row < end {
            let view = self.view_of(row);
            let stop = end.min(view.end_row);
            let base = view.first_row;
            result.merge(&summaries::range(&view.levels, view.values, view.timestamps, base as u64, row - base, stop - base));
            row = stop;
        }
        result
    }
}

/// The folder of a durable history and its open log.
struct Store {
    dir: PathBuf,
    wal: Wal,
}

const SERIES_FILE: &str = "series.json";

/// Columns of f64 values with per-row timestamps and the block summaries that make
/// downsampled reads cost the same at any length.
pub struct History {
    names: Vec<String>,
    by_name: HashMap<String, usize>,
    chunks: Vec<Chunk>,
    tail: Tail,
    /// Rows readers see: the committed ones.
    committed: u64,
    last_timestamp_ms: i64,
    /// Source positions stored with the rows (e.g. the last Redis stream entry).
    marks: BTreeMap<String, String>,
    store: Option<Store>,
}

impl History {
    /// A history kept in memory only (tests, `plugin test`, benchmarks).
    pub fn new(names: Vec<String>) -> History {
        let by_name = names.iter().enumerate().map(|(index, name)| (name.clone(), index)).collect();
        let tail = Tail::new(0, names.len());
        History { names, by_name, chunks: Vec::new(), tail, committed: 0, last_timestamp_ms: i64::MIN, marks: BTreeMap::new(), store: None }
    }

    /// Opens (or creates) the durable history in `dir`: sealed chunks are mapped, the log
    /// is replayed up to its last commit. The folder must hold the same series.
    pub fn open(dir: &Path, names: Vec<String>) -> Result<History> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the history folder {}", dir.display()))?;
        let series_path = dir.join(SERIES_FILE);
        match std::fs::read_to_string(&series_path) {
            Ok(text) => {
                let stored: Vec<String> =
                    serde_json::from_str(&text).with_context(|| format!("{}: not a list of series names", series_path.display()))?;
                ensure!(
                    stored == names,
                    "the history in {} holds the series [{}] but the configuration produces [{}]: use the same transforms, \
                     or another history folder (runtime.history_dir) for a new run",
                    dir.display(),
                    stored.join(", "),
                    names.join(", ")
                );
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let temporary = dir.join(format!("{SERIES_FILE}.partial"));
                std::fs::write(&temporary, serde_json::to_string(&names)?)
                    .and_then(|()| std::fs::rename(&temporary, &series_path))
                    .with_context(|| format!("cannot write {}", series_path.display()))?;
                chunk::sync_dir(dir)?;
            }
            Err(error) => return Err(error).with_context(|| format!("cannot read {}", series_path.display())),
        }
        let mut history = History::new(names);
        let series = history.names.len();
        while let Ok(true) = chunk::chunk_path(dir, history.chunks.len()).try_exists() {
            let chunk = Chunk::open(&chunk::chunk_path(dir, history.chunks.len()), series)?;
            ensure!(
                chunk.first_row == (history.chunks.len() * CHUNK_ROWS) as u64,
                "{}: starts at row {}, expected {}",
                Chunk::file_name(history.chunks.len()),
                chunk.first_row,
                history.chunks.len() * CHUNK_ROWS
            );
            history.chunks.push(chunk);
        }
        let sealed = (history.chunks.len() * CHUNK_ROWS) as u64;
        history.tail = Tail::new(sealed, series);
        history.last_timestamp_ms = history.chunks.last().and_then(|chunk| chunk.timestamps().last().copied()).unwrap_or(i64::MIN);
        let wal = match wal::recover(dir, series)? {
            Some((first_row, recovered)) => {
                ensure!(
                    first_row <= sealed,
                    "{}: the log starts at row {first_row} but only {sealed} rows are sealed; a chunk file is missing",
                    dir.display()
                );
                if recovered.discarded_bytes > 0 {
                    tracing::warn!(
                        "{}: {} bytes after the last commit were cut off (never acknowledged)",
                        dir.join(wal::WAL_FILE).display(),
                        recovered.discarded_bytes
                    );
                }
                history.marks = recovered.marks;
                // Rows already sealed stay in the log when a crash came between sealing and
                // starting the next log.
                for row in recovered.rows.into_iter().filter(|row| row.row >= sealed) {
                    history.append(row.timestamp_ms, &row.values);
                }
                Wal::reopen(dir)?
            }
            None => Wal::create(dir, series, sealed, &BTreeMap::new(), &[])?,
        };
        history.committed = history.total_rows();
        history.store = Some(Store { dir: dir.to_path_buf(), wal });
        if history.tail.timestamps_ms.len() >= CHUNK_ROWS {
            history.seal_full_chunks()?;
        }
        Ok(history)
    }

    pub fn shared(self) -> SharedHistory {
        Arc::new(RwLock::new(self))
    }

    /// The folder of a durable history.
    pub fn dir(&self) -> Option<&Path> {
        self.store.as_ref().map(|store| store.dir.as_path())
    }

    pub fn series_names(&self) -> &[String] {
        &self.names
    }

    pub fn series_index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Committed rows: the ones readers see.
    pub fn row_count(&self) -> u64 {
        self.committed
    }

    /// The position last stored for `source`, as of the last commit.
    pub fn mark(&self, source: &str) -> Option<&str> {
        self.marks.get(source).map(String::as_str)
    }

    /// Appends one row, seen by readers from the next `commit`. Timestamps are made
    /// non-decreasing so that time ranges map to row ranges by binary search.
    pub fn push_row(&mut self, timestamp_ms: i64, values: &[f64]) -> Result<()> {
        ensure!(values.len() == self.names.len(), "a row needs one value per series ({}), got {}", self.names.len(), values.len());
        let timestamp_ms = timestamp_ms.max(self.last_timestamp_ms);
        if let Some(store) = &mut self.store {
            store.wal.append_row(self.tail.first_row + self.tail.timestamps_ms.len() as u64, timestamp_ms, values)?;
        }
        self.append(timestamp_ms, values);
        Ok(())
    }

    /// Records where a source stands, stored atomically with the rows of the next commit.
    pub fn set_mark(&mut self, source: &str, position: &str) -> Result<()> {
        if let Some(store) = &mut self.store {
            store.wal.append_mark(source, position)?;
        }
        self.marks.insert(source.to_string(), position.to_string());
        Ok(())
    }

    /// Makes every pushed row durable and visible, then seals full chunks.
    pub fn commit(&mut self) -> Result<()> {
        let total = self.total_rows();
        if let Some(store) = &mut self.store {
            store.wal.commit(total)?;
        }
        self.committed = total;
        self.seal_full_chunks()
    }

    fn append(&mut self, timestamp_ms: i64, values: &[f64]) {
        self.last_timestamp_ms = timestamp_ms;
        self.tail.push(timestamp_ms, values);
    }

    fn total_rows(&self) -> u64 {
        self.tail.first_row + self.tail.timestamps_ms.len() as u64
    }

    fn seal_full_chunks(&mut self) -> Result<()> {
        while self.tail.timestamps_ms.len() >= CHUNK_ROWS {
            let index = self.chunks.len();
            let chunk = Chunk::encode(&ChunkData {
                first_row: self.tail.first_row,
                timestamps_ms: &self.tail.timestamps_ms[..CHUNK_ROWS],
                columns: self
                    .tail
                    .columns
                    .iter()
                    .map(|column| (&column.values[..CHUNK_ROWS], column.summaries.levels().collect()))
                    .collect(),
            });
            let chunk = match &mut self.store {
                Some(store) => {
                    let chunk = chunk.persist(&store.dir, &Chunk::file_name(index))?;
                    let rest: Vec<LoggedRow> =
                        (CHUNK_ROWS..self.tail.timestamps_ms.len()).map(|local| self.tail.logged_row(local)).collect();
                    store.wal = Wal::create(&store.dir, self.names.len(), self.tail.first_row + CHUNK_ROWS as u64, &self.marks, &rest)?;
                    chunk
                }
                None => chunk,
            };
            self.chunks.push(chunk);
            self.tail.drop_first_chunk();
        }
        Ok(())
    }

    /// Rows `first..first + max_rows`, clipped to the history.
    pub fn batch(&self, first: u64, max_rows: u64) -> RowBatch {
        let (start, end) = self.clip(first, max_rows);
        let mut batch = RowBatch {
            first_row: start as u64,
            timestamps_ms: Vec::with_capacity(end - start),
            columns: vec![Vec::with_capacity(end - start); self.names.len()],
        };
        for (segment, first, end) in self.segments(start, end) {
            batch.timestamps_ms.extend_from_slice(&segment.timestamps()[first..end]);
            for (series, column) in batch.columns.iter_mut().enumerate() {
                column.extend_from_slice(&segment.values(series)[first..end]);
            }
        }
        batch
    }

    pub fn read_series(&self, name: &str, first: u64, count: u64) -> Result<Vec<f64>, ReadError> {
        let series = self.index_of(name)?;
        let (start, end) = self.clip(first, count);
        let mut values = Vec::with_capacity(end - start);
        for (segment, first, end) in self.segments(start, end) {
            values.extend_from_slice(&segment.values(series)[first..end]);
        }
        Ok(values)
    }

    /// The values of `name` at `rows`, in their order (forward order reads fastest).
    pub fn values_at(&self, name: &str, rows: &[u64]) -> Result<Vec<f64>, ReadError> {
        let series = self.index_of(name)?;
        if let Some(row) = rows.iter().find(|row| **row >= self.committed) {
            return Err(ReadError::OutOfRange { row: *row, rows: self.committed });
        }
        let mut reader = SeriesReader::new(self, series);
        Ok(rows.iter().map(|row| reader.value(*row as usize)).collect())
    }

    pub fn read_timestamps(&self, first: u64, count: u64) -> Vec<i64> {
        let (start, end) = self.clip(first, count);
        let mut timestamps = Vec::with_capacity(end - start);
        for (segment, first, end) in self.segments(start, end) {
            timestamps.extend_from_slice(&segment.timestamps()[first..end]);
        }
        timestamps
    }

    /// The row range `start..end` that a span covers.
    pub fn resolve(&self, span: Span) -> (usize, usize) {
        match span {
            Span::All => (0, self.committed as usize),
            Span::Rows { first, count } => self.clip(first, count),
            Span::Time { from_ms, to_ms } => {
                let start = self.partition_point(|t| t < from_ms);
                let end = self.partition_point(|t| t <= to_ms);
                (start, end.max(start))
            }
        }
    }

    /// At most `max_points` points of `name` over `span`: the rows are cut into buckets of
    /// equal width (`Buckets`) and each bucket contributes its first, minimum, maximum and
    /// last point (fewer where they coincide). First and last are kept even when NaN, so
    /// gaps stay visible; minimum and maximum ignore NaN.
    pub fn downsample(&self, name: &str, span: Span, max_points: u32) -> Result<Points, ReadError> {
        let series = self.index_of(name)?;
        let (start, end) = self.resolve(span);
        let max_points = (max_points as usize).max(1);
        let capacity = max_points.min(end - start);
        let mut points = Points {
            rows: Vec::with_capacity(capacity),
            timestamps_ms: Vec::with_capacity(capacity),
            values: Vec::with_capacity(capacity),
        };
        if end - start <= max_points {
            for (segment, first, end) in self.segments(start, end) {
                let base = segment.first_row();
                points.rows.extend((first..end).map(|local| base + local as u64));
                points.timestamps_ms.extend_from_slice(&segment.timestamps()[first..end]);
                points.values.extend_from_slice(&segment.values(series)[first..end]);
            }
            return Ok(points);
        }
        let mut reader = SeriesReader::new(self, series);
        if max_points < 4 {
            // Too few points for a bucket's four: evenly spaced rows, first and last kept.
            let span = end - start - 1;
            for index in 0..max_points {
                let row = start + if max_points == 1 { 0 } else { index * span / (max_points - 1) };
                points.push(row, reader.point(row));
            }
            return Ok(points);
        }
        let buckets = Buckets::over(start, end, max_points / 4);
        for (first, stop) in buckets.iter() {
            // A whole bucket of summarised blocks is answered from their summaries alone.
            let summarised = buckets.blocks.filter(|_| stop - first == buckets.width).and_then(|(level, per_bucket)| {
                let mut merged = *reader.block(level, first)?;
                for index in 1..per_bucket {
                    merged.merge(reader.block(level, first + index * (BLOCK_ROWS << level))?);
                }
                Some(merged)
            });
            let block = summarised.unwrap_or_else(|| reader.summary(first, stop));
            points.push_bucket(first, stop - 1, &block);
        }
        Ok(points)
    }

    /// The largest non-NaN committed value of a series, if any.
    pub fn maximum(&self, name: &str) -> Option<f64> {
        let extremes = SeriesReader::new(self, self.series_index(name)?).extremes(0, self.committed as usize);
        (!extremes.is_empty()).then_some(extremes.max)
    }

    /// The segment holding `row` and the row's index in it.
    fn locate(&self, row: usize) -> (Segment<'_>, usize) {
        match self.chunks.get(row / CHUNK_ROWS) {
            Some(chunk) => (Segment::Chunk(chunk), row % CHUNK_ROWS),
            None => (Segment::Tail(&self.tail), row - self.tail.first_row as usize),
        }
    }

    /// The segments covering rows `start..end`, each with the local range it holds.
    fn segments(&self, start: usize, end: usize) -> impl Iterator<Item = (Segment<'_>, usize, usize)> {
        let mut row = start;
        std::iter::from_fn(move || {
            if row >= end {
                return None;
            }
            let (segment, local) = self.locate(row);
            let count = (segment.timestamps().len() - local).min(end - row);
            row += count;
            Some((segment, local, local + count))
        })
    }

    fn timestamp(&self, row: usize) -> i64 {
        let (segment, local) = self.locate(row);
        segment.timestamps()[local]
    }

    /// The first committed row whose timestamp does not satisfy `before` (timestamps are
    /// sorted).
    fn partition_point(&self, before: impl Fn(i64) -> bool) -> usize {
        let (mut low, mut high) = (0, self.committed as usize);
        while low < high {
            let middle = low + (high - low) / 2;
            if before(self.timestamp(middle)) {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        low
    }

    fn index_of(&self, name: &str) -> Result<usize, ReadError> {
        self.series_index(name).ok_or_else(|| ReadError::UnknownSeries(name.to_string()))
    }

    fn clip(&self, first: u64, count: u64) -> (usize, usize) {
        let len = self.committed;
        let start = first.min(len);
        let end = first.saturating_add(count).min(len);
        (start as usize, end as usize)
    }
}

/// How a downsampled read cuts rows `start..end` into at most `count` buckets: all of
/// `width` rows, on multiples of `width` (so the first and last may be cut short by the
/// range). The width is one, two or three summarised blocks of one level (`blocks`: the
/// level and blocks per bucket), the narrowest such width that keeps to `count`: a whole
/// bucket is then read from at most three summaries, in row order, at any history length,
/// and the buckets number at least two thirds of `count`. Where blocks are too wide for
/// that (fewer than about `count * BLOCK_ROWS` rows), buckets are cut evenly from `start`
/// and read row by row.
struct Buckets {
    start: usize,
    end: usize,
    width: usize,
    blocks: Option<(usize, usize)>,
}

impl Buckets {
    fn over(start: usize, end: usize, count: usize) -> Buckets {
        let rows = end - start;
        let even = Buckets { start, end, width: rows.div_ceil(count.max(1)), blocks: None };
        if count < 2 {
            return even;
        }
        // Buckets on multiples of their width can cut one more bucket at the range's ends.
        let aligned_width = rows.div_ceil(count - 1);
        let mut best: Option<(usize, usize, usize)> = None;
        for level in (0..chunk::LEVELS).rev() {
            let size = BLOCK_ROWS << level;
            let per_bucket = aligned_width.div_ceil(size);
            // Past three blocks a coarser level has as narrow a width in fewer blocks; the
            // top level (a chunk's block) takes as many as the width needs.
            if per_bucket > 3 && level + 1 < chunk::LEVELS {
                continue;
            }
            let width = per_bucket * size;
            if best.is_none_or(|(narrowest, ..)| width < narrowest) {
                best = Some((width, level, per_bucket));
            }
        }
        match best {
            Some((width, level, per_bucket)) if width * 2 <= aligned_width * 3 => {
                Buckets { start, end, width, blocks: Some((level, per_bucket)) }
            }
            _ => even,
        }
    }

    /// The buckets as row ranges `first..stop`, in order.
    fn iter(&self) -> impl Iterator<Item = (usize, usize)> + use<> {
        let (end, width, aligned) = (self.end, self.width, self.blocks.is_some());
        let mut first = self.start;
        std::iter::from_fn(move || {
            (first < end).then(|| {
                let stop = if aligned { (first / width + 1) * width } else { first + width }.min(end);
                let bucket = (first, stop);
                first = stop;
                bucket
            })
        })
    }
}

impl Points {
    fn push(&mut self, row: usize, (timestamp_ms, value): (i64, f64)) {
        self.rows.push(row as u64);
        self.timestamps_ms.push(timestamp_ms);
        self.values.push(value);
    }

    /// Appends the first, minimum, maximum and last points of the bucket of rows
    /// `first..=last` summarised by `block`, in row order, each row once.
    fn push_bucket(&mut self, first: usize, last: usize, block: &Block) {
        let extremes = &block.extremes;
        let (first_point, last_point) = ((first, (block.first_ms, block.first)), (last, (block.last_ms, block.last)));
        let mut kept = [first_point, first_point, first_point, last_point];
        if !extremes.is_empty() {
            let low = (extremes.min_row as usize, (extremes.min_ms, extremes.min));
            let high = (extremes.max_row as usize, (extremes.max_ms, extremes.max));
            (kept[1], kept[2]) = if low.0 <= high.0 { (low, high) } else { (high, low) };
        }
        let mut previous = usize::MAX;
        for (row, point) in kept {
            if row != previous {
                self.push(row, point);
                previous = row;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history_of(values: &[f64]) -> History {
        let mut history = History::new(vec!["x".into()]);
        for (row, value) in values.iter().enumerate() {
            history.push_row(1000 + row as i64, &[*value]).unwrap();
        }
        history.commit().unwrap();
        history
    }

    #[test]
    fn downsampling_keeps_spikes_first_last_and_gaps() {
        let mut values: Vec<f64> = (0..10_000).map(|row| (row % 10) as f64).collect();
        values[4321] = 1e6;
        values[8765] = -1e6;
        values[0] = f64::NAN;
        let history = history_of(&values);
        let points = history.downsample("x", Span::All, 100).unwrap();
        assert!(points.values.len() <= 100);
        assert_eq!(points.rows.first(), Some(&0));
        assert!(points.values[0].is_nan());
        assert_eq!(points.rows.last(), Some(&9999));
        assert!(points.rows.contains(&4321) && points.rows.contains(&8765));
        assert!(points.rows.windows(2).all(|pair| pair[0] < pair[1]));
        for max_points in 1..8 {
            let points = history.downsample("x", Span::All, max_points).unwrap();
            assert!(points.values.len() <= max_points as usize, "{max_points}");
            assert_eq!(points.rows.first(), Some(&0));
        }
    }

    #[test]
    fn buckets_have_equal_widths_and_keep_to_their_count() {
        let cases = [
            (0, 1_000_000, 250, 4096, Some((8, 1))),
            (0, 100_000, 250, 512, Some((5, 1))),
            (12_345, 162_346, 250, 768, Some((4, 3))),
            (0, 16_000, 250, 96, Some((1, 3))),
            (100, 9_100, 250, 48, Some((0, 3))),
            (0, 10_000_000, 250, 49_152, Some((10, 3))),
            (0, 100_000_000, 250, 425_984, Some((11, 13))),
            (5, 100_004, 9, 16_384, Some((10, 1))),
            // Blocks too wide for the count: even buckets, read row by row.
            (0, 4_000, 250, 16, None),
            (3, 70_003, 1, 70_000, None),
            (0, 10, 2, 5, None),
        ];
        for (start, end, count, width, blocks) in cases {
            let buckets = Buckets::over(start, end, count);
            assert_eq!((buckets.width, buckets.blocks), (width, blocks), "{start}..{end} in {count}");
            let cut: Vec<(usize, usize)> = buckets.iter().collect();
            assert!(cut.len() <= count && cut.len() * 3 >= (count - 1) * 2, "{} buckets for {count}", cut.len());
            assert_eq!((cut[0].0, cut[cut.len() - 1].1), (start, end));
            assert!(cut.windows(2).all(|pair| pair[0].1 == pair[1].0));
            // Every bucket but the first and last is whole; aligned ones start on a multiple.
            for (first, stop) in cut.iter().skip(1).take(cut.len().saturating_sub(2)) {
                assert_eq!(stop - first, width);
                assert!(blocks.is_none() || first % width == 0);
            }
        }
    }

    #[test]
    fn every_bucket_keeps_its_edges_minimum_and_maximum() {
        let mut state = 7u64;
        let values: Vec<f64> = (0..200_000)
            .map(|row| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                if row % 777 == 3 { f64::NAN } else { (state >> 33) as f64 }
            })
            .collect();
        let history = history_of(&values);
        for (first, count, max_points) in [(0, 200_000, 1000), (12_345, 150_001, 1000), (5, 99_999, 37), (100, 9_000, 400), (3, 70_000, 4)]
        {
            let points = history.downsample("x", Span::Rows { first, count }, max_points).unwrap();
            assert!(points.rows.len() <= max_points as usize);
            assert!(points.rows.windows(2).all(|pair| pair[0] < pair[1]));
            for ((row, ms), value) in points.rows.iter().zip(&points.timestamps_ms).zip(&points.values) {
                assert_eq!((*ms, value.to_bits()), (1000 + *row as i64, values[*row as usize].to_bits()), "row {row}");
            }
            let kept: Vec<usize> = points.rows.iter().map(|row| *row as usize).collect();
            for bucket in Buckets::over(first as usize, (first + count) as usize, max_points as usize / 4).iter() {
                let inside: Vec<usize> = kept.iter().copied().filter(|row| (bucket.0..bucket.1).contains(row)).collect();
                assert!(inside.contains(&bucket.0) && inside.contains(&(bucket.1 - 1)), "{bucket:?}: {inside:?}");
                let finite: Vec<f64> = values[bucket.0..bucket.1].iter().copied().filter(|value| !value.is_nan()).collect();
                let low = finite.iter().copied().fold(f64::INFINITY, f64::min);
                let high = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                assert!(inside.iter().any(|row| values[*row] == low) && inside.iter().any(|row| values[*row] == high), "{bucket:?}");
            }
        }
    }

    #[test]
    fn time_spans_are_inclusive_at_both_ends() {
        let history = history_of(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        let points = history.downsample("x", Span::Time { from_ms: 1001, to_ms: 1003 }, 10).unwrap();
        assert_eq!(points.values, vec![2.0, 3.0, 4.0]);
        assert_eq!(points.timestamps_ms, vec![1001, 1002, 1003]);
    }

    #[test]
    fn timestamps_never_go_backwards() {
        let mut history = History::new(vec!["x".into()]);
        history.push_row(50, &[1.0]).unwrap();
        history.push_row(40, &[2.0]).unwrap();
        history.commit().unwrap();
        assert_eq!(history.read_timestamps(0, 10), vec![50, 50]);
    }

    #[test]
    fn values_at_rows_come_in_the_order_asked_across_chunks() {
        let values: Vec<f64> = (0..CHUNK_ROWS * 2 + 100).map(|row| row as f64).collect();
        let history = history_of(&values);
        let rows = [0, (CHUNK_ROWS * 2 + 99) as u64, 5, CHUNK_ROWS as u64, (CHUNK_ROWS - 1) as u64, 5];
        let expected: Vec<f64> = rows.iter().map(|row| *row as f64).collect();
        assert_eq!(history.values_at("x", &rows), Ok(expected));
        assert_eq!(history.values_at("x", &[]), Ok(Vec::new()));
        let rows_held = values.len() as u64;
        assert_eq!(history.values_at("x", &[1, rows_held]), Err(ReadError::OutOfRange { row: rows_held, rows: rows_held }));
        assert_eq!(history.values_at("y", &[1]), Err(ReadError::UnknownSeries("y".into())));
    }

    #[test]
    fn unknown_series_is_an_error() {
        let history = history_of(&[1.0]);
        assert_eq!(history.read_series("y", 0, 1), Err(ReadError::UnknownSeries("y".into())));
    }

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
            assert_eq!(history.chunks.len(), 100_000 / CHUNK_ROWS);
            let batch = history.batch(CHUNK_ROWS as u64 - 3, 6);
            assert_eq!(batch.columns[1], (CHUNK_ROWS - 3..CHUNK_ROWS + 3).map(|row| row as f64).collect::<Vec<_>>());
            let points = history.downsample("x", Span::All, 400).unwrap();
            assert!(points.rows.contains(&40_001) && points.rows.contains(&70_123));
            for ((row, ms), value) in points.rows.iter().zip(&points.timestamps_ms).zip(&points.values) {
                assert_eq!((*ms, value.to_bits()), (*row as i64 * 10, spiky(*row as usize).to_bits()), "row {row}");
            }
            assert_eq!(points.rows.last(), Some(&99_999));
            let (start, end) = history.resolve(Span::Time { from_ms: 327_675, to_ms: 327_700 });
            assert_eq!((start, end), (32_768, 32_771));
        }
        assert_eq!(durable.downsample("x", Span::All, 1000).unwrap().rows, in_memory.downsample("x", Span::All, 1000).unwrap().rows);
    }

    #[test]
    fn a_chunk_of_an_earlier_format_is_rewritten_and_reads_the_same() {
        // Earlier layouts: the same header and rows, then summaries of four words per
        // block (version 1), then of six words (version 2), without block edges.
        for (magic, words_per_block) in [(b"THCHUNK1", 4), (b"THCHUNK2", 6)] {
            let dir = tempfile::tempdir().unwrap();
            let names = vec!["x".to_string(), "row".to_string()];
            let mut history = History::open(dir.path(), names.clone()).unwrap();
            fill(&mut history, 0..40_000);
            history.commit().unwrap();
            let expected = history.downsample("x", Span::All, 1000).unwrap();
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
            assert_eq!(bits(&reopened.downsample("x", Span::All, 1000).unwrap()), bits(&expected));
            assert_eq!(&std::fs::read(&path).unwrap()[..8], b"THCHUNK3");
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
            history.set_mark("redis-stream:telemetry", "1700000000000-5").unwrap();
            history.commit().unwrap();
            // Pushed but never committed: gone after a crash.
            fill(&mut history, 40_000..40_010);
        }
        let mut history = History::open(dir.path(), names.clone()).unwrap();
        assert_eq!(history.row_count(), 40_000);
        assert_eq!(history.mark("redis-stream:telemetry"), Some("1700000000000-5"));
        assert_eq!(history.read_series("row", 39_998, 10).unwrap(), vec![39_998.0, 39_999.0]);
        fill(&mut history, 40_000..40_001);
        history.commit().unwrap();
        assert_eq!(History::open(dir.path(), names).unwrap().read_series("row", 40_000, 1).unwrap(), vec![40_000.0]);
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
}
