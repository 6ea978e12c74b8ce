//! The filesystem core: names to secrets, inodes, open handles. Kernel-free, so tests drive it directly; the FUSE
//! adapter in `fuse.rs` only translates.
//!
//! Directories list nothing: every name resolves by exact lookup. A file's content is fixed for as long as it stays
//! open (a snapshot taken at open), so a value that changes in Vault can never reach a reader half old, half new.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::cache::SecretCache;
use crate::names::{FileName, VaultPath, View};
use crate::secret::{SecretBytes, SourceError};

/// The root directory's inode number (FUSE's fixed value).
pub const ROOT_INODE: u64 = 1;

/// Errors of filesystem operations; each maps to exactly one errno.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    #[error("no such secret")]
    NotFound,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("permission denied by the secret source")]
    PermissionDenied,
    #[error("the secret source is unavailable")]
    SourceUnavailable,
    #[error("read-only file system")]
    ReadOnly,
    #[error("unknown inode or file handle")]
    StaleHandle,
}

impl FsError {
    /// The errno a process sees.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc_errno::ENOENT,
            FsError::NotADirectory => libc_errno::ENOTDIR,
            FsError::IsADirectory => libc_errno::EISDIR,
            FsError::PermissionDenied => libc_errno::EACCES,
            FsError::SourceUnavailable => libc_errno::EIO,
            FsError::ReadOnly => libc_errno::EROFS,
            FsError::StaleHandle => libc_errno::EBADF,
        }
    }
}

/// Errno values, kept here so the core does not depend on the FUSE crate.
pub mod libc_errno {
    pub use nix::libc::{EACCES, EBADF, EIO, EISDIR, ENOENT, ENOTDIR, EROFS};
}

impl From<SourceError> for FsError {
    fn from(error: SourceError) -> Self {
        match error {
            SourceError::NotFound => FsError::NotFound,
            SourceError::Denied(_) => FsError::PermissionDenied,
            SourceError::Unavailable(_) => FsError::SourceUnavailable,
        }
    }
}

/// Ownership, modes and cache lifetimes of what the filesystem shows.
#[derive(Debug, Clone)]
pub struct FsOptions {
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    /// How long the kernel may trust a name or attribute before asking again.
    pub attr_ttl: Duration,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            uid: 0,
            gid: 0,
            file_mode: 0o444,
            dir_mode: 0o555,
            attr_ttl: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Directory,
    File,
}

/// What `lookup` and `getattr` report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAttr {
    pub ino: u64,
    pub kind: NodeKind,
    pub size: u64,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
}

/// Identity of a node: a directory path, or a secret path with a view.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum NodeKey {
    Directory(VaultPath),
    File(VaultPath, View),
}

struct Node {
    key: NodeKey,
    size: u64,
    lookups: u64,
}

struct InodeTable {
    nodes: HashMap<u64, Node>,
    by_key: HashMap<NodeKey, u64>,
    next_ino: u64,
}

impl InodeTable {
    fn new(root: VaultPath) -> Self {
        let key = NodeKey::Directory(root);
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INODE,
            Node {
                key: key.clone(),
                size: 0,
                lookups: 1,
            },
        );
        InodeTable {
            nodes,
            by_key: HashMap::from([(key, ROOT_INODE)]),
            next_ino: ROOT_INODE + 1,
        }
    }

    /// Records one kernel lookup of `key`, returning its inode.
    fn remember(&mut self, key: NodeKey, size: u64) -> u64 {
        if let Some(&ino) = self.by_key.get(&key) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.lookups += 1;
                node.size = size;
                return ino;
            }
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.by_key.insert(key.clone(), ino);
        self.nodes.insert(
            ino,
            Node {
                key,
                size,
                lookups: 1,
            },
        );
        ino
    }

    fn forget(&mut self, ino: u64, count: u64) {
        if ino == ROOT_INODE {
            return;
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(count);
        if node.lookups == 0 {
            if let Some(node) = self.nodes.remove(&ino) {
                self.by_key.remove(&node.key);
            }
        }
    }
}

/// One mounted volume's filesystem.
pub struct SecretFs {
    cache: Arc<SecretCache>,
    options: FsOptions,
    inodes: Mutex<InodeTable>,
    open_files: Mutex<HashMap<u64, SecretBytes>>,
    next_handle: AtomicU64,
}

impl SecretFs {
    pub fn new(root: VaultPath, cache: Arc<SecretCache>, options: FsOptions) -> Self {
        SecretFs {
            cache,
            options,
            inodes: Mutex::new(InodeTable::new(root)),
            open_files: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
        }
    }

    pub fn options(&self) -> &FsOptions {
        &self.options
    }

    fn inodes(&self) -> MutexGuard<'_, InodeTable> {
        self.inodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn open_files(&self) -> MutexGuard<'_, HashMap<u64, SecretBytes>> {
        self.open_files
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn attr(&self, ino: u64, key: &NodeKey, size: u64) -> NodeAttr {
        let (kind, perm) = match key {
            NodeKey::Directory(_) => (NodeKind::Directory, self.options.dir_mode),
            NodeKey::File(..) => (NodeKind::File, self.options.file_mode),
        };
        NodeAttr {
            ino,
            kind,
            size,
            perm,
            uid: self.options.uid,
            gid: self.options.gid,
        }
    }

    fn directory_path(&self, ino: u64) -> Result<VaultPath, FsError> {
        match self.inodes().nodes.get(&ino).map(|node| &node.key) {
            Some(NodeKey::Directory(path)) => Ok(path.clone()),
            Some(NodeKey::File(..)) => Err(FsError::NotADirectory),
            None => Err(FsError::StaleHandle),
        }
    }

    /// Resolves `name` in directory `parent`: a secret (in some view) or a folder of secrets.
    pub async fn lookup(&self, parent: u64, name: &OsStr) -> Result<NodeAttr, FsError> {
        let dir = self.directory_path(parent)?;
        let name = name
            .to_str()
            .and_then(|name| FileName::parse(name).ok())
            .ok_or(FsError::NotFound)?;
        let path = name.secret_path(&dir);
        let key = match self.cache.read(&path).await {
            Ok(secret) => {
                let content = secret.render(&name.view).ok_or(FsError::NotFound)?;
                let size = content.len() as u64;
                (NodeKey::File(path, name.view), size)
            }
            Err(SourceError::NotFound) if name.view == View::Default => {
                if self.cache.is_folder(&path).await? {
                    (NodeKey::Directory(path), 0)
                } else {
                    return Err(FsError::NotFound);
                }
            }
            Err(error) => return Err(error.into()),
        };
        let (key, size) = key;
        let ino = self.inodes().remember(key.clone(), size);
        Ok(self.attr(ino, &key, size))
    }

    /// Attributes from memory; never asks the source.
    pub fn getattr(&self, ino: u64) -> Result<NodeAttr, FsError> {
        let inodes = self.inodes();
        let node = inodes.nodes.get(&ino).ok_or(FsError::StaleHandle)?;
        Ok(self.attr(ino, &node.key, node.size))
    }

    pub fn forget(&self, ino: u64, count: u64) {
        self.inodes().forget(ino, count);
    }

    /// Opens a file for reading, snapshotting its current content. Returns the handle and the content's size.
    pub async fn open(&self, ino: u64, write: bool) -> Result<(u64, u64), FsError> {
        if write {
            return Err(FsError::ReadOnly);
        }
        let key = self
            .inodes()
            .nodes
            .get(&ino)
            .map(|node| node.key.clone())
            .ok_or(FsError::StaleHandle)?;
        let NodeKey::File(path, view) = key else {
            return Err(FsError::IsADirectory);
        };
        let secret = self.cache.read(&path).await?;
        let content = secret.render(&view).ok_or(FsError::NotFound)?;
        let size = content.len() as u64;
        if let Some(node) = self.inodes().nodes.get_mut(&ino) {
            node.size = size;
        }
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.open_files().insert(handle, content);
        Ok((handle, size))
    }

    /// Bytes `[offset, offset+size)` of an open file's snapshot.
    pub fn read(&self, handle: u64, offset: u64, size: u32) -> Result<SecretBytes, FsError> {
        let files = self.open_files();
        let content = files.get(&handle).ok_or(FsError::StaleHandle)?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(content.len());
        let end = start.saturating_add(size as usize).min(content.len());
        Ok(SecretBytes::new(content[start..end].to_vec()))
    }

    /// Drops an open file's snapshot (wiping it).
    pub fn release(&self, handle: u64) {
        self.open_files().remove(&handle);
    }

    /// How many files are open, for tests and status.
    pub fn open_file_count(&self) -> usize {
        self.open_files().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemorySource;
    use serde_json::json;

    fn fs_with(source: Arc<MemorySource>) -> SecretFs {
        let cache = Arc::new(SecretCache::new(
            source,
            Duration::from_secs(30),
            Duration::from_secs(2),
        ));
        SecretFs::new(
            VaultPath::from_volume_name("secret/app-1/").unwrap(),
            cache,
            FsOptions::default(),
        )
    }

    fn source() -> Arc<MemorySource> {
        let source = Arc::new(MemorySource::default());
        source.put("secret/app-1/db-password", json!({"value": "s3cr3t"}));
        source.put("secret/app-1/db", json!({"user": "app", "password": "pw"}));
        source.put("secret/app-1/team/db", json!({"value": "nested"}));
        source.put("secret/app-2/other", json!({"value": "not yours"}));
        source
    }

    async fn cat(fs: &SecretFs, parent: u64, name: &str) -> Result<String, FsError> {
        let attr = fs.lookup(parent, OsStr::new(name)).await?;
        let (handle, size) = fs.open(attr.ino, false).await?;
        assert_eq!(size, attr.size);
        let bytes = fs.read(handle, 0, 1 << 20)?;
        fs.release(handle);
        Ok(String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn exact_names_views_and_nested_paths() {
        let fs = fs_with(source());
        assert_eq!(cat(&fs, ROOT_INODE, "db-password").await.unwrap(), "s3cr3t");
        assert_eq!(cat(&fs, ROOT_INODE, "db#user").await.unwrap(), "app");
        assert_eq!(
            cat(&fs, ROOT_INODE, "db#").await.unwrap(),
            r#"{"password":"pw","user":"app"}"#
        );
        assert_eq!(
            cat(&fs, ROOT_INODE, "db").await.unwrap(),
            r#"{"password":"pw","user":"app"}"#
        );
        let team = fs.lookup(ROOT_INODE, OsStr::new("team")).await.unwrap();
        assert_eq!(team.kind, NodeKind::Directory);
        assert_eq!(team.perm, 0o555);
        assert_eq!(cat(&fs, team.ino, "db").await.unwrap(), "nested");
        assert_eq!(fs.open_file_count(), 0);
    }

    #[tokio::test]
    async fn missing_keys_fields_and_escapes_are_not_found() {
        let fs = fs_with(source());
        for name in [
            "missing",
            "db#nofield",
            "..",
            ".",
            "../app-2/other",
            "a\u{1}",
        ] {
            assert_eq!(
                fs.lookup(ROOT_INODE, OsStr::new(name)).await,
                Err(FsError::NotFound),
                "{name:?}"
            );
        }
    }

    #[tokio::test]
    async fn source_errors_map_to_errnos() {
        let source = source();
        let fs = fs_with(source.clone());
        source.set_failure(Some(SourceError::Denied("permission denied".into())));
        let denied = fs.lookup(ROOT_INODE, OsStr::new("db-password")).await;
        assert_eq!(denied.unwrap_err().errno(), libc_errno::EACCES);
        source.set_failure(Some(SourceError::Unavailable("503".into())));
        let down = fs.lookup(ROOT_INODE, OsStr::new("db-password")).await;
        assert_eq!(down.unwrap_err().errno(), libc_errno::EIO);
    }

    #[tokio::test]
    async fn writes_are_read_only_and_files_are_not_directories() {
        let fs = fs_with(source());
        let file = fs
            .lookup(ROOT_INODE, OsStr::new("db-password"))
            .await
            .unwrap();
        assert_eq!(file.perm, 0o444);
        assert_eq!(fs.open(file.ino, true).await, Err(FsError::ReadOnly));
        assert_eq!(
            fs.lookup(file.ino, OsStr::new("x")).await,
            Err(FsError::NotADirectory)
        );
        assert_eq!(fs.open(ROOT_INODE, false).await, Err(FsError::IsADirectory));
    }

    #[tokio::test]
    async fn an_open_file_keeps_its_snapshot_while_the_value_rotates() {
        let source = source();
        let fs = fs_with(source.clone());
        let attr = fs
            .lookup(ROOT_INODE, OsStr::new("db-password"))
            .await
            .unwrap();
        let (handle, _) = fs.open(attr.ino, false).await.unwrap();
        source.put(
            "secret/app-1/db-password",
            json!({"value": "rotated-and-longer"}),
        );
        assert_eq!(fs.read(handle, 0, 3).unwrap().as_slice(), b"s3c");
        assert_eq!(fs.read(handle, 3, 100).unwrap().as_slice(), b"r3t");
        assert_eq!(fs.read(handle, 100, 100).unwrap().as_slice(), b"");
    }

    #[tokio::test]
    async fn forgotten_inodes_are_dropped_but_root_stays() {
        let fs = fs_with(source());
        let attr = fs
            .lookup(ROOT_INODE, OsStr::new("db-password"))
            .await
            .unwrap();
        let again = fs
            .lookup(ROOT_INODE, OsStr::new("db-password"))
            .await
            .unwrap();
        assert_eq!(attr.ino, again.ino);
        fs.forget(attr.ino, 1);
        assert!(fs.getattr(attr.ino).is_ok());
        fs.forget(attr.ino, 1);
        assert_eq!(fs.getattr(attr.ino), Err(FsError::StaleHandle));
        fs.forget(ROOT_INODE, 10);
        assert!(fs.getattr(ROOT_INODE).is_ok());
    }
}
