//! Shared helpers: a tiny raw HTTP/1.1 client and vaultrs client builders.
#![allow(dead_code)]

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vault_api_server::TestVault;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Send one request with `Connection: close` and read the whole answer.
pub async fn raw(
    vault: &TestVault,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<RawResponse> {
    let mut stream = TcpStream::connect(vault.socket_addr()).await?;
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("no HTTP response: {text:?}"),
        )
    })?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(RawResponse {
        status,
        headers,
        body: body.to_string(),
    })
}

/// `raw` with the root token, panicking on I/O errors.
pub async fn root(vault: &TestVault, method: &str, path: &str, body: Option<&str>) -> RawResponse {
    let token = vault.root_token().to_string();
    raw(vault, method, path, &[("X-Vault-Token", &token)], body)
        .await
        .unwrap()
}

pub fn client(vault: &TestVault, token: &str) -> VaultClient {
    client_ns(vault, token, None)
}

pub fn client_ns(vault: &TestVault, token: &str, namespace: Option<&str>) -> VaultClient {
    VaultClient::new(
        VaultClientSettingsBuilder::default()
            .address(vault.addr())
            .token(token)
            .namespace(namespace.map(str::to_string))
            .build()
            .unwrap(),
    )
    .unwrap()
}

pub const ENVELOPE_KEYS: [&str; 9] = [
    "request_id",
    "lease_id",
    "renewable",
    "lease_duration",
    "data",
    "wrap_info",
    "warnings",
    "auth",
    "mount_type",
];

pub fn assert_envelope(v: &Value) {
    let obj = v.as_object().expect("envelope is an object");
    for k in ENVELOPE_KEYS {
        assert!(obj.contains_key(k), "envelope lacks {k}: {v}");
    }
    assert!(v["request_id"].as_str().is_some_and(|s| !s.is_empty()));
}
