//! A container probing names, through a real FUSE mount and the real Vault client against real OpenBao, counted in
//! OpenBao's audit log: a missing name is asked about once per `negative_ttl`, not once per attempt, and the
//! driver's memory does not grow with the names tried.

mod support;

use std::sync::Arc;
use std::time::Duration;

use docker_volume_libsecret::cache::SecretCache;
use docker_volume_libsecret::config::{Credential, VaultConfig};
use docker_volume_libsecret::filesystem::{FsOptions, SecretFs};
use docker_volume_libsecret::fuse;
use docker_volume_libsecret::names::VaultPath;
use docker_volume_libsecret::vault::VaultSource;
use serde_json::json;
use support::openbao::OpenBao;

const NAMES: usize = 2_000;
const NEGATIVE_TTL: Duration = Duration::from_secs(30);

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Mounts `volume` over the real Vault client (OpenBao's root token) with `negative_ttl`: the temp dir holding the
/// mountpoint `mnt`, the mount, and the cache behind it.
fn mount_over_bao(
    bao: &OpenBao,
    runtime: &tokio::runtime::Runtime,
    volume: &str,
    negative_ttl: Duration,
) -> (tempfile::TempDir, fuse::FuseMount, Arc<SecretCache>) {
    let config = VaultConfig {
        addr: vec![bao.addr()],
        token: Some(Credential::new(bao.root_token().to_owned())),
        timeout: Duration::from_secs(5),
        ..VaultConfig::default()
    };
    let source = runtime.block_on(VaultSource::connect(&config)).unwrap();
    let cache = Arc::new(
        SecretCache::new(
            Arc::new(source),
            Duration::from_secs(30),
            Duration::from_secs(5),
        )
        .with_negative_ttl(negative_ttl),
    );
    let fs = Arc::new(SecretFs::new(
        VaultPath::from_volume_name(volume).unwrap(),
        cache.clone(),
        FsOptions::default(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let mount = fuse::mount(fs, &mountpoint, "libsecret:test", runtime.handle().clone()).unwrap();
    (dir, mount, cache)
}

#[test]
fn probing_missing_names_costs_one_round_per_name_per_negative_ttl_and_no_memory() {
    support::require_fuse();
    let bao = OpenBao::start();
    bao.kv_put(
        None,
        "secret",
        "app/db-password",
        json!({"value": "s3cr3t"}),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (dir, _mount, cache) = mount_over_bao(&bao, &runtime, "secret/app", NEGATIVE_TTL);
    let mountpoint = dir.path().join("mnt");
    assert_eq!(
        std::fs::read_to_string(mountpoint.join("db-password")).unwrap(),
        "s3cr3t"
    );

    let probe = |prefix: &str| {
        for i in 0..NAMES {
            let error = std::fs::read(mountpoint.join(format!("{prefix}-{i}"))).unwrap_err();
            assert_eq!(
                error.raw_os_error(),
                Some(nix::libc::ENOENT),
                "{prefix}-{i}"
            );
        }
    };
    let mark = bao.audit_len();
    probe("warm");
    let first = bao.audit_requests_since(mark);
    // Today a missing name costs a read and a LIST (is it a folder?); never more, whatever the views tried.
    assert!(
        first.len() <= 2 * NAMES,
        "{} requests for {NAMES} missing names",
        first.len()
    );
    assert!(
        first.len() >= NAMES,
        "each name was asked about: {}",
        first.len()
    );

    let mark = bao.audit_len();
    probe("warm");
    for i in 0..NAMES {
        let error = std::fs::read(mountpoint.join(format!("warm-{i}#user"))).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(nix::libc::ENOENT));
    }
    let repeated = bao.audit_requests_since(mark);
    assert!(
        repeated.is_empty(),
        "names repeated within negative_ttl cost no request: {:?}",
        repeated.iter().take(5).map(|r| &r.path).collect::<Vec<_>>()
    );

    // Memory: measured over a second set of new names (the first warmed the HTTP client and the allocator), before
    // the audit log is read into this process.
    let rss_before = rss_kb();
    probe("fresh");
    let grown_kb = rss_kb().saturating_sub(rss_before);
    assert_eq!(cache.entries(), 1, "only the secret read keeps an entry");
    println!(
        "{NAMES} missing names: {} Vault requests; {NAMES} more: RSS +{grown_kb} kB",
        first.len()
    );
    // The remembered names are capped at 10,000 paths per cache (about 100 bytes each), the entries of missing
    // keys are dropped: 2,000 names stay far under 2 MB.
    assert!(grown_kb < 2 * 1024, "RSS grew by {grown_kb} kB");

    // A secret still reads while (and after) the names were probed.
    assert_eq!(
        std::fs::read_to_string(mountpoint.join("db-password")).unwrap(),
        "s3cr3t"
    );
}

#[test]
fn a_key_created_after_it_was_found_missing_appears_once_the_negative_ttl_has_passed() {
    support::require_fuse();
    let bao = OpenBao::start();
    bao.kv_put(None, "secret", "app/present", json!({"value": "here"}));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (dir, _mount, _) = mount_over_bao(&bao, &runtime, "secret/app", Duration::from_secs(2));
    let mountpoint = dir.path().join("mnt");
    let late = mountpoint.join("late");
    assert!(std::fs::read_to_string(&late).is_err());
    bao.kv_put(None, "secret", "app/late", json!({"value": "created"}));
    support::wait_until("the new key to show up", Duration::from_secs(10), || {
        std::fs::read_to_string(&late).is_ok_and(|v| v == "created")
    });
}
