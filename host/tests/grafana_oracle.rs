//! Grafana's own front-end code as the oracle for what a panel shows: the real host binary
//! with the shipped connectors and defaults is fed as workers feed it (a burst of 400
//! samples in one request with a spike, one sample per request from several clients, bulk
//! bodies with a gap), and its Grafana connector's answers for two-series panels go
//! through `@grafana/data`'s `toDataFrame` and `outerJoinDataFrames` (npm, installed by
//! `cargo xtask test`). Every point of every series must survive the join, spikes and
//! nulls included.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::{HostProcess, free_port, host_log, wait_until, write_config};
use telemetry_testkit::rfc3339;

fn post(client: &reqwest::blocking::Client, port: u16, body: String) {
    let response = client.post(format!("http://127.0.0.1:{port}/v1/samples")).body(body).send().unwrap();
    assert_eq!(response.status(), 200);
}

fn sample(reward: Option<f64>, id: u64) -> String {
    let mut sample = json!({ "ep_steps": 100 + id % 50, "total_steps": 1000 * (id + 1) });
    if let Some(reward) = reward {
        sample["ep_reward"] = json!(reward);
    }
    sample.to_string()
}

fn query(client: &reqwest::blocking::Client, port: u16, targets: &[&str], from: i64, to: i64, points: u32, step: bool) -> Value {
    let payload = if step { json!({ "x_axis": "step" }) } else { json!({}) };
    let targets: Vec<Value> =
        targets.iter().zip(["A", "B"]).map(|(target, ref_id)| json!({ "target": target, "refId": ref_id, "payload": payload })).collect();
    let range = json!({ "from": rfc3339(from), "to": rfc3339(to) });
    let body = json!({ "range": range, "maxDataPoints": points, "targets": targets });
    let response = client.post(format!("http://127.0.0.1:{port}/grafana/query")).body(body.to_string()).send().unwrap();
    let status = response.status();
    let text = response.text().unwrap();
    assert_eq!(status, 200, "{body}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// What the oracle says of each answer: its points and how many the join lost.
fn run_oracle(answers: &[Value]) -> Vec<Value> {
    let Some(node_path) = std::env::var_os("GRAFANA_DATA_NODE_PATH") else {
        panic!(
            "this test needs Grafana's @grafana/data from npm: run it through `cargo xtask test` (which installs it with npm \
             into the target directory), or set GRAFANA_DATA_NODE_PATH to a node_modules folder holding it"
        );
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oracle/grafana-join.cjs");
    let mut child = Command::new("node")
        .arg(script)
        .env("NODE_PATH", node_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node, to run @grafana/data");
    child.stdin.take().unwrap().write_all(Value::Array(answers.to_vec()).to_string().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the oracle failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice::<Vec<Value>>(&output.stdout).unwrap()
}

#[test]
fn every_point_of_two_series_panels_survives_grafanas_own_join() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_config(dir.path(), port, "");
    let host = HostProcess::start(dir.path(), port, "none");
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    // A burst: 400 samples in one request, a spike among them.
    let burst: Vec<String> = (0..400).map(|id| sample(Some(if id == 200 { 1e6 } else { (id % 7) as f64 }), id)).collect();
    post(&client, port, burst.join("\n"));
    // One sample per request from six clients at once.
    std::thread::scope(|scope| {
        for worker in 0..6u64 {
            let client = client.clone();
            scope.spawn(move || {
                for index in 0..100 {
                    let id = 400 + worker * 100 + index;
                    post(&client, port, sample(Some((id % 11) as f64), id));
                }
            });
        }
    });
    // Bulk bodies: 100,000 samples, rewards missing for 100 of them (a gap), a dip.
    for body in 0..10u64 {
        let lines: Vec<String> = (0..10_000u64)
            .map(|index| {
                let id = 1000 + body * 10_000 + index;
                let reward = match id {
                    51_000..51_100 => None,
                    77_777 => Some(-1e6),
                    _ => Some((id % 13) as f64),
                };
                sample(reward, id)
            })
            .collect();
        post(&client, port, lines.join("\n"));
    }
    let rows = 101_000.0;
    assert!(wait_until(Duration::from_secs(60), || host.figure("telemetry_rows_stored") == rows), "{}", host_log(dir.path()));

    // Rows run ahead of the wall clock in bursts: the whole run is asked with a wide range.
    let (ever, never) = (0, 4_102_444_800_000);
    let whole = query(&client, port, &["rewards", "rewards_av"], ever, never, 1000, false);
    let times = |answer: &Value| -> Vec<i64> {
        answer[0]["datapoints"].as_array().unwrap().iter().map(|point| point[1].as_i64().unwrap()).collect()
    };
    let (first_ms, last_ms) = (times(&whole)[0], *times(&whole).last().unwrap());
    let points_of = |answer: &Value| answer[0]["datapoints"].as_array().unwrap().clone();
    assert!(points_of(&whole).iter().any(|point| point[0] == json!(1e6)), "the burst's spike");
    assert!(points_of(&whole).iter().any(|point| point[0] == json!(-1e6)), "the dip");
    assert!(points_of(&whole).iter().any(|point| point[0].is_null()), "the gap");

    let mut answers = vec![whole.clone()];
    let burst_answer = query(&client, port, &["rewards", "rewards_av"], first_ms, first_ms + 399, 1000, false);
    assert_eq!(points_of(&burst_answer).len(), 400, "the burst's 400 rows, each at a time of its own");
    answers.push(burst_answer);
    for pair in [["rewards", "rewards_av"], ["steps", "steps_av"]] {
        for points in [100, 1500] {
            answers.push(query(&client, port, &pair, ever, never, points, false));
            answers.push(query(&client, port, &pair, ever, never, points, true));
        }
        let width = (last_ms - first_ms) / 10;
        for window in 0..10 {
            let from = first_ms + window * width;
            answers.push(query(&client, port, &pair, from, from + width, 400, false));
        }
    }
    let mut report = run_oracle(&answers);
    let mut checked = 0;
    for (index, entry) in report.iter().enumerate() {
        assert_eq!(entry["lost"], 0, "answer {index}: Grafana's join lost points: {entry}");
        checked += entry["points"].as_u64().unwrap();
    }
    eprintln!("@grafana/data joined {} answers, {checked} points, none lost", answers.len());
    // The oracle can fail: two points of one series at one millisecond lose one.
    let clash = json!([{ "target": "a", "refId": "A", "datapoints": [[1.0, 5], [2.0, 5]] }, { "target": "b", "refId": "B", "datapoints": [[3.0, 5]] }]);
    report = run_oracle(&[clash]);
    assert_eq!(report[0]["lost"], 1, "{}", report[0]);
    host.terminate(dir.path());
}
