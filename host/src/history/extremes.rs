//! Minimum and maximum of any row range of a series in time that does not grow with the
//! history: blocks of `FANOUT` rows are summarised as rows arrive, blocks of `FANOUT`
//! blocks one level up, and so on. A range query combines at most `2 * (FANOUT - 1)`
//! entries per level, so its cost is logarithmic in the history length and independent
//! of the range width.

/// Rows (or blocks) summarised by one block of the next level.
const FANOUT: usize = 8;

/// The smallest and largest non-NaN value of a set of rows, with their row indices.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MinMax {
    pub min: f64,
    pub min_row: u64,
    pub max: f64,
    pub max_row: u64,
}

impl MinMax {
    /// The summary of no value (or only NaN values).
    pub const EMPTY: MinMax = MinMax { min: f64::INFINITY, min_row: u64::MAX, max: f64::NEG_INFINITY, max_row: u64::MAX };

    pub fn is_empty(&self) -> bool {
        self.min_row == u64::MAX
    }

    fn of_value(row: u64, value: f64) -> MinMax {
        if value.is_nan() { MinMax::EMPTY } else { MinMax { min: value, min_row: row, max: value, max_row: row } }
    }

    /// Merges `other`, which covers rows after the ones `self` covers: on ties the earlier
    /// row wins, so the result is the same however a range is cut into blocks.
    fn merge(&mut self, other: &MinMax) {
        if other.min < self.min {
            self.min = other.min;
            self.min_row = other.min_row;
        }
        if other.max > self.max {
            self.max = other.max;
            self.max_row = other.max_row;
        }
    }
}

/// The block summaries of one series, level by level: `levels[k][i]` covers rows
/// `i * FANOUT^(k+1) .. (i + 1) * FANOUT^(k+1)`.
#[derive(Default, Debug)]
pub struct Extremes {
    levels: Vec<Vec<MinMax>>,
}

impl Extremes {
    /// Records the value just pushed at the end of `values` (the whole series so far).
    pub fn on_push(&mut self, values: &[f64]) {
        let mut len = values.len();
        if !len.is_multiple_of(FANOUT) {
            return;
        }
        let first = len - FANOUT;
        let mut block = MinMax::EMPTY;
        for (offset, value) in values[first..].iter().enumerate() {
            block.merge(&MinMax::of_value((first + offset) as u64, *value));
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

    /// The extremes of `values[first..end]`.
    pub fn range(&self, values: &[f64], first: usize, end: usize) -> MinMax {
        let mut result = MinMax::EMPTY;
        let mut row = first;
        while row < end {
            // The largest summarised block that starts at `row` and ends within the range.
            let mut found: Option<(usize, usize)> = None;
            let mut block_size = FANOUT;
            for (level, blocks) in self.levels.iter().enumerate() {
                if !row.is_multiple_of(block_size) || row + block_size > end || row / block_size >= blocks.len() {
                    break;
                }
                found = Some((level, block_size));
                block_size *= FANOUT;
            }
            match found {
                Some((level, size)) => {
                    result.merge(&self.levels[level][row / size]);
                    row += size;
                }
                None => {
                    result.merge(&MinMax::of_value(row as u64, values[row]));
                    row += 1;
                }
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_force(values: &[f64], first: usize, end: usize) -> MinMax {
        let mut result = MinMax::EMPTY;
        for (row, value) in values.iter().enumerate().take(end).skip(first) {
            result.merge(&MinMax::of_value(row as u64, *value));
        }
        result
    }

    #[test]
    fn range_queries_match_a_linear_scan() {
        let mut values = Vec::new();
        let mut extremes = Extremes::default();
        let mut state = 12345u64;
        for row in 0..5000 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let value = if row % 97 == 0 { f64::NAN } else { (state >> 40) as f64 % 1000.0 };
            values.push(value);
            extremes.on_push(&values);
        }
        for (first, end) in [(0, 5000), (1, 4999), (7, 9), (64, 512), (63, 4097), (100, 101), (4095, 4097)] {
            assert_eq!(extremes.range(&values, first, end), brute_force(&values, first, end), "{first}..{end}");
        }
    }

    #[test]
    fn a_range_of_nan_only_is_empty() {
        let values = vec![f64::NAN; 20];
        let mut extremes = Extremes::default();
        for len in 1..=values.len() {
            extremes.on_push(&values[..len]);
        }
        assert!(extremes.range(&values, 0, 20).is_empty());
    }
}
