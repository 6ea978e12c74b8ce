//! The `serve-mount` mode a transient mount unit runs, as systemd starts it (the same argv), against real OpenBao:
//! a unit over a parent volume logs in with the credentials of each rule below it and decides every path, and a
//! unit that stops revokes the tokens it logged in with.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::driver::BINARY;
use support::openbao::OpenBao;
use support::root_only_file;

/// A running `serve-mount`; SIGTERM and wait on drop.
struct MountUnit {
    child: Child,
    mountpoint: PathBuf,
    log: PathBuf,
}

impl MountUnit {
    fn start(config: &Path, volume: &str, mountpoint: &Path, log: &Path) -> MountUnit {
        let child = Command::new(BINARY)
            .arg("--config")
            .arg(config)
            .args(["serve-mount", "--volume", volume, "--mountpoint"])
            .arg(mountpoint)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .unwrap();
        let mut unit = MountUnit {
            child,
            mountpoint: mountpoint.to_owned(),
            log: log.to_owned(),
        };
        let mounted = support::wait_until("the unit's FUSE mount", Duration::from_secs(20), || {
            if let Ok(Some(status)) = unit.child.try_wait() {
                panic!("serve-mount exited with {status}:\n{}", unit.log());
            }
            std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .contains(&mountpoint.display().to_string())
        });
        assert!(mounted < Duration::from_secs(20));
        unit
    }

    fn log(&self) -> String {
        let out = std::fs::read_to_string(&self.log).unwrap_or_default();
        let err = std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default();
        format!("{out}{err}")
    }

    /// SIGTERM, as systemd stops a unit; whether it exited successfully.
    fn stop(&mut self) -> bool {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }
}

impl Drop for MountUnit {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop();
        }
        let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Live tokens OpenBao holds (by accessor), as root sees them.
fn live_tokens(bao: &OpenBao) -> usize {
    let reply = bao.call(
        "LIST",
        "auth/token/accessors",
        None,
        serde_json::Value::Null,
    );
    reply["data"]["keys"].as_array().map_or(0, Vec::len)
}

#[test]
fn a_unit_over_a_parent_volume_reads_each_path_with_its_rules_login_and_revokes_it_when_it_stops() {
    support::require_fuse();
    let bao = OpenBao::start();
    bao.kv_put(
        None,
        "secret",
        "app-1/db",
        json!({"value": "app-1-password"}),
    );
    bao.kv_put(
        None,
        "secret",
        "admin/root",
        json!({"value": "root-password"}),
    );
    bao.kv_put(None, "secret", "shared/x", json!({"value": "shared"}));
    bao.put_policy(
        None,
        "app-1",
        r#"
        path "secret/data/app-1/*" { capabilities = ["read"] }
        path "secret/metadata/app-1/*" { capabilities = ["list"] }
        "#,
    );
    bao.put_policy(
        None,
        "shared",
        r#"path "secret/*" { capabilities = ["read", "list"] }"#,
    );
    let app1 = bao.approle(None, "app-1", &["app-1"]);
    let shared = bao.approle(None, "shared", &["shared"]);

    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, value: &str| root_only_file(dir.path(), name, value);
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[vault]
addr = "{addr}"
auth = "approle"
timeout = "5s"
[vault.approle]
role_id_file = "{shared_role}"
secret_id_file = "{shared_secret}"

[[rules]]
path = "secret/admin"
allow = false

[[rules]]
path = "secret/app-1"
auth = "approle"
approle = {{ role_id_file = "{app_role}", secret_id_file = "{app_secret}" }}

[[rules]]
path = "secret"
"#,
            addr = bao.addr(),
            shared_role = file("shared.role-id", &shared.role_id).display(),
            shared_secret = file("shared.secret-id", &shared.secret_id).display(),
            app_role = file("app-1.role-id", &app1.role_id).display(),
            app_secret = file("app-1.secret-id", &app1.secret_id).display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let tokens_before = live_tokens(&bao);
    let mark = bao.audit_len();
    let mountpoint = dir.path().join("mnt");
    let mut unit = MountUnit::start(&config, "secret", &mountpoint, &dir.path().join("unit.log"));
    // Both rules below the volume logged in: [vault]'s AppRole and app-1's.
    let logins = bao.audit_count_since(mark, "auth/approle/login");
    assert_eq!(
        logins,
        2,
        "one login per rule the volume spans:\n{}",
        unit.log()
    );
    assert_eq!(live_tokens(&bao), tokens_before + 2);

    assert_eq!(
        std::fs::read_to_string(mountpoint.join("app-1/db")).unwrap(),
        "app-1-password"
    );
    assert_eq!(
        std::fs::read_to_string(mountpoint.join("shared/x")).unwrap(),
        "shared"
    );
    let denied = std::fs::read_to_string(mountpoint.join("admin/root")).unwrap_err();
    assert_eq!(denied.raw_os_error(), Some(nix::libc::EACCES));
    let app_reads: Vec<_> = bao
        .audit_requests_since(mark)
        .into_iter()
        .filter(|r| r.path == "secret/data/app-1/db")
        .collect();
    assert!(
        !app_reads.is_empty()
            && app_reads
                .iter()
                .all(|r| r.role_name.as_deref() == Some("app-1")),
        "{app_reads:?}"
    );
    assert!(bao
        .audit_requests_since(mark)
        .iter()
        .all(|r| !r.path.starts_with("secret/data/admin")));

    // Stopping the unit revokes both tokens: none is left behind in OpenBao.
    assert!(
        unit.stop(),
        "serve-mount did not exit cleanly:\n{}",
        unit.log()
    );
    assert_eq!(
        bao.audit_count_since(mark, "auth/token/revoke-self"),
        2,
        "{}",
        unit.log()
    );
    assert_eq!(
        live_tokens(&bao),
        tokens_before,
        "tokens left after the unit stopped"
    );
}

/// OpenBao with `secret/app/x`, and a unit serving `secret/app` at `<dir>/mnt` with an operator's token file.
fn unit_with_an_operators_token() -> (OpenBao, String, tempfile::TempDir, MountUnit) {
    support::require_fuse();
    let bao = OpenBao::start();
    bao.kv_put(None, "secret", "app/x", json!({"value": "v"}));
    let token = bao.create_token(None, &["root"], "1h");
    let dir = tempfile::tempdir().unwrap();
    let token_file = root_only_file(dir.path(), "token", &token);
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[vault]\naddr = \"{}\"\ntoken_file = \"{}\"\n",
            bao.addr(),
            token_file.display()
        ),
    )
    .unwrap();
    let unit = MountUnit::start(
        &config,
        "secret/app",
        &dir.path().join("mnt"),
        &dir.path().join("unit.log"),
    );
    (bao, token, dir, unit)
}

#[test]
fn a_unit_with_an_operators_token_file_never_revokes_it() {
    let (bao, token, dir, mut unit) = unit_with_an_operators_token();
    let mountpoint = dir.path().join("mnt");
    assert_eq!(std::fs::read_to_string(mountpoint.join("x")).unwrap(), "v");
    let mark = bao.audit_len();
    assert!(unit.stop(), "{}", unit.log());
    assert_eq!(bao.audit_count_since(mark, "auth/token/revoke-self"), 0);
    let (status, _) = bao.request("GET", "auth/token/lookup-self", None, Some(&token), None);
    assert_eq!(status, 200, "the operator's token still works");
}

#[test]
fn a_unit_stopped_while_a_container_holds_its_mount_still_ends() {
    let (_bao, _, dir, mut unit) = unit_with_an_operators_token();
    let mountpoint = dir.path().join("mnt");
    // An open file keeps the filesystem busy, as a running container does.
    let held = std::fs::File::open(mountpoint.join("x")).unwrap();
    let pid = nix::unistd::Pid::from_raw(unit.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    support::wait_until(
        "serve-mount to exit while its mount is held",
        Duration::from_secs(30),
        || unit.child.try_wait().unwrap().is_some(),
    );
    assert!(
        unit.log().contains("still in use by a container"),
        "{}",
        unit.log()
    );
    drop(held);
}
