//! Smoke tests of the systemd host used by the packaging/systemd tests
//! (tests/support/systemd_host.rs; image built by scripts/build-systemd-host.sh).
//!
//! Run: `cargo test --test systemd_host_smoke -- --test-threads=1`
//!
//! `mod support;` is not used: it declares modules this binary does not need.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/docker.rs"]
mod docker;
#[path = "support/systemd_host.rs"]
mod systemd_host;

use docker::TEST_IMAGE;
use systemd_host::SystemdHost;

fn state(host: &SystemdHost) -> String {
    host.exec("systemctl is-system-running")
        .1
        .trim()
        .to_string()
}

#[test]
fn systemd_reaches_running_or_degraded() {
    let host = SystemdHost::start();
    let st = state(&host);
    assert!(
        st == "running" || st == "degraded",
        "is-system-running = {st:?}\n{}",
        host.exec("systemctl --failed --no-pager").1
    );
    assert_eq!(
        host.exec_ok("systemctl is-active docker.service").trim(),
        "active"
    );
    assert_eq!(host.exec_ok("cat /proc/1/comm").trim(), "systemd");
}

#[test]
fn transient_unit_and_journal() {
    let host = SystemdHost::start();
    host.exec_ok("systemd-run --unit=smoke-transient --property=Type=exec sleep 60");
    let active = host.exec("systemctl is-active smoke-transient.service").1;
    assert_eq!(
        active.trim(),
        "active",
        "{}",
        host.exec("systemctl status smoke-transient.service --no-pager")
            .1
    );

    host.exec_ok("systemd-cat -t smoke-id echo hello");
    let mut lines = String::new();
    for _ in 0..50 {
        lines = host.journal("-t smoke-id -o cat");
        if lines.lines().any(|l| l.trim() == "hello") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        lines.lines().any(|l| l.trim() == "hello"),
        "journalctl -t smoke-id did not show the line:\n{lines}"
    );
}

#[test]
fn inner_docker_runs_the_test_image() {
    let host = SystemdHost::start();
    host.load_image(TEST_IMAGE);
    let out = host.exec_ok(&format!("docker run --rm {TEST_IMAGE} echo inner-ok"));
    assert_eq!(out.trim(), "inner-ok");
}

#[test]
fn fuse_device_is_usable() {
    let host = SystemdHost::start();
    // A character device 10:229, openable read-write (what libfuse does).
    let out = host.exec_ok("stat -c '%F %t:%T' /dev/fuse");
    assert_eq!(
        out.trim(),
        "character special file a:e5",
        "stat /dev/fuse: {out}"
    );
    host.exec_ok("exec 3<>/dev/fuse");
    host.exec_ok("command -v fusermount3 && grep -qw fuse /proc/filesystems");
}

#[test]
fn reboot_keeps_var_lib_and_clears_run_and_transient_units() {
    let host = SystemdHost::start();
    host.exec_ok(
        "echo persisted > /var/lib/smoke-persist && echo volatile > /run/smoke-volatile && \
         systemd-run --unit=smoke-transient --property=Type=exec sleep 600",
    );
    assert_eq!(
        host.exec_ok("systemctl is-active smoke-transient.service")
            .trim(),
        "active"
    );

    host.reboot();

    let st = state(&host);
    assert!(
        st == "running" || st == "degraded",
        "after reboot: is-system-running = {st:?}"
    );
    assert_eq!(
        host.exec_ok("cat /var/lib/smoke-persist").trim(),
        "persisted"
    );
    let (code, _, _) = host.exec("test -e /run/smoke-volatile");
    assert_ne!(code, 0, "/run/smoke-volatile survived the reboot");
    let (_, out, _) = host.exec("systemctl is-active smoke-transient.service");
    assert_ne!(
        out.trim(),
        "active",
        "the transient unit survived the reboot"
    );
    let (code, out, err) = host.exec("systemctl cat smoke-transient.service");
    assert_ne!(
        code, 0,
        "the transient unit file survived the reboot:\n{out}{err}"
    );
    // The inner Docker engine comes back too (docker.service is enabled).
    host.exec_ok("docker info --format '{{.ServerVersion}}'");
}
