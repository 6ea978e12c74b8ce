//! Core tier: the mount boundary under concurrency, through the plugin core (`Plugin::handle`) with the one fake
//! mounter. A slow unit start of one volume holds up no call for another volume; concurrent calls for one volume
//! are ordered and keep exact counts.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use docker_volume_libsecret::plugin::Plugin;
use docker_volume_libsecret::testing::{FakeMounter, MemoryRecordStore};
use docker_volume_libsecret::volumes::Volumes;
use serde_json::json;

const SLOW: &str = "secret/slow";
const QUICK: &str = "secret/quick";

async fn plugin_over(mounter: &FakeMounter) -> (Plugin, Arc<Volumes>) {
    let volumes = Volumes::open(
        Box::new(MemoryRecordStore::default()),
        Box::new(mounter.clone()),
        PathBuf::from("/run/test-mounts"),
    )
    .await
    .unwrap();
    let volumes = Arc::new(volumes);
    let plugin = Plugin::new(volumes.clone());
    for name in [SLOW, QUICK] {
        let reply = plugin
            .handle(
                "/VolumeDriver.Create",
                json!({ "Name": name }).to_string().as_bytes(),
            )
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    (plugin, volumes)
}

async fn call(plugin: &Plugin, method: &str, name: &str, id: &str) -> u16 {
    let body = json!({ "Name": name, "ID": id }).to_string();
    let reply = plugin.handle(method, body.as_bytes()).await;
    assert_eq!(reply.status, 200, "{method} {name} {id}: {reply:?}");
    reply.status
}

/// The clock is paused: time moves only when every task waits. A Mount of the quick volume that waited for the
/// slow volume's 20 s unit start would let the clock run to 20 s, past the 1 s timeout.
#[tokio::test(start_paused = true)]
async fn a_slow_unit_start_of_one_volume_holds_up_no_other_volume() {
    let mounter = FakeMounter::outliving();
    let (plugin, volumes) = plugin_over(&mounter).await;
    mounter.hold(SLOW, Duration::from_secs(20));
    let started = tokio::time::Instant::now();
    let slow = tokio::spawn({
        let plugin = plugin.clone();
        async move { call(&plugin, "/VolumeDriver.Mount", SLOW, "slow-1").await }
    });
    // Let the slow Mount reach its unit start.
    tokio::task::yield_now().await;
    let quick = tokio::time::timeout(
        Duration::from_secs(1),
        call(&plugin, "/VolumeDriver.Mount", QUICK, "quick-1"),
    )
    .await;
    assert_eq!(
        quick,
        Ok(200),
        "the quick volume's Mount waited for the slow one"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    // Get, List and the other volume's Unmount answer meanwhile too.
    for (method, body) in [
        ("/VolumeDriver.Get", json!({ "Name": SLOW })),
        ("/VolumeDriver.List", json!({})),
        (
            "/VolumeDriver.Unmount",
            json!({ "Name": QUICK, "ID": "quick-1" }),
        ),
    ] {
        let reply = tokio::time::timeout(
            Duration::from_secs(1),
            plugin.handle(method, body.to_string().as_bytes()),
        )
        .await
        .unwrap_or_else(|_| panic!("{method} waited for the slow volume's unit start"));
        assert_eq!(reply.status, 200, "{method}: {reply:?}");
    }
    assert!(
        !slow.is_finished(),
        "the slow unit start is still under way"
    );
    assert_eq!(slow.await.unwrap(), 200);
    assert!(started.elapsed() >= Duration::from_secs(20));
    assert_eq!(volumes.get(SLOW).unwrap().mount_ids, 1);
    assert_eq!(volumes.get(QUICK).unwrap().mount_ids, 0);
    assert_eq!((mounter.mounts(), mounter.unmounts()), (2, 1));
    assert_eq!(mounter.violations(), Vec::<String>::new());
}

/// A second Mount of the slow volume, sent during its unit start, waits for it (ordered) and does not start a
/// second unit.
#[tokio::test(start_paused = true)]
async fn calls_for_one_volume_wait_for_its_unit_start_and_start_one_unit() {
    let mounter = FakeMounter::outliving();
    let (plugin, volumes) = plugin_over(&mounter).await;
    mounter.hold(SLOW, Duration::from_secs(20));
    let first = tokio::spawn({
        let plugin = plugin.clone();
        async move { call(&plugin, "/VolumeDriver.Mount", SLOW, "a").await }
    });
    tokio::task::yield_now().await;
    let second = tokio::time::timeout(
        Duration::from_secs(1),
        call(&plugin, "/VolumeDriver.Mount", SLOW, "b"),
    )
    .await;
    assert!(
        second.is_err(),
        "a Mount of the same volume overtook its unit start"
    );
    assert_eq!(first.await.unwrap(), 200);
    call(&plugin, "/VolumeDriver.Mount", SLOW, "b").await;
    assert_eq!(volumes.get(SLOW).unwrap().mount_ids, 2);
    assert_eq!(mounter.mounts(), 1);
    assert_eq!(mounter.violations(), Vec::<String>::new());
}

/// 200 concurrent calls on two volumes, on a multi-threaded runtime, in three rounds: 200 Mounts (50 IDs per
/// volume, each twice), then 100 Unmounts racing 100 Mounts of new IDs, then every remaining Unmount.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_mounts_and_unmounts_on_two_volumes_keep_exact_counts() {
    let mounter = FakeMounter::outliving();
    let (plugin, volumes) = plugin_over(&mounter).await;
    let round = |calls: Vec<(&'static str, &'static str, String)>| {
        let plugin = plugin.clone();
        async move {
            let tasks: Vec<_> = calls
                .into_iter()
                .map(|(method, name, id)| {
                    let plugin = plugin.clone();
                    tokio::spawn(async move { call(&plugin, method, name, &id).await })
                })
                .collect();
            assert_eq!(tasks.len(), 200);
            for task in tasks {
                assert_eq!(task.await.unwrap(), 200);
            }
        }
    };
    let mut calls = Vec::new();
    for id in 0..50 {
        for name in [SLOW, QUICK] {
            calls.push(("/VolumeDriver.Mount", name, format!("id-{id}")));
            calls.push(("/VolumeDriver.Mount", name, format!("id-{id}")));
        }
    }
    round(calls).await;
    for name in [SLOW, QUICK] {
        assert_eq!(volumes.get(name).unwrap().mount_ids, 50, "{name}");
    }
    assert_eq!(mounter.mounts(), 2, "one filesystem per volume");

    let mut calls = Vec::new();
    for id in 0..50 {
        for name in [SLOW, QUICK] {
            calls.push(("/VolumeDriver.Unmount", name, format!("id-{id}")));
            calls.push(("/VolumeDriver.Mount", name, format!("id-{}", id + 50)));
        }
    }
    round(calls).await;
    for name in [SLOW, QUICK] {
        // IDs 0..50 once each and IDs 50..100 once each: the filesystem never went away.
        assert_eq!(volumes.get(name).unwrap().mount_ids, 100, "{name}");
    }
    assert_eq!((mounter.mounts(), mounter.unmounts()), (2, 0));

    let mut calls = Vec::new();
    for id in 0..100 {
        for name in [SLOW, QUICK] {
            calls.push(("/VolumeDriver.Unmount", name, format!("id-{id}")));
        }
    }
    round(calls).await;
    for name in [SLOW, QUICK] {
        let info = volumes.get(name).unwrap();
        assert_eq!((info.mount_ids, info.mountpoint), (0, None), "{name}");
    }
    assert_eq!((mounter.mounts(), mounter.unmounts()), (2, 2));
    assert!(mounter.live().is_empty());
    assert_eq!(mounter.violations(), Vec::<String>::new());
}
