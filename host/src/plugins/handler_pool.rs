//! Handler instances of a plugin that asks for more than one (`[limits] http_instances`):
//! requests are answered side by side, each instance on a thread of its own, while the
//! plugin's runner keeps delivering rows to its main instance. Handler instances get
//! `start` and `stop` but never `update`, so they suit handlers that answer from the
//! history and their configuration alone (the Grafana connector). One that traps is
//! replaced; its request gets a 503.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::instance::{CallFailure, PluginEnv};
use super::loader::LoadedPlugin;
use super::runner::{PluginStats, start_instance, unavailable_response};
use crate::bindings::http_types::{Request, Response};

/// A request and where its answer goes, or the end of an instance.
pub enum HttpJob {
    Request(Request, tokio::sync::oneshot::Sender<Response>),
    Stop,
}

pub struct HandlerPool {
    sender: Sender<HttpJob>,
    threads: Vec<JoinHandle<()>>,
}

impl HandlerPool {
    pub fn spawn(
        plugin: &LoadedPlugin,
        env: &PluginEnv,
        stats: &Arc<PluginStats>,
        instances: u32,
        restart_wait: Duration,
    ) -> std::io::Result<HandlerPool> {
        let (sender, receiver) = channel();
        // Whichever idle instance takes the lock first takes the next request.
        let jobs = Arc::new(Mutex::new(receiver));
        let threads = (0..instances)
            .map(|index| {
                let handler = Handler { plugin: plugin.clone(), env: env.clone(), stats: stats.clone(), jobs: jobs.clone(), restart_wait };
                std::thread::Builder::new().name(format!("http-{}-{index}", plugin.manifest.name)).spawn(move || handler.run())
            })
            .collect::<std::io::Result<_>>()?;
        Ok(HandlerPool { sender, threads })
    }

    pub fn sender(&self) -> Sender<HttpJob> {
        self.sender.clone()
    }

    /// Lets the instances finish the requests queued, calls their `stop` and waits for
    /// them. (The HTTP server still holds senders, so the channel does not close.)
    pub fn stop(self) {
        for _ in &self.threads {
            let _ = self.sender.send(HttpJob::Stop);
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

struct Handler {
    plugin: LoadedPlugin,
    env: PluginEnv,
    stats: Arc<PluginStats>,
    jobs: Arc<Mutex<Receiver<HttpJob>>>,
    restart_wait: Duration,
}

impl Handler {
    /// The next request, or `None` when the instance is to stop.
    fn next_job(&self) -> Option<(Request, tokio::sync::oneshot::Sender<Response>)> {
        match self.jobs.lock().ok()?.recv().ok()? {
            HttpJob::Request(request, reply) => Some((request, reply)),
            HttpJob::Stop => None,
        }
    }

    fn run(self) {
        let name = &self.plugin.manifest.name;
        loop {
            let started = self.stats.timed(|| start_instance(&self.plugin, &self.env, 0));
            let mut instance = match started {
                Ok(instance) => instance,
                Err(failure) => {
                    tracing::error!(plugin = %name, "a handler instance failed to start: {failure}");
                    // Answer 503 for a while rather than spin on a failing start.
                    let until = std::time::Instant::now() + self.restart_wait;
                    while std::time::Instant::now() < until {
                        let Some((_, reply)) = self.next_job() else { return };
                        let _ = reply.send(unavailable_response(&format!("plugin `{name}` is restarting")));
                    }
                    continue;
                }
            };
            loop {
                let Some((request, reply)) = self.next_job() else {
                    if let Err(failure) = self.stats.timed(|| instance.stop()) {
                        tracing::warn!(plugin = %name, "a handler instance's stop failed: {failure}");
                    }
                    return;
                };
                match self.stats.timed(|| instance.handle(&request)) {
                    Ok(response) => {
                        let _ = reply.send(response);
                    }
                    Err(failure) => {
                        let _ = reply.send(unavailable_response(&format!("plugin `{name}` failed: {failure}")));
                        if let CallFailure::Trapped(_) = failure {
                            self.stats.traps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        self.stats.restarts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::error!(plugin = %name, "a handler instance failed: {failure}; replacing it");
                        break;
                    }
                }
            }
        }
    }
}
