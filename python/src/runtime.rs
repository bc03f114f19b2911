//! The process's tokio runtime, and the one way Python waits for the async core.
//!
//! One runtime per process (one worker thread) runs every provider's backend work, lease renewals
//! and waits. A forked child has none of its parent's threads: the runtime records the pid that
//! built it, and a child builds its own on first use, leaving the parent's copy untouched (it is
//! leaked, never dropped: dropping it would signal threads that do not exist here).
//!
//! Everything here is called with the GIL held and never waits while holding a lock, so a
//! `fork()` made from Python (which holds the GIL) cannot happen while one of these locks is held.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{RecvTimeoutError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use interlock::raw::tokio_context_destroyed;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

/// How often a waiting thread takes the GIL back to run Python's signal handlers, so that Ctrl-C
/// (`KeyboardInterrupt`) interrupts a wait within this time.
const SLICE: Duration = Duration::from_millis(20);

/// A runtime and the process that built it.
#[derive(Debug)]
pub(crate) struct Rt {
    pid: u32,
    rt: tokio::runtime::Runtime,
}

impl Rt {
    /// Enters the runtime, so that guards dropped and futures polled here find it. Not on a
    /// thread whose thread-locals are destroyed (it panics there): see [`Rt::drop_inside`].
    pub(crate) fn enter(&self) -> tokio::runtime::EnterGuard<'_> {
        self.rt.enter()
    }

    /// Drops `value` (a future, a guard, a channel that may hold one) inside this runtime, so
    /// that a backend that releases in the background spawns there. On a thread whose
    /// thread-locals are destroyed, where entering panics, the drop runs on the runtime's worker,
    /// and this thread waits for it at most until [`exit_deadline`].
    pub(crate) fn drop_inside<T: Send + 'static>(&self, value: T) {
        if !tokio_context_destroyed() {
            let _enter = self.rt.enter();
            drop(value);
            return;
        }
        self.on_worker_until_exit_deadline(async move { drop(value) });
    }

    /// Drops a guard taken by this process. At interpreter exit (after the `atexit` hook, or on
    /// a thread whose thread-locals are destroyed: uWSGI finalizes Python in a C `atexit`
    /// handler) the guard is released on the runtime's worker and this thread waits for the
    /// release, at most until [`exit_deadline`], so that it reaches the backend before the
    /// process ends; otherwise as [`Rt::drop_inside`] (a release that has to wait finishes in
    /// the background, as the core's drop does).
    pub(crate) fn drop_guard(&self, guard: interlock::Guard) {
        if !SHUTTING_DOWN.load(Ordering::SeqCst) && !tokio_context_destroyed() {
            self.drop_inside(guard);
            return;
        }
        self.on_worker_until_exit_deadline(async move {
            // Nobody is left to tell of a failure (a lost lock, a server gone).
            let _ = guard.release().await;
        });
    }

    /// Runs `work` as a task of the runtime (through its handle: no thread-locals needed) and
    /// waits for it, at most until [`exit_deadline`]. For interpreter exit only: the caller holds
    /// the GIL, and `work` must not need it.
    fn on_worker_until_exit_deadline<F: Future<Output = ()> + Send + 'static>(&self, work: F) {
        let (done, finished) = sync_channel(1);
        drop(self.rt.spawn(async move {
            work.await;
            let _ = done.send(());
        }));
        let _ = finished.recv_timeout(exit_deadline().saturating_duration_since(Instant::now()));
    }

    /// Aborts `task` and waits until it is gone: its future dropped (the acquisition it ran
    /// cancelled, its local queue place and backend waiter undone) or finished. So when a
    /// cancelled call returns, nothing of it is left, not even for a moment.
    pub(crate) fn cancel(&self, py: Python<'_>, task: tokio::task::JoinHandle<()>) {
        task.abort();
        // Without the GIL: the task may be handing a result to Python at this moment.
        py.detach(|| {
            if tokio_context_destroyed() {
                // `block_on` panics here: a task of the runtime waits for it instead.
                self.on_worker_until_exit_deadline(async move {
                    let _ = task.await;
                });
            } else {
                let _ = self.rt.block_on(task);
            }
        });
    }

    /// True when this runtime was built by this process (not inherited through `fork`).
    pub(crate) fn is_ours(&self) -> bool {
        self.pid == std::process::id()
    }
}

static RUNTIME: Mutex<Option<Arc<Rt>>> = Mutex::new(None);

/// This process's runtime, built on first use (and again in a forked child).
pub(crate) fn runtime(_py: Python<'_>) -> PyResult<Arc<Rt>> {
    let pid = std::process::id();
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rt) = slot.as_ref().filter(|rt| rt.pid == pid) {
        return Ok(rt.clone());
    }
    if let Some(parents) = slot.take() {
        // Inherited through fork: its worker threads live only in the parent.
        std::mem::forget(parents);
    }
    let build = || {
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("interlock-py").enable_all().build()
    };
    let built = if tokio_context_destroyed() {
        // Building enters the runtime, which panics on a thread whose thread-locals are gone
        // (the first use by a forked uWSGI worker may come from its `atexit` hooks): built on a
        // thread of its own.
        std::thread::spawn(build).join().unwrap_or_else(|_| Err(std::io::Error::other("the builder panicked")))
    } else {
        build()
    };
    let rt = built.map_err(|e| PyRuntimeError::new_err(format!("cannot start interlock's runtime: {e}")))?;
    let rt = Arc::new(Rt { pid, rt });
    *slot = Some(rt.clone());
    Ok(rt)
}

/// Runs `fut` to completion for a Python caller, on the calling thread: first polled once inline
/// (an uncontended lock costs no more), then driven by `Runtime::block_on` without the GIL, in
/// slices of [`SLICE`], taking the GIL back between slices to run signal handlers. The waiting
/// thread is woken directly by whatever wakes the acquisition (the file watcher, a socket), with
/// no hop through the runtime's worker. An exception from a handler (`KeyboardInterrupt`) drops
/// the future right there, inside the runtime: the core is cancel-safe, so when the exception
/// reaches Python nothing of the acquisition is left held or queued.
pub(crate) fn wait<T, F>(py: Python<'_>, rt: &Rt, fut: F) -> PyResult<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut fut = Box::pin(fut);
    let inside_a_runtime = match tokio::runtime::Handle::try_current() {
        // This thread's thread-locals are gone (an `atexit` handler of the C program, where
        // uWSGI finalizes Python): no runtime can be entered here, so the work runs on ours.
        Err(e) if e.is_thread_local_destroyed() => return wait_on_worker(py, rt, fut),
        Err(_) => false,
        Ok(_) => true,
    };
    {
        let _enter = rt.enter();
        if let Poll::Ready(v) = fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            return Ok(v);
        }
    }
    if inside_a_runtime {
        // Called from inside some tokio runtime (another extension's thread, say), where
        // `block_on` is not allowed: the work runs on our worker instead.
        return wait_on_worker(py, rt, fut);
    }
    loop {
        let (done, back) = py.detach(move || {
            let done = rt.rt.block_on(async { tokio::time::timeout(SLICE, fut.as_mut()).await.ok() });
            (done, fut)
        });
        fut = back;
        if let Some(v) = done {
            return Ok(v);
        }
        if let Err(interrupted) = py.check_signals() {
            rt.drop_inside(fut);
            return Err(interrupted);
        }
    }
}

/// [`wait`] for a caller inside another tokio runtime: `fut` runs as a task on our runtime while
/// this thread waits on a channel without the GIL, in slices, running signal handlers between
/// them; an exception from one aborts the task and waits until it is gone.
fn wait_on_worker<T, F>(py: Python<'_>, rt: &Rt, fut: Pin<Box<F>>) -> PyResult<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = sync_channel(1);
    let task = rt.rt.spawn(async move {
        let v = fut.await;
        // The receiver may be gone (the caller was interrupted): `v` is dropped here, inside the
        // runtime.
        let _ = tx.send(v);
    });
    let mut rx = rx;
    loop {
        let (got, back) = py.detach(move || (rx.recv_timeout(SLICE), rx));
        rx = back;
        match got {
            Ok(v) => return Ok(v),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(PyRuntimeError::new_err("interlock's runtime stopped while waiting"));
            }
        }
        if let Err(interrupted) = py.check_signals() {
            rt.cancel(py, task);
            // A result sent before the abort took effect is dropped inside the runtime.
            rt.drop_inside(rx);
            return Err(interrupted);
        }
    }
}

/// The running asyncio event loop of this thread; `RuntimeError` (asyncio's) when there is none.
/// Asked before an asynchronous call changes anything, so that one made without a loop refuses
/// and leaves everything as it was.
pub(crate) fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    static ASYNCIO: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let asyncio = ASYNCIO.get_or_try_init(py, || PyModule::import(py, "asyncio").map(Bound::unbind))?.bind(py);
    asyncio.call_method0("get_running_loop")
}

/// Starts `fut` for an asyncio caller and returns an asyncio future of `event_loop` (from
/// [`running_loop`]) that completes with `convert(output)` (or its exception). An output ready at once (an uncontended lock) completes
/// the future here, on the loop's thread. Otherwise the work runs as a task on the runtime, and a
/// thread of the runtime's blocking pool (never its worker, so waiting for the GIL there stalls
/// no lock work) hands the outcome to the loop with `loop.call_soon_threadsafe`. Cancelling the
/// asyncio future aborts the task, which drops the work (the core is cancel-safe); an outcome
/// that arrives for a cancelled future is dropped on the loop's thread (a guard is then released).
pub(crate) fn start_async<'py, T, F, C>(
    py: Python<'py>,
    rt: &Arc<Rt>,
    event_loop: Bound<'py, PyAny>,
    fut: F,
    convert: C,
) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
    C: FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>> + Send + 'static,
{
    static DELIVER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let deliver = DELIVER
        .get_or_try_init(py, || {
            PyModule::import(py, "interlock._aio").and_then(|m| m.getattr("_deliver")).map(Bound::unbind)
        })?
        .clone_ref(py);
    let future = event_loop.call_method0("create_future")?;
    let mut fut = Box::pin(fut);
    // Not on a thread whose thread-locals are gone (entering panics there): the task polls it.
    if !tokio_context_destroyed() {
        let _enter = rt.enter();
        if let Poll::Ready(v) = fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            match convert(py, v) {
                Ok(value) => future.call_method1("set_result", (value,))?,
                Err(e) => future.call_method1("set_exception", (e.into_value(py),))?,
            };
            return Ok(future);
        }
    }
    let (event_loop, target) = (event_loop.unbind(), future.clone().unbind());
    let task = rt.rt.spawn(async move {
        let v = fut.await;
        let handed = tokio::task::spawn_blocking(move || {
            with_python(|py| {
                let (value, error) = match convert(py, v) {
                    Ok(value) => (value, None),
                    Err(e) => (py.None(), Some(e.into_value(py))),
                };
                // A closed loop refuses: the outcome is dropped here (a guard is released).
                let _ = event_loop.call_method1(py, "call_soon_threadsafe", (deliver, target, value, error));
            })
        });
        let _ = handed.await;
    });
    future.call_method1("add_done_callback", (Canceller { rt: rt.clone(), task: Mutex::new(Some(task)) },))?;
    Ok(future)
}

/// The done-callback of an asyncio future made by [`start_async`]: a cancelled future aborts the
/// runtime task that would complete it.
#[pyclass(module = "interlock._interlock", frozen)]
#[derive(Debug)]
pub struct Canceller {
    rt: Arc<Rt>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[pymethods]
impl Canceller {
    fn __call__(&self, py: Python<'_>, future: &Bound<'_, PyAny>) -> PyResult<()> {
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task
            && future.call_method0("cancelled")?.is_truthy()?
        {
            // Waits for the task to be gone (microseconds: one poll on the worker), so that
            // nothing of the cancelled acquisition is left when the cancelled task resumes.
            self.rt.cancel(py, task);
        }
        Ok(())
    }
}

/// Set by [`_shutdown`] when the interpreter exits: threads of the runtime no longer enter
/// Python, and guards dropped from then on wait for their release (see [`Rt::drop_guard`]).
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

/// How long the process's exit may wait, in all, for the releases of guards dropped at
/// interpreter exit: a lock whose release does not reach the backend by then is left to the
/// backend's own safety net (the kernel for files, the lease for Redis).
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// The instant after which nothing at interpreter exit waits any more: [`EXIT_WAIT`] after the
/// first wait.
fn exit_deadline() -> Instant {
    static DEADLINE: OnceLock<Instant> = OnceLock::new();
    *DEADLINE.get_or_init(|| Instant::now() + EXIT_WAIT)
}

/// Threads of the runtime inside [`with_python`] right now.
static IN_PYTHON: AtomicUsize = AtomicUsize::new(0);

/// Runs `f` with the GIL on a thread of the runtime, unless the interpreter is shutting down
/// (then `f` is dropped unrun; its Python references are released by PyO3 later, or never, at
/// exit). A thread that is still inside Python when the interpreter finalizes would touch freed
/// objects: [`_shutdown`], run by `atexit`, waits for the ones inside.
fn with_python<F: FnOnce(Python<'_>)>(f: F) {
    IN_PYTHON.fetch_add(1, Ordering::SeqCst);
    if !SHUTTING_DOWN.load(Ordering::SeqCst) {
        Python::attach(f);
    }
    IN_PYTHON.fetch_sub(1, Ordering::SeqCst);
}

/// The `atexit` hook: from now on no thread of the runtime enters Python, and the ones inside
/// (handing an outcome to an event loop) are waited for, a few seconds at most, without the GIL
/// so that they can finish.
#[pyfunction]
pub(crate) fn _shutdown(py: Python<'_>) {
    SHUTTING_DOWN.store(true, Ordering::SeqCst);
    let ours = RUNTIME.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|rt| rt.is_ours());
    if !ours {
        // No runtime in this process (a forked child that never used interlock): no thread of
        // ours can be in Python; a count inherited from the parent means nothing here.
        return;
    }
    py.detach(|| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while IN_PYTHON.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        // The undos of waits given up just before (a KeyboardInterrupt, a timeout) and the releases
        // of guards dropped at exit run on the runtime's worker: let them land before the process
        // goes, or a server keeps a gone waiter queued (and may hand it the lock).
        // (Those a server does not answer in time are left to its own expiry.)
        // Within the exit's one bound for all its waits (EXIT_WAIT).
        let left = exit_deadline().saturating_duration_since(Instant::now());
        let _ = interlock::raw::finish_cleanups_blocking(CLEANUPS_AT_EXIT.min(left));
    });
}

/// How long, at most, the interpreter's exit waits for interlock's cleanups still running.
const CLEANUPS_AT_EXIT: Duration = Duration::from_secs(3);
