//! Dynamic secrets from Vault: which engines may be served as dynamic volumes, and issuing, renewing and revoking
//! their credentials (`GET <engine>/creds/<role>`, `POST pki/issue/<role>`, `sys/leases/renew`, `sys/leases/revoke`).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustify_derive::Endpoint;
use serde::Deserialize;

use super::{source_error, status_of, VaultSource, NOT_KV_PATHS};
use crate::lease::{IssueRequest, Issued, LeaseRef, Renewed};
use crate::names::VaultPath;
use crate::source::{DynamicKind, Secret, SourceError};

/// Engines that mint a credential per request, served as dynamic volumes where a `dynamic = true` rule allows.
const DYNAMIC_ENGINES: [&str; 12] = [
    "database",
    "pki",
    "aws",
    "azure",
    "gcp",
    "consul",
    "rabbitmq",
    "nomad",
    "terraform",
    "kubernetes",
    "ldap",
    "alicloud",
];

/// A reply that may carry a lease: the envelope's top level, and `data`.
#[derive(Debug, Deserialize)]
struct LeasedReply {
    #[serde(default)]
    lease_id: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
    data: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Endpoint)]
#[endpoint(path = "{self.path}", response = "LeasedReply")]
struct LeasedRead {
    #[endpoint(skip)]
    path: String,
}

#[derive(Debug, Endpoint)]
#[endpoint(path = "{self.path}", method = "POST", response = "LeasedReply")]
struct LeasedWrite {
    #[endpoint(skip)]
    path: String,
    #[endpoint(raw)]
    body: Vec<u8>,
}

impl VaultSource {
    /// Whether `path` lies in a dynamic engine, and how it is asked. KV, Vault's own paths, a namespace written
    /// into the path, and an engine Vault does not name are refused.
    pub(super) async fn dynamic_kind(&self, path: &VaultPath) -> Result<DynamicKind, SourceError> {
        let first = path.segments().next().unwrap_or_default().to_owned();
        if NOT_KV_PATHS.contains(&first.as_str()) {
            return Err(SourceError::Refused(format!(
                "{first}/ is Vault's own {first} path, not a dynamic secrets engine"
            )));
        }
        let detected = self.detected(path, first).await?;
        let mount = detected.mount.clone();
        match detected.engine.as_deref() {
            Some("pki") => {
                let rest = path
                    .as_str()
                    .strip_prefix(&format!("{mount}/"))
                    .unwrap_or_default();
                match rest.split_once('/') {
                    Some(("issue", role)) if !role.is_empty() && !role.contains('/') => {
                        Ok(DynamicKind::PkiIssue)
                    }
                    _ => Err(SourceError::Refused(format!(
                        "{mount}/ is a pki engine: only {mount}/issue/<role> is served as a dynamic volume"
                    ))),
                }
            }
            Some(engine) if DYNAMIC_ENGINES.contains(&engine) => Ok(DynamicKind::Read),
            Some(engine) => Err(SourceError::Refused(format!(
                "{mount}/ is a {engine:?} engine, which does not mint credentials; dynamic volumes are served from {}",
                DYNAMIC_ENGINES.join(", ")
            ))),
            None => Err(SourceError::Refused(format!(
                "Vault did not say which engine {mount}/ is, or it is a namespace; dynamic volumes need a known engine"
            ))),
        }
    }

    pub(super) async fn issue_dynamic(
        &self,
        request: &IssueRequest,
    ) -> Result<Issued, SourceError> {
        let kind = self.dynamic_kind(&request.path).await?;
        let path = request.path.to_string();
        let namespace = self.namespace.as_deref();
        let reply = match kind {
            DynamicKind::Read => {
                self.session
                    .exec(namespace, || LeasedRead { path: path.clone() })
                    .await
            }
            DynamicKind::PkiIssue => {
                let body = serde_json::to_vec(&request.params).unwrap_or_default();
                self.session
                    .exec(namespace, || LeasedWrite {
                        path: path.clone(),
                        body: body.clone(),
                    })
                    .await
            }
        }
        .map_err(source_error)?;
        let data = reply
            .data
            .ok_or_else(|| SourceError::Unavailable(format!("{path}: the reply has no data")))?;
        let serial = data
            .get("serial_number")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let ends_by = data
            .get("expiration")
            .and_then(serde_json::Value::as_u64)
            .map(|seconds| UNIX_EPOCH + Duration::from_secs(seconds));
        Ok(Issued {
            secret: Secret::new(data),
            lease: LeaseRef {
                path,
                lease_id: reply.lease_id,
                serial,
            },
            ttl: Duration::from_secs(reply.lease_duration),
            renewable: reply.renewable,
            ends_by: ends_by.filter(|end| *end > SystemTime::now()),
        })
    }

    pub(super) async fn renew_dynamic(
        &self,
        lease: &LeaseRef,
        increment: Duration,
    ) -> Result<Renewed, SourceError> {
        let body = serde_json::to_vec(&serde_json::json!({
            "lease_id": lease.lease_id,
            "increment": increment.as_secs(),
        }))
        .unwrap_or_default();
        let reply = self
            .session
            .exec(self.namespace.as_deref(), || LeasedWrite {
                path: "sys/leases/renew".to_owned(),
                body: body.clone(),
            })
            .await;
        match reply {
            Ok(reply) => Ok(Renewed {
                ttl: Duration::from_secs(reply.lease_duration),
                renewable: reply.renewable,
            }),
            // "lease not found or lease is not renewable": gone, so a successor is issued.
            Err(error) if status_of(&error) == Some(400) => Err(SourceError::NotFound),
            Err(error) => Err(source_error(error)),
        }
    }

    pub(super) async fn revoke_dynamic(&self, lease: &LeaseRef) -> Result<(), SourceError> {
        let (path, body) = if !lease.lease_id.is_empty() {
            (
                "sys/leases/revoke".to_owned(),
                serde_json::json!({ "lease_id": lease.lease_id }),
            )
        } else if let Some(serial) = &lease.serial {
            // A certificate without a lease: revoked by serial in its own mount (`pki/issue/web` → `pki/revoke`).
            let mount = lease
                .path
                .rsplit_once("/issue/")
                .map(|(mount, _)| mount)
                .unwrap_or_default();
            (
                format!("{mount}/revoke"),
                serde_json::json!({ "serial_number": serial }),
            )
        } else {
            return Ok(());
        };
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let result = self
            .session
            .exec_empty(self.namespace.as_deref(), || LeasedWrite {
                path: path.clone(),
                body: body.clone(),
            })
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(error) if status_of(&error) == Some(400) => Ok(()),
            Err(error) => Err(source_error(error)),
        }
    }
}
