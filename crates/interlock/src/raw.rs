//! The traits a backend implements.
//!
//! A backend implements ONE acquisition method ([`RawProvider::acquire`]: "try once, or wait until
//! a deadline") and a held-lock type ([`RawHeld`]). Everything else in the contract is written once
//! in the core on top of these: the public try / timeout / wait-forever forms, in-process queueing
//! of waiters, deadlines, the lease monitor, the lost signal, release on drop, cancel-safe release
//! and the blocking facade.
//!
//! Rules for implementors:
//! - `acquire` must be cancel-safe: dropping its future at any await point leaves nothing behind
//!   (no lock held, no queue node, no waiter key). What needs a round trip to undo (delete our
//!   queue node, revoke our lease, close a session that may hold a grant) goes in a [`Cleanup`],
//!   armed as soon as the thing exists and disarmed when `acquire` returns the lock: the core drops
//!   the future at the caller's deadline or cancellation, and the cleanup then finishes on a
//!   runtime that outlives the caller ([`spawn_cleanup`]).
//! - A backend whose waits time out on the server by themselves (`GET_LOCK(name, t)`,
//!   `lock_timeout`, a ZooKeeper wait with a deadline) says so with
//!   [`RawProvider::deadline_grace`]: it then honours the deadline of [`Wait::Until`] itself and
//!   answers `Ok(None)` through its normal path, and the core cancels it only when the grace has
//!   passed after the deadline too. A grant that races the timeout is returned as held (also just
//!   after the deadline) or released by the undo, never left behind.
//! - Background work of the backend's own (a connection's driver future, a session's event loop
//!   or keep-alive, watch streams, requests of a quorum round that outlive its answer) runs as
//!   tasks of the provider's [`Tasks`], which the backend gets from the core when it connects:
//!   counted, aborted (or, for [`Tasks::spawn_finishing`], waited for) at close and at the drop of
//!   the provider's last handle. Never `tokio::spawn` directly: a task nothing tracks outlives its
//!   provider. A held lock needs no task of its own (below).
//! - `acquire` waits on the backend's own signal, not by sleeping in a loop; a bounded re-check is
//!   allowed where a peer tool can release without signalling, and must be documented.
//! - Every acquisition is an independent holder, even within one process.
//! - How locks expire is the backend's [`LeaseModel`], in its [`Capabilities`] (and its registry
//!   entry): none, a lease per lock, or one per session. The URL's `lease` and `renew` options are
//!   parsed by [`LeaseConfig::from_url`] from that model, never by hand; a per-call lease is
//!   refused by the core unless the model is [`LeaseModel::PerLock`].
//! - [`RawHeld::valid_until`] and each [`Renewal::Until`] report the validity the backend can
//!   prove (from when the request was sent; shorter than the lease where the server granted less:
//!   a lock handed over near the end of its lease, a TTL rounded down, a session's remaining
//!   time). The core's monitor renews before that validity minus the lease's margin (lease minus
//!   renewal interval), at once when less is left: a backend never renews inside `acquire`.
//! - [`RawHeld::release`] is idempotent and only ever releases this holder's own lock. Its future
//!   may be dropped at any await point (a caller cancelling `Guard::release()`); the core then
//!   calls `release` again, as for a dropped guard, and runs it to completion in the background.
//!   Release synchronously when you can (before the returned future first waits): a dropped guard
//!   is then released before `drop` returns.
//! - [`RawHeld::renew`] may be dropped at any await point (the guard was released, or the lease
//!   ran out while it was in flight).
//! - A loss that the backend learns by an event (session expired, connection closed, watched key
//!   deleted) is reported through the future of [`RawHeld::watch_lost`], which the core's one
//!   monitor per guard awaits: backends spawn no task of their own to watch a held lock.
//! - Constants and helpers a backend needs live here or in the registry (`backends/mod.rs`),
//!   never in the core's `provider.rs`, `guard.rs`, `lease.rs` or `blocking.rs`, which backends do
//!   not import.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::name::LockName;
use crate::url::{LockUrl, UrlOptions};

pub(crate) mod cleanup;
mod tasks;

pub use cleanup::{
    Cleanup, finish_cleanups, finish_cleanups_blocking, spawn_cleanup, spawn_detached, tokio_context_destroyed,
};
pub use tasks::Tasks;

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
    /// Unless the backend owns its deadline ([`RawProvider::deadline_grace`]), the core enforces
    /// it by dropping the future at the deadline, so backends may rely on cancellation instead of
    /// checking it themselves.
    Until(Option<Instant>),
}

/// The lease of a lock when neither the URL nor the acquisition sets one: 10 s, renewed every
/// third of it.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// How a backend's locks can expire, stated once: in its registry entry
/// ([`crate::backends::Backend::capabilities`]) and in [`Capabilities::lease`] (where one URL may
/// choose another: `memory://` runs in each).
///
/// The model decides which lease settings apply: the URL's `lease` and `renew` options
/// ([`LeaseConfig::from_url`]), and the per-call [`crate::AcquireOptions::lease`] and
/// [`crate::AcquireOptions::renew_every`], which the core refuses with
/// [`crate::Error::Unsupported`] unless the model is [`LeaseModel::PerLock`].
///
/// # Examples
///
/// ```
/// use interlock::raw::LeaseModel;
/// let redis = interlock::backends::for_scheme("redis").unwrap();
/// assert_eq!(redis.capabilities.lease, LeaseModel::PerLock);
/// assert!(!LeaseModel::None.expires() && LeaseModel::PerSession.expires());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LeaseModel {
    /// Locks do not expire while the process lives: they last as long as a file description
    /// (`file`) or a connection (MySQL, PostgreSQL), and are lost only by an event (the
    /// connection closed). No lease option applies.
    #[default]
    None,
    /// Each lock has a lease of its own (Redis, Redlock): the URL's `lease` and `renew` are the
    /// defaults, each acquisition may set its own, and the core's monitor renews each guard.
    PerLock,
    /// One lease for every lock of the provider: its session's (a ZooKeeper session timeout, an
    /// etcd lease's TTL), set by the URL's `lease` and `renew` only. When the session goes,
    /// every lock of it goes; the guards' monitors follow the session's validity
    /// ([`RawHeld::renew`] reports it).
    PerSession,
}

impl LeaseModel {
    /// True when locks expire unless kept alive (a lease per lock or per session).
    pub const fn expires(self) -> bool {
        !matches!(self, LeaseModel::None)
    }

    /// A few words for messages.
    pub fn describe(self) -> &'static str {
        match self {
            LeaseModel::None => "its locks do not expire (they last as long as what holds them)",
            LeaseModel::PerLock => "each lock has a lease of its own",
            LeaseModel::PerSession => {
                "its locks share the lease of the provider's session, set by the URL's `lease` option"
            }
        }
    }
}

/// The URL options that set leases, for the backends whose model has them ([`LeaseConfig::from_url`]).
pub const LEASE_OPTIONS: &[&str] = &["lease", "renew"];

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

/// [`DEFAULT_LEASE`], renewed every third of it.
impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig { lease: DEFAULT_LEASE, renew_every: DEFAULT_LEASE / 3 }
    }
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

    /// The URL's lease settings for a backend whose locks expire as `model` says: the one place
    /// where the options `lease` and `renew` are read (taken from `opts`). `None` for
    /// [`LeaseModel::None`], whose URLs may not set them; otherwise the URL's lease (default
    /// [`DEFAULT_LEASE`]) renewed every `renew` (default a third of the lease), checked.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidUrl`] for a lease option on a backend without leases, a value that is
    /// not a duration, or one outside the bounds of [`LeaseConfig::new`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use interlock::LockUrl;
    /// use interlock::raw::{LeaseConfig, LeaseModel};
    /// let url = LockUrl::parse("redis://h?lease=30s").unwrap();
    /// let lease = LeaseConfig::from_url(&url, &mut url.options(), LeaseModel::PerLock).unwrap().unwrap();
    /// assert_eq!((lease.lease, lease.renew_every), (Duration::from_secs(30), Duration::from_secs(10)));
    /// let url = LockUrl::parse("file:///tmp/x?lease=30s").unwrap();
    /// assert!(LeaseConfig::from_url(&url, &mut url.options(), LeaseModel::None).unwrap_err().is_usage());
    /// ```
    pub fn from_url(url: &LockUrl, opts: &mut UrlOptions<'_>, model: LeaseModel) -> Result<Option<LeaseConfig>> {
        let lease = opts.take_duration("lease")?;
        let renew = opts.take_duration("renew")?;
        if !model.expires() {
            return match (lease, renew) {
                (None, None) => Ok(None),
                (l, _) => {
                    let which = if l.is_some() { "lease" } else { "renew" };
                    Err(url.invalid(format!("option `{which}`: this backend has no leases: {}", model.describe())))
                }
            };
        }
        let lease = lease.unwrap_or(DEFAULT_LEASE);
        let config = LeaseConfig::new(lease, renew.unwrap_or(lease / 3)).map_err(|e| match e {
            Error::InvalidArgument(reason) => url.invalid(reason),
            other => other,
        })?;
        Ok(Some(config))
    }

    /// How long before the validity runs out the monitor renews: the lease minus the renewal
    /// interval (a lock renewed every third of its lease is renewed with two thirds left).
    pub fn margin(&self) -> Duration {
        self.lease.saturating_sub(self.renew_every)
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

/// Everything a backend needs to know about one acquisition. Made by the core.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Request {
    /// The lock name.
    pub name: LockName,
    /// The primitive.
    pub kind: LockKind,
    /// Lease settings (already validated): the acquisition's or the URL's for
    /// [`LeaseModel::PerLock`], the session's (the URL's) for [`LeaseModel::PerSession`];
    /// [`DEFAULT_LEASE`], unused, for backends whose locks do not expire.
    pub lease: LeaseConfig,
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

    /// Extends the lease to `lease` from now (for [`LeaseModel::PerSession`]: checks that the lock
    /// is still held and reports the session's validity, keeping the session alive if the
    /// backend's keep-alive is the renewal itself). Only called when [`RawHeld::valid_until`] is
    /// `Some`: by the core's monitor, before the last validity minus the lease's margin.
    fn renew(&self, lease: Duration) -> BoxFuture<'_, Result<Renewal>> {
        let _ = lease;
        Box::pin(async { Ok(Renewal::Lost) })
    }

    /// Releases the lock. Idempotent; never releases another holder's lock. Returns `Ok(false)`
    /// when the backend no longer held the lock for us (expired, deleted, taken over): the core
    /// then reports [`crate::Error::LockLost`], since the critical section may not have been
    /// exclusive.
    ///
    /// The core calls it for `Guard::release()` and for a dropped guard (then through
    /// [`spawn_cleanup`]: work done before the future first waits happens inside `drop`). The
    /// guard's in-process queue place is handed to the next local waiter only when this future has
    /// completed (or failed). If the caller drops `Guard::release()` mid-way, the core calls
    /// `release` again the way a dropped guard does.
    fn release(&self) -> BoxFuture<'_, Result<bool>>;

    /// A future that completes, with a one-line reason, when the backend learns by an event that
    /// the lock is gone: a ZooKeeper session expired, the SQL connection holding it closed, a
    /// watched key was deleted or overwritten. `None` (the default) for backends that learn of a
    /// loss only through [`RawHeld::renew`] or not at all.
    ///
    /// Called once, right after the acquisition. The core's monitor (one task per guard, which
    /// also renews the lease) awaits it and drops it when the guard is released or dropped, so the
    /// future must own what it needs (`'static`) and must not complete for any other reason than a
    /// loss (a watch that ends without news should stay pending).
    fn watch_lost(&self) -> Option<BoxFuture<'static, String>> {
        None
    }

    /// Duplicates of the file descriptors whose open file descriptions hold this lock, for a
    /// child process to inherit (as `flock(1)` hands its lock to the command it runs). Empty for
    /// backends whose locks do not live in file descriptors (the default).
    fn duplicate_fds(&self) -> std::io::Result<Vec<std::os::fd::OwnedFd>> {
        Ok(Vec::new())
    }

    /// Called in a forked child for a lock its parent holds (see [`crate::Guard::forget_after_fork`]):
    /// lets go of this process's copy of whatever holds the lock, WITHOUT releasing it, which
    /// would release the parent's lock. The file backend closes its inherited descriptors (an
    /// `flock` unlock from the child would unlock the parent's open file description). The
    /// default does nothing: the caller forgets the object, leaving the parent's lock, its
    /// connection and its session alone.
    fn forget_after_fork(&self) {}
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

    /// Whether this backend's waits time out by themselves, and how long after the deadline the
    /// core may still wait for their answer.
    ///
    /// `None` (the default): the core drops the acquisition's future at the deadline of
    /// [`Wait::Until`], and the backend's undo ([`Cleanup`]) removes what it left.
    ///
    /// `Some(grace)`: the backend honours the deadline itself (the server's own timeout:
    /// `GET_LOCK(name, t)`, `lock_timeout`, a wait with a deadline) and answers `Ok(None)` through
    /// its normal path; the core drops the future only once `grace` has passed after the deadline
    /// as well (a server that does not answer), so cancellation stays the exception. A grant that
    /// arrives after the deadline but within the grace is returned to the caller as held. Make the
    /// grace cover the answer's way back (a round trip, the command timeout).
    fn deadline_grace(&self) -> Option<Duration> {
        None
    }

    /// Stops the backend's background work (pub/sub connections, sessions, keep-alives) and
    /// closes its connections. Called once, by [`crate::Provider::close`] or, best-effort in the
    /// background, when the last handle of the provider is dropped. Locks still held through
    /// this provider may then be lost (their guards say so). The default does nothing: for
    /// backends without background work.
    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
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
    /// Read-write locks are supported (their read side, shared holders).
    pub rwlock: bool,
    /// Semaphores are supported.
    pub semaphore: bool,
    /// How locks expire (none, per lock, per session): which lease settings apply.
    pub lease: LeaseModel,
}

impl Capabilities {
    /// Builds a capability set (the struct is `#[non_exhaustive]`), with every primitive
    /// supported and locks that do not expire ([`Capabilities::with_lease`] says otherwise).
    pub const fn new(cross_process: bool, can_lose: bool, fencing: bool) -> Self {
        Capabilities { cross_process, can_lose, fencing, rwlock: true, semaphore: true, lease: LeaseModel::None }
    }

    /// The same, with locks that expire as `model` says (the default is [`LeaseModel::None`]).
    pub const fn with_lease(mut self, model: LeaseModel) -> Self {
        self.lease = model;
        self
    }

    /// The same, without read-write locks: the core refuses them with
    /// [`crate::Error::Unsupported`] before asking the backend.
    pub const fn without_rwlock(mut self) -> Self {
        self.rwlock = false;
        self
    }

    /// The same, without semaphores (refused as for [`Capabilities::without_rwlock`]).
    pub const fn without_semaphore(mut self) -> Self {
        self.semaphore = false;
        self
    }

    /// Whether the backend supports `kind`.
    pub fn supports(&self, kind: LockKind) -> bool {
        match kind {
            LockKind::Mutex | LockKind::Write => true,
            LockKind::Read => self.rwlock,
            LockKind::Semaphore { .. } => self.semaphore,
        }
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

/// A "lock lost" signal: set once, never cleared. The core keeps one per guard; a backend may
/// use one per holder to build its [`RawHeld::watch_lost`] future (see [`LostSignal::reason_when_set`]).
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

    /// A future that completes with the reason when the signal is set.
    pub fn reason_when_set(&self) -> impl Future<Output = String> + Send + 'static {
        let wait = self.wait();
        let this = self.clone();
        async move {
            wait.await;
            this.reason().unwrap_or_default()
        }
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
