//! A HashiCorp Vault HTTP API test server, written from the published API
//! docs (see `/work/shared/vault-api.md` and this crate's README).
//!
//! Start one in-process with [`TestVault::start`] on the current tokio
//! runtime, point a client at [`TestVault::addr`], and drive state directly
//! with [`TestVault::put`], [`TestVault::create_token`], ... Faults (sealed,
//! latency, forced status, connection resets) are injected through
//! [`TestVault::faults`].
//!
//! More:
//! - **TLS**: [`ServerConfig::tls`] ([`TlsSettings`]; rustls, aws-lc-rs),
//!   optional client-certificate verification; [`pki::TestPki`] makes a CA,
//!   server and client certificates with rcgen.
//! - **Cert auth** (`auth/<m>/certs/<role>`, `auth/<m>/login`):
//!   [`TestVault::enable_cert_auth`], [`TestVault::set_cert_role`] or
//!   `POST sys/auth/<m>` `{"type":"cert"}`.
//! - **Batch tokens** (`token_type` on AppRole / cert roles, `type` on
//!   `auth/token/create`), `token_max_ttl` caps, renewals of
//!   [`TestVault::create_token`] tokens by their own TTL.
//! - **Down nodes**: [`TestVault::stop_listening`] closes the listener and
//!   every connection, [`TestVault::start_listening`] serves the same state
//!   on the same address again.
//! - **HA**: [`TestCluster`], n nodes sharing one state; standbys answer 307
//!   to the active node, `sys/health` 429, `sys/leader`.

mod approle;
mod certauth;
mod faults;
mod http;
pub mod pki;
mod store;
mod tls;
mod token_params;
mod tokens;
mod util;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use faults::FaultsHandle;

use crate::faults::Faults;
use crate::http::{Ha, Inner, Node, Shared};
use crate::store::VersionOp;
use crate::tokens::{NewToken, Policy, Rule};

/// KV secrets engine version of a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvVersion {
    V1,
    V2,
}

/// Server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The preset root token (policy `root`, never expires).
    pub root_token: String,
    /// KV mounts, e.g. `("secret/".into(), KvVersion::V2)`.
    pub mounts: Vec<(String, KvVersion)>,
    /// `false`: `sys/internal/ui/mounts[/…]` answers 404 like an old server.
    pub ui_mounts_endpoint: bool,
    /// Serve HTTPS instead of HTTP.
    pub tls: Option<TlsSettings>,
}

/// TLS listener settings (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Server certificate, then any intermediates.
    pub cert_chain_pem: String,
    /// The server certificate's private key (PKCS#8, SEC1 or PKCS#1).
    pub key_pem: String,
    /// `Some`: client certificates are requested and verified against this
    /// CA during the handshake, but not required (a client presenting a
    /// certificate from another CA fails the handshake). `None`: client
    /// certificates are requested and accepted without chain verification,
    /// like Vault's default listener, so the cert auth method decides.
    pub client_ca_pem: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            root_token: "root".into(),
            mounts: vec![
                ("secret/".into(), KvVersion::V2),
                ("kv/".into(), KvVersion::V1),
            ],
            ui_mounts_endpoint: true,
            tls: None,
        }
    }
}

/// One request as seen by the server. The token value is never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// `GET`, `LIST`, `POST`, ...
    pub method: String,
    /// Path as received on the wire (still percent-encoded), without query,
    /// e.g. `/v1/secret/data/app-1/db`.
    pub path: String,
    /// Status code answered.
    pub status: u16,
    /// `X-Vault-Namespace` header as sent, if any.
    pub namespace: Option<String>,
    /// Whether an `X-Vault-Token` or `Authorization: Bearer` header was sent.
    pub token_sent: bool,
    /// Index of the node that answered (0 for a lone [`TestVault`]).
    pub node: usize,
}

#[derive(Debug)]
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Bind with `SO_REUSEADDR`, so a stopped node can bind its port again.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn spawn(listener: TcpListener, node: Arc<Node>) -> Running {
    let (stop, stop_rx) = oneshot::channel();
    let task = tokio::spawn(http::accept_loop(listener, node, stop_rx));
    Running { stop, task }
}

fn tls_config(config: &ServerConfig) -> io::Result<Option<Arc<rustls::ServerConfig>>> {
    config.tls.as_ref().map(tls::server_config).transpose()
}

/// A running test server (or one node of a [`TestCluster`]). Dropping it
/// aborts the server task.
#[derive(Debug)]
pub struct TestVault {
    addr: SocketAddr,
    root_token: String,
    node: Arc<Node>,
    running: Mutex<Option<Running>>,
}

impl TestVault {
    /// Bind `127.0.0.1:0` and serve on the current tokio runtime.
    pub async fn start(config: ServerConfig) -> io::Result<TestVault> {
        TestVault::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Bind `listen` (port 0 allowed) and serve on the current tokio runtime.
    /// Bad [`ServerConfig::tls`] PEM → `InvalidInput`.
    pub async fn start_on(listen: SocketAddr, config: ServerConfig) -> io::Result<TestVault> {
        let tls = tls_config(&config)?;
        let listener = bind(listen)?;
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::new(&config)),
            ha: None,
        });
        TestVault::serve(0, listener, shared, tls, config.root_token)
    }

    fn serve(
        index: usize,
        listener: TcpListener,
        shared: Arc<Shared>,
        tls: Option<Arc<rustls::ServerConfig>>,
        root_token: String,
    ) -> io::Result<TestVault> {
        let addr = listener.local_addr()?;
        let node = Arc::new(Node {
            index,
            shared,
            faults: Arc::new(Faults::default()),
            tls,
        });
        let running = spawn(listener, node.clone());
        Ok(TestVault {
            addr,
            root_token,
            node,
            running: Mutex::new(Some(running)),
        })
    }

    fn scheme(&self) -> &'static str {
        if self.node.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// `http://127.0.0.1:PORT`, or `https://…` with TLS.
    pub fn addr(&self) -> String {
        format!("{}://{}", self.scheme(), self.addr)
    }

    /// `http(s)://{host}:PORT`, e.g. to reach a TLS server through a DNS
    /// name its certificate carries (resolve `host` to 127.0.0.1 yourself).
    pub fn addr_with_host(&self, host: &str) -> String {
        format!("{}://{host}:{}", self.scheme(), self.addr.port())
    }

    /// The bound socket address.
    pub fn socket_addr(&self) -> SocketAddr {
        self.addr
    }

    /// This node's index in its [`TestCluster`] (0 for a lone server).
    pub fn index(&self) -> usize {
        self.node.index
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.node.shared.lock()
    }

    fn lock_running(&self) -> MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the node is listening (not stopped by [`Self::stop_listening`]).
    pub fn is_listening(&self) -> bool {
        self.lock_running().is_some()
    }

    /// Take the node down: close the listener and every open connection
    /// (in-flight requests get no answer), and wait until they are closed.
    /// New connections are refused. State is kept. No-op when stopped.
    pub async fn stop_listening(&self) {
        let running = self.lock_running().take();
        if let Some(r) = running {
            let _ = r.stop.send(());
            let _ = r.task.await;
        }
    }

    /// Bind the same address again and serve the same state (after
    /// [`Self::stop_listening`]). No-op when already listening.
    pub async fn start_listening(&self) -> io::Result<()> {
        let mut running = self.lock_running();
        if running.is_none() {
            let listener = bind(self.addr)?;
            *running = Some(spawn(listener, self.node.clone()));
        }
        Ok(())
    }

    pub fn root_token(&self) -> &str {
        &self.root_token
    }

    /// Split `[ns/]mount/rest` into (namespace, mount, rest).
    fn resolve(&self, inner: &Inner, path: &str) -> (String, store::Mount, String) {
        let path = path.trim_start_matches('/');
        if let Some((m, rest)) = inner.store.find_mount(path) {
            return (String::new(), m, rest);
        }
        for (i, _) in path.match_indices('/') {
            let (ns, rest) = path.split_at(i + 1);
            if let Some((m, r)) = inner.store.find_mount(rest) {
                return (ns.to_string(), m, r);
            }
        }
        panic!("vault-api-server: no KV mount for path {path:?}");
    }

    /// Write a secret (`secret/app-1/db`, or `ns1/secret/app-1/db` for a
    /// namespace). KV v2 mounts get a new version. `data` must be an object.
    pub fn put(&self, path: &str, data: Value) {
        let mut inner = self.lock();
        let (ns, mount, rest) = self.resolve(&inner, path);
        match mount.version {
            KvVersion::V1 => {
                let Value::Object(map) = data else {
                    panic!("vault-api-server: put({path:?}): data must be a JSON object");
                };
                inner.store.v1_write(&ns, &mount.path, &rest, map);
            }
            KvVersion::V2 => {
                assert!(
                    data.is_object(),
                    "vault-api-server: put({path:?}): data must be a JSON object"
                );
                if let Err(e) = inner.store.v2_write(&ns, &mount.path, &rest, data, None) {
                    panic!("vault-api-server: put({path:?}): {e}");
                }
            }
        }
    }

    /// KV v1: delete. KV v2: soft-delete the latest version.
    pub fn delete(&self, path: &str) {
        let mut inner = self.lock();
        let (ns, mount, rest) = self.resolve(&inner, path);
        match mount.version {
            KvVersion::V1 => inner.store.v1_delete(&ns, &mount.path, &rest),
            KvVersion::V2 => {
                inner
                    .store
                    .v2_versions_op(&ns, &mount.path, &rest, VersionOp::Delete, None)
            }
        }
    }

    /// KV v2: destroy every version (metadata stays). KV v1: delete.
    pub fn destroy_all(&self, path: &str) {
        let mut inner = self.lock();
        let (ns, mount, rest) = self.resolve(&inner, path);
        match mount.version {
            KvVersion::V1 => inner.store.v1_delete(&ns, &mount.path, &rest),
            KvVersion::V2 => {
                inner
                    .store
                    .v2_versions_op(&ns, &mount.path, &rest, VersionOp::DestroyAll, None)
            }
        }
    }

    /// Create an orphan service token with these policies (plus `default`).
    /// `ttl: None` = the 768h default (a `root` policy token never expires).
    pub fn create_token(
        &self,
        policies: &[&str],
        ttl: Option<Duration>,
        renewable: bool,
    ) -> String {
        let mut inner = self.lock();
        let ttl = ttl.map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
        inner
            .tokens
            .create(NewToken {
                policies: policies.iter().map(|s| s.to_string()).collect(),
                display_name: "token".into(),
                ttl,
                renewable,
                orphan: true,
                path: "auth/token/create".into(),
                ..Default::default()
            })
            .id
    }

    /// The live tokens issued at `path` (such as `auth/approle/login`), in no order: what a client logged in with.
    pub fn live_tokens_issued_at(&self, path: &str) -> Vec<String> {
        self.lock().tokens.live_ids_issued_at(path)
    }

    /// Create or replace an ACL policy: `(path glob, capabilities)` rules.
    /// Globs: trailing `*` = any suffix, `+` = one path segment.
    pub fn set_policy(&self, name: &str, rules: &[(&str, &[&str])]) {
        let rules = rules
            .iter()
            .map(|(p, caps)| Rule {
                pattern: p.to_string(),
                capabilities: caps.iter().map(|c| c.to_string()).collect(),
            })
            .collect();
        self.lock()
            .tokens
            .policies
            .insert(name.to_string(), Policy::from_rules(rules));
    }

    /// Enable the cert auth method at `auth/<mount>/` (no-op if it already
    /// is). Panics if another auth method uses that path.
    pub fn enable_cert_auth(&self, mount: &str) {
        let mut inner = self.lock();
        let name = mount.trim_matches('/');
        if inner.certs.contains(name) {
            return;
        }
        if name.is_empty() || name == "token" || inner.approles.find(name).is_some() {
            panic!("vault-api-server: enable_cert_auth({mount:?}): path is already in use");
        }
        inner.certs.enable(name);
    }

    /// Create or replace the cert auth role `auth/<mount>/certs/<name>`
    /// (enabling the mount if needed): clients whose certificate chains to
    /// `ca_pem` (a CA, or the client certificate itself) log in with these
    /// policies; `ttl: None` = the 768h default. Panics on bad PEM.
    pub fn set_cert_role(
        &self,
        mount: &str,
        name: &str,
        ca_pem: &str,
        policies: &[&str],
        ttl: Option<Duration>,
    ) {
        self.enable_cert_auth(mount);
        let mut body = serde_json::Map::new();
        body.insert("certificate".into(), json!(ca_pem));
        body.insert("token_policies".into(), json!(policies));
        if let Some(d) = ttl {
            body.insert(
                "token_ttl".into(),
                json!(d.as_secs() + u64::from(d.subsec_nanos() > 0)),
            );
        }
        if let Err(e) = self.lock().certs.set_role(mount, name, &body) {
            panic!("vault-api-server: set_cert_role({mount:?}, {name:?}): {e}");
        }
    }

    /// Fault knobs of this node.
    pub fn faults(&self) -> FaultsHandle {
        FaultsHandle(self.node.faults.clone())
    }

    /// Every request seen since start (or the last [`Self::reset_requests`]);
    /// in a cluster, those of every node.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().requests.clone()
    }

    pub fn reset_requests(&self) {
        self.lock().requests.clear();
    }

    /// Stop accepting, close connections and wait for the server task.
    pub async fn shutdown(self) {
        self.stop_listening().await;
    }
}

impl Drop for TestVault {
    fn drop(&mut self) {
        let running = match self.running.get_mut() {
            Ok(r) => r.take(),
            Err(e) => e.into_inner().take(),
        };
        if let Some(r) = running {
            r.task.abort();
        }
    }
}

/// An HA cluster of test servers on 127.0.0.1 sharing one state (KV store,
/// tokens, policies, auth methods, request log). Node 0 starts active, the
/// others are standbys: they answer every request except `sys/health`,
/// `sys/seal-status`, `sys/leader` and `sys/unseal` with 307 and
/// `Location: <active node address><same path and query>` (Vault without
/// request forwarding); their `sys/health` is 429 `"standby": true`. There
/// is no automatic failover: when the active node is stopped, standbys keep
/// redirecting to it until [`TestCluster::set_active`] picks another.
/// Each node has its own [`FaultsHandle`].
#[derive(Debug)]
pub struct TestCluster {
    nodes: Vec<TestVault>,
    shared: Arc<Shared>,
}

impl TestCluster {
    /// Start `n` (≥ 1) nodes on `127.0.0.1:0` with one state, node 0 active.
    pub async fn start(n: usize, config: ServerConfig) -> io::Result<TestCluster> {
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a cluster needs at least one node",
            ));
        }
        let tls = tls_config(&config)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listeners = (0..n)
            .map(|_| bind(SocketAddr::from(([127, 0, 0, 1], 0))))
            .collect::<io::Result<Vec<_>>>()?;
        let addrs = listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<io::Result<Vec<_>>>()?;
        let ha = Ha {
            api_addrs: addrs.iter().map(|a| format!("{scheme}://{a}")).collect(),
            cluster_addrs: addrs
                .iter()
                .map(|a| format!("https://{}:{}", a.ip(), a.port().saturating_add(1)))
                .collect(),
            leader: AtomicUsize::new(0),
        };
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::new(&config)),
            ha: Some(ha),
        });
        let nodes = listeners
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                TestVault::serve(i, l, shared.clone(), tls.clone(), config.root_token.clone())
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(TestCluster { nodes, shared })
    }

    /// Node `i`. Panics if out of range.
    pub fn node(&self, i: usize) -> &TestVault {
        match self.nodes.get(i) {
            Some(n) => n,
            None => panic!(
                "vault-api-server: node {i} of a {}-node cluster",
                self.nodes.len()
            ),
        }
    }

    pub fn nodes(&self) -> &[TestVault] {
        &self.nodes
    }

    /// [`TestVault::addr`] of every node, in node order.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(TestVault::addr).collect()
    }

    fn ha(&self) -> Option<&Ha> {
        self.shared.ha.as_ref()
    }

    /// Make node `i` the active node; the others become standbys. Panics if
    /// out of range.
    pub fn set_active(&self, i: usize) {
        assert!(
            i < self.nodes.len(),
            "vault-api-server: set_active({i}) on a {}-node cluster",
            self.nodes.len()
        );
        if let Some(ha) = self.ha() {
            ha.leader.store(i, Ordering::SeqCst);
        }
    }

    /// The active node: `None` while the node standbys point to is stopped.
    pub fn active(&self) -> Option<usize> {
        let leader = self.leader();
        self.nodes
            .get(leader)
            .filter(|n| n.is_listening())
            .map(|_| leader)
    }

    /// The node standbys redirect to (the last one made active), listening
    /// or not.
    pub fn leader(&self) -> usize {
        self.ha().map(Ha::leader).unwrap_or(0)
    }

    /// Every request any node answered (the log is shared).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// Shut every node down.
    pub async fn shutdown(self) {
        for n in self.nodes {
            n.shutdown().await;
        }
    }
}
