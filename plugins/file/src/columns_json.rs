//! `telemetry.json`: the original node's dict of columns, `{"series": [v, ...], ...}`,
//! with Python's `json.dump` separators and `NaN` tokens, so scripts that read the
//! original's file keep working. Written atomically: temporary file, fsync, rename.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::rows_jsonl::push_number;
use crate::telemetry::connector::history::{self, RowRange};

/// Rows read from the host per call.
const CHUNK: u64 = 65_536;

pub fn write_atomically(path: &Path, series: &[String], nan_as_null: bool) -> std::io::Result<()> {
    let temporary = path.with_extension("json.tmp");
    let nan_token = if nan_as_null { "null" } else { "NaN" };
    let rows = history::row_count();
    {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&temporary)?);
        let mut text = String::new();
        out.write_all(b"{")?;
        for (index, name) in series.iter().enumerate() {
            if index > 0 {
                out.write_all(b", ")?;
            }
            out.write_all(serde_json::to_string(name).unwrap_or_default().as_bytes())?;
            out.write_all(b": [")?;
            let mut first = 0;
            while first < rows {
                let values = history::read_series(name, RowRange { first, count: CHUNK.min(rows - first) }).unwrap_or_default();
                if values.is_empty() {
                    break;
                }
                text.clear();
                for (offset, value) in values.iter().enumerate() {
                    if first > 0 || offset > 0 {
                        text.push_str(", ");
                    }
                    push_number(&mut text, *value, nan_token);
                }
                out.write_all(text.as_bytes())?;
                first += values.len() as u64;
            }
            out.write_all(b"]")?;
        }
        out.write_all(b"}")?;
        let file = out.into_inner().map_err(|error| error.into_error())?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)
}
