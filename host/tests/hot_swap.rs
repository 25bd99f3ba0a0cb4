//! Hot swap, end to end: the real host binary under continuous ingest (one sample per
//! HTTP request, and a Redis stream) while the Grafana connector answers queries in a
//! loop; a plugin is added, replaced by a build that writes another marker, replaced by a
//! broken build, by one whose `start` fails, removed and added again. Every row must reach
//! the plugin exactly once and in order across all of it, each version from where the
//! previous one stopped; no query fails; ingest goes on; the file connector gets every row.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{HostProcess, RedisServer, file_rows, free_port, host_log, plugins_dir, sample, wait_until, write_config};
use telemetry_testkit::fixture;

const PLUGIN: &str = "swapped";

/// The manifest of the recording fixture as version `version` (with `fault`).
fn manifest(version: &str, fault: &str) -> String {
    format!(
        "name = \"{PLUGIN}\"\ncomponent = \"misbehaving.wasm\"\n[grants]\ndata_dir = {{ path = \"{PLUGIN}\" }}\n\
         outbound = [{{ url = \"http://127.0.0.1:9\" }}]\n[config]\nfault = \"{fault}\"\nversion = \"{version}\"\n"
    )
}

fn install_version(folder: &Path, version: &str, fault: &str) {
    std::fs::create_dir_all(folder).unwrap();
    std::fs::copy(fixture("misbehaving"), folder.join("misbehaving.wasm")).unwrap();
    std::fs::write(folder.join("plugin.toml"), manifest(version, fault)).unwrap();
}

fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// `(row, version)` of every line the fixture wrote.
fn recorded(dir: &Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(dir.join("data").join(PLUGIN).join("rows.txt")).unwrap_or_default();
    text.lines()
        .map(|line| {
            let (row, version) = line.split_once(' ').unwrap_or((line, ""));
            (row.parse().unwrap(), version.to_string())
        })
        .collect()
}

fn lines_of(dir: &Path, version: &str) -> usize {
    recorded(dir).iter().filter(|(_, seen)| seen == version).count()
}

fn reload(client: &reqwest::blocking::Client, port: u16) -> (u16, Value) {
    let response = client.post(format!("http://127.0.0.1:{port}/v1/plugins/reload")).send().unwrap();
    let status = response.status().as_u16();
    (status, serde_json::from_str(&response.text().unwrap()).unwrap())
}

fn names(report: &Value, key: &str) -> Vec<String> {
    let mut names: Vec<String> = report[key].as_array().unwrap().iter().map(|name| name.as_str().unwrap().to_string()).collect();
    names.sort();
    names
}

/// What the load generators saw.
#[derive(Default)]
struct Seen {
    acknowledged: Vec<u64>,
    failures: Vec<String>,
    slowest: Duration,
    requests: u64,
}

/// Clients that run until `stop`: one sample per HTTP request, stream entries, queries.
struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Seen>>,
}

impl Traffic {
    fn start(port: u16, redis: &RedisServer) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let client = || reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let mut threads = Vec::new();
        let (running, http) = (stop.clone(), client());
        threads.push(std::thread::spawn(move || {
            let mut seen = Seen::default();
            let mut id = 0;
            while !running.load(Ordering::Relaxed) {
                let started = Instant::now();
                match http.post(format!("http://127.0.0.1:{port}/v1/samples")).body(sample(id)).send() {
                    Ok(response) if response.status() == 200 => seen.acknowledged.push(id),
                    Ok(response) => seen.failures.push(format!("sample {id}: {}", response.status())),
                    Err(error) => seen.failures.push(format!("sample {id}: {error}")),
                }
                seen.slowest = seen.slowest.max(started.elapsed());
                seen.requests += 1;
                id += 1;
            }
            seen
        }));
        let (running, mut connection) = (stop.clone(), redis.connection());
        threads.push(std::thread::spawn(move || {
            let mut seen = Seen::default();
            let mut id = 1_000_000;
            while !running.load(Ordering::Relaxed) {
                redis::cmd("XADD").arg("samples").arg("*").arg("sample").arg(sample(id)).query::<String>(&mut connection).unwrap();
                seen.acknowledged.push(id);
                id += 1;
                // A worker finishes an episode now and then, not in a tight loop.
                std::thread::sleep(Duration::from_millis(2));
            }
            seen
        }));
        let (running, queries) = (stop.clone(), client());
        threads.push(std::thread::spawn(move || {
            let mut seen = Seen::default();
            let body = json!({ "targets": [{ "target": "rewards", "refId": "A" }], "maxDataPoints": 200 }).to_string();
            while !running.load(Ordering::Relaxed) {
                let started = Instant::now();
                let answer = queries.post(format!("http://127.0.0.1:{port}/grafana/query")).body(body.clone()).send();
                match answer.map(|response| (response.status(), response.text().unwrap_or_default())) {
                    Ok((status, text)) if status == 200 && serde_json::from_str::<Value>(&text).is_ok_and(|v| v.is_array()) => {}
                    Ok((status, text)) => seen.failures.push(format!("query: {status}: {text}")),
                    Err(error) => seen.failures.push(format!("query: {error}")),
                }
                seen.slowest = seen.slowest.max(started.elapsed());
                seen.requests += 1;
            }
            seen
        }));
        Traffic { stop, threads }
    }

    fn finish(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.into_iter().map(|thread| thread.join().unwrap()).collect()
    }
}

fn rows_stored(host: &HostProcess) -> f64 {
    host.figure("telemetry_rows_stored")
}

/// Waits until `more` rows were stored after now: ingest goes on.
fn ingest_goes_on(host: &HostProcess, dir: &Path, more: f64) {
    let from = rows_stored(host);
    let grew = wait_until(Duration::from_secs(60), || rows_stored(host) >= from + more);
    assert!(grew, "ingest stalled at {from} rows:\n{}", host_log(dir));
}

fn grows(dir: &Path, version: &str, what: &str) {
    let before = lines_of(dir, version);
    let grew = wait_until(Duration::from_secs(60), || lines_of(dir, version) > before);
    assert!(grew, "{what}: version {version} took no more rows after {before}:\n{}", host_log(dir));
}

#[test]
fn a_plugin_added_replaced_broken_and_removed_under_load_gets_every_row_once() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    for shipped in ["file", "grafana"] {
        copy_folder(&plugins_dir().join(shipped), &plugins.join(shipped));
    }
    let port = free_port();
    write_config(dir.path(), port, &format!("[redis]\nurl = \"{}\"\nchannel = \"\"\nstream = \"samples\"\n", redis.url()));
    let host = HostProcess::start_with_plugins(dir.path(), port, "none", &plugins);
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
    let traffic = Traffic::start(port, &redis);
    ingest_goes_on(&host, dir.path(), 200.0);

    // Added: from row 0, the whole history so far.
    let folder = plugins.join(PLUGIN);
    install_version(&folder, "a", "none");
    let (status, report) = reload(&client, port);
    assert_eq!((status, names(&report, "added")), (200, vec![PLUGIN.to_string()]), "{report}");
    assert_eq!(names(&report, "unchanged"), ["file", "grafana"], "{report}");
    grows(dir.path(), "a", "added");

    // Replaced by a build that writes another marker, and Grafana's connector with it,
    // while its queries go on.
    std::fs::write(folder.join("plugin.toml"), manifest("b", "none")).unwrap();
    let grafana_manifest = std::fs::read_to_string(plugins.join("grafana/plugin.toml")).unwrap();
    std::fs::write(plugins.join("grafana/plugin.toml"), grafana_manifest.replace("default_points = 1000", "default_points = 900")).unwrap();
    let (status, report) = reload(&client, port);
    assert_eq!((status, names(&report, "replaced")), (200, vec!["grafana".to_string(), PLUGIN.to_string()]), "{report}");
    grows(dir.path(), "b", "replaced");

    // A broken build: the previous version runs on, and the answer says why.
    let component = std::fs::read(folder.join("misbehaving.wasm")).unwrap();
    std::fs::write(folder.join("misbehaving.wasm"), &component[..component.len() / 2]).unwrap();
    let (status, report) = reload(&client, port);
    assert_eq!(status, 422, "{report}");
    let failure = &report["failed"][0];
    assert_eq!((failure["plugin"].as_str(), failure["previous_version_kept"].as_bool()), (Some(PLUGIN), Some(true)), "{report}");
    assert!(failure["error"].as_str().unwrap().contains("misbehaving.wasm"), "{report}");
    grows(dir.path(), "b", "after the broken build");

    // A build whose `start` fails, through `plugin reload`: the previous version is
    // started again at the same cursor.
    std::fs::write(folder.join("misbehaving.wasm"), &component).unwrap();
    std::fs::write(folder.join("plugin.toml"), manifest("c", "trap-start")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_telemetry-host"))
        .args(["plugin", "reload", "--config", "telemetry.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "a failed reload must fail the command: {answer}");
    assert!(answer.contains("\"previous_version_kept\": true") && answer.contains("`start` failed"), "{answer}");
    grows(dir.path(), "b", "after the failed start");
    assert_eq!(host.figure(&format!("telemetry_plugin_reloads_total{{plugin=\"{PLUGIN}\",outcome=\"failed\"}}")), 2.0);

    // Removed through SIGHUP: stopped cleanly, cursor kept while ingest goes on.
    std::fs::remove_dir_all(&folder).unwrap();
    assert!(Command::new("kill").args(["-HUP", &host.child.id().to_string()]).status().unwrap().success());
    let removed = format!("telemetry_plugin_reloads_total{{plugin=\"{PLUGIN}\",outcome=\"removed\"}}");
    assert!(wait_until(Duration::from_secs(60), || host.figure(&removed) == 1.0), "not removed:\n{}", host_log(dir.path()));
    let at_removal = recorded(dir.path()).len();
    ingest_goes_on(&host, dir.path(), 300.0);
    assert_eq!(recorded(dir.path()).len(), at_removal, "a removed plugin took rows");

    // Added again: from its kept cursor, not from row 0.
    install_version(&folder, "d", "none");
    let (status, report) = reload(&client, port);
    assert_eq!((status, names(&report, "added")), (200, vec![PLUGIN.to_string()]), "{report}");
    grows(dir.path(), "d", "added again");
    ingest_goes_on(&host, dir.path(), 200.0);

    let seen = traffic.finish();
    for (what, seen) in ["samples", "stream", "queries"].iter().zip(&seen) {
        assert!(
            seen.failures.is_empty(),
            "{what}: {} failed, e.g. {:?}",
            seen.failures.len(),
            &seen.failures[..seen.failures.len().min(5)]
        );
    }
    let expected: Vec<u64> = seen[0].acknowledged.iter().chain(&seen[1].acknowledged).copied().collect();
    let stored = expected.len() as f64;
    assert!(
        wait_until(Duration::from_secs(60), || rows_stored(&host) >= stored),
        "stream entries not all stored:\n{}",
        host_log(dir.path())
    );
    eprintln!(
        "{} samples over HTTP (slowest acknowledgement {:.1} ms), {} stream entries, {} queries (slowest {:.1} ms)",
        seen[0].acknowledged.len(),
        seen[0].slowest.as_secs_f64() * 1e3,
        seen[1].acknowledged.len(),
        seen[2].requests,
        seen[2].slowest.as_secs_f64() * 1e3
    );
    host.terminate(dir.path());

    // Every row exactly once, in order, each version where the previous one stopped.
    let rows = recorded(dir.path());
    assert_eq!(rows.len() as f64, stored, "rows recorded by the swapped plugin");
    assert!(rows.iter().enumerate().all(|(index, (row, _))| *row == index as u64), "rows out of order or repeated");
    let mut versions: Vec<&str> = rows.iter().map(|(_, version)| version.as_str()).collect();
    versions.dedup();
    assert_eq!(versions, ["a", "b", "d"], "the versions in the order they took rows");
    // The file connector beside it got every sample once.
    let mut rewards: Vec<u64> = file_rows(dir.path()).iter().map(|(_, reward)| *reward as u64).collect();
    rewards.sort();
    let mut expected = expected;
    expected.sort();
    assert_eq!(rewards, expected, "the file connector's rows");
}

/// `run --watch`: a plugin folder written in several steps is picked up once settled,
/// a rebuild replaces it, and a touched file changes nothing.
#[test]
fn run_watch_picks_up_a_new_and_a_rebuilt_plugin_and_ignores_a_touch() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    copy_folder(&plugins_dir().join("file"), &plugins.join("file"));
    let port = free_port();
    write_config(dir.path(), port, "");
    let host = HostProcess::start_with_args(dir.path(), port, "none", &plugins, &["--watch"]);
    let client = reqwest::blocking::Client::new();
    let mut next_id = 0;
    let mut feed = |count: u64| {
        for _ in 0..count {
            let response = client.post(format!("http://127.0.0.1:{port}/v1/samples")).body(sample(next_id)).send().unwrap();
            assert_eq!(response.status(), 200);
            next_id += 1;
        }
    };
    feed(50);
    let folder = plugins.join(PLUGIN);
    install_version(&folder, "a", "none");
    assert!(wait_until(Duration::from_secs(60), || lines_of(dir.path(), "a") == 50), "not picked up:\n{}", host_log(dir.path()));

    // A rebuild: the component written in two steps, as a build or a copy does.
    let component = std::fs::read(fixture("misbehaving")).unwrap();
    let mut rebuilt = component.clone();
    // A custom section: another build of the same code.
    rebuilt.extend_from_slice(&[0, 9, 7, b'r', b'e', b'b', b'u', b'i', b'l', b'd', 1]);
    std::fs::write(folder.join("misbehaving.wasm"), &rebuilt[..rebuilt.len() / 2]).unwrap();
    std::fs::write(folder.join("plugin.toml"), manifest("b", "none")).unwrap();
    std::fs::write(folder.join("misbehaving.wasm"), &rebuilt).unwrap();
    let replaced = format!("telemetry_plugin_reloads_total{{plugin=\"{PLUGIN}\",outcome=\"replaced\"}}");
    assert!(wait_until(Duration::from_secs(60), || host.figure(&replaced) == 1.0), "not replaced:\n{}", host_log(dir.path()));
    feed(50);
    assert!(wait_until(Duration::from_secs(30), || lines_of(dir.path(), "b") == 50), "{:?}", recorded(dir.path()));

    // Touched: seen, reloaded, unchanged.
    let reloads = || host_log(dir.path()).matches("plugin directory reloaded").count();
    let before = reloads();
    let file = std::fs::File::options().append(true).open(folder.join("misbehaving.wasm")).unwrap();
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(5)).unwrap();
    drop(file);
    assert!(wait_until(Duration::from_secs(30), || reloads() > before), "the touch was not seen:\n{}", host_log(dir.path()));
    assert_eq!(host.figure(&replaced), 1.0, "a touched file replaced the plugin");
    host.terminate(dir.path());
    let rows: Vec<u64> = recorded(dir.path()).iter().map(|(row, _)| *row).collect();
    assert_eq!(rows, (0..100).collect::<Vec<_>>());
}
