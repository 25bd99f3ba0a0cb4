//! Test kit for telemetry-host plugins: run one plugin alone (temporary data directory,
//! recorded outgoing HTTP, captured log) from a Rust test, and find the components that
//! `cargo xtask guests` built.
//!
//! ```no_run
//! use telemetry_testkit::{IsolatedPlugin, IsolationOptions, connector};
//! let mut plugin = IsolatedPlugin::load(&connector("file"), IsolationOptions::default()).unwrap();
//! plugin.push_ndjson("{\"ep_reward\": 1, \"ep_steps\": 10, \"total_steps\": 10}\n");
//! plugin.start().unwrap();
//! plugin.stop().unwrap();
//! println!("{}", plugin.report());
//! ```

use std::path::PathBuf;

pub use telemetry_host::bindings::http_types::{Request, Response};
pub use telemetry_host::capabilities::log::LogLine;
pub use telemetry_host::capabilities::outgoing_http::{Exchange, Responder};
pub use telemetry_host::capabilities::secrets::Secrets;
pub use telemetry_host::config::HostConfig;
pub use telemetry_host::isolation::{IsolatedPlugin, IsolationOptions};
pub use telemetry_host::plugins::instance::CallFailure;

/// The cargo target directory the running test was built in.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .find(|dir| dir.join("plugins").is_dir() || dir.join("wasm32-wasip2").is_dir())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The plugin directory `cargo xtask guests` assembles: one folder per shipped connector.
pub fn plugins_dir() -> PathBuf {
    let dir = target_dir().join("plugins");
    assert!(dir.is_dir(), "{} is missing: run the tests with `cargo xtask test` (it builds the guest components first)", dir.display());
    dir
}

/// A shipped connector's component, e.g. `connector("file")`.
pub fn connector(name: &str) -> PathBuf {
    existing(plugins_dir().join(name).join(format!("{name}.wasm")))
}

/// A test fixture component, e.g. `fixture("misbehaving")`.
pub fn fixture(name: &str) -> PathBuf {
    existing(target_dir().join("test-plugins").join(format!("{name}.wasm")))
}

fn existing(path: PathBuf) -> PathBuf {
    assert!(path.is_file(), "{} is missing: run the tests with `cargo xtask test` (it builds the guest components first)", path.display());
    path
}

/// Milliseconds since the Unix epoch as the RFC 3339 UTC date Grafana sends in a query's
/// `range` (`2023-11-14T22:13:20.000Z`).
pub fn rfc3339(ms: i64) -> String {
    let (seconds, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rest) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// Polls `condition` every 10 ms until it holds or `timeout` passed; its last answer.
pub fn wait_until(timeout: std::time::Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    condition()
}
