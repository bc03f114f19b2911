//! The blocking facade: the same API with the same names, for programs without an async runtime.
//!
//! A blocking [`Provider`] owns a small private tokio runtime (one worker thread) that runs the
//! backend and the lease monitor, so leases keep being renewed while the calling thread works.
//! Calling it from inside an async runtime is refused with [`Error::Unsupported`] rather than
//! deadlocking or panicking; use the async API there.
//!
//! A caller that waits forever for a file lock waits in `flock(2)` on its own thread: the
//! kernel's wake-up of that thread is the only one between a release and the caller holding the
//! lock. (Async callers, and callers with a deadline, wait on a pool thread instead; see
//! docs/backends/file.md.)
//!
//! # Examples
//!
//! ```
//! let locks = interlock::blocking::connect("memory://blocking-doc")?;
//! let counter = locks.mutex("counter")?;
//! std::thread::scope(|s| {
//!     for _ in 0..4 {
//!         s.spawn(|| {
//!             let guard = counter.lock().unwrap();
//!             // ... critical section ...
//!             guard.release().unwrap();
//!         });
//!     }
//! });
//! # Ok::<(), interlock::Error>(())
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::provider::AcquireOptions;
use crate::raw::{LockKind, LockStatus};

struct Runtime(Option<tokio::runtime::Runtime>);

/// How long, at most, a blocking acquisition that timed out waits for its undo before it returns
/// (the undo takes a round trip or two; a server that does not answer is left to its own expiry).
pub const UNDO_WAIT: Duration = Duration::from_secs(2);

/// Waits, at most `limit`, until every cleanup of the process has finished: the undos of abandoned
/// acquisitions and the releases of dropped guards, which run on a runtime in the background (see
/// [`crate::finish_cleanups`]). Call it before a program exits right after dropping a guard; a
/// timed-out acquisition of this facade already waited for its own undo. Returns `true` when none
/// is left.
///
/// # Errors
///
/// [`Error::Unsupported`] inside an async runtime (await [`crate::finish_cleanups`] there).
pub fn finish_cleanups(limit: Duration) -> Result<bool> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::Unsupported {
            backend: "blocking",
            operation: "the blocking API is not supported inside an async runtime; use the async API there".into(),
        });
    }
    Ok(crate::raw::finish_cleanups_blocking(limit))
}

/// How long a blocking provider's runtime, once its last handle is gone, keeps running the tasks
/// left on it (the release of a guard dropped just before) before it shuts down.
const DRAIN: Duration = Duration::from_secs(5);

impl Drop for Runtime {
    fn drop(&mut self) {
        let Some(rt) = self.0.take() else { return };
        if rt.metrics().num_alive_tasks() == 0 {
            // Never blocks, so dropping the last handle inside another runtime cannot panic.
            rt.shutdown_background();
            return;
        }
        // Tasks are left: a dropped guard's release on its way (a round trip on a network
        // backend). Let them finish, for at most DRAIN, on a thread of their own: this drop must
        // not block (it may run inside another runtime).
        let slot = Arc::new(std::sync::Mutex::new(Some(rt)));
        let for_thread = slot.clone();
        let spawned = std::thread::Builder::new().name("interlock-blocking-drain".into()).spawn(move || {
            let rt = for_thread.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(rt) = rt {
                rt.block_on(async {
                    let metrics = tokio::runtime::Handle::current().metrics();
                    let drained = async {
                        while metrics.num_alive_tasks() > 0 {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    };
                    if tokio::time::timeout(DRAIN, drained).await.is_err() {
                        tracing::debug!("tasks still running {DRAIN:?} after the blocking provider was dropped");
                    }
                });
                rt.shutdown_background();
            }
        });
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "cannot start a thread to drain interlock's runtime; shutting it down");
            if let Some(rt) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
                rt.shutdown_background();
            }
        }
    }
}

thread_local! {
    /// True while this thread runs a blocking call's future itself (inside [`Runtime::block_on`]).
    static BLOCKING_CALLER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// True when the future being polled runs on the thread of a blocking-facade caller, which may
/// block in a system call (nothing else runs on that thread meanwhile). Backends use it to wait
/// in the kernel without a helper thread when there is no deadline.
pub(crate) fn caller_may_block() -> bool {
    BLOCKING_CALLER.with(std::cell::Cell::get)
}

/// Runs `f` with this thread marked as one that does nothing else while it waits for a lock: an
/// acquisition without a deadline, polled on this thread while `f` runs, may then block the
/// thread in the kernel (the file backend's blocking `flock`), which saves a thread hand-off per
/// handoff of the lock. The blocking API does this for its callers.
///
/// Use it around the `block_on` of a program whose main future waits for a lock and has nothing
/// else to do meanwhile (as `interlock run` and `interlock hold` do). Tasks of a current-thread
/// runtime do not run while the thread is blocked; a multi-thread runtime's workers do.
///
/// # Examples
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let url = format!("file://{}", dir.path().display());
/// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// let token = interlock::blocking::on_waiting_thread(|| {
///     rt.block_on(async {
///         let locks = interlock::connect(&url).await?;
///         let guard = locks.mutex("nightly")?.lock().await?; // may block this thread in flock(2)
///         let token = guard.fencing_token();
///         guard.release().await?;
///         Ok::<_, interlock::Error>(token)
///     })
/// })?;
/// assert_eq!(token, Some(1));
/// # Ok::<(), interlock::Error>(())
/// ```
pub fn on_waiting_thread<R>(f: impl FnOnce() -> R) -> R {
    let _mark = CallerMayBlock::enter();
    f()
}

/// Marks this thread a blocking caller until dropped.
struct CallerMayBlock(bool);

impl CallerMayBlock {
    fn enter() -> Self {
        CallerMayBlock(BLOCKING_CALLER.with(|c| c.replace(true)))
    }
}

impl Drop for CallerMayBlock {
    fn drop(&mut self) {
        BLOCKING_CALLER.with(|c| c.set(self.0));
    }
}

impl Runtime {
    fn block_on<F: Future>(&self, f: F) -> Result<F::Output> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::Unsupported {
                backend: "blocking",
                operation: "the blocking API is not supported inside an async runtime; use the async API there".into(),
            });
        }
        match &self.0 {
            Some(rt) => {
                let _mark = CallerMayBlock::enter();
                Ok(rt.block_on(f))
            }
            None => Err(Error::Unsupported {
                backend: "blocking",
                operation: "this provider's runtime was shut down".into(),
            }),
        }
    }

    fn handle(&self) -> Option<&tokio::runtime::Runtime> {
        self.0.as_ref()
    }
}

/// Connects to the backend named by `url`, like [`crate::connect`], for blocking use.
///
/// # Errors
///
/// As [`crate::connect`]; [`Error::Io`] if the private runtime cannot start;
/// [`Error::Unsupported`] when called inside an async runtime.
pub fn connect(url: &str) -> Result<Provider> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("interlock-blocking")
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start interlock's runtime", e))?;
    let rt = Arc::new(Runtime(Some(rt)));
    let inner = rt.block_on(crate::connect(url))??;
    Ok(Provider { inner, rt })
}

/// A blocking provider; see [`crate::Provider`].
#[derive(Clone)]
pub struct Provider {
    inner: crate::Provider,
    rt: Arc<Runtime>,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("blocking::Provider").field(&self.inner).finish()
    }
}

impl Provider {
    /// The async provider behind this one.
    pub fn as_async(&self) -> &crate::Provider {
        &self.inner
    }

    /// The backend's short name.
    pub fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    /// A mutex; see [`crate::Provider::mutex`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`].
    pub fn mutex(&self, name: impl AsRef<str>) -> Result<Mutex> {
        Ok(Mutex { inner: self.inner.mutex(name)?, rt: self.rt.clone() })
    }

    /// A read-write lock; see [`crate::Provider::rwlock`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`].
    pub fn rwlock(&self, name: impl AsRef<str>) -> Result<RwLock> {
        Ok(RwLock { inner: self.inner.rwlock(name)?, rt: self.rt.clone() })
    }

    /// A semaphore; see [`crate::Provider::semaphore`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`]; [`Error::InvalidArgument`] for 0 permits.
    pub fn semaphore(&self, name: impl AsRef<str>, permits: u32) -> Result<Semaphore> {
        Ok(Semaphore { inner: self.inner.semaphore(name, permits)?, rt: self.rt.clone() })
    }

    /// Who holds `name`; see [`crate::Provider::status`].
    ///
    /// # Errors
    ///
    /// As the async form.
    pub fn status(&self, name: impl AsRef<str>) -> Result<LockStatus> {
        self.rt.block_on(self.inner.status(name))?
    }

    /// Closes the provider; see [`crate::Provider::close`].
    ///
    /// # Errors
    ///
    /// As the async form.
    pub fn close(&self) -> Result<()> {
        self.rt.block_on(self.inner.close())?
    }
}

macro_rules! blocking_methods {
    ($plain:ident, $try_:ident, $timeout:ident, $with:ident) => {
        /// Waits for the lock; see the async form.
        ///
        /// # Errors
        ///
        /// As the async form.
        pub fn $plain(&self) -> Result<Guard> {
            self.$with(AcquireOptions::forever())?.ok_or_else(|| Error::InvalidArgument("no guard".into()))
        }

        /// One attempt; `Ok(None)` when held elsewhere.
        ///
        /// # Errors
        ///
        /// As the async form.
        pub fn $try_(&self) -> Result<Option<Guard>> {
            self.$with(AcquireOptions::try_once())
        }

        /// Waits at most `timeout`.
        ///
        /// # Errors
        ///
        /// [`Error::Timeout`]; as the async form.
        pub fn $timeout(&self, timeout: Duration) -> Result<Guard> {
            self.$with(AcquireOptions::timeout(timeout))?.ok_or_else(|| Error::InvalidArgument("no guard".into()))
        }

        /// With explicit options; `Ok(None)` only for [`crate::WaitFor::Try`].
        ///
        /// A wait that times out returns once its undo (its place in a server's queue, a lock
        /// handed to it meanwhile) has landed, for at most [`UNDO_WAIT`] more: a program that
        /// exits right after the timeout leaves nothing behind.
        ///
        /// # Errors
        ///
        /// As the async form.
        pub fn $with(&self, options: AcquireOptions) -> Result<Option<Guard>> {
            let (result, undos) = crate::raw::cleanup::scoped(|| self.rt.block_on(self.inner.$with(options)));
            let result = result?;
            if matches!(result, Err(Error::Timeout { .. })) && !undos.wait_blocking(UNDO_WAIT) {
                tracing::debug!("the undo of a timed-out wait is still running; returning anyway");
            }
            Ok(result?.map(|g| Guard { inner: Some(g), rt: self.rt.clone() }))
        }
    };
}

/// A blocking mutex; see [`crate::Mutex`].
#[derive(Clone)]
pub struct Mutex {
    inner: crate::Mutex,
    rt: Arc<Runtime>,
}

impl Mutex {
    blocking_methods!(lock, try_lock, lock_timeout, lock_with);
}

/// A blocking read-write lock; see [`crate::RwLock`].
#[derive(Clone)]
pub struct RwLock {
    inner: crate::RwLock,
    rt: Arc<Runtime>,
}

impl RwLock {
    blocking_methods!(read, try_read, read_timeout, read_with);
    blocking_methods!(write, try_write, write_timeout, write_with);
}

/// A blocking semaphore; see [`crate::Semaphore`].
#[derive(Clone)]
pub struct Semaphore {
    inner: crate::Semaphore,
    rt: Arc<Runtime>,
}

impl Semaphore {
    blocking_methods!(acquire, try_acquire, acquire_timeout, acquire_with);
}

macro_rules! debug_via_inner {
    ($($t:ident),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(concat!("blocking::", stringify!($t))).field(&self.inner).finish()
            }
        }
    )*};
}
debug_via_inner!(Mutex, RwLock, Semaphore, Guard);

/// A held lock; see [`crate::Guard`]. Dropping it releases the lock.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct Guard {
    inner: Option<crate::Guard>,
    rt: Arc<Runtime>,
}

impl Guard {
    fn get(&self) -> &crate::Guard {
        // `inner` is only taken by `release` and `drop`, which consume the guard.
        self.inner.as_ref().unwrap_or_else(|| unreachable!("guard used after release"))
    }

    /// The lock name.
    pub fn name(&self) -> &str {
        self.get().name()
    }

    /// Which primitive this guard holds.
    pub fn kind(&self) -> LockKind {
        self.get().kind()
    }

    /// The fencing token; see [`crate::Guard::fencing_token`].
    pub fn fencing_token(&self) -> Option<u64> {
        self.get().fencing_token()
    }

    /// True once the lock is known to be lost; see [`crate::Guard::is_lost`].
    pub fn is_lost(&self) -> bool {
        self.get().is_lost()
    }

    /// Blocks up to `timeout` for the lock to be lost; true if it was.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] inside an async runtime.
    pub fn wait_lost_timeout(&self, timeout: Duration) -> Result<bool> {
        let lost = self.get().lost();
        self.rt.block_on(async move { tokio::time::timeout(timeout, lost).await.is_ok() })
    }

    /// Releases the lock; see [`crate::Guard::release`].
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] when the lock was lost before release; backend errors.
    pub fn release(mut self) -> Result<()> {
        match self.inner.take() {
            Some(g) => self.rt.block_on(g.release())?,
            None => Ok(()),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(g) = self.inner.take() {
            // Enter our runtime so a backend that releases in the background can spawn there;
            // not where this thread's thread-locals are gone (entering panics there, and
            // `spawn_cleanup` starts the release on a thread of its own).
            match self.rt.handle() {
                Some(rt) if !crate::raw::tokio_context_destroyed() => {
                    let _enter = rt.enter();
                    drop(g);
                }
                _ => drop(g),
            }
        }
    }
}
