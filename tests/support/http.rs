//! The one hand-written HTTP/1.1 client of the tests (`Connection: close`, blocking, so it needs no runtime and works
//! inside `#[tokio::test]` as well as in `#[test]`): [`exchange`] over any stream, [`request`] over TCP for Vault-API
//! servers, and `plugin_client` over the plugin's unix socket.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value;

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0 to find a free port")
}

/// `method url` with `headers` and `body` sent as JSON. Returns the status code and the body parsed as JSON:
/// `Value::Null` for an empty body, `Value::String` for a body that is not JSON. Panics on connection or protocol
/// errors (10 s timeouts).
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, Value) {
    try_request(method, url, headers, body, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("http: {method} {url}: {e}"))
}

/// [`request`] that reports connection and protocol errors instead of panicking, with `timeout` for the connect
/// and for each read and write.
pub fn try_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
    timeout: Duration,
) -> Result<(u16, Value), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// URLs are supported, got {url}"))?;
    let (host_port, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host_port = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:80")
    };
    let addr = host_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host_port}: {e}"))?
        .next()
        .ok_or_else(|| format!("no address for {host_port}"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.set_write_timeout(Some(timeout)).unwrap();

    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let mut all_headers = vec![("Accept", "application/json")];
    if body.is_some() {
        all_headers.push(("Content-Type", "application/json"));
    }
    all_headers.extend_from_slice(headers);
    let (status, body_bytes) = exchange(
        &mut stream,
        method,
        path,
        &host_port,
        &all_headers,
        payload.as_bytes(),
    )?;
    let value = if body_bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&body_bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body_bytes).into_owned()))
    };
    Ok((status, value))
}

/// One request and its reply over `stream` (a TCP or unix socket): writes the head and `body`, reads to the end
/// (the request says `Connection: close`), and returns the status and the body, de-chunked. A body the server did
/// not read (it answered early, say 413) is no error: the reply is what counts.
pub fn exchange(
    stream: &mut (impl Read + Write),
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream
        .write_all(head.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let _ = stream.write_all(body);

    let mut raw = Vec::new();
    if let Err(error) = stream.read_to_end(&mut raw) {
        if raw.is_empty() {
            return Err(format!("read: {error}"));
        }
    }

    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("malformed response: {:?}", String::from_utf8_lossy(&raw)))?;
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut body_bytes = raw[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut content_length: Option<usize> = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            let value = value.trim();
            if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            } else if name == "content-length" {
                content_length = value.parse().ok();
            }
        }
    }
    if chunked {
        body_bytes = dechunk(&body_bytes);
    } else if let Some(n) = content_length {
        body_bytes.truncate(n);
    }
    Ok((status, body_bytes))
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_field = String::from_utf8_lossy(&data[..eol]);
        let size_hex = size_field.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            break;
        };
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            out.extend_from_slice(&data[..size.min(data.len())]);
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
    out
}
