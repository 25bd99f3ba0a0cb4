//! The original node's transforms: each turns a sample into one value of one series, and
//! every series `<name>` gets a moving average `<name>_av`.

use std::collections::VecDeque;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A key of a sample: one name (looked up as is, then as a dotted path) or a path of names.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum KeyPath {
    Name(String),
    Path(Vec<String>),
}

impl KeyPath {
    fn label(&self) -> String {
        match self {
            KeyPath::Name(name) => name.clone(),
            KeyPath::Path(path) => path.join("."),
        }
    }

    fn lookup<'a>(&self, sample: &'a Value) -> Option<&'a Value> {
        match self {
            KeyPath::Name(name) => sample.get(name).or_else(|| walk(sample, name.split('.'))),
            KeyPath::Path(path) => walk(sample, path.iter().map(String::as_str)),
        }
    }
}

fn walk<'a, 'k>(sample: &'a Value, path: impl Iterator<Item = &'k str>) -> Option<&'a Value> {
    path.into_iter().try_fold(sample, |value, key| value.get(key))
}

/// Comparison operators, named as Python's `operator` module names them.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum CompareOp {
    Lt,
    Le,
    Eq,
    Ne,
    Ge,
    Gt,
}

impl CompareOp {
    fn apply(self, left: f64, right: f64) -> bool {
        match self {
            CompareOp::Lt => left < right,
            CompareOp::Le => left <= right,
            CompareOp::Eq => left == right,
            CompareOp::Ne => left != right,
            CompareOp::Ge => left >= right,
            CompareOp::Gt => left > right,
        }
    }
}

/// One configured transform, as `[[telemetry.transforms]]` writes it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum TransformSpec {
    /// The value at `key`, or element `idx` of it; the series is `name` or the key.
    MetricByKey {
        key: KeyPath,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        idx: Option<usize>,
    },
    /// 1.0 when `op(sample[key] * scale + offset, value)` holds, else 0.0.
    CompareValue {
        key: KeyPath,
        value: f64,
        #[serde(default)]
        idx: Option<usize>,
        #[serde(default)]
        name: Option<String>,
        #[serde(default = "default_op")]
        op: CompareOp,
        #[serde(default = "default_scale")]
        scale: f64,
        #[serde(default)]
        offset: f64,
    },
    /// Seconds since the host started.
    Timer {
        #[serde(default)]
        name: Option<String>,
    },
}

fn default_op() -> CompareOp {
    CompareOp::Gt
}
fn default_scale() -> f64 {
    1.0
}

impl TransformSpec {
    pub fn name(&self) -> String {
        match self {
            TransformSpec::MetricByKey { key, name, .. } | TransformSpec::CompareValue { key, name, .. } => {
                name.clone().unwrap_or_else(|| key.label())
            }
            TransformSpec::Timer { name } => name.clone().unwrap_or_else(|| "time".into()),
        }
    }
}

/// The series the transforms produce, in column order: each name followed by its average.
pub fn series_names(transforms: &[TransformSpec]) -> Vec<String> {
    transforms
        .iter()
        .flat_map(|transform| {
            let name = transform.name();
            [format!("{name}_av"), name].into_iter().rev()
        })
        .collect()
}

/// Why a transform could not read a sample. Faults are counted and logged per kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Fault {
    #[error("key `{0}` is missing")]
    MissingKey(String),
    #[error("key `{0}` is not a number, a boolean or an array of numbers")]
    NotNumeric(String),
    #[error("key `{key}` has no element {idx}")]
    NoElement { key: String, idx: usize },
    #[error("no transform could read the sample")]
    NothingReadable,
}

/// Turns samples into rows: the transforms' values and their moving averages.
pub struct RowBuilder {
    transforms: Vec<TransformSpec>,
    windows: Vec<VecDeque<f64>>,
    window_len: usize,
    started: Instant,
}

impl RowBuilder {
    pub fn new(transforms: Vec<TransformSpec>, moving_average: usize) -> RowBuilder {
        // Windows grow as rows come: a huge `moving_average` costs nothing up front.
        let windows = transforms.iter().map(|_| VecDeque::with_capacity(moving_average.min(1024))).collect();
        RowBuilder { transforms, windows, window_len: moving_average.max(1), started: Instant::now() }
    }

    /// Continues a run: the moving-average windows take the last values of `history`
    /// and the timer goes on from its last value.
    pub fn resume(&mut self, history: &crate::history::Snapshot) {
        let rows = history.row_count();
        for (transform, window) in self.transforms.iter().zip(&mut self.windows) {
            let first = rows.saturating_sub(self.window_len as u64);
            let last_values = history.read_series(&transform.name(), first, self.window_len as u64).unwrap_or_default();
            if let TransformSpec::Timer { .. } = transform
                && let Some(elapsed) = last_values.last().and_then(|seconds| std::time::Duration::try_from_secs_f64(*seconds).ok())
            {
                // A timer from a damaged or imported history may be out of reach: then it restarts.
                self.started = Instant::now().checked_sub(elapsed).unwrap_or(self.started);
            }
            window.clear();
            window.extend(last_values);
        }
    }

    /// The row for one sample, and the faults of the transforms that could not read it
    /// (their values are NaN). A sample that no data transform can read is refused.
    pub fn row(&mut self, sample: &Value, faults: &mut Vec<Fault>) -> Result<Vec<f64>, Fault> {
        faults.clear();
        let mut values = Vec::with_capacity(self.transforms.len());
        let mut readable = false;
        for transform in &self.transforms {
            let value = match transform {
                TransformSpec::MetricByKey { key, idx, .. } => read_number(sample, key, *idx),
                TransformSpec::CompareValue { key, value, idx, op, scale, offset, .. } => {
                    read_number(sample, key, *idx).map(|x| f64::from(u8::from(op.apply(x * scale + offset, *value))))
                }
                TransformSpec::Timer { .. } => {
                    values.push(self.started.elapsed().as_secs_f64());
                    continue;
                }
            };
            match value {
                Ok(value) => {
                    readable = true;
                    values.push(value);
                }
                Err(fault) => {
                    faults.push(fault);
                    values.push(f64::NAN);
                }
            }
        }
        if !readable {
            return Err(faults.first().cloned().unwrap_or(Fault::NothingReadable));
        }
        let mut row = Vec::with_capacity(values.len() * 2);
        for (value, window) in values.into_iter().zip(&mut self.windows) {
            if window.len() == self.window_len {
                window.pop_front();
            }
            window.push_back(value);
            row.push(value);
            row.push(mean_ignoring_nan(window));
        }
        Ok(row)
    }
}

fn mean_ignoring_nan(window: &VecDeque<f64>) -> f64 {
    let (sum, count) = window.iter().filter(|value| !value.is_nan()).fold((0.0, 0u32), |(sum, count), value| (sum + value, count + 1));
    if count == 0 { f64::NAN } else { sum / f64::from(count) }
}

fn read_number(sample: &Value, key: &KeyPath, idx: Option<usize>) -> Result<f64, Fault> {
    let value = key.lookup(sample).ok_or_else(|| Fault::MissingKey(key.label()))?;
    let not_numeric = || Fault::NotNumeric(key.label());
    // Tensors of shape [1] or [1, k] arrive as [x] or [[x0, .., xk]].
    let element = match (value, idx) {
        (Value::Array(items), _) if items.len() == 1 && items[0].is_array() => &items[0],
        _ => value,
    };
    let scalar = match (element, idx) {
        (Value::Array(items), Some(idx)) => items.get(idx).ok_or_else(|| Fault::NoElement { key: key.label(), idx })?,
        (Value::Array(items), None) if items.len() == 1 => &items[0],
        (Value::Array(_), None) => return Err(not_numeric()),
        (scalar, _) => scalar,
    };
    match scalar {
        Value::Number(number) => number.as_f64().ok_or_else(not_numeric),
        Value::Bool(flag) => Ok(f64::from(u8::from(*flag))),
        _ => Err(not_numeric()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn transforms(toml_text: &str) -> Vec<TransformSpec> {
        #[derive(Deserialize)]
        struct List {
            transforms: Vec<TransformSpec>,
        }
        toml::from_str::<List>(toml_text).unwrap().transforms
    }

    #[test]
    fn metric_by_key_reads_nested_keys_and_indices() {
        let specs = transforms(
            r#"
            [[transforms]]
            type = "MetricByKey"
            key = ["obs", "reward"]
            name = "r"
            [[transforms]]
            type = "MetricByKey"
            key = "obs_transform.scheduler.0"
            [[transforms]]
            type = "MetricByKey"
            key = "q"
            idx = 2
            "#,
        );
        let mut builder = RowBuilder::new(specs, 3);
        let sample = json!({"obs": {"reward": [1.5]}, "obs_transform.scheduler.0": 0.25, "q": [[1, 2, 3]]});
        let row = builder.row(&sample, &mut Vec::new()).unwrap();
        assert_eq!(row, vec![1.5, 1.5, 0.25, 0.25, 3.0, 3.0]);
    }

    #[test]
    fn compare_value_applies_scale_offset_and_op() {
        let specs = transforms(
            r#"
            [[transforms]]
            type = "CompareValue"
            key = "r"
            name = "wins"
            value = 10
            op = "ge"
            scale = 2.0
            offset = 1.0
            "#,
        );
        let mut builder = RowBuilder::new(specs, 2);
        let mut faults = Vec::new();
        assert_eq!(builder.row(&json!({"r": 4.5}), &mut faults).unwrap(), vec![1.0, 1.0]);
        assert_eq!(builder.row(&json!({"r": 4.0}), &mut faults).unwrap(), vec![0.0, 0.5]);
    }

    #[test]
    fn moving_average_uses_a_partial_window_then_the_last_n_values() {
        let specs = transforms("[[transforms]]\ntype = \"MetricByKey\"\nkey = \"x\"\n");
        let mut builder = RowBuilder::new(specs, 2);
        let averages: Vec<f64> = [1.0, 3.0, 5.0].iter().map(|x| builder.row(&json!({ "x": x }), &mut Vec::new()).unwrap()[1]).collect();
        assert_eq!(averages, vec![1.0, 2.0, 4.0]);
    }

    #[test]
    fn a_history_with_an_absurd_timer_or_window_resumes_without_a_panic() {
        let specs = transforms("[[transforms]]\ntype = \"Timer\"\n[[transforms]]\ntype = \"MetricByKey\"\nkey = \"x\"\n");
        for timer in [1e20, f64::INFINITY, -5.0, f64::NAN] {
            let mut history = crate::history::History::new(series_names(&specs));
            history.push_row(0, &[timer, timer, 1.0, 1.0]).unwrap();
            history.commit().unwrap();
            let mut builder = RowBuilder::new(specs.clone(), usize::MAX);
            builder.resume(&history.snapshot());
            let row = builder.row(&json!({ "x": 3.0 }), &mut Vec::new()).unwrap();
            assert!(row[0].is_finite() && row[0] >= 0.0, "{timer}: the timer restarts, {row:?}");
            assert_eq!(row[3], 2.0, "the average of 1 and 3 over a window of usize::MAX");
        }
    }

    #[test]
    fn unreadable_values_become_nan_and_are_reported() {
        let specs =
            transforms("[[transforms]]\ntype = \"MetricByKey\"\nkey = \"x\"\n[[transforms]]\ntype = \"MetricByKey\"\nkey = \"y\"\n");
        let mut builder = RowBuilder::new(specs, 2);
        let mut faults = Vec::new();
        let row = builder.row(&json!({"x": 1, "y": "text"}), &mut faults).unwrap();
        assert!(row[2].is_nan());
        assert_eq!(faults, vec![Fault::NotNumeric("y".into())]);
        assert_eq!(builder.row(&json!({"z": 1}), &mut faults), Err(Fault::MissingKey("x".into())));
    }
}
