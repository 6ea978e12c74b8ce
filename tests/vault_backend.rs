//! The real Vault client (vaultrs) behind `VaultSource`, against three Vault-API servers:
//! - OpenBao (`tests/support/openbao.rs`), with request counts from its audit log: start-up failing fast with what
//!   to fix, the token file and the configured namespace, KV versions named in the config (no mount detection
//!   then) and Vault's own non-KV paths refused unasked. KV v1/v2 detection and reads, deleted, destroyed and pinned
//!   versions, policy denials and a sealed server are in `tests/vault_openbao_kv.rs`.
//! - The Vault-API test server (`tests/vault-api-server`), only for what a real server cannot do on command: 500s,
//!   connection resets and latency; a server without `sys/internal/ui/mounts` (OpenBao always serves it, and
//!   answers 403 rather than the 404 of old servers that the KV v1 fallback is for); and showing the namespace
//!   header of every request (OpenBao serves a token's own `auth/token/*` calls in the token's namespace whatever
//!   the header says, so its audit log cannot show that header).
//! - RustyVault (`rvault`, an independent implementation). It stays because it catches what OpenBao cannot: it has
//!   no `sys/internal/ui/mounts`, so the client's KV v1 fallback runs against a real server, and it is a second
//!   reading of the API, so the client depends on no OpenBao quirk.
//!
//! OpenBao or RustyVault missing is a failure, not a skip.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use docker_volume_libsecret::config::VaultConfig;
use docker_volume_libsecret::names::{VaultPath, View};
use docker_volume_libsecret::source::vault::{VaultSetupError, VaultSource};
use docker_volume_libsecret::source::{SecretSource, SourceError};
use serde_json::json;
use support::openbao::OpenBao;
use support::vault_client::{count, path, paths, token_config, value};
use vault_api_server::{KvVersion, ServerConfig, TestVault};

/// The same client checks for any server that has `put` at `mount` (KV v1 or v2).
async fn common_client_checks(
    source: &VaultSource,
    mount: &str,
    put: impl Fn(&str, serde_json::Value),
) {
    put(
        &format!("{mount}/app-1/db-password"),
        json!({"value": "s3cr3t"}),
    );
    put(
        &format!("{mount}/app-1/db"),
        json!({"user": "app", "password": "pw"}),
    );
    put(
        &format!("{mount}/app-1/team/db"),
        json!({"value": "nested"}),
    );
    assert_eq!(
        value(source, &format!("{mount}/app-1/db-password"))
            .await
            .unwrap(),
        "s3cr3t"
    );
    let db = source
        .read(&path(&format!("{mount}/app-1/db")))
        .await
        .unwrap();
    assert_eq!(
        db.render(&View::Field("user".into())).unwrap().as_slice(),
        b"app"
    );
    assert_eq!(
        value(source, &format!("{mount}/app-1/team/db"))
            .await
            .unwrap(),
        "nested"
    );
    assert_eq!(
        value(source, &format!("{mount}/app-1/missing")).await,
        Err(SourceError::NotFound)
    );
    assert!(source
        .is_folder(&path(&format!("{mount}/app-1/team")))
        .await
        .unwrap());
    assert!(!source
        .is_folder(&path(&format!("{mount}/app-1/nothing")))
        .await
        .unwrap());
}

// ---- OpenBao ----

#[tokio::test]
async fn start_up_fails_fast_with_what_to_fix() {
    let bao = OpenBao::start();
    let mark = bao.audit_len();
    let rejected = VaultSource::connect(&token_config(&bao.addr(), "not-a-token")).await;
    assert!(
        matches!(rejected, Err(VaultSetupError::Rejected { .. })),
        "{:?}",
        rejected.as_ref().err()
    );
    assert_eq!(
        count(
            &bao.audit_requests_since(mark),
            "read",
            "auth/token/lookup-self"
        ),
        1,
        "one lookup-self, not retried: {:#?}",
        paths(&bao.audit_requests_since(mark))
    );
    let no_token = VaultSource::connect(&VaultConfig {
        addr: vec![bao.addr()],
        ..VaultConfig::default()
    })
    .await;
    assert!(matches!(no_token, Err(VaultSetupError::Credential(_))));

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    match VaultSource::connect(&token_config(&closed_addr, "x")).await {
        Err(VaultSetupError::Unreachable { addr, .. }) => assert_eq!(addr, closed_addr),
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("connected to a closed port"),
    }
    for error in [
        rejected.err().unwrap().to_string(),
        no_token.err().unwrap().to_string(),
    ] {
        assert!(!error.contains("not-a-token"), "{error}");
        assert!(error.contains("token"), "{error}");
    }
}

#[tokio::test]
async fn the_token_file_is_read_and_the_namespace_is_sent() {
    let bao = OpenBao::start();
    bao.create_namespace("ns1");
    bao.enable_kv(Some("ns1"), "secret", 2);
    bao.kv_put(
        Some("ns1"),
        "secret",
        "app/k",
        json!({"value": "in-namespace"}),
    );
    bao.kv_put(
        None,
        "secret",
        "app/k",
        json!({"value": "in the root namespace"}),
    );
    let dir = tempfile::tempdir().unwrap();
    let token_file =
        support::root_only_file(dir.path(), "token", &format!("{}\n", bao.root_token()));
    let mark = bao.audit_len();
    let source = VaultSource::connect(&VaultConfig {
        addr: vec![bao.addr()],
        token_file: Some(token_file),
        namespace: Some("ns1/".into()),
        timeout: Duration::from_secs(2),
        ..VaultConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(
        value(&source, "secret/app/k").await.unwrap(),
        "in-namespace"
    );
    let requests = bao.audit_requests_since(mark);
    // OpenBao serves a token's own auth/token/* calls in the token's namespace whatever the header says: the
    // lookup's namespace shows nothing about the client (the Vault-API test server checks its header below).
    assert_eq!(count(&requests, "read", "auth/token/lookup-self"), 1);
    let others: Vec<_> = requests
        .iter()
        .filter(|r| !r.path.starts_with("auth/token/"))
        .collect();
    assert_eq!(
        others.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        ["sys/internal/ui/mounts/secret/app/k", "secret/data/app/k"],
        "{:#?}",
        paths(&requests)
    );
    assert!(
        others.iter().all(|r| r.namespace == "ns1"),
        "{:#?}",
        paths(&requests)
    );
}

#[tokio::test]
async fn configured_kv_versions_skip_mount_detection_and_a_wrong_one_finds_nothing() {
    let bao = OpenBao::start();
    bao.enable_kv(None, "kv", 1);
    bao.kv_put(None, "kv", "app/k", json!({"value": "v1"}));
    bao.kv_put(None, "secret", "app/k", json!({"value": "v2"}));
    let mut settings = token_config(&bao.addr(), bao.root_token());
    settings.kv_version.insert("kv/".into(), 1);
    settings.kv_version.insert("secret/".into(), 1);
    let mark = bao.audit_len();
    let source = VaultSource::connect(&settings).await.unwrap();
    assert_eq!(value(&source, "kv/app/k").await.unwrap(), "v1");
    // A v2 mount read as v1 finds nothing (OpenBao answers the v1-style path with 404)...
    assert_eq!(
        value(&source, "secret/app/k").await,
        Err(SourceError::NotFound)
    );
    // ...until the config names its version.
    settings.kv_version.insert("secret/".into(), 2);
    let source = VaultSource::connect(&settings).await.unwrap();
    assert_eq!(value(&source, "secret/app/k").await.unwrap(), "v2");
    let requests = bao.audit_requests_since(mark);
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.path.starts_with("sys/internal/ui/mounts/"))
            .count(),
        0,
        "a configured version is not detected: {:#?}",
        paths(&requests)
    );
    assert_eq!(count(&requests, "read", "kv/app/k"), 1);
    assert_eq!(count(&requests, "read", "secret/app/k"), 1);
    assert_eq!(count(&requests, "read", "secret/data/app/k"), 1);
}

#[tokio::test]
async fn vaults_own_non_kv_paths_are_refused_without_asking() {
    let bao = OpenBao::start();
    // Not even a config override makes them KV v1.
    let mut settings = token_config(&bao.addr(), bao.root_token());
    settings.kv_version.insert("cubbyhole/".into(), 1);
    let source = VaultSource::connect(&settings).await.unwrap();
    let mark = bao.audit_len();
    for path in [
        "cubbyhole/x",
        "sys/mounts",
        "auth/token/lookup-self",
        "identity/entity",
    ] {
        let refused = value(&source, path).await;
        assert!(
            matches!(&refused, Err(SourceError::Refused(why)) if why.contains("not a KV")),
            "{path}: {refused:?}"
        );
        let path = VaultPath::from_volume_name(path).unwrap();
        assert!(matches!(
            source.check_served(&path).await,
            Err(SourceError::Refused(_))
        ));
    }
    assert_eq!(
        paths(&bao.audit_requests_since(mark)),
        Vec::<String>::new(),
        "refused without asking Vault"
    );
}

// ---- faults and missing endpoints: the Vault-API test server ----

/// 500s and connection resets (faults OpenBao cannot produce on command) are Unavailable, and the next read after
/// them works. A sealed server's 503 and policy denials are checked on OpenBao (`tests/vault_openbao_kv.rs`).
#[tokio::test]
async fn server_errors_and_connection_resets_are_unavailable() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    vault.put("secret/app-1/k", json!({"value": "1"}));
    let source = VaultSource::connect(&token_config(&vault.addr(), vault.root_token()))
        .await
        .unwrap();
    assert_eq!(value(&source, "secret/app-1/k").await.unwrap(), "1");
    vault.faults().set_status_override(Some(500));
    assert!(matches!(
        value(&source, "secret/app-1/k").await,
        Err(SourceError::Unavailable(_))
    ));
    vault.faults().set_status_override(None);
    vault.faults().set_connection_reset(true);
    assert!(matches!(
        value(&source, "secret/app-1/k").await,
        Err(SourceError::Unavailable(_))
    ));
    vault.faults().set_connection_reset(false);
    assert_eq!(value(&source, "secret/app-1/k").await.unwrap(), "1");
}

#[tokio::test]
async fn a_slow_vault_is_cut_off_at_the_configured_timeout() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    vault.put("secret/slow/k", json!({"value": "1"}));
    let source = VaultSource::connect(&token_config(&vault.addr(), vault.root_token()))
        .await
        .unwrap();
    assert_eq!(value(&source, "secret/slow/k").await.unwrap(), "1");
    vault.faults().set_latency(Duration::from_secs(30));
    let started = Instant::now();
    let result = value(&source, "secret/slow/k").await;
    assert!(
        matches!(result, Err(SourceError::Unavailable(_))),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
}

/// Every request, the token's lookup-self included, carries the configured namespace header as given. OpenBao's
/// audit log cannot show it for `auth/token/*` (see the OpenBao test above).
#[tokio::test]
async fn the_namespace_header_is_sent_on_every_request() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    vault.put("ns1/secret/app/k", json!({"value": "in-namespace"}));
    let dir = tempfile::tempdir().unwrap();
    let token_file: PathBuf = dir.path().join("token");
    std::fs::write(&token_file, format!("{}\n", vault.root_token())).unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let source = VaultSource::connect(&VaultConfig {
        addr: vec![vault.addr()],
        token_file: Some(token_file),
        namespace: Some("ns1/".into()),
        timeout: Duration::from_secs(2),
        ..VaultConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(
        value(&source, "secret/app/k").await.unwrap(),
        "in-namespace"
    );
    let requests = vault.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.path == "/v1/auth/token/lookup-self"),
        "{requests:?}"
    );
    assert!(requests
        .iter()
        .all(|r| r.namespace.as_deref() == Some("ns1/")));
}

/// A server without `sys/internal/ui/mounts` (old servers answer 404; OpenBao always serves it, with 403 where the
/// token may not look): the CLI's rule, KV v1 at the first segment, unless the config names the version.
#[tokio::test]
async fn without_mount_detection_the_first_segment_is_kv_v1_unless_configured() {
    let vault = TestVault::start(ServerConfig {
        mounts: vec![
            ("kv/".into(), KvVersion::V1),
            ("secret/".into(), KvVersion::V2),
        ],
        ui_mounts_endpoint: false,
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    vault.put("kv/app/k", json!({"value": "v1"}));
    vault.put("secret/app/k", json!({"value": "v2"}));
    let mut settings = token_config(&vault.addr(), vault.root_token());
    let source = VaultSource::connect(&settings).await.unwrap();
    assert_eq!(value(&source, "kv/app/k").await.unwrap(), "v1");
    // A v2 mount read as v1 finds nothing...
    assert_eq!(
        value(&source, "secret/app/k").await,
        Err(SourceError::NotFound)
    );
    // ...until the config names its version.
    settings.kv_version.insert("secret/".into(), 2);
    let source = VaultSource::connect(&settings).await.unwrap();
    assert_eq!(value(&source, "secret/app/k").await.unwrap(), "v2");
}

// ---- RustyVault ----

#[tokio::test]
async fn rusty_vault_kv_v1_and_token_auth() {
    let rvault = tokio::task::spawn_blocking(support::rvault::RustyVault::start)
        .await
        .unwrap();
    let source = VaultSource::connect(&token_config(&rvault.addr(), &rvault.root_token()))
        .await
        .unwrap();
    common_client_checks(&source, "secret", |p, v| rvault.put_kv1(p, &v)).await;
    let rejected = VaultSource::connect(&token_config(&rvault.addr(), "bogus-token")).await;
    assert!(
        matches!(rejected, Err(VaultSetupError::Rejected { .. })),
        "{:?}",
        rejected.err()
    );
}
