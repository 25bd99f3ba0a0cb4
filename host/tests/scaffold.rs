//! `plugin new` as an author outside this repository uses it: the generated folder builds
//! with its own `build.sh`, compiles into the cache, passes `plugin test` and runs in the
//! real host, where its restart pattern keeps every row in its file once.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::{free_port, host_log, write_config};
use telemetry_testkit::wait_until;

fn host(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_telemetry-host")).args(args).current_dir(dir).env("RUST_LOG", "warn").output().unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// A build tool as `cargo xtask test` installs it (`$variable`), else `binary` from PATH;
/// without it a template test cannot say anything and fails saying how to get it.
fn build_tool(variable: &str, binary: &str, install: &str) -> String {
    let tool = std::env::var(variable).unwrap_or_else(|_| binary.into());
    let runs = Command::new(&tool).arg("--version").output().is_ok_and(|output| output.status.success());
    assert!(
        runs,
        "cannot run `{tool}`: install it with `{install}` (or set {variable}), or run the tests through `cargo xtask test`, which installs it"
    );
    tool
}

/// `run` on an NDJSON input, which ends when every row reached every plugin.
fn run_host(dir: &Path, input: &str) {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("host.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_telemetry-host"))
        .args(["run", "--config", "telemetry.toml", "--plugins", "plugins", "--input", input])
        .current_dir(dir)
        .env("RUST_LOG", "info,wasmtime=warn,cranelift=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let exited = wait_until(Duration::from_secs(300), || child.try_wait().unwrap().is_some());
    if !exited {
        let _ = child.kill();
    }
    assert!(exited && child.wait().unwrap().success(), "the host run failed:\n{}", host_log(dir));
}

fn samples(dir: &Path, name: &str, rewards: std::ops::Range<u64>) -> String {
    let lines: Vec<String> = rewards
        .map(|index| serde_json::json!({ "ep_reward": index as f64 + 0.5, "ep_steps": 100, "total_steps": 100 * (index + 1) }).to_string())
        .collect();
    std::fs::write(dir.join(name), lines.join("\n") + "\n").unwrap();
    name.to_string()
}

/// The data rows of the CSV (header left out), as `row` and `ep_reward` columns.
fn csv_rows(path: &Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("a header line").split(',').collect();
    let reward = header.iter().position(|column| *column == "rewards").unwrap_or_else(|| panic!("no rewards column in {header:?}"));
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (fields[0].parse().unwrap_or_else(|_| panic!("row number in {line:?}")), fields[reward].to_string())
        })
        .collect()
}

#[test]
fn the_rust_template_builds_passes_plugin_test_and_resumes_in_the_host() {
    let dir = tempfile::tempdir().unwrap();
    check_template(dir.path(), "csv-rs", "rust", &|folder| {
        // Until the SDK is on crates.io, the generated Cargo.toml's `telemetry-plugin = "0.1"`
        // is pointed at this checkout, as its comment tells an author to.
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk").canonicalize().unwrap();
        std::fs::create_dir_all(folder.join(".cargo")).unwrap();
        std::fs::write(folder.join(".cargo/config.toml"), format!("[patch.crates-io]\ntelemetry-plugin = {{ path = {:?} }}\n", sdk))
            .unwrap();
        // Kept between runs: the template's dependencies compile once per machine.
        let target = telemetry_testkit::target_dir().join("template-plugins");
        Command::new(folder.join("build.sh")).env("CARGO_TARGET_DIR", target).output().unwrap()
    });
    let source = std::fs::read_to_string(dir.path().join("plugins/csv-rs/src/lib.rs")).unwrap();
    let code = source.lines().filter(|line| !line.trim().is_empty() && !line.trim_start().starts_with("//")).count();
    assert!(code <= 40, "the Rust CSV connector takes {code} lines of code");
}

#[test]
fn the_python_template_builds_passes_plugin_test_and_resumes_in_the_host() {
    let tool = build_tool("COMPONENTIZE_PY", "componentize-py", "pip install componentize-py==0.25.1");
    let dir = tempfile::tempdir().unwrap();
    check_template(dir.path(), "csv-py", "python", &|folder| {
        Command::new(folder.join("build.sh")).env("COMPONENTIZE_PY", &tool).output().unwrap()
    });
}

#[test]
fn the_js_template_builds_passes_plugin_test_and_resumes_in_the_host() {
    let tool = build_tool("COMPONENTIZE_JS", "componentize-js", "npm install @bytecodealliance/componentize-js@0.23.0");
    let dir = tempfile::tempdir().unwrap();
    check_template(dir.path(), "csv-js", "js", &|folder| {
        Command::new(folder.join("build.sh")).env("COMPONENTIZE_JS", &tool).output().unwrap()
    });
    let inspected = host(&["plugin", "inspect", "plugins/csv-js/csv-js.wasm"], dir.path());
    assert!(!text(&inspected).contains("wasi:http"), "the build flags leave WASI HTTP out:\n{}", text(&inspected));

    // Without those flags the component imports wasi:http, which the host refuses before
    // compiling anything, naming the flags.
    let folder = dir.path().join("with-http");
    std::fs::create_dir(&folder).unwrap();
    let source = dir.path().join("plugins/csv-js");
    let built = Command::new(&tool)
        .arg(source.join("app.js"))
        .arg("--wit")
        .arg(source.join("wit"))
        .args(["--world-name", "file-connector", "-o"])
        .arg(folder.join("with-http.wasm"))
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", text(&built));
    std::fs::write(folder.join("plugin.toml"), "name = \"with-http\"\ncomponent = \"with-http.wasm\"\n").unwrap();
    let refused = host(&["plugin", "compile", "with-http"], dir.path());
    assert!(!refused.status.success());
    let message = text(&refused);
    assert!(message.contains("imports `wasi:http/") && message.contains("--disable http --disable fetch-event"), "{message}");
}

/// `plugin new NAME --lang LANG`, its build, `plugin compile`, `plugin test` (and a typed
/// configuration error), then three runs of the host over one history with the output
/// file tampered with between them.
fn check_template(root: &Path, name: &str, lang: &str, build: &dyn Fn(&Path) -> Output) {
    std::fs::create_dir(root.join("plugins")).unwrap();
    let created = host(&["plugin", "new", name, "--lang", lang, "--dir", "plugins"], root);
    assert!(created.status.success(), "{}", text(&created));
    let folder = root.join("plugins").join(name);
    let built = build(&folder);
    assert!(built.status.success(), "build.sh failed:\n{}", text(&built));
    assert!(folder.join(format!("{name}.wasm")).is_file(), "build.sh did not write {name}.wasm:\n{}", text(&built));

    // Into the cache the other commands share (the default one, under the working
    // directory), once.
    let folder_arg = format!("plugins/{name}");
    let compiled = host(&["plugin", "compile", &folder_arg], root);
    assert!(compiled.status.success(), "{}", text(&compiled));
    assert!(text(&compiled).contains(") compiled in"), "{}", text(&compiled));
    println!("{lang}: {}", text(&compiled).trim());
    let again = host(&["plugin", "compile", &folder_arg], root);
    assert!(text(&again).contains("was already in the cache"), "{}", text(&again));

    let samples_arg = format!("plugins/{name}/samples.ndjson");
    let tested = host(&["plugin", "test", &folder_arg, "--input", &samples_arg, "--data-dir", "isolated"], root);
    assert!(tested.status.success(), "plugin test failed:\n{}", text(&tested));
    let rows = csv_rows(&root.join(format!("isolated/{name}.csv")));
    assert_eq!(rows.iter().map(|(row, _)| *row).collect::<Vec<_>>(), [0, 1, 2, 3, 4], "{}", text(&tested));
    assert_eq!(rows[0].1, "-120.5");

    // A typed error: a series the host does not have is the plugin's invalid-config.
    std::fs::write(root.join("bad.toml"), "series = [\"nope\"]\n").unwrap();
    let refused = host(&["plugin", "test", &folder_arg, "--input", &samples_arg, "--config", "bad.toml"], root);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("config.series: no series nope"), "{}", text(&refused));

    // The real host, three runs over one history.
    write_config(root, free_port(), "");
    let output = root.join(format!("data/{name}/{name}.csv"));
    run_host(root, &samples(root, "first.ndjson", 0..40));
    assert_eq!(csv_rows(&output).len(), 40, "{}", host_log(root));
    // A row written past the cursor (a crash before the cursor moved) is cut.
    let mut text_now = std::fs::read_to_string(&output).unwrap();
    text_now.push_str("40,0,999.0\n");
    std::fs::write(&output, text_now).unwrap();
    run_host(root, &samples(root, "second.ndjson", 40..70));
    let rows = csv_rows(&output);
    assert_eq!(rows.iter().map(|(row, _)| *row).collect::<Vec<_>>(), (0..70).collect::<Vec<_>>());
    assert_eq!(rows[40].1, "40.5", "the row past the cursor was cut and row 40 written once");
    // A deleted file is filled in from the history.
    std::fs::remove_file(&output).unwrap();
    run_host(root, &samples(root, "third.ndjson", 70..75));
    let rows = csv_rows(&output);
    assert_eq!(rows.iter().map(|(row, _)| *row).collect::<Vec<_>>(), (0..75).collect::<Vec<_>>(), "{}", host_log(root));
    assert!(rows.iter().enumerate().all(|(index, (_, reward))| *reward == format!("{index}.5")), "{rows:?}");
}
