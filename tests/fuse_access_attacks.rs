//! Least privilege at every read, tried as an attacker would: real OpenBao, the real driver binary, real FUSE mounts.
//!
//! Each row of the attack table names what a container (or whoever may run `docker volume create`) tries, and
//! asserts the refusal, the errno and the driver's audit line. OpenBao's own audit log shows which token read each
//! path: the rule's AppRole for its prefix, never the broad `[vault]` token, and nothing at all for a refused path.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde_json::json;
use support::driver::Driver;
use support::openbao::{AuditRequest, OpenBao};
use support::plugin_client::create_and_mount;
use support::root_only_file;

fn mount(socket: &Path, volume: &str, options: serde_json::Value) -> Result<PathBuf, String> {
    create_and_mount(socket, volume, options, "attacker")
}

/// The errno of reading `name` below `mountpoint`, or its content.
fn read(mountpoint: &Path, name: &str) -> Result<String, i32> {
    std::fs::read_to_string(mountpoint.join(name)).map_err(|e| {
        assert_ne!(e.kind(), ErrorKind::Other, "{name}: {e}");
        e.raw_os_error().unwrap()
    })
}

/// The driver's audit lines for `key` with `result`.
fn audit_lines<'a>(log: &'a str, key: &str, result: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| {
            l.contains("secret access")
                && l.contains(&format!("audit_key={key} "))
                && l.contains(&format!("audit_result={result}"))
        })
        .collect()
}

/// Which tokens OpenBao saw reading KV data paths that start with `prefix` (after `mark`).
fn readers(bao: &OpenBao, mark: usize, prefix: &str) -> Vec<AuditRequest> {
    bao.audit_requests_since(mark)
        .into_iter()
        .filter(|r| r.path.starts_with(prefix))
        .collect()
}

struct Setup {
    bao: OpenBao,
    driver: Driver,
    socket: PathBuf,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

/// OpenBao with the secrets of the attack, a broad `[vault]` token, app-1's own AppRole, a namespace `team-a`, a
/// database engine, and a driver whose rules a careless operator wrote: a deny rule, a rule with its own AppRole,
/// a glob deny, a namespaced rule, and a final `**` that allows everything else.
fn setup() -> Setup {
    support::require_fuse();
    let bao = OpenBao::start();
    for (path, data) in [
        ("admin/root", json!({"value": "root-password"})),
        (
            "app-1/db",
            json!({"value": "app-1-password", "user": "app1"}),
        ),
        ("team-x/db", json!({"value": "team-x-db-password"})),
        ("team-x/ok", json!({"value": "team-x-ok"})),
        ("shared/x", json!({"value": "shared-value"})),
    ] {
        bao.kv_put(None, "secret", path, data);
    }
    bao.create_namespace("team-a");
    bao.enable_kv(Some("team-a"), "secret", 2);
    bao.kv_put(
        Some("team-a"),
        "secret",
        "app-1/db",
        json!({"value": "team-a-password"}),
    );
    bao.create_namespace("finance");
    bao.enable_kv(Some("finance"), "secret", 2);
    bao.kv_put(
        Some("finance"),
        "secret",
        "app-1/db",
        json!({"value": "finance-password"}),
    );
    // A KV mount and a database engine side by side under one parent path, and a database mount of its own.
    bao.enable_kv(None, "apps/kv", 2);
    bao.kv_put(None, "apps/kv", "x", json!({"value": "apps-kv-value"}));
    bao.enable_secrets_engine(None, "apps/db", "database", serde_json::Value::Null);
    bao.enable_secrets_engine(None, "database", "database", serde_json::Value::Null);
    // The broad token can read everything the attack aims at, including child namespaces.
    bao.put_policy(
        None,
        "broad",
        r#"
        path "secret/*" { capabilities = ["read", "list"] }
        path "apps/*" { capabilities = ["read", "list"] }
        path "database/*" { capabilities = ["read", "list"] }
        path "identity/*" { capabilities = ["read", "list"] }
        path "sys/*" { capabilities = ["read", "list"] }
        path "team-a/secret/*" { capabilities = ["read", "list"] }
        path "finance/secret/*" { capabilities = ["read", "list"] }
        "#,
    );
    bao.put_policy(
        None,
        "app-1",
        r#"
        path "secret/data/app-1/*" { capabilities = ["read"] }
        path "secret/metadata/app-1/*" { capabilities = ["list"] }
        "#,
    );
    let broad = bao.create_token(None, &["broad"], "1h");
    // What the driver token keeps in its own cubbyhole must never reach a container.
    bao.request(
        "POST",
        "cubbyhole/private",
        None,
        Some(&broad),
        Some(&json!({"value": "driver-cubbyhole"})),
    );
    let app1 = bao.approle(None, "app-1", &["app-1"]);

    let dir = tempfile::tempdir().unwrap();
    let token_file = root_only_file(dir.path(), "token", &broad);
    let role_id = root_only_file(dir.path(), "app-1.role-id", &app1.role_id);
    let secret_id = root_only_file(dir.path(), "app-1.secret-id", &app1.secret_id);
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
backend = "vault"
mount_mode = "in-process"
state_dir = "{state}"
mount_root = "{mounts}"
[vault]
addr = "{addr}"
token_file = "{token}"
timeout = "5s"

[[rules]]
path = "secret/admin"
allow = false

[[rules]]
path = "secret/app-1"
auth = "approle"
approle = {{ role_id_file = "{role_id}", secret_id_file = "{secret_id}" }}

[[rules]]
path = "secret/team-*/db"
allow = false

[[rules]]
path = "secret/app-1"
namespace = "team-a"

[[rules]]
path = "**"
"#,
            state = dir.path().join("state").display(),
            mounts = dir.path().join("mounts").display(),
            addr = bao.addr(),
            token = token_file.display(),
            role_id = role_id.display(),
            secret_id = secret_id.display(),
        ),
    )
    .unwrap();
    let socket = dir.path().join("plugin.sock");
    let driver = Driver::start_with_config(
        &config,
        &["--log-level", "info"],
        &socket,
        &dir.path().join("driver.log"),
        &[],
    );
    Setup {
        bao,
        driver,
        socket,
        config,
        _dir: dir,
    }
}

#[test]
fn a_parent_volume_neither_escapes_a_deny_rule_nor_borrows_broader_credentials() {
    let s = setup();
    let mark = s.bao.audit_len();

    // Row 1: the denied path as a volume of its own is refused at Create, naming the rule and the file.
    let refused = mount(&s.socket, "secret/admin", json!({})).unwrap_err();
    assert!(
        refused.contains("rules[0]") && refused.contains(&s.config.display().to_string()),
        "{refused}"
    );

    // Row 2: the same secret through the parent volume: EACCES, audited with the rule, never asked of OpenBao.
    let parent = mount(&s.socket, "secret", json!({})).unwrap();
    assert_eq!(read(&parent, "admin/root"), Err(nix::libc::EACCES));
    assert_eq!(read(&parent, "admin"), Err(nix::libc::EACCES));
    for name in ["admin#", "admin@1", "admin#value"] {
        assert_eq!(read(&parent, name), Err(nix::libc::EACCES), "{name}");
    }
    let log = s.driver.log();
    let denied = audit_lines(&log, "secret/admin", "denied");
    assert!(
        !denied.is_empty() && denied.iter().all(|l| l.contains("rules[0]")),
        "the audit names the deny rule:\n{log}"
    );
    assert!(
        readers(&s.bao, mark, "secret/data/admin").is_empty()
            && readers(&s.bao, mark, "secret/metadata/admin").is_empty(),
        "a refused path never reaches Vault: {:?}",
        readers(&s.bao, mark, "secret/data/admin")
    );

    // Row 3: app-1's secret through the parent is read with app-1's own AppRole, as through its own volume.
    assert_eq!(read(&parent, "app-1/db").unwrap(), "app-1-password");
    assert_eq!(read(&parent, "app-1/db#user").unwrap(), "app1");
    let own = mount(&s.socket, "secret/app-1", json!({})).unwrap();
    assert_eq!(read(&own, "db").unwrap(), "app-1-password");
    let app_reads = readers(&s.bao, mark, "secret/data/app-1");
    assert!(!app_reads.is_empty());
    for request in &app_reads {
        assert_eq!(
            request.role_name.as_deref(),
            Some("app-1"),
            "{request:?} was not read with app-1's AppRole"
        );
        assert!(
            !request.policies.iter().any(|p| p == "broad"),
            "the broad token read app-1's secret: {request:?}"
        );
    }
    // Everything else below the parent is read with the broad [vault] token.
    assert_eq!(read(&parent, "shared/x").unwrap(), "shared-value");
    let shared = readers(&s.bao, mark, "secret/data/shared/x");
    assert!(
        !shared.is_empty()
            && shared
                .iter()
                .all(|r| r.policies.iter().any(|p| p == "broad")),
        "{shared:?}"
    );
}

#[test]
fn glob_rules_give_a_path_the_same_answer_as_its_own_volume_or_through_a_parent() {
    let s = setup();
    let mark = s.bao.audit_len();
    // Row 4: the glob deny, three ways in.
    let refused = mount(&s.socket, "secret/team-x/db", json!({})).unwrap_err();
    assert!(refused.contains("rules[2]"), "{refused}");
    let team = mount(&s.socket, "secret/team-x", json!({})).unwrap();
    assert_eq!(read(&team, "db"), Err(nix::libc::EACCES));
    assert_eq!(read(&team, "db#value"), Err(nix::libc::EACCES));
    assert_eq!(read(&team, "ok").unwrap(), "team-x-ok");
    let parent = mount(&s.socket, "secret", json!({})).unwrap();
    assert_eq!(read(&parent, "team-x/db"), Err(nix::libc::EACCES));
    assert_eq!(read(&parent, "team-x/ok").unwrap(), "team-x-ok");
    let log = s.driver.log();
    let denied = audit_lines(&log, "secret/team-x/db", "denied");
    assert!(
        denied.len() >= 2 && denied.iter().all(|l| l.contains("rules[2]")),
        "{log}"
    );
    assert!(readers(&s.bao, mark, "secret/data/team-x/db").is_empty());
}

#[test]
fn namespaces_are_decided_by_the_rules_whether_named_as_an_option_or_in_the_path() {
    let s = setup();
    let mark = s.bao.audit_len();
    // Row 5: a namespace no rule names is refused, though a rule allows the same path in vault.namespace.
    let refused = mount(&s.socket, "secret/app-1", json!({"namespace": "finance"})).unwrap_err();
    assert!(
        refused.contains("finance") && refused.contains("matches no access rule"),
        "{refused}"
    );
    // The namespace a rule names is served, with that rule's credentials.
    let team = mount(&s.socket, "secret/app-1", json!({"namespace": "team-a"})).unwrap();
    assert_eq!(read(&team, "db").unwrap(), "team-a-password");
    // Row 6: a namespace written into the path is refused at Create, even under the careless `**` rule.
    let refused = mount(&s.socket, "finance/secret/app-1", json!({})).unwrap_err();
    assert!(
        refused.contains("namespace") && refused.contains("finance"),
        "{refused}"
    );
    let refused = mount(&s.socket, "team-a/secret/app-1", json!({})).unwrap_err();
    assert!(refused.contains("namespace"), "{refused}");
    let finance: Vec<_> = s
        .bao
        .audit_requests_since(mark)
        .into_iter()
        .filter(|r| {
            r.path.contains("data/app-1")
                && (r.namespace == "finance" || r.path.starts_with("finance/"))
        })
        .collect();
    assert!(finance.is_empty(), "finance's secret was read: {finance:?}");
}

#[test]
fn only_kv_engines_are_served_whatever_the_rules_allow() {
    let s = setup();
    let mark = s.bao.audit_len();
    // Row 7: Vault's own paths and other engines as volumes: refused at Create, naming the engine.
    for (volume, engine) in [
        ("cubbyhole", "cubbyhole"),
        ("sys", "sys"),
        ("auth/token", "auth"),
        ("identity", "identity"),
        ("database", "database"),
        ("database/creds/app", "database"),
    ] {
        let refused = mount(&s.socket, volume, json!({})).unwrap_err();
        assert!(
            refused.contains(engine) && refused.contains("not") && refused.contains("KV"),
            "{volume}: {refused}"
        );
    }
    // Row 8: a parent that is no mount, over a KV engine and a database engine: each read decides its engine.
    let apps = mount(&s.socket, "apps", json!({})).unwrap();
    assert_eq!(read(&apps, "kv/x").unwrap(), "apps-kv-value");
    assert_eq!(read(&apps, "db"), Err(nix::libc::EACCES));
    assert_eq!(read(&apps, "db/creds/app"), Err(nix::libc::EACCES));
    let log = s.driver.log();
    let denied = audit_lines(&log, "apps/db", "denied");
    assert!(
        !denied.is_empty() && denied.iter().all(|l| l.contains("database")),
        "{log}"
    );
    // Nothing but mount detection ever reached the refused engines: no cubbyhole read, no credential minted.
    let touched: Vec<_> = s
        .bao
        .audit_requests_since(mark)
        .into_iter()
        .filter(|r| {
            ["cubbyhole", "database", "apps/db", "identity", "auth/token"]
                .iter()
                .any(|p| r.path.starts_with(p))
        })
        .collect();
    assert!(touched.is_empty(), "a refused engine was read: {touched:?}");
}
