//! Through a real FUSE mount (the product's own mount path, tests/support/mount.rs) and the real Vault client
//! against real OpenBao (tests/support/openbao.rs): a sealed Vault (keys already read keep serving, keys never read
//! give EIO, everything recovers with no restart once unsealed), and pinned KV v2 versions. Nothing here needs the
//! fault server: OpenBao seals and unseals on command. OpenBao audits nothing while sealed, so the sealed answers
//! are counted where the real client gets them (a counting wrapper around the `VaultSource`).
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use docker_volume_libsecret::config::{Credential, VaultConfig};
use docker_volume_libsecret::fs::FsOptions;
use docker_volume_libsecret::names::VaultPath;
use docker_volume_libsecret::source::cache::SecretCache;
use docker_volume_libsecret::source::vault::VaultSource;
use docker_volume_libsecret::source::{Secret, SecretSource, SourceError};
use serde_json::json;
use support::mount::MountedVolume;
use support::openbao::OpenBao;
use support::wait_until;

fn errno_of(path: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(path)
        .err()
        .and_then(|e| e.raw_os_error())
}

/// The real Vault client, counting the answers it got from a sealed Vault (503): OpenBao's audit log holds
/// nothing while it is sealed.
struct CountingSealed {
    inner: VaultSource,
    sealed_answers: Arc<AtomicUsize>,
}

impl CountingSealed {
    fn note<T>(&self, result: Result<T, SourceError>) -> Result<T, SourceError> {
        if let Err(SourceError::Unavailable(reason)) = &result {
            if reason.contains("503") {
                self.sealed_answers.fetch_add(1, Ordering::SeqCst);
            }
        }
        result
    }
}

#[async_trait]
impl SecretSource for CountingSealed {
    async fn read(&self, path: &VaultPath) -> Result<Secret, SourceError> {
        self.note(self.inner.read(path).await)
    }

    async fn read_version(&self, path: &VaultPath, version: u64) -> Result<Secret, SourceError> {
        self.note(self.inner.read_version(path, version).await)
    }

    async fn check_served(&self, path: &VaultPath) -> Result<(), SourceError> {
        self.note(self.inner.check_served(path).await)
    }

    async fn is_folder(&self, path: &VaultPath) -> Result<bool, SourceError> {
        self.note(self.inner.is_folder(path).await)
    }

    async fn list(&self, dir: &VaultPath) -> Result<Vec<String>, SourceError> {
        self.note(self.inner.list(dir).await)
    }
}

/// Mounts `volume` over the real Vault client with a fast refresh; also returns the count of sealed answers.
fn mount_vault(
    runtime: &tokio::runtime::Runtime,
    vault: &OpenBao,
    volume: &str,
) -> (MountedVolume, Arc<AtomicUsize>) {
    let config = VaultConfig {
        addr: vec![vault.addr()],
        token: Some(Credential::new(vault.root_token().to_owned())),
        timeout: Duration::from_secs(1),
        ..VaultConfig::default()
    };
    let sealed_answers = Arc::new(AtomicUsize::new(0));
    let source = CountingSealed {
        inner: runtime.block_on(VaultSource::connect(&config)).unwrap(),
        sealed_answers: sealed_answers.clone(),
    };
    let cache = Arc::new(
        SecretCache::new(
            Arc::new(source),
            Duration::from_millis(100),
            Duration::from_secs(1),
        )
        .with_stale_ttl(Duration::from_secs(3600)),
    );
    let options = FsOptions {
        refresh_interval: Duration::from_millis(200),
        ..FsOptions::default()
    };
    let mounted = support::mount::mount_volume(
        runtime,
        volume,
        BTreeMap::new(),
        support::mount::through(&cache),
        options,
    );
    (mounted, sealed_answers)
}

#[test]
fn pinned_versions_read_through_the_mount_and_a_destroyed_one_becomes_enoent() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let vault = OpenBao::start();
    let put = |data| vault.kv_put(None, "secret", "app/db", data).unwrap();
    assert_eq!(put(json!({"user": "u1", "password": "p1"})), 1);
    assert_eq!(put(json!({"user": "u2", "password": "p2"})), 2);
    let (mount, _) = mount_vault(&runtime, &vault, "secret/app");
    let file = |name: &str| mount.path(name);
    let read = |name: &str| std::fs::read_to_string(file(name));
    assert_eq!(read("db@1#user").unwrap(), "u1");
    assert_eq!(read("db@2#password").unwrap(), "p2");
    assert_eq!(read("db@1#").unwrap(), r#"{"password":"p1","user":"u1"}"#);
    assert_eq!(read("db#user").unwrap(), "u2");
    assert_eq!(errno_of(&file("db@9#user")), Some(nix::libc::ENOENT));
    assert_eq!(put(json!({"user": "u3", "password": "p3"})), 3);
    wait_until("the latest to rotate", Duration::from_secs(5), || {
        read("db#user").ok().as_deref() == Some("u3")
    });
    assert_eq!(
        read("db@1#user").unwrap(),
        "u1",
        "a pinned version does not move"
    );
    vault.kv_destroy(None, "secret", "app/db", &[1, 2, 3]);
    wait_until(
        "destroyed versions to vanish",
        Duration::from_secs(5),
        || errno_of(&file("db@1#user")) == Some(nix::libc::ENOENT),
    );
    mount.unmount();
}

#[test]
fn sealed_vault_serves_keys_read_before_gives_eio_for_new_keys_and_recovers() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let vault = OpenBao::start();
    vault.kv_put(
        None,
        "secret",
        "app/read-before",
        json!({"value": "cached"}),
    );
    vault.kv_put(None, "secret", "app/never-read", json!({"value": "fresh"}));
    let (mount, sealed_answers) = mount_vault(&runtime, &vault, "secret/app");
    let cached = mount.path("read-before");
    let never_read = mount.path("never-read");
    assert_eq!(std::fs::read_to_string(&cached).unwrap(), "cached");

    vault.seal();
    // Several refresh passes run against the sealed Vault while the cached key keeps reading.
    let sealed_at = Instant::now();
    while sealed_at.elapsed() < Duration::from_secs(2) {
        assert_eq!(std::fs::read_to_string(&cached).unwrap(), "cached");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(errno_of(&never_read), Some(nix::libc::EIO));
    let sealed_answers = sealed_answers.load(Ordering::SeqCst);
    assert!(
        sealed_answers > 0,
        "the refresh pass never asked the sealed Vault"
    );

    vault.unseal();
    wait_until(
        "the never-read key after recovery",
        Duration::from_secs(5),
        || std::fs::read_to_string(&never_read).ok().as_deref() == Some("fresh"),
    );
    vault.kv_put(
        None,
        "secret",
        "app/read-before",
        json!({"value": "rotated after the outage"}),
    );
    wait_until("rotation after recovery", Duration::from_secs(5), || {
        std::fs::read_to_string(&cached).ok().as_deref() == Some("rotated after the outage")
    });
    mount.unmount();
}
