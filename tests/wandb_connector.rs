//! The W&B connector through the host's outgoing HTTP, against a W&B stand-in with
//! injected faults, and compared with the official client's requests for a small run.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use telemetry_host::capabilities::outgoing_http::Transport;
use telemetry_host::capabilities::secrets::Secrets;
use telemetry_host::config::HostConfig;
use telemetry_suite::wandb_standin::{Fault, StandIn};
use telemetry_suite::{PluginSpec, TestHost, sample, test_config, wait_until};
use telemetry_testkit::connector;

const KEY: &str = "test-api-key-0123456789abcdef0123456789ab";
const WAIT: Duration = Duration::from_secs(60);

fn manifest(standin: &StandIn, config: &str) -> String {
    format!(
        "[grants]\ndata_dir = {{ path = \"wandb\" }}\n[[grants.outbound]]\nurl = {url:?}\ncredential = {{ secret = \"wandb_api_key\", scheme = \"basic\", username = \"api\" }}\n\
         [limits]\ncall_timeout_ms = 30000\n[config]\nproject = \"p\"\nentity = \"e\"\ngroup = \"g\"\nbase_url = {url:?}\ntransmit_interval_s = 0\nrequest_timeout_s = 2\nstop_timeout_s = 20\n{config}",
        url = standin.url()
    )
}

fn start_host(standin: &StandIn, root: tempfile::TempDir, config: HostConfig, plugin_config: &str) -> TestHost {
    let plugins = [PluginSpec::new("wandb", connector("wandb"), &manifest(standin, plugin_config))];
    let secrets = Secrets::from_values([("wandb_api_key".to_string(), KEY.to_string())]);
    let host = TestHost::start_with(root, config, &plugins, Transport::network().unwrap(), secrets);
    assert!(host.load_errors.is_empty(), "{:?}", host.load_errors);
    host
}

fn host(standin: &StandIn) -> TestHost {
    let root = tempfile::tempdir().unwrap();
    let config = test_config(root.path());
    start_host(standin, root, config, "")
}

fn feed_in_updates(host: &mut TestHost, rows: u64, per_update: u64) {
    for _ in 0..rows / per_update {
        host.feed(per_update);
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn lines(run: &telemetry_suite::wandb_standin::Run) -> Vec<Value> {
    run.history.values().map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// Every row arrived once, in order, with its step and values.
fn assert_rows(run: &telemetry_suite::wandb_standin::Run, count: u64) {
    assert_eq!(run.history.keys().copied().collect::<Vec<_>>(), (0..count).collect::<Vec<_>>(), "contiguous offsets");
    for (index, line) in lines(run).iter().enumerate() {
        let expected = sample(index as u64);
        assert_eq!(line["_step"], json!(index), "{line}");
        assert_eq!(line["rewards"].as_f64(), expected["ep_reward"].as_f64(), "{line}");
        assert_eq!(line["n_env_steps"].as_f64(), expected["total_steps"].as_f64(), "{line}");
        assert!(line["_timestamp"].as_f64().unwrap() > 1.6e9 && line["_runtime"].as_f64().unwrap() >= 0.0, "{line}");
    }
}

#[test]
fn creates_the_run_streams_every_row_and_finishes() {
    let standin = StandIn::start();
    let mut host = host(&standin);
    feed_in_updates(&mut host, 100, 10);
    host.stop();
    let (run_id, run) = standin.only_run();
    assert_eq!(run_id.len(), 8);
    assert!(run_id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()), "{run_id}");
    assert_eq!((run.project.as_str(), run.entity.as_str(), run.group.as_deref()), ("p", "e", Some("g")));
    assert_eq!(
        run.config["telemetry"]["value"]["update_interval"],
        json!(5),
        "the telemetry section of the host config, in W&B's value form"
    );
    assert_rows(&run, 100);
    let summary: Value = serde_json::from_str(run.summary.as_deref().unwrap()).unwrap();
    assert_eq!(summary["_step"], json!(99));
    assert_eq!(summary["rewards"].as_f64(), sample(99)["ep_reward"].as_f64());
    assert!(summary["_wandb"]["runtime"].is_i64());
    assert!(run.complete);
    assert_eq!(run.exitcode, Some(0));
    let requests = standin.requests();
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("api:{KEY}")));
    assert!(
        requests.iter().all(|request| request.headers["authorization"] == expected.as_str()),
        "the host attaches the key to every request"
    );
    let streams: Vec<_> = requests.iter().filter(|request| request.path.ends_with("/file_stream")).collect();
    assert!(
        streams.windows(2).all(|pair| pair[1].at.duration_since(pair[0].at) >= Duration::from_millis(450)),
        "never more than 2 file_stream requests a second"
    );
    assert_eq!(requests[0].body["query"].as_str(), Some(official_upsert_document().as_str()));
    assert!(!host.log_text("wandb").contains(KEY), "the key never reaches the plugin's log");
}

#[test]
fn server_errors_and_rate_limits_are_retried_without_losing_or_duplicating_rows() {
    let standin = StandIn::start();
    let mut host = host(&standin);
    assert!(wait_until(WAIT, || !standin.requests().is_empty()), "the run is created");
    standin.inject([Fault::Status(500), Fault::RateLimited(1)]);
    feed_in_updates(&mut host, 60, 10);
    host.stop();
    let (_, run) = standin.only_run();
    assert_rows(&run, 60);
    assert!(run.complete);
    let requests = standin.requests();
    let limited = requests.iter().position(|request| request.status == 429).expect("the 429 was sent");
    let waited = requests[limited + 1].at.duration_since(requests[limited].at);
    assert!(waited >= Duration::from_millis(950), "Retry-After: 1 is honoured, waited {waited:?}");
    let failed = requests.iter().position(|request| request.status == 500).unwrap();
    assert_eq!(
        requests[failed + 1].body["files"]["wandb-history.jsonl"]["offset"],
        requests[failed].body["files"]["wandb-history.jsonl"]["offset"],
        "a retry resends the same offset"
    );
}

#[test]
fn run_creation_honours_retry_after_and_keeps_one_run_id() {
    let standin = StandIn::start();
    standin.inject([Fault::RateLimited(2), Fault::Status(503)]);
    let mut host = host(&standin);
    feed_in_updates(&mut host, 20, 10);
    host.stop();
    let (_, run) = standin.only_run();
    assert_rows(&run, 20);
    assert!(run.complete);
    let creations: Vec<_> = standin.requests().into_iter().filter(|request| request.path == "/graphql").collect();
    assert_eq!(creations.iter().map(|request| request.status).collect::<Vec<_>>(), [429, 503, 200]);
    let waited = creations[1].at.duration_since(creations[0].at);
    assert!(waited >= Duration::from_millis(1950), "Retry-After: 2 is honoured at creation, waited {waited:?}");
    let names: Vec<&Value> = creations.iter().map(|request| &request.body["variables"]["name"]).collect();
    assert!(names.iter().all(|name| *name == names[0]), "every attempt asks for the same run id: {names:?}");
}

#[test]
fn a_graphql_error_at_run_creation_disables_the_plugin_without_retrying() {
    let standin = StandIn::start();
    standin.inject([Fault::GraphqlError("permission denied for project p")]);
    let mut host = host(&standin);
    let stats = host.stats("wandb");
    assert!(wait_until(WAIT, || stats.disabled.load(std::sync::atomic::Ordering::Acquire)), "{}", host.log_text("wandb"));
    feed_in_updates(&mut host, 20, 10);
    host.stop();
    let failure = stats.last_failure.lock().unwrap().clone().unwrap_or_default();
    assert!(failure.contains("GraphQL errors") && failure.contains("permission denied for project p"), "{failure}");
    assert_eq!(standin.requests().len(), 1, "a GraphQL error is not retried");
}

#[test]
fn rows_queue_while_wandb_is_unreachable_and_go_out_when_it_is_back() {
    let standin = StandIn::start();
    let mut host = host(&standin);
    feed_in_updates(&mut host, 30, 10);
    assert!(wait_until(WAIT, || standin.only_run().1.history.len() == 30));
    host.feed(20);
    standin.refuse_connections_for(Duration::from_secs(3));
    feed_in_updates(&mut host, 30, 10);
    host.stop();
    let (_, run) = standin.only_run();
    assert_rows(&run, 80);
    assert!(run.complete);
    assert!(host.log_text("wandb").contains("connection failed"), "{}", host.log_text("wandb"));
}

#[test]
fn a_fatal_status_stops_the_stream_and_is_reported() {
    let standin = StandIn::start();
    let mut host = host(&standin);
    assert!(wait_until(WAIT, || !standin.requests().is_empty()), "the run is created");
    standin.inject([Fault::Status(400)]);
    feed_in_updates(&mut host, 20, 10);
    assert!(wait_until(WAIT, || host.log_text("wandb").contains("W&B refused the data")), "{}", host.log_text("wandb"));
    let sent = standin.requests().len();
    host.feed(10);
    // The connector has taken every row (and sent none of them) before we look.
    assert!(host.wait_for_cursor("wandb", 30, WAIT), "the connector stopped taking rows");
    host.stop();
    let log = host.log_text("wandb");
    assert!(log.contains("HTTP 400") && log.contains("no more data is sent to this run"), "{log}");
    assert_eq!(standin.requests().len(), sent, "nothing is sent after a fatal status");
    assert!(!standin.only_run().1.complete);
}

#[test]
fn a_host_restart_continues_the_same_run_at_the_next_offset() {
    let standin = StandIn::start();
    let shared = tempfile::tempdir().unwrap();
    for round in 0..2 {
        let root = tempfile::tempdir().unwrap();
        let mut config = test_config(root.path());
        config.runtime.data_dir = shared.path().to_path_buf();
        let mut host = start_host(&standin, root, config, "");
        feed_in_updates(&mut host, 30, 10);
        host.stop();
        let (_, run) = standin.only_run();
        assert_eq!(run.history.len(), 30 * (round + 1));
    }
    let (_, run) = standin.only_run();
    let steps: Vec<i64> = lines(&run).iter().map(|line| line["_step"].as_i64().unwrap()).collect();
    assert_eq!(steps, (0..60).collect::<Vec<_>>(), "one run, steps still increasing after the restart");
}

#[test]
fn a_resumed_run_keeps_the_summary_keys_not_logged_since() {
    let standin = StandIn::start();
    let shared = tempfile::tempdir().unwrap();
    for round in 0..2u64 {
        let root = tempfile::tempdir().unwrap();
        let mut config = test_config(root.path());
        config.runtime.data_dir = shared.path().to_path_buf();
        let mut host = start_host(&standin, root, config, "");
        for index in 0..20 {
            // After the restart the workers stop reporting `ep_reward`.
            let mut sample = sample(round * 20 + index);
            if round == 1 {
                sample.as_object_mut().unwrap().remove("ep_reward");
            }
            host.push_sample(&sample);
        }
        host.stop();
    }
    let (_, run) = standin.only_run();
    let history = lines(&run);
    assert_eq!(history.len(), 40);
    let key = history[0].as_object().unwrap().keys().find(|key| !key.starts_with('_') && history[39].get(*key).is_none()).cloned();
    let key = key.expect("a key logged before the restart only");
    let summary: Value = serde_json::from_str(run.summary.as_deref().expect("a summary")).unwrap();
    assert_eq!(summary[&key], history[19][&key], "the summary keeps `{key}` from before the restart: {summary}");
    assert_eq!(summary["_step"], json!(39), "{summary}");
}

#[test]
fn an_idle_run_gets_heartbeats() {
    let standin = StandIn::start();
    let root = tempfile::tempdir().unwrap();
    let config = test_config(root.path());
    let mut host = start_host(&standin, root, config, "heartbeat_s = 1\n");
    host.feed(10);
    let heartbeats = || standin.requests().iter().filter(|request| request.body == json!({})).count();
    assert!(wait_until(WAIT, || heartbeats() >= 2), "an empty file_stream body every heartbeat_s while idle");
    host.stop();
    assert_rows(&standin.only_run().1, 10);
}

#[test]
fn resume_false_starts_a_new_run() {
    let standin = StandIn::start();
    let shared = tempfile::tempdir().unwrap();
    for resume in ["true", "false"] {
        let root = tempfile::tempdir().unwrap();
        let mut config = test_config(root.path());
        config.runtime.data_dir = shared.path().to_path_buf();
        let mut host = start_host(&standin, root, config, &format!("resume = {resume}\n"));
        feed_in_updates(&mut host, 10, 10);
        host.stop();
    }
    let runs = standin.backend.lock().unwrap().runs.clone();
    assert_eq!(runs.len(), 2, "the second host made a run of its own");
    assert!(runs.values().all(|run| run.history.len() == 10 && run.complete));
}

fn official() -> Value {
    serde_json::from_str(include_str!("fixtures/wandb/official-client-small-run.json")).unwrap()
}

fn official_upsert_document() -> String {
    official()["requests"][0]["body"]["query"].as_str().unwrap().to_string()
}

/// Drops what differs between any two runs: run id, timing, SDK metadata.
fn normalised(line: &str) -> Value {
    let mut value: Value = serde_json::from_str(line).unwrap();
    let object = value.as_object_mut().unwrap();
    for key in ["_timestamp", "_runtime", "_wandb"] {
        object.remove(key);
    }
    // wandb-core writes integral floats as integers: compare numbers as numbers.
    for number in object.values_mut() {
        if let Some(float) = number.as_f64() {
            *number = json!(float);
        }
    }
    value
}

#[test]
fn the_small_run_matches_the_official_clients_requests() {
    let standin = StandIn::start();
    let root = tempfile::tempdir().unwrap();
    let mut config = test_config(root.path());
    config.telemetry = toml::from_str(
        "update_interval = 1\nstep_key = \"n_env_steps\"\n[[transforms]]\ntype = \"MetricByKey\"\nkey = \"rewards\"\n[[transforms]]\ntype = \"MetricByKey\"\nkey = \"n_env_steps\"\n",
    )
    .unwrap();
    let plugin_config = "series = [\"rewards\", \"n_env_steps\"]\nstep = \"step_key\"\nrun_config = { lr = 0.001 }\n";
    let mut host = start_host(&standin, root, config, plugin_config);
    for index in 1..=5u64 {
        host.push_sample(&json!({ "rewards": (index - 1) as f64 * 0.5, "n_env_steps": index * 100 }));
    }
    host.stop();

    let official = official();
    let requests = official["requests"].as_array().unwrap();
    let official_upsert = &requests[0]["body"]["variables"];
    let ours = standin.requests();
    let our_upsert = &ours[0].body["variables"];
    for key in ["project", "entity", "groupName"] {
        assert_eq!(our_upsert[key], official_upsert[key], "{key}");
    }
    let mut official_config: Value = serde_json::from_str(official_upsert["config"].as_str().unwrap()).unwrap();
    official_config.as_object_mut().unwrap().remove("_wandb");
    let our_config: Value = serde_json::from_str(our_upsert["config"].as_str().unwrap()).unwrap();
    assert_eq!(our_config, official_config);

    let finish = requests.iter().find(|request| request["body"]["complete"] == json!(true)).unwrap();
    let official_lines: Vec<Value> = finish["body"]["files"]["wandb-history.jsonl"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| normalised(line.as_str().unwrap()))
        .collect();
    let (_, run) = standin.only_run();
    let our_lines: Vec<Value> = run.history.values().map(|line| normalised(line)).collect();
    assert_eq!(our_lines, official_lines);
    let official_summary = normalised(finish["body"]["files"]["wandb-summary.json"]["content"][0].as_str().unwrap());
    assert_eq!(normalised(run.summary.as_deref().unwrap()), official_summary);
    assert!(run.complete);
    assert_eq!(Some(finish["body"]["exitcode"].as_i64().unwrap()), run.exitcode);
}

#[test]
fn a_full_queue_still_drains_after_an_outage_and_every_row_arrives_once() {
    let standin = StandIn::start();
    let root = tempfile::tempdir().unwrap();
    let config = test_config(root.path());
    let mut host = start_host(&standin, root, config, "max_queue_rows = 300\n");
    assert!(wait_until(WAIT, || !standin.requests().is_empty()), "the run is created");
    standin.inject([Fault::Status(503)]);
    feed_in_updates(&mut host, 2450, 50);
    host.stop();
    let (_, run) = standin.only_run();
    assert_rows(&run, 2450);
    assert!(run.complete, "the run is finished");
    let largest = standin
        .requests()
        .iter()
        .filter_map(|request| request.body["files"]["wandb-history.jsonl"]["content"].as_array().map(Vec::len))
        .max()
        .unwrap();
    assert!(largest <= 300, "at most max_queue_rows lines are held, and sent, at a time: {largest}");
}

#[test]
fn a_failed_finish_marker_is_retried_until_the_run_is_finished() {
    let standin = StandIn::start();
    let mut host = host(&standin);
    feed_in_updates(&mut host, 20, 10);
    assert!(wait_until(WAIT, || standin.only_run().1.history.len() == 20));
    standin.inject([Fault::Status(500), Fault::RateLimited(1)]);
    host.stop();
    let (_, run) = standin.only_run();
    assert!(run.complete, "{}", host.log_text("wandb"));
    let finishes: Vec<u16> =
        standin.requests().iter().filter(|request| request.body["complete"] == json!(true)).map(|request| request.status).collect();
    assert_eq!(finishes, vec![500, 429, 200]);
}

/// `_step` from the step series, a crash between two accepted requests of a catch-up: the
/// lines sent again after the restart carry the steps they had, not steps counted on from
/// the last row queued.
#[test]
fn a_crash_in_a_catch_up_resends_lines_with_their_own_steps() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use telemetry_host::bindings::http_types::Response;
    use telemetry_host::isolation::{IsolatedPlugin, IsolationOptions};

    let accepted = Arc::new(AtomicU64::new(0));
    let failing = Arc::new(AtomicBool::new(true));
    let (counter, down) = (accepted.clone(), failing.clone());
    let responder: telemetry_host::capabilities::outgoing_http::Responder = Arc::new(move |request| {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let answer = |status: u16, body: Value| Response {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        };
        if request.target.ends_with("/graphql") {
            let bucket = json!({ "project": { "name": "p", "entity": { "name": "e" } }, "historyLineCount": 0 });
            return answer(200, json!({ "data": { "upsertBucket": { "bucket": bucket } } }));
        }
        // Of the catch-up's requests, the first is accepted and the next fails until the crash.
        if body["files"]["wandb-history.jsonl"].is_object() && counter.fetch_add(1, Ordering::SeqCst) >= 1 && down.load(Ordering::SeqCst) {
            return answer(503, json!({ "error": "injected" }));
        }
        answer(200, json!({}))
    });
    let config = toml::from_str(
        "project = \"p\"\nentity = \"e\"\nbase_url = \"https://api.wandb.ai\"\nstep = \"step_key\"\ntransmit_interval_s = 0\nrequest_timeout_s = 2\nstop_timeout_s = 20\n",
    )
    .unwrap();
    let options = IsolationOptions { plugin_config: config, responder: Some(responder), ..IsolationOptions::default() };
    let mut plugin = IsolatedPlugin::load(&connector("wandb"), options).unwrap();
    let rows = 100_000;
    let ndjson: Vec<String> = (0..rows).map(|index| sample(index).to_string()).collect();
    assert_eq!(plugin.push_ndjson(&ndjson.join("\n")), 0);
    plugin.start().unwrap();
    plugin.deliver().unwrap();
    assert!(accepted.load(Ordering::SeqCst) >= 2, "the catch-up takes more than one request");
    plugin.crash_and_restart().unwrap();
    failing.store(false, Ordering::SeqCst);
    plugin.stop().unwrap();
    // What W&B holds: each offset as last accepted.
    let mut held = std::collections::BTreeMap::new();
    for exchange in plugin.exchanges.lock().unwrap().iter() {
        let accepted = exchange.response.as_ref().is_ok_and(|response| response.status == 200);
        let body: Value = serde_json::from_slice(&exchange.request.body).unwrap_or(Value::Null);
        if let (true, Some(history)) = (accepted, body["files"]["wandb-history.jsonl"].as_object()) {
            let offset = history["offset"].as_u64().unwrap();
            for (index, line) in history["content"].as_array().unwrap().iter().enumerate() {
                held.insert(offset + index as u64, serde_json::from_str::<Value>(line.as_str().unwrap()).unwrap());
            }
        }
    }
    assert_eq!(held.keys().copied().collect::<Vec<_>>(), (0..rows).collect::<Vec<_>>(), "contiguous offsets, every row once");
    for (offset, line) in &held {
        assert_eq!(line["_step"].as_f64(), sample(*offset)["total_steps"].as_f64(), "line {offset}: {line}");
    }
}
