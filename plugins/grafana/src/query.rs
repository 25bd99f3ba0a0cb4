//! The data endpoints: metric lists, `/query`, variables, tags and the simple-json
//! `/search`.

use serde_json::{Map, Value, json};

use crate::numbers::{push_integer, push_number};
use crate::{Answer, Settings, dates};
use telemetry_plugin::history::{self, HistoryError, Span, TimeRange};

/// Payload options of every metric: the x axis and the answer format.
const X_AXIS: &str = "x_axis";
const FORMAT: &str = "format";

fn payload_option_values(name: &str, settings: &Settings) -> Vec<Value> {
    match name {
        X_AXIS => {
            let mut options = vec![json!({ "label": "Wall time", "value": "time" })];
            if let Some(step) = &settings.step_series {
                options.push(json!({ "label": format!("Step ({step}) as time"), "value": "step" }));
            }
            options
        }
        FORMAT => vec![json!({ "label": "Time series", "value": "time_series" }), json!({ "label": "Table", "value": "table" })],
        _ => Vec::new(),
    }
}

pub fn metrics(settings: &Settings) -> Value {
    let payloads = json!([
        { "name": X_AXIS, "label": "X axis", "type": "select", "options": payload_option_values(X_AXIS, settings) },
        { "name": FORMAT, "label": "Format", "type": "select", "options": payload_option_values(FORMAT, settings) },
    ]);
    Value::Array(history::series_names().into_iter().map(|name| json!({ "value": name, "label": name, "payloads": payloads })).collect())
}

pub fn payload_options(body: &Value, settings: &Settings) -> Value {
    Value::Array(payload_option_values(body["name"].as_str().unwrap_or(""), settings))
}

/// The ad hoc filter key this endpoint advertises: the series name.
pub const SERIES_KEY: &str = "series";

pub fn tag_values(body: &Value) -> Value {
    match body["key"].as_str() {
        Some(SERIES_KEY) => Value::Array(history::series_names().into_iter().map(|name| json!({ "text": name })).collect()),
        _ => json!([]),
    }
}

/// One ad hoc filter (`filters`, or the older `adhocFilters`), on the series name. A key
/// other than `series` is a label no series has, so its value is the empty string, as
/// Prometheus treats a missing label.
struct Filter {
    on_series: bool,
    negated: bool,
    test: FilterTest,
}

enum FilterTest {
    Equals(String),
    Matches(regex_lite::Regex),
}

impl Filter {
    fn parse(filter: &Value, index: usize) -> Result<Filter, Answer> {
        let field = |name: &str| {
            filter[name].as_str().ok_or_else(|| Answer::error(400, "bad_filter", &format!("filters[{index}].{name} must be a string")))
        };
        let (key, operator, value) = (field("key")?, field("operator")?, field("value")?);
        let (negated, test) = match operator {
            "=" | "!=" => (operator == "!=", FilterTest::Equals(value.to_string())),
            "=~" | "!~" => {
                let regex = regex_lite::Regex::new(&format!("^(?:{value})$")).map_err(|error| {
                    Answer::error(400, "bad_filter", &format!("filters[{index}]: `{value}` is not a valid regex: {error}"))
                })?;
                (operator == "!~", FilterTest::Matches(regex))
            }
            other => {
                return Err(Answer::error(
                    400,
                    "bad_filter",
                    &format!("filters[{index}]: operator `{other}` does not apply to series names (use =, !=, =~ or !~)"),
                ));
            }
        };
        Ok(Filter { on_series: key == SERIES_KEY, negated, test })
    }

    fn admits(&self, series: &str) -> bool {
        let value = if self.on_series { series } else { "" };
        let hit = match &self.test {
            FilterTest::Equals(expected) => value == expected,
            FilterTest::Matches(regex) => regex.is_match(value),
        };
        hit != self.negated
    }
}

fn filters(body: &Value) -> Result<Vec<Filter>, Answer> {
    let mut parsed = Vec::new();
    for field in ["filters", "adhocFilters"] {
        match &body[field] {
            Value::Null => {}
            Value::Array(filters) => {
                for (index, filter) in filters.iter().enumerate() {
                    parsed.push(Filter::parse(filter, index)?);
                }
            }
            _ => return Err(Answer::error(400, "bad_filter", &format!("`{field}` must be an array"))),
        }
    }
    Ok(parsed)
}

/// Series matching `pattern`: the exact name first, then the pattern as an anchored
/// regex (Grafana sends multi-value variables as `(a|b)`).
fn matching_series(pattern: &str, names: &[String]) -> Result<Vec<String>, Answer> {
    if names.iter().any(|name| name == pattern) {
        return Ok(vec![pattern.to_string()]);
    }
    let regex = regex_lite::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|error| Answer::error(400, "bad_regex", &format!("target `{pattern}` is neither a series nor a valid regex: {error}")))?;
    Ok(names.iter().filter(|name| regex.is_match(name)).cloned().collect())
}

/// Series a lookup (variable, search) names: like a query target, but a pattern that is
/// no valid regex is taken literally, since these answer lists, not data.
fn lookup_series(pattern: &str, names: Vec<String>) -> Vec<String> {
    if pattern.is_empty() || pattern == "*" {
        return names;
    }
    matching_series(pattern, &names).unwrap_or_else(|_| names.into_iter().filter(|name| name.contains(pattern)).collect())
}

pub fn variable(body: &Value) -> Result<Value, Answer> {
    let target = body["payload"]["target"].as_str().or_else(|| body["target"].as_str()).unwrap_or("");
    let selected = lookup_series(target, history::series_names());
    Ok(Value::Array(selected.into_iter().map(|name| json!({ "__text": name, "__value": name, "text": name, "value": name })).collect()))
}

pub fn search(body: &Value) -> Result<Value, Answer> {
    let names = history::series_names();
    let target = body["target"].as_str().unwrap_or("");
    let mut selected = lookup_series(target, names.clone());
    if selected.is_empty() {
        selected = names.into_iter().filter(|name| name.contains(target)).collect();
    }
    Ok(json!(selected))
}

/// `maxDataPoints` made usable: absent, zero, negative or not a number gives the default;
/// fractions round down; anything above the limit is the limit.
fn max_points(value: &Value, settings: &Settings) -> u32 {
    match value.as_f64() {
        Some(points) if points.is_finite() && points >= 1.0 => points.min(f64::from(settings.max_points_limit)).floor() as u32,
        _ => settings.default_points.min(settings.max_points_limit),
    }
}

fn time_span(body: &Value) -> Result<Span, Answer> {
    let range = &body["range"];
    if !range.is_object() {
        return Ok(Span::All);
    }
    let bound = |key: &str| -> Result<Option<i64>, Answer> {
        match &range[key] {
            Value::Null => Ok(None),
            value => {
                dates::epoch_ms(value).map(Some).map_err(|message| Answer::error(400, "bad_range", &format!("range.{key}: {message}")))
            }
        }
    };
    let (from, to) = (bound("from")?, bound("to")?);
    let (from_ms, to_ms) = (from.unwrap_or(i64::MIN), to.unwrap_or(i64::MAX));
    // `from` after `to` is an empty range: no points, as Grafana expects of a time filter.
    Ok(Span::Time(TimeRange { from_ms, to_ms }))
}

fn number_or_null(value: f64) -> Value {
    serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
}

fn history_error(error: HistoryError) -> Answer {
    let message = match error {
        HistoryError::UnknownSeries(message) | HistoryError::OutOfRange(message) => message,
    };
    Answer::error(400, "bad_target", &message)
}

fn push_string(out: &mut String, text: &str) {
    out.push_str(&serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into()));
}

/// One series of the answer, written straight to JSON text: a thousand points per
/// series would otherwise be a thousand small allocations.
fn push_series(out: &mut String, series: &str, ref_id: &str, times_ms: &[i64], values: &[f64], table: bool) {
    if table {
        out.push_str("{\"type\":\"table\",\"refId\":");
        push_string(out, ref_id);
        out.push_str(",\"target\":");
        push_string(out, series);
        out.push_str(",\"columns\":[{\"text\":\"Time\",\"type\":\"time\"},{\"text\":");
        push_string(out, series);
        out.push_str(",\"type\":\"number\"}],\"rows\":[");
    } else {
        out.push_str("{\"target\":");
        push_string(out, series);
        out.push_str(",\"refId\":");
        push_string(out, ref_id);
        out.push_str(",\"datapoints\":[");
    }
    out.reserve(times_ms.len() * 36);
    for (index, (time, value)) in times_ms.iter().zip(values).enumerate() {
        out.push_str(if index > 0 { ",[" } else { "[" });
        if table {
            push_integer(out, *time);
            out.push(',');
            push_number(out, *value);
        } else {
            push_number(out, *value);
            out.push(',');
            push_integer(out, *time);
        }
        out.push(']');
    }
    out.push_str("]}");
}

/// The answer to `/query`, as JSON text.
pub fn query(body: &Value, settings: &Settings) -> Result<String, Answer> {
    let points = max_points(&body["maxDataPoints"], settings);
    let Some(targets) = body.get("targets") else {
        return Ok(if settings.original_untargeted_answer { legacy_answer(points).to_string() } else { "[]".into() });
    };
    let Some(targets) = targets.as_array() else {
        return Err(Answer::error(400, "bad_request", "`targets` must be an array"));
    };
    let span = time_span(body)?;
    let filters = filters(body)?;
    let names = history::series_names();
    let mut step_window: Option<Option<StepWindow>> = None;
    let mut answer = String::with_capacity(64 + points as usize * 40);
    answer.push('[');
    for target in targets {
        if target["hide"].as_bool() == Some(true) {
            continue;
        }
        let Some(pattern) = target["target"].as_str().filter(|pattern| !pattern.is_empty()) else {
            continue;
        };
        let ref_id = target["refId"].as_str().unwrap_or("A");
        let payload = &target["payload"];
        let by_step = payload[X_AXIS].as_str() == Some("step");
        let table = payload[FORMAT].as_str() == Some("table") || target["type"].as_str() == Some("table");
        for series in matching_series(pattern, &names)?.into_iter().filter(|series| filters.iter().all(|filter| filter.admits(series))) {
            // The host's points come in row order, and row timestamps never go backwards.
            let (times_ms, values) = if by_step {
                if step_window.is_none() {
                    step_window = Some(StepWindow::of(span, settings)?);
                }
                match step_window.as_ref().and_then(Option::as_ref) {
                    Some(window) => window.points(&series, points)?,
                    None => (Vec::new(), Vec::new()),
                }
            } else {
                let read = history::downsample(&series, span, points).map_err(history_error)?;
                (read.timestamps_ms, read.values)
            };
            if answer.len() > 1 {
                answer.push(',');
            }
            push_series(&mut answer, &series, ref_id, &times_ms, &values, table);
        }
    }
    answer.push(']');
    Ok(answer)
}

/// The step axis: steps placed on the run's own wall-clock span, its smallest step at the
/// time of the run's first row and its largest at the time of its last, linearly between.
/// A time series panel then shows the run inside the dashboard's time range, spaced by
/// steps, and the range selects steps through the same mapping.
struct StepAxis {
    first_ms: i64,
    last_ms: i64,
    min_step: f64,
    max_step: f64,
}

impl StepAxis {
    /// The axis of the run so far; `None` while no row has a step.
    fn of_run(step: &str) -> Result<Option<StepAxis>, Answer> {
        // Five points of the whole run: its first and last rows and the step's extremes.
        let read = history::downsample(step, Span::All, 5).map_err(history_error)?;
        let (Some(first_ms), Some(last_ms)) = (read.timestamps_ms.first(), read.timestamps_ms.last()) else {
            return Ok(None);
        };
        let finite = read.values.iter().copied().filter(|step| step.is_finite());
        let (min_step, max_step) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), step| (low.min(step), high.max(step)));
        Ok((min_step <= max_step).then_some(StepAxis { first_ms: *first_ms, last_ms: *last_ms, min_step, max_step }))
    }

    fn time_of(&self, step: f64) -> i64 {
        if self.max_step == self.min_step {
            return self.first_ms;
        }
        let fraction = (step - self.min_step) / (self.max_step - self.min_step);
        self.first_ms + (fraction * (self.last_ms - self.first_ms) as f64).round() as i64
    }

    fn step_at(&self, time_ms: i64) -> f64 {
        if self.last_ms == self.first_ms {
            return if time_ms < self.first_ms { f64::NEG_INFINITY } else { self.max_step };
        }
        let fraction = (time_ms - self.first_ms) as f64 / (self.last_ms - self.first_ms) as f64;
        self.min_step + fraction * (self.max_step - self.min_step)
    }
}

/// The step axis of one query: the mapping, the steps its time range selects and the rows
/// that may hold them, worked out once for every series the query asks.
struct StepWindow {
    step: String,
    axis: StepAxis,
    from_step: f64,
    to_step: f64,
    rows: Span,
}

impl StepWindow {
    /// `None` while no row has a step.
    fn of(span: Span, settings: &Settings) -> Result<Option<StepWindow>, Answer> {
        let Some(step) = &settings.step_series else {
            return Err(Answer::error(400, "bad_payload", "x_axis `step` needs telemetry.step_key in the host configuration"));
        };
        let Some(axis) = StepAxis::of_run(step)? else {
            return Ok(None);
        };
        let (from_step, to_step) = match span {
            Span::Time(range) => (axis.step_at(range.from_ms), axis.step_at(range.to_ms)),
            _ => (f64::NEG_INFINITY, f64::INFINITY),
        };
        let rows = step_rows(step, from_step, to_step)?;
        Ok(Some(StepWindow { step: step.clone(), axis, from_step, to_step, rows }))
    }

    /// Points of `series` on the step axis within the window, sorted by time, no two at
    /// one millisecond.
    fn points(&self, series: &str, points: u32) -> Result<(Vec<i64>, Vec<f64>), Answer> {
        let read = history::downsample(series, self.rows, points).map_err(history_error)?;
        let steps = history::read_at(&self.step, &read.rows).map_err(history_error)?;
        let mut pairs: Vec<(i64, f64)> = steps
            .iter()
            .zip(read.values)
            .filter(|(step, _)| (self.from_step..=self.to_step).contains(*step))
            .map(|(step, value)| (self.axis.time_of(*step), value))
            .collect();
        pairs.sort_by_key(|(time, _)| *time);
        // Distinct steps closer than a millisecond: one millisecond apart, as the host does
        // with rows, so a panel joining series on time keeps them all.
        for index in 1..pairs.len() {
            pairs[index].0 = pairs[index].0.max(pairs[index - 1].0 + 1);
        }
        Ok(pairs.into_iter().unzip())
    }
}

/// The rows whose step may lie in `from_step..=to_step`, from a coarse read of the step
/// series (a step counter grows with rows; a row out of order near the edges may be
/// missed, never one far inside).
fn step_rows(step: &str, from_step: f64, to_step: f64) -> Result<Span, Answer> {
    if from_step == f64::NEG_INFINITY && to_step == f64::INFINITY {
        return Ok(Span::All);
    }
    let coarse = history::downsample(step, Span::All, 4096).map_err(history_error)?;
    let picked = || coarse.rows.iter().zip(&coarse.values).filter(|(_, step)| step.is_finite());
    let first = picked().filter(|(_, step)| **step < from_step).map(|(row, _)| *row).next_back().unwrap_or(0);
    let last = picked().filter(|(row, step)| **row > first && **step > to_step).map(|(row, _)| *row).next();
    let last = last.unwrap_or_else(|| history::row_count().saturating_sub(1));
    Ok(Span::Rows(history::RowRange { first, count: last.saturating_sub(first) + 1 }))
}

/// The original connector's answer to a request without `targets`: an object of every
/// series, each cut to at most `points` evenly spaced rows of the whole history.
fn legacy_answer(points: u32) -> Value {
    let rows = history::row_count();
    let picks: Vec<u64> = match rows {
        0 => Vec::new(),
        _ if rows <= u64::from(points) => (0..rows).collect(),
        _ if points == 1 => vec![0],
        _ => (0..u64::from(points)).map(|index| index * (rows - 1) / u64::from(points - 1)).collect(),
    };
    let mut object = Map::new();
    for name in history::series_names() {
        let values = history::read_at(&name, &picks).unwrap_or_default();
        let values: Vec<Value> = values.into_iter().map(number_or_null).collect();
        object.insert(name, Value::Array(values));
    }
    Value::Object(object)
}
