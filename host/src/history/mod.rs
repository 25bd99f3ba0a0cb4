//! The history of a run: one row per accepted sample, one column per series, a timestamp
//! per row. The host owns it; plugins read it through the `history` import and receive
//! new rows from their own cursor.

mod extremes;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use extremes::Extremes;

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
}

#[derive(Default)]
struct Column {
    values: Vec<f64>,
    extremes: Extremes,
}

/// Columns of f64 values with per-row timestamps and the block extremes that make
/// downsampled reads cost the same at any length.
pub struct History {
    names: Vec<String>,
    by_name: HashMap<String, usize>,
    timestamps_ms: Vec<i64>,
    columns: Vec<Column>,
}

impl History {
    pub fn new(names: Vec<String>) -> History {
        let by_name = names.iter().enumerate().map(|(index, name)| (name.clone(), index)).collect();
        let columns = names.iter().map(|_| Column::default()).collect();
        History { names, by_name, timestamps_ms: Vec::new(), columns }
    }

    pub fn shared(self) -> SharedHistory {
        Arc::new(RwLock::new(self))
    }

    pub fn series_names(&self) -> &[String] {
        &self.names
    }

    pub fn series_index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub fn row_count(&self) -> u64 {
        self.timestamps_ms.len() as u64
    }

    /// Appends one row. Timestamps are made non-decreasing so that time ranges map to
    /// row ranges by binary search.
    ///
    /// # Panics
    /// If `values` has not one value per series: ingest builds rows from the same
    /// series list, so a mismatch is a bug in the host.
    pub fn push_row(&mut self, timestamp_ms: i64, values: &[f64]) {
        assert_eq!(values.len(), self.columns.len(), "a row needs one value per series");
        let timestamp_ms = timestamp_ms.max(self.timestamps_ms.last().copied().unwrap_or(i64::MIN));
        self.timestamps_ms.push(timestamp_ms);
        for (column, value) in self.columns.iter_mut().zip(values) {
            column.values.push(*value);
            column.extremes.on_push(&column.values);
        }
    }

    /// Rows `first..first + max_rows`, clipped to the history.
    pub fn batch(&self, first: u64, max_rows: u64) -> RowBatch {
        let (start, end) = self.clip(first, max_rows);
        RowBatch {
            first_row: start as u64,
            timestamps_ms: self.timestamps_ms[start..end].to_vec(),
            columns: self.columns.iter().map(|column| column.values[start..end].to_vec()).collect(),
        }
    }

    pub fn read_series(&self, name: &str, first: u64, count: u64) -> Result<Vec<f64>, ReadError> {
        let column = self.column(name)?;
        let (start, end) = self.clip(first, count);
        Ok(column.values[start..end].to_vec())
    }

    pub fn read_timestamps(&self, first: u64, count: u64) -> Vec<i64> {
        let (start, end) = self.clip(first, count);
        self.timestamps_ms[start..end].to_vec()
    }

    /// The row range `start..end` that a span covers.
    pub fn resolve(&self, span: Span) -> (usize, usize) {
        match span {
            Span::All => (0, self.timestamps_ms.len()),
            Span::Rows { first, count } => self.clip(first, count),
            Span::Time { from_ms, to_ms } => {
                let start = self.timestamps_ms.partition_point(|t| *t < from_ms);
                let end = self.timestamps_ms.partition_point(|t| *t <= to_ms);
                (start, end.max(start))
            }
        }
    }

    /// At most `max_points` points of `name` over `span`: the rows are cut into buckets
    /// of equal width and each bucket contributes its first, minimum, maximum and last
    /// point (fewer where they coincide). First and last are kept even when NaN, so gaps
    /// stay visible; minimum and maximum ignore NaN.
    pub fn downsample(&self, name: &str, span: Span, max_points: u32) -> Result<Points, ReadError> {
        let column = self.column(name)?;
        let (start, end) = self.resolve(span);
        let max_points = (max_points as usize).max(1);
        let mut points = Points::default();
        if end - start <= max_points {
            for row in start..end {
                self.push_point(&mut points, column, row);
            }
            return Ok(points);
        }
        if max_points < 4 {
            // Too few points for a bucket's four: evenly spaced rows, first and last kept.
            let span = end - start - 1;
            for index in 0..max_points {
                let row = start + if max_points == 1 { 0 } else { index * span / (max_points - 1) };
                self.push_point(&mut points, column, row);
            }
            return Ok(points);
        }
        let buckets = max_points / 4;
        let width = end - start;
        let mut kept = [0usize; 4];
        for bucket in 0..buckets {
            let first = start + bucket * width / buckets;
            let last = start + (bucket + 1) * width / buckets - 1;
            let extremes = column.extremes.range(&column.values, first, last + 1);
            kept[0] = first;
            let mut count = 1;
            if !extremes.is_empty() {
                let (low, high) = (extremes.min_row as usize, extremes.max_row as usize);
                kept[count] = low.min(high);
                kept[count + 1] = low.max(high);
                count += 2;
            }
            kept[count] = last;
            count += 1;
            let mut previous = usize::MAX;
            for &row in &kept[..count] {
                if row != previous {
                    self.push_point(&mut points, column, row);
                    previous = row;
                }
            }
        }
        Ok(points)
    }

    fn push_point(&self, points: &mut Points, column: &Column, row: usize) {
        points.rows.push(row as u64);
        points.timestamps_ms.push(self.timestamps_ms[row]);
        points.values.push(column.values[row]);
    }

    fn column(&self, name: &str) -> Result<&Column, ReadError> {
        self.series_index(name).map(|index| &self.columns[index]).ok_or_else(|| ReadError::UnknownSeries(name.to_string()))
    }

    fn clip(&self, first: u64, count: u64) -> (usize, usize) {
        let len = self.timestamps_ms.len() as u64;
        let start = first.min(len);
        let end = first.saturating_add(count).min(len);
        (start as usize, end as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history_of(values: &[f64]) -> History {
        let mut history = History::new(vec!["x".into()]);
        for (row, value) in values.iter().enumerate() {
            history.push_row(1000 + row as i64, &[*value]);
        }
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
    fn time_spans_are_inclusive_at_both_ends() {
        let history = history_of(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        let points = history.downsample("x", Span::Time { from_ms: 1001, to_ms: 1003 }, 10).unwrap();
        assert_eq!(points.values, vec![2.0, 3.0, 4.0]);
        assert_eq!(points.timestamps_ms, vec![1001, 1002, 1003]);
    }

    #[test]
    fn timestamps_never_go_backwards() {
        let mut history = History::new(vec!["x".into()]);
        history.push_row(50, &[1.0]);
        history.push_row(40, &[2.0]);
        assert_eq!(history.read_timestamps(0, 10), vec![50, 50]);
    }

    #[test]
    fn unknown_series_is_an_error() {
        let history = history_of(&[1.0]);
        assert_eq!(history.read_series("y", 0, 1), Err(ReadError::UnknownSeries("y".into())));
    }
}
