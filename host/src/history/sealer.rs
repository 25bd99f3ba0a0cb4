//! Sealing off the commit path: a full tail is encoded, written and synced as a chunk
//! file on a thread of its own, so a commit never waits for a chunk's megabytes to reach
//! the disk. The writer hands over full tails as they fill (published views: the rows
//! are immutable) and takes the mapped chunks back, in order, when they are ready.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};

use anyhow::Result;

use super::chunk::{Chunk, ChunkData};
use super::tail::TailView;

pub struct Sealer {
    requests: Sender<(usize, TailView)>,
    done: Receiver<(usize, Result<Chunk>)>,
    /// Chunks handed over and not yet back, by index.
    in_flight: usize,
}

impl Sealer {
    pub fn spawn(dir: PathBuf, series: usize) -> std::io::Result<Sealer> {
        let (requests, to_seal) = channel::<(usize, TailView)>();
        let (finished, done) = channel();
        std::thread::Builder::new().name("history-sealer".into()).spawn(move || {
            for (index, tail) in to_seal {
                let chunk = encode(&tail, series).persist(&dir, &Chunk::file_name(index));
                if finished.send((index, chunk)).is_err() {
                    return;
                }
            }
        })?;
        Ok(Sealer { requests, done, in_flight: 0 })
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Hands over the full tail that becomes chunk `index`; chunks come back in order.
    pub fn submit(&mut self, index: usize, tail: TailView) {
        if self.requests.send((index, tail)).is_ok() {
            self.in_flight += 1;
        }
    }

    /// The next chunk back, if one is written (`wait`: until one is, if any is in flight).
    pub fn finished(&mut self, wait: bool) -> Option<(usize, Result<Chunk>)> {
        if self.in_flight == 0 {
            return None;
        }
        let result = if wait { self.done.recv().ok() } else { self.done.try_recv().map_err(|_: TryRecvError| ()).ok() };
        if result.is_some() {
            self.in_flight -= 1;
        }
        result
    }
}

/// A full tail as a chunk in memory.
pub fn encode(tail: &TailView, series: usize) -> Chunk {
    Chunk::encode(&ChunkData {
        first_row: tail.first_row,
        timestamps_ms: tail.timestamps(),
        columns: (0..series).map(|column| (tail.values(column), tail.levels(column).to_vec())).collect(),
    })
}
