//! Minimum and maximum of any row range of a series in time that does not grow with the
//! history: blocks of `FANOUT` rows are summarised as rows arrive, blocks of `FANOUT`
//! blocks one level up, and so on up to one block per chunk. A range query combines at
//! most `2 * (FANOUT - 1)` entries per level, so its cost is bounded by the chunk size,
//! whatever the history length and the range width.

use bytemuck::{Pod, Zeroable};

/// Rows (or blocks) summarised by one block of the next level.
pub const FANOUT: usize = 8;
const FANOUT_BITS: u32 = FANOUT.trailing_zeros();

/// The smallest and largest non-NaN value of a set of rows, with their row indices and
/// timestamps (so a downsampled read needs no other access to those rows). Laid out as
/// six 8-byte words, as sealed chunks store it on disk.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct MinMax {
    pub min: f64,
    pub min_row: u64,
    pub min_ms: i64,
    pub max: f64,
    pub max_row: u64,
    pub max_ms: i64,
}

impl MinMax {
    /// The summary of no value (or only NaN values).
    pub const EMPTY: MinMax =
        MinMax { min: f64::INFINITY, min_row: u64::MAX, min_ms: 0, max: f64::NEG_INFINITY, max_row: u64::MAX, max_ms: 0 };

    pub fn is_empty(&self) -> bool {
        self.min_row == u64::MAX
    }

    fn of_value(row: u64, ms: i64, value: f64) -> MinMax {
        if value.is_nan() { MinMax::EMPTY } else { MinMax { min: value, min_row: row, min_ms: ms, max: value, max_row: row, max_ms: ms } }
    }

    /// Merges `other`, which covers rows after the ones `self` covers: on ties the earlier
    /// row wins, so the result is the same however a range is cut into blocks.
    pub fn merge(&mut self, other: &MinMax) {
        // Selects rather than branches: on a noisy series which side wins is a coin toss.
        let (lower, higher) = (other.min < self.min, other.max > self.max);
        self.min_row = if lower { other.min_row } else { self.min_row };
        self.min_ms = if lower { other.min_ms } else { self.min_ms };
        self.min = if lower { other.min } else { self.min };
        self.max_row = if higher { other.max_row } else { self.max_row };
        self.max_ms = if higher { other.max_ms } else { self.max_ms };
        self.max = if higher { other.max } else { self.max };
    }
}

impl MinMax {
    /// The merge of consecutive `blocks`, as `merge` one after the other would give.
    /// Extremes first, then the first block holding each: no data-dependent branch in the
    /// scan (a merge per block compiles to branches, mispredicted on noisy series).
    pub fn of_blocks(blocks: &[MinMax]) -> MinMax {
        let (mut lowest, mut highest) = (MinMax::EMPTY.min, MinMax::EMPTY.max);
        for block in blocks {
            lowest = if block.min < lowest { block.min } else { lowest };
            highest = if block.max > highest { block.max } else { highest };
        }
        let mut result = MinMax::EMPTY;
        if lowest < MinMax::EMPTY.min
            && let Some(block) = blocks.iter().find(|block| block.min == lowest)
        {
            (result.min, result.min_row, result.min_ms) = (block.min, block.min_row, block.min_ms);
        }
        if highest > MinMax::EMPTY.max
            && let Some(block) = blocks.iter().find(|block| block.max == highest)
        {
            (result.max, result.max_row, result.max_ms) = (block.max, block.max_row, block.max_ms);
        }
        result
    }
}

/// Rows of a block whose first and last points are kept apart (`Edges`): downsampling
/// aligns its buckets to blocks at least this wide, so a bucket's first and last points
/// come from a compact array instead of two rows on pages of their own.
pub const EDGE_ROWS: usize = FANOUT * FANOUT;

/// The first and last point (time and value, NaN kept) of a block of `EDGE_ROWS` rows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct Edges {
    pub first_ms: i64,
    pub first: f64,
    pub last_ms: i64,
    pub last: f64,
}

/// The block summaries of the rows of one series in the chunk being filled, level by
/// level: `levels[k][i]` covers the chunk's rows `i * FANOUT^(k+1) .. (i + 1) * FANOUT^(k+1)`;
/// `edges[i]` holds the first and last point of rows `i * EDGE_ROWS .. (i + 1) * EDGE_ROWS`.
#[derive(Default, Debug, Clone)]
pub struct Extremes {
    levels: Vec<Vec<MinMax>>,
    edges: Vec<Edges>,
}

impl Extremes {
    /// Records the value just pushed at the end of `values` (the chunk's rows so far, with
    /// their `timestamps`, the first of which is row `first_row` of the history).
    pub fn on_push(&mut self, values: &[f64], timestamps: &[i64], first_row: u64) {
        let mut len = values.len();
        if !len.is_multiple_of(FANOUT) {
            return;
        }
        if len.is_multiple_of(EDGE_ROWS) {
            let (first, last) = (len - EDGE_ROWS, len - 1);
            self.edges.push(Edges { first_ms: timestamps[first], first: values[first], last_ms: timestamps[last], last: values[last] });
        }
        let first = len - FANOUT;
        let mut block = MinMax::EMPTY;
        for (offset, (value, ms)) in values[first..].iter().zip(&timestamps[first..]).enumerate() {
            block.merge(&MinMax::of_value(first_row + (first + offset) as u64, *ms, *value));
        }
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(block);
            len = self.levels[level].len();
            if !len.is_multiple_of(FANOUT) {
                return;
            }
            block = MinMax::EMPTY;
            for entry in &self.levels[level][len - FANOUT..] {
                block.merge(entry);
            }
            level += 1;
        }
    }

    /// The levels, finest first, as `range` takes them.
    pub fn levels(&self) -> impl Iterator<Item = &[MinMax]> {
        self.levels.iter().map(Vec::as_slice)
    }

    /// The edges of the complete blocks of `EDGE_ROWS` rows so far.
    pub fn edges(&self) -> &[Edges] {
        &self.edges
    }
}

/// The extremes of `values[first..end]` (rows stamped `timestamps`), whose block summaries
/// are `levels` (finest first) and whose first value is row `first_row` of the history.
pub fn range(levels: &[&[MinMax]], values: &[f64], timestamps: &[i64], first_row: u64, first: usize, end: usize) -> MinMax {
    if let Some(blocks) = whole_blocks(levels, first, end) {
        // Downsampling aligns its buckets to blocks: one run of one level, no search.
        return MinMax::of_blocks(blocks);
    }
    let mut result = MinMax::EMPTY;
    let mut row = first;
    while row < end {
        // The largest summarised block that starts at `row` and ends within the range.
        let mut found: Option<(&MinMax, usize)> = None;
        // Block sizes are powers of two: shifts and masks, not divisions, in this hot loop.
        let mut shift = FANOUT_BITS;
        for blocks in levels {
            let block_size = 1 << shift;
            if row & (block_size - 1) != 0 || row + block_size > end || row >> shift >= blocks.len() {
                break;
            }
            found = Some((&blocks[row >> shift], block_size));
            shift += FANOUT_BITS;
        }
        match found {
            Some((block, size)) => {
                result.merge(block);
                row += size;
            }
            None => {
                result.merge(&MinMax::of_value(first_row + row as u64, timestamps[row], values[row]));
                row += 1;
            }
        }
    }
    result
}

/// The blocks that tile `first..end` exactly, all of one level, when both ends fall on
/// that level's block edges and a few blocks suffice (past that, the general walk's
/// coarser blocks are cheaper).
fn whole_blocks<'a>(levels: &[&'a [MinMax]], first: usize, end: usize) -> Option<&'a [MinMax]> {
    const MOST_BLOCKS: usize = 4 * FANOUT;
    let aligned_bits = (first | end).trailing_zeros();
    let level = (aligned_bits / FANOUT_BITS).checked_sub(1)? as usize;
    let blocks = levels.get(level.min(levels.len().checked_sub(1)?))?;
    let shift = FANOUT_BITS * (level.min(levels.len() - 1) as u32 + 1);
    let (from, to) = (first >> shift, end >> shift);
    (to > from && to - from <= MOST_BLOCKS && to <= blocks.len()).then(|| &blocks[from..to])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(row: usize) -> i64 {
        1_000_000 + row as i64 * 7
    }

    fn brute_force(values: &[f64], first: usize, end: usize) -> MinMax {
        let mut result = MinMax::EMPTY;
        for (row, value) in values.iter().enumerate().take(end).skip(first) {
            result.merge(&MinMax::of_value(row as u64, stamp(row), *value));
        }
        result
    }

    #[test]
    fn range_queries_and_block_edges_match_the_rows() {
        let mut values = Vec::new();
        let timestamps: Vec<i64> = (0..5000).map(stamp).collect();
        let mut extremes = Extremes::default();
        let mut state = 12345u64;
        for row in 0..5000 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let value = if row % 97 == 0 { f64::NAN } else { (state >> 40) as f64 % 1000.0 };
            values.push(value);
            extremes.on_push(&values, &timestamps, 0);
        }
        for (block, edges) in extremes.edges().iter().enumerate() {
            let (first, last) = (block * EDGE_ROWS, (block + 1) * EDGE_ROWS - 1);
            assert_eq!((edges.first_ms, edges.last_ms), (timestamps[first], timestamps[last]));
            assert_eq!((edges.first.to_bits(), edges.last.to_bits()), (values[first].to_bits(), values[last].to_bits()));
        }
        assert_eq!(extremes.edges().len(), 5000 / EDGE_ROWS);
        for (first, end) in [
            (0, 5000),
            (1, 4999),
            (7, 9),
            (64, 512),
            (63, 4097),
            (100, 101),
            (4095, 4097),
            (512, 4096),
            (1024, 4608),
            (64, 128),
            (8, 264),
            (0, 4096),
            (4096, 4096),
        ] {
            assert_eq!(
                range(&extremes.levels().collect::<Vec<_>>(), &values, &timestamps, 0, first, end),
                brute_force(&values, first, end),
                "{first}..{end}"
            );
        }
    }

    #[test]
    fn a_range_of_nan_only_is_empty() {
        let values = vec![f64::NAN; 20];
        let timestamps = vec![0; 20];
        let mut extremes = Extremes::default();
        for len in 1..=values.len() {
            extremes.on_push(&values[..len], &timestamps[..len], 0);
        }
        assert!(range(&extremes.levels().collect::<Vec<_>>(), &values, &timestamps, 0, 0, 20).is_empty());
    }
}
