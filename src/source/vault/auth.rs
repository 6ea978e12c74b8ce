//! Auth methods: where the Vault token comes from, and how a new one is obtained.
//!
//! Every credential is read from a root-only file at login time and held only in memory. A response-wrapped AppRole
//! secret ID is unwrapped once (the wrapping token is single-use) and the secret ID is kept for later logins.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rustify_derive::Endpoint;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use super::transport::Transport;
use super::{describe_client_error, status_of};
use crate::config::{AuthMethod, VaultConfig};
use crate::sys::root_only::{read_root_only, Keep};

/// A token and what Vault said about it.
pub struct Login {
    pub token: Zeroizing<String>,
    /// Time to live when obtained; zero for a token that never expires (root tokens).
    pub ttl: Duration,
    pub renewable: bool,
    /// The token's policies, for the start-up log line.
    pub policies: Vec<String>,
}

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Vault refused the credentials (4xx): retrying the same credentials will not help.
    #[error("{0}")]
    Rejected(String),
    /// Vault could not be asked (network, 5xx, sealed): retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A credential file is missing, unreadable or empty.
    #[error("{0}")]
    Credential(String),
}

impl AuthError {
    fn from_client(what: &str, error: &ClientError) -> AuthError {
        let text = format!("{what}: {}", describe_client_error(error));
        match status_of(error) {
            Some(400..=499) => AuthError::Rejected(text),
            _ => AuthError::Unavailable(text),
        }
    }
}

/// A POST with a JSON body prepared by the caller.
#[derive(Debug, Endpoint)]
#[endpoint(path = "{self.path}", method = "POST", response = "AuthEnvelope")]
pub(super) struct LoginRequest {
    #[endpoint(skip)]
    pub path: String,
    #[endpoint(raw)]
    pub body: Vec<u8>,
}

/// A login reply's envelope: `auth` for logins, `data` for unwrapping.
#[derive(Debug, Deserialize)]
pub(super) struct AuthEnvelope {
    pub auth: Option<AuthBlock>,
    pub data: Option<serde_json::Value>,
}

/// The `auth` block of a login or renewal reply.
#[derive(Deserialize)]
pub(super) struct AuthBlock {
    pub client_token: Zeroizing<String>,
    /// The token's accessor: names it for lookups and renewals by accessor, and reads nothing by itself.
    #[serde(default)]
    pub accessor: String,
    #[serde(default)]
    pub lease_duration: u64,
    #[serde(default)]
    pub renewable: bool,
    #[serde(default)]
    pub policies: Vec<String>,
}

impl std::fmt::Debug for AuthBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthBlock")
            .field("client_token", &"<redacted>")
            .field("accessor", &self.accessor)
            .field("lease_duration", &self.lease_duration)
            .field("renewable", &self.renewable)
            .finish()
    }
}

/// The configured auth method, ready to log in.
pub enum Auth {
    /// A token given inline (argv, environment, config): it cannot be replaced.
    InlineToken(Zeroizing<String>),
    /// A token read from a file, read again when Vault stops accepting it (another tool may rotate it).
    TokenFile(PathBuf),
    AppRole {
        mount: String,
        role_id_file: PathBuf,
        secret_id_file: PathBuf,
        wrapped: bool,
        /// For wrapped secret IDs: the unwrapped secret ID, and a digest of the wrapping token it came from.
        unwrapped: Mutex<Option<(Zeroizing<String>, [u8; 32])>>,
    },
    Cert {
        mount: String,
        role: Option<String>,
    },
    /// A mount unit's way: the token is lent by the driver's token broker, which logged in with the scope's
    /// credentials (the unit never reads them). The token stays the driver's: never renewed nor revoked here; a
    /// new one is asked for at about 2/3 of what is left of its TTL, and when Vault says it is dead.
    Lent(Lending),
}

/// Where a unit's token comes from: the broker's socket, and the scope it asks for.
#[derive(Debug)]
pub struct Lending {
    pub socket: PathBuf,
    pub scope: crate::access::AuthScope,
    /// The scope's fingerprint in this unit's config ([`crate::config::Config::scope_fingerprint`]).
    pub fingerprint: String,
}

/// Reads a credential file: root-only, trimmed, non-empty, and only characters a header may carry.
fn read_credential(path: &Path, key: &str) -> Result<Zeroizing<String>, AuthError> {
    let refused = |reason: &dyn std::fmt::Display| {
        AuthError::Credential(format!("{key} {}: {reason}", path.display()))
    };
    let bytes = read_root_only(path, Keep::OwnerOnly).map_err(|e| refused(&e))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| refused(&"holds characters a Vault credential never has"))?;
    let value = Zeroizing::new(text.trim().to_owned());
    if value.is_empty() {
        return Err(AuthError::Credential(format!(
            "{key} {}: the file is empty",
            path.display()
        )));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AuthError::Credential(format!(
            "{key} {}: holds characters a Vault credential never has",
            path.display()
        )));
    }
    Ok(value)
}

impl Auth {
    pub fn from_config(config: &VaultConfig) -> Result<Auth, AuthError> {
        Ok(match config.auth {
            AuthMethod::Token => match (&config.token_file, &config.token) {
                (Some(path), _) => Auth::TokenFile(path.clone()),
                (None, Some(token)) => {
                    let token = Zeroizing::new(token.expose().trim().to_owned());
                    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(AuthError::Credential(
                            "vault.token: empty or holds characters a Vault token never has"
                                .to_owned(),
                        ));
                    }
                    Auth::InlineToken(token)
                }
                (None, None) => {
                    return Err(AuthError::Credential(
                        "no Vault token: set vault.token_file in the config (recommended), VAULT_TOKEN, or \
                         --store-opt token=; or choose vault.auth = \"approle\" or \"cert\""
                            .to_owned(),
                    ))
                }
            },
            AuthMethod::Approle => Auth::AppRole {
                mount: config.approle.mount.trim_matches('/').to_owned(),
                role_id_file: config.approle.role_id_file.clone().unwrap_or_default(),
                secret_id_file: config.approle.secret_id_file.clone().unwrap_or_default(),
                wrapped: config.approle.secret_id_wrapped,
                unwrapped: Mutex::new(None),
            },
            AuthMethod::Cert => Auth::Cert {
                mount: config.cert.mount.trim_matches('/').to_owned(),
                role: config.cert.role.clone(),
            },
        })
    }

    /// How this method is named in logs and messages (never a credential).
    pub fn describe(&self) -> String {
        match self {
            Auth::InlineToken(_) => "token".to_owned(),
            Auth::TokenFile(path) => format!("token_file {}", path.display()),
            Auth::AppRole { mount, .. } => format!("approle at auth/{mount}"),
            Auth::Cert { mount, .. } => format!("cert at auth/{mount}"),
            Auth::Lent(lending) => format!(
                "the driver's login for {} (token broker {})",
                lending.scope,
                lending.socket.display()
            ),
        }
    }

    /// Whether the token is lent by the driver: it is never renewed here, and the broker (a local socket) is asked
    /// again sooner than Vault would be.
    pub fn is_lent(&self) -> bool {
        matches!(self, Auth::Lent(_))
    }

    /// Whether a login yields a new token (AppRole, cert). A token file yields whatever the file holds.
    pub fn mints_tokens(&self) -> bool {
        matches!(self, Auth::AppRole { .. } | Auth::Cert { .. })
    }

    /// What a lost token is replaced from: a login, or the token file read again. An inline token cannot be.
    pub fn can_replace_token(&self) -> bool {
        !matches!(self, Auth::InlineToken(_))
    }

    /// Obtains a token. For token methods this is the token itself; its TTL comes from lookup-self.
    pub async fn login(
        &self,
        transport: &Transport,
        namespace: Option<&str>,
    ) -> Result<Login, AuthError> {
        self.login_replacing(transport, namespace, None).await
    }

    /// [`login`](Self::login) to replace `dead`, a token Vault no longer accepts: a lent token's broker is told
    /// (by digest), so the driver checks its own login. Other methods log in as usual.
    pub async fn login_replacing(
        &self,
        transport: &Transport,
        namespace: Option<&str>,
        dead: Option<&str>,
    ) -> Result<Login, AuthError> {
        let login = self.obtain(transport, namespace, dead).await;
        let method = match self {
            Auth::Lent(_) => crate::metrics::LoginMethod::Lent,
            Auth::InlineToken(_) | Auth::TokenFile(_) => crate::metrics::LoginMethod::Token,
            Auth::AppRole { .. } => crate::metrics::LoginMethod::Approle,
            Auth::Cert { .. } => crate::metrics::LoginMethod::Cert,
        };
        crate::metrics::login(method, crate::metrics::Outcome::of(&login));
        login
    }

    /// The token of [`login_replacing`](Self::login_replacing), uncounted.
    async fn obtain(
        &self,
        transport: &Transport,
        namespace: Option<&str>,
        dead: Option<&str>,
    ) -> Result<Login, AuthError> {
        match self {
            Auth::Lent(lending) => borrow(lending, transport.timeout(), dead).await,
            Auth::InlineToken(token) => lookup(transport, namespace, token.clone()).await,
            Auth::TokenFile(path) => {
                let token = read_credential(path, "vault.token_file")?;
                lookup(transport, namespace, token).await
            }
            Auth::AppRole {
                mount,
                role_id_file,
                secret_id_file,
                wrapped,
                unwrapped,
            } => {
                let role_id = read_credential(role_id_file, "vault.approle.role_id_file")?;
                let secret_id = if *wrapped {
                    self.unwrapped_secret_id(transport, namespace, secret_id_file, unwrapped)
                        .await?
                } else {
                    read_credential(secret_id_file, "vault.approle.secret_id_file")?
                };
                let body = Zeroizing::new(
                    serde_json::to_vec(&serde_json::json!({
                        "role_id": role_id.as_str(),
                        "secret_id": secret_id.as_str(),
                    }))
                    .map_err(|e| AuthError::Credential(e.to_string()))?,
                );
                post_login(transport, namespace, &format!("auth/{mount}/login"), &body).await
            }
            Auth::Cert { mount, role } => {
                let body = match role {
                    Some(name) => serde_json::json!({ "name": name }),
                    None => serde_json::json!({}),
                };
                let body = serde_json::to_vec(&body).unwrap_or_default();
                post_login(transport, namespace, &format!("auth/{mount}/login"), &body).await
            }
        }
    }

    /// The secret ID behind a response-wrapped one. The wrapping token in the file is single-use: it is unwrapped
    /// once and the secret ID kept in memory; a new wrapping token written to the file is unwrapped in turn.
    async fn unwrapped_secret_id(
        &self,
        transport: &Transport,
        namespace: Option<&str>,
        file: &Path,
        unwrapped: &Mutex<Option<(Zeroizing<String>, [u8; 32])>>,
    ) -> Result<Zeroizing<String>, AuthError> {
        let wrapping_token = read_credential(file, "vault.approle.secret_id_file")?;
        let digest: [u8; 32] = Sha256::digest(wrapping_token.as_bytes()).into();
        if let Some((secret_id, seen)) =
            unwrapped.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
        {
            if *seen == digest {
                return Ok(secret_id.clone());
            }
        }
        let reply = transport
            .exec(&wrapping_token, namespace, || LoginRequest {
                path: "sys/wrapping/unwrap".to_owned(),
                body: b"{}".to_vec(),
            })
            .await
            .map_err(|e| {
                AuthError::from_client(
                    "unwrapping the secret ID in vault.approle.secret_id_file (a wrapping token works once; write \
                     a fresh one)",
                    &e,
                )
            })?;
        let secret_id = reply
            .data
            .as_ref()
            .and_then(|data| data.get("secret_id"))
            .and_then(serde_json::Value::as_str)
            .map(|s| Zeroizing::new(s.to_owned()))
            .ok_or_else(|| {
                AuthError::Rejected(
                    "the wrapped response in vault.approle.secret_id_file holds no secret_id"
                        .to_owned(),
                )
            })?;
        *unwrapped.lock().unwrap_or_else(|p| p.into_inner()) = Some((secret_id.clone(), digest));
        Ok(secret_id)
    }
}

/// Asks the driver's token broker for the scope's token.
async fn borrow(
    lending: &Lending,
    timeout: Duration,
    dead: Option<&str>,
) -> Result<Login, AuthError> {
    use crate::mount::broker::{ask, AskError, Request};
    let request = Request {
        scope: lending.scope.into(),
        fingerprint: lending.fingerprint.clone(),
        dead_token: dead.map(crate::names::sha256_hex),
    };
    match ask(&lending.socket, &request, timeout).await {
        Ok(lent) => Ok(Login {
            token: lent.token,
            // A token with nothing left is asked for again at once, not taken for one that never expires (zero).
            ttl: lent
                .ttl
                .map_or(Duration::ZERO, |ttl| ttl.max(Duration::from_secs(1))),
            renewable: false,
            policies: Vec::new(),
        }),
        Err(error @ AskError::Unreachable { .. }) => Err(AuthError::Unavailable(error.to_string())),
        Err(error @ AskError::Refused { refusal, .. }) if refusal.is_transient() => {
            Err(AuthError::Unavailable(error.to_string()))
        }
        Err(error) => Err(AuthError::Rejected(error.to_string())),
    }
}

async fn post_login(
    transport: &Transport,
    namespace: Option<&str>,
    path: &str,
    body: &[u8],
) -> Result<Login, AuthError> {
    let reply = transport
        .exec("", namespace, || LoginRequest {
            path: path.to_owned(),
            body: body.to_vec(),
        })
        .await
        .map_err(|e| AuthError::from_client(&format!("login at {path}"), &e))?;
    let auth = reply.auth.ok_or_else(|| {
        AuthError::Rejected(format!("login at {path}: the reply has no auth block"))
    })?;
    Ok(Login {
        token: auth.client_token,
        ttl: Duration::from_secs(auth.lease_duration),
        renewable: auth.renewable,
        policies: auth.policies,
    })
}

/// `auth/token/lookup-self`'s `data`: what the lifecycle needs, and what is logged at start.
#[derive(Debug, Deserialize)]
pub(super) struct TokenInfo {
    #[serde(default)]
    pub policies: Vec<String>,
    #[serde(default)]
    pub ttl: u64,
    #[serde(default)]
    pub renewable: bool,
}

/// `GET auth/token/lookup-self`.
#[derive(Debug, Endpoint)]
#[endpoint(
    path = "auth/token/lookup-self",
    response = "super::Envelope<TokenInfo>"
)]
pub(super) struct LookupSelf {}

/// Looks a token up: it is valid, and its TTL and renewability.
pub(super) async fn lookup(
    transport: &Transport,
    namespace: Option<&str>,
    token: Zeroizing<String>,
) -> Result<Login, AuthError> {
    let info = lookup_info(transport, namespace, &token).await?;
    Ok(Login {
        token,
        ttl: Duration::from_secs(info.ttl),
        renewable: info.renewable,
        policies: info.policies,
    })
}

pub(super) async fn lookup_info(
    transport: &Transport,
    namespace: Option<&str>,
    token: &str,
) -> Result<TokenInfo, AuthError> {
    let envelope = transport
        .exec(token, namespace, || LookupSelf {})
        .await
        .map_err(|e| AuthError::from_client("token lookup-self", &e))?;
    envelope.data.ok_or_else(|| {
        AuthError::Unavailable("token lookup-self: the reply has no data".to_owned())
    })
}

/// `POST auth/token/renew-self`.
#[derive(Debug, Endpoint)]
#[endpoint(
    path = "auth/token/renew-self",
    method = "POST",
    response = "AuthEnvelope"
)]
struct RenewSelf {
    #[endpoint(raw)]
    body: Vec<u8>,
}

/// Renews the token; the reply's TTL and renewability.
pub(super) async fn renew(
    transport: &Transport,
    namespace: Option<&str>,
    token: &str,
) -> Result<(Duration, bool), AuthError> {
    let renewed = transport
        .exec(token, namespace, || RenewSelf {
            body: b"{}".to_vec(),
        })
        .await
        .map_err(|e| AuthError::from_client("token renew-self", &e))
        .and_then(|reply| {
            reply
                .auth
                .ok_or_else(|| AuthError::Unavailable("token renew-self: no auth block".to_owned()))
        })
        .map(|auth| (Duration::from_secs(auth.lease_duration), auth.renewable));
    crate::metrics::token_renewal(crate::metrics::Outcome::of(&renewed));
    renewed
}

/// `POST auth/token/revoke-self`.
#[derive(Debug, Endpoint)]
#[endpoint(path = "auth/token/revoke-self", method = "POST")]
struct RevokeSelf {
    #[endpoint(raw)]
    body: Vec<u8>,
}

/// Revokes the token (and its children).
pub(super) async fn revoke_self(
    transport: &Transport,
    namespace: Option<&str>,
    token: &str,
) -> Result<(), AuthError> {
    transport
        .exec_empty(token, namespace, || RevokeSelf {
            body: b"{}".to_vec(),
        })
        .await
        .map_err(|e| AuthError::from_client("token revoke-self", &e))
}
