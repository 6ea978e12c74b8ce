//! TLS listener, the test PKI and the cert auth method, driven by reqwest
//! and vaultrs over real TLS connections.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use vault_api_server::pki::TestPki;
use vault_api_server::{ServerConfig, TestVault};
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use vaultrs::{auth, kv2, token};

const INVALID_CERT: &str = "invalid certificate or no client certificate supplied";

async fn tls_vault(pki: &TestPki, client_ca: bool) -> TestVault {
    TestVault::start(ServerConfig {
        tls: Some(pki.tls_settings(client_ca)),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A reqwest client trusting only the test CA, with an optional identity
/// (certificate + key PEM), resolving `vault.test` to the server.
fn https(pki: &TestPki, identity: Option<&str>, addr: SocketAddr) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(pki.ca_cert_pem.as_bytes()).unwrap();
    let mut b = reqwest::Client::builder()
        .tls_certs_only([ca])
        .resolve("vault.test", addr)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(id) = identity {
        b = b.identity(reqwest::Identity::from_pem(id.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

async fn send(
    c: &reqwest::Client,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> reqwest::Result<(u16, Value)> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut rb = c.request(method, url);
    if let Some(t) = token {
        rb = rb.header("X-Vault-Token", t);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let resp = rb.send().await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    Ok((status, v))
}

fn vaultrs_client(vault: &TestVault, dir: &std::path::Path, identity: Option<&str>) -> VaultClient {
    let mut s = VaultClientSettingsBuilder::default();
    s.address(vault.addr())
        .token(vault.root_token())
        .ca_certs(vec![dir.join("ca.pem").to_string_lossy().into_owned()]);
    if let Some(id) = identity {
        s.identity(Some(reqwest::Identity::from_pem(id.as_bytes()).unwrap()));
    }
    VaultClient::new(s.build().unwrap()).unwrap()
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("vas-{tag}-{}-{}", std::process::id(), uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn api_error(e: &ClientError, status: u16, needle: &str) -> bool {
    matches!(e, ClientError::APIError { code, errors } if *code == status && errors.iter().any(|m| m.contains(needle)))
}

#[tokio::test]
async fn https_by_ip_and_by_dns_name() {
    let pki = TestPki::generate(&["vault.test"]);
    let vault = tls_vault(&pki, false).await;
    assert!(
        vault.addr().starts_with("https://127.0.0.1:"),
        "{}",
        vault.addr()
    );
    let port = vault.socket_addr().port();
    assert_eq!(
        vault.addr_with_host("vault.test"),
        format!("https://vault.test:{port}")
    );
    let c = https(&pki, None, vault.socket_addr());
    for base in [vault.addr(), vault.addr_with_host("vault.test")] {
        let (status, v) = send(&c, "GET", &format!("{base}/v1/sys/health"), None, None)
            .await
            .unwrap();
        assert_eq!(status, 200, "{base}");
        assert_eq!(v["sealed"], false);
    }
    // a name the certificate does not carry
    let err = https(&pki, None, vault.socket_addr())
        .get(format!("https://localhost:{port}/v1/sys/health"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    // a client that does not trust the CA
    let other = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.other_ca_cert_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    assert!(other
        .get(format!("{}/v1/sys/health", vault.addr()))
        .send()
        .await
        .is_err());
    // plain HTTP to the TLS port gets no HTTP answer
    let plain = reqwest::Client::new();
    let r = plain
        .get(format!("http://127.0.0.1:{port}/v1/sys/health"))
        .send()
        .await;
    assert!(r.map(|r| r.status() != 200).unwrap_or(true));
    vault.shutdown().await;
}

#[tokio::test]
async fn http_addr_with_host() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    let port = vault.socket_addr().port();
    assert_eq!(
        vault.addr_with_host("vault"),
        format!("http://vault:{port}")
    );
    assert!(vault.addr().starts_with("http://"));
    vault.shutdown().await;
}

#[tokio::test]
async fn bad_tls_pem_is_an_error() {
    let err = TestVault::start(ServerConfig {
        tls: Some(vault_api_server::TlsSettings {
            cert_chain_pem: "nope".into(),
            key_pem: "nope".into(),
            client_ca_pem: None,
        }),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn cert_login_with_vaultrs_then_read_a_secret() {
    let pki = TestPki::generate(&["vault.test"]);
    let dir = tempdir("certlogin");
    pki.write_to(&dir).unwrap();
    let vault = tls_vault(&pki, true).await;
    vault.put("secret/app-1/db", json!({"password": "s3cr3t"}));
    vault.set_policy("app", &[("secret/data/app-1/*", &["read"])]);
    vault.set_cert_role(
        "cert",
        "docker",
        &pki.ca_cert_pem,
        &["app"],
        Some(Duration::from_secs(60)),
    );

    let c = vaultrs_client(&vault, &dir, Some(&pki.client_identity_pem()));
    let login = auth::cert::login(&c, "cert", "docker").await.unwrap();
    assert_eq!(login.policies, vec!["app", "default"]);
    assert_eq!(login.token_policies, vec!["app", "default"]);
    assert_eq!(login.lease_duration, 60);
    assert!(login.renewable);
    assert_eq!(login.token_type, "service");
    assert!(login.client_token.starts_with("hvs."));
    let meta = login.metadata.unwrap();
    assert_eq!(meta["cert_name"], "docker");
    assert_eq!(meta["common_name"], "docker-host");
    assert!(meta["serial_number"].chars().all(|c| c.is_ascii_digit()));
    assert!(!meta["authority_key_id"].is_empty());

    let tc = VaultClient::new(
        VaultClientSettingsBuilder::default()
            .address(vault.addr())
            .token(&login.client_token)
            .ca_certs(vec![dir.join("ca.pem").to_string_lossy().into_owned()])
            .build()
            .unwrap(),
    )
    .unwrap();
    let secret: std::collections::HashMap<String, String> =
        kv2::read(&tc, "secret", "app-1/db").await.unwrap();
    assert_eq!(secret["password"], "s3cr3t");
    let me = token::lookup_self(&tc).await.unwrap();
    assert_eq!(me.path, "auth/cert/login");
    assert!(me.ttl <= 60 && me.ttl >= 58);
    // renewal grants the role TTL again
    let renewed = token::renew_self(&tc, None).await.unwrap();
    assert_eq!(renewed.lease_duration, 60);

    // a token client without a certificate still works on this listener
    let rootc = vaultrs_client(&vault, &dir, None);
    assert!(token::lookup_self(&rootc).await.is_ok());
    // ... but cannot log in with a certificate
    let err = auth::cert::login(&rootc, "cert", "docker")
        .await
        .unwrap_err();
    assert!(
        api_error(&err, 400, "client certificate must be supplied"),
        "{err:?}"
    );
    vault.shutdown().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn cert_login_without_name_tries_every_role_and_needs_no_token() {
    let pki = TestPki::generate(&["vault.test"]);
    let vault = tls_vault(&pki, true).await;
    vault.set_cert_role("cert", "a-other", &pki.other_ca_cert_pem, &["x"], None);
    vault.set_cert_role("cert", "b-docker", &pki.ca_cert_pem, &["y"], None);
    let c = https(&pki, Some(&pki.client_identity_pem()), vault.socket_addr());
    let url = format!("{}/v1/auth/cert/login", vault.addr_with_host("vault.test"));
    let (status, v) = send(&c, "POST", &url, None, None).await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["auth"]["metadata"]["cert_name"], "b-docker");
    assert_eq!(v["auth"]["policies"], json!(["default", "y"]));
    assert_eq!(v["auth"]["lease_duration"], 2_764_800);
    assert_eq!(v["auth"]["renewable"], true);
    assert_eq!(v["mount_type"], "cert");
    assert!(v["auth"]["accessor"]
        .as_str()
        .is_some_and(|a| !a.is_empty()));
    // `{"name": ...}` picks one role; a role whose CA did not sign → 400
    let (status, v) = send(&c, "POST", &url, None, Some(json!({"name": "a-other"})))
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert_eq!(v, json!({"errors": [INVALID_CERT]}));
    // unknown role name
    let (status, _) = send(&c, "POST", &url, None, Some(json!({"name": "nope"})))
        .await
        .unwrap();
    assert_eq!(status, 400);
    vault.shutdown().await;
}

#[tokio::test]
async fn cert_from_another_ca() {
    let pki = TestPki::generate(&["vault.test"]);
    // The listener verifies client certs: another CA's cert fails the handshake.
    let strict = tls_vault(&pki, true).await;
    strict.set_cert_role("cert", "docker", &pki.ca_cert_pem, &["app"], None);
    let c = https(
        &pki,
        Some(&pki.other_client_identity_pem()),
        strict.socket_addr(),
    );
    let r = send(
        &c,
        "POST",
        &format!("{}/v1/auth/cert/login", strict.addr()),
        None,
        None,
    )
    .await;
    assert!(r.is_err(), "{r:?}");
    strict.shutdown().await;

    // Vault's default listener: any client cert passes TLS, login says 400.
    let lax = tls_vault(&pki, false).await;
    lax.set_cert_role("cert", "docker", &pki.ca_cert_pem, &["app"], None);
    let c = https(
        &pki,
        Some(&pki.other_client_identity_pem()),
        lax.socket_addr(),
    );
    let url = format!("{}/v1/auth/cert/login", lax.addr());
    let (status, v) = send(&c, "POST", &url, None, None).await.unwrap();
    assert_eq!(status, 400);
    assert_eq!(v, json!({"errors": [INVALID_CERT]}));
    // the right cert logs in there too
    let good = https(&pki, Some(&pki.client_identity_pem()), lax.socket_addr());
    let (status, _) = send(&good, "POST", &url, None, None).await.unwrap();
    assert_eq!(status, 200);
    // no cert at all
    let none = https(&pki, None, lax.socket_addr());
    let (status, v) = send(&none, "POST", &url, None, None).await.unwrap();
    assert_eq!(status, 400);
    assert_eq!(v["errors"][0], "client certificate must be supplied");
    lax.shutdown().await;
}

#[tokio::test]
async fn same_issuer_name_but_another_key_is_rejected() {
    // Two PKIs: their CAs have the same subject name, different keys.
    let pki = TestPki::generate(&["vault.test"]);
    let twin = TestPki::generate(&["vault.test"]);
    let vault = tls_vault(&pki, false).await;
    vault.set_cert_role("cert", "docker", &pki.ca_cert_pem, &["app"], None);
    let url = format!("{}/v1/auth/cert/login", vault.addr());
    let c = https(&pki, Some(&twin.client_identity_pem()), vault.socket_addr());
    let (status, v) = send(&c, "POST", &url, None, None).await.unwrap();
    assert_eq!(status, 400, "{v}");
    assert_eq!(v, json!({"errors": [INVALID_CERT]}));
    vault.shutdown().await;
}

#[tokio::test]
async fn cert_login_over_plain_http_needs_tls() {
    let pki = TestPki::generate(&[]);
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    vault.set_cert_role("cert", "docker", &pki.ca_cert_pem, &["app"], None);
    let (status, v) = send(
        &reqwest::Client::new(),
        "POST",
        &format!("{}/v1/auth/cert/login", vault.addr()),
        None,
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 400);
    assert_eq!(v["errors"][0], "tls connection required");
    vault.shutdown().await;
}

#[tokio::test]
async fn cert_roles_over_http_batch_tokens_pinned_leaf_and_cn_constraint() {
    let pki = TestPki::generate(&["vault.test"]);
    let vault = tls_vault(&pki, true).await;
    let root = vault.root_token().to_string();
    let c = https(&pki, Some(&pki.client_identity_pem()), vault.socket_addr());
    let base = vault.addr();
    let url = |p: &str| format!("{base}/v1/{p}");

    let (s, _) = send(
        &c,
        "POST",
        &url("sys/auth/tls"),
        Some(&root),
        Some(json!({"type": "cert"})),
    )
    .await
    .unwrap();
    assert_eq!(s, 204);
    let (s, v) = send(
        &c,
        "POST",
        &url("sys/auth/tls"),
        Some(&root),
        Some(json!({"type": "cert"})),
    )
    .await
    .unwrap();
    assert_eq!(
        (s, v["errors"][0].as_str()),
        (400, Some("path is already in use at tls/"))
    );
    let (_, v) = send(&c, "GET", &url("sys/auth"), Some(&root), None)
        .await
        .unwrap();
    assert_eq!(v["data"]["tls/"]["type"], "cert");
    // roles need a token
    let (s, _) = send(
        &c,
        "POST",
        &url("auth/tls/certs/web"),
        None,
        Some(json!({"certificate": pki.ca_cert_pem})),
    )
    .await
    .unwrap();
    assert_eq!(s, 403);
    let (s, v) = send(
        &c,
        "POST",
        &url("auth/tls/certs/web"),
        Some(&root),
        Some(json!({"certificate": "junk"})),
    )
    .await
    .unwrap();
    assert_eq!(
        (s, v["errors"][0].as_str()),
        (400, Some("failed to parse certificate"))
    );
    let (s, v) = send(
        &c,
        "POST",
        &url("auth/tls/certs/web"),
        Some(&root),
        Some(json!({"policies": "a"})),
    )
    .await
    .unwrap();
    assert_eq!(
        (s, v["errors"][0].as_str()),
        (400, Some("missing certificate"))
    );
    let (s, _) = send(
        &c,
        "POST",
        &url("auth/tls/certs/web"),
        Some(&root),
        Some(json!({
            "certificate": pki.ca_cert_pem,
            "token_policies": ["web"],
            "token_ttl": "30s",
            "token_max_ttl": "1m",
            "token_type": "batch",
        })),
    )
    .await
    .unwrap();
    assert_eq!(s, 204);
    let (s, v) = send(&c, "GET", &url("auth/tls/certs/web"), Some(&root), None)
        .await
        .unwrap();
    assert_eq!(s, 200);
    assert_eq!(v["data"]["token_ttl"], 30);
    assert_eq!(v["data"]["token_max_ttl"], 60);
    assert_eq!(v["data"]["token_type"], "batch");
    assert_eq!(v["data"]["token_policies"], json!(["web"]));
    let (s, v) = send(&c, "LIST", &url("auth/tls/certs"), Some(&root), None)
        .await
        .unwrap();
    assert_eq!((s, v["data"]["keys"].clone()), (200, json!(["web"])));

    // batch token: hvb., not renewable, renew-self refused
    let (s, v) = send(
        &c,
        "POST",
        &url("auth/tls/login"),
        None,
        Some(json!({"name": "web"})),
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{v}");
    let auth = &v["auth"];
    assert_eq!(auth["token_type"], "batch");
    assert_eq!(auth["renewable"], false);
    assert_eq!(auth["lease_duration"], 30);
    let t = auth["client_token"].as_str().unwrap().to_string();
    assert!(t.starts_with("hvb."), "{t}");
    let (s, v) = send(&c, "GET", &url("auth/token/lookup-self"), Some(&t), None)
        .await
        .unwrap();
    assert_eq!(s, 200);
    assert_eq!(v["data"]["type"], "batch");
    assert_eq!(v["data"]["renewable"], false);
    let (s, v) = send(&c, "POST", &url("auth/token/renew-self"), Some(&t), None)
        .await
        .unwrap();
    assert_eq!(
        (s, v["errors"][0].as_str()),
        (400, Some("batch tokens cannot be renewed"))
    );

    // the role certificate may be the client certificate itself
    let (s, _) = send(
        &c,
        "POST",
        &url("auth/tls/certs/pinned"),
        Some(&root),
        Some(json!({"certificate": pki.client_cert_pem, "policies": "p"})),
    )
    .await
    .unwrap();
    assert_eq!(s, 204);
    let (s, v) = send(
        &c,
        "POST",
        &url("auth/tls/login"),
        None,
        Some(json!({"name": "pinned"})),
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["auth"]["policies"], json!(["default", "p"]));

    // allowed_common_names
    let (s, _) = send(
        &c,
        "POST",
        &url("auth/tls/certs/cn"),
        Some(&root),
        Some(json!({"certificate": pki.ca_cert_pem, "allowed_common_names": "web-*"})),
    )
    .await
    .unwrap();
    assert_eq!(s, 204);
    let (s, v) = send(
        &c,
        "POST",
        &url("auth/tls/login"),
        None,
        Some(json!({"name": "cn"})),
    )
    .await
    .unwrap();
    assert_eq!(s, 400);
    assert_eq!(
        v["errors"][0],
        "no chain matching all constraints could be found for this login certificate"
    );

    let (s, _) = send(&c, "DELETE", &url("auth/tls/certs/web"), Some(&root), None)
        .await
        .unwrap();
    assert_eq!(s, 204);
    let (s, _) = send(&c, "GET", &url("auth/tls/certs/web"), Some(&root), None)
        .await
        .unwrap();
    assert_eq!(s, 404);
    // disabling the mount
    let (s, _) = send(&c, "DELETE", &url("sys/auth/tls"), Some(&root), None)
        .await
        .unwrap();
    assert_eq!(s, 204);
    let (s, _) = send(&c, "POST", &url("auth/tls/login"), None, None)
        .await
        .unwrap();
    assert_eq!(s, 403);
    vault.shutdown().await;
}

#[test]
fn pki_write_to_and_sans() {
    use std::os::unix::fs::PermissionsExt;
    let pki = TestPki::generate(&["vault.test", "10.0.0.7"]);
    let dir = tempdir("pki");
    pki.write_to(&dir).unwrap();
    for (name, mode) in [
        ("ca.pem", 0o644),
        ("server.pem", 0o644),
        ("server-key.pem", 0o600),
        ("client.pem", 0o644),
        ("client-key.pem", 0o600),
        ("other-ca.pem", 0o644),
        ("other-client.pem", 0o644),
        ("other-client-key.pem", 0o600),
    ] {
        let meta = std::fs::metadata(dir.join(name)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(text.starts_with("-----BEGIN "), "{name}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
        pki.ca_cert_pem
    );
    // written again over existing files: same modes
    pki.write_to(&dir).unwrap();
    assert_ne!(pki.ca_cert_pem, pki.other_ca_cert_pem);
    let settings = pki.tls_settings(true);
    assert_eq!(
        settings.client_ca_pem.as_deref(),
        Some(pki.ca_cert_pem.as_str())
    );
    assert!(pki.tls_settings(false).client_ca_pem.is_none());
    assert!(TestPki::try_generate(&["bäd"]).is_err());
    std::fs::remove_dir_all(&dir).ok();
}
