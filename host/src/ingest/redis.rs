//! Samples from Redis, as training code already sends them between machines:
//!
//! - pub/sub on `channel` (the original node's way; Redis keeps nothing for a subscriber
//!   that is down, so samples published meanwhile are lost, as they were before);
//! - a stream read with a consumer group (`XREADGROUP`): entries published while the host
//!   is down wait in the stream, and an entry is acknowledged (`XACK`) only after its row
//!   is committed. The last entry stored is committed with the rows (a history mark), so
//!   entries still pending after a crash are recognised and never stored twice.
//!
//! A message on `shutdown_channel` stops the host, as in the original.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use redis::streams::StreamReadReply;
use serde::{Deserialize, Serialize};

use super::writer::{At, Committer, Item, Job, MAX_JOB_SAMPLES, Pipeline};
use crate::callbacks::Publish;
use crate::history::SharedHistory;

/// `[redis]` in the host configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// e.g. `redis://127.0.0.1:6379/0` or `redis://:password@host:6379`.
    #[serde(default = "default_url", skip_serializing)]
    pub url: String,
    /// Pub/sub channel of samples; empty to not subscribe.
    #[serde(default = "default_channel")]
    pub channel: String,
    /// Stream of samples (each entry's `sample` field is one JSON sample); empty to not
    /// read a stream.
    #[serde(default = "default_channel")]
    pub stream: String,
    #[serde(default = "default_group")]
    pub group: String,
    #[serde(default = "default_group")]
    pub consumer: String,
    /// A message here stops the host; empty to ignore.
    #[serde(default = "default_shutdown")]
    pub shutdown_channel: String,
    /// Most stream entries read (and committed) at once.
    #[serde(default = "default_batch")]
    pub batch: usize,
}

/// The field of a stream entry holding the sample.
pub const SAMPLE_FIELD: &str = "sample";
/// Longest wait before samples received by pub/sub are handed to the writer.
const PUBSUB_COMMIT_EVERY: Duration = Duration::from_millis(20);
/// Pub/sub groups handed over and not yet committed: the subscriber goes on reading
/// while they are written (Redis drops a subscriber whose output buffer fills up).
const PUBSUB_IN_FLIGHT: usize = 16;
const POLL: Duration = Duration::from_millis(200);

fn default_url() -> String {
    "redis://127.0.0.1:6379".into()
}
fn default_channel() -> String {
    "telemetry".into()
}
fn default_group() -> String {
    "telemetry-host".into()
}
fn default_shutdown() -> String {
    "shutdown".into()
}
fn default_batch() -> usize {
    1000
}

/// What the Redis readers share with the node.
#[derive(Clone)]
pub struct RedisInput {
    pub config: RedisConfig,
    pub committer: Committer,
    /// Where the stream's stored position is read.
    pub history: SharedHistory,
    /// Asks the node to stop (a message on the shutdown channel).
    pub on_shutdown: Arc<dyn Fn() + Send + Sync>,
    pub stopping: Arc<AtomicBool>,
}

impl RedisInput {
    /// Starts the pub/sub and stream readers; they reconnect after errors and end when
    /// `stopping` is set.
    pub fn spawn(self) -> Result<Vec<std::thread::JoinHandle<()>>> {
        let client = redis::Client::open(self.config.url.as_str()).context("redis.url is not a Redis URL")?;
        let mut threads = Vec::new();
        if !self.config.channel.is_empty() || !self.config.shutdown_channel.is_empty() {
            let (input, client) = (self.clone(), client.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("redis-pubsub".into())
                    .spawn(move || input.keep_running("pub/sub", || input.subscribe(&client)))?,
            );
        }
        if !self.config.stream.is_empty() {
            let input = self.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("redis-stream".into())
                    .spawn(move || input.keep_running("stream", || input.read_stream(&client)))?,
            );
        }
        Ok(threads)
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Runs a reader until the host stops, reconnecting with backoff after errors.
    fn keep_running(&self, what: &str, mut reader: impl FnMut() -> Result<()>) {
        let mut wait = Duration::from_millis(100);
        while !self.stopping() {
            match reader() {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!("redis {what}: {error:#}; reconnecting in {} ms", wait.as_millis());
                    let until = Instant::now() + wait;
                    while Instant::now() < until && !self.stopping() {
                        std::thread::sleep(POLL.min(wait));
                    }
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    fn subscribe(&self, client: &redis::Client) -> Result<()> {
        let mut connection = client.get_connection_with_timeout(Duration::from_secs(5)).context("cannot connect")?;
        let mut pubsub = connection.as_pubsub();
        for channel in [&self.config.channel, &self.config.shutdown_channel].into_iter().filter(|channel| !channel.is_empty()) {
            pubsub.subscribe(channel).with_context(|| format!("cannot subscribe to `{channel}`"))?;
        }
        pubsub.set_read_timeout(Some(PUBSUB_COMMIT_EVERY))?;
        tracing::info!(channel = %self.config.channel, shutdown = %self.config.shutdown_channel, "subscribed on Redis");
        let origin: Arc<str> = Arc::from(format!("redis channel {}", self.config.channel));
        let mut pipeline = Pipeline::new(self.committer.clone(), PUBSUB_IN_FLIGHT);
        let mut items = Vec::new();
        let mut oldest = Instant::now();
        loop {
            let message = match pubsub.get_message() {
                Ok(message) => Some(message),
                Err(error) if error.is_timeout() => None,
                Err(error) => {
                    pipeline.submit(Job { origin: origin.clone(), items, mark: None })?;
                    pipeline.finish()?;
                    return Err(error).context("connection lost");
                }
            };
            let stopping = self.stopping();
            if let Some(message) = &message {
                if message.get_channel_name() == self.config.shutdown_channel {
                    tracing::info!("message on `{}`: stopping", self.config.shutdown_channel);
                    (self.on_shutdown)();
                } else {
                    if items.is_empty() {
                        oldest = Instant::now();
                    }
                    items.push(Item { at: At::Whole, sample: super::parse_line(message.get_payload_bytes()) });
                }
            }
            let due = message.is_none() || stopping || items.len() >= MAX_JOB_SAMPLES || oldest.elapsed() >= PUBSUB_COMMIT_EVERY;
            if !items.is_empty() && due {
                pipeline.submit(Job { origin: origin.clone(), items: std::mem::take(&mut items), mark: None })?;
            }
            if stopping {
                return pipeline.finish();
            }
        }
    }

    fn read_stream(&self, client: &redis::Client) -> Result<()> {
        let config = &self.config;
        let mut connection = client.get_connection_with_timeout(Duration::from_secs(5)).context("cannot connect")?;
        // From the stream's start: samples published before the host first ran count too.
        let created: redis::RedisResult<()> =
            redis::cmd("XGROUP").arg("CREATE").arg(&config.stream).arg(&config.group).arg("0").arg("MKSTREAM").query(&mut connection);
        if let Err(error) = created
            && error.code() != Some("BUSYGROUP")
        {
            return Err(error).with_context(|| format!("cannot create consumer group `{}` on stream `{}`", config.group, config.stream));
        }
        let source = format!("redis-stream:{}:{}", config.stream, config.group);
        let origin: Arc<str> = Arc::from(format!("redis stream {}", config.stream));
        tracing::info!(stream = %config.stream, group = %config.group, consumer = %config.consumer, "reading the Redis stream");
        // First the entries delivered to this consumer but never acknowledged (a crash),
        // then new ones.
        let mut pending = true;
        while !self.stopping() {
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP").arg(&config.group).arg(&config.consumer).arg("COUNT").arg(config.batch.max(1));
            if !pending {
                read.arg("BLOCK").arg(POLL.as_millis() as u64);
            }
            read.arg("STREAMS").arg(&config.stream).arg(if pending { "0" } else { ">" });
            let reply: Option<StreamReadReply> = read.query(&mut connection).context("XREADGROUP failed")?;
            let entries: Vec<_> = reply.into_iter().flat_map(|reply| reply.keys).flat_map(|key| key.ids).collect();
            if entries.is_empty() {
                pending = false;
                continue;
            }
            let ids: Vec<&str> = entries.iter().map(|entry| entry.id.as_str()).collect();
            let stored_up_to = self.history.snapshot().mark(&source).and_then(parse_id);
            let items: Vec<Item> = entries
                .iter()
                .filter(|entry| !matches!((stored_up_to, parse_id(&entry.id)), (Some(stored), Some(id)) if id <= stored))
                .map(|entry| Item {
                    at: At::Entry(entry.id.clone()),
                    sample: match entry.map.get(SAMPLE_FIELD) {
                        Some(redis::Value::BulkString(bytes)) => super::parse_line(bytes),
                        _ => Err(("no-sample-field", format!("no `{SAMPLE_FIELD}` field holding a JSON sample"))),
                    },
                })
                .collect();
            let last = ids.last().copied().unwrap_or_default();
            let mark =
                stored_up_to.is_none_or(|stored| parse_id(last).is_some_and(|id| id > stored)).then(|| (source.clone(), last.to_string()));
            let committed = self.committer.submit(Job { origin: origin.clone(), items, mark }).wait_blocking();
            if let Some(failure) = committed.failure {
                // Not acknowledged: the entries stay pending and are read again.
                anyhow::bail!("entries {}..{} not stored: {failure}", ids[0], last);
            }
            let _: u64 =
                redis::cmd("XACK").arg(&config.stream).arg(&config.group).arg(&ids).query(&mut connection).context("XACK failed")?;
        }
        Ok(())
    }
}

/// A stream entry ID, `<ms>-<seq>`, in order.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Publishes callbacks' messages on Redis, reconnecting when the connection broke.
pub struct RedisPublisher {
    client: redis::Client,
    connection: Option<redis::Connection>,
}

impl RedisPublisher {
    pub fn new(url: &str) -> Result<RedisPublisher> {
        Ok(RedisPublisher { client: redis::Client::open(url).context("redis.url is not a Redis URL")?, connection: None })
    }
}

impl Publish for RedisPublisher {
    fn publish(&mut self, channel: &str, message: &[u8]) -> Result<()> {
        if self.connection.is_none() {
            self.connection = Some(self.client.get_connection_with_timeout(Duration::from_secs(2))?);
        }
        let connection = self.connection.as_mut().expect("connected above");
        let result: redis::RedisResult<u64> = redis::cmd("PUBLISH").arg(channel).arg(message).query(connection);
        if result.is_err() {
            self.connection = None;
        }
        result.map(drop).context("PUBLISH failed")
    }
}

#[cfg(test)]
mod tests {
    use super::parse_id;

    #[test]
    fn stream_ids_compare_by_time_then_sequence() {
        assert!(parse_id("1700000000000-10") > parse_id("1700000000000-9"));
        assert!(parse_id("1700000000001-0") > parse_id("1700000000000-99"));
        assert_eq!(parse_id("nope"), None);
    }
}
