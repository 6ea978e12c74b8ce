//! The real vaultrs 0.8 client against the test server.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::client;
use serde_json::json;
use vault_api_server::{ServerConfig, TestVault};
use vaultrs::api::auth::approle::requests::{GenerateNewSecretIDRequest, SetAppRoleRequestBuilder};
use vaultrs::api::auth::approle::responses::GenerateNewSecretIDResponse;
use vaultrs::api::token::requests::CreateTokenRequestBuilder;
use vaultrs::api::ResponseWrapper;
use vaultrs::error::ClientError;
use vaultrs::{auth, kv1, kv2, sys, token};

type Map = HashMap<String, String>;

fn is_api_error(e: &ClientError, status: u16, needle: &str) -> bool {
    match e {
        ClientError::APIError { code, errors } => {
            *code == status && (needle.is_empty() || errors.iter().any(|m| m.contains(needle)))
        }
        _ => false,
    }
}

fn server_response_404(e: &ClientError) -> Option<serde_json::Value> {
    match e {
        ClientError::RestClientError {
            source: rustify::errors::ClientError::ServerResponseError { code: 404, content },
        } => content
            .as_deref()
            .and_then(|c| serde_json::from_str(c).ok()),
        _ => None,
    }
}

#[tokio::test]
async fn kv1_set_get_list_delete() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    let c = client(&vault, vault.root_token());
    kv1::set(&c, "kv", "app/db", &HashMap::from([("password", "s3cr3t")]))
        .await
        .unwrap();
    kv1::set(&c, "kv", "app/sub/x", &HashMap::from([("a", "b")]))
        .await
        .unwrap();
    let got: Map = kv1::get(&c, "kv", "app/db").await.unwrap();
    assert_eq!(got["password"], "s3cr3t");
    let raw = kv1::get_raw(&c, "kv", "app/db").await.unwrap();
    assert_eq!(raw.lease_duration, 2_764_800);
    assert_eq!(raw.lease_id, "");

    let list = kv1::list(&c, "kv", "app").await.unwrap();
    assert_eq!(list.data.keys, vec!["db", "sub/"]);

    // missing secret: APIError{404, []}
    let err = kv1::get::<Map>(&c, "kv", "app/nope").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::APIError { code: 404, errors } if errors.is_empty()),
        "{err:?}"
    );
    // a leaf lists as 404
    assert!(is_api_error(
        &kv1::list(&c, "kv", "app/db").await.unwrap_err(),
        404,
        ""
    ));

    kv1::delete(&c, "kv", "app/db").await.unwrap();
    assert!(is_api_error(
        &kv1::get::<Map>(&c, "kv", "app/db").await.unwrap_err(),
        404,
        ""
    ));
    vault.shutdown().await;
}

#[tokio::test]
async fn kv2_versions_delete_destroy() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    let c = client(&vault, vault.root_token());
    let v1 = kv2::set(&c, "secret", "app-1/db", &HashMap::from([("pw", "one")]))
        .await
        .unwrap();
    assert_eq!(v1.version, 1);
    assert!(!v1.destroyed);
    let v2 = kv2::set(&c, "secret", "app-1/db", &HashMap::from([("pw", "two")]))
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    vault.put("secret/app-1/other", json!({"k": "v"}));

    let latest: Map = kv2::read(&c, "secret", "app-1/db").await.unwrap();
    assert_eq!(latest["pw"], "two");
    let first: Map = kv2::read_version(&c, "secret", "app-1/db", 1)
        .await
        .unwrap();
    assert_eq!(first["pw"], "one");
    let keys = kv2::list(&c, "secret", "app-1").await.unwrap();
    assert_eq!(keys, vec!["db", "other"]);
    let root_keys = kv2::list(&c, "secret", "").await.unwrap();
    assert_eq!(root_keys, vec!["app-1/"]);

    let meta = kv2::read_metadata(&c, "secret", "app-1/db").await.unwrap();
    assert_eq!(meta.current_version, 2);
    assert_eq!(meta.versions.len(), 2);

    // soft-delete the latest: 404 envelope without errors (ServerResponseError)
    kv2::delete_latest(&c, "secret", "app-1/db").await.unwrap();
    let err = kv2::read::<Map>(&c, "secret", "app-1/db")
        .await
        .unwrap_err();
    let body = server_response_404(&err).unwrap_or_else(|| panic!("{err:?}"));
    assert!(body["data"]["data"].is_null());
    assert_eq!(body["data"]["metadata"]["version"], 2);
    assert_ne!(body["data"]["metadata"]["deletion_time"], "");
    assert!(body.get("errors").is_none());
    // older version still readable
    let first: Map = kv2::read_version(&c, "secret", "app-1/db", 1)
        .await
        .unwrap();
    assert_eq!(first["pw"], "one");

    kv2::destroy_versions(&c, "secret", "app-1/db", vec![1])
        .await
        .unwrap();
    let err = kv2::read_version::<Map>(&c, "secret", "app-1/db", 1)
        .await
        .unwrap_err();
    let body = server_response_404(&err).unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(body["data"]["metadata"]["destroyed"], true);

    kv2::undelete_versions(&c, "secret", "app-1/db", vec![2])
        .await
        .unwrap();
    let latest: Map = kv2::read(&c, "secret", "app-1/db").await.unwrap();
    assert_eq!(latest["pw"], "two");

    // missing key / version: APIError{404, []}
    let err = kv2::read::<Map>(&c, "secret", "nope").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::APIError { code: 404, errors } if errors.is_empty()),
        "{err:?}"
    );
    let err = kv2::read_version::<Map>(&c, "secret", "app-1/db", 9)
        .await
        .unwrap_err();
    assert!(is_api_error(&err, 404, ""), "{err:?}");

    // direct state manipulation is visible over HTTP
    vault.destroy_all("secret/app-1/other");
    let err = kv2::read::<Map>(&c, "secret", "app-1/other")
        .await
        .unwrap_err();
    assert!(server_response_404(&err).is_some(), "{err:?}");
    vault.shutdown().await;
}

#[tokio::test]
async fn kv2_cas_and_max_versions() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    let c = client(&vault, vault.root_token());
    for i in 0..12 {
        kv2::set(&c, "secret", "many", &HashMap::from([("i", i.to_string())]))
            .await
            .unwrap();
    }
    let meta = kv2::read_metadata(&c, "secret", "many").await.unwrap();
    assert_eq!(meta.current_version, 12);
    assert_eq!(meta.versions.len(), 10);
    assert_eq!(meta.oldest_version, 3);
    assert!(is_api_error(
        &kv2::read_version::<Map>(&c, "secret", "many", 1)
            .await
            .unwrap_err(),
        404,
        ""
    ));

    let opts = vaultrs::api::kv2::requests::SetSecretRequestOptions { cas: 3 };
    let err = kv2::set_with_options(&c, "secret", "many", &HashMap::from([("a", "b")]), opts)
        .await
        .unwrap_err();
    assert!(
        is_api_error(&err, 400, "check-and-set parameter did not match"),
        "{err:?}"
    );
    vault.shutdown().await;
}

#[tokio::test]
async fn token_lookup_create_renew_revoke() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    let rootc = client(&vault, vault.root_token());
    let me = token::lookup_self(&rootc).await.unwrap();
    assert_eq!(me.policies, vec!["root"]);
    assert_eq!(me.ttl, 0);
    assert_eq!(me.id, "root");
    assert!(me.expire_time.is_none());
    // root cannot be renewed
    let err = token::renew_self(&rootc, None).await.unwrap_err();
    assert!(is_api_error(&err, 400, ""), "{err:?}");

    let auth = token::new(
        &rootc,
        Some(
            CreateTokenRequestBuilder::default()
                .policies(vec!["reader".to_string()])
                .ttl("60s")
                .meta(HashMap::from([("who".to_string(), "test".to_string())])),
        ),
    )
    .await
    .unwrap();
    assert_eq!(auth.policies, vec!["default", "reader"]);
    assert_eq!(auth.lease_duration, 60);
    assert!(auth.renewable);
    assert!(!auth.orphan);

    let c = client(&vault, &auth.client_token);
    let info = token::lookup_self(&c).await.unwrap();
    assert_eq!(info.accessor, auth.accessor);
    assert!(info.ttl <= 60 && info.ttl >= 58, "{}", info.ttl);
    assert_eq!(info.meta.unwrap()["who"], "test");
    assert_eq!(info.path, "auth/token/create");
    assert!(info.expire_time.is_some() && info.issue_time.is_some());

    let renewed = token::renew_self(&c, Some("120s")).await.unwrap();
    assert_eq!(renewed.client_token, auth.client_token);
    assert_eq!(renewed.lease_duration, 120);

    let orphan = token::new_orphan(&rootc, None).await.unwrap();
    assert!(orphan.orphan);

    // a non-renewable token
    let fixed = vault.create_token(&["reader"], Some(Duration::from_secs(30)), false);
    let err = token::renew_self(&client(&vault, &fixed), None)
        .await
        .unwrap_err();
    assert!(is_api_error(&err, 400, "lease is not renewable"), "{err:?}");

    token::revoke_self(&c).await.unwrap();
    let err = token::lookup_self(&c).await.unwrap_err();
    assert!(is_api_error(&err, 403, "permission denied"), "{err:?}");
    assert!(is_api_error(&err, 403, "invalid token"), "{err:?}");
    vault.shutdown().await;
}

#[tokio::test]
async fn token_expires_and_renewal_is_capped() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    let rootc = client(&vault, vault.root_token());
    let t = vault.create_token(&[], Some(Duration::from_secs(2)), true);
    let c = client(&vault, &t);
    assert!(token::lookup_self(&c).await.is_ok());
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let err = token::lookup_self(&c).await.unwrap_err();
    assert!(is_api_error(&err, 403, "invalid token"), "{err:?}");

    let capped = token::new(
        &rootc,
        Some(
            CreateTokenRequestBuilder::default()
                .ttl("10s")
                .explicit_max_ttl("20s"),
        ),
    )
    .await
    .unwrap();
    let renewed = token::renew_self(&client(&vault, &capped.client_token), Some("1h"))
        .await
        .unwrap();
    assert!(
        renewed.lease_duration <= 20 && renewed.lease_duration >= 18,
        "{}",
        renewed.lease_duration
    );
    vault.shutdown().await;
}

#[tokio::test]
async fn policy_denial_is_403() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    vault.put("secret/app-1/db", json!({"pw": "x"}));
    vault.put("secret/app-2/db", json!({"pw": "y"}));
    vault.set_policy("app1", &[("secret/data/app-1/*", &["read"])]);
    let nopolicy = client(&vault, &vault.create_token(&[], None, true));
    let err = kv2::read::<Map>(&nopolicy, "secret", "app-1/db")
        .await
        .unwrap_err();
    assert!(is_api_error(&err, 403, "permission denied"), "{err:?}");

    let app1 = client(&vault, &vault.create_token(&["app1"], None, true));
    let ok: Map = kv2::read(&app1, "secret", "app-1/db").await.unwrap();
    assert_eq!(ok["pw"], "x");
    let err = kv2::read::<Map>(&app1, "secret", "app-2/db")
        .await
        .unwrap_err();
    assert!(is_api_error(&err, 403, "permission denied"), "{err:?}");
    // read-only: writes are denied
    let err = kv2::set(&app1, "secret", "app-1/db", &HashMap::from([("a", "b")]))
        .await
        .unwrap_err();
    assert!(is_api_error(&err, 403, ""), "{err:?}");
    // bogus token
    let err = kv2::read::<Map>(&client(&vault, "hvs.bogus"), "secret", "app-1/db")
        .await
        .unwrap_err();
    assert!(is_api_error(&err, 403, "invalid token"), "{err:?}");
    vault.shutdown().await;
}

#[tokio::test]
async fn approle_login_with_wrapped_secret_id() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    vault.put("secret/app-1/db", json!({"pw": "x"}));
    vault.set_policy("app1", &[("secret/data/app-1/*", &["read"])]);
    let rootc = client(&vault, vault.root_token());
    auth::approle::role::set(
        &rootc,
        "approle",
        "app1",
        Some(
            SetAppRoleRequestBuilder::default()
                .token_policies(vec!["app1".to_string()])
                .token_ttl("1h")
                .secret_id_num_uses(1u64),
        ),
    )
    .await
    .unwrap();
    let role_id = auth::approle::role::read_id(&rootc, "approle", "app1")
        .await
        .unwrap()
        .role_id;

    let wrapped = GenerateNewSecretIDRequest::builder()
        .mount("approle")
        .role_name("app1")
        .build()
        .unwrap()
        .wrap(&rootc)
        .await
        .unwrap();
    assert_eq!(
        wrapped.info.creation_path,
        "auth/approle/role/app1/secret-id"
    );
    assert_eq!(wrapped.info.ttl, 600);
    let looked = wrapped.lookup(&rootc).await.unwrap();
    assert_eq!(looked.creation_ttl, 600);

    let unwrapped: GenerateNewSecretIDResponse =
        sys::wrapping::unwrap(&rootc, Some(&wrapped.info.token))
            .await
            .unwrap();
    // single use
    let err =
        sys::wrapping::unwrap::<GenerateNewSecretIDResponse>(&rootc, Some(&wrapped.info.token))
            .await
            .unwrap_err();
    assert!(
        is_api_error(&err, 400, "wrapping token is not valid"),
        "{err:?}"
    );

    let login = auth::approle::login(&rootc, "approle", &role_id, &unwrapped.secret_id)
        .await
        .unwrap();
    assert_eq!(login.policies, vec!["app1", "default"]);
    assert_eq!(login.token_policies, vec!["app1", "default"]);
    assert_eq!(login.metadata.as_ref().unwrap()["role_name"], "app1");
    assert!(login.orphan && login.renewable);
    assert_eq!(login.lease_duration, 3600);

    let app = client(&vault, &login.client_token);
    let ok: Map = kv2::read(&app, "secret", "app-1/db").await.unwrap();
    assert_eq!(ok["pw"], "x");
    let info = token::lookup_self(&app).await.unwrap();
    assert_eq!(info.path, "auth/approle/login");

    // secret_id_num_uses = 1: a second login fails
    let err = auth::approle::login(&rootc, "approle", &role_id, &unwrapped.secret_id)
        .await
        .unwrap_err();
    assert!(
        is_api_error(&err, 400, "invalid role or secret ID"),
        "{err:?}"
    );
    let err = auth::approle::login(&rootc, "approle", "bad-role", "x")
        .await
        .unwrap_err();
    assert!(
        is_api_error(&err, 400, "invalid role or secret ID"),
        "{err:?}"
    );
    vault.shutdown().await;
}

#[tokio::test]
async fn health_and_namespaces() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    let rootc = client(&vault, vault.root_token());
    let h = sys::health(&rootc).await.unwrap();
    assert!(h.initialized && !h.sealed);

    vault.put("secret/x", json!({"v": "plain"}));
    vault.put("ns1/secret/x", json!({"v": "in-ns1"}));
    let ns = common::client_ns(&vault, vault.root_token(), Some("ns1"));
    let a: Map = kv2::read(&rootc, "secret", "x").await.unwrap();
    let b: Map = kv2::read(&ns, "secret", "x").await.unwrap();
    assert_eq!(a["v"], "plain");
    assert_eq!(b["v"], "in-ns1");
    let recs = vault.requests();
    let last = recs.last().unwrap();
    assert_eq!(last.namespace.as_deref(), Some("ns1"));
    assert_eq!(last.path, "/v1/secret/data/x");
    assert!(last.token_sent);
    assert!(
        !format!("{recs:?}").contains("\"root\""),
        "token value must never be recorded"
    );
    vault.shutdown().await;
}
