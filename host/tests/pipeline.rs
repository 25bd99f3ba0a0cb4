//! The node end to end, as a training run uses it: the `telemetry-host` binary with the
//! shipped connectors, a real `redis-server`, restarts and `kill -9`.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use support::{HostProcess, RedisServer, exported_column, file_rows, free_port, host_log, sample, wait_until, write_config};

/// `[redis]` reading the channel `telemetry` and, unless `stream` is empty, that stream.
fn redis_section(redis: &RedisServer, stream: &str, extra: &str) -> String {
    format!("[redis]\nurl = \"{}\"\nchannel = \"telemetry\"\nstream = \"{stream}\"\n{extra}", redis.url())
}

/// Every id of `0..count` exactly once, in any order.
fn assert_each_once(values: &[f64], count: u64, what: &str) {
    assert_eq!(values.len() as u64, count, "{what}: {} rows, expected {count}", values.len());
    let distinct: HashSet<u64> = values.iter().map(|value| *value as u64).collect();
    assert_eq!(distinct.len() as u64, count, "{what}: duplicated ids");
    assert!(distinct.iter().all(|id| *id < count), "{what}: unknown ids");
}

fn assert_plugins_got_every_row(dir: &Path, host: &HostProcess, rows: u64) {
    for plugin in ["file", "grafana"] {
        let lag = format!("telemetry_plugin_cursor_lag_rows{{plugin=\"{plugin}\"}}");
        let caught_up =
            wait_until(Duration::from_secs(60), || host.figure("telemetry_rows_stored") == rows as f64 && host.figure(&lag) == 0.0);
        assert!(caught_up, "{plugin} is {} rows behind", host.figure(&lag));
    }
    let file = file_rows(dir);
    assert_eq!(file.len() as u64, rows, "telemetry.jsonl lines");
    assert!(file.iter().enumerate().all(|(index, (row, _))| *row == index as u64), "telemetry.jsonl rows out of order or repeated");
    let stored = exported_column(dir, "rewards");
    assert!(file.iter().zip(&stored).all(|((_, reward), stored)| reward == stored), "telemetry.jsonl differs from the history");
}

#[test]
fn samples_from_concurrent_pubsub_and_stream_publishers_arrive_exactly_once() {
    const PER_PUBLISHER: u64 = 25_000;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_config(dir.path(), port, &redis_section(&redis, "telemetry", ""));
    let host = HostProcess::start(dir.path(), port, "none");
    assert!(redis.wait_for_subscriber("telemetry"), "the host did not subscribe:\n{}", host_log(dir.path()));
    let mut connection = redis.connection();

    let publishers: Vec<_> = (0..4u64)
        .map(|publisher| {
            let mut connection = redis.connection();
            std::thread::spawn(move || {
                let ids = publisher * PER_PUBLISHER..(publisher + 1) * PER_PUBLISHER;
                for batch in ids.collect::<Vec<_>>().chunks(500) {
                    let mut pipeline = redis::pipe();
                    for id in batch {
                        if publisher % 2 == 0 {
                            pipeline.cmd("PUBLISH").arg("telemetry").arg(sample(*id)).ignore();
                        } else {
                            pipeline.cmd("XADD").arg("telemetry").arg("*").arg("sample").arg(sample(*id)).ignore();
                        }
                    }
                    pipeline.query::<()>(&mut connection).unwrap();
                }
            })
        })
        .collect();
    publishers.into_iter().for_each(|publisher| publisher.join().unwrap());

    let total = 4 * PER_PUBLISHER;
    let stored = wait_until(Duration::from_secs(120), || host.figure("telemetry_rows_stored") == total as f64);
    assert!(stored, "{} rows stored of {total}:\n{}", host.figure("telemetry_rows_stored"), host_log(dir.path()));
    assert_plugins_got_every_row(dir.path(), &host, total);
    // The original's way to stop the node.
    redis::cmd("PUBLISH").arg("shutdown").arg("").query::<u64>(&mut connection).unwrap();
    host.wait_exit(dir.path());
    assert_each_once(&exported_column(dir.path(), "rewards"), total, "the history");
    let pending: Vec<redis::Value> = redis::cmd("XPENDING").arg("telemetry").arg("telemetry-host").query(&mut connection).unwrap();
    assert_eq!(pending.first(), Some(&redis::Value::Int(0)), "every stream entry is acknowledged");
}

#[test]
fn a_host_killed_in_the_middle_of_a_stream_resumes_without_loss_or_duplicates() {
    const TOTAL: u64 = 60_000;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_config(dir.path(), port, &redis_section(&redis, "telemetry", "batch = 200\n"));
    let publisher = {
        let mut connection = redis.connection();
        std::thread::spawn(move || {
            for batch in (0..TOTAL).collect::<Vec<_>>().chunks(200) {
                let mut pipeline = redis::pipe();
                for id in batch {
                    pipeline.cmd("XADD").arg("telemetry").arg("*").arg("sample").arg(sample(*id)).ignore();
                }
                pipeline.query::<()>(&mut connection).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let host = HostProcess::start_ingesting(dir.path(), port, "none", &support::plugins_dir());
    assert!(wait_until(Duration::from_secs(60), || host.figure("telemetry_rows_stored") >= 5_000.0), "{}", host_log(dir.path()));
    host.kill_hard();
    let rows_at_kill = exported_column(dir.path(), "rewards").len() as u64;
    assert!(rows_at_kill < TOTAL, "the kill came too late to test anything");

    let host = HostProcess::start(dir.path(), port, "none");
    publisher.join().unwrap();
    let stored = wait_until(Duration::from_secs(120), || host.figure("telemetry_rows_stored") == TOTAL as f64);
    assert!(stored, "{} rows stored of {TOTAL}:\n{}", host.figure("telemetry_rows_stored"), host_log(dir.path()));
    assert_plugins_got_every_row(dir.path(), &host, TOTAL);
    host.terminate(dir.path());
    let rewards = exported_column(dir.path(), "rewards");
    // One stream, one reader: the rows are the entries in order, each once.
    assert!(rewards.iter().enumerate().all(|(index, value)| *value == index as f64), "rows lost, repeated or reordered across the kill");
}

#[test]
fn a_restart_continues_row_indices_and_moving_averages() {
    let samples: Vec<String> = (0..60).map(|id| sample(id * 7 % 23)).collect();
    let run = |dir: &Path, lines: &[String]| {
        std::fs::write(dir.join("samples.ndjson"), lines.join("\n")).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_telemetry-host"))
            .args(["run", "--config", "telemetry.toml", "--plugins", support::plugins_dir().to_str().unwrap(), "--input", "samples.ndjson"])
            .current_dir(dir)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    };
    let (once, twice) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for dir in [&once, &twice] {
        write_config(dir.path(), free_port(), "");
    }
    run(once.path(), &samples);
    run(twice.path(), &samples[..25]);
    run(twice.path(), &samples[25..]);
    assert_eq!(exported_column(twice.path(), "rewards_av"), exported_column(once.path(), "rewards_av"));
    let file = file_rows(twice.path());
    assert_eq!(file.iter().map(|(row, _)| *row).collect::<Vec<_>>(), (0..60).collect::<Vec<_>>());
}

#[test]
fn an_original_stats_file_is_imported_and_the_run_continues() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), free_port(), "");
    let mut columns = Vec::new();
    for name in ["rewards", "steps", "n_env_steps", "wins", "time"] {
        let values = if name == "rewards" { "[1.0, 2.0, NaN]" } else { "[1.0, 2.0, 3.0]" };
        columns.push(format!("\"{name}\": {values}, \"{name}_av\": [1.0, 1.5, 2.0]"));
    }
    // As Python's json.dump writes it, NaN included.
    std::fs::write(dir.path().join("SoulsAIStats.json"), format!("{{{}}}", columns.join(", "))).unwrap();
    let import = |file: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_telemetry-host"))
            .args(["import-stats", file, "--config", "telemetry.toml"])
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let output = import("SoulsAIStats.json");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("imported 3 rows"));
    let again = import("SoulsAIStats.json");
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already holds 3 rows"));
    let rewards = exported_column(dir.path(), "rewards");
    assert!(rewards[..2] == [1.0, 2.0] && rewards[2].is_nan(), "{rewards:?}");

    // The run goes on from the imported rows: indices, averages (over 20 values), plugins.
    std::fs::write(dir.path().join("samples.ndjson"), sample(9)).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_telemetry-host"))
        .args(["run", "--config", "telemetry.toml", "--plugins", support::plugins_dir().to_str().unwrap(), "--input", "samples.ndjson"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(exported_column(dir.path(), "steps_av"), vec![1.0, 1.5, 2.0, 1.75]);
    assert_eq!(exported_column(dir.path(), "rewards_av")[3], 4.0, "NaN is left out of the average of 1, 2, 9");
    assert_eq!(file_rows(dir.path()).iter().map(|(row, _)| *row).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
}

#[test]
fn save_best_publishes_on_each_new_best() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let callbacks = "[[telemetry.callbacks]]\ntype = \"SaveBest\"\nkey = \"rewards\"\nchannel = \"save_best\"\n";
    write_config(dir.path(), port, &format!("{}{callbacks}", redis_section(&redis, "", "")));
    let mut listener = redis.connection();
    let mut messages = listener.as_pubsub();
    messages.subscribe("save_best").unwrap();
    messages.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Rewards at each update (update_interval 5: the fifth sample of each counts): 5, 3, 9.
    let rewards = [0, 0, 0, 0, 5, 0, 0, 0, 0, 3, 0, 0, 0, 0, 9];
    let lines: Vec<String> = rewards.iter().map(|reward| sample(*reward)).collect();
    std::fs::write(dir.path().join("samples.ndjson"), lines.join("\n")).unwrap();
    let host = HostProcess::start(dir.path(), port, "samples.ndjson");
    let first = messages.get_message().expect("a message for the first best");
    let second = messages.get_message().expect("a message for the second best");
    assert_eq!((first.get_channel_name(), first.get_payload_bytes()), ("save_best", &b""[..]));
    assert_eq!(second.get_channel_name(), "save_best");
    messages.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    assert!(messages.get_message().is_err(), "3 is not a new best: no third message");
    host.terminate(dir.path());
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
}

#[test]
fn bad_input_gets_its_error_the_host_keeps_running_and_memory_stays_bounded() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_config(dir.path(), port, &redis_section(&redis, "telemetry", ""));
    let host = HostProcess::start(dir.path(), port, "none");
    let client = reqwest::blocking::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/samples");
    let post = |body: Vec<u8>| client.post(&url).body(body).send().map(|response| response.status().as_u16());
    let before = rss_mb(host.child.id());

    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("malformed JSON", b"{\"ep_reward\": ".to_vec()),
        ("NaN token", b"{\"ep_reward\": NaN}".to_vec()),
        ("Infinity token", b"{\"ep_reward\": Infinity}".to_vec()),
        ("a number beyond f64", b"{\"ep_reward\": 1e999}".to_vec()),
        ("a string instead of a number only", b"{\"ep_reward\": \"high\", \"ep_steps\": \"x\", \"total_steps\": null}".to_vec()),
        ("deep nesting", format!("{{\"ep_reward\": {}1{}}}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes()),
        ("invalid UTF-8", vec![b'{', 0xc3, 0x28, b'}']),
    ];
    for (what, body) in bad {
        assert_eq!(post(body).unwrap(), 400, "{what}");
    }
    // 100 MB: refused by its size, never buffered whole.
    let huge = vec![b' '; 100 << 20];
    match post(huge) {
        Ok(status) => assert_eq!(status, 413),
        Err(error) => assert!(error.is_request() || error.is_body(), "{error}"),
    }
    // The same on Redis: each fault counted, the host goes on.
    assert!(redis.wait_for_subscriber("telemetry"), "the host did not subscribe:\n{}", host_log(dir.path()));
    let mut connection = redis.connection();
    for payload in [&b"\xff\xfe"[..], b"[]", b"{}", b"{\"ep_reward\": [1, 2]}"] {
        redis::cmd("PUBLISH").arg("telemetry").arg(payload).query::<u64>(&mut connection).unwrap();
    }
    redis::cmd("XADD").arg("telemetry").arg("*").arg("other").arg("1").query::<String>(&mut connection).unwrap();
    assert_eq!(post(sample(7).into_bytes()).unwrap(), 200, "good samples still go in");
    assert!(wait_until(Duration::from_secs(30), || host.figure("telemetry_samples_refused_total") >= 12.0), "{}", host_log(dir.path()));
    assert_eq!(host.figure("telemetry_rows_stored"), 1.0);
    let figures = host.figures().unwrap();
    for kind in ["invalid-json", "invalid-utf8", "not-an-object", "no-sample-field", "missing-key:ep_reward", "not-numeric:ep_reward"] {
        assert!(figures.contains_key(&format!("telemetry_sample_faults_total{{kind=\"{kind}\"}}")), "{kind}: {figures:?}");
    }
    let after = rss_mb(host.child.id());
    assert!(after - before < 64.0, "RSS grew from {before:.0} MB to {after:.0} MB");
    assert_eq!(host_log(dir.path()).matches("further faults of this kind are counted").count(), 6, "each kind of fault is logged once");
    host.terminate(dir.path());
}

#[test]
fn the_demo_input_feeds_every_plugin_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_config(dir.path(), port, "");
    let host = HostProcess::start(dir.path(), port, "demo");
    let fed = wait_until(Duration::from_secs(60), || {
        host.figure("telemetry_rows_stored") >= 20.0 && host.figure("telemetry_plugin_cursor_lag_rows{plugin=\"file\"}") == 0.0
    });
    assert!(fed, "{} rows stored:\n{}", host.figure("telemetry_rows_stored"), host_log(dir.path()));
    host.terminate(dir.path());
    assert!(file_rows(dir.path()).len() >= 20);
}

/// Plugins compile in the background: with a cold compile cache the host acknowledges
/// samples while its plugins are still compiling (Grafana answers 503 `plugin_starting`
/// meanwhile), and every row posted then reaches them once they run.
#[test]
fn ingest_is_served_while_plugins_compile_and_their_rows_wait_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_config(dir.path(), port, "");
    let config = std::fs::read_to_string(dir.path().join("telemetry.toml")).unwrap();
    let cold = config.replacen("data_dir = \"data\"\n", "data_dir = \"data\"\ncache_dir = \"cold-cache\"\n", 1);
    assert_ne!(cold, config);
    std::fs::write(dir.path().join("telemetry.toml"), cold).unwrap();
    let spawned = std::time::Instant::now();
    let host = HostProcess::start_ingesting(dir.path(), port, "none", &support::plugins_dir());
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let status = client.post(format!("http://127.0.0.1:{port}/v1/samples")).body(sample(0)).send().unwrap().status();
    let first_ack = spawned.elapsed();
    let compiling = host.figure("telemetry_plugins_compiling");
    let grafana = client.get(format!("http://127.0.0.1:{port}/grafana/")).send().unwrap();
    let (grafana_status, retry_after) = (grafana.status().as_u16(), grafana.headers().get("retry-after").cloned());
    let grafana_body = grafana.text().unwrap();
    assert_eq!(status, 200);
    assert!(compiling >= 1.0, "the first sample was acknowledged after {first_ack:?}, when no plugin was compiling any more");
    if grafana_status == 503 {
        assert!(grafana_body.contains("plugin_starting") && retry_after.is_some(), "{grafana_body}");
    }
    for id in 1..200 {
        let status = client.post(format!("http://127.0.0.1:{port}/v1/samples")).body(sample(id)).send().unwrap().status();
        assert_eq!(status, 200);
    }
    eprintln!("first sample acknowledged {first_ack:?} after the host was spawned, {compiling} plugins still compiling");
    assert!(wait_until(Duration::from_secs(120), || host.figure("telemetry_plugins_compiling") == 0.0), "{}", host_log(dir.path()));
    assert_plugins_got_every_row(dir.path(), &host, 200);
    host.terminate(dir.path());
}

/// A client that sends half a request's headers and then nothing (slowloris) is cut off at
/// the header read timeout, ties up no one else meanwhile, and cannot hold up the exit.
#[test]
fn a_client_holding_half_a_request_is_cut_off_and_cannot_hold_up_the_exit() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("no-plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let input = dir.path().join("none.ndjson");
    std::fs::write(&input, "").unwrap();
    let port = free_port();
    write_config(dir.path(), port, "");
    let host = HostProcess::start_with_plugins(dir.path(), port, input.to_str().unwrap(), &plugins);
    let half_request = |stream: &mut std::net::TcpStream| {
        stream.write_all(b"POST /v1/samples HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n").unwrap();
    };
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    half_request(&mut stalled);
    let opened = std::time::Instant::now();
    let client = reqwest::blocking::Client::new();
    let answered = client.post(format!("http://127.0.0.1:{port}/v1/samples")).body(sample(0)).send().unwrap();
    assert_eq!(answered.status().as_u16(), 200, "others are served meanwhile");
    stalled.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answer = Vec::new();
    let read = stalled.read_to_end(&mut answer);
    let cut_after = opened.elapsed();
    eprintln!("half a request cut off after {cut_after:?}: {read:?}, {:?}", String::from_utf8_lossy(&answer));
    assert!(read.is_ok(), "the host closes the connection, not the client's read timeout: {read:?}");
    assert!(cut_after >= Duration::from_secs(9) && cut_after < Duration::from_secs(20), "cut off after {cut_after:?}");
    // Another one held open across the exit.
    let mut held = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    half_request(&mut held);
    let asked = std::time::Instant::now();
    host.terminate(dir.path());
    let stopping = asked.elapsed();
    eprintln!("stopped in {stopping:?} with half a request open");
    assert!(stopping < Duration::from_secs(8), "the exit took {stopping:?}");
    assert_eq!(exported_column(dir.path(), "rewards").len(), 1, "the acknowledged sample is stored");
}
