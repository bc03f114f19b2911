//! `flock(2)` locks: one open file description per guard, so threads and tasks of one process
//! exclude each other exactly as processes do.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use rustix::fs::{FlockOperation, Mode, OFlags};

use super::clofork::Fd;
use super::config::FileConfig;
use super::fdcache::{self, Cache};
use super::watch::{self, Subscription};
use super::{blocker, fence, mapping, status};
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
        // For the descriptor cache (a system call: asked once per acquisition).
        let pid = std::process::id();
        // Lock files' and fencing counters' descriptors kept open between guards, shared by
        // every provider of the process.
        let cache = fdcache::shared(pid);
        let (file, meta, fence_file, bump, keep) = match req.kind {
            LockKind::Semaphore { permits } => {
                let sem = mapping::semaphore_name(&base);
                match self.lock_semaphore(&req.name, &sem, permits, try_only).await? {
                    None => return Ok(None),
                    Some((permit, meta)) => (permit, Some(meta), mapping::fence_name(&sem), true, None),
                }
            }
            kind => {
                let shared = kind == LockKind::Read;
                let path = self.dir.join(&base);
                match lock_file(&path, shared, wait, cache).await? {
                    None => return Ok(None),
                    Some((file, id)) => {
                        let keep = Keep { path, id };
                        (file, None, mapping::fence_name(&base), !shared, Some(keep))
                    }
                }
            }
        };
        // On error (or contention on the semaphore's counter) the files drop here, which unlocks
        // them. Exclusive holders of the lock file are alone, so its counter needs no lock of its
        // own; permit holders of one semaphore bump theirs concurrently, so that one is locked.
        let fence_path = self.dir.join(fence_file);
        let token = if !bump {
            fence::current(&fence_path, cache)?
        } else {
            let lock = if meta.is_some() { fence::Lock::Own { try_only } } else { fence::Lock::Held };
            match fence::bump(&fence_path, self.share, lock, cache).await? {
                Some(token) => token,
                None => return Ok(None),
            }
        };
        let held =
            FileHeld { files: StdMutex::new(Some((file, meta))), token, pid, keep, exported: AtomicBool::new(false) };
        Ok(Some(Arc::new(held)))
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
            let Some((meta, meta_id)) = join_semaphore(&meta_path, name, permits, self.share, try_only).await? else {
                return Ok(None);
            };
            // Permit files are opened as they are tried: an uncontended acquisition opens one, not
            // all of them. A waiter ends up with all open, to watch them.
            let mut permit_files: Vec<Option<(PathBuf, Fd, FileId)>> = (0..permits).map(|_| None).collect();
            // Permit files we may not open (another user's, without read access for us): skipped,
            // an error only if that is every permit.
            let mut denied: Vec<Option<io::Error>> = (0..permits).map(|_| None).collect();
            let mut waiter: Option<Waiter> = None;
            // Spread contenders over the permits instead of all trying permit 0 first.
            let start = std::process::id().wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % permits;
            loop {
                let seen = waiter.as_mut().map(Waiter::mark);
                for k in 0..permits {
                    let i = (start + k) % permits;
                    let slot = &mut permit_files[i as usize];
                    if denied[i as usize].is_some() {
                        continue;
                    }
                    if slot.is_none() {
                        let path = self.dir.join(mapping::permit_name(sem, i));
                        match open_in_dir(&path, Access::Permit { share: self.share }) {
                            Ok((file, id)) => *slot = Some((path, file, id)),
                            Err(e) if is_denied(&e) => {
                                denied[i as usize] = Some(e);
                                continue;
                            }
                            Err(e) => return Err(Error::io(format!("lock file {}", path.display()), e)),
                        }
                    }
                    let Some((path, file, id)) = slot.take() else { continue };
                    if !try_flock(&file, false, &path)? {
                        *slot = Some((path, file, id));
                        continue;
                    }
                    let locked = LockedFile::new(file);
                    if path_is(&path, id)? && path_is(&meta_path, meta_id)? {
                        return Ok(Some((locked, meta)));
                    }
                    continue 'open;
                }
                if denied.iter().all(Option::is_some) {
                    let path = self.dir.join(mapping::permit_name(sem, start));
                    let e = denied[start as usize].take().unwrap_or_else(|| io::ErrorKind::PermissionDenied.into());
                    return Err(Error::io(format!("lock file {} (and every other permit)", path.display()), e));
                }
                if try_only {
                    return Ok(None);
                }
                match (waiter.as_mut(), seen) {
                    (Some(w), Some(seen)) => {
                        w.wait(seen).await;
                    }
                    _ => {
                        let files = permit_files.iter().flatten().map(|(p, f, id)| (p.as_path(), &**f, *id));
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
/// always comes after the release. In a forked child it neither unlocks nor closes: the fork
/// handler closed the child's copy (see [`super::clofork`]), and the lock is the parent's.
#[derive(Debug)]
pub(crate) struct LockedFile(Option<Fd>);

impl Drop for LockedFile {
    fn drop(&mut self) {
        if let Some(file) = &self.0
            && file.is_ours()
        {
            let _ = rustix::fs::flock(file, FlockOperation::Unlock);
        }
    }
}

impl LockedFile {
    pub(crate) fn new(file: Fd) -> Self {
        LockedFile(Some(file))
    }

    fn file(&self) -> &File {
        match &self.0 {
            Some(file) => file,
            // Only the methods below take the file out, and they consume `self`.
            None => unreachable!("a LockedFile always holds its file until it is consumed"),
        }
    }

    /// Unlocks the file and returns it, open, for reuse.
    fn into_unlocked(mut self) -> Option<Fd> {
        let file = self.0.take()?;
        rustix::fs::flock(&file, FlockOperation::Unlock).ok()?;
        Some(file)
    }

    /// Closes this process's descriptor WITHOUT unlocking: in a forked child, whose descriptor
    /// shares the open file description (and so the lock) with its parent's. The lock stays
    /// with the parent's descriptor. (A child made by `fork()` had its copy closed by the fork
    /// handler already: then this only forgets it.)
    fn close_without_unlock(mut self) {
        drop(self.0.take());
    }
}

/// Where a released lock file's descriptor goes for reuse by the next guard of the process.
#[derive(Debug)]
struct Keep {
    path: PathBuf,
    id: FileId,
}

#[derive(Debug)]
struct FileHeld {
    /// The lock (or permit) file and, for semaphores, the metadata file; `None` once released.
    files: StdMutex<Option<(LockedFile, Option<LockedFile>)>>,
    token: u64,
    /// The process that acquired the lock: a forked child that releases a guard it inherited
    /// closes its copies of the descriptors and never unlocks its parent's lock.
    pid: u32,
    /// Lock files (not semaphore files) go back to the process's cache once unlocked.
    keep: Option<Keep>,
    /// Set once the descriptors were handed out ([`RawHeld::duplicate_fds`]): another process
    /// may still hold a descriptor of this open file description, so it is never reused.
    exported: AtomicBool,
}

impl FileHeld {
    fn release_now(&self) {
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some((file, meta)) = files else { return };
        let pid = std::process::id();
        if pid != self.pid {
            file.close_without_unlock();
            if let Some(meta) = meta {
                meta.close_without_unlock();
            }
            return;
        }
        // Permit first, then the semaphore membership.
        match &self.keep {
            Some(keep) if !self.exported.load(Ordering::Relaxed) => {
                if let Some(unlocked) = file.into_unlocked() {
                    fdcache::shared(pid).put(&keep.path, unlocked, keep.id);
                }
            }
            _ => drop(file),
        }
        drop(meta);
    }
}

impl Drop for FileHeld {
    fn drop(&mut self) {
        self.release_now();
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

    fn forget_after_fork(&self) {
        // `try_lock`: a thread of the parent may have held the mutex at the fork, and it is not
        // here to unlock it; then the descriptors stay open (the lock is still never unlocked).
        let files = match self.files.try_lock() {
            Ok(mut files) => files.take(),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().take(),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        if let Some((file, meta)) = files {
            file.close_without_unlock();
            if let Some(meta) = meta {
                meta.close_without_unlock();
            }
        }
    }

    fn duplicate_fds(&self) -> io::Result<Vec<OwnedFd>> {
        self.exported.store(true, Ordering::Relaxed);
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let Some((file, meta)) = files.as_ref() else { return Ok(Vec::new()) };
        // `try_clone` dups with close-on-exec set: the caller decides which child inherits them.
        std::iter::once(file).chain(meta).map(|f| f.file().try_clone().map(OwnedFd::from)).collect()
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

/// Takes `path` shared or exclusive; `Ok(None)` on contention when `wait` is [`Wait::Try`].
/// Starts with the descriptor `cache` keeps for `path`.
/// Waits in the kernel (see [`blocker`]): on the caller's own thread when it may block and waits
/// forever (the blocking facade), else on a pool thread; with inotify past the pool's bound.
async fn lock_file(path: &Path, shared: bool, wait: Wait, cache: &Cache) -> Result<Option<(LockedFile, FileId)>> {
    // The descriptor to try first: one kept from an earlier guard of this process (its open
    // file description is ours alone, taken out of the cache; the checks below are the same as
    // for a new one), or the one a wait that comes back from the inotify fallback holds.
    let mut next = cache.take(path);
    loop {
        let from_cache = next.is_some();
        let (file, id) = match next.take() {
            Some(next) => next,
            None => {
                open_in_dir(path, Access::Lock).map_err(|e| Error::io(format!("lock file {}", path.display()), e))?
            }
        };
        let locked = if try_flock(&file, shared, path)? {
            LockedFile::new(file)
        } else if wait == Wait::Try {
            // A kept descriptor goes back for the next attempt; a new one is closed: only guards
            // that held a lock leave a descriptor behind.
            if from_cache {
                cache.put(path, file, id);
            }
            return Ok(None);
        } else if !path_is(path, id)? {
            continue;
        } else if wait == Wait::Until(None) && crate::blocking::caller_may_block() {
            blocker::lock_here(&file, shared).map_err(|e| Error::io(format!("flock {}", path.display()), e))?;
            LockedFile::new(file)
        } else {
            match blocker::submit(file, id, shared) {
                Ok(pending) => match wait_in_kernel(pending, path, id).await? {
                    Some(locked) => locked,
                    None => continue,
                },
                // The pool is full: wait with inotify until it has room again.
                Err(file) => match lock_open_file(&file, path, id, shared, false, true, true).await? {
                    Attempt::Locked => LockedFile::new(file),
                    Attempt::Room => {
                        next = Some((file, id));
                        continue;
                    }
                    Attempt::Replaced | Attempt::Busy => continue,
                },
            }
        };
        // Someone may have deleted or replaced the lock file between our open and our lock; a
        // lock on an unlinked inode excludes nobody, so start over.
        if path_is(path, id)? {
            return Ok(Some((locked, id)));
        }
    }
}

/// How often a waiter blocked in the kernel checks that the path still names the file it waits
/// for (a lock file deleted or replaced while a holder keeps the old one): the one event a
/// blocked `flock` cannot see.
pub(crate) const REPLACED_RECHECK: Duration = Duration::from_millis(500);

/// Awaits a wait in the kernel on the file `id` at `path`; `Ok(None)` (abandoning the wait) when
/// the path names another file meanwhile.
async fn wait_in_kernel(mut pending: blocker::Pending, path: &Path, id: FileId) -> Result<Option<LockedFile>> {
    loop {
        match tokio::time::timeout(REPLACED_RECHECK, &mut pending).await {
            Ok(Ok(Ok(file))) => return Ok(Some(LockedFile::new(file))),
            Ok(Ok(Err(e))) => return Err(Error::io(format!("flock {}", path.display()), e)),
            Ok(Err(_)) => {
                return Err(Error::Backend {
                    backend: BACKEND,
                    message: format!("the thread waiting for {} is gone", path.display()),
                    source: None,
                });
            }
            Err(_) if !path_is(path, id)? => return Ok(None),
            Err(_) => {}
        }
    }
}

/// What [`lock_open_file`] achieved.
pub(crate) enum Attempt {
    Locked,
    Busy,
    /// `path` no longer names the file we opened: reopen it.
    Replaced,
    /// The pool that waits in the kernel has room again (with `until_room`): wait there.
    Room,
}

/// Locks the open file `id` (at `path`) shared or exclusive: one attempt (`try_only`), or waiting
/// for events on it (with the bounded re-checks of [`Waiter`]). With `follow`, gives up as soon as
/// `path` names another file (checked after the first failed attempt, and after any wake that may
/// mean a replacement). With `until_room`, gives up as soon as the kernel-wait pool has room
/// (for a waiter it turned away). Cancel-safe: dropping the future leaves the file unlocked.
pub(crate) async fn lock_open_file(
    file: &File,
    path: &Path,
    id: FileId,
    shared: bool,
    try_only: bool,
    follow: bool,
    until_room: bool,
) -> Result<Attempt> {
    let mut waiter: Option<Waiter> = None;
    let mut check_path = follow;
    let mut room = if until_room { blocker::room_freed().map(Box::pin) } else { None };
    if room.is_some() && blocker::has_room() {
        return Ok(Attempt::Room);
    }
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
        match (waiter.as_mut(), seen, room.as_mut()) {
            (Some(w), Some(seen), Some(room)) => tokio::select! {
                replaced = w.wait(seen) => check_path = replaced && follow,
                () = room.as_mut() => return Ok(Attempt::Room),
            },
            (Some(w), Some(seen), None) => check_path = w.wait(seen).await && follow,
            _ => waiter = Some(Waiter::new([(path, file, id)])),
        }
    }
}

/// Joins a semaphore: a shared lock on its metadata file, whose content is the permits count.
/// The first member (the only one that can get the lock exclusively) writes the count; everyone
/// checks it. Members that are not the first only read the file, so they need no write access to
/// it. `Ok(None)` when `try_only` and another process keeps the file locked exclusively.
async fn join_semaphore(
    meta_path: &Path,
    name: &LockName,
    permits: u32,
    share: u32,
    try_only: bool,
) -> Result<Option<(LockedFile, FileId)>> {
    let ctx = || format!("semaphore file {}", meta_path.display());
    let count = format!("{permits}\n");
    for _ in 0..100 {
        let (file, id, writable) = match open_in_dir(meta_path, Access::Update { share, create: true }) {
            Ok((file, id)) => (file, id, true),
            Err(e) if is_denied(&e) => match open_in_dir(meta_path, Access::Read) {
                Ok((file, id)) => (file, id, false),
                // It is not there, and we may not create it: the first error says why.
                Err(missing) if missing.kind() == io::ErrorKind::NotFound => return Err(Error::io(ctx(), e)),
                Err(e) => return Err(Error::io(ctx(), e)),
            },
            Err(e) => return Err(Error::io(ctx(), e)),
        };
        let meta = LockedFile::new(file);
        if try_flock(meta.file(), false, meta_path)? {
            // The first member: nobody else holds the file, so nobody reads it while we write.
            if writable {
                meta.file().set_len(0).map_err(|e| Error::io(ctx(), e))?;
                meta.file().write_all_at(count.as_bytes(), 0).map_err(|e| Error::io(ctx(), e))?;
            } else if read_permits(meta.file()).map_err(|e| Error::io(ctx(), e))? != Some(permits) {
                // A file we may not write (left by another user): replace it with one holding our
                // count, while our exclusive lock keeps everyone else out of the old one. Members
                // that locked the old file notice (they check the path after taking a permit).
                if path_is(meta_path, id)? {
                    install(meta_path, count.as_bytes(), share, true).map_err(|e| Error::io(ctx(), e))?;
                }
                continue;
            }
        }
        // Converting exclusive to shared, or waiting out another member's brief exclusive write
        // (it modifies the file, which wakes us).
        if let Attempt::Busy = lock_internal(meta.file(), meta_path, id, true, try_only, false).await? {
            return Ok(None);
        }
        match read_permits(meta.file()).map_err(|e| Error::io(ctx(), e))? {
            Some(p) if p == permits => return Ok(Some((meta, id))),
            // A first member that could not write the file replaced it while we waited for the
            // old one: only the file at the path counts.
            _ if !path_is(meta_path, id)? => continue,
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

/// The permits count in a semaphore's metadata file; `None` when it holds none (yet).
fn read_permits(file: &File) -> io::Result<Option<u32>> {
    let mut buf = [0u8; 32];
    let n = file.read_at(&mut buf, 0)?;
    Ok(std::str::from_utf8(&buf[..n]).ok().and_then(|t| t.trim().parse::<u32>().ok()))
}

/// How many times a single try ([`Wait::Try`]) attempts one of our internal files before it
/// reports contention. Their legitimate holders keep them for microseconds (a semaphore's first
/// member writing the permits count, a member bumping the fencing counter); a foreign process
/// holding one must not make a single try wait.
const INTERNAL_TRIES: u32 = 8;

/// Locks one of our internal files (a semaphore's metadata file or fencing counter), which its
/// legitimate holders keep for a few microseconds: a few attempts, yielding the CPU in between
/// (never sleeping), then `Busy` when `try_only`, else waiting like for any lock (the caller's
/// deadline cancels the wait).
pub(crate) async fn lock_internal(
    file: &File,
    path: &Path,
    id: FileId,
    shared: bool,
    try_only: bool,
    follow: bool,
) -> Result<Attempt> {
    for _ in 0..INTERNAL_TRIES {
        if try_flock(file, shared, path)? {
            return Ok(Attempt::Locked);
        }
        std::thread::yield_now();
    }
    if try_only {
        return Ok(Attempt::Busy);
    }
    lock_open_file(file, path, id, shared, false, follow, false).await
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

/// How [`open_in_dir`] opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// A lock file: read-only (`flock` needs no more), created if missing, with the mode
    /// `flock(1)` gives it (0666 less the umask).
    Lock,
    /// A semaphore's permit file, one of ours: as `Lock`, but a file we own gets at least the
    /// read bits of `share`, so that every user of a shared directory can lock it.
    Permit { share: u32 },
    /// One of our files that we write (fencing counter, semaphore metadata): read-write, created
    /// empty if missing and `create`; a file we own gets at least the `share` bits (see
    /// [`share_mode`]) so that the other users of a shared directory can update it too.
    Update { share: u32, create: bool },
    /// An existing file, only read; `NotFound` if missing.
    Read,
}

/// Opens a file in the lock directory as `access` says. A file we create has mode 0666 less the
/// umask, like `flock(1)`'s; when root creates it in a directory that belongs to another user, it
/// gets the directory's owner and group, so that root using a name first never locks the
/// directory's owner out of it. Never follows a symlink, never blocks on a FIFO, refuses anything
/// but a regular file.
pub(crate) fn open_in_dir(path: &Path, access: Access) -> io::Result<(Fd, FileId)> {
    let (rw, create, share) = match access {
        Access::Lock => (OFlags::RDONLY, true, None),
        Access::Permit { share } => (OFlags::RDONLY, true, Some(share & 0o444)),
        Access::Update { share, create } => (OFlags::RDWR, create, Some(share)),
        Access::Read => (OFlags::RDONLY, false, None),
    };
    let flags = rw | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    // Our read-write files are read and written on every acquisition: spare the filesystem an
    // atime update each time where we may (O_NOATIME needs ownership: EPERM otherwise).
    let open = |flags: OFlags| match share {
        Some(_) if rw == OFlags::RDWR => match open_fd(path, flags | OFlags::NOATIME, Mode::from_raw_mode(0o666)) {
            Err(rustix::io::Errno::PERM) => open_fd(path, flags, Mode::from_raw_mode(0o666)),
            other => other,
        },
        _ => open_fd(path, flags, Mode::from_raw_mode(0o666)),
    };
    // Open what is there; create only what is not, so that we know what we created.
    let mut created = false;
    let mut opened = open(flags);
    for _ in 0..100 {
        match opened {
            Err(rustix::io::Errno::NOENT) if create => {}
            _ => break,
        }
        opened = open(flags | OFlags::CREATE | OFlags::EXCL);
        match opened {
            Ok(_) => created = true,
            // Someone else created it meanwhile (or it is a symlink): open what is there.
            Err(rustix::io::Errno::EXIST) => opened = open(flags),
            Err(_) => {}
        }
    }
    let fd: Fd = match opened {
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
    if let Some(share) = share {
        let mode = st.st_mode & 0o7777;
        if mode & share != share && st.st_uid == rustix::process::geteuid().as_raw() {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode | share))?;
        }
    }
    if created {
        give_to_dir_owner(&fd, path);
    }
    Ok((fd, (st.st_dev, st.st_ino)))
}

/// Opens `path` as one of the backend's descriptors, which a forked child never inherits (see
/// [`super::clofork`]). When the process is out of descriptors (`EMFILE`, `ENFILE`), closes the
/// ones the cache keeps and tries once more (see [`fdcache::relieve`]).
pub(crate) fn open_fd(path: &Path, flags: OFlags, mode: Mode) -> rustix::io::Result<Fd> {
    use rustix::path::Arg;
    // The path's C string is made here, before the descriptor's section (which allocates nothing).
    path.into_with_c_str(|path| {
        let open = || Fd::new(|| rustix::fs::open(path, flags, mode));
        match open() {
            Err(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE) if fdcache::relieve() > 0 => open(),
            other => other,
        }
    })
}

/// When we are root and the directory of `path` belongs to another user, gives the file `fd` (one
/// we just created there) to the directory's owner and group: the files of a lock directory are
/// shaped by the directory, not by who happened to create them first. Best effort: where that
/// fails (say, a filesystem without ownership), the file stays ours, which the directory's owner
/// can still recover from (it replaces files of ours it cannot write).
fn give_to_dir_owner(fd: &Fd, path: &Path) {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let given = rustix::fs::stat(dir).and_then(|st| match st.st_uid {
        0 => Ok(()),
        uid => rustix::fs::fchown(fd, Some(rustix::fs::Uid::from_raw(uid)), Some(rustix::fs::Gid::from_raw(st.st_gid))),
    });
    if let Err(e) = given {
        tracing::warn!(error = %e, path = %path.display(), "cannot give the file to its directory's owner");
    }
}

/// True for the errors that mean "you may not open this file that way" (as opposed to "it is not
/// there" or "it is broken").
pub(crate) fn is_denied(e: &io::Error) -> bool {
    // std maps both EACCES and EPERM to this kind.
    e.kind() == io::ErrorKind::PermissionDenied
}

/// Puts a file holding exactly `content` at `path` atomically, so that it is never seen empty or
/// half-written: writes a hidden temporary file beside it, then moves that into place, over what
/// is there when `replace`, else only if nothing is (`Ok(false)` when something is: use it).
/// The new file gets the `share` bits, and the directory's owner when root writes it into
/// another user's directory (see [`open_in_dir`]).
///
/// The temporary name (`.interlock-PID-N.tmp`) starts with `.`, which no lock file name does,
/// and does not end in `.fence`, as every other hidden file of ours does: it can never be taken
/// for a lock or counter file.
pub(crate) fn install(path: &Path, content: &[u8], share: u32, replace: bool) -> io::Result<bool> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut attempt = 0;
    let (tmp, fd) = loop {
        let tmp = dir.join(format!(".interlock-{}-{}.tmp", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        match open_fd(&tmp, flags, Mode::from_raw_mode(0o666)) {
            Ok(fd) => break (tmp, fd),
            // Left by a process that had our pid (another pid namespace, or one that crashed).
            Err(rustix::io::Errno::EXIST) if attempt < 100 => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    };
    // Whether the temporary name is gone (moved into place), and what to return.
    let mut moved = false;
    let placed = (|| {
        fd.write_all_at(content, 0)?;
        let mode = rustix::fs::fstat(&fd)?.st_mode & 0o7777;
        if mode & share != share {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode | share))?;
        }
        give_to_dir_owner(&fd, path);
        drop(fd);
        if replace {
            rustix::fs::rename(&tmp, path)?;
            moved = true;
            return Ok(true);
        }
        let cwd = rustix::fs::CWD;
        match rustix::fs::renameat_with(cwd, &tmp, cwd, path, rustix::fs::RenameFlags::NOREPLACE) {
            Ok(()) => {
                moved = true;
                Ok(true)
            }
            Err(rustix::io::Errno::EXIST) => Ok(false),
            // A filesystem without RENAME_NOREPLACE: a hard link never replaces either.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP) => {
                match rustix::fs::linkat(cwd, &tmp, cwd, path, rustix::fs::AtFlags::empty()) {
                    Ok(()) => Ok(true),
                    Err(rustix::io::Errno::EXIST) => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    })();
    if !moved {
        let _ = rustix::fs::unlink(&tmp);
    }
    placed
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
pub(crate) fn path_is(path: &Path, id: FileId) -> Result<bool> {
    match rustix::fs::lstat(path) {
        Ok(st) => Ok((st.st_dev, st.st_ino) == id),
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(Error::io(format!("stat {}", path.display()), e.into())),
    }
}
