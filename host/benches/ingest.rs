//! Ingest as users run it (`cargo xtask guests && cargo bench -p telemetry-host --bench
//! ingest`): the real `telemetry-host` binary with the shipped default configuration (file
//! and grafana connectors on, W&B off for want of a key), its history on disk, loaded from
//! another process on loopback.
//!
//! 1. one sample per POST from 1, 8 and 64 clients: samples acknowledged per second, p50
//!    and p99 (every 2xx is on disk);
//! 2. Grafana `/query` (maxDataPoints 1000, 8 connections) alone, then while 32 clients post
//!    single samples;
//! 3. an NDJSON `--input` of 1M rows: rows per second into the history, and until every
//!    connector has every row.
//!
//! The load generator is wrk when it is installed (Debian's `wrk`), else a Rust client in
//! this process; the bench says which. `TELEMETRY_HOST_BASELINE=<an older telemetry-host
//! binary>` measures that build first, in the same run.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{HostProcess, free_port, host_log, wait_until};

const SECONDS: u64 = 5;

fn main() {
    let wrk = Command::new("wrk").arg("--version").output().is_ok();
    println!("(load generator: {})", if wrk { "wrk, a separate process" } else { "a Rust client in the bench process (install wrk)" });
    // `TELEMETRY_HOST_BASELINE=<binary>`: the same figures for that build first, in the same run.
    let mut builds = Vec::new();
    if let Ok(baseline) = std::env::var("TELEMETRY_HOST_BASELINE") {
        builds.push((format!("baseline {baseline}"), Some(baseline)));
    }
    builds.push(("this build".to_string(), None));
    for (label, binary) in builds {
        println!("\n# {label}");
        // SAFETY: the bench is single-threaded here; the variable is read when a host starts.
        unsafe {
            match &binary {
                Some(binary) => std::env::set_var("TELEMETRY_HOST_BIN", binary),
                None => std::env::remove_var("TELEMETRY_HOST_BIN"),
            }
        }
        single_sample_posts(wrk);
        grafana_while_posting(wrk);
        ndjson_input();
    }
}

/// The shipped default configuration with the folders and port of a bench run.
fn write_shipped_config(dir: &Path, port: u16) {
    let config = format!(
        "{}\n[http]\nlisten = \"127.0.0.1:{port}\"\n[runtime]\nhistory_dir = \"history\"\ndata_dir = \"data\"\n[plugins.wandb]\nenabled = false\n",
        telemetry_host::config::DEFAULT_CONFIG
    );
    std::fs::write(dir.join("telemetry.toml"), config).unwrap();
}

fn start_host(dir: &Path, input: &str) -> HostProcess {
    let port = free_port();
    write_shipped_config(dir, port);
    HostProcess::start(dir, port, input)
}

const SAMPLE: &str = r#"{"ep_reward": 12.5, "ep_steps": 200, "total_steps": 4000}"#;

fn lua_post(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let script = dir.join(name);
    std::fs::write(&script, format!("wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = {body:?}\n"))
        .unwrap();
    script
}

/// Requests per second, p50 and p99, and whether every answer was a 2xx.
struct Load {
    rate: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
}

fn run_load(wrk: bool, url: &str, script: &Path, body: &str, connections: usize) -> Load {
    if wrk {
        return run_wrk(url, script, connections);
    }
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    tokio.block_on(rust_load(url.to_string(), body.to_string(), connections))
}

fn run_wrk(url: &str, script: &Path, connections: usize) -> Load {
    let report = support::wrk(url, script, connections.min(2), connections, SECONDS);
    Load { rate: report.rate, p50: report.p50, p99: report.p99, errors: report.errors }
}

async fn rust_load(url: String, body: String, connections: usize) -> Load {
    let client = reqwest::Client::builder().pool_max_idle_per_host(connections).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let started = Instant::now();
                    let response = client.post(&url).header("content-type", "application/json").body(body.clone()).send().await.unwrap();
                    errors += u64::from(!response.status().is_success());
                    let _ = response.bytes().await.unwrap();
                    latencies.push(started.elapsed());
                }
                (latencies, errors)
            })
        })
        .collect();
    let (mut all, mut errors) = (Vec::new(), 0);
    for task in tasks {
        let (latencies, failed) = task.await.unwrap();
        all.extend(latencies);
        errors += failed;
    }
    all.sort();
    let percentile = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Load { rate: all.len() as f64 / SECONDS as f64, p50: percentile(0.5), p99: percentile(0.99), errors }
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1e3)
}

fn single_sample_posts(wrk: bool) {
    println!("\n## One sample per POST /v1/samples, shipped defaults (file + grafana), history on disk, {SECONDS} s per row");
    println!("| clients | samples acknowledged/s | p50 | p99 | non-2xx | rows stored (checked) | update calls per 100 samples (file) |");
    println!("|---|---|---|---|---|---|---|");
    let dir = tempfile::tempdir().unwrap();
    let host = start_host(dir.path(), "none");
    let url = format!("http://127.0.0.1:{}/v1/samples", host.port);
    let script = lua_post(dir.path(), "post.lua", SAMPLE);
    for clients in [1, 8, 64] {
        let (rows_before, calls_before) = (host.figure("telemetry_rows_stored"), file_calls(&host));
        let load = run_load(wrk, &url, &script, SAMPLE, clients);
        let rows = host.figure("telemetry_rows_stored") - rows_before;
        // The file connector catches up after the load: its calls per sample.
        let all = host.figure("telemetry_rows_stored");
        wait_until(Duration::from_secs(60), || host.figure("telemetry_plugin_cursor_lag_rows{plugin=\"file\"}") == 0.0);
        let calls = file_calls(&host) - calls_before;
        println!(
            "| {clients} | {:.0} | {} | {} | {} | {rows:.0} ({all:.0} in all) | {:.1} |",
            load.rate,
            ms(load.p50),
            ms(load.p99),
            load.errors,
            calls * 100.0 / rows.max(1.0)
        );
    }
    host.terminate(dir.path());
}

fn file_calls(host: &HostProcess) -> f64 {
    host.figure("telemetry_plugin_calls_total{plugin=\"file\"}")
}

fn grafana_while_posting(wrk: bool) {
    println!("\n## Grafana POST /query (maxDataPoints 1000, whole run, 8 connections) alone and while 32 clients post single samples");
    let dir = tempfile::tempdir().unwrap();
    // A run of 100k rows first, so that the query reads something real.
    let input = dir.path().join("run.ndjson");
    write_ndjson(&input, 100_000);
    let host = start_host(dir.path(), input.to_str().unwrap());
    assert!(wait_until(Duration::from_secs(120), || host.figure("telemetry_rows_stored") >= 100_000.0), "{}", host_log(dir.path()));
    let query_url = format!("http://127.0.0.1:{}/grafana/query", host.port);
    let body = serde_json::json!({
        "range": { "from": "2000-01-01T00:00:00.000Z", "to": "2100-01-01T00:00:00.000Z" },
        "maxDataPoints": 1000, "intervalMs": 1000, "targets": [{ "target": "rewards", "refId": "A" }],
    })
    .to_string();
    let query_script = lua_post(dir.path(), "query.lua", &body);
    let post_script = lua_post(dir.path(), "post.lua", SAMPLE);
    let post_url = format!("http://127.0.0.1:{}/v1/samples", host.port);
    println!("| round | idle requests/s | idle p99 | while posting requests/s | p99 | ratio | samples/s posted meanwhile |");
    println!("|---|---|---|---|---|---|---|");
    for round in 1..=3 {
        let idle = run_load(wrk, &query_url, &query_script, &body, 8);
        let posting = {
            let (post_url, post_script) = (post_url.clone(), post_script.clone());
            std::thread::spawn(move || run_load(wrk, &post_url, &post_script, SAMPLE, 32))
        };
        let busy = run_load(wrk, &query_url, &query_script, &body, 8);
        let posted = posting.join().unwrap();
        println!(
            "| {round} | {:.0} | {} | {:.0} | {} | {:.0}% | {:.0} |",
            idle.rate,
            ms(idle.p99),
            busy.rate,
            ms(busy.p99),
            busy.rate * 100.0 / idle.rate.max(1.0),
            posted.rate
        );
    }
    host.terminate(dir.path());
}

fn write_ndjson(path: &Path, rows: u64) {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for id in 0..rows {
        writeln!(out, "{}", support::sample(id)).unwrap();
    }
}

fn ndjson_input() {
    const ROWS: u64 = 1_000_000;
    println!("\n## NDJSON --input of {ROWS} rows, shipped defaults (file + grafana), history on disk");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("run.ndjson");
    write_ndjson(&input, ROWS);
    let port = free_port();
    write_shipped_config(dir.path(), port);
    let started = Instant::now();
    let host = HostProcess::start(dir.path(), port, input.to_str().unwrap());
    let serving = started.elapsed();
    let stored = wait_until(Duration::from_secs(600), || host.figure("telemetry_rows_stored") >= ROWS as f64);
    assert!(stored, "{}", host_log(dir.path()));
    let in_history = started.elapsed() - serving;
    let delivered = wait_until(Duration::from_secs(600), || {
        ["file", "grafana"]
            .iter()
            .all(|name| host.figure(&format!("telemetry_plugin_rows_delivered_total{{plugin=\"{name}\"}}")) >= ROWS as f64)
    });
    assert!(delivered, "{}", host_log(dir.path()));
    let everywhere = started.elapsed() - serving;
    println!("| rows | host up (load, compile cache) | into the history | rows/s | every row at every connector | rows/s |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {ROWS} | {:.2} s | {:.2} s | {:.0} | {:.2} s | {:.0} |",
        serving.as_secs_f64(),
        in_history.as_secs_f64(),
        ROWS as f64 / in_history.as_secs_f64(),
        everywhere.as_secs_f64(),
        ROWS as f64 / everywhere.as_secs_f64()
    );
    host.terminate(dir.path());
}
