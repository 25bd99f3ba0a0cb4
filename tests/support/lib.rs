//! Shared helpers of the integration suite: a host with real plugin runners over a
//! temporary plugin directory, sample generators, and a W&B stand-in.

pub mod wandb_standin;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use telemetry_host::callbacks::Callbacks;
use telemetry_host::capabilities::log::LogLine;
use telemetry_host::capabilities::outgoing_http::Transport;
use telemetry_host::capabilities::secrets::Secrets;
use telemetry_host::config::HostConfig;
use telemetry_host::history::{History, SharedHistory};
use telemetry_host::ingest::Ingest;
use telemetry_host::ingest::transforms::series_names;
use telemetry_host::plugins::instance::PluginEnv;
use telemetry_host::plugins::loader::Runtime;
use telemetry_host::plugins::manifest::Manifest;
use telemetry_host::plugins::runner::{PluginStats, RunnerOptions};
use telemetry_host::plugins::{PluginSet, plugin_env};

/// One plugin of a test's plugin directory: a component and the manifest lines after
/// `name` and `component`.
pub struct PluginSpec {
    pub name: String,
    pub component: PathBuf,
    pub manifest: String,
}

impl PluginSpec {
    pub fn new(name: &str, component: PathBuf, manifest: &str) -> PluginSpec {
        PluginSpec { name: name.into(), component, manifest: manifest.into() }
    }
}

/// Writes a plugin directory: `dir/<name>/plugin.toml` and the component beside it.
pub fn write_plugin_dir(dir: &Path, plugins: &[PluginSpec]) {
    for plugin in plugins {
        let folder = dir.join(&plugin.name);
        std::fs::create_dir_all(&folder).unwrap();
        let file_name = plugin.component.file_name().unwrap().to_str().unwrap().to_string();
        std::fs::copy(&plugin.component, folder.join(&file_name)).unwrap();
        let manifest = format!("name = {:?}\ncomponent = {file_name:?}\n{}", plugin.name, plugin.manifest);
        std::fs::write(folder.join("plugin.toml"), manifest).unwrap();
    }
}

/// The built-in configuration with quick restarts and temporary directories.
pub fn test_config(root: &Path) -> HostConfig {
    let mut config = HostConfig::builtin_default();
    config.runtime.restart_backoff_ms = (20, 200);
    config.runtime.data_dir = root.join("data");
    config.runtime.cache_dir = root.join("cache");
    config.http.listen = "127.0.0.1:0".into();
    config
}

/// A sample of the reference run: episode `index`.
pub fn sample(index: u64) -> serde_json::Value {
    json!({
        "ep_reward": (index % 300) as f64 - 50.0,
        "ep_steps": 100 + index % 50,
        "total_steps": 1000 * (index + 1),
    })
}

/// A host with real runners, each plugin's log captured.
pub struct TestHost {
    pub root: tempfile::TempDir,
    pub config: HostConfig,
    pub history: SharedHistory,
    pub plugins: Option<Arc<PluginSet>>,
    pub logs: Vec<(String, Arc<Mutex<Vec<LogLine>>>)>,
    pub load_errors: Vec<String>,
    ingest: Ingest,
    fed: u64,
    _runtime: Runtime,
}

impl TestHost {
    pub fn start(plugins: &[PluginSpec]) -> TestHost {
        let root = tempfile::tempdir().unwrap();
        let config = test_config(root.path());
        Self::start_with(root, config, plugins, Transport::network().unwrap(), Secrets::default())
    }

    pub fn start_with(
        root: tempfile::TempDir,
        config: HostConfig,
        plugins: &[PluginSpec],
        transport: Transport,
        secrets: Secrets,
    ) -> TestHost {
        let plugin_dir = root.path().join("plugins");
        write_plugin_dir(&plugin_dir, plugins);
        let ingest = Ingest::new(&config.telemetry, History::new(series_names(&config.telemetry.transforms)), Callbacks::none());
        let history = ingest.shared();
        let runtime = Runtime::new(Some(config.runtime.cache_dir.clone())).unwrap();
        let set = PluginSet::empty();
        let mut logs = Vec::new();
        let mut load_errors = Vec::new();
        for plugin in plugins {
            let manifest = match Manifest::load(&plugin_dir.join(&plugin.name).join("plugin.toml")) {
                Ok(manifest) => manifest,
                Err(error) => {
                    load_errors.push(format!("{error:#}"));
                    continue;
                }
            };
            match runtime.load(manifest, &config.runtime.data_dir) {
                Ok(loaded) => {
                    let capture = Arc::new(Mutex::new(Vec::new()));
                    let env = PluginEnv {
                        log_capture: Some(capture.clone()),
                        denied: Arc::new(AtomicU64::new(0)),
                        ..plugin_env(&config, &history, &secrets, &transport)
                    };
                    set.add(loaded, env, 0, options(&config)).unwrap();
                    logs.push((plugin.name.clone(), capture));
                }
                Err(error) => load_errors.push(format!("{error:#}")),
            }
        }
        TestHost { root, config, history, plugins: Some(Arc::new(set)), logs, load_errors, ingest, fed: 0, _runtime: runtime }
    }

    /// Feeds `count` more samples of the reference run, notifying plugins as the update
    /// interval says.
    pub fn feed(&mut self, count: u64) {
        for _ in 0..count {
            let outcome = self.ingest.accept(&sample(self.fed), "test");
            assert!(matches!(outcome, telemetry_host::ingest::Outcome::Accepted), "{outcome:?}");
            self.fed += 1;
        }
        self.ingest.commit().unwrap();
        self.plugins().notify_all();
    }

    /// Feeds one sample of any shape, notifying plugins.
    pub fn push_sample(&mut self, sample: &serde_json::Value) {
        let outcome = self.ingest.accept(sample, "test");
        assert!(matches!(outcome, telemetry_host::ingest::Outcome::Accepted), "{outcome:?}");
        self.ingest.commit().unwrap();
        self.plugins().notify_all();
    }

    pub fn plugins(&self) -> &Arc<PluginSet> {
        self.plugins.as_ref().expect("plugins still running")
    }

    pub fn stats(&self, name: &str) -> Arc<PluginStats> {
        self.plugins().stats_of(name).unwrap_or_else(|| panic!("no plugin {name}"))
    }

    /// Waits until `name`'s cursor reaches `rows`; false on timeout.
    pub fn wait_for_cursor(&self, name: &str, rows: u64, timeout: Duration) -> bool {
        let stats = self.stats(name);
        wait_until(timeout, || stats.cursor.load(Ordering::Acquire) >= rows)
    }

    pub fn log_text(&self, name: &str) -> String {
        let Some((_, capture)) = self.logs.iter().find(|(plugin, _)| plugin == name) else {
            panic!("plugin `{name}` is not running; load errors: {:?}", self.load_errors);
        };
        capture.lock().unwrap().iter().map(|line| format!("[{:?}] {}\n", line.level, line.message)).collect()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.config.runtime.data_dir.clone()
    }

    /// The row indices a fixture plugin recorded in `<data>/<folder>/rows.txt`.
    pub fn recorded_rows(&self, folder: &str) -> Vec<u64> {
        let text = std::fs::read_to_string(self.data_dir().join(folder).join("rows.txt")).unwrap_or_default();
        text.lines().map(|line| line.parse().unwrap()).collect()
    }

    /// Stops every plugin (remaining rows delivered, `stop` called).
    pub fn stop(&mut self) {
        if let Some(plugins) = self.plugins.take() {
            plugins.stop_all();
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn options(config: &HostConfig) -> RunnerOptions {
    telemetry_host::plugins::runner_options(config)
}

pub use telemetry_testkit::wait_until;

/// The manifest lines of a well-behaved fixture plugin that records rows in its folder.
pub fn recorder_manifest(folder: &str) -> String {
    format!("[grants]\ndata_dir = {{ path = {folder:?} }}\noutbound = [{{ url = \"http://127.0.0.1:9\" }}]\n[config]\nfault = \"none\"\n")
}
