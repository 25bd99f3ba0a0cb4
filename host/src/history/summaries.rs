//! Block summaries of a series, built as rows arrive, that make downsampled reads and the
//! extremes of any row range cost the same at any history length. Every block of
//! `BLOCK_ROWS` rows is summarised (first and last point, minimum and maximum with their
//! rows and times, its first row without a value), then every two adjacent blocks one level up, and so on up to one block
//! per chunk. A downsampling bucket that is one whole block (or two or three) is answered
//! from its summaries alone, one compact entry read in row order; the extremes of any other
//! range combine at most two blocks per level and fewer than `BLOCK_ROWS` rows at each end.

use bytemuck::{Pod, Zeroable};

/// Rows of the smallest summarised block; each level up doubles it.
pub const BLOCK_ROWS: usize = 16;
const BLOCK_BITS: u32 = BLOCK_ROWS.trailing_zeros();

/// The smallest and largest non-NaN value of a set of rows and its first NaN (a gap),
/// with their row indices and timestamps (so a downsampled read needs no other access to
/// those rows).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct MinMax {
    pub min: f64,
    pub min_row: u64,
    pub min_ms: i64,
    pub max: f64,
    pub max_row: u64,
    pub max_ms: i64,
    /// The first row without a value, `u64::MAX` if every row has one.
    pub gap_row: u64,
    pub gap_ms: i64,
}

impl MinMax {
    /// The summary of no row.
    pub const EMPTY: MinMax = MinMax {
        min: f64::INFINITY,
        min_row: u64::MAX,
        min_ms: 0,
        max: f64::NEG_INFINITY,
        max_row: u64::MAX,
        max_ms: 0,
        gap_row: u64::MAX,
        gap_ms: 0,
    };

    /// No row with a value (no row at all, or only NaN).
    pub fn is_empty(&self) -> bool {
        self.min_row == u64::MAX
    }

    /// The first row without a value and its timestamp, if there is one.
    pub fn gap(&self) -> Option<(u64, i64)> {
        (self.gap_row != u64::MAX).then_some((self.gap_row, self.gap_ms))
    }

    /// The extremes of consecutive rows, the first of which is row `first_row` of the
    /// history. Four lanes, each with its running extremes and their rows: the lanes'
    /// comparisons are independent (no chain of one compare per row) and selects, not
    /// branches, so a noisy series costs no mispredictions. A comparison with NaN is false,
    /// so NaN never replaces an extreme.
    pub fn of_rows(values: &[f64], timestamps: &[i64], first_row: u64) -> MinMax {
        const LANES: usize = 4;
        let (mut lowest, mut highest) = ([MinMax::EMPTY.min; LANES], [MinMax::EMPTY.max; LANES]);
        let (mut lowest_at, mut highest_at) = ([usize::MAX; LANES], [usize::MAX; LANES]);
        let mut visit = |lane: usize, at: usize, value: f64| {
            let (lower, higher) = (value < lowest[lane], value > highest[lane]);
            lowest[lane] = if lower { value } else { lowest[lane] };
            lowest_at[lane] = if lower { at } else { lowest_at[lane] };
            highest[lane] = if higher { value } else { highest[lane] };
            highest_at[lane] = if higher { at } else { highest_at[lane] };
        };
        let groups = values.chunks_exact(LANES);
        let rest = groups.remainder();
        for (group_index, group) in groups.enumerate() {
            for (lane, value) in group.iter().enumerate() {
                visit(lane, group_index * LANES + lane, *value);
            }
        }
        for (lane, value) in rest.iter().enumerate() {
            visit(lane, values.len() - rest.len() + lane, *value);
        }
        // Across lanes, ties go to the earlier row.
        let (mut low_at, mut high_at) = (usize::MAX, usize::MAX);
        for lane in 0..LANES {
            let at = lowest_at[lane];
            if at != usize::MAX
                && (low_at == usize::MAX || lowest[lane] < values[low_at] || (lowest[lane] == values[low_at] && at < low_at))
            {
                low_at = at;
            }
            let at = highest_at[lane];
            if at != usize::MAX
                && (high_at == usize::MAX || highest[lane] > values[high_at] || (highest[lane] == values[high_at] && at < high_at))
            {
                high_at = at;
            }
        }
        let mut result = MinMax::EMPTY;
        if low_at != usize::MAX {
            (result.min, result.min_row, result.min_ms) = (values[low_at], first_row + low_at as u64, timestamps[low_at]);
        }
        if high_at != usize::MAX {
            (result.max, result.max_row, result.max_ms) = (values[high_at], first_row + high_at as u64, timestamps[high_at]);
        }
        if let Some(gap_at) = values.iter().position(|value| value.is_nan()) {
            (result.gap_row, result.gap_ms) = (first_row + gap_at as u64, timestamps[gap_at]);
        }
        result
    }

    /// Merges `other`, which covers rows after the ones `self` covers: on ties the earlier
    /// row wins, so the result is the same however a range is cut into blocks.
    pub fn merge(&mut self, other: &MinMax) {
        let gapless = self.gap_row == u64::MAX;
        self.gap_ms = if gapless { other.gap_ms } else { self.gap_ms };
        self.gap_row = if gapless { other.gap_row } else { self.gap_row };
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

/// The summary of one block: its extremes, its first gap and its first and last point (NaN
/// kept). Laid out as twelve 8-byte words, as sealed chunks store it on disk.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct Block {
    pub extremes: MinMax,
    pub first_ms: i64,
    pub first: f64,
    pub last_ms: i64,
    pub last: f64,
}

impl Block {
    /// The summary of consecutive rows (at least one), the first of which is row
    /// `first_row` of the history.
    pub fn of_rows(values: &[f64], timestamps: &[i64], first_row: u64) -> Block {
        let last = values.len() - 1;
        Block {
            extremes: MinMax::of_rows(values, timestamps, first_row),
            first_ms: timestamps[0],
            first: values[0],
            last_ms: timestamps[last],
            last: values[last],
        }
    }

    /// Merges `next`, the block right after this one.
    pub fn merge(&mut self, next: &Block) {
        self.extremes.merge(&next.extremes);
        (self.last_ms, self.last) = (next.last_ms, next.last);
    }
}

/// The block summaries of the rows of one series in the chunk being filled, level by
/// level: `levels[k][i]` covers the chunk's rows `i * size .. (i + 1) * size`, where `size`
/// is `BLOCK_ROWS << k`.
#[derive(Default, Debug, Clone)]
pub struct Summaries {
    levels: Vec<Vec<Block>>,
}

/// Where the block summaries of a series are kept as rows arrive: growable lists
/// (`Summaries`) or the tail's fixed columns shared with readers.
pub trait SummaryLevels {
    /// The complete blocks of `level` so far.
    fn blocks(&self, level: usize) -> &[Block];
    /// Adds the next complete block of `level`.
    fn push_block(&mut self, level: usize, block: Block);
}

/// Records the value just pushed at the end of `values` (the chunk's rows so far, with
/// their `timestamps`, the first of which is row `first_row` of the history) in `levels`.
pub fn on_push(levels: &mut impl SummaryLevels, values: &[f64], timestamps: &[i64], first_row: u64) {
    let len = values.len();
    if !len.is_multiple_of(BLOCK_ROWS) {
        return;
    }
    let first = len - BLOCK_ROWS;
    let mut block = Block::of_rows(&values[first..], &timestamps[first..], first_row + first as u64);
    let mut level = 0;
    loop {
        levels.push_block(level, block);
        let blocks = levels.blocks(level);
        let count = blocks.len();
        if !count.is_multiple_of(2) {
            return;
        }
        block = blocks[count - 2];
        block.merge(&blocks[count - 1]);
        level += 1;
    }
}

impl SummaryLevels for Summaries {
    fn blocks(&self, level: usize) -> &[Block] {
        self.levels.get(level).map_or(&[], Vec::as_slice)
    }

    fn push_block(&mut self, level: usize, block: Block) {
        if self.levels.len() == level {
            self.levels.push(Vec::new());
        }
        self.levels[level].push(block);
    }
}

impl Summaries {
    /// Records the value just pushed at the end of `values` (see `on_push`).
    pub fn on_push(&mut self, values: &[f64], timestamps: &[i64], first_row: u64) {
        on_push(self, values, timestamps, first_row);
    }

    /// The levels, finest first, as `range` takes them.
    pub fn levels(&self) -> impl Iterator<Item = &[Block]> {
        self.levels.iter().map(Vec::as_slice)
    }
}

/// The complete block of `level` that starts at `row` (an index into the rows `levels`
/// summarise), if `row` is on one of its edges.
pub fn block_at<'a>(levels: &[&'a [Block]], level: usize, row: usize) -> Option<&'a Block> {
    let shift = BLOCK_BITS as usize + level;
    if row & ((1 << shift) - 1) != 0 {
        return None;
    }
    levels.get(level)?.get(row >> shift)
}

/// The extremes of `values[first..end]` (rows stamped `timestamps`), whose block summaries
/// are `levels` (finest first) and whose first value is row `first_row` of the history.
pub fn range(levels: &[&[Block]], values: &[f64], timestamps: &[i64], first_row: u64, first: usize, end: usize) -> MinMax {
    let mut result = MinMax::EMPTY;
    let mut row = first;
    while row < end {
        // The largest complete block that starts at `row` and ends within the range.
        let mut found: Option<(&Block, usize)> = None;
        // Block sizes are powers of two: shifts and masks, not divisions, in this loop.
        for (shift, blocks) in (BLOCK_BITS..).zip(levels) {
            let block_size = 1 << shift;
            if row & (block_size - 1) != 0 || row + block_size > end || row >> shift >= blocks.len() {
                break;
            }
            found = Some((&blocks[row >> shift], block_size));
        }
        match found {
            Some((block, size)) => {
                result.merge(&block.extremes);
                row += size;
            }
            None => {
                // Rows up to the next block edge (or the range's end).
                let stop = end.min((row & !(BLOCK_ROWS - 1)) + BLOCK_ROWS);
                result.merge(&MinMax::of_rows(&values[row..stop], &timestamps[row..stop], first_row + row as u64));
                row = stop;
            }
        }
    }
    result
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
            let (at, ms) = (row as u64, stamp(row));
            let single = if value.is_nan() {
                MinMax { gap_row: at, gap_ms: ms, ..MinMax::EMPTY }
            } else {
                MinMax { min: *value, min_row: at, min_ms: ms, max: *value, max_row: at, max_ms: ms, ..MinMax::EMPTY }
            };
            result.merge(&single);
        }
        result
    }

    fn noisy(rows: usize) -> Vec<f64> {
        let mut state = 12345u64;
        (0..rows)
            .map(|row| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                // Few distinct values, so ties between rows are common.
                if row % 97 == 0 { f64::NAN } else { (state >> 40) as f64 % 1000.0 }
            })
            .collect()
    }

    #[test]
    fn range_queries_and_blocks_match_the_rows() {
        let values = noisy(5000);
        let timestamps: Vec<i64> = (0..5000).map(stamp).collect();
        let mut summaries = Summaries::default();
        for len in 1..=values.len() {
            summaries.on_push(&values[..len], &timestamps[..len], 0);
        }
        let levels: Vec<&[Block]> = summaries.levels().collect();
        assert_eq!(levels.iter().map(|blocks| blocks.len()).collect::<Vec<_>>(), [312, 156, 78, 39, 19, 9, 4, 2, 1]);
        for (level, blocks) in levels.iter().enumerate() {
            let size = BLOCK_ROWS << level;
            for (index, block) in blocks.iter().enumerate() {
                let (first, last) = (index * size, (index + 1) * size - 1);
                assert_eq!(block.extremes, brute_force(&values, first, last + 1), "level {level} block {index}");
                assert_eq!((block.first_ms, block.last_ms), (timestamps[first], timestamps[last]));
                assert_eq!((block.first.to_bits(), block.last.to_bits()), (values[first].to_bits(), values[last].to_bits()));
                assert!(block_at(&levels, level, first).is_some_and(|found| std::ptr::eq(found, block)));
            }
        }
        assert_eq!(block_at(&levels, 2, 32), None, "not on a block edge of its level");
        assert_eq!(block_at(&levels, 0, 4992), None, "not complete yet");
        for (first, end) in [(0, 5000), (1, 4999), (7, 9), (64, 512), (63, 4097), (100, 101), (4095, 4097), (128, 4992), (0, 0)] {
            assert_eq!(range(&levels, &values, &timestamps, 0, first, end), brute_force(&values, first, end), "{first}..{end}");
        }
    }

    #[test]
    fn a_range_of_nan_only_is_empty() {
        let values = vec![f64::NAN; 200];
        let timestamps = vec![0; 200];
        let mut summaries = Summaries::default();
        for len in 1..=values.len() {
            summaries.on_push(&values[..len], &timestamps[..len], 0);
        }
        let levels: Vec<&[Block]> = summaries.levels().collect();
        assert!(levels[0][0].first.is_nan() && levels[0][0].extremes.is_empty());
        assert_eq!(levels[0][1].extremes.gap(), Some((16, 0)));
        let whole = range(&levels, &values, &timestamps, 0, 0, 200);
        assert!(whole.is_empty() && whole.gap() == Some((0, 0)));
        assert!(range(&levels, &values, &timestamps, 0, 0, 0).gap().is_none());
    }
}
