//! Shared helpers of the integration tests. Each test binary uses a different subset.
#![allow(dead_code)]
// Test support may fail loudly: a helper that cannot do its job panics with the reason, and the test fails there.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_debug_implementations
)]

pub mod docker;
pub mod driver;
pub mod http;
pub mod mount;
pub mod openbao;
pub mod pki_check;
pub mod plugin_client;
pub mod postgres;
pub mod rvault;
pub mod systemd_host;
pub mod vault_admin;
pub mod vault_client;

/// Fails the test loudly unless FUSE can be used here: the FUSE layers never skip.
pub fn require_fuse() {
    assert!(
        std::path::Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: FUSE tests need it (run scripts/setup-test-host.sh as root)"
    );
    assert!(
        nix::unistd::geteuid().is_root(),
        "FUSE mount tests must run as root (they mount with allow_other)"
    );
}

/// The turn of one test among those of its binary that share something one per machine (the plugin socket, a
/// systemd host, this process's RSS): held for the test's life. A failed test's poisoned turn passes on, so one
/// failure does not fail the rest.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Polls `condition` every 20 ms until it holds; fails the test after `deadline`. Returns how long it took.
pub fn wait_until(
    what: &str,
    deadline: std::time::Duration,
    mut condition: impl FnMut() -> bool,
) -> std::time::Duration {
    let started = std::time::Instant::now();
    while !condition() {
        assert!(started.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    started.elapsed()
}

/// Writes `value` to `dir/name` as a root-only (0600) file, as the driver wants its credential files.
pub fn root_only_file(dir: &std::path::Path, name: &str, value: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, value).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}
