//! The real Vault client (vaultrs) behind `VaultSource`, against two Vault-API servers: the test server under
//! `tests/vault-api-server` (written from HashiCorp's API docs) and RustyVault (`rvault`, an independent
//! implementation). RustyVault missing is a failure, not a skip.
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

use docker_volume_libsecret::config::{Credential, VaultConfig};
use docker_volume_libsecret::names::{VaultPath, View};
use docker_volume_libsecret::source::vault::{VaultSetupError, VaultSource};
use docker_volume_libsecret::source::{SecretSource, SourceError};
use serde_json::json;
use vault_api_server::{KvVersion, ServerConfig, TestVault};

fn path(p: &str) -> VaultPath {
    VaultPath::from_volume_name(p).unwrap()
}

fn config(addr: &str, token: &str) -> VaultConfig {
    VaultConfig {
        addr: vec![addr.to_owned()],
        token: Some(Credential::new(token.to_owned())),
        timeout: Duration::from_secs(2),
        ..VaultConfig::default()
    }
}

async fn value(source: &VaultSource, p: &str) -> Result<String, SourceError> {
    let secret = source.read(&path(p)).await?;
    Ok(String::from_utf8(secret.render(&View::Default).unwrap().to_vec()).unwrap())
}

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

// ---- the Vault-API test server ----

#[tokio::test]
async fn kv_v1_and_v2_are_detected_per_mount_and_read() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    let source = VaultSource::connect(&config(&vault.addr(), vault.root_token()))
        .await
        .unwrap();
    common_client_checks(&source, "secret", |p, v| vault.put(p, v)).await;
    common_client_checks(&source, "kv", |p, v| vault.put(p, v)).await;
    let requests = vault.requests();
    let v2_reads = requests
        .iter()
        .filter(|r| r.path.starts_with("/v1/secret/data/"))
        .count();
    assert!(
        v2_reads >= 3,
        "KV v2 reads go to <mount>/data/: {:?}",
        requests.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    let detections = requests
        .iter()
        .filter(|r| r.path.starts_with("/v1/sys/internal/ui/mounts/"))
        .count();
    assert_eq!(detections, 2, "one detection per mount, then memoized");
}

#[tokio::test]
async fn deleted_and_destroyed_v2_versions_are_not_found() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    let source = VaultSource::connect(&config(&vault.addr(), vault.root_token()))
        .await
        .unwrap();
    vault.put("secret/a/k", json!({"value": "1"}));
    vault.put("secret/a/k", json!({"value": "2"}));
    assert_eq!(value(&source, "secret/a/k").await.unwrap(), "2");
    vault.delete("secret/a/k");
    assert_eq!(
        value(&source, "secret/a/k").await,
        Err(SourceError::NotFound)
    );
    vault.put("secret/a/gone", json!({"value": "x"}));
    vault.destroy_all("secret/a/gone");
    assert_eq!(
        value(&source, "secret/a/gone").await,
        Err(SourceError::NotFound)
    );
}

#[tokio::test]
async fn pinned_kv_v2_versions_are_read_and_deleted_or_destroyed_ones_are_not_found() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    let source = VaultSource::connect(&config(&vault.addr(), vault.root_token()))
        .await
        .unwrap();
    vault.put("secret/a/k", json!({"value": "one"}));
    vault.put("secret/a/k", json!({"value": "two"}));
    let version = |n| {
        let source = &source;
        async move {
            let secret = source.read_version(&path("secret/a/k"), n).await?;
            Ok::<_, SourceError>(
                String::from_utf8(secret.render(&View::Default).unwrap().to_vec()).unwrap(),
            )
        }
    };
    assert_eq!(version(1).await.unwrap(), "one");
    assert_eq!(version(2).await.unwrap(), "two");
    assert_eq!(version(3).await, Err(SourceError::NotFound));
    vault.delete("secret/a/k");
    assert_eq!(
        version(2).await,
        Err(SourceError::NotFound),
        "a soft-deleted version"
    );
    assert_eq!(version(1).await.unwrap(), "one");
    vault.destroy_all("secret/a/k");
    assert_eq!(
        version(1).await,
        Err(SourceError::NotFound),
        "a destroyed version"
    );
    vault.put("kv/a/k", json!({"value": "v1 mount"}));
    assert_eq!(
        source.read_version(&path("kv/a/k"), 1).await.unwrap_err(),
        SourceError::NotFound,
        "KV v1 has no versions"
    );
}

#[tokio::test]
async fn policy_denials_are_denied_and_outages_are_unavailable() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    vault.put("secret/app-1/k", json!({"value": "1"}));
    vault.put("secret/app-2/k", json!({"value": "2"}));
    vault.set_policy(
        "app-1",
        &[
            ("secret/data/app-1/*", &["read"]),
            ("secret/metadata/app-1/*", &["list"]),
        ],
    );
    let token = vault.create_token(&["app-1"], None, true);
    let source = VaultSource::connect(&config(&vault.addr(), &token))
        .await
        .unwrap();
    assert_eq!(value(&source, "secret/app-1/k").await.unwrap(), "1");
    assert!(matches!(
        value(&source, "secret/app-2/k").await,
        Err(SourceError::Denied(_))
    ));

    vault.faults().set_sealed(true);
    let sealed = value(&source, "secret/app-1/k").await;
    assert!(
        matches!(&sealed, Err(SourceError::Unavailable(reason)) if reason.contains("503")),
        "{sealed:?}"
    );
    vault.faults().set_sealed(false);
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
    let source = VaultSource::connect(&config(&vault.addr(), vault.root_token()))
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

#[tokio::test]
async fn start_up_fails_fast_with_what_to_fix() {
    let vault = TestVault::start(ServerConfig::default()).await.unwrap();
    let rejected = VaultSource::connect(&config(&vault.addr(), "not-a-token")).await;
    assert!(matches!(rejected, Err(VaultSetupError::Rejected { .. })));
    let no_token = VaultSource::connect(&VaultConfig {
        addr: vec![vault.addr()],
        ..VaultConfig::default()
    })
    .await;
    assert!(matches!(no_token, Err(VaultSetupError::Credential(_))));

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    match VaultSource::connect(&config(&closed_addr, "x")).await {
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
    assert!(vault
        .requests()
        .iter()
        .all(|r| r.namespace.as_deref() == Some("ns1/")));
}

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
    let mut settings = config(&vault.addr(), vault.root_token());
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
    // Vault's own non-KV paths are never taken as KV v1, not even by a config override, and are never asked for.
    settings.kv_version.insert("cubbyhole/".into(), 1);
    let source = VaultSource::connect(&settings).await.unwrap();
    let before = vault.requests().len();
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
        vault.requests().len(),
        before,
        "refused without asking Vault"
    );
}

// ---- RustyVault ----

#[tokio::test]
async fn rusty_vault_kv_v1_and_token_auth() {
    let rvault = tokio::task::spawn_blocking(support::rvault::RustyVault::start)
        .await
        .unwrap();
    let source = VaultSource::connect(&config(&rvault.addr(), &rvault.root_token()))
        .await
        .unwrap();
    common_client_checks(&source, "secret", |p, v| rvault.put_kv1(p, &v)).await;
    let rejected = VaultSource::connect(&config(&rvault.addr(), "bogus-token")).await;
    assert!(
        matches!(rejected, Err(VaultSetupError::Rejected { .. })),
        "{:?}",
        rejected.err()
    );
}
