//! `systemctl reload` as the binary sees it: SIGHUP to the real driver (in-process FUSE mounts of the file
//! backend). The reloaded rules decide every Create, Mount and read from then on without dropping a mount, the new
//! log level takes effect, a mount the new rules refuse is reported and refused at its next Mount, and a file that
//! does not load, or a change that needs a restart, is refused with the running configuration kept. Needs root and
//! /dev/fuse: it fails, never skips, without them.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use support::driver::Driver;
use support::plugin_client::create_and_mount;
use support::root_only_file;

fn config_text(dir: &Path, secrets: &Path, extra: &str, b_allowed: bool) -> String {
    format!(
        "backend = \"file\"\nmount_mode = \"in-process\"\nbroker_socket = \"{}\"\nstate_dir = \"{}\"\n\
         mount_root = \"{}\"\nrefresh_interval = \"1s\"\n{extra}\n[file]\npath = \"{}\"\n\n\
         [[rules]]\npath = \"secret/a\"\n\n[[rules]]\npath = \"secret/b\"\nallow = {b_allowed}\n",
        dir.join("run/broker.sock").display(),
        dir.join("state").display(),
        dir.join("mounts").display(),
        secrets.display(),
    )
}

fn is_mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(path.to_str().unwrap()))
}

/// Sends SIGHUP and waits until the log has `wanted` once more than before.
fn reload(driver: &Driver, wanted: &str) -> String {
    let before = driver.log().matches(wanted).count();
    let pid = nix::unistd::Pid::from_raw(driver.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    support::wait_until(
        &format!("{wanted:?} in the log"),
        Duration::from_secs(10),
        || driver.log().matches(wanted).count() > before,
    );
    driver.log()
}

#[test]
fn sighup_puts_new_rules_and_log_level_in_force_without_dropping_a_mount_and_refuses_a_bad_config()
{
    support::require_fuse();
    let dir = tempfile::tempdir().unwrap();
    let secrets = root_only_file(
        dir.path(),
        "secrets.toml",
        "\"secret/a/k\" = \"value-a\"\n\"secret/b/k\" = \"value-b\"\n",
    );
    let config: PathBuf = dir.path().join("config.toml");
    std::fs::write(
        &config,
        config_text(dir.path(), &secrets, "log_level = \"info\"", true),
    )
    .unwrap();
    let socket = dir.path().join("plugin.sock");
    let mut driver =
        Driver::start_with_config(&config, &[], &socket, &dir.path().join("driver.log"), &[]);
    let a = create_and_mount(&socket, "secret/a", json!({}), "c1").unwrap();
    let b = create_and_mount(&socket, "secret/b", json!({}), "c2").unwrap();
    assert_eq!(std::fs::read_to_string(a.join("k")).unwrap(), "value-a");
    assert_eq!(std::fs::read_to_string(b.join("k")).unwrap(), "value-b");
    assert!(!driver.log().contains("DEBUG"), "{}", driver.log());

    // secret/b refused from now on, and debug logging.
    std::fs::write(
        &config,
        config_text(dir.path(), &secrets, "log_level = \"debug\"", false),
    )
    .unwrap();
    let log = reload(&driver, "configuration reloaded from");
    assert!(
        log.contains(&format!("configuration reloaded from {}", config.display())),
        "{log}"
    );
    assert!(
        log.contains("volume secret/b is mounted, and the reloaded rules refuse it")
            && log.contains("its next Mount is refused"),
        "{log}"
    );
    assert!(
        log.contains("log_level \"debug\" in force"),
        "the new level is in force:\n{log}"
    );
    // No mount was dropped; secret/a reads on, and secret/b's name is retired at the next refresh and refused.
    assert!(is_mounted(&a) && is_mounted(&b));
    assert_eq!(std::fs::read_to_string(a.join("k")).unwrap(), "value-a");
    support::wait_until("secret/b/k refused", Duration::from_secs(10), || {
        std::fs::read_to_string(b.join("k"))
            .is_err_and(|e| e.raw_os_error() == Some(nix::libc::EACCES))
    });
    let refused = create_and_mount(&socket, "secret/b", json!({}), "c3").unwrap_err();
    assert!(refused.contains("secret/b"), "{refused}");
    assert_eq!(
        create_and_mount(&socket, "secret/a", json!({}), "c4").unwrap(),
        a,
        "a new container shares the running mount"
    );

    // A file that does not load: refused, naming the file and the key; the reloaded configuration stays.
    std::fs::write(
        &config,
        format!(
            "{}bogus_key = 1\n",
            config_text(dir.path(), &secrets, "", true)
        ),
    )
    .unwrap();
    let log = reload(&driver, "reload refused, the running configuration is kept");
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("reload refused"))
        .unwrap();
    assert!(
        line.contains("bogus_key") && line.contains(&config.display().to_string()),
        "{line}"
    );
    assert!(
        std::fs::read_to_string(b.join("k")).is_err(),
        "secret/b is still refused"
    );
    assert_eq!(std::fs::read_to_string(a.join("k")).unwrap(), "value-a");

    // A change only a restart can make: refused, naming the key.
    let moved = config_text(dir.path(), &secrets, "", true).replace("/state\"", "/state-2\"");
    std::fs::write(&config, moved).unwrap();
    let log = reload(
        &driver,
        "the running configuration is kept (the driver): changing",
    );
    assert!(
        log.contains("changing state_dir needs `systemctl restart docker-volume-libsecret`"),
        "{log}"
    );
    assert!(
        std::fs::read_to_string(b.join("k")).is_err(),
        "secret/b is still refused"
    );

    // Back to allowing secret/b: a reload that loosens the rules works the same way.
    std::fs::write(&config, config_text(dir.path(), &secrets, "", true)).unwrap();
    reload(&driver, "configuration reloaded from");
    support::wait_until("secret/b/k readable again", Duration::from_secs(10), || {
        std::fs::read_to_string(b.join("k")).is_ok_and(|v| v == "value-b")
    });
    assert!(
        driver.is_running(),
        "SIGHUP never stops the driver:\n{}",
        driver.log()
    );
}
