//! The Vault backend: a thin adapter from [`SecretSource`] to vaultrs.
//!
//! KV v1 and v2 are both served. The version of each mount is read once from `sys/internal/ui/mounts/<path>` (as the
//! Vault CLI does) unless the config names it; a server without that endpoint (404) is taken as KV v1.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use rustify_derive::Endpoint;
use serde::Deserialize;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use crate::config::VaultConfig;
use crate::names::VaultPath;
use crate::secret::{Secret, SecretSource, SourceError};

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

/// `sys/internal/ui/mounts/<path>`'s `data`: which mount owns a path, and its options.
#[derive(Debug, Deserialize)]
struct UiMount {
    path: String,
    #[serde(default)]
    options: Option<HashMap<String, String>>,
}

/// `auth/token/lookup-self`'s `data`, only the fields logged at start.
#[derive(Debug, Deserialize)]
struct TokenInfo {
    #[serde(default)]
    policies: Vec<String>,
    #[serde(default)]
    ttl: u64,
}

/// A KV mount and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KvMount {
    /// The mount path without slashes, such as `secret` or `team/kv`.
    mount: String,
    version: u8,
}

/// Why the Vault backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum VaultSetupError {
    #[error("vault.addr {addr:?} is not a usable Vault address: {reason}")]
    Address { addr: String, reason: String },
    #[error("no Vault token: set vault.token_file in the config (recommended), VAULT_TOKEN, or --store-opt token=")]
    NoToken,
    #[error("could not read the token file {path}: {reason}")]
    TokenFile { path: String, reason: String },
    #[error("Vault at {addr} rejected the token (lookup-self answered {status}): check the token or token_file")]
    TokenRejected { addr: String, status: u16 },
    #[error("Vault at {addr} cannot be reached: {reason}")]
    Unreachable { addr: String, reason: String },
}

pub struct VaultSource {
    client: VaultClient,
    addr: String,
    overrides: BTreeMap<String, u8>,
    mounts: Mutex<HashMap<String, KvMount>>,
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

impl VaultSource {
    /// Builds the client and checks the token with `lookup-self`, failing fast with what to fix.
    pub async fn connect(config: &VaultConfig) -> Result<Self, VaultSetupError> {
        let addr = config.addr.clone().unwrap_or_default();
        let token = match (&config.token_file, &config.token) {
            (Some(path), _) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| VaultSetupError::TokenFile {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                zeroize::Zeroizing::new(text.trim().to_owned())
            }
            (None, Some(token)) => zeroize::Zeroizing::new(token.expose().to_owned()),
            (None, None) => return Err(VaultSetupError::NoToken),
        };
        if token.is_empty() {
            return Err(VaultSetupError::NoToken);
        }
        let mut settings = VaultClientSettingsBuilder::default();
        settings
            .address(addr.as_str())
            .token(token.as_str())
            .timeout(Some(config.timeout))
            .verify(true)
            .namespace(config.namespace.clone());
        if let Some(ca) = &config.ca_cert {
            settings.ca_certs(vec![ca.display().to_string()]);
        } else {
            settings.ca_certs(Vec::new());
        }
        let settings = settings.build().map_err(|e| VaultSetupError::Address {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
        let client = VaultClient::new(settings).map_err(|e| VaultSetupError::Address {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
        let lookup = tokio::time::timeout(
            config.timeout,
            get_data::<TokenInfo>(&client, "auth/token/lookup-self".to_owned()),
        )
        .await;
        match lookup {
            Ok(Ok(info)) => {
                tracing::info!(vault_addr = %addr, policies = ?info.policies, ttl_seconds = info.ttl, "Vault token accepted");
            }
            Ok(Err(error)) => match status_of(&error) {
                Some(status @ (400 | 401 | 403)) => {
                    return Err(VaultSetupError::TokenRejected { addr, status })
                }
                _ => {
                    return Err(VaultSetupError::Unreachable {
                        addr,
                        reason: describe_client_error(&error),
                    })
                }
            },
            Err(_) => {
                return Err(VaultSetupError::Unreachable {
                    addr,
                    reason: format!("no answer within {}s", config.timeout.as_secs_f32()),
                })
            }
        }
        let overrides = config
            .kv_version
            .iter()
            .map(|(mount, version)| (mount.trim_matches('/').to_owned(), *version))
            .collect();
        Ok(VaultSource {
            client,
            addr: config.addr.clone().unwrap_or_default(),
            overrides,
            mounts: Mutex::new(HashMap::new()),
        })
    }

    /// The KV mount owning `path`: from the config override, the memo, or Vault.
    async fn mount_of(&self, path: &VaultPath) -> Result<KvMount, SourceError> {
        let text = path.as_str();
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
        let first = path.segments().next().unwrap_or_default().to_owned();
        if let Some(known) = self
            .mounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|m| text.starts_with(&format!("{}/", m.mount)))
            .max_by_key(|m| m.mount.len())
        {
            return Ok(known.clone());
        }
        let mount =
            match get_data::<UiMount>(&self.client, format!("sys/internal/ui/mounts/{text}")).await
            {
                Ok(info) => KvMount {
                    mount: info.path.trim_matches('/').to_owned(),
                    version: match info
                        .options
                        .as_ref()
                        .and_then(|o| o.get("version"))
                        .map(String::as_str)
                    {
                        Some("2") => 2,
                        _ => 1,
                    },
                },
                // Old servers (and some Vault-API servers) lack the endpoint: the CLI's rule is KV v1, first segment.
                Err(error) if status_of(&error) == Some(404) => KvMount {
                    mount: first,
                    version: 1,
                },
                Err(error) => return Err(source_error(error)),
            };
        tracing::info!(vault_addr = %self.addr, mount = %mount.mount, kv_version = mount.version, "KV mount detected");
        self.mounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(mount.mount.clone(), mount.clone());
        Ok(mount)
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
            let versioned: VersionedData = get_version_data(
                &self.client,
                format!("{}/data/{relative}", mount.mount),
                version,
            )
            .await
            .map_err(source_error)?;
            // A deleted or destroyed version has `data: null` (or a 404, depending on the server).
            versioned.data.ok_or(SourceError::NotFound)?
        } else {
            get_data(&self.client, format!("{}/{relative}", mount.mount))
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

/// Reads `path` and decodes its `data` as `T`; a reply without `data` counts as not found.
async fn get_data<T: serde::de::DeserializeOwned>(
    client: &VaultClient,
    path: String,
) -> Result<T, ClientError> {
    get_version_data(client, path, None).await
}

/// Like [`get_data`], for one version of a KV v2 secret.
async fn get_version_data<T: serde::de::DeserializeOwned>(
    client: &VaultClient,
    path: String,
    version: Option<u64>,
) -> Result<T, ClientError> {
    let request = ReadRequest {
        path: path.clone(),
        version,
    };
    let envelope = vaultrs::api::exec_with_no_result(client, request).await?;
    let data = envelope.data.ok_or(ClientError::APIError {
        code: 404,
        errors: vec![format!("{path}: reply has no data")],
    })?;
    serde_json::from_value(data).map_err(|source| ClientError::JsonParseError { source })
}

#[async_trait]
impl SecretSource for VaultSource {
    async fn read(&self, path: &VaultPath) -> Result<Secret, SourceError> {
        self.read_kv(path, None).await
    }

    async fn read_version(&self, path: &VaultPath, version: u64) -> Result<Secret, SourceError> {
        self.read_kv(path, Some(version)).await
    }

    async fn is_folder(&self, path: &VaultPath) -> Result<bool, SourceError> {
        let mount = self.mount_of(path).await?;
        let relative = Self::relative(&mount, path);
        let list_path = if mount.version == 2 {
            format!("{}/metadata/{relative}/", mount.mount)
        } else {
            format!("{}/{relative}/", mount.mount)
        };
        match vaultrs::api::exec_with_no_result(&self.client, ListRequest { path: list_path }).await
        {
            Ok(envelope) => Ok(envelope.data.is_some_and(|list| !list.keys.is_empty())),
            Err(error) => match source_error(error) {
                SourceError::NotFound => Ok(false),
                other => Err(other),
            },
        }
    }
}
