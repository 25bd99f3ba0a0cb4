//! `POST /v1/samples` on the host's HTTP server: one JSON sample, a JSON array of
//! samples, or NDJSON. Every good sample of a body is stored even when others in the same
//! body are refused; the answer says how many were accepted and, with a 400, which were
//! refused and why (by line for NDJSON, by index for an array; the list is capped, with
//! the full count beside it). The answer comes after the accepted rows are committed: a
//! 2xx means they are on disk.
//!
//! The body is parsed here, outside anything shared (big bodies on a blocking thread), and
//! handed to the history's writer in pieces, so one big body never holds up the others.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::writer::{At, Committer, Item, Job, MAX_JOB_SAMPLES};
use crate::http_error::{closing, error};

/// Bodies up to this size are parsed on the async worker (microseconds); bigger ones on
/// a blocking thread.
const INLINE_PARSE_BYTES: usize = 64 * 1024;
/// Refusals listed in one answer; the rest are counted.
pub const MAX_REFUSALS_LISTED: usize = 100;

/// What the endpoint needs: the writer to hand samples to, and its limits.
#[derive(Clone)]
pub struct SampleEndpoint {
    pub committer: Committer,
    /// When set, requests need `Authorization: Bearer <token>`.
    pub token: Option<String>,
    pub max_body_bytes: usize,
}

/// The route, to merge into the host's server.
pub fn router(endpoint: SampleEndpoint) -> Router {
    let limit = endpoint.max_body_bytes;
    Router::new().route("/v1/samples", post(accept)).layer(DefaultBodyLimit::max(limit)).with_state(endpoint)
}

async fn accept(State(endpoint): State<SampleEndpoint>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    if let Some(token) = &endpoint.token {
        let given = headers.get("authorization").and_then(|value| value.to_str().ok());
        if given != Some(format!("Bearer {token}").as_str()) {
            return error(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong bearer token");
        }
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let message = format!("the body exceeds http.max_ingest_bytes ({} bytes)", endpoint.max_body_bytes);
            return closing(error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", &message));
        }
        Err(rejection) => return error(rejection.status(), "bad_body", &rejection.body_text()),
    };
    let committer = endpoint.committer.clone();
    let tally = if body.len() <= INLINE_PARSE_BYTES {
        let items = match parse_body(&body) {
            Ok(items) => items,
            Err(problem) => return error(StatusCode::BAD_REQUEST, "invalid_json", problem),
        };
        let pending: Vec<_> = jobs(items.into_iter()).map(|job| committer.submit(job)).collect();
        let mut tally = Tally::default();
        for job in pending {
            tally.add(job.wait().await);
        }
        tally
    } else {
        match tokio::task::spawn_blocking(move || store_big_body(&committer, &body)).await {
            Ok(Ok(tally)) => tally,
            Ok(Err(problem)) => return error(StatusCode::BAD_REQUEST, "invalid_json", problem),
            Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "parsing the body failed"),
        }
    };
    tally.answer()
}

/// What became of a body's samples, over all its jobs.
#[derive(Default)]
struct Tally {
    accepted: u64,
    refused: Vec<Value>,
    refused_count: usize,
    failure: Option<String>,
}

impl Tally {
    fn add(&mut self, committed: super::writer::Committed) {
        self.accepted += committed.accepted;
        self.refused_count += committed.refused.len();
        let room = MAX_REFUSALS_LISTED.saturating_sub(self.refused.len());
        self.refused.extend(committed.refused.into_iter().take(room).map(|(at, reason)| json!({ "at": place(&at), "reason": reason })));
        self.failure = self.failure.take().or(committed.failure);
    }

    fn answer(self) -> Response {
        let Tally { accepted, refused, refused_count, failure } = self;
        if let Some(failure) = failure {
            let stored = if accepted > 0 { format!(" ({accepted} samples of the body were stored before it)") } else { String::new() };
            let message = format!("the samples could not be stored{stored}: {failure}");
            return error(StatusCode::SERVICE_UNAVAILABLE, "storage_failed", &message);
        }
        let status = if refused_count == 0 { StatusCode::OK } else { StatusCode::BAD_REQUEST };
        let message =
            if refused_count == 0 { format!("{accepted} accepted") } else { format!("{accepted} accepted, {refused_count} refused") };
        let mut answer = json!({ "accepted": accepted, "refused": refused, "message": message });
        if refused_count > MAX_REFUSALS_LISTED {
            answer["refused_count"] = json!(refused_count);
        }
        (status, axum::Json(answer)).into_response()
    }
}

/// Items cut into jobs of at most `MAX_JOB_SAMPLES`.
fn jobs(items: impl Iterator<Item = Item>) -> impl Iterator<Item = Job> {
    let origin: Arc<str> = Arc::from(ORIGIN);
    let mut items = items.peekable();
    std::iter::from_fn(move || {
        items.peek()?;
        Some(Job { origin: origin.clone(), items: items.by_ref().take(MAX_JOB_SAMPLES).collect(), mark: None })
    })
}

const ORIGIN: &str = "POST /v1/samples";
/// Jobs of one big body in flight at once: its samples are parsed while earlier ones are
/// committed, and at most this many jobs of parsed samples are held.
const BIG_BODY_IN_FLIGHT: usize = 4;

/// A big body, parsed as it is stored: array elements and lines become samples a job at a
/// time, so memory holds a few jobs' samples, not the whole body's. The body is checked
/// to be valid JSON (when it is JSON) before anything of it is stored.
fn store_big_body(committer: &Committer, body: &[u8]) -> Result<Tally, &'static str> {
    let mut tally = Tally::default();
    let mut in_flight = std::collections::VecDeque::new();
    let mut batch = Vec::with_capacity(MAX_JOB_SAMPLES);
    let mut flush = |batch: &mut Vec<Item>, tally: &mut Tally, last: bool| {
        if !batch.is_empty() {
            let items = std::mem::replace(batch, Vec::with_capacity(MAX_JOB_SAMPLES));
            in_flight.extend(jobs(items.into_iter()).map(|job| committer.submit(job)));
        }
        while in_flight.len() > if last { 0 } else { BIG_BODY_IN_FLIGHT } {
            tally.add(in_flight.pop_front().expect("a job in flight").wait_blocking());
        }
    };
    let is_json = serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
    let trimmed = body.trim_ascii_start();
    if is_json && trimmed.starts_with(b"[") {
        let mut index = 0;
        let mut visit = |sample: Value| {
            batch.push(Item { at: At::Index(index), sample: Ok(sample) });
            index += 1;
            if batch.len() == MAX_JOB_SAMPLES {
                flush(&mut batch, &mut tally, false);
            }
        };
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        serde::Deserializer::deserialize_seq(&mut deserializer, Elements(&mut visit)).map_err(|_| "the body is not valid JSON")?;
    } else if is_json {
        return Ok({
            let items = parse_body(body)?;
            for job in jobs(items.into_iter()) {
                tally.add(committer.submit(job).wait_blocking());
            }
            tally
        });
    } else if trimmed.starts_with(b"[") {
        return Err("the body starts like a JSON array but is not valid JSON");
    } else {
        for (index, line) in body.split(|byte| *byte == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if !line.iter().all(u8::is_ascii_whitespace) {
                batch.push(Item { at: At::Line(index + 1), sample: super::parse_line(line) });
                if batch.len() == MAX_JOB_SAMPLES {
                    flush(&mut batch, &mut tally, false);
                }
            }
        }
    }
    flush(&mut batch, &mut tally, true);
    Ok(tally)
}

/// Hands each element of a JSON array to a closure as it is parsed.
struct Elements<'a, F>(&'a mut F);

impl<'de, F: FnMut(Value)> serde::de::Visitor<'de> for Elements<'_, F> {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON array of samples")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut elements: A) -> Result<(), A::Error> {
        while let Some(sample) = elements.next_element::<Value>()? {
            (self.0)(sample);
        }
        Ok(())
    }
}

/// A body as samples: a JSON array, one JSON value, or NDJSON (each line on its own: a
/// bad line, invalid UTF-8 included, refuses that line only).
fn parse_body(body: &[u8]) -> Result<Vec<Item>, &'static str> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(samples)) => {
            Ok(samples.into_iter().enumerate().map(|(index, sample)| Item { at: At::Index(index), sample: Ok(sample) }).collect())
        }
        Ok(sample) => Ok(vec![Item { at: At::Index(0), sample: Ok(sample) }]),
        Err(_) if body.trim_ascii_start().starts_with(b"[") => Err("the body starts like a JSON array but is not valid JSON"),
        Err(_) => Ok(body
            .split(|byte| *byte == b'\n')
            .enumerate()
            .filter_map(|(index, line)| {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                (!line.iter().all(u8::is_ascii_whitespace)).then(|| Item { at: At::Line(index + 1), sample: super::parse_line(line) })
            })
            .collect()),
    }
}

fn place(at: &At) -> Value {
    match at {
        At::Line(line) => json!({ "line": line }),
        At::Index(index) => json!({ "index": index }),
        At::Whole | At::Entry(_) => json!({}),
    }
}
