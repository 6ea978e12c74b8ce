//! Production Vault scenarios, each read through a real FUSE mount (mounted by the product's own mount path,
//! `tests/support/mount.rs`) over the real Vault client.
//!
//! Against real OpenBao (`tests/support/openbao.rs`), with requests counted in its audit log: a 5 s token renewed
//! for a minute, AppRole re-logins with batch (non-renewable) tokens, rotation to a bigger value, and TLS with a
//! private CA and OpenBao's `auth/cert` method (the certificates come from `TestPki`, a generator, not a server).
//!
//! Against the Vault-API fault server (`tests/vault-api-server`), because a real server cannot produce the fault on
//! command:
//! - Vault down for 20 s: the listener must stop and come back on the same address with the same data and no
//!   operator step. A dev OpenBao keeps its data in memory, and a restarted OpenBao with persistent storage comes
//!   back sealed (503 until someone unseals it), which is another fault than the one tested here.
//! - The first HA node down and a standby that redirects (307) to the active node: OpenBao's standbys forward
//!   requests to the active node instead of redirecting, so the redirect the client must follow never happens.
//!
//! The HA failover itself also runs against a real 3-node OpenBao Raft cluster (`OpenBaoCluster`): the active node
//! is killed, the other two elect a leader, and reads, a never-read key and a rotation continue through them.
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use docker_volume_libsecret::config::{AuthMethod, Credential, VaultConfig};
use docker_volume_libsecret::fs::FsOptions;
use docker_volume_libsecret::source::cache::SecretCache;
use docker_volume_libsecret::source::vault::{VaultSetupError, VaultSource};
use serde_json::json;
use support::mount::MountedVolume;
use support::openbao::{AuditRequest, OpenBao, OpenBaoCluster};
use support::wait_until;
use vault_api_server::pki::TestPki;
use vault_api_server::{ServerConfig, TestCluster, TestVault};

/// A volume mounted over the real client through the product's own mount path (`tests/support/mount.rs`).
struct Mounted {
    volume: MountedVolume,
}

impl Mounted {
    fn new(
        runtime: &tokio::runtime::Runtime,
        config: &VaultConfig,
        volume: &str,
        refresh: Duration,
    ) -> Mounted {
        let source = runtime.block_on(VaultSource::connect(config)).unwrap();
        let cache = Arc::new(
            SecretCache::new(Arc::new(source), refresh / 2, config.timeout)
                .with_stale_ttl(Duration::from_secs(3600)),
        );
        let volume = support::mount::mount_volume(
            runtime,
            volume,
            BTreeMap::new(),
            support::mount::through(&cache),
            FsOptions {
                refresh_interval: refresh,
                ..FsOptions::default()
            },
        );
        Mounted { volume }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.volume.path(name)
    }

    fn read(&self, name: &str) -> std::io::Result<String> {
        std::fs::read_to_string(self.file(name))
    }
}

/// Reads `file` every 100 ms on a thread until stopped; every result that is not one of `allowed` is kept.
struct ReadLoop {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    reads: Arc<Mutex<usize>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReadLoop {
    fn start(file: PathBuf, allowed: Arc<Mutex<Vec<String>>>) -> ReadLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let reads = Arc::new(Mutex::new(0));
        let thread = {
            let (stop, failures, reads) = (stop.clone(), failures.clone(), reads.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let result = std::fs::read_to_string(&file);
                    *reads.lock().unwrap() += 1;
                    match result {
                        Ok(value) if allowed.lock().unwrap().contains(&value) => {}
                        other => failures.lock().unwrap().push(format!("{other:?}")),
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        ReadLoop {
            stop,
            failures,
            reads,
            thread: Some(thread),
        }
    }

    /// Stops the loop; the number of reads and the failures.
    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        let reads = *self.reads.lock().unwrap();
        let failures = self.failures.lock().unwrap().clone();
        (reads, failures)
    }
}

/// The audited requests with `operation` on exactly `path` (`read` for GET, `update` for POST).
fn audited(requests: &[AuditRequest], operation: &str, path: &str) -> usize {
    requests
        .iter()
        .filter(|r| r.operation == operation && r.path == path)
        .count()
}

/// The requests of the `secret/` mount after `mark` that OpenBao answered with an error.
fn kv_errors(bao: &OpenBao, mark: usize) -> Vec<String> {
    bao.audit_errors_since(mark)
        .into_iter()
        .filter(|e| e.request.path.starts_with("secret/"))
        .map(|e| format!("{} {}: {}", e.request.operation, e.request.path, e.error))
        .collect()
}

/// The requests after `mark` that OpenBao denied (a 403: permission denied, a dead or unknown token).
fn denials(bao: &OpenBao, mark: usize) -> Vec<String> {
    bao.audit_errors_since(mark)
        .into_iter()
        .filter(|e| e.error.contains("permission denied"))
        .map(|e| format!("{} {}: {}", e.request.operation, e.request.path, e.error))
        .collect()
}

fn token_config(addrs: Vec<String>, token: &str) -> VaultConfig {
    VaultConfig {
        addr: addrs,
        token: Some(Credential::new(token.to_owned())),
        timeout: Duration::from_secs(2),
        ..VaultConfig::default()
    }
}

fn write_secret_file(dir: &Path, name: &str, value: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, value).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

#[test]
fn a_five_second_token_serves_a_minute_of_reads_with_renewals_and_a_rotation() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let bao = OpenBao::start();
    bao.kv_put(None, "secret", "app/db-password", json!({"value": "first"}));
    // Renewable: renew-self without an increment grants the 5 s again.
    let token = bao.create_token_with(
        None,
        json!({"policies": ["root"], "ttl": "5s", "renewable": true}),
    );
    let mark = bao.audit_len();
    let mounted = Mounted::new(
        &runtime,
        &token_config(vec![bao.addr()], &token),
        "secret/app",
        Duration::from_secs(1),
    );
    assert_eq!(mounted.read("db-password").unwrap(), "first");
    let allowed = Arc::new(Mutex::new(vec!["first".to_owned()]));
    let reads = ReadLoop::start(mounted.file("db-password"), allowed.clone());
    std::thread::sleep(Duration::from_secs(40));
    // Eight TTLs in: the token still reads Vault, so a rotation arrives.
    allowed.lock().unwrap().push("second".to_owned());
    bao.kv_put(
        None,
        "secret",
        "app/db-password",
        json!({"value": "second"}),
    );
    let seen = wait_until("the rotation", Duration::from_secs(3), || {
        mounted.read("db-password").ok().as_deref() == Some("second")
    });
    std::thread::sleep(Duration::from_secs(20) - seen);
    let (count_reads, failures) = reads.finish();
    let requests = bao.audit_requests_since(mark);
    let renewals = audited(&requests, "update", "auth/token/renew-self");
    println!("{count_reads} reads, {renewals} renewals, rotation seen after {seen:?}");
    assert!(failures.is_empty(), "failed reads: {failures:?}");
    assert!(count_reads >= 500, "{count_reads} reads in 60 s");
    assert!(renewals >= 12, "{renewals} renewals of a 5 s token in 60 s");
    assert!(
        kv_errors(&bao, mark).is_empty(),
        "{:?}",
        kv_errors(&bao, mark)
    );
    assert!(denials(&bao, mark).is_empty(), "{:?}", denials(&bao, mark));
}

#[test]
fn a_non_renewable_approle_token_is_replaced_three_times_without_a_failed_read() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let bao = OpenBao::start();
    bao.put_policy(
        None,
        "app",
        r#"path "secret/data/app/*" { capabilities = ["read"] }
path "secret/metadata/app/*" { capabilities = ["list"] }"#,
    );
    bao.kv_put(
        None,
        "secret",
        "app/db-password",
        json!({"value": "approle"}),
    );
    let admin = bao.admin();
    let dir = tempfile::tempdir().unwrap();
    // Batch tokens cannot be renewed: each one is replaced by a new login.
    let (role_id, secret_id) = runtime.block_on(async {
        let role_id = admin.approle("app", &["app"], "3s", "batch").await;
        (role_id, admin.secret_id("app").await)
    });
    let mut config = token_config(vec![bao.addr()], "");
    config.token = None;
    config.auth = AuthMethod::Approle;
    config.approle.role_id_file = Some(write_secret_file(dir.path(), "role-id", &role_id));
    config.approle.secret_id_file = Some(write_secret_file(dir.path(), "secret-id", &secret_id));
    let mark = bao.audit_len();
    let mounted = Mounted::new(&runtime, &config, "secret/app", Duration::from_secs(1));
    assert_eq!(mounted.read("db-password").unwrap(), "approle");
    let reads = ReadLoop::start(
        mounted.file("db-password"),
        Arc::new(Mutex::new(vec!["approle".to_owned()])),
    );
    wait_until("three re-logins", Duration::from_secs(20), || {
        bao.audit_count_since(mark, "auth/approle/login") >= 4
    });
    // One more refresh pass after the last login reads with the newest token.
    std::thread::sleep(Duration::from_secs(2));
    let (count_reads, failures) = reads.finish();
    let requests = bao.audit_requests_since(mark);
    assert!(failures.is_empty(), "failed reads: {failures:?}");
    assert!(count_reads > 50, "{count_reads}");
    assert!(
        kv_errors(&bao, mark).is_empty(),
        "{:?}",
        kv_errors(&bao, mark)
    );
    assert_eq!(audited(&requests, "update", "auth/token/renew-self"), 0);
}

#[test]
fn a_value_grown_from_ten_bytes_to_ten_kib_reads_whole_within_the_refresh_interval() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let bao = OpenBao::start();
    bao.kv_put(None, "secret", "app/cert", json!({"value": "0123456789"}));
    let mounted = Mounted::new(
        &runtime,
        &token_config(vec![bao.addr()], bao.root_token()),
        "secret/app",
        Duration::from_secs(2),
    );
    assert_eq!(mounted.read("cert").unwrap(), "0123456789");
    let big: String = (0..10 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    bao.kv_put(None, "secret", "app/cert", json!({ "value": big }));
    let seen = wait_until(
        "the bigger value",
        Duration::from_secs(3),
        || match mounted.read("cert") {
            Ok(value) if value == big => true,
            Ok(value) => {
                assert_eq!(value, "0123456789", "a read mixed old and new bytes");
                false
            }
            Err(error) => panic!("read failed during rotation: {error}"),
        },
    );
    println!("10 B -> 10 KiB seen after {seen:?} (refresh 2 s)");
    bao.kv_put(None, "secret", "app/cert", json!({"value": "short"}));
    wait_until("the shrunk value", Duration::from_secs(3), || {
        mounted.read("cert").ok().as_deref() == Some("short")
    });
}

#[test]
fn vault_down_for_twenty_seconds_serves_cached_keys_and_recovers_unaided() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let vault = runtime
        .block_on(TestVault::start(ServerConfig::default()))
        .unwrap();
    vault.put("secret/app/read-before", json!({"value": "cached"}));
    vault.put("secret/app/never-read", json!({"value": "fresh"}));
    let mounted = Mounted::new(
        &runtime,
        &token_config(vec![vault.addr()], vault.root_token()),
        "secret/app",
        Duration::from_secs(1),
    );
    assert_eq!(mounted.read("read-before").unwrap(), "cached");
    runtime.block_on(vault.stop_listening());
    let reads = ReadLoop::start(
        mounted.file("read-before"),
        Arc::new(Mutex::new(vec!["cached".to_owned()])),
    );
    std::thread::sleep(Duration::from_secs(5));
    let never_read = mounted.read("never-read").unwrap_err();
    assert_eq!(never_read.raw_os_error(), Some(nix::libc::EIO));
    std::thread::sleep(Duration::from_secs(15));
    runtime.block_on(vault.start_listening()).unwrap();
    let (count_reads, failures) = reads.finish();
    assert!(
        failures.is_empty(),
        "failed reads while Vault was down: {failures:?}"
    );
    assert!(count_reads > 150, "{count_reads}");
    wait_until(
        "the never-read key after recovery",
        Duration::from_secs(5),
        || mounted.read("never-read").ok().as_deref() == Some("fresh"),
    );
    vault.put("secret/app/read-before", json!({"value": "rotated"}));
    wait_until("rotation after recovery", Duration::from_secs(3), || {
        mounted.read("read-before").ok().as_deref() == Some("rotated")
    });
}

#[test]
fn tls_with_a_private_ca_and_cert_auth_reads_and_a_wrong_ca_fails_at_start() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pki = TestPki::generate(&["vault.test"]);
    let dir = tempfile::tempdir().unwrap();
    pki.write_to(dir.path()).unwrap();
    // The TLS listener requests client certificates without requiring them, so `auth/cert` sees them.
    let (bao, tls_port) = OpenBao::start_tls(
        &dir.path().join("server.pem"),
        &dir.path().join("server-key.pem"),
    );
    bao.call("POST", "sys/auth/cert", None, json!({"type": "cert"}));
    bao.put_policy(
        None,
        "app",
        r#"path "secret/data/app/*" { capabilities = ["read"] }"#,
    );
    bao.call(
        "POST",
        "auth/cert/certs/docker-host",
        None,
        json!({
            "certificate": pki.ca_cert_pem,
            "token_policies": ["app"],
            "token_ttl": "1h",
        }),
    );
    bao.kv_put(
        None,
        "secret",
        "app/db-password",
        json!({"value": "over-tls"}),
    );
    let mark = bao.audit_len();

    let mut config = VaultConfig {
        addr: vec![format!("https://127.0.0.1:{tls_port}")],
        auth: AuthMethod::Cert,
        ca_cert: Some(dir.path().join("ca.pem")),
        client_cert: Some(dir.path().join("client.pem")),
        client_key: Some(dir.path().join("client-key.pem")),
        tls_server_name: Some("vault.test".to_owned()),
        timeout: Duration::from_secs(2),
        ..VaultConfig::default()
    };
    config.cert.role = Some("docker-host".to_owned());
    let mounted = Mounted::new(&runtime, &config, "secret/app", Duration::from_secs(1));
    assert_eq!(mounted.read("db-password").unwrap(), "over-tls");
    assert_eq!(bao.audit_count_since(mark, "auth/cert/login"), 1);

    // The CA as a directory works the same.
    let ca_dir = dir.path().join("cas");
    std::fs::create_dir(&ca_dir).unwrap();
    std::fs::copy(dir.path().join("ca.pem"), ca_dir.join("private-ca.pem")).unwrap();
    let mut by_dir = config.clone();
    by_dir.ca_cert = None;
    by_dir.ca_path = Some(ca_dir);
    runtime.block_on(VaultSource::connect(&by_dir)).unwrap();

    // A wrong CA: refused at start, saying which setting to fix.
    let mut wrong = config.clone();
    wrong.ca_cert = Some(dir.path().join("other-ca.pem"));
    match runtime.block_on(VaultSource::connect(&wrong)) {
        Err(error @ VaultSetupError::Untrusted { .. }) => {
            let text = error.to_string();
            assert!(text.contains("vault.ca_cert"), "{text}");
        }
        Err(other) => panic!("unexpected error for a wrong CA: {other}"),
        Ok(_) => panic!("a wrong CA was accepted"),
    }
    // A client certificate from another CA: refused (by the TLS listener or by the cert login).
    let mut stranger = config.clone();
    stranger.client_cert = Some(dir.path().join("other-client.pem"));
    stranger.client_key = Some(dir.path().join("other-client-key.pem"));
    let error = runtime.block_on(VaultSource::connect(&stranger)).err();
    assert!(
        matches!(
            error,
            Some(VaultSetupError::Rejected { .. })
                | Some(VaultSetupError::ClientCertRefused { .. })
        ),
        "{error:?}"
    );
    // Skipping verification connects despite the wrong CA (and warns at start).
    let mut skip = wrong.clone();
    skip.tls_skip_verify = true;
    runtime.block_on(VaultSource::connect(&skip)).unwrap();
}

#[test]
fn reads_continue_through_the_second_node_when_the_first_is_down_and_standbys_redirect() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cluster = runtime
        .block_on(TestCluster::start(3, ServerConfig::default()))
        .unwrap();
    cluster
        .node(0)
        .put("secret/app/db-password", json!({"value": "ha"}));
    cluster
        .node(0)
        .put("secret/app/other", json!({"value": "other"}));
    let mounted = Mounted::new(
        &runtime,
        &token_config(cluster.addrs(), cluster.node(0).root_token()),
        "secret/app",
        Duration::from_secs(1),
    );
    assert_eq!(mounted.read("db-password").unwrap(), "ha");

    // The first node goes down and the second becomes active.
    runtime.block_on(cluster.node(0).stop_listening());
    cluster.set_active(1);
    let values = ["ha", "ha-rotated", "via-redirect"].map(str::to_owned);
    let reads = ReadLoop::start(
        mounted.file("db-password"),
        Arc::new(Mutex::new(values.to_vec())),
    );
    wait_until(
        "a never-read key through the second node",
        Duration::from_secs(5),
        || mounted.read("other").ok().as_deref() == Some("other"),
    );
    cluster
        .node(1)
        .put("secret/app/db-password", json!({"value": "ha-rotated"}));
    wait_until(
        "a rotation through the second node",
        Duration::from_secs(3),
        || mounted.read("db-password").ok().as_deref() == Some("ha-rotated"),
    );
    // The third node is active now: the second (a standby) redirects there.
    cluster.set_active(2);
    cluster
        .node(2)
        .put("secret/app/db-password", json!({"value": "via-redirect"}));
    wait_until(
        "a read redirected by a standby",
        Duration::from_secs(3),
        || mounted.read("db-password").ok().as_deref() == Some("via-redirect"),
    );
    let requests = cluster.node(0).requests();
    assert!(
        requests.iter().any(|r| r.node == 1 && r.status == 307),
        "no standby redirect seen"
    );
    assert!(requests
        .iter()
        .any(|r| r.node == 2 && r.status == 200 && r.path.starts_with("/v1/secret/")));
    let (_, failures) = reads.finish();
    assert!(
        failures.is_empty(),
        "failed reads during the failover: {failures:?}"
    );
}

/// A real 3-node OpenBao Raft cluster loses its leader: reads continue from the cache while a new leader is
/// elected, then a never-read key and a rotation arrive through the surviving nodes.
#[test]
fn reads_continue_through_the_other_openbao_nodes_when_the_raft_leader_is_killed() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut cluster = OpenBaoCluster::start(3);
    cluster.kv_put("app/db-password", json!({"value": "ha"}));
    cluster.kv_put("app/other", json!({"value": "other"}));
    let mounted = Mounted::new(
        &runtime,
        &token_config(cluster.addrs(), cluster.root_token()),
        "secret/app",
        Duration::from_secs(1),
    );
    assert_eq!(mounted.read("db-password").unwrap(), "ha");

    // The first node, the active one, goes down; the other two elect a new leader.
    assert_eq!(cluster.wait_for_leader(Duration::from_secs(5)), 0);
    cluster.kill(0);
    let values = ["ha", "ha-rotated"].map(str::to_owned);
    let reads = ReadLoop::start(
        mounted.file("db-password"),
        Arc::new(Mutex::new(values.to_vec())),
    );
    let leader = cluster.wait_for_leader(Duration::from_secs(30));
    assert_ne!(leader, 0);
    wait_until(
        "a never-read key through another node",
        Duration::from_secs(5),
        || mounted.read("other").ok().as_deref() == Some("other"),
    );
    cluster.kv_put("app/db-password", json!({"value": "ha-rotated"}));
    wait_until(
        "a rotation through another node",
        Duration::from_secs(3),
        || mounted.read("db-password").ok().as_deref() == Some("ha-rotated"),
    );
    let (_, failures) = reads.finish();
    assert!(
        failures.is_empty(),
        "failed reads during the failover: {failures:?}"
    );
}
