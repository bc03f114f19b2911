//! `memory://`: the in-process reference backend.
//!
//! Locks live in the memory of this process, in named *spaces*: every provider made from
//! `memory://` shares the default space, and `memory://NAME` selects another. Nothing crosses
//! process boundaries, so it is for tests, examples and single-process programs.
//!
//! | property | value |
//! |---|---|
//! | primitives | mutex, rwlock, semaphore (mutex and rwlock of one name are one lock) |
//! | fencing | a per-name counter kept for the life of the process |
//! | lost locks | only through the fault hooks in [`MemorySpace`] (`revoke` and `restart` are pushed to the guard at once, with or without a lease), or with `?lease=DUR`, when locks expire unless renewed, like a server's |
//! | lease models | `?expiry=`: `none` (the default), `connection` (no lease; each lock on a connection the fault hooks can kill, as on MySQL or PostgreSQL), `lock` (a lease per lock, as on Redis; the default with `lease=`), `session` (one lease for the provider's session, kept alive by a task of the provider, as on ZooKeeper or etcd) |
//! | timeouts | `?timeouts=server`: waits time out by themselves at their deadline, as `GET_LOCK(name, t)` does, answering "not granted" (the core cancels only `grace` after the deadline, default 1 s) |
//! | options | `expiry`, `lease=DUR`, `renew=DUR` (default lease/3), `timeouts=client\|server`, `grace=DUR`, `connect_delay=DUR` |
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> interlock::Result<()> {
//! let locks = interlock::connect("memory://docs-example").await?;
//! let guard = locks.mutex("job")?.lock().await?;
//! assert_eq!(guard.fencing_token(), Some(1));
//! # Ok(()) }
//! ```

mod config;
mod raw;

use std::sync::Arc;
use std::time::Duration;

use config::MemoryConfig;
use raw::MemoryProvider;

use super::{Availability, Backend, Connected};
use crate::error::Result;
use crate::name::LockName;
use crate::raw::{BoxFuture, Capabilities, LeaseModel, Tasks};
use crate::url::LockUrl;

/// The memory backend's registry entry. Its locks expire only when the URL gives a lease, and
/// the URL picks the lease model (`expiry=`): per lock is the best it does as a reference.
pub(crate) const BACKEND: Backend = Backend {
    name: "memory",
    title: "memory (in-process reference)",
    schemes: &["memory"],
    url_form: "memory://[SPACE][?expiry=none|connection|lock|session&lease=DUR&renew=DUR&timeouts=client|server&grace=DUR]",
    holds: "in-process state",
    feature: None,
    docs: "docs/backends/memory.md",
    capabilities: Capabilities::new(false, true, true).with_lease(LeaseModel::PerLock),
    availability: Availability::Built,
    connect: Some(connect),
};

fn connect<'a>(url: &'a LockUrl, tasks: &'a Tasks) -> BoxFuture<'a, Result<Connected>> {
    Box::pin(async move {
        let config = MemoryConfig::from_url(url)?;
        if let Some(delay) = config.connect_delay {
            tokio::time::sleep(delay).await;
        }
        let lease = config.lease;
        Ok((Arc::new(MemoryProvider::new(config, tasks)) as _, lease))
    })
}

/// A step of the memory backend that [`MemorySpace::set_delay`] can make slow, to give tests an
/// await point to cancel at, as a network round trip would.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Step {
    /// An acquisition's request on its way, before it reaches the lock table.
    Acquire,
    /// An acquisition's answer on its way, after the lock was granted. Cancelling here leaves a
    /// granted holder behind that the backend undoes in the background ([`crate::raw::Cleanup`]).
    Grant,
    /// The undo of a grant whose acquisition was cancelled, before it removes the holder.
    Undo,
    /// A release on its way, before it removes the holder. While this step is delayed,
    /// releases are asynchronous, as on a network backend.
    Release,
    /// A lease renewal on its way, before it extends the lease (with `expiry=session`: a renewal,
    /// which checks the lock, or the session's keep-alive).
    Renew,
    /// With `timeouts=server`: the "not granted" answer of a wait that timed out on the backend,
    /// on its way back.
    TimedOut,
}

/// Fault hooks and inspection for one `memory://` space, for tests of lease expiry, lost locks
/// and cancellation.
#[derive(Debug, Clone)]
pub struct MemorySpace(Arc<raw::Space>);

impl MemorySpace {
    /// The space that `memory://NAME` uses (`""` for `memory://`).
    pub fn named(name: &str) -> MemorySpace {
        MemorySpace(raw::Space::named(name))
    }

    /// Forgets every holder of `name`, as a server does when a lease runs out (with
    /// `expiry=session`, their sessions lapse: every lock of them goes). The holders are not told:
    /// they find out at their next renewal (or the session's keep-alive). With
    /// `expiry=connection`, their connections close, which a client sees at once: they are told,
    /// as by [`MemorySpace::revoke`]. Returns how many holders were dropped.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidName`].
    pub fn expire(&self, name: &str) -> Result<usize> {
        Ok(self.0.expire(&LockName::new(name)?))
    }

    /// Tells every holder of `name` that its lock is gone (as a ZooKeeper session expiry would)
    /// and forgets them; with `expiry=session`, their sessions are killed, and every lock of them
    /// is told. The guards see it at once, with or without a lease (`lost()` completes,
    /// `release()` is `LockLost`), through the backend's loss event
    /// ([`crate::raw::RawHeld::watch_lost`]).
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidName`].
    pub fn revoke(&self, name: &str) -> Result<usize> {
        Ok(self.0.revoke(&LockName::new(name)?))
    }

    /// Restarts the "server" of this space, as a server restarted without its locks: every holder
    /// of every name is told that its lock is gone (its session ended with the server; `lost()`
    /// completes at once, with or without a lease, through [`crate::raw::RawHeld::watch_lost`])
    /// and forgotten. Waiters are woken and try again, as clients that reconnect. The fencing
    /// counters are kept: tokens keep increasing across a restart, as on a server that persists
    /// them. Returns how many holders were dropped.
    pub fn restart(&self) -> usize {
        self.0.restart()
    }

    /// Makes the renewals of the current holders of `name` wait before they reach the lock table,
    /// as a holder process stopped with SIGSTOP renews nothing: the lease runs out on the
    /// "server", which drops the holder and admits the next one, while the guard notices only
    /// by its local clock. Resume with [`MemorySpace::resume_holders`]. Only renewals wait
    /// (releases and loss events do not); with `expiry=session`, the holders' sessions are paused:
    /// their keep-alives and every renewal of them. Returns how many holders were paused.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidName`].
    pub fn pause_holders(&self, name: &str) -> Result<usize> {
        Ok(self.0.pause_holders(&LockName::new(name)?))
    }

    /// Lets the holders of `name` paused by [`MemorySpace::pause_holders`] renew again (SIGCONT):
    /// a waiting renewal goes on at once and, if the holder was dropped meanwhile, finds its lock
    /// gone. Returns how many holders were paused.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidName`].
    pub fn resume_holders(&self, name: &str) -> Result<usize> {
        Ok(self.0.resume_holders(&LockName::new(name)?))
    }

    /// Makes every lease renewal in this space fail (as when the server is unreachable) until
    /// called again with `false`.
    pub fn set_renewals_failing(&self, fail: bool) {
        self.0.set_renewals_failing(fail);
    }

    /// Makes `step` take `delay` in this space (`None`: no time, the default). Operations already
    /// inside the step re-read the delay at once, so a long delay is a pause that `None` resumes.
    /// Affects every provider of the space, and every name.
    pub fn set_delay(&self, step: Step, delay: Option<Duration>) {
        self.0.set_delay(step, delay);
    }

    /// How many operations are inside `step` right now, while it is delayed (tests wait for 1
    /// before cancelling there, and for 0 to see that nothing is stuck).
    pub fn in_step(&self, step: Step) -> usize {
        self.0.in_step(step)
    }

    /// How many acquisitions in this space were dropped before they answered: cancelled by their
    /// caller, or by the core at a deadline. With `timeouts=server` a wait that times out answers
    /// by itself and is not counted: cancellation stays the exception.
    pub fn abandoned(&self) -> u64 {
        self.0.abandoned()
    }

    /// How many sessions (`expiry=session`: one per provider, replaced when it ends) are alive.
    pub fn sessions(&self) -> usize {
        self.0.sessions()
    }

    /// `(holders, waiters)` of the mutex / read-write lock `name`.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidName`].
    pub fn counts(&self, name: &str) -> Result<(usize, usize)> {
        Ok(self.0.counts(&raw::Key::Rw(LockName::new(name)?)))
    }

    /// `(holders, waiters)` of the semaphore `name`.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidName`].
    pub fn semaphore_counts(&self, name: &str) -> Result<(usize, usize)> {
        Ok(self.0.counts(&raw::Key::Semaphore(LockName::new(name)?)))
    }
}
