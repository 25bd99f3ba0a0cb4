//! The sandbox's limits against the real host binary: a hostile plugin beside the file
//! connector, which must get every row exactly once while the host keeps acknowledging
//! samples and stops when told to.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{HostProcess, file_rows, free_port, host_log, plugins_dir, sample, wait_until, write_config};

/// A plugin folder with the file connector and the `misbehaving` fixture as `bad` under
/// `manifest_tail` (its grants, limits and config).
fn plugins_with_bad(dir: &Path, manifest_tail: &str) -> std::path::PathBuf {
    let plugins = dir.join("plugins");
    for name in ["file", "bad"] {
        std::fs::create_dir_all(plugins.join(name)).unwrap();
    }
    for entry in std::fs::read_dir(plugins_dir().join("file")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), plugins.join("file").join(entry.file_name())).unwrap();
    }
    std::fs::copy(telemetry_testkit::fixture("misbehaving"), plugins.join("bad/bad.wasm")).unwrap();
    std::fs::write(plugins.join("bad/plugin.toml"), format!("name = \"bad\"\ncomponent = \"bad.wasm\"\n{manifest_tail}")).unwrap();
    plugins
}

/// Posts `count` samples one per request from `first_id` on; the acknowledgement times.
fn post_one_by_one(port: u16, first_id: u64, count: u64) -> Vec<Duration> {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    (first_id..first_id + count)
        .map(|id| {
            let started = Instant::now();
            let response = client.post(format!("http://127.0.0.1:{port}/v1/samples")).body(sample(id)).send().unwrap();
            assert_eq!(response.status().as_u16(), 200);
            started.elapsed()
        })
        .collect()
}

fn p90(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    latencies[latencies.len() * 9 / 10]
}

#[test]
fn a_plugin_sleeping_in_its_calls_is_cut_off_at_its_time_limit_and_never_holds_up_ingest_or_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugins_with_bad(
        dir.path(),
        "[grants]\ndata_dir = { path = \"bad\" }\noutbound = [{ url = \"http://127.0.0.1:9\" }]\n[limits]\ncall_timeout_ms = 500\n\
         [config]\nfault = \"sleep\"\n",
    );
    let input = dir.path().join("run.ndjson");
    std::fs::write(&input, (0..1000).map(sample).collect::<Vec<_>>().join("\n")).unwrap();
    let port = free_port();
    write_config(dir.path(), port, "");
    let host = HostProcess::start_with_plugins(dir.path(), port, input.to_str().unwrap(), &plugins);
    let traps = || host.figure("telemetry_plugin_traps_total{plugin=\"bad\"}");
    // Each of its updates sleeps an hour; each is abandoned at 500 ms and the instance replaced.
    assert!(wait_until(Duration::from_secs(30), || traps() >= 2.0), "the sleeping plugin was never cut off:\n{}", host_log(dir.path()));
    let detected = host_log(dir.path());
    assert!(
        detected.contains("exceeded its call time limit of 500 ms: the call was still waiting (a sleep, a poll or a blocking read)"),
        "{detected}"
    );
    let latencies = post_one_by_one(port, 1000, 300);
    let acknowledged = p90(latencies);
    eprintln!("p90 acknowledgement beside the sleeping plugin: {acknowledged:?}");
    assert!(acknowledged < Duration::from_millis(100), "acknowledgements took {acknowledged:?} (p90) beside a sleeping plugin");
    assert!(
        wait_until(Duration::from_secs(30), || file_rows(dir.path()).len() >= 1300),
        "the file connector fell behind:\n{}",
        host_log(dir.path())
    );
    // Told to stop while the plugin sleeps in a call: the host exits, within the call limit
    // and the stop grace, not after the hour.
    let asked = Instant::now();
    host.terminate(dir.path());
    let stopping = asked.elapsed();
    eprintln!("stopped in {stopping:?} beside the sleeping plugin");
    assert!(stopping < Duration::from_secs(10), "the host took {stopping:?} to stop");
    let rows: Vec<u64> = file_rows(dir.path()).into_iter().map(|(row, _)| row).collect();
    assert_eq!(rows, (0..1300).collect::<Vec<_>>(), "the file connector gets every row exactly once");
}
