//! The history's writer: one thread owns the ingest (transforms, history, log) and
//! commits for every source at once. Sources parse their samples themselves, hand them
//! over as a `Job` and wait for the commit that covers them (HTTP on its async worker,
//! Redis and NDJSON readers on their threads); the writer takes every job waiting, stores
//! their rows, and syncs once for all of them (group commit). So one-sample requests from
//! many clients cost one sync per group, not one each, and no source holds a lock while
//! another parses or waits for the disk.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use serde_json::Value;
use tokio::sync::oneshot;

use super::{Ingest, Outcome};

/// Most samples stored in one group before it is committed.
const MAX_GROUP_SAMPLES: usize = 65_536;
/// Most samples of one job: a big body is cut into jobs, so other sources' samples are
/// committed between them.
pub const MAX_JOB_SAMPLES: usize = 4_096;

/// Where a sample was in its source, for refusals.
#[derive(Debug, Clone, PartialEq)]
pub enum At {
    Whole,
    Line(usize),
    Index(usize),
    Entry(String),
}

/// One sample as its source parsed it, or why it could not (fault kind, message).
pub struct Item {
    pub at: At,
    pub sample: Result<Value, (&'static str, String)>,
}

/// Samples of one source to store together, with the source's position to store with
/// them (e.g. the last stream entry read).
pub struct Job {
    pub origin: Arc<str>,
    pub items: Vec<Item>,
    pub mark: Option<(String, String)>,
}

/// What became of a job.
#[derive(Debug)]
pub struct Committed {
    /// Samples stored (on disk, if the history is durable).
    pub accepted: u64,
    /// Refused samples: their place and the reason.
    pub refused: Vec<(At, String)>,
    /// Why the commit failed; nothing of the job is stored then.
    pub failure: Option<String>,
}

impl Committed {
    fn failed(failure: String) -> Committed {
        Committed { accepted: 0, refused: Vec::new(), failure: Some(failure) }
    }
}

enum Message {
    Job(Job, oneshot::Sender<Committed>),
    Stop,
}

/// Hands jobs to the writer, from any thread; never blocks.
#[derive(Clone)]
pub struct Committer {
    messages: Sender<Message>,
}

/// A job handed over, to wait for.
pub struct Pending(oneshot::Receiver<Committed>);

impl Pending {
    pub async fn wait(self) -> Committed {
        self.0.await.unwrap_or_else(|_| Committed::failed(STOPPED.into()))
    }

    /// Waits on a thread that is not one of tokio's workers.
    pub fn wait_blocking(self) -> Committed {
        self.0.blocking_recv().unwrap_or_else(|_| Committed::failed(STOPPED.into()))
    }
}

const STOPPED: &str = "the host is stopping: not stored";

impl Committer {
    pub fn submit(&self, job: Job) -> Pending {
        let (reply, answer) = oneshot::channel();
        // A writer that is gone drops the reply: the wait then says so.
        let _ = self.messages.send(Message::Job(job, reply));
        Pending(answer)
    }
}

/// The writer's thread; `stop` commits what was handed over and returns the ingest.
pub struct WriterThread {
    messages: Sender<Message>,
    thread: JoinHandle<Ingest>,
}

impl WriterThread {
    /// Starts the writer; `on_update` runs after each commit that reaches an update
    /// interval (it wakes the plugins).
    pub fn spawn(ingest: Ingest, on_update: Arc<dyn Fn() + Send + Sync>) -> std::io::Result<(Committer, WriterThread)> {
        let (messages, receiver) = channel();
        let thread = std::thread::Builder::new().name("history-writer".into()).spawn(move || run(ingest, &receiver, &*on_update))?;
        Ok((Committer { messages: messages.clone() }, WriterThread { messages, thread }))
    }

    /// Commits every job handed over before this call, then ends the thread. Jobs handed
    /// over later are answered with an error.
    pub fn stop(self) -> Ingest {
        let _ = self.messages.send(Message::Stop);
        match self.thread.join() {
            Ok(ingest) => ingest,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

fn run(mut ingest: Ingest, messages: &Receiver<Message>, on_update: &(dyn Fn() + Send + Sync)) -> Ingest {
    let mut group = Vec::new();
    let mut stopping = false;
    while !stopping {
        let Ok(first) = messages.recv() else { break };
        let mut samples = 0;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Job(job, reply) => {
                    samples += job.items.len();
                    let outcome = store(&mut ingest, job);
                    group.push((outcome, reply));
                }
                Message::Stop => stopping = true,
            }
            if stopping || samples >= MAX_GROUP_SAMPLES {
                break;
            }
            next = messages.try_recv().ok();
        }
        let committed = ingest.commit();
        let failure = committed.as_ref().err().map(|error| format!("{error:#}"));
        if let Some(failure) = &failure {
            tracing::error!("commit failed, {} samples not stored (their sources are told): {failure}", samples);
        }
        for (mut outcome, reply) in group.drain(..) {
            if let Some(failure) = &failure {
                outcome.accepted = 0;
                outcome.failure = Some(failure.clone());
            }
            let _ = reply.send(outcome);
        }
        if let Ok(true) = committed {
            on_update();
        }
    }
    ingest
}

/// Stores a job's samples (not yet committed).
fn store(ingest: &mut Ingest, job: Job) -> Committed {
    let mut outcome = Committed { accepted: 0, refused: Vec::new(), failure: None };
    for item in job.items {
        let origin = describe(&job.origin, &item.at);
        let result = match item.sample {
            Ok(sample) => ingest.accept(&sample, &origin),
            Err((kind, problem)) => ingest.refuse(kind, format!("{origin}: {problem}")),
        };
        match result {
            Outcome::Accepted => outcome.accepted += 1,
            Outcome::Refused(reason) => outcome.refused.push((item.at, reason)),
        }
    }
    if let Some((source, position)) = job.mark {
        ingest.set_mark(&source, &position);
    }
    outcome
}

/// Where a sample came from, as refusals and logs say it.
pub fn describe(origin: &str, at: &At) -> String {
    match at {
        At::Whole => origin.to_string(),
        At::Line(line) => format!("{origin} line {line}"),
        At::Index(index) => format!("{origin} sample {index}"),
        At::Entry(id) => format!("{origin} entry {id}"),
    }
}

/// Jobs handed over one after another by a thread that need not wait for each: at most
/// `window` of them in flight, so parsing the next overlaps committing the last.
pub struct Pipeline {
    committer: Committer,
    in_flight: std::collections::VecDeque<Pending>,
    window: usize,
}

impl Pipeline {
    pub fn new(committer: Committer, window: usize) -> Pipeline {
        Pipeline { committer, in_flight: Default::default(), window: window.max(1) }
    }

    /// Hands `job` over; waits for the oldest job first when the window is full.
    pub fn submit(&mut self, job: Job) -> anyhow::Result<()> {
        while self.in_flight.len() >= self.window {
            self.wait_oldest()?;
        }
        self.in_flight.push_back(self.committer.submit(job));
        Ok(())
    }

    /// Waits for every job handed over.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        while !self.in_flight.is_empty() {
            self.wait_oldest()?;
        }
        Ok(())
    }

    fn wait_oldest(&mut self) -> anyhow::Result<()> {
        let Some(pending) = self.in_flight.pop_front() else { return Ok(()) };
        match pending.wait_blocking().failure {
            Some(failure) => anyhow::bail!("samples not stored: {failure}"),
            None => Ok(()),
        }
    }
}
