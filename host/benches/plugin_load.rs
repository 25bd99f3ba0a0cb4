//! What a plugin's first load costs (`cargo xtask bench plugin_load`): the real
//! `telemetry-host plugin compile` for each shipped connector and for the Python template
//! of `plugin new` (componentize-py), with Cranelift's inlining on and off, each in a
//! fresh process and cache (wall time, CPU time and peak memory of that process), then
//! the same command again: the cached load. Python figures need componentize-py
//! (`cargo xtask bench` installs it); without it the bench says so and measures Rust only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use telemetry_testkit::{connector, target_dir};

const HOST: &str = env!("CARGO_BIN_EXE_telemetry-host");

fn main() {
    let work = tempfile::tempdir().unwrap();
    let mut subjects: Vec<(String, PathBuf)> = ["file", "grafana", "wandb"]
        .iter()
        .map(|name| {
            let folder = work.path().join(name);
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::copy(connector(name), folder.join(format!("{name}.wasm"))).unwrap();
            (format!("{name} connector (Rust)"), folder)
        })
        .collect();
    match python_template(work.path()) {
        Ok(folder) => subjects.push(("plugin new --lang python (componentize-py)".into(), folder)),
        Err(why) => {
            println!("\n!!! PYTHON FIGURES SKIPPED: {why}\n!!! run `cargo xtask bench plugin_load`, which installs componentize-py\n")
        }
    }
    println!("| component | size | inlining | first load (wall) | CPU | peak memory | cached load |");
    println!("|---|---|---|---|---|---|---|");
    for (label, folder) in &subjects {
        for inlining in ["on", "off"] {
            let name = folder.file_name().unwrap().to_str().unwrap();
            let manifest =
                format!("name = \"{name}\"\ncomponent = \"{name}.wasm\"\n{}[compile]\ninlining = \"{inlining}\"\n", grants(name));
            std::fs::write(folder.join("plugin.toml"), manifest).unwrap();
            let cache = tempfile::tempdir().unwrap();
            let first = compile(folder, cache.path());
            let cached = compile(folder, cache.path());
            assert!(cached.line.contains("was already in the cache"), "{}", cached.line);
            println!(
                "| {label} | {:.1} MB | {inlining} | {:.2} s | {:.1} s | {} MB | {:.0} ms |",
                std::fs::metadata(folder.join(format!("{name}.wasm"))).unwrap().len() as f64 / 1e6,
                first.wall_s,
                first.cpu_s,
                first.peak_mb,
                cached.wall_s * 1e3
            );
        }
    }
}

/// The grants each component needs to pass the load checks.
fn grants(name: &str) -> &'static str {
    match name {
        "grafana" => "[grants]\nlisten = { prefix = \"/grafana\" }\n",
        "wandb" => "[grants]\noutbound = [{ url = \"https://api.wandb.ai\" }]\n",
        _ => "",
    }
}

struct Compiled {
    line: String,
    wall_s: f64,
    cpu_s: f64,
    peak_mb: u64,
}

/// One `plugin compile` in a process of its own, with its resource use from the kernel.
fn compile(folder: &Path, cache: &Path) -> Compiled {
    let config = cache.join("host.toml");
    let text = format!("{}\n[runtime]\ncache_dir = {:?}\n", telemetry_host::config::DEFAULT_CONFIG, cache.join("cache"));
    std::fs::write(&config, text).unwrap();
    let started = Instant::now();
    let output = Command::new("/usr/bin/time")
        .args(["-f", "%U %S %M"])
        .arg(HOST)
        .args(["plugin", "compile"])
        .arg(folder)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let wall_s = started.elapsed().as_secs_f64();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout).to_string(), String::from_utf8_lossy(&output.stderr).to_string());
    assert!(output.status.success(), "plugin compile {}: {stdout}{stderr}", folder.display());
    // GNU time's line is the last one of stderr: user and system seconds, peak KiB.
    let figures: Vec<f64> = stderr.lines().last().unwrap_or("").split(' ').filter_map(|field| field.parse().ok()).collect();
    assert_eq!(figures.len(), 3, "no figures from GNU time (is /usr/bin/time installed?): {stderr}");
    Compiled { line: stdout, wall_s, cpu_s: figures[0] + figures[1], peak_mb: (figures[2] / 1024.0) as u64 }
}

/// The Python template as `plugin new` writes it, built by its own build.sh.
fn python_template(work: &Path) -> Result<PathBuf, String> {
    let tool = std::env::var_os("COMPONENTIZE_PY")
        .map(PathBuf::from)
        .or_else(|| Some(target_dir().join("componentize-py-venv/bin/componentize-py")).filter(|path| path.is_file()))
        .unwrap_or_else(|| PathBuf::from("componentize-py"));
    let created = Command::new(HOST).args(["plugin", "new", "python", "--lang", "python", "--dir"]).arg(work).output();
    if !created.map_err(|error| error.to_string())?.status.success() {
        return Err("plugin new failed".into());
    }
    let folder = work.join("python");
    let built = Command::new(folder.join("build.sh")).env("COMPONENTIZE_PY", &tool).output().map_err(|error| error.to_string())?;
    if !built.status.success() {
        return Err(format!("{} could not build the template: {}", tool.display(), String::from_utf8_lossy(&built.stderr)));
    }
    Ok(folder)
}
