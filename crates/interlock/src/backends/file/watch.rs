//! Waking file-lock waiters without polling and without signals.
//!
//! `flock(2)` has no timed form, a thread blocked in it cannot be woken without a signal, and a
//! library must not take over its host's signals. So waiters do not block in `flock`: they watch
//! the lock file with inotify and retry a non-blocking `flock` whenever a file description of it is
//! closed (the kernel drops a `flock` when the last descriptor of its open file description
//! closes, including when the holder process dies).
//!
//! One inotify instance serves the whole process (the kernel allows only 128 per user by default),
//! read by one dispatcher thread that bumps a per-file generation counter; each waiter awaits a
//! change of that counter on its own runtime. The thread is started once and lives as long as the
//! process; no thread is ever left blocked per wait.
//!
//! Two releases send no close event, and are caught by a bounded re-check instead:
//! - a peer tool that calls `flock(fd, LOCK_UN)` and keeps the file open (see [`RECHECK`]);
//! - the close event can arrive a moment *before* the kernel drops the lock (`__fput` notifies
//!   before it removes the lock), so a wake that loses that race re-checks once shortly after
//!   (see [`QUICK_RECHECK`]).
//!
//! interlock's own guards unlock explicitly before closing, so between interlock processes the
//! event always follows the release.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex as StdMutex, OnceLock};
use std::time::Duration;

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use tokio::sync::watch;

/// Re-check interval for releases that send no event (a peer's `LOCK_UN` without `close`).
pub(crate) const RECHECK: Duration = Duration::from_millis(100);
/// Re-check shortly after an event that did not win the lock (see the module docs).
pub(crate) const QUICK_RECHECK: Duration = Duration::from_millis(2);
/// Re-check interval when the process could not get an inotify instance (degraded mode).
pub(crate) const DEGRADED_RECHECK: Duration = Duration::from_millis(10);

// MODIFY: a semaphore member writing the metadata file before it converts its exclusive lock to
// shared sends no close event.
const MASK: WatchFlags = WatchFlags::CLOSE_WRITE
    .union(WatchFlags::CLOSE_NOWRITE)
    .union(WatchFlags::MODIFY)
    .union(WatchFlags::ATTRIB)
    .union(WatchFlags::DELETE_SELF)
    .union(WatchFlags::MOVE_SELF);

/// The process-wide inotify instance and its dispatcher thread.
pub(crate) struct Watcher {
    fd: OwnedFd,
    /// Watch descriptor → the wake channels of the waiters watching that file.
    slots: StdMutex<HashMap<i32, Vec<Arc<watch::Sender<u64>>>>>,
}

static WATCHER: OnceLock<Option<Watcher>> = OnceLock::new();

/// The process's watcher, started on first use; `None` when inotify is unavailable (then waiters
/// fall back to [`DEGRADED_RECHECK`], and a warning is logged once).
pub(crate) fn watcher() -> Option<&'static Watcher> {
    let w = WATCHER
        .get_or_init(|| match inotify::init(CreateFlags::CLOEXEC) {
            Ok(fd) => Some(Watcher { fd, slots: StdMutex::new(HashMap::new()) }),
            Err(e) => {
                tracing::warn!(error = %e, "inotify unavailable; file-lock waiters will re-check every {DEGRADED_RECHECK:?}");
                None
            }
        })
        .as_ref()?;
    static STARTED: OnceLock<bool> = OnceLock::new();
    let started = *STARTED.get_or_init(|| {
        match std::thread::Builder::new().name("interlock-inotify".into()).spawn(move || w.dispatch()) {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the inotify thread; file-lock waiters will re-check every {DEGRADED_RECHECK:?}");
                false
            }
        }
    });
    started.then_some(w)
}

impl Watcher {
    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Vec<Arc<watch::Sender<u64>>>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
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
            let mut slots = self.slots();
            if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                // Events were dropped: wake everyone.
                slots.values().flatten().for_each(|tx| tx.send_modify(|g| *g += 1));
                continue;
            }
            if let Some(subs) = slots.get(&wd) {
                subs.iter().for_each(|tx| tx.send_modify(|g| *g += 1));
            }
            if flags.contains(ReadFlags::IGNORED) {
                // The kernel dropped the watch (file deleted): forget it so the number can be
                // reused; its waiters got a wake, find the file replaced and watch the new one.
                slots.remove(&wd);
            }
        }
    }
}

/// One waiter's subscription to close events on one or more files.
pub(crate) struct Subscription {
    watcher: &'static Watcher,
    tx: Arc<watch::Sender<u64>>,
    rx: watch::Receiver<u64>,
    wds: Vec<i32>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("wds", &self.wds).finish()
    }
}

impl Subscription {
    pub(crate) fn new(watcher: &'static Watcher) -> Self {
        let tx = Arc::new(watch::Sender::new(0));
        let rx = tx.subscribe();
        Subscription { watcher, tx, rx, wds: Vec::new() }
    }

    /// Adds the file behind `file`: the exact inode we opened, via /proc/self/fd, or `path`
    /// (not followed if a symlink) when /proc is missing.
    pub(crate) fn add(&mut self, file: &File, path: &Path) -> io::Result<()> {
        let mut slots = self.watcher.slots();
        let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
        let wd = match inotify::add_watch(&self.watcher.fd, proc_path.as_str(), MASK) {
            Ok(wd) => wd,
            Err(_) => inotify::add_watch(&self.watcher.fd, path, MASK | WatchFlags::DONT_FOLLOW)?,
        };
        slots.entry(wd).or_default().push(self.tx.clone());
        self.wds.push(wd);
        Ok(())
    }

    /// The current generation, to pass to [`Subscription::changed`] after the next lock attempt.
    pub(crate) fn mark(&mut self) -> u64 {
        *self.rx.borrow_and_update()
    }

    /// Waits until one of the files sees an event after generation `seen`.
    pub(crate) async fn changed(&mut self, seen: u64) {
        // The sender lives in `self`, so this cannot fail.
        let _ = self.rx.wait_for(|g| *g != seen).await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut slots = self.watcher.slots();
        for wd in self.wds.drain(..) {
            let Some(subs) = slots.get_mut(&wd) else { continue };
            if let Some(i) = subs.iter().position(|tx| Arc::ptr_eq(tx, &self.tx)) {
                subs.swap_remove(i);
                if subs.is_empty() {
                    slots.remove(&wd);
                    let _ = inotify::remove_watch(&self.watcher.fd, wd);
                }
            }
        }
    }
}
