//! Where a volume's filesystem is served: in this process ([`in_process`]) or in a transient systemd unit
//! ([`systemd`]), which borrows its Vault tokens from the driver's token [`broker`]. Both go through one async
//! boundary, [`Mounter`]: a unit start may take seconds, and nothing else waits for it.

pub mod broker;
pub mod in_process;
pub mod mountpoint;
pub mod systemd;

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::lease::IssueRequest;
use crate::names::VaultPath;
use crate::volumes::VolumeOptions;

/// Everything decided about one Mount before anything is mounted: the volume's Vault path and options, parsed once
/// ([`crate::volumes::plan_mount`]), and where it goes. Mounters only carry it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// The Docker volume name.
    pub name: String,
    /// The Vault path the volume name stands for.
    pub path: VaultPath,
    /// The options as created (a mount unit is given them as they are, and parses them again itself).
    pub options: BTreeMap<String, String>,
    /// The same options, parsed.
    pub parsed: VolumeOptions,
    /// Where the filesystem is mounted.
    pub mountpoint: PathBuf,
    /// A dynamic volume's lease (its files are the fields of one issued response), when a `dynamic = true` rule
    /// grants the path; `None`: a KV volume.
    pub lease: Option<LeasePlan>,
}

/// What a dynamic volume's mount issues, and for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasePlan {
    /// The container (Docker's mount ID) the credential is for, or [`crate::lease::VOLUME_HOLDER`] when the
    /// volume's containers share one (`-o lease=per-volume`).
    pub holder: String,
    pub request: IssueRequest,
}

/// Why a volume could not be mounted or unmounted.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{0}")]
    Mountpoint(String),
    #[error("FUSE mount at {} failed: {source} (is /dev/fuse available and fuse3 installed?)", mountpoint.display())]
    Fuse {
        mountpoint: PathBuf,
        source: std::io::Error,
    },
    #[error("unmounting {}: {source}", mountpoint.display())]
    Unmount {
        mountpoint: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Unit(Box<systemd::UnitError>),
    #[error("the mount task ended abnormally: {0}")]
    Task(String),
    /// A dynamic volume's first credential could not be issued.
    #[error("issuing the credential of {volume}: {source}")]
    Lease {
        volume: String,
        source: crate::source::SourceError,
    },
}

impl From<systemd::UnitError> for MountError {
    fn from(error: systemd::UnitError) -> Self {
        MountError::Unit(Box::new(error))
    }
}

impl From<tokio::task::JoinError> for MountError {
    fn from(error: tokio::task::JoinError) -> Self {
        MountError::Task(error.to_string())
    }
}

/// A mounted volume, live until `unmount`.
#[async_trait::async_trait]
pub trait ActiveMount: Send + Sync + std::fmt::Debug {
    async fn unmount(self: Box<Self>) -> Result<(), MountError>;
    /// Ends the mount because the driver stops (not because its last container did): a dynamic volume's lease is
    /// left to the journal, so nothing is revoked by a restart, and the next driver revokes what nobody serves.
    async fn shut_down(self: Box<Self>) -> Result<(), MountError> {
        self.unmount().await
    }
    /// Whether the filesystem still answers (its server runs and the mountpoint is not stale).
    async fn is_alive(&self) -> bool;
    /// Whether the mount outlives the driver process (a systemd unit) and must be left running at shutdown.
    fn outlives_driver(&self) -> bool;
    /// Where its health is read (by `docker volume inspect` and `status`, which never wait for the mount).
    fn health_probe(&self) -> crate::status::HealthProbe {
        crate::status::HealthProbe::Unknown
    }
}

/// Mounts a volume's filesystem as planned.
#[async_trait::async_trait]
pub trait Mounter: Send + Sync + std::fmt::Debug {
    async fn mount(&self, plan: &MountPlan) -> Result<Box<dyn ActiveMount>, MountError>;

    /// A reload: mounts made from now on use `access` and `fs_options` (running ones keep theirs).
    fn reconfigure(
        &self,
        _access: &crate::access::AccessRules,
        _fs_options: &crate::fs::FsOptions,
    ) {
    }

    /// A reload: asks the mount units named to read the config again (in-process mounts read through the
    /// driver's caches, whose rules the reload set).
    async fn reload_units(&self, _units: &[String]) {}

    /// A live mount of the planned volume left by an earlier driver process, if there is one.
    async fn adopt(&self, _plan: &MountPlan) -> Option<Box<dyn ActiveMount>> {
        None
    }
}
