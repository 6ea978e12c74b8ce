//! The plugin's HTTP edge: serves [`Plugin`] over a unix socket with hyper. The listener comes from the caller, so
//! systemd socket activation, a socket bound by the driver itself, and tests all take this one path.

use std::convert::Infallible;
use std::future::Future;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::UnixListener;

use crate::plugin::{Plugin, Reply};

/// The largest request body accepted; Docker's requests are a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 1 << 20;

const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

fn respond(reply: Reply) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&reply.body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(value) = CONTENT_TYPE.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

fn error_reply(status: u16, message: String) -> Reply {
    Reply {
        status,
        body: json!({ "Err": message }),
    }
}

async fn handle(
    plugin: Plugin,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    if request.method() != Method::POST {
        return Ok(respond(error_reply(
            405,
            format!("{path}: the plugin protocol uses POST"),
        )));
    }
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            let message = if error.is::<http_body_util::LengthLimitError>() {
                format!("{path}: request body is larger than {MAX_BODY_BYTES} bytes")
            } else {
                format!("{path}: could not read the request body: {error}")
            };
            return Ok(respond(error_reply(413, message)));
        }
    };
    Ok(respond(plugin.handle(&path, &body).await))
}

/// Whether a peer may speak the plugin protocol: root (dockerd) or this process's own user. The socket file is
/// already 0600; this also holds if its mode is loosened or a descriptor is passed around.
fn peer_allowed(stream: &tokio::net::UnixStream) -> Result<(), String> {
    let credentials = stream
        .peer_cred()
        .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    let uid = credentials.uid();
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        Ok(())
    } else {
        Err(format!(
            "uid {uid} (pid {}) is not root",
            credentials
                .pid()
                .map_or_else(|| "unknown".to_owned(), |p| p.to_string())
        ))
    }
}

/// Serves plugin requests on `listener` until `shutdown` completes, then lets open requests finish.
pub async fn run(listener: UnixListener, plugin: Plugin, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let plugin = plugin.clone();
        serve_connection(accepted, &graceful, move |request| {
            handle(plugin.clone(), request)
        });
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), graceful.shutdown()).await;
}

/// How long [`refuse_queued`] waits for one more connection before it decides the queue is empty.
const QUEUE_QUIET: std::time::Duration = std::time::Duration::from_millis(500);

/// Answers every plugin call already queued on `listener` with `{"Err": reason}` (HTTP 500), then returns once
/// no new connection has come for [`QUEUE_QUIET`].
///
/// Why: a socket-activated driver that exits (an invalid config) while a call is still queued is started again by
/// systemd for that same call, after every exit, until the socket gives up with `start-limit-hit` and Docker loses
/// the plugin until someone resets it. Answering the queue first makes one bad config one failed start, and gives
/// the caller (`docker run`) a reason instead of a hang.
pub async fn refuse_queued(listener: UnixListener, reason: &str) {
    let graceful = GracefulShutdown::new();
    while let Ok(accepted) = tokio::time::timeout(QUEUE_QUIET, listener.accept()).await {
        let reason = reason.to_owned();
        serve_connection(accepted, &graceful, move |request| {
            refuse(request, reason.clone())
        });
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
}

async fn refuse(
    request: Request<Incoming>,
    reason: String,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the call before answering: closing a socket with unread data resets it, and the peer may lose the answer.
    let _ = Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await;
    Ok(respond(error_reply(500, reason)))
}

/// Checks the peer of one accepted connection and serves it with `service` on a task of its own.
fn serve_connection<S, F>(
    accepted: std::io::Result<(tokio::net::UnixStream, tokio::net::unix::SocketAddr)>,
    graceful: &GracefulShutdown,
    service: S,
) where
    S: Fn(Request<Incoming>) -> F + Send + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let stream = match accepted {
        Ok((stream, _)) => stream,
        Err(error) => {
            tracing::warn!(%error, "accepting a plugin connection failed");
            return;
        }
    };
    if let Err(reason) = peer_allowed(&stream) {
        tracing::warn!(%reason, "refused a plugin socket connection");
        return;
    }
    let connection = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), hyper::service::service_fn(service));
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "plugin connection ended with an error");
        }
    });
}

/// The listener systemd passed (socket activation), if any.
pub fn activated_listener() -> std::io::Result<Option<UnixListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    match fds.take_unix_listener(0)? {
        Some(listener) => {
            listener.set_nonblocking(true)?;
            Ok(Some(UnixListener::from_std(listener)?))
        }
        None => Ok(None),
    }
}

/// The listener: the one systemd passed (socket activation), else a socket bound at `path` with mode 0600.
pub fn listener(path: &Path) -> std::io::Result<(UnixListener, bool)> {
    if let Some(listener) = activated_listener()? {
        return Ok((listener, true));
    }
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    Ok((crate::sys::private_socket::bind_private(path)?, false))
}
