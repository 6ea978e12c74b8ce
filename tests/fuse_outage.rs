//! Through a real FUSE mount and the real Vault client against the Vault-API test server: a Vault outage (keys
//! already read keep serving, keys never read give EIO, everything recovers with no restart), and pinned KV v2
//! versions.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use docker_volume_libsecret::config::{Credential, VaultConfig};
use docker_volume_libsecret::fs::fuse;
use docker_volume_libsecret::fs::{FsOptions, SecretFs};
use docker_volume_libsecret::names::VaultPath;
use docker_volume_libsecret::source::cache::SecretCache;
use docker_volume_libsecret::source::vault::VaultSource;
use serde_json::json;
use support::wait_until;
use vault_api_server::{ServerConfig, TestVault};

fn errno_of(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path)
        .err()
        .and_then(|e| e.raw_os_error())
}

/// Mounts `volume` over the real Vault client with a fast refresh.
fn mount_vault(
    runtime: &tokio::runtime::Runtime,
    vault: &TestVault,
    volume: &str,
) -> (tempfile::TempDir, fuse::FuseMount) {
    support::require_fuse();
    let config = VaultConfig {
        addr: vec![vault.addr()],
        token: Some(Credential::new(vault.root_token().to_owned())),
        timeout: Duration::from_secs(1),
        ..VaultConfig::default()
    };
    let source = runtime.block_on(VaultSource::connect(&config)).unwrap();
    let cache = SecretCache::new(
        Arc::new(source),
        Duration::from_millis(100),
        Duration::from_secs(1),
    )
    .with_stale_ttl(Duration::from_secs(3600));
    let options = FsOptions {
        refresh_interval: Duration::from_millis(200),
        ..FsOptions::default()
    };
    let fs = Arc::new(SecretFs::new(
        VaultPath::from_volume_name(volume).unwrap(),
        Arc::new(cache),
        options,
    ));
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let mount = fuse::mount(fs, &mountpoint, "libsecret:test", runtime.handle().clone()).unwrap();
    (dir, mount)
}

#[test]
fn pinned_versions_read_through_the_mount_and_a_destroyed_one_becomes_enoent() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let vault = runtime
        .block_on(TestVault::start(ServerConfig::default()))
        .unwrap();
    vault.put("secret/app/db", json!({"user": "u1", "password": "p1"}));
    vault.put("secret/app/db", json!({"user": "u2", "password": "p2"}));
    let (dir, mount) = mount_vault(&runtime, &vault, "secret/app");
    let file = |name: &str| dir.path().join("mnt").join(name);
    let read = |name: &str| std::fs::read_to_string(file(name));
    assert_eq!(read("db@1#user").unwrap(), "u1");
    assert_eq!(read("db@2#password").unwrap(), "p2");
    assert_eq!(read("db@1#").unwrap(), r#"{"password":"p1","user":"u1"}"#);
    assert_eq!(read("db#user").unwrap(), "u2");
    assert_eq!(errno_of(&file("db@9#user")), Some(nix::libc::ENOENT));
    vault.put("secret/app/db", json!({"user": "u3", "password": "p3"}));
    wait_until("the latest to rotate", Duration::from_secs(5), || {
        read("db#user").ok().as_deref() == Some("u3")
    });
    assert_eq!(
        read("db@1#user").unwrap(),
        "u1",
        "a pinned version does not move"
    );
    vault.destroy_all("secret/app/db");
    wait_until(
        "destroyed versions to vanish",
        Duration::from_secs(5),
        || errno_of(&file("db@1#user")) == Some(nix::libc::ENOENT),
    );
    mount.unmount().unwrap();
}

#[test]
fn sealed_vault_serves_keys_read_before_gives_eio_for_new_keys_and_recovers() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let vault = runtime
        .block_on(TestVault::start(ServerConfig::default()))
        .unwrap();
    vault.put("secret/app/read-before", json!({"value": "cached"}));
    vault.put("secret/app/never-read", json!({"value": "fresh"}));
    let (dir, mount) = mount_vault(&runtime, &vault, "secret/app");
    let mountpoint = dir.path().join("mnt");
    let cached = mountpoint.join("read-before");
    let never_read = mountpoint.join("never-read");
    assert_eq!(std::fs::read_to_string(&cached).unwrap(), "cached");

    vault.faults().set_sealed(true);
    // Several refresh passes run against the sealed Vault while the cached key keeps reading.
    let sealed_at = Instant::now();
    while sealed_at.elapsed() < Duration::from_secs(2) {
        assert_eq!(std::fs::read_to_string(&cached).unwrap(), "cached");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(errno_of(&never_read), Some(nix::libc::EIO));
    let sealed_answers = vault.requests().iter().filter(|r| r.status == 503).count();
    assert!(
        sealed_answers > 0,
        "the refresh pass never asked the sealed Vault"
    );

    vault.faults().set_sealed(false);
    wait_until(
        "the never-read key after recovery",
        Duration::from_secs(5),
        || std::fs::read_to_string(&never_read).ok().as_deref() == Some("fresh"),
    );
    vault.put(
        "secret/app/read-before",
        json!({"value": "rotated after the outage"}),
    );
    wait_until("rotation after recovery", Duration::from_secs(5), || {
        std::fs::read_to_string(&cached).ok().as_deref() == Some("rotated after the outage")
    });
    mount.unmount().unwrap();
}
