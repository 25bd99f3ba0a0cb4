//! `GET /metrics`: the host's own figures in the Prometheus text format (version 0.0.4).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::history::SharedHistory;
use crate::ingest::IngestCounters;
use crate::plugins::runner::PluginStats;

/// What the endpoint reads.
#[derive(Clone)]
pub struct HostFigures {
    pub ingest: Arc<IngestCounters>,
    pub history: SharedHistory,
    pub plugins: Arc<dyn PluginFigures>,
}

/// What `/metrics` reads of the plugins, as they are now (they join as their components
/// are compiled).
pub trait PluginFigures: Send + Sync {
    /// The counters of every running plugin.
    fn running(&self) -> Vec<(String, Arc<PluginStats>)>;
    /// The plugins whose component is being compiled.
    fn compiling(&self) -> Vec<String>;
    /// `(plugin, outcome)` -> reloads that came to it (added, replaced, removed, failed).
    fn reloads(&self) -> Vec<((String, &'static str), u64)> {
        Vec::new()
    }
}

impl PluginFigures for crate::plugins::PluginSet {
    fn running(&self) -> Vec<(String, Arc<PluginStats>)> {
        self.stats()
    }

    fn compiling(&self) -> Vec<String> {
        self.view().compiling.clone()
    }

    fn reloads(&self) -> Vec<((String, &'static str), u64)> {
        self.reload_outcomes()
    }
}

pub fn router(figures: HostFigures) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(figures)
}

/// A label value with `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// One metric family: its HELP and TYPE lines followed by all its samples, as the
/// exposition format wants them grouped.
fn family(text: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(text, "# HELP telemetry_{name} {help}\n# TYPE telemetry_{name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(text, "telemetry_{name}{labels} {value}");
    }
}

pub fn render(figures: &HostFigures) -> String {
    let mut text = String::new();
    let rows = figures.history.snapshot().row_count();
    let (accepted, refused) = (figures.ingest.accepted.load(Ordering::Relaxed), figures.ingest.refused.load(Ordering::Relaxed));
    let mut faults: Vec<(String, u64)> = figures.ingest.faults().into_iter().collect();
    faults.sort();
    let plain = |value: f64| vec![(String::new(), value)];
    family(&mut text, "samples_accepted_total", "counter", "Samples stored as rows.", &plain(accepted as f64));
    family(&mut text, "samples_refused_total", "counter", "Samples refused (malformed, unreadable).", &plain(refused as f64));
    let by_kind: Vec<(String, f64)> = faults.iter().map(|(kind, count)| (format!("{{kind=\"{}\"}}", label(kind)), *count as f64)).collect();
    family(&mut text, "sample_faults_total", "counter", "Faults by kind; a sample may have several.", &by_kind);
    family(&mut text, "rows_stored", "gauge", "Rows in the history.", &plain(rows as f64));
    type Read = fn(&PluginStats, u64) -> f64;
    let per_plugin: [(&str, &str, &str, Read); 12] = [
        ("plugin_rows_delivered_total", "counter", "Rows each plugin acknowledged.", |stats, _| {
            stats.rows_delivered.load(Ordering::Relaxed) as f64
        }),
        ("plugin_rows_rejected_total", "counter", "Rows a plugin refused to take.", |stats, _| {
            stats.rows_rejected.load(Ordering::Relaxed) as f64
        }),
        ("plugin_cursor_lag_rows", "gauge", "Rows stored but not yet delivered to the plugin.", |stats, rows| {
            rows.saturating_sub(stats.cursor.load(Ordering::Relaxed)) as f64
        }),
        ("plugin_calls_total", "counter", "Calls into the plugin.", |stats, _| stats.calls.load(Ordering::Relaxed) as f64),
        ("plugin_call_seconds_total", "counter", "Time spent in calls into the plugin.", |stats, _| {
            stats.call_nanos.load(Ordering::Relaxed) as f64 / 1e9
        }),
        ("plugin_traps_total", "counter", "Traps (panics, time or memory limits).", |stats, _| stats.traps.load(Ordering::Relaxed) as f64),
        ("plugin_restarts_total", "counter", "Instances replaced after a failure.", |stats, _| {
            stats.restarts.load(Ordering::Relaxed) as f64
        }),
        ("plugin_disabled", "gauge", "1 when the plugin refused its configuration and is disabled.", |stats, _| {
            f64::from(u8::from(stats.disabled.load(Ordering::Acquire)))
        }),
        ("plugin_log_lines_dropped_total", "counter", "Log lines over the plugin's allowance, dropped.", |stats, _| {
            stats.log_budget.dropped.load(Ordering::Relaxed) as f64
        }),
        ("plugin_disk_bytes", "gauge", "Space counted against the plugin's limits.disk_mb in its data directory.", |stats, _| {
            stats.disk_quota.as_ref().map_or(0.0, |quota| quota.used_bytes() as f64)
        }),
        ("plugin_disk_refused_total", "counter", "Writes to its data directory refused at limits.disk_mb.", |stats, _| {
            stats.disk_quota.as_ref().map_or(0.0, |quota| quota.refused() as f64)
        }),
        ("plugin_denied_total", "counter", "Capability uses refused (outgoing requests to ungranted hosts).", |stats, _| {
            stats.denied.load(Ordering::Relaxed) as f64
        }),
    ];
    let running = figures.plugins.running();
    let compiling = figures.plugins.compiling().len() as f64;
    family(&mut text, "plugins_compiling", "gauge", "Plugins whose component is being compiled (not running yet).", &plain(compiling));
    for (name, kind, help, read) in per_plugin {
        let samples: Vec<(String, f64)> =
            running.iter().map(|(plugin, stats)| (format!("{{plugin=\"{}\"}}", label(plugin)), read(stats, rows))).collect();
        family(&mut text, name, kind, help, &samples);
    }
    let reloads: Vec<(String, f64)> = figures
        .plugins
        .reloads()
        .into_iter()
        .map(|((plugin, outcome), count)| (format!("{{plugin=\"{}\",outcome=\"{outcome}\"}}", label(&plugin)), count as f64))
        .collect();
    let help = "Reloads of the plugin directory, per plugin and outcome (added, replaced, removed, failed).";
    family(&mut text, "plugin_reloads_total", "counter", help, &reloads);
    text
}

async fn metrics(State(figures): State<HostFigures>) -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4")], render(&figures))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HostConfig;
    use crate::history::History;
    use crate::ingest::transforms::series_names;

    struct OnePlugin(Arc<PluginStats>);

    impl PluginFigures for OnePlugin {
        fn running(&self) -> Vec<(String, Arc<PluginStats>)> {
            vec![("file \"x\"".into(), self.0.clone())]
        }

        fn compiling(&self) -> Vec<String> {
            vec!["grafana".into()]
        }
    }

    #[test]
    fn figures_are_rendered_in_the_prometheus_format() {
        let config = HostConfig::builtin_default();
        let history = History::new(series_names(&config.telemetry.transforms));
        let mut ingest = crate::ingest::Ingest::new(&config.telemetry, history, crate::callbacks::Callbacks::none());
        ingest.accept(&serde_json::json!({"ep_reward": 1, "ep_steps": 2, "total_steps": 3}), "t");
        ingest.accept_line(b"{oops", "t");
        ingest.commit().unwrap();
        let history = ingest.shared();
        let ingest = ingest.counters();
        let stats = Arc::new(PluginStats::default());
        stats.rows_delivered.store(1, Ordering::Relaxed);
        let text = render(&HostFigures { ingest, history, plugins: Arc::new(OnePlugin(stats)) });
        assert!(text.contains("# TYPE telemetry_samples_accepted_total counter\n"), "{text}");
        assert!(text.contains("telemetry_samples_accepted_total 1\n"), "{text}");
        assert!(text.contains("telemetry_samples_refused_total 1\n"), "{text}");
        assert!(text.contains("telemetry_sample_faults_total{kind=\"invalid-json\"} 1\n"), "{text}");
        assert!(text.contains("telemetry_rows_stored 1\n"), "{text}");
        assert!(text.contains("telemetry_plugins_compiling 1\n"), "{text}");
        assert!(text.contains("telemetry_plugin_rows_delivered_total{plugin=\"file \\\"x\\\"\"} 1\n"), "{text}");
        assert!(text.contains("telemetry_plugin_cursor_lag_rows{plugin=\"file \\\"x\\\"\"} 1\n"), "{text}");
    }
}
