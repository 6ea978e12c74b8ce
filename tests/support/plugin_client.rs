//! The plugin socket's client, speaking exactly what Docker sends, over the one HTTP client ([`super::http`]).

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::http::exchange;

/// POSTs `body` to `endpoint` (such as `/VolumeDriver.Mount`); returns the status and the JSON reply.
pub fn call_raw(socket: &Path, endpoint: &str, body: &[u8]) -> (u16, serde_json::Value) {
    request(socket, "POST", endpoint, body, Duration::from_secs(60))
}

/// One HTTP request over the socket, each read and write bounded by `timeout`; returns the status and the JSON
/// reply (a reply that is not JSON fails the test: the plugin always answers JSON).
pub fn request(
    socket: &Path,
    method: &str,
    endpoint: &str,
    body: &[u8],
    timeout: Duration,
) -> (u16, serde_json::Value) {
    let mut stream = UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connecting to the plugin socket {}: {e}", socket.display()));
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.set_write_timeout(Some(timeout)).unwrap();
    let headers = [
        ("Accept", "application/vnd.docker.plugins.v1.2+json"),
        ("Content-Type", "application/json"),
    ];
    let (status, reply) = exchange(
        &mut stream,
        method,
        endpoint,
        "plugin.moby.localhost",
        &headers,
        body,
    )
    .unwrap_or_else(|e| panic!("{method} {endpoint}: {e}"));
    let value = serde_json::from_slice(&reply).unwrap_or_else(|e| {
        panic!(
            "reply to {endpoint} is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&reply)
        )
    });
    (status, value)
}

pub fn call(socket: &Path, endpoint: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    call_raw(socket, endpoint, body.to_string().as_bytes())
}

/// The reply's `Err` field, empty on success.
pub fn err_of(reply: &serde_json::Value) -> &str {
    reply
        .get("Err")
        .and_then(|e| e.as_str())
        .unwrap_or_default()
}

/// Create (with `options`) and Mount as mount ID `id`, as Docker does for `docker run -v`: the mountpoint, or the
/// `Err` of whichever call failed.
pub fn create_and_mount(
    socket: &Path,
    volume: &str,
    options: serde_json::Value,
    id: &str,
) -> Result<std::path::PathBuf, String> {
    let (_, reply) = call(
        socket,
        "/VolumeDriver.Create",
        serde_json::json!({"Name": volume, "Opts": options}),
    );
    if !err_of(&reply).is_empty() {
        return Err(err_of(&reply).to_owned());
    }
    let (_, reply) = call(
        socket,
        "/VolumeDriver.Mount",
        serde_json::json!({"Name": volume, "ID": id}),
    );
    match err_of(&reply) {
        "" => Ok(std::path::PathBuf::from(
            reply["Mountpoint"].as_str().unwrap_or_default(),
        )),
        error => Err(error.to_owned()),
    }
}
