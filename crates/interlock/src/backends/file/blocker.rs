//! Waiting for a file lock in the kernel: a blocking `flock(2)` on a thread of a small pool.
//!
//! The kernel queues blocked `flock` requests and, on a release, wakes only the request that can
//! take the lock (Linux 5.0 and later: a blocked request waits behind the one it conflicts
//! with). So a waiter blocked in `flock` costs one wake-up per handoff and no wasted attempt,
//! where an inotify waiter is woken, with every other waiter, by every close of the file.
//!
//! `flock` has no timed form and a thread blocked in it cannot be woken without a signal, which
//! a library must not take over. So the caller never blocks in it itself (except the blocking
//! facade's callers that wait forever, see [`crate::blocking`]): a pool thread does, and sends
//! the locked file to the caller. When the caller gave up meanwhile (deadline, cancellation),
//! the thread that eventually gets the lock hands it to a later waiter of this process for the
//! same file that adopted its place in the kernel's queue, or else unlocks it at once: a brief
//! "ghost" hold, measured by [`ghost_stats`] and documented in docs/backends/file.md.
//!
//! The pool is bounded ([`MAX_WAITS`] waits in the kernel at once, abandoned ones included);
//! past the bound [`submit`] declines and the caller waits with inotify instead, until a wait
//! ends ([`room_freed`]) and it can come back. Idle threads
//! exit after [`IDLE_EXIT`]. The pool belongs to one process: a forked child (where the parent's
//! threads do not exist) starts its own, and never touches the parent's; the descriptors of the
//! parent's waits were closed in the child at the fork (see [`super::clofork`]), so a wait in
//! progress never keeps a lock alive in a child.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex as StdMutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::fs::FlockOperation;
use tokio::sync::oneshot;

use super::clofork::Fd;
use super::raw::{ATTEMPTS, FileId};

/// Most waits blocked in the kernel at once in one process (abandoned ones included).
pub(crate) const MAX_WAITS: usize = 64;
/// An idle pool thread exits after this long without work.
pub(crate) const IDLE_EXIT: Duration = Duration::from_secs(30);
/// Stack of a pool thread: it only calls `flock` and sends on a channel.
const STACK: usize = 64 * 1024;

/// What a wait delivers: the file, locked, or the error `flock` returned.
pub(crate) type Outcome = io::Result<Fd>;

/// A wait in the kernel: resolves to the locked file. Dropping it abandons the wait (the pool
/// thread then hands the lock on or unlocks it, see the module docs).
pub(crate) type Pending = oneshot::Receiver<Outcome>;

struct Pool {
    state: StdMutex<State>,
    work: Condvar,
    /// Notified whenever a wait ends: waiters that found the pool full (and wait with inotify)
    /// come back to wait in the kernel.
    room: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// Waits not yet picked up by a thread.
    queue: Vec<(u64, Fd, bool)>,
    /// Every wait until its thread returns from `flock`: which file and mode, and who wants it.
    waits: HashMap<u64, Wait>,
    threads: usize,
    idle: usize,
}

struct Wait {
    key: (FileId, bool),
    tx: Option<oneshot::Sender<Outcome>>,
}

impl Wait {
    /// True when nobody waits for this wait's outcome any more.
    fn abandoned(&self) -> bool {
        self.tx.as_ref().is_none_or(oneshot::Sender::is_closed)
    }
}

/// The pool of this process (see [`super::watch::per_process`] for the fork rule).
static POOL: StdMutex<Option<(u32, Option<&'static Pool>)>> = StdMutex::new(None);

fn pool() -> Option<&'static Pool> {
    super::watch::per_process(&POOL, || {
        Some(&*Box::leak(Box::new(Pool {
            state: StdMutex::new(State::default()),
            work: Condvar::new(),
            room: tokio::sync::Notify::new(),
        })))
    })
}

/// Ghost holds: locks a pool thread got for a caller that had gone, and unlocked at once.
static GHOSTS: AtomicU64 = AtomicU64::new(0);
/// The longest ghost hold, in nanoseconds: from `flock` returning to the unlock returning.
static GHOST_MAX_NS: AtomicU64 = AtomicU64::new(0);
/// Waits handed to a later waiter of this process (adopted) instead of a new one.
static ADOPTED: AtomicU64 = AtomicU64::new(0);

/// `(ghost holds, longest ghost hold, adopted waits)` of this process so far.
pub(crate) fn ghost_stats() -> (u64, Duration, u64) {
    (
        GHOSTS.load(Ordering::Relaxed),
        Duration::from_nanos(GHOST_MAX_NS.load(Ordering::Relaxed)),
        ADOPTED.load(Ordering::Relaxed),
    )
}

/// Waits in the kernel for `file` (the inode `id`), shared or exclusive. When an abandoned wait
/// of this process is already queued in the kernel for the same inode and mode, adopts it (and
/// closes `file`, which is not needed). `Err(file)` when the pool is at its bound or cannot start
/// a thread: wait another way.
pub(crate) fn submit(file: Fd, id: FileId, shared: bool) -> Result<Pending, Fd> {
    let Some(pool) = pool() else { return Err(file) };
    let (tx, rx) = oneshot::channel();
    let mut st = pool.state();
    let key = (id, shared);
    if let Some(w) = st.waits.values_mut().find(|w| w.key == key && w.abandoned()) {
        w.tx = Some(tx);
        ADOPTED.fetch_add(1, Ordering::Relaxed);
        drop(st);
        drop(file);
        return Ok(rx);
    }
    if st.waits.len() >= MAX_WAITS {
        return Err(file);
    }
    if st.idle == 0 {
        let spawned =
            std::thread::Builder::new().name("interlock-flock".into()).stack_size(STACK).spawn(move || pool.serve());
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "cannot start a flock thread; waiting with inotify");
            return Err(file);
        }
        st.threads += 1;
        st.idle += 1;
    }
    let id = st.next_id;
    st.next_id += 1;
    st.waits.insert(id, Wait { key, tx: Some(tx) });
    st.queue.push((id, file, shared));
    st.idle -= 1;
    drop(st);
    pool.work.notify_one();
    Ok(rx)
}

/// Completes when a wait in the kernel ends, so that a waiter [`submit`] turned away can try it
/// again; create it before looking at [`has_room`], so that no end is missed in between. `None`
/// when this process has no pool.
pub(crate) fn room_freed() -> Option<tokio::sync::futures::Notified<'static>> {
    pool().map(|p| p.room.notified())
}

/// True when [`submit`] would take a new wait now (an adoption aside).
pub(crate) fn has_room() -> bool {
    pool().is_some_and(|p| p.state().waits.len() < MAX_WAITS)
}

/// Blocks this thread in `flock` until `file` is locked (one lock attempt).
pub(crate) fn lock_here(file: &File, shared: bool) -> io::Result<()> {
    ATTEMPTS.fetch_add(1, Ordering::Relaxed);
    let op = if shared { FlockOperation::LockShared } else { FlockOperation::LockExclusive };
    loop {
        match rustix::fs::flock(file.as_fd(), op) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

impl Pool {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pool thread: takes waits from the queue until idle for [`IDLE_EXIT`].
    fn serve(&self) {
        let mut st = self.state();
        loop {
            // `submit` counted this thread idle when it queued work for it, and took it off
            // idle again: the queue is never longer than the threads to run it.
            if let Some((id, file, shared)) = st.queue.pop() {
                drop(st);
                self.run(id, file, shared);
                st = self.state();
                st.idle += 1;
                continue;
            }
            let (guard, timeout) = self.work.wait_timeout(st, IDLE_EXIT).unwrap_or_else(|p| p.into_inner());
            st = guard;
            if timeout.timed_out() && st.queue.is_empty() {
                st.idle -= 1;
                st.threads -= 1;
                return;
            }
        }
    }

    fn run(&self, id: u64, file: Fd, shared: bool) {
        let locked = lock_here(&file, shared);
        let got = Instant::now();
        let tx = self.state().waits.remove(&id).and_then(|w| w.tx);
        self.room.notify_waiters();
        let outcome = locked.map(|()| file);
        let unsent = match tx {
            Some(tx) => tx.send(outcome).err(),
            None => Some(outcome),
        };
        if let Some(Ok(file)) = unsent {
            // Nobody wants it any more: the ghost hold ends here.
            let _ = rustix::fs::flock(file.as_fd(), FlockOperation::Unlock);
            drop(file);
            GHOSTS.fetch_add(1, Ordering::Relaxed);
            let ns = u64::try_from(got.elapsed().as_nanos()).unwrap_or(u64::MAX);
            GHOST_MAX_NS.fetch_max(ns, Ordering::Relaxed);
        }
    }
}
