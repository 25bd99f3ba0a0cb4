//! Hot swap as an operator does it (`cargo xtask bench hot_swap`): the real host binary
//! with the file connector and one plugin under test, a client posting one sample per
//! request all along, and the plugin replaced again and again.
//!
//! For a Rust component (the test fixture, 0.2 MB) and a Python one (componentize-py,
//! ~18 MB), each:
//! 1. `POST /v1/plugins/reload` after a manifest change (the component's compiled code is
//!    in the cache): from the request to the answer, which comes once the new version runs;
//! 2. the same after a rebuild (a custom section appended: new bytes, a cold compile);
//! 3. under `run --watch`: from the manifest written to the replacement counted in
//!    `/metrics` (the watcher's poll and settle time included);
//!
//! and the posting client's acknowledgement latency while nothing is swapped and while
//! the swaps go on, side by side. Python figures need componentize-py: `cargo xtask bench`
//! installs it; without it the bench says so and measures Rust only.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::{HostProcess, free_port, host_log, plugins_dir, sample, wait_until, write_config};
use telemetry_testkit::{fixture, target_dir};

const PLUGIN: &str = "swapped";
const SWAPS: usize = 10;
const REBUILDS: usize = 5;

/// A component to swap: its file name in the plugin folder, its bytes and its grants.
struct Subject {
    label: &'static str,
    file: &'static str,
    component: Vec<u8>,
    grants: &'static str,
}

fn main() {
    let mut subjects = vec![Subject {
        label: "Rust (test fixture `misbehaving`)",
        file: "misbehaving.wasm",
        component: std::fs::read(fixture("misbehaving")).unwrap(),
        grants: "[grants]\ndata_dir = { path = \"swapped\" }\noutbound = [{ url = \"http://127.0.0.1:9\" }]\n",
    }];
    match python_component() {
        Ok(component) => subjects.push(Subject { label: "Python (componentize-py)", file: "app.wasm", component, grants: "" }),
        Err(why) => println!("\n!!! PYTHON FIGURES SKIPPED: {why}\n!!! run `cargo xtask bench hot_swap`, which installs componentize-py\n"),
    }
    for subject in &subjects {
        println!("\n# {}, {:.1} MB", subject.label, subject.component.len() as f64 / 1e6);
        swaps_by_request(subject);
        swaps_by_watch(subject);
    }
}

fn manifest(subject: &Subject, version: usize) -> String {
    format!(
        "name = \"{PLUGIN}\"\ncomponent = \"{}\"\n{}[config]\nfault = \"none\"\nversion = \"{version}\"\n",
        subject.file, subject.grants
    )
}

/// The component with `build` appended as a custom section: the same code, other bytes.
fn rebuilt(component: &[u8], build: usize) -> Vec<u8> {
    let payload = format!("{build:08}");
    let mut bytes = component.to_vec();
    bytes.extend_from_slice(&[0, 1 + 7 + payload.len() as u8, 7]);
    bytes.extend_from_slice(b"rebuild");
    bytes.extend_from_slice(payload.as_bytes());
    bytes
}

/// A host in a fresh folder: the file connector and version 0 of the subject.
fn start_host(subject: &Subject, extra: &[&str]) -> (tempfile::TempDir, PathBuf, HostProcess) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    let file = plugins.join("file");
    std::fs::create_dir_all(&file).unwrap();
    for entry in std::fs::read_dir(plugins_dir().join("file")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), file.join(entry.file_name())).unwrap();
    }
    let folder = plugins.join(PLUGIN);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join(subject.file), &subject.component).unwrap();
    std::fs::write(folder.join("plugin.toml"), manifest(subject, 0)).unwrap();
    let port = free_port();
    write_config(dir.path(), port, "");
    let host = HostProcess::start_with_args(dir.path(), port, "none", &plugins, extra);
    assert!(wait_until(Duration::from_secs(300), || host.figure("telemetry_plugins_compiling") == 0.0), "{}", host_log(dir.path()));
    (dir, folder, host)
}

/// One client posting one sample per request until stopped; every answer's latency.
struct Poster {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(Vec<Duration>, usize)>,
}

impl Poster {
    fn start(port: u16) -> Poster {
        let stop = Arc::new(AtomicBool::new(false));
        let running = stop.clone();
        let thread = std::thread::spawn(move || {
            let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
            let (mut latencies, mut failures) = (Vec::new(), 0);
            let mut id = 0;
            while !running.load(Ordering::Relaxed) {
                let started = Instant::now();
                match client.post(format!("http://127.0.0.1:{port}/v1/samples")).body(sample(id)).send() {
                    Ok(response) if response.status() == 200 => latencies.push(started.elapsed()),
                    _ => failures += 1,
                }
                id += 1;
            }
            (latencies, failures)
        });
        Poster { stop, thread }
    }

    fn finish(self) -> (Vec<Duration>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn swaps_by_request(subject: &Subject) {
    let (dir, folder, host) = start_host(subject, &[]);
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().unwrap();
    let reload = || {
        let started = Instant::now();
        let response = client.post(format!("http://127.0.0.1:{}/v1/plugins/reload", host.port)).send().unwrap();
        let elapsed = started.elapsed();
        let status = response.status();
        let report: serde_json::Value = serde_json::from_str(&response.text().unwrap()).unwrap();
        assert!(status == 200 && report["replaced"] == serde_json::json!([PLUGIN]), "{status} {report}\n{}", host_log(dir.path()));
        elapsed
    };

    let quiet = Poster::start(host.port);
    std::thread::sleep(Duration::from_secs(3));
    let (quiet, quiet_failures) = quiet.finish();

    let swapping = Poster::start(host.port);
    let mut cached = Vec::new();
    for version in 1..=SWAPS {
        std::fs::write(folder.join("plugin.toml"), manifest(subject, version)).unwrap();
        cached.push(reload());
    }
    let mut cold = Vec::new();
    for build in 1..=REBUILDS {
        std::fs::write(folder.join(subject.file), rebuilt(&subject.component, build)).unwrap();
        cold.push(reload());
    }
    let (during, during_failures) = swapping.finish();
    let stored = host.figure("telemetry_rows_stored");
    host.terminate(dir.path());

    println!("POST /v1/plugins/reload, manifest changed (compiled code cached), {SWAPS} swaps: {}", spread(&cached));
    println!("POST /v1/plugins/reload, component rebuilt (cold compile), {REBUILDS} swaps: {}", spread(&cold));
    let acknowledged = quiet.len() + during.len();
    println!("one sample per POST, nothing swapped: {} answers, {quiet_failures} failed; {}", quiet.len(), percentiles(quiet));
    println!("one sample per POST, while swapping:  {} answers, {during_failures} failed; {}", during.len(), percentiles(during));
    println!("rows stored: {stored} (every acknowledged sample)");
    assert_eq!(stored as usize, acknowledged, "acknowledged samples missing from the history");
}

fn swaps_by_watch(subject: &Subject) {
    let (dir, folder, host) = start_host(subject, &["--watch"]);
    let replaced = format!("telemetry_plugin_reloads_total{{plugin=\"{PLUGIN}\",outcome=\"replaced\"}}");
    let mut seen = Vec::new();
    for version in 1..=5 {
        let written = Instant::now();
        std::fs::write(folder.join("plugin.toml"), manifest(subject, version)).unwrap();
        let done = wait_until(Duration::from_secs(120), || host.figure(&replaced) == version as f64);
        assert!(done, "version {version} not swapped in:\n{}", host_log(dir.path()));
        seen.push(written.elapsed());
    }
    host.terminate(dir.path());
    println!("run --watch, manifest written -> replaced in /metrics, 5 swaps: {}", spread(&seen));
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}

fn spread(times: &[Duration]) -> String {
    let mut sorted = times.to_vec();
    sorted.sort();
    format!("median {}, min {}, max {}", ms(sorted[sorted.len() / 2]), ms(sorted[0]), ms(sorted[sorted.len() - 1]))
}

fn percentiles(mut times: Vec<Duration>) -> String {
    if times.is_empty() {
        return "no answer".into();
    }
    times.sort();
    let at = |fraction: f64| times[((times.len() - 1) as f64 * fraction) as usize];
    format!("p50 {}, p99 {}, max {}", ms(at(0.5)), ms(at(0.99)), ms(at(1.0)))
}

/// The benchmark's Python connector built with componentize-py, once per source.
fn python_component() -> Result<Vec<u8>, String> {
    let tool = std::env::var_os("COMPONENTIZE_PY")
        .map(PathBuf::from)
        .or_else(|| Some(target_dir().join("componentize-py-venv/bin/componentize-py")).filter(|path| path.is_file()))
        .unwrap_or_else(|| PathBuf::from("componentize-py"));
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/hot_swap");
    let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
    let key = {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        std::fs::read(source.join("app.py")).map_err(|error| error.to_string())?.hash(&mut hasher);
        for entry in std::fs::read_dir(&wit).map_err(|error| error.to_string())? {
            std::fs::read(entry.map_err(|error| error.to_string())?.path()).unwrap_or_default().hash(&mut hasher);
        }
        hasher.finish()
    };
    let built = target_dir().join("hot-swap-bench").join(format!("app-{key:016x}.wasm"));
    if !built.is_file() {
        std::fs::create_dir_all(built.parent().unwrap()).map_err(|error| error.to_string())?;
        println!("(building the Python connector with {}: ~20 s)", tool.display());
        let output = Command::new(&tool)
            .arg("-d")
            .arg(&wit)
            .args(["-w", "connector", "componentize", "-p"])
            .arg(&source)
            .arg("app")
            .arg("-o")
            .arg(&built)
            .output()
            .map_err(|error| format!("componentize-py not found ({}: {error})", tool.display()))?;
        if !output.status.success() {
            return Err(format!("componentize-py failed: {}", String::from_utf8_lossy(&output.stderr)));
        }
    }
    std::fs::read(&built).map_err(|error| error.to_string())
}
