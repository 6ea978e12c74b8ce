//! Protocol details checked over plain HTTP/1.1.

mod common;

use std::time::{Duration, Instant};

use common::{assert_envelope, raw, root};
use serde_json::json;
use vault_api_server::{KvVersion, ServerConfig, TestVault};

async fn start() -> TestVault {
    TestVault::start(ServerConfig::default()).await.unwrap()
}

#[tokio::test]
async fn ui_mounts_reports_kv_version() {
    let vault = start().await;
    let r = root(
        &vault,
        "GET",
        "/v1/sys/internal/ui/mounts/secret/app-1/db",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_envelope(&v);
    assert_eq!(v["data"]["options"]["version"], "2");
    assert_eq!(v["data"]["path"], "secret/");
    assert_eq!(v["data"]["type"], "kv");

    let v = root(&vault, "GET", "/v1/sys/internal/ui/mounts/kv/app", None)
        .await
        .json();
    assert_eq!(v["data"]["options"]["version"], "1");
    assert_eq!(v["data"]["path"], "kv/");

    // no path: lists mounts, no token needed
    let r = raw(&vault, "GET", "/v1/sys/internal/ui/mounts", &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["data"]["secret"]["secret/"]["options"]["version"],
        "2"
    );
    vault.shutdown().await;
}

#[tokio::test]
async fn ui_mounts_preflight_403_and_old_server_404() {
    let vault = start().await;
    vault.set_policy("app", &[("secret/data/app-1/*", &["read"])]);
    let t = vault.create_token(&["app"], None, true);
    let h = [("X-Vault-Token", t.as_str())];
    let ok = raw(
        &vault,
        "GET",
        "/v1/sys/internal/ui/mounts/secret/app-1/db",
        &h,
        None,
    )
    .await
    .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.body);
    let denied = raw(&vault, "GET", "/v1/sys/internal/ui/mounts/kv/abc", &h, None)
        .await
        .unwrap();
    assert_eq!(denied.status, 403);
    assert_eq!(
        denied.json()["errors"][0],
        "preflight capability check returned 403, please ensure client's policies grant access to path \"kv/abc/\""
    );
    let nomount = root(&vault, "GET", "/v1/sys/internal/ui/mounts/nomount/x", None).await;
    assert_eq!(nomount.status, 403);
    let notoken = raw(
        &vault,
        "GET",
        "/v1/sys/internal/ui/mounts/secret/x",
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(notoken.status, 403);
    vault.shutdown().await;

    let old = TestVault::start(ServerConfig {
        ui_mounts_endpoint: false,
        ..Default::default()
    })
    .await
    .unwrap();
    for path in [
        "/v1/sys/internal/ui/mounts/secret/x",
        "/v1/sys/internal/ui/mounts",
    ] {
        let r = root(&old, "GET", path, None).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json(), json!({"errors": []}));
    }
    old.shutdown().await;
}

#[tokio::test]
async fn kv1_envelope_list_via_get_and_204() {
    let vault = start().await;
    let w = root(
        &vault,
        "POST",
        "/v1/kv/app/db",
        Some(r#"{"password":"p","ttl":"1h"}"#),
    )
    .await;
    assert_eq!(w.status, 204);
    assert!(w.body.is_empty());
    root(&vault, "PUT", "/v1/kv/app/z/leaf", Some(r#"{"a":"b"}"#)).await;
    let empty = root(&vault, "POST", "/v1/kv/app/empty", Some("{}")).await;
    assert_eq!(empty.status, 400);
    assert_eq!(empty.json()["errors"][0], "missing data fields");

    let r = root(&vault, "GET", "/v1/kv/app/db", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_envelope(&v);
    assert_eq!(v.as_object().unwrap().len(), 9);
    assert_eq!(v["data"], json!({"password": "p", "ttl": "1h"}));
    assert_eq!(v["lease_duration"], 3600);
    assert_eq!(v["mount_type"], "kv");
    assert!(v["auth"].is_null());

    for (method, path) in [("GET", "/v1/kv/app?list=true"), ("LIST", "/v1/kv/app/")] {
        let l = root(&vault, method, path, None).await;
        assert_eq!(l.status, 200, "{method} {path}");
        assert_eq!(l.json()["data"]["keys"], json!(["db", "z/"]));
    }
    let none = root(&vault, "GET", "/v1/kv/nothing/?list=true", None).await;
    assert_eq!(none.status, 404);
    assert_eq!(none.json(), json!({"errors": []}));
    let bad = root(&vault, "GET", "/v1/kv/app?list=maybe", None).await;
    assert_eq!(bad.status, 400);

    // KV v2 metadata listing through GET ?list=true
    vault.put("secret/a/b", json!({"x": "y"}));
    vault.put("secret/a/c/d", json!({"x": "y"}));
    let l = root(&vault, "GET", "/v1/secret/metadata/a?list=true", None).await;
    assert_eq!(l.json()["data"]["keys"], json!(["b", "c/"]));

    let d = root(&vault, "DELETE", "/v1/kv/app/db", None).await;
    assert_eq!(d.status, 204);
    assert_eq!(root(&vault, "GET", "/v1/kv/app/db", None).await.status, 404);
    vault.shutdown().await;
}

#[tokio::test]
async fn kv2_raw_shapes() {
    let vault = start().await;
    let w = root(
        &vault,
        "POST",
        "/v1/secret/data/app%201/db",
        Some(r#"{"data":{"k":"v"}}"#),
    )
    .await;
    assert_eq!(w.status, 200, "{}", w.body);
    let vm = w.json();
    assert_envelope(&vm);
    assert_eq!(vm["data"]["version"], 1);
    assert_eq!(vm["data"]["deletion_time"], "");
    let created = vm["data"]["created_time"].as_str().unwrap().to_string();
    assert!(created.ends_with('Z') && created.contains('T'), "{created}");

    let r = root(&vault, "GET", "/v1/secret/data/app%201/db?version=1", None).await;
    assert_eq!(r.json()["data"]["data"], json!({"k": "v"}));
    let nodata = root(&vault, "POST", "/v1/secret/data/x", Some(r#"{"k":"v"}"#)).await;
    assert_eq!(nodata.status, 400);
    assert_eq!(nodata.json()["errors"][0], "no data provided");

    // v1-style path on a v2 mount
    let v1style = root(&vault, "GET", "/v1/secret/app%201/db", None).await;
    assert_eq!(v1style.status, 404);
    let v = v1style.json();
    assert!(v.get("errors").is_none());
    assert!(v["data"].is_null());
    assert!(v["warnings"][0]
        .as_str()
        .unwrap()
        .contains("Invalid path for a versioned K/V secrets engine"));

    // soft-deleted: envelope 404 with data.data null
    assert_eq!(
        root(&vault, "DELETE", "/v1/secret/data/app%201/db", None)
            .await
            .status,
        204
    );
    let gone = root(&vault, "GET", "/v1/secret/data/app%201/db", None).await;
    assert_eq!(gone.status, 404);
    let g = gone.json();
    assert_envelope(&g);
    assert!(g["data"]["data"].is_null());
    assert_ne!(g["data"]["metadata"]["deletion_time"], "");

    let nov = root(
        &vault,
        "POST",
        "/v1/secret/destroy/app%201/db",
        Some(r#"{"versions":[]}"#),
    )
    .await;
    assert_eq!(nov.status, 400);
    vault.shutdown().await;
}

#[tokio::test]
async fn wrong_verb_is_405_and_unknown_is_404() {
    let vault = start().await;
    for (method, path) in [
        ("POST", "/v1/auth/token/lookup-self"),
        ("LIST", "/v1/secret/data/x"),
        ("PATCH", "/v1/kv/x"),
        ("POST", "/v1/kv/x?list=true"),
        ("DELETE", "/v1/sys/seal-status"),
    ] {
        let r = root(&vault, method, path, Some("")).await;
        assert_eq!(r.status, 405, "{method} {path}: {}", r.body);
        assert!(r.json()["errors"].as_array().is_some_and(|e| !e.is_empty()));
    }
    let r = root(&vault, "GET", "/v1/nomount/x", None).await;
    assert_eq!(r.status, 404);
    assert!(r.json()["errors"].is_array());
    let r = root(&vault, "GET", "/not-v1", None).await;
    assert_eq!(r.status, 404);
    vault.shutdown().await;
}

#[tokio::test]
async fn sealed_fault() {
    let vault = start().await;
    vault.put("kv/a", json!({"x": "y"}));
    vault.faults().set_sealed(true);
    let r = root(&vault, "GET", "/v1/kv/a", None).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json(), json!({"errors": ["Vault is sealed"]}));
    let h = raw(&vault, "GET", "/v1/sys/health", &[], None)
        .await
        .unwrap();
    assert_eq!(h.status, 503);
    assert_eq!(h.json()["sealed"], true);
    assert!(h.json().get("cluster_id").is_none());
    let h = raw(&vault, "GET", "/v1/sys/health?sealedcode=200", &[], None)
        .await
        .unwrap();
    assert_eq!(h.status, 200);
    let s = raw(&vault, "GET", "/v1/sys/seal-status", &[], None)
        .await
        .unwrap();
    assert_eq!(s.status, 200);
    assert_eq!(s.json()["sealed"], true);

    vault.faults().set_sealed(false);
    assert_eq!(root(&vault, "GET", "/v1/kv/a", None).await.status, 200);
    let h = raw(&vault, "GET", "/v1/sys/health", &[], None)
        .await
        .unwrap();
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["version"], "1.17.2");
    let bad = raw(&vault, "GET", "/v1/sys/health?activecode=abc", &[], None)
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
    let head = raw(&vault, "HEAD", "/v1/sys/health?activecode=299", &[], None)
        .await
        .unwrap();
    assert_eq!(head.status, 299);
    assert!(head.body.is_empty());
    vault.shutdown().await;
}

#[tokio::test]
async fn latency_status_override_and_reset_faults() {
    let vault = start().await;
    vault.put("kv/a", json!({"x": "y"}));
    vault.faults().set_latency(Duration::from_millis(400));
    let t0 = Instant::now();
    assert_eq!(root(&vault, "GET", "/v1/kv/a", None).await.status, 200);
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t0.elapsed()
    );
    vault.faults().set_latency(Duration::ZERO);
    let t0 = Instant::now();
    root(&vault, "GET", "/v1/kv/a", None).await;
    assert!(t0.elapsed() < Duration::from_millis(300));

    vault.faults().set_status_override(Some(502));
    let r = root(&vault, "GET", "/v1/kv/a", None).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json(), json!({"errors": ["injected fault"]}));
    vault.faults().set_status_override(None);

    vault.faults().set_connection_reset(true);
    let token = vault.root_token().to_string();
    assert!(raw(
        &vault,
        "GET",
        "/v1/kv/a",
        &[("X-Vault-Token", &token)],
        None
    )
    .await
    .is_err());
    vault.faults().set_connection_reset(false);
    assert_eq!(root(&vault, "GET", "/v1/kv/a", None).await.status, 200);
    vault.shutdown().await;
}

#[tokio::test]
async fn policies_over_http_bearer_and_request_log() {
    let vault = start().await;
    vault.put("secret/a/one", json!({"x": "1"}));
    let policy = r#"
        # read a/*
        path "secret/data/a/*" {
          capabilities = ["read", "list"]
        }
        path "secret/metadata/a/*" { capabilities = ["list"] }
    "#;
    let body = json!({ "policy": policy }).to_string();
    let w = root(&vault, "PUT", "/v1/sys/policies/acl/reader", Some(&body)).await;
    assert_eq!(w.status, 204, "{}", w.body);
    let read_back = root(&vault, "GET", "/v1/sys/policies/acl/reader", None).await;
    assert_eq!(read_back.json()["data"]["policy"], policy);
    let bad = root(
        &vault,
        "PUT",
        "/v1/sys/policy/bad",
        Some(r#"{"policy":"path {"}"#),
    )
    .await;
    assert_eq!(bad.status, 400);

    let t = vault.create_token(&["reader"], None, true);
    let bearer = format!("Bearer {t}");
    // LIST without trailing slash is checked against "secret/metadata/a/"
    let l = raw(
        &vault,
        "LIST",
        "/v1/secret/metadata/a",
        &[("Authorization", &bearer)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(l.status, 200, "{}", l.body);
    assert_eq!(l.json()["data"]["keys"], json!(["one"]));
    vault.reset_requests();
    let r = raw(
        &vault,
        "GET",
        "/v1/secret/data/a/one",
        &[("Authorization", &bearer)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let r = raw(
        &vault,
        "GET",
        "/v1/secret/data/b",
        &[("Authorization", &bearer)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["errors"][0],
        "1 error occurred:\n\t* permission denied\n\n"
    );
    let r = raw(
        &vault,
        "GET",
        "/v1/kv/x",
        &[("X-Vault-Namespace", "team1/")],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403);

    let recs = vault.requests();
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[0].method, "GET");
    assert_eq!(recs[0].path, "/v1/secret/data/a/one");
    assert_eq!((recs[0].status, recs[0].token_sent), (200, true));
    assert_eq!(recs[1].status, 403);
    assert!(!recs[2].token_sent);
    assert_eq!(recs[2].namespace.as_deref(), Some("team1/"));
    assert!(!format!("{recs:?}").contains(&t));
    vault.shutdown().await;
}

#[tokio::test]
async fn wrapping_and_num_uses() {
    let vault = start().await;
    vault.put("kv/a", json!({"x": "y"}));
    let token = vault.root_token().to_string();
    let bad = raw(
        &vault,
        "GET",
        "/v1/kv/a",
        &[("X-Vault-Token", &token), ("X-Vault-Wrap-TTL", "-5s")],
        None,
    )
    .await
    .unwrap();
    assert_eq!(bad.status, 400);
    let w = raw(
        &vault,
        "GET",
        "/v1/kv/a",
        &[("X-Vault-Token", &token), ("X-Vault-Wrap-TTL", "60")],
        None,
    )
    .await
    .unwrap();
    let v = w.json();
    assert!(v["data"].is_null());
    assert_eq!(v["wrap_info"]["ttl"], 60);
    assert_eq!(v["wrap_info"]["creation_path"], "kv/a");
    let wt = v["wrap_info"]["token"].as_str().unwrap().to_string();
    // unwrap with the wrapping token as X-Vault-Token, no body
    let u = raw(
        &vault,
        "POST",
        "/v1/sys/wrapping/unwrap",
        &[("X-Vault-Token", &wt)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(u.status, 200, "{}", u.body);
    assert_eq!(u.json()["data"], json!({"x": "y"}));
    let again = raw(
        &vault,
        "POST",
        "/v1/sys/wrapping/unwrap",
        &[("X-Vault-Token", &wt)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(again.status, 400);

    // token with 2 uses: the third request is denied
    let created = root(
        &vault,
        "POST",
        "/v1/auth/token/create",
        Some(r#"{"num_uses":2,"policies":["nope"]}"#),
    )
    .await;
    let c = created.json();
    assert_eq!(c["warnings"][0], "Policy \"nope\" does not exist");
    let t = c["auth"]["client_token"].as_str().unwrap().to_string();
    let h = [("X-Vault-Token", t.as_str())];
    let first = raw(&vault, "GET", "/v1/auth/token/lookup-self", &h, None)
        .await
        .unwrap();
    assert_eq!(first.json()["data"]["num_uses"], 1);
    assert_eq!(
        raw(&vault, "GET", "/v1/auth/token/lookup-self", &h, None)
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        raw(&vault, "GET", "/v1/auth/token/lookup-self", &h, None)
            .await
            .unwrap()
            .status,
        403
    );
    vault.shutdown().await;
}

#[tokio::test]
async fn custom_mounts_and_auth_enable() {
    let vault = TestVault::start(ServerConfig {
        root_token: "s.custom".into(),
        mounts: vec![("team/".into(), KvVersion::V1)],
        ui_mounts_endpoint: true,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(vault.root_token(), "s.custom");
    let e = root(
        &vault,
        "POST",
        "/v1/sys/mounts/kv2",
        Some(r#"{"type":"kv","options":{"version":"2"}}"#),
    )
    .await;
    assert_eq!(e.status, 204, "{}", e.body);
    let m = root(&vault, "GET", "/v1/sys/mounts", None).await.json();
    assert_eq!(m["data"]["kv2/"]["options"]["version"], "2");
    assert_eq!(m["data"]["team/"]["options"]["version"], "1");
    let w = root(
        &vault,
        "POST",
        "/v1/kv2/data/x",
        Some(r#"{"data":{"a":"b"}}"#),
    )
    .await;
    assert_eq!(w.status, 200);

    let a = root(
        &vault,
        "POST",
        "/v1/sys/auth/my-approle",
        Some(r#"{"type":"approle"}"#),
    )
    .await;
    assert_eq!(a.status, 204);
    assert_eq!(
        root(&vault, "POST", "/v1/auth/my-approle/role/r", Some(""))
            .await
            .status,
        204
    );
    let rid = root(&vault, "GET", "/v1/auth/my-approle/role/r/role-id", None)
        .await
        .json();
    let sid = root(&vault, "POST", "/v1/auth/my-approle/role/r/secret-id", None)
        .await
        .json();
    let login_body =
        json!({"role_id": rid["data"]["role_id"], "secret_id": sid["data"]["secret_id"]})
            .to_string();
    let login = raw(
        &vault,
        "POST",
        "/v1/auth/my-approle/login",
        &[],
        Some(&login_body),
    )
    .await
    .unwrap();
    assert_eq!(login.status, 200, "{}", login.body);
    let l = login.json();
    assert_eq!(l["mount_type"], "approle");
    assert_eq!(l["auth"]["metadata"]["role_name"], "r");
    let missing = raw(&vault, "POST", "/v1/auth/my-approle/login", &[], Some("{}"))
        .await
        .unwrap();
    assert_eq!(missing.json()["errors"][0], "missing role_id");
    vault.shutdown().await;
}
