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
    publisher: Option<Box<dyn Publish>>,
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
        Callbacks { save_best, publisher }
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
                if let Some(publisher) = &mut self.publisher
                    && let Err(error) = publisher.publish(&callback.channel, b"")
                {
                    tracing::warn!(channel = %callback.channel, "cannot publish the new best of `{}`: {error:#}", callback.key);
                }
            }
        }
    }
}
