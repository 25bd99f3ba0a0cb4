//! {{name}}: a telemetry-host connector writing one CSV line per row to /data/{{name}}.csv.
use telemetry_plugin::{Connector, ConnectorError, RowFile, RowFormat, Rows, Start, push_number};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The series written, in this order; every series if left out.
    series: Option<Vec<String>>,
}

struct Csv {
    header: String,
    columns: Vec<usize>,
}

impl RowFormat for Csv {
    fn header(&self) -> Option<String> {
        Some(self.header.clone())
    }
    fn write(&mut self, rows: &Rows, out: &mut String) {
        for (index, timestamp) in rows.timestamps_ms.iter().enumerate() {
            out.push_str(&format!("{},{timestamp}", rows.first_row + index as u64));
            for &column in &self.columns {
                out.push(',');
                push_number(out, rows.columns[column][index], ""); // NaN: an empty field
            }
            out.push('\n');
        }
    }
}

struct CsvOut(RowFile<Csv>);

impl Connector for CsvOut {
    type Config = Config;
    fn start(start: Start<Config>) -> Result<Self, ConnectorError> {
        let columns = start.columns(start.config.series.as_deref())?;
        let header = columns.iter().fold("row,timestamp_ms".to_string(), |line, &column| line + "," + &start.context.series[column]);
        // Cut back to the host's cursor and filled in from the history: every row once.
        Ok(CsvOut(RowFile::resume("/data/{{name}}.csv", Csv { header, columns }, start.context.next_row, false)?))
    }
    fn update(&mut self, rows: Rows) -> Result<(), ConnectorError> {
        Ok(self.0.append(&rows)?) // an I/O error is `unavailable`: the rows come again later
    }
}

telemetry_plugin::export_connector!(CsvOut);
