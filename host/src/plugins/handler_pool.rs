//! Handler instances of a plugin that asks for more than one (`[limits] http_instances`):
//! requests are answered side by side while the plugin's runner keeps delivering rows to
//! its main instance. Handler instances get `start` and `stop` but never `update`, so they
//! suit handlers that answer from the history and their configuration alone (the Grafana
//! connector). One that traps is replaced; its request gets a 503.
//!
//! A request runs in an idle instance on the HTTP server's worker that received it, called
//! asynchronously: the instance yields to the worker at every epoch tick, so a long call
//! holds up no other request, as in Spin. Handing each request to a thread of its own and
//! back cost a sixth of the host's time per Grafana query (two thread wake-ups, dear on a
//! small VM).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::instance::{CallFailure, Instance, PluginEnv};
use super::loader::LoadedPlugin;
use super::runner::{PluginStats, start_context, unavailable_response};
use crate::bindings::http_types::{Request, Response};

pub struct HandlerPool {
    plugin: LoadedPlugin,
    env: PluginEnv,
    stats: Arc<PluginStats>,
    /// One permit per instance: a request waits here, without holding a thread, for one.
    permits: tokio::sync::Semaphore,
    state: Mutex<PoolState>,
    restart_wait: Duration,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Instance>,
    busy: usize,
    /// After a failed start, requests are answered 503 until then instead of each trying.
    down_until: Option<Instant>,
}

impl HandlerPool {
    /// The pool of a plugin that asks for one (`http_instances` > 1), its instances started
    /// as requests need them.
    pub fn of(plugin: &LoadedPlugin, env: &PluginEnv, stats: &Arc<PluginStats>, restart_wait: Duration) -> Option<HandlerPool> {
        if plugin.http_handler.is_none() || plugin.manifest.limits.http_instances < 2 {
            return None;
        }
        Some(HandlerPool {
            plugin: plugin.clone(),
            env: env.clone(),
            stats: stats.clone(),
            permits: tokio::sync::Semaphore::new(plugin.manifest.limits.http_instances as usize),
            state: Mutex::new(PoolState::default()),
            restart_wait,
        })
    }

    /// The plugin's answer; `None` once the pool has stopped.
    pub async fn call(&self, request: &Request) -> Option<Response> {
        let _permit = self.permits.acquire().await.ok()?;
        let _busy = Busy::enter(self);
        Some(self.answer(request).await)
    }

    async fn answer(&self, request: &Request) -> Response {
        let name = &self.plugin.manifest.name;
        let mut instance = match self.idle_or_new().await {
            Ok(instance) => instance,
            Err(refusal) => return refusal,
        };
        let started = Instant::now();
        let answer = instance.handle(request).await;
        self.stats.count_call(started);
        match answer {
            Ok(response) => {
                self.state().idle.push(instance);
                response
            }
            Err(failure) => {
                if let CallFailure::Trapped(_) = failure {
                    self.stats.traps.fetch_add(1, Ordering::Relaxed);
                }
                self.stats.restarts.fetch_add(1, Ordering::Relaxed);
                tracing::error!(plugin = %name, "a handler instance failed: {failure}; replacing it");
                unavailable_response(&format!("plugin `{name}` failed: {}", failure.summary()))
            }
        }
    }

    /// An idle instance or a new one (at first, or in place of one lost); else the 503 to
    /// answer. The caller holds a permit, so at most `http_instances` exist.
    async fn idle_or_new(&self) -> Result<Instance, Response> {
        let restarting = {
            let mut state = self.state();
            if let Some(instance) = state.idle.pop() {
                return Ok(instance);
            }
            state.down_until.is_some_and(|until| Instant::now() < until)
        };
        let name = &self.plugin.manifest.name;
        if restarting {
            return Err(unavailable_response(&format!("plugin `{name}` is restarting")));
        }
        let started = Instant::now();
        let context = start_context(&self.plugin, &self.env, 0);
        let instance = match Instance::new(&self.plugin, &self.env).await {
            Ok(mut instance) => instance.start(&context).await.map(|()| instance),
            Err(failure) => Err(failure),
        };
        self.stats.count_call(started);
        match instance {
            Ok(instance) => {
                self.state().down_until = None;
                Ok(instance)
            }
            Err(failure) => {
                tracing::error!(plugin = %name, "a handler instance failed to start: {failure}");
                self.state().down_until = Some(Instant::now() + self.restart_wait);
                Err(unavailable_response(&format!("plugin `{name}` cannot start: {}", failure.summary())))
            }
        }
    }

    /// Refuses new requests, lets the running ones finish and calls every instance's `stop`.
    pub fn stop(&self) {
        self.permits.close();
        // The servers have shut down by now, so this waits at most for a call in progress:
        // rare enough to poll for rather than to signal after every request.
        while self.state().busy > 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let idle = std::mem::take(&mut self.state().idle);
        if idle.is_empty() {
            return;
        }
        let stopping = async {
            for mut instance in idle {
                let started = Instant::now();
                let stopped = instance.stop().await;
                self.stats.count_call(started);
                if let Err(failure) = stopped {
                    tracing::warn!(plugin = %self.plugin.manifest.name, "a handler instance's stop failed: {failure}");
                }
            }
        };
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(stopping),
            Err(error) => tracing::warn!(plugin = %self.plugin.manifest.name, "cannot stop the handler instances: {error}"),
        }
    }

    fn state(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().expect("handler pool lock")
    }
}

/// Counts a request as running until it is dropped, answered or not (a client that goes
/// away drops the request's future mid-call; its instance is then dropped too).
struct Busy<'a>(&'a HandlerPool);

impl<'a> Busy<'a> {
    fn enter(pool: &'a HandlerPool) -> Busy<'a> {
        pool.state().busy += 1;
        Busy(pool)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.state().busy -= 1;
    }
}
