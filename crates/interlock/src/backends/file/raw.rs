//! `flock(2)` locks: one open file description per guard, so threads and tasks of one process
//! exclude each other exactly as processes do.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use rustix::fs::{FlockOperation, Mode, OFlags};

use super::config::FileConfig;
use super::watch::{self, Subscription};
use super::{fence, mapping, status};
use crate::error::{Error, Result};
use crate::name::LockName;
use crate::raw::{BoxFuture, Capabilities, LockKind, LockStatus, RawHeld, RawProvider, Request, Wait};

pub(crate) const BACKEND: &str = "file";

/// Most permits a file semaphore may have (one file each).
pub(crate) const MAX_PERMITS: u32 = 1024;

/// The `file://` backend.
#[derive(Debug)]
pub(crate) struct FileProvider {
    dir: PathBuf,
}

impl FileProvider {
    pub(crate) fn new(config: FileConfig) -> Self {
        FileProvider { dir: config.dir }
    }

    async fn acquire_inner(&self, req: Request, wait: Wait) -> Result<Option<Arc<dyn RawHeld>>> {
        let base = mapping::file_name(req.name.as_str());
        let try_only = wait == Wait::Try;
        let (file, meta, fence_file, bump) = match req.kind {
            LockKind::Semaphore { permits } => {
                let sem = mapping::semaphore_name(&base);
                match self.lock_semaphore(&req.name, &sem, permits, try_only).await? {
                    None => return Ok(None),
                    Some((permit, meta)) => (permit, Some(meta), mapping::fence_name(&sem), true),
                }
            }
            kind => {
                let shared = kind == LockKind::Read;
                match lock_file(&self.dir.join(&base), shared, try_only).await? {
                    None => return Ok(None),
                    Some(file) => (file, None, mapping::fence_name(&base), !shared),
                }
            }
        };
        // On error the files drop here, which unlocks them.
        let token = fence::next(&self.dir.join(fence_file), bump)?;
        Ok(Some(Arc::new(FileHeld { files: StdMutex::new(Some((file, meta))), token })))
    }

    /// Joins the semaphore (shared lock on its metadata file, which records the permits count),
    /// then takes one permit file exclusively.
    async fn lock_semaphore(
        &self,
        name: &LockName,
        sem: &str,
        permits: u32,
        try_only: bool,
    ) -> Result<Option<(LockedFile, LockedFile)>> {
        if permits > MAX_PERMITS {
            return Err(Error::InvalidArgument(format!(
                "the file backend supports at most {MAX_PERMITS} permits per semaphore (asked for {permits})"
            )));
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let meta_path = self.dir.join(sem);
        'open: loop {
            let meta = join_semaphore(&meta_path, name, permits)?;
            let mut permit_files = Vec::with_capacity(permits as usize);
            for i in 0..permits {
                let path = self.dir.join(mapping::permit_name(sem, i));
                let file =
                    open_in_dir(&path, false).map_err(|e| Error::io(format!("lock file {}", path.display()), e))?;
                permit_files.push((path, file));
            }
            let mut waiter = (!try_only).then(|| Waiter::new(&permit_files));
            // Spread contenders over the permits instead of all trying permit 0 first.
            let start = std::process::id().wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % permits;
            loop {
                let seen = waiter.as_mut().map(Waiter::mark);
                for k in 0..permits {
                    let i = ((start + k) % permits) as usize;
                    let (path, file) = &permit_files[i];
                    if try_flock(file, false, path)? {
                        let (path, file) = permit_files.swap_remove(i);
                        let locked = LockedFile(file);
                        if same_inode(&locked.0, &path)? && same_inode(&meta.0, &meta_path)? {
                            return Ok(Some((locked, meta)));
                        }
                        continue 'open;
                    }
                }
                let (Some(w), Some(seen)) = (waiter.as_mut(), seen) else { return Ok(None) };
                w.wait(seen).await;
            }
        }
    }
}

impl RawProvider for FileProvider {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(true, false, true)
    }

    fn acquire(&self, request: Request, wait: Wait) -> BoxFuture<'_, Result<Option<Arc<dyn RawHeld>>>> {
        Box::pin(self.acquire_inner(request, wait))
    }

    fn status<'a>(&'a self, name: &'a LockName) -> BoxFuture<'a, Result<LockStatus>> {
        Box::pin(async move { status::status(&self.dir, name) })
    }
}

/// A locked file; unlocks explicitly before closing, so that the close event that wakes waiters
/// always comes after the release.
#[derive(Debug)]
pub(crate) struct LockedFile(File);

impl Drop for LockedFile {
    fn drop(&mut self) {
        let _ = rustix::fs::flock(&self.0, FlockOperation::Unlock);
    }
}

#[derive(Debug)]
struct FileHeld {
    /// The lock (or permit) file and, for semaphores, the metadata file; `None` once released.
    files: StdMutex<Option<(LockedFile, Option<LockedFile>)>>,
    token: u64,
}

impl FileHeld {
    fn release_now(&self) {
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner()).take();
        // Permit first, then the semaphore membership.
        if let Some((file, meta)) = files {
            drop(file);
            drop(meta);
        }
    }
}

impl RawHeld for FileHeld {
    fn fencing_token(&self) -> Option<u64> {
        Some(self.token)
    }

    fn release(&self) -> BoxFuture<'_, Result<bool>> {
        self.release_now();
        // A file lock cannot be lost while we hold the descriptor.
        Box::pin(async { Ok(true) })
    }

    fn release_on_drop(self: Arc<Self>) {
        self.release_now();
    }
}

/// Waits for a close event on any of the watched files, or for the bounded re-check.
struct Waiter {
    sub: Option<Subscription>,
    woke_by_event: bool,
}

impl Waiter {
    fn new(files: &[(PathBuf, File)]) -> Waiter {
        let sub = watch::watcher().and_then(|w| {
            let mut sub = Subscription::new(w);
            for (path, file) in files {
                if let Err(e) = sub.add(file, path) {
                    tracing::warn!(error = %e, path = %path.display(), "cannot watch lock file; re-checking instead");
                    return None;
                }
            }
            Some(sub)
        });
        Waiter { sub, woke_by_event: false }
    }

    fn mark(&mut self) -> u64 {
        self.sub.as_mut().map_or(0, Subscription::mark)
    }

    async fn wait(&mut self, seen: u64) {
        let delay = match (&self.sub, self.woke_by_event) {
            (None, _) => watch::DEGRADED_RECHECK,
            (Some(_), true) => watch::QUICK_RECHECK,
            (Some(_), false) => watch::RECHECK,
        };
        self.woke_by_event = match self.sub.as_mut() {
            Some(sub) => tokio::time::timeout(delay, sub.changed(seen)).await.is_ok(),
            None => tokio::time::timeout(delay, std::future::pending::<()>()).await.is_ok(),
        };
    }
}

/// Takes `path` shared or exclusive; `Ok(None)` on contention when `try_only`.
async fn lock_file(path: &Path, shared: bool, try_only: bool) -> Result<Option<LockedFile>> {
    'open: loop {
        let file = open_in_dir(path, false).map_err(|e| Error::io(format!("lock file {}", path.display()), e))?;
        let files = [(path.to_path_buf(), file)];
        let mut waiter = (!try_only).then(|| Waiter::new(&files));
        let [(_, file)] = files;
        loop {
            let seen = waiter.as_mut().map(Waiter::mark);
            if try_flock(&file, shared, path)? {
                let locked = LockedFile(file);
                // Someone may have deleted or replaced the lock file between our open and our
                // lock; a lock on an unlinked inode excludes nobody, so start over.
                if same_inode(&locked.0, path)? {
                    return Ok(Some(locked));
                }
                continue 'open;
            }
            let (Some(w), Some(seen)) = (waiter.as_mut(), seen) else { return Ok(None) };
            if !same_inode(&file, path)? {
                continue 'open;
            }
            w.wait(seen).await;
        }
    }
}

/// Joins a semaphore: a shared lock on its metadata file, whose content is the permits count.
/// The first member (the only one that can get the lock exclusively) writes the count; everyone
/// checks it.
fn join_semaphore(meta_path: &Path, name: &LockName, permits: u32) -> Result<LockedFile> {
    let ctx = || format!("semaphore file {}", meta_path.display());
    for _ in 0..100 {
        let meta = LockedFile(open_in_dir(meta_path, true).map_err(|e| Error::io(ctx(), e))?);
        if try_flock(&meta.0, false, meta_path)? {
            meta.0.set_len(0).map_err(|e| Error::io(ctx(), e))?;
            meta.0.write_all_at(format!("{permits}\n").as_bytes(), 0).map_err(|e| Error::io(ctx(), e))?;
        }
        // Converting exclusive to shared, or waiting out another member's brief exclusive write.
        rustix::fs::flock(&meta.0, FlockOperation::LockShared).map_err(|e| Error::io(ctx(), e.into()))?;
        let mut buf = [0u8; 32];
        let n = meta.0.read_at(&mut buf, 0).map_err(|e| Error::io(ctx(), e))?;
        match std::str::from_utf8(&buf[..n]).ok().and_then(|t| t.trim().parse::<u32>().ok()) {
            Some(p) if p == permits => return Ok(meta),
            Some(existing) => {
                return Err(Error::PermitsMismatch { name: name.display(), existing, requested: permits });
            }
            // Created but not written yet (its writer died or is between steps): try again.
            None => continue,
        }
    }
    Err(Error::Backend {
        backend: BACKEND,
        message: format!("{} never got a permits count", meta_path.display()),
        source: None,
    })
}

/// Opens (creating if needed, mode 0666 less the umask, like `flock(1)`) a file in the lock
/// directory. Never follows a symlink, never blocks on a FIFO, refuses anything but a regular file.
pub(crate) fn open_in_dir(path: &Path, write: bool) -> io::Result<File> {
    let access = if write { OFlags::RDWR } else { OFlags::RDONLY };
    let flags = access | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    let fd: OwnedFd = match rustix::fs::open(path, flags, Mode::from_raw_mode(0o666)) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => {
            return Err(io::Error::other(format!("{} is a symbolic link; refusing to follow it", path.display())));
        }
        Err(e) => return Err(e.into()),
    };
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(io::Error::other(format!("{} is not a regular file", path.display())));
    }
    Ok(File::from(fd))
}

/// Lock attempts (non-blocking `flock` calls on lock and permit files) made by this process.
pub(crate) static ATTEMPTS: AtomicU64 = AtomicU64::new(0);

/// One non-blocking `flock` attempt: `Ok(true)` when taken, `Ok(false)` when held elsewhere.
fn try_flock(file: &File, shared: bool, path: &Path) -> Result<bool> {
    ATTEMPTS.fetch_add(1, Ordering::Relaxed);
    let op = if shared { FlockOperation::NonBlockingLockShared } else { FlockOperation::NonBlockingLockExclusive };
    loop {
        match rustix::fs::flock(file.as_fd(), op) {
            Ok(()) => return Ok(true),
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(false),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Error::io(format!("flock {}", path.display()), e.into())),
        }
    }
}

/// True when `path` still names the inode `file` has open.
fn same_inode(file: &File, path: &Path) -> Result<bool> {
    let ours = rustix::fs::fstat(file).map_err(|e| Error::io(format!("stat {}", path.display()), e.into()))?;
    match rustix::fs::lstat(path) {
        Ok(theirs) => Ok(ours.st_dev == theirs.st_dev && ours.st_ino == theirs.st_ino),
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(Error::io(format!("stat {}", path.display()), e.into())),
    }
}
