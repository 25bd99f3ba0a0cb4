//! Figures of the pipeline (run with `cargo xtask guests && cargo bench -p telemetry-host
//! --bench pipeline`; the Redis part needs `redis-server` on the PATH):
//!
//! 1. the cost of one sample through parsing, transforms and the durable history
//!    (committed every 1000 samples) at 1k, 100k, 1M and 10M rows of history, with the
//!    host's memory at each;
//! 2. samples per second by HTTP NDJSON into the `telemetry-host` binary and out to three
//!    plugins (file, grafana and the null fixture), until every plugin has every row;
//! 3. the same by Redis streams and by Redis pub/sub.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{HostProcess, RedisServer, free_port, host_log, sample, wait_until};
use telemetry_host::callbacks::Callbacks;
use telemetry_host::config::HostConfig;
use telemetry_host::history::History;
use telemetry_host::ingest::Ingest;
use telemetry_host::ingest::transforms::series_names;

const COMMIT_EVERY: usize = 1000;

fn main() {
    per_sample_cost();
    http_throughput();
    if std::process::Command::new("redis-server").arg("--version").output().is_ok() {
        redis_throughput("stream");
        redis_throughput("pub/sub");
    } else {
        println!("\n(redis-server is not installed: no Redis figures)");
    }
}

fn memory_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("RssAnon:"), field("RssFile:"))
}

fn per_sample_cost() {
    println!("## One sample: parse, transforms, durable history (commit every {COMMIT_EVERY}), default configuration");
    println!("| rows of history | ns per sample | samples/s | RSS anonymous | RSS file-backed (mapped chunks) |");
    println!("|---|---|---|---|---|");
    let config = HostConfig::builtin_default();
    let dir = tempfile::tempdir().unwrap();
    let history = History::open(dir.path(), series_names(&config.telemetry.transforms)).unwrap();
    let mut ingest = Ingest::new(&config.telemetry, history, Callbacks::none());
    let lines: Vec<Vec<u8>> = (0..100_000u64).map(|id| sample(id).into_bytes()).collect();
    let series = ingest.history().series_names().len();
    for size in [1_000u64, 100_000, 1_000_000, 10_000_000] {
        {
            // Up to the size without parsing (the 100k measured samples of the step before
            // count): the figure is what one more sample costs at that length.
            let history = ingest.history_mut();
            let row: Vec<f64> = (0..series).map(|index| index as f64).collect();
            while history.row_count() < size {
                for _ in 0..65_536.min(size - history.row_count()) {
                    history.push_row(1_700_000_000_000, &row).unwrap();
                }
                history.commit().unwrap();
            }
        }
        // Let the kernel write the fill out first, or its writeback slows the syncs measured.
        let _ = std::process::Command::new("sync").status();
        let started = Instant::now();
        for batch in lines.chunks(COMMIT_EVERY) {
            for line in batch {
                ingest.accept_line(line, "bench");
            }
            ingest.commit().unwrap();
        }
        let per_sample = started.elapsed().as_secs_f64() / lines.len() as f64;
        let (anonymous, mapped) = memory_mb();
        println!("| {size} | {:.0} | {:.0} | {anonymous:.0} MB | {mapped:.0} MB |", per_sample * 1e9, 1.0 / per_sample);
    }
    let disk: u64 = std::fs::read_dir(dir.path()).unwrap().filter_map(|entry| entry.ok()?.metadata().ok()).map(|meta| meta.len()).sum();
    let rows = ingest.history().row_count();
    println!("history on disk at the end: {:.0} MB ({rows} rows)", disk as f64 / 1e6);
    drop(ingest);
    // A restart: open (every chunk mapped and its checksum verified, the log replayed) and
    // answer a read of the last rows.
    let _ = std::process::Command::new("sync").status();
    let started = Instant::now();
    let reopened = History::open(dir.path(), series_names(&config.telemetry.transforms)).unwrap();
    let last = reopened.snapshot().read_series("rewards", rows - 10, 10).unwrap();
    println!("reopened at {rows} rows and read its last rows in {:.0} ms ({} values)", started.elapsed().as_secs_f64() * 1e3, last.len());
}

/// A plugin folder with the shipped file and grafana connectors and the null fixture.
fn three_plugins(dir: &Path) -> std::path::PathBuf {
    let plugins = dir.join("plugins");
    for name in ["file", "grafana"] {
        let from = support::plugins_dir().join(name);
        std::fs::create_dir_all(plugins.join(name)).unwrap();
        for file in ["plugin.toml", &format!("{name}.wasm")] {
            std::fs::copy(from.join(file), plugins.join(name).join(file)).unwrap();
        }
    }
    std::fs::create_dir_all(plugins.join("null")).unwrap();
    std::fs::copy(telemetry_testkit::fixture("null"), plugins.join("null/null.wasm")).unwrap();
    std::fs::write(plugins.join("null/plugin.toml"), "name = \"null\"\ncomponent = \"null.wasm\"\n").unwrap();
    plugins
}

fn start_host(dir: &Path, extra: &str) -> HostProcess {
    let port = free_port();
    // The file connector as shipped (fsync of every update, plot redrawn at most every 10 s).
    let config = format!(
        "{}\n[http]\nlisten = \"127.0.0.1:{port}\"\n[runtime]\nhistory_dir = \"history\"\ndata_dir = \"data\"\n{extra}",
        telemetry_host::config::DEFAULT_CONFIG
    );
    std::fs::write(dir.join("telemetry.toml"), config).unwrap();
    let plugins = three_plugins(dir);
    HostProcess::start_with_plugins(dir, port, "none", &plugins)
}

/// Waits until the host stored `total` rows and every plugin took them; the seconds since `started`.
fn until_delivered(host: &HostProcess, dir: &Path, total: u64, started: Instant) -> f64 {
    let done = wait_until(Duration::from_secs(600), || {
        host.figures().is_some_and(|figures| {
            figures.get("telemetry_rows_stored") == Some(&(total as f64))
                && ["file", "grafana", "null"]
                    .iter()
                    .all(|plugin| figures.get(&format!("telemetry_plugin_cursor_lag_rows{{plugin=\"{plugin}\"}}")) == Some(&0.0))
        })
    });
    assert!(done, "not delivered:\n{}", host_log(dir));
    started.elapsed().as_secs_f64()
}

fn http_throughput() {
    const TOTAL: u64 = 1_000_000;
    const BODY_SAMPLES: u64 = 5_000;
    println!("\n## HTTP NDJSON into the host binary, out to file, grafana and null ({TOTAL} samples, bodies of {BODY_SAMPLES}, 2 clients)");
    let dir = tempfile::tempdir().unwrap();
    let host = start_host(dir.path(), "");
    let url = format!("http://127.0.0.1:{}/v1/samples", host.port);
    let bodies: Vec<String> = (0..TOTAL / BODY_SAMPLES)
        .map(|body| (body * BODY_SAMPLES..(body + 1) * BODY_SAMPLES).map(|id| sample(id) + "\n").collect())
        .collect();
    let started = Instant::now();
    let answered = std::thread::scope(|scope| {
        let clients: Vec<_> = bodies
            .chunks(bodies.len() / 2)
            .map(|share| {
                let url = &url;
                scope.spawn(move || {
                    let client = reqwest::blocking::Client::new();
                    for body in share {
                        let status = client.post(url).body(body.clone()).send().unwrap().status();
                        assert!(status.is_success(), "{status}");
                    }
                })
            })
            .collect();
        clients.into_iter().for_each(|client| client.join().unwrap());
        started.elapsed().as_secs_f64()
    });
    let delivered = until_delivered(&host, dir.path(), TOTAL, started);
    println!("| stored and answered | every plugin has every row |");
    println!("|---|---|");
    println!(
        "| {:.0} samples/s ({answered:.2} s) | {:.0} samples/s ({delivered:.2} s) |",
        TOTAL as f64 / answered,
        TOTAL as f64 / delivered
    );
    host.terminate(dir.path());
}

fn redis_throughput(way: &str) {
    const TOTAL: u64 = 500_000;
    println!("\n## Redis {way} into the host binary, out to file, grafana and null ({TOTAL} samples, 2 publishers, pipelines of 1000)");
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let stream = if way == "stream" { "telemetry" } else { "" };
    let host = start_host(dir.path(), &format!("[redis]\nurl = \"{}\"\nstream = \"{stream}\"\n", redis.url()));
    if way == "pub/sub" {
        assert!(redis.wait_for_subscriber("telemetry"), "the host did not subscribe:\n{}", host_log(dir.path()));
    }
    let payloads: Vec<String> = (0..TOTAL).map(sample).collect();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for share in payloads.chunks(payloads.len() / 2) {
            let mut connection = redis.connection();
            scope.spawn(move || {
                for batch in share.chunks(1000) {
                    let mut pipeline = redis::pipe();
                    for payload in batch {
                        if way == "stream" {
                            pipeline.cmd("XADD").arg("telemetry").arg("*").arg("sample").arg(payload).ignore();
                        } else {
                            pipeline.cmd("PUBLISH").arg("telemetry").arg(payload).ignore();
                        }
                    }
                    pipeline.query::<()>(&mut connection).unwrap();
                }
            });
        }
    });
    let published = started.elapsed().as_secs_f64();
    let delivered = until_delivered(&host, dir.path(), TOTAL, started);
    println!("| published | every plugin has every row |");
    println!("|---|---|");
    println!(
        "| {:.0} samples/s ({published:.2} s) | {:.0} samples/s ({delivered:.2} s) |",
        TOTAL as f64 / published,
        TOTAL as f64 / delivered
    );
    host.terminate(dir.path());
}
