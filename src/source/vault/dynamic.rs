//! Dynamic secrets from Vault: which engines may be served as dynamic volumes, and issuing, renewing and revoking
//! their credentials (`GET <engine>/creds/<role>`, `POST pki/issue/<role>`, `sys/leases/renew`, `sys/leases/revoke`).
//! Issued with the lease-owning token when `vault.lease_token_role` is set ([`super::lease_owner`]); renewed and
//! revoked with the login token.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustify_derive::Endpoint;
use serde::Deserialize;
use vaultrs::error::ClientError;

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
        let body = match kind {
            DynamicKind::Read => None,
            DynamicKind::PkiIssue => Some(serde_json::to_vec(&request.params).unwrap_or_default()),
        };
        let (reply, owner_accessor) = self
            .issue_as_owner(&path, body.as_deref())
            .await
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
                // A response without a lease (a certificate without `generate_lease`) belongs to no token.
                owner_accessor: owner_accessor.filter(|_| !reply.lease_id.is_empty()),
                lease_id: reply.lease_id,
                serial,
            },
            ttl: Duration::from_secs(reply.lease_duration),
            renewable: reply.renewable,
            ends_by: ends_by.filter(|end| *end > SystemTime::now()),
        })
    }

    /// Issues with the lease-owning token when `vault.lease_token_role` is set (and its accessor), else with the
    /// login token. A 403 because the lease-owning token is gone creates a new one and is retried once.
    async fn issue_as_owner(
        &self,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(LeasedReply, Option<String>), ClientError> {
        let Some((token, accessor, generation)) = self.lease_owner.token(&self.session).await?
        else {
            return Ok((self.send_issue(None, path, body).await?, None));
        };
        match self.send_issue(Some(&token), path, body).await {
            Err(error) if status_of(&error) == Some(403) => {
                let session = &self.session;
                let gone = matches!(
                    super::auth::lookup_info(session.transport(), session.namespace(), &token)
                        .await,
                    Err(super::auth::AuthError::Rejected(_))
                );
                if !gone {
                    // Alive: the role's policies do not allow this path.
                    return Err(error);
                }
                self.lease_owner.forget(generation);
                let Some((token, accessor, _)) = self.lease_owner.token(&self.session).await?
                else {
                    return Err(error);
                };
                let reply = self.send_issue(Some(&token), path, body).await?;
                Ok((reply, Some(accessor)))
            }
            other => other.map(|reply| (reply, Some(accessor))),
        }
    }

    /// One issue request: `GET <path>`, or with `body` a `POST`; with `token`, or the login's.
    async fn send_issue(
        &self,
        token: Option<&str>,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<LeasedReply, ClientError> {
        let namespace = self.namespace.as_deref();
        let read = || LeasedRead {
            path: path.to_owned(),
        };
        let write = |body: &[u8]| {
            let body = body.to_vec();
            move || LeasedWrite {
                path: path.to_owned(),
                body: body.clone(),
            }
        };
        match (token, body) {
            (Some(token), None) => self.session.exec_with(token, namespace, read).await,
            (Some(token), Some(body)) => {
                self.session.exec_with(token, namespace, write(body)).await
            }
            (None, None) => self.session.exec(namespace, read).await,
            (None, Some(body)) => self.session.exec(namespace, write(body)).await,
        }
    }

    pub(super) async fn renew_dynamic(
        &self,
        lease: &LeaseRef,
        increment: Duration,
    ) -> Result<Renewed, SourceError> {
        if let Some(accessor) = &lease.owner_accessor {
            // Another process's token owns it (an earlier driver's): that token must live as long as the lease.
            if self.lease_owner.current_accessor().as_deref() != Some(accessor.as_str()) {
                self.lease_owner
                    .adopt(&self.session, accessor, Some(&lease.lease_id));
            }
        }
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
            Err(error) if status_of(&error) == Some(400) => {
                self.release_owner(lease);
                Err(SourceError::NotFound)
            }
            Err(error) => Err(source_error(error)),
        }
    }

    /// `lease` no longer needs its owner kept alive here.
    fn release_owner(&self, lease: &LeaseRef) {
        if let Some(accessor) = &lease.owner_accessor {
            self.lease_owner.release(accessor, &lease.lease_id);
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
            Ok(()) => {
                self.release_owner(lease);
                Ok(())
            }
            Err(error) if status_of(&error) == Some(400) => {
                self.release_owner(lease);
                Ok(())
            }
            Err(error) => Err(source_error(error)),
        }
    }
}
