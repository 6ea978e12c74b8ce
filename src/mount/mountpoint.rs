//! Mountpoints: preparing them, telling a dead FUSE mount from a live one, and cleaning what a dead driver left.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

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

pub fn remove_mountpoint(mountpoint: &Path) {
    if let Err(error) = std::fs::remove_dir(mountpoint) {
        if error.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(mountpoint = %mountpoint.display(), %error, "could not remove the mountpoint");
        }
    }
}
