//! What the end-to-end tests of the `telemetry-host` binary share: a real `redis-server`
//! on a free port, the host as a child process, its figures.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use telemetry_testkit::wait_until;

/// A `redis-server` of its own, without persistence, stopped on drop.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            // A subscriber that lags must not be disconnected in the middle of a test.
            .args(["--client-output-buffer-limit", "pubsub 0 0 0"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is needed by these tests (`apt-get install redis-server`; .ci/run installs it)");
        let server = RedisServer { child, port };
        let ready = wait_until(Duration::from_secs(10), || server.connection_now().is_some());
        assert!(ready, "redis-server did not answer on port {port}");
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn connection_now(&self) -> Option<redis::Connection> {
        let mut connection = redis::Client::open(self.url()).ok()?.get_connection().ok()?;
        redis::cmd("PING").query::<String>(&mut connection).ok()?;
        Some(connection)
    }

    pub fn connection(&self) -> redis::Connection {
        self.connection_now().expect("a connection to the test redis-server")
    }

    /// Waits until one client subscribes to `channel` (the host, once it started).
    pub fn wait_for_subscriber(&self, channel: &str) -> bool {
        let mut connection = self.connection();
        wait_until(Duration::from_secs(30), || {
            let counts: Vec<(String, u64)> = redis::cmd("PUBSUB").arg("NUMSUB").arg(channel).query(&mut connection).unwrap();
            counts.first().is_some_and(|(_, count)| *count == 1)
        })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The plugin folder `cargo xtask guests` built.
pub fn plugins_dir() -> PathBuf {
    telemetry_testkit::plugins_dir()
}

/// The host as a child process in `dir`, configured by `dir/telemetry.toml`.
pub struct HostProcess {
    pub child: Child,
    pub port: u16,
}

/// The built-in default with the given extra TOML, the HTTP server on `port`, W&B off
/// (it needs a key and the network), the file connector without plot.
pub fn write_config(dir: &Path, port: u16, extra: &str) {
    let config = format!(
        "{}\n[http]\nlisten = \"127.0.0.1:{port}\"\n[runtime]\nhistory_dir = \"history\"\ndata_dir = \"data\"\n\
         [plugins.wandb]\nenabled = false\n[plugins.file.config]\nplot = false\njson_interval_s = 0\nfsync = false\n{extra}",
        telemetry_host::config::DEFAULT_CONFIG
    );
    std::fs::write(dir.join("telemetry.toml"), config).unwrap();
}

impl HostProcess {
    pub fn start(dir: &Path, port: u16, input: &str) -> HostProcess {
        HostProcess::start_with_plugins(dir, port, input, &plugins_dir())
    }

    pub fn start_with_plugins(dir: &Path, port: u16, input: &str, plugins: &Path) -> HostProcess {
        let host = HostProcess::start_ingesting(dir, port, input, plugins);
        // Plugins compile in the background; the tests want them running.
        let compiled = wait_until(Duration::from_secs(120), || host.figure("telemetry_plugins_compiling") == 0.0);
        assert!(compiled, "plugins still compiling after 120 s:\n{}", host_log(dir));
        host
    }

    /// The host as soon as it serves (its plugins may still be compiling).
    pub fn start_ingesting(dir: &Path, port: u16, input: &str, plugins: &Path) -> HostProcess {
        HostProcess::start_with_args(dir, port, input, plugins, &[])
    }

    /// The host as soon as it serves, with more arguments to `run`.
    pub fn start_with_args(dir: &Path, port: u16, input: &str, plugins: &Path, extra: &[&str]) -> HostProcess {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("host.log")).unwrap();
        // Benchmarks compare another build side by side through this variable.
        let binary = std::env::var("TELEMETRY_HOST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_telemetry-host").to_string());
        let child = Command::new(binary)
            .args(["run", "--config", "telemetry.toml", "--plugins", plugins.to_str().unwrap(), "--input", input, "--wait"])
            .args(extra)
            .current_dir(dir)
            .env("RUST_LOG", "info,wasmtime=warn,cranelift=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let host = HostProcess { child, port };
        assert!(wait_until(Duration::from_secs(60), || host.figures().is_some()), "the host did not serve /metrics:\n{}", host_log(dir));
        host
    }

    /// `/metrics` as name (with labels) -> value.
    pub fn figures(&self) -> Option<std::collections::HashMap<String, f64>> {
        // A host that deadlocked must fail the test, not hang it.
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().ok()?;
        let text = client.get(format!("http://127.0.0.1:{}/metrics", self.port)).send().ok()?.text().ok()?;
        Some(
            text.lines()
                .filter(|line| !line.starts_with('#'))
                .filter_map(|line| line.rsplit_once(' '))
                .filter_map(|(name, value)| Some((name.to_string(), value.parse().ok()?)))
                .collect(),
        )
    }

    pub fn figure(&self, name: &str) -> f64 {
        self.figures().and_then(|figures| figures.get(name).copied()).unwrap_or(-1.0)
    }

    /// Kibibytes of the host's `field` in /proc (`VmRSS` now, `VmHWM` at its peak).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|line| line.starts_with(field)).unwrap_or_else(|| panic!("no {field} in /proc status"));
        line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).unwrap()
    }

    pub fn kill_hard(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for the host to exit (after a shutdown message or a signal).
    pub fn wait_exit(mut self, dir: &Path) {
        let exited = wait_until(Duration::from_secs(60), || self.child.try_wait().unwrap().is_some());
        assert!(exited, "the host did not stop:\n{}", host_log(dir));
        assert!(self.child.wait().unwrap().success(), "the host failed:\n{}", host_log(dir));
    }

    pub fn terminate(self, dir: &Path) {
        // As an operator would stop it.
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        self.wait_exit(dir);
    }
}

/// A test that fails must not leave its host running.
impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn host_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("host.log")).unwrap_or_default()
}

/// The history as the original's stats file, through `export-stats`.
pub fn exported_column(dir: &Path, series: &str) -> Vec<f64> {
    let output = Command::new(env!("CARGO_BIN_EXE_telemetry-host"))
        .args(["export-stats", "--config", "telemetry.toml"])
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap().replace("NaN", "null");
    let columns: serde_json::Value = serde_json::from_str(&text).unwrap();
    columns[series].as_array().unwrap().iter().map(|value| value.as_f64().unwrap_or(f64::NAN)).collect()
}

/// `(row, rewards)` of every line of the file connector's telemetry.jsonl.
pub fn file_rows(dir: &Path) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(dir.join("data/file/telemetry.jsonl")).unwrap_or_default();
    text.lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            (row["row"].as_u64().unwrap(), row["rewards"].as_f64().unwrap_or(f64::NAN))
        })
        .collect()
}

pub fn sample(id: u64) -> String {
    serde_json::json!({ "ep_reward": id as f64, "ep_steps": 1, "total_steps": id }).to_string()
}

/// What wrk's `--latency` report says: requests per second, p50, p99 and the count of
/// answers that were not 2xx or 3xx.
pub struct WrkReport {
    pub rate: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub errors: u64,
}

/// Runs `wrk -t threads -c connections -d seconds --latency -s script url`.
pub fn wrk(url: &str, script: &Path, threads: usize, connections: usize, seconds: u64) -> WrkReport {
    let output = Command::new("wrk")
        .args(["-t", &threads.to_string(), "-c", &connections.to_string(), "-d", &format!("{seconds}s"), "--latency", "-s"])
        .arg(script)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let field =
        |prefix: &str| text.lines().map(str::trim).find_map(|line| line.strip_prefix(prefix)).map(str::trim).unwrap_or("0").to_string();
    let duration = |value: String| {
        let (number, unit) = value.split_at(value.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(value.len()));
        let number: f64 = number.parse().unwrap_or(0.0);
        Duration::from_secs_f64(match unit {
            "us" => number / 1e6,
            "ms" => number / 1e3,
            "s" => number,
            _ => 0.0,
        })
    };
    WrkReport {
        rate: field("Requests/sec:").parse().unwrap_or(0.0),
        p50: duration(field("50%")),
        p99: duration(field("99%")),
        errors: field("Non-2xx or 3xx responses:").parse().unwrap_or(0),
    }
}

/// A component of the `connector` world made from a hand-written core module,
/// `tests/fixtures/wat/NAME.wat`: for what no guest language emits (several memories, a
/// huge table).
pub fn component_from_wat(name: &str) -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut module = wat::parse_file(root.join(format!("tests/fixtures/wat/{name}.wat"))).unwrap();
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve.push_dir(root.join("wit")).unwrap();
    let world = resolve.select_world(&[package], Some("connector")).unwrap();
    wit_component::embed_component_metadata(&mut module, &resolve, world, wit_component::StringEncoding::UTF8, false).unwrap();
    wit_component::ComponentEncoder::default().module(&module).unwrap().validate(true).encode().unwrap()
}
