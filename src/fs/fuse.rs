//! The FUSE adapter: translates kernel requests to [`SecretFs`] calls. Operations that may ask Vault run as tokio
//! tasks, so a slow Vault never blocks the FUSE thread; everything answered from memory replies inline.
//!
//! The fast path: open and flush answer ENOSYS, after which the kernel stops sending them; with long entry and
//! attribute lifetimes and the page cache kept, a cached secret is opened, read and closed without a single round
//! trip to this process. Changes reach the kernel as entry invalidations from the refresh pass.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, Notifier, OpenAccMode, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyWrite, Request, SessionACL, TimeOrNow, WriteFlags,
};

use crate::fs::audit::Requester;
use crate::fs::{FsError, Invalidator, NodeAttr, NodeKind, SecretFs, ROOT_INODE};

struct FuseAdapter {
    fs: Arc<SecretFs>,
    runtime: tokio::runtime::Handle,
    /// Every open reaches the driver and is audited (`audit_every_open`), instead of the ENOSYS fast path.
    audit_every_open: bool,
}

fn requester(req: &Request) -> Requester {
    Requester {
        pid: req.pid(),
        uid: req.uid(),
    }
}

fn errno(error: &FsError) -> Errno {
    Errno::from_i32(error.errno())
}

fn file_attr(attr: &NodeAttr) -> FileAttr {
    let (kind, nlink) = match attr.kind {
        NodeKind::Directory => (FileType::Directory, 2),
        NodeKind::File => (FileType::RegularFile, 1),
    };
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind,
        perm: attr.perm,
        nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl FuseAdapter {
    fn ttl(&self) -> Duration {
        self.fs.options().attr_ttl
    }
}

impl Filesystem for FuseAdapter {
    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let fs = self.fs.clone();
        let ttl = self.ttl();
        let name = name.to_owned();
        let requester = requester(req);
        self.runtime.spawn(async move {
            match fs.lookup_audited(parent.0, &name, requester).await {
                Ok(attr) => reply.entry(&ttl, &file_attr(&attr), Generation(0)),
                Err(error) => reply.error(errno(&error)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(attr) => reply.attr(&self.ttl(), &file_attr(&attr)),
            Err(error) => reply.error(errno(&error)),
        }
    }

    /// ENOSYS: the kernel then opens files without asking (the mount is read-only, so writes fail with EROFS
    /// before they get here), keeps their pages cached, and never sends open or release again. With
    /// `audit_every_open`, each open is answered (keeping the page cache) and audited instead.
    fn open(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if !self.audit_every_open {
            return reply.error(Errno::ENOSYS);
        }
        match self.fs.getattr(ino.0) {
            Ok(attr) if attr.kind == NodeKind::File => {
                self.fs.audit_read(ino.0, requester(req));
                reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE)
            }
            Ok(_) => reply.error(errno(&FsError::IsADirectory)),
            Err(error) => reply.error(errno(&error)),
        }
    }

    /// Reads an inode's content, which never changes (a changed secret gets a new inode).
    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // Reads fill the page cache; later readers are served by the kernel. Each open that reaches the driver is
        // audited once, at whatever offset it reads first (with audit_every_open, the open itself was audited).
        let read = if self.audit_every_open {
            self.fs.read(ino.0, offset, size)
        } else {
            self.fs.read_audited(ino.0, offset, size, requester(req))
        };
        match read {
            Ok(bytes) => reply.data(&bytes),
            Err(error) => reply.error(errno(&error)),
        }
    }

    /// ENOSYS: nothing to flush on a read-only filesystem, and the kernel stops sending flush on close.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(errno(&FsError::ReadOnly));
        }
        match self.fs.getattr(ino.0) {
            Ok(attr) if attr.kind == NodeKind::Directory => {
                reply.opened(FileHandle(0), FopenFlags::empty())
            }
            Ok(_) => reply.error(errno(&FsError::NotADirectory)),
            Err(error) => reply.error(errno(&error)),
        }
    }

    /// Lists only `.` and `..`: secret names are reachable by exact name, never by listing.
    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = [(ino, "."), (INodeNo(ROOT_INODE), "..")];
        for (index, (entry_ino, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*entry_ino, (index + 1) as u64, FileType::Directory, name) {
                break;
            }
        }
        reply.ok();
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }
}

/// Pushes entry invalidations to the kernel.
struct KernelInvalidator(Notifier);

impl Invalidator for KernelInvalidator {
    fn invalidate_entry(&self, parent: u64, name: &OsStr) {
        // ENOENT: the kernel had already dropped the entry.
        if let Err(error) = self.0.inval_entry(INodeNo(parent), name) {
            if error.raw_os_error() != Some(nix::libc::ENOENT) {
                tracing::warn!(%error, "kernel entry invalidation failed");
            }
        }
    }
}

/// A live FUSE mount with its refresh pass; dropping it unmounts.
pub struct FuseMount {
    session: Option<BackgroundSession>,
    refresh: tokio::task::JoinHandle<()>,
    mountpoint: PathBuf,
}

impl std::fmt::Debug for FuseMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseMount")
            .field("mountpoint", &self.mountpoint)
            .finish_non_exhaustive()
    }
}

impl FuseMount {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and waits for the FUSE thread to finish.
    pub fn unmount(mut self) -> std::io::Result<()> {
        self.refresh.abort();
        match self.session.take() {
            Some(session) => session.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        self.refresh.abort();
        if let Some(session) = self.session.take() {
            if let Err(error) = session.umount_and_join() {
                tracing::warn!(mountpoint = %self.mountpoint.display(), %error, "unmount failed");
            }
        }
    }
}

/// Mounts `fs` read-only at `mountpoint`, visible to every user (containers run as any uid).
pub fn mount(
    fs: Arc<SecretFs>,
    mountpoint: &Path,
    fs_name: &str,
    runtime: tokio::runtime::Handle,
) -> std::io::Result<FuseMount> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(fs_name.to_owned()),
        MountOption::Subtype("libsecret".to_owned()),
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoExec,
        MountOption::NoAtime,
        MountOption::DefaultPermissions,
    ];
    config.acl = SessionACL::All;
    let adapter = FuseAdapter {
        fs: fs.clone(),
        runtime: runtime.clone(),
        audit_every_open: fs.options().audit_every_open,
    };
    let session = fuser::spawn_mount(adapter, mountpoint, &config)?;
    fs.set_invalidator(Box::new(KernelInvalidator(session.notifier())));
    let refresh = fs.spawn_refresh(&runtime);
    Ok(FuseMount {
        session: Some(session),
        refresh,
        mountpoint: mountpoint.to_owned(),
    })
}
