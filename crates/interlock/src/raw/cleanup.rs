//! Work that must finish after the future that started it is gone: the one helper for undo work
//! (a cancelled acquisition's queue node, key, lease or session) and for the release of a dropped
//! guard; and the way to let that work finish before the process exits ([`finish_cleanups`]).

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex as StdMutex, OnceLock};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, Runtime};
use tokio::sync::Notify;

use super::BoxFuture;

/// Runs `work` to completion even though the caller does not wait for it.
///
/// The work starts at once, on the calling thread, and runs until it first has to wait; the rest
/// runs as a task on a runtime that outlives the caller's future:
///
/// - the current tokio runtime, when there is one (the runtime that owns the backend's
///   connections, in practice);
/// - otherwise a small background runtime of interlock's own (one thread, `interlock-cleanup`,
///   started on first use and kept for the life of the process): a guard dropped on a plain
///   thread, a cleanup started from the blocking facade's caller.
///
/// Work that never has to wait (releasing a file lock, editing in-process state) therefore
/// completes before `spawn_cleanup` returns.
///
/// On a thread whose thread-locals are already destroyed (a thread-local's destructor, or an
/// `atexit` handler: the C library runs those after the main thread's thread-locals are gone,
/// and uWSGI finalizes Python there), no runtime can be entered or built: the work then starts
/// on a new thread (`interlock-cleanup`, with thread-locals of its own, on the background
/// runtime) and this call waits for its first poll, so it never panics and work that never
/// waits is still done when it returns.
///
/// When a runtime shuts down, tokio drops its unfinished tasks at their next await point, and
/// cleanups are no exception: what they did not do is then left to the backend's own safety net
/// (a lease that expires, a session or connection that closes when the process exits or when the
/// dropped task drops it). The blocking facade lets its own runtime's tasks finish first (for a
/// few seconds) when its last handle is dropped.
///
/// Backends use it through [`Cleanup`], which runs the work only when an acquisition is
/// abandoned.
///
/// Work still running is counted: [`finish_cleanups`] (and [`finish_cleanups_blocking`]) wait
/// for it, so that a program about to exit (the `interlock` command after a timed-out wait, a
/// Python interpreter at exit) lets its undos and releases land first.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (tx, rx) = tokio::sync::oneshot::channel();
/// interlock::raw::spawn_cleanup(async move {
///     tokio::task::yield_now().await; // runs on the runtime after the caller moved on
///     let _ = tx.send("undone");
/// });
/// assert_eq!(rx.await.unwrap(), "undone");
/// # }
/// ```
pub fn spawn_cleanup<F>(work: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    spawn(work, true);
}

/// [`spawn_cleanup`] for work that [`finish_cleanups`] does not wait for: work whose loss at exit
/// harms nobody and that may take long on purpose (the end of a dropped provider's background
/// tasks: their loops are aborted in the first poll, and what is left are requests under way,
/// bounded by their own timeouts, that the connections' close at exit ends anyway).
pub fn spawn_detached<F>(work: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    spawn(work, false);
}

fn spawn<F>(work: F, tracked: bool)
where
    F: Future<Output = ()> + Send + 'static,
{
    let handle = match Handle::try_current() {
        Ok(handle) => Some(handle),
        Err(e) if e.is_thread_local_destroyed() => return from_a_dying_thread(Box::pin(work), tracked),
        Err(_) => background(),
    };
    let Some(handle) = handle else {
        tracing::warn!(
            "no tokio runtime and interlock's background runtime cannot start: cleanup work (a release, an undo) \
             is dropped; the backend's lease or session expiry will clean up"
        );
        return;
    };
    let mut work: BoxFuture<'static, ()> = Box::pin(work);
    {
        // The first poll runs here, in the runtime's context so that timers and I/O can register.
        let _enter = handle.enter();
        if work.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_ready() {
            return;
        }
    }
    // Polled once with a no-op waker: the task polls it again at once with its own waker.
    if tracked {
        // Counted until the task finishes or is dropped (a runtime that shuts down drops it).
        let pending = Pending::enter(SCOPE.with(|s| s.borrow().clone()));
        drop(handle.spawn(async move {
            let _pending = pending;
            work.await;
        }));
    } else {
        drop(handle.spawn(work));
    }
}

/// Cleanups of [`spawn_cleanup`] that are still running: process-wide ([`outstanding`]), or those
/// started inside one [`scoped`] call.
#[derive(Debug)]
pub(crate) struct Outstanding {
    count: StdMutex<usize>,
    /// For blocking waiters ([`finish_cleanups_blocking`]).
    changed: Condvar,
    /// For async waiters ([`finish_cleanups`]).
    notify: Notify,
}

fn outstanding() -> &'static Outstanding {
    static OUTSTANDING: OnceLock<Outstanding> = OnceLock::new();
    OUTSTANDING.get_or_init(Outstanding::new)
}

impl Outstanding {
    fn new() -> Outstanding {
        Outstanding { count: StdMutex::new(0), changed: Condvar::new(), notify: Notify::new() }
    }

    fn count(&self) -> usize {
        *self.count.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self) {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    fn done(&self) {
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.changed.notify_all();
            self.notify.notify_waiters();
        }
    }

    /// Blocks until none is left, at most `limit`; `true` when none is.
    pub(crate) fn wait_blocking(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        while *count > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            count = self.changed.wait_timeout(count, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }
}

thread_local! {
    /// The [`scoped`] call running on this thread, if any.
    static SCOPE: std::cell::RefCell<Option<Arc<Outstanding>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f`, and returns with its result the count of the cleanups that [`spawn_cleanup`] started
/// on this thread meanwhile (the undo of an acquisition that `f` gave up), for the caller to wait
/// for them alone, not for every cleanup of the process (the blocking facade does, after a
/// timeout).
pub(crate) fn scoped<R>(f: impl FnOnce() -> R) -> (R, Arc<Outstanding>) {
    let scope = Arc::new(Outstanding::new());
    let outer = SCOPE.with(|s| s.replace(Some(scope.clone())));
    let result = f();
    SCOPE.with(|s| *s.borrow_mut() = outer);
    (result, scope)
}

/// One running cleanup, counted process-wide and in the [`scoped`] call that started it until
/// dropped.
struct Pending(Option<Arc<Outstanding>>);

impl Pending {
    fn enter(scope: Option<Arc<Outstanding>>) -> Pending {
        outstanding().add();
        if let Some(s) = &scope {
            s.add();
        }
        Pending(scope)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        outstanding().done();
        if let Some(s) = &self.0 {
            s.done();
        }
    }
}

/// Waits, at most `limit`, until every cleanup started by [`spawn_cleanup`] in this process has
/// finished: the undos of cancelled or timed-out acquisitions (a waiter's place in a queue, a key
/// handed to it meanwhile) and the releases of dropped guards. Returns `true` when none is left,
/// `false` when the limit ran out first.
///
/// Call it before a program exits right after giving up a wait or dropping a guard: the work runs
/// on a tokio runtime, and a runtime that shuts down (the end of `#[tokio::main]`, `process::exit`)
/// drops it unfinished, leaving what it would have removed to the backend's expiry (a lease, a
/// waiter's registration). The `interlock` command calls it before it exits; the blocking facade
/// and the Python package wait the same way (see [`crate::blocking`]).
///
/// Await it on the runtime that runs the cleanups when that runtime has a single thread (a
/// `current_thread` runtime runs its tasks only while it is driven, and this future drives it).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> interlock::Result<()> {
/// use std::time::Duration;
/// let locks = interlock::connect("memory://finish-cleanups").await?;
/// let job = locks.mutex("job")?;
/// let held = job.lock().await?;
/// assert!(job.lock_timeout(Duration::from_millis(10)).await.is_err()); // its undo may be running
/// drop(held); // a release in the background
/// assert!(interlock::finish_cleanups(Duration::from_secs(5)).await);
/// # Ok(()) }
/// ```
pub async fn finish_cleanups(limit: Duration) -> bool {
    let o = outstanding();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        // Registered before the count is read, so that a last cleanup ending in between wakes us.
        let notified = o.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if o.count() == 0 {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return o.count() == 0;
        }
    }
}

/// [`finish_cleanups`] for a thread outside any async runtime: blocks it, at most `limit`. The
/// cleanups must run on a runtime with threads of its own (a multi-thread runtime, interlock's own
/// background runtime, the blocking facade's): a `current_thread` runtime that nobody drives makes
/// no progress while this blocks.
pub fn finish_cleanups_blocking(limit: Duration) -> bool {
    outstanding().wait_blocking(limit)
}

/// True on a thread whose thread-locals are already destroyed: in a thread-local's destructor,
/// or in an `atexit` handler (the C library runs those after the main thread's thread-locals are
/// gone; uWSGI finalizes Python there). Entering a tokio runtime (`Runtime::enter`, `block_on`,
/// building one) panics on such a thread; `Handle::spawn` still works. Code that drops guards or
/// providers, or waits for them, on paths that can run that late (a binding's destructors)
/// checks this first; [`spawn_cleanup`] does.
///
/// # Examples
///
/// ```
/// // An ordinary thread, inside or outside a runtime.
/// assert!(!interlock::raw::tokio_context_destroyed());
/// ```
pub fn tokio_context_destroyed() -> bool {
    matches!(Handle::try_current(), Err(e) if e.is_thread_local_destroyed())
}

/// [`spawn_cleanup`] on a thread whose thread-locals are destroyed, where entering (or building)
/// a runtime panics: a new thread starts the work and this one waits for that (the first poll,
/// never a wait: futures do not block).
fn from_a_dying_thread(work: BoxFuture<'static, ()>, tracked: bool) {
    let spawned = std::thread::Builder::new().name("interlock-cleanup".into()).spawn(move || spawn(work, tracked));
    match spawned {
        Ok(thread) => {
            if thread.join().is_err() {
                tracing::warn!("cleanup work (a release, an undo) panicked");
            }
        }
        Err(e) => tracing::warn!(
            error = %e,
            "cannot start a thread for cleanup work (a release, an undo) at thread exit: it is dropped; the \
             backend's lease or session expiry, or the process's exit, will clean up"
        ),
    }
}

/// interlock's own runtime, for cleanups started where no runtime is current.
fn background() -> Option<Handle> {
    static BACKGROUND: OnceLock<Option<Runtime>> = OnceLock::new();
    BACKGROUND
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("interlock-cleanup")
                .enable_all()
                .build()
                .inspect_err(|e| tracing::warn!(error = %e, "cannot start interlock's background runtime"))
                .ok()
        })
        .as_ref()
        .map(|rt| rt.handle().clone())
}

/// Undo work that runs if, and only if, the future holding it is dropped before it calls
/// [`Cleanup::disarm`].
///
/// A backend's `acquire` future can be dropped at any await point (the caller's deadline, a lost
/// `select!`, an aborted task). Whatever it created on the backend by then (a queue node, a key, a
/// lease, a session that may hold a grant) must go. Arm a `Cleanup` as soon as such a thing
/// exists, and disarm it when `acquire` returns the lock; if the future is dropped in between, the
/// work runs through [`spawn_cleanup`], on a runtime that outlives the caller. On the `Ok(None)`
/// path (the deadline, a failed try) just drop it: the undo is then started the same way.
///
/// The undo must be idempotent and must check ownership itself (delete the node only if it is
/// ours): it may run after the backend already gave the thing away.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use interlock::raw::Cleanup;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let node_exists = Arc::new(AtomicBool::new(false));
/// let acquire = {
///     let node_exists = node_exists.clone();
///     async move {
///         node_exists.store(true, Ordering::SeqCst); // e.g. create our queue node
///         let undo = {
///             let node_exists = node_exists.clone();
///             Cleanup::new(async move { node_exists.store(false, Ordering::SeqCst) })
///         };
///         std::future::pending::<()>().await; // wait for our turn ...
///         undo.disarm(); // ... never reached here: the caller gives up first
///     }
/// };
/// // The caller's deadline drops the acquisition mid-wait.
/// let _ = tokio::time::timeout(std::time::Duration::from_millis(10), acquire).await;
/// assert!(!node_exists.load(Ordering::SeqCst));
/// # }
/// ```
#[must_use = "a Cleanup runs its work when dropped; keep it until the acquisition succeeds"]
pub struct Cleanup {
    work: Option<BoxFuture<'static, ()>>,
}

impl Cleanup {
    /// Arms `work`.
    pub fn new<F>(work: F) -> Cleanup
    where
        F: Future<Output = ()> + Send + 'static,
    {
        Cleanup { work: Some(Box::pin(work)) }
    }

    /// The acquisition finished and keeps what it created: the work never runs.
    pub fn disarm(mut self) {
        self.work = None;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(work) = self.work.take() {
            spawn_cleanup(work);
        }
    }
}

impl fmt::Debug for Cleanup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cleanup").field("armed", &self.work.is_some()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn work_that_never_waits_completes_inline_even_without_a_runtime() {
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        spawn_cleanup(async move {
            n2.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn work_that_waits_finishes_on_the_background_runtime() {
        let (tx, rx) = std::sync::mpsc::channel();
        spawn_cleanup(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx.send(std::thread::current().name().map(str::to_owned));
        });
        let name = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(name.as_deref(), Some("interlock-cleanup"));
    }

    #[test]
    fn a_scope_counts_the_cleanups_started_in_it_and_no_others() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let ((), scope) = scoped(|| {
            spawn_cleanup(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                drop(tx);
            });
        });
        // Outside the scope: not counted in it.
        spawn_cleanup(async { tokio::time::sleep(Duration::from_secs(3)).await });
        assert!(!scope.wait_blocking(Duration::ZERO), "the scope's cleanup is still running");
        assert!(scope.wait_blocking(Duration::from_secs(20)), "the scope's cleanup finished");
        assert!(rx.recv_timeout(Duration::from_secs(1)).is_err(), "it ran to its end");
        // The process-wide count still has the other one.
        assert!(!finish_cleanups_blocking(Duration::ZERO));
    }

    /// Runs its closure when dropped: as a thread-local, when the thread's thread-locals are
    /// destroyed.
    struct AtThreadExit(Option<Box<dyn FnOnce()>>);

    impl Drop for AtThreadExit {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }

    thread_local! {
        static AT_THREAD_EXIT: std::cell::RefCell<Option<AtThreadExit>> = const { std::cell::RefCell::new(None) };
    }

    #[test]
    fn cleanup_from_a_thread_whose_tokio_context_is_destroyed() {
        // A provider or guard dropped by a thread-local's destructor after tokio's own context
        // thread-local is gone (as in an atexit handler, where uWSGI finalizes Python): both
        // kinds of work run, and nothing panics (a panic here aborts the test binary).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Registered first, destroyed last: after tokio's context (registered below).
            AT_THREAD_EXIT.with(|slot| {
                *slot.borrow_mut() = Some(AtThreadExit(Some(Box::new(move || {
                    let destroyed = matches!(Handle::try_current(), Err(e) if e.is_thread_local_destroyed());
                    let inline = Arc::new(AtomicUsize::new(0));
                    let n = inline.clone();
                    spawn_cleanup(async move {
                        n.fetch_add(1, Ordering::SeqCst);
                    });
                    let later = tx.clone();
                    spawn_cleanup(async move {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let _ = later.send("waited");
                    });
                    let _ = tx.send(if destroyed { "destroyed" } else { "alive" });
                    let _ = tx.send(if inline.load(Ordering::SeqCst) == 1 { "inline" } else { "not inline" });
                }))));
            });
            let _ = Handle::try_current();
        })
        .join()
        .unwrap();
        let got: Vec<_> = (0..3).map(|_| rx.recv_timeout(Duration::from_secs(20)).unwrap()).collect();
        assert_eq!(got, ["destroyed", "inline", "waited"]);
    }

    #[tokio::test]
    async fn disarmed_cleanup_never_runs() {
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        Cleanup::new(async move {
            n2.fetch_add(1, Ordering::SeqCst);
        })
        .disarm();
        tokio::task::yield_now().await;
        assert_eq!(n.load(Ordering::SeqCst), 0);
    }
}
