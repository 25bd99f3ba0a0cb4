//! The sandbox's limits against the real host binary: a hostile plugin beside the file
//! connector, which must get every row exactly once while the host keeps acknowledging
//! samples one per request, stays within a bound of its memory, and stops when told to.
//! Each attack prints its figures (time to detection, acknowledgement p90, RSS).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{HostProcess, component_from_wat, file_rows, free_port, host_log, plugins_dir, sample, wait_until, write_config};

/// Grants every `misbehaving` fixture needs: it imports outgoing HTTP and writes its rows.
const MISBEHAVING_GRANTS: &str = "[grants]\ndata_dir = { path = \"bad\" }\noutbound = [{ url = \"http://127.0.0.1:9\" }]\n";
/// How far above its baseline the host's peak RSS may go beside a hostile plugin, beyond
/// the plugin's own `memory_mb`.
const RSS_SLACK_MIB: u64 = 64;
const DETECTION_WAIT: Duration = Duration::from_secs(30);

/// A plugin folder with the file connector and `component` as `bad` under `manifest_tail`.
fn plugins_with_bad(dir: &Path, component: &[u8], manifest_tail: &str) -> std::path::PathBuf {
    let plugins = dir.join("plugins");
    for name in ["file", "bad"] {
        std::fs::create_dir_all(plugins.join(name)).unwrap();
    }
    for entry in std::fs::read_dir(plugins_dir().join("file")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), plugins.join("file").join(entry.file_name())).unwrap();
    }
    std::fs::write(plugins.join("bad/bad.wasm"), component).unwrap();
    std::fs::write(plugins.join("bad/plugin.toml"), format!("name = \"bad\"\ncomponent = \"bad.wasm\"\n{manifest_tail}")).unwrap();
    plugins
}

fn misbehaving() -> Vec<u8> {
    std::fs::read(telemetry_testkit::fixture("misbehaving")).unwrap()
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

/// A host running a hostile plugin that has been caught.
struct Attacked {
    dir: tempfile::TempDir,
    host: HostProcess,
    /// Samples posted (and stored) in all.
    posted: u64,
}

/// Runs `component` as `bad` under `manifest_tail` beside the file connector: posts samples
/// one per request while the attack runs until `caught` holds (given the host and its log),
/// then 300 more. Asserts the acknowledgements kept their pace, the host's RSS stayed within
/// `memory_mb` + RSS_SLACK_MIB of its baseline, and the file connector got every row once.
fn attack(name: &str, component: &[u8], manifest_tail: &str, memory_mb: u64, caught: impl Fn(&HostProcess, &str) -> bool) -> Attacked {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugins_with_bad(dir.path(), component, manifest_tail);
    let input = dir.path().join("none.ndjson");
    std::fs::write(&input, "").unwrap();
    let port = free_port();
    write_config(dir.path(), port, "");
    let host = HostProcess::start_with_plugins(dir.path(), port, input.to_str().unwrap(), &plugins);
    let baseline_kib = host.memory_kib("VmRSS");
    let started = Instant::now();
    let mut during = Vec::new();
    // At least one round of posts runs beside the attack, however soon it is caught.
    loop {
        during.extend(post_one_by_one(port, during.len() as u64, 50));
        if caught(&host, &host_log(dir.path())) {
            break;
        }
        assert!(started.elapsed() < DETECTION_WAIT, "{name}: the attack was never caught:\n{}", host_log(dir.path()));
    }
    let detection = started.elapsed();
    let posted = during.len() as u64;
    let after = post_one_by_one(port, posted, 300);
    let posted = posted + 300;
    let peak_kib = host.memory_kib("VmHWM");
    let (during, after) = (p90(during), p90(after));
    eprintln!(
        "attack {name}: caught in {} ms; one-sample acknowledgement p90 {during:?} during, {after:?} after; \
         RSS {} MiB baseline, {} MiB peak",
        detection.as_millis(),
        baseline_kib >> 10,
        peak_kib >> 10
    );
    for (when, p90) in [("during", during), ("after", after)] {
        assert!(p90 < Duration::from_millis(100), "{name}: acknowledgements took {p90:?} (p90) {when} the attack");
    }
    let bound_kib = baseline_kib + ((memory_mb + RSS_SLACK_MIB) << 10);
    assert!(peak_kib <= bound_kib, "{name}: the host peaked at {} MiB, past {} MiB", peak_kib >> 10, bound_kib >> 10);
    assert!(
        wait_until(Duration::from_secs(30), || file_rows(dir.path()).len() as u64 >= posted),
        "{name}: the file connector fell behind:\n{}",
        host_log(dir.path())
    );
    let rows: Vec<u64> = file_rows(dir.path()).into_iter().map(|(row, _)| row).collect();
    assert_eq!(rows, (0..posted).collect::<Vec<_>>(), "{name}: the file connector gets every row exactly once");
    Attacked { dir, host, posted }
}

fn traps(host: &HostProcess) -> f64 {
    host.figure("telemetry_plugin_traps_total{plugin=\"bad\"}")
}

#[test]
fn a_plugin_sleeping_in_its_calls_is_cut_off_at_its_time_limit_and_never_holds_up_ingest_or_shutdown() {
    let tail = format!("{MISBEHAVING_GRANTS}[limits]\ncall_timeout_ms = 500\n[config]\nfault = \"sleep\"\n");
    // Each of its updates sleeps an hour; each is abandoned at 500 ms and the instance replaced.
    let attacked = attack("sleep", &misbehaving(), &tail, 256, |host, log| {
        traps(host) >= 2.0
            && log.contains("exceeded its call time limit of 500 ms: the call was still waiting (a sleep, a poll or a blocking read)")
    });
    // Told to stop while the plugin sleeps in a call: the host exits, within the call limit
    // and the stop grace, not after the hour.
    let asked = Instant::now();
    let Attacked { dir, host, posted } = attacked;
    host.terminate(dir.path());
    let stopping = asked.elapsed();
    eprintln!("stopped in {stopping:?} beside the sleeping plugin");
    assert!(stopping < Duration::from_secs(10), "the host took {stopping:?} to stop");
    assert_eq!(file_rows(dir.path()).len() as u64, posted);
}

#[test]
fn a_plugin_looping_forever_is_interrupted_at_its_time_limit() {
    let tail = format!("{MISBEHAVING_GRANTS}[limits]\ncall_timeout_ms = 500\n[config]\nfault = \"loop\"\n");
    attack("loop", &misbehaving(), &tail, 256, |host, log| traps(host) >= 2.0 && log.contains("exceeded its call time limit of 500 ms"));
}

#[test]
fn a_plugin_allocating_without_bound_is_stopped_at_its_memory_limit() {
    let tail = format!("{MISBEHAVING_GRANTS}[limits]\nmemory_mb = 32\n[config]\nfault = \"alloc\"\n");
    attack("alloc", &misbehaving(), &tail, 32, |host, log| {
        traps(host) >= 2.0 && log.contains("ran out of memory (limit 32 MiB) counting all its memories and tables")
    });
}

#[test]
fn extra_linear_memories_count_against_the_same_memory_limit() {
    attack("many memories (WAT)", &component_from_wat("many-memories"), "[limits]\nmemory_mb = 32\n", 32, |host, log| {
        traps(host) >= 2.0 && log.contains("ran out of memory (limit 32 MiB) counting all its memories and tables")
    });
}

#[test]
fn a_growing_table_counts_against_the_memory_limit() {
    attack("huge table (WAT)", &component_from_wat("huge-table"), "[limits]\nmemory_mb = 32\n", 32, |host, log| {
        traps(host) >= 2.0 && log.contains("ran out of memory (limit 32 MiB) counting all its memories and tables")
    });
}

#[test]
fn a_plugin_opening_files_without_bound_runs_out_of_its_own_handles() {
    let tail = format!("{MISBEHAVING_GRANTS}[limits]\nhandles = 64\n[config]\nfault = \"open-files\"\n");
    attack("open files", &misbehaving(), &tail, 256, |host, log| {
        traps(host) >= 2.0 && log.contains("ran out of handles (limit 64 open files, streams and pollables at once: limits.handles)")
    });
}

#[test]
fn a_plugin_filling_its_data_directory_is_refused_at_its_disk_limit() {
    let tail = format!("{MISBEHAVING_GRANTS}[limits]\ndisk_mb = 2\n[config]\nfault = \"fill-disk\"\n");
    let attacked = attack("fill disk", &misbehaving(), &tail, 256, |host, log| {
        host.figure("telemetry_plugin_disk_refused_total{plugin=\"bad\"}") >= 2.0 && log.contains("fill-disk files refused")
    });
    let log = host_log(attacked.dir.path());
    assert!(log.contains("refused: ") && log.contains("of limits.disk_mb = 2 MiB in use"), "the host log names the limit:\n{log}");
    assert!(log.contains("No space left on device"), "the plugin sees a full disk:\n{log}");
    let counted = attacked.host.figure("telemetry_plugin_disk_bytes{plugin=\"bad\"}");
    assert!((0.0..=f64::from(2 << 20)).contains(&counted), "{counted} bytes counted");
}
