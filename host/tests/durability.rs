//! What a 2xx or an XACK promises, against the real `telemetry-host` binary: a second
//! host on the folder, `export-stats` beside a loaded host, `kill -9`, a full disk, and a
//! plugin that reads for a long time.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{HostProcess, RedisServer, exported_column, free_port, host_log, sample, wait_until, write_config};

/// How often each id occurs in `rewards` of the exported history.
fn counts(dir: &Path) -> HashMap<u64, u32> {
    let mut counts = HashMap::new();
    for value in exported_column(dir, "rewards") {
        *counts.entry(value as u64).or_insert(0) += 1;
    }
    counts
}

fn post(client: &reqwest::blocking::Client, port: u16, id: u64) -> Result<(u16, String), reqwest::Error> {
    let response = client.post(format!("http://127.0.0.1:{port}/v1/samples")).body(sample(id)).send()?;
    let status = response.status().as_u16();
    Ok((status, response.text().unwrap_or_default()))
}

#[test]
fn a_second_host_is_refused_and_export_stats_beside_a_loaded_host_loses_nothing_acknowledged_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_config(dir.path(), port, "");
    let host = HostProcess::start(dir.path(), port, "none");

    // A second run on the same folder fails at once and names the holder.
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_telemetry-host"))
        .args(["run", "--config", "telemetry.toml", "--plugins", support::plugins_dir().to_str().unwrap(), "--input", "none"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let error = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{error}");
    assert!(error.contains("is in use by process") && error.contains(&host.child.id().to_string()), "{error}");

    // Four clients post one sample per request while export-stats reads in a loop.
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4u64)
        .map(|client_id| {
            let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
                let mut id = client_id;
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((200, _)) = post(&client, port, id) {
                        acknowledged.lock().unwrap().push(id);
                    }
                    id += 4;
                }
            })
        })
        .collect();
    let mut exports = 0;
    while exports < 5 || acknowledged.lock().unwrap().len() < 2000 {
        let before = acknowledged.lock().unwrap().clone();
        let exported = counts(dir.path());
        assert!(before.iter().all(|id| exported.get(id) == Some(&1)), "an export beside the host misses an acknowledged row");
        exports += 1;
    }
    host.kill_hard();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let stored = counts(dir.path());
    let missing: Vec<_> = acknowledged.iter().filter(|id| stored.get(id) != Some(&1)).take(5).collect();
    assert!(missing.is_empty(), "{} acknowledged, not stored once: {missing:?}\n{}", acknowledged.len(), host_log(dir.path()));
    assert!(stored.values().all(|count| *count == 1), "a row stored twice");
    // The host starts again on the folder the killed one left.
    let host = HostProcess::start(dir.path(), port, "none");
    assert!(host.figure("telemetry_rows_stored") >= acknowledged.len() as f64);
    host.terminate(dir.path());
}

/// A filesystem of `megabytes` mounted on `path` for the test, unmounted on drop.
struct SmallFilesystem {
    path: std::path::PathBuf,
}

impl SmallFilesystem {
    /// `None` (with the reason printed) where the test cannot mount one (not root).
    fn mount(path: &Path, megabytes: u32) -> Option<SmallFilesystem> {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(path)
            .stderr(std::process::Stdio::piped())
            .output();
        match status {
            Ok(output) if output.status.success() => Some(SmallFilesystem { path: path.to_path_buf() }),
            Ok(output) => {
                eprintln!("SKIPPED: cannot mount a small filesystem ({}); run as root", String::from_utf8_lossy(&output.stderr).trim());
                None
            }
            Err(error) => {
                eprintln!("SKIPPED: cannot run mount: {error}");
                None
            }
        }
    }

    /// Fills the filesystem with a ballast file until a write fails.
    fn fill(&self) {
        use std::io::Write;
        let mut ballast = std::fs::File::create(self.path.join("ballast")).unwrap();
        let block = vec![0u8; 64 * 1024];
        while ballast.write_all(&block).is_ok() {}
        let small = [0u8; 512];
        while ballast.write_all(&small).is_ok() {}
    }

    fn free(&self) {
        std::fs::remove_file(self.path.join("ballast")).unwrap();
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[test]
fn a_full_disk_answers_503_keeps_every_acknowledged_row_once_and_ingest_resumes_when_space_is_freed() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallFilesystem::mount(&dir.path().join("history"), 16) else { return };
    let port = free_port();
    let redis_section = format!("[redis]\nurl = \"{}\"\nchannel = \"\"\nstream = \"samples\"\n", redis.url());
    write_config(dir.path(), port, &redis_section);
    let host = HostProcess::start(dir.path(), port, "none");
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut connection = redis.connection();
    let mut xadd = |id: u64| {
        redis::cmd("XADD").arg("samples").arg("*").arg("sample").arg(sample(id)).query::<String>(&mut connection).unwrap();
    };
    // HTTP ids count from 0, stream ids from 1,000,000.
    let mut acknowledged = Vec::new();
    for id in 0..200 {
        assert_eq!(post(&client, port, id).unwrap().0, 200);
        acknowledged.push(id);
    }
    for id in 1_000_000..1_000_100 {
        xadd(id);
    }

    disk.fill();
    let mut refused = Vec::new();
    let mut id = 200;
    let started = Instant::now();
    while refused.len() < 20 && started.elapsed() < Duration::from_secs(60) {
        let (status, body) = post(&client, port, id).unwrap();
        match status {
            200 => acknowledged.push(id),
            503 => {
                assert!(body.contains("storage_failed") && body.contains("wal.log"), "{body}");
                refused.push(id);
            }
            other => panic!("{other}: {body}"),
        }
        id += 1;
    }
    assert_eq!(refused.len(), 20, "a full disk never refused a sample:\n{}", host_log(dir.path()));
    for id in 1_000_100..1_000_200 {
        xadd(id);
    }

    disk.free();
    // Ingest resumes by itself; the refused samples are sent again, as a client retries.
    assert!(wait_until(Duration::from_secs(30), || post(&client, port, refused[0]).is_ok_and(|(status, _)| status == 200)));
    acknowledged.push(refused[0]);
    for id in &refused[1..] {
        assert_eq!(post(&client, port, *id).unwrap().0, 200);
        acknowledged.push(*id);
    }
    let stream_stored = wait_until(Duration::from_secs(60), || host.figure("telemetry_rows_stored") >= (acknowledged.len() + 200) as f64);
    assert!(stream_stored, "{} rows stored:\n{}", host.figure("telemetry_rows_stored"), host_log(dir.path()));
    host.kill_hard();

    let host = HostProcess::start(dir.path(), port, "none");
    let stored = counts(dir.path());
    for id in acknowledged.iter().copied().chain(1_000_000..1_000_200) {
        assert_eq!(stored.get(&id), Some(&1), "id {id}: acknowledged (or stream entry), not stored exactly once");
    }
    assert_eq!(stored.len(), acknowledged.len() + 200, "nothing but what was acknowledged");
    assert!(stored.values().all(|count| *count == 1), "a refused sample was stored behind the client's back");
    host.terminate(dir.path());
    drop(disk);
}

#[test]
fn a_plugin_that_reads_for_long_does_not_delay_acknowledgements() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(plugins.join("reader")).unwrap();
    std::fs::copy(telemetry_testkit::fixture("misbehaving"), plugins.join("reader/reader.wasm")).unwrap();
    std::fs::write(
        plugins.join("reader/plugin.toml"),
        "name = \"reader\"\ncomponent = \"reader.wasm\"\n[grants]\ndata_dir = { path = \"reader\" }\n\
         outbound = [{ url = \"http://127.0.0.1:9\" }]\n[limits]\ncall_timeout_ms = 60000\n[config]\nfault = \"read-history\"\n",
    )
    .unwrap();
    let input = dir.path().join("run.ndjson");
    std::fs::write(&input, (0..100_000).map(sample).collect::<Vec<_>>().join("\n")).unwrap();
    let port = free_port();
    write_config(dir.path(), port, "");
    let host = HostProcess::start_with_plugins(dir.path(), port, input.to_str().unwrap(), &plugins);
    assert!(wait_until(Duration::from_secs(60), || host.figure("telemetry_rows_stored") >= 100_000.0), "{}", host_log(dir.path()));
    let client = reqwest::blocking::Client::new();
    let calls = || host.figure("telemetry_plugin_calls_total{plugin=\"reader\"}");
    let busy = || host.figure("telemetry_plugin_call_seconds_total{plugin=\"reader\"}");
    // Posts while the plugin is in its long reads. (Were the readers holding up ingest,
    // nearly every acknowledgement would wait for a whole call.)
    let mut latencies = Vec::new();
    let (calls_before, busy_before) = (calls(), busy());
    let mut id = 100_000;
    while calls() < calls_before + 3.0 {
        let started = Instant::now();
        assert_eq!(post(&client, port, id).unwrap().0, 200);
        latencies.push(started.elapsed());
        id += 1;
        assert!(id < 200_000, "the reader made no calls:\n{}", host_log(dir.path()));
    }
    let per_call = Duration::from_secs_f64((busy() - busy_before) / (calls() - calls_before));
    latencies.sort();
    // The 90th percentile: on 2 cores shared with other tests one post may wait for a core.
    let p90 = latencies[latencies.len() * 9 / 10];
    assert!(
        p90 * 4 < per_call,
        "acknowledgements took {p90:?} (p90 of {}) while the plugin's calls took {per_call:?} each: readers hold up ingest",
        latencies.len()
    );
    host.terminate(dir.path());
}
