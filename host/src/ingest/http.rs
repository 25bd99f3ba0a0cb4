//! `POST /v1/samples` on the host's HTTP server: one JSON sample, a JSON array of
//! samples, or NDJSON. Every good sample of a body is stored even when others in the same
//! body are refused; the answer says how many were accepted and, with a 400, which were
//! refused and why (by line for NDJSON, by index for an array). The answer comes after
//! the accepted rows are committed: a 2xx means they are on disk.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::{Ingest, Outcome};

/// What the endpoint needs: the shared ingest, a way to wake the plugins, and its limits.
#[derive(Clone)]
pub struct SampleEndpoint {
    pub ingest: Arc<Mutex<Ingest>>,
    pub on_update: Arc<dyn Fn() + Send + Sync>,
    /// When set, requests need `Authorization: Bearer <token>`.
    pub token: Option<String>,
    pub max_body_bytes: usize,
}

/// The route, to merge into the host's server.
pub fn router(endpoint: SampleEndpoint) -> Router {
    let limit = endpoint.max_body_bytes;
    Router::new().route("/v1/samples", post(accept)).layer(DefaultBodyLimit::max(limit)).with_state(endpoint)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(json!({ "message": message, "error": { "code": code, "message": message } }))).into_response()
}

async fn accept(State(endpoint): State<SampleEndpoint>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(token) = &endpoint.token {
        let given = headers.get("authorization").and_then(|value| value.to_str().ok());
        if given != Some(format!("Bearer {token}").as_str()) {
            return error(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong bearer token");
        }
    }
    let endpoint = endpoint.clone();
    // Parsing and storing are CPU work: keep them off the async workers.
    let result = tokio::task::spawn_blocking(move || store(&endpoint, &body)).await;
    result.unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "ingest failed"))
}

fn store(endpoint: &SampleEndpoint, body: &[u8]) -> Response {
    let text = match std::str::from_utf8(body) {
        Ok(text) => text,
        Err(problem) => {
            let message = format!("the body is not UTF-8: {problem}");
            if let Ok(mut ingest) = endpoint.ingest.lock() {
                ingest.refuse("invalid-utf8", format!("POST /v1/samples: {message}"));
            }
            return error(StatusCode::BAD_REQUEST, "invalid_utf8", &message);
        }
    };
    let mut accepted = 0u64;
    let mut refused = Vec::new();
    let mut update_due = false;
    {
        let Ok(mut ingest) = endpoint.ingest.lock() else {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "ingest is unavailable");
        };
        let mut record = |outcome: Outcome, place: Value| match outcome {
            Outcome::Accepted { .. } => accepted += 1,
            Outcome::Refused(reason) => refused.push(json!({ "at": place, "reason": reason })),
        };
        let trimmed = text.trim_start();
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(samples)) => {
                for (index, sample) in samples.iter().enumerate() {
                    record(ingest.accept(sample, &format!("sample {index}")), json!({ "index": index }));
                }
            }
            Ok(sample) => record(ingest.accept(&sample, "sample"), json!({ "index": 0 })),
            Err(_) if trimmed.starts_with('[') => {
                return error(StatusCode::BAD_REQUEST, "invalid_json", "the body starts like a JSON array but is not valid JSON");
            }
            Err(_) => {
                for (index, line) in text.split('\n').enumerate() {
                    let line = line.trim_end_matches('\r');
                    if line.trim().is_empty() {
                        continue;
                    }
                    record(ingest.accept_line(line.as_bytes(), &format!("line {}", index + 1)), json!({ "line": index + 1 }));
                }
            }
        }
        if accepted > 0 {
            match ingest.commit() {
                Ok(due) => update_due = due,
                Err(problem) => {
                    tracing::error!("{problem:#}");
                    let message = format!("the samples could not be stored: {problem:#}");
                    return error(StatusCode::SERVICE_UNAVAILABLE, "storage_failed", &message);
                }
            }
        }
    }
    if update_due {
        (endpoint.on_update)();
    }
    let status = if refused.is_empty() { StatusCode::OK } else { StatusCode::BAD_REQUEST };
    let message =
        if refused.is_empty() { format!("{accepted} accepted") } else { format!("{accepted} accepted, {} refused", refused.len()) };
    (status, axum::Json(json!({ "accepted": accepted, "refused": refused, "message": message }))).into_response()
}
