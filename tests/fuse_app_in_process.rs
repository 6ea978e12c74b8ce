//! The driver and a mount unit driven in-process, without a process boundary: `app::run(config, …, listener,
//! shutdown)` serving the plugin API on a socket the test bound, with in-process FUSE mounts of the file backend,
//! and `app::run_mount_unit(config, args, shutdown)` serving one volume. Each ends cleanly
//! when its shutdown future completes, and leaves no mount behind. Needs root and /dev/fuse: it fails, never
//! skips, without them.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use docker_volume_libsecret::app::{self, FirstContact};
use docker_volume_libsecret::config::{BackendKind, Config, FileConfig, MountMode};
use serde_json::json;
use support::plugin_client::{call, create_and_mount, err_of};

/// A file-backend config whose socket, state and mounts all live in `dir`.
fn config_in(dir: &Path) -> Config {
    let secrets = support::root_only_file(
        dir,
        "secrets.toml",
        "\"secret/app-1/db-password\" = \"s3cr3t\"\n\"secret/app-1/api-key\" = \"k-123\"\n",
    );
    Config {
        backend: Some(BackendKind::File),
        socket: dir.join("plugin.sock"),
        state_dir: dir.join("state"),
        mount_root: dir.join("mounts"),
        broker_socket: dir.join("broker/broker.sock"),
        mount_mode: MountMode::InProcess,
        file: FileConfig { path: secrets },
        ..Config::default()
    }
}

fn is_mounted(path: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.to_str().unwrap();
    mountinfo
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(path))
}

#[test]
fn the_driver_serves_a_bound_socket_in_process_until_its_shutdown_completes() {
    support::require_fuse();
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let socket = config.socket.clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = {
        let _entered = runtime.enter();
        tokio::net::UnixListener::bind(&socket).unwrap()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = runtime.spawn(app::run(
        config,
        Vec::new(),
        FirstContact::Wait,
        listener,
        async {
            let _ = stopped.await;
        },
        tokio::sync::mpsc::channel(1).1,
    ));

    let (status, reply) = call(&socket, "/Plugin.Activate", json!({}));
    assert_eq!(
        (status, reply),
        (200, json!({"Implements": ["VolumeDriver"]}))
    );
    let mountpoint = create_and_mount(&socket, "secret/app-1/", json!({}), "c1").unwrap();
    assert!(
        is_mounted(&mountpoint),
        "{} is not a mount",
        mountpoint.display()
    );
    assert_eq!(
        std::fs::read_to_string(mountpoint.join("db-password")).unwrap(),
        "s3cr3t"
    );
    assert_eq!(
        std::fs::read_dir(&mountpoint).unwrap().count(),
        0,
        "a listing shows nothing"
    );
    let write = std::fs::write(mountpoint.join("db-password"), "x").unwrap_err();
    assert_eq!(write.raw_os_error(), Some(nix::libc::EROFS));
    // A bad request gets an Err and the driver keeps serving.
    let (_, reply) = call(
        &socket,
        "/VolumeDriver.Mount",
        json!({"Name": "../etc", "ID": "c2"}),
    );
    assert!(!err_of(&reply).is_empty(), "{reply}");
    let (_, reply) = call(&socket, "/VolumeDriver.List", json!({}));
    assert_eq!(reply["Volumes"].as_array().unwrap().len(), 1, "{reply}");

    // Shutdown while the volume is mounted: run returns Ok and unmounts what it served.
    stop.send(()).unwrap();
    let result = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), driver).await })
        .expect("app::run did not return within 20 s of its shutdown")
        .unwrap();
    assert!(result.is_ok(), "app::run: {result:?}");
    assert!(
        !is_mounted(&mountpoint),
        "{} is still mounted",
        mountpoint.display()
    );
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_err(),
        "the socket still answers after run returned"
    );
}

#[test]
fn a_mount_unit_serves_its_volume_in_process_until_its_shutdown_completes() {
    support::require_fuse();
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let mountpoint: PathBuf = dir.path().join("unit-mount");
    std::fs::create_dir_all(&mountpoint).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = BTreeMap::from([("mode".to_owned(), "0400".to_owned())]);
    let unit = runtime.spawn(app::run_mount_unit(
        config,
        app::MountUnitArgs {
            volume: "secret/app-1".to_owned(),
            mountpoint: mountpoint.clone(),
            options,
            lease_holder: None,
        },
        async {
            let _ = stopped.await;
        },
        tokio::sync::mpsc::channel(1).1,
    ));
    support::wait_until("the unit's mount", Duration::from_secs(20), || {
        is_mounted(&mountpoint)
    });
    assert_eq!(
        std::fs::read_to_string(mountpoint.join("api-key")).unwrap(),
        "k-123"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(mountpoint.join("api-key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o7777, 0o400, "the volume's mode option applies");
    let missing = std::fs::read_to_string(mountpoint.join("nope")).unwrap_err();
    assert_eq!(missing.raw_os_error(), Some(nix::libc::ENOENT));

    stop.send(()).unwrap();
    let result = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), unit).await })
        .expect("app::run_mount_unit did not return within 20 s of its shutdown")
        .unwrap();
    assert!(result.is_ok(), "app::run_mount_unit: {result:?}");
    assert!(
        !is_mounted(&mountpoint),
        "{} is still mounted",
        mountpoint.display()
    );
}

#[test]
fn a_mount_unit_refuses_a_volume_name_that_is_not_a_vault_path() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let result = runtime.block_on(app::run_mount_unit(
        config,
        app::MountUnitArgs {
            volume: "secret/../etc".to_owned(),
            mountpoint: dir.path().join("m"),
            options: BTreeMap::new(),
            lease_holder: None,
        },
        std::future::pending(),
        tokio::sync::mpsc::channel(1).1,
    ));
    let error = result
        .expect_err("a bad volume name was served")
        .to_string();
    assert!(
        error.contains("invalid volume name") && error.contains("'..' segment"),
        "{error}"
    );
    assert!(!is_mounted(&dir.path().join("m")));
}
