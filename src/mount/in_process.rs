//! Serves a volume with FUSE inside this process: the driver's own mounts (foreground mode, hosts without
//! systemd), and the one mount a systemd mount unit serves. Both mount through [`InProcessMount::serve`].

use std::sync::Arc;

use crate::fs::fuse::{self, FuseMount};
use crate::fs::{FsOptions, SecretFs, SecretRouter};
use crate::names::escape_component;
use crate::source::router::VolumeCaches;

use super::mountpoint::{is_stale_mount, prepare_mountpoint, remove_mountpoint};
use super::{ActiveMount, MountError, MountPlan, Mounter};

/// Mounts volumes in-process, reading through the driver's caches.
pub struct InProcessMounter {
    caches: Arc<VolumeCaches>,
    fs_options: FsOptions,
}

impl std::fmt::Debug for InProcessMounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessMounter").finish_non_exhaustive()
    }
}

impl InProcessMounter {
    pub fn new(caches: Arc<VolumeCaches>, fs_options: FsOptions) -> Self {
        InProcessMounter { caches, fs_options }
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
        let runtime = tokio::runtime::Handle::current();
        let plan = plan.clone();
        tokio::task::spawn_blocking(move || {
            prepare_mountpoint(&plan.mountpoint).map_err(MountError::Mountpoint)?;
            let audit_window = fs_options.audit_window;
            let fs = Arc::new(SecretFs::routed(plan.path.clone(), router, fs_options));
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
    async fn unmount(self: Box<Self>) -> Result<(), MountError> {
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
}

#[async_trait::async_trait]
impl Mounter for InProcessMounter {
    async fn mount(&self, plan: &MountPlan) -> Result<Box<dyn ActiveMount>, MountError> {
        let router = self.caches.router(plan.parsed.namespace.as_deref());
        let fs_options = plan.parsed.fs_options(&self.fs_options);
        let mount = InProcessMount::serve(plan, router, fs_options).await?;
        Ok(Box::new(mount))
    }
}
