//! The `run` command: history, ingest, plugins and their HTTP servers, and a clean stop.

use std::io::BufReader;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::callbacks::{Callbacks, Publish};
use crate::config::HostConfig;
use crate::history::History;
use crate::ingest::redis::{RedisInput, RedisPublisher};
use crate::ingest::transforms::series_names;
use crate::ingest::writer::{At, Item, Job, Pipeline, WriterThread};
use crate::ingest::{Ingest, demo_samples, read_ndjson_to};
use crate::plugins::PluginSet;
use crate::plugins::loader::Runtime;

/// Where samples come from.
#[derive(Debug, Clone)]
pub enum Input {
    /// Only HTTP (and Redis, if configured).
    None,
    Stdin,
    File(PathBuf),
    /// A fake training run, this many samples a second, until stopped.
    Demo {
        per_second: u32,
    },
}

pub struct NodeOptions {
    pub config: HostConfig,
    pub plugins_dir: PathBuf,
    pub input: Input,
    /// Keep serving (and accepting samples over HTTP) after the input ends, until
    /// SIGINT/SIGTERM.
    pub wait_after_input: bool,
    /// Reload the plugin directory whenever it changes (it is reloaded on SIGHUP and
    /// `POST /v1/plugins/reload` either way).
    pub watch_plugins: bool,
}

/// What a run did, per plugin.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub accepted: u64,
    pub refused: u64,
    pub plugins: Vec<(String, u64)>,
    pub failed_plugins: Vec<String>,
}

enum Event {
    InputDone(Result<()>),
    Signal,
}

/// Opens the durable history the configuration names.
pub fn open_history(config: &HostConfig) -> Result<History> {
    let dir = &config.runtime.history_dir;
    let history = History::open(dir, series_names(&config.telemetry.transforms))?;
    if history.row_count() > 0 {
        tracing::info!("continuing the run in {}: {} rows", dir.display(), history.row_count());
    }
    Ok(history)
}

pub fn run(options: NodeOptions) -> Result<RunSummary> {
    let config = options.config;
    let history = open_history(&config)?;
    let shared = history.shared();
    let runtime = Arc::new(Runtime::new(Some(config.runtime.cache_dir.clone()))?);
    // Plugins compile in the background: ingest and the HTTP server start now.
    let plugins = PluginSet::start(runtime, &options.plugins_dir, &config, &shared)?;
    let async_runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let publisher = match &config.redis {
        Some(redis) if !config.telemetry.callbacks.is_empty() => Some(Box::new(RedisPublisher::new(&redis.url)?) as Box<dyn Publish>),
        _ => None,
    };
    let callbacks = Callbacks::new(&config.telemetry.callbacks, &shared.snapshot(), publisher);
    let ingest = Ingest::new(&config.telemetry, history, callbacks);
    let counters = ingest.counters();
    let notify_all: Arc<dyn Fn() + Send + Sync> = {
        let plugins = plugins.clone();
        Arc::new(move || plugins.notify_all())
    };
    let (committer, writer) = WriterThread::spawn(ingest, notify_all)?;
    let samples = crate::ingest::http::router(crate::ingest::http::SampleEndpoint {
        committer: committer.clone(),
        token: config.http.ingest_token.clone(),
        max_body_bytes: config.http.max_ingest_bytes,
    });
    let figures =
        crate::metrics::router(crate::metrics::HostFigures { ingest: counters.clone(), history: shared.clone(), plugins: plugins.clone() });
    let admin = crate::admin::router(crate::admin::AdminEndpoint { plugins: plugins.clone(), token: config.http.admin_token.clone() });
    let servers = async_runtime.block_on(crate::capabilities::http_server::serve(
        &config.http.listen,
        &plugins,
        config.http.max_body_bytes,
        Some(samples.merge(figures).merge(admin)),
    ))?;
    async_runtime.spawn(reload_on_hangup(plugins.clone()));
    if options.watch_plugins {
        crate::plugins::watch::spawn(plugins.clone(), options.plugins_dir.clone())?;
    }
    for server in &servers {
        tracing::info!("serving {} on http://{}", server.plugins.join(", "), server.address);
    }
    if let Some(server) = servers.last() {
        tracing::info!("samples accepted at http://{0}/v1/samples, figures at http://{0}/metrics", server.address);
    }

    let (events, event) = mpsc::channel();
    let stopping = Arc::new(AtomicBool::new(false));
    {
        let events = events.clone();
        async_runtime.spawn(async move {
            wait_for_signal().await;
            let _ = events.send(Event::Signal);
        });
    }
    let redis_threads = match &config.redis {
        Some(redis) => {
            let events = Mutex::new(events.clone());
            RedisInput {
                config: redis.clone(),
                committer: committer.clone(),
                history: shared.clone(),
                on_shutdown: Arc::new(move || {
                    let _ = events.lock().expect("events lock").send(Event::Signal);
                }),
                stopping: stopping.clone(),
            }
            .spawn()?
        }
        None => Vec::new(),
    };
    {
        let (stopping, input) = (stopping.clone(), options.input.clone());
        let mut pipeline = Pipeline::new(committer, INPUT_IN_FLIGHT);
        std::thread::Builder::new().name("ingest".into()).spawn(move || {
            let result = match input {
                Input::None => Ok(()),
                Input::Stdin => read_ndjson_to(std::io::stdin().lock(), "stdin", &mut pipeline).context("reading stdin"),
                Input::File(path) => {
                    std::fs::File::open(&path).with_context(|| format!("cannot open input {}", path.display())).and_then(|file| {
                        read_ndjson_to(BufReader::with_capacity(1 << 20, file), &path.display().to_string(), &mut pipeline)
                            .with_context(|| format!("reading {}", path.display()))
                    })
                }
                Input::Demo { per_second } => run_demo(per_second, &stopping, &mut pipeline),
            };
            let _ = events.send(Event::InputDone(result));
        })?;
    }

    let mut input_result = Ok(());
    match event.recv() {
        Ok(Event::InputDone(result)) => {
            input_result = result;
            if !options.wait_after_input {
                // A run that ends with its input delivers it to every plugin: the ones
                // still compiling are waited for.
                plugins.wait_compiled();
            }
            if options.wait_after_input && input_result.is_ok() {
                tracing::info!("input ended; serving until SIGINT or SIGTERM");
                while let Ok(event) = event.recv() {
                    if let Event::Signal = event {
                        break;
                    }
                }
            }
        }
        Ok(Event::Signal) | Err(_) => tracing::info!("stopping"),
    }
    // Every source stops taking samples first; what they handed over is committed, then
    // every plugin receives every committed row, then the plugins stop.
    stopping.store(true, Ordering::Relaxed);
    async_runtime.block_on(async {
        for server in servers {
            server.shutdown().await;
        }
    });
    for thread in redis_threads {
        let _ = thread.join();
    }
    drop(writer.stop());
    plugins.notify_all();
    let (accepted, refused) = (counters.accepted.load(Ordering::Relaxed), counters.refused.load(Ordering::Relaxed));
    let stats = plugins.stats();
    plugins.stop_all();
    let plugins_failed = plugins.failed();
    // Plugins that failed to load, and those that refused their configuration.
    let mut failed_plugins = plugins_failed;
    failed_plugins.extend(stats.iter().filter(|(_, stats)| stats.disabled.load(Ordering::Acquire)).map(|(name, stats)| {
        format!("plugin `{name}` disabled: {}", stats.last_failure.lock().ok().and_then(|f| f.clone()).unwrap_or_default())
    }));
    let summary = RunSummary {
        accepted,
        refused,
        plugins: stats.into_iter().map(|(name, stats)| (name, stats.rows_delivered.load(Ordering::Relaxed))).collect(),
        failed_plugins,
    };
    tracing::info!(accepted = summary.accepted, refused = summary.refused, "stopped; rows delivered per plugin: {:?}", summary.plugins);
    input_result.map(|()| summary)
}

/// Jobs of an input (NDJSON groups, demo samples) in flight at once.
const INPUT_IN_FLIGHT: usize = 4;

/// The demo input: `per_second` samples a second until the host stops.
fn run_demo(per_second: u32, stopping: &AtomicBool, pipeline: &mut Pipeline) -> Result<()> {
    let pause = Duration::from_secs_f64(1.0 / f64::from(per_second.max(1)));
    let origin: Arc<str> = Arc::from("demo");
    for sample in demo_samples() {
        if stopping.load(Ordering::Relaxed) {
            break;
        }
        pipeline.submit(Job { origin: origin.clone(), items: vec![Item { at: At::Whole, sample: Ok(sample) }], mark: None })?;
        std::thread::sleep(pause);
    }
    pipeline.finish()
}

/// SIGHUP reloads the plugin directory, as it makes daemons reread their configuration.
async fn reload_on_hangup(plugins: Arc<PluginSet>) {
    #[cfg(unix)]
    {
        let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the plugin directory");
            let plugins = plugins.clone();
            if let Ok(Err(error)) = tokio::task::spawn_blocking(move || plugins.reload()).await {
                tracing::error!("reload: {error:#}");
            }
        }
    }
    #[cfg(not(unix))]
    drop(plugins);
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
