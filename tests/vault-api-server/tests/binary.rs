//! The `vault-api-server` binary: prints VAULT_ADDR, serves seeds, stops on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

fn get(addr: &str, path: &str, token: &str) -> String {
    let hostport = addr.strip_prefix("http://").unwrap();
    let mut s = TcpStream::connect(hostport).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nX-Vault-Token: {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn binary_prints_addr_serves_seed_and_stops_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("vas-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let seed = dir.join("seed.json");
    std::fs::write(
        &seed,
        r#"{"secret/app-1/db-password": {"value": "s3cr3t"}, "legacy/x": {"v": "1"}}"#,
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vault-api-server"))
        .args(["--listen", "127.0.0.1:0", "--root-token", "tok"])
        .args(["--mount", "secret/=kv2", "--mount", "legacy/=kv1"])
        .arg("--seed")
        .arg(&seed)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("VAULT_ADDR=")
        .expect(&line)
        .to_string();
    assert!(addr.starts_with("http://127.0.0.1:"), "{addr}");

    let r = get(&addr, "/v1/secret/data/app-1/db-password", "tok");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains(r#""value":"s3cr3t""#), "{r}");
    let r = get(&addr, "/v1/legacy/x", "tok");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = get(&addr, "/v1/secret/data/app-1/db-password", "wrong");
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn binary_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_vault-api-server"))
        .args(["--mount", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("usage: vault-api-server"), "{err}");
}

#[tokio::test]
async fn binary_serves_tls_and_cert_auth() {
    use vault_api_server::pki::TestPki;
    let dir = std::env::temp_dir().join(format!("vas-bin-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pki = TestPki::generate(&["vault.test"]);
    pki.write_to(&dir).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vault-api-server"))
        .args(["--listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(dir.join("server.pem"))
        .arg("--tls-key")
        .arg(dir.join("server-key.pem"))
        .arg("--tls-client-ca")
        .arg(dir.join("ca.pem"))
        .arg("--cert-auth")
        .arg(format!(
            "cert=docker:{}:app,web",
            dir.join("ca.pem").display()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("VAULT_ADDR=")
        .expect(&line)
        .to_string();
    assert!(addr.starts_with("https://127.0.0.1:"), "{addr}");
    let c = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.ca_cert_pem.as_bytes()).unwrap()])
        .identity(reqwest::Identity::from_pem(pki.client_identity_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = c
        .post(format!("{addr}/v1/auth/cert/login"))
        .json(&serde_json::json!({"name": "docker"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["auth"]["policies"],
        serde_json::json!(["app", "default", "web"])
    );
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn binary_tls_flags_need_each_other() {
    let out = Command::new(env!("CARGO_BIN_EXE_vault-api-server"))
        .args(["--tls-cert", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--tls-cert and --tls-key go together"),
        "{err}"
    );
}
