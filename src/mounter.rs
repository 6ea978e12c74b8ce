//! Serves each mounted volume with FUSE inside this process, and cleans mountpoints left by a driver that died.

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::access::{AccessRules, AuthScope};
use crate::cache::SecretCache;
use crate::filesystem::{FsOptions, SecretFs};
use crate::fuse::{self, FuseMount};
use crate::names::{escape_component, VaultPath};
use crate::volumes::{ActiveMount, Mounter, VolumeOptions, VolumeRecord};

/// Makes the cache for a child namespace of a scope: a view of the same backend and login in that namespace.
pub type NamespaceCacheFactory =
    Box<dyn Fn(AuthScope, &str) -> Result<SecretCache, String> + Send + Sync>;

/// The secret caches volumes read through: one per set of credentials (the `[vault]` ones, and each access rule
/// with its own), and one per volume `namespace` option under those, made on first use and shared by every volume
/// reading with the same credentials in the same namespace.
pub struct VolumeCaches {
    access: AccessRules,
    roots: HashMap<AuthScope, Arc<SecretCache>>,
    namespaced: Mutex<HashMap<(AuthScope, String), Arc<SecretCache>>>,
    factory: NamespaceCacheFactory,
}

impl VolumeCaches {
    pub fn new(
        access: AccessRules,
        roots: HashMap<AuthScope, Arc<SecretCache>>,
        factory: NamespaceCacheFactory,
    ) -> Self {
        VolumeCaches {
            access,
            roots,
            namespaced: Mutex::new(HashMap::new()),
            factory,
        }
    }

    /// A backend with one set of credentials and no namespaces: a volume asking for one is refused with `reason`.
    pub fn single(access: AccessRules, root: Arc<SecretCache>, reason: &'static str) -> Self {
        VolumeCaches::new(
            access,
            HashMap::from([(AuthScope::Default, root)]),
            Box::new(move |_, _| Err(reason.to_owned())),
        )
    }

    /// The cache volume `path` reads through, in `namespace` (`None`: the configured one).
    pub fn for_volume(
        &self,
        path: &VaultPath,
        namespace: Option<&str>,
    ) -> Result<Arc<SecretCache>, String> {
        let scope = self.access.decide(path).map_err(|e| e.to_string())?;
        let root = self
            .roots
            .get(&scope)
            .ok_or_else(|| format!("the credentials of {scope} were not loaded"))?;
        let Some(namespace) = namespace else {
            return Ok(root.clone());
        };
        let mut caches = self.namespaced.lock().unwrap_or_else(|p| p.into_inner());
        let key = (scope, namespace.to_owned());
        if let Some(cache) = caches.get(&key) {
            return Ok(cache.clone());
        }
        let cache = Arc::new(
            (self.factory)(scope, namespace)
                .map_err(|reason| format!("volume option namespace: {reason}"))?,
        );
        caches.insert(key, cache.clone());
        Ok(cache)
    }
}

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
    cache: Arc<SecretCache>,
    fs_options: FsOptions,
    mountpoint: &Path,
    runtime: tokio::runtime::Handle,
) -> std::io::Result<FuseMount> {
    let audit_window = fs_options.audit_window;
    let fs = Arc::new(SecretFs::new(path.clone(), cache, fs_options));
    if let Some(window) = audit_window {
        fs.set_auditor(crate::audit::Auditor::for_volume(name, window));
    }
    let fs_name = format!("libsecret:{}", escape_component(name));
    fuse::mount(fs, mountpoint, &fs_name, runtime)
}

pub fn remove_mountpoint(mountpoint: &Path) {
    if let Err(error) = std::fs::remove_dir(mountpoint) {
        if error.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(mountpoint = %mountpoint.display(), %error, "could not remove the mountpoint");
        }
    }
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
        let cache = self.caches.for_volume(path, options.namespace.as_deref())?;
        let fs_options = options.fs_options(&self.fs_options);
        let mount = mount_volume(
            &record.name,
            path,
            cache,
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

/// Whether `path` is a FUSE mount whose server is gone (`Transport endpoint is not connected`).
///
/// The kernel may answer `stat` of the mount root from its attribute cache even after the server died, so this
/// looks up a name no secret can have: the kernel never caches that answer, and a live server refuses it without
/// asking Vault.
pub fn is_stale_mount(path: &Path) -> bool {
    let not_connected = |result: std::io::Result<std::fs::Metadata>| matches!(result, Err(e) if e.raw_os_error() == Some(nix::libc::ENOTCONN));
    not_connected(std::fs::symlink_metadata(path.join("\u{1}liveness-probe")))
        || not_connected(std::fs::metadata(path))
}

/// Detaches whatever is mounted at `path` (nothing mounted there is fine).
pub fn detach(path: &Path) -> Result<(), String> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(error) => Err(format!(
            "detaching the mount at {}: {error}",
            path.display()
        )),
    }
}

/// Makes `mountpoint` an empty directory, detaching a dead mount left there (never handed to Docker).
pub fn prepare_mountpoint(mountpoint: &Path) -> Result<(), String> {
    if let Some(root) = mountpoint.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| format!("creating {}: {e}", root.display()))?;
    }
    if is_stale_mount(mountpoint) {
        tracing::warn!(mountpoint = %mountpoint.display(), "detaching a stale mount (transport endpoint is not connected)");
        detach(mountpoint)?;
    }
    match std::fs::DirBuilder::new().mode(0o755).create(mountpoint) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(format!("creating {}: {error}", mountpoint.display())),
    }
}

/// Detaches and removes every dead mount under `mount_root`; returns the paths cleaned.
pub fn clean_stale_mounts(mount_root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(mount_root) else {
        return Vec::new();
    };
    let mut cleaned = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if is_stale_mount(&path) {
            match detach(&path) {
                Ok(()) => {
                    remove_mountpoint(&path);
                    cleaned.push(path);
                }
                Err(reason) => tracing::warn!(%reason, "stale mount left in place"),
            }
        } else if std::fs::remove_dir(&path).is_ok() {
            // An empty leftover directory: nothing was mounted there.
            cleaned.push(path);
        }
    }
    cleaned
}
