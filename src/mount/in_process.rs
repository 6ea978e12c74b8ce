//! Serves a volume with FUSE inside this process: the driver's own mounts (foreground mode, hosts without
//! systemd), and the one mount a systemd mount unit serves. Both mount through [`InProcessMount::serve`].

use std::sync::Arc;

use crate::fs::fuse::{self, FuseMount};
use crate::fs::{FsOptions, SecretFs, SecretRouter};
use crate::lease::journal::LeaseJournal;
use crate::lease::keeper::{Holder, LeaseKeeper};
use crate::lease::LeasePolicy;
use crate::names::escape_component;
use crate::source::router::VolumeCaches;

use super::mountpoint::{is_stale_mount, prepare_mountpoint, remove_mountpoint};
use super::{ActiveMount, MountError, MountPlan, Mounter};

/// Mounts volumes in-process, reading through the driver's caches.
pub struct InProcessMounter {
    caches: Arc<VolumeCaches>,
    /// Replaced by a reload, for the mounts made after it.
    fs_options: std::sync::RwLock<FsOptions>,
    leases: Leases,
}

/// How dynamic volumes' leases are kept: the policy, and the journal that outlives this process.
#[derive(Debug, Clone, Default)]
pub struct Leases {
    pub policy: LeasePolicy,
    pub journal: Option<LeaseJournal>,
}

impl std::fmt::Debug for InProcessMounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessMounter").finish_non_exhaustive()
    }
}

impl InProcessMounter {
    pub fn new(caches: Arc<VolumeCaches>, fs_options: FsOptions) -> Self {
        InProcessMounter {
            caches,
            fs_options: std::sync::RwLock::new(fs_options),
            leases: Leases::default(),
        }
    }

    /// Keeps dynamic volumes' leases under `leases`.
    pub fn with_leases(mut self, leases: Leases) -> Self {
        self.leases = leases;
        self
    }
}

/// A volume served by a FUSE session of this process.
pub struct InProcessMount {
    mount: FuseMount,
    fs: Arc<SecretFs>,
}

impl std::fmt::Debug for InProcessMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessMount")
            .field("mountpoint", &self.mount.mountpoint())
            .finish()
    }
}

impl InProcessMount {
    /// Serves the planned volume, reading through `router`, at its (created if need be) mountpoint. The kernel
    /// mount blocks, so it runs off the async threads.
    pub async fn serve(
        plan: &MountPlan,
        router: Arc<dyn SecretRouter>,
        fs_options: FsOptions,
    ) -> Result<InProcessMount, MountError> {
        Self::serve_with(plan, router, None, fs_options).await
    }

    /// Serves the planned volume reading through `caches`: a dynamic volume's files show the lease its keeper
    /// starts here (the Mount waits for the first credential). The one way the driver's in-process mounts and a
    /// mount unit mount; a credential issued for a mount that then fails is revoked at once.
    pub async fn serve_planned(
        plan: &MountPlan,
        caches: &Arc<VolumeCaches>,
        leases: &Leases,
        fs_options: FsOptions,
    ) -> Result<InProcessMount, MountError> {
        let router = caches.router(plan.parsed.namespace.as_deref());
        let keeper = start_keeper(plan, caches, leases).await?;
        match Self::serve_with(plan, router, keeper.clone(), fs_options).await {
            Ok(mount) => Ok(mount),
            Err(error) => {
                // Nothing will serve the credential just issued: revoke it now.
                if let Some(keeper) = keeper {
                    keeper.finish().await;
                }
                Err(error)
            }
        }
    }

    /// [`serve`](Self::serve), with a dynamic volume's files showing what `keeper` holds.
    async fn serve_with(
        plan: &MountPlan,
        router: Arc<dyn SecretRouter>,
        keeper: Option<Arc<LeaseKeeper>>,
        fs_options: FsOptions,
    ) -> Result<InProcessMount, MountError> {
        let runtime = tokio::runtime::Handle::current();
        let plan = plan.clone();
        tokio::task::spawn_blocking(move || {
            prepare_mountpoint(&plan.mountpoint).map_err(MountError::Mountpoint)?;
            let audit_window = fs_options.audit_window;
            let fs = match keeper {
                Some(keeper) => SecretFs::leased(plan.path.clone(), router, keeper, fs_options),
                None => Arc::new(SecretFs::routed(plan.path.clone(), router, fs_options)),
            };
            if let Some(window) = audit_window {
                fs.set_auditor(crate::fs::audit::Auditor::for_volume(&plan.name, window));
            }
            let fs_name = format!("libsecret:{}", escape_component(&plan.name));
            match fuse::mount(fs.clone(), &plan.mountpoint, &fs_name, runtime) {
                Ok(mount) => Ok(InProcessMount { mount, fs }),
                Err(source) => {
                    remove_mountpoint(&plan.mountpoint);
                    Err(MountError::Fuse {
                        mountpoint: plan.mountpoint,
                        source,
                    })
                }
            }
        })
        .await?
    }

    /// The filesystem served (its request budget, its inode table).
    pub fn filesystem(&self) -> &Arc<SecretFs> {
        &self.fs
    }

    /// Unmounts, waiting for the kernel to release the filesystem (it does once no process holds it), and removes
    /// the mountpoint.
    pub fn unmount_blocking(self) -> Result<(), MountError> {
        let mountpoint = self.mount.mountpoint().to_owned();
        self.mount.unmount().map_err(|source| MountError::Unmount {
            mountpoint: mountpoint.clone(),
            source,
        })?;
        remove_mountpoint(&mountpoint);
        Ok(())
    }
}

#[async_trait::async_trait]
impl ActiveMount for InProcessMount {
    /// The last container is gone: unmounts, then revokes a dynamic volume's lease (after the unmount grace, in
    /// the background, so Docker's Unmount does not wait for it).
    async fn unmount(self: Box<Self>) -> Result<(), MountError> {
        let keeper = self.fs.lease().cloned();
        tokio::task::spawn_blocking(move || self.unmount_blocking()).await??;
        if let Some(keeper) = keeper {
            keeper.stop_task();
            tokio::spawn(async move { keeper.finish().await });
        }
        Ok(())
    }

    /// The driver stops: a dynamic volume's lease is kept (not renewed, not revoked), and the journal says whose it
    /// was, so the next driver revokes it once nobody serves it.
    async fn shut_down(self: Box<Self>) -> Result<(), MountError> {
        if let Some(keeper) = self.fs.lease() {
            keeper.stop_task();
        }
        tokio::task::spawn_blocking(move || self.unmount_blocking()).await?
    }

    async fn is_alive(&self) -> bool {
        // A stat of a mount whose server is stuck may hang: never on an async thread.
        let mountpoint = self.mount.mountpoint().to_owned();
        tokio::task::spawn_blocking(move || !is_stale_mount(&mountpoint))
            .await
            .unwrap_or(false)
    }

    fn outlives_driver(&self) -> bool {
        false
    }

    fn health_probe(&self) -> crate::status::HealthProbe {
        crate::status::HealthProbe::Filesystem(self.fs.health().clone())
    }
}

#[async_trait::async_trait]
impl Mounter for InProcessMounter {
    /// The rules are the caches' (the reload sets them there); the options are this mounter's.
    fn reconfigure(&self, _access: &crate::access::AccessRules, fs_options: &FsOptions) {
        *self.fs_options.write().unwrap_or_else(|p| p.into_inner()) = fs_options.clone();
    }

    async fn mount(&self, plan: &MountPlan) -> Result<Box<dyn ActiveMount>, MountError> {
        let defaults = self
            .fs_options
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let fs_options = plan.parsed.fs_options(&defaults);
        let mount =
            InProcessMount::serve_planned(plan, &self.caches, &self.leases, fs_options).await?;
        Ok(Box::new(mount))
    }
}

/// Issues a dynamic volume's first credential and starts keeping its lease (`None`: a KV volume). A Mount waits for
/// it: a container never starts with empty files.
async fn start_keeper(
    plan: &MountPlan,
    caches: &Arc<VolumeCaches>,
    leases: &Leases,
) -> Result<Option<Arc<LeaseKeeper>>, MountError> {
    let Some(lease) = &plan.lease else {
        return Ok(None);
    };
    let namespace = plan.parsed.namespace.as_deref();
    let holder = Holder {
        volume: plan.name.clone(),
        holder: lease.holder.clone(),
        namespace: namespace.map(str::to_owned),
    };
    let keeper = LeaseKeeper::start(
        holder,
        lease.request.clone(),
        caches.lease_route(namespace, &plan.path),
        leases.policy.clone(),
        leases.journal.clone(),
    )
    .await
    .map_err(|source| MountError::Lease {
        volume: plan.name.clone(),
        source,
    })?;
    Ok(Some(keeper))
}
