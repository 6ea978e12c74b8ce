//! The product's Vault client (`VaultSource`) against a real OpenBao server (`bao server -dev`,
//! `tests/support/openbao.rs`): KV v2 (latest, pinned, deleted and destroyed versions), KV v1, nested folders and
//! mounts, policy denials, AppRole, namespaces and a sealed server. Request counts come from OpenBao's own audit
//! log. OpenBao missing is a failure, not a skip: run scripts/setup-test-host.sh.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use docker_volume_libsecret::names::View;
use docker_volume_libsecret::source::vault::{VaultSetupError, VaultSource};
use docker_volume_libsecret::source::{SecretSource, SourceError};
use serde_json::json;
use support::openbao::{AuditRequest, OpenBao};
use support::vault_client::{
    approle_config, count, credential_file, path, paths, text, token_config, value,
};

const UI_MOUNTS: &str = "sys/internal/ui/mounts/";

async fn version(source: &VaultSource, p: &str, n: u64) -> Result<String, SourceError> {
    Ok(text(&source.read_version(&path(p), n).await?))
}

/// The mount-detection requests (`sys/internal/ui/mounts/<path>`), as `<namespace>:<path>`.
fn detections(requests: &[AuditRequest]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.path.starts_with(UI_MOUNTS))
        .map(|r| format!("{}:{}", r.namespace, &r.path[UI_MOUNTS.len()..]))
        .collect()
}

#[tokio::test]
async fn kv_v2_latest_pinned_deleted_and_destroyed_versions() {
    let bao = OpenBao::start();
    assert_eq!(
        bao.kv_put(None, "secret", "app/k", json!({"value": "one"})),
        Some(1)
    );
    assert_eq!(
        bao.kv_put(None, "secret", "app/k", json!({"value": "two"})),
        Some(2)
    );
    let mark = bao.audit_len();
    let source = VaultSource::connect(&token_config(&bao.addr(), bao.root_token()))
        .await
        .unwrap();

    assert_eq!(value(&source, "secret/app/k").await.unwrap(), "two");
    assert_eq!(version(&source, "secret/app/k", 1).await.unwrap(), "one");
    assert_eq!(version(&source, "secret/app/k", 2).await.unwrap(), "two");
    assert_eq!(
        version(&source, "secret/app/k", 3).await,
        Err(SourceError::NotFound),
        "a version that was never written"
    );

    bao.kv_delete(None, "secret", "app/k");
    assert_eq!(
        value(&source, "secret/app/k").await,
        Err(SourceError::NotFound),
        "the latest version is soft-deleted"
    );
    assert_eq!(
        version(&source, "secret/app/k", 2).await,
        Err(SourceError::NotFound),
        "a soft-deleted version"
    );
    assert_eq!(
        version(&source, "secret/app/k", 1).await.unwrap(),
        "one",
        "older versions survive a delete of the latest"
    );

    bao.kv_destroy(None, "secret", "app/k", &[1]);
    assert_eq!(
        version(&source, "secret/app/k", 1).await,
        Err(SourceError::NotFound),
        "a destroyed version"
    );
    assert_eq!(
        bao.kv_put(None, "secret", "app/gone", json!({"value": "x"})),
        Some(1)
    );
    bao.kv_destroy(None, "secret", "app/gone", &[1]);
    assert_eq!(
        value(&source, "secret/app/gone").await,
        Err(SourceError::NotFound),
        "the latest version destroyed (not deleted)"
    );
    assert_eq!(
        value(&source, "secret/app/missing").await,
        Err(SourceError::NotFound)
    );

    let requests = bao.audit_requests_since(mark);
    assert_eq!(
        detections(&requests),
        [":secret/app/k"],
        "the mount is detected once, at the first read, then memoized"
    );
    assert_eq!(
        count(&requests, "read", "secret/data/app/k"),
        8,
        "one KV v2 read per call, no retries: {:#?}",
        paths(&requests)
    );
    assert_eq!(count(&requests, "read", "auth/token/lookup-self"), 1);
}

#[tokio::test]
async fn kv_v1_mounts_nested_folders_and_multi_segment_mounts() {
    let bao = OpenBao::start();
    bao.enable_kv(None, "legacy", 1);
    assert_eq!(bao.kv_version(None, "legacy"), 1);
    bao.enable_kv(None, "team/kv", 2);
    assert_eq!(bao.kv_version(None, "team/kv"), 2);
    assert_eq!(
        bao.kv_put(
            None,
            "legacy",
            "app/db-password",
            json!({"value": "v1-secret"})
        ),
        None
    );
    bao.kv_put(None, "legacy", "app/team/db", json!({"value": "v1-nested"}));
    bao.kv_put(None, "secret", "app/team/db", json!({"value": "v2-nested"}));
    bao.kv_put(
        None,
        "team/kv",
        "app/db",
        json!({"user": "app", "password": "pw"}),
    );
    let mark = bao.audit_len();
    let source = VaultSource::connect(&token_config(&bao.addr(), bao.root_token()))
        .await
        .unwrap();

    assert_eq!(
        value(&source, "legacy/app/db-password").await.unwrap(),
        "v1-secret"
    );
    assert_eq!(
        value(&source, "legacy/app/team/db").await.unwrap(),
        "v1-nested"
    );
    assert!(source.is_folder(&path("legacy/app/team")).await.unwrap());
    assert!(!source.is_folder(&path("legacy/app/nothing")).await.unwrap());
    assert!(
        !source
            .is_folder(&path("legacy/app/db-password"))
            .await
            .unwrap(),
        "a secret is not a folder"
    );
    assert!(source.is_folder(&path("secret/app/team")).await.unwrap());
    assert!(!source.is_folder(&path("secret/app/nothing")).await.unwrap());
    assert_eq!(
        value(&source, "secret/app/team/db").await.unwrap(),
        "v2-nested"
    );
    let db = source.read(&path("team/kv/app/db")).await.unwrap();
    assert_eq!(
        db.render(&View::Field("user".into())).unwrap().as_slice(),
        b"app"
    );
    assert_eq!(
        value(&source, "legacy/app/missing").await,
        Err(SourceError::NotFound)
    );

    let requests = bao.audit_requests_since(mark);
    assert_eq!(
        detections(&requests),
        [
            ":legacy/app/db-password",
            ":secret/app/team",
            ":team/kv/app/db"
        ],
        "one detection per mount, then memoized: {:#?}",
        paths(&requests)
    );
    assert_eq!(count(&requests, "read", "legacy/app/db-password"), 1);
    assert_eq!(count(&requests, "list", "legacy/app/team/"), 1);
    assert_eq!(
        count(&requests, "list", "secret/metadata/app/team/"),
        1,
        "KV v2 folders are listed under metadata/: {:#?}",
        paths(&requests)
    );
    assert_eq!(
        count(&requests, "read", "team/kv/data/app/db"),
        1,
        "a two-segment mount is split off whole"
    );
    let kv_types: Vec<_> = requests
        .iter()
        .filter(|r| !r.path.starts_with("sys/") && !r.path.starts_with("auth/"))
        .filter_map(|r| r.mount_type.as_deref())
        .collect();
    assert!(
        !kv_types.is_empty() && kv_types.iter().all(|t| *t == "kv"),
        "{kv_types:?}"
    );

    // KV v1 has no versions: answered without asking the server.
    let mark = bao.audit_len();
    assert_eq!(
        source
            .read_version(&path("legacy/app/db-password"), 1)
            .await
            .unwrap_err(),
        SourceError::NotFound
    );
    assert_eq!(paths(&bao.audit_requests_since(mark)), Vec::<String>::new());

    // A path no mount owns: sys/internal/ui/mounts answers 403 even to the root token (so that mounts cannot be
    // probed), hence Denied rather than NotFound; nothing is memoized, so the next read asks again.
    for _ in 0..2 {
        assert!(matches!(
            value(&source, "nomount/app/k").await,
            Err(SourceError::Denied(_))
        ));
    }
    assert_eq!(
        bao.audit_count_since(mark, "sys/internal/ui/mounts/nomount/app/k"),
        2
    );
}

#[tokio::test]
async fn a_policy_limited_token_is_denied_outside_its_policy() {
    let bao = OpenBao::start();
    bao.kv_put(None, "secret", "app-1/k", json!({"value": "1"}));
    bao.kv_put(None, "secret", "app-2/k", json!({"value": "2"}));
    bao.put_policy(
        None,
        "app-1",
        r#"
path "secret/data/app-1/*" { capabilities = ["read"] }
path "secret/metadata/app-1/*" { capabilities = ["list"] }
"#,
    );
    let token = bao.create_token(None, &["app-1"], "1h");
    let mark = bao.audit_len();
    let source = VaultSource::connect(&token_config(&bao.addr(), &token))
        .await
        .unwrap();

    assert_eq!(value(&source, "secret/app-1/k").await.unwrap(), "1");
    match value(&source, "secret/app-2/k").await {
        Err(SourceError::Denied(reason)) => {
            assert!(reason.contains("403"), "{reason}");
            assert!(reason.contains("permission denied"), "{reason}");
        }
        other => panic!("expected Denied, got {other:?}"),
    }
    assert!(matches!(
        source.is_folder(&path("secret/app-2")).await,
        Err(SourceError::Denied(_))
    ));
    assert!(!source.is_folder(&path("secret/app-1/none")).await.unwrap());

    let requests = bao.audit_requests_since(mark);
    let denied: Vec<_> = requests
        .iter()
        .filter(|r| r.path == "secret/data/app-2/k")
        .collect();
    assert_eq!(
        denied.len(),
        1,
        "a live token's 403 is not retried: {:#?}",
        paths(&requests)
    );
    assert_eq!(denied[0].policies, ["app-1", "default"]);
    assert_eq!(denied[0].display_name.as_deref(), Some("token"));
    assert_eq!(denied[0].role_name, None);
    assert_eq!(detections(&requests), [":secret/app-1/k"]);
}

#[tokio::test]
async fn approle_logs_in_with_plain_and_wrapped_secret_ids() {
    let bao = OpenBao::start();
    bao.kv_put(None, "secret", "app/db", json!({"value": "approle-read"}));
    bao.put_policy(
        None,
        "app",
        r#"path "secret/data/app/*" { capabilities = ["read"] }"#,
    );
    let creds = bao.approle(None, "app", &["app"]);
    let dir = tempfile::tempdir().unwrap();
    let role_id_file = credential_file(dir.path(), "role-id", &creds.role_id);
    let secret_id_file = credential_file(dir.path(), "secret-id", &creds.secret_id);

    let mark = bao.audit_len();
    let source = VaultSource::connect(&approle_config(
        &bao.addr(),
        role_id_file.clone(),
        secret_id_file,
    ))
    .await
    .unwrap();
    assert_eq!(
        value(&source, "secret/app/db").await.unwrap(),
        "approle-read"
    );
    assert!(matches!(
        value(&source, "secret/other").await,
        Err(SourceError::Denied(_))
    ));
    let requests = bao.audit_requests_since(mark);
    assert_eq!(count(&requests, "update", "auth/approle/login"), 1);
    // The login reply holds the token's TTL and policies: no lookup-self is needed.
    assert_eq!(count(&requests, "read", "auth/token/lookup-self"), 0);
    let read = requests
        .iter()
        .find(|r| r.path == "secret/data/app/db")
        .unwrap_or_else(|| panic!("no read of secret/data/app/db: {:#?}", paths(&requests)));
    assert_eq!(read.display_name.as_deref(), Some("approle"));
    assert_eq!(read.role_name.as_deref(), Some("app"));
    assert_eq!(read.policies, ["app", "default"]);

    // The async operator client (tests/support/vault_admin.rs) against OpenBao: a second role, and a
    // response-wrapped secret ID that the driver unwraps once.
    let admin = bao.admin();
    let role_id = admin.approle("svc", &["app"], "1h", "service").await;
    let wrapping_token = admin.wrapped_secret_id("svc").await;
    let mut config = approle_config(
        &bao.addr(),
        credential_file(dir.path(), "svc-role-id", &role_id),
        credential_file(dir.path(), "wrapped", &wrapping_token),
    );
    config.approle.secret_id_wrapped = true;
    let mark = bao.audit_len();
    let source = VaultSource::connect(&config).await.unwrap();
    assert_eq!(
        value(&source, "secret/app/db").await.unwrap(),
        "approle-read"
    );
    let requests = bao.audit_requests_since(mark);
    assert_eq!(count(&requests, "update", "sys/wrapping/unwrap"), 1);
    assert_eq!(count(&requests, "update", "auth/approle/login"), 1);
    let read = requests
        .iter()
        .find(|r| r.path == "secret/data/app/db")
        .unwrap();
    assert_eq!(read.role_name.as_deref(), Some("svc"));

    // A second start with the same (spent) wrapping token fails and says what to do.
    let error = VaultSource::connect(&config)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("wrapping token works once"), "{error}");
    assert!(!error.contains(&wrapping_token), "{error}");

    // Wrong credentials fail at start, naming the method and never the secret.
    let bad = credential_file(dir.path(), "bad-secret-id", "not-a-secret-id");
    let config = approle_config(&bao.addr(), role_id_file, bad);
    match VaultSource::connect(&config).await {
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
async fn a_namespace_token_reads_its_namespace_and_child_namespaces() {
    let bao = OpenBao::start();
    bao.create_namespace("team");
    bao.create_namespace("team/dev");
    bao.enable_kv(Some("team"), "kv", 2);
    bao.enable_kv(Some("team/dev"), "kv", 1);
    bao.kv_put(Some("team"), "kv", "app/db", json!({"value": "in team"}));
    bao.kv_put(Some("team/dev"), "kv", "app/db", json!({"value": "in dev"}));
    bao.kv_put(None, "secret", "app/db", json!({"value": "in root"}));
    // A policy of team grants paths of its child dev with the child's name in front.
    bao.put_policy(
        Some("team"),
        "reader",
        r#"
path "kv/data/app/*" { capabilities = ["read"] }
path "dev/kv/app/*" { capabilities = ["read"] }
"#,
    );
    let token = bao.create_token(Some("team"), &["reader"], "1h");

    let mark = bao.audit_len();
    let mut config = token_config(&bao.addr(), &token);
    config.namespace = Some("team".to_owned());
    let team = VaultSource::connect(&config).await.unwrap();
    assert_eq!(value(&team, "kv/app/db").await.unwrap(), "in team");
    // The root namespace's secret/ is not visible in team: no mount owns the path there, so sys/internal/ui/mounts
    // answers 403 (see the KV v1 test) and the read is Denied.
    match value(&team, "secret/app/db").await {
        Err(SourceError::Denied(reason)) => {
            assert!(reason.contains("preflight capability check"), "{reason}")
        }
        other => panic!("expected Denied for a path no mount owns, got {other:?}"),
    }
    let dev = team.in_namespace("dev");
    assert_eq!(value(&dev, "kv/app/db").await.unwrap(), "in dev");

    let requests = bao.audit_requests_since(mark);
    // OpenBao serves a token's own auth/token/* calls in the token's namespace whatever the header says, so the
    // lookup's namespace shows nothing about the client; the reads below do.
    assert_eq!(count(&requests, "read", "auth/token/lookup-self"), 1);
    assert_eq!(
        detections(&requests),
        ["team:kv/app/db", "team:secret/app/db", "team/dev:kv/app/db"],
        "one detection per mount and namespace: {:#?}",
        paths(&requests)
    );
    let reads: Vec<_> = requests
        .iter()
        .filter(|r| r.path == "kv/data/app/db" || r.path == "kv/app/db")
        .map(|r| format!("{}:{} {:?}", r.namespace, r.path, r.policies))
        .collect();
    assert_eq!(
        reads,
        [
            r#"team:kv/data/app/db ["default", "reader"]"#,
            r#"team/dev:kv/app/db ["default", "reader"]"#
        ]
    );
}

#[tokio::test]
async fn a_sealed_server_is_unavailable_until_unsealed() {
    let bao = OpenBao::start();
    bao.kv_put(None, "secret", "app/k", json!({"value": "before"}));
    let source = VaultSource::connect(&token_config(&bao.addr(), bao.root_token()))
        .await
        .unwrap();
    assert_eq!(value(&source, "secret/app/k").await.unwrap(), "before");

    bao.seal();
    match value(&source, "secret/app/k").await {
        Err(SourceError::Unavailable(reason)) => assert!(reason.contains("503"), "{reason}"),
        other => panic!("expected Unavailable from a sealed server, got {other:?}"),
    }
    assert!(matches!(
        source.is_folder(&path("secret/app")).await,
        Err(SourceError::Unavailable(_))
    ));
    // A new start against a sealed server fails fast instead of hanging.
    let started = std::time::Instant::now();
    let error = VaultSource::connect(&token_config(&bao.addr(), bao.root_token()))
        .await
        .err()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "{error}");
    assert!(
        matches!(&error, VaultSetupError::Unreachable { reason, .. } if reason.contains("503")),
        "{error}"
    );

    bao.unseal();
    bao.kv_put(None, "secret", "app/k", json!({"value": "after"}));
    assert_eq!(
        value(&source, "secret/app/k").await.unwrap(),
        "after",
        "the same token works again once unsealed"
    );
}
