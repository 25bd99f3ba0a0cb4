//! `POST /v1/samples`: one sample, an array, NDJSON; refusals by line or index while the
//! good samples of the same body are stored; auth and size limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};
use telemetry_host::callbacks::Callbacks;
use telemetry_host::capabilities::http_server::{BoundServer, serve};
use telemetry_host::config::HostConfig;
use telemetry_host::history::{History, SharedHistory};
use telemetry_host::ingest::Ingest;
use telemetry_host::ingest::http::{SampleEndpoint, router};
use telemetry_host::ingest::transforms::series_names;
use telemetry_host::ingest::writer::WriterThread;

struct Endpoint {
    history: SharedHistory,
    updates: Arc<AtomicU64>,
    url: String,
    runtime: tokio::runtime::Runtime,
    servers: Vec<BoundServer>,
    _writer: WriterThread,
}

fn endpoint(token: Option<&str>) -> Endpoint {
    endpoint_with(token, 64 * 1024)
}

fn endpoint_with(token: Option<&str>, max_body_bytes: usize) -> Endpoint {
    let config = HostConfig::builtin_default();
    let ingest = Ingest::new(&config.telemetry, History::new(series_names(&config.telemetry.transforms)), Callbacks::none());
    let history = ingest.shared();
    let updates = Arc::new(AtomicU64::new(0));
    let counter = updates.clone();
    let (committer, writer) = WriterThread::spawn(
        ingest,
        Arc::new(move || {
            counter.fetch_add(1, Ordering::Relaxed);
        }),
    )
    .unwrap();
    let samples = router(SampleEndpoint { committer, token: token.map(String::from), max_body_bytes });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let servers = runtime
        .block_on(serve("127.0.0.1:0", &std::sync::Arc::new(telemetry_host::plugins::PluginSet::empty()), max_body_bytes, Some(samples)))
        .unwrap();
    let url = format!("http://{}/v1/samples", servers[0].address);
    Endpoint { history, updates, url, runtime, servers, _writer: writer }
}

impl Endpoint {
    fn post(&self, body: impl Into<reqwest::Body>, token: Option<&str>) -> (u16, Value) {
        self.runtime.block_on(async {
            let mut request = reqwest::Client::new().post(&self.url).body(body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
        })
    }

    fn rows(&self) -> u64 {
        self.history.snapshot().row_count()
    }

    fn rewards(&self) -> Vec<f64> {
        self.history.snapshot().read_series("rewards", 0, u64::MAX).unwrap()
    }

    fn shutdown(self) {
        self.runtime.block_on(async {
            for server in self.servers {
                server.shutdown().await;
            }
        });
    }
}

fn sample(reward: f64) -> Value {
    json!({ "ep_reward": reward, "ep_steps": 10, "total_steps": 100 })
}

#[test]
fn one_sample_an_array_and_ndjson_are_accepted() {
    let endpoint = endpoint(None);
    let (status, answer) = endpoint.post(sample(1.0).to_string(), None);
    assert_eq!((status, &answer["accepted"]), (200, &json!(1)));
    let (status, answer) = endpoint.post(json!([sample(2.0), sample(3.0)]).to_string(), None);
    assert_eq!((status, &answer["accepted"]), (200, &json!(2)));
    let ndjson = format!("{}\n{}\r\n\n{}\n", sample(4.0), sample(5.0), sample(6.0));
    let (status, answer) = endpoint.post(ndjson, None);
    assert_eq!((status, &answer["accepted"]), (200, &json!(3)));
    assert_eq!(endpoint.rewards(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    // The wake-up follows the commit that the answer also waits for: it may land just after it.
    let woken = telemetry_suite::wait_until(std::time::Duration::from_secs(5), || endpoint.updates.load(Ordering::Relaxed) >= 1);
    assert!(woken, "plugins are woken every update_interval (5) samples");
    assert_eq!(endpoint.updates.load(Ordering::Relaxed), 1, "once for six samples");
    endpoint.shutdown();
}

#[test]
fn bad_samples_are_refused_by_line_or_index_and_the_good_ones_kept() {
    let endpoint = endpoint(None);
    let ndjson = format!("{}\n{{broken\n{}\n{{\"other\": 1}}\n[1, 2]\n", sample(1.0), sample(2.0));
    let (status, answer) = endpoint.post(ndjson, None);
    assert_eq!(status, 400);
    assert_eq!(answer["accepted"], json!(2));
    let refused = answer["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 3);
    assert_eq!(refused[0]["at"], json!({ "line": 2 }));
    assert!(refused[0]["reason"].as_str().unwrap().contains("line 2: invalid JSON"), "{answer}");
    assert_eq!(refused[1]["at"], json!({ "line": 4 }));
    assert!(refused[1]["reason"].as_str().unwrap().contains("key `ep_reward` is missing"), "{answer}");
    assert!(refused[2]["reason"].as_str().unwrap().contains("must be a JSON object"), "{answer}");
    let (status, answer) = endpoint.post(json!([sample(3.0), "text", sample(4.0)]).to_string(), None);
    assert_eq!((status, &answer["accepted"], &answer["refused"][0]["at"]), (400, &json!(2), &json!({ "index": 1 })));
    assert_eq!(endpoint.rewards(), vec![1.0, 2.0, 3.0, 4.0]);
    // Invalid UTF-8 refuses its line, not the body.
    let mut body = sample(5.0).to_string().into_bytes();
    body.extend_from_slice(b"\n\xff\xfe{\n");
    body.extend_from_slice(sample(6.0).to_string().as_bytes());
    let (status, answer) = endpoint.post(body, None);
    assert_eq!((status, &answer["accepted"], &answer["refused"][0]["at"]), (400, &json!(2), &json!({ "line": 2 })));
    assert!(answer["refused"][0]["reason"].as_str().unwrap().contains("line 2: not UTF-8"), "{answer}");
    assert_eq!(endpoint.rewards(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let (status, _) = endpoint.post(r#"{"ep_reward": 1e400, "ep_steps": 1}"#, None);
    assert_eq!(status, 400, "a number out of range is refused");
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let (status, _) = endpoint.post(deep, None);
    assert_eq!(status, 400, "deep nesting is refused, not a crash");
    assert_eq!(endpoint.rows(), 6);
    endpoint.shutdown();
}

#[test]
fn bodies_over_the_limit_and_missing_tokens_are_refused() {
    let endpoint = endpoint(Some("t0ken"));
    let (status, _) = endpoint.post(sample(1.0).to_string(), None);
    assert_eq!(status, 401);
    let (status, _) = endpoint.post(sample(1.0).to_string(), Some("wrong"));
    assert_eq!(status, 401);
    let (status, answer) = endpoint.post(sample(1.0).to_string(), Some("t0ken"));
    assert_eq!((status, &answer["accepted"]), (200, &json!(1)));
    let big = format!("{}\n", sample(2.0)).repeat(2000);
    let (status, answer) = endpoint.post(big, Some("t0ken"));
    assert_eq!((status, answer["error"]["code"].as_str()), (413, Some("body_too_large")), "every error has the same JSON shape");
    assert_eq!(endpoint.rows(), 1);
    // Many bad lines: the list is capped, the count is whole.
    let bad = "{oops\n".repeat(5000);
    let (status, answer) = endpoint.post(bad, Some("t0ken"));
    assert_eq!((status, answer["refused"].as_array().unwrap().len(), &answer["refused_count"]), (400, 100, &json!(5000)));
    endpoint.shutdown();
}

#[test]
fn big_bodies_are_stored_as_they_are_parsed_with_the_same_answers() {
    let endpoint = endpoint_with(None, 16 << 20);
    let mut samples: Vec<Value> = (0..20_000).map(|index| sample(index as f64)).collect();
    samples[12_345] = json!("not an object");
    let (status, answer) = endpoint.post(Value::Array(samples).to_string(), None);
    assert_eq!((status, &answer["accepted"], &answer["refused"][0]["at"]), (400, &json!(19_999), &json!({ "index": 12_345 })));
    let mut lines: Vec<String> = (0..20_000).map(|index| sample(index as f64).to_string()).collect();
    lines[776] = "{oops".into();
    let (status, answer) = endpoint.post(lines.join("\n"), None);
    assert_eq!((status, &answer["accepted"], &answer["refused"][0]["at"]), (400, &json!(19_999), &json!({ "line": 777 })));
    assert_eq!(endpoint.rows(), 39_998);
    // A big array that is not valid JSON stores nothing of it.
    let mut broken = Value::Array((0..20_000).map(|index| sample(index as f64)).collect()).to_string();
    broken.truncate(broken.len() - 10);
    let (status, answer) = endpoint.post(broken, None);
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_json")));
    assert_eq!(endpoint.rows(), 39_998);
    let rewards = endpoint.rewards();
    assert_eq!(rewards[..12_345], (0..12_345).map(f64::from).collect::<Vec<_>>()[..], "stored in the body's order");
    endpoint.shutdown();
}
