//! Real FUSE mounts of the filesystem over an in-memory secret source, read through the kernel with std::fs.
//! Needs root and /dev/fuse: it fails, never skips, without them.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use docker_volume_libsecret::fs::FsOptions;
use docker_volume_libsecret::source::cache::SecretCache;
use docker_volume_libsecret::source::SourceError;
use docker_volume_libsecret::testing::MemorySource;
use serde_json::json;

/// A volume mounted through the product's mount path, over an in-memory source the test can change.
struct Mounted {
    volume: support::mount::MountedVolume,
    source: Arc<MemorySource>,
    _runtime: tokio::runtime::Runtime,
}

impl Mounted {
    fn root(&self) -> PathBuf {
        self.volume.root()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.volume.path(name)
    }
}

fn mount_with(volume: &str, cache_ttl: Duration, timeout: Duration) -> Mounted {
    mount_refreshing(
        volume,
        cache_ttl,
        timeout,
        FsOptions::default().refresh_interval,
    )
}

fn mount_refreshing(
    volume: &str,
    cache_ttl: Duration,
    timeout: Duration,
    refresh_interval: Duration,
) -> Mounted {
    support::require_fuse();
    let source = Arc::new(MemorySource::default());
    source.put("secret/app-1/db-password", json!({"value": "s3cr3t"}));
    source.put(
        "secret/app-1/db",
        json!({"user": "app", "password": "pw", "port": 5432}),
    );
    source.put("secret/app-1/team/db", json!({"value": "nested"}));
    source.put("secret/app-2/other", json!({"value": "not yours"}));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cache = Arc::new(SecretCache::new(source.clone(), cache_ttl, timeout));
    let options = FsOptions {
        refresh_interval,
        ..FsOptions::default()
    };
    let volume = support::mount::mount_volume(
        &runtime,
        volume,
        BTreeMap::new(),
        support::mount::through(&cache),
        options,
    );
    Mounted {
        volume,
        source,
        _runtime: runtime,
    }
}

fn mount() -> Mounted {
    mount_with(
        "secret/app-1/",
        Duration::from_secs(30),
        Duration::from_secs(5),
    )
}

fn read(path: &Path) -> std::io::Result<String> {
    std::fs::read_to_string(path)
}

fn assert_erofs<T: std::fmt::Debug>(what: &str, result: std::io::Result<T>) {
    let error = result.expect_err(what);
    assert_eq!(
        error.raw_os_error(),
        Some(nix::libc::EROFS),
        "{what}: {error}"
    );
}

#[test]
fn the_mount_is_a_fuse_mount_that_lists_nothing() {
    let m = mount();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mountinfo
        .lines()
        .find(|l| l.contains(m.root().to_str().unwrap()))
        .expect("mount missing from /proc/self/mountinfo");
    assert!(
        line.contains(" - fuse") && line.contains("libsecret:secret%2Fapp-1%2F"),
        "{line}"
    );
    assert!(line.contains("allow_other"), "{line}");
    assert!(line.contains(" ro,") || line.contains(" ro "), "{line}");
    assert_eq!(std::fs::read_dir(m.root()).unwrap().count(), 0);
    // Secrets exist and are readable by name, yet still not listed.
    assert_eq!(read(&m.path("db-password")).unwrap(), "s3cr3t");
    assert_eq!(std::fs::read_dir(m.root()).unwrap().count(), 0);
}

#[test]
fn exact_names_views_nested_paths_and_modes() {
    use std::os::unix::fs::PermissionsExt;
    let m = mount();
    assert_eq!(read(&m.path("db-password")).unwrap(), "s3cr3t");
    assert_eq!(read(&m.path("db#user")).unwrap(), "app");
    assert_eq!(read(&m.path("db#port")).unwrap(), "5432");
    assert_eq!(
        read(&m.path("db#")).unwrap(),
        r#"{"password":"pw","port":5432,"user":"app"}"#
    );
    assert_eq!(
        read(&m.path("db")).unwrap(),
        r#"{"password":"pw","port":5432,"user":"app"}"#
    );
    assert_eq!(read(&m.path("team/db")).unwrap(), "nested");
    let file = std::fs::metadata(m.path("db-password")).unwrap();
    assert_eq!(file.permissions().mode() & 0o7777, 0o444);
    assert_eq!(file.len(), 6);
    let dir = std::fs::metadata(m.path("team")).unwrap();
    assert!(dir.is_dir());
    assert_eq!(dir.permissions().mode() & 0o7777, 0o555);
    assert_eq!(
        std::fs::metadata(m.root()).unwrap().permissions().mode() & 0o7777,
        0o555
    );
}

#[test]
fn missing_keys_fields_and_other_collections_are_enoent() {
    let m = mount();
    for name in [
        "missing",
        "db#nofield",
        "team/missing",
        "app-2/other",
        "db-password/x",
    ] {
        let error = read(&m.path(name)).expect_err(name);
        assert!(
            error.kind() == ErrorKind::NotFound || error.raw_os_error() == Some(nix::libc::ENOTDIR),
            "{name}: {error}"
        );
    }
    // `..` is resolved by the kernel to the mountpoint's parent, outside this filesystem.
    assert!(read(&m.root().join("../app-2/other")).is_err());
}

#[test]
fn every_write_path_is_read_only() {
    use std::os::unix::fs::PermissionsExt;
    let m = mount();
    let file = m.path("db-password");
    assert_erofs(
        "open for write",
        std::fs::OpenOptions::new().write(true).open(&file),
    );
    assert_erofs(
        "append",
        std::fs::OpenOptions::new().append(true).open(&file),
    );
    assert_erofs(
        "truncate",
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&file),
    );
    assert_erofs("create", std::fs::File::create(m.path("new-file")));
    assert_erofs("mkdir", std::fs::create_dir(m.path("new-dir")));
    assert_erofs("unlink", std::fs::remove_file(&file));
    assert_erofs("rmdir", std::fs::remove_dir(m.path("team")));
    assert_erofs("rename", std::fs::rename(&file, m.path("renamed")));
    assert_erofs(
        "chmod",
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)),
    );
    assert_erofs(
        "symlink",
        std::os::unix::fs::symlink("/etc/passwd", m.path("link")),
    );
    assert_erofs("hard link", std::fs::hard_link(&file, m.path("hard")));
    assert_erofs(
        "utimes",
        std::fs::File::open(&file)
            .unwrap()
            .set_modified(std::time::SystemTime::now()),
    );
    assert_eq!(read(&file).unwrap(), "s3cr3t");
}

#[test]
fn source_failures_become_eacces_and_eio() {
    let m = mount();
    m.source
        .set_failure(Some(SourceError::Denied("permission denied".into())));
    let error = read(&m.path("db-password")).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(nix::libc::EACCES), "{error}");
    m.source
        .set_failure(Some(SourceError::Unavailable("connection refused".into())));
    let error = read(&m.path("db#user")).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(nix::libc::EIO), "{error}");
    m.source.set_failure(None);
    assert_eq!(read(&m.path("db#user")).unwrap(), "app");
}

#[test]
fn a_hanging_source_fails_the_read_within_the_timeout() {
    let m = mount_with(
        "secret/app-1",
        Duration::from_secs(30),
        Duration::from_millis(500),
    );
    m.source.set_delay(Duration::from_secs(60));
    let started = Instant::now();
    let error = read(&m.path("db-password")).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(nix::libc::EIO), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// Polls until `path` reads `expected`, failing after `deadline`.
fn read_becomes(path: &Path, expected: Option<&str>, deadline: Duration) {
    let started = Instant::now();
    loop {
        let now = read(path).ok();
        if now.as_deref() == expected {
            return;
        }
        assert!(
            started.elapsed() < deadline,
            "{path:?} still reads {now:?}, not {expected:?}, after {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn rotation_and_deletion_reach_readers_within_the_refresh_interval() {
    let refresh = Duration::from_millis(500);
    let m = mount_refreshing(
        "secret/app-1",
        Duration::from_millis(100),
        Duration::from_secs(5),
        refresh,
    );
    let file = m.path("rotating");
    m.source
        .put("secret/app-1/rotating", json!({"value": "0123456789"}));
    assert_eq!(read(&file).unwrap(), "0123456789");
    let big = "x".repeat(10 * 1024);
    m.source.put("secret/app-1/rotating", json!({"value": big}));
    read_becomes(&file, Some(&big), refresh + Duration::from_secs(1));
    m.source
        .put("secret/app-1/rotating", json!({"value": "short"}));
    read_becomes(&file, Some("short"), refresh + Duration::from_secs(1));
    m.source.remove("secret/app-1/rotating");
    read_becomes(&file, None, refresh + Duration::from_secs(1));
    assert_eq!(read(&file).unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn an_open_file_reads_its_value_to_the_end_across_a_rotation() {
    use std::io::Read;
    let refresh = Duration::from_millis(200);
    let m = mount_refreshing(
        "secret/app-1",
        Duration::from_millis(50),
        Duration::from_secs(5),
        refresh,
    );
    let first = "A".repeat(200_000);
    m.source.put("secret/app-1/big", json!({"value": first}));
    let mut file = std::fs::File::open(m.path("big")).unwrap();
    let mut head = vec![0; 1000];
    file.read_exact(&mut head).unwrap();
    m.source
        .put("secret/app-1/big", json!({"value": "B".repeat(50_000)}));
    read_becomes(
        &m.path("big"),
        Some(&"B".repeat(50_000)),
        refresh + Duration::from_secs(1),
    );
    let mut rest = String::new();
    file.read_to_string(&mut rest).unwrap();
    assert_eq!(rest.len(), 199_000);
    assert!(
        rest.bytes().all(|b| b == b'A'),
        "the open file mixed in the new value"
    );
}

#[test]
fn rotation_under_a_concurrent_read_loop_never_mixes_truncates_or_pads() {
    let refresh = Duration::from_millis(100);
    let m = mount_refreshing(
        "secret/app-1",
        Duration::from_millis(20),
        Duration::from_secs(5),
        refresh,
    );
    let values = [
        "a".repeat(10),
        "b".repeat(10 * 1024),
        "c".repeat(3),
        "d".repeat(4097),
    ];
    m.source
        .put("secret/app-1/hot", json!({"value": values[0]}));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (path, stop, values) = (m.path("hot"), stop.clone(), values.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let text = std::fs::read_to_string(&path).unwrap();
                    assert!(
                        values.contains(&text),
                        "read {} bytes that are no whole value",
                        text.len()
                    );
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for round in 1..=12 {
        m.source.put(
            "secret/app-1/hot",
            json!({"value": values[round % values.len()]}),
        );
        std::thread::sleep(Duration::from_millis(150));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(reads > 100, "only {reads} reads");
}

#[test]
fn many_readers_of_one_key_cost_one_source_read_per_ttl() {
    let m = mount();
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let path = m.path("db-password");
            std::thread::spawn(move || {
                for _ in 0..50 {
                    assert_eq!(std::fs::read_to_string(&path).unwrap(), "s3cr3t");
                }
            })
        })
        .collect();
    for reader in readers {
        reader.join().unwrap();
    }
    assert_eq!(m.source.reads(), 1);
}
