//! Files only root may control: the file backend's secrets, and the credential files (token, AppRole role and
//! secret IDs, the TLS client key). Each is checked on the opened file, so a file swapped between the check and the
//! read is never the one read.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use zeroize::Zeroizing;

/// What others than the owner may not do with the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Nobody else may change it (the file backend's secrets: whoever can write them hands containers any "secret").
    UnwritableByOthers,
    /// Nobody else may have any permission on it (credentials: whoever can read them is the driver to Vault).
    OwnerOnly,
}

impl Keep {
    /// The permission bits this forbids.
    fn forbidden_bits(self) -> u32 {
        match self {
            Keep::UnwritableByOthers => 0o022,
            Keep::OwnerOnly => 0o077,
        }
    }
}

/// Why a root-only file is refused. Callers name the file and its config key.
#[derive(Debug, thiserror::Error)]
pub enum RootOnlyError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("owned by uid {uid}, not root; chown root it")]
    NotOwnedByRoot { uid: u32 },
    #[error("mode {mode:04o} lets group or others write it; chmod 600 it")]
    WritableByOthers { mode: u32 },
    #[error("mode {mode:04o} gives group or others access to it; chmod 600 it")]
    OpenToOthers { mode: u32 },
}

/// Reads `path` after checking that root owns it and that others have none of the permissions `keep` forbids.
///
/// A file owned by this process's own user is accepted too: the driver runs as root, where that is the same rule, and
/// a driver run by another user for a test can read only its own files anyway.
pub fn read_root_only(path: &Path, keep: Keep) -> Result<Zeroizing<Vec<u8>>, RootOnlyError> {
    let mut file = std::fs::File::open(path)?;
    let metadata = file.metadata()?;
    let uid = metadata.uid();
    if uid != 0 && uid != nix::unistd::geteuid().as_raw() {
        return Err(RootOnlyError::NotOwnedByRoot { uid });
    }
    let mode = metadata.mode() & 0o7777;
    if mode & keep.forbidden_bits() != 0 {
        return Err(match keep {
            Keep::UnwritableByOthers => RootOnlyError::WritableByOthers { mode },
            Keep::OwnerOnly => RootOnlyError::OpenToOthers { mode },
        });
    }
    // Sized up front, so the buffer is not reallocated (leaving unwiped copies) while it fills.
    let capacity = usize::try_from(metadata.len())
        .unwrap_or(0)
        .saturating_add(1);
    let mut bytes = Zeroizing::new(Vec::with_capacity(capacity));
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file_with_mode(dir: &Path, mode: u32) -> std::path::PathBuf {
        let path = dir.join(format!("credential-{mode:04o}"));
        std::fs::write(&path, "s3cr3t\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn owner_only_refuses_any_group_or_other_bit() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o640, 0o604, 0o610, 0o601, 0o644] {
            let path = file_with_mode(dir.path(), mode);
            let error = read_root_only(&path, Keep::OwnerOnly).unwrap_err();
            assert!(
                matches!(error, RootOnlyError::OpenToOthers { mode: m } if m == mode),
                "{mode:04o}: {error}"
            );
        }
        for mode in [0o600, 0o400] {
            let path = file_with_mode(dir.path(), mode);
            let bytes = read_root_only(&path, Keep::OwnerOnly).unwrap();
            assert_eq!(bytes.as_slice(), b"s3cr3t\n", "{mode:04o}");
        }
    }

    #[test]
    fn unwritable_by_others_refuses_only_write_bits() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o620, 0o602, 0o666] {
            let path = file_with_mode(dir.path(), mode);
            assert!(
                matches!(
                    read_root_only(&path, Keep::UnwritableByOthers),
                    Err(RootOnlyError::WritableByOthers { .. })
                ),
                "{mode:04o}"
            );
        }
        let path = file_with_mode(dir.path(), 0o644);
        assert!(read_root_only(&path, Keep::UnwritableByOthers).is_ok());
    }

    /// Needs root, to give the file away (the suite runs as root, as the FUSE tests do).
    #[test]
    fn a_file_owned_by_another_user_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_with_mode(dir.path(), 0o600);
        nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        for keep in [Keep::OwnerOnly, Keep::UnwritableByOthers] {
            assert!(
                matches!(
                    read_root_only(&path, keep),
                    Err(RootOnlyError::NotOwnedByRoot { uid: 65534 })
                ),
                "{keep:?}"
            );
        }
    }
}
