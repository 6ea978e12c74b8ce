//! Real FUSE mounts of the filesystem over an in-memory secret source, read through the kernel with std::fs.
//! Needs root and /dev/fuse: it fails, never skips, without them.

mod support;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use docker_volume_libsecret::cache::SecretCache;
use docker_volume_libsecret::filesystem::{FsOptions, SecretFs};
use docker_volume_libsecret::fuse::{self, FuseMount};
use docker_volume_libsecret::names::VaultPath;
use docker_volume_libsecret::secret::SourceError;
use docker_volume_libsecret::testing::MemorySource;
use serde_json::json;

struct Mounted {
    mount: Option<FuseMount>,
    source: Arc<MemorySource>,
    dir: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
}

impl Mounted {
    fn root(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mount) = self.mount.take() {
            mount.unmount().unwrap();
        }
    }
}

fn mount_with(volume: &str, cache_ttl: Duration, timeout: Duration) -> Mounted {
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
    let fs = Arc::new(SecretFs::new(
        VaultPath::from_volume_name(volume).unwrap(),
        cache,
        FsOptions::default(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let mount = fuse::mount(fs, &mountpoint, "libsecret:test", runtime.handle().clone())
        .unwrap_or_else(|e| panic!("FUSE mount failed: {e}"));
    Mounted {
        mount: Some(mount),
        source,
        dir,
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
        line.contains(" - fuse") && line.contains("libsecret:test"),
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

#[test]
fn a_rotated_value_that_grows_or_shrinks_reads_whole_after_the_cache_ttl() {
    let m = mount_with(
        "secret/app-1",
        Duration::from_millis(200),
        Duration::from_secs(5),
    );
    m.source
        .put("secret/app-1/rotating", json!({"value": "0123456789"}));
    assert_eq!(read(&m.path("rotating")).unwrap(), "0123456789");
    let big = "x".repeat(10 * 1024);
    m.source.put("secret/app-1/rotating", json!({"value": big}));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(read(&m.path("rotating")).unwrap(), big);
    m.source
        .put("secret/app-1/rotating", json!({"value": "short"}));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(read(&m.path("rotating")).unwrap(), "short");
    m.source.remove("secret/app-1/rotating");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        read(&m.path("rotating")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
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
