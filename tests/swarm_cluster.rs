//! Docker Swarm on three booted systemd hosts, with a 3-node OpenBao Raft cluster on the same hosts
//! (tests/support/cluster.rs): services read the secret on every node, see rotations, survive a node's hard stop and
//! the hard stop of the OpenBao leader's host, roll to a new image, and leave nothing behind once removed.
//!
//! One test, in order, because the cluster takes a minute or two to build. It prints P11 (service create to every
//! replica reading), the Vault requests per key per minute with 3 nodes x 10 replicas, and its wall time.
//!
//! Needs the systemd host image, bao and the package (scripts/setup-test-host.sh, packaging/build-deb.sh). Fails,
//! never skips.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/docker.rs"]
mod docker;
#[path = "support/openbao_in_host.rs"]
mod openbao_in_host;
#[path = "support/systemd_host.rs"]
mod systemd_host;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use cluster::{since, Cluster, READER_LOOP_FILE, REFRESH_INTERVAL, UPDATED_IMAGE};
use docker::TEST_IMAGE;

const SERVICE: &str = "reader";
const FIRST: &str = "first-value-6d1e";
const SECOND: &str = "rotated-value-93ab";
const NEW_KEY_VALUE: &str = "written-after-the-leader-died-27fc";
/// Rescheduled tasks read within this of their start, and new keys are readable within this of a leader's loss.
const RECOVERY: Duration = Duration::from_secs(30);

#[test]
fn swarm_services_read_on_every_node_through_rotation_updates_and_node_loss() {
    let wall = Instant::now();
    let cluster = Cluster::start();
    cluster.bao(
        0,
        &format!("kv put secret/app-1/db-password value={FIRST} >/dev/null"),
    );

    // The `--mount` form, naming the driver in the mount (`--volume-driver` is ignored with `--mount`).
    let created = SystemTime::now();
    cluster.swarm(&format!(
        "docker service create --detach --quiet --name {SERVICE} --replicas 3 --no-resolve-image \
         --mount type=volume,volume-driver=libsecret,source=secret/app-1,target=/secrets,readonly \
         {TEST_IMAGE} sh -c \"$(cat {READER_LOOP_FILE})\""
    ));
    let tasks = cluster.wait_for_reads(SERVICE, 3, Duration::from_secs(120), |v| v == FIRST);
    let nodes: BTreeSet<usize> = tasks.iter().map(|t| t.node).collect();
    assert_eq!(
        nodes.len(),
        3,
        "Swarm spreads 3 replicas over 3 nodes: {tasks:?}"
    );
    let p11 = tasks
        .iter()
        .map(|t| since(t.first_read, created))
        .max()
        .unwrap();
    println!("P11: service create to 3 replicas on 3 nodes reading: {p11:.2?}");
    no_credentials_in_docker_records(&cluster);
    each_node_logged_in_with_its_own_role(&cluster);

    rotation_reaches_every_task(&cluster);
    stack_deploy_of_the_example(&cluster);
    requests_per_key_with_ten_replicas_per_node(&cluster);
    rolling_update_never_fails_a_read(&cluster);
    node_stopped_hard(&cluster);
    vault_leader_host_stopped_hard(&cluster);
    let failed = cluster.failed_reads(SERVICE, created);
    assert!(failed.is_empty(), "reads failed: {failed:#?}");
    nothing_left_after_service_rm(&cluster);
    println!("swarm_cluster wall time: {:.1?}", wall.elapsed());
}

/// Neither a service's nor a volume's record on any node holds a credential of any node.
fn no_credentials_in_docker_records(cluster: &Cluster) {
    for node in &cluster.nodes {
        let records = node.host.exec_ok(&format!(
            "docker volume inspect secret/app-1; docker service inspect {SERVICE}; docker inspect $(docker ps -q)"
        ));
        assert!(
            records.contains(r#""Driver": "libsecret""#) && records.contains(r#""Scope": "local""#),
            "{}: the volume is a local-scope libsecret volume: {records}",
            node.name
        );
        for other in &cluster.nodes {
            for credential in [&other.role_id, &other.secret_id, &cluster.root_token] {
                assert!(
                    !records.contains(credential.as_str()),
                    "{}: a credential is in Docker's records",
                    node.name
                );
            }
        }
    }
}

/// The audit logs show each node's AppRole login coming from that node's address, and no node using another's.
fn each_node_logged_in_with_its_own_role(cluster: &Cluster) {
    let mut logins = BTreeSet::new();
    for node in &cluster.nodes {
        let out = node.host.exec_ok(&format!(
            "grep '\"type\":\"response\"' {} | grep '\"path\":\"auth/approle/login\"' || true",
            openbao_in_host::AUDIT_LOG
        ));
        for line in out.lines() {
            let entry: serde_json::Value = serde_json::from_str(line).unwrap();
            let role = entry["auth"]["metadata"]["role_name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let from = entry["request"]["remote_address"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            logins.insert((role, from));
        }
    }
    let expected: BTreeSet<(String, String)> = cluster
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.ip.clone()))
        .collect();
    assert_eq!(
        logins, expected,
        "AppRole logins (role, client address) in the audit logs"
    );
}

/// A value written to Vault reaches every task on every node within `refresh_interval` + 1 s of the write (the time
/// OpenBao gives the new version, against the time the task's read was logged).
fn rotation_reaches_every_task(cluster: &Cluster) {
    let writer = cluster.live_node();
    cluster.bao(
        writer,
        &format!("kv put secret/app-1/db-password value={SECOND} >/dev/null"),
    );
    let metadata = cluster.bao(
        writer,
        "kv metadata get -format=json secret/app-1/db-password",
    );
    let metadata: serde_json::Value = serde_json::from_str(&metadata).unwrap();
    let version = metadata["data"]["current_version"].as_u64().unwrap();
    let written = metadata["data"]["versions"][version.to_string()]["created_time"]
        .as_str()
        .unwrap();
    let written =
        humantime::parse_rfc3339(written).unwrap_or_else(|e| panic!("created_time {written}: {e}"));
    let tasks = cluster.wait_for_reads(SERVICE, 3, Duration::from_secs(60), |v| v == SECOND);
    let bound = REFRESH_INTERVAL + Duration::from_secs(1);
    for task in &tasks {
        let lag = since(task.first_read, written);
        println!(
            "rotation reached task {} on {} after {lag:.2?}",
            task.task, cluster.nodes[task.node].name
        );
        assert!(
            lag <= bound,
            "the rotated value reached task {} on {} {lag:.2?} after the write (refresh_interval + 1 s = {bound:?})",
            task.task,
            cluster.nodes[task.node].name
        );
    }
}

/// `docker stack deploy` of packaging/examples/swarm-stack.yml (`driver: libsecret`): every task on every node
/// reads; then `docker stack rm`.
fn stack_deploy_of_the_example(cluster: &Cluster) {
    let manager = &cluster.nodes[cluster.live_node()].host;
    manager.copy_in(
        &systemd_host::workspace().join("packaging/examples/swarm-stack.yml"),
        "/root/swarm-stack.yml",
    );
    let deployed = SystemTime::now();
    manager.exec_ok(&format!(
        "APP_IMAGE={TEST_IMAGE} docker stack deploy --resolve-image never -c /root/swarm-stack.yml app-1"
    ));
    let tasks = cluster.wait_for_reads("app-1_app", 3, Duration::from_secs(120), |_| true);
    let nodes: BTreeSet<usize> = tasks.iter().map(|t| t.node).collect();
    assert_eq!(
        nodes.len(),
        3,
        "the stack's 3 replicas on 3 nodes: {tasks:?}"
    );
    let failed = cluster.failed_reads("app-1_app", deployed);
    assert!(failed.is_empty(), "the stack's reads failed: {failed:#?}");
    let slowest = tasks
        .iter()
        .map(|t| since(t.first_read, deployed))
        .max()
        .unwrap();
    println!("stack deploy to 3 replicas reading: {slowest:.2?}");
    manager.exec_ok("docker stack rm app-1");
}

/// 10 replicas per node share their node's mount: Vault sees each key about once per node per refresh_interval,
/// whatever the replica count.
fn requests_per_key_with_ten_replicas_per_node(cluster: &Cluster) {
    cluster.swarm(&format!(
        "docker service scale --detach {SERVICE}=30 >/dev/null"
    ));
    let tasks = cluster.wait_for_reads(SERVICE, 30, Duration::from_secs(180), |v| v == SECOND);
    let per_node: Vec<usize> = (0..3)
        .map(|n| tasks.iter().filter(|t| t.node == n).count())
        .collect();
    let path = "secret/data/app-1/db-password";
    let window = Duration::from_secs(30);
    let before = cluster.audited_requests(path);
    std::thread::sleep(window);
    let after = cluster.audited_requests(path);
    let requests = after.difference(&before).count();
    let per_minute = requests as f64 * 60.0 / window.as_secs_f64();
    println!(
        "Vault requests for one key, 3 nodes x 10 replicas (tasks per node {per_node:?}), refresh_interval {}s: \
         {requests} in {window:?} = {per_minute:.1}/min (3 nodes x 60 s / refresh_interval = {}/min)",
        REFRESH_INTERVAL.as_secs(),
        3 * 60 / REFRESH_INTERVAL.as_secs()
    );
    let refreshes = 3 * (window.as_secs() / REFRESH_INTERVAL.as_secs()) as usize;
    assert!(
        requests > 0 && requests <= refreshes + 3,
        "{requests} requests for {path} in {window:?}: each node's mount should read it once per refresh_interval \
         (about {refreshes}), however many replicas read it"
    );
    cluster.swarm(&format!(
        "docker service scale --detach=false {SERVICE}=3 >/dev/null"
    ));
}

/// `docker service update` to a new image tag, one task at a time: every task, old and new, only ever reads.
fn rolling_update_never_fails_a_read(cluster: &Cluster) {
    let updating = SystemTime::now();
    cluster.swarm(&format!(
        "docker service update --detach=false --quiet --no-resolve-image --image {UPDATED_IMAGE} \
         --update-parallelism 1 --update-delay 1s {SERVICE}"
    ));
    let tasks = cluster.wait_for_reads(SERVICE, 3, Duration::from_secs(120), |v| v == SECOND);
    for task in &tasks {
        let image = cluster.nodes[task.node].host.exec_ok(&format!(
            "docker inspect --format '{{{{.Config.Image}}}}' {}",
            task.container
        ));
        assert!(
            image.trim().starts_with(UPDATED_IMAGE),
            "task {} runs {image} after the update",
            task.task
        );
        assert!(task.first_read >= updating, "task {} is not new", task.task);
    }
    let failed = cluster.failed_reads(SERVICE, updating);
    assert!(
        failed.is_empty(),
        "reads failed during the rolling update: {failed:#?}"
    );
}

/// Waits for 3 running, reading tasks on live nodes after node `lost` went down at `stopped`; asserts that each task
/// rescheduled off it read within [`RECOVERY`] of its container's start, and prints the times.
fn rescheduled_tasks_read(
    cluster: &Cluster,
    lost: usize,
    before: &BTreeSet<String>,
    stopped: SystemTime,
) {
    let tasks = cluster.wait_for_reads(SERVICE, 3, Duration::from_secs(150), |v| v == SECOND);
    let rescheduled: Vec<_> = tasks.iter().filter(|t| !before.contains(&t.task)).collect();
    assert!(
        !rescheduled.is_empty() && tasks.iter().all(|t| t.node != lost),
        "the task on {} was not rescheduled: {tasks:?}",
        cluster.nodes[lost].name
    );
    for task in rescheduled {
        let (created, started) = cluster.created_and_started(task.node, &task.container);
        let read_after = since(task.first_read, created);
        println!(
            "task {} rescheduled to {} {:.1?} after the stop: container created, started {:.2?} later, read \
             {read_after:.2?} after its creation",
            task.task,
            cluster.nodes[task.node].name,
            since(created, stopped),
            since(started, created)
        );
        assert!(
            read_after <= RECOVERY,
            "rescheduled task {} read {read_after:.2?} after its container was created",
            task.task
        );
    }
}

/// A host that is neither OpenBao's nor Swarm's leader stops hard: its task is rescheduled and reads; the others
/// never fail a read. The host is booted again and rejoins both clusters, the driver reported again.
fn node_stopped_hard(cluster: &Cluster) {
    let (vault_leader, swarm_leader) = (cluster.vault_leader(), cluster.swarm_leader());
    let lost = (0..3)
        .find(|n| *n != vault_leader && *n != swarm_leader)
        .unwrap();
    let before: BTreeSet<String> = cluster
        .running_tasks(SERVICE)
        .into_iter()
        .map(|(_, task)| task)
        .collect();
    let stopped = SystemTime::now();
    cluster.kill(lost);
    rescheduled_tasks_read(cluster, lost, &before, stopped);
    let failed = cluster.failed_reads(SERVICE, stopped);
    assert!(
        failed.is_empty(),
        "reads failed after a node stopped: {failed:#?}"
    );
    let booting = Instant::now();
    cluster.boot(lost);
    println!(
        "{} booted and back in OpenBao's and Swarm's clusters, driver reported, in {:.1?}",
        cluster.nodes[lost].name,
        booting.elapsed()
    );
}

/// The host of the active OpenBao server stops hard: reads of cached keys never fail on any node, a key written
/// after the loss is readable within [`RECOVERY`], and the tasks from that host are rescheduled and read.
fn vault_leader_host_stopped_hard(cluster: &Cluster) {
    let lost = cluster.vault_leader();
    let running = cluster.running_tasks(SERVICE);
    let before: BTreeSet<String> = running.iter().map(|(_, task)| task.clone()).collect();
    let reader = running.into_iter().find(|(node, _)| *node != lost).unwrap();
    let reader_container = cluster.container(reader.0, &reader.1).unwrap();
    let stopped = SystemTime::now();
    let clock = Instant::now();
    cluster.kill(lost);

    let writer = cluster.live_node();
    loop {
        let (code, _, err) = cluster.try_bao(
            writer,
            &format!("kv put secret/app-1/new-key value={NEW_KEY_VALUE}"),
        );
        if code == 0 {
            break;
        }
        assert!(
            clock.elapsed() < RECOVERY,
            "OpenBao took no write {RECOVERY:?} after its leader's host stopped: {err}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let written = clock.elapsed();
    let reader_host = &cluster.nodes[reader.0].host;
    loop {
        let (code, out, _) = reader_host.exec(&format!(
            "docker exec {reader_container} cat /secrets/new-key"
        ));
        if code == 0 && out == NEW_KEY_VALUE {
            break;
        }
        assert!(
            clock.elapsed() < RECOVERY,
            "new-key not readable on {} {RECOVERY:?} after the OpenBao leader's host stopped (last: exit {code}, \
             {out:?})\n{}",
            cluster.nodes[reader.0].name,
            cluster.driver_journals()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    println!(
        "OpenBao leader's host {} stopped: a new leader took a write after {written:.1?}; the new key was read on {} \
         after {:.1?}",
        cluster.nodes[lost].name,
        cluster.nodes[reader.0].name,
        clock.elapsed()
    );
    rescheduled_tasks_read(cluster, lost, &before, stopped);
    // Past a refresh or two made while Vault was down or electing.
    std::thread::sleep(REFRESH_INTERVAL * 2);
    let failed = cluster.failed_reads(SERVICE, stopped);
    assert!(
        failed.is_empty(),
        "reads of cached keys failed after the OpenBao leader's host stopped: {failed:#?}"
    );
    cluster.boot(lost);
}

/// After `docker service rm` (and the earlier `docker stack rm`), no node has a task container, a mount unit or a
/// FUSE mount. Docker keeps the volume record it created on each node (as README.md says), and
/// `docker volume rm` removes it.
fn nothing_left_after_service_rm(cluster: &Cluster) {
    cluster.swarm(&format!("docker service rm {SERVICE} >/dev/null"));
    let deadline = Instant::now() + Duration::from_secs(60);
    for node in &cluster.nodes {
        loop {
            let left = node.host.exec_ok(
                "docker ps -a -q --filter label=com.docker.swarm.service.name; \
                 systemctl list-units --all --plain --no-legend 'docker-volume-libsecret-mount-*'; \
                 awk '$3 ~ /^fuse(\\.|$)/' /proc/mounts",
            );
            if left.trim().is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} still has task containers, mount units or FUSE mounts after service rm:\n{left}",
                node.name
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let volumes = node
            .host
            .exec_ok("docker volume ls -q --filter driver=libsecret");
        assert_eq!(
            volumes.trim(),
            "secret/app-1",
            "{}: Docker keeps the one volume record it created",
            node.name
        );
        node.host
            .exec_ok("docker volume rm secret/app-1 >/dev/null");
        let volumes = node
            .host
            .exec_ok("docker volume ls -q --filter driver=libsecret");
        assert!(volumes.trim().is_empty(), "{}: {volumes}", node.name);
    }
}
