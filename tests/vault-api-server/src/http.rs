//! HTTP layer: connection handling (plain or TLS), HA standby redirects,
//! routing, the response envelope, errors, response wrapping, `sys/*`
//! endpoints and `auth/token/*`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::approle::{self, AppRoles};
use crate::certauth::{self, CertAuths};
use crate::faults::Faults;
use crate::store::{self, Mount, Store};
use crate::tokens::{self, NewToken, Policy, Token, TokenStore, INVALID_TOKEN, PERMISSION_DENIED};
use crate::util;
use crate::{KvVersion, RequestRecord};

const BODY_LIMIT: usize = 32 * 1024 * 1024;
const VERSION: &str = "1.17.2";

/// Operation class of a request (the ACL capability it needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Read,
    List,
    Write,
    Delete,
}

/// A reply before serialization: status and optional JSON body.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub status: u16,
    pub body: Option<Value>,
    /// `Location` header (standby redirects).
    pub location: Option<String>,
}

fn envelope(data: Value, auth: Value, mount_type: &str) -> Value {
    json!({
        "request_id": util::uuid(),
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data,
        "wrap_info": null,
        "warnings": null,
        "auth": auth,
        "mount_type": mount_type,
    })
}

impl Reply {
    /// 200 with the full envelope around `data`.
    pub(crate) fn data(data: Value, mount_type: &str) -> Reply {
        Reply {
            status: 200,
            body: Some(envelope(data, Value::Null, mount_type)),
            location: None,
        }
    }

    /// 200 with `data:null` and an `auth` block.
    pub(crate) fn auth(auth: Value, mount_type: &str, warnings: Vec<String>) -> Reply {
        let mut r = Reply {
            status: 200,
            body: Some(envelope(Value::Null, auth, mount_type)),
            location: None,
        };
        if !warnings.is_empty() {
            r.set("warnings", json!(warnings));
        }
        r
    }

    pub(crate) fn no_content() -> Reply {
        Reply {
            status: 204,
            body: None,
            location: None,
        }
    }

    pub(crate) fn error(status: u16, msg: &str) -> Reply {
        Reply::raw(status, json!({ "errors": [msg] }))
    }

    /// 404 `{"errors":[]}`.
    pub(crate) fn not_found() -> Reply {
        Reply::raw(404, json!({ "errors": [] }))
    }

    pub(crate) fn method_not_allowed() -> Reply {
        Reply::error(405, "1 error occurred:\n\t* unsupported operation\n\n")
    }

    pub(crate) fn raw(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body: Some(body),
            location: None,
        }
    }

    /// 307 to `location`, no body (a standby without request forwarding).
    pub(crate) fn redirect(location: String) -> Reply {
        Reply {
            status: 307,
            body: None,
            location: Some(location),
        }
    }

    /// Set a top-level key of the JSON body.
    pub(crate) fn set(&mut self, key: &str, value: Value) {
        if let Some(Value::Object(m)) = &mut self.body {
            m.insert(key.to_string(), value);
        }
    }
}

/// A response hidden behind a wrapping token.
#[derive(Debug)]
struct Wrapped {
    envelope: Value,
    creation_path: String,
    creation_time: String,
    ttl: u64,
    expires: Instant,
}

/// All mutable server state, behind one mutex.
#[derive(Debug)]
pub(crate) struct Inner {
    pub store: Store,
    pub tokens: TokenStore,
    pub approles: AppRoles,
    pub certs: CertAuths,
    wraps: HashMap<String, Wrapped>,
    pub requests: Vec<RequestRecord>,
    ui_mounts_endpoint: bool,
    cluster_id: String,
}

impl Inner {
    pub(crate) fn new(config: &crate::ServerConfig) -> Inner {
        Inner {
            store: Store::new(&config.mounts),
            tokens: TokenStore::new(&config.root_token),
            approles: AppRoles::new(),
            certs: CertAuths::default(),
            wraps: HashMap::new(),
            requests: Vec::new(),
            ui_mounts_endpoint: config.ui_mounts_endpoint,
            cluster_id: util::uuid(),
        }
    }
}

/// State shared by every node of a server (one node) or cluster.
#[derive(Debug)]
pub(crate) struct Shared {
    pub inner: Mutex<Inner>,
    /// Present for a [`crate::TestCluster`].
    pub ha: Option<Ha>,
}

/// HA cluster bookkeeping.
#[derive(Debug)]
pub(crate) struct Ha {
    /// API address of each node (`https://127.0.0.1:PORT`).
    pub api_addrs: Vec<String>,
    /// Cluster address of each node (reported only; nothing listens there).
    pub cluster_addrs: Vec<String>,
    /// The node standbys point to. It may be stopped: then the redirects
    /// lead to a refused connection, as with a dead active node.
    pub leader: AtomicUsize,
}

impl Ha {
    pub(crate) fn leader(&self) -> usize {
        self.leader.load(Ordering::SeqCst)
    }
}

/// One listening node: its index, its own faults, the shared state.
#[derive(Debug)]
pub(crate) struct Node {
    pub index: usize,
    pub shared: Arc<Shared>,
    pub faults: Arc<Faults>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Node {
    /// `Some(leader)` when this node is a standby of a cluster.
    fn standby_of(&self) -> Option<usize> {
        let ha = self.shared.ha.as_ref()?;
        let leader = ha.leader();
        (leader != self.index).then_some(leader)
    }
}

/// What a connection knows about its peer.
#[derive(Debug, Default)]
struct ConnInfo {
    tls: bool,
    /// TLS peer certificate chain, leaf first; empty without a client
    /// certificate. Verified against `client_ca_pem` when one is configured,
    /// else only the handshake signature was checked.
    peer_certs: Vec<CertificateDer<'static>>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
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
                    match node.tls.clone() {
                        None => serve_conn(node, stream, ConnInfo::default()).await,
                        Some(config) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(config);
                            let handshake = tokio::time::timeout(
                                Duration::from_secs(10),
                                acceptor.accept(stream),
                            );
                            let Ok(Ok(tls)) = handshake.await else {
                                return;
                            };
                            let info = ConnInfo {
                                tls: true,
                                peer_certs: tls.get_ref().1.peer_certificates().map(<[_]>::to_vec).unwrap_or_default(),
                            };
                            serve_conn(node, tls, info).await
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

async fn serve_conn<I>(node: Arc<Node>, io: I, info: ConnInfo)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = Arc::new(info);
    let svc = service_fn(move |req| serve_request(node.clone(), info.clone(), req));
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// Everything about a request the handlers need.
struct Ctx {
    method: String,
    /// Decoded, without the `/v1/` prefix.
    path: String,
    query: Vec<(String, String)>,
    token: Option<String>,
    /// `ns1/` form.
    namespace: String,
    wrap_ttl: Option<String>,
    /// Path and query exactly as received (for standby redirects).
    raw_path_query: String,
    conn: Arc<ConnInfo>,
}

fn header(parts: &hyper::http::request::Parts, name: &str) -> Option<String> {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

async fn serve_request(
    node: Arc<Node>,
    conn: Arc<ConnInfo>,
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
    let namespace_header = header(&parts, "x-vault-namespace").filter(|s| !s.is_empty());
    let token = header(&parts, "x-vault-token")
        .filter(|s| !s.is_empty())
        .or_else(|| {
            header(&parts, "authorization")
                .and_then(|a| a.strip_prefix("Bearer ").map(|t| t.trim().to_string()))
        })
        .filter(|s| !s.is_empty());
    let method = parts.method.as_str().to_string();
    let record = |status: u16| RequestRecord {
        method: method.clone(),
        path: raw_path.clone(),
        status,
        namespace: namespace_header.clone(),
        token_sent: token.is_some(),
        node: node.index,
    };
    let reply = match Limited::new(body, BODY_LIMIT).collect().await {
        Err(_) => Reply::error(413, "http: request body too large"),
        Ok(collected) => {
            let bytes = collected.to_bytes();
            let ns = namespace_header
                .as_deref()
                .map(|n| n.trim_matches('/'))
                .filter(|n| !n.is_empty())
                .map(|n| format!("{n}/"))
                .unwrap_or_default();
            let ctx = Ctx {
                method: method.clone(),
                path: util::percent_decode(raw_path.strip_prefix("/v1/").unwrap_or("")),
                query: util::parse_query(parts.uri.query()),
                token: token.clone(),
                namespace: ns,
                wrap_ttl: header(&parts, "x-vault-wrap-ttl").filter(|s| !s.is_empty()),
                raw_path_query: parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_else(|| raw_path.clone()),
                conn,
            };
            if !raw_path.starts_with("/v1/") {
                Reply::not_found()
            } else {
                let mut inner = node.shared.lock();
                handle(&mut inner, &node, &ctx, &bytes)
            }
        }
    };
    let mut builder = Response::builder()
        .status(reply.status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store");
    let body = match (&reply.body, reply.status, method.as_str()) {
        (_, 204, _) | (_, _, "HEAD") | (None, _, _) => Bytes::new(),
        (Some(v), _, _) => Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
    };
    if reply.status == 204 {
        builder = Response::builder()
            .status(204)
            .header("cache-control", "no-store");
    }
    if let Some(location) = &reply.location {
        builder = Response::builder()
            .status(reply.status)
            .header("location", location.as_str())
            .header("cache-control", "no-store");
    }
    node.shared.lock().requests.push(record(reply.status));
    match builder.body(Full::new(body)) {
        Ok(r) => Ok(r),
        Err(_) => {
            let mut r = Response::new(Full::new(Bytes::from_static(
                br#"{"errors":["internal error"]}"#,
            )));
            *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            Ok(r)
        }
    }
}

fn handle(inner: &mut Inner, node: &Node, ctx: &Ctx, bytes: &[u8]) -> Reply {
    let faults = &*node.faults;
    let path = ctx.path.as_str();
    let exempt = matches!(path, "sys/health" | "sys/seal-status");
    if !exempt && faults.sealed() && path != "sys/unseal" {
        return Reply::error(503, "Vault is sealed");
    }
    if !exempt {
        if let Some(status) = faults.status_override() {
            return Reply::error(status, "injected fault");
        }
    }
    // A standby without request forwarding: 307 to the active node, except
    // for the node-local status endpoints.
    let local = exempt || matches!(path, "sys/leader" | "sys/unseal");
    if let (false, Some(leader), Some(ha)) = (local, node.standby_of(), &node.shared.ha) {
        return match ha.api_addrs.get(leader) {
            Some(addr) => Reply::redirect(format!("{addr}{}", ctx.raw_path_query)),
            None => Reply::error(503, "no active node"),
        };
    }
    // Operation from the verb (+ ?list=true).
    let list_param = ctx
        .query
        .iter()
        .find(|(k, _)| k == "list")
        .map(|(_, v)| v.as_str());
    let list = match list_param {
        None => false,
        Some("true" | "1" | "t" | "T" | "TRUE" | "True") => true,
        Some("false" | "0" | "f" | "F" | "FALSE" | "False" | "") => false,
        Some(_) => return Reply::error(400, "invalid value for list parameter"),
    };
    let op = match ctx.method.as_str() {
        "GET" | "HEAD" if list => Op::List,
        _ if list => return Reply::method_not_allowed(),
        "GET" | "HEAD" => Op::Read,
        "LIST" => Op::List,
        "POST" | "PUT" => Op::Write,
        "DELETE" => Op::Delete,
        _ => return Reply::method_not_allowed(),
    };
    let body: Map<String, Value> = if bytes.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(m)) => m,
            Ok(Value::Null) => Map::new(),
            Ok(_) => {
                return Reply::error(
                    400,
                    "failed to parse JSON input: body must be a JSON object",
                )
            }
            Err(e) => return Reply::error(400, &format!("failed to parse JSON input: {e}")),
        }
    };
    let wrap_ttl = match &ctx.wrap_ttl {
        None => None,
        Some(s) => match util::parse_duration_str(s) {
            Ok(t) if t > 0 => Some(t),
            _ => return Reply::error(400, "error parsing wrap TTL"),
        },
    };
    let reply = route(inner, node, ctx, op, &body);
    match wrap_ttl {
        Some(ttl)
            if reply.status == 200 && reply.body.is_some() && path != "sys/wrapping/unwrap" =>
        {
            wrap(inner, reply, path, ttl)
        }
        _ => reply,
    }
}

fn wrap(inner: &mut Inner, reply: Reply, path: &str, ttl: u64) -> Reply {
    let envelope = reply.body.unwrap_or(Value::Null);
    let token = format!("hvs.{}", util::hex_id(90));
    let creation_time = util::now_rfc3339();
    let mut info = json!({
        "token": token,
        "accessor": util::hex_id(24),
        "ttl": ttl,
        "creation_time": creation_time,
        "creation_path": path,
    });
    if let Some(acc) = envelope.get("auth").and_then(|a| a.get("accessor")) {
        info["wrapped_accessor"] = acc.clone();
    }
    inner.wraps.insert(
        token,
        Wrapped {
            envelope,
            creation_path: path.to_string(),
            creation_time,
            ttl,
            expires: Instant::now() + Duration::from_secs(ttl),
        },
    );
    let mut r = Reply::data(Value::Null, "");
    r.set("wrap_info", info);
    r
}

fn route(inner: &mut Inner, node: &Node, ctx: &Ctx, op: Op, body: &Map<String, Value>) -> Reply {
    let faults = &*node.faults;
    let path = ctx.path.as_str();
    // Paths that need no token.
    match path {
        "sys/health" => return health(inner, node, ctx),
        "sys/leader" => {
            return match op {
                Op::Read => Reply::raw(200, leader(node)),
                _ => Reply::method_not_allowed(),
            }
        }
        "sys/seal-status" => {
            return match op {
                Op::Read => Reply::raw(200, seal_status(inner, faults.sealed())),
                _ => Reply::method_not_allowed(),
            }
        }
        "sys/init" => {
            return match op {
                Op::Read => Reply::raw(200, json!({"initialized": true})),
                Op::Write => Reply::error(400, "Vault is already initialized"),
                _ => Reply::method_not_allowed(),
            }
        }
        "sys/unseal" => {
            return match op {
                Op::Write => {
                    faults.unseal();
                    Reply::raw(200, seal_status(inner, false))
                }
                _ => Reply::method_not_allowed(),
            }
        }
        "sys/wrapping/unwrap" => return unwrap(inner, ctx, op, body),
        "sys/wrapping/lookup" => return wrap_lookup(inner, op, body),
        _ => {}
    }
    if path == "sys/internal/ui/mounts" || path.starts_with("sys/internal/ui/mounts/") {
        return ui_mounts(inner, ctx, op);
    }
    if let Some(rest) = path.strip_prefix("auth/") {
        if let Some((mount, inner_path)) = inner.approles.find(rest) {
            if inner_path == "login" {
                return approle::handle(
                    &mut inner.approles,
                    &mut inner.tokens,
                    &mount,
                    inner_path,
                    op,
                    body,
                );
            }
        }
        if let Some((mount, inner_path)) = inner.certs.find(rest) {
            if inner_path.trim_end_matches('/') == "login" {
                return cert_handle(inner, ctx, &mount, inner_path, op, body);
            }
        }
    }
    // Everything else is authenticated.
    let Some(token_id) = ctx.token.as_deref() else {
        return Reply::error(403, "permission denied");
    };
    let token = match inner.tokens.use_token(token_id) {
        Ok(t) => t,
        Err(_) => return Reply::error(403, INVALID_TOKEN),
    };
    // Vault checks LIST requests against the path with a trailing slash.
    let acl_path = match op {
        Op::List if !path.ends_with('/') => format!("{path}/"),
        _ => path.to_string(),
    };
    if !inner.tokens.allowed(&token.policies, &acl_path, op) {
        return Reply::error(403, PERMISSION_DENIED);
    }
    authenticated(inner, ctx, op, body, &token)
}

fn authenticated(
    inner: &mut Inner,
    ctx: &Ctx,
    op: Op,
    body: &Map<String, Value>,
    token: &Token,
) -> Reply {
    let path = ctx.path.trim_end_matches('/');
    match path {
        "sys/mounts" => {
            return match op {
                Op::Read => Reply::data(mounts_map(&inner.store.mounts), "system"),
                _ => Reply::method_not_allowed(),
            }
        }
        "sys/auth" => {
            return match op {
                Op::Read => Reply::data(auth_mounts_map(inner), "system"),
                _ => Reply::method_not_allowed(),
            }
        }
        "sys/policy" | "sys/policies/acl" => {
            return match op {
                Op::Read | Op::List => {
                    let mut keys: Vec<String> = inner.tokens.policies.keys().cloned().collect();
                    keys.push("root".into());
                    keys.sort();
                    Reply::data(json!({"keys": keys, "policies": keys}), "system")
                }
                _ => Reply::method_not_allowed(),
            }
        }
        "auth/token/lookup-self" => {
            return match op {
                Op::Read => Reply::data(token.lookup_data(), "token"),
                _ => Reply::method_not_allowed(),
            }
        }
        "auth/token/lookup" => {
            return match op {
                Op::Read | Op::Write => match body.get("token").and_then(Value::as_str) {
                    Some(id) => match inner.tokens.peek(id) {
                        Ok(t) => Reply::data(t.lookup_data(), "token"),
                        Err(_) => Reply::error(403, INVALID_TOKEN),
                    },
                    None => Reply::error(400, "missing token"),
                },
                _ => Reply::method_not_allowed(),
            }
        }
        "auth/token/renew-self" | "auth/token/renew" => {
            if op != Op::Write {
                return Reply::method_not_allowed();
            }
            let id = if path == "auth/token/renew" {
                match body.get("token").and_then(Value::as_str) {
                    Some(id) => id.to_string(),
                    None => return Reply::error(400, "missing token"),
                }
            } else {
                token.id.clone()
            };
            let increment = match body.get("increment").map(util::parse_duration) {
                None => None,
                Some(Ok(i)) => Some(i),
                Some(Err(e)) => return Reply::error(400, &e),
            };
            return match inner.tokens.renew(&id, increment) {
                Ok((t, warning)) => Reply::auth(t.auth_block(), "token", warning.into_iter().collect()),
                Err((status, msg)) => Reply::error(status, &msg),
            };
        }
        "auth/token/create" | "auth/token/create-orphan" => {
            return match op {
                Op::Write => create_token(inner, token, body, path.ends_with("orphan")),
                _ => Reply::method_not_allowed(),
            }
        }
        "auth/token/revoke-self" => {
            return match op {
                Op::Write => {
                    inner.tokens.revoke(&token.id);
                    Reply::no_content()
                }
                _ => Reply::method_not_allowed(),
            }
        }
        "auth/token/revoke" => {
            return match (op, body.get("token").and_then(Value::as_str)) {
                (Op::Write, Some(id)) => {
                    inner.tokens.revoke(id);
                    Reply::no_content()
                }
                (Op::Write, None) => Reply::error(400, "missing token"),
                _ => Reply::method_not_allowed(),
            }
        }
        "sys/seal" => {
            return match op {
                Op::Write => Reply::error(
                    400,
                    "sealing over HTTP is not supported by this test server; use FaultsHandle::set_sealed",
                ),
                _ => Reply::method_not_allowed(),
            }
        }
        _ => {}
    }
    if let Some(name) = path
        .strip_prefix("sys/policy/")
        .or_else(|| path.strip_prefix("sys/policies/acl/"))
    {
        return policy(inner, name, op, body, path.starts_with("sys/policy/"));
    }
    if let Some(m) = path.strip_prefix("sys/mounts/") {
        return sys_mount(inner, m, op, body);
    }
    if let Some(m) = path.strip_prefix("sys/auth/") {
        return sys_auth(inner, m, op, body);
    }
    if let Some(rest) = ctx.path.strip_prefix("auth/") {
        if let Some((mount, inner_path)) = inner.approles.find(rest) {
            let inner_path = inner_path.to_string();
            return approle::handle(
                &mut inner.approles,
                &mut inner.tokens,
                &mount,
                &inner_path,
                op,
                body,
            );
        }
        if let Some((mount, inner_path)) = inner.certs.find(rest) {
            let inner_path = inner_path.to_string();
            return cert_handle(inner, ctx, &mount, &inner_path, op, body);
        }
        return Reply::not_found();
    }
    if let Some((mount, rest)) = inner.store.find_mount(&ctx.path) {
        return store::handle_kv(
            &mut inner.store,
            &ctx.namespace,
            &mount,
            &rest,
            op,
            body,
            &ctx.query,
        );
    }
    Reply::error(
        404,
        &format!(
            "no handler for route \"{}\". route entry not found.",
            ctx.path
        ),
    )
}

fn cert_handle(
    inner: &mut Inner,
    ctx: &Ctx,
    mount: &str,
    inner_path: &str,
    op: Op,
    body: &Map<String, Value>,
) -> Reply {
    let conn = certauth::Conn {
        tls: ctx.conn.tls,
        peer_certs: &ctx.conn.peer_certs,
    };
    certauth::handle(
        &mut inner.certs,
        &mut inner.tokens,
        mount,
        inner_path,
        op,
        body,
        &conn,
    )
}

/// `sys/auth/<m>`: enable (`approle`, `cert`) or disable an auth method.
fn sys_auth(inner: &mut Inner, m: &str, op: Op, body: &Map<String, Value>) -> Reply {
    let name = m.trim_matches('/');
    let in_use = || Reply::error(400, &format!("path is already in use at {name}/"));
    let taken =
        name == "token" || inner.approles.find(name).is_some() || inner.certs.contains(name);
    match op {
        Op::Write => match body.get("type").and_then(Value::as_str) {
            _ if name.is_empty() => Reply::error(400, "missing path"),
            Some(_) if taken => in_use(),
            Some("approle") => {
                inner.approles.enable(name);
                Reply::no_content()
            }
            Some("cert") => {
                inner.certs.enable(name);
                Reply::no_content()
            }
            Some(t) => Reply::error(
                400,
                &format!("auth method type {t:?} is not supported by this test server"),
            ),
            None => Reply::error(400, "missing type"),
        },
        Op::Delete => {
            if name == "token" {
                return Reply::error(400, "token credential backend cannot be disabled");
            }
            inner.approles.disable(name);
            inner.certs.disable(name);
            Reply::no_content()
        }
        _ => Reply::method_not_allowed(),
    }
}

fn str_list(v: Option<&Value>) -> Option<Vec<String>> {
    match v? {
        Value::Array(a) => Some(
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
        ),
        Value::String(s) => Some(
            s.split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
        ),
        _ => None,
    }
}

fn create_token(
    inner: &mut Inner,
    parent: &Token,
    body: &Map<String, Value>,
    orphan_path: bool,
) -> Reply {
    let dur = |key: &str| -> Result<u64, Reply> {
        match body.get(key) {
            None => Ok(0),
            Some(v) => util::parse_duration(v).map_err(|e| Reply::error(400, &e)),
        }
    };
    let (ttl, lease, explicit_max_ttl, period) = match (
        dur("ttl"),
        dur("lease"),
        dur("explicit_max_ttl"),
        dur("period"),
    ) {
        (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
        (Err(r), ..) | (_, Err(r), ..) | (_, _, Err(r), _) | (_, _, _, Err(r)) => return r,
    };
    let batch = match body.get("type").and_then(Value::as_str) {
        None | Some("" | "service") => false,
        Some("batch") => true,
        Some(t) => return Reply::error(400, &format!("unsupported token type {t:?}")),
    };
    let parent_is_root = parent.policies.iter().any(|p| p == "root");
    if body.contains_key("id") && !parent_is_root {
        return Reply::error(400, "root or sudo privileges required to specify token id");
    }
    let policies = str_list(body.get("policies")).unwrap_or_else(|| {
        parent
            .policies
            .iter()
            .filter(|p| *p != "default")
            .cloned()
            .collect()
    });
    let warnings: Vec<String> = policies
        .iter()
        .filter(|p| !inner.tokens.policy_exists(p))
        .map(|p| format!("Policy \"{p}\" does not exist"))
        .collect();
    let meta: Option<BTreeMap<String, String>> = match body.get("meta") {
        Some(Value::Object(m)) => Some(
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect(),
        ),
        _ => None,
    };
    let orphan = orphan_path
        || body
            .get("no_parent")
            .and_then(Value::as_bool)
            .unwrap_or(false);
    let ttl = if ttl > 0 { ttl } else { lease };
    let num_uses = body.get("num_uses").and_then(Value::as_u64).unwrap_or(0);
    let display_name = match body.get("display_name").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => format!("token-{n}"),
        _ => "token".to_string(),
    };
    let t = inner.tokens.create(NewToken {
        policies,
        no_default_policy: body
            .get("no_default_policy")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        meta,
        display_name,
        ttl: (ttl > 0).then_some(ttl),
        max_ttl: 0,
        explicit_max_ttl,
        period,
        num_uses,
        renewable: body
            .get("renewable")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        orphan,
        parent: Some(parent.id.clone()),
        path: if orphan_path {
            "auth/token/create-orphan"
        } else {
            "auth/token/create"
        }
        .into(),
        entity_id: String::new(),
        role: None,
        id: body.get("id").and_then(Value::as_str).map(str::to_string),
        renew_ttl: 0,
        batch,
    });
    Reply::auth(t.auth_block(), "token", warnings)
}

fn policy(inner: &mut Inner, name: &str, op: Op, body: &Map<String, Value>, legacy: bool) -> Reply {
    match op {
        Op::Read => {
            let text = if name == "root" {
                Some(String::new())
            } else {
                inner.tokens.policies.get(name).map(|p| p.text.clone())
            };
            match text {
                Some(text) if legacy => Reply::data(json!({"name": name, "rules": text}), "system"),
                Some(text) => Reply::data(json!({"name": name, "policy": text}), "system"),
                None => Reply::not_found(),
            }
        }
        Op::Write => {
            if name == "root" {
                return Reply::error(400, "cannot update \"root\" policy");
            }
            let Some(text) = body
                .get("policy")
                .or_else(|| body.get("rules"))
                .and_then(Value::as_str)
            else {
                return Reply::error(400, "'policy' parameter not supplied or empty");
            };
            match tokens::parse_hcl(text) {
                Ok(rules) => {
                    inner.tokens.policies.insert(
                        name.to_string(),
                        Policy {
                            rules,
                            text: text.to_string(),
                        },
                    );
                    Reply::no_content()
                }
                Err(e) => Reply::error(400, &format!("failed to parse policy: {e}")),
            }
        }
        Op::Delete => {
            if name == "root" || name == "default" {
                return Reply::error(400, &format!("cannot delete \"{name}\" policy"));
            }
            inner.tokens.policies.remove(name);
            Reply::no_content()
        }
        Op::List => Reply::method_not_allowed(),
    }
}

fn mounts_map(mounts: &[Mount]) -> Value {
    let mut m = Map::new();
    for mount in mounts {
        m.insert(mount.path.clone(), mount.describe());
    }
    m.insert(
        "sys/".into(),
        json!({
            "accessor": "system_00000000",
            "config": {"default_lease_ttl": 0, "force_no_cache": false, "max_lease_ttl": 0},
            "description": "system endpoints used for control, policy and debugging",
            "external_entropy_access": false,
            "local": false,
            "options": null,
            "seal_wrap": true,
            "type": "system",
            "uuid": "00000000-0000-0000-0000-000000000000",
        }),
    );
    Value::Object(m)
}

fn auth_mounts_map(inner: &Inner) -> Value {
    let describe = |path: &str, ty: &str| {
        json!({
            "accessor": format!("auth_{ty}_{}", &util::hex_id(8)),
            "config": {"default_lease_ttl": 0, "force_no_cache": false, "max_lease_ttl": 0, "token_type": "default-service"},
            "description": "",
            "external_entropy_access": false,
            "local": false,
            "options": null,
            "path": path,
            "seal_wrap": false,
            "type": ty,
            "uuid": util::uuid(),
        })
    };
    let mut m = Map::new();
    m.insert("token/".into(), describe("token/", "token"));
    for name in inner.approles.mount_names() {
        let p = format!("{name}/");
        m.insert(p.clone(), describe(&p, "approle"));
    }
    for name in inner.certs.mount_names() {
        let p = format!("{name}/");
        m.insert(p.clone(), describe(&p, "cert"));
    }
    Value::Object(m)
}

fn sys_mount(inner: &mut Inner, m: &str, op: Op, body: &Map<String, Value>) -> Reply {
    let path = format!("{}/", m.trim_matches('/'));
    let existing = inner.store.mounts.iter().position(|x| x.path == path);
    match op {
        Op::Read => match existing.and_then(|i| inner.store.mounts.get(i)) {
            Some(mount) => Reply::data(mount.describe(), "system"),
            None => Reply::error(400, &format!("no mount entry found at {path}")),
        },
        Op::Write => {
            if existing.is_some() {
                return Reply::error(400, &format!("path is already in use at {path}"));
            }
            let ty = body.get("type").and_then(Value::as_str).unwrap_or("");
            let opt_version = body
                .get("options")
                .and_then(|o| o.get("version"))
                .and_then(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .or_else(|| v.as_u64().map(|n| n.to_string()))
                });
            let version = match (ty, opt_version.as_deref()) {
                ("kv-v2", _) | ("kv", Some("2")) => KvVersion::V2,
                ("kv", _) => KvVersion::V1,
                _ => {
                    return Reply::error(
                        400,
                        &format!("secrets engine type {ty:?} is not supported by this test server"),
                    )
                }
            };
            inner.store.mounts.push(Mount::new(&path, version));
            Reply::no_content()
        }
        Op::Delete => {
            if let Some(i) = existing {
                inner.store.mounts.remove(i);
            }
            Reply::no_content()
        }
        Op::List => Reply::method_not_allowed(),
    }
}

fn ui_mounts(inner: &mut Inner, ctx: &Ctx, op: Op) -> Reply {
    if !inner.ui_mounts_endpoint {
        return Reply::not_found();
    }
    if op != Op::Read {
        return Reply::method_not_allowed();
    }
    let target = ctx
        .path
        .strip_prefix("sys/internal/ui/mounts")
        .unwrap_or("")
        .trim_start_matches('/');
    if target.is_empty() {
        let mut secret = Map::new();
        for m in &inner.store.mounts {
            secret.insert(m.path.clone(), m.describe());
        }
        return Reply::data(
            json!({"secret": secret, "auth": auth_mounts_map(inner)}),
            "system",
        );
    }
    let token = match ctx.token.as_deref().map(|t| inner.tokens.peek(t)) {
        None => return Reply::error(403, "permission denied"),
        Some(Err(_)) => return Reply::error(403, INVALID_TOKEN),
        Some(Ok(t)) => t,
    };
    let mut echoed = target.to_string();
    if !echoed.ends_with('/') {
        echoed.push('/');
    }
    let denied = || {
        Reply::error(
            403,
            &format!(
                "preflight capability check returned 403, please ensure client's policies grant access to path \"{echoed}\""
            ),
        )
    };
    match inner.store.find_mount(target) {
        Some((mount, _)) if inner.tokens.has_mount_access(&token.policies, &mount.path) => {
            Reply::data(mount.describe(), "system")
        }
        _ => denied(),
    }
}

/// `sys/leader` of this node.
fn leader(node: &Node) -> Value {
    match &node.shared.ha {
        None => json!({
            "ha_enabled": false,
            "is_self": false,
            "active_time": "0001-01-01T00:00:00Z",
            "leader_address": "",
            "leader_cluster_address": "",
            "performance_standby": false,
            "performance_standby_last_remote_wal": 0,
        }),
        Some(ha) => {
            let leader = ha.leader();
            json!({
                "ha_enabled": true,
                "is_self": leader == node.index,
                "active_time": "0001-01-01T00:00:00Z",
                "leader_address": ha.api_addrs.get(leader).cloned().unwrap_or_default(),
                "leader_cluster_address": ha.cluster_addrs.get(leader).cloned().unwrap_or_default(),
                "performance_standby": false,
                "performance_standby_last_remote_wal": 0,
            })
        }
    }
}

fn health(inner: &Inner, node: &Node, ctx: &Ctx) -> Reply {
    let faults = &*node.faults;
    if !matches!(ctx.method.as_str(), "GET" | "HEAD") {
        return Reply::method_not_allowed();
    }
    let mut codes: HashMap<&str, u16> = HashMap::from([
        ("activecode", 200),
        ("sealedcode", 503),
        ("standbycode", 429),
    ]);
    for (k, v) in &ctx.query {
        if k.ends_with("code") {
            match v.parse::<u16>() {
                Ok(c) => {
                    codes.insert(k.as_str(), c);
                }
                Err(_) => return Reply::error(400, &format!("bad code value {v:?} for {k}")),
            }
        }
    }
    let sealed = faults.sealed();
    let standby = node.standby_of().is_some();
    let standby_ok = ctx.query.iter().any(|(k, v)| {
        k == "standbyok" && matches!(v.as_str(), "" | "true" | "1" | "t" | "T" | "TRUE" | "True")
    });
    let status = if sealed {
        codes.get("sealedcode").copied().unwrap_or(503)
    } else if standby && !standby_ok {
        codes.get("standbycode").copied().unwrap_or(429)
    } else {
        codes.get("activecode").copied().unwrap_or(200)
    };
    let mut body = json!({
        "initialized": true,
        "sealed": sealed,
        "standby": standby,
        "performance_standby": false,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": util::now_unix(),
        "version": VERSION,
        "enterprise": false,
        "echo_duration_ms": 0,
        "clock_skew_ms": 0,
    });
    if !sealed {
        body["cluster_name"] = json!("vault-cluster-test");
        body["cluster_id"] = json!(inner.cluster_id);
    }
    Reply::raw(status, body)
}

fn seal_status(inner: &Inner, sealed: bool) -> Value {
    let mut body = json!({
        "type": "shamir",
        "initialized": true,
        "sealed": sealed,
        "t": 1,
        "n": 1,
        "progress": 0,
        "nonce": "",
        "version": VERSION,
        "build_date": "2024-07-05T15:19:12Z",
        "migration": false,
        "recovery_seal": false,
        "storage_type": "inmem",
    });
    if !sealed {
        body["cluster_name"] = json!("vault-cluster-test");
        body["cluster_id"] = json!(inner.cluster_id);
    }
    body
}

const BAD_WRAP: &str = "wrapping token is not valid or does not exist";

fn unwrap(inner: &mut Inner, ctx: &Ctx, op: Op, body: &Map<String, Value>) -> Reply {
    if op != Op::Write {
        return Reply::method_not_allowed();
    }
    let body_token = body
        .get("token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty());
    let wrap_token = match (body_token, ctx.token.as_deref()) {
        (Some(w), Some(auth)) => {
            if inner.tokens.use_token(auth).is_err() {
                return Reply::error(403, INVALID_TOKEN);
            }
            w.to_string()
        }
        (Some(_), None) => return Reply::error(403, "permission denied"),
        (None, Some(w)) => w.to_string(),
        (None, None) => return Reply::error(400, BAD_WRAP),
    };
    match inner.wraps.remove(&wrap_token) {
        Some(w) if w.expires > Instant::now() => {
            let mut env = w.envelope;
            if let Some(obj) = env.as_object_mut() {
                obj.insert("request_id".into(), json!(util::uuid()));
            }
            Reply::raw(200, env)
        }
        _ => Reply::error(400, BAD_WRAP),
    }
}

fn wrap_lookup(inner: &mut Inner, op: Op, body: &Map<String, Value>) -> Reply {
    if op != Op::Write {
        return Reply::method_not_allowed();
    }
    let token = body.get("token").and_then(Value::as_str).unwrap_or("");
    match inner.wraps.get(token) {
        Some(w) if w.expires > Instant::now() => Reply::data(
            json!({"creation_path": w.creation_path, "creation_time": w.creation_time, "creation_ttl": w.ttl}),
            "system",
        ),
        _ => Reply::error(400, BAD_WRAP),
    }
}
