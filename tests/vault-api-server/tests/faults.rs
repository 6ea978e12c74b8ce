//! What the fault server is kept for: forced statuses, resets, latency, a listener that stops and starts again,
//! standbys that redirect, a missing `sys/internal/ui/mounts`. The callers in the main crate's tests exercise it
//! through the real client; this checks the server's side with plain HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use reqwest::redirect::Policy;
use serde_json::{json, Value};
use vault_api_server::{ServerConfig, TestCluster, TestVault};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

async fn get(addr: &str, path: &str) -> reqwest::Result<(u16, Value)> {
    let reply = client()
        .get(format!("{addr}/v1/{path}"))
        .header("X-Vault-Token", "root")
        .send()
        .await?;
    let status = reply.status().as_u16();
    Ok((status, reply.json().await.unwrap_or(Value::Null)))
}

#[tokio::test]
async fn faults_are_injected_and_lifted() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    vault.put("secret/app/k", json!({"value": "v2"}));
    vault.put("kv/app/k", json!({"value": "v1"}));
    let (status, body) = get(&vault.addr(), "secret/data/app/k").await.unwrap();
    assert_eq!(
        (status, &body["data"]["data"]["value"]),
        (200, &json!("v2"))
    );
    let (status, body) = get(&vault.addr(), "kv/app/k").await.unwrap();
    assert_eq!((status, &body["data"]["value"]), (200, &json!("v1")));

    vault.faults().set_status_override(Some(500));
    assert_eq!(
        get(&vault.addr(), "secret/data/app/k").await.unwrap().0,
        500
    );
    vault.faults().set_status_override(None);

    vault.faults().set_connection_reset(true);
    assert!(get(&vault.addr(), "secret/data/app/k").await.is_err());
    vault.faults().set_connection_reset(false);

    vault.faults().set_latency(Duration::from_secs(5));
    assert!(get(&vault.addr(), "secret/data/app/k")
        .await
        .unwrap_err()
        .is_timeout());
    vault.faults().set_latency(Duration::ZERO);

    vault.stop_listening().await;
    assert!(get(&vault.addr(), "secret/data/app/k").await.is_err());
    vault.start_listening().await.unwrap();
    assert_eq!(
        get(&vault.addr(), "secret/data/app/k").await.unwrap().0,
        200
    );
}

#[tokio::test]
async fn ui_mounts_answer_or_are_missing() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    let (status, body) = get(&vault.addr(), "sys/internal/ui/mounts/secret/app/k")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["data"]["path"], "secret/");
    assert_eq!(body["data"]["options"]["version"], "2");
    let old = TestVault::start(ServerConfig {
        ui_mounts_endpoint: false,
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    let (status, _) = get(&old.addr(), "sys/internal/ui/mounts/secret/app/k")
        .await
        .unwrap();
    assert_eq!(status, 404);
}

#[tokio::test]
async fn standbys_redirect_to_the_active_node() {
    let cluster = TestCluster::start(3, ServerConfig::default())
        .await
        .unwrap();
    cluster.node(0).put("secret/app/k", json!({"value": "ha"}));
    let addrs = cluster.addrs();
    assert_eq!(get(&addrs[0], "secret/data/app/k").await.unwrap().0, 200);
    cluster.set_active(2);
    let reply = client()
        .get(format!("{}/v1/secret/data/app/k?version=1", addrs[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 307);
    assert_eq!(
        reply.headers()["location"].to_str().unwrap(),
        format!("{}/v1/secret/data/app/k?version=1", addrs[2])
    );
    assert_eq!(get(&addrs[2], "secret/data/app/k").await.unwrap().0, 200);
    let requests = cluster.requests();
    assert!(requests.iter().any(|r| r.node == 1 && r.status == 307));
    assert!(requests.iter().any(|r| r.node == 2 && r.status == 200));
}
