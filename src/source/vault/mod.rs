//! The Vault backend: a thin adapter from [`SecretSource`] to vaultrs.
//!
//! [`transport`] reaches the Vault nodes (TLS, HA failover, standby redirects), [`auth`] obtains tokens (token,
//! AppRole, cert) and [`session`] keeps the token alive. KV v1 and v2 are both served. The version of each mount is read once from `sys/internal/ui/mounts/<path>` (as the
//! Vault CLI does) unless the config names it; a server without that endpoint (404) is taken as KV v1.
//!
//! Only KV engines are served as files. The engine type comes with the mount detection and is checked on every
//! read: cubbyhole (the driver token's own private storage), sys, auth, identity, and every dynamic engine
//! (database, pki, aws, ...) are refused, since reading them would leak the driver's own state or mint a credential
//! per read that nobody revokes. Vault's fixed non-KV paths (`sys/`, `auth/`, `cubbyhole/`, `identity/`) are refused
//! without asking, also on servers without mount detection. A namespace written into the path (`team-a/secret`) is
//! refused too: namespaces are named with the `namespace` volume option, where the access rules see them.

mod auth;
mod dynamic;
mod health;
mod lease_owner;
mod session;
mod transport;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rustify_derive::Endpoint;
use serde::Deserialize;
use vaultrs::error::ClientError;

pub use self::auth::Lending;
use self::auth::{Auth, AuthError};
use self::lease_owner::LeaseOwner;
use self::session::Session;
use self::transport::Transport;
use crate::config::VaultConfig;
use crate::names::VaultPath;
use crate::source::{Secret, SecretSource, SourceError};

/// A Vault reply envelope, read leniently: Vault-API servers differ in which envelope keys they send (RustyVault
/// omits `request_id`, which vaultrs' own response types require), and only `data` matters here.
#[derive(Debug, Deserialize)]
struct Envelope<T> {
    data: Option<T>,
}

/// `GET <path>[?version=N]`: a KV read, mount detection or token lookup.
#[derive(Debug, Endpoint)]
#[endpoint(path = "{self.path}", response = "Envelope<serde_json::Value>")]
struct ReadRequest {
    #[endpoint(skip)]
    path: String,
    #[endpoint(query)]
    version: Option<u64>,
}

/// `LIST <path>/`: the keys of a folder.
#[derive(Debug, Endpoint)]
#[endpoint(path = "{self.path}", method = "LIST", response = "Envelope<KeyList>")]
struct ListRequest {
    #[endpoint(skip)]
    path: String,
}

#[derive(Debug, Deserialize)]
struct KeyList {
    #[serde(default)]
    keys: Vec<String>,
}

/// `sys/internal/ui/mounts/<path>`'s `data`: which mount owns a path, its engine type and its options.
#[derive(Debug, Deserialize)]
struct UiMount {
    path: String,
    #[serde(default, rename = "type")]
    engine: Option<String>,
    #[serde(default)]
    accessor: Option<String>,
    #[serde(default)]
    options: Option<HashMap<String, String>>,
}

/// Paths that are Vault's own, never a KV engine, whatever a server without mount detection says.
const NOT_KV_PATHS: [&str; 4] = ["sys", "auth", "cubbyhole", "identity"];

/// The engine types served as files: KV v1 and v2, and `generic` (KV v1's old name).
const KV_ENGINES: [&str; 2] = ["kv", "generic"];

/// A KV mount and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KvMount {
    /// The mount path without slashes, such as `secret` or `team/kv`.
    mount: String,
    version: u8,
}

/// A mount as detected: KV and served, or refused with the reason (kept, so a refused engine costs one request).
#[derive(Debug, Clone)]
struct DetectedMount {
    mount: String,
    served: Result<KvMount, String>,
    /// The engine type Vault named, for dynamic volumes (`database`, `pki`); `None`: not said, or a namespace.
    engine: Option<String>,
}

/// Why the Vault backend could not start. Each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum VaultSetupError {
    #[error("vault.addr {addr:?} is not a usable Vault address: {reason}")]
    Address { addr: String, reason: String },
    #[error("TLS settings: {reason}")]
    Tls { reason: String },
    #[error("{0}")]
    Credential(String),
    #[error("Vault at {addr} rejected the {method} credentials: {reason}; check them and the auth settings in [vault]")]
    Rejected {
        addr: String,
        method: String,
        reason: String,
    },
    #[error("Vault's TLS certificate at {addr} is not trusted: {reason}; set vault.ca_cert or vault.ca_path to the CA \
             that signed it (or vault.tls_server_name to the name in it)")]
    Untrusted { addr: String, reason: String },
    #[error("Vault at {addr} refused the TLS client certificate: {reason}; check vault.client_cert and \
             vault.client_key, and that Vault trusts their CA")]
    ClientCertRefused { addr: String, reason: String },
    #[error("Vault at {addr} cannot be reached: {reason}")]
    Unreachable { addr: String, reason: String },
}

/// What hyper says when a new connection closed before the request could be sent on it.
const CLOSED_BEFORE_REQUEST: &str = "connection was not ready";

/// Sorts a failed first contact by what the operator must fix. TLS failures reach us only as error text.
///
/// `presents_client_cert`: under TLS 1.3 a listener that refuses the client certificate sends its alert after the
/// client's handshake is done, so the client sometimes loses the alert and sees only a connection closed before
/// its request. With a client certificate that is by far the likeliest cause, and the fix is the same.
fn classify_unavailable(
    addr: String,
    reason: String,
    presents_client_cert: bool,
) -> VaultSetupError {
    if presents_client_cert && reason.contains(CLOSED_BEFORE_REQUEST) {
        return VaultSetupError::ClientCertRefused {
            addr,
            reason: format!(
                "Vault closed the connection right after the TLS handshake, as a listener that refuses the \
                 client certificate does ({reason})"
            ),
        };
    }
    const CLIENT_CERT_ALERTS: [&str; 4] = [
        "alert: UnknownCA",
        "alert: BadCertificate",
        "alert: CertificateRequired",
        "alert: AccessDenied",
    ];
    if CLIENT_CERT_ALERTS
        .iter()
        .any(|alert| reason.contains(alert))
    {
        VaultSetupError::ClientCertRefused { addr, reason }
    } else if reason.contains("invalid peer certificate") || reason.contains("certificate") {
        VaultSetupError::Untrusted { addr, reason }
    } else {
        VaultSetupError::Unreachable { addr, reason }
    }
}

/// The Vault backend: one login shared by every namespace view.
pub struct VaultSource {
    session: Arc<Session>,
    /// The namespace reads happen in: the configured one, joined with a volume's own.
    namespace: Option<String>,
    overrides: BTreeMap<String, u8>,
    mounts: Mutex<HashMap<String, DetectedMount>>,
    /// Whether the transport presents `vault.client_cert`: decides how a lost TLS alert is read.
    presents_client_cert: bool,
    /// The token dynamic secrets are issued with (`vault.lease_token_role`), shared by every namespace view.
    lease_owner: Arc<LeaseOwner>,
}

/// Never prints the session (it holds the token).
impl std::fmt::Debug for VaultSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultSource")
            .field("namespace", &self.namespace)
            .field("lease_owner", &self.lease_owner)
            .finish_non_exhaustive()
    }
}

fn describe_client_error(error: &ClientError) -> String {
    match error {
        ClientError::APIError { code, errors } => format!("status {code}: {}", errors.join("; ")),
        ClientError::RestClientError { source } => match source {
            rustify::errors::ClientError::ServerResponseError { code, .. } => {
                format!("status {code}")
            }
            rustify::errors::ClientError::RequestError { source, .. } => {
                format!("request failed: {}", error_chain(source.as_ref()))
            }
            other => other.to_string(),
        },
        other => other.to_string(),
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Maps a vaultrs error: 404 (also a deleted or destroyed KV v2 version) is NotFound, 403 is Denied, and
/// everything else (unreachable, sealed, 5xx, timeouts, malformed replies) is Unavailable.
fn source_error(error: ClientError) -> SourceError {
    match status_of(&error) {
        Some(404) => SourceError::NotFound,
        Some(403) => SourceError::Denied(describe_client_error(&error)),
        _ => SourceError::Unavailable(describe_client_error(&error)),
    }
}

/// The HTTP status of a Vault error reply, whichever way vaultrs classified it.
fn status_of(error: &ClientError) -> Option<u16> {
    match error {
        ClientError::APIError { code, .. } => Some(*code),
        ClientError::RestClientError {
            source: rustify::errors::ClientError::ServerResponseError { code, .. },
        } => Some(*code),
        _ => None,
    }
}

/// `child` below `parent` (none: the root namespace).
fn join_namespace(parent: Option<&str>, child: &str) -> String {
    match parent {
        Some(parent) => format!("{}/{}", parent.trim_matches('/'), child.trim_matches('/')),
        None => child.trim_matches('/').to_owned(),
    }
}

impl VaultSource {
    /// Builds the transport and the auth method without asking Vault: fails only on what the config itself gets
    /// wrong (an address, TLS files, a missing credential setting). Nothing logs in until
    /// [`first_login`](Self::first_login), [`keep_trying`](Self::keep_trying) or a read.
    pub fn new(config: &VaultConfig) -> Result<Self, VaultSetupError> {
        let auth =
            Auth::from_config(config).map_err(|e| VaultSetupError::Credential(e.to_string()))?;
        Self::with_auth(config, auth)
    }

    /// A mount unit's backend: `config`'s transport (addresses, TLS, the client certificate), with the token lent
    /// by the driver's token broker instead of a login of its own. No credential file is read here.
    pub fn lent(config: &VaultConfig, lending: Lending) -> Result<Self, VaultSetupError> {
        Self::with_auth(config, Auth::Lent(lending))
    }

    fn with_auth(config: &VaultConfig, auth: Auth) -> Result<Self, VaultSetupError> {
        let transport = Transport::new(config)?;
        let session = Session::new(transport, auth, config.namespace.clone());
        let overrides = config
            .kv_version
            .iter()
            .map(|(mount, version)| (mount.trim_matches('/').to_owned(), *version))
            .collect();
        Ok(VaultSource {
            namespace: session.namespace().map(str::to_owned),
            session,
            overrides,
            mounts: Mutex::new(HashMap::new()),
            presents_client_cert: config.client_cert.is_some(),
            lease_owner: LeaseOwner::new(config.lease_token_role.clone()),
        })
    }

    /// The backend as a service starts it: nothing waits for Vault. The first login happens in the background,
    /// retried with jittered backoff until it works (and tried at once by a read that needs it); until then reads
    /// are unavailable. The token is then kept alive in the background.
    pub fn open(config: &VaultConfig) -> Result<Self, VaultSetupError> {
        let source = Self::new(config)?;
        source.session.spawn_lifecycle();
        Ok(source)
    }

    /// Builds the transport, logs in and checks the token with lookup-self, failing fast with what to fix; then
    /// keeps the token alive in the background.
    pub async fn connect(config: &VaultConfig) -> Result<Self, VaultSetupError> {
        let source = Self::new(config)?;
        source.first_login(config.timeout * 2).await?;
        source.session.spawn_lifecycle();
        Ok(source)
    }

    /// Logs in now (unless already logged in), waiting at most `wait`, and says what to fix if that fails. The
    /// driver in the foreground uses it to report bad credentials at once.
    pub async fn first_login(&self, wait: std::time::Duration) -> Result<(), VaultSetupError> {
        let addr = self.session.transport().addresses().join(", ");
        let method = self.session.describe_auth();
        match tokio::time::timeout(wait, self.session.login_now()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(AuthError::Credential(reason))) => Err(VaultSetupError::Credential(reason)),
            Ok(Err(AuthError::Rejected(reason))) => Err(VaultSetupError::Rejected {
                addr,
                method,
                reason,
            }),
            Ok(Err(AuthError::Unavailable(reason))) => Err(classify_unavailable(
                addr,
                reason,
                self.presents_client_cert,
            )),
            Err(_) => Err(VaultSetupError::Unreachable {
                addr,
                reason: format!("no answer within {}s", wait.as_secs_f32()),
            }),
        }
    }

    /// Starts keeping the token alive (and logging in, if [`first_login`](Self::first_login) failed) in the
    /// background.
    pub fn keep_trying(&self) {
        self.session.spawn_lifecycle();
    }

    /// What keeps this login from reading, and since when (`None`: logged in and Vault answering).
    pub fn status(&self) -> Option<String> {
        self.session.health().status()
    }

    /// The same login reading in the child namespace `child` of the configured one (a volume's `namespace`
    /// option). Tokens from a parent namespace work in its children.
    pub fn in_namespace(&self, child: &str) -> VaultSource {
        let namespace = join_namespace(self.namespace.as_deref(), child);
        VaultSource {
            session: self.session.clone(),
            namespace: Some(namespace),
            overrides: self.overrides.clone(),
            mounts: Mutex::new(HashMap::new()),
            presents_client_cert: self.presents_client_cert,
            lease_owner: self.lease_owner.clone(),
        }
    }

    /// Keeps the lease-owning token with `accessor` alive (`auth/token/renew-accessor` with the login token, at
    /// about 2/3 of its period) until Vault says it is gone: a token of an earlier driver process, whose leases
    /// this one now serves. Renewing a lease whose [`owner_accessor`](crate::lease::LeaseRef::owner_accessor) is
    /// not this process's own token does the same for as long as such leases are renewed here.
    pub fn keep_owner_alive(&self, accessor: &str) {
        self.lease_owner.adopt(&self.session, accessor, None);
    }

    /// Logs in now and says what the token may do: its policies and the TTL left (`check-config`). Fails with what
    /// to fix, as [`first_login`](Self::first_login).
    pub async fn check_login(
        &self,
        wait: std::time::Duration,
    ) -> Result<(Vec<String>, std::time::Duration), VaultSetupError> {
        self.first_login(wait).await?;
        let addr = self.session.transport().addresses().join(", ");
        match tokio::time::timeout(wait, self.session.token_summary()).await {
            Ok(Ok(summary)) => Ok(summary),
            Ok(Err(error)) => Err(VaultSetupError::Unreachable {
                addr,
                reason: error.to_string(),
            }),
            Err(_) => Err(VaultSetupError::Unreachable {
                addr,
                reason: format!("lookup-self: no answer within {}s", wait.as_secs_f32()),
            }),
        }
    }

    /// This login as `status` shows it, under the name `scope`.
    pub fn login_status(&self, scope: String) -> crate::status::LoginStatus {
        let (logged_in, ttl, next) = self.session.token_times();
        crate::status::LoginStatus {
            scope,
            auth: self.session.describe_auth(),
            logged_in,
            token_ttl: ttl.map(|d| d.as_secs()),
            next_renewal: next.map(|d| d.as_secs()),
            trouble: self.status(),
        }
    }

    /// Asks the Vault node in use now (lookup-self of this login's token, within `vault.timeout`) whether it
    /// answers. Any answer, a refusal too, is an answer: only no answer makes it unreachable.
    pub async fn probe(&self) -> crate::status::VaultStatus {
        let transport = self.session.transport();
        let wait = transport.timeout();
        let error = match tokio::time::timeout(wait, self.session.token_summary()).await {
            Ok(Ok(_)) | Ok(Err(AuthError::Rejected(_))) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some(format!("no answer within {}s", wait.as_secs_f32())),
        };
        crate::status::VaultStatus {
            node: self.addr().to_owned(),
            addresses: transport
                .addresses()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            reachable: error.is_none(),
            error,
        }
    }

    /// Revokes the token this source logged in with (AppRole, cert; never an operator's token_file or inline
    /// token, nor a lent one), bounded by `vault.timeout`, and ends the login. The service itself no longer calls it:
    /// mount units borrow the driver's tokens, and the driver leaves its own to expire so units keep reading while
    /// it restarts.
    pub async fn revoke_login(&self) {
        self.session.revoke_login().await
    }

    fn addr(&self) -> &str {
        self.session.transport().current_address()
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: String,
        version: Option<u64>,
    ) -> Result<T, ClientError> {
        self.get_in(self.namespace.as_deref(), path, version).await
    }

    /// [`get`](Self::get) in `namespace` rather than this source's own.
    async fn get_in<T: serde::de::DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        path: String,
        version: Option<u64>,
    ) -> Result<T, ClientError> {
        let envelope = self
            .session
            .exec(namespace, || ReadRequest {
                path: path.clone(),
                version,
            })
            .await?;
        let data = envelope.data.ok_or(ClientError::APIError {
            code: 404,
            errors: vec![format!("{path}: reply has no data")],
        })?;
        serde_json::from_value(data).map_err(|source| ClientError::JsonParseError { source })
    }

    /// The KV mount owning `path`: from the config override, the memo, or Vault. A path outside KV is refused.
    async fn mount_of(&self, path: &VaultPath) -> Result<KvMount, SourceError> {
        let text = path.as_str();
        let first = path.segments().next().unwrap_or_default().to_owned();
        if NOT_KV_PATHS.contains(&first.as_str()) {
            return Err(SourceError::Refused(format!(
                "{first}/ is Vault's {first} path, not a KV secrets engine; only kv and generic mounts are served as files"
            )));
        }
        if let Some((mount, version)) = self
            .overrides
            .iter()
            .filter(|(mount, _)| text == mount.as_str() || text.starts_with(&format!("{mount}/")))
            .max_by_key(|(mount, _)| mount.len())
        {
            return Ok(KvMount {
                mount: mount.clone(),
                version: *version,
            });
        }
        self.detected(path, first)
            .await?
            .served
            .map_err(SourceError::Refused)
    }

    /// The mount owning `path`, from the memo or Vault.
    async fn detected(
        &self,
        path: &VaultPath,
        first: String,
    ) -> Result<DetectedMount, SourceError> {
        let text = path.as_str();
        let known = self
            .mounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|m| text == m.mount || text.starts_with(&format!("{}/", m.mount)))
            .max_by_key(|m| m.mount.len())
            .cloned();
        match known {
            Some(known) => Ok(known),
            None => self.detect_mount(path, first).await,
        }
    }

    /// Asks Vault which mount owns `path` and remembers the answer.
    async fn detect_mount(
        &self,
        path: &VaultPath,
        first: String,
    ) -> Result<DetectedMount, SourceError> {
        let text = path.as_str();
        let detected = match self
            .get::<UiMount>(format!("sys/internal/ui/mounts/{text}"), None)
            .await
        {
            Ok(info) => {
                let mount = info.path.trim_matches('/').to_owned();
                let is_namespace = self
                    .names_a_namespace(path, &mount, info.accessor.as_deref())
                    .await?;
                let engine = info.engine.clone().filter(|_| !is_namespace);
                let served = match info.engine.as_deref() {
                    _ if is_namespace => Err(format!(
                        "{first}/ in {text:?} is a Vault namespace; name it with the volume option \
                         -o namespace={first} (and an access rule for it), not in the volume name"
                    )),
                    Some(engine) if KV_ENGINES.contains(&engine) => Ok(KvMount {
                        mount: mount.clone(),
                        version: match info.options.as_ref().and_then(|o| o.get("version")).map(String::as_str) {
                            Some("2") => 2,
                            _ => 1,
                        },
                    }),
                    Some(engine) => Err(format!(
                        "{mount}/ is a {engine:?} secrets engine, not KV; only kv and generic mounts are served as files"
                    )),
                    None => Err(format!("Vault did not say which engine {mount}/ is; only kv and generic mounts are served")),
                };
                DetectedMount {
                    mount,
                    served,
                    engine,
                }
            }
            // Old servers (and some Vault-API servers) lack the endpoint: the CLI's rule is KV v1, first segment.
            Err(error) if status_of(&error) == Some(404) => DetectedMount {
                engine: None,
                mount: first.clone(),
                served: Ok(KvMount {
                    mount: first,
                    version: 1,
                }),
            },
            Err(error) => return Err(source_error(error)),
        };
        match &detected.served {
            Ok(kv) => {
                tracing::info!(vault_addr = %self.addr(), namespace = self.namespace.as_deref().unwrap_or(""), mount = %kv.mount, kv_version = kv.version, "KV mount detected")
            }
            Err(reason) => {
                tracing::warn!(vault_addr = %self.addr(), namespace = self.namespace.as_deref().unwrap_or(""), mount = %detected.mount, %reason, "mount refused")
            }
        }
        self.mounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(detected.mount.clone(), detected.clone());
        Ok(detected)
    }

    /// Whether `path`'s first segment is a namespace rather than part of a mount path: only asked when the mount
    /// Vault reported spans several segments (`team-a/secret/`), by asking for the rest of the path inside that
    /// namespace. The same mount (accessor) answering there means the segment is a namespace.
    async fn names_a_namespace(
        &self,
        path: &VaultPath,
        mount: &str,
        accessor: Option<&str>,
    ) -> Result<bool, SourceError> {
        let (Some((first, rest)), true) = (path.as_str().split_once('/'), mount.contains('/'))
        else {
            return Ok(false);
        };
        let namespace = join_namespace(self.namespace.as_deref(), first);
        let probe = self
            .get_in::<UiMount>(
                Some(&namespace),
                format!("sys/internal/ui/mounts/{rest}"),
                None,
            )
            .await;
        match probe {
            Ok(inside) => Ok(inside.accessor.is_some() && inside.accessor.as_deref() == accessor),
            // No such namespace: the segment belongs to the mount path.
            Err(error) if status_of(&error) == Some(404) => Ok(false),
            // The namespace exists but the token may not look inside: it cannot be told apart, so it is refused.
            Err(error) if status_of(&error) == Some(403) => Ok(true),
            Err(error) => Err(source_error(error)),
        }
    }

    /// Reads a KV v1 secret, or the latest or a pinned version of a KV v2 secret. Versions exist only on KV v2.
    async fn read_kv(&self, path: &VaultPath, version: Option<u64>) -> Result<Secret, SourceError> {
        let mount = self.mount_of(path).await?;
        let relative = Self::relative(&mount, path);
        if relative.is_empty() || (version.is_some() && mount.version != 2) {
            return Err(SourceError::NotFound);
        }
        let fields: BTreeMap<String, serde_json::Value> = if mount.version == 2 {
            #[derive(Deserialize)]
            struct VersionedData {
                data: Option<BTreeMap<String, serde_json::Value>>,
            }
            let versioned: VersionedData = self
                .get(format!("{}/data/{relative}", mount.mount), version)
                .await
                .map_err(source_error)?;
            // A deleted or destroyed version has `data: null` (or a 404, depending on the server).
            versioned.data.ok_or(SourceError::NotFound)?
        } else {
            self.get(format!("{}/{relative}", mount.mount), None)
                .await
                .map_err(source_error)?
        };
        Ok(Secret::new(fields))
    }

    fn relative<'a>(mount: &KvMount, path: &'a VaultPath) -> &'a str {
        path.as_str()
            .strip_prefix(&mount.mount)
            .map(|rest| rest.trim_start_matches('/'))
            .unwrap_or(path.as_str())
    }
}

/// The driver lends its login's token to mount units (src/mount/broker.rs).
#[async_trait]
impl crate::mount::broker::TokenLender for VaultSource {
    async fn lend(&self, dead_token: Option<&str>) -> Result<crate::mount::broker::Lent, String> {
        let (token, ttl) = self.session.lend(dead_token).await?;
        Ok(crate::mount::broker::Lent { token, ttl })
    }
}

#[async_trait]
impl SecretSource for VaultSource {
    async fn read(&self, path: &VaultPath) -> Result<Secret, SourceError> {
        self.read_kv(path, None).await
    }

    async fn read_version(&self, path: &VaultPath, version: u64) -> Result<Secret, SourceError> {
        self.read_kv(path, Some(version)).await
    }

    async fn check_served(&self, path: &VaultPath) -> Result<(), SourceError> {
        self.mount_of(path).await.map(|_| ())
    }

    async fn check_dynamic(
        &self,
        path: &VaultPath,
    ) -> Result<crate::source::DynamicKind, SourceError> {
        self.dynamic_kind(path).await
    }

    async fn issue(
        &self,
        request: &crate::lease::IssueRequest,
    ) -> Result<crate::lease::Issued, SourceError> {
        self.issue_dynamic(request).await
    }

    async fn renew_lease(
        &self,
        lease: &crate::lease::LeaseRef,
        increment: std::time::Duration,
    ) -> Result<crate::lease::Renewed, SourceError> {
        self.renew_dynamic(lease, increment).await
    }

    async fn revoke_lease(&self, lease: &crate::lease::LeaseRef) -> Result<(), SourceError> {
        self.revoke_dynamic(lease).await
    }

    async fn is_folder(&self, path: &VaultPath) -> Result<bool, SourceError> {
        let mount = self.mount_of(path).await?;
        let relative = Self::relative(&mount, path);
        let list_path = if mount.version == 2 {
            format!("{}/metadata/{relative}/", mount.mount)
        } else {
            format!("{}/{relative}/", mount.mount)
        };
        let listed = self
            .session
            .exec(self.namespace.as_deref(), || ListRequest {
                path: list_path.clone(),
            })
            .await;
        match listed {
            Ok(envelope) => Ok(envelope.data.is_some_and(|list| !list.keys.is_empty())),
            Err(error) => match source_error(error) {
                SourceError::NotFound => Ok(false),
                other => Err(other),
            },
        }
    }

    /// KV v2: `LIST <mount>/metadata/<dir>/`; v1: `LIST <mount>/<dir>/` (the mount itself when `dir` is it).
    async fn list(&self, dir: &VaultPath) -> Result<Vec<String>, SourceError> {
        let mount = self.mount_of(dir).await?;
        let relative = Self::relative(&mount, dir);
        let folder = if relative.is_empty() {
            String::new()
        } else {
            format!("{relative}/")
        };
        let list_path = if mount.version == 2 {
            format!("{}/metadata/{folder}", mount.mount)
        } else {
            format!("{}/{folder}", mount.mount)
        };
        let listed = self
            .session
            .exec(self.namespace.as_deref(), || ListRequest {
                path: list_path.clone(),
            })
            .await
            .map_err(source_error)?;
        Ok(listed.data.map(|list| list.keys).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_closed_before_the_request_is_a_refused_client_cert_only_when_one_is_presented()
    {
        let lost_alert = "login at auth/cert/login: request failed: error sending request: client error (Canceled): \
                          operation was canceled: connection was not ready";
        assert!(matches!(
            classify_unavailable("https://v:8200".into(), lost_alert.into(), true),
            VaultSetupError::ClientCertRefused { .. }
        ));
        assert!(matches!(
            classify_unavailable("https://v:8200".into(), lost_alert.into(), false),
            VaultSetupError::Unreachable { .. }
        ));
        let refused = "request failed: received fatal alert: UnknownCA";
        assert!(matches!(
            classify_unavailable("https://v:8200".into(), refused.into(), false),
            VaultSetupError::ClientCertRefused { .. }
        ));
    }
}
