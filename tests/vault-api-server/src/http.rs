//! Connections, faults, standby redirects, the request log and the few endpoints the fault tests read through:
//! KV v1/v2 reads and lists, `sys/internal/ui/mounts`, `auth/token/lookup-self` and `revoke-self`, and a bare
//! AppRole (enable, role, role-id, secret-id, login). Tokens are only checked to exist; policies are not enforced.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::faults::Faults;
use crate::{KvVersion, RequestRecord, ServerConfig};

const BODY_LIMIT: usize = 1024 * 1024;

/// A reply before serialization.
struct Reply {
    status: u16,
    body: Option<Value>,
    location: Option<String>,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body: Some(body),
            location: None,
        }
    }
    fn data(data: Value) -> Reply {
        Reply::json(
            200,
            json!({"data": data, "auth": null, "wrap_info": null, "warnings": null}),
        )
    }
    fn error(status: u16, msg: &str) -> Reply {
        Reply::json(status, json!({ "errors": [msg] }))
    }
    fn not_found() -> Reply {
        Reply::json(404, json!({ "errors": [] }))
    }
    fn no_content() -> Reply {
        Reply {
            status: 204,
            body: None,
            location: None,
        }
    }
}

/// A token: its policies.
#[derive(Debug)]
struct Token {
    policies: Vec<String>,
    ttl: u64,
}

/// An AppRole role.
#[derive(Debug, Default)]
struct Role {
    role_id: String,
    policies: Vec<String>,
    ttl: u64,
    secret_ids: BTreeSet<String>,
}

/// All mutable server state, behind one mutex.
#[derive(Debug)]
pub(crate) struct Inner {
    mounts: Vec<(String, KvVersion)>,
    ui_mounts_endpoint: bool,
    /// Secrets by full path (`[ns/]mount/rest`).
    pub(crate) secrets: BTreeMap<String, Map<String, Value>>,
    tokens: HashMap<String, Token>,
    pub(crate) policies: BTreeMap<String, Vec<(String, Vec<String>)>>,
    approle_enabled: bool,
    roles: BTreeMap<String, Role>,
    next_id: u64,
    pub(crate) requests: Vec<RequestRecord>,
}

impl Inner {
    pub(crate) fn new(config: &ServerConfig) -> Inner {
        let mut tokens = HashMap::new();
        tokens.insert(
            config.root_token.clone(),
            Token {
                policies: vec!["root".into()],
                ttl: 0,
            },
        );
        Inner {
            mounts: config.mounts.clone(),
            ui_mounts_endpoint: config.ui_mounts_endpoint,
            secrets: BTreeMap::new(),
            tokens,
            policies: BTreeMap::new(),
            approle_enabled: false,
            roles: BTreeMap::new(),
            next_id: 0,
            requests: Vec::new(),
        }
    }

    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{:016x}{:08x}", self.next_id, std::process::id())
    }

    /// The KV mount `path` is in (longest match), and the rest of the path.
    fn mount_of<'a>(&self, path: &'a str) -> Option<(String, KvVersion, &'a str)> {
        self.mounts
            .iter()
            .filter(|(m, _)| path.starts_with(m.as_str()) || path == m.trim_end_matches('/'))
            .max_by_key(|(m, _)| m.len())
            .map(|(m, v)| (m.clone(), *v, path.get(m.len()..).unwrap_or("")))
    }
}

/// State shared by every node of a server (one node) or cluster.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) inner: Mutex<Inner>,
    /// Present for a [`crate::TestCluster`].
    pub(crate) ha: Option<Ha>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// HA cluster bookkeeping.
#[derive(Debug)]
pub(crate) struct Ha {
    /// API address of each node (`http://127.0.0.1:PORT`).
    pub(crate) api_addrs: Vec<String>,
    /// The node standbys redirect to. It may be stopped: then the redirects lead to a refused connection.
    pub(crate) leader: AtomicUsize,
}

/// One listening node: its index, its own faults, the shared state.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) index: usize,
    pub(crate) shared: Arc<Shared>,
    pub(crate) faults: Arc<Faults>,
}

/// Accept connections until `stop` fires, then close every connection.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    node: Arc<Node>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            res = listener.accept() => {
                let Ok((stream, _)) = res else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if node.faults.connection_reset() {
                    drop(stream);
                    continue;
                }
                let node = node.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| serve_request(node.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

fn header(parts: &hyper::http::request::Parts, name: &str) -> Option<String> {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

async fn serve_request(
    node: Arc<Node>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let latency = node.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if node.faults.connection_reset() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "injected connection reset",
        ));
    }
    let (parts, body) = req.into_parts();
    let raw_path = parts.uri.path().to_string();
    let namespace = header(&parts, "x-vault-namespace");
    let token = header(&parts, "x-vault-token");
    let method = parts.method.as_str().to_string();
    let list = method == "LIST"
        || parts
            .uri
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "list=true"));
    let reply = match Limited::new(body, BODY_LIMIT).collect().await {
        Err(_) => Reply::error(413, "request body too large"),
        Ok(collected) => {
            let body = match serde_json::from_slice::<Value>(&collected.to_bytes()) {
                Ok(Value::Object(m)) => m,
                _ => Map::new(),
            };
            let ns = namespace
                .as_deref()
                .map(|n| n.trim_matches('/'))
                .filter(|n| !n.is_empty())
                .map(|n| format!("{n}/"))
                .unwrap_or_default();
            if let Some(status) = node.faults.status_override() {
                Reply::error(status, "injected fault")
            } else if let Some(location) = standby_redirect(&node, &parts) {
                Reply {
                    status: 307,
                    body: None,
                    location: Some(location),
                }
            } else {
                match raw_path.strip_prefix("/v1/") {
                    None => Reply::not_found(),
                    Some(path) => {
                        let op = match (method.as_str(), list) {
                            (_, true) => "list",
                            ("GET" | "HEAD", _) => "read",
                            ("POST" | "PUT", _) => "write",
                            _ => "other",
                        };
                        let mut inner = node.shared.lock();
                        route(&mut inner, op, path, &ns, token.as_deref(), &body)
                    }
                }
            }
        }
    };
    node.shared.lock().requests.push(RequestRecord {
        method,
        path: raw_path,
        status: reply.status,
        namespace,
        token_sent: token.is_some(),
        node: node.index,
    });
    let mut builder = Response::builder()
        .status(reply.status)
        .header("cache-control", "no-store");
    if let Some(location) = &reply.location {
        builder = builder.header("location", location.as_str());
    }
    let bytes = match &reply.body {
        Some(v) => {
            builder = builder.header("content-type", "application/json");
            Bytes::from(serde_json::to_vec(v).unwrap_or_default())
        }
        None => Bytes::new(),
    };
    builder
        .body(Full::new(bytes))
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// A standby (without request forwarding) answers 307 to the active node with the same path and query.
fn standby_redirect(node: &Node, parts: &hyper::http::request::Parts) -> Option<String> {
    let ha = node.shared.ha.as_ref()?;
    let leader = ha.leader.load(Ordering::SeqCst);
    if leader == node.index {
        return None;
    }
    let path_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    Some(format!("{}{path_query}", ha.api_addrs.get(leader)?))
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect(),
        Some(Value::String(s)) => s
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

/// `"1h"`, `"30m"`, `"45s"` or a number of seconds; anything else is 0.
fn seconds(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::String(s)) => {
            let (digits, unit) =
                s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
            let n: u64 = digits.parse().unwrap_or(0);
            match unit {
                "h" => n * 3600,
                "m" => n * 60,
                _ => n,
            }
        }
        _ => 0,
    }
}

fn route(
    inner: &mut Inner,
    op: &str,
    path: &str,
    ns: &str,
    token: Option<&str>,
    body: &Map<String, Value>,
) -> Reply {
    if let ("write", Some(role)) = (op, path.strip_prefix("auth/approle/login")) {
        if !role.is_empty() || !inner.approle_enabled {
            return Reply::not_found();
        }
        return approle_login(inner, body);
    }
    let Some(token) = token.filter(|t| inner.tokens.contains_key(*t)) else {
        return Reply::error(403, "permission denied");
    };
    match (op, path) {
        ("read", "auth/token/lookup-self") => {
            let t = &inner.tokens[token];
            return Reply::data(json!({
                "policies": t.policies,
                "ttl": t.ttl,
                "renewable": t.ttl > 0,
            }));
        }
        ("write", "auth/token/revoke-self") => {
            inner.tokens.remove(token);
            return Reply::no_content();
        }
        ("read", "sys/auth") => {
            let mut methods = Map::new();
            methods.insert("token/".into(), json!({"type": "token"}));
            if inner.approle_enabled {
                methods.insert("approle/".into(), json!({"type": "approle"}));
            }
            return Reply::data(Value::Object(methods));
        }
        ("write", "sys/auth/approle") => {
            inner.approle_enabled = true;
            return Reply::no_content();
        }
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("sys/internal/ui/mounts") {
        if !inner.ui_mounts_endpoint || op != "read" {
            return Reply::not_found();
        }
        return match inner.mount_of(rest.trim_start_matches('/')) {
            Some((mount, version, _)) => Reply::data(json!({
                "path": mount,
                "type": "kv",
                "accessor": format!("kv_{}", mount.trim_end_matches('/')),
                "options": {"version": if version == KvVersion::V2 { "2" } else { "1" }},
            })),
            None => Reply::error(403, "permission denied"),
        };
    }
    if let Some(rest) = path.strip_prefix("auth/approle/role/") {
        return approle_role(inner, op, rest, body);
    }
    kv(inner, op, path, ns)
}

fn approle_role(inner: &mut Inner, op: &str, rest: &str, body: &Map<String, Value>) -> Reply {
    if !inner.approle_enabled {
        return Reply::not_found();
    }
    let (name, action) = rest.split_once('/').unwrap_or((rest, ""));
    match (op, action) {
        ("write", "") => {
            let role_id = match inner.roles.get(name) {
                Some(r) => r.role_id.clone(),
                None => inner.id("role-"),
            };
            let role = inner.roles.entry(name.to_owned()).or_default();
            role.role_id = role_id;
            role.policies = str_list(body.get("token_policies"));
            role.ttl = seconds(body.get("token_ttl"));
            Reply::no_content()
        }
        ("read", "role-id") => match inner.roles.get(name) {
            Some(r) => Reply::data(json!({"role_id": r.role_id})),
            None => Reply::not_found(),
        },
        ("write", "secret-id") if inner.roles.contains_key(name) => {
            let secret_id = inner.id("secret-");
            if let Some(r) = inner.roles.get_mut(name) {
                r.secret_ids.insert(secret_id.clone());
            }
            Reply::data(json!({"secret_id": secret_id}))
        }
        _ => Reply::not_found(),
    }
}

fn approle_login(inner: &mut Inner, body: &Map<String, Value>) -> Reply {
    let role_id = body.get("role_id").and_then(Value::as_str).unwrap_or("");
    let secret_id = body.get("secret_id").and_then(Value::as_str).unwrap_or("");
    let Some(role) = inner
        .roles
        .values()
        .find(|r| r.role_id == role_id && r.secret_ids.contains(secret_id))
    else {
        return Reply::error(400, "invalid role or secret ID");
    };
    let mut policies = vec!["default".to_owned()];
    policies.extend(role.policies.iter().cloned());
    let ttl = if role.ttl == 0 { 2_764_800 } else { role.ttl };
    let client_token = inner.id("hvs.");
    inner.tokens.insert(
        client_token.clone(),
        Token {
            policies: policies.clone(),
            ttl,
        },
    );
    Reply::json(
        200,
        json!({"data": null, "auth": {
            "client_token": client_token,
            "policies": policies,
            "token_policies": policies,
            "lease_duration": ttl,
            "renewable": true,
        }}),
    )
}

/// KV v1 (`mount/rest`) and v2 (`mount/data/rest`, `mount/metadata/dir/`) reads and lists.
fn kv(inner: &Inner, op: &str, path: &str, ns: &str) -> Reply {
    let Some((mount, version, rest)) = inner.mount_of(path) else {
        return Reply::not_found();
    };
    let (rest, is_data) = match version {
        KvVersion::V1 => (rest, true),
        KvVersion::V2 => match (rest.strip_prefix("data/"), rest.strip_prefix("metadata")) {
            (Some(r), _) => (r, true),
            (None, Some(r)) => (r.trim_start_matches('/'), false),
            (None, None) => return Reply::not_found(),
        },
    };
    let key = format!("{ns}{mount}{rest}");
    match op {
        "read" if is_data => match inner.secrets.get(&key) {
            Some(data) if version == KvVersion::V2 => Reply::data(json!({
                "data": data,
                "metadata": {"version": 1, "deletion_time": "", "destroyed": false},
            })),
            Some(data) => Reply::data(Value::Object(data.clone())),
            None => Reply::not_found(),
        },
        "list" if version == KvVersion::V1 || !is_data => {
            let prefix = if rest.is_empty() || rest.ends_with('/') {
                key
            } else {
                format!("{key}/")
            };
            let keys: BTreeSet<&str> = inner
                .secrets
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .filter_map(|(k, _)| {
                    let child = k.get(prefix.len()..)?;
                    Some(match child.find('/') {
                        Some(i) => child.get(..=i)?,
                        None => child,
                    })
                })
                .collect();
            if keys.is_empty() {
                Reply::not_found()
            } else {
                Reply::data(json!({ "keys": keys }))
            }
        }
        _ => Reply::error(405, "unsupported operation"),
    }
}
