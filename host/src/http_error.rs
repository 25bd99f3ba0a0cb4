//! The error answer of every HTTP route the host serves, its own and its plugins':
//! `{"message", "error": {"code", "message"}}` (a Grafana panel shows `message`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(json!({ "message": message, "error": { "code": code, "message": message } }))).into_response()
}

/// `response` marked `Connection: close`, for an answer sent before the request's body was
/// read whole: the rest of that body stands where the next request would, so the server
/// closes the connection after this answer and says so, and a client never sends the
/// next request into a connection that is going away.
pub fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
