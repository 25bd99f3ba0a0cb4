//! Figures of the host runtime (run with `cargo xtask guests && cargo bench -p telemetry-host
//! --bench runtime`): the cost of values across the boundary, delivery and downsampled
//! reads against the history length, cached loading, and memory with three plugins.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use telemetry_host::capabilities::outgoing_http::Transport;
use telemetry_host::capabilities::secrets::Secrets;
use telemetry_host::config::HostConfig;
use telemetry_host::history::{History, RowBatch, Span};
use telemetry_host::ingest::transforms::series_names;
use telemetry_host::plugins::PluginSet;
use telemetry_host::plugins::instance::Instance;
use telemetry_host::plugins::loader::Runtime;
use telemetry_host::plugins::manifest::Manifest;
use telemetry_testkit::{IsolatedPlugin, IsolationOptions, fixture, plugins_dir};

const SERIES: usize = 10;

/// Median time of `runs` calls.
fn median(runs: usize, mut call: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            call();
            started.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn fill(history: &mut History, rows: usize) {
    let start = history.row_count() as usize;
    for row in start..start + rows {
        let values: Vec<f64> = (0..SERIES).map(|series| ((row * 31 + series * 7) % 1000) as f64).collect();
        history.push_row(1_700_000_000_000 + row as i64, &values).expect("in memory");
    }
    history.commit().expect("in memory");
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn boundary_cost() {
    println!("## Values across the boundary (null connector, {SERIES} series)");
    println!("| rows per update | time per update | per value |");
    println!("|---|---|---|");
    let mut plugin = IsolatedPlugin::load(&fixture("null"), IsolationOptions::default()).unwrap();
    plugin.start().unwrap();
    fill(plugin.history_mut(), 100_000);
    for rows in [10u64, 1_000, 10_000, 100_000] {
        let batch = plugin.history.snapshot().batch(0, rows);
        let mut copies = vec![batch; 21];
        let time = median(21, || plugin.update_raw(copies.pop().unwrap()).unwrap());
        println!("| {rows} | {:.1} µs | {:.2} ns |", time.as_secs_f64() * 1e6, time.as_secs_f64() * 1e9 / (rows as f64 * SERIES as f64));
    }
}

fn delivery_and_reads_against_history_length() {
    println!("\n## Against the history length");
    println!(
        "| rows of history | delivery of a 5-row update (read + call) | downsample to 1000 points, whole run | downsample, last 10% by time |"
    );
    println!("|---|---|---|---|");
    let mut plugin = IsolatedPlugin::load(&fixture("null"), IsolationOptions::default()).unwrap();
    plugin.start().unwrap();
    for target in [1_000usize, 100_000, 1_000_000] {
        let have = plugin.history.snapshot().row_count() as usize;
        fill(plugin.history_mut(), target - have);
        let delivery = median(501, || {
            let batch: RowBatch = plugin.history.snapshot().batch(target as u64 - 5, 5);
            plugin.update_raw(batch).unwrap();
        });
        let history = plugin.history.snapshot();
        let whole = median(51, || {
            std::hint::black_box(history.downsample("rewards", Span::All, 1000).unwrap());
        });
        let from_ms = 1_700_000_000_000 + (target as i64 * 9 / 10);
        let recent = median(51, || {
            std::hint::black_box(history.downsample("rewards", Span::Time { from_ms, to_ms: i64::MAX }, 1000).unwrap());
        });
        println!(
            "| {target} | {:.1} µs | {:.1} µs | {:.1} µs |",
            delivery.as_secs_f64() * 1e6,
            whole.as_secs_f64() * 1e6,
            recent.as_secs_f64() * 1e6
        );
    }
}

fn cached_loading() {
    println!("\n## Loading the three connectors");
    println!("| plugin | compile (cold cache) | load from cache | instantiate + start |");
    println!("|---|---|---|---|");
    let cache = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let config = HostConfig::builtin_default();
    let history = History::new(series_names(&config.telemetry.transforms)).shared();
    let transport = Transport::recording(Default::default());
    for name in ["file", "grafana", "wandb"] {
        let manifest = || Manifest::load(&plugins_dir().join(name).join("plugin.toml")).unwrap();
        let cold = Runtime::new(Some(cache.path().into())).unwrap().load(manifest(), data.path()).unwrap();
        let runtime = Runtime::new(Some(cache.path().into())).unwrap();
        let mut warm = None;
        let load = median(11, || warm = Some(runtime.load(manifest(), data.path()).unwrap()));
        let warm = warm.unwrap();
        let env = telemetry_host::plugins::plugin_env(&config, &history, &Secrets::default(), &transport);
        let calls = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let instantiate = median(51, || {
            std::hint::black_box(calls.block_on(Instance::new(&warm, &env)).map_err(|failure| failure.to_string()).unwrap());
        });
        println!(
            "| {name} | {:.1} ms | {:.2} ms | {:.1} µs |",
            cold.load_time.as_secs_f64() * 1e3,
            load.as_secs_f64() * 1e3,
            instantiate.as_secs_f64() * 1e6
        );
    }
}

fn memory_with_three_plugins() {
    println!("\n## Host memory with the three connectors at 1M rows");
    let root = tempfile::tempdir().unwrap();
    let mut config = HostConfig::builtin_default();
    config.runtime.data_dir = root.path().join("data");
    config.runtime.cache_dir = root.path().join("cache");
    let before = rss_mb();
    let mut writer = History::new(series_names(&config.telemetry.transforms));
    let history = writer.shared();
    let runtime = Runtime::new(Some(config.runtime.cache_dir.clone())).unwrap();
    // W&B's side: a loopback server answering every request, so nothing is kept in memory.
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = tokio.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let wandb_url = format!("http://{}", listener.local_addr().unwrap());
    // It reads every body (W&B requests run to 8 MiB) before answering.
    let answer = |body: axum::body::Bytes| async move {
        std::hint::black_box(body.len());
        axum::Json(serde_json::json!({ "exitcode": null, "limits": {} }))
    };
    let app = axum::Router::new().fallback(answer).layer(axum::extract::DefaultBodyLimit::disable());
    tokio.spawn(async move { axum::serve(listener, app).await });
    let transport = Transport::network().unwrap();
    let set = PluginSet::empty();
    for name in ["file", "grafana", "wandb"] {
        let mut manifest = Manifest::load(&plugins_dir().join(name).join("plugin.toml")).unwrap();
        if name == "wandb" {
            manifest.config.insert("transmit_interval_s".into(), toml::Value::Float(0.0));
            manifest.config.insert("base_url".into(), toml::Value::String(wandb_url.clone()));
            manifest.grants.outbound =
                vec![telemetry_host::capabilities::outgoing_http::OutboundGrant { url: wandb_url.clone(), credential: None }];
        }
        let plugin = runtime.load(manifest, &config.runtime.data_dir).unwrap();
        let env = telemetry_host::plugins::plugin_env(&config, &history, &Secrets::default(), &transport);
        set.add(plugin, env, 0, telemetry_host::plugins::runner_options(&config)).unwrap();
    }
    let loaded = rss_mb();
    let started = Instant::now();
    for _ in 0..100 {
        fill(&mut writer, 10_000);
        set.notify_all();
    }
    let all = history.snapshot().row_count();
    for (name, stats) in set.stats() {
        let waiting = Instant::now();
        while stats.cursor.load(Ordering::Acquire) < all {
            std::thread::sleep(Duration::from_millis(20));
            if waiting.elapsed() > Duration::from_secs(120) {
                let failure = stats.last_failure.lock().unwrap().clone();
                panic!("{name} is stuck at row {} of {all}: {failure:?}", stats.cursor.load(Ordering::Acquire));
            }
        }
    }
    let elapsed = started.elapsed();
    let at_million = rss_mb();
    println!("| point | RSS |");
    println!("|---|---|");
    println!("| before | {before:.0} MB |");
    println!("| engine + 3 connectors loaded | {loaded:.0} MB |");
    println!("| 1M rows delivered to all three ({:.1} s) | {at_million:.0} MB |", elapsed.as_secs_f64());
    // Per row and series: its value, and block summaries of 80 bytes, one per 16 rows at
    // the finest level and as many again over all coarser ones.
    println!(
        "(the history itself: {SERIES} series x (8 bytes + 10 of summaries) + timestamps = about {:.0} MB)",
        all as f64 * (SERIES as f64 * (8.0 + 10.0) + 8.0) / 1e6
    );
    set.stop_all();
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    println!("# telemetry-host runtime benchmark ({} build)\n", if cfg!(debug_assertions) { "debug" } else { "release" });
    boundary_cost();
    delivery_and_reads_against_history_length();
    cached_loading();
    memory_with_three_plugins();
}
