//! Access rules with per-rule credentials, through the real driver binary (in-process FUSE mounts) and the real
//! Vault client against real OpenBao (tests/support/openbao.rs), which enforces its own ACL policies. Vault's
//! refusals and the AppRole logins are counted in OpenBao's audit log. Nothing here needs the fault server.
//!
//! Two rules, two AppRoles, two policies: each volume reads with a token whose policy covers only its prefix. A path
//! no rule allows is refused at Create and Mount by the rules; a path a rule allows but its AppRole's policy does not
//! cover is refused by Vault itself. The driver's log says which.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::{Path, PathBuf};

use serde_json::json;
use support::driver::Driver;
use support::openbao::OpenBao;
use support::plugin_client::{call, create_and_mount, err_of};
use support::root_only_file;

fn mount(socket: &Path, volume: &str) -> Result<PathBuf, String> {
    create_and_mount(socket, volume, json!({}), "c1")
}

fn unmount(socket: &Path, volume: &str) {
    let (_, reply) = call(
        socket,
        "/VolumeDriver.Unmount",
        json!({"Name": volume, "ID": "c1"}),
    );
    assert_eq!(err_of(&reply), "");
}

#[test]
fn each_rule_reads_with_its_own_approle_and_refusals_say_whether_the_rule_or_vault_refused() {
    support::require_fuse();
    let vault = OpenBao::start();
    vault.kv_put(
        None,
        "secret",
        "team-a/app/db-password",
        json!({"value": "a-password"}),
    );
    vault.kv_put(
        None,
        "secret",
        "team-b/app/db-password",
        json!({"value": "b-password"}),
    );
    for team in ["team-a", "team-b"] {
        vault.put_policy(
            None,
            team,
            &format!(
                r#"path "secret/data/{team}/*" {{ capabilities = ["read"] }}
path "secret/metadata/{team}/*" {{ capabilities = ["list"] }}
"#
            ),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for team in ["team-a", "team-b"] {
        let credentials = vault.approle(None, team, &[team]);
        files.push((
            root_only_file(dir.path(), &format!("{team}-role-id"), &credentials.role_id),
            root_only_file(
                dir.path(),
                &format!("{team}-secret-id"),
                &credentials.secret_id,
            ),
        ));
    }
    // Rule 2 is a deliberate mistake: it lets team A's AppRole serve a path under team B, which A's policy lacks.
    let config = format!(
        r#"
backend = "vault"
state_dir = "{state}"
mount_root = "{mounts}"
[vault]
addr = "{addr}"
timeout = "2s"

[[rules]]
path = "secret/team-a"
auth = "approle"
approle = {{ role_id_file = "{a_role}", secret_id_file = "{a_secret}" }}

[[rules]]
path = "secret/team-b/legacy"
auth = "approle"
approle = {{ role_id_file = "{a_role}", secret_id_file = "{a_secret}" }}

[[rules]]
path = "secret/team-b/*"
auth = "approle"
approle = {{ role_id_file = "{b_role}", secret_id_file = "{b_secret}" }}
"#,
        state = dir.path().join("state").display(),
        mounts = dir.path().join("mounts").display(),
        addr = vault.addr(),
        a_role = files[0].0.display(),
        a_secret = files[0].1.display(),
        b_role = files[1].0.display(),
        b_secret = files[1].1.display(),
    );
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, config).unwrap();
    let socket = dir.path().join("plugin.sock");
    let log = dir.path().join("driver.log");
    let mark = vault.audit_len();
    let mut driver =
        Driver::start_with_config(&config_path, &["--log-level", "info"], &socket, &log, &[]);

    // Rule A: team A's keys, with team A's token.
    let a = mount(&socket, "secret/team-a/app").unwrap();
    assert_eq!(
        std::fs::read_to_string(a.join("db-password")).unwrap(),
        "a-password"
    );
    // Rule B, its glob and its own AppRole.
    let b = mount(&socket, "secret/team-b/app").unwrap();
    assert_eq!(
        std::fs::read_to_string(b.join("db-password")).unwrap(),
        "b-password"
    );

    // No rule allows the parent of both: refused by the rules at Create, naming the rule set.
    let refused = mount(&socket, "secret").unwrap_err();
    assert!(
        refused.contains("matches no access rule") && refused.contains("[[rules]]"),
        "{refused}"
    );
    assert!(
        refused.contains(&config_path.display().to_string()),
        "{refused}"
    );

    // Team B's keys through team A's credentials (the mistaken rule): Vault's own policy refuses (EACCES).
    vault.kv_put(
        None,
        "secret",
        "team-b/legacy/db-password",
        json!({"value": "b-legacy"}),
    );
    let through_a = mount(&socket, "secret/team-b/legacy").unwrap();
    let error = std::fs::read_to_string(through_a.join("db-password")).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(nix::libc::EACCES));
    let refusals = vault.audit_errors_since(mark);
    assert!(
        refusals.iter().any(
            |e| e.request.path == "secret/data/team-b/legacy/db-password"
                && e.request.role_name.as_deref() == Some("team-a")
                && e.error.contains("permission denied")
        ),
        "{refusals:?}"
    );

    for volume in [
        "secret/team-a/app",
        "secret/team-b/app",
        "secret/team-b/legacy",
    ] {
        unmount(&socket, volume);
    }
    let text = driver.log();
    assert!(text.contains("refused by the access rules: "), "{text}");
    assert!(
        text.lines().any(|l| l.contains("secret access")
            && l.contains("audit_key=secret/team-b/legacy/db-password")
            && l.contains("audit_result=denied")),
        "{text}"
    );
    assert!(
        text.contains("permission denied"),
        "Vault's refusal is logged:\n{text}"
    );
    let logins = vault.audit_count_since(mark, "auth/approle/login");
    assert_eq!(logins, 3, "one login per rule with its own credentials");
    assert!(driver.stop());
}

#[test]
fn without_rules_every_path_is_allowed_and_a_warning_is_logged() {
    support::require_fuse();
    let dir = tempfile::tempdir().unwrap();
    let secrets = root_only_file(dir.path(), "secrets.toml", "\"secret/x/k\" = \"v\"\n");
    let socket = dir.path().join("plugin.sock");
    let mut driver = Driver::start(
        &[
            "--backend",
            "file",
            "--secrets-file",
            secrets.to_str().unwrap(),
            "--state-dir",
            dir.path().join("state").to_str().unwrap(),
            "-r",
            dir.path().join("mounts").to_str().unwrap(),
        ],
        &socket,
        &dir.path().join("log"),
    );
    let mountpoint = mount(&socket, "secret/x").unwrap();
    assert_eq!(std::fs::read_to_string(mountpoint.join("k")).unwrap(), "v");
    unmount(&socket, "secret/x");
    assert!(driver.log().contains("no access rules"), "{}", driver.log());
    assert!(driver.stop());
}
