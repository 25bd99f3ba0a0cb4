//! The `log` import: plugin messages go to the host's log with the plugin's name, or to a
//! capture buffer when a plugin runs alone under the test kit. Each plugin may log
//! `LINES_PER_SECOND` lines a second (all its instances together); what it logs beyond
//! that is dropped and counted, and the count is logged once the next second begins (and
//! shown in `/metrics`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bindings::log::{Host, Level};
use crate::capabilities::secrets::Scrubber;

/// One message a plugin logged.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub level: Level,
    pub message: String,
}

/// Lines a plugin may log per second.
pub const LINES_PER_SECOND: u32 = 100;

/// One plugin's allowance of log lines, shared by its instances.
#[derive(Debug, Default)]
pub struct LogBudget {
    /// The current one-second window and the lines logged in it.
    window: Mutex<Option<(Instant, u32, u64)>>,
    /// Lines dropped since the plugin started.
    pub dropped: AtomicU64,
}

impl LogBudget {
    /// Whether one more line may be logged now; when a window with dropped lines ends,
    /// also how many were dropped in it.
    fn admit(&self, now: Instant) -> (bool, u64) {
        let mut window = self.window.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (started, lines, dropped) = window.get_or_insert((now, 0, 0));
        let mut reported = 0;
        if now.duration_since(*started) >= Duration::from_secs(1) {
            reported = std::mem::take(dropped);
            (*started, *lines) = (now, 0);
        }
        if *lines >= LINES_PER_SECOND {
            *dropped += 1;
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return (false, reported);
        }
        *lines += 1;
        (true, reported)
    }
}

#[derive(Clone)]
pub struct PluginLog {
    plugin: Arc<str>,
    capture: Option<Arc<Mutex<Vec<LogLine>>>>,
    budget: Arc<LogBudget>,
    scrubber: Scrubber,
}

impl PluginLog {
    pub fn to_tracing(plugin: &str, budget: Arc<LogBudget>) -> PluginLog {
        PluginLog { plugin: plugin.into(), capture: None, budget, scrubber: Scrubber::default() }
    }

    /// Messages are kept in `capture` (and also sent to the host's log).
    pub fn captured(plugin: &str, capture: Arc<Mutex<Vec<LogLine>>>, budget: Arc<LogBudget>) -> PluginLog {
        PluginLog { plugin: plugin.into(), capture: Some(capture), budget, scrubber: Scrubber::default() }
    }

    /// Lines logged from now on have the plugin's secrets hidden.
    pub fn scrubbing(mut self, scrubber: Scrubber) -> PluginLog {
        self.scrubber = scrubber;
        self
    }

    pub fn scrub(&self, text: String) -> String {
        self.scrubber.scrub(text)
    }
}

/// Longest message kept; a plugin cannot flood the host's log with one call.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;

impl Host for PluginLog {
    fn write(&mut self, level: Level, message: String) {
        self.emit(level, message);
    }
}

impl PluginLog {
    /// One line to the host's log: with the plugin's name, cut at `MAX_MESSAGE_BYTES`,
    /// within the plugin's allowance.
    pub fn emit(&self, level: Level, mut message: String) {
        let plugin = &*self.plugin;
        let (admitted, dropped) = self.budget.admit(Instant::now());
        if dropped > 0 {
            tracing::warn!(plugin, "{dropped} log lines dropped in the last second (more than {LINES_PER_SECOND} a second)");
        }
        if !admitted {
            return;
        }
        if message.len() > MAX_MESSAGE_BYTES {
            let mut cut = MAX_MESSAGE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" [truncated]");
        }
        let message = self.scrubber.scrub(message);
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
        if let Some(capture) = &self.capture {
            capture.lock().expect("log capture lock").push(LogLine { level, message });
        }
    }
}

/// Links the `log` import, reading the capability out of the store's data with `get`.
pub fn add_to_linker<T: 'static>(linker: &mut wasmtime::component::Linker<T>, get: fn(&mut T) -> &mut PluginLog) -> wasmtime::Result<()> {
    crate::bindings::log::add_to_linker::<T, wasmtime::component::HasSelf<PluginLog>>(linker, get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_allowance_are_dropped_counted_and_reported_next_second() {
        let budget = LogBudget::default();
        let start = Instant::now();
        let admitted = (0..250).filter(|_| budget.admit(start).0).count();
        assert_eq!(admitted as u32, LINES_PER_SECOND);
        assert_eq!(budget.dropped.load(Ordering::Relaxed), 150);
        assert_eq!(budget.admit(start + Duration::from_millis(1500)), (true, 150));
    }
}
