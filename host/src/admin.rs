//! The host's operator routes: `POST /v1/plugins/reload` brings the running plugins in
//! line with the plugin directory and answers what changed (the `ReloadReport` as JSON:
//! 200 when everything found applied, 422 when some plugin failed, with why).
//!
//! With `http.admin_token` set a request needs `Authorization: Bearer <token>`; without
//! one, only a client on this machine (a loopback peer) may reload.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::http_error::error;
use crate::plugins::PluginSet;

#[derive(Clone)]
pub struct AdminEndpoint {
    pub plugins: Arc<PluginSet>,
    pub token: Option<String>,
}

pub fn router(endpoint: AdminEndpoint) -> Router {
    Router::new().route("/v1/plugins/reload", post(reload)).with_state(endpoint)
}

/// Why a request may not use the admin routes, if it may not.
fn refusal(endpoint: &AdminEndpoint, peer: SocketAddr, headers: &HeaderMap) -> Option<Response> {
    match &endpoint.token {
        Some(token) => {
            let given = headers.get("authorization").and_then(|value| value.to_str().ok());
            (given != Some(format!("Bearer {token}").as_str()))
                .then(|| error(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong bearer token (http.admin_token)"))
        }
        None => (!peer.ip().is_loopback()).then(|| {
            let message = format!("{peer} is not on this machine: set http.admin_token to reload plugins from elsewhere");
            error(StatusCode::FORBIDDEN, "forbidden", &message)
        }),
    }
}

async fn reload(State(endpoint): State<AdminEndpoint>, ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refusal(&endpoint, peer, &headers) {
        return refusal;
    }
    let plugins = endpoint.plugins.clone();
    // Compiles and swaps block: off the async workers.
    match tokio::task::spawn_blocking(move || plugins.reload()).await {
        Ok(Ok(report)) => {
            let status = if report.failed.is_empty() { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
            (status, axum::Json(report)).into_response()
        }
        Ok(Err(problem)) => error(StatusCode::INTERNAL_SERVER_ERROR, "reload_failed", &format!("{problem:#}")),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "reload_failed", "the reload stopped unexpectedly"),
    }
}
