//! A plugin's stderr (what `eprintln!`, a panic message or Python's tracebacks write): cut
//! into lines and sent through the host's logger with the plugin's name, within the same
//! allowance of lines as `log.write`, never straight onto the host's own stderr.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::log::{MAX_MESSAGE_BYTES, PluginLog};
use crate::bindings::log::Level;

/// The stderr of one instance.
#[derive(Clone)]
pub struct PluginStderr {
    log: PluginLog,
    /// Bytes of a line not yet ended.
    partial: Arc<Mutex<Vec<u8>>>,
}

impl PluginStderr {
    pub fn new(log: PluginLog) -> PluginStderr {
        PluginStderr { log, partial: Arc::default() }
    }

    fn take(&self, bytes: &[u8]) {
        let mut partial = self.partial.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        partial.extend_from_slice(bytes);
        while let Some(end) = partial.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = partial.drain(..=end).collect();
            self.line(&line[..end]);
        }
        // A line that never ends is cut where the log would cut it.
        if partial.len() > MAX_MESSAGE_BYTES {
            let line = std::mem::take(&mut *partial);
            self.line(&line);
        }
    }

    fn line(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
        if !line.trim().is_empty() {
            self.log.emit(Level::Warn, format!("stderr: {line}"));
        }
    }
}

impl IsTerminal for PluginStderr {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PluginStderr {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for PluginStderr {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl Pollable for PluginStderr {
    // Always ready: lines go to the logger at once.
    fn ready<'a, 'b>(&'a mut self) -> Pin<Box<dyn Future<Output = ()> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(std::future::ready(()))
    }
}

impl tokio::io::AsyncWrite for PluginStderr {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, bytes: &[u8]) -> Poll<std::io::Result<usize>> {
        self.take(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_reaches_the_log_as_lines_with_the_plugin_s_name() {
        let capture = Arc::new(Mutex::new(Vec::new()));
        let stderr = PluginStderr::new(PluginLog::captured("p", capture.clone(), Arc::default()));
        stderr.take(b"first line\nsecond ");
        stderr.take(b"half\n\n");
        let lines: Vec<String> = capture.lock().unwrap().iter().map(|line| line.message.clone()).collect();
        assert_eq!(lines, ["stderr: first line", "stderr: second half"]);
        stderr.take(&vec![b'x'; MAX_MESSAGE_BYTES + 10]);
        assert_eq!(capture.lock().unwrap().len(), 3, "an endless line is cut");
    }
}
