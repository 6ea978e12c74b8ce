//! The one way a test mounts a volume with real FUSE: through the product's own mount path,
//! [`InProcessMount::serve`] (what the driver's in-process mounts and every mount unit use), from a volume name and
//! its Docker options, as `Volumes::mount` plans it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use docker_volume_libsecret::fs::{EveryPath, FsOptions, SecretFs, SecretRouter};
use docker_volume_libsecret::mount::in_process::InProcessMount;
use docker_volume_libsecret::source::cache::SecretCache;
use docker_volume_libsecret::volumes::{plan_mount, VolumeRecord};

/// A mounted volume; unmounted when dropped. Keep the runtime it was mounted on alive for as long.
pub struct MountedVolume {
    mount: Option<InProcessMount>,
    dir: tempfile::TempDir,
}

impl MountedVolume {
    /// The mountpoint.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }

    /// Reads `name` under the mount: its text, or the errno.
    pub fn read(&self, name: &str) -> Result<String, i32> {
        std::fs::read_to_string(self.path(name)).map_err(|e| e.raw_os_error().unwrap_or(0))
    }

    /// The filesystem served.
    pub fn fs(&self) -> &Arc<SecretFs> {
        self.mount.as_ref().unwrap().filesystem()
    }

    /// Unmounts now, failing the test if the kernel refuses.
    pub fn unmount(mut self) {
        if let Some(mount) = self.mount.take() {
            mount.unmount_blocking().unwrap();
        }
    }
}

impl Drop for MountedVolume {
    fn drop(&mut self) {
        if let Some(mount) = self.mount.take() {
            if let Err(error) = mount.unmount_blocking() {
                if !std::thread::panicking() {
                    panic!("unmounting {}: {error}", self.dir.path().display());
                }
            }
        }
    }
}

/// Mounts `volume` (with Docker volume `options`) reading through `router`, with `fs_options` as the driver's
/// defaults that the options refine. Fails the test loudly without root and /dev/fuse.
pub fn mount_volume(
    runtime: &tokio::runtime::Runtime,
    volume: &str,
    options: BTreeMap<String, String>,
    router: Arc<dyn SecretRouter>,
    fs_options: FsOptions,
) -> MountedVolume {
    super::require_fuse();
    let dir = tempfile::tempdir().unwrap();
    let record = VolumeRecord {
        name: volume.to_owned(),
        options,
        created_at: String::new(),
    };
    let plan = plan_mount(&record, dir.path().join("mnt"))
        .unwrap_or_else(|e| panic!("volume {volume:?}: {e}"));
    let fs_options = plan.parsed.fs_options(&fs_options);
    let mount = runtime
        .block_on(InProcessMount::serve(&plan, router, fs_options))
        .unwrap_or_else(|e| panic!("mounting {volume:?}: {e}"));
    MountedVolume {
        mount: Some(mount),
        dir,
    }
}

/// Every path read through one cache, as a volume without per-rule credentials is.
pub fn through(cache: &Arc<SecretCache>) -> Arc<dyn SecretRouter> {
    Arc::new(EveryPath(cache.clone()))
}
