//! Three booted systemd hosts (tests/support/systemd_host.rs) on a Docker network the test creates, as a Swarm of
//! three managers, with a 3-node OpenBao Raft cluster across the same hosts, so Vault HA and Swarm fail together.
//!
//! Each host has the Debian package installed with apt and its socket enabled; its driver logs in with its own
//! AppRole (`node1`, `node2`, `node3`: role and secret ID in root-only files, never in service or volume options)
//! and lists every OpenBao node in `vault.addr`. The hosts have fixed addresses on the network, so a host stopped
//! hard and booted again comes back where the Swarm and the Raft cluster expect it.
//!
//! Reader tasks print one line per read of `/secrets/<key>`: `ok <value>` or `FAIL <error>`; `docker logs -t`
//! stamps each line, so times are measured where the read happened, not when the test polled.
//!
//! Included by path next to `mod docker;`, `mod systemd_host;` and `mod openbao_in_host;`. Fails loudly, never skips.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use super::docker::{docker, TEST_IMAGE};
use super::openbao_in_host::{self, RaftServer, ADDR, AUDIT_LOG};
use super::systemd_host::{package, SystemdHost};

/// How often each mount reads its keys from Vault again: a rotation reaches every task within this and 1 s.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// A second tag of the test image, for rolling updates to a new image.
pub const UPDATED_IMAGE: &str = "libsecret-test/busybox:v2";
/// The shell loop of every reader task (each node has it at [`READER_LOOP_FILE`]): a read of
/// `/secrets/db-password` every 200 ms, and a clean exit on SIGTERM.
const READER_LOOP: &str = r#"trap 'exit 0' TERM
while true; do
  if v=$(cat /secrets/db-password 2>&1); then echo "ok $v"; else echo "FAIL $v"; fi
  sleep 0.2
done"#;
/// Where each node keeps [`READER_LOOP`]: `docker service create ... sh -c "$(cat READER_LOOP_FILE)"`.
pub const READER_LOOP_FILE: &str = "/root/reader-loop.sh";

/// One host of the cluster.
pub struct Node {
    pub host: SystemdHost,
    /// Its name on the network, its Swarm hostname and its OpenBao node id: `node1`...
    pub name: String,
    pub ip: String,
    /// This host's own AppRole credentials (the test checks they never show up in Docker's records).
    pub role_id: String,
    pub secret_id: String,
}

/// The three hosts, their network, and OpenBao's root token.
pub struct Cluster {
    pub nodes: Vec<Node>,
    network: String,
    pub root_token: String,
    /// Which nodes are stopped ([`Cluster::kill`]): commands go to the others.
    down: std::sync::Mutex<BTreeSet<usize>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The hosts first: a network with containers on it cannot be removed.
        self.nodes.clear();
        let _ = docker(&["network", "rm", &self.network]);
    }
}

/// `docker network create` on the first free /24 of 172.29.0.0/16: fixed addresses need a subnet the test names.
fn create_network(name: &str) -> String {
    let mut last = String::new();
    for third in (0..250).map(|n| (n + std::process::id() as usize) % 250) {
        let subnet = format!("172.29.{third}.0/24");
        let (code, _, err) = docker(&[
            "network",
            "create",
            "--subnet",
            &subnet,
            "--label",
            "libsecret-test=cluster",
            name,
        ]);
        if code == 0 {
            return format!("172.29.{third}");
        }
        last = err;
    }
    panic!("no free /24 in 172.29.0.0/16 for the cluster network: {last}");
}

impl Cluster {
    /// Starts the hosts, the OpenBao cluster (every server a voter), the drivers and the Swarm, and waits until every
    /// node reports the libsecret volume driver to the managers. Prints how long that took.
    pub fn start() -> Cluster {
        let started = Instant::now();
        let deb = package();
        let network = format!("libsecret-cluster-{}", std::process::id());
        let _ = docker(&["network", "rm", &network]);
        let prefix = create_network(&network);
        let hosts: Vec<(String, String, SystemdHost)> = std::thread::scope(|scope| {
            let starting: Vec<_> = (1..=3)
                .map(|n| {
                    let (network, prefix) = (&network, &prefix);
                    scope.spawn(move || {
                        let (name, ip) = (format!("node{n}"), format!("{prefix}.{}", 10 + n));
                        let host = SystemdHost::start_with(&[
                            "--network",
                            network,
                            "--ip",
                            &ip,
                            "--hostname",
                            &name,
                            "--network-alias",
                            &name,
                        ]);
                        (name, ip, host)
                    })
                })
                .collect();
            starting.into_iter().map(|h| h.join().unwrap()).collect()
        });
        std::thread::scope(|scope| {
            for (name, _, host) in &hosts {
                let deb = &deb;
                scope.spawn(move || {
                    host.copy_in(deb, "/root/docker-volume-libsecret.deb");
                    host.exec_ok(
                        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q /root/docker-volume-libsecret.deb",
                    );
                    host.load_image(TEST_IMAGE);
                    host.exec_ok(&format!(
                        "docker tag {TEST_IMAGE} {UPDATED_IMAGE}\ncat > {READER_LOOP_FILE} <<'SH'\n{READER_LOOP}\nSH"
                    ));
                    openbao_in_host::install_raft_server(
                        host,
                        &RaftServer {
                            node_id: name,
                            listen: "0.0.0.0",
                            name,
                        },
                    );
                });
            }
        });
        println!(
            "cluster: 3 hosts booted, package and OpenBao installed in {:.1?}",
            started.elapsed()
        );

        // OpenBao: node1 is initialised; the others join it and are unsealed with the same key.
        let first = &hosts[0].2;
        let (root_token, key) = openbao_in_host::init(first);
        openbao_in_host::unseal(first, &key);
        for (_, _, host) in &hosts[1..] {
            host.exec_ok(&format!(
                "BAO_ADDR={ADDR} /usr/local/bin/bao operator raft join http://node1:8200 >/dev/null"
            ));
            openbao_in_host::unseal(host, &key);
        }
        openbao_in_host::enable_kv(first, &root_token);
        let bao = |args: &str| openbao_in_host::bao_as(first, &root_token, args);
        bao("auth enable approle >/dev/null");
        first.exec_ok(
            "cat > /tmp/reader.hcl <<'HCL'\npath \"secret/data/app-1/*\" { capabilities = [\"read\"] }\n\
             path \"secret/metadata/app-1/*\" { capabilities = [\"list\"] }\nHCL",
        );
        bao("policy write reader /tmp/reader.hcl >/dev/null");
        let credentials: Vec<(String, String)> = hosts
            .iter()
            .map(|(name, _, _)| {
                bao(&format!(
                    "write auth/approle/role/{name} token_policies=reader token_ttl=1h token_max_ttl=24h >/dev/null"
                ));
                let role_id = bao(&format!("read -field=role_id auth/approle/role/{name}/role-id"));
                let secret_id = bao(&format!(
                    "write -f -field=secret_id auth/approle/role/{name}/secret-id"
                ));
                (role_id.trim().to_owned(), secret_id.trim().to_owned())
            })
            .collect();
        let nodes = hosts
            .into_iter()
            .zip(credentials)
            .map(|((name, ip, host), (role_id, secret_id))| Node {
                host,
                name,
                ip,
                role_id,
                secret_id,
            })
            .collect();
        let cluster = Cluster {
            nodes,
            network,
            root_token,
            down: std::sync::Mutex::new(BTreeSet::new()),
        };
        cluster.wait_for_voters();
        for node in &cluster.nodes {
            node.host.exec_ok(&format!(
                r#"set -e
                umask 077
                printf '%s\n' '{role_id}' > /etc/docker-volume-libsecret/role-id
                printf '%s\n' '{secret_id}' > /etc/docker-volume-libsecret/secret-id
                cat > /etc/docker-volume-libsecret/config.toml <<'TOML'
{config}
TOML
                systemctl enable --now docker-volume-libsecret.socket"#,
                role_id = node.role_id,
                secret_id = node.secret_id,
                config = driver_config(),
            ));
        }

        // The Swarm: three managers, so it survives the loss of any one host, as the Raft cluster does.
        let leader = &cluster.nodes[0];
        leader.host.exec_ok(&format!(
            "docker swarm init --advertise-addr {} >/dev/null",
            leader.ip
        ));
        let token = leader.host.exec_ok("docker swarm join-token -q manager");
        for node in &cluster.nodes[1..] {
            node.host.exec_ok(&format!(
                "docker swarm join --token {} --advertise-addr {} {}:2377 >/dev/null",
                token.trim(),
                node.ip,
                leader.ip
            ));
        }
        for node in &cluster.nodes {
            // As README.md says for a host that joins a Swarm after the socket was enabled (at boot, and whenever
            // Docker starts, the unit runs by itself).
            node.host
                .exec_ok("systemctl restart docker-volume-libsecret-announce.service");
        }
        for index in 0..3 {
            cluster.wait_for_plugin(index);
        }
        println!(
            "cluster: ready (Swarm, OpenBao Raft, drivers) in {:.1?}",
            started.elapsed()
        );
        cluster
    }

    /// A node that is up (not [`kill`](Self::kill)ed).
    pub fn live_node(&self) -> usize {
        let down = self.down.lock().unwrap();
        (0..self.nodes.len())
            .find(|i| !down.contains(i))
            .unwrap_or_else(|| panic!("no node is up"))
    }

    pub fn is_down(&self, index: usize) -> bool {
        self.down.lock().unwrap().contains(&index)
    }

    /// `bao <args>` with the root token on node `index`; its stdout.
    pub fn bao(&self, index: usize, args: &str) -> String {
        openbao_in_host::bao_as(&self.nodes[index].host, &self.root_token, args)
    }

    /// [`bao`](Self::bao) for polling: (exit code, stdout, stderr), never a panic.
    pub fn try_bao(&self, index: usize, args: &str) -> (i32, String, String) {
        self.nodes[index]
            .host
            .exec(&openbao_in_host::bao_command(&self.root_token, args))
    }

    /// `docker <script>` on a live manager; panics on failure. While the managers elect a leader (a manager was just
    /// lost) they answer "context deadline exceeded" or "does not have a leader": that is retried for up to 60 s.
    pub fn swarm(&self, script: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, out, err) = self.nodes[self.live_node()].host.exec(script);
            if code == 0 {
                return out;
            }
            let electing =
                err.contains("context deadline exceeded") || err.contains("does not have a leader");
            assert!(
                electing && Instant::now() < deadline,
                "`{script}` on a manager exited {code}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The node of the active OpenBao server (from `sys/leader` on a live node).
    pub fn vault_leader(&self) -> usize {
        let index = self.live_node();
        let out = self.nodes[index]
            .host
            .exec_ok(&format!("curl -fs {ADDR}/v1/sys/leader"));
        let leader: serde_json::Value = serde_json::from_str(&out).unwrap();
        let address = leader["leader_address"].as_str().unwrap_or_default();
        self.nodes
            .iter()
            .position(|n| address == format!("http://{}:8200", n.name))
            .unwrap_or_else(|| panic!("sys/leader names no node of the cluster: {out}"))
    }

    /// The node Swarm's managers have as their leader.
    pub fn swarm_leader(&self) -> usize {
        let out = self.swarm("docker node ls --format '{{.Hostname}} {{.ManagerStatus}}'");
        let name = out
            .lines()
            .find(|l| l.ends_with(" Leader"))
            .and_then(|l| l.split(' ').next())
            .unwrap_or_else(|| panic!("no Swarm leader in `docker node ls`: {out}"));
        self.index_of(name)
    }

    pub fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("{name} is not a node of the cluster"))
    }

    /// Waits (≤ 90 s) until OpenBao's autopilot says the cluster is healthy with three voters: only then does it
    /// survive the loss of one server (a joined server is a non-voter until autopilot promotes it).
    pub fn wait_for_voters(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (code, out, _) = self.try_bao(
                self.live_node(),
                "read -format=json sys/storage/raft/autopilot/state",
            );
            let state: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            let voters = state["data"]["voters"].as_array().map_or(0, Vec::len);
            if code == 0 && state["data"]["healthy"] == true && voters == 3 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "OpenBao's raft cluster did not become healthy with 3 voters: {out}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits (≤ 90 s) until the managers see node `index` as Ready and reporting the libsecret volume driver:
    /// Swarm places a task that mounts a libsecret volume only on such a node.
    pub fn wait_for_plugin(&self, index: usize) {
        let name = &self.nodes[index].name;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (code, out, err) = self.nodes[self.live_node()]
                .host
                .exec(&format!(
                    "docker node inspect {name} --format '{{{{.Status.State}}}} {{{{json .Description.Engine.Plugins}}}}'"
                ));
            if code == 0
                && out.starts_with("ready ")
                && out.contains(r#"{"Type":"Volume","Name":"libsecret"}"#)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} does not report the libsecret volume driver to the Swarm: {out}{err}\n{}",
                self.nodes[index].host.journal(
                    "-u docker-volume-libsecret-announce.service -u docker-volume-libsecret.service -n 40"
                )
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// A hard stop of node `index` (every process SIGKILLed); commands go to the other nodes until [`boot`](Self::boot).
    pub fn kill(&self, index: usize) {
        self.down.lock().unwrap().insert(index);
        self.nodes[index].host.kill();
    }

    /// Boots a killed node and waits until OpenBao has three healthy voters again and the node is back in the Swarm
    /// with the driver reported.
    pub fn boot(&self, index: usize) {
        self.nodes[index].host.boot();
        self.down.lock().unwrap().remove(&index);
        self.wait_for_voters();
        self.wait_for_plugin(index);
    }

    /// The running tasks of `service`: (node index, task id).
    pub fn running_tasks(&self, service: &str) -> Vec<(usize, String)> {
        let out = self.swarm(&format!(
            "docker service ps --no-trunc --filter desired-state=running --format '{{{{.Node}}}} {{{{.ID}}}} {{{{.CurrentState}}}}' {service}"
        ));
        out.lines()
            .filter(|l| l.contains(" Running "))
            .filter_map(|l| {
                let mut words = l.split(' ');
                Some((self.index_of(words.next()?), words.next()?.to_owned()))
            })
            .collect()
    }

    /// The container of task `task` on node `index`, once it exists.
    pub fn container(&self, index: usize, task: &str) -> Option<String> {
        let out = self.nodes[index].host.exec_ok(&format!(
            "docker ps -a -q --no-trunc --filter label=com.docker.swarm.task.id={task}"
        ));
        out.lines().next().map(str::to_owned)
    }

    /// Every container on node `index` that belongs (or belonged) to `service`.
    pub fn containers_of(&self, index: usize, service: &str) -> Vec<String> {
        self.nodes[index]
            .host
            .exec_ok(&format!(
                "docker ps -a -q --no-trunc --filter label=com.docker.swarm.service.name={service}"
            ))
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The reads a reader container has logged so far.
    pub fn reads(&self, index: usize, container: &str) -> Vec<Read> {
        let (_, out, _) = self.nodes[index]
            .host
            .exec(&format!("docker logs -t {container} 2>&1"));
        out.lines().filter_map(Read::parse).collect()
    }

    /// Waits (≤ `deadline`) until `service` has `replicas` running tasks that have each logged a successful read
    /// whose value satisfies `wanted`; returns them with the time of that first such read.
    pub fn wait_for_reads(
        &self,
        service: &str,
        replicas: usize,
        deadline: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Vec<ReadingTask> {
        let until = Instant::now() + deadline;
        loop {
            let tasks = self.running_tasks(service);
            let reading: Vec<ReadingTask> = tasks
                .iter()
                .filter(|(node, _)| !self.is_down(*node))
                .filter_map(|(node, task)| {
                    let container = self.container(*node, task)?;
                    let first = self
                        .reads(*node, &container)
                        .into_iter()
                        .find(|r| r.ok && wanted(&r.text))?;
                    Some(ReadingTask {
                        node: *node,
                        task: task.clone(),
                        container,
                        first_read: first.at,
                    })
                })
                .collect();
            if tasks.len() == replicas && reading.len() == replicas {
                return reading;
            }
            assert!(
                Instant::now() < until,
                "{service}: {} of {replicas} tasks running, {} reading after {deadline:?}\n{}\n{}",
                tasks.len(),
                reading.len(),
                self.swarm(&format!("docker service ps --no-trunc {service}")),
                self.driver_journals()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Failed reads logged by every container of `service` on every live node: (node, container, line).
    pub fn failed_reads(&self, service: &str, since: SystemTime) -> Vec<(String, String, String)> {
        let mut failed = Vec::new();
        for (index, node) in self.nodes.iter().enumerate() {
            if self.is_down(index) {
                continue;
            }
            for container in self.containers_of(index, service) {
                for read in self.reads(index, &container) {
                    if !read.ok && read.at >= since {
                        failed.push((node.name.clone(), container.clone(), read.text));
                    }
                }
            }
        }
        failed
    }

    /// When a container on node `index` was created and when it started.
    pub fn created_and_started(&self, index: usize, container: &str) -> (SystemTime, SystemTime) {
        let out = self.nodes[index].host.exec_ok(&format!(
            "docker inspect --format '{{{{.Created}}}} {{{{.State.StartedAt}}}}' {container}"
        ));
        let parse = |stamp: &str| {
            humantime::parse_rfc3339(stamp)
                .unwrap_or_else(|e| panic!("container {container}: {out:?}: {e}"))
        };
        let (created, started) = out.trim().split_once(' ').unwrap_or_default();
        (parse(created), parse(started))
    }

    /// The ids of the audited requests to exactly `path`, over every node's audit log (a request forwarded by a
    /// standby is counted once).
    pub fn audited_requests(&self, path: &str) -> BTreeSet<String> {
        let mut ids = BTreeSet::new();
        for (index, node) in self.nodes.iter().enumerate() {
            if self.is_down(index) {
                continue;
            }
            let out = node.host.exec_ok(&format!(
                "grep '\"type\":\"request\"' {AUDIT_LOG} | grep '\"path\":\"{path}\"' | \
                 grep -o '\"request\":{{\"id\":\"[^\"]*\"' || true"
            ));
            ids.extend(out.lines().map(str::to_owned));
        }
        ids
    }

    /// The last lines of every live node's driver and mount units, for failure messages.
    pub fn driver_journals(&self) -> String {
        let mut all = String::new();
        for (index, node) in self.nodes.iter().enumerate() {
            if !self.is_down(index) {
                all.push_str(&format!(
                    "--- {} ---\n{}",
                    node.name,
                    node.host.journal("-u 'docker-volume-libsecret*' -n 25")
                ));
            }
        }
        all
    }
}

/// The driver's config on every node: all three OpenBao nodes, this node's AppRole, reads refreshed every
/// [`REFRESH_INTERVAL`].
fn driver_config() -> String {
    format!(
        r#"refresh_interval = "{}s"

[vault]
addr = ["http://node1:8200", "http://node2:8200", "http://node3:8200"]
auth = "approle"

[vault.approle]
role_id_file = "/etc/docker-volume-libsecret/role-id"
secret_id_file = "/etc/docker-volume-libsecret/secret-id""#,
        REFRESH_INTERVAL.as_secs()
    )
}

/// One line of a reader's log.
#[derive(Debug, Clone)]
pub struct Read {
    pub at: SystemTime,
    pub ok: bool,
    /// The value read, or the error.
    pub text: String,
}

impl Read {
    /// `2026-12-07T08:39:01.123456789Z ok <value>` (or just `ok`) or `... FAIL <error>`; any other line is a
    /// failure too.
    fn parse(line: &str) -> Option<Read> {
        let (stamp, rest) = line.split_once(' ')?;
        let at = humantime::parse_rfc3339(stamp).ok()?;
        let (word, text) = rest.split_once(' ').unwrap_or((rest, ""));
        Some(Read {
            at,
            ok: word == "ok",
            text: if word == "ok" || word == "FAIL" {
                text
            } else {
                rest
            }
            .to_owned(),
        })
    }
}

/// A running task that has read.
#[derive(Debug, Clone)]
pub struct ReadingTask {
    pub node: usize,
    pub task: String,
    pub container: String,
    /// When its first wanted read happened.
    pub first_read: SystemTime,
}

/// `later - earlier`, zero if it is not later.
pub fn since(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or_default()
}
