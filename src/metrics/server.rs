//! The metrics' HTTP edge: `GET /metrics` with hyper, on the `metrics_listen` listener (loopback TCP or a unix
//! socket). The listener comes from the caller, so the driver and tests take this one path.

use std::convert::Infallible;
use std::future::Future;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use crate::config::MetricsListen;

/// A bound metrics listener.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Binds `listen`. A unix socket replaces a leftover socket file and is born 0600: the counts are not secret, but
/// who may read them is the operator's choice (a scraping proxy runs as root or is given the file).
pub fn bind(listen: &MetricsListen) -> std::io::Result<Listener> {
    match listen {
        MetricsListen::Tcp(address) => {
            let listener = std::net::TcpListener::bind(address)?;
            listener.set_nonblocking(true)?;
            Ok(Listener::Tcp(TcpListener::from_std(listener)?))
        }
        MetricsListen::Unix(path) => Ok(Listener::Unix(crate::sys::private_socket::bind_private(
            path,
        )?)),
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if request.uri().path() != "/metrics" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "only /metrics is served here\n".to_owned(),
        ));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "/metrics: use GET\n".to_owned(),
        ));
    }
    Ok(match super::encode() {
        Ok(text) => reply(StatusCode::OK, super::CONTENT_TYPE, text),
        Err(_) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            TEXT,
            "the metrics could not be encoded\n".to_owned(),
        ),
    })
}

fn serve<S>(stream: S, graceful: &GracefulShutdown)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), hyper::service::service_fn(handle));
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "metrics connection ended with an error");
        }
    });
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes, then lets open requests finish (briefly).
pub async fn run(listener: Listener, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = match &listener {
            Listener::Tcp(listener) => tokio::select! {
                accepted = listener.accept() => accepted.map(|(stream, _)| serve(stream, &graceful)),
                () = &mut shutdown => break,
            },
            Listener::Unix(listener) => tokio::select! {
                accepted = listener.accept() => accepted.map(|(stream, _)| serve(stream, &graceful)),
                () = &mut shutdown => break,
            },
        };
        if let Err(error) = accepted {
            tracing::warn!(%error, "accepting a metrics connection failed");
            // Out of descriptors, say: do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(address: std::net::SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn metrics_are_served_on_get_and_nothing_else_is() {
        let listener = bind(&MetricsListen::Tcp("127.0.0.1:0".parse().unwrap())).unwrap();
        let Listener::Tcp(tcp) = &listener else {
            unreachable!()
        };
        let address = tcp.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run(listener, async {
            let _ = stopped.await;
        }));
        let answer = get(
            address,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{answer}"
        );
        assert!(answer.contains("libsecret_fs_reads_total"), "{answer}");
        let answer = get(
            address,
            "GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        let answer = get(
            address,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
        stop.send(()).unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_unix_socket_is_born_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.sock");
        std::fs::write(&path, "leftover").unwrap();
        let listener = bind(&MetricsListen::Unix(path.clone())).unwrap();
        assert!(matches!(listener, Listener::Unix(_)));
        let mode = std::fs::metadata(&path).unwrap().permissions();
        let mode = std::os::unix::fs::PermissionsExt::mode(&mode);
        assert_eq!(mode & 0o777, 0o600);
    }
}
