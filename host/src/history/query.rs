//! The query side of the history: an immutable snapshot of the committed rows (sealed
//! chunks, memory-mapped, plus the published tail) and every read of it. Snapshots are
//! published by the writer after each commit; a reader holds one for as long as it reads
//! and never waits for the writer, nor the writer for it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::chunk::{self, CHUNK_ROWS, Chunk};
use super::summaries::{self, BLOCK_ROWS, Block, MinMax};
use super::tail::TailView;
use super::{Points, ReadError, RowBatch, Span};

/// The series of a history, by position and by name.
#[derive(Debug)]
pub struct Schema {
    pub names: Vec<String>,
    by_name: HashMap<String, usize>,
}

impl Schema {
    pub fn new(names: Vec<String>) -> Schema {
        let by_name = names.iter().enumerate().map(|(index, name)| (name.clone(), index)).collect();
        Schema { names, by_name }
    }
}

/// The committed rows at one instant: what every reader sees.
#[derive(Clone)]
pub struct Snapshot {
    pub(super) schema: Arc<Schema>,
    /// Sealed chunks: rows `0..chunks.len() * CHUNK_ROWS`.
    pub(super) chunks: Arc<Vec<Arc<Chunk>>>,
    /// The committed rows after them, one view per chunk's worth of rows.
    pub(super) tails: Vec<TailView>,
    pub(super) committed: u64,
    /// Source positions stored with the rows (e.g. the last Redis stream entry).
    pub(super) marks: Arc<BTreeMap<String, String>>,
}

/// One stretch of rows: a sealed chunk or the tail.
#[derive(Clone, Copy)]
enum Segment<'a> {
    Chunk(&'a Chunk),
    Tail(&'a TailView),
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
            Segment::Tail(tail) => tail.timestamps(),
        }
    }

    fn values(&self, series: usize) -> &'a [f64] {
        match self {
            Segment::Chunk(chunk) => chunk.values(series),
            Segment::Tail(tail) => tail.values(series),
        }
    }

    /// The block summaries of one series, finest first.
    fn levels(&self, series: usize) -> [&'a [Block]; chunk::LEVELS] {
        match self {
            Segment::Chunk(chunk) => chunk.levels(series),
            Segment::Tail(tail) => tail.levels(series),
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
    history: &'a Snapshot,
    series: usize,
    view: SeriesView<'a>,
}

impl<'a> SeriesReader<'a> {
    fn new(history: &'a Snapshot, series: usize) -> SeriesReader<'a> {
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

impl Snapshot {
    pub fn series_names(&self) -> &[String] {
        &self.schema.names
    }

    pub fn series_index(&self, name: &str) -> Option<usize> {
        self.schema.by_name.get(name).copied()
    }

    /// Committed rows: the ones readers see.
    pub fn row_count(&self) -> u64 {
        self.committed
    }

    /// The position last stored for `source`, as of this snapshot's commit.
    pub fn mark(&self, source: &str) -> Option<&str> {
        self.marks.get(source).map(String::as_str)
    }

    /// Rows `first..first + max_rows`, clipped to the history.
    pub fn batch(&self, first: u64, max_rows: u64) -> RowBatch {
        let (start, end) = self.clip(first, max_rows);
        let mut batch = RowBatch {
            first_row: start as u64,
            timestamps_ms: Vec::with_capacity(end - start),
            columns: vec![Vec::with_capacity(end - start); self.schema.names.len()],
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
        // A span with a gap keeps five points per bucket (the gap as a NaN point), so it
        // gets fewer buckets: the answer stays within `max_points` either way.
        let has_gap = reader.extremes(start, end).gap().is_some();
        let per_bucket = if has_gap { 5 } else { 4 };
        if max_points < per_bucket {
            // Too few points for a bucket's own: the whole span as one bucket, keeping
            // what matters most first (the extremes, then the last point, the gap, the first).
            let whole = reader.summary(start, end);
            points.push_bucket(start, end - 1, &whole, max_points);
            return Ok(points);
        }
        let buckets = Buckets::over(start, end, max_points / per_bucket);
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
            points.push_bucket(first, stop - 1, &block, per_bucket);
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
        let index = row / CHUNK_ROWS;
        match self.chunks.get(index) {
            Some(chunk) => (Segment::Chunk(chunk), row % CHUNK_ROWS),
            None => (Segment::Tail(&self.tails[index - self.chunks.len()]), row % CHUNK_ROWS),
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

    /// Appends at most `keep` of the points of the bucket of rows `first..=last` summarised
    /// by `block`, in row order, each row once: its maximum, minimum, last point, first
    /// row without a value (a NaN point, so the gap shows) and first point, chosen in that
    /// order when not all fit.
    fn push_bucket(&mut self, first: usize, last: usize, block: &Block, keep: usize) {
        let extremes = &block.extremes;
        let mut kept: [Option<(usize, (i64, f64))>; 5] = [None; 5];
        if !extremes.is_empty() {
            kept[0] = Some((extremes.max_row as usize, (extremes.max_ms, extremes.max)));
            kept[1] = Some((extremes.min_row as usize, (extremes.min_ms, extremes.min)));
        }
        kept[2] = Some((last, (block.last_ms, block.last)));
        kept[3] = extremes.gap().map(|(row, ms)| (row as usize, (ms, f64::NAN)));
        kept[4] = Some((first, (block.first_ms, block.first)));
        let mut chosen: [Option<(usize, (i64, f64))>; 5] = [None; 5];
        let mut count = 0;
        for point in kept.into_iter().flatten() {
            if count < keep && !chosen[..count].iter().flatten().any(|(row, _)| *row == point.0) {
                chosen[count] = Some(point);
                count += 1;
            }
        }
        let chosen = &mut chosen[..count];
        chosen.sort_unstable_by_key(|point| point.map(|(row, _)| row));
        for (row, point) in chosen.iter().flatten() {
            self.push(*row, *point);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::History;

    fn history_of(values: &[f64]) -> Arc<Snapshot> {
        let mut history = History::new(vec!["x".into()]);
        for (row, value) in values.iter().enumerate() {
            history.push_row(1000 + row as i64, &[*value]).unwrap();
        }
        history.commit().unwrap();
        history.snapshot()
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
        // Fewer points than a bucket keeps: the extremes first, then the last row, then the gap.
        let expected: [&[u64]; 8] = [
            &[4321],
            &[4321, 8765],
            &[4321, 8765, 9999],
            &[0, 4321, 8765, 9999],
            &[0, 4321, 8765, 9999],
            &[0, 4321, 8765, 9999],
            &[0, 4321, 8765, 9999],
            &[0, 4321, 8765, 9999],
        ];
        for (max_points, rows) in (1..).zip(expected) {
            let points = history.downsample("x", Span::All, max_points).unwrap();
            assert_eq!(points.rows, rows, "{max_points} points");
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
            // Every span here has a gap: five points per bucket; four points are one bucket
            // whose extremes, last point and gap are kept.
            let whole = max_points < 5;
            let buckets = Buckets::over(first as usize, (first + count) as usize, max_points as usize / 5);
            for bucket in buckets.iter() {
                let inside: Vec<usize> = kept.iter().copied().filter(|row| (bucket.0..bucket.1).contains(row)).collect();
                assert!(whole || inside.contains(&bucket.0), "{bucket:?}: {inside:?}");
                assert!(inside.contains(&(bucket.1 - 1)), "{bucket:?}: {inside:?}");
                let gap = values[bucket.0..bucket.1].iter().any(|value| value.is_nan());
                assert_eq!(gap, inside.iter().any(|row| values[*row].is_nan()), "{bucket:?}: a gap shows as a NaN point");
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
        assert_eq!(history.snapshot().read_timestamps(0, 10), vec![50, 51]);
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
}
