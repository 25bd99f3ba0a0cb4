//! The Grafana connector: every endpoint in isolation, then end to end through the host's
//! HTTP server, and conformance to its OpenAPI document with schemathesis.

use std::time::Duration;

use serde_json::{Value, json};
use telemetry_suite::{PluginSpec, TestHost};
use telemetry_testkit::{IsolatedPlugin, IsolationOptions, connector, rfc3339 as iso};

const SERIES: usize = 10;
const T0: i64 = 1_700_000_000_000;

fn grafana() -> IsolatedPlugin {
    grafana_with("")
}

/// The connector started with `config` (TOML) as its `[plugins.grafana.config]`.
fn grafana_with(config: &str) -> IsolatedPlugin {
    let options = IsolationOptions { plugin_config: toml::from_str(config).unwrap(), ..IsolationOptions::default() };
    let mut plugin = IsolatedPlugin::load(&connector("grafana"), options).unwrap();
    plugin.start().unwrap();
    plugin
}

/// Appends rows at `T0 + index * 1000` ms whose `rewards` (column 0) is `value(index)`
/// and every other series the index.
fn push_rows(plugin: &mut IsolatedPlugin, count: usize, value: impl Fn(usize) -> f64) {
    let history = plugin.history_mut();
    let start = history.row_count() as usize;
    for index in start..start + count {
        let mut row = vec![index as f64; SERIES];
        row[0] = value(index);
        history.push_row(T0 + index as i64 * 1000, &row).unwrap();
    }
    history.commit().unwrap();
}

fn post(plugin: &mut IsolatedPlugin, path: &str, body: Value) -> (u16, Value) {
    let response = plugin.request("POST", path, body.to_string().as_bytes()).unwrap();
    (response.status, serde_json::from_slice(&response.body).unwrap_or(Value::Null))
}

fn query(targets: Value, from: i64, to: i64, max_points: Value) -> Value {
    json!({ "range": { "from": iso(from), "to": iso(to), "raw": { "from": "now-1h", "to": "now" } }, "maxDataPoints": max_points, "targets": targets, "intervalMs": 1000 })
}

#[test]
fn health_metrics_and_options() {
    let mut plugin = grafana();
    let response = plugin.request("GET", "/", b"").unwrap();
    assert_eq!((response.status, response.body.as_slice()), (200, b"OK".as_slice()));
    let (status, metrics) = post(&mut plugin, "/metrics", json!({}));
    assert_eq!(status, 200);
    let names: Vec<&str> = metrics.as_array().unwrap().iter().map(|metric| metric["value"].as_str().unwrap()).collect();
    assert_eq!(names[..3], ["rewards", "rewards_av", "steps"]);
    assert_eq!(metrics[0]["payloads"][0]["name"], "x_axis");
    let (_, options) = post(&mut plugin, "/metric-payload-options", json!({ "metric": "rewards", "payload": {}, "name": "format" }));
    assert_eq!(options, json!([{ "label": "Time series", "value": "time_series" }, { "label": "Table", "value": "table" }]));
    let (_, search) = post(&mut plugin, "/search", json!({ "target": "" }));
    assert_eq!(search.as_array().unwrap().len(), SERIES);
    assert!(search.as_array().unwrap().contains(&json!("n_env_steps")), "the original's cut-suffix bug is gone");
    let (_, values) = post(&mut plugin, "/variable", json!({ "payload": { "target": "rewards.*" } }));
    assert_eq!(values[1]["__value"], "rewards_av");
    let (_, keys) = post(&mut plugin, "/tag-keys", json!({}));
    assert_eq!(keys, json!([{ "type": "string", "text": "series" }]));
    let (_, annotations) = post(&mut plugin, "/annotations", json!({}));
    assert_eq!(annotations, json!([]));
}

#[test]
fn query_filters_the_range_inclusively_at_both_edges() {
    let mut plugin = grafana();
    push_rows(&mut plugin, 100, |index| index as f64);
    let (status, answer) =
        post(&mut plugin, "/query", query(json!([{ "target": "rewards", "refId": "A" }]), T0 + 10_000, T0 + 20_000, json!(1000)));
    assert_eq!(status, 200);
    let points = answer[0]["datapoints"].as_array().unwrap();
    assert_eq!(points.len(), 11);
    assert_eq!(points[0], json!([10.0, T0 + 10_000]));
    assert_eq!(points[10], json!([20.0, T0 + 20_000]));
    assert_eq!(answer[0]["target"], "rewards");
    assert_eq!(answer[0]["refId"], "A");
    // One millisecond inside each edge drops both edge rows.
    let (_, answer) =
        post(&mut plugin, "/query", query(json!([{ "target": "rewards", "refId": "A" }]), T0 + 10_001, T0 + 19_999, json!(1000)));
    assert_eq!(answer[0]["datapoints"].as_array().unwrap().len(), 9);
}

#[test]
fn downsampling_keeps_spikes_first_last_and_gaps_as_null() {
    let mut plugin = grafana();
    push_rows(&mut plugin, 100_000, |index| match index {
        31_337 => 1e9,
        77_777 => -1e9,
        5 => f64::NAN,
        _ => (index % 7) as f64,
    });
    let request = query(json!([{ "target": "rewards", "refId": "A" }]), T0, T0 + 100_000_000, json!(200));
    let (_, answer) = post(&mut plugin, "/query", request);
    let points = answer[0]["datapoints"].as_array().unwrap();
    assert!(points.len() <= 200, "{}", points.len());
    assert_eq!(points[0][1], json!(T0));
    assert_eq!(points.last().unwrap()[1], json!(T0 + 99_999_000));
    assert!(points.contains(&json!([1e9, T0 + 31_337_000])));
    assert!(points.contains(&json!([-1e9, T0 + 77_777_000])));
    assert!(points.windows(2).all(|pair| pair[0][1].as_i64() < pair[1][1].as_i64()), "sorted by time");
    // The gap at row 5 shows in a narrow range.
    let (_, answer) = post(&mut plugin, "/query", query(json!([{ "target": "rewards", "refId": "A" }]), T0, T0 + 9_000, json!(100)));
    assert_eq!(answer[0]["datapoints"][5], json!([null, T0 + 5_000]));
}

/// A run of missing values (rows 2,000-2,099) shows as a null at every zoom, not only
/// where it touches a bucket edge.
#[test]
fn a_gap_is_a_null_at_every_zoom() {
    let mut plugin = grafana();
    push_rows(&mut plugin, 100_000, |index| if (2_000..2_100).contains(&index) { f64::NAN } else { (index % 13) as f64 });
    let in_gap = |point: &Value| point[0].is_null() && (T0 + 2_000_000..T0 + 2_100_000).contains(&point[1].as_i64().unwrap());
    let mut zooms = 0;
    for (from_row, to_row) in [(0, 99_999), (0, 9_999), (1_000, 3_000), (1_990, 2_110), (1_500, 50_000)] {
        for max_points in [5, 7, 10, 50, 100, 333, 1000] {
            let range = (T0 + from_row * 1000, T0 + to_row * 1000);
            let request = query(json!([{ "target": "rewards", "refId": "A" }]), range.0, range.1, json!(max_points));
            let (_, answer) = post(&mut plugin, "/query", request);
            let points = answer[0]["datapoints"].as_array().unwrap();
            assert!(points.len() <= max_points, "rows {from_row}-{to_row} at {max_points}: {} points", points.len());
            assert!(points.iter().any(in_gap), "rows {from_row}-{to_row} at {max_points} points: no null in {points:?}");
            assert_eq!(points.iter().filter(|point| point[0].is_null()).count(), points.iter().filter(|point| in_gap(point)).count());
            zooms += 1;
        }
    }
    assert_eq!(zooms, 35);
}

/// `maxDataPoints` 1 to 3 keep the extremes first, then the last point.
#[test]
fn one_to_three_points_keep_the_extremes_then_the_last() {
    let mut plugin = grafana();
    push_rows(&mut plugin, 10_000, |index| match index {
        4_321 => 1e6,
        8_765 => -1e6,
        _ => (index % 10) as f64,
    });
    let expected = [
        vec![json!([1e6, T0 + 4_321_000])],
        vec![json!([1e6, T0 + 4_321_000]), json!([-1e6, T0 + 8_765_000])],
        vec![json!([1e6, T0 + 4_321_000]), json!([-1e6, T0 + 8_765_000]), json!([9.0, T0 + 9_999_000])],
    ];
    for (max_points, points) in (1..).zip(expected) {
        let request = query(json!([{ "target": "rewards", "refId": "A" }]), T0, T0 + 10_000_000, json!(max_points));
        let (_, answer) = post(&mut plugin, "/query", request);
        assert_eq!(answer[0]["datapoints"], json!(points), "{max_points} points");
    }
}

#[test]
fn absurd_max_data_points_are_clamped() {
    let mut plugin = grafana();
    push_rows(&mut plugin, 20_000, |index| index as f64);
    for (max_points, expected_at_most) in [(json!(0), 1000), (json!(-5), 1000), (json!(2.7), 2), (json!(1e308), 10_000)] {
        let (status, answer) =
            post(&mut plugin, "/query", query(json!([{ "target": "rewards", "refId": "A" }]), T0, T0 + 100_000_000, max_points.clone()));
        assert_eq!(status, 200, "{max_points}");
        let count = answer[0]["datapoints"].as_array().unwrap().len();
        assert!(count >= 1 && count <= expected_at_most, "{max_points}: {count}");
    }
    let (status, _) = post(&mut plugin, "/query", query(json!([{ "target": "rewards" }]), T0, T0 + 1, json!("many")));
    assert_eq!(status, 400, "a maxDataPoints that is not a number is refused");
}

#[test]
fn regex_targets_hidden_targets_and_tables() {
    let mut plugin = grafana();
    push_rows(&mut plugin, 10, |index| index as f64);
    let targets = json!([
        { "target": "(rewards|steps)", "refId": "A" },
        { "target": "wins", "refId": "B", "hide": true },
        { "target": "time_av", "refId": "C", "payload": { "format": "table" } },
    ]);
    let (_, answer) = post(&mut plugin, "/query", query(targets, T0, T0 + 1_000_000, json!(100)));
    let items = answer.as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!((items[0]["target"].as_str(), items[0]["refId"].as_str()), (Some("rewards"), Some("A")));
    assert_eq!((items[1]["target"].as_str(), items[1]["refId"].as_str()), (Some("steps"), Some("A")));
    assert_eq!(items[2]["type"], "table");
    assert_eq!(items[2]["refId"], "C");
    assert_eq!(items[2]["columns"][1]["text"], "time_av");
    assert_eq!(items[2]["rows"][3], json!([T0 + 3000, 3.0]));
}

/// The names `/query` answers for `(rewards|rewards_av|steps)` under ad hoc `filters`.
fn filtered(plugin: &mut IsolatedPlugin, field: &str, filters: Value) -> (u16, Value) {
    let mut body = query(json!([{ "target": "(rewards|rewards_av|steps)", "refId": "A" }]), T0, T0 + 100_000, json!(100));
    body[field] = filters;
    let (status, answer) = post(plugin, "/query", body);
    if status != 200 {
        return (status, answer);
    }
    (status, answer.as_array().unwrap().iter().map(|item| item["target"].clone()).collect())
}

#[test]
fn ad_hoc_filters_on_the_series_key_with_every_operator() {
    let mut plugin = grafana();
    push_rows(&mut plugin, 10, |index| index as f64);
    let filter = |operator: &str, value: &str| json!([{ "key": "series", "operator": operator, "value": value }]);
    for field in ["filters", "adhocFilters"] {
        assert_eq!(filtered(&mut plugin, field, filter("=", "steps")), (200, json!(["steps"])), "{field}");
        assert_eq!(filtered(&mut plugin, field, filter("!=", "steps")), (200, json!(["rewards", "rewards_av"])), "{field}");
        assert_eq!(filtered(&mut plugin, field, filter("=~", "rewards.*")), (200, json!(["rewards", "rewards_av"])), "{field}");
        // Anchored, as Grafana's Prometheus filters are: `reward` matches no whole name.
        assert_eq!(filtered(&mut plugin, field, filter("=~", "reward")), (200, json!([])), "{field}");
        assert_eq!(filtered(&mut plugin, field, filter("!~", "rewards.*")), (200, json!(["steps"])), "{field}");
    }
    // Several filters all apply.
    let both = json!([
        { "key": "series", "operator": "=~", "value": "rewards.*" },
        { "key": "series", "operator": "!=", "value": "rewards_av" },
    ]);
    assert_eq!(filtered(&mut plugin, "filters", both), (200, json!(["rewards"])));
    // A key no series has reads as the empty value.
    let other = |operator: &str| json!([{ "key": "worker", "operator": operator, "value": "w1" }]);
    assert_eq!(filtered(&mut plugin, "filters", other("=")), (200, json!([])));
    assert_eq!(filtered(&mut plugin, "filters", other("!=")), (200, json!(["rewards", "rewards_av", "steps"])));
    // What cannot apply is a 400 that says why.
    let (status, answer) = filtered(&mut plugin, "filters", filter("<", "3"));
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["code"], "bad_filter");
    assert!(answer["error"]["message"].as_str().unwrap().contains("operator `<`"), "{answer}");
    let (status, answer) = filtered(&mut plugin, "adhocFilters", filter("=~", "(unclosed"));
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("bad_filter")));
    let (status, _) = filtered(&mut plugin, "filters", json!({ "key": "series" }));
    assert_eq!(status, 400);
}

#[test]
fn tag_values_answer_for_the_key_asked() {
    let mut plugin = grafana();
    push_rows(&mut plugin, 3, |index| index as f64);
    let (status, keys) = post(&mut plugin, "/tag-keys", json!({}));
    assert_eq!((status, keys[0]["text"].as_str()), (200, Some("series")));
    let (_, values) = post(&mut plugin, "/tag-values", json!({ "key": "series" }));
    let names: Vec<&str> = values.as_array().unwrap().iter().filter_map(|value| value["text"].as_str()).collect();
    assert!(names.contains(&"rewards") && names.contains(&"n_env_steps"), "{values}");
    assert_eq!(post(&mut plugin, "/tag-values", json!({ "key": "worker" })), (200, json!([])));
}

#[test]
fn a_trailing_slash_in_the_datasource_url_and_a_lowercase_scheme_still_work() {
    let mut plugin = grafana_with("basic_auth = \"grafana:pw\"\n");
    // "grafana:pw" in base64.
    let with = |target: &str, authorization: &str| telemetry_testkit::Request {
        method: "POST".into(),
        target: target.into(),
        query: String::new(),
        headers: vec![("Authorization".into(), authorization.into())],
        body: b"{}".to_vec(),
    };
    for authorization in ["Basic Z3JhZmFuYTpwdw==", "basic Z3JhZmFuYTpwdw==", "BASIC  Z3JhZmFuYTpwdw=="] {
        assert_eq!(plugin.request_raw(&with("/metrics", authorization)).unwrap().status, 200, "{authorization}");
    }
    assert_eq!(plugin.request_raw(&with("//metrics", "Basic Z3JhZmFuYTpwdw==")).unwrap().status, 200);
    assert_eq!(plugin.request_raw(&with("/metrics", "basic Z3JhZmFuYTp3cm9uZw==")).unwrap().status, 401);
}

#[test]
fn step_x_axis_maps_steps_onto_the_runs_span_and_applies_the_range_in_steps() {
    let mut plugin = grafana();
    // 101 rows one second apart whose step (n_env_steps, column 4, the default step key)
    // grows as 10 * row^2: from 0 to 100,000 over the run's 100 s, so step s sits at
    // T0 + s ms.
    let history = plugin.history_mut();
    for index in 0..=100 {
        let mut row = vec![index as f64; SERIES];
        row[4] = (10 * index * index) as f64;
        history.push_row(T0 + index as i64 * 1000, &row).unwrap();
    }
    history.commit().unwrap();
    let targets = json!([{ "target": "rewards", "refId": "A", "payload": { "x_axis": "step" } }]);
    let (_, whole) = post(&mut plugin, "/query", query(targets.clone(), T0 - 3_600_000, T0 + 3_600_000, json!(1000)));
    let points = whole[0]["datapoints"].as_array().unwrap();
    assert_eq!(points.len(), 101, "every point inside the dashboard's range");
    assert_eq!(points[50], json!([50.0, T0 + 25_000]));
    assert_eq!(points[100], json!([100.0, T0 + 100_000]));
    // Steps 25,000 to 50,000 through the same mapping: rows 50 to 70.
    let (_, zoomed) = post(&mut plugin, "/query", query(targets, T0 + 25_000, T0 + 50_000, json!(1000)));
    let expected: Vec<Value> = (50..=70).map(|index| json!([index as f64, T0 + 10 * index * index])).collect();
    assert_eq!(zoomed[0]["datapoints"], json!(expected));
}

/// The shipped dashboard, asked what simPod's plugin (0.6 and later) asks of it: its
/// variable stored as `{query, format}` (a `string` query sent as `{payload: {target}}`)
/// and every panel's targets, which all get points.
#[test]
fn the_shipped_dashboard_works_as_simpods_plugin_reads_it() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/grafana/dashboards/training-run.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut plugin = grafana();
    push_rows(&mut plugin, 300, |index| index as f64);
    let variable = &dashboard["templating"]["list"][0];
    let stored = &variable["query"];
    assert_eq!(stored["format"], "string", "the variable is stored in the shape simPod's editor writes: {stored}");
    let payload = json!({ "target": stored["query"].as_str().expect("a string query") });
    let (status, values) = post(&mut plugin, "/variable", json!({ "payload": payload, "range": {} }));
    assert_eq!(status, 200);
    let listed: Vec<&str> = values.as_array().unwrap().iter().map(|value| value["__value"].as_str().unwrap()).collect();
    assert!(listed.contains(&"rewards") && listed.contains(&"rewards_av") && listed.len() >= SERIES, "{listed:?}");
    for panel in dashboard["panels"].as_array().unwrap() {
        let targets: Vec<Value> = panel["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|target| {
                let mut target = target.clone();
                // The variable's current value, as Grafana interpolates it.
                if target["target"] == "$series" {
                    target["target"] = json!("rewards_av");
                }
                target
            })
            .collect();
        let (status, answer) = post(&mut plugin, "/query", query(json!(targets), T0, T0 + 299_000, json!(800)));
        assert_eq!(status, 200, "panel {}: {answer}", panel["title"]);
        let answered = answer.as_array().unwrap();
        assert_eq!(answered.len(), targets.len(), "panel {}: one series per target", panel["title"]);
        for series in answered {
            assert_eq!(series["datapoints"].as_array().unwrap().len(), 300, "panel {}: {}", panel["title"], series["target"]);
        }
    }
}

#[test]
fn a_query_without_targets_is_an_empty_array_as_the_spec_wants() {
    let mut plugin = grafana();
    push_rows(&mut plugin, 10, |index| index as f64);
    assert_eq!(post(&mut plugin, "/query", json!({ "maxDataPoints": 5 })), (200, json!([])));
}

#[test]
fn a_query_without_targets_can_keep_the_original_answer() {
    let mut plugin = grafana_with("original_untargeted_answer = true\n");
    push_rows(&mut plugin, 101, |index| index as f64);
    let (status, answer) = post(&mut plugin, "/query", json!({ "maxDataPoints": 5 }));
    assert_eq!(status, 200);
    assert_eq!(answer["rewards"], json!([0.0, 25.0, 50.0, 75.0, 100.0]));
    assert_eq!(answer.as_object().unwrap().len(), SERIES);
    let options = IsolationOptions {
        plugin_config: toml::from_str("original_untargeted_answer = \"yes\"\n").unwrap(),
        ..IsolationOptions::default()
    };
    let mut plugin = IsolatedPlugin::load(&connector("grafana"), options).unwrap();
    let error = format!("{:?}", plugin.start().unwrap_err());
    assert!(error.contains("`original_untargeted_answer` must be true or false"), "{error}");
}

#[test]
fn bad_requests_get_a_400_with_message_and_error_never_a_500() {
    let mut plugin = grafana();
    push_rows(&mut plugin, 10, |index| index as f64);
    let check = |status: u16, body: &Value, code: &str, needle: &str| {
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(body["message"].as_str().unwrap().contains(needle), "{body}");
    };
    let response = plugin.request("POST", "/query", b"{not json").unwrap();
    check(response.status, &serde_json::from_slice(&response.body).unwrap(), "bad_json", "not valid JSON");
    let (status, body) =
        post(&mut plugin, "/query", json!({ "range": { "from": "yesterday", "to": iso(T0) }, "targets": [{ "target": "rewards" }] }));
    check(status, &body, "bad_range", "range.from: `yesterday` is not an RFC 3339 date");
    let (status, body) = post(&mut plugin, "/query", json!({ "targets": [{ "target": "(rewards" }] }));
    check(status, &body, "bad_regex", "neither a series nor a valid regex");
    let (status, body) =
        post(&mut plugin, "/query", json!({ "range": { "from": iso(T0 + 5000), "to": iso(T0) }, "targets": [{ "target": "rewards" }] }));
    assert_eq!((status, &body[0]["datapoints"]), (200, &json!([])), "from after to is an empty range");
    let response = plugin.request("GET", "/nope", b"").unwrap();
    assert_eq!(response.status, 404);
    let response = plugin.request("GET", "/query", b"").unwrap();
    assert_eq!(response.status, 405);
    assert!(response.headers.contains(&("allow".into(), "POST".into())));
}

#[test]
fn auth_and_cors_come_from_the_config() {
    let mut plugin = grafana_with("bearer_token = \"s3cret\"\ncors_origin = \"*\"\n");
    let response = plugin.request("POST", "/metrics", b"{}").unwrap();
    assert_eq!(response.status, 401);
    assert!(response.headers.iter().any(|(name, value)| name == "access-control-allow-origin" && value == "*"));
    let mut request = telemetry_testkit::Request {
        method: "POST".into(),
        target: "/metrics".into(),
        query: String::new(),
        headers: vec![("Authorization".into(), "Bearer s3cret".into())],
        body: b"{}".to_vec(),
    };
    assert_eq!(plugin.request_raw(&request).unwrap().status, 200);
    request.method = "OPTIONS".into();
    request.headers.clear();
    let preflight = plugin.request_raw(&request).unwrap();
    assert_eq!(preflight.status, 204);
    assert!(preflight.headers.iter().any(|(name, value)| name == "access-control-allow-headers" && value.contains("authorization")));
}

/// A host fed with `rows` samples, its grafana plugin behind the host's HTTP server.
struct ServedGrafana {
    host: TestHost,
    runtime: tokio::runtime::Runtime,
    servers: Vec<telemetry_host::capabilities::http_server::BoundServer>,
    base: String,
}

impl ServedGrafana {
    fn start(rows: u64) -> ServedGrafana {
        let mut host =
            TestHost::start(&[PluginSpec::new("grafana", connector("grafana"), "[grants]\nlisten = { prefix = \"/grafana\" }\n")]);
        host.feed(rows);
        assert!(host.wait_for_cursor("grafana", rows, Duration::from_secs(20)));
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let plugins = host.plugins();
        let servers = runtime.block_on(telemetry_host::capabilities::http_server::serve("127.0.0.1:0", plugins, 1 << 20, None)).unwrap();
        let base = format!("http://{}/grafana", servers[0].address);
        ServedGrafana { host, runtime, servers, base }
    }

    fn shutdown(self) {
        self.runtime.block_on(async {
            for server in self.servers {
                server.shutdown().await;
            }
        });
    }
}

#[test]
fn end_to_end_through_the_host_http_server() {
    let served = ServedGrafana::start(500);
    let base = served.base.clone();
    served.runtime.block_on(async {
        let client = reqwest::Client::new();
        let health = client.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        let answer: Value = client
            .post(format!("{base}/query"))
            .json(&json!({ "targets": [{ "target": "rewards", "refId": "A" }], "maxDataPoints": 100, "range": { "from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z" } }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let points = answer[0]["datapoints"].as_array().unwrap();
        assert!(!points.is_empty() && points.len() <= 100);
        assert_eq!(points[0][0], json!(-50.0), "the first sample's reward");
        let missing = client.post(format!("{base}/../other")).send().await.unwrap();
        assert_eq!(missing.status(), 404);
        // Answered before their bodies are read, so the server closes these connections
        // and says so.
        let outside = client.post(format!("{}/elsewhere", base.trim_end_matches("/grafana"))).body("{}").send().await.unwrap();
        assert_eq!((outside.status().as_u16(), outside.headers().get("connection").unwrap()), (404, &"close".parse().unwrap()));
        let big = client.post(format!("{base}/query")).body(vec![b' '; 2 << 20]).send().await.unwrap();
        assert_eq!((big.status().as_u16(), big.headers().get("connection").unwrap()), (413, &"close".parse().unwrap()));
        let after = client.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(after.status(), 200, "the client's next request gets a fresh connection");
    });
    served.shutdown();
}

fn schemathesis() -> String {
    std::env::var("SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into())
}

/// Runs schemathesis against the running host with the plugin's own OpenAPI document, in
/// the two modes of the reference checklist.
#[test]
fn conforms_to_its_openapi_document_under_schemathesis() {
    let served = ServedGrafana::start(300);
    let base = served.base.clone();
    let spec = served.host.root.path().join("openapi.json");
    let document = served.runtime.block_on(async { reqwest::get(format!("{base}/openapi.json")).await.unwrap().text().await.unwrap() });
    std::fs::write(&spec, document).unwrap();
    // A target that is no valid regex is refused with a 400 on purpose (the panel shows
    // why), which schemathesis' positive_data_acceptance cannot know.
    let common = ["--checks", "all", "--max-examples", "40", "--max-time", "40", "--seed", "1"];
    let runs = [
        ["--mode", "positive", "--exclude-checks", "positive_data_acceptance"],
        ["--mode", "all", "--exclude-checks", "status_code_conformance,positive_data_acceptance"],
    ];
    for args in runs {
        let output = std::process::Command::new(schemathesis())
            .arg("run")
            .arg(&spec)
            .args(["--url", &base])
            .args(args)
            .args(common)
            .env("SCHEMATHESIS_HOOKS", "")
            // Its cache of found failures goes beside the spec, not into the clone.
            .current_dir(served.host.root.path())
            .output()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot run {} ({error}); install it with `pip install schemathesis` or run the tests through .ci/run",
                    schemathesis()
                )
            });
        let text = format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "schemathesis {args:?} failed:\n{text}");
    }
    served.shutdown();
}
