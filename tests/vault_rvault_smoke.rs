//! Proves the RustyVault test harness (tests/support/rvault.rs) works against the real `rvault`.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/http.rs"]
mod http;
#[path = "support/rvault.rs"]
mod rvault;

use rvault::{http, RustyVault};
use serde_json::json;

#[test]
fn rustyvault_starts_unseals_and_serves_kv1_and_token_lookup() {
    let vault = RustyVault::start();
    let addr = vault.addr();
    let root = vault.root_token();
    assert!(addr.starts_with("http://127.0.0.1:"), "{addr}");
    assert!(!root.is_empty());

    // Unsealed and initialised.
    let (status, body) = http("GET", &format!("{addr}/v1/sys/seal-status"), None, None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sealed"], json!(false), "{body}");

    // KV v1 round trip.
    vault.put_kv1("secret/app-1/db-password", &json!({"value": "s3cr3t"}));
    let (status, body) = http(
        "GET",
        &format!("{addr}/v1/secret/app-1/db-password"),
        Some(&root),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"], json!({"value": "s3cr3t"}), "{body}");
    assert_eq!(
        vault.get_kv1("secret/app-1/db-password"),
        Some(json!({"value": "s3cr3t"}))
    );
    // A missing secret is a 404 with an empty body (Vault sends {"errors":[]}).
    assert_eq!(vault.get_kv1("secret/app-1/missing"), None);

    // Listing uses the LIST method; rvault answers 404 to GET ...?list=true.
    let (status, body) = http(
        "LIST",
        &format!("{addr}/v1/secret/app-1"),
        Some(&root),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["keys"], json!(["db-password"]), "{body}");

    // Token auth: the root token looks itself up; a bogus token is refused.
    // What rvault 0.2.1 really answers (checked by hand with curl):
    //   root token  -> 200 {"renewable":false,"lease_id":"","lease_duration":0,"auth":null,
    //                  "data":{"policies":["root"],"display_name":"root","id":"<root token>",
    //                  "ttl":0,"num_uses":0,"path":"auth/token/root","meta":{}}}
    //   bogus token -> 403 {"error":"Permission denied."}   (Vault says {"errors":[...]})
    //   no token    -> 400 {"error":"Request client token is missing."}  (Vault says 403)
    let (status, body) = http(
        "GET",
        &format!("{addr}/v1/auth/token/lookup-self"),
        Some(&root),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["id"], json!(root), "{body}");

    let (status, body) = http(
        "GET",
        &format!("{addr}/v1/auth/token/lookup-self"),
        Some("bogus-token"),
        None,
    );
    assert_eq!(status, 403, "{body}");

    // Reading a secret with a bogus token is refused too.
    let (status, body) = http(
        "GET",
        &format!("{addr}/v1/secret/app-1/db-password"),
        Some("bogus-token"),
        None,
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body, json!({"error": "Permission denied."}));

    // No token at all: rvault answers 400, not Vault's 403.
    let (status, body) = http(
        "GET",
        &format!("{addr}/v1/auth/token/lookup-self"),
        None,
        None,
    );
    assert_eq!(status, 400, "{body}");
}

#[test]
fn two_rustyvaults_run_side_by_side() {
    let a = RustyVault::start();
    let b = RustyVault::start();
    assert_ne!(a.addr(), b.addr());
    a.put_kv1("secret/only-in-a", &json!({"value": "a"}));
    assert_eq!(b.get_kv1("secret/only-in-a"), None);
    assert_eq!(a.get_kv1("secret/only-in-a"), Some(json!({"value": "a"})));
}
