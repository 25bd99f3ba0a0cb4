//! The original node's stats file: a JSON object of columns, `{"series": [v, ...], ...}`,
//! as Python's `json.dump` writes it (`NaN`, `Infinity` and `-Infinity` as bare tokens).
//! The file connector writes it as `telemetry.json` while a run goes on; `import` reads
//! one into an empty history so that an old run continues, `export` writes the history
//! as one.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::{History, Snapshot};

/// Rows read from the history per step of an export.
const EXPORT_ROWS: u64 = 65_536;

/// Writes every committed row of `history` as a stats file.
pub fn export(history: &Snapshot, out: &mut impl Write) -> Result<()> {
    let rows = history.row_count();
    let mut text = String::new();
    out.write_all(b"{")?;
    for (index, name) in history.series_names().iter().enumerate() {
        text.clear();
        if index > 0 {
            text.push_str(", ");
        }
        text.push_str(&serde_json::to_string(name)?);
        text.push_str(": [");
        out.write_all(text.as_bytes())?;
        let mut first = 0;
        while first < rows {
            let values = history.read_series(name, first, EXPORT_ROWS)?;
            text.clear();
            for (offset, value) in values.iter().enumerate() {
                if first > 0 || offset > 0 {
                    text.push_str(", ");
                }
                push_python_number(&mut text, *value);
            }
            out.write_all(text.as_bytes())?;
            first += values.len() as u64;
        }
        out.write_all(b"]")?;
    }
    out.write_all(b"}\n")?;
    Ok(())
}

/// The rows of a stats file, in the history's series order. A series the file lacks is
/// NaN in every row (and said in the returned notes); every column must have the same
/// length.
pub fn read(path: &Path, series: &[String]) -> Result<(Vec<Vec<f64>>, Vec<String>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read stats file {}", path.display()))?;
    let json = python_tokens_to_json(&text);
    let Value::Object(columns) =
        serde_json::from_str::<Value>(&json).with_context(|| format!("{}: not a JSON object of columns", path.display()))?
    else {
        bail!("{}: not a JSON object of columns", path.display());
    };
    let mut rows_in_file: Option<(String, usize)> = None;
    let mut parsed = Vec::new();
    let mut notes = Vec::new();
    for name in series {
        let Some(column) = columns.get(name) else {
            notes.push(format!("`{name}` is not in the stats file: NaN in every imported row"));
            parsed.push(None);
            continue;
        };
        let Value::Array(items) = column else { bail!("{}: `{name}` is not a list of numbers", path.display()) };
        let mut values = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            values.push(match item {
                Value::Number(number) => number.as_f64().unwrap_or(f64::NAN),
                Value::Null => f64::NAN,
                Value::String(token) if token == POSITIVE_INFINITY => f64::INFINITY,
                Value::String(token) if token == NEGATIVE_INFINITY => f64::NEG_INFINITY,
                Value::Bool(flag) => f64::from(u8::from(*flag)),
                other => bail!("{}: `{name}`[{index}] is {other}, not a number", path.display()),
            });
        }
        match &rows_in_file {
            Some((first_name, rows)) => ensure!(
                *rows == values.len(),
                "{}: `{name}` has {} values but `{first_name}` has {rows}: columns of a stats file have one value per row",
                path.display(),
                values.len()
            ),
            None => rows_in_file = Some((name.clone(), values.len())),
        }
        parsed.push(Some(values));
    }
    for name in columns.keys().filter(|name| !series.contains(name)) {
        notes.push(format!("`{name}` is in the stats file but not a series of this configuration: not imported"));
    }
    let rows = rows_in_file.map_or(0, |(_, rows)| rows);
    Ok((parsed.into_iter().map(|column| column.unwrap_or_else(|| vec![f64::NAN; rows])).collect(), notes))
}

/// Appends the rows of a stats file to an empty history, stamped `timestamp_ms` (the
/// original records no wall time), and commits them. Returns the rows imported.
pub fn import(history: &mut History, path: &Path, timestamp_ms: i64) -> Result<u64> {
    ensure!(
        history.row_count() == 0,
        "the history already holds {} rows: a stats file is imported into an empty history only",
        history.row_count()
    );
    let (columns, notes) = read(path, history.series_names())?;
    for note in notes {
        tracing::warn!("{}: {note}", path.display());
    }
    let rows = columns.first().map_or(0, Vec::len);
    let mut row = vec![0.0; columns.len()];
    for index in 0..rows {
        for (value, column) in row.iter_mut().zip(&columns) {
            *value = column[index];
        }
        history.push_row(timestamp_ms, &row)?;
        if (index + 1) % EXPORT_ROWS as usize == 0 {
            history.commit()?;
        }
    }
    history.commit()?;
    Ok(rows as u64)
}

const POSITIVE_INFINITY: &str = "\u{0}Infinity";
const NEGATIVE_INFINITY: &str = "\u{0}-Infinity";

/// Python's `json.dump` writes non-finite floats as bare `NaN`, `Infinity` and
/// `-Infinity`, which JSON lacks: outside strings they become `null` and marker strings.
fn python_tokens_to_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(character) = rest.chars().next() {
        if in_string {
            out.push(character);
            match character {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            rest = &rest[character.len_utf8()..];
            continue;
        }
        let replaced = [("NaN", "null"), ("-Infinity", "\"\\u0000-Infinity\""), ("Infinity", "\"\\u0000Infinity\"")]
            .into_iter()
            .find(|(token, _)| rest.starts_with(token));
        if let Some((token, json)) = replaced {
            out.push_str(json);
            rest = &rest[token.len()..];
            continue;
        }
        in_string = character == '"';
        out.push(character);
        rest = &rest[character.len_utf8()..];
    }
    out
}

fn push_python_number(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        out.push_str(ryu::Buffer::new().format_finite(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_then_import_gives_the_same_rows() {
        let names = vec!["rewards".to_string(), "rewards_av".to_string()];
        let mut history = History::new(names.clone());
        for (value, average) in [(1.0, 1.0), (f64::NAN, 1.0), (f64::INFINITY, -2.5e-7)] {
            history.push_row(5, &[value, average]).unwrap();
        }
        history.commit().unwrap();
        let mut text = Vec::new();
        export(&history.snapshot(), &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert_eq!(text, "{\"rewards\": [1.0, NaN, Infinity], \"rewards_av\": [1.0, 1.0, -2.5e-7]}\n");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("SoulsAIStats.json");
        std::fs::write(&path, &text).unwrap();
        let mut imported = History::new(names);
        assert_eq!(import(&mut imported, &path, 9).unwrap(), 3);
        assert_eq!(imported.snapshot().read_series("rewards_av", 0, 3).unwrap(), vec![1.0, 1.0, -2.5e-7]);
        let rewards = imported.snapshot().read_series("rewards", 0, 3).unwrap();
        assert!(rewards[0] == 1.0 && rewards[1].is_nan() && rewards[2] == f64::INFINITY);
        assert!(import(&mut imported, &path, 9).unwrap_err().to_string().contains("already holds 3 rows"));
    }

    #[test]
    fn columns_of_different_lengths_are_refused_with_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.json");
        std::fs::write(&path, r#"{"a": [1, 2], "b": [1], "c": "NaN"}"#).unwrap();
        let error = read(&path, &["a".into(), "b".into()]).unwrap_err().to_string();
        assert!(error.contains("`b` has 1 values but `a` has 2"), "{error}");
        let (columns, notes) = read(&path, &["a".into(), "z".into()]).unwrap();
        assert!(columns[1].iter().all(|value| value.is_nan()) && notes.len() == 3, "{notes:?}");
    }
}
