//! `cargo xtask`: the project's two commands, and the guest build they share.
//!
//! - `cargo xtask run [-- ARGS]`: installs the wasm32-wasip2 target if needed, builds the
//!   connectors and the host, and runs the host with the built-in default config, all
//!   three connectors and a demo input (ARGS replace `--input demo --wait`);
//! - `cargo xtask test [-- ARGS]`: builds the guests, then runs every test;
//! - `cargo xtask guests`: only builds the guests into `<target>/plugins` and
//!   `<target>/test-plugins`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const GUEST_TARGET: &str = "wasm32-wasip2";
const GUEST_PROFILE: &str = "guest";
/// Connectors shipped with the host: `plugins/<name>`, crate `<name>-connector`.
const CONNECTORS: &[&str] = &["file", "grafana", "wandb"];
/// Test fixtures: `tests/fixtures/plugins/<name>`, crate `<name>-connector`.
const FIXTURES: &[&str] = &["misbehaving", "null", "proxy-server", "trapping-server"];

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let rest: Vec<String> = args.skip_while(|arg| arg == "--").collect();
    let workspace = workspace_root()?;
    let target = target_dir(&workspace);
    match command.as_str() {
        "guests" => build_guests(&workspace, &target),
        "run" => {
            build_guests(&workspace, &target)?;
            let mut host_args = vec!["run".to_string(), "--plugins".into(), target.join("plugins").display().to_string()];
            if rest.is_empty() {
                host_args.extend(["--input", "demo", "--wait"].map(String::from));
            }
            host_args.extend(rest);
            cargo(&workspace, &["run", "--release", "--package", "telemetry-host", "--bin", "telemetry-host", "--"], &host_args)
        }
        "test" => {
            build_guests(&workspace, &target)?;
            ensure_schemathesis(&target);
            ensure_componentize_py(&target);
            ensure_componentize_js(&target);
            ensure_grafana_data(&target);
            ensure_redis_server();
            // The default members: host, test kit and the suite (guests only build for wasm).
            test_with_summary(&workspace, &rest)
        }
        "bench" => {
            build_guests(&workspace, &target)?;
            ensure_componentize_py(&target);
            ensure_redis_server();
            let mut bench_args = vec!["bench".to_string(), "--package".into(), "telemetry-host".into()];
            if let Some(name) = rest.first() {
                bench_args.extend(["--bench".to_string(), name.clone()]);
            }
            cargo(&workspace, &[], &bench_args)
        }
        _ => bail!("usage: cargo xtask run|test|guests|bench [-- ARGS]"),
    }
}

/// Where the builds go: `$CARGO_TARGET_DIR`; else, under CI (`CI` set), a cache outside the
/// clone (`~/.cache/telemetry-host/target`), so that a clean clone on a warm machine does
/// not rebuild wasmtime; else the workspace's `target/`. The cargo runs below inherit it.
fn target_dir(workspace: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let under_ci = std::env::var("CI").is_ok_and(|value| !matches!(value.as_str(), "" | "0" | "false"));
    let cache = std::env::home_dir().filter(|_| under_ci).map(|home| home.join(".cache").join("telemetry-host").join("target"));
    let Some(cache) = cache else {
        return workspace.join("target");
    };
    // SAFETY: xtask is single-threaded here; the variable is read by the cargo it runs.
    unsafe { std::env::set_var("CARGO_TARGET_DIR", &cache) };
    cache
}

/// The workspace `cargo xtask` was run in: found from the current directory at run time,
/// because a compiled-in path goes stale when the same target directory serves several
/// clones (cargo reuses the build).
fn workspace_root() -> Result<PathBuf> {
    let current = std::env::current_dir().context("no current directory")?;
    current
        .ancestors()
        .find(|dir| std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|text| text.contains("[workspace]")))
        .map(Path::to_path_buf)
        .with_context(|| format!("{} is not inside the telemetry-host workspace", current.display()))
}

fn cargo(workspace: &Path, args: &[&str], extra: &[String]) -> Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace)
        .args(args)
        .args(extra)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The Grafana conformance test runs schemathesis (PyPI).
fn ensure_schemathesis(target: &Path) {
    ensure_pip_tool(target, "schemathesis==4.32.5", "schemathesis", "SCHEMATHESIS", "its test will fail");
}

/// The Python plugins (template, benchmark) are built with componentize-py (PyPI).
fn ensure_componentize_py(target: &Path) {
    ensure_pip_tool(target, "componentize-py==0.25.1", "componentize-py", "COMPONENTIZE_PY", "the Python template test will fail");
}

/// A Python tool from PyPI, found at `$<variable>` or on the PATH, else installed into a
/// virtual environment in the target directory; `$<variable>` then names it for the
/// processes xtask runs. Failing to install is reported with `otherwise`; what needs the
/// tool then says so.
fn ensure_pip_tool(target: &Path, package: &str, binary: &str, variable: &str, otherwise: &str) {
    if std::env::var_os(variable).is_some() {
        return;
    }
    let venv = target.join(format!("{binary}-venv"));
    let installed = venv.join("bin").join(binary);
    if !installed.is_file() {
        if Command::new(binary).arg("--version").output().is_ok_and(|output| output.status.success()) {
            return;
        }
        eprintln!("xtask: installing {package} into {}", venv.display());
        let created = Command::new("python3").arg("-m").arg("venv").arg(&venv).status().is_ok_and(|status| status.success());
        let pip = venv.join("bin").join("pip");
        let ok = created
            && Command::new(&pip)
                .args(["install", "--quiet", "--disable-pip-version-check", package])
                .status()
                .is_ok_and(|status| status.success());
        if !ok {
            eprintln!("xtask: warning: could not install {package} (needs python3 with venv and PyPI); {otherwise}");
            return;
        }
    }
    // SAFETY: xtask is single-threaded here; the variable is read by the processes it runs.
    unsafe { std::env::set_var(variable, &installed) };
}

/// The Grafana oracle test runs Grafana's own front-end code (`@grafana/data` from npm) on
/// the host's answers: use `$GRAFANA_DATA_NODE_PATH`, else install it with npm into the
/// target directory. Failing to install is reported; the test that needs it then says so.
fn ensure_grafana_data(target: &Path) {
    const PACKAGES: &[&str] = &["@grafana/data@13.2.3", "react@19.2.0", "react-dom@19.2.0"];
    let modules = target.join("grafana-oracle").join("node_modules");
    let installed = modules.join("@grafana").join("data").join("package.json");
    ensure_npm_packages(PACKAGES, &installed, "GRAFANA_DATA_NODE_PATH", &modules, "its test will fail");
}

/// The JavaScript template is built with componentize-js (npm).
fn ensure_componentize_js(target: &Path) {
    let binary = target.join("componentize-js").join("node_modules").join(".bin").join("componentize-js");
    ensure_npm_packages(
        &["@bytecodealliance/componentize-js@0.23.0"],
        &binary,
        "COMPONENTIZE_JS",
        &binary,
        "the JS template test will fail",
    );
}

/// npm packages installed beside the `node_modules` folder that holds `installed`, unless
/// `installed` exists or `$variable` is set; `$variable` then names `value` for the
/// processes xtask runs.
fn ensure_npm_packages(packages: &[&str], installed: &Path, variable: &str, value: &Path, otherwise: &str) {
    if std::env::var_os(variable).is_some() {
        return;
    }
    let Some(prefix) = installed.ancestors().find(|dir| dir.ends_with("node_modules")).and_then(Path::parent) else {
        return;
    };
    if !installed.exists() {
        eprintln!("xtask: installing {} into {}", packages.join(" "), prefix.display());
        let done = std::fs::create_dir_all(prefix).is_ok()
            && Command::new("npm")
                .arg("install")
                .arg("--prefix")
                .arg(prefix)
                .args(["--no-audit", "--no-fund", "--loglevel=error"])
                .args(packages)
                .status()
                .is_ok_and(|status| status.success());
        if !done {
            eprintln!("xtask: warning: could not install {} (needs node and npm with the npm registry); {otherwise}", packages.join(" "));
            return;
        }
    }
    // SAFETY: xtask is single-threaded here; the variable is read by the processes it runs.
    unsafe { std::env::set_var(variable, value) };
}

/// The pipeline tests start a real `redis-server`: install Debian's package when it is
/// missing and apt-get is at hand (as root, or through sudo).
fn ensure_redis_server() {
    let present = || Command::new("redis-server").arg("--version").output().is_ok_and(|output| output.status.success());
    if present() {
        return;
    }
    let as_root = Command::new("id").arg("-u").output().is_ok_and(|output| output.stdout.starts_with(b"0"));
    let apt = |args: &[&str]| {
        let mut command = if as_root { Command::new("apt-get") } else { Command::new("sudo") };
        if !as_root {
            command.args(["-n", "apt-get"]);
        }
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive").status().is_ok_and(|status| status.success())
    };
    eprintln!("xtask: installing redis-server (Debian package) for the pipeline tests");
    if !(apt(&["update", "-q"]) && apt(&["install", "-y", "-q", "redis-server"]) && present()) {
        eprintln!("xtask: warning: could not install redis-server (needs apt-get as root or sudo); the Redis tests will fail");
    }
}

/// Runs `cargo test`, passing its output through, and closes with the totals of every
/// test binary on one line.
fn test_with_summary(workspace: &Path, extra: &[String]) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace)
        // Every crate of the workspace: the guests' own unit tests run natively too; the
        // fixtures have none.
        .args(["test", "--no-fail-fast", "--workspace"])
        .args(FIXTURES.iter().flat_map(|name| ["--exclude".to_string(), format!("{name}-connector")]))
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot run cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    let count = |line: &str, word: &str| -> u64 {
        line.split(';').find_map(|part| part.trim().strip_suffix(word)?.trim().rsplit(' ').next()?.parse().ok()).unwrap_or(0)
    };
    for line in BufReader::new(child.stdout.take().context("cargo test's output")?).lines() {
        let line = line?;
        println!("{line}");
        if line.starts_with("test result:") {
            passed += count(&line, "passed");
            failed += count(&line, "failed");
        }
    }
    let status = child.wait()?;
    println!("{passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

fn ensure_guest_target() -> Result<()> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match installed {
        Ok(output) if String::from_utf8_lossy(&output.stdout).lines().any(|line| line.trim() == GUEST_TARGET) => Ok(()),
        Ok(_) => {
            eprintln!("xtask: installing the {GUEST_TARGET} target with rustup");
            let status = Command::new("rustup").args(["target", "add", GUEST_TARGET]).status()?;
            anyhow::ensure!(status.success(), "rustup target add {GUEST_TARGET} failed");
            Ok(())
        }
        // Without rustup the toolchain must already have the target; cargo will say if not.
        Err(_) => Ok(()),
    }
}

/// Builds every guest and lays them out as plugin folders.
fn build_guests(workspace: &Path, target: &Path) -> Result<()> {
    ensure_guest_target()?;
    let mut args = vec!["build", "--profile", GUEST_PROFILE, "--target", GUEST_TARGET];
    let packages: Vec<String> = CONNECTORS.iter().chain(FIXTURES).map(|name| format!("{name}-connector")).collect();
    for package in &packages {
        args.extend(["--package", package.as_str()]);
    }
    cargo(workspace, &args, &[])?;
    let built = target.join(GUEST_TARGET).join(GUEST_PROFILE);
    for name in CONNECTORS {
        let folder = target.join("plugins").join(name);
        std::fs::create_dir_all(&folder)?;
        let manifest = workspace.join("plugins").join(name).join("plugin.toml");
        std::fs::copy(&manifest, folder.join("plugin.toml")).with_context(|| format!("copying {}", manifest.display()))?;
        copy_component(&built, name, &folder.join(format!("{name}.wasm")))?;
    }
    let fixtures = target.join("test-plugins");
    std::fs::create_dir_all(&fixtures)?;
    for name in FIXTURES {
        copy_component(&built, name, &fixtures.join(format!("{name}.wasm")))?;
    }
    eprintln!("xtask: plugins in {}, test fixtures in {}", target.join("plugins").display(), fixtures.display());
    Ok(())
}

fn copy_component(built: &Path, name: &str, to: &Path) -> Result<()> {
    let from = built.join(format!("{}_connector.wasm", name.replace('-', "_")));
    std::fs::copy(&from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}
