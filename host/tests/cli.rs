//! The command line as a user runs it: `plugin inspect`, `plugin test`, `run`.

use std::path::Path;
use std::process::{Command, Output};

use telemetry_testkit::{connector, plugins_dir};

fn host(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_telemetry-host")).args(args).current_dir(dir).env("RUST_LOG", "warn").output().unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn samples(dir: &Path, count: u64) -> String {
    let lines: Vec<String> = (0..count)
        .map(|index| {
            serde_json::json!({ "ep_reward": index as f64, "ep_steps": 100 + index, "total_steps": 1000 * (index + 1) }).to_string()
        })
        .collect();
    let path = dir.join("samples.ndjson");
    std::fs::write(&path, lines.join("\n") + "\n{not json}\n").unwrap();
    path.display().to_string()
}

#[test]
fn inspect_shows_world_imports_exports_and_needed_grants() {
    let dir = tempfile::tempdir().unwrap();
    let output = host(&["plugin", "inspect", connector("grafana").to_str().unwrap()], dir.path());
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    assert!(out.contains("world: http-connector"), "{out}");
    assert!(out.contains("  telemetry:connector/http-handler@0.1.0"), "{out}");
    assert!(out.contains("  telemetry:connector/history@0.1.0"), "{out}");
    assert!(out.contains("[grants] listen = { prefix = \"/NAME\" }"), "{out}");
    std::fs::write(dir.path().join("x.wasm"), b"garbage").unwrap();
    let output = host(&["plugin", "inspect", "x.wasm"], dir.path());
    assert!(!output.status.success());
    assert!(text(&output).contains("error: x.wasm is not a telemetry-host plugin: it is not WebAssembly at all"), "{}", text(&output));
}

#[test]
fn plugin_test_prints_what_the_plugin_wrote_sent_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let input = samples(dir.path(), 20);
    let output = host(&["plugin", "test", connector("file").to_str().unwrap(), "--input", &input, "--data-dir", "out"], dir.path());
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    assert!(out.contains("plugin `file`: 20 rows delivered"), "{out}");
    assert!(out.contains("  telemetry.jsonl ("), "{out}");
    assert!(out.contains("1 sample(s) refused"), "{out}");
    assert_eq!(std::fs::read_to_string(dir.path().join("out/telemetry.jsonl")).unwrap().lines().count(), 20);

    let config = dir.path().join("wandb.toml");
    std::fs::write(&config, "project = \"p\"\nentity = \"e\"\n").unwrap();
    let output = host(
        &["plugin", "test", connector("wandb").to_str().unwrap(), "--input", &input, "--config", config.to_str().unwrap()],
        dir.path(),
    );
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    assert!(out.contains("POST https://api.wandb.ai/graphql"), "{out}");
    assert!(out.contains("POST https://api.wandb.ai/files/e/p/"), "{out}");
}

#[test]
fn run_feeds_every_plugin_of_the_directory_and_reports_bad_config_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let input = samples(dir.path(), 50);
    let config = dir.path().join("telemetry.toml");
    let default = host(&["default-config"], dir.path());
    let mut text_config = String::from_utf8(default.stdout).unwrap();
    text_config.push_str("[http]\nlisten = \"127.0.0.1:0\"\n[plugins.wandb]\nenabled = false\n");
    std::fs::write(&config, &text_config).unwrap();
    let output = host(&["run", "--config", "telemetry.toml", "--plugins", plugins_dir().to_str().unwrap(), "--input", &input], dir.path());
    assert!(output.status.success(), "{}", text(&output));
    let jsonl = std::fs::read_to_string(dir.path().join(".telemetry-host/data/file/telemetry.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), 50);
    assert!(dir.path().join(".telemetry-host/data/file/telemetry.png").is_file());

    std::fs::write(&config, "[telemetry]\nupdate_interval = 0\ntransforms = []\n").unwrap();
    let output = host(&["run", "--config", "telemetry.toml", "--plugins", plugins_dir().to_str().unwrap(), "--input", &input], dir.path());
    assert!(!output.status.success());
    assert!(
        text(&output).contains("telemetry.toml: invalid configuration: telemetry.update_interval must be at least 1"),
        "{}",
        text(&output)
    );
    std::fs::write(&config, "[telemetry]\ntransforms = [{ type = \"MetricByKey\" }]\n").unwrap();
    let output = host(&["run", "--config", "telemetry.toml", "--plugins", plugins_dir().to_str().unwrap(), "--input", &input], dir.path());
    let out = text(&output);
    assert!(out.contains("telemetry.toml: TOML parse error at line 2") && out.contains("missing field `key`"), "{out}");
}
