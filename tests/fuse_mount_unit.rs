//! The `serve-mount` mode a transient mount unit runs, as systemd starts it (the same argv), against real OpenBao
//! and a real driver (in-process mounts, its token broker on a socket in the test's directory): a unit borrows the
//! driver's token of each rule below its volume and never logs in, reads a credential file, renews or revokes; it
//! mounts without a driver (EIO until a token is lent), keeps reading while the driver is down, and a token revoked
//! behind the driver's back is replaced when a unit finds it dead.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use docker_volume_libsecret::mount::broker::bind_root_only;
use docker_volume_libsecret::mount::systemd::unit_name;
use docker_volume_libsecret::status::control::{self, Control, Controlled, UnitReport};
use docker_volume_libsecret::status::DriverStatus;
use serde_json::json;
use support::driver::{Driver, BINARY};
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
        Self::start_with(config, volume, &[], mountpoint, log)
    }

    /// With `extra` arguments after the mountpoint (`--option`, `--lease-holder`), as the driver gives them.
    fn start_with(
        config: &Path,
        volume: &str,
        extra: &[&str],
        mountpoint: &Path,
        log: &Path,
    ) -> MountUnit {
        let child = Command::new(BINARY)
            .arg("--config")
            .arg(config)
            .args(["serve-mount", "--volume", volume, "--mountpoint"])
            .arg(mountpoint)
            .args(extra)
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

/// A test directory with a config (in-process mounts, the broker socket inside the directory) and its driver.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    /// `config` is the `[vault]`/`[[rules]]` part; the rest is added. Nothing is served from memory (no cache to
    /// speak of, no stale values, no folder index), so every read of a new key needs a live token.
    fn new(dir: tempfile::TempDir, vault_and_rules: &str) -> Setup {
        let config = dir.path().join("config.toml");
        let broker = dir.path().join("run/broker.sock");
        std::fs::write(
            &config,
            format!(
                "mount_mode = \"in-process\"\nbroker_socket = \"{}\"\nstate_dir = \"{}\"\nmount_root = \"{}\"\n\
                 cache_ttl = \"1s\"\nstale_ttl = \"0s\"\nnegative_ttl = \"0s\"\n{vault_and_rules}",
                broker.display(),
                dir.path().join("state").display(),
                dir.path().join("mounts").display(),
            ),
        )
        .unwrap();
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        Setup { dir, config }
    }

    fn driver(&self, log: &str) -> Driver {
        Driver::start_with_config(
            &self.config,
            &[],
            &self.dir.path().join("plugin.sock"),
            &self.dir.path().join(log),
            &[],
        )
    }

    fn unit(&self, volume: &str, name: &str) -> MountUnit {
        MountUnit::start(
            &self.config,
            volume,
            &self.dir.path().join(name),
            &self.dir.path().join(format!("{name}.log")),
        )
    }
}

/// OpenBao with `secret/app-1/db`, `secret/admin/root` and `secret/shared/x`; AppRoles `app-1` (its paths only)
/// and `shared` (all of secret/); a config whose [vault] logs in as `shared`, rule 0 refuses secret/admin and rule
/// 1 gives secret/app-1 its own AppRole.
fn two_roles() -> (OpenBao, Setup) {
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
    let rules = format!(
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
    );
    let setup = Setup::new(dir, &rules);
    (bao, setup)
}

fn read(path: &Path) -> std::io::Result<String> {
    std::fs::read_to_string(path)
}

#[test]
fn units_borrow_each_rules_token_from_the_driver_and_never_log_in_read_credentials_or_revoke() {
    let (bao, setup) = two_roles();
    let tokens_before = live_tokens(&bao);
    let mark = bao.audit_len();
    let driver = setup.driver("driver.log");
    // The driver logs in once per set of credentials: [vault]'s AppRole and rule 1's.
    assert_eq!(
        bao.audit_count_since(mark, "auth/approle/login"),
        2,
        "{}",
        driver.log()
    );
    // Only the driver reads credential files: without them units still read.
    for name in [
        "shared.role-id",
        "shared.secret-id",
        "app-1.role-id",
        "app-1.secret-id",
    ] {
        std::fs::remove_file(setup.dir.path().join(name)).unwrap();
    }
    let mut parent = setup.unit("secret", "parent");
    let child = setup.unit("secret/app-1", "child");
    let mnt = setup.dir.path().join("parent");
    assert_eq!(
        read(&mnt.join("app-1/db")).unwrap(),
        "app-1-password",
        "{}",
        parent.log()
    );
    assert_eq!(read(&mnt.join("shared/x")).unwrap(), "shared");
    assert_eq!(
        read(&setup.dir.path().join("child/db")).unwrap(),
        "app-1-password",
        "{}",
        child.log()
    );
    let denied = read(&mnt.join("admin/root")).unwrap_err();
    assert_eq!(denied.raw_os_error(), Some(nix::libc::EACCES));
    let requests = bao.audit_requests_since(mark);
    // Each path was read with its own rule's token (the driver's logins, lent).
    let app_reads: Vec<_> = requests
        .iter()
        .filter(|r| r.path == "secret/data/app-1/db")
        .collect();
    assert!(
        !app_reads.is_empty()
            && app_reads
                .iter()
                .all(|r| r.role_name.as_deref() == Some("app-1")),
        "{app_reads:?}"
    );
    assert!(requests
        .iter()
        .filter(|r| r.path == "secret/data/shared/x")
        .all(|r| r.role_name.as_deref() == Some("shared")));
    assert!(requests
        .iter()
        .all(|r| !r.path.starts_with("secret/data/admin")));
    // Two units, three scopes borrowed: still the driver's two logins, two tokens, and no renewal by a unit.
    assert_eq!(
        bao.audit_count_since(mark, "auth/approle/login"),
        2,
        "{}",
        parent.log()
    );
    assert_eq!(live_tokens(&bao), tokens_before + 2);
    assert!(
        parent.stop(),
        "serve-mount did not exit cleanly:\n{}",
        parent.log()
    );
    drop(child);
    assert_eq!(bao.audit_count_since(mark, "auth/token/revoke-self"), 0);
    assert_eq!(bao.audit_count_since(mark, "auth/token/renew-self"), 0);
    assert_eq!(
        live_tokens(&bao),
        tokens_before + 2,
        "the driver's tokens are not the units' to revoke"
    );
    let logs = format!(
        "{}{}{}",
        driver.log(),
        parent.log(),
        read(&setup.dir.path().join("child.log")).unwrap_or_default()
    );
    assert!(
        logs.contains("lending Vault tokens to mount units"),
        "{logs}"
    );
}

#[test]
fn a_unit_without_a_driver_mounts_gives_eio_and_reads_once_the_driver_lends_a_token() {
    let (bao, setup) = two_roles();
    let unit = setup.unit("secret/app-1", "child");
    let file = setup.dir.path().join("child/db");
    let error = read(&file).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(nix::libc::EIO), "{}", unit.log());
    let mark = bao.audit_len();
    let driver = setup.driver("driver.log");
    support::wait_until(
        "a read once the driver lends tokens",
        Duration::from_secs(30),
        || read(&file).is_ok_and(|v| v == "app-1-password"),
    );
    assert_eq!(
        bao.audit_count_since(mark, "auth/approle/login"),
        2,
        "{}",
        driver.log()
    );
    assert!(
        unit.log().contains("token broker"),
        "the unit says where it waits for its token:\n{}",
        unit.log()
    );
}

/// Keeps every report a control socket gets.
#[derive(Default)]
struct RecordedReports(std::sync::Mutex<Vec<UnitReport>>);

#[async_trait::async_trait]
impl Controlled for RecordedReports {
    async fn status(&self) -> DriverStatus {
        unreachable!("units only report")
    }
    fn report(&self, report: UnitReport) -> Result<(), String> {
        self.0.lock().unwrap().push(report);
        Ok(())
    }
}

#[test]
fn a_unit_reports_its_health_to_the_control_socket_under_its_unit_name() {
    let (_bao, setup) = two_roles();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reports = std::sync::Arc::new(RecordedReports::default());
    let socket = setup.dir.path().join("run/control.sock");
    {
        let _entered = runtime.enter();
        let listener = bind_root_only(&socket, "control socket").unwrap();
        let control = Control::new(0, reports.clone());
        runtime.spawn(control::run(
            std::sync::Arc::new(control),
            listener,
            std::future::pending(),
        ));
    }
    // No driver lends a token: the read fails, and the unit's next report says which lookup failed.
    let unit = setup.unit("secret/app-1", "child");
    let error = read(&setup.dir.path().join("child/db")).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(nix::libc::EIO));
    let reported = support::wait_until(
        "a report naming the failed lookup",
        Duration::from_secs(15),
        || {
            reports.0.lock().unwrap().iter().any(|r| {
                r.health
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("looking up secret/app-1/db: Vault unavailable"))
            })
        },
    );
    assert!(reported < Duration::from_secs(15), "{}", unit.log());
    let recorded = reports.0.lock().unwrap();
    let report = recorded.last().unwrap();
    assert_eq!(report.unit, unit_name("secret/app-1"));
    assert_eq!(report.volume, "secret/app-1");
    assert!(!report.health.stale);
}

#[test]
fn a_unit_puts_reloaded_rules_in_force_for_its_reads_on_sighup_and_records_them() {
    let (_bao, setup) = two_roles();
    let driver = setup.driver("driver.log");
    let mut unit = setup.unit("secret", "parent");
    let mnt = setup.dir.path().join("parent");
    assert_eq!(read(&mnt.join("app-1/db")).unwrap(), "app-1-password");
    let denied = read(&mnt.join("admin/root")).unwrap_err();
    assert_eq!(denied.raw_os_error(), Some(nix::libc::EACCES));
    // Rule 0 (no credentials of its own) now refuses secret/app-1/db instead of secret/admin.
    let config = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(
        &setup.config,
        config.replace("path = \"secret/admin\"", "path = \"secret/app-1/db\""),
    )
    .unwrap();
    let pid = nix::unistd::Pid::from_raw(unit.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    support::wait_until("the unit's reload", Duration::from_secs(10), || {
        unit.log().contains("reloaded its rules from")
    });
    // The name read before is retired at once, and refused; what the old rule refused is readable.
    let refused = read(&mnt.join("app-1/db")).unwrap_err();
    assert_eq!(
        refused.raw_os_error(),
        Some(nix::libc::EACCES),
        "{}",
        unit.log()
    );
    assert_eq!(read(&mnt.join("admin/root")).unwrap(), "root-password");
    let recorded = std::fs::read_to_string(
        setup
            .dir
            .path()
            .join(format!("run/units/{}.rules", unit_name("secret"))),
    )
    .unwrap();
    assert!(
        recorded.starts_with("(rules ") && recorded.ends_with(')'),
        "{recorded}"
    );
    // A reload that would need a restart (Vault's address) is refused; the unit keeps its rules and serves.
    let moved = std::fs::read_to_string(&setup.config)
        .unwrap()
        .replace("timeout = \"5s\"", "timeout = \"6s\"");
    std::fs::write(&setup.config, moved).unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    support::wait_until("the refusal", Duration::from_secs(10), || {
        unit.log().contains("changing vault.timeout needs")
    });
    assert!(read(&mnt.join("app-1/db")).is_err());
    assert_eq!(read(&mnt.join("admin/root")).unwrap(), "root-password");
    assert!(unit.stop(), "{}", unit.log());
    drop(driver);
}

#[test]
fn a_unit_keeps_reading_while_the_driver_is_down_and_borrows_from_the_next_one() {
    let (bao, setup) = two_roles();
    let mark = bao.audit_len();
    let mut first = setup.driver("driver-1.log");
    let unit = setup.unit("secret/app-1", "child");
    let mnt = setup.dir.path().join("child");
    assert_eq!(
        read(&mnt.join("db")).unwrap(),
        "app-1-password",
        "{}",
        unit.log()
    );
    assert!(first.stop());
    // A key written while the driver is away is read with the token the unit holds.
    bao.kv_put(None, "secret", "app-1/while-down", json!({"value": "v1"}));
    assert_eq!(
        read(&mnt.join("while-down")).unwrap(),
        "v1",
        "{}",
        unit.log()
    );
    let second = setup.driver("driver-2.log");
    bao.kv_put(None, "secret", "app-1/after", json!({"value": "v2"}));
    assert_eq!(read(&mnt.join("after")).unwrap(), "v2");
    // Each driver start logged in once per scope; the unit never did.
    assert_eq!(
        bao.audit_count_since(mark, "auth/approle/login"),
        4,
        "{}",
        second.log()
    );
    assert_eq!(bao.audit_count_since(mark, "auth/token/revoke-self"), 0);
}

#[test]
fn a_token_revoked_behind_the_drivers_back_is_replaced_when_a_unit_finds_it_dead() {
    let (bao, setup) = two_roles();
    let driver = setup.driver("driver.log");
    let unit = setup.unit("secret/app-1", "child");
    let mnt = setup.dir.path().join("child");
    assert_eq!(
        read(&mnt.join("db")).unwrap(),
        "app-1-password",
        "{}",
        unit.log()
    );
    // Revoke every AppRole token (the driver's two), as an operator cleaning up might.
    let accessors = bao.call(
        "LIST",
        "auth/token/accessors",
        None,
        serde_json::Value::Null,
    );
    for accessor in accessors["data"]["keys"].as_array().unwrap() {
        let info = bao.call(
            "POST",
            "auth/token/lookup-accessor",
            None,
            json!({ "accessor": accessor }),
        );
        if info["data"]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("auth/approle/"))
        {
            bao.call(
                "POST",
                "auth/token/revoke-accessor",
                None,
                json!({ "accessor": accessor }),
            );
        }
    }
    let mark = bao.audit_len();
    bao.kv_put(None, "secret", "app-1/fresh", json!({"value": "fresh"}));
    // The unit's 403 is checked (lookup-self), the broker told, the driver checks its own token and logs in again.
    support::wait_until(
        "a read after the token was replaced",
        Duration::from_secs(30),
        || read(&mnt.join("fresh")).is_ok_and(|v| v == "fresh"),
    );
    assert_eq!(
        bao.audit_count_since(mark, "auth/approle/login"),
        1,
        "one new login, for the dead scope only:\n{}\n{}",
        driver.log(),
        unit.log()
    );
}

#[test]
fn lent_tokens_run_out_and_units_move_to_the_drivers_next_login_without_a_failed_read() {
    let (bao, setup) = two_roles();
    // Tokens of 4 s, 8 s at most: within the test each is replaced several times.
    for role in ["app-1", "shared"] {
        bao.call(
            "POST",
            &format!("auth/approle/role/{role}"),
            None,
            json!({"token_ttl": "4s", "token_max_ttl": "8s"}),
        );
    }
    let mark = bao.audit_len();
    let driver = setup.driver("driver.log");
    let unit = setup.unit("secret/app-1", "child");
    let mnt = setup.dir.path().join("child");
    let rounds = 20;
    let started = std::time::Instant::now();
    for round in 0..rounds {
        // A new key each round: the read must reach Vault (stale serving is off), so it needs a live token.
        let key = format!("round-{round}");
        bao.kv_put(
            None,
            "secret",
            &format!("app-1/{key}"),
            json!({"value": key}),
        );
        assert_eq!(
            read(&mnt.join(&key)).map_err(|e| format!("{e}\n{}\n{}", unit.log(), driver.log())),
            Ok(key.clone()),
            "round {round}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // Two scopes, one login each at start and about one per max TTL after: nowhere near one per read. The rounds
    // took over 20 s, past the 8 s max TTL, so the first tokens did run out (more than the 2 first logins).
    let logins = bao.audit_count_since(mark, "auth/approle/login");
    let lifetimes = started.elapsed().as_secs() as usize / 5 + 1;
    assert!(
        (3..=2 * (1 + lifetimes)).contains(&logins),
        "{logins} logins in {rounds} rounds ({lifetimes} token lifetimes):\n{}",
        driver.log()
    );
}

#[test]
fn a_unit_stopped_while_a_container_holds_its_mount_still_ends() {
    let (_bao, setup) = two_roles();
    let _driver = setup.driver("driver.log");
    let mut unit = setup.unit("secret/app-1", "child");
    // An open file keeps the filesystem busy, as a running container does.
    let held = std::fs::File::open(setup.dir.path().join("child/db")).unwrap();
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

/// The lease journal's entries (`<state_dir>/leases/*.json`), as JSON.
fn journal_entries(setup: &Setup) -> Vec<serde_json::Value> {
    let dir = setup.dir.path().join("state/leases");
    let Ok(files) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    files
        .map(|file| {
            let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
            serde_json::from_str(&text).unwrap()
        })
        .collect()
}

/// A dynamic volume's unit keeps its holder's lease itself, as systemd runs it with `--lease-holder`: the journal
/// names the unit's process, so a SIGKILLed driver and the next one revoke nothing and the file keeps the same
/// certificate; the unit's SIGTERM (what the last Unmount sends) revokes the lease and clears the journal entry.
#[test]
fn a_dynamic_volumes_unit_keeps_its_lease_across_a_driver_kill_and_revokes_it_when_stopped() {
    support::require_fuse();
    let bao = OpenBao::start();
    bao.enable_pki("web", "72h", true);
    let dir = tempfile::tempdir().unwrap();
    let token = root_only_file(dir.path(), "token", bao.root_token());
    let setup = Setup::new(
        dir,
        &format!(
            "[vault]\naddr = \"{}\"\ntoken_file = \"{}\"\ntimeout = \"5s\"\n\n\
             [[rules]]\npath = \"pki/issue\"\ndynamic = true\n",
            bao.addr(),
            token.display()
        ),
    );
    let mut first = setup.driver("driver-1.log");
    let holder = "c0ffee00".repeat(8);
    let mnt = setup.dir.path().join("tls");
    let mut unit = MountUnit::start_with(
        &setup.config,
        "pki/issue/web",
        &[
            "--option",
            "common_name=web.internal",
            "--option",
            "ttl=1h",
            "--lease-holder",
            &holder,
        ],
        &mnt,
        &setup.dir.path().join("tls.log"),
    );
    let serial = read(&mnt.join("serial_number")).unwrap();
    let leases = bao.leases("pki/issue/web");
    assert_eq!(leases.len(), 1, "{leases:?}\n{}", unit.log());
    let entries = journal_entries(&setup);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["holder"], holder.as_str());
    assert_eq!(
        entries[0]["process"]["pid"],
        unit.child.id(),
        "the unit holds the lease"
    );
    for entry in &entries {
        let text = entry.to_string();
        assert!(
            !text.contains("PRIVATE KEY") && !text.contains(bao.root_token()),
            "{text}"
        );
    }

    first.kill();
    let second = setup.driver("driver-2.log");
    // The next driver's reaper runs at its start: give it time to revoke what it (wrongly) would.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(bao.leases("pki/issue/web"), leases, "{}", second.log());
    assert_eq!(read(&mnt.join("serial_number")).unwrap(), serial);
    let cert = bao.call(
        "GET",
        &format!("pki/cert/{serial}"),
        None,
        serde_json::Value::Null,
    );
    assert_eq!(cert["data"]["revocation_time"], 0, "{cert}");

    assert!(
        unit.stop(),
        "serve-mount failed at its end:\n{}",
        unit.log()
    );
    assert!(bao.leases("pki/issue/web").is_empty(), "{}", unit.log());
    let cert = bao.call(
        "GET",
        &format!("pki/cert/{serial}"),
        None,
        serde_json::Value::Null,
    );
    assert_ne!(cert["data"]["revocation_time"], 0, "{cert}");
    assert!(
        journal_entries(&setup).is_empty(),
        "{:?}",
        journal_entries(&setup)
    );
    let log = unit.log();
    assert!(!log.contains("PRIVATE KEY"), "a key reached the unit's log");
}
