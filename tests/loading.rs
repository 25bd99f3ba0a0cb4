//! Loading a plugin directory: checks against the manifest, clear errors for broken
//! components, the others still start, and the compile cache.

use telemetry_host::plugins::PluginSet;
use telemetry_host::plugins::cache::Origin;
use telemetry_host::plugins::loader::Runtime;
use telemetry_host::plugins::manifest::Manifest;
use telemetry_suite::{PluginSpec, TestHost, recorder_manifest, test_config, write_plugin_dir};
use telemetry_testkit::{connector, fixture};

fn load_error(plugins: &[PluginSpec]) -> String {
    let host = TestHost::start(plugins);
    assert_eq!(host.load_errors.len(), 1, "{:?}", host.load_errors);
    host.load_errors[0].clone()
}

#[test]
fn a_missing_outbound_grant_names_the_plugin_the_import_and_the_line_to_add() {
    let error = load_error(&[PluginSpec::new("caller", fixture("misbehaving"), "[grants]\ndata_dir = { path = \"caller\" }\n")]);
    assert!(error.contains("plugin `caller`"), "{error}");
    assert!(error.contains("caller/plugin.toml"), "{error}");
    assert!(error.contains("imports `telemetry:connector/outgoing-http@0.1.0` but the manifest grants no outbound host"), "{error}");
    assert!(error.contains("[[grants.outbound]]\n  url = \"https://HOST\""), "{error}");
}

#[test]
fn a_missing_listen_grant_names_the_export_and_the_line_to_add() {
    let error = load_error(&[PluginSpec::new("grafana", connector("grafana"), "")]);
    assert!(error.contains("exports `telemetry:connector/http-handler@0.1.0` but the manifest grants nowhere to serve it"), "{error}");
    assert!(error.contains("listen = { prefix = \"/grafana\" }"), "{error}");
}

#[test]
fn broken_and_foreign_wasm_files_are_clear_errors_and_the_others_still_start() {
    let root = tempfile::tempdir().unwrap();
    let files = root.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = files.join(format!("{name}.wasm"));
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let plugins = [
        PluginSpec::new("garbage", write("garbage", b"this is not wasm"), ""),
        PluginSpec::new("core", write("core", b"\0asm\x01\0\0\0"), ""),
        PluginSpec::new("foreign", write("foreign", b"\0asm\x0d\0\x01\0"), ""),
        PluginSpec::new("truncated", write("truncated", &std::fs::read(fixture("misbehaving")).unwrap()[..5000]), ""),
        PluginSpec::new("good", fixture("misbehaving"), &recorder_manifest("good")),
    ];
    let config = test_config(root.path());
    write_plugin_dir(&root.path().join("plugins"), &plugins);
    std::fs::create_dir_all(root.path().join("plugins").join("bad-manifest")).unwrap();
    std::fs::write(root.path().join("plugins").join("bad-manifest").join("plugin.toml"), "name = \"x\"\ncomponent = 3\n").unwrap();
    let history = telemetry_host::history::History::new(vec!["x".into()]);
    let history = history.shared();
    let runtime = std::sync::Arc::new(Runtime::new(None).unwrap());
    let set = PluginSet::start(runtime, &root.path().join("plugins"), &config, &history).unwrap();
    set.wait_compiled();
    let names: Vec<String> = set.stats().into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["good"]);
    let failures = set.failed().join("\n---\n");
    for expected in [
        "plugin `garbage`",
        "garbage.wasm is not a telemetry-host plugin: it is not WebAssembly at all",
        "core.wasm is not a telemetry-host plugin: it is a core WebAssembly module, not a component: build it for the wasm32-wasip2 target",
        "plugin `foreign`",
        "the component does not export `telemetry:connector/telemetry-connector@0.1.0`",
        "truncated.wasm is not a valid WebAssembly component",
        "bad-manifest/plugin.toml",
        "line 2",
    ] {
        assert!(failures.contains(expected), "missing {expected:?} in:\n{failures}");
    }
    assert_eq!(set.failed().len(), 5, "{failures}");
    set.stop_all();
}

#[test]
fn compiled_components_are_cached_by_hash_and_engine() {
    let cache = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let manifest = || {
        let text =
            format!("name = \"good\"\ncomponent = {:?}\n{}", fixture("misbehaving").display().to_string(), recorder_manifest("good"));
        Manifest::parse(&text, &data.path().join("plugin.toml")).unwrap()
    };
    let first = Runtime::new(Some(cache.path().to_path_buf())).unwrap().load(manifest(), data.path()).unwrap();
    assert_eq!(first.origin, Origin::Compiled);
    let second = Runtime::new(Some(cache.path().to_path_buf())).unwrap().load(manifest(), data.path()).unwrap();
    assert_eq!(second.origin, Origin::Cached, "a restart with an unchanged plugin loads it from the cache");
    let entries: Vec<_> = std::fs::read_dir(cache.path()).unwrap().flatten().collect();
    assert_eq!(entries.len(), 1);
    // A corrupt entry is ignored and replaced, never trusted.
    std::fs::write(entries[0].path(), b"corrupt").unwrap();
    let third = Runtime::new(Some(cache.path().to_path_buf())).unwrap().load(manifest(), data.path()).unwrap();
    assert_eq!(third.origin, Origin::Compiled);
}
