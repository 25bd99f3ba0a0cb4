//! The `log` import: plugin messages go to the host's log with the plugin's name, or to a
//! capture buffer when a plugin runs alone under the test kit.

use std::sync::{Arc, Mutex};

use crate::bindings::log::{Host, Level};

/// One message a plugin logged.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub level: Level,
    pub message: String,
}

#[derive(Clone)]
pub struct PluginLog {
    plugin: Arc<str>,
    capture: Option<Arc<Mutex<Vec<LogLine>>>>,
}

impl PluginLog {
    pub fn to_tracing(plugin: &str) -> PluginLog {
        PluginLog { plugin: plugin.into(), capture: None }
    }

    /// Messages are kept in `capture` (and also sent to the host's log).
    pub fn captured(plugin: &str, capture: Arc<Mutex<Vec<LogLine>>>) -> PluginLog {
        PluginLog { plugin: plugin.into(), capture: Some(capture) }
    }
}

/// Longest message kept; a plugin cannot flood the host's log with one call.
const MAX_MESSAGE_BYTES: usize = 16 * 1024;

impl Host for PluginLog {
    fn write(&mut self, level: Level, mut message: String) {
        if message.len() > MAX_MESSAGE_BYTES {
            let mut cut = MAX_MESSAGE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" [truncated]");
        }
        let plugin = &*self.plugin;
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
