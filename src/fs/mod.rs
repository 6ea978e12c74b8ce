//! The filesystem core: names to secrets, and inodes. Kernel-free, so tests drive it directly; the FUSE adapter in
//! `fuse.rs` only translates.
//!
//! Directories list nothing: every name resolves by exact lookup. A name not in memory is first looked up in its
//! folder's index (one LIST per folder per `negative_ttl`, see [`crate::source::cache`]), after its own access rule is
//! decided, so a missing name costs no read; each Vault request a mount makes passes its own budget
//! ([`crate::source::limits`]).
//!
//! A file inode's content never changes. That lets the kernel cache names, attributes and pages for a long time
//! (reads then cost no round trip to this process), and it means no reader can ever see half an old value and half
//! a new one. Rotation works by replacement: [`SecretFs::refresh`] re-reads every secret in use each
//! `refresh_interval`, and when one changed or disappeared it forgets the name and tells the kernel to drop its
//! cached entry ([`Invalidator`]). The next lookup gets a new inode with the new content, while files already open
//! keep reading the old inode to the end.

pub mod audit;
pub mod fuse;
mod leased;

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crate::fs::audit::{Auditor, Outcome, Requester};
use crate::lease::keeper::LeaseKeeper;
use crate::names::{FileName, SecretRef, VaultPath, View};
use crate::source::cache::{Listed, SecretCache};
use crate::source::limits::{BudgetLimits, RequestBudget};
use crate::source::{SecretBytes, SourceError};
use crate::status::MountHealth;

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
    /// The driver refuses the path itself: an access rule, or an engine that is not KV. `reason` names which.
    #[error("refused: {reason}")]
    Refused { reason: String },
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
            FsError::PermissionDenied | FsError::Refused { .. } => libc_errno::EACCES,
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
            SourceError::Refused(reason) => FsError::Refused { reason },
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
    /// How long the kernel may trust a name or attribute. Long, because changes are pushed by invalidation.
    pub attr_ttl: Duration,
    /// How often secrets in use are read again to catch rotation and deletion.
    pub refresh_interval: Duration,
    /// Every open reaches the driver (and is audited) instead of being answered by the kernel.
    pub audit_every_open: bool,
    /// Audit reads and refused lookups, at most one line per (container, key, result) per this window; `None`: off.
    pub audit_window: Option<Duration>,
    /// This volume's own budget of Vault requests (`limits.volume_*`), apart from every other volume's.
    pub volume_limits: BudgetLimits,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            uid: 0,
            gid: 0,
            file_mode: 0o444,
            dir_mode: 0o555,
            attr_ttl: Duration::from_secs(24 * 3600),
            refresh_interval: Duration::from_secs(60),
            audit_every_open: false,
            audit_window: None,
            volume_limits: BudgetLimits::volume_default(),
        }
    }
}

/// Decides every secret path a volume resolves to, and names the cache that reads it: the one of the credentials of
/// the rule that matched that path (not the volume's). A refusal carries the rule, for EACCES and the audit line.
pub trait SecretRouter: Send + Sync {
    fn route(&self, path: &VaultPath) -> Result<Arc<SecretCache>, RouteError>;
}

/// Why a path has no cache to read it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The access rules refuse the path.
    #[error(transparent)]
    Refused(#[from] crate::access::AccessError),
    /// The credentials the path's rule names could not be used (not logged in, no such namespace view).
    #[error("{0}")]
    Unavailable(String),
}

/// One cache for every path: a source without access rules (tests, and the file backend's single view).
#[derive(Debug)]
pub struct EveryPath(pub Arc<SecretCache>);

impl SecretRouter for EveryPath {
    fn route(&self, _path: &VaultPath) -> Result<Arc<SecretCache>, RouteError> {
        Ok(self.0.clone())
    }
}

/// Most (inode, pid) read positions remembered to tell a continuing read from a new open.
const MAX_READ_POSITIONS: usize = 4096;

/// Tells the kernel to drop a cached name, so the next access looks it up again.
pub trait Invalidator: Send + Sync {
    fn invalidate_entry(&self, parent: u64, name: &OsStr);
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

/// Identity of a node: a directory path, or a secret (path and version) with a view.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum NodeKey {
    Directory(VaultPath),
    File(SecretRef, View),
}

struct Node {
    key: NodeKey,
    /// The directory and name the kernel found it under, to invalidate that entry.
    parent: u64,
    name: OsString,
    /// A file's content, fixed for the inode's life.
    content: Option<Arc<SecretBytes>>,
    lookups: u64,
}

struct InodeTable {
    nodes: HashMap<u64, Node>,
    /// The inode each key currently resolves to; replaced inodes stay in `nodes` until the kernel forgets them.
    current: HashMap<NodeKey, u64>,
    next_ino: u64,
}

impl InodeTable {
    fn new(root: VaultPath) -> Self {
        let key = NodeKey::Directory(root);
        let root_node = Node {
            key: key.clone(),
            parent: ROOT_INODE,
            name: OsString::new(),
            content: None,
            lookups: 1,
        };
        InodeTable {
            nodes: HashMap::from([(ROOT_INODE, root_node)]),
            current: HashMap::from([(key, ROOT_INODE)]),
            next_ino: ROOT_INODE + 1,
        }
    }

    /// Records one kernel lookup of `key` with `content`, reusing the current inode when its content is the same.
    fn remember(
        &mut self,
        key: NodeKey,
        parent: u64,
        name: &OsStr,
        content: Option<SecretBytes>,
    ) -> (u64, u64) {
        let size = content.as_ref().map_or(0, |c| c.len() as u64);
        if let Some(&ino) = self.current.get(&key) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                let same = match (&node.content, &content) {
                    (Some(old), Some(new)) => old.as_slice() == new.as_slice(),
                    (None, None) => true,
                    _ => false,
                };
                if same {
                    node.lookups += 1;
                    return (ino, size);
                }
            }
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.current.insert(key.clone(), ino);
        self.nodes.insert(
            ino,
            Node {
                key,
                parent,
                name: name.to_owned(),
                content: content.map(Arc::new),
                lookups: 1,
            },
        );
        (ino, size)
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
                if self.current.get(&node.key) == Some(&ino) {
                    self.current.remove(&node.key);
                }
            }
        }
    }
}

/// One mounted volume's filesystem.
pub struct SecretFs {
    root: VaultPath,
    /// Last refresh, stale flag and last error, for `status` and `docker volume inspect`.
    health: Arc<MountHealth>,
    router: Arc<dyn SecretRouter>,
    options: FsOptions,
    /// Every Vault request this mount makes passes it (then the process's): a container flooding this volume
    /// waits on this budget only.
    budget: RequestBudget,
    inodes: Mutex<InodeTable>,
    /// Where each (inode, pid)'s last read ended: a read starting there continues an open already audited.
    read_positions: Mutex<HashMap<(u64, u32), u64>>,
    invalidator: OnceLock<Box<dyn Invalidator>>,
    auditor: OnceLock<Auditor>,
    /// A dynamic volume's lease: every file is a field of its one issued response ([`leased`]).
    lease: Option<Arc<LeaseKeeper>>,
}

/// Names the volume only: the inodes hold secret values.
impl std::fmt::Debug for SecretFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretFs")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl SecretFs {
    /// A filesystem reading every path through `cache`, with no access rules.
    pub fn new(root: VaultPath, cache: Arc<SecretCache>, options: FsOptions) -> Self {
        SecretFs::routed(root, Arc::new(EveryPath(cache)), options)
    }

    /// A filesystem whose every secret path is decided, and read, by `router`.
    pub fn routed(root: VaultPath, router: Arc<dyn SecretRouter>, options: FsOptions) -> Self {
        SecretFs {
            budget: RequestBudget::new(root.as_str(), options.volume_limits),
            root: root.clone(),
            health: MountHealth::new(),
            router,
            options,
            inodes: Mutex::new(InodeTable::new(root)),
            read_positions: Mutex::new(HashMap::new()),
            invalidator: OnceLock::new(),
            auditor: OnceLock::new(),
            lease: None,
        }
    }

    /// Starts recording reads and refused lookups.
    pub fn set_auditor(&self, auditor: Auditor) {
        let _ = self.auditor.set(auditor);
    }

    /// Audits a lookup's result: refusals, missing secrets and outages (a successful lookup is audited by the
    /// read that follows).
    fn audit_lookup(
        &self,
        dir: &VaultPath,
        name: &str,
        result: &Result<NodeAttr, FsError>,
        requester: Requester,
    ) {
        let Some(auditor) = self.auditor.get() else {
            return;
        };
        let (outcome, reason) = match result {
            Err(FsError::PermissionDenied) => (Outcome::Denied, None),
            Err(FsError::Refused { reason }) => (Outcome::Denied, Some(reason.as_str())),
            Err(FsError::NotFound) => (Outcome::NotFound, None),
            Err(FsError::SourceUnavailable) => (Outcome::Unavailable, None),
            Ok(_)
            | Err(FsError::NotADirectory)
            | Err(FsError::IsADirectory)
            | Err(FsError::ReadOnly)
            | Err(FsError::StaleHandle) => return,
        };
        auditor.record_because(&format!("{dir}/{name}"), outcome, reason, requester);
    }

    /// Audits a read (or an open) of file `ino`.
    pub fn audit_read(&self, ino: u64, requester: Requester) {
        let Some(auditor) = self.auditor.get() else {
            return;
        };
        let key = match self.inodes().nodes.get(&ino).map(|node| &node.key) {
            Some(NodeKey::File(secret_ref, view)) => match view {
                View::Default => secret_ref.to_string(),
                View::Field(field) => format!("{secret_ref}#{field}"),
                View::Json => format!("{secret_ref}#"),
            },
            _ => return,
        };
        auditor.record(&key, Outcome::Read, requester);
    }

    pub fn options(&self) -> &FsOptions {
        &self.options
    }

    /// This volume's request budget (its counters are for tests and the bench).
    pub fn budget(&self) -> &RequestBudget {
        &self.budget
    }

    /// Connects the kernel side once the filesystem is mounted.
    pub fn set_invalidator(&self, invalidator: Box<dyn Invalidator>) {
        let _ = self.invalidator.set(invalidator);
    }

    fn inodes(&self) -> MutexGuard<'_, InodeTable> {
        self.inodes
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
        let (_, file_name) = self.parse_name(name)?;
        self.resolve_name(parent, &dir, name, file_name).await
    }

    /// [`lookup`](Self::lookup), with its refusals, missing secrets and outages audited for `requester` when an
    /// auditor is set. Names no secret can have (the liveness probe) are not audited.
    pub async fn lookup_audited(
        &self,
        parent: u64,
        name: &OsStr,
        requester: Requester,
    ) -> Result<NodeAttr, FsError> {
        let dir = self.directory_path(parent)?;
        let (text, file_name) = self.parse_name(name)?;
        let result = self.resolve_name(parent, &dir, name, file_name).await;
        self.audit_lookup(&dir, text, &result, requester);
        result
    }

    /// A lookup's name as text and as what it names; a name no file can have is not found.
    fn parse_name<'n>(&self, name: &'n OsStr) -> Result<(&'n str, LookupName), FsError> {
        let text = name.to_str().ok_or(FsError::NotFound)?;
        let parsed = match &self.lease {
            Some(_) => LookupName::Field(leased::field_view(text)?),
            None => LookupName::Secret(FileName::parse(text).map_err(|_| FsError::NotFound)?),
        };
        Ok((text, parsed))
    }

    async fn resolve_name(
        &self,
        parent: u64,
        dir: &VaultPath,
        name: &OsStr,
        parsed: LookupName,
    ) -> Result<NodeAttr, FsError> {
        let resolved = self.resolve_parsed(parent, dir, name, parsed).await;
        if let Err(FsError::SourceUnavailable) = resolved {
            self.health.failed(format!(
                "looking up {dir}/{}: Vault unavailable",
                name.to_string_lossy()
            ));
        }
        resolved
    }

    async fn resolve_parsed(
        &self,
        parent: u64,
        dir: &VaultPath,
        name: &OsStr,
        parsed: LookupName,
    ) -> Result<NodeAttr, FsError> {
        match (parsed, &self.lease) {
            (LookupName::Secret(file_name), _) => self.resolve(parent, dir, name, file_name).await,
            (LookupName::Field(view), Some(keeper)) => {
                self.resolve_leased(keeper, parent, name, view)
            }
            (LookupName::Field(_), None) => Err(FsError::NotFound),
        }
    }

    async fn resolve(
        &self,
        parent: u64,
        dir: &VaultPath,
        name: &OsStr,
        file_name: FileName,
    ) -> Result<NodeAttr, FsError> {
        let secret_ref = file_name.secret_ref(dir);
        // The full path that goes to Vault is decided here, for every lookup: a parent volume gets no more than
        // the path's own rule allows, and reads with that rule's credentials.
        let cache = self.route(&secret_ref.path)?;
        // A name found missing a moment ago is not asked about again (a container probing names costs Vault one
        // round per name per negative_ttl, not one per attempt); every view of a missing path is missing too.
        if cache.known_missing(&secret_ref.path) {
            crate::metrics::negative_answer(crate::metrics::NegativeKind::Name);
            return Err(FsError::NotFound);
        }
        let plain = file_name.view == View::Default && file_name.version.is_none();
        // A secret in memory is served without asking anything, and one read before is read again (through an
        // outage, its last value is served without first waiting for a LIST). Any other name is first looked up in
        // its directory's index, so a missing name costs no read and a folder no LIST.
        let cached = cache.cached(&secret_ref);
        let listed = if cached.is_some() || cache.remembered(&secret_ref) {
            None
        } else {
            self.listed(&cache, dir, &file_name.key).await?
        };
        match listed {
            Some(Listed {
                secret: false,
                folder: false,
            }) => {
                crate::metrics::negative_answer(crate::metrics::NegativeKind::Index);
                cache.note_missing(&secret_ref.path);
                return Err(FsError::NotFound);
            }
            Some(Listed {
                secret: false,
                folder: true,
            }) => {
                if !plain {
                    return Err(FsError::NotFound);
                }
                let key = NodeKey::Directory(secret_ref.path);
                let (ino, size) = self.inodes().remember(key.clone(), parent, name, None);
                return Ok(self.attr(ino, &key, size));
            }
            _ => {}
        }
        let read = match cached {
            Some(secret) => Ok(secret),
            None => cache
                .read_within(&secret_ref, Duration::MAX, Some(&self.budget))
                .await
                .map(|(secret, _)| secret),
        };
        let (key, content) = match read {
            Ok(secret) => {
                let content = secret.render(&file_name.view).ok_or(FsError::NotFound)?;
                (NodeKey::File(secret_ref, file_name.view), Some(content))
            }
            // Listed, but no value: deleted since the index was taken, or a KV v2 secret whose latest version is
            // deleted (its metadata is still listed). A folder of the same name may remain; if none does, the path
            // is remembered as missing, so asking again costs nothing (a pinned version says nothing of the rest).
            Err(SourceError::NotFound) if listed.is_some() => {
                let folder = listed.is_some_and(|listed| listed.folder);
                if folder && plain {
                    (NodeKey::Directory(secret_ref.path), None)
                } else {
                    if !folder && secret_ref.version.is_none() {
                        cache.note_missing(&secret_ref.path);
                    }
                    return Err(FsError::NotFound);
                }
            }
            // No index: whether the name is a folder costs a LIST of its own.
            Err(SourceError::NotFound) if plain => {
                if cache
                    .is_folder_within(&secret_ref.path, Some(&self.budget))
                    .await?
                {
                    (NodeKey::Directory(secret_ref.path), None)
                } else {
                    cache.note_missing(&secret_ref.path);
                    return Err(FsError::NotFound);
                }
            }
            // A policy may grant a subtree (`secret/data/app-1/*`) but not a secret at its root: the name is still
            // a folder if the same credentials may list it.
            Err(denied @ SourceError::Denied(_)) if plain => {
                let folder = match listed {
                    Some(listed) => listed.folder,
                    None => cache
                        .is_folder_within(&secret_ref.path, Some(&self.budget))
                        .await
                        .unwrap_or(false),
                };
                if folder {
                    (NodeKey::Directory(secret_ref.path), None)
                } else {
                    return Err(denied.into());
                }
            }
            Err(error) => return Err(error.into()),
        };
        let (ino, size) = self.inodes().remember(key.clone(), parent, name, content);
        Ok(self.attr(ino, &key, size))
    }

    /// What `dir`'s index says about `key`, when one may be used: only if the access rules route `dir` itself to
    /// `cache` (the same rule's credentials as the name), so a LIST never goes where a read of the same path would
    /// not. The name's own rule was decided before this, and a listed name is still read through it.
    async fn listed(
        &self,
        cache: &Arc<SecretCache>,
        dir: &VaultPath,
        key: &str,
    ) -> Result<Option<Listed>, FsError> {
        match self.router.route(dir) {
            Ok(dir_cache) if Arc::ptr_eq(&dir_cache, cache) => cache
                .listed(dir, key, Some(&self.budget))
                .await
                .map_err(FsError::from),
            _ => Ok(None),
        }
    }

    fn route(&self, path: &VaultPath) -> Result<Arc<SecretCache>, FsError> {
        self.router.route(path).map_err(|error| match error {
            RouteError::Refused(refusal) => FsError::Refused {
                reason: refusal.to_string(),
            },
            RouteError::Unavailable(reason) => {
                tracing::warn!(vault_path = %path, %reason, "no credentials to read this path with");
                FsError::SourceUnavailable
            }
        })
    }

    /// Attributes from memory; never asks the source.
    pub fn getattr(&self, ino: u64) -> Result<NodeAttr, FsError> {
        let inodes = self.inodes();
        let node = inodes.nodes.get(&ino).ok_or(FsError::StaleHandle)?;
        let size = node.content.as_ref().map_or(0, |c| c.len() as u64);
        Ok(self.attr(ino, &node.key, size))
    }

    pub fn forget(&self, ino: u64, count: u64) {
        self.inodes().forget(ino, count);
    }

    /// Bytes `[offset, offset+size)` of a file inode's (fixed) content.
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<SecretBytes, FsError> {
        crate::metrics::fs_read();
        let content = {
            let inodes = self.inodes();
            let node = inodes.nodes.get(&ino).ok_or(FsError::StaleHandle)?;
            node.content.clone().ok_or(FsError::IsADirectory)?
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(content.len());
        let end = start.saturating_add(size as usize).min(content.len());
        Ok(SecretBytes::new(
            content.get(start..end).unwrap_or_default().to_vec(),
        ))
    }

    /// [`read`](Self::read), auditing each open once whatever offset it starts at: a read that does not continue
    /// where the same process's last read of this inode ended starts a new open. (Opens themselves do not reach
    /// the driver on the fast path, so reads are what is audited.)
    pub fn read_audited(
        &self,
        ino: u64,
        offset: u64,
        size: u32,
        requester: Requester,
    ) -> Result<SecretBytes, FsError> {
        let bytes = self.read(ino, offset, size)?;
        let continues = {
            let mut positions = self
                .read_positions
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if positions.len() >= MAX_READ_POSITIONS {
                positions.clear();
            }
            let end = offset.saturating_add(bytes.len() as u64);
            positions.insert((ino, requester.pid), end) == Some(offset)
        };
        if !continues {
            self.audit_read(ino, requester);
        }
        Ok(bytes)
    }

    /// Reads every secret in use again (at most once per path) and retires the names whose content changed or
    /// whose secret is gone, invalidating the kernel's entries. A source that cannot answer changes nothing: the
    /// last value keeps being served. Returns how many names were retired.
    pub async fn refresh(&self) -> usize {
        // A refresh never mints a credential: a dynamic volume's files change only when its keeper switches leases.
        if let Some(keeper) = &self.lease {
            // Its health is the keeper's: whether the lease is renewed and its credential valid.
            self.health.refreshed(false, keeper.trouble());
            return 0;
        }
        let in_use: Vec<(NodeKey, u64)> = self
            .inodes()
            .current
            .iter()
            .filter(|(key, _)| matches!(key, NodeKey::File(..)))
            .map(|(key, ino)| (key.clone(), *ino))
            .collect();
        let mut by_path: BTreeMap<SecretRef, Vec<(NodeKey, u64)>> = BTreeMap::new();
        for (key, ino) in in_use {
            if let NodeKey::File(path, _) = &key {
                by_path
                    .entry(path.clone())
                    .or_default()
                    .push((key.clone(), ino));
            }
        }
        let max_age = self.options.refresh_interval / 2;
        let mut retired = 0;
        let mut stale_paths = 0;
        let mut failure = None;
        for (path, nodes) in by_path {
            // Within stale_ttl of an outage the cache answers with the last value; an error means the secret is
            // gone, denied, or unreachable for longer than that: its names are retired, so readers get the error.
            let latest = match self.route(&path.path) {
                Ok(cache) => cache.read_within(&path, max_age, Some(&self.budget)).await,
                Err(error) => Err(SourceError::Refused(error.to_string())),
            };
            let latest = match latest {
                Ok((secret, stale)) => {
                    stale_paths += usize::from(stale);
                    Some(secret)
                }
                // Gone from Vault is news, not a failure.
                Err(SourceError::NotFound) => None,
                Err(error) => {
                    failure = Some(format!("refreshing {path}: {error}"));
                    None
                }
            };
            for (key, ino) in nodes {
                let NodeKey::File(_, view) = &key else {
                    continue;
                };
                let content = latest.as_ref().and_then(|secret| secret.render(view));
                let entry = {
                    let mut inodes = self.inodes();
                    let unchanged = match (
                        inodes.nodes.get(&ino).and_then(|n| n.content.as_ref()),
                        &content,
                    ) {
                        (Some(old), Some(new)) => old.as_slice() == new.as_slice(),
                        _ => false,
                    };
                    if unchanged || inodes.current.get(&key) != Some(&ino) {
                        continue;
                    }
                    inodes.current.remove(&key);
                    inodes
                        .nodes
                        .get(&ino)
                        .map(|node| (node.parent, node.name.clone()))
                };
                if let Some((parent, name)) = entry {
                    retired += 1;
                    crate::metrics::rotation(if content.is_some() {
                        crate::metrics::Change::Changed
                    } else {
                        crate::metrics::Change::Removed
                    });
                    tracing::info!(vault_path = %path, changed = content.is_some(), "secret changed; cached name dropped");
                    if let Some(invalidator) = self.invalidator.get() {
                        invalidator.invalidate_entry(parent, &name);
                    }
                }
            }
        }
        self.note_outage(stale_paths);
        self.health.refreshed(stale_paths > 0, failure);
        retired
    }

    /// This mount's health (shared: it changes as the filesystem reads).
    pub fn health(&self) -> &Arc<MountHealth> {
        &self.health
    }

    /// One warning per volume when it starts serving stale values, and one line when it recovers.
    fn note_outage(&self, stale_paths: usize) {
        let was = self.health.is_stale();
        match (was, stale_paths > 0) {
            (false, true) => tracing::warn!(
                volume_path = %self.root,
                stale_secrets = stale_paths,
                "Vault is unreachable: serving the last values read, which may be stale"
            ),
            (true, false) => {
                tracing::info!(volume_path = %self.root, "Vault reachable again: values are current")
            }
            _ => {}
        }
    }

    /// Refreshes every `refresh_interval` until the returned task is aborted (at unmount).
    pub fn spawn_refresh(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
    ) -> tokio::task::JoinHandle<()> {
        let fs = Arc::downgrade(self);
        let interval = self.options.refresh_interval;
        runtime.spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(fs) = fs.upgrade() else { return };
                fs.refresh().await;
            }
        })
    }
}

/// What a looked-up name names: a secret (in a view, perhaps a version) below a KV volume, or one field (or `#`, all
/// of them) of a dynamic volume's issued response.
enum LookupName {
    Secret(FileName),
    Field(View),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemorySource;
    use serde_json::json;

    #[derive(Default, Clone)]
    struct RecordingInvalidator(Arc<Mutex<Vec<(u64, OsString)>>>);

    impl Invalidator for RecordingInvalidator {
        fn invalidate_entry(&self, parent: u64, name: &OsStr) {
            self.0.lock().unwrap().push((parent, name.to_owned()));
        }
    }

    fn fs_with(source: Arc<MemorySource>) -> (SecretFs, RecordingInvalidator) {
        let cache = Arc::new(SecretCache::new(
            source,
            Duration::from_secs(30),
            Duration::from_secs(2),
        ));
        let fs = SecretFs::new(
            VaultPath::from_volume_name("secret/app-1/").unwrap(),
            cache,
            FsOptions::default(),
        );
        let invalidator = RecordingInvalidator::default();
        fs.set_invalidator(Box::new(invalidator.clone()));
        (fs, invalidator)
    }

    fn source() -> Arc<MemorySource> {
        let source = Arc::new(MemorySource::default());
        source.put("secret/app-1/db-password", json!({"value": "s3cr3t"}));
        source.put("secret/app-1/db", json!({"user": "app", "password": "pw"}));
        source.put("secret/app-1/team/db", json!({"value": "nested"}));
        source.put("secret/app-2/other", json!({"value": "not yours"}));
        source
    }

    fn content(fs: &SecretFs, ino: u64) -> String {
        String::from_utf8(fs.read(ino, 0, 1 << 20).unwrap().to_vec()).unwrap()
    }

    async fn cat(fs: &SecretFs, parent: u64, name: &str) -> Result<String, FsError> {
        let attr = fs.lookup(parent, OsStr::new(name)).await?;
        let text = content(fs, attr.ino);
        assert_eq!(text.len() as u64, attr.size);
        Ok(text)
    }

    #[tokio::test]
    async fn missing_names_are_answered_from_memory_for_the_negative_ttl_and_take_no_entries() {
        let source = source();
        let cache = Arc::new(
            SecretCache::new(
                source.clone(),
                Duration::from_secs(30),
                Duration::from_secs(2),
            )
            .with_negative_ttl(Duration::from_millis(300)),
        );
        let fs = SecretFs::new(
            VaultPath::from_volume_name("secret/app-1/").unwrap(),
            cache.clone(),
            FsOptions::default(),
        );
        for round in 0..3 {
            for i in 0..500 {
                let name = format!("probe-{i}");
                assert_eq!(
                    fs.lookup(ROOT_INODE, OsStr::new(&name)).await.unwrap_err(),
                    FsError::NotFound,
                    "round {round}"
                );
                // Every view of a missing path is missing, at no cost.
                assert_eq!(
                    fs.lookup(ROOT_INODE, OsStr::new(&format!("{name}#user")))
                        .await
                        .unwrap_err(),
                    FsError::NotFound
                );
            }
        }
        assert_eq!(
            (source.reads(), source.folder_checks(), source.lists()),
            (0, 0, 1),
            "one LIST of the directory answers for every name in it, and no name is read"
        );
        assert_eq!(
            cache.entries(),
            0,
            "names that never had a value keep no entry"
        );
        assert_eq!(cache.missing_len(), 500);

        // A key created in Vault shows up once the negative TTL has passed (the index is taken again).
        source.put("secret/app-1/probe-7", json!({"value": "late"}));
        assert!(fs.lookup(ROOT_INODE, OsStr::new("probe-7")).await.is_err());
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(cat(&fs, ROOT_INODE, "probe-7").await.unwrap(), "late");
        assert_eq!((source.lists(), source.reads()), (2, 1));
        // Existing secrets and folders are never taken for missing; a listed folder costs no LIST of its own.
        assert_eq!(cat(&fs, ROOT_INODE, "db-password").await.unwrap(), "s3cr3t");
        let team = fs.lookup(ROOT_INODE, OsStr::new("team")).await.unwrap();
        assert_eq!(team.kind, NodeKind::Directory);
        assert_eq!(source.folder_checks(), 0);
    }

    /// A filesystem over `source` with a short negative TTL and a fast-biting volume budget.
    fn probing_fs(source: Arc<MemorySource>, limits: BudgetLimits) -> (SecretFs, Arc<SecretCache>) {
        let cache = Arc::new(
            SecretCache::new(source, Duration::from_secs(30), Duration::from_millis(200))
                .with_negative_ttl(Duration::from_secs(30)),
        );
        let options = FsOptions {
            volume_limits: limits,
            ..FsOptions::default()
        };
        let fs = SecretFs::new(
            VaultPath::from_volume_name("secret/app-1").unwrap(),
            cache.clone(),
            options,
        );
        (fs, cache)
    }

    fn unlimited() -> BudgetLimits {
        BudgetLimits::new(1000, 1_000_000, 1_000_000)
    }

    async fn errno_of(fs: &SecretFs, parent: u64, name: &str) -> Option<i32> {
        fs.lookup(parent, OsStr::new(name))
            .await
            .err()
            .map(|e| e.errno())
    }

    /// Names an attacker would try: prefixes of folders, views and versions of missing names, folders with and
    /// without a secret of the same name, nested missing folders. Each is answered right, from one LIST per folder.
    #[tokio::test]
    async fn attacker_names_are_answered_from_the_index_without_reads() {
        let source = source();
        source.put("secret/app-1/db/replica", json!({"value": "r"}));
        let (fs, _) = probing_fs(source.clone(), unlimited());
        for name in [
            "tea",
            "te",
            "t",
            "team-",
            "db-",
            "db-passwor",
            "probe#user",
            "probe#",
            "probe@3",
            "probe@3#user",
            "team@2",
            "team#user",
            "team#",
        ] {
            assert_eq!(
                errno_of(&fs, ROOT_INODE, name).await,
                Some(libc_errno::ENOENT),
                "{name}"
            );
        }
        assert_eq!(
            (source.reads(), source.folder_checks(), source.lists()),
            (0, 0, 1),
            "no name above was read"
        );
        // A secret and a folder of the same name: the secret is the file, as before; a folder alone is a directory.
        assert_eq!(
            cat(&fs, ROOT_INODE, "db").await.unwrap(),
            r#"{"password":"pw","user":"app"}"#
        );
        assert_eq!(cat(&fs, ROOT_INODE, "db#user").await.unwrap(), "app");
        let team = fs.lookup(ROOT_INODE, OsStr::new("team")).await.unwrap();
        assert_eq!(team.kind, NodeKind::Directory);
        assert_eq!((source.reads(), source.folder_checks()), (1, 0));
        // Inside a folder: its own index, one LIST, then nothing more for any number of missing names.
        for i in 0..200 {
            assert_eq!(
                errno_of(&fs, team.ino, &format!("deeper-{i}")).await,
                Some(libc_errno::ENOENT)
            );
        }
        assert_eq!(cat(&fs, team.ino, "db").await.unwrap(), "nested");
        assert_eq!(
            (source.reads(), source.folder_checks(), source.lists()),
            (2, 0, 2)
        );
        // Listed but without a value (deleted since the index was taken, or a KV v2 secret whose latest version
        // is deleted): one read, then remembered as missing, in every view.
        source.remove("secret/app-1/db-password");
        for name in [
            "db-password",
            "db-password",
            "db-password#user",
            "db-password#",
        ] {
            assert_eq!(
                errno_of(&fs, ROOT_INODE, name).await,
                Some(libc_errno::ENOENT),
                "{name}"
            );
        }
        assert_eq!((source.reads(), source.lists()), (3, 2));
    }

    /// A router that refuses one directory (as a rule could) and sends everything else to one cache.
    struct RefusingDir {
        cache: Arc<SecretCache>,
        refused: VaultPath,
        other: Option<Arc<SecretCache>>,
    }

    impl SecretRouter for RefusingDir {
        fn route(&self, path: &VaultPath) -> Result<Arc<SecretCache>, RouteError> {
            if path == &self.refused {
                return match &self.other {
                    Some(other) => Ok(other.clone()),
                    None => Err(RouteError::Unavailable("refused by the test".into())),
                };
            }
            Ok(self.cache.clone())
        }
    }

    /// A directory the rules refuse, or route to other credentials, is never listed: its names are read one by
    /// one with their own rule's credentials, a read and a LIST for a missing name (the documented fallback).
    #[tokio::test]
    async fn a_directory_routed_elsewhere_is_never_listed() {
        for other in [false, true] {
            let source = source();
            let other_source = self::source();
            let cache = Arc::new(
                SecretCache::new(
                    source.clone(),
                    Duration::from_secs(30),
                    Duration::from_secs(2),
                )
                .with_negative_ttl(Duration::from_secs(30)),
            );
            let other_cache = Arc::new(SecretCache::new(
                other_source.clone(),
                Duration::from_secs(30),
                Duration::from_secs(2),
            ));
            let root = VaultPath::from_volume_name("secret/app-1").unwrap();
            let router = RefusingDir {
                cache: cache.clone(),
                refused: root.clone(),
                other: other.then_some(other_cache),
            };
            let fs = SecretFs::routed(root, Arc::new(router), FsOptions::default());
            for i in 0..20 {
                assert_eq!(
                    errno_of(&fs, ROOT_INODE, &format!("probe-{i}")).await,
                    Some(libc_errno::ENOENT)
                );
            }
            assert_eq!(cat(&fs, ROOT_INODE, "db-password").await.unwrap(), "s3cr3t");
            assert_eq!(source.lists() + other_source.lists(), 0, "other: {other}");
            assert_eq!(other_source.requests(), 0);
            assert_eq!((source.reads(), source.folder_checks()), (21, 20));
        }
    }

    /// A LIST the policy denies leaves the index unused for negative_ttl: names are read, and a missing one costs
    /// a read and a LIST once (the documented fallback cost), and nothing when repeated.
    #[tokio::test]
    async fn a_denied_list_falls_back_to_reads_and_is_not_retried_per_name() {
        let source = source();
        source.set_list_failure(Some(SourceError::Denied("no list capability".into())));
        let (fs, _) = probing_fs(source.clone(), unlimited());
        for _ in 0..2 {
            for i in 0..50 {
                assert_eq!(
                    errno_of(&fs, ROOT_INODE, &format!("probe-{i}")).await,
                    Some(libc_errno::ENOENT)
                );
            }
        }
        assert_eq!(cat(&fs, ROOT_INODE, "db-password").await.unwrap(), "s3cr3t");
        assert_eq!(
            (source.lists(), source.reads(), source.folder_checks()),
            (1, 51, 50)
        );
    }

    /// The index is capped: a folder with more names than MAX_INDEX_NAMES is not indexed (names are read).
    #[tokio::test]
    async fn a_folder_too_large_is_not_indexed() {
        let source = Arc::new(MemorySource::default());
        for i in 0..=crate::source::cache::MAX_INDEX_NAMES {
            source.put(&format!("secret/app-1/k-{i}"), json!({"value": "v"}));
        }
        let (fs, cache) = probing_fs(source.clone(), unlimited());
        assert_eq!(
            errno_of(&fs, ROOT_INODE, "missing").await,
            Some(libc_errno::ENOENT)
        );
        assert_eq!(cat(&fs, ROOT_INODE, "k-5").await.unwrap(), "v");
        assert_eq!(
            (source.lists(), source.reads(), source.folder_checks()),
            (1, 2, 1)
        );
        assert_eq!(
            cache.indexed(),
            (1, 0),
            "the refusal is remembered, no names are"
        );
    }

    /// Two volumes over one cache share its indexes but not their budgets: one volume exhausting its own budget
    /// gets EIO after vault.timeout (one log line), while the other keeps reading; cached reads never wait.
    #[tokio::test]
    async fn volumes_sharing_a_cache_have_separate_budgets_and_cached_reads_never_wait() {
        let source = source();
        source.set_list_failure(Some(SourceError::Unavailable("no LIST".into())));
        let cache = Arc::new(
            SecretCache::new(
                source.clone(),
                Duration::from_secs(30),
                Duration::from_millis(100),
            )
            .with_negative_ttl(Duration::from_secs(30)),
        );
        let tight = FsOptions {
            volume_limits: BudgetLimits::new(4, 1, 4),
            ..FsOptions::default()
        };
        let root = VaultPath::from_volume_name("secret/app-1").unwrap();
        let flooded = SecretFs::new(root.clone(), cache.clone(), tight.clone());
        let other = SecretFs::new(root, cache.clone(), tight);
        // Read before the flood: served from memory afterwards.
        assert_eq!(
            cat(&flooded, ROOT_INODE, "db-password").await.unwrap(),
            "s3cr3t"
        );
        let started = std::time::Instant::now();
        let mut eio = 0;
        for i in 0..20 {
            if errno_of(&flooded, ROOT_INODE, &format!("probe-{i}")).await == Some(libc_errno::EIO)
            {
                eio += 1;
            }
        }
        // The burst left one probe (a read and a LIST); each token refilled (1/s) lets at most one more through.
        let refilled = started.elapsed().as_secs() + 1;
        assert!(
            20 - eio <= 1 + refilled,
            "{eio} of 20 probes gave EIO once the budget was spent"
        );
        assert!(
            flooded.budget().lines_logged() <= refilled / 10 + 1,
            "one line per interval"
        );
        assert!(flooded.budget().lines_logged() >= 1);
        assert_eq!(flooded.budget().refused(), eio, "each EIO is one refusal");
        let requests = source.requests();
        for _ in 0..100 {
            assert_eq!(
                cat(&flooded, ROOT_INODE, "db-password").await.unwrap(),
                "s3cr3t"
            );
        }
        assert_eq!(source.requests(), requests, "cached reads cost no request");
        assert_eq!(
            flooded.budget().refused(),
            eio,
            "and never wait on the spent budget"
        );
        // The other volume has its own budget: it reads a key never read before.
        assert_eq!(cat(&other, ROOT_INODE, "db#user").await.unwrap(), "app");
        assert_eq!(other.budget().refused(), 0);
    }

    /// A refresh waiting for its volume's spent budget holds its key's request lock; a lookup of the same key, still
    /// fresh in memory, is answered without waiting for it.
    #[tokio::test]
    async fn a_refresh_waiting_on_the_budget_does_not_hold_up_cached_lookups() {
        let source = source();
        let cache = Arc::new(
            SecretCache::new(
                source.clone(),
                Duration::from_secs(30),
                Duration::from_secs(5),
            )
            .with_negative_ttl(Duration::from_secs(30)),
        );
        let options = FsOptions {
            refresh_interval: Duration::from_millis(2),
            volume_limits: BudgetLimits::new(100, 1, 2),
            ..FsOptions::default()
        };
        let fs = Arc::new(SecretFs::new(
            VaultPath::from_volume_name("secret/app-1").unwrap(),
            cache,
            options,
        ));
        // The index and the read spend the burst.
        let attr = fs
            .lookup(ROOT_INODE, OsStr::new("db-password"))
            .await
            .unwrap();
        settle().await;
        let refresh = tokio::spawn({
            let fs = fs.clone();
            async move { fs.refresh().await }
        });
        settle().await;
        assert!(!refresh.is_finished(), "the refresh waits for a token");
        fs.forget(attr.ino, 1);
        assert_eq!(cat(&fs, ROOT_INODE, "db-password").await.unwrap(), "s3cr3t");
        assert!(
            !refresh.is_finished(),
            "the lookup was answered while the refresh still waited"
        );
        assert_eq!(refresh.await.unwrap(), 0);
        assert_eq!(fs.budget().refused(), 0);
    }

    /// Through an outage, a key read before is read again at once (its last value served), without first trying
    /// to LIST its folder: a hanging Vault costs one timeout, not two.
    #[tokio::test]
    async fn an_outage_serves_a_key_read_before_without_trying_its_folder_index() {
        let source = source();
        let cache = Arc::new(
            SecretCache::new(
                source.clone(),
                Duration::from_millis(1),
                Duration::from_secs(2),
            )
            .with_stale_ttl(Duration::from_secs(60))
            .with_negative_ttl(Duration::from_millis(10)),
        );
        let fs = SecretFs::new(
            VaultPath::from_volume_name("secret/app-1").unwrap(),
            cache,
            FsOptions::default(),
        );
        let attr = fs
            .lookup(ROOT_INODE, OsStr::new("db-password"))
            .await
            .unwrap();
        assert_eq!((source.lists(), source.reads()), (1, 1));
        tokio::time::sleep(Duration::from_millis(20)).await;
        source.set_failure(Some(SourceError::Unavailable("sealed".into())));
        fs.forget(attr.ino, 1);
        assert_eq!(cat(&fs, ROOT_INODE, "db-password").await.unwrap(), "s3cr3t");
        assert_eq!((source.lists(), source.reads()), (1, 2), "a read, no LIST");
    }

    /// Readers waiting on a request in flight share its admission: 30 concurrent lookups of one new key are one
    /// LIST and one read, charged once.
    #[tokio::test]
    async fn coalesced_readers_take_no_extra_budget() {
        let source = source();
        source.set_delay(Duration::from_millis(50));
        let (fs, _) = probing_fs(source.clone(), unlimited());
        let fs = Arc::new(fs);
        let mut readers = Vec::new();
        for _ in 0..30 {
            let fs = fs.clone();
            readers.push(tokio::spawn(async move {
                fs.lookup(ROOT_INODE, OsStr::new("db-password")).await
            }));
        }
        for reader in readers {
            assert!(reader.await.unwrap().is_ok());
        }
        assert_eq!((source.lists(), source.reads()), (1, 1));
        assert_eq!(fs.budget().admitted(), 2);
    }

    /// Memory stays flat: positive entries are LRU-bounded, missing names and indexes capped.
    #[tokio::test]
    async fn secrets_kept_are_bounded_least_recently_used_first() {
        let source = Arc::new(MemorySource::default());
        for i in 0..50 {
            source.put(
                &format!("secret/app-1/k-{i}"),
                json!({"value": format!("v{i}")}),
            );
        }
        let cache = Arc::new(
            SecretCache::new(
                source.clone(),
                Duration::from_secs(30),
                Duration::from_secs(2),
            )
            .with_max_secrets(10),
        );
        for i in 0..50 {
            let path = VaultPath::from_volume_name(&format!("secret/app-1/k-{i}")).unwrap();
            assert!(cache.read(&path).await.is_ok());
        }
        assert_eq!(cache.entries(), 10);
        // The most recent ten are in memory; an older one is read again.
        let reads = source.reads();
        let recent = VaultPath::from_volume_name("secret/app-1/k-45").unwrap();
        let old = VaultPath::from_volume_name("secret/app-1/k-3").unwrap();
        cache.read(&recent).await.unwrap();
        assert_eq!(source.reads(), reads);
        cache.read(&old).await.unwrap();
        assert_eq!(source.reads(), reads + 1);
    }

    #[tokio::test]
    async fn the_names_all_indexes_hold_are_capped() {
        use crate::source::cache::{MAX_INDEXED_NAMES, MAX_INDEX_NAMES};
        let source = Arc::new(MemorySource::default());
        let dirs = MAX_INDEXED_NAMES / MAX_INDEX_NAMES + 2;
        for d in 0..dirs {
            for i in 0..MAX_INDEX_NAMES {
                source.put(&format!("secret/d-{d}/k-{i}"), json!({"value": "v"}));
            }
        }
        let cache = SecretCache::new(
            source.clone(),
            Duration::from_secs(30),
            Duration::from_secs(2),
        )
        .with_negative_ttl(Duration::from_secs(60));
        for d in 0..dirs {
            let dir = VaultPath::from_volume_name(&format!("secret/d-{d}")).unwrap();
            let listed = cache.listed(&dir, "k-1", None).await.unwrap();
            assert_eq!(listed.map(|l| l.secret), Some(true));
            assert_eq!(
                cache
                    .listed(&dir, "nope", None)
                    .await
                    .unwrap()
                    .map(|l| l.secret),
                Some(false)
            );
        }
        let (indexed_dirs, names) = cache.indexed();
        assert!(names <= MAX_INDEXED_NAMES, "{names}");
        assert!(
            indexed_dirs < dirs,
            "the least recently used were dropped: {indexed_dirs}"
        );
        assert_eq!(source.lists(), dirs);
    }

    #[tokio::test]
    async fn the_missing_names_remembered_are_capped() {
        let source = Arc::new(MemorySource::default());
        let cache = SecretCache::new(source, Duration::from_secs(30), Duration::from_secs(2))
            .with_negative_ttl(Duration::from_secs(60));
        for i in 0..25_000 {
            cache.note_missing(&VaultPath::from_volume_name(&format!("secret/p-{i}")).unwrap());
        }
        assert!(cache.missing_len() <= 10_000, "{}", cache.missing_len());
        assert!(cache.missing_len() > 0);
    }

    #[tokio::test]
    async fn exact_names_views_and_nested_paths() {
        let (fs, _) = fs_with(source());
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
    }

    #[tokio::test]
    async fn audited_lookups_record_missing_and_refused_keys_by_path() {
        use crate::fs::audit::{Auditor, Outcome};
        use crate::testing::{FixedContainers, RecordingAuditSink};
        let source = source();
        let (fs, _) = fs_with(source.clone());
        let sink = RecordingAuditSink::default();
        fs.set_auditor(Auditor::new(
            "secret/app-1/",
            Duration::from_secs(60),
            Box::new(FixedContainers(HashMap::new())),
            Box::new(sink.clone()),
        ));
        let reader = Requester { pid: 7, uid: 1000 };
        let lookup = |name: &'static str| fs.lookup_audited(ROOT_INODE, OsStr::new(name), reader);

        // Found: the read that follows is audited, not the lookup.
        assert!(lookup("db-password").await.is_ok());
        assert_eq!(lookup("missing").await.err(), Some(FsError::NotFound));
        assert_eq!(lookup("db#nofield").await.err(), Some(FsError::NotFound));
        // A name no secret can have (the liveness probe's) is not found and not audited.
        assert_eq!(
            lookup("\u{1}liveness-probe").await.err(),
            Some(FsError::NotFound)
        );
        source.set_failure(Some(SourceError::Denied("policy".into())));
        assert_eq!(lookup("other").await.err(), Some(FsError::PermissionDenied));

        let seen: Vec<(String, Outcome, u32)> = sink
            .records()
            .into_iter()
            .map(|r| (r.key, r.outcome, r.uid))
            .collect();
        assert_eq!(
            seen,
            [
                ("secret/app-1/missing".to_owned(), Outcome::NotFound, 1000),
                (
                    "secret/app-1/db#nofield".to_owned(),
                    Outcome::NotFound,
                    1000
                ),
                ("secret/app-1/other".to_owned(), Outcome::Denied, 1000),
            ]
        );
    }

    #[tokio::test]
    async fn missing_keys_fields_and_escapes_are_not_found() {
        let (fs, _) = fs_with(source());
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
        let (fs, _) = fs_with(source.clone());
        source.set_failure(Some(SourceError::Denied("permission denied".into())));
        let denied = fs.lookup(ROOT_INODE, OsStr::new("db-password")).await;
        assert_eq!(denied.unwrap_err().errno(), libc_errno::EACCES);
        source.set_failure(Some(SourceError::Unavailable("503".into())));
        let down = fs.lookup(ROOT_INODE, OsStr::new("db-password")).await;
        assert_eq!(down.unwrap_err().errno(), libc_errno::EIO);
    }

    #[tokio::test]
    async fn files_are_not_directories_and_directories_have_no_content() {
        let (fs, _) = fs_with(source());
        let file = fs
            .lookup(ROOT_INODE, OsStr::new("db-password"))
            .await
            .unwrap();
        assert_eq!(file.perm, 0o444);
        assert_eq!(
            fs.lookup(file.ino, OsStr::new("x")).await,
            Err(FsError::NotADirectory)
        );
        assert_eq!(fs.read(ROOT_INODE, 0, 10), Err(FsError::IsADirectory));
        assert_eq!(fs.read(9999, 0, 10), Err(FsError::StaleHandle));
    }

    /// A filesystem whose cache and refresh pass never reuse a read older than a few milliseconds.
    fn fast_fs(source: Arc<MemorySource>) -> (SecretFs, RecordingInvalidator) {
        let cache = Arc::new(SecretCache::new(
            source,
            Duration::from_millis(1),
            Duration::from_secs(2),
        ));
        let options = FsOptions {
            refresh_interval: Duration::from_millis(2),
            ..FsOptions::default()
        };
        let fs = SecretFs::new(
            VaultPath::from_volume_name("secret/app-1").unwrap(),
            cache,
            options,
        );
        let invalidator = RecordingInvalidator::default();
        fs.set_invalidator(Box::new(invalidator.clone()));
        (fs, invalidator)
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    #[tokio::test]
    async fn a_rotated_value_gets_a_new_inode_and_the_old_one_keeps_its_content() {
        let source = source();
        let (fs, invalidated) = fast_fs(source.clone());
        let old = fs
            .lookup(ROOT_INODE, OsStr::new("db-password"))
            .await
            .unwrap();
        settle().await;
        assert_eq!(fs.refresh().await, 0, "nothing changed");
        source.put(
            "secret/app-1/db-password",
            json!({"value": "rotated-and-longer"}),
        );
        settle().await;
        assert_eq!(fs.refresh().await, 1);
        assert_eq!(
            invalidated.0.lock().unwrap().as_slice(),
            &[(ROOT_INODE, OsString::from("db-password"))]
        );
        assert_eq!(
            content(&fs, old.ino),
            "s3cr3t",
            "an open file reads its inode to the end"
        );
        let new = fs
            .lookup(ROOT_INODE, OsStr::new("db-password"))
            .await
            .unwrap();
        assert_ne!(new.ino, old.ino);
        assert_eq!(
            (content(&fs, new.ino).as_str(), new.size),
            ("rotated-and-longer", 18)
        );
        fs.forget(old.ino, 1);
        assert_eq!(fs.getattr(old.ino), Err(FsError::StaleHandle));
        assert!(fs.getattr(new.ino).is_ok());
    }

    #[tokio::test]
    async fn a_deleted_secret_is_invalidated_and_then_not_found() {
        let source = source();
        let (fs, invalidated) = fast_fs(source.clone());
        let team = fs.lookup(ROOT_INODE, OsStr::new("team")).await.unwrap();
        fs.lookup(team.ino, OsStr::new("db")).await.unwrap();
        source.remove("secret/app-1/team/db");
        settle().await;
        assert_eq!(fs.refresh().await, 1);
        assert_eq!(
            invalidated.0.lock().unwrap().as_slice(),
            &[(team.ino, OsString::from("db"))]
        );
        assert_eq!(
            fs.lookup(team.ino, OsStr::new("db")).await,
            Err(FsError::NotFound)
        );
    }

    #[tokio::test]
    async fn an_outage_during_refresh_keeps_serving_the_last_value_for_stale_ttl() {
        let source = source();
        let cache = SecretCache::new(
            source.clone(),
            Duration::from_millis(1),
            Duration::from_secs(2),
        )
        .with_stale_ttl(Duration::from_millis(300));
        let options = FsOptions {
            refresh_interval: Duration::from_millis(2),
            ..FsOptions::default()
        };
        let fs = SecretFs::new(
            VaultPath::from_volume_name("secret/app-1").unwrap(),
            Arc::new(cache),
            options,
        );
        let attr = fs.lookup(ROOT_INODE, OsStr::new("db#user")).await.unwrap();
        source.set_failure(Some(SourceError::Unavailable("sealed".into())));
        settle().await;
        assert_eq!(fs.refresh().await, 0);
        assert_eq!(content(&fs, attr.ino), "app");
        assert!(fs.getattr(attr.ino).is_ok());
        assert!(fs.health().is_stale());
        // A name the kernel forgot is still served from memory during the outage.
        assert_eq!(cat(&fs, ROOT_INODE, "db#password").await.unwrap(), "pw");
        // Past stale_ttl the names are retired and readers get EIO; never-read keys get EIO all along.
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(fs.refresh().await, 2);
        let error = fs
            .lookup(ROOT_INODE, OsStr::new("db#user"))
            .await
            .unwrap_err();
        assert_eq!(error.errno(), libc_errno::EIO);
        // Recovery needs no restart.
        source.set_failure(None);
        assert_eq!(cat(&fs, ROOT_INODE, "db#user").await.unwrap(), "app");
        settle().await;
        fs.refresh().await;
        assert!(!fs.health().is_stale());
    }

    #[tokio::test]
    async fn views_of_one_secret_are_refreshed_with_one_source_read() {
        let source = source();
        let (fs, _) = fast_fs(source.clone());
        for name in ["db", "db#user", "db#password", "db#"] {
            fs.lookup(ROOT_INODE, OsStr::new(name)).await.unwrap();
        }
        let reads = source.reads();
        settle().await;
        fs.refresh().await;
        assert_eq!(source.reads(), reads + 1);
    }

    #[tokio::test]
    async fn forgotten_inodes_are_dropped_but_root_stays() {
        let (fs, _) = fs_with(source());
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
