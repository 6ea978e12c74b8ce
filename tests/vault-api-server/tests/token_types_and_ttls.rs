//! Batch tokens, `token_max_ttl`, expiry and renewal of tokens, via vaultrs.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{client, raw};
use serde_json::json;
use vault_api_server::{ServerConfig, TestVault};
use vaultrs::api::auth::approle::requests::SetAppRoleRequestBuilder;
use vaultrs::api::token::requests::CreateTokenRequestBuilder;
use vaultrs::error::ClientError;
use vaultrs::{auth, kv2, token};

type Map = HashMap<String, String>;

fn api_error(e: &ClientError, status: u16, needle: &str) -> bool {
    matches!(e, ClientError::APIError { code, errors } if *code == status && errors.iter().any(|m| m.contains(needle)))
}

async fn approle_login(
    vault: &TestVault,
    role: &str,
    opts: &mut SetAppRoleRequestBuilder,
) -> vaultrs::api::AuthInfo {
    let rootc = client(vault, vault.root_token());
    auth::approle::role::set(&rootc, "approle", role, Some(opts))
        .await
        .unwrap();
    let role_id = auth::approle::role::read_id(&rootc, "approle", role)
        .await
        .unwrap()
        .role_id;
    let secret_id = auth::approle::role::secret::generate(&rootc, "approle", role, None)
        .await
        .unwrap()
        .secret_id;
    auth::approle::login(&rootc, "approle", &role_id, &secret_id)
        .await
        .unwrap()
}

#[tokio::test]
async fn approle_batch_tokens_are_not_renewable() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    vault.put("secret/app/db", json!({"v": "1"}));
    vault.set_policy("app", &[("secret/data/app/*", &["read"])]);
    let login = approle_login(
        &vault,
        "batchy",
        SetAppRoleRequestBuilder::default()
            .token_policies(vec!["app".into()])
            .token_ttl("30s")
            .token_type("batch"),
    )
    .await;
    assert_eq!(login.token_type, "batch");
    assert!(!login.renewable);
    assert_eq!(login.lease_duration, 30);
    assert_eq!(login.accessor, "");
    assert!(login.client_token.starts_with("hvb."));

    let c = client(&vault, &login.client_token);
    let got: Map = kv2::read(&c, "secret", "app/db").await.unwrap();
    assert_eq!(got["v"], "1");
    let me = token::lookup_self(&c).await.unwrap();
    assert_eq!(me.renewable, Some(false));
    let raw_lookup = raw(
        &vault,
        "GET",
        "/v1/auth/token/lookup-self",
        &[("X-Vault-Token", &login.client_token)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(raw_lookup.json()["data"]["type"], "batch");
    let err = token::renew_self(&c, None).await.unwrap_err();
    assert!(
        api_error(&err, 400, "batch tokens cannot be renewed"),
        "{err:?}"
    );

    let rootc = client(&vault, vault.root_token());
    let role = auth::approle::role::read(&rootc, "approle", "batchy")
        .await
        .unwrap();
    assert_eq!(role.token_type, "batch");
    // bad token_type
    let err = auth::approle::role::set(
        &rootc,
        "approle",
        "bad",
        Some(SetAppRoleRequestBuilder::default().token_type("weird")),
    )
    .await
    .unwrap_err();
    assert!(api_error(&err, 400, "token_type"), "{err:?}");
    // service (explicit) tokens stay renewable
    let svc = approle_login(
        &vault,
        "svc",
        SetAppRoleRequestBuilder::default().token_type("service"),
    )
    .await;
    assert!(svc.renewable);
    assert_eq!(svc.token_type, "service");

    // batch tokens from auth/token/create
    let b = token::new(
        &rootc,
        Some(
            CreateTokenRequestBuilder::default()
                .token_type("batch")
                .ttl("20s"),
        ),
    )
    .await
    .unwrap();
    assert_eq!(b.token_type, "batch");
    assert!(!b.renewable);
    let err = token::renew_self(&client(&vault, &b.client_token), None)
        .await
        .unwrap_err();
    assert!(
        api_error(&err, 400, "batch tokens cannot be renewed"),
        "{err:?}"
    );
    vault.shutdown().await;
}

#[tokio::test]
async fn approle_token_max_ttl_caps_renewals_then_the_token_expires() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    vault.put("secret/app/db", json!({"v": "1"}));
    vault.set_policy("app", &[("secret/data/app/*", &["read"])]);
    let login = approle_login(
        &vault,
        "short",
        SetAppRoleRequestBuilder::default()
            .token_policies(vec!["app".into()])
            .token_ttl("1s")
            .token_max_ttl("3s"),
    )
    .await;
    assert_eq!(login.lease_duration, 1);
    assert!(login.renewable);
    let c = client(&vault, &login.client_token);
    // no increment: the role's token_ttl again
    let r = token::renew_self(&c, None).await.unwrap();
    assert_eq!(r.lease_duration, 1);
    // a big increment is capped at what is left of token_max_ttl
    let r = token::renew_self(&c, Some("1h")).await.unwrap();
    assert!(
        r.lease_duration <= 3 && r.lease_duration >= 2,
        "{}",
        r.lease_duration
    );
    let me = token::lookup_self(&c).await.unwrap();
    assert!(me.ttl <= 3, "{}", me.ttl);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = token::renew_self(&c, Some("1h")).await.unwrap();
    assert!(r.lease_duration <= 2, "{}", r.lease_duration);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    // past token_max_ttl: gone, whatever was renewed
    let err = kv2::read::<Map>(&c, "secret", "app/db").await.unwrap_err();
    assert!(api_error(&err, 403, "permission denied"), "{err:?}");
    let err = token::lookup_self(&c).await.unwrap_err();
    assert!(api_error(&err, 403, "invalid token"), "{err:?}");
    vault.shutdown().await;
}

#[tokio::test]
async fn create_token_ttl_renewal_and_expiry() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    vault.put("secret/app/db", json!({"v": "1"}));
    vault.set_policy("app", &[("secret/data/app/*", &["read"])]);
    let t = vault.create_token(&["app"], Some(Duration::from_secs(2)), true);
    let c = client(&vault, &t);
    let me = token::lookup_self(&c).await.unwrap();
    assert!(me.ttl <= 2 && me.ttl >= 1, "{}", me.ttl);
    assert_eq!(me.creation_ttl, 2);
    assert_eq!(me.renewable, Some(true));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // renew-self without increment extends by the token's own TTL, from now
    let r = token::renew_self(&c, None).await.unwrap();
    assert_eq!(r.lease_duration, 2);
    assert!(r.renewable);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // still alive 2.4 s after creation thanks to the renewal
    let got: Map = kv2::read(&c, "secret", "app/db").await.unwrap();
    assert_eq!(got["v"], "1");
    let r = token::renew_self(&c, Some("3s")).await.unwrap();
    assert_eq!(r.lease_duration, 3);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let err = kv2::read::<Map>(&c, "secret", "app/db").await.unwrap_err();
    assert!(api_error(&err, 403, "invalid token"), "{err:?}");

    // not renewable
    let fixed = vault.create_token(&["app"], Some(Duration::from_secs(30)), false);
    let fc = client(&vault, &fixed);
    assert_eq!(
        token::lookup_self(&fc).await.unwrap().renewable,
        Some(false)
    );
    let err = token::renew_self(&fc, None).await.unwrap_err();
    assert!(api_error(&err, 400, "lease is not renewable"), "{err:?}");
    // default TTL (768h, also the max TTL counted from issue: capped)
    let long = vault.create_token(&["app"], None, true);
    let r = token::renew_self(&client(&vault, &long), None)
        .await
        .unwrap();
    assert!(r.lease_duration > 2_764_700 && r.lease_duration <= 2_764_800);
    vault.shutdown().await;
}
