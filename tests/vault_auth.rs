//! Auth methods and the token lifecycle of the real Vault client, against the Vault-API test server: AppRole (plain
//! and response-wrapped secret IDs), renewal at 2/3 of the TTL, re-login for tokens that cannot be renewed, a dead
//! token replaced on a 403, per-volume namespaces, TLS with a private CA and cert auth, and an HA address list.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use docker_volume_libsecret::config::{AuthMethod, Credential, VaultConfig};
use docker_volume_libsecret::names::{VaultPath, View};
use docker_volume_libsecret::source::vault::{VaultSetupError, VaultSource};
use docker_volume_libsecret::source::SecretSource;
use serde_json::json;
use support::vault_admin::Admin;
use vault_api_server::{RequestRecord, ServerConfig, TestVault};

async fn read(source: &VaultSource, path: &str) -> Result<String, String> {
    let secret = source
        .read(&VaultPath::from_volume_name(path).unwrap())
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(String::from_utf8(secret.render(&View::Default).unwrap().to_vec()).unwrap())
}

fn write_secret_file(dir: &Path, name: &str, value: &str) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut file, format!("{value}\n").as_bytes()).unwrap();
    path
}

fn approle_config(addr: &str, role_id_file: PathBuf, secret_id_file: PathBuf) -> VaultConfig {
    let mut config = VaultConfig {
        addr: vec![addr.to_owned()],
        auth: AuthMethod::Approle,
        timeout: Duration::from_secs(2),
        ..VaultConfig::default()
    };
    config.approle.role_id_file = Some(role_id_file);
    config.approle.secret_id_file = Some(secret_id_file);
    config
}

fn count(requests: &[RequestRecord], method: &str, path: &str) -> usize {
    requests
        .iter()
        .filter(|r| r.method == method && r.path == path)
        .count()
}

/// The KV reads the server answered with anything but 200.
fn failed_kv_reads(requests: &[RequestRecord]) -> Vec<RequestRecord> {
    requests
        .iter()
        .filter(|r| r.path.starts_with("/v1/secret/") && r.status != 200)
        .cloned()
        .collect()
}

#[tokio::test]
async fn approle_logs_in_with_plain_and_wrapped_secret_ids() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    vault.set_policy("app", &[("secret/data/app/*", &["read"])]);
    vault.put("secret/app/db", json!({"value": "approle-read"}));
    let admin = Admin::new(&vault.addr(), vault.root_token());
    let role_id = admin.approle("app", &["app"], "1h", "service").await;
    let dir = tempfile::tempdir().unwrap();
    let role_id_file = write_secret_file(dir.path(), "role-id", &role_id);

    let secret_id_file = write_secret_file(dir.path(), "secret-id", &admin.secret_id("app").await);
    let source = VaultSource::connect(&approle_config(
        &vault.addr(),
        role_id_file.clone(),
        secret_id_file,
    ))
    .await
    .unwrap();
    assert_eq!(
        read(&source, "secret/app/db").await.unwrap(),
        "approle-read"
    );
    assert_eq!(
        count(&vault.requests(), "POST", "/v1/auth/approle/login"),
        1
    );
    // The login reply holds the token's TTL and policies: no lookup-self is needed.
    assert_eq!(
        count(&vault.requests(), "GET", "/v1/auth/token/lookup-self"),
        0
    );

    // A wrapped secret ID: unwrapped once, then the wrapping token is spent.
    vault.reset_requests();
    let wrapping_token = admin.wrapped_secret_id("app").await;
    let wrapped_file = write_secret_file(dir.path(), "wrapped", &wrapping_token);
    let mut config = approle_config(&vault.addr(), role_id_file.clone(), wrapped_file.clone());
    config.approle.secret_id_wrapped = true;
    let source = VaultSource::connect(&config).await.unwrap();
    assert_eq!(
        read(&source, "secret/app/db").await.unwrap(),
        "approle-read"
    );
    let requests = vault.requests();
    assert_eq!(count(&requests, "POST", "/v1/sys/wrapping/unwrap"), 1);
    assert_eq!(count(&requests, "POST", "/v1/auth/approle/login"), 1);
    // A second driver start with the same (spent) wrapping token fails and says what to do.
    let error = VaultSource::connect(&config)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("wrapping token works once"), "{error}");
    assert!(!error.contains(&wrapping_token), "{error}");

    // Wrong credentials fail at start, naming the method and never the secret.
    let bad = write_secret_file(dir.path(), "bad-secret-id", "not-a-secret-id");
    match VaultSource::connect(&approle_config(&vault.addr(), role_id_file, bad)).await {
        Err(error @ VaultSetupError::Rejected { .. }) => {
            let text = error.to_string();
            assert!(text.contains("approle"), "{text}");
            assert!(!text.contains("not-a-secret-id"), "{text}");
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("a bad secret ID logged in"),
    }
}

#[tokio::test]
async fn a_short_lived_renewable_token_is_renewed_at_two_thirds_of_its_ttl() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    vault.put("secret/app/k", json!({"value": "v"}));
    let token = vault.create_token(&["root"], Some(Duration::from_secs(3)), true);
    let config = VaultConfig {
        addr: vec![vault.addr()],
        token: Some(Credential::new(token)),
        timeout: Duration::from_secs(2),
        ..VaultConfig::default()
    };
    let source = VaultSource::connect(&config).await.unwrap();
    // One lookup-self at start: the token's TTL, renewability and policies.
    assert_eq!(
        count(&vault.requests(), "GET", "/v1/auth/token/lookup-self"),
        1
    );
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        assert_eq!(read(&source, "secret/app/k").await.unwrap(), "v");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = vault.requests();
    let renewals = count(&requests, "POST", "/v1/auth/token/renew-self");
    // 10 s at one renewal per 1.5 to 2 s.
    assert!(
        (4..=8).contains(&renewals),
        "{renewals} renewals: {requests:?}"
    );
    assert!(failed_kv_reads(&requests).is_empty(), "{requests:?}");
}

#[tokio::test]
async fn non_renewable_approle_tokens_are_replaced_by_new_logins() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    vault.set_policy("app", &[("secret/data/app/*", &["read"])]);
    vault.put("secret/app/k", json!({"value": "v"}));
    let admin = Admin::new(&vault.addr(), vault.root_token());
    let role_id = admin.approle("batch", &["app"], "3s", "batch").await;
    let dir = tempfile::tempdir().unwrap();
    let config = approle_config(
        &vault.addr(),
        write_secret_file(dir.path(), "role-id", &role_id),
        write_secret_file(dir.path(), "secret-id", &admin.secret_id("batch").await),
    );
    let source = VaultSource::connect(&config).await.unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        assert_eq!(read(&source, "secret/app/k").await.unwrap(), "v");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = vault.requests();
    let logins = count(&requests, "POST", "/v1/auth/approle/login");
    assert!(logins >= 4, "{logins} logins in 8 s of 3 s tokens");
    assert_eq!(count(&requests, "POST", "/v1/auth/token/renew-self"), 0);
    assert!(failed_kv_reads(&requests).is_empty(), "{requests:?}");
}

#[tokio::test]
async fn a_revoked_token_is_replaced_from_the_token_file_and_the_read_retried() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    vault.put("secret/app/k", json!({"value": "v"}));
    let first = vault.create_token(&["root"], None, true);
    let dir = tempfile::tempdir().unwrap();
    let token_file = write_secret_file(dir.path(), "token", &first);
    let config = VaultConfig {
        addr: vec![vault.addr()],
        token_file: Some(token_file.clone()),
        timeout: Duration::from_secs(2),
        ..VaultConfig::default()
    };
    let source = VaultSource::connect(&config).await.unwrap();
    assert_eq!(read(&source, "secret/app/k").await.unwrap(), "v");

    // An operator rotates the token: the file gets the new one and the old one is revoked.
    let second = vault.create_token(&["root"], None, true);
    write_secret_file(dir.path(), "token", &second);
    Admin::new(&vault.addr(), vault.root_token())
        .revoke(&first)
        .await;
    tokio::time::sleep(Duration::from_secs(6)).await; // past the 403 re-check interval
    vault.put("secret/app/k", json!({"value": "after rotation"}));
    assert_eq!(
        read(&source, "secret/app/k").await.unwrap(),
        "after rotation",
        "the read that met the revoked token was retried with the new one"
    );

    // A real policy denial stays a denial: no endless re-reading.
    vault.set_policy("narrow", &[("secret/data/app/*", &["read"])]);
    let narrow = vault.create_token(&["narrow"], None, true);
    write_secret_file(dir.path(), "token", &narrow);
    let source = VaultSource::connect(&config).await.unwrap();
    vault.put("secret/other/k", json!({"value": "x"}));
    let denied = read(&source, "secret/other/k").await;
    assert!(denied.unwrap_err().contains("Denied"));
}

#[tokio::test]
async fn a_volume_namespace_is_a_child_of_the_configured_one() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    vault.put("org/team-a/secret/app/k", json!({"value": "team-a"}));
    vault.put("org/secret/app/k", json!({"value": "org"}));
    let config = VaultConfig {
        addr: vec![vault.addr()],
        token: Some(Credential::new(vault.root_token().to_owned())),
        namespace: Some("org".into()),
        timeout: Duration::from_secs(2),
        ..VaultConfig::default()
    };
    let source = VaultSource::connect(&config).await.unwrap();
    let team = source.in_namespace("team-a");
    assert_eq!(read(&source, "secret/app/k").await.unwrap(), "org");
    assert_eq!(read(&team, "secret/app/k").await.unwrap(), "team-a");
    let namespaces: Vec<Option<String>> = vault
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/v1/secret/"))
        .map(|r| r.namespace.clone())
        .collect();
    assert_eq!(
        namespaces,
        vec![Some("org".to_owned()), Some("org/team-a".to_owned())]
    );
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
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    let admin = Admin::new(&vault.addr(), vault.root_token());
    let role_id = admin.approle("app", &["default"], "1h", "service").await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = write_secret_file(
        dir.path(),
        "token",
        &vault.create_token(&["root"], None, true),
    );
    let role_id_file = write_secret_file(dir.path(), "role-id", &role_id);
    let secret_id_file = write_secret_file(dir.path(), "secret-id", &admin.secret_id("app").await);
    let pki = vault_api_server::pki::TestPki::generate(&["localhost"]);
    pki.write_to(dir.path()).unwrap();
    let client_key = dir.path().join("client-key.pem");

    let token = VaultConfig {
        addr: vec![vault.addr()],
        token_file: Some(token_file.clone()),
        timeout: Duration::from_secs(2),
        ..VaultConfig::default()
    };
    let approle = approle_config(&vault.addr(), role_id_file.clone(), secret_id_file.clone());
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

/// Two nodes on different hosts (127.0.0.1 and 127.0.0.2) whose certificates carry only the name `vault.test`: with
/// `tls_server_name`, each node is still reached at its own host, in order, and the second serves when the first
/// stops.
#[tokio::test]
async fn with_tls_server_name_every_ha_node_keeps_its_own_address() {
    let pki = vault_api_server::pki::TestPki::generate(&["vault.test"]);
    let dir = tempfile::tempdir().unwrap();
    pki.write_to(dir.path()).unwrap();
    let tls = ServerConfig {
        tls: Some(pki.tls_settings(false)),
        ..ServerConfig::default()
    };
    let on = |ip: [u8; 4]| std::net::SocketAddr::from((ip, 0));
    let first = TestVault::start_on(on([127, 0, 0, 1]), tls.clone())
        .await
        .unwrap();
    let second = TestVault::start_on(on([127, 0, 0, 2]), tls).await.unwrap();
    first.put("secret/app/k", json!({"value": "from the first node"}));
    second.put("secret/app/k", json!({"value": "from the second node"}));
    let config = VaultConfig {
        addr: vec![first.addr(), second.addr()],
        token: Some(Credential::new(first.root_token().to_owned())),
        ca_cert: Some(dir.path().join("ca.pem")),
        tls_server_name: Some("vault.test".to_owned()),
        timeout: Duration::from_secs(2),
        ..VaultConfig::default()
    };
    assert!(config.addr[1].contains("127.0.0.2"), "{:?}", config.addr);
    let source = VaultSource::connect(&config).await.unwrap();
    assert_eq!(
        read(&source, "secret/app/k").await.unwrap(),
        "from the first node"
    );
    first.stop_listening().await;
    assert_eq!(
        read(&source, "secret/app/k").await.unwrap(),
        "from the second node"
    );
}

/// The status Vault answers lookup-self with `token`: 200 for a live token.
async fn lookup_status(addr: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{addr}/v1/auth/token/lookup-self"))
        .header("X-Vault-Token", token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn revoke_login_revokes_the_token_an_approle_login_obtained() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    vault.set_policy("app", &[("secret/data/app/*", &["read"])]);
    vault.put("secret/app/k", json!({"value": "v"}));
    let admin = Admin::new(&vault.addr(), vault.root_token());
    let role_id = admin.approle("app", &["app"], "1h", "service").await;
    let dir = tempfile::tempdir().unwrap();
    let config = approle_config(
        &vault.addr(),
        write_secret_file(dir.path(), "role-id", &role_id),
        write_secret_file(dir.path(), "secret-id", &admin.secret_id("app").await),
    );
    let source = VaultSource::connect(&config).await.unwrap();
    assert_eq!(read(&source, "secret/app/k").await.unwrap(), "v");
    let tokens = vault.live_tokens_issued_at("auth/approle/login");
    assert_eq!(tokens.len(), 1, "one login");
    assert_eq!(lookup_status(&vault.addr(), &tokens[0]).await, 200);

    source.revoke_login().await;
    assert_eq!(lookup_status(&vault.addr(), &tokens[0]).await, 403);
    assert_eq!(
        vault.live_tokens_issued_at("auth/approle/login"),
        Vec::<String>::new()
    );
    assert_eq!(
        count(&vault.requests(), "POST", "/v1/auth/token/revoke-self"),
        1
    );
}

#[tokio::test]
async fn revoke_login_never_revokes_an_operators_token() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    vault.put("secret/app/k", json!({"value": "v"}));
    let dir = tempfile::tempdir().unwrap();
    let in_file = vault.create_token(&["root"], None, true);
    let inline = vault.create_token(&["root"], None, true);
    let base = VaultConfig {
        addr: vec![vault.addr()],
        timeout: Duration::from_secs(2),
        ..VaultConfig::default()
    };
    let from_file = VaultConfig {
        token_file: Some(write_secret_file(dir.path(), "token", &in_file)),
        ..base.clone()
    };
    let given_inline = VaultConfig {
        token: Some(Credential::new(inline.clone())),
        ..base
    };
    for (token, config) in [(&in_file, from_file), (&inline, given_inline)] {
        let source = VaultSource::connect(&config).await.unwrap();
        source.revoke_login().await;
        assert_eq!(lookup_status(&vault.addr(), token).await, 200);
        assert_eq!(read(&source, "secret/app/k").await.unwrap(), "v");
    }
    assert_eq!(
        count(&vault.requests(), "POST", "/v1/auth/token/revoke-self"),
        0
    );
}

#[tokio::test]
async fn revoke_login_gives_up_when_vault_does_not_answer() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    vault.set_policy("app", &[("secret/data/app/*", &["read"])]);
    let admin = Admin::new(&vault.addr(), vault.root_token());
    let role_id = admin.approle("app", &["app"], "1h", "service").await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = approle_config(
        &vault.addr(),
        write_secret_file(dir.path(), "role-id", &role_id),
        write_secret_file(dir.path(), "secret-id", &admin.secret_id("app").await),
    );
    config.timeout = Duration::from_millis(500);
    let source = VaultSource::connect(&config).await.unwrap();
    vault.faults().set_latency(Duration::from_secs(600));
    tokio::time::timeout(Duration::from_secs(30), source.revoke_login())
        .await
        .expect("revoke_login is bounded by vault.timeout");
}
