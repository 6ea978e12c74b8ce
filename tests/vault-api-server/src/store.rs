//! KV v1 / v2 secret storage and the KV HTTP handlers (spec §2, §3).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Map, Value};

use crate::http::{Op, Reply};
use crate::util::{self, now_rfc3339};
use crate::KvVersion;

/// Engine default for `max_versions` when neither key nor mount set one.
const DEFAULT_MAX_VERSIONS: u64 = 10;

/// A mounted KV engine (shared by every namespace; data is per namespace).
#[derive(Debug, Clone)]
pub(crate) struct Mount {
    /// Mount path with trailing slash, e.g. `secret/`.
    pub path: String,
    pub version: KvVersion,
    pub accessor: String,
    pub uuid: String,
}

impl Mount {
    pub(crate) fn new(path: &str, version: KvVersion) -> Mount {
        let mut path = path.trim_matches('/').to_string();
        path.push('/');
        Mount {
            path,
            version,
            accessor: format!("kv_{}", util::hex_id(8)),
            uuid: util::uuid(),
        }
    }

    /// The `sys/mounts` / `sys/internal/ui/mounts` description of the mount.
    pub(crate) fn describe(&self) -> Value {
        let version = match self.version {
            KvVersion::V1 => "1",
            KvVersion::V2 => "2",
        };
        json!({
            "accessor": self.accessor,
            "config": {"default_lease_ttl": 0, "force_no_cache": false, "max_lease_ttl": 0},
            "description": "key/value secret storage",
            "external_entropy_access": false,
            "local": false,
            "options": {"version": version},
            "path": self.path,
            "plugin_version": "",
            "running_plugin_version": "v0.20.0+builtin",
            "running_sha256": "",
            "seal_wrap": false,
            "type": "kv",
            "uuid": self.uuid,
        })
    }
}

#[derive(Debug, Clone)]
struct V2Version {
    data: Option<Value>,
    created_time: String,
    deletion_time: String,
    destroyed: bool,
}

#[derive(Debug, Clone)]
struct V2Secret {
    versions: BTreeMap<u64, V2Version>,
    current_version: u64,
    oldest_version: u64,
    created_time: String,
    updated_time: String,
    max_versions: u64,
    cas_required: bool,
    delete_version_after: String,
    custom_metadata: Option<Map<String, Value>>,
}

impl V2Secret {
    fn new() -> V2Secret {
        let now = now_rfc3339();
        V2Secret {
            versions: BTreeMap::new(),
            current_version: 0,
            oldest_version: 0,
            created_time: now.clone(),
            updated_time: now,
            max_versions: 0,
            cas_required: false,
            delete_version_after: "0s".into(),
            custom_metadata: None,
        }
    }

    /// Version metadata ("VM") of one version.
    fn vm(&self, n: u64, v: &V2Version) -> Value {
        json!({
            "created_time": v.created_time,
            "custom_metadata": self.custom_metadata,
            "deletion_time": v.deletion_time,
            "destroyed": v.destroyed,
            "version": n,
        })
    }

    fn metadata(&self) -> Value {
        let versions: Map<String, Value> = self
            .versions
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    json!({"created_time": v.created_time, "deletion_time": v.deletion_time, "destroyed": v.destroyed}),
                )
            })
            .collect();
        json!({
            "cas_required": self.cas_required,
            "created_time": self.created_time,
            "current_version": self.current_version,
            "custom_metadata": self.custom_metadata,
            "delete_version_after": self.delete_version_after,
            "max_versions": self.max_versions,
            "oldest_version": self.oldest_version,
            "updated_time": self.updated_time,
            "versions": versions,
        })
    }
}

#[derive(Debug, Clone)]
struct V2Config {
    max_versions: u64,
    cas_required: bool,
    delete_version_after: String,
}

impl Default for V2Config {
    fn default() -> Self {
        V2Config {
            max_versions: 0,
            cas_required: false,
            delete_version_after: "0s".into(),
        }
    }
}

/// The data of one mount in one namespace.
#[derive(Debug, Default)]
struct MountData {
    v1: BTreeMap<String, Map<String, Value>>,
    v2: BTreeMap<String, V2Secret>,
    config: V2Config,
}

/// Outcome of a KV v2 read.
pub(crate) enum V2Read {
    Missing,
    /// Soft-deleted or destroyed: version metadata only.
    Gone(Value),
    Found(Value, Value),
}

#[derive(Debug, Default)]
pub(crate) struct Store {
    pub mounts: Vec<Mount>,
    /// Keyed by namespace (`""` or `ns1/`) + mount path.
    data: HashMap<String, MountData>,
}

impl Store {
    pub(crate) fn new(mounts: &[(String, KvVersion)]) -> Store {
        Store {
            mounts: mounts.iter().map(|(p, v)| Mount::new(p, *v)).collect(),
            data: HashMap::new(),
        }
    }

    /// The mount owning `path` (longest match), and the rest of the path.
    pub(crate) fn find_mount(&self, path: &str) -> Option<(Mount, String)> {
        self.mounts
            .iter()
            .filter(|m| path.starts_with(&m.path) || path == m.path.trim_end_matches('/'))
            .max_by_key(|m| m.path.len())
            .map(|m| {
                (
                    m.clone(),
                    path.get(m.path.len()..).unwrap_or("").to_string(),
                )
            })
    }

    fn md(&mut self, ns: &str, mount: &str) -> &mut MountData {
        self.data.entry(format!("{ns}{mount}")).or_default()
    }

    // ---- KV v1 ----

    pub(crate) fn v1_write(&mut self, ns: &str, mount: &str, key: &str, data: Map<String, Value>) {
        self.md(ns, mount).v1.insert(key.to_string(), data);
    }

    pub(crate) fn v1_delete(&mut self, ns: &str, mount: &str, key: &str) {
        self.md(ns, mount).v1.remove(key);
    }

    // ---- KV v2 ----

    /// Write a new version. `Err` = 400 message.
    pub(crate) fn v2_write(
        &mut self,
        ns: &str,
        mount: &str,
        key: &str,
        data: Value,
        cas: Option<u64>,
    ) -> Result<Value, String> {
        let md = self.md(ns, mount);
        let config = md.config.clone();
        let secret = md.v2.entry(key.to_string()).or_insert_with(V2Secret::new);
        let cas_required = secret.cas_required || config.cas_required;
        match cas {
            None if cas_required => {
                return Err("check-and-set parameter required for this call".into())
            }
            Some(c) if c != secret.current_version => {
                return Err("check-and-set parameter did not match the current version".into())
            }
            _ => {}
        }
        let now = now_rfc3339();
        let n = secret.current_version + 1;
        secret.current_version = n;
        secret.updated_time = now.clone();
        secret.versions.insert(
            n,
            V2Version {
                data: Some(data),
                created_time: now,
                deletion_time: String::new(),
                destroyed: false,
            },
        );
        let max = [
            secret.max_versions,
            config.max_versions,
            DEFAULT_MAX_VERSIONS,
        ]
        .into_iter()
        .find(|m| *m > 0)
        .unwrap_or(DEFAULT_MAX_VERSIONS);
        while secret.versions.len() as u64 > max {
            secret.versions.pop_first();
            secret.oldest_version = secret.versions.keys().next().copied().unwrap_or(0);
        }
        let vm = secret
            .versions
            .get(&n)
            .map(|v| secret.vm(n, v))
            .unwrap_or(Value::Null);
        Ok(vm)
    }

    pub(crate) fn v2_read(&mut self, ns: &str, mount: &str, key: &str, version: u64) -> V2Read {
        let Some(secret) = self.md(ns, mount).v2.get(key) else {
            return V2Read::Missing;
        };
        let n = if version == 0 {
            secret.current_version
        } else {
            version
        };
        let Some(v) = secret.versions.get(&n) else {
            return V2Read::Missing;
        };
        let vm = secret.vm(n, v);
        match &v.data {
            Some(d) if !v.destroyed && v.deletion_time.is_empty() => V2Read::Found(d.clone(), vm),
            _ => V2Read::Gone(vm),
        }
    }

    /// Soft-delete (`delete`), undelete or destroy the given versions;
    /// `versions = None` means the latest version.
    pub(crate) fn v2_versions_op(
        &mut self,
        ns: &str,
        mount: &str,
        key: &str,
        op: VersionOp,
        versions: Option<&[u64]>,
    ) {
        let Some(secret) = self.md(ns, mount).v2.get_mut(key) else {
            return;
        };
        let all: Vec<u64> = match versions {
            Some(v) => v.to_vec(),
            None if op == VersionOp::DestroyAll => secret.versions.keys().copied().collect(),
            None => vec![secret.current_version],
        };
        let now = now_rfc3339();
        for n in all {
            let Some(v) = secret.versions.get_mut(&n) else {
                continue;
            };
            match op {
                VersionOp::Delete => {
                    if !v.destroyed && v.deletion_time.is_empty() {
                        v.deletion_time = now.clone();
                    }
                }
                VersionOp::Undelete => {
                    if !v.destroyed {
                        v.deletion_time.clear();
                    }
                }
                VersionOp::Destroy | VersionOp::DestroyAll => {
                    v.destroyed = true;
                    v.data = None;
                }
            }
        }
        secret.updated_time = now;
    }

    fn v2_delete_metadata(&mut self, ns: &str, mount: &str, key: &str) {
        self.md(ns, mount).v2.remove(key);
    }

    /// Direct children of `dir` among the keys of a mount (v1 or v2).
    fn list(&mut self, ns: &str, mount: &str, dir: &str, version: KvVersion) -> Vec<String> {
        let mut prefix = dir.to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        let md = self.md(ns, mount);
        let keys: Vec<&String> = match version {
            KvVersion::V1 => md.v1.keys().collect(),
            KvVersion::V2 => md.v2.keys().collect(),
        };
        let set: BTreeSet<String> = keys
            .into_iter()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|rest| !rest.is_empty())
            .map(|rest| match rest.split_once('/') {
                Some((dir, _)) => format!("{dir}/"),
                None => rest.to_string(),
            })
            .collect();
        set.into_iter().collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VersionOp {
    Delete,
    Undelete,
    Destroy,
    DestroyAll,
}

fn list_reply(keys: Vec<String>, mount_type: &str) -> Reply {
    if keys.is_empty() {
        Reply::not_found()
    } else {
        Reply::data(json!({ "keys": keys }), mount_type)
    }
}

/// Handle a request on a KV mount. `rest` is the path inside the mount.
pub(crate) fn handle_kv(
    store: &mut Store,
    ns: &str,
    mount: &Mount,
    rest: &str,
    op: Op,
    body: &Map<String, Value>,
    query: &[(String, String)],
) -> Reply {
    match mount.version {
        KvVersion::V1 => handle_v1(store, ns, mount, rest, op, body),
        KvVersion::V2 => handle_v2(store, ns, mount, rest, op, body, query),
    }
}

fn handle_v1(
    store: &mut Store,
    ns: &str,
    mount: &Mount,
    key: &str,
    op: Op,
    body: &Map<String, Value>,
) -> Reply {
    let m = &mount.path;
    match op {
        Op::List => list_reply(store.list(ns, m, key, KvVersion::V1), "kv"),
        Op::Read => {
            let Some(data) = store.md(ns, m).v1.get(key).cloned() else {
                return Reply::not_found();
            };
            let lease = ["ttl", "lease"]
                .iter()
                .find_map(|k| data.get(*k))
                .and_then(|v| util::parse_duration(v).ok())
                .unwrap_or(util::DEFAULT_TTL);
            let mut r = Reply::data(Value::Object(data), "kv");
            r.set("lease_duration", json!(lease));
            r
        }
        Op::Write => {
            if key.is_empty() || key.ends_with('/') {
                return Reply::error(405, "unsupported operation");
            }
            if body.is_empty() {
                return Reply::error(400, "missing data fields");
            }
            store.v1_write(ns, m, key, body.clone());
            Reply::no_content()
        }
        Op::Delete => {
            store.v1_delete(ns, m, key);
            Reply::no_content()
        }
    }
}

fn versions_param(body: &Map<String, Value>) -> Result<Vec<u64>, Reply> {
    let versions: Vec<u64> = match body.get("versions") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .collect(),
        Some(Value::Number(n)) => n.as_u64().into_iter().collect(),
        Some(Value::String(s)) => s.split(',').filter_map(|p| p.trim().parse().ok()).collect(),
        _ => Vec::new(),
    };
    if versions.is_empty() {
        Err(Reply::error(400, "No version number provided"))
    } else {
        Ok(versions)
    }
}

fn handle_v2(
    store: &mut Store,
    ns: &str,
    mount: &Mount,
    rest: &str,
    op: Op,
    body: &Map<String, Value>,
    query: &[(String, String)],
) -> Reply {
    let m = &mount.path;
    let (kind, key) = rest.split_once('/').unwrap_or((rest, ""));
    match (kind, op) {
        ("config", Op::Read) if key.is_empty() => {
            let c = &store.md(ns, m).config;
            Reply::data(
                json!({"cas_required": c.cas_required, "delete_version_after": c.delete_version_after, "max_versions": c.max_versions}),
                "kv",
            )
        }
        ("config", Op::Write) if key.is_empty() => {
            let c = &mut store.md(ns, m).config;
            if let Some(v) = body.get("max_versions").and_then(Value::as_u64) {
                c.max_versions = v;
            }
            if let Some(v) = body.get("cas_required").and_then(Value::as_bool) {
                c.cas_required = v;
            }
            if let Some(v) = body.get("delete_version_after") {
                match util::parse_duration(v) {
                    Ok(s) => c.delete_version_after = util::go_duration(s),
                    Err(e) => return Reply::error(400, &e),
                }
            }
            Reply::no_content()
        }
        ("config", _) if key.is_empty() => Reply::method_not_allowed(),
        ("data", _) if !rest.contains('/') => v1_style(op),
        ("data", Op::Read) => {
            let version = match query.iter().find(|(k, _)| k == "version") {
                None => 0,
                Some((_, v)) if v.is_empty() => 0,
                Some((_, v)) => match v.parse::<u64>() {
                    Ok(n) => n,
                    Err(_) => return Reply::error(400, "invalid version"),
                },
            };
            match store.v2_read(ns, m, key, version) {
                V2Read::Missing => Reply::not_found(),
                V2Read::Gone(vm) => {
                    let mut r = Reply::data(json!({"data": null, "metadata": vm}), "kv");
                    r.status = 404;
                    r
                }
                V2Read::Found(data, vm) => Reply::data(json!({"data": data, "metadata": vm}), "kv"),
            }
        }
        ("data", Op::Write) => {
            let Some(data) = body.get("data").filter(|d| d.is_object()) else {
                return Reply::error(400, "no data provided");
            };
            let cas = body
                .get("options")
                .and_then(|o| o.get("cas"))
                .and_then(Value::as_u64);
            match store.v2_write(ns, m, key, data.clone(), cas) {
                Ok(vm) => Reply::data(vm, "kv"),
                Err(e) => Reply::error(400, &e),
            }
        }
        ("data", Op::Delete) => {
            store.v2_versions_op(ns, m, key, VersionOp::Delete, None);
            Reply::no_content()
        }
        ("data", Op::List) => Reply::method_not_allowed(),
        ("delete" | "undelete" | "destroy", _) if !rest.contains('/') => v1_style(op),
        ("delete" | "undelete" | "destroy", Op::Write) => {
            let versions = match versions_param(body) {
                Ok(v) => v,
                Err(r) => return r,
            };
            let vop = match kind {
                "delete" => VersionOp::Delete,
                "undelete" => VersionOp::Undelete,
                _ => VersionOp::Destroy,
            };
            store.v2_versions_op(ns, m, key, vop, Some(&versions));
            Reply::no_content()
        }
        ("delete" | "undelete" | "destroy", _) => Reply::method_not_allowed(),
        ("metadata", Op::List) => list_reply(store.list(ns, m, key, KvVersion::V2), "kv"),
        ("metadata", _) if !rest.contains('/') => v1_style(op),
        ("metadata", Op::Read) => match store.md(ns, m).v2.get(key) {
            Some(s) => Reply::data(s.metadata(), "kv"),
            None => Reply::not_found(),
        },
        ("metadata", Op::Write) => {
            let secret = store
                .md(ns, m)
                .v2
                .entry(key.to_string())
                .or_insert_with(V2Secret::new);
            if let Some(v) = body.get("max_versions").and_then(Value::as_u64) {
                secret.max_versions = v;
            }
            if let Some(v) = body.get("cas_required").and_then(Value::as_bool) {
                secret.cas_required = v;
            }
            if let Some(v) = body.get("delete_version_after") {
                match util::parse_duration(v) {
                    Ok(s) => secret.delete_version_after = util::go_duration(s),
                    Err(e) => return Reply::error(400, &e),
                }
            }
            if let Some(Value::Object(cm)) = body.get("custom_metadata") {
                secret.custom_metadata = Some(cm.clone());
            }
            secret.updated_time = now_rfc3339();
            Reply::no_content()
        }
        ("metadata", Op::Delete) => {
            store.v2_delete_metadata(ns, m, key);
            Reply::no_content()
        }
        _ => v1_style(op),
    }
}

/// A v1-style path on a v2 mount: 404 with a warning envelope.
fn v1_style(op: Op) -> Reply {
    let cmd = match op {
        Op::Read => "get",
        Op::List => "list",
        Op::Write => "put",
        Op::Delete => "delete",
    };
    let mut r = Reply::data(Value::Null, "kv");
    r.status = 404;
    r.set(
        "warnings",
        json!([format!(
            "Invalid path for a versioned K/V secrets engine. See the API docs for the appropriate API endpoints to use. If using the Vault CLI, use 'vault kv {cmd}' for this operation."
        )]),
    );
    r
}
