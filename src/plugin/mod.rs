//! Docker's volume plugin protocol (v1): decodes a method and JSON body, calls [`Volumes`], encodes the reply.
//! Transport-free: `server.rs` feeds it HTTP requests, tests feed it bytes.

pub mod server;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::volumes::{VolumeError, VolumeInfo, Volumes};

/// The protocol's error edge: everything becomes `{"Err": "..."}` with a status.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("unknown endpoint {0:?}; this plugin implements VolumeDriver (protocol v1)")]
    UnknownEndpoint(String),
    #[error("malformed JSON body for {method}: {reason}")]
    MalformedBody { method: String, reason: String },
    #[error("{method}: {source}")]
    Volume {
        method: String,
        /// The volume the call named (for the log line; the error text names it where it matters to Docker).
        volume: String,
        #[source]
        source: VolumeError,
    },
}

impl PluginError {
    pub fn status(&self) -> u16 {
        match self {
            PluginError::UnknownEndpoint(_) => 404,
            PluginError::MalformedBody { .. } => 400,
            PluginError::Volume { .. } => 500,
        }
    }
}

/// A reply: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl From<PluginError> for Reply {
    fn from(error: PluginError) -> Self {
        Reply {
            status: error.status(),
            body: json!({ "Err": error.to_string() }),
        }
    }
}

#[derive(Deserialize)]
struct CreateRequest {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Opts", default)]
    opts: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct NameRequest {
    #[serde(rename = "Name")]
    name: String,
}

#[derive(Deserialize)]
struct MountRequest {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "ID", default)]
    id: String,
}

fn parse<T: DeserializeOwned>(method: &str, body: &[u8]) -> Result<T, PluginError> {
    serde_json::from_slice(body).map_err(|error| PluginError::MalformedBody {
        method: method.to_owned(),
        reason: error.to_string(),
    })
}

/// The protocol handler shared by every connection. It holds no lock of its own: [`Volumes`] orders the calls
/// of each volume, and calls for different volumes run side by side.
#[derive(Clone, Debug)]
pub struct Plugin {
    volumes: Arc<Volumes>,
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
}

/// What `docker volume inspect` shows under `Status`: the mount count, and for a mounted volume its health over
/// all its mounts (a dynamic volume has one per lease): the oldest last refresh, whether any serves stale values,
/// and the latest error.
fn status_json(info: &VolumeInfo) -> Value {
    let mut status = serde_json::Map::new();
    status.insert("Mounts".into(), json!(info.mount_ids));
    status.insert("Path".into(), json!(info.path));
    if info.mounts.is_empty() {
        return Value::Object(status);
    }
    let reported: Vec<_> = info
        .mounts
        .iter()
        .filter_map(|m| m.health.as_ref())
        .collect();
    let healthy = reported.len() == info.mounts.len() && reported.iter().all(|h| h.is_healthy());
    status.insert("Healthy".into(), json!(healthy));
    status.insert("Stale".into(), json!(reported.iter().any(|h| h.stale)));
    let oldest_refresh = reported.iter().map(|h| h.last_refresh).min().flatten();
    status.insert(
        "LastRefresh".into(),
        json!(oldest_refresh.map_or_else(|| "none yet".to_owned(), rfc3339)),
    );
    let latest_error = reported
        .iter()
        .filter_map(|h| h.last_error.as_ref().zip(h.last_error_at))
        .max_by_key(|(_, at)| *at);
    if let Some((error, at)) = latest_error {
        status.insert(
            "LastError".into(),
            json!(format!("{}: {error}", rfc3339(at))),
        );
    }
    if reported.len() < info.mounts.len() {
        status.insert(
            "Unreported".into(),
            json!("a mount unit has not reported its health yet"),
        );
    }
    let units: Vec<&str> = info
        .mounts
        .iter()
        .filter_map(|m| m.unit.as_deref())
        .collect();
    if !units.is_empty() {
        status.insert("Units".into(), json!(units));
    }
    if info.mounts.iter().any(|m| m.holder.is_some()) {
        status.insert("Leases".into(), json!(info.mounts.len()));
    }
    Value::Object(status)
}

fn volume_json(info: &VolumeInfo) -> Value {
    json!({
        "Name": info.name,
        "Mountpoint": info.mountpoint.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        "CreatedAt": info.created_at,
        "Status": status_json(info),
    })
}

/// Tags a volume error with the protocol method it answers and the volume it named.
fn volume_error<'a>(
    method: &'a str,
    volume: &'a str,
) -> impl FnOnce(VolumeError) -> PluginError + 'a {
    move |source| PluginError::Volume {
        method: method.to_owned(),
        volume: volume.to_owned(),
        source,
    }
}

impl Plugin {
    pub fn new(volumes: Arc<Volumes>) -> Self {
        Plugin { volumes }
    }

    /// Handles `POST /<method>` with `body`.
    pub async fn handle(&self, path: &str, body: &[u8]) -> Reply {
        match self.dispatch(path, body).await {
            Ok(body) => Reply { status: 200, body },
            Err(error) => {
                match &error {
                    // Docker asks Get before every implicit Create: an unknown name is routine.
                    PluginError::Volume {
                        volume,
                        source: VolumeError::NotFound(_),
                        ..
                    } => {
                        tracing::info!(endpoint = %path, volume = %volume, error = %error, "{path} of volume {volume}: {error}")
                    }
                    PluginError::Volume { volume, .. } => {
                        tracing::warn!(endpoint = %path, volume = %volume, error = %error, "{path} of volume {volume} failed: {error}")
                    }
                    _ => {
                        tracing::warn!(endpoint = %path, error = %error, "plugin call {path} failed: {error}")
                    }
                }
                error.into()
            }
        }
    }

    async fn dispatch(&self, path: &str, body: &[u8]) -> Result<Value, PluginError> {
        let method = path.trim_start_matches('/');
        // Docker sends no body (or `{}`) for the calls that take no arguments.
        let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            body
        };
        match method {
            "Plugin.Activate" => {
                parse::<Value>(method, body)?;
                tracing::info!(endpoint = %path, "plugin activated");
                Ok(json!({ "Implements": ["VolumeDriver"] }))
            }
            "VolumeDriver.Capabilities" => {
                parse::<Value>(method, body)?;
                tracing::info!(endpoint = %path, scope = "local", "capabilities");
                Ok(json!({ "Capabilities": { "Scope": "local" } }))
            }
            "VolumeDriver.Create" => {
                let request: CreateRequest = parse(method, body)?;
                let options = request.opts.unwrap_or_default();
                self.volumes
                    .create(&request.name, options, now_rfc3339())
                    .await
                    .map_err(volume_error(method, &request.name))?;
                tracing::info!(volume = %request.name, "volume {} created", request.name);
                Ok(json!({ "Err": "" }))
            }
            "VolumeDriver.Remove" => {
                let request: NameRequest = parse(method, body)?;
                self.volumes
                    .remove(&request.name)
                    .map_err(volume_error(method, &request.name))?;
                tracing::info!(volume = %request.name, "volume {} removed", request.name);
                Ok(json!({ "Err": "" }))
            }
            "VolumeDriver.Mount" => {
                let request: MountRequest = parse(method, body)?;
                let (name, id) = (&request.name, &request.id);
                let mountpoint = self
                    .volumes
                    .mount(name, id)
                    .await
                    .map_err(volume_error(method, name))?;
                tracing::info!(volume = %name, mount_id = %id, mountpoint = %mountpoint.display(), "volume {name} mounted at {} for mount ID {id}", mountpoint.display());
                Ok(json!({ "Mountpoint": mountpoint.display().to_string(), "Err": "" }))
            }
            "VolumeDriver.Unmount" => {
                let request: MountRequest = parse(method, body)?;
                let (name, id) = (&request.name, &request.id);
                let unmounted = self
                    .volumes
                    .unmount(name, id)
                    .await
                    .map_err(volume_error(method, name))?;
                let what = if unmounted {
                    "unmounted"
                } else {
                    "still mounted for its other users"
                };
                tracing::info!(volume = %name, mount_id = %id, filesystem_unmounted = unmounted, "volume {name} {what} after Unmount of mount ID {id}");
                Ok(json!({ "Err": "" }))
            }
            "VolumeDriver.Path" => {
                let request: NameRequest = parse(method, body)?;
                let info = self
                    .volumes
                    .get(&request.name)
                    .map_err(volume_error(method, &request.name))?;
                let mountpoint = info.mountpoint.map(|p| p.display().to_string());
                Ok(json!({ "Mountpoint": mountpoint.unwrap_or_default(), "Err": "" }))
            }
            "VolumeDriver.Get" => {
                let request: NameRequest = parse(method, body)?;
                let info = self
                    .volumes
                    .get(&request.name)
                    .map_err(volume_error(method, &request.name))?;
                Ok(json!({ "Volume": volume_json(&info), "Err": "" }))
            }
            "VolumeDriver.List" => {
                parse::<Value>(method, body)?;
                let volumes = self.volumes.list();
                tracing::info!(endpoint = %path, volumes = volumes.len(), "volumes listed");
                let volumes: Vec<Value> = volumes.iter().map(volume_json).collect();
                Ok(json!({ "Volumes": volumes, "Err": "" }))
            }
            _ => Err(PluginError::UnknownEndpoint(path.to_owned())),
        }
    }
}
