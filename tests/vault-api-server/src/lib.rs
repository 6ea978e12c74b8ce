//! The Vault-API fault server of docker-volume-libsecret's tests: only what a real server (OpenBao, which every
//! other test runs against) cannot do on command.
//!
//! - **Latency, resets, 5xx**: [`TestVault::faults`] ([`FaultsHandle`]) delays every answer, drops connections
//!   unanswered or answers every request with a forced status.
//! - **A listener that stops**: [`TestVault::stop_listening`] closes the listener and every connection,
//!   [`TestVault::start_listening`] serves the same state on the same address again.
//! - **A standby that redirects**: [`TestCluster`], n nodes sharing one state; standbys answer 307 to the node
//!   made active with [`TestCluster::set_active`] (no automatic failover).
//! - **A missing `sys/internal/ui/mounts`**: [`ServerConfig::ui_mounts_endpoint`] `false` answers 404, like an old
//!   server.
//!
//! Around that, just enough Vault for a client to read through: KV v1/v2 reads and lists of what
//! [`TestVault::put`] wrote, `auth/token/lookup-self` and `revoke-self`, and a bare AppRole (enable, role, role-id,
//! secret-id, login). Tokens are only checked to exist; policies are stored, not enforced. Every request is
//! logged ([`TestVault::requests`]) with its namespace header. [`pki::TestPki`] is a certificate generator for
//! OpenBao's TLS tests; this server speaks plain HTTP only.

mod faults;
mod http;
pub mod pki;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use faults::FaultsHandle;

use crate::faults::Faults;
use crate::http::{Ha, Inner, Node, Shared};

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

/// A running test server (or one node of a [`TestCluster`]). Dropping it aborts the server task.
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
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::new(&config)),
            ha: None,
        });
        TestVault::serve(0, listener, shared, config.root_token)
    }

    fn serve(
        index: usize,
        listener: TcpListener,
        shared: Arc<Shared>,
        root_token: String,
    ) -> io::Result<TestVault> {
        let addr = listener.local_addr()?;
        let node = Arc::new(Node {
            index,
            shared,
            faults: Arc::new(Faults::default()),
        });
        let running = spawn(listener, node.clone());
        Ok(TestVault {
            addr,
            root_token,
            node,
            running: Mutex::new(Some(running)),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.node.shared.lock()
    }

    fn lock_running(&self) -> MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take the node down: close the listener and every open connection (in-flight requests get no answer), and
    /// wait until they are closed. New connections are refused. State is kept. No-op when stopped.
    pub async fn stop_listening(&self) {
        let running = self.lock_running().take();
        if let Some(r) = running {
            let _ = r.stop.send(());
            let _ = r.task.await;
        }
    }

    /// Bind the same address again and serve the same state (after [`Self::stop_listening`]). No-op when
    /// already listening.
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

    /// Write a secret (`secret/app-1/db`, or `ns1/secret/app-1/db` in namespace `ns1`), replacing any earlier
    /// value (KV v2 keeps no versions here). `data` must be an object.
    pub fn put(&self, path: &str, data: Value) {
        let Value::Object(map) = data else {
            panic!("vault-api-server: put({path:?}): data must be a JSON object");
        };
        self.lock()
            .secrets
            .insert(path.trim_matches('/').to_owned(), map);
    }

    /// Store an ACL policy: `(path glob, capabilities)` rules. Not enforced: tokens only need to exist.
    pub fn set_policy(&self, name: &str, rules: &[(&str, &[&str])]) {
        let rules = rules
            .iter()
            .map(|(p, caps)| (p.to_string(), caps.iter().map(|c| c.to_string()).collect()))
            .collect();
        self.lock().policies.insert(name.to_string(), rules);
    }

    /// Fault knobs of this node.
    pub fn faults(&self) -> FaultsHandle {
        FaultsHandle(self.node.faults.clone())
    }

    /// Every request seen since start; in a cluster, those of every node.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().requests.clone()
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

/// An HA cluster of test servers on 127.0.0.1 sharing one state (secrets, tokens, request log). Node 0 starts
/// active; the others are standbys that answer every request with 307 and `Location: <active node address><same
/// path and query>` (Vault without request forwarding). There is no automatic failover: when the active node is
/// stopped, standbys keep redirecting to it until [`TestCluster::set_active`] picks another. Each node has its own
/// [`FaultsHandle`].
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
        let listeners = (0..n)
            .map(|_| bind(SocketAddr::from(([127, 0, 0, 1], 0))))
            .collect::<io::Result<Vec<_>>>()?;
        let api_addrs = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| format!("http://{a}")))
            .collect::<io::Result<Vec<_>>>()?;
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::new(&config)),
            ha: Some(Ha {
                api_addrs,
                leader: AtomicUsize::new(0),
            }),
        });
        let nodes = listeners
            .into_iter()
            .enumerate()
            .map(|(i, l)| TestVault::serve(i, l, shared.clone(), config.root_token.clone()))
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

    /// [`TestVault::addr`] of every node, in node order.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(TestVault::addr).collect()
    }

    /// Make node `i` the active node; the others become standbys. Panics if out of range.
    pub fn set_active(&self, i: usize) {
        assert!(
            i < self.nodes.len(),
            "vault-api-server: set_active({i}) on a {}-node cluster",
            self.nodes.len()
        );
        if let Some(ha) = &self.shared.ha {
            ha.leader.store(i, Ordering::SeqCst);
        }
    }

    /// Every request any node answered (the log is shared).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }
}
