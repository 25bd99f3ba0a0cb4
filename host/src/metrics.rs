//! `GET /metrics`: the host's own figures in the Prometheus text format (version 0.0.4).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::history::SharedHistory;
use crate::ingest::Ingest;
use crate::plugins::runner::PluginStats;

/// What the endpoint reads.
#[derive(Clone)]
pub struct HostFigures {
    pub ingest: Arc<Mutex<Ingest>>,
    pub history: SharedHistory,
    pub plugins: Vec<(String, Arc<PluginStats>)>,
}

pub fn router(figures: HostFigures) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(figures)
}

/// A label value with `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub fn render(figures: &HostFigures) -> String {
    let mut text = String::new();
    let rows = figures.history.read().map(|history| history.row_count()).unwrap_or(0);
    let (accepted, refused, mut faults) = match figures.ingest.lock() {
        Ok(ingest) => {
            (ingest.accepted, ingest.refused, ingest.faults().iter().map(|(kind, count)| (kind.clone(), *count)).collect::<Vec<_>>())
        }
        Err(_) => (0, 0, Vec::new()),
    };
    faults.sort();
    let mut family = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(text, "# HELP telemetry_{name} {help}\n# TYPE telemetry_{name} {kind}");
    };
    family("samples_accepted_total", "counter", "Samples stored as rows.");
    family("samples_refused_total", "counter", "Samples refused (malformed, unreadable).");
    family("sample_faults_total", "counter", "Faults by kind; a sample may have several.");
    family("rows_stored", "gauge", "Rows in the history.");
    family("plugin_rows_delivered_total", "counter", "Rows each plugin acknowledged.");
    family("plugin_rows_rejected_total", "counter", "Rows a plugin refused to take.");
    family("plugin_cursor_lag_rows", "gauge", "Rows stored but not yet delivered to the plugin.");
    family("plugin_calls_total", "counter", "Calls into the plugin.");
    family("plugin_call_seconds_total", "counter", "Time spent in calls into the plugin.");
    family("plugin_traps_total", "counter", "Traps (panics, time or memory limits).");
    family("plugin_restarts_total", "counter", "Instances replaced after a failure.");
    family("plugin_denied_total", "counter", "Capability uses refused (outgoing requests to ungranted hosts).");
    let _ = writeln!(text, "telemetry_samples_accepted_total {accepted}");
    let _ = writeln!(text, "telemetry_samples_refused_total {refused}");
    for (kind, count) in faults {
        let _ = writeln!(text, "telemetry_sample_faults_total{{kind=\"{}\"}} {count}", label(&kind));
    }
    let _ = writeln!(text, "telemetry_rows_stored {rows}");
    for (name, stats) in &figures.plugins {
        let plugin = label(name);
        let cursor = stats.cursor.load(Ordering::Relaxed);
        let lines = [
            ("plugin_rows_delivered_total", stats.rows_delivered.load(Ordering::Relaxed) as f64),
            ("plugin_rows_rejected_total", stats.rows_rejected.load(Ordering::Relaxed) as f64),
            ("plugin_cursor_lag_rows", rows.saturating_sub(cursor) as f64),
            ("plugin_calls_total", stats.calls.load(Ordering::Relaxed) as f64),
            ("plugin_call_seconds_total", stats.call_nanos.load(Ordering::Relaxed) as f64 / 1e9),
            ("plugin_traps_total", stats.traps.load(Ordering::Relaxed) as f64),
            ("plugin_restarts_total", stats.restarts.load(Ordering::Relaxed) as f64),
            ("plugin_denied_total", stats.denied.load(Ordering::Relaxed) as f64),
        ];
        for (metric, value) in lines {
            let _ = writeln!(text, "telemetry_{metric}{{plugin=\"{plugin}\"}} {value}");
        }
    }
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

    #[test]
    fn figures_are_rendered_in_the_prometheus_format() {
        let config = HostConfig::builtin_default();
        let history = History::new(series_names(&config.telemetry.transforms)).shared();
        let ingest = Arc::new(Mutex::new(Ingest::new(&config.telemetry, history.clone())));
        ingest.lock().unwrap().accept(&serde_json::json!({"ep_reward": 1, "ep_steps": 2, "total_steps": 3}), "t");
        ingest.lock().unwrap().accept_line(b"{oops", "t");
        let stats = Arc::new(PluginStats::default());
        stats.rows_delivered.store(1, Ordering::Relaxed);
        let text = render(&HostFigures { ingest, history, plugins: vec![("file \"x\"".into(), stats)] });
        assert!(text.contains("# TYPE telemetry_samples_accepted_total counter\n"), "{text}");
        assert!(text.contains("telemetry_samples_accepted_total 1\n"), "{text}");
        assert!(text.contains("telemetry_samples_refused_total 1\n"), "{text}");
        assert!(text.contains("telemetry_sample_faults_total{kind=\"invalid-json\"} 1\n"), "{text}");
        assert!(text.contains("telemetry_rows_stored 1\n"), "{text}");
        assert!(text.contains("telemetry_plugin_rows_delivered_total{plugin=\"file \\\"x\\\"\"} 1\n"), "{text}");
        assert!(text.contains("telemetry_plugin_cursor_lag_rows{plugin=\"file \\\"x\\\"\"} 1\n"), "{text}");
    }
}
