//! A W&B stand-in: an axum server on loopback that answers `UpsertBucket` and
//! `file_stream` as W&B does, keeps each run's history lines by offset (a resent offset
//! overwrites, as W&B's backend does), records every request, and injects faults.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// A fault the stand-in answers the next request with.
#[derive(Debug, Clone)]
pub enum Fault {
    Status(u16),
    /// 429 with `Retry-After: seconds`.
    RateLimited(u64),
    /// 200 with a GraphQL `errors` list and no data.
    GraphqlError(&'static str),
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
    pub status: u16,
}

/// What W&B would hold for one run.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub project: String,
    pub entity: String,
    pub group: Option<String>,
    pub config: Value,
    pub history: BTreeMap<u64, String>,
    pub summary: Option<String>,
    pub complete: bool,
    pub exitcode: Option<i64>,
}

#[derive(Default)]
pub struct Backend {
    pub requests: Vec<Recorded>,
    pub runs: BTreeMap<String, Run>,
    pub faults: VecDeque<Fault>,
}

pub struct StandIn {
    pub address: SocketAddr,
    pub backend: Arc<Mutex<Backend>>,
    runtime: tokio::runtime::Runtime,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl StandIn {
    pub fn start() -> StandIn {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let backend = Arc::new(Mutex::new(Backend::default()));
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let address = listener.local_addr().unwrap();
        let server = runtime.spawn(serve(listener, backend.clone()));
        StandIn { address, backend, runtime, server: Mutex::new(Some(server)) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.backend.lock().unwrap().faults.extend(faults);
    }

    /// Closes the port for `duration` (connections are refused), then listens again.
    pub fn refuse_connections_for(&self, duration: Duration) {
        if let Some(server) = self.server.lock().unwrap().take() {
            server.abort();
            let _ = self.runtime.block_on(server);
        }
        std::thread::sleep(duration);
        let listener = self.runtime.block_on(tokio::net::TcpListener::bind(self.address)).unwrap();
        *self.server.lock().unwrap() = Some(self.runtime.spawn(serve(listener, self.backend.clone())));
    }

    pub fn only_run(&self) -> (String, Run) {
        let backend = self.backend.lock().unwrap();
        assert_eq!(backend.runs.len(), 1, "runs: {:?}", backend.runs.keys());
        let (id, run) = backend.runs.iter().next().unwrap();
        (id.clone(), run.clone())
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.backend.lock().unwrap().requests.clone()
    }
}

async fn serve(listener: tokio::net::TcpListener, backend: Arc<Mutex<Backend>>) {
    let app = Router::new()
        .route("/graphql", post(graphql))
        .route("/files/{entity}/{project}/{run}/file_stream", post(file_stream))
        .with_state(backend);
    let _ = axum::serve(listener, app).await;
}

fn record(backend: &mut Backend, path: String, headers: &HeaderMap, body: &Value) -> Option<Response> {
    let fault = backend.faults.pop_front();
    let (status, response) = match &fault {
        None => (200, None),
        Some(Fault::Status(status)) => {
            (*status, Some((StatusCode::from_u16(*status).unwrap(), "{\"error\":\"injected\"}").into_response()))
        }
        Some(Fault::RateLimited(seconds)) => {
            let mut response = (StatusCode::TOO_MANY_REQUESTS, "{\"error\":\"rate limited\"}").into_response();
            response.headers_mut().insert("retry-after", seconds.to_string().parse().unwrap());
            (429, Some(response))
        }
        Some(Fault::GraphqlError(message)) => {
            (200, Some(axum::Json(json!({ "errors": [{ "message": message }], "data": null })).into_response()))
        }
    };
    backend.requests.push(Recorded { at: Instant::now(), path, headers: headers.clone(), body: body.clone(), status });
    response
}

async fn graphql(State(backend): State<Arc<Mutex<Backend>>>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut backend = backend.lock().unwrap();
    if let Some(response) = record(&mut backend, "/graphql".into(), &headers, &body) {
        return response;
    }
    let variables = &body["variables"];
    let name = variables["name"].as_str().unwrap_or_default().to_string();
    let entity = variables["entity"].as_str().unwrap_or("default-entity").to_string();
    let project = variables["project"].as_str().unwrap_or_default().to_string();
    let run = backend.runs.entry(name.clone()).or_default();
    run.project = project.clone();
    run.entity = entity.clone();
    if let Some(group) = variables["groupName"].as_str() {
        run.group = Some(group.into());
    }
    if let Some(config) = variables["config"].as_str() {
        run.config = serde_json::from_str(config).unwrap_or(Value::Null);
    }
    let lines = run.history.len();
    axum::Json(json!({ "data": { "upsertBucket": { "bucket": {
        "id": "UnVuOnYxOng=", "name": name, "displayName": name, "description": null, "config": variables["config"], "sweepName": null,
        "historyLineCount": lines, "project": { "id": "UHJvamVjdA==", "name": project, "entity": { "id": "RW50aXR5", "name": entity } } },
        "inserted": true } } }))
    .into_response()
}

async fn file_stream(
    State(backend): State<Arc<Mutex<Backend>>>,
    Path((entity, project, run_id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut backend = backend.lock().unwrap();
    let path = format!("/files/{entity}/{project}/{run_id}/file_stream");
    if let Some(response) = record(&mut backend, path, &headers, &body) {
        return response;
    }
    let Some(run) = backend.runs.get_mut(&run_id) else {
        return (StatusCode::NOT_FOUND, "{\"error\":\"no such run\"}").into_response();
    };
    if let Some(history) = body["files"]["wandb-history.jsonl"].as_object() {
        let offset = history["offset"].as_u64().unwrap();
        for (index, line) in history["content"].as_array().unwrap().iter().enumerate() {
            run.history.insert(offset + index as u64, line.as_str().unwrap().to_string());
        }
    }
    if let Some(summary) = body["files"]["wandb-summary.json"]["content"].as_array() {
        run.summary = summary.last().and_then(Value::as_str).map(String::from);
    }
    if body["complete"].as_bool() == Some(true) {
        run.complete = true;
        run.exitcode = body["exitcode"].as_i64();
    }
    axum::Json(json!({ "exitcode": null, "limits": {} })).into_response()
}
