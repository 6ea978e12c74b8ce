//! AppRole auth method (spec §6), mountable at any `auth/<m>/`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::http::{Op, Reply};
use crate::token_params::{Keys, TokenParams};
use crate::tokens::TokenStore;
use crate::util::{self, dur, num};

/// AppRole's legacy `period` and `policies` are read after, so override,
/// `token_period` and `token_policies`; it has no legacy `ttl`/`max_ttl`.
static TOKEN_KEYS: Keys = Keys {
    ttl: &["token_ttl"],
    max_ttl: &["token_max_ttl"],
    period: &["token_period", "period"],
    policies: &["token_policies", "policies"],
};

#[derive(Debug, Clone)]
struct Role {
    role_id: String,
    bind_secret_id: bool,
    secret_id_ttl: u64,
    secret_id_num_uses: u64,
    token: TokenParams,
}

impl Role {
    fn new() -> Role {
        Role {
            role_id: util::uuid(),
            bind_secret_id: true,
            secret_id_ttl: 0,
            secret_id_num_uses: 0,
            token: TokenParams::new(&TOKEN_KEYS),
        }
    }

    fn describe(&self) -> Value {
        self.token.describe(json!({
            "bind_secret_id": self.bind_secret_id,
            "local_secret_ids": false,
            "secret_id_bound_cidrs": null,
            "secret_id_num_uses": self.secret_id_num_uses,
            "secret_id_ttl": self.secret_id_ttl,
            "policies": self.token.policies,
            "period": self.token.period,
        }))
    }
}

#[derive(Debug, Clone)]
struct SecretId {
    role: String,
    accessor: String,
    expires: Option<Instant>,
    /// Uses left; 0 = unlimited.
    uses_left: u64,
    metadata: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct Mount {
    roles: BTreeMap<String, Role>,
    secret_ids: HashMap<String, SecretId>,
}

/// All AppRole mounts, keyed by mount name without slashes (`approle`).
#[derive(Debug)]
pub(crate) struct AppRoles {
    mounts: HashMap<String, Mount>,
}

impl AppRoles {
    pub(crate) fn new() -> AppRoles {
        let mut mounts = HashMap::new();
        mounts.insert("approle".to_string(), Mount::default());
        AppRoles { mounts }
    }

    pub(crate) fn enable(&mut self, mount: &str) -> bool {
        let m = mount.trim_matches('/').to_string();
        if self.mounts.contains_key(&m) {
            return false;
        }
        self.mounts.insert(m, Mount::default());
        true
    }

    pub(crate) fn disable(&mut self, mount: &str) -> bool {
        self.mounts.remove(mount.trim_matches('/')).is_some()
    }

    pub(crate) fn mount_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.mounts.keys().cloned().collect();
        v.sort();
        v
    }

    /// The mount owning `auth/<rest>`: (mount name, path inside the mount).
    pub(crate) fn find<'a>(&self, rest: &'a str) -> Option<(String, &'a str)> {
        let (m, inner) = rest.split_once('/').unwrap_or((rest, ""));
        self.mounts.contains_key(m).then(|| (m.to_string(), inner))
    }
}

/// Apply a role write in place: the AppRole keys, then the token keys;
/// keys before an invalid one stay applied.
fn update_role(role: &mut Role, body: &Map<String, Value>) -> Result<(), Reply> {
    dur(body, "secret_id_ttl", &mut role.secret_id_ttl)?;
    num(body, "secret_id_num_uses", &mut role.secret_id_num_uses)?;
    if let Some(b) = body.get("bind_secret_id").and_then(Value::as_bool) {
        role.bind_secret_id = b;
    }
    if let Some(id) = body.get("role_id").and_then(Value::as_str) {
        role.role_id = id.to_string();
    }
    role.token.update(body)
}

/// Handle `auth/<mount>/<inner>`; ACL checks were done by the caller
/// (except on `login`, which needs no token).
pub(crate) fn handle(
    roles: &mut AppRoles,
    tokens: &mut TokenStore,
    mount_name: &str,
    inner: &str,
    op: Op,
    body: &Map<String, Value>,
) -> Reply {
    let Some(mount) = roles.mounts.get_mut(mount_name) else {
        return Reply::not_found();
    };
    let inner = inner.trim_end_matches('/');
    let segs: Vec<&str> = inner.split('/').collect();
    match (segs.as_slice(), op) {
        (["login"], Op::Write) => login(mount, tokens, mount_name, body),
        (["login"], _) => Reply::method_not_allowed(),
        (["role"], Op::List) => {
            let keys: Vec<&String> = mount.roles.keys().collect();
            if keys.is_empty() {
                Reply::not_found()
            } else {
                Reply::data(json!({ "keys": keys }), "approle")
            }
        }
        (["role", name], Op::Write) => {
            let role = mount
                .roles
                .entry(name.to_string())
                .or_insert_with(Role::new);
            match update_role(role, body) {
                Ok(()) => Reply::no_content(),
                Err(r) => r,
            }
        }
        (["role", name], Op::Read) => match mount.roles.get(*name) {
            Some(r) => Reply::data(r.describe(), "approle"),
            None => Reply::not_found(),
        },
        (["role", name], Op::Delete) => {
            mount.roles.remove(*name);
            mount.secret_ids.retain(|_, s| s.role != *name);
            Reply::no_content()
        }
        (["role", name, "role-id"], Op::Read) => match mount.roles.get(*name) {
            Some(r) => Reply::data(json!({ "role_id": r.role_id }), "approle"),
            None => Reply::not_found(),
        },
        (["role", name, "role-id"], Op::Write) => match mount.roles.get_mut(*name) {
            Some(r) => match body.get("role_id").and_then(Value::as_str) {
                Some(id) if !id.is_empty() => {
                    r.role_id = id.to_string();
                    Reply::no_content()
                }
                _ => Reply::error(400, "missing role_id"),
            },
            None => Reply::error(400, &format!("role {name:?} does not exist")),
        },
        (["role", name, kind @ ("secret-id" | "custom-secret-id")], Op::Write) => {
            generate_secret_id(mount, name, *kind == "custom-secret-id", body)
        }
        (["role", name, "secret-id"], Op::List) => {
            let keys: Vec<&String> = mount
                .secret_ids
                .values()
                .filter(|s| s.role == *name)
                .map(|s| &s.accessor)
                .collect();
            if keys.is_empty() {
                Reply::not_found()
            } else {
                Reply::data(json!({ "keys": keys }), "approle")
            }
        }
        (["role", ..], _) => Reply::method_not_allowed(),
        _ => Reply::not_found(),
    }
}

fn generate_secret_id(
    mount: &mut Mount,
    role_name: &str,
    custom: bool,
    body: &Map<String, Value>,
) -> Reply {
    let Some(role) = mount.roles.get(role_name) else {
        return Reply::error(400, &format!("role \"{role_name}\" does not exist"));
    };
    let mut ttl = role.secret_id_ttl;
    let mut uses = role.secret_id_num_uses;
    if let Err(r) = dur(body, "ttl", &mut ttl).and_then(|_| num(body, "num_uses", &mut uses)) {
        return r;
    }
    if role.secret_id_ttl > 0 && (ttl == 0 || ttl > role.secret_id_ttl) {
        ttl = role.secret_id_ttl;
    }
    let metadata: BTreeMap<String, String> = match body.get("metadata") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::String(s)) if s.is_empty() => BTreeMap::new(),
        Some(Value::String(s)) => match serde_json::from_str(s) {
            Ok(m) => m,
            Err(e) => return Reply::error(400, &format!("failed to parse metadata: {e}")),
        },
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect(),
        Some(_) => return Reply::error(400, "metadata must be a JSON string"),
    };
    let secret_id = if custom {
        match body.get("secret_id").and_then(Value::as_str) {
            Some(s) if !s.is_empty() => s.to_string(),
            _ => return Reply::error(400, "missing secret_id"),
        }
    } else {
        util::uuid()
    };
    let accessor = util::uuid();
    mount.secret_ids.insert(
        secret_id.clone(),
        SecretId {
            role: role_name.to_string(),
            accessor: accessor.clone(),
            expires: (ttl > 0).then(|| Instant::now() + Duration::from_secs(ttl)),
            uses_left: uses,
            metadata,
        },
    );
    Reply::data(
        json!({
            "secret_id": secret_id,
            "secret_id_accessor": accessor,
            "secret_id_ttl": ttl,
            "secret_id_num_uses": uses,
        }),
        "approle",
    )
}

fn login(
    mount: &mut Mount,
    tokens: &mut TokenStore,
    mount_name: &str,
    body: &Map<String, Value>,
) -> Reply {
    let invalid = || Reply::error(400, "invalid role or secret ID");
    let role_id = match body.get("role_id").and_then(Value::as_str) {
        Some(r) if !r.is_empty() => r,
        _ => return Reply::error(400, "missing role_id"),
    };
    let Some((role_name, role)) = mount
        .roles
        .iter()
        .find(|(_, r)| r.role_id == role_id)
        .map(|(n, r)| (n.clone(), r.clone()))
    else {
        return invalid();
    };
    let mut meta = BTreeMap::new();
    if role.bind_secret_id {
        let secret_id = match body.get("secret_id").and_then(Value::as_str) {
            Some(s) if !s.is_empty() => s,
            _ => return Reply::error(400, "missing secret_id"),
        };
        let Some(sid) = mount.secret_ids.get_mut(secret_id) else {
            return invalid();
        };
        if sid.role != role_name {
            return invalid();
        }
        if sid.expires.is_some_and(|e| e <= Instant::now()) {
            mount.secret_ids.remove(secret_id);
            return invalid();
        }
        meta.extend(sid.metadata.clone());
        if sid.uses_left > 0 {
            sid.uses_left -= 1;
            if sid.uses_left == 0 {
                mount.secret_ids.remove(secret_id);
            }
        }
    }
    meta.insert("role_name".to_string(), role_name.clone());
    let token = role.token.issue(
        tokens,
        meta,
        mount_name.to_string(),
        format!("auth/{mount_name}/login"),
    );
    Reply::auth(token.auth_block(), "approle", Vec::new())
}
