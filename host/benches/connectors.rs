//! Figures of the three connectors (run with `cargo xtask guests && cargo bench -p
//! telemetry-host --bench connectors`): file update cost, Grafana `/query` under load,
//! W&B throughput, each against the history length.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use telemetry_host::bindings::http_types::Response;
use telemetry_host::capabilities::outgoing_http::Transport;
use telemetry_host::capabilities::secrets::Secrets;
use telemetry_host::config::HostConfig;
use telemetry_host::history::{History, RowBatch};
use telemetry_host::ingest::transforms::series_names;
use telemetry_host::plugins::PluginSet;
use telemetry_host::plugins::loader::Runtime;
use telemetry_host::plugins::manifest::Manifest;
use telemetry_testkit::{IsolatedPlugin, IsolationOptions, connector, plugins_dir};

const SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];

fn fill(history: &mut History, rows: usize) {
    let start = history.row_count() as usize;
    let mut steps = start as f64 * 250.0;
    for row in start..start + rows {
        let progress = 1.0 - (-(row as f64) / (rows.max(start + rows) as f64 / 5.0)).exp();
        let noise = ((row as f64 * 12.9898).sin() * 43758.5453).fract();
        steps += 200.0 + noise.abs() * 100.0;
        let reward = -100.0 + 350.0 * progress + 60.0 * noise + if row % 100_003 == 5_000 { 800.0 } else { 0.0 };
        let values = [
            reward,
            reward,
            250.0 + noise * 50.0,
            250.0,
            steps,
            steps,
            f64::from(u8::from(reward > 200.0)),
            progress,
            row as f64 * 0.01,
            row as f64 * 0.01,
        ];
        history.push_row(1_700_000_000_000 + row as i64 * 10, &values).expect("in memory");
    }
    history.commit().expect("in memory");
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1e3)
}

/// Writes `telemetry.jsonl` as the file connector would have after `rows` rows (its own
/// line format), fast, so a restart can be timed at any length.
fn write_jsonl(path: &std::path::Path, history: &History, rows: usize) {
    use std::io::Write;
    let snapshot = history.snapshot();
    let names = snapshot.series_names().to_vec();
    let mut out = std::io::BufWriter::with_capacity(1 << 22, std::fs::File::create(path).unwrap());
    let mut first = 0;
    while first < rows {
        let batch = snapshot.batch(first as u64, 65_536.min((rows - first) as u64));
        let mut text = String::new();
        for (offset, time) in batch.timestamps_ms.iter().enumerate() {
            text.push_str(&format!("{{\"row\":{},\"timestamp_ms\":{time}", first + offset));
            for (name, column) in names.iter().zip(&batch.columns) {
                text.push_str(&format!(",\"{name}\":{}", column[offset]));
            }
            text.push_str("}\n");
        }
        out.write_all(text.as_bytes()).unwrap();
        first += batch.timestamps_ms.len();
    }
}

/// The file connector with its shipped configuration (telemetry.json every 60 s, fsync,
/// the plot every 10 s) resumed at a cursor of 1k, 1M and 10M rows.
fn file_connector() {
    println!("## file: the shipped configuration resumed at a cursor, then 5 rows per update");
    println!(
        "| rows | start | update (median of 9) | slowest update | telemetry.json rewrite | stop (telemetry.json + plot) | start with telemetry.jsonl deleted |"
    );
    println!("|---|---|---|---|---|---|---|");
    for rows in [1_000, 1_000_000, 10_000_000] {
        let mut plugin = IsolatedPlugin::load(&connector("file"), IsolationOptions::default()).unwrap();
        fill(plugin.history_mut(), rows + 45);
        let (jsonl, json) = (plugin.data_dir().join("telemetry.jsonl"), plugin.data_dir().join("telemetry.json"));
        write_jsonl(&jsonl, plugin.history_mut(), rows);
        plugin.skip_to(rows as u64);
        let started = Instant::now();
        plugin.start().unwrap();
        let start = started.elapsed();
        // The first update begins a rewrite of telemetry.json; count the updates until it
        // is in place (empty ones after the nine timed, as the host sends each second).
        let (mut updates, mut json_after, rewrite_started) = (0, None, Instant::now());
        let mut times = Vec::new();
        while json_after.is_none() {
            let batch: RowBatch = plugin.history.snapshot().batch((rows + updates.min(9) * 5) as u64, if updates < 9 { 5 } else { 0 });
            let started = Instant::now();
            plugin.update_raw(batch).unwrap();
            if updates < 9 {
                times.push(started.elapsed());
            }
            updates += 1;
            if json.exists() {
                json_after = Some(rewrite_started.elapsed());
            }
        }
        while times.len() < 9 {
            let batch: RowBatch = plugin.history.snapshot().batch((rows + times.len() * 5) as u64, 5);
            let started = Instant::now();
            plugin.update_raw(batch).unwrap();
            times.push(started.elapsed());
        }
        let slowest = times.iter().max().copied().unwrap_or_default();
        let rewrite = format!("{updates} updates, {} in all", ms(json_after.unwrap_or_default()));
        plugin.skip_to((rows + 45) as u64);
        let started = Instant::now();
        plugin.stop().unwrap();
        let stop = started.elapsed();
        std::fs::remove_file(&jsonl).unwrap();
        let started = Instant::now();
        let rebuilt = match plugin.start() {
            Ok(()) => ms(started.elapsed()),
            Err(failure) => format!("failed after {}: {failure:?}", ms(started.elapsed())),
        };
        println!("| {rows} | {} | {} | {} | {rewrite} | {} | {rebuilt} |", ms(start), ms(median(times)), ms(slowest), ms(stop));
    }
}

/// `connections` clients posting `body` to `url` for `duration`: requests per second,
/// p50 and p99 latency.
async fn load(url: String, body: String, connections: usize, duration: Duration) -> (f64, Duration, Duration) {
    let client = reqwest::Client::builder().pool_max_idle_per_host(connections).build().unwrap();
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let started = Instant::now();
                    let response = client.post(&url).header("content-type", "application/json").body(body.clone()).send().await.unwrap();
                    assert_eq!(response.status(), 200);
                    let _ = response.bytes().await.unwrap();
                    latencies.push(started.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    let percentile = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    (all.len() as f64 / duration.as_secs_f64(), percentile(0.5), percentile(0.99))
}

/// wrk's requests per second, p50 and p99 from its `--latency` report.
fn run_wrk(url: &str, script: &std::path::Path) -> (f64, Duration, Duration) {
    let report = support::wrk(url, script, 2, 8, 5);
    assert_eq!(report.errors, 0, "wrk saw errors");
    (report.rate, report.p50, report.p99)
}

/// A Grafana plugin served over HTTP on a history of `rows` rows of its own.
struct GrafanaServer {
    url: String,
    set: std::sync::Arc<PluginSet>,
    servers: Vec<telemetry_host::capabilities::http_server::BoundServer>,
}

fn serve_grafana(rows: usize, runtime: &Runtime, root: &std::path::Path, tokio: &tokio::runtime::Runtime) -> GrafanaServer {
    let config = HostConfig::builtin_default();
    let mut writer = History::new(series_names(&config.telemetry.transforms));
    fill(&mut writer, rows);
    let history = writer.shared();
    let manifest = Manifest::load(&plugins_dir().join("grafana").join("plugin.toml")).unwrap();
    let plugin = runtime.load(manifest, root).unwrap();
    let set = std::sync::Arc::new(PluginSet::empty());
    let env = telemetry_host::plugins::plugin_env(&config, &history, &Secrets::default(), &Transport::recording(Default::default()));
    set.add(plugin, env, 0, telemetry_host::plugins::runner_options(&config)).unwrap();
    let servers = tokio.block_on(telemetry_host::capabilities::http_server::serve("127.0.0.1:0", &set, 1 << 20, None)).unwrap();
    GrafanaServer { url: format!("http://{}/grafana/query", servers[0].address), set, servers }
}

/// Rounds per history size, taken in turn across the sizes.
const GRAFANA_ROUNDS: usize = 5;

fn grafana_connector() {
    println!(
        "\n## grafana: POST /query, one target, maxDataPoints 1000 over the whole run, 8 connections, {GRAFANA_ROUNDS} rounds of 5 s per size"
    );
    let root = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(Some(root.path().join("cache"))).unwrap();
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let hosts: Vec<GrafanaServer> = SIZES.iter().map(|rows| serve_grafana(*rows, &runtime, root.path(), &tokio)).collect();
    let body = serde_json::json!({
        "range": { "from": "2000-01-01T00:00:00.000Z", "to": "2100-01-01T00:00:00.000Z" },
        "maxDataPoints": 1000, "intervalMs": 1000, "targets": [{ "target": "rewards", "refId": "A" }],
    })
    .to_string();
    let script = root.path().join("query.lua");
    std::fs::write(&script, format!("wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = {body:?}\n"))
        .unwrap();
    let wrk = std::process::Command::new("wrk").arg("--version").output().is_ok();
    println!(
        "(load generator: {}; the sizes are served side by side and measured in turn, since this machine's speed drifts by a quarter from minute to minute)",
        if wrk { "wrk -t2 -c8 -d5s, a separate process" } else { "an in-process Rust client (install wrk for a lighter one)" }
    );
    println!("| rows of history | requests/s, median (range) | p50 | p99 |");
    println!("|---|---|---|---|");
    let mut rounds: Vec<Vec<(f64, Duration, Duration)>> = vec![Vec::new(); SIZES.len()];
    for _ in 0..GRAFANA_ROUNDS {
        for (host, measured) in hosts.iter().zip(&mut rounds) {
            measured.push(if wrk {
                run_wrk(&host.url, &script)
            } else {
                tokio.block_on(load(host.url.clone(), body.clone(), 8, Duration::from_secs(5)))
            });
        }
    }
    for (rows, mut measured) in SIZES.iter().zip(rounds) {
        measured.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (rate, p50, p99) = measured[measured.len() / 2];
        let worst_p99 = measured.iter().map(|round| round.2).max().unwrap_or_default();
        println!(
            "| {rows} | {rate:.0} ({:.0}-{:.0}) | {} | {} (worst round {}) |",
            measured[0].0,
            measured[measured.len() - 1].0,
            ms(p50),
            ms(p99),
            ms(worst_p99)
        );
    }
    println!("(the original: 105-180 requests/s, p99 80-230 ms)");
    for host in hosts {
        tokio.block_on(async {
            for server in host.servers {
                server.shutdown().await;
            }
        });
        host.set.stop_all();
    }
}

/// Where one `/query` goes, without HTTP: the host's downsampled read alone, and the whole
/// call into the plugin (request parsed, read, answer formatted as JSON in the sandbox).
fn grafana_handler() {
    println!("\n## grafana: one /query handled in-process (no HTTP), median of 2000");
    println!("| rows of history | host read (downsample to 1000 points) | whole handler call | answer bytes |");
    println!("|---|---|---|---|");
    let mut plugin = IsolatedPlugin::load(&connector("grafana"), IsolationOptions::default()).unwrap();
    plugin.start().unwrap();
    let body = serde_json::json!({
        "range": { "from": "2000-01-01T00:00:00.000Z", "to": "2100-01-01T00:00:00.000Z" },
        "maxDataPoints": 1000, "intervalMs": 1000, "targets": [{ "target": "rewards", "refId": "A" }],
    })
    .to_string();
    for rows in SIZES {
        let have = plugin.history.snapshot().row_count() as usize;
        fill(plugin.history_mut(), rows - have);
        let read_times: Vec<Duration> = (0..2000)
            .map(|_| {
                let history = plugin.history.snapshot();
                let started = Instant::now();
                std::hint::black_box(history.downsample("rewards", telemetry_host::history::Span::All, 1000).unwrap());
                started.elapsed()
            })
            .collect();
        let mut bytes = 0;
        let call_times: Vec<Duration> = (0..2000)
            .map(|_| {
                let started = Instant::now();
                let response = plugin.request("POST", "/query", body.as_bytes()).unwrap();
                let elapsed = started.elapsed();
                assert_eq!(response.status, 200);
                bytes = response.body.len();
                elapsed
            })
            .collect();
        println!(
            "| {rows} | {:.1} µs | {:.1} µs | {bytes} |",
            median(read_times).as_secs_f64() * 1e6,
            median(call_times).as_secs_f64() * 1e6
        );
    }
}

/// A W&B plugin whose stand-in answers `200 {}` to the first `healthy` requests and
/// `status` to the others.
fn wandb_plugin(healthy: usize, status: u16) -> IsolatedPlugin {
    let answered = std::sync::atomic::AtomicUsize::new(0);
    let options = IsolationOptions {
        plugin_config: toml::from_str("transmit_interval_s = 0\nstop_timeout_s = 60\nmax_queue_rows = 2000000\n").unwrap(),
        responder: Some(Arc::new(move |_| {
            let count = answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Response { status: if count < healthy { 200 } else { status }, headers: Vec::new(), body: b"{}".to_vec() }
        })),
        ..IsolationOptions::default()
    };
    IsolatedPlugin::load(&connector("wandb"), options).unwrap()
}

fn wandb_connector() {
    println!("\n## wandb: rows through the plugin into a stand-in (in-process, answering 200)");
    println!("| rows of history before | rows sent | time | rows/s | update while W&B answers 503 (100 rows) |");
    println!("|---|---|---|---|---|");
    for rows in [1_000usize, 1_000_000] {
        let mut plugin = wandb_plugin(usize::MAX, 200);
        plugin.start().unwrap();
        fill(plugin.history_mut(), rows + 100_000);
        let started = Instant::now();
        for first in (rows..rows + 100_000).step_by(1000) {
            let batch = plugin.history.snapshot().batch(first as u64, 1000);
            plugin.update_raw(batch).unwrap();
        }
        plugin.skip_to((rows + 100_000) as u64);
        plugin.stop().unwrap();
        let elapsed = started.elapsed();
        // Up for the run's creation, then down.
        let mut down = wandb_plugin(1, 503);
        down.start().unwrap();
        fill(down.history_mut(), rows + 10_000);
        let times = (0..50)
            .map(|index| {
                let batch = down.history.snapshot().batch((rows + index * 100) as u64, 100);
                let started = Instant::now();
                down.update_raw(batch).unwrap();
                started.elapsed()
            })
            .collect();
        println!("| {rows} | 100000 | {} | {:.0} | {} |", ms(elapsed), 100_000.0 / elapsed.as_secs_f64(), ms(median(times)));
    }
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    println!("# telemetry-host connector benchmark ({} build)\n", if cfg!(debug_assertions) { "debug" } else { "release" });
    // `cargo bench --bench connectors -- grafana` runs one part.
    let only: Vec<String> = std::env::args().skip(1).filter(|arg| !arg.starts_with('-')).collect();
    let wanted = |part: &str| only.is_empty() || only.iter().any(|name| name == part);
    if wanted("file") {
        file_connector();
    }
    if wanted("grafana") {
        grafana_handler();
        grafana_connector();
    }
    if wanted("wandb") {
        wandb_connector();
    }
}
