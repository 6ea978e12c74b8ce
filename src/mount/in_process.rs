//! Serves each mounted volume with FUSE inside this process.

use std::path::Path;
use std::sync::Arc;

use crate::fs::fuse::{self, FuseMount};
use crate::fs::{FsOptions, SecretFs, SecretRouter};
use crate::names::{escape_component, VaultPath};
use crate::source::router::VolumeCaches;
use crate::volumes::{ActiveMount, Mounter, VolumeOptions, VolumeRecord};

use super::mountpoint::{is_stale_mount, prepare_mountpoint, remove_mountpoint};

/// Mounts volumes in-process (foreground mode, and hosts without systemd).
pub struct InProcessMounter {
    caches: Arc<VolumeCaches>,
    fs_options: FsOptions,
    runtime: tokio::runtime::Handle,
}

impl InProcessMounter {
    pub fn new(
        caches: Arc<VolumeCaches>,
        fs_options: FsOptions,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        InProcessMounter {
            caches,
            fs_options,
            runtime,
        }
    }
}

struct InProcessMount {
    mount: FuseMount,
}

impl ActiveMount for InProcessMount {
    fn unmount(self: Box<Self>) -> Result<(), String> {
        let mountpoint = self.mount.mountpoint().to_owned();
        self.mount
            .unmount()
            .map_err(|e| format!("unmounting {}: {e}", mountpoint.display()))?;
        remove_mountpoint(&mountpoint);
        Ok(())
    }

    fn is_alive(&self) -> bool {
        !is_stale_mount(self.mount.mountpoint())
    }

    fn outlives_driver(&self) -> bool {
        false
    }
}

/// Serves volume `name` (Vault path `path`) with FUSE at an already prepared `mountpoint`: the one way both the
/// driver (in-process mounts) and a mount unit (`serve-mount`) mount a volume.
pub fn mount_volume(
    name: &str,
    path: &VaultPath,
    router: Arc<dyn SecretRouter>,
    fs_options: FsOptions,
    mountpoint: &Path,
    runtime: tokio::runtime::Handle,
) -> std::io::Result<FuseMount> {
    let audit_window = fs_options.audit_window;
    let fs = Arc::new(SecretFs::routed(path.clone(), router, fs_options));
    if let Some(window) = audit_window {
        fs.set_auditor(crate::fs::audit::Auditor::for_volume(name, window));
    }
    let fs_name = format!("libsecret:{}", escape_component(name));
    fuse::mount(fs, mountpoint, &fs_name, runtime)
}

impl Mounter for InProcessMounter {
    fn mount(
        &self,
        record: &VolumeRecord,
        path: &VaultPath,
        mountpoint: &Path,
    ) -> Result<Box<dyn ActiveMount>, String> {
        prepare_mountpoint(mountpoint)?;
        let options = VolumeOptions::parse(&record.options).map_err(|e| e.to_string())?;
        let router = self.caches.router(options.namespace.as_deref());
        let fs_options = options.fs_options(&self.fs_options);
        let mount = mount_volume(
            &record.name,
            path,
            router,
            fs_options,
            mountpoint,
            self.runtime.clone(),
        )
        .map_err(|e| {
            remove_mountpoint(mountpoint);
            format!(
                "FUSE mount at {} failed: {e} (is /dev/fuse available and fuse3 installed?)",
                mountpoint.display()
            )
        })?;
        Ok(Box::new(InProcessMount { mount }))
    }
}
