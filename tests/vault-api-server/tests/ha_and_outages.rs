//! Stopping/restarting a node's listener and HA clusters (standby 307s),
//! driven by reqwest (no redirects followed) and vaultrs (follows them).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vault_api_server::pki::TestPki;
use vault_api_server::{ServerConfig, TestCluster, TestVault};
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use vaultrs::kv2;

type Map = HashMap<String, String>;

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

struct Answer {
    status: u16,
    location: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

async fn get(c: &reqwest::Client, url: &str, token: Option<&str>) -> reqwest::Result<Answer> {
    let mut rb = c.get(url);
    if let Some(t) = token {
        rb = rb.header("X-Vault-Token", t);
    }
    let r = rb.send().await?;
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = r.text().await?;
    Ok(Answer {
        status,
        location,
        body,
    })
}

fn client(addr: &str, token: &str) -> VaultClient {
    VaultClient::new(
        VaultClientSettingsBuilder::default()
            .address(addr)
            .token(token)
            .build()
            .unwrap(),
    )
    .unwrap()
}

fn is_connection_error(e: &ClientError) -> bool {
    // vaultrs wraps reqwest's error as a rustify RestClientError.
    matches!(
        e,
        ClientError::RestClientError {
            source: rustify::errors::ClientError::RequestError { .. }
        }
    )
}

#[tokio::test]
async fn stop_listening_refuses_and_closes_then_start_listening_serves_same_state() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    let addr = vault.addr();
    vault.put("secret/app/db", json!({"v": "1"}));
    let token = vault.create_token(&["root"], None, true);
    assert!(vault.is_listening());

    // an idle keep-alive connection
    let mut idle = TcpStream::connect(vault.socket_addr()).await.unwrap();
    idle.write_all(b"GET /v1/sys/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // an in-flight request
    vault.faults().set_latency(Duration::from_secs(5));
    let inflight = tokio::spawn({
        let url = format!("{addr}/v1/sys/health");
        async move { reqwest::get(url).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    vault.stop_listening().await;
    assert!(!vault.is_listening());
    vault.stop_listening().await; // no-op
    let err = TcpStream::connect(vault.socket_addr()).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // the idle connection was closed (EOF or reset)
    let r = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    // the in-flight request got no answer
    assert!(inflight.await.unwrap().is_err());
    let err = kv2::read::<Map>(&client(&addr, &token), "secret", "app/db")
        .await
        .unwrap_err();
    assert!(is_connection_error(&err), "{err:?}");

    vault.faults().set_latency(Duration::ZERO);
    vault.start_listening().await.unwrap();
    vault.start_listening().await.unwrap(); // no-op
    assert!(vault.is_listening());
    let got: Map = kv2::read(&client(&addr, &token), "secret", "app/db")
        .await
        .unwrap();
    assert_eq!(got["v"], "1");
    // stop/start again, then shut down
    vault.stop_listening().await;
    vault.start_listening().await.unwrap();
    assert_eq!(
        get(&no_redirects(), &format!("{addr}/v1/sys/health"), None)
            .await
            .unwrap()
            .status,
        200
    );
    vault.shutdown().await;
}

#[tokio::test]
async fn lone_server_leader_and_record_node() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    let a = get(
        &no_redirects(),
        &format!("{}/v1/sys/leader", vault.addr()),
        None,
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    let v = a.json();
    assert_eq!(v["ha_enabled"], false);
    assert_eq!(v["leader_address"], "");
    assert_eq!(vault.index(), 0);
    assert!(vault.requests().iter().all(|r| r.node == 0));
    vault.shutdown().await;
}

#[tokio::test]
async fn standbys_redirect_to_the_active_node() {
    let cluster = TestCluster::start(3, ServerConfig::default())
        .await
        .unwrap();
    let addrs = cluster.addrs();
    assert_eq!(addrs.len(), 3);
    assert!(addrs[0] != addrs[1] && addrs[1] != addrs[2]);
    assert_eq!(cluster.active(), Some(0));
    assert_eq!(cluster.nodes().len(), 3);
    let root = cluster.node(0).root_token().to_string();
    cluster.node(1).put("secret/app/db", json!({"v": "1"}));
    let c = no_redirects();

    // a standby: 307 to the active node, same path and query, no body
    let a = get(
        &c,
        &format!("{}/v1/secret/data/app/db?version=1", addrs[1]),
        Some(&root),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 307);
    assert_eq!(
        a.location.as_deref(),
        Some(format!("{}/v1/secret/data/app/db?version=1", addrs[0]).as_str())
    );
    assert!(a.body.is_empty());
    // also without a token (the redirect comes first)
    let a = get(&c, &format!("{}/v1/auth/token/lookup-self", addrs[2]), None)
        .await
        .unwrap();
    assert_eq!(a.status, 307);

    // health: 429 standby, 200 with standbyok, 200 on the active node
    let a = get(&c, &format!("{}/v1/sys/health", addrs[1]), None)
        .await
        .unwrap();
    assert_eq!(a.status, 429);
    assert_eq!(a.json()["standby"], true);
    let a = get(
        &c,
        &format!("{}/v1/sys/health?standbyok=true", addrs[1]),
        None,
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    let a = get(&c, &format!("{}/v1/sys/health", addrs[0]), None)
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["standby"], false);
    let a = get(&c, &format!("{}/v1/sys/seal-status", addrs[2]), None)
        .await
        .unwrap();
    assert_eq!(a.status, 200);

    // leader
    for (i, addr) in addrs.iter().enumerate() {
        let v = get(&c, &format!("{addr}/v1/sys/leader"), None)
            .await
            .unwrap()
            .json();
        assert_eq!(v["ha_enabled"], true);
        assert_eq!(v["is_self"], i == 0);
        assert_eq!(v["leader_address"], addrs[0].as_str());
        assert!(v["leader_cluster_address"]
            .as_str()
            .unwrap()
            .starts_with("https://127.0.0.1:"));
        assert_eq!(v["performance_standby"], false);
    }

    // vaultrs follows the 307 (GET and POST with body)
    cluster.node(0).reset_requests();
    let via2 = client(&addrs[2], &root);
    let got: Map = kv2::read(&via2, "secret", "app/db").await.unwrap();
    assert_eq!(got["v"], "1");
    kv2::set(&via2, "secret", "app/db", &HashMap::from([("v", "2")]))
        .await
        .unwrap();
    let got: Map = kv2::read(&client(&addrs[0], &root), "secret", "app/db")
        .await
        .unwrap();
    assert_eq!(got["v"], "2");
    let seen: Vec<(String, u16, usize)> = cluster
        .requests()
        .iter()
        .map(|r| (r.method.clone(), r.status, r.node))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("GET".to_string(), 307, 2),
            ("GET".to_string(), 200, 0),
            ("POST".to_string(), 307, 2),
            ("POST".to_string(), 200, 0),
            ("GET".to_string(), 200, 0),
        ]
    );
    assert_eq!(cluster.node(1).requests().len(), 5, "the log is shared");

    // failover by hand
    cluster.set_active(1);
    assert_eq!(cluster.active(), Some(1));
    let a = get(
        &c,
        &format!("{}/v1/secret/data/app/db", addrs[0]),
        Some(&root),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 307);
    assert_eq!(
        a.location.as_deref(),
        Some(format!("{}/v1/secret/data/app/db", addrs[1]).as_str())
    );

    // the active node goes down: nobody is active, standbys still point to it
    cluster.node(1).stop_listening().await;
    assert_eq!(cluster.active(), None);
    assert_eq!(cluster.leader(), 1);
    let a = get(
        &c,
        &format!("{}/v1/secret/data/app/db", addrs[0]),
        Some(&root),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 307);
    assert!(a.location.unwrap().starts_with(&addrs[1]));
    let err = kv2::read::<Map>(&client(&addrs[0], &root), "secret", "app/db")
        .await
        .unwrap_err();
    assert!(is_connection_error(&err), "{err:?}");

    cluster.set_active(2);
    assert_eq!(cluster.active(), Some(2));
    let got: Map = kv2::read(&client(&addrs[0], &root), "secret", "app/db")
        .await
        .unwrap();
    assert_eq!(got["v"], "2");
    // the old active comes back as a standby
    cluster.node(1).start_listening().await.unwrap();
    let a = get(&c, &format!("{}/v1/sys/health", addrs[1]), None)
        .await
        .unwrap();
    assert_eq!(a.status, 429);
    cluster.shutdown().await;
}

#[tokio::test]
async fn per_node_faults_and_sealed_standby() {
    let cluster = TestCluster::start(2, ServerConfig::default())
        .await
        .unwrap();
    let addrs = cluster.addrs();
    let root = cluster.node(0).root_token().to_string();
    let c = no_redirects();
    cluster.node(1).faults().set_sealed(true);
    let a = get(&c, &format!("{}/v1/secret/data/x", addrs[1]), Some(&root))
        .await
        .unwrap();
    assert_eq!(a.status, 503);
    let a = get(&c, &format!("{}/v1/sys/health", addrs[1]), None)
        .await
        .unwrap();
    assert_eq!(a.status, 503);
    let a = get(&c, &format!("{}/v1/sys/health", addrs[0]), None)
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    assert!(TestCluster::start(0, ServerConfig::default())
        .await
        .is_err());
    cluster.shutdown().await;
}

#[tokio::test]
async fn tls_cluster_redirects_to_https() {
    let pki = TestPki::generate(&["vault.test"]);
    let dir = std::env::temp_dir().join(format!("vas-ha-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    pki.write_to(&dir).unwrap();
    let cluster = TestCluster::start(
        2,
        ServerConfig {
            tls: Some(pki.tls_settings(false)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let addrs = cluster.addrs();
    assert!(addrs.iter().all(|a| a.starts_with("https://127.0.0.1:")));
    cluster.node(0).put("secret/a", json!({"k": "v"}));
    let c = VaultClient::new(
        VaultClientSettingsBuilder::default()
            .address(&addrs[1])
            .token(cluster.node(0).root_token())
            .ca_certs(vec![dir.join("ca.pem").to_string_lossy().into_owned()])
            .build()
            .unwrap(),
    )
    .unwrap();
    let got: Map = kv2::read(&c, "secret", "a").await.unwrap();
    assert_eq!(got["k"], "v");
    let statuses: Vec<(u16, usize)> = cluster
        .requests()
        .iter()
        .map(|r| (r.status, r.node))
        .collect();
    assert_eq!(statuses, vec![(307, 1), (200, 0)]);
    cluster.shutdown().await;
    std::fs::remove_dir_all(&dir).ok();
}
