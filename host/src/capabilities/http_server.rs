//! Serving HTTP for plugins: the host runs the axum servers, on the host's address for
//! plugins granted a path prefix and on addresses of their own for the others, and hands
//! each request to the plugin's `http-handler`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;

use crate::bindings::http_types::Request;
use crate::http_error::{closing, error};
use crate::plugins::{Endpoint, PluginSet};

/// Longest the host waits for a plugin's answer before answering 504 itself.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request whose plugin stopped under it waits for a next version (a swap
/// publishes it within this; a plugin removed or stopping does not).
const STOPPED_WAIT: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct Routes {
    /// The plugin of a server of its own; `None` for the host's server, where the
    /// plugins' prefixes are looked up as they are now (a reload adds and removes them).
    own: Option<String>,
    max_body_bytes: usize,
    /// Where each request finds its plugin as it is now (compiling, running, swapping, gone).
    plugins: Arc<PluginSet>,
}

/// A server that is listening; dropping it does not stop it, `shutdown` does.
pub struct BoundServer {
    pub address: SocketAddr,
    pub plugins: Vec<String>,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// How long a stopping server waits for connections to finish their requests; a client
/// holding a half-sent request cannot keep the host from exiting.
const SHUTDOWN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

impl BoundServer {
    /// Stops accepting connections and lets requests in progress finish, for at most
    /// `SHUTDOWN_DEADLINE`; connections still open then are dropped.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if tokio::time::timeout(SHUTDOWN_DEADLINE, &mut self.task).await.is_err() {
            tracing::warn!("HTTP server on {}: connections still open after {:?}, dropped", self.address, SHUTDOWN_DEADLINE);
            self.task.abort();
        }
    }
}

/// Binds the host's server on `host_listen` (its own routes, `host_routes`, and every
/// plugin granted a prefix) and one server per plugin with an address of its own, as the
/// plugins' manifests grant (a plugin still compiling is answered 503 until it runs).
/// Must run inside a tokio runtime.
pub async fn serve(
    host_listen: &str,
    plugins: &Arc<PluginSet>,
    max_body_bytes: usize,
    host_routes: Option<axum::Router>,
) -> Result<Vec<BoundServer>> {
    let mut shared = Vec::new();
    let mut servers = Vec::new();
    for (grant, plugin) in plugins.listen_grants() {
        match (grant.prefix, grant.address) {
            (Some(prefix), _) => shared.push(format!("{plugin} at {prefix}")),
            (None, Some(address)) => {
                let server = bind(&address, Some(plugin.clone()), vec![plugin.clone()], max_body_bytes, plugins, None)
                    .await
                    .with_context(|| format!("plugin `{plugin}`: cannot listen on {address}"))?;
                servers.push(server);
            }
            (None, None) => {}
        }
    }
    if !shared.is_empty() || host_routes.is_some() {
        let server = bind(host_listen, None, shared, max_body_bytes, plugins, host_routes)
            .await
            .with_context(|| format!("cannot listen on {host_listen} (http.listen)"))?;
        servers.push(server);
    }
    Ok(servers)
}

async fn bind(
    address: &str,
    own: Option<String>,
    names: Vec<String>,
    max_body_bytes: usize,
    plugins: &Arc<PluginSet>,
    host_routes: Option<axum::Router>,
) -> Result<BoundServer> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let address = listener.local_addr()?;
    let state = Routes { own, max_body_bytes, plugins: plugins.clone() };
    let app = host_routes.unwrap_or_default().merge(axum::Router::new().fallback(forward).with_state(state));
    let (shutdown, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(accept_connections(listener, app, stopped));
    Ok(BoundServer { address, plugins: names, shutdown, task })
}

/// How long a client may take to send a request's headers. Past it the connection is
/// closed: a client that opens connections and sends half a request ties up nothing.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves every connection `listener` accepts with `app` until `stopped` turns true, then
/// lets the connections finish what they are answering. Hyper reads each request's headers
/// under `HEADER_READ_TIMEOUT` (axum's own `serve` sets no timer, so it has none). The
/// connections belong to this task: aborting it drops them all.
async fn accept_connections(listener: tokio::net::TcpListener, app: axum::Router, mut stopped: tokio::sync::watch::Receiver<bool>) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, most often: wait a moment rather than spin.
                    tracing::warn!("HTTP server: cannot accept a connection: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = async { drop(stopped.wait_for(|stop| *stop).await) } => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        // The peer's address is what the admin routes check when no admin token is set.
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            tower::ServiceExt::oneshot(app.clone(), request)
        });
        let connection = graceful.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned());
        connections.spawn(async move {
            // A client that goes away or times out is no error of the host's.
            let _ = connection.await;
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn forward(State(state): State<Routes>, request: axum::extract::Request) -> Response {
    let path = request.uri().path().to_string();
    let route = match &state.own {
        Some(plugin) => Some((String::new(), plugin.clone())),
        None => state.plugins.route(&path),
    };
    let Some((prefix, plugin)) = route else {
        // Unread, the request's body would stand where the next request should.
        return closing(error(StatusCode::NOT_FOUND, "not_found", &format!("no plugin serves {path}")));
    };
    let inner_path = match &path[prefix.len()..] {
        "" => "/".to_string(),
        rest => rest.to_string(),
    };
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, state.max_body_bytes).await {
        Ok(body) => body,
        Err(_) => {
            let message = format!("request body exceeds {} bytes", state.max_body_bytes);
            return closing(error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", &message));
        }
    };
    let request = Request {
        method: parts.method.as_str().to_string(),
        target: inner_path,
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts
            .headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str().to_string(), value.to_str().ok()?.to_string())))
            .collect(),
        body: body.to_vec(),
    };
    let plugin = &plugin;
    // A swap or a stop between looking the plugin up and handing it the request sends the
    // request to whatever serves the plugin next, within the answer's deadline.
    let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
    let mut changes = state.plugins.changes();
    let response = loop {
        changes.borrow_and_update();
        let endpoint = match state.plugins.endpoint(plugin) {
            Endpoint::Ready(endpoint) => endpoint,
            Endpoint::Swapping => {
                if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                    return error(StatusCode::GATEWAY_TIMEOUT, "plugin_timeout", &format!("plugin `{plugin}` did not answer in time"));
                }
                continue;
            }
            Endpoint::Compiling => {
                let message = format!("plugin `{plugin}` is starting: its component is being compiled");
                let mut answer = error(StatusCode::SERVICE_UNAVAILABLE, "plugin_starting", &message);
                answer.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                return answer;
            }
            Endpoint::Absent => {
                return error(StatusCode::SERVICE_UNAVAILABLE, "plugin_stopped", &format!("plugin `{plugin}` is not running"));
            }
        };
        match tokio::time::timeout_at(deadline, endpoint.call(request.clone())).await {
            Ok(Some(response)) => break response,
            // Gone with its version: once the view changes the request goes to the next one.
            Ok(None) => {
                if tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + STOPPED_WAIT), changes.changed()).await.is_err() {
                    return error(StatusCode::SERVICE_UNAVAILABLE, "plugin_stopped", &format!("plugin `{plugin}` has stopped"));
                }
            }
            Err(_) => {
                let message = format!("plugin `{plugin}` did not answer in time");
                return error(StatusCode::GATEWAY_TIMEOUT, "plugin_timeout", &message);
            }
        }
    };
    plugin_response(plugin, response)
}

/// Headers of a plugin's answer that the host owns: the framing of the connection.
const HOST_OWNED_HEADERS: [&str; 8] =
    ["content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer", "proxy-connection"];
/// Largest answer the host sends for a plugin.
pub const MAX_PLUGIN_RESPONSE_BYTES: usize = 64 << 20;

/// A plugin's answer as the host sends it: the host frames it (a plugin's own
/// `content-length` or `connection` could desynchronise a keep-alive connection and make
/// the next client read a forged answer), its status must be 100-599 and not 1xx, and
/// its size is capped.
fn plugin_response(plugin: &str, response: crate::bindings::http_types::Response) -> Response {
    let bad = |message: String| error(StatusCode::BAD_GATEWAY, "bad_plugin_response", &format!("plugin `{plugin}` {message}"));
    let status = match StatusCode::from_u16(response.status) {
        Ok(status) if (200..600).contains(&status.as_u16()) => status,
        _ => return bad(format!("answered status {}, which is not a final HTTP status (200-599)", response.status)),
    };
    if response.body.len() > MAX_PLUGIN_RESPONSE_BYTES {
        return bad(format!("answered {} bytes, more than the {MAX_PLUGIN_RESPONSE_BYTES} allowed", response.body.len()));
    }
    let mut built = Response::builder().status(status);
    for (name, value) in &response.headers {
        if HOST_OWNED_HEADERS.iter().any(|owned| name.eq_ignore_ascii_case(owned)) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
            built = built.header(name, value);
        }
    }
    built.body(Body::from(response.body)).unwrap_or_else(|error| bad(format!("answered an invalid response: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_owns_the_framing_of_a_plugin_answer() {
        let answer = crate::bindings::http_types::Response {
            status: 200,
            headers: vec![
                ("Content-Length".into(), "3".into()),
                ("connection".into(), "keep-alive".into()),
                ("Transfer-Encoding".into(), "chunked".into()),
                ("x-kept".into(), "yes".into()),
            ],
            body: b"a longer body than three bytes".to_vec(),
        };
        let response = plugin_response("p", answer);
        assert_eq!(response.status(), 200);
        let headers = response.headers();
        assert!(headers.get("transfer-encoding").is_none() && headers.get("connection").is_none());
        assert_eq!(headers.get("x-kept").unwrap(), "yes");
        assert!(headers.get("content-length").is_none_or(|length| length == "30"));
        for status in [101, 99, 600] {
            let answer = crate::bindings::http_types::Response { status, headers: Vec::new(), body: Vec::new() };
            assert_eq!(plugin_response("p", answer).status(), 502, "{status}");
        }
    }
}
