//! The `history` import: read-only access to the host's history.

use crate::bindings::history::{HistoryError, Host, Points, RowRange, Span};
use crate::history::{self, ReadError, SharedHistory};

pub struct HistoryReader {
    history: SharedHistory,
}

impl HistoryReader {
    pub fn new(history: SharedHistory) -> HistoryReader {
        HistoryReader { history }
    }

    fn read<R>(&self, read: impl FnOnce(&history::Snapshot) -> R) -> R {
        read(&self.history.snapshot())
    }
}

impl From<ReadError> for HistoryError {
    fn from(error: ReadError) -> HistoryError {
        match error {
            ReadError::UnknownSeries(_) => HistoryError::UnknownSeries(error.to_string()),
            ReadError::OutOfRange { .. } => HistoryError::OutOfRange(error.to_string()),
        }
    }
}

impl Host for HistoryReader {
    fn series_names(&mut self) -> Vec<String> {
        self.read(|history| history.series_names().to_vec())
    }

    fn row_count(&mut self) -> u64 {
        self.read(|history| history.row_count())
    }

    fn read_series(&mut self, series: String, range: RowRange) -> Result<Vec<f64>, HistoryError> {
        Ok(self.read(|history| history.read_series(&series, range.first, range.count))?)
    }

    fn read_timestamps(&mut self, range: RowRange) -> Result<Vec<i64>, HistoryError> {
        Ok(self.read(|history| history.read_timestamps(range.first, range.count)))
    }

    fn read_at(&mut self, series: String, rows: Vec<u64>) -> Result<Vec<f64>, HistoryError> {
        Ok(self.read(|history| history.values_at(&series, &rows))?)
    }

    fn downsample(&mut self, series: String, span: Span, max_points: u32) -> Result<Points, HistoryError> {
        let span = match span {
            Span::All => history::Span::All,
            Span::Rows(range) => history::Span::Rows { first: range.first, count: range.count },
            Span::Time(range) => history::Span::Time { from_ms: range.from_ms, to_ms: range.to_ms },
        };
        let points = self.read(|history| history.downsample(&series, span, max_points))?;
        Ok(Points { rows: points.rows, timestamps_ms: points.timestamps_ms, values: points.values })
    }
}

/// Links the `history` import, reading the capability out of the store's data with `get`.
pub fn add_to_linker<T: 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> &mut HistoryReader,
) -> wasmtime::Result<()> {
    crate::bindings::history::add_to_linker::<T, wasmtime::component::HasSelf<HistoryReader>>(linker, get)
}
