//! The guard: proof of a held lock, its fencing token, its lost signal, and its release.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::lease::{self, Validity, Watch};
use crate::local::LocalPermit;
use crate::name::LockName;
use crate::provider::Provider;
use crate::raw::{LeaseConfig, LockKind, LostSignal, RawHeld, spawn_cleanup};

/// A held lock. Released by [`Guard::release`] (which reports errors and lost locks) or,
/// best-effort, when dropped.
///
/// Dropping a guard releases at once on backends that can release synchronously (`file`,
/// `memory`); on network backends the release is sent in the background and may complete shortly
/// after the drop. Prefer `release().await` where the outcome matters: it is the only way to learn
/// that the lock was lost before the critical section ended. Cancelling `release().await` midway
/// does not skip the release: the guard is then released the way a dropped guard is. Either way,
/// the next waiter of this provider for the lock gets its turn only once the backend release has
/// finished.
///
/// Locks are not re-entrant: taking the same lock again while holding a guard waits for (or, with
/// `try_*`, is refused by) this guard like any other holder.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct Guard {
    name: LockName,
    kind: LockKind,
    backend: &'static str,
    token: Option<u64>,
    lost: LostSignal,
    validity: Option<Arc<Validity>>,
    held: Option<Held>,
}

struct Held {
    raw: Arc<dyn RawHeld>,
    monitor: Option<JoinHandle<()>>,
    // Dropped only after the backend lock is released, so the next local waiter goes to the
    // backend once this holder is gone there.
    local: LocalPermit,
    // The provider that made the lock, kept until the lock is released: the last handle of a
    // provider closes its connections, which must not happen under a held lock.
    _provider: Provider,
}

impl Held {
    /// Stops the monitor: no renewal or loss event is watched from now on.
    fn stop_monitor(&mut self) {
        if let Some(m) = self.monitor.take() {
            m.abort();
        }
    }

    /// The release path of a dropped guard (and of a cancelled `release()`): the backend release
    /// runs to completion in the background, on a runtime that outlives the caller, and the local
    /// queue place travels with it, to be handed on only once the release has finished. A backend
    /// that releases synchronously is done before this returns.
    fn release_in_background(mut self) {
        self.stop_monitor();
        spawn_cleanup(async move {
            if let Err(e) = self.raw.release().await {
                tracing::debug!(error = %e, "release of a dropped guard failed");
            }
            drop(self.local);
        });
    }
}

impl Guard {
    pub(crate) fn new(
        name: LockName,
        kind: LockKind,
        backend: &'static str,
        raw: Arc<dyn RawHeld>,
        lease: LeaseConfig,
        local: LocalPermit,
        provider: &Provider,
    ) -> Guard {
        let token = raw.fencing_token();
        let lost = LostSignal::new();
        let validity = raw.valid_until().map(Validity::new);
        let watch = Watch {
            raw: raw.clone(),
            cfg: lease,
            lost: lost.clone(),
            validity: validity.clone(),
            event: raw.watch_lost(),
        };
        let monitor = lease::spawn(watch, provider.monitors());
        let held = Held { raw, monitor, local, _provider: provider.clone() };
        Guard { name, kind, backend, token, lost, validity, held: Some(held) }
    }

    /// The lock name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// Which primitive (and side) this guard holds.
    pub fn kind(&self) -> LockKind {
        self.kind
    }

    /// The backend that holds the lock (`file`, `memory`, ...).
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The fencing token of this acquisition.
    ///
    /// For one lock name, an exclusive acquisition's token is greater than every token issued
    /// before it, across processes and restarts; a shared holder's token is not smaller than the
    /// last exclusive one. Hand it to any store you write to under the lock and have the store
    /// refuse tokens lower than the highest it has seen: that protects the store from a holder that
    /// lost its lock without knowing (a long pause, an expired lease).
    ///
    /// Every backend gives one; only a Redlock configuration that cannot prove monotonicity
    /// returns `None` (and documents it).
    pub fn fencing_token(&self) -> Option<u64> {
        self.token
    }

    /// True once the lock is known to be lost: the backend said so (a renewal found the lock gone,
    /// or a loss event: session expired, connection closed), or the lease ran out by the local
    /// monotonic clock without a successful renewal. Never true on `file`, where a lock cannot
    /// be lost while the process lives, nor on `memory` without a lease, except through its fault
    /// hooks.
    pub fn is_lost(&self) -> bool {
        if self.lost.is_set() {
            return true;
        }
        match &self.validity {
            Some(v) if v.expired() => {
                self.lost.set("the lease ran out by the local clock");
                true
            }
            _ => false,
        }
    }

    /// A future that completes when the lock is lost. It never completes for a lock that is
    /// released normally. It does not borrow the guard, so it can be awaited next to the work:
    ///
    /// ```
    /// # async fn f(provider: interlock::Provider) -> interlock::Result<()> {
    /// let guard = provider.mutex("report")?.lock().await?;
    /// tokio::select! {
    ///     () = guard.lost() => eprintln!("lock lost; stopping"),
    ///     () = async { /* the critical section */ } => {}
    /// }
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let wait = self.lost.wait();
        let until = self.validity.as_ref().map(|v| v.clone());
        async move {
            match until {
                None => wait.await,
                Some(v) => {
                    // The monitor raises the signal at expiry; this is a second, local guarantee
                    // that does not depend on the monitor task being scheduled.
                    let expiry = async {
                        loop {
                            // Released: the lock will never be lost now.
                            let Some(t) = v.get() else { return std::future::pending().await };
                            tokio::time::sleep_until(t.into()).await;
                            if v.get().is_some_and(|t| t <= Instant::now()) {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        () = wait => {}
                        () = expiry => {}
                    }
                }
            }
        }
    }

    /// The instant until which this lock is known to be held, by this process's monotonic clock
    /// (`CLOCK_MONOTONIC` on Linux): the last successful renewal's send time plus the lease
    /// (minus the backend's drift allowance), as the lease monitor counts it. `None` for locks that
    /// do not expire (`file`, `memory` without a lease) and once the guard is released.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> interlock::Result<()> {
    /// let locks = interlock::connect("memory://?lease=30s").await?;
    /// let guard = locks.mutex("job")?.lock().await?;
    /// assert!(guard.valid_until().is_some_and(|t| t > std::time::Instant::now()));
    /// # Ok(()) }
    /// ```
    pub fn valid_until(&self) -> Option<Instant> {
        self.validity.as_ref().and_then(|v| v.get())
    }

    /// Follows [`Guard::valid_until`] as renewals extend it, for a process that must act on the
    /// lease itself (`interlock run` hands each new instant to the guardian that stops the
    /// command's tree when the lease is about to run out unrenewed). `None` for locks that do not
    /// expire. It does not borrow the guard.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> interlock::Result<()> {
    /// let locks = interlock::connect("memory://?lease=30s").await?;
    /// let guard = locks.mutex("job")?.lock().await?;
    /// let mut watch = guard.validity_watch().expect("a lock with a lease");
    /// assert_eq!(watch.valid_until(), guard.valid_until());
    /// guard.release().await?;
    /// assert_eq!(watch.changed().await, None); // released: no validity any more
    /// # Ok(()) }
    /// ```
    pub fn validity_watch(&self) -> Option<ValidityWatch> {
        self.validity.as_ref().map(|v| ValidityWatch(v.subscribe()))
    }

    /// Duplicates of the file descriptors that hold this lock, on backends whose locks live in open
    /// file descriptions (`file`: the lock file, and for a semaphore its permit and metadata
    /// files); empty on every other backend, and once the guard is released.
    ///
    /// A child process that inherits them keeps the lock held as long as one of them is open,
    /// even if this process dies, which is how `flock(1)` and `interlock run` hand a lock to the
    /// command they run. The duplicates have close-on-exec set; clear it in the child that
    /// should inherit them. Releasing the guard unlocks the lock for all of them at once.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the descriptors cannot be duplicated (too many open files).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> interlock::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = interlock::connect(&format!("file://{}", dir.path().display())).await?;
    /// let guard = locks.mutex("job")?.lock().await?;
    /// assert_eq!(guard.lock_fds()?.len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn lock_fds(&self) -> Result<Vec<std::os::fd::OwnedFd>> {
        match &self.held {
            None => Ok(Vec::new()),
            Some(held) => held.raw.duplicate_fds().map_err(|e| Error::io("cannot duplicate the lock's descriptors", e)),
        }
    }

    /// For a forked child: lets go of a guard its parent took, without releasing the lock. The
    /// lock stays the parent's; the child no longer keeps it alive (on the file backend its
    /// inherited copies of the lock's descriptors are closed, so the lock does not outlive the
    /// parent inside the child). Nothing of the guard runs in the child: not its release, not its
    /// monitor, not its runtime, whose threads are not in the child.
    ///
    /// Dropping or releasing such a guard in the child instead would unlock the parent's lock on
    /// the file backend (`flock(LOCK_UN)` acts on the open file description both processes
    /// share), or act on the parent's connection on a network backend.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> interlock::Result<()> {
    /// let locks = interlock::connect("memory://").await?;
    /// let guard = locks.mutex("job")?.lock().await?;
    /// // ... in the child after fork():
    /// guard.forget_after_fork();
    /// # Ok(()) }
    /// ```
    pub fn forget_after_fork(mut self) {
        if let Some(held) = self.held.take() {
            held.raw.forget_after_fork();
            // Its monitor task, local queue place and provider belong to the parent's runtime.
            std::mem::forget(held);
        }
        std::mem::forget(self);
    }

    /// Releases the lock and reports how it went.
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] when the lock was lost before this call (the critical section may not
    /// have been exclusive); a backend error when the release itself failed (the lock then expires
    /// on its own where the backend has leases, or goes with the connection).
    pub async fn release(mut self) -> Result<()> {
        let Some(held) = self.held.as_mut() else {
            return Ok(());
        };
        held.stop_monitor();
        let raw = held.raw.clone();
        let was_lost = self.is_lost();
        if let Some(v) = &self.validity {
            v.release();
        }
        // If this future is dropped while the backend releases, `self` still holds `held`, and
        // `Drop` sends the release again the way a dropped guard does (releases are idempotent).
        let result = raw.release().await;
        // Released (or failed to): only now may the next local waiter go to the backend.
        drop(self.held.take());
        if let Ok(false) = result {
            self.lost.set("the backend no longer held the lock at release");
        }
        if was_lost || self.lost.is_set() {
            return Err(Error::LockLost {
                name: self.name.display(),
                reason: self.lost.reason().unwrap_or_else(|| "lost".into()),
            });
        }
        result.map(drop)
    }
}

/// Follows a guard's validity instant ([`Guard::validity_watch`]).
#[derive(Debug, Clone)]
pub struct ValidityWatch(tokio::sync::watch::Receiver<Option<Instant>>);

impl ValidityWatch {
    /// The current validity instant (`None` once the guard is released).
    pub fn valid_until(&self) -> Option<Instant> {
        *self.0.borrow()
    }

    /// Waits for the next change and returns the new instant: a renewal extended it (`Some`), or
    /// the guard was released (`None`, also when the guard is gone). Changes made since the last
    /// call (or since the watch was made) are not missed.
    pub async fn changed(&mut self) -> Option<Instant> {
        match self.0.changed().await {
            Ok(()) => *self.0.borrow_and_update(),
            Err(_) => None,
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            if let Some(v) = &self.validity {
                v.release();
            }
            held.release_in_background();
        }
    }
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("backend", &self.backend)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("fencing_token", &self.token)
            .field("lost", &self.lost.is_set())
            .field("released", &self.held.is_none())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_traits<T: Send + Sync + fmt::Debug + 'static>() {}

    #[test]
    fn guard_is_send_sync_static_debug() {
        assert_traits::<Guard>();
    }
}
