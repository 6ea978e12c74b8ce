//! The plugin server over a real unix socket, with volume bookkeeping on an in-memory mounter: the protocol as
//! Docker speaks it, and bad input that must get a clear `Err` without hurting the server.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use docker_volume_libsecret::plugin::server;
use docker_volume_libsecret::plugin::Plugin;
use docker_volume_libsecret::testing::FakeMounter;
use docker_volume_libsecret::volumes::store::DirRecordStore;
use docker_volume_libsecret::volumes::Volumes;
use serde_json::json;
use support::plugin_client::{call, call_raw, err_of};

struct TestServer {
    socket: PathBuf,
    mounter: FakeMounter,
    state: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    fn start_with_state(state: tempfile::TempDir) -> TestServer {
        let socket = state.path().join("plugin.sock");
        let mounter = FakeMounter::default();
        let store = DirRecordStore::open(state.path()).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let socket_path = socket.clone();
        let fake = mounter.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async move {
                let volumes = Volumes::open(
                    Box::new(store),
                    Box::new(fake),
                    PathBuf::from("/run/test-mounts"),
                )
                .await
                .unwrap();
                let plugin = Plugin::new(Arc::new(volumes));
                let (listener, activated) = server::listener(&socket_path).unwrap();
                assert!(!activated);
                ready_tx.send(()).unwrap();
                server::run(listener, plugin, async {
                    let _ = stopped.await;
                })
                .await;
            });
        });
        ready_rx.recv().unwrap();
        TestServer {
            socket,
            mounter,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn start() -> TestServer {
        Self::start_with_state(tempfile::tempdir().unwrap())
    }

    fn live_mounts(&self) -> usize {
        self.mounter.live().len()
    }

    /// Stops the server and hands back its state directory.
    fn restart(mut self) -> TestServer {
        self.shutdown();
        let state = std::mem::replace(&mut self.state, tempfile::tempdir().unwrap());
        TestServer::start_with_state(state)
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[test]
fn the_socket_is_root_only() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start();
    let mode = std::fs::metadata(&server.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn handshake_and_capabilities() {
    let server = TestServer::start();
    let (status, reply) = call_raw(&server.socket, "/Plugin.Activate", b"");
    assert_eq!(status, 200);
    assert_eq!(reply, json!({"Implements": ["VolumeDriver"]}));
    let (_, reply) = call(&server.socket, "/VolumeDriver.Capabilities", json!({}));
    assert_eq!(reply, json!({"Capabilities": {"Scope": "local"}}));
}

#[test]
fn docker_lifecycle_get_create_mount_unmount_remove() {
    let server = TestServer::start();
    let s = &server.socket;
    let name = "secret/app-1/";
    let (status, reply) = call(s, "/VolumeDriver.Get", json!({"Name": name}));
    assert_eq!(status, 500);
    assert!(err_of(&reply).contains("no volume named"), "{reply}");

    let (status, reply) = call(
        s,
        "/VolumeDriver.Create",
        json!({"Name": name, "Opts": null}),
    );
    assert_eq!((status, err_of(&reply)), (200, ""), "{reply}");
    let (_, reply) = call(s, "/VolumeDriver.Get", json!({"Name": name}));
    assert_eq!(reply["Volume"]["Name"], name);
    assert_eq!(reply["Volume"]["Mountpoint"], "");
    let created = reply["Volume"]["CreatedAt"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "{created}"
    );

    let id_a = "a".repeat(64);
    let id_b = "b".repeat(64);
    let (_, first) = call(s, "/VolumeDriver.Mount", json!({"Name": name, "ID": id_a}));
    let (_, second) = call(s, "/VolumeDriver.Mount", json!({"Name": name, "ID": id_b}));
    assert_eq!(err_of(&first), "");
    assert_eq!(first["Mountpoint"], "/run/test-mounts/secret%2Fapp-1%2F");
    assert_eq!(first["Mountpoint"], second["Mountpoint"]);
    assert_eq!(server.live_mounts(), 1);
    let (_, path) = call(s, "/VolumeDriver.Path", json!({"Name": name}));
    assert_eq!(path["Mountpoint"], first["Mountpoint"]);

    let (_, reply) = call(s, "/VolumeDriver.Remove", json!({"Name": name}));
    assert!(err_of(&reply).contains("mounted"), "{reply}");

    call(
        s,
        "/VolumeDriver.Unmount",
        json!({"Name": name, "ID": id_a}),
    );
    assert_eq!(server.live_mounts(), 1);
    call(
        s,
        "/VolumeDriver.Unmount",
        json!({"Name": name, "ID": id_b}),
    );
    assert_eq!(server.live_mounts(), 0);

    let (_, list) = call(s, "/VolumeDriver.List", json!({}));
    assert_eq!(list["Volumes"].as_array().unwrap().len(), 1);
    let (status, reply) = call(s, "/VolumeDriver.Remove", json!({"Name": name}));
    assert_eq!((status, err_of(&reply)), (200, ""));
    let (_, list) = call(s, "/VolumeDriver.List", json!({}));
    assert_eq!(list["Volumes"], json!([]));
}

#[test]
fn volumes_survive_a_restart_and_mount_again() {
    let server = TestServer::start();
    call(
        &server.socket,
        "/VolumeDriver.Create",
        json!({"Name": "secret/a"}),
    );
    call(
        &server.socket,
        "/VolumeDriver.Create",
        json!({"Name": "kv/b/"}),
    );
    let server = server.restart();
    let (_, list) = call(&server.socket, "/VolumeDriver.List", json!({}));
    let names: Vec<&str> = list["Volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["kv/b/", "secret/a"]);
    let (_, reply) = call(
        &server.socket,
        "/VolumeDriver.Mount",
        json!({"Name": "secret/a", "ID": "x"}),
    );
    assert_eq!(err_of(&reply), "");
    assert_eq!(server.live_mounts(), 1);
}

#[test]
fn bad_input_gets_a_clear_err_and_the_server_keeps_serving() {
    let server = TestServer::start();
    let s = &server.socket;
    let oversized = vec![b' '; server::MAX_BODY_BYTES + 1];
    let long_name = format!("secret/{}", "a".repeat(1100));
    let raw_cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "/VolumeDriver.Create",
            b"{not json".to_vec(),
            400,
            "malformed JSON",
        ),
        (
            "/VolumeDriver.Create",
            b"[1,2]".to_vec(),
            400,
            "malformed JSON",
        ),
        (
            "/VolumeDriver.Create",
            br#"{"Name": 5}"#.to_vec(),
            400,
            "malformed JSON",
        ),
        (
            "/VolumeDriver.Mount",
            br#"{"ID": "x"}"#.to_vec(),
            400,
            "Name",
        ),
        (
            "/VolumeDriver.Bogus",
            b"{}".to_vec(),
            404,
            "unknown endpoint",
        ),
        ("/", b"{}".to_vec(), 404, "unknown endpoint"),
        ("/VolumeDriver.Create", oversized, 413, "larger than"),
    ];
    for (endpoint, body, status, message) in raw_cases {
        let (got, reply) = call_raw(s, endpoint, &body);
        assert_eq!(got, status, "{endpoint}: {reply}");
        assert!(err_of(&reply).contains(message), "{endpoint}: {reply}");
    }
    let bad_names: Vec<(String, &str)> = vec![
        ("secret/../sys".into(), "'..'"),
        ("secret/./x".into(), "'..'"),
        ("secret//x".into(), "empty path segment"),
        ("/secret/x".into(), "empty path segment"),
        ("".into(), "empty"),
        ("secret/a\u{0}b".into(), "control character"),
        ("secret/a\nb".into(), "control character"),
        ("secret/a\u{1b}[31m".into(), "control character"),
        (long_name, "limit is 1024"),
    ];
    for (name, message) in bad_names {
        let (status, reply) = call(s, "/VolumeDriver.Create", json!({"Name": name}));
        assert_eq!(status, 500, "{name:?}");
        let err = err_of(&reply);
        assert!(
            err.contains("invalid volume name") && err.contains(message),
            "{name:?}: {err}"
        );
    }
    let (_, reply) = call(
        s,
        "/VolumeDriver.Create",
        json!({"Name": "secret/x", "Opts": {"refresh_interval": "soon"}}),
    );
    assert!(
        err_of(&reply).contains("volume option \"refresh_interval\""),
        "{reply}"
    );
    let (_, reply) = call(
        s,
        "/VolumeDriver.Create",
        json!({"Name": "secret/x", "Opts": {"token": "hvs.x"}}),
    );
    assert!(
        err_of(&reply).contains("volume option \"token\" looks like a credential"),
        "{reply}"
    );
    assert!(!reply.to_string().contains("hvs.x"), "{reply}");

    let (status, reply) = call(
        s,
        "/VolumeDriver.Mount",
        json!({"Name": "never/created", "ID": "x"}),
    );
    assert_eq!(status, 500);
    assert!(
        err_of(&reply).contains("no volume named \"never/created\""),
        "{reply}"
    );
    let (status, reply) = call(
        s,
        "/VolumeDriver.Unmount",
        json!({"Name": "never/created", "ID": "x"}),
    );
    assert_eq!((status, err_of(&reply)), (200, ""));
    call(s, "/VolumeDriver.Create", json!({"Name": "secret/ok"}));
    let (status, reply) = call(
        s,
        "/VolumeDriver.Unmount",
        json!({"Name": "secret/ok", "ID": "unknown"}),
    );
    assert_eq!((status, err_of(&reply)), (200, ""));

    // Nothing invalid was recorded, and the server still answers.
    let (_, list) = call(s, "/VolumeDriver.List", json!({}));
    assert_eq!(list["Volumes"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(server.live_mounts(), 0);
}

#[test]
fn repeated_and_stale_mount_ids_under_concurrency_leave_exact_counts() {
    let server = TestServer::start();
    let s = server.socket.clone();
    call(&s, "/VolumeDriver.Create", json!({"Name": "secret/busy"}));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let id = format!("{t}-{}", i % 5);
                    let (_, m) = call(
                        &s,
                        "/VolumeDriver.Mount",
                        json!({"Name": "secret/busy", "ID": id}),
                    );
                    assert_eq!(err_of(&m), "");
                    call(
                        &s,
                        "/VolumeDriver.Unmount",
                        json!({"Name": "secret/busy", "ID": format!("stale-{t}")}),
                    );
                    let (_, u) = call(
                        &s,
                        "/VolumeDriver.Unmount",
                        json!({"Name": "secret/busy", "ID": id}),
                    );
                    assert_eq!(err_of(&u), "");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(server.live_mounts(), 0);
    let (_, reply) = call(&s, "/VolumeDriver.Get", json!({"Name": "secret/busy"}));
    assert_eq!(reply["Volume"]["Status"]["Mounts"], 0);
}
