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
//! | lost locks | only with `?lease=DUR`: then locks expire unless renewed, like a server's, and the fault hooks in [`MemorySpace`] can take them away |
//! | options | `lease=DUR` (enables expiry), `renew=DUR` (default lease/3) |
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

use config::MemoryConfig;
use raw::MemoryProvider;

use super::{Availability, Backend, Connected};
use crate::error::Result;
use crate::name::LockName;
use crate::raw::{BoxFuture, Capabilities};
use crate::url::LockUrl;

/// The memory backend's registry entry. Its locks expire only when the URL gives a lease.
pub(crate) const BACKEND: Backend = Backend {
    name: "memory",
    title: "memory (in-process reference)",
    schemes: &["memory"],
    url_form: "memory://[SPACE][?lease=DUR&renew=DUR]",
    holds: "in-process state",
    feature: None,
    docs: "docs/backends/memory.md",
    default_lease: None,
    capabilities: Capabilities { cross_process: false, can_lose: true, fencing: true },
    availability: Availability::Built,
    connect: Some(connect),
};

fn connect(url: &LockUrl) -> BoxFuture<'_, Result<Connected>> {
    Box::pin(async move {
        let config = MemoryConfig::from_url(url)?;
        let lease = config.lease;
        Ok((Arc::new(MemoryProvider::new(config)) as _, lease))
    })
}

/// Fault hooks and inspection for one `memory://` space, for tests of lease expiry and lost locks.
#[derive(Debug, Clone)]
pub struct MemorySpace(Arc<raw::Space>);

impl MemorySpace {
    /// The space that `memory://NAME` uses (`""` for `memory://`).
    pub fn named(name: &str) -> MemorySpace {
        MemorySpace(raw::Space::named(name))
    }

    /// Forgets every holder of `name`, as a server does when a lease runs out. The holders are
    /// not told: they find out at their next renewal. Returns how many holders were dropped.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidName`].
    pub fn expire(&self, name: &str) -> Result<usize> {
        Ok(self.0.expire(&LockName::new(name)?))
    }

    /// Tells every holder of `name` that its lock is gone (as a ZooKeeper session expiry would)
    /// and forgets them.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidName`].
    pub fn revoke(&self, name: &str) -> Result<usize> {
        Ok(self.0.revoke(&LockName::new(name)?))
    }

    /// Makes every lease renewal in this space fail (as when the server is unreachable) until
    /// called again with `false`.
    pub fn set_renewals_failing(&self, fail: bool) {
        self.0.set_renewals_failing(fail);
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
