//! The original node's callbacks, run at every update interval after the rows are
//! committed (on the row that completed the interval, as the original did, however
//! many rows one commit holds). `SaveBest(key, channel)` publishes an empty message on a Redis channel when
//! the last value of `key` is a new maximum, so the trainer saves a checkpoint.

use serde::{Deserialize, Serialize};

use crate::history::Snapshot;

/// One configured callback, as `[[telemetry.callbacks]]` writes it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum CallbackSpec {
    SaveBest { key: String, channel: String },
}

/// Where callbacks publish (Redis in the host, a list in tests).
pub trait Publish: Send {
    fn publish(&mut self, channel: &str, message: &[u8]) -> anyhow::Result<()>;
}

struct SaveBest {
    key: String,
    channel: String,
    best: f64,
}

pub struct Callbacks {
    save_best: Vec<SaveBest>,
    /// Channels to publish on, handed to the publishing thread: the history's writer, which
    /// runs the callbacks, never waits for Redis.
    publisher: Option<std::sync::mpsc::Sender<String>>,
}

/// Publishes an empty message on every channel it receives, in order, on a thread of its
/// own; ends when the callbacks are dropped.
fn spawn_publisher(mut publisher: Box<dyn Publish>) -> Option<std::sync::mpsc::Sender<String>> {
    let (channels, to_publish) = std::sync::mpsc::channel::<String>();
    let spawned = std::thread::Builder::new().name("callbacks".into()).spawn(move || {
        for channel in to_publish {
            if let Err(error) = publisher.publish(&channel, b"") {
                tracing::warn!(channel = %channel, "cannot publish a new best: {error:#}");
            }
        }
    });
    match spawned {
        Ok(_) => Some(channels),
        Err(error) => {
            tracing::error!("cannot start the callbacks' publisher: {error}; new bests are only logged");
            None
        }
    }
}

impl Callbacks {
    pub fn none() -> Callbacks {
        Callbacks { save_best: Vec::new(), publisher: None }
    }

    /// The configured callbacks; a resumed run's best values are the history's maxima, so
    /// a restart does not announce an old best again.
    pub fn new(specs: &[CallbackSpec], history: &Snapshot, publisher: Option<Box<dyn Publish>>) -> Callbacks {
        let save_best = specs
            .iter()
            .map(|CallbackSpec::SaveBest { key, channel }| SaveBest {
                key: key.clone(),
                channel: channel.clone(),
                best: history.maximum(key).unwrap_or(f64::NEG_INFINITY),
            })
            .collect();
        Callbacks { save_best, publisher: publisher.and_then(spawn_publisher) }
    }

    /// Runs the callbacks on the update that ended at `last_row`.
    pub fn on_update(&mut self, history: &Snapshot, last_row: u64) {
        for callback in &mut self.save_best {
            let Some(&value) = history.read_series(&callback.key, last_row, 1).ok().and_then(|values| values.first().copied()).as_ref()
            else {
                continue;
            };
            if value > callback.best {
                callback.best = value;
                tracing::info!(key = %callback.key, value, channel = %callback.channel, "new best");
                if let Some(publisher) = &self.publisher {
                    let _ = publisher.send(callback.channel.clone());
                }
            }
        }
    }
}
