//! The file connector in isolation: telemetry.json as the original wrote it, JSONL that
//! agrees with it, crash safety, configuration errors, and the plot.

use serde_json::{Value, json};
use telemetry_suite::sample;
use telemetry_testkit::{CallFailure, IsolatedPlugin, IsolationOptions, connector};

fn options(config: Value) -> IsolationOptions {
    IsolationOptions { plugin_config: serde_json::from_value(config).unwrap(), ..IsolationOptions::default() }
}

fn file_plugin(config: Value) -> IsolatedPlugin {
    IsolatedPlugin::load(&connector("file"), options(config)).unwrap()
}

/// Parses telemetry.json, whose NaN tokens (as Python writes them) become `null`.
fn read_columns(plugin: &IsolatedPlugin) -> Value {
    let text = std::fs::read_to_string(plugin.data_dir().join("telemetry.json")).unwrap();
    serde_json::from_str(&text.replace("NaN", "null")).unwrap()
}

fn read_jsonl(plugin: &IsolatedPlugin) -> Vec<Value> {
    let text = std::fs::read_to_string(plugin.data_dir().join("telemetry.jsonl")).unwrap();
    text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

fn push(plugin: &mut IsolatedPlugin, samples: impl IntoIterator<Item = Value>) {
    for sample in samples {
        plugin.push_sample(&sample).unwrap();
    }
}

#[test]
fn telemetry_json_is_the_dict_of_columns_in_series_order_with_python_nan() {
    let mut plugin = file_plugin(json!({ "plot": false }));
    plugin.start().unwrap();
    push(
        &mut plugin,
        [json!({"ep_reward": 250.0, "ep_steps": 10, "total_steps": 10}), json!({"ep_reward": 100.5, "ep_steps": 30, "total_steps": 40})],
    );
    plugin.deliver().unwrap();
    // A sample without `ep_steps`: that series holds NaN in this row.
    push(&mut plugin, [json!({"ep_reward": -1.0, "total_steps": 41})]);
    plugin.stop().unwrap();
    let text = std::fs::read_to_string(plugin.data_dir().join("telemetry.json")).unwrap();
    assert!(text.starts_with("{\"rewards\": [250.0, 100.5, -1.0], \"rewards_av\": [250.0, 175.25, "), "{text}");
    assert!(text.contains("\"steps\": [10.0, 30.0, NaN], \"steps_av\": [10.0, 20.0, 20.0]"), "{text}");
    let columns = read_columns(&plugin);
    let names: Vec<&String> = columns.as_object().unwrap().keys().collect();
    assert_eq!(names.len(), 10);
    assert_eq!(columns["wins"], json!([1.0, 0.0, 0.0]));
    assert_eq!(columns["wins_av"], json!([1.0, 0.5, 1.0 / 3.0]));
    assert_eq!(columns["n_env_steps"], json!([10.0, 40.0, 41.0]));
}

#[test]
fn jsonl_and_json_hold_the_same_rows_after_stop() {
    let mut plugin = file_plugin(json!({ "json_interval_s": 0, "plot": false }));
    plugin.start().unwrap();
    for batch in 0..5 {
        push(&mut plugin, (batch * 40..(batch + 1) * 40).map(sample));
        plugin.deliver().unwrap();
    }
    assert!(!plugin.data_dir().join("telemetry.json").exists(), "json_interval_s = 0 writes telemetry.json only at stop");
    plugin.stop().unwrap();
    let columns = read_columns(&plugin);
    let rows = read_jsonl(&plugin);
    assert_eq!(rows.len(), 200);
    for (index, row) in rows.iter().enumerate() {
        assert_eq!(row["row"], json!(index));
        assert!(row["timestamp_ms"].as_i64().unwrap() > 1_600_000_000_000);
        for (name, column) in columns.as_object().unwrap() {
            assert_eq!(row[name], column[index], "row {index} series {name}");
        }
    }
}

#[test]
fn a_crash_between_updates_leaves_complete_files_and_a_restart_completes_them() {
    let mut plugin = file_plugin(json!({ "json_interval_s": 0.001, "plot": false }));
    plugin.start().unwrap();
    push(&mut plugin, (0..50).map(sample));
    plugin.deliver().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    push(&mut plugin, (50..60).map(sample));
    plugin.deliver().unwrap();
    // The crash: no stop. Whatever is on disk is complete.
    let json_rows = read_columns(&plugin)["rewards"].as_array().unwrap().len();
    assert!(json_rows == 50 || json_rows == 60, "telemetry.json holds a whole update: {json_rows}");
    assert_eq!(read_jsonl(&plugin).len(), 60);
    // A torn last line and a row the host never saw acknowledged, as a crash could leave.
    let jsonl = plugin.data_dir().join("telemetry.jsonl");
    let mut text = std::fs::read_to_string(&jsonl).unwrap();
    text.push_str("{\"row\":60,\"timestamp_ms\":1}\n{\"row\":61,\"tim");
    std::fs::write(&jsonl, text).unwrap();
    plugin.crash_and_restart().unwrap();
    push(&mut plugin, (60..70).map(sample));
    plugin.stop().unwrap();
    let rows = read_jsonl(&plugin);
    assert_eq!(rows.iter().map(|row| row["row"].as_u64().unwrap()).collect::<Vec<_>>(), (0..70).collect::<Vec<_>>());
    assert_eq!(read_columns(&plugin)["rewards"].as_array().unwrap().len(), 70);
}

#[test]
fn a_deleted_jsonl_is_rebuilt_from_the_host_history_on_restart() {
    let mut plugin = file_plugin(json!({ "plot": false }));
    plugin.start().unwrap();
    push(&mut plugin, (0..30).map(sample));
    plugin.deliver().unwrap();
    std::fs::remove_file(plugin.data_dir().join("telemetry.jsonl")).unwrap();
    plugin.crash_and_restart().unwrap();
    plugin.stop().unwrap();
    assert_eq!(read_jsonl(&plugin).len(), 30);
}

fn start_error(config: Value) -> String {
    let mut plugin = file_plugin(config);
    match plugin.start() {
        Err(CallFailure::Plugin(error)) => format!("{error:?}"),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn configuration_errors_say_what_is_wrong() {
    // Overrides merge into the manifest's `plot` table key by key, so its `xkey` stays.
    let error = start_error(json!({ "plot": { "ykeys": [] } }));
    assert!(error.contains("InvalidConfig") && error.contains("`plot.ykeys` is empty"), "{error}");
    let error = start_error(json!({ "plot": { "xkey": 5 } }));
    assert!(error.contains("`plot.xkey` must be a series name"), "{error}");
    let error = start_error(json!({ "plot": { "xkey": "n_env_steps", "ykeys": ["reward"] } }));
    assert!(error.contains("`plot.ykeys` names `reward`, which is not a series; the series are: rewards, rewards_av"), "{error}");
    let error = start_error(json!({ "path": "/home/SoulsAI/saves" }));
    assert!(error.contains("must be a folder inside the plugin's data directory"), "{error}");
    let error = start_error(json!({ "colour": "red" }));
    assert!(error.contains("unknown key `colour`"), "{error}");
}

#[test]
fn an_unwritable_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let manifest_dir = tempfile::tempdir().unwrap();
    let component = manifest_dir.path().join("file.wasm");
    std::fs::copy(connector("file"), &component).unwrap();
    std::fs::write(
        manifest_dir.path().join("plugin.toml"),
        "name = \"file\"\ncomponent = \"file.wasm\"\n[grants]\ndata_dir = { path = \"x\", access = \"read-only\" }\n",
    )
    .unwrap();
    let options = IsolationOptions { data_dir: Some(dir.path().to_path_buf()), ..IsolationOptions::default() };
    let mut plugin = IsolatedPlugin::load(&component, options).unwrap();
    let error = format!("{:?}", plugin.start().unwrap_err());
    assert!(error.contains("cannot write /data/telemetry.jsonl") && error.contains("read-write"), "{error}");
}

#[test]
fn the_plot_decodes_has_the_configured_size_and_a_curve_in_every_subplot() {
    let plot = json!({ "xkey": "n_env_steps", "ykeys": ["rewards_av", "steps_av", "wins_av", "time"], "width": 800, "height": 600, "min_interval_s": 0 });
    let mut plugin = file_plugin(json!({ "plot": plot }));
    plugin.start().unwrap();
    push(&mut plugin, (0..500).map(sample));
    plugin.stop().unwrap();
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(plugin.data_dir().join("telemetry.png")).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((frame.width, frame.height), (800, 600));
    assert_eq!(frame.color_type, png::ColorType::Rgb);
    // The curve colour, counted in each of the four subplots (2 columns, 2 rows).
    let mut per_subplot = [0usize; 4];
    for (index, rgb) in pixels.chunks(3).enumerate() {
        if rgb == [31, 119, 180] {
            let (x, y) = (index % 800, index / 800);
            per_subplot[(y / 300) * 2 + x / 400] += 1;
        }
    }
    assert!(per_subplot.iter().all(|count| *count > 200), "{per_subplot:?}");
    // Text is drawn: dark pixels in the title band.
    let title_dark = pixels[..800 * 3 * 30].chunks(3).filter(|rgb| rgb.iter().all(|c| *c < 100)).count();
    assert!(title_dark > 100, "the title must be drawn, found {title_dark} dark pixels");
}

/// Fills the history with `rows` rows fast (not through ingest), one millisecond apart.
fn fill_history(plugin: &mut IsolatedPlugin, rows: u64) {
    let history = plugin.history_mut();
    let series = history.series_names().len();
    let first = history.row_count();
    let mut values = vec![0.0; series];
    for row in first..first + rows {
        values.iter_mut().enumerate().for_each(|(column, value)| *value = (row * (column as u64 + 1)) as f64);
        history.push_row(1_700_000_000_000 + row as i64, &values).unwrap();
    }
    history.commit().unwrap();
}

/// A restart at 10M rows reads only the end of telemetry.jsonl: the file is a sparse hole
/// of 2.75 GB (what 10M rows take) followed by its last thousand real rows, 37 rows the
/// host never saw acknowledged and a torn line. A start that read the file from the
/// beginning would find no row in the hole and cut everything.
#[test]
fn a_restart_at_ten_million_rows_reads_only_the_end_of_the_file() {
    const ROWS: u64 = 10_000_000;
    let mut plugin = file_plugin(json!({}));
    fill_history(&mut plugin, ROWS + 5);
    let jsonl = plugin.data_dir().join("telemetry.jsonl");
    let line = |row: u64| format!("{{\"row\":{row},\"timestamp_ms\":{},\"rewards\":1.5}}\n", 1_700_000_000_000 + row);
    let hole = 2_750_000_000u64;
    let file = std::fs::File::create(&jsonl).unwrap();
    file.set_len(hole).unwrap();
    drop(file);
    let kept: String = (ROWS - 1000..ROWS).map(line).collect();
    let unacknowledged: String = (ROWS..ROWS + 37).map(line).collect();
    let mut tail = std::fs::OpenOptions::new().append(true).open(&jsonl).unwrap();
    use std::io::Write;
    tail.write_all(format!("{kept}{unacknowledged}{{\"row\":10000037,\"tim").as_bytes()).unwrap();
    drop(tail);
    plugin.skip_to(ROWS);
    let started = std::time::Instant::now();
    plugin.start().expect("start within its call limit");
    eprintln!("start at {ROWS} rows: {:?}", started.elapsed());
    assert_eq!(std::fs::metadata(&jsonl).unwrap().len(), hole + kept.len() as u64, "cut right after row {}", ROWS - 1);
    plugin.deliver().unwrap();
    let mut end = std::fs::File::open(&jsonl).unwrap();
    use std::io::{Read, Seek, SeekFrom};
    end.seek(SeekFrom::Start(hole + kept.len() as u64)).unwrap();
    let mut appended = String::new();
    end.read_to_string(&mut appended).unwrap();
    let rows: Vec<u64> = appended.lines().map(|line| serde_json::from_str::<Value>(line).unwrap()["row"].as_u64().unwrap()).collect();
    assert_eq!(rows, (ROWS..ROWS + 5).collect::<Vec<_>>(), "the new rows follow the kept ones");
}

/// telemetry.json is rewritten a bounded piece per update: while a rewrite is under way
/// the previous file stays whole, and the finished one holds the rows of when it began.
#[test]
fn telemetry_json_is_rewritten_across_updates_and_stays_whole_meanwhile() {
    let mut plugin = file_plugin(json!({ "plot": false, "json_interval_s": 0.001 }));
    plugin.start().unwrap();
    push(&mut plugin, (0..10).map(sample));
    plugin.deliver().unwrap();
    assert_eq!(read_columns(&plugin)["rewards"].as_array().unwrap().len(), 10, "a small rewrite completes in one update");
    // 300,000 rows of 10 series: 3M values, more than one update writes.
    // Empty updates, as the host sends each second without new rows.
    fill_history(&mut plugin, 300_000);
    let mut updates = 0;
    while read_columns(&plugin)["rewards"].as_array().unwrap().len() == 10 {
        let batch = plugin.history.snapshot().batch(10, 0);
        plugin.update_raw(batch).unwrap();
        updates += 1;
        assert!(updates < 100, "the rewrite never completed");
    }
    assert!(updates >= 3, "{updates} updates: the rewrite was not spread");
    let columns = read_columns(&plugin);
    assert_eq!(columns["rewards"].as_array().unwrap().len(), 300_010);
    assert_eq!(columns["time"].as_array().unwrap().len(), 300_010);
    plugin.stop().unwrap();
}
