//! W&B's run protocol as the official client (wandb-core) speaks it: the `UpsertBucket`
//! GraphQL mutation creates or resumes the run, `file_stream` carries history lines, the
//! summary, heartbeats and the finish marker.

use std::time::Duration;

use serde_json::{Value, json};

use telemetry_plugin::http_types::{Request, Response};
use telemetry_plugin::outgoing_http::{SendError, send};

/// wandb-core's document, byte for byte (`core/api/graphql/mutation_run.graphql`).
pub const UPSERT_BUCKET: &str = "\nmutation UpsertBucket ($id: String, $name: String, $project: String, $entity: String, $groupName: String, $description: String, $displayName: String, $notes: String, $commit: String, $config: JSONString, $host: String, $debug: Boolean, $program: String, $repo: String, $jobType: String, $state: String, $sweep: String, $tags: [String!], $summaryMetrics: JSONString) {\n\tupsertBucket(input: {id:$id,name:$name,groupName:$groupName,modelName:$project,entityName:$entity,description:$description,displayName:$displayName,notes:$notes,config:$config,commit:$commit,host:$host,debug:$debug,jobProgram:$program,jobRepo:$repo,jobType:$jobType,state:$state,sweep:$sweep,tags:$tags,summaryMetrics:$summaryMetrics}) {\n\t\tbucket {\n\t\t\tid\n\t\t\tname\n\t\t\tdisplayName\n\t\t\tdescription\n\t\t\tconfig\n\t\t\tsweepName\n\t\t\tproject {\n\t\t\t\tid\n\t\t\t\tname\n\t\t\t\tentity {\n\t\t\t\t\tid\n\t\t\t\t\tname\n\t\t\t\t}\n\t\t\t}\n\t\t\thistoryLineCount\n\t\t}\n\t\tinserted\n\t}\n}\n";

/// How a request ended, classified as the official client classifies it.
pub enum Outcome {
    Ok(Value),
    /// Worth retrying; `retry_after` if the server said when.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The official client gives up on these statuses.
    Fatal(String),
}

/// Statuses wandb-core does not retry (`clients.RetryMostFailures`); 409 is retried for
/// `UpsertBucket` only.
fn is_fatal(status: u16, upsert: bool) -> bool {
    match status {
        409 => !upsert,
        400 | 401 | 403 | 404 | 410 | 413 | 422 | 501 => true,
        _ => false,
    }
}

pub fn post_json(url: &str, body: &Value, timeout: Duration, upsert: bool) -> Outcome {
    let request = Request {
        method: "POST".into(),
        target: url.to_string(),
        query: String::new(),
        headers: vec![("content-type".into(), "application/json".into()), ("user-agent".into(), "telemetry-host-wandb/0.1".into())],
        body: body.to_string().into_bytes(),
    };
    let timeout_ms = timeout.as_millis().clamp(1, u128::from(u32::MAX)) as u32;
    match send(&request, timeout_ms) {
        Ok(response) => classify(&response, upsert),
        Err(SendError::Denied(message)) => Outcome::Fatal(message),
        Err(SendError::InvalidRequest(message)) => Outcome::Fatal(format!("invalid request: {message}")),
        Err(SendError::Connection(message)) => Outcome::Retry { reason: format!("connection failed: {message}"), retry_after: None },
        Err(SendError::Timeout) => Outcome::Retry { reason: format!("no answer within {} ms", timeout.as_millis()), retry_after: None },
    }
}

fn classify(response: &Response, upsert: bool) -> Outcome {
    let body_text = String::from_utf8_lossy(&response.body);
    let short_body: String = body_text.chars().take(300).collect();
    match response.status {
        200..=299 => Outcome::Ok(serde_json::from_slice(&response.body).unwrap_or(Value::Null)),
        status if is_fatal(status, upsert) => Outcome::Fatal(format!("HTTP {status}: {short_body}")),
        status => Outcome::Retry { reason: format!("HTTP {status}: {short_body}"), retry_after: retry_after(response) },
    }
}

/// `Retry-After` in seconds (an HTTP date is treated as "soon").
fn retry_after(response: &Response) -> Option<Duration> {
    let value = response.headers.iter().find(|(name, _)| name.eq_ignore_ascii_case("retry-after"))?.1.trim().to_string();
    match value.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => Some(Duration::from_secs_f64(seconds.min(3600.0))),
        _ => Some(Duration::from_secs(5)),
    }
}

/// The `UpsertBucket` request body: every variable, unused ones `null`, as wandb-core.
pub fn upsert_bucket_body(run_id: &str, project: &str, entity: Option<&str>, group: Option<&str>, config: &Value) -> Value {
    json!({
        "query": UPSERT_BUCKET,
        "variables": {
            "id": null, "name": run_id, "project": project, "entity": entity, "groupName": group,
            "description": null, "displayName": null, "notes": null, "commit": null,
            "config": config.to_string(), "host": null, "debug": null, "program": null, "repo": null,
            "jobType": null, "state": null, "sweep": null, "tags": null, "summaryMetrics": null,
        },
        "operationName": "UpsertBucket",
    })
}

/// What the client needs from `UpsertBucket`'s answer.
pub struct Bucket {
    pub entity: Option<String>,
    pub project: Option<String>,
    pub history_line_count: Option<u64>,
}

pub fn parse_bucket(answer: &Value) -> Result<Bucket, String> {
    // The official client does not retry a GraphQL error: the request itself is wrong.
    if let Some(errors) = answer.get("errors").filter(|errors| !errors.is_null()) {
        return Err(format!("GraphQL errors: {errors}"));
    }
    let bucket = &answer["data"]["upsertBucket"]["bucket"];
    Ok(Bucket {
        entity: bucket["project"]["entity"]["name"].as_str().map(String::from),
        project: bucket["project"]["name"].as_str().map(String::from),
        history_line_count: bucket["historyLineCount"].as_u64(),
    })
}
