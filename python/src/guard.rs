//! `Guard`: a held lock, its fencing token, its lost flag, and its release.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use pyo3::prelude::*;
use pyo3::types::PyAny;

use crate::errors::{self, IntoPy};
use crate::fork;
use crate::provider::Kind;
use crate::runtime::{self, Rt};

/// Where a guard stands.
#[derive(Debug)]
pub(crate) enum State {
    /// Held by this process.
    Held(interlock::Guard),
    /// Released by `release()`; `lost` when the release reported the lock lost.
    Released { lost: bool },
    /// Taken by the parent of this forked process: never held here (see [`fork`]).
    Forked { parent: u32 },
}

/// What the fork registry keeps of a guard.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) pid: u32,
    pub(crate) state: Mutex<State>,
}

impl Shared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A held lock. `release()` it, or use it as a context manager; dropping it releases it too.
#[pyclass(module = "interlock", frozen, weakref)]
pub struct Guard {
    name: String,
    kind: Kind,
    token: Option<u64>,
    rt: Arc<Rt>,
    shared: Arc<Shared>,
    id: u64,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard").field("name", &self.name).field("kind", &self.kind).field("token", &self.token).finish()
    }
}

impl Guard {
    pub(crate) fn new(guard: interlock::Guard, kind: Kind, rt: Arc<Rt>) -> Guard {
        let (name, token) = (guard.name().to_owned(), guard.fencing_token());
        let shared = Arc::new(Shared { pid: std::process::id(), state: Mutex::new(State::Held(guard)) });
        let id = fork::register(&shared);
        Guard { name, kind, token, rt, shared, id }
    }

    /// The state, after making sure a guard inherited through fork is marked as not held.
    fn state(&self, py: Python<'_>) -> MutexGuard<'_, State> {
        if self.shared.pid != std::process::id() {
            fork::after_fork_in_child(py);
        }
        self.shared.state()
    }

    fn display_name(&self) -> String {
        let mut end = self.name.len().min(80);
        while !self.name.is_char_boundary(end) {
            end -= 1;
        }
        if end < self.name.len() { format!("{}…", &self.name[..end]) } else { self.name.clone() }
    }

    /// Takes the core guard out for a release; `None` when there is nothing to release (the
    /// exit of a `with` block whose body released already).
    fn take(&self, py: Python<'_>, from_exit: bool) -> PyResult<Option<interlock::Guard>> {
        Ok(Some({
            let mut state = self.state(py);
            match &*state {
                State::Held(_) => match std::mem::replace(&mut *state, State::Released { lost: false }) {
                    State::Held(g) => g,
                    _ => unreachable!("matched Held above"),
                },
                State::Released { .. } if from_exit => return Ok(None),
                State::Released { .. } => {
                    return Err(errors::new_err(
                        py,
                        "NotHeld",
                        format!("lock {:?} is not held: this guard was already released", self.display_name()),
                    ));
                }
                State::Forked { parent } => {
                    return Err(errors::new_err(
                        py,
                        "LockLost",
                        format!(
                            "lock {:?} was lost while held (taken by process {parent} before it forked; \
                             this process, {}, never held it)",
                            self.display_name(),
                            std::process::id()
                        ),
                    ));
                }
            }
        }))
    }

    fn release_inner(&self, py: Python<'_>, from_exit: bool) -> PyResult<()> {
        let Some(taken) = self.take(py, from_exit)? else { return Ok(()) };
        let result = runtime::wait(py, &self.rt, taken.release())?;
        note_lost(&self.shared, &result);
        result.py(py)
    }

    fn release_async_inner<'py>(&self, py: Python<'py>, from_exit: bool) -> PyResult<Bound<'py, PyAny>> {
        // Without a running loop, refuse before releasing: the guard still holds the lock.
        let event_loop = runtime::running_loop(py)?;
        let taken = self.take(py, from_exit)?;
        let shared = self.shared.clone();
        let release = async move {
            match taken {
                Some(g) => g.release().await,
                None => Ok(()),
            }
        };
        runtime::start_async(py, &self.rt, event_loop, release, move |py, result| {
            note_lost(&shared, &result);
            result.py(py)?;
            Ok(if from_exit { false.into_pyobject(py)?.to_owned().into_any().unbind() } else { py.None() })
        })
    }
}

#[pymethods]
impl Guard {
    /// The lock name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// `mutex`, `read`, `write` or `semaphore`.
    #[getter]
    fn kind(&self) -> &'static str {
        self.kind.as_str()
    }

    /// The fencing token of this acquisition (an int; `None` only where a backend cannot give a
    /// monotonic one).
    #[getter]
    fn fencing_token(&self) -> Option<u64> {
        self.token
    }

    /// True once the lock is known to be lost (lease ran out, session gone, key overwritten), and
    /// in a forked child for a guard its parent took.
    #[getter]
    fn lost(&self, py: Python<'_>) -> bool {
        match &*self.state(py) {
            State::Held(g) => g.is_lost(),
            State::Released { lost } => *lost,
            State::Forked { .. } => true,
        }
    }

    /// True while this guard holds the lock (not released, not lost, not inherited through fork).
    #[getter]
    fn held(&self, py: Python<'_>) -> bool {
        match &*self.state(py) {
            State::Held(g) => !g.is_lost(),
            _ => false,
        }
    }

    /// Releases the lock. Raises `LockLost` if it was lost while held, `NotHeld` if this guard
    /// was already released.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        self.release_inner(py, false)
    }

    /// `release` for asyncio: an awaitable that never blocks the event loop. Called with no
    /// running event loop, raises asyncio's `RuntimeError` and releases nothing.
    fn release_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.release_async_inner(py, false)
    }

    fn __aenter__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let event_loop = runtime::running_loop(py)?;
        let future = event_loop.call_method0("create_future")?;
        future.call_method1("set_result", (slf,))?;
        Ok(future)
    }

    /// Releases, unless the body already did.
    #[pyo3(signature = (*_exc))]
    fn __aexit__<'py>(&self, py: Python<'py>, _exc: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        self.release_async_inner(py, true)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Releases, unless the body already did.
    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.release_inner(py, true)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let state = match &*self.shared.state() {
            _ if self.shared.pid != std::process::id() => "not held (inherited through fork)",
            State::Held(g) if g.is_lost() => "lost",
            State::Held(_) => "held",
            State::Released { lost: true } => "released (lost)",
            State::Released { lost: false } => "released",
            State::Forked { .. } => "not held (inherited through fork)",
        };
        let token = self.token.map_or_else(|| "None".to_owned(), |t| t.to_string());
        format!("<interlock.Guard {} {:?} token={token} {state}>", self.kind.as_str(), self.display_name())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        fork::unregister(self.id);
        if self.shared.pid != std::process::id() {
            fork::forget_inherited(&self.shared);
            return;
        }
        let state = std::mem::replace(&mut *self.shared.state(), State::Released { lost: false });
        if let State::Held(g) = state {
            // Inside our runtime, so that a backend that releases in the background spawns
            // there; at interpreter exit, waited for (see `Rt::drop_guard`).
            self.rt.drop_guard(g);
        }
    }
}

/// Records a release that found the lock lost.
fn note_lost(shared: &Shared, result: &interlock::Result<()>) {
    if let Err(interlock::Error::LockLost { .. }) = result {
        *shared.state() = State::Released { lost: true };
    }
}
