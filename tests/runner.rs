//! The runner's pace: one update per `update_interval` rows, however the rows arrive.

use std::sync::atomic::Ordering;
use std::time::Duration;

use telemetry_host::plugins::runner::PluginStats;
use telemetry_suite::{PluginSpec, TestHost, recorder_manifest};
use telemetry_testkit::fixture;

fn calls(stats: &PluginStats) -> u64 {
    stats.calls.load(Ordering::Relaxed)
}

#[test]
fn a_plugin_is_updated_once_per_interval_however_often_rows_are_announced() {
    let mut host = TestHost::start(&[PluginSpec::new("good", fixture("misbehaving"), &recorder_manifest("good"))]);
    let interval = host.config.telemetry.update_interval;
    assert!(host.wait_for_cursor("good", 0, Duration::from_secs(30)));
    let stats = host.stats("good");
    let before = calls(&stats);
    // One row per commit, each announced to the plugins: as one-sample POSTs arrive.
    for _ in 0..100 {
        host.feed(1);
    }
    assert!(host.wait_for_cursor("good", 100, Duration::from_secs(30)));
    let updates = calls(&stats) - before;
    // Every interval's update, and at most two more (an idle flush of a remainder, an idle update).
    assert!(updates <= 100 / interval + 2, "{updates} update calls for 100 rows at update_interval {interval}");
    assert_eq!(host.recorded_rows("good"), (0..100).collect::<Vec<u64>>());
    // Fewer rows than an interval still arrive, after a pause.
    host.feed(interval - 1);
    assert!(host.wait_for_cursor("good", 100 + interval - 1, Duration::from_secs(30)), "a remainder is delivered when rows pause");
}
