//! `telemetry.jsonl`: one row object per line (`row`, `timestamp_ms`, then every series;
//! NaN as `null`), kept restart-safe by the SDK's row file.

use telemetry_plugin::{RowFormat, Rows, push_number};

pub struct Jsonl {
    /// The series names, JSON-quoted once.
    keys: Vec<String>,
}

impl Jsonl {
    pub fn new(series: &[String]) -> Jsonl {
        Jsonl { keys: series.iter().map(|name| serde_json::to_string(name).unwrap_or_default()).collect() }
    }
}

impl RowFormat for Jsonl {
    fn write(&mut self, batch: &Rows, text: &mut String) {
        for (offset, timestamp) in batch.timestamps_ms.iter().enumerate() {
            text.push_str("{\"row\":");
            text.push_str(&(batch.first_row + offset as u64).to_string());
            text.push_str(",\"timestamp_ms\":");
            text.push_str(&timestamp.to_string());
            for (key, column) in self.keys.iter().zip(&batch.columns) {
                text.push(',');
                text.push_str(key);
                text.push(':');
                push_number(text, column.get(offset).copied().unwrap_or(f64::NAN), "null");
            }
            text.push_str("}\n");
        }
    }

    fn row_of(&self, line: &[u8]) -> Option<u64> {
        let value: serde_json::Value = serde_json::from_slice(line).ok()?;
        value.get("row")?.as_u64()
    }
}
