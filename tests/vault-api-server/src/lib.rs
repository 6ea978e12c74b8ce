//! A HashiCorp Vault HTTP API test server, written from the published API
//! docs (see `/work/shared/vault-api.md` and this crate's README).
//!
//! Start one in-process with [`TestVault::start`] on the current tokio
//! runtime, point a client at [`TestVault::addr`], and drive state directly
//! with [`TestVault::put`], [`TestVault::create_token`], ... Faults (sealed,
//! latency, forced status, connection resets) are injected through
//! [`TestVault::faults`].

mod approle;
mod faults;
mod http;
mod store;
mod tokens;
mod util;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use faults::FaultsHandle;

use crate::faults::Faults;
use crate::http::{Inner, Shared};
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
}

/// A running test server. Dropping it aborts the server task.
#[derive(Debug)]
pub struct TestVault {
    addr: SocketAddr,
    root_token: String,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestVault {
    /// Bind `127.0.0.1:0` and serve on the current tokio runtime.
    pub async fn start(config: ServerConfig) -> std::io::Result<TestVault> {
        TestVault::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Bind `listen` (port 0 allowed) and serve on the current tokio runtime.
    pub async fn start_on(listen: SocketAddr, config: ServerConfig) -> std::io::Result<TestVault> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::new(&config)),
            faults: Arc::new(Faults::default()),
        });
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(http::accept_loop(listener, shared.clone(), stop_rx));
        Ok(TestVault {
            addr,
            root_token: config.root_token,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound socket address.
    pub fn socket_addr(&self) -> SocketAddr {
        self.addr
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
        let mut inner = self.shared.lock();
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
        let mut inner = self.shared.lock();
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
        let mut inner = self.shared.lock();
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
        let mut inner = self.shared.lock();
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
        self.shared
            .lock()
            .tokens
            .policies
            .insert(name.to_string(), Policy::from_rules(rules));
    }

    pub fn faults(&self) -> FaultsHandle {
        FaultsHandle(self.shared.faults.clone())
    }

    /// Every request seen since start (or the last [`Self::reset_requests`]).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    pub fn reset_requests(&self) {
        self.shared.lock().requests.clear();
    }

    /// Stop accepting, close connections and wait for the server task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestVault {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
