//! The traits a backend implements.
//!
//! A backend implements ONE acquisition method ([`RawProvider::acquire`]: "try once, or wait until
//! a deadline") and a held-lock type ([`RawHeld`]). Everything else in the contract is written once
//! in the core on top of these: the public try / timeout / wait-forever forms, in-process queueing
//! of waiters, deadlines, the lease monitor, the lost signal, release on drop and the blocking facade.
//!
//! Rules for implementors:
//! - `acquire` must be cancel-safe: dropping its future at any await point leaves nothing behind
//!   (no lock held, no queue node, no waiter key).
//! - `acquire` waits on the backend's own signal, not by sleeping in a loop; a bounded re-check is
//!   allowed where a peer tool can release without signalling, and must be documented.
//! - Every acquisition is an independent holder, even within one process.
//! - [`RawHeld::release`] is idempotent and only ever releases this holder's own lock.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::name::LockName;

/// A boxed, sendable future, as the raw traits return (they must stay object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which primitive, and which side of it, an acquisition is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LockKind {
    /// One holder.
    Mutex,
    /// The shared side of a read-write lock.
    Read,
    /// The exclusive side of a read-write lock.
    Write,
    /// One of `permits` holders.
    Semaphore {
        /// How many holders the semaphore admits.
        permits: u32,
    },
}

impl LockKind {
    /// True when no other holder may coexist (mutex, write lock).
    pub fn is_exclusive(self) -> bool {
        matches!(self, LockKind::Mutex | LockKind::Write)
    }

    /// A short word for messages: `mutex`, `read`, `write`, `semaphore`.
    pub fn as_str(self) -> &'static str {
        match self {
            LockKind::Mutex => "mutex",
            LockKind::Read => "read",
            LockKind::Write => "write",
            LockKind::Semaphore { .. } => "semaphore",
        }
    }
}

/// How long `acquire` may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wait {
    /// One attempt; contention returns `Ok(None)` at once.
    Try,
    /// Wait until the deadline (`None`: forever); at the deadline return `Ok(None)`.
    /// The core also enforces the deadline by dropping the future, so backends may rely on
    /// cancellation instead of checking it themselves.
    Until(Option<Instant>),
}

/// Lease settings for one acquisition (ignored by backends without leases).
///
/// The fields are public so that a backend can read them; the core checks every configuration it
/// uses with [`LeaseConfig::validate`] (through [`LeaseConfig::new`]) before an acquisition, so a
/// backend never sees one outside the bounds below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long the backend keeps the lock without a renewal.
    pub lease: Duration,
    /// How often the core renews it.
    pub renew_every: Duration,
}

impl LeaseConfig {
    /// The shortest lease accepted: 10 ms.
    pub const MIN_LEASE: Duration = Duration::from_millis(10);
    /// The longest lease accepted: one day. Longer leases are refused rather than clamped: a
    /// lock that outlives its holder by more than a day is a bug, not a setting.
    pub const MAX_LEASE: Duration = Duration::from_secs(24 * 60 * 60);
    /// The shortest renewal interval accepted: 1 ms (the longest is just under the lease).
    pub const MIN_RENEW_EVERY: Duration = Duration::from_millis(1);

    /// A checked lease configuration.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidArgument`] unless `MIN_LEASE <= lease <= MAX_LEASE` and
    /// `MIN_RENEW_EVERY <= renew_every < lease`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use interlock::raw::LeaseConfig;
    /// assert!(LeaseConfig::new(Duration::from_secs(30), Duration::from_secs(10)).is_ok());
    /// assert!(LeaseConfig::new(Duration::MAX, Duration::from_secs(10)).unwrap_err().is_usage());
    /// assert!(LeaseConfig::new(Duration::from_secs(1), Duration::from_secs(1)).is_err());
    /// ```
    pub fn new(lease: Duration, renew_every: Duration) -> Result<Self> {
        let config = LeaseConfig { lease, renew_every };
        config.validate()?;
        Ok(config)
    }

    /// A checked lease renewed every third of it (the default renewal).
    ///
    /// # Errors
    ///
    /// As [`LeaseConfig::new`].
    pub fn with_lease(lease: Duration) -> Result<Self> {
        LeaseConfig::new(lease, lease / 3)
    }

    /// Checks the bounds of [`LeaseConfig::new`]: the one place where lease settings (from a URL,
    /// from [`crate::AcquireOptions`], from a backend's defaults) are checked.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidArgument`], with a one-line message naming the bound.
    pub fn validate(&self) -> Result<()> {
        let LeaseConfig { lease, renew_every } = *self;
        if lease < Self::MIN_LEASE {
            return Err(Error::InvalidArgument(format!("lease {lease:?} is too short (at least 10ms)")));
        }
        if lease > Self::MAX_LEASE {
            return Err(Error::InvalidArgument(format!("lease {} is too long (at most 1 day)", describe_long(lease))));
        }
        if renew_every < Self::MIN_RENEW_EVERY || renew_every >= lease {
            return Err(Error::InvalidArgument(format!(
                "renewal interval {} must be at least 1ms and shorter than the lease {lease:?}",
                describe_long(renew_every)
            )));
        }
        Ok(())
    }

    /// Until when a lock acquired (or renewed) by a request sent at `sent` is valid:
    /// `sent + lease`, checked.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidArgument`] when the instant cannot be represented (never for a
    /// validated configuration on a real clock).
    pub fn valid_from(&self, sent: Instant) -> Result<Instant> {
        instant_after(sent, self.lease)
    }
}

/// `at + d`, or [`crate::Error::InvalidArgument`] when the sum cannot be represented. Use it (not
/// `+`, which panics on overflow) wherever a duration that came from a user meets an `Instant`.
///
/// # Errors
///
/// [`crate::Error::InvalidArgument`] on overflow.
pub fn instant_after(at: Instant, d: Duration) -> Result<Instant> {
    at.checked_add(d)
        .ok_or_else(|| Error::InvalidArgument(format!("duration {} is too far in the future", describe_long(d))))
}

/// `Duration`'s `Debug` for durations up to a day; whole seconds beyond (`Duration::MAX` would
/// otherwise print 29 digits of seconds and nanoseconds).
fn describe_long(d: Duration) -> String {
    if d <= LeaseConfig::MAX_LEASE { format!("{d:?}") } else { format!("{}s", d.as_secs()) }
}

/// Everything a backend needs to know about one acquisition.
#[derive(Debug, Clone)]
pub struct Request {
    /// The lock name.
    pub name: LockName,
    /// The primitive.
    pub kind: LockKind,
    /// Lease settings, for backends whose locks expire.
    pub lease: LeaseConfig,
    /// Lets the backend report that the lock was lost (session expired, key deleted, ...).
    pub lost: LostSignal,
}

/// What the lease monitor learns from one renewal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Renewal {
    /// Still held, valid until this instant of the local monotonic clock.
    Until(Instant),
    /// The lock is no longer ours (key gone, overwritten, session expired).
    Lost,
}

/// A lock held on a backend.
pub trait RawHeld: Send + Sync + Debug + 'static {
    /// The fencing token of this acquisition, if the backend can give one.
    fn fencing_token(&self) -> Option<u64>;

    /// For backends whose locks expire: until when this lock is valid by the local monotonic
    /// clock, counted from the moment the acquiring request was sent. `None` when the lock cannot
    /// expire while the process lives.
    fn valid_until(&self) -> Option<Instant> {
        None
    }

    /// Extends the lease to `lease` from now. Only called when [`RawHeld::valid_until`] is `Some`.
    fn renew(&self, lease: Duration) -> BoxFuture<'_, Result<Renewal>> {
        let _ = lease;
        Box::pin(async { Ok(Renewal::Lost) })
    }

    /// Releases the lock. Idempotent; never releases another holder's lock. Returns `Ok(false)`
    /// when the backend no longer held the lock for us (expired, deleted, taken over): the core
    /// then reports [`crate::Error::LockLost`], since the critical section may not have been
    /// exclusive.
    fn release(&self) -> BoxFuture<'_, Result<bool>>;

    /// Duplicates of the file descriptors whose open file descriptions hold this lock, for a
    /// child process to inherit (as `flock(1)` hands its lock to the command it runs). Empty for
    /// backends whose locks do not live in file descriptors (the default).
    fn duplicate_fds(&self) -> std::io::Result<Vec<std::os::fd::OwnedFd>> {
        Ok(Vec::new())
    }

    /// Best-effort release when a guard is dropped without [`RawHeld::release`]. Backends that can
    /// release synchronously (closing a file) do so here; the default spawns `release` on the
    /// current tokio runtime when there is one.
    fn release_on_drop(self: Arc<Self>) {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(e) = self.release().await {
                        tracing::debug!(error = %e, "release on drop failed");
                    }
                });
            }
            Err(_) => tracing::warn!(
                "a guard was dropped outside a tokio runtime; its lock is released when the backend times it out"
            ),
        }
    }
}

/// A backend: makes raw holders from requests.
pub trait RawProvider: Send + Sync + Debug + 'static {
    /// The backend's short name (`file`, `memory`, `redis`, ...), used in errors and logs.
    fn backend(&self) -> &'static str;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Tries once ([`Wait::Try`]) or waits ([`Wait::Until`]) for the lock. Returns `Ok(None)` on
    /// contention (try) or at the deadline. Must be cancel-safe.
    fn acquire(&self, request: Request, wait: Wait) -> BoxFuture<'_, Result<Option<Arc<dyn RawHeld>>>>;

    /// Who holds `name`, as far as the backend can tell.
    fn status<'a>(&'a self, name: &'a LockName) -> BoxFuture<'a, Result<LockStatus>>;
}

/// What a backend supports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Locks are visible to other processes (false for `memory://`).
    pub cross_process: bool,
    /// Locks can be lost while the process lives (leases, sessions).
    pub can_lose: bool,
    /// Fencing tokens are always present.
    pub fencing: bool,
}

impl Capabilities {
    /// Builds a capability set (the struct is `#[non_exhaustive]`).
    pub fn new(cross_process: bool, can_lose: bool, fencing: bool) -> Self {
        Capabilities { cross_process, can_lose, fencing }
    }
}

/// Who holds a lock, as far as the backend can tell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockStatus {
    /// `None`: nobody; otherwise whether the holders are exclusive or shared.
    pub held: Option<HeldMode>,
    /// The holders the backend can name (process ids, client ids), possibly empty even when held.
    pub holders: Vec<String>,
    /// How many are waiting, where the backend can tell.
    pub waiters: Option<usize>,
    /// For a semaphore: its permits count, where known.
    pub permits: Option<u32>,
    /// Where the lock lives on the backend (a file path, a key), for humans.
    pub location: Option<String>,
}

impl LockStatus {
    /// A status that says "free" (the struct is `#[non_exhaustive]`).
    pub fn free() -> Self {
        LockStatus::default()
    }
}

/// How a lock is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeldMode {
    /// One exclusive holder.
    Exclusive,
    /// This many shared holders (readers or semaphore permits).
    Shared(usize),
}

/// The "lock lost" signal of one guard: set once, never cleared.
#[derive(Clone, Debug)]
pub struct LostSignal {
    tx: Arc<watch::Sender<Option<String>>>,
}

impl Default for LostSignal {
    fn default() -> Self {
        LostSignal::new()
    }
}

impl LostSignal {
    /// A fresh, unset signal.
    pub fn new() -> Self {
        LostSignal { tx: Arc::new(watch::Sender::new(None)) }
    }

    /// Marks the lock lost, with a reason for logs and errors. Later calls keep the first reason.
    pub fn set(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.tx.send_if_modified(|slot| {
            if slot.is_none() {
                tracing::info!(%reason, "lock lost");
                *slot = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// The reason, if the lock was lost.
    pub fn reason(&self) -> Option<String> {
        self.tx.borrow().clone()
    }

    /// True once the lock was lost.
    pub fn is_set(&self) -> bool {
        self.tx.borrow().is_some()
    }

    /// A future that completes when the signal is set.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            // `wait_for` only fails when the sender is dropped; we hold it alive in `tx` clones,
            // but if every clone is gone nobody can ever set it, so pending forever is right.
            if rx.wait_for(Option::is_some).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
