//! The rows of the chunk being filled, column by column with their block summaries, in
//! columns of a chunk's capacity that the writer appends to and snapshots read in place
//! (`append`): a commit publishes the tail without copying a row.

use super::append::{AppendView, AppendWriter};
use super::chunk::{CHUNK_ROWS, LEVELS, level_len};
use super::summaries::{self, BLOCK_ROWS, Block, SummaryLevels};

/// The writer's side of one chunk's worth of rows, from `first_row` on.
pub struct TailWriter {
    pub first_row: u64,
    timestamps: AppendWriter<i64>,
    columns: Vec<ColumnWriter>,
}

struct ColumnWriter {
    values: AppendWriter<f64>,
    levels: Vec<AppendWriter<Block>>,
}

impl SummaryLevels for Vec<AppendWriter<Block>> {
    fn blocks(&self, level: usize) -> &[Block] {
        self[level].as_slice()
    }

    fn push_block(&mut self, level: usize, block: Block) {
        self[level].push(block);
    }
}

/// Published rows of a tail, as a snapshot reads them.
#[derive(Clone)]
pub struct TailView {
    pub first_row: u64,
    timestamps: AppendView<i64>,
    columns: Vec<(AppendView<f64>, [AppendView<Block>; LEVELS])>,
}

impl TailWriter {
    pub fn new(first_row: u64, series: usize) -> TailWriter {
        let column = || ColumnWriter {
            values: AppendWriter::with_capacity(CHUNK_ROWS),
            levels: (0..LEVELS).map(|level| AppendWriter::with_capacity(level_len(level))).collect(),
        };
        TailWriter { first_row, timestamps: AppendWriter::with_capacity(CHUNK_ROWS), columns: (0..series).map(|_| column()).collect() }
    }

    pub fn len(&self) -> usize {
        self.timestamps.len()
    }

    pub fn is_full(&self) -> bool {
        self.timestamps.is_full()
    }

    pub fn series(&self) -> usize {
        self.columns.len()
    }

    /// Appends one row (the tail must not be full).
    pub fn push(&mut self, timestamp_ms: i64, values: &[f64]) {
        self.timestamps.push(timestamp_ms);
        let timestamps = self.timestamps.as_slice();
        for (column, value) in self.columns.iter_mut().zip(values) {
            column.values.push(*value);
            summaries::on_push(&mut column.levels, column.values.as_slice(), timestamps, self.first_row);
        }
    }

    /// Forgets the rows past `len` (they were never committed).
    pub fn truncate(&mut self, len: usize) {
        self.timestamps.truncate(len);
        for column in &mut self.columns {
            column.values.truncate(len);
            for (level, blocks) in column.levels.iter_mut().enumerate() {
                blocks.truncate(len / (BLOCK_ROWS << level));
            }
        }
    }

    pub fn timestamps(&self) -> &[i64] {
        self.timestamps.as_slice()
    }

    pub fn values(&self, series: usize) -> &[f64] {
        self.columns[series].values.as_slice()
    }

    /// Every row written so far, for readers.
    pub fn publish(&mut self) -> TailView {
        TailView {
            first_row: self.first_row,
            timestamps: self.timestamps.publish(),
            columns: self
                .columns
                .iter_mut()
                .map(|column| {
                    let values = column.values.publish();
                    let mut levels = column.levels.iter_mut();
                    (values, std::array::from_fn(|_| levels.next().expect("one writer per level").publish()))
                })
                .collect(),
        }
    }
}

impl TailView {
    pub fn timestamps(&self) -> &[i64] {
        self.timestamps.as_slice()
    }

    pub fn values(&self, series: usize) -> &[f64] {
        self.columns[series].0.as_slice()
    }

    /// The block summaries of one series, finest first.
    pub fn levels(&self, series: usize) -> [&[Block]; LEVELS] {
        let levels = &self.columns[series].1;
        std::array::from_fn(|level| levels[level].as_slice())
    }
}
