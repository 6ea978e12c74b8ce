//! Auth methods and the token lifecycle of the real Vault client. Everything a real server can show runs against
//! OpenBao (`bao server -dev`, `tests/support/openbao.rs`), with request counts from OpenBao's own audit log:
//! renewal at 2/3 of the TTL, re-login for tokens that cannot be renewed (batch AppRole tokens), a revoked token
//! replaced from the token file, per-volume child namespaces, root-only credential files, TLS with a private CA and
//! an HA address list with `tls_server_name`, and which tokens `revoke_login` revokes. AppRole with plain and
//! response-wrapped secret IDs is in `tests/vault_openbao_kv.rs`. Only a fault a real server cannot produce on
//! command stays on the Vault-API test server (`tests/vault-api-server`): a Vault that does not answer
//! `revoke_login`. OpenBao missing is a failure, not a skip.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use docker_volume_libsecret::config::{Credential, VaultConfig};
use docker_volume_libsecret::names::{VaultPath, View};
use docker_volume_libsecret::source::vault::VaultSource;
use docker_volume_libsecret::source::SecretSource;
use serde_json::json;
use support::openbao::OpenBao;
use support::vault_admin::Admin;
use support::vault_client::{approle_config, count, credential_file, paths, token_file_config};
use vault_api_server::{ServerConfig, TestVault};

async fn read(source: &VaultSource, path: &str) -> Result<String, String> {
    let secret = source
        .read(&VaultPath::from_volume_name(path).unwrap())
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(String::from_utf8(secret.render(&View::Default).unwrap().to_vec()).unwrap())
}

/// The KV reads (of the `secret/` mount) after `mark` that OpenBao answered with an error.
fn failed_kv_reads(bao: &OpenBao, mark: usize) -> Vec<String> {
    bao.audit_errors_since(mark)
        .into_iter()
        .filter(|e| e.request.path.starts_with("secret/"))
        .map(|e| format!("{} {}: {}", e.request.operation, e.request.path, e.error))
        .collect()
}

/// A KV v2 read policy on `secret/app/*`.
const APP_POLICY: &str = r#"path "secret/data/app/*" { capabilities = ["read"] }"#;

#[tokio::test]
async fn a_short_lived_renewable_token_is_renewed_at_two_thirds_of_its_ttl() {
    let bao = OpenBao::start();
    bao.kv_put(None, "secret", "app/k", json!({"value": "v"}));
    // Renewable (the default); renew-self without an increment grants the 3 s again.
    let token = bao.create_token(None, &["root"], "3s");
    let config = VaultConfig {
        addr: vec![bao.addr()],
        token: Some(Credential::new(token)),
        timeout: Duration::from_secs(2),
        ..VaultConfig::default()
    };
    let mark = bao.audit_len();
    let source = VaultSource::connect(&config).await.unwrap();
    // One lookup-self at start: the token's TTL, renewability and policies.
    assert_eq!(
        count(
            &bao.audit_requests_since(mark),
            "read",
            "auth/token/lookup-self"
        ),
        1
    );
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        assert_eq!(read(&source, "secret/app/k").await.unwrap(), "v");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = bao.audit_requests_since(mark);
    let renewals = count(&requests, "update", "auth/token/renew-self");
    // 10 s at one renewal per 1.5 to 2 s.
    assert!(
        (4..=8).contains(&renewals),
        "{renewals} renewals: {:#?}",
        paths(&requests)
    );
    assert_eq!(failed_kv_reads(&bao, mark), Vec::<String>::new());
}

#[tokio::test]
async fn non_renewable_approle_tokens_are_replaced_by_new_logins() {
    let bao = OpenBao::start();
    bao.put_policy(None, "app", APP_POLICY);
    bao.kv_put(None, "secret", "app/k", json!({"value": "v"}));
    let admin = bao.admin();
    // Batch tokens cannot be renewed (renew-self answers 400): each one is replaced by a new login.
    let role_id = admin.approle("batch", &["app"], "3s", "batch").await;
    let dir = tempfile::tempdir().unwrap();
    let config = approle_config(
        &bao.addr(),
        credential_file(dir.path(), "role-id", &role_id),
        credential_file(dir.path(), "secret-id", &admin.secret_id("batch").await),
    );
    let mark = bao.audit_len();
    let source = VaultSource::connect(&config).await.unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        assert_eq!(read(&source, "secret/app/k").await.unwrap(), "v");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = bao.audit_requests_since(mark);
    let logins = count(&requests, "update", "auth/approle/login");
    assert!(logins >= 4, "{logins} logins in 8 s of 3 s tokens");
    assert_eq!(count(&requests, "update", "auth/token/renew-self"), 0);
    assert_eq!(failed_kv_reads(&bao, mark), Vec::<String>::new());
}

#[tokio::test]
async fn a_revoked_token_is_replaced_from_the_token_file_and_the_read_retried() {
    let bao = OpenBao::start();
    bao.kv_put(None, "secret", "app/k", json!({"value": "v"}));
    let first = bao.create_token(None, &["root"], "1h");
    let dir = tempfile::tempdir().unwrap();
    let token_file = credential_file(dir.path(), "token", &first);
    let config = token_file_config(&bao.addr(), token_file);
    let source = VaultSource::connect(&config).await.unwrap();
    assert_eq!(read(&source, "secret/app/k").await.unwrap(), "v");

    // An operator rotates the token: the file gets the new one and the old one is revoked.
    let second = bao.create_token(None, &["root"], "1h");
    credential_file(dir.path(), "token", &second);
    bao.revoke_token(&first);
    assert_eq!(bao.token_status(&first), 403);
    tokio::time::sleep(Duration::from_secs(6)).await; // past the 403 re-check interval
    bao.kv_put(None, "secret", "app/k", json!({"value": "after rotation"}));
    assert_eq!(
        read(&source, "secret/app/k").await.unwrap(),
        "after rotation",
        "the read that met the revoked token was retried with the new one"
    );

    // A real policy denial stays a denial: no endless re-reading.
    bao.put_policy(None, "narrow", APP_POLICY);
    let narrow = bao.create_token(None, &["narrow"], "1h");
    credential_file(dir.path(), "token", &narrow);
    let source = VaultSource::connect(&config).await.unwrap();
    bao.kv_put(None, "secret", "other/k", json!({"value": "x"}));
    let mark = bao.audit_len();
    let denied = read(&source, "secret/other/k").await;
    assert!(denied.unwrap_err().contains("Denied"));
    let requests = bao.audit_requests_since(mark);
    assert_eq!(
        count(&requests, "read", "secret/data/other/k"),
        1,
        "{:#?}",
        paths(&requests)
    );
}

#[tokio::test]
async fn a_volume_namespace_is_a_child_of_the_configured_one() {
    let bao = OpenBao::start();
    bao.create_namespace("org");
    bao.create_namespace("org/team-a");
    bao.enable_kv(Some("org"), "secret", 2);
    bao.enable_kv(Some("org/team-a"), "secret", 2);
    bao.kv_put(
        Some("org/team-a"),
        "secret",
        "app/k",
        json!({"value": "team-a"}),
    );
    bao.kv_put(Some("org"), "secret", "app/k", json!({"value": "org"}));
    bao.kv_put(None, "secret", "app/k", json!({"value": "root"}));
    let config = VaultConfig {
        addr: vec![bao.addr()],
        token: Some(Credential::new(bao.root_token().to_owned())),
        namespace: Some("org".into()),
        timeout: Duration::from_secs(2),
        ..VaultConfig::default()
    };
    let mark = bao.audit_len();
    let source = VaultSource::connect(&config).await.unwrap();
    let team = source.in_namespace("team-a");
    assert_eq!(read(&source, "secret/app/k").await.unwrap(), "org");
    assert_eq!(read(&team, "secret/app/k").await.unwrap(), "team-a");
    let requests = bao.audit_requests_since(mark);
    let namespaces: Vec<String> = requests
        .iter()
        .filter(|r| r.path.starts_with("secret/"))
        .map(|r| r.namespace.clone())
        .collect();
    assert_eq!(namespaces, ["org", "org/team-a"], "{:#?}", paths(&requests));
}

/// The ways a credential file can be open to someone else than root: a group or other bit, or another owner.
fn expose(path: &Path, how: &str) {
    use std::os::unix::fs::PermissionsExt;
    match how {
        "0640" => std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o640)).unwrap(),
        "0604" => std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o604)).unwrap(),
        "uid 65534" => {
            nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap()
        }
        other => panic!("no such exposure {other}"),
    }
}

fn restore(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
}

/// Token file, AppRole role and secret ID files and the TLS client key: each is refused, naming its key and path,
/// unless root owns it with mode 0600; the same file at 0600 logs in. Needs root (chown).
#[tokio::test]
async fn credential_files_must_be_root_only() {
    let bao = OpenBao::start();
    let admin = bao.admin();
    let role_id = admin.approle("app", &["default"], "1h", "service").await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = credential_file(
        dir.path(),
        "token",
        &bao.create_token(None, &["root"], "1h"),
    );
    let role_id_file = credential_file(dir.path(), "role-id", &role_id);
    let secret_id_file = credential_file(dir.path(), "secret-id", &admin.secret_id("app").await);
    let pki = vault_api_server::pki::TestPki::generate(&["localhost"]);
    pki.write_to(dir.path()).unwrap();
    let client_key = dir.path().join("client-key.pem");

    let token = token_file_config(&bao.addr(), token_file.clone());
    let approle = approle_config(&bao.addr(), role_id_file.clone(), secret_id_file.clone());
    // Over plain HTTP the client certificate is never presented, but its key is still read at start.
    let with_client_key = VaultConfig {
        client_cert: Some(dir.path().join("client.pem")),
        client_key: Some(client_key.clone()),
        ..token.clone()
    };
    let cases = [
        ("vault.token_file", &token_file, &token),
        ("vault.approle.role_id_file", &role_id_file, &approle),
        ("vault.approle.secret_id_file", &secret_id_file, &approle),
        ("vault.client_key", &client_key, &with_client_key),
    ];
    for (key, file, config) in cases {
        let secret = std::fs::read_to_string(file).unwrap();
        for how in ["0640", "0604", "uid 65534"] {
            expose(file, how);
            let error = match VaultSource::connect(config).await {
                Err(error) => error.to_string(),
                Ok(_) => panic!("{key} with {how} was accepted"),
            };
            let named = format!("{key} {}", file.display());
            assert!(error.contains(&named), "{key} with {how}: {error}");
            assert!(!error.contains(secret.trim()), "{key} with {how}: {error}");
            restore(file);
        }
        VaultSource::connect(config)
            .await
            .unwrap_or_else(|e| panic!("{key} at 0600, owned by root: {e}"));
    }
}

/// Two OpenBao nodes on different hosts (TLS listeners on 127.0.0.1 and 127.0.0.2) whose certificates, from a
/// private CA, carry only the name `vault.test`: with `tls_server_name`, each node is still reached at its own
/// host, in order, and the second serves when the first stops.
#[tokio::test]
async fn with_tls_server_name_every_ha_node_keeps_its_own_address() {
    let pki = vault_api_server::pki::TestPki::generate(&["vault.test"]);
    let dir = tempfile::tempdir().unwrap();
    pki.write_to(dir.path()).unwrap();
    let (cert, key) = (
        dir.path().join("server.pem"),
        dir.path().join("server-key.pem"),
    );
    let (first, first_port) = OpenBao::start_tls_on("127.0.0.1", &cert, &key);
    let (second, second_port) = OpenBao::start_tls_on("127.0.0.2", &cert, &key);
    // The two dev servers share no storage: the second gets a root token with the first's ID.
    let token = first.root_token().to_owned();
    second.create_token_with(None, json!({"id": token, "policies": ["root"]}));
    first.kv_put(
        None,
        "secret",
        "app/k",
        json!({"value": "from the first node"}),
    );
    second.kv_put(
        None,
        "secret",
        "app/k",
        json!({"value": "from the second node"}),
    );
    let config = VaultConfig {
        addr: vec![
            format!("https://127.0.0.1:{first_port}"),
            format!("https://127.0.0.2:{second_port}"),
        ],
        token: Some(Credential::new(token)),
        ca_cert: Some(dir.path().join("ca.pem")),
        tls_server_name: Some("vault.test".to_owned()),
        timeout: Duration::from_secs(2),
        ..VaultConfig::default()
    };
    let source = VaultSource::connect(&config).await.unwrap();
    assert_eq!(
        read(&source, "secret/app/k").await.unwrap(),
        "from the first node"
    );
    drop(first); // killed: its address refuses connections
    assert_eq!(
        read(&source, "secret/app/k").await.unwrap(),
        "from the second node"
    );
}

#[tokio::test]
async fn revoke_login_revokes_the_token_an_approle_login_obtained() {
    let bao = OpenBao::start();
    bao.put_policy(None, "app", APP_POLICY);
    bao.kv_put(None, "secret", "app/k", json!({"value": "v"}));
    let admin = bao.admin();
    let role_id = admin.approle("app", &["app"], "1h", "service").await;
    let dir = tempfile::tempdir().unwrap();
    let config = approle_config(
        &bao.addr(),
        credential_file(dir.path(), "role-id", &role_id),
        credential_file(dir.path(), "secret-id", &admin.secret_id("app").await),
    );
    let mark = bao.audit_len();
    let source = VaultSource::connect(&config).await.unwrap();
    assert_eq!(read(&source, "secret/app/k").await.unwrap(), "v");
    // The audit log holds only HMACs of tokens: the login's token is found by its accessor.
    let tokens = bao.live_token_accessors_issued_at("auth/approle/login");
    assert_eq!(tokens.len(), 1, "one login");
    assert_eq!(bao.accessor_status(&tokens[0]), 200);

    source.revoke_login().await;
    assert_ne!(
        bao.accessor_status(&tokens[0]),
        200,
        "the login's token is gone"
    );
    assert_eq!(
        bao.live_token_accessors_issued_at("auth/approle/login"),
        Vec::<String>::new()
    );
    let requests = bao.audit_requests_since(mark);
    let revokes: Vec<_> = requests
        .iter()
        .filter(|r| r.operation == "update" && r.path == "auth/token/revoke-self")
        .collect();
    assert_eq!(revokes.len(), 1, "{:#?}", paths(&requests));
    assert_eq!(revokes[0].role_name.as_deref(), Some("app"));
}

#[tokio::test]
async fn revoke_login_never_revokes_an_operators_token() {
    let bao = OpenBao::start();
    bao.kv_put(None, "secret", "app/k", json!({"value": "v"}));
    let dir = tempfile::tempdir().unwrap();
    let in_file = bao.create_token(None, &["root"], "1h");
    let inline = bao.create_token(None, &["root"], "1h");
    let base = VaultConfig {
        addr: vec![bao.addr()],
        timeout: Duration::from_secs(2),
        ..VaultConfig::default()
    };
    let from_file = VaultConfig {
        token_file: Some(credential_file(dir.path(), "token", &in_file)),
        ..base.clone()
    };
    let given_inline = VaultConfig {
        token: Some(Credential::new(inline.clone())),
        ..base
    };
    let mark = bao.audit_len();
    for (token, config) in [(&in_file, from_file), (&inline, given_inline)] {
        let source = VaultSource::connect(&config).await.unwrap();
        source.revoke_login().await;
        assert_eq!(bao.token_status(token), 200);
        assert_eq!(read(&source, "secret/app/k").await.unwrap(), "v");
    }
    assert_eq!(
        count(
            &bao.audit_requests_since(mark),
            "update",
            "auth/token/revoke-self"
        ),
        0
    );
}

// ---- faults: the Vault-API test server ----

/// A Vault that stops answering (600 s of latency) is a fault OpenBao cannot produce on command.
#[tokio::test]
async fn revoke_login_gives_up_when_vault_does_not_answer() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    vault.set_policy("app", &[("secret/data/app/*", &["read"])]);
    let admin = Admin::new(&vault.addr(), vault.root_token());
    let role_id = admin.approle("app", &["app"], "1h", "service").await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = approle_config(
        &vault.addr(),
        credential_file(dir.path(), "role-id", &role_id),
        credential_file(dir.path(), "secret-id", &admin.secret_id("app").await),
    );
    config.timeout = Duration::from_millis(500);
    let source = VaultSource::connect(&config).await.unwrap();
    vault.faults().set_latency(Duration::from_secs(600));
    tokio::time::timeout(Duration::from_secs(30), source.revoke_login())
        .await
        .expect("revoke_login is bounded by vault.timeout");
}
