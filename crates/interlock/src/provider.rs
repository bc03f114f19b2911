//! The public async API: a [`Provider`] makes [`Mutex`], [`RwLock`] and [`Semaphore`] handles from
//! names; each handle acquires in three forms (try, timeout, wait forever) plus a `_with(options)`
//! form. All of it is written once here on top of [`RawProvider`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::guard::Guard;
use crate::lease::MonitorCount;
use crate::local::{LocalPermit, LocalQueues, Outcome};
use crate::name::LockName;
use crate::raw::{Capabilities, LeaseConfig, LeaseModel, LockKind, LockStatus, RawProvider, Request, Tasks, Wait};

/// How long an acquisition may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaitFor {
    /// One attempt; `Ok(None)` when the lock is held elsewhere.
    Try,
    /// Wait at most this long; then [`Error::Timeout`].
    Timeout(Duration),
    /// Wait until the lock is ours.
    Forever,
}

/// Options for one acquisition, for the `*_with` methods.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use interlock::AcquireOptions;
/// let opts = AcquireOptions::timeout(Duration::from_secs(5)).lease(Duration::from_secs(30));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcquireOptions {
    wait: WaitFor,
    lease: Option<Duration>,
    renew_every: Option<Duration>,
    local_queue: bool,
}

impl Default for AcquireOptions {
    fn default() -> Self {
        AcquireOptions::forever()
    }
}

impl AcquireOptions {
    /// One attempt.
    pub fn try_once() -> Self {
        AcquireOptions { wait: WaitFor::Try, lease: None, renew_every: None, local_queue: true }
    }

    /// Wait at most `timeout` (`Duration::ZERO` behaves like one attempt, but reports
    /// [`Error::Timeout`] instead of `None`).
    pub fn timeout(timeout: Duration) -> Self {
        AcquireOptions { wait: WaitFor::Timeout(timeout), ..Self::try_once() }
    }

    /// Wait as long as it takes.
    pub fn forever() -> Self {
        AcquireOptions { wait: WaitFor::Forever, ..Self::try_once() }
    }

    /// Sets the lease, for backends whose locks each have a lease of their own
    /// ([`LeaseModel::PerLock`]: Redis, Redlock, `memory://?lease=`). Renewal happens every third of
    /// it unless [`AcquireOptions::renew_every`] says otherwise. Elsewhere the acquisition is refused
    /// with [`Error::Unsupported`] (after the value is checked): a lock that does not expire, or one
    /// that shares its session's lease, cannot have the lease asked for.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Sets how often the lease is renewed (refused as [`AcquireOptions::lease`] is, on backends
    /// without a lease per lock).
    pub fn renew_every(mut self, every: Duration) -> Self {
        self.renew_every = Some(every);
        self
    }

    /// How long the acquisition may wait.
    pub fn wait(&self) -> WaitFor {
        self.wait
    }

    /// Skips the in-process queue: the acquisition goes straight to the backend, even when
    /// another acquisition of the same provider holds or waits for the name. For tests that must
    /// make two acquisitions of one provider meet at the backend (the conformance suite proves
    /// with it that a backend never lets two of them share a session's lock); applications have
    /// no use for it.
    #[doc(hidden)]
    pub fn without_local_queue(mut self) -> Self {
        self.local_queue = false;
        self
    }
}

/// Makes locks on one backend. Cheap to clone; clones share the in-process queues.
///
/// Create one with [`crate::connect`].
#[derive(Clone)]
pub struct Provider {
    inner: Arc<Inner>,
}

struct Inner {
    raw: Arc<dyn RawProvider>,
    /// Set by [`Provider::close`]: later acquisitions fail.
    closed: std::sync::atomic::AtomicBool,
    local: LocalQueues,
    monitors: Arc<MonitorCount>,
    /// The lease settings of acquisitions that set none (`None`: locks do not expire).
    lease: Option<LeaseConfig>,
    /// The backend's background tasks, shut down after its `close`.
    tasks: Tasks,
    url: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !*self.closed.get_mut() {
            let (raw, tasks) = (self.raw.clone(), self.tasks.clone());
            crate::raw::spawn_cleanup(async move {
                if let Err(e) = raw.close().await {
                    tracing::debug!(error = %e, "closing a dropped provider failed");
                }
                // The loops are aborted at once; a program about to exit does not wait
                // (`finish_cleanups`) for the bounded requests still under way.
                crate::raw::spawn_detached(async move { tasks.shutdown().await });
            });
        }
    }
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("url", &self.inner.url)
            .field("backend", &self.inner.raw)
            .field("lease", &self.inner.lease)
            .finish()
    }
}

impl Provider {
    /// Wraps a raw backend that has no background tasks. `lease`: the lease settings of
    /// acquisitions that set none (`None` for a backend whose locks do not expire). `url` must
    /// already be redacted.
    pub fn from_raw(raw: Arc<dyn RawProvider>, lease: Option<LeaseConfig>, url: String) -> Self {
        Provider::from_raw_with_tasks(raw, lease, Tasks::new(), url)
    }

    /// [`Provider::from_raw`] for a raw backend that spawns its background work through `tasks`:
    /// the provider shuts them down after the backend's `close`.
    pub fn from_raw_with_tasks(
        raw: Arc<dyn RawProvider>,
        lease: Option<LeaseConfig>,
        tasks: Tasks,
        url: String,
    ) -> Self {
        Provider {
            inner: Arc::new(Inner {
                raw,
                closed: std::sync::atomic::AtomicBool::new(false),
                local: LocalQueues::default(),
                monitors: Arc::default(),
                lease,
                tasks,
                url,
            }),
        }
    }

    /// The backend's short name (`file`, `memory`, ...).
    pub fn backend(&self) -> &'static str {
        self.inner.raw.backend()
    }

    /// The URL this provider was made from, password redacted.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// What the backend can do.
    pub fn capabilities(&self) -> Capabilities {
        self.inner.raw.capabilities()
    }

    /// The lease settings used when an acquisition does not set its own (for a
    /// [`LeaseModel::PerSession`] backend, the session's); `None` when locks do not expire.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> interlock::Result<()> {
    /// let expiring = interlock::connect("memory://?lease=30s").await?;
    /// assert_eq!(expiring.default_lease().map(|l| l.lease), Some(std::time::Duration::from_secs(30)));
    /// assert!(interlock::connect("memory://").await?.default_lease().is_none());
    /// # Ok(()) }
    /// ```
    pub fn default_lease(&self) -> Option<LeaseConfig> {
        self.inner.lease
    }

    /// How this provider's locks expire (see [`LeaseModel`]).
    pub fn lease_model(&self) -> LeaseModel {
        self.capabilities().lease
    }

    /// A mutex: one holder at a time.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] for an empty name, a name over 1024 bytes or one containing NUL.
    pub fn mutex(&self, name: impl AsRef<str>) -> Result<Mutex> {
        Ok(Mutex { provider: self.clone(), name: LockName::new(name)? })
    }

    /// A read-write lock: many readers or one writer.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] as for [`Provider::mutex`].
    pub fn rwlock(&self, name: impl AsRef<str>) -> Result<RwLock> {
        Ok(RwLock { provider: self.clone(), name: LockName::new(name)? })
    }

    /// A semaphore: at most `permits` holders at a time.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] as for [`Provider::mutex`]; [`Error::InvalidArgument`] when
    /// `permits` is 0.
    pub fn semaphore(&self, name: impl AsRef<str>, permits: u32) -> Result<Semaphore> {
        if permits == 0 {
            return Err(Error::InvalidArgument("a semaphore needs at least 1 permit".into()));
        }
        Ok(Semaphore { provider: self.clone(), name: LockName::new(name)?, permits })
    }

    /// Who holds `name` (as a mutex or read-write lock; semaphores report their permits where the
    /// backend can tell), as far as the backend can tell.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`]; backend errors.
    pub async fn status(&self, name: impl AsRef<str>) -> Result<LockStatus> {
        let name = LockName::new(name)?;
        self.inner.raw.status(&name).await
    }

    /// The counter of this provider's monitor tasks.
    pub(crate) fn monitors(&self) -> &Arc<MonitorCount> {
        &self.inner.monitors
    }

    /// Number of live background tasks of the backend ([`Tasks`]): zero once the provider is
    /// closed (a diagnostic, used by tests to show that none is left behind).
    #[doc(hidden)]
    pub fn task_count(&self) -> usize {
        self.inner.tasks.count()
    }

    /// The backend's background tasks, to count them after the provider is gone (a diagnostic).
    #[doc(hidden)]
    pub fn tasks(&self) -> Tasks {
        self.inner.tasks.clone()
    }

    /// Closes the provider: stops the backend's background work and closes its connections.
    /// Acquisitions through it (and its clones) fail from then on with [`Error::Unavailable`];
    /// locks still held through it may be lost on backends that hold them on a connection or a
    /// session (their guards say so, and `release()` reports it). Dropping the last handle of a
    /// provider closes it too, best-effort, in the background. Closing twice is harmless.
    ///
    /// # Errors
    ///
    /// The backend's error while closing (the provider is closed anyway).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> interlock::Result<()> {
    /// let locks = interlock::connect("memory://").await?;
    /// locks.close().await?;
    /// assert!(locks.mutex("x")?.try_lock().await.is_err());
    /// # Ok(()) }
    /// ```
    pub async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let closed = self.inner.raw.close().await;
        self.inner.tasks.shutdown().await;
        closed
    }

    /// True once [`Provider::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Number of names that have local waiters or holders in this provider (a diagnostic, used by
    /// tests to show that cancelled acquisitions leave nothing queued).
    #[doc(hidden)]
    pub fn local_queue_len(&self) -> usize {
        self.inner.local.len()
    }

    /// Number of live monitor tasks (lease renewal, loss events) of this provider's guards: one
    /// per held guard that has a lease or a loss event, zero once they are released, dropped or
    /// lost (a diagnostic, used by tests to show that monitors do not leak).
    #[doc(hidden)]
    pub fn monitor_count(&self) -> usize {
        self.inner.monitors.get()
    }

    /// The one acquisition path every public method goes through.
    async fn acquire(&self, name: &LockName, kind: LockKind, opts: AcquireOptions) -> Result<Option<Guard>> {
        let capabilities = self.capabilities();
        let lease = self.lease_config(opts, capabilities.lease, name)?;
        let (try_only, deadline) = match opts.wait {
            // A zero timeout is one attempt, with its round trip (a deadline that has already
            // passed would leave a network backend no time to answer).
            WaitFor::Try | WaitFor::Timeout(Duration::ZERO) => (true, None),
            WaitFor::Forever => (false, None),
            // A deadline too far to represent is "forever".
            WaitFor::Timeout(d) => (false, Instant::now().checked_add(d)),
        };
        let timeout = || match opts.wait {
            WaitFor::Timeout(waited) => Err(Error::Timeout { name: name.display(), waited }),
            _ => Ok(None),
        };
        if !capabilities.supports(kind) {
            let what = if matches!(kind, LockKind::Read) { "read-write locks" } else { "semaphores" };
            return Err(Error::Unsupported {
                backend: self.backend(),
                operation: format!("{what} are not supported by this backend (lock {})", name.display()),
            });
        }
        if self.is_closed() {
            return Err(Error::Unavailable {
                backend: self.backend(),
                message: format!("{}: this provider was closed", self.inner.url),
                source: None,
            });
        }
        let local = if opts.local_queue {
            match self.inner.local.enter(name, kind, try_only, deadline).await? {
                Outcome::Entered(p) => p,
                Outcome::Busy => return timeout(),
            }
        } else {
            LocalPermit::none()
        };
        let request = Request { name: name.clone(), kind, lease };
        let wait = if try_only { Wait::Try } else { Wait::Until(deadline) };
        let attempt = self.inner.raw.acquire(request, wait);
        // A backend that owns its deadline answers at it by itself; it is cancelled only when its
        // grace has passed too (a server that does not answer). Any other is cancelled at it.
        let cancel_at = match deadline {
            Some(d) => match self.inner.raw.deadline_grace() {
                Some(grace) => d.checked_add(grace),
                None => Some(d),
            },
            None => None,
        };
        let held = match cancel_at {
            Some(d) => match tokio::time::timeout_at(d.into(), attempt).await {
                Ok(r) => r?,
                Err(_) => None,
            },
            None => attempt.await?,
        };
        match held {
            Some(raw) => Ok(Some(Guard::new(name.clone(), kind, self.backend(), raw, lease, local, self))),
            None => timeout(),
        }
    }

    /// The lease settings of one acquisition: its own (checked first, so a bad value is a usage
    /// error on every backend), which only a backend with a lease per lock honours; otherwise the
    /// provider's.
    fn lease_config(&self, opts: AcquireOptions, model: LeaseModel, name: &LockName) -> Result<LeaseConfig> {
        let base = self.inner.lease.unwrap_or_default();
        if opts.lease.is_none() && opts.renew_every.is_none() {
            return Ok(base);
        }
        let lease = opts.lease.unwrap_or(base.lease);
        let renew_every = match (opts.renew_every, opts.lease) {
            (Some(r), _) => r,
            (None, Some(l)) => l / 3,
            (None, None) => base.renew_every,
        };
        let config = LeaseConfig::new(lease, renew_every)?;
        if model != LeaseModel::PerLock {
            return Err(Error::Unsupported {
                backend: self.backend(),
                operation: format!(
                    "a lease for one acquisition (lock {:?}) is not supported by this backend: {}",
                    name.display(),
                    model.describe()
                ),
            });
        }
        Ok(config)
    }
}

macro_rules! acquire_methods {
    ($kind:expr, $plain:ident, $try_:ident, $timeout:ident, $with:ident, $what:literal) => {
        #[doc = concat!("Waits until the ", $what, " is ours.")]
        ///
        /// # Errors
        ///
        /// Backend errors ([`Error::Unavailable`], ...); [`Error::PermitsMismatch`] for a semaphore
        /// used with two permit counts. Cancel-safe: dropping the future leaves nothing behind.
        pub async fn $plain(&self) -> Result<Guard> {
            self.$with(AcquireOptions::forever()).await?.ok_or_else(|| unreachable_none(&self.name))
        }

        #[doc = concat!("Makes one attempt to take the ", $what, "; `Ok(None)` when it is held elsewhere.")]
        ///
        /// # Errors
        ///
        /// Backend errors; contention is not an error.
        pub async fn $try_(&self) -> Result<Option<Guard>> {
            self.$with(AcquireOptions::try_once()).await
        }

        #[doc = concat!("Waits at most `timeout` for the ", $what, ".")]
        ///
        /// # Errors
        ///
        /// [`Error::Timeout`] when the time runs out; backend errors.
        pub async fn $timeout(&self, timeout: Duration) -> Result<Guard> {
            self.$with(AcquireOptions::timeout(timeout)).await?.ok_or_else(|| unreachable_none(&self.name))
        }

        #[doc = concat!("Takes the ", $what, " with explicit options. Returns `Ok(None)` only for [`WaitFor::Try`].")]
        ///
        /// # Errors
        ///
        /// As for the other forms; [`Error::InvalidArgument`] for a bad lease.
        pub async fn $with(&self, options: AcquireOptions) -> Result<Option<Guard>> {
            self.provider.acquire(&self.name, ($kind)(self), options).await
        }
    };
}

fn unreachable_none(name: &LockName) -> Error {
    // Only `WaitFor::Try` yields `None`; the waiting forms turn a missed deadline into `Timeout`.
    Error::Timeout { name: name.display(), waited: Duration::ZERO }
}

/// A named mutex. Made by [`Provider::mutex`].
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> interlock::Result<()> {
/// let locks = interlock::connect("memory://").await?;
/// let job = locks.mutex("nightly-report")?;
/// let guard = job.lock().await?;
/// assert!(job.try_lock().await?.is_none()); // not re-entrant: a second holder is refused
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Mutex {
    provider: Provider,
    name: LockName,
}

impl Mutex {
    acquire_methods!(|_: &Self| LockKind::Mutex, lock, try_lock, lock_timeout, lock_with, "mutex");

    /// The lock name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }
}

/// A named read-write lock: many readers or one writer. Made by [`Provider::rwlock`].
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> interlock::Result<()> {
/// let locks = interlock::connect("memory://").await?;
/// let config = locks.rwlock("config")?;
/// let r1 = config.read().await?;
/// let r2 = config.read().await?; // readers share
/// assert!(config.try_write().await?.is_none());
/// drop((r1, r2));
/// let _w = config.write().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RwLock {
    provider: Provider,
    name: LockName,
}

impl RwLock {
    acquire_methods!(|_: &Self| LockKind::Read, read, try_read, read_timeout, read_with, "read lock");
    acquire_methods!(|_: &Self| LockKind::Write, write, try_write, write_timeout, write_with, "write lock");

    /// The lock name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }
}

/// A named counting semaphore. Made by [`Provider::semaphore`].
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> interlock::Result<()> {
/// let locks = interlock::connect("memory://").await?;
/// let slots = locks.semaphore("downloads", 2)?;
/// let a = slots.acquire().await?;
/// let b = slots.acquire().await?;
/// assert!(slots.try_acquire().await?.is_none());
/// # drop((a, b));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Semaphore {
    provider: Provider,
    name: LockName,
    permits: u32,
}

impl Semaphore {
    acquire_methods!(
        |s: &Self| LockKind::Semaphore { permits: s.permits },
        acquire,
        try_acquire,
        acquire_timeout,
        acquire_with,
        "permit"
    );

    /// The lock name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// The number of permits.
    pub fn permits(&self) -> u32 {
        self.permits
    }
}
