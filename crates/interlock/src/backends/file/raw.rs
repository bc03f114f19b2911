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
    /// Permission bits our read-write files (fencing counters, semaphore metadata) must have so
    /// that everyone who can create files in the directory can also use them (see [`open_in_dir`]).
    share: u32,
}

impl FileProvider {
    pub(crate) fn new(config: FileConfig) -> Self {
        let dir_mode =
            std::fs::metadata(&config.dir).map_or(0o700, |m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
        FileProvider { dir: config.dir, share: share_mode(dir_mode) }
    }

    async fn acquire_inner(&self, req: Request, wait: Wait) -> Result<Option<Arc<dyn RawHeld>>> {
        // `connect` only validates the directory; the first acquisition creates it (config.rs).
        super::config::prepare_dir(&self.dir)?;
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
        // Exclusive holders of the lock file are alone, so its counter needs no lock of its own;
        // permit holders of one semaphore bump theirs concurrently, so that one is locked.
        let token = fence::next(&self.dir.join(fence_file), bump, meta.is_some(), self.share).await?;
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
            let (meta, meta_id) = join_semaphore(&meta_path, name, permits, self.share).await?;
            // Permit files are opened as they are tried: an uncontended acquisition opens one, not
            // all of them. A waiter ends up with all open, to watch them.
            let mut permit_files: Vec<Option<(PathBuf, File, FileId)>> = (0..permits).map(|_| None).collect();
            let mut waiter: Option<Waiter> = None;
            // Spread contenders over the permits instead of all trying permit 0 first.
            let start = std::process::id().wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % permits;
            loop {
                let seen = waiter.as_mut().map(Waiter::mark);
                for k in 0..permits {
                    let i = (start + k) % permits;
                    let slot = &mut permit_files[i as usize];
                    if slot.is_none() {
                        let path = self.dir.join(mapping::permit_name(sem, i));
                        let (file, id) = open_in_dir(&path, None)
                            .map_err(|e| Error::io(format!("lock file {}", path.display()), e))?;
                        *slot = Some((path, file, id));
                    }
                    let Some((path, file, id)) = slot.take() else { continue };
                    if !try_flock(&file, false, &path)? {
                        *slot = Some((path, file, id));
                        continue;
                    }
                    let locked = LockedFile(file);
                    if path_is(&path, id)? && path_is(&meta_path, meta_id)? {
                        return Ok(Some((locked, meta)));
                    }
                    continue 'open;
                }
                if try_only {
                    return Ok(None);
                }
                match (waiter.as_mut(), seen) {
                    (Some(w), Some(seen)) => {
                        w.wait(seen).await;
                    }
                    _ => {
                        let files = permit_files.iter().flatten().map(|(p, f, id)| (p.as_path(), f, *id));
                        waiter = Some(Waiter::new(files));
                    }
                }
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

/// Waits for an event on any of the watched files, or for the bounded re-check.
struct Waiter {
    sub: Option<Subscription>,
    woke_by_event: bool,
}

impl Waiter {
    /// Subscribes to events on `files`. Called only after a first attempt failed, so an
    /// uncontended acquisition costs no inotify calls; the caller retries once before waiting, so
    /// a release between the failed attempt and the subscription is not missed.
    fn new<'a>(files: impl IntoIterator<Item = (&'a Path, &'a File, FileId)>) -> Waiter {
        let sub = watch::watcher().and_then(|w| {
            let mut sub = Subscription::new(w);
            for (path, file, id) in files {
                if let Err(e) = sub.add(file, path, id) {
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

    /// Waits; returns true when the path may name another file now (an event that could mean a
    /// delete or rename, or a re-check without an event, after which nothing is known).
    async fn wait(&mut self, seen: u64) -> bool {
        let delay = match (&self.sub, self.woke_by_event) {
            (None, _) => watch::DEGRADED_RECHECK,
            (Some(_), true) => watch::QUICK_RECHECK,
            (Some(_), false) => watch::RECHECK,
        };
        let woke = match self.sub.as_mut() {
            Some(sub) => tokio::time::timeout(delay, sub.changed(seen)).await.ok(),
            None => tokio::time::timeout(delay, std::future::pending::<bool>()).await.ok(),
        };
        self.woke_by_event = woke.is_some();
        woke.unwrap_or(true)
    }
}

/// Takes `path` shared or exclusive; `Ok(None)` on contention when `try_only`.
async fn lock_file(path: &Path, shared: bool, try_only: bool) -> Result<Option<LockedFile>> {
    loop {
        let (file, id) = open_in_dir(path, None).map_err(|e| Error::io(format!("lock file {}", path.display()), e))?;
        match lock_open_file(&file, path, id, shared, try_only, true).await? {
            Attempt::Busy => return Ok(None),
            Attempt::Replaced => continue,
            Attempt::Locked => {
                let locked = LockedFile(file);
                // Someone may have deleted or replaced the lock file between our open and our
                // lock; a lock on an unlinked inode excludes nobody, so start over.
                if path_is(path, id)? {
                    return Ok(Some(locked));
                }
            }
        }
    }
}

/// What [`lock_open_file`] achieved.
pub(crate) enum Attempt {
    Locked,
    Busy,
    /// `path` no longer names the file we opened: reopen it.
    Replaced,
}

/// Locks the open file `id` (at `path`) shared or exclusive: one attempt (`try_only`), or waiting
/// for events on it (with the bounded re-checks of [`Waiter`]). With `follow`, gives up as soon as
/// `path` names another file (checked after the first failed attempt, and after any wake that may
/// mean a replacement). Cancel-safe: dropping the future leaves the file unlocked.
pub(crate) async fn lock_open_file(
    file: &File,
    path: &Path,
    id: FileId,
    shared: bool,
    try_only: bool,
    follow: bool,
) -> Result<Attempt> {
    let mut waiter: Option<Waiter> = None;
    let mut check_path = follow;
    loop {
        let seen = waiter.as_mut().map(Waiter::mark);
        if try_flock(file, shared, path)? {
            return Ok(Attempt::Locked);
        }
        if try_only {
            return Ok(Attempt::Busy);
        }
        if check_path && !path_is(path, id)? {
            return Ok(Attempt::Replaced);
        }
        match (waiter.as_mut(), seen) {
            (Some(w), Some(seen)) => check_path = w.wait(seen).await && follow,
            _ => waiter = Some(Waiter::new([(path, file, id)])),
        }
    }
}

/// Joins a semaphore: a shared lock on its metadata file, whose content is the permits count.
/// The first member (the only one that can get the lock exclusively) writes the count; everyone
/// checks it.
async fn join_semaphore(meta_path: &Path, name: &LockName, permits: u32, share: u32) -> Result<(LockedFile, FileId)> {
    let ctx = || format!("semaphore file {}", meta_path.display());
    for _ in 0..100 {
        let (file, id) = open_in_dir(meta_path, Some(share)).map_err(|e| Error::io(ctx(), e))?;
        let meta = LockedFile(file);
        if try_flock(&meta.0, false, meta_path)? {
            meta.0.set_len(0).map_err(|e| Error::io(ctx(), e))?;
            meta.0.write_all_at(format!("{permits}\n").as_bytes(), 0).map_err(|e| Error::io(ctx(), e))?;
        }
        // Converting exclusive to shared, or waiting out another member's brief exclusive write
        // (it modifies the file, which wakes us).
        lock_open_file(&meta.0, meta_path, id, true, false, false).await?;
        let mut buf = [0u8; 32];
        let n = meta.0.read_at(&mut buf, 0).map_err(|e| Error::io(ctx(), e))?;
        match std::str::from_utf8(&buf[..n]).ok().and_then(|t| t.trim().parse::<u32>().ok()) {
            Some(p) if p == permits => return Ok((meta, id)),
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

/// Which file an open descriptor is: `(device, inode)`.
pub(crate) type FileId = (u64, u64);

/// The permission bits a read-write file needs in a directory of mode `dir_mode`: read-write for
/// the owner, and for group and others too where the directory lets them create files (a lock
/// directory shared between users on purpose). A private 0700 directory gives 0600.
pub(crate) fn share_mode(dir_mode: u32) -> u32 {
    let mut mode = 0o600;
    if dir_mode & 0o020 != 0 {
        mode |= 0o060;
    }
    if dir_mode & 0o002 != 0 {
        mode |= 0o006;
    }
    mode
}

/// Opens (creating if needed, mode 0666 less the umask, like `flock(1)`) a file in the lock
/// directory: read-only for lock files (`flock` needs no more), read-write for our own counter and
/// metadata files with `Some(share)`, in which case a file we own gets at least the `share` bits
/// (see [`share_mode`]) so that other users of a shared directory can update it too. Never follows
/// a symlink, never blocks on a FIFO, refuses anything but a regular file.
pub(crate) fn open_in_dir(path: &Path, write: Option<u32>) -> io::Result<(File, FileId)> {
    let access = if write.is_some() { OFlags::RDWR } else { OFlags::RDONLY };
    let flags = access | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    let mode = Mode::from_raw_mode(0o666);
    // Our read-write files are read and written on every acquisition: spare the filesystem an
    // atime update each time where we may (O_NOATIME needs ownership: EPERM otherwise).
    let opened = match write {
        Some(_) => match rustix::fs::open(path, flags | OFlags::NOATIME, mode) {
            Err(rustix::io::Errno::PERM) => rustix::fs::open(path, flags, mode),
            other => other,
        },
        None => rustix::fs::open(path, flags, mode),
    };
    let fd: OwnedFd = match opened {
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
    if let Some(share) = write {
        let mode = st.st_mode & 0o7777;
        if mode & share != share && st.st_uid == rustix::process::geteuid().as_raw() {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode | share))?;
        }
    }
    Ok((File::from(fd), (st.st_dev, st.st_ino)))
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

/// True when `path` still names the file `id` (the inode we opened and locked).
fn path_is(path: &Path, id: FileId) -> Result<bool> {
    match rustix::fs::lstat(path) {
        Ok(st) => Ok((st.st_dev, st.st_ino) == id),
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(Error::io(format!("stat {}", path.display()), e.into())),
    }
}
