//! `telemetry.json`: the original node's dict of columns, `{"series": [v, ...], ...}`,
//! with Python's `json.dump` separators and `NaN` tokens, so scripts that read the
//! original's file keep working. A dict of columns cannot be appended to (every column
//! grows in the middle of the file), so it is rewritten: into a temporary file, a bounded
//! piece per update, then synced and renamed over the old one. Readers always see a
//! complete file, the first `rows` rows of the history at the moment the rewrite began;
//! an update never spends more than `budget` values on it, however long the run. The
//! price: while a rewrite is under way the disk holds the old file and the new one.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use telemetry_plugin::history::{self, RowRange};
use telemetry_plugin::push_number;

/// Rows read from the host per call.
const CHUNK: u64 = 65_536;

/// A rewrite of `telemetry.json` under way.
pub struct Rewrite {
    out: BufWriter<File>,
    temporary: PathBuf,
    path: PathBuf,
    /// Rows of every series this rewrite writes.
    pub rows: u64,
    /// The series being written and its next row.
    series: usize,
    next_row: u64,
    nan_token: &'static str,
    text: String,
}

impl Rewrite {
    /// Starts a rewrite of `path` with the rows the history holds now.
    pub fn begin(path: &Path, nan_as_null: bool) -> std::io::Result<Rewrite> {
        let temporary = path.with_extension("json.tmp");
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&temporary)?);
        out.write_all(b"{")?;
        Ok(Rewrite {
            out,
            temporary,
            path: path.to_path_buf(),
            rows: history::row_count(),
            series: 0,
            next_row: 0,
            nan_token: if nan_as_null { "null" } else { "NaN" },
            text: String::new(),
        })
    }

    /// Writes at most about `budget` more values (a whole read of the host at least);
    /// true once the file is complete and in place.
    pub fn advance(&mut self, series: &[String], budget: u64) -> std::io::Result<bool> {
        let mut written = 0u64;
        while self.series < series.len() {
            if written >= budget {
                return Ok(false);
            }
            let name = &series[self.series];
            if self.next_row == 0 {
                let separator = if self.series > 0 { ", " } else { "" };
                self.out.write_all(format!("{separator}{}: [", serde_json::to_string(name).unwrap_or_default()).as_bytes())?;
            }
            if self.next_row < self.rows {
                let range = RowRange { first: self.next_row, count: CHUNK.min(self.rows - self.next_row) };
                let values = history::read_series(name, range).map_err(|error| {
                    std::io::Error::other(format!("reading `{name}` rows {}+{} from the host: {error:?}", range.first, range.count))
                })?;
                if values.is_empty() {
                    return Err(std::io::Error::other(format!("the host has no row {} of `{name}`", range.first)));
                }
                self.text.clear();
                for (offset, value) in values.iter().enumerate() {
                    if self.next_row > 0 || offset > 0 {
                        self.text.push_str(", ");
                    }
                    push_number(&mut self.text, *value, self.nan_token);
                }
                self.out.write_all(self.text.as_bytes())?;
                self.next_row += values.len() as u64;
                written += values.len() as u64;
            }
            if self.next_row >= self.rows {
                self.out.write_all(b"]")?;
                (self.series, self.next_row) = (self.series + 1, 0);
            }
        }
        self.out.write_all(b"}")?;
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        std::fs::rename(&self.temporary, &self.path)?;
        Ok(true)
    }
}
