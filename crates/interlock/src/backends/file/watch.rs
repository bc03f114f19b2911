//! Waking file-lock waiters with inotify: the fallback when a waiter cannot wait in the kernel
//! (see [`super::blocker`]: past its bound of waits, or without threads), and the way semaphore
//! waiters (N permit files at once) and waiters for interlock's internal files wait.
//!
//! Such a waiter watches the lock file with inotify and retries a non-blocking `flock` whenever a
//! file description of it is closed (the kernel drops a `flock` when the last descriptor of its
//! open file description closes, including when the holder process dies).
//!
//! One inotify instance serves the whole process (the kernel allows only 128 per user by default),
//! read by one dispatcher thread that bumps each waiter's generation counter; each waiter awaits a
//! change of its counter on its own runtime. The thread is started once and lives as long as the
//! process; no thread is ever left blocked per wait. Watches are kept per inode after their last
//! waiter leaves (up to [`MAX_IDLE`]), so a lock waited for again and again costs no
//! `inotify_add_watch`/`inotify_rm_watch` per wait.
//!
//! Two releases send no close event, and are caught by a bounded re-check instead:
//! - a peer tool that calls `flock(fd, LOCK_UN)` and keeps the file open (see [`RECHECK`]), as
//!   interlock's own guards do when their provider keeps the descriptor for reuse;
//! - the close event can arrive a moment *before* the kernel drops the lock (`__fput` notifies
//!   before it removes the lock), so a wake that loses that race re-checks once shortly after
//!   (see [`QUICK_RECHECK`]).
//!
//! interlock's own guards unlock explicitly before closing, so when they close, the event follows
//! the release.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::sync::{Arc, Mutex as StdMutex, MutexGuard};
use std::time::Duration;

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use tokio::sync::watch;

use super::clofork::Fd;
use super::raw::FileId;

/// Re-check interval for releases that send no event (a peer's `LOCK_UN` without `close`).
pub(crate) const RECHECK: Duration = Duration::from_millis(100);
/// Re-check shortly after an event that did not win the lock (see the module docs).
pub(crate) const QUICK_RECHECK: Duration = Duration::from_millis(2);
/// Re-check interval when the process could not get an inotify instance (degraded mode).
pub(crate) const DEGRADED_RECHECK: Duration = Duration::from_millis(10);
/// Watches without waiters kept for reuse; beyond this, idle watches are removed in one sweep.
pub(crate) const MAX_IDLE: usize = 256;
/// An idle watch is removed after this many events with nobody waiting: it is then costing this
/// process a dispatcher wake-up per close of the file (its own releases included) for nothing.
/// A lock this process keeps waiting for is re-used before that; one it only waited for once
/// stops costing anything after a few acquisitions.
pub(crate) const IDLE_EVENTS: u32 = 8;

// MODIFY: a semaphore member writing the metadata file before it converts its exclusive lock to
// shared sends no close event.
const MASK: WatchFlags = WatchFlags::CLOSE_WRITE
    .union(WatchFlags::CLOSE_NOWRITE)
    .union(WatchFlags::MODIFY)
    .union(WatchFlags::ATTRIB)
    .union(WatchFlags::DELETE_SELF)
    .union(WatchFlags::MOVE_SELF);

/// Events after which the path may name another file (deleted, renamed, link count changed).
const REPLACING: ReadFlags =
    ReadFlags::ATTRIB.union(ReadFlags::DELETE_SELF).union(ReadFlags::MOVE_SELF).union(ReadFlags::IGNORED);

/// What a waiter's channel carries: the number of events seen, and the number at the last event
/// that may mean the file was replaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Wakes {
    events: u64,
    replacing_at: u64,
}

type Tx = Arc<watch::Sender<Wakes>>;

/// The process-wide inotify instance and its dispatcher thread.
pub(crate) struct Watcher {
    /// Closed in a forked child by the fork handler (see [`super::clofork`]).
    fd: Fd,
    state: StdMutex<State>,
}

#[derive(Default)]
struct State {
    /// Watched inodes → their watch descriptor and the channels of their current waiters.
    by_id: HashMap<FileId, Slot>,
    by_wd: HashMap<i32, FileId>,
    /// Entries of `by_id` without waiters.
    idle: usize,
}

struct Slot {
    wd: i32,
    subs: Vec<Tx>,
    /// Events seen since the last waiter left.
    idle_events: u32,
}

/// The watcher of this process: `(pid, watcher)`, `None` in the second place when inotify or its
/// thread could not start. A forked child finds its parent's pid here: the parent's dispatcher
/// thread is not in the child (and the parent's state may have been locked by it at the fork), so
/// the child starts a watcher of its own and never touches the parent's.
static WATCHER: StdMutex<Option<(u32, Option<&'static Watcher>)>> = StdMutex::new(None);

/// The process's watcher, started on first use (and again in a forked child); `None` when
/// inotify is unavailable (then waiters fall back to [`DEGRADED_RECHECK`], and a warning is
/// logged once per process).
pub(crate) fn watcher() -> Option<&'static Watcher> {
    per_process(&WATCHER, || {
        let w: &'static Watcher = Box::leak(Box::new(start()?));
        match std::thread::Builder::new().name("interlock-inotify".into()).spawn(move || w.dispatch()) {
            Ok(_) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the inotify thread; file-lock waiters will re-check every {DEGRADED_RECHECK:?}");
                None
            }
        }
    })
}

/// The value `slot` holds for this process, made by `start` on first use in the process (and
/// again in a forked child, which finds its parent's pid there: the parent's threads are not in
/// the child, and the parent's state may have been locked by one of them at the fork, so the
/// child makes its own and never touches, nor frees, the parent's). `None` when `start` failed
/// (remembered: not retried in this process).
pub(crate) fn per_process<T: Copy>(
    slot: &StdMutex<Option<(u32, Option<T>)>>,
    start: impl FnOnce() -> Option<T>,
) -> Option<T> {
    let pid = std::process::id();
    // `try_lock`: a thread of the parent may have held it at a fork, and it is not in the child
    // to unlock it. The lock is only ever held for a moment; a child that finds it held forever
    // gets `None` (and falls back) instead of hanging.
    let mut guard = None;
    for _ in 0..1000 {
        match slot.try_lock() {
            Ok(g) => {
                guard = Some(g);
                break;
            }
            Err(std::sync::TryLockError::Poisoned(p)) => {
                guard = Some(p.into_inner());
                break;
            }
            Err(std::sync::TryLockError::WouldBlock) => std::thread::yield_now(),
        }
    }
    let mut guard = guard?;
    if let Some((owner, v)) = *guard
        && owner == pid
    {
        return v;
    }
    let v = start();
    *guard = Some((pid, v));
    v
}

fn start() -> Option<Watcher> {
    let init = || Fd::new(|| inotify::init(CreateFlags::CLOEXEC));
    let made = match init() {
        // Out of descriptors: the cache gives its own back first.
        Err(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE) if super::fdcache::relieve() > 0 => init(),
        other => other,
    };
    match made {
        Ok(fd) => Some(Watcher { fd, state: StdMutex::new(State::default()) }),
        Err(e) => {
            tracing::warn!(error = %e, "inotify unavailable; file-lock waiters will re-check every {DEGRADED_RECHECK:?}");
            None
        }
    }
}

impl Watcher {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dispatch(&self) {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut reader = inotify::Reader::new(self.fd.as_fd(), &mut buf);
        loop {
            let event = match reader.next() {
                Ok(e) => e,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "inotify read failed; file-lock waiters fall back to re-checks");
                    return;
                }
            };
            let (wd, flags) = (event.wd(), event.events());
            let replacing = flags.intersects(REPLACING);
            let wake = |tx: &Tx| {
                tx.send_modify(|w| {
                    w.events += 1;
                    if replacing {
                        w.replacing_at = w.events;
                    }
                })
            };
            let mut st = self.state();
            if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                // Events were dropped: wake everyone, as if anything could have happened.
                st.by_id.values().flat_map(|s| &s.subs).for_each(|tx| {
                    tx.send_modify(|w| {
                        w.events += 1;
                        w.replacing_at = w.events;
                    })
                });
                continue;
            }
            let Some(&id) = st.by_wd.get(&wd) else { continue };
            let mut evict = false;
            if let Some(slot) = st.by_id.get_mut(&id) {
                slot.subs.iter().for_each(wake);
                if slot.subs.is_empty() {
                    slot.idle_events += 1;
                    evict = slot.idle_events >= IDLE_EVENTS;
                }
            }
            if evict {
                let _ = inotify::remove_watch(&self.fd, wd);
                st.by_wd.remove(&wd);
                st.by_id.remove(&id);
                st.idle -= 1;
                continue;
            }
            if flags.contains(ReadFlags::IGNORED) {
                // The kernel dropped the watch (the inode is gone): forget it, so that the number
                // and the inode can be reused; its waiters got a wake, find the path replaced, and
                // watch the new file.
                st.by_wd.remove(&wd);
                if st.by_id.remove(&id).is_some_and(|s| s.subs.is_empty()) {
                    st.idle -= 1;
                }
            }
        }
    }
}

/// One waiter's subscription to events on one or more files.
pub(crate) struct Subscription {
    watcher: &'static Watcher,
    tx: Tx,
    rx: watch::Receiver<Wakes>,
    ids: Vec<FileId>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("files", &self.ids.len()).finish()
    }
}

impl Subscription {
    pub(crate) fn new(watcher: &'static Watcher) -> Self {
        let tx = Arc::new(watch::Sender::new(Wakes::default()));
        let rx = tx.subscribe();
        Subscription { watcher, tx, rx, ids: Vec::new() }
    }

    /// Adds the file `id` open as `file` at `path`. A new watch is on the exact inode we opened
    /// (via /proc/self/fd; `path`, not followed, when /proc is missing); an inode already watched
    /// costs no system call.
    pub(crate) fn add(&mut self, file: &File, path: &Path, id: FileId) -> io::Result<()> {
        let mut st = self.watcher.state();
        let st = &mut *st;
        match st.by_id.get_mut(&id) {
            Some(slot) => {
                if slot.subs.is_empty() {
                    st.idle -= 1;
                    slot.idle_events = 0;
                }
                slot.subs.push(self.tx.clone());
            }
            None => {
                let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
                let wd = match inotify::add_watch(&self.watcher.fd, proc_path.as_str(), MASK) {
                    Ok(wd) => wd,
                    Err(_) => inotify::add_watch(&self.watcher.fd, path, MASK | WatchFlags::DONT_FOLLOW)?,
                };
                // A stale entry for this descriptor number (its inode is gone) must not linger.
                if let Some(old) = st.by_wd.insert(wd, id)
                    && old != id
                    && st.by_id.remove(&old).is_some_and(|s| s.subs.is_empty())
                {
                    st.idle -= 1;
                }
                st.by_id.insert(id, Slot { wd, subs: vec![self.tx.clone()], idle_events: 0 });
            }
        }
        self.ids.push(id);
        Ok(())
    }

    /// The current event count, to pass to [`Subscription::changed`] after the next attempt.
    pub(crate) fn mark(&mut self) -> u64 {
        self.rx.borrow_and_update().events
    }

    /// Waits until one of the files sees an event after count `seen`; returns true when one of
    /// the events since then may mean a file was replaced.
    pub(crate) async fn changed(&mut self, seen: u64) -> bool {
        // The sender lives in `self`, so this cannot fail.
        match self.rx.wait_for(|w| w.events != seen).await {
            Ok(w) => w.replacing_at > seen,
            Err(_) => true,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.watcher.fd.is_ours() {
            // A parent's watcher, in a forked child (a future of the parent's dropped here): its
            // state may have been locked at the fork and its descriptor is closed. Leave it.
            return;
        }
        let mut st = self.watcher.state();
        for id in self.ids.drain(..) {
            let Some(slot) = st.by_id.get_mut(&id) else { continue };
            if let Some(i) = slot.subs.iter().position(|tx| Arc::ptr_eq(tx, &self.tx)) {
                slot.subs.swap_remove(i);
                if slot.subs.is_empty() {
                    st.idle += 1;
                }
            }
        }
        if st.idle > MAX_IDLE {
            let fd = &self.watcher.fd;
            let st = &mut *st;
            st.by_id.retain(|_, slot| {
                if !slot.subs.is_empty() {
                    return true;
                }
                let _ = inotify::remove_watch(fd, slot.wd);
                false
            });
            st.by_wd.retain(|_, id| st.by_id.contains_key(id));
            st.idle = 0;
        }
    }
}
