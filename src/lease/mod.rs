//! Dynamic secrets: credentials a Vault engine mints on request (database credentials, PKI certificates, cloud
//! keys), each under a lease that has to be renewed and should be revoked when nobody needs it any more.
//!
//! A dynamic volume holds one issued response per lease holder (a container, or the whole volume with
//! `-o lease=per-volume`): every file of the volume is a field of that one response, so a certificate and its key,
//! or a username and its password, always belong together. The [`keeper::LeaseKeeper`] renews the lease at 2/3 of
//! its TTL, issues a new one before the old one can no longer be renewed (max TTL, non-renewable, a certificate's
//! validity), switches the files atomically, and revokes what it issued when the last holder is gone. The
//! [`journal`] records which leases exist and who holds them (never a credential), so leases of holders that died
//! with a crash or a reboot can be revoked by the next driver: the [`reaper`] does it, from the journal alone.

pub mod journal;
pub mod keeper;
pub mod reaper;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::names::VaultPath;
use crate::source::Secret;

/// The holder name of a lease every container of a volume shares (`-o lease=per-volume`). Docker's mount IDs are
/// 64 hex digits, so no container has it.
pub const VOLUME_HOLDER: &str = "per-volume";

/// What to ask a dynamic engine for: a read of `path` (`database/creds/<role>`), or, with parameters, a write to it
/// (`pki/issue/<role>` with `common_name`, ...). Parameters are volume options, never credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueRequest {
    pub path: VaultPath,
    pub params: BTreeMap<String, String>,
}

/// What identifies an issued credential in Vault, to renew and revoke it: its lease ID, or a certificate's serial,
/// and the accessor of the token that owns the lease. Not a credential: none of them reads anything by itself, so
/// the journal keeps it. It never holds a token.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRef {
    /// The Vault path issued from.
    pub path: String,
    /// The Vault lease ID (empty: the response had no lease, as PKI certificates without `generate_lease`).
    #[serde(default)]
    pub lease_id: String,
    /// A PKI certificate's serial number, revoked by serial when it has no lease.
    #[serde(default)]
    pub serial: Option<String>,
    /// The accessor of the lease-owning token the lease was issued with (`vault.lease_token_role`), so a later
    /// driver process can keep that token, and so the lease, alive (`auth/token/renew-accessor`). `None`: issued
    /// with the login token, or no lease.
    #[serde(default)]
    pub owner_accessor: Option<String>,
}

impl LeaseRef {
    /// Whether this names anything Vault could revoke: a response without a lease ID or a serial needs nothing.
    pub fn needs_revoking(&self) -> bool {
        !self.lease_id.is_empty() || self.serial.is_some()
    }

    /// How audit lines and warnings name the lease: its ID, or a lease-less certificate's serial (neither reads
    /// anything).
    pub fn name(&self) -> &str {
        match &self.serial {
            Some(serial) if self.lease_id.is_empty() => serial,
            _ => &self.lease_id,
        }
    }
}

/// An issued response: the secret its files show, and its lease.
pub struct Issued {
    pub secret: Secret,
    pub lease: LeaseRef,
    /// The lease's TTL as issued (zero: no lease).
    pub ttl: Duration,
    pub renewable: bool,
    /// When the credential stops working whatever is renewed (a certificate's `expiration`), if known.
    pub ends_by: Option<SystemTime>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("secret", &self.secret)
            .field("lease", &self.lease)
            .field("ttl", &self.ttl)
            .field("renewable", &self.renewable)
            .finish_non_exhaustive()
    }
}

/// A renewal's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewed {
    /// The TTL from now Vault granted (less than asked for: the lease is at its max TTL).
    pub ttl: Duration,
    pub renewable: bool,
}

/// How dynamic volumes behave (`[dynamic]` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasePolicy {
    /// How long after the last Unmount a lease is revoked.
    pub unmount_grace: Duration,
    /// How long a replaced lease stays valid after its successor is served, so the application can reconnect.
    pub reissue_grace: Duration,
    /// Issue a successor this long before a lease ends; unset: at 2/3 of its life.
    pub reissue_before: Option<Duration>,
}

impl Default for LeasePolicy {
    fn default() -> Self {
        LeasePolicy {
            unmount_grace: Duration::ZERO,
            reissue_grace: Duration::from_secs(30),
            reissue_before: None,
        }
    }
}

/// Whether a volume's lease is its container's own or shared by all its containers (`-o lease=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LeaseSharing {
    /// Each Mount ID (each container) gets its own credential and its own mountpoint.
    #[default]
    PerContainer,
    /// One credential for every container of the volume.
    PerVolume,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_ref_holds_no_token_in_debug_nor_in_the_journal() {
        let lease = LeaseRef {
            path: "database/creds/app".into(),
            lease_id: "database/creds/app/abc".into(),
            serial: None,
            owner_accessor: Some("accessor-1".into()),
        };
        // Exactly these keys reach the journal: identifiers, none of them a token.
        let json = serde_json::to_value(&lease).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["lease_id", "owner_accessor", "path", "serial"]);
        let shown = format!("{lease:?}");
        assert!(shown.contains("accessor-1"), "{shown}");
        assert!(!shown.to_lowercase().contains("token"), "{shown}");
        // A journal entry carrying a token is refused rather than kept.
        let with_token = serde_json::json!({
            "path": "database/creds/app",
            "lease_id": "database/creds/app/abc",
            "owner_token": "s.secret",
        });
        assert!(serde_json::from_value::<LeaseRef>(with_token).is_err());
        // Entries written before the owner was recorded still read.
        let old: LeaseRef = serde_json::from_value(serde_json::json!({
            "path": "database/creds/app",
            "lease_id": "database/creds/app/abc",
        }))
        .unwrap();
        assert_eq!(old.owner_accessor, None);
    }
}
