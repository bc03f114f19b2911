//! `Provider` (what `interlock.connect` returns underneath) and `Lock` (one name, one primitive).
//!
//! Both remember the process that made their connection: a forked child reconnects on first use
//! (a new runtime, a new connection) and never touches what it inherited from its parent.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::IntoPy;
use crate::guard::Guard;
use crate::runtime::{self, Rt};

/// A connection made in one process: the runtime it runs on and the core provider.
#[derive(Clone, Debug)]
pub(crate) struct Core {
    pub(crate) rt: Arc<Rt>,
    pub(crate) provider: interlock::Provider,
}

impl Core {
    async fn connect(url: String) -> interlock::Result<interlock::Provider> {
        interlock::connect(&url).await
    }
}

/// Connects to the backend named by `url`.
pub(crate) fn connect(py: Python<'_>, url: &str) -> PyResult<Core> {
    let rt = runtime::runtime(py)?;
    let provider = runtime::wait(py, &rt, Core::connect(url.to_owned()))?.py(py)?;
    Ok(Core { rt, provider })
}

/// A provider of locks on one backend; `interlock.connect()` wraps it.
#[pyclass(module = "interlock._interlock", frozen)]
pub struct Provider {
    /// The URL as given, password included, to reconnect in a forked child. Never shown.
    secret_url: String,
    redacted: String,
    backend: &'static str,
    core: Mutex<Core>,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider").field("url", &self.redacted).finish()
    }
}

impl Provider {
    pub(crate) fn new(py: Python<'_>, url: &str) -> PyResult<Provider> {
        let core = connect(py, url)?;
        Ok(Provider {
            secret_url: url.to_owned(),
            redacted: core.provider.url().to_owned(),
            backend: core.provider.backend(),
            core: Mutex::new(core),
        })
    }

    /// This process's connection: the one made here, or a new one in a forked child.
    pub(crate) fn current(&self, py: Python<'_>) -> PyResult<Core> {
        {
            let core = self.core.lock().unwrap_or_else(|p| p.into_inner());
            if core.rt.is_ours() {
                return Ok(core.clone());
            }
        }
        crate::fork::after_fork_in_child(py);
        // Connecting waits without the GIL: no lock is held meanwhile.
        let fresh = connect(py, &self.secret_url)?;
        let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        if core.rt.is_ours() {
            // Another thread of this child reconnected first.
            return Ok(core.clone());
        }
        let parents = std::mem::replace(&mut *core, fresh);
        // The parent's connection: its runtime's threads are not in this process, and closing it
        // would act on the parent's sockets. Leave it alone.
        std::mem::forget(parents);
        Ok(core.clone())
    }
}

#[pymethods]
impl Provider {
    /// The URL, password redacted.
    #[getter]
    fn url(&self) -> &str {
        &self.redacted
    }

    /// The backend's short name (`file`, `memory`, `redis`, ...).
    #[getter]
    fn backend(&self) -> &'static str {
        self.backend
    }

    /// A lock handle: `kind` is `mutex`, `read`, `write` or `semaphore` (with `permits`).
    #[pyo3(signature = (name, kind, permits=None))]
    fn lock(slf: Bound<'_, Self>, name: &str, kind: &str, permits: Option<u32>) -> PyResult<Lock> {
        let py = slf.py();
        let core = slf.get().current(py)?;
        let kind = match (kind, permits) {
            ("mutex", None) => Kind::Mutex,
            ("read", None) => Kind::Read,
            ("write", None) => Kind::Write,
            ("semaphore", Some(p)) => Kind::Semaphore(p),
            _ => return Err(PyValueError::new_err(format!("unknown lock kind {kind:?} (permits {permits:?})"))),
        };
        let handle = Handle::new(&core.provider, name, kind).py(py)?;
        Ok(Lock { provider: slf.unbind(), kind, cached: Mutex::new((core, handle)) })
    }

    /// Closes the provider: later acquisitions through it fail with `Unavailable`.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let core = self.current(py)?;
        let provider = core.provider.clone();
        runtime::wait(py, &core.rt, async move { provider.close().await })?.py(py)
    }

    fn __repr__(&self) -> String {
        format!("<interlock provider {}>", self.redacted)
    }
}

/// Which primitive a [`Lock`] takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Mutex,
    Read,
    Write,
    Semaphore(u32),
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Mutex => "mutex",
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Semaphore(_) => "semaphore",
        }
    }
}

/// The core's handle for one name.
#[derive(Clone, Debug)]
enum Handle {
    Mutex(interlock::Mutex),
    RwLock(interlock::RwLock),
    Semaphore(interlock::Semaphore),
}

impl Handle {
    fn new(provider: &interlock::Provider, name: &str, kind: Kind) -> interlock::Result<Handle> {
        Ok(match kind {
            Kind::Mutex => Handle::Mutex(provider.mutex(name)?),
            Kind::Read | Kind::Write => Handle::RwLock(provider.rwlock(name)?),
            Kind::Semaphore(p) => Handle::Semaphore(provider.semaphore(name, p)?),
        })
    }

    fn name(&self) -> &str {
        match self {
            Handle::Mutex(m) => m.name(),
            Handle::RwLock(r) => r.name(),
            Handle::Semaphore(s) => s.name(),
        }
    }

    async fn acquire(self, kind: Kind, opts: interlock::AcquireOptions) -> interlock::Result<Option<interlock::Guard>> {
        match (self, kind) {
            (Handle::Mutex(m), _) => m.lock_with(opts).await,
            (Handle::RwLock(r), Kind::Read) => r.read_with(opts).await,
            (Handle::RwLock(r), _) => r.write_with(opts).await,
            (Handle::Semaphore(s), _) => s.acquire_with(opts).await,
        }
    }
}

/// One name and one primitive of a provider: what `locks.mutex(name)` and friends wrap.
#[pyclass(module = "interlock._interlock", frozen)]
pub struct Lock {
    provider: Py<Provider>,
    kind: Kind,
    /// The handle, made from the connection of the process that made it.
    cached: Mutex<(Core, Handle)>,
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("Lock").field("kind", &self.kind).field("name", &cached.1.name()).finish()
    }
}

/// How long an acquisition may wait, from `acquire(blocking, timeout)` as `threading.Lock` takes
/// them: `timeout=-1` (or `None`) waits forever.
pub(crate) fn acquire_options(blocking: bool, timeout: Option<f64>) -> PyResult<interlock::AcquireOptions> {
    let forever = timeout.is_none_or(|t| t == -1.0);
    if !blocking {
        if !forever {
            return Err(PyValueError::new_err("can't specify a timeout for a non-blocking call"));
        }
        return Ok(interlock::AcquireOptions::try_once());
    }
    match timeout {
        _ if forever => Ok(interlock::AcquireOptions::forever()),
        Some(t) if t.is_nan() || t < 0.0 => {
            Err(PyValueError::new_err("timeout value must be a non-negative number of seconds, or -1 to wait forever"))
        }
        // Too long to represent: forever.
        Some(t) => Ok(Duration::try_from_secs_f64(t)
            .map_or_else(|_| interlock::AcquireOptions::forever(), interlock::AcquireOptions::timeout)),
        None => Ok(interlock::AcquireOptions::forever()),
    }
}

impl Lock {
    /// The handle and connection for this process.
    fn current(&self, py: Python<'_>) -> PyResult<(Core, Handle)> {
        {
            let cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
            if cached.0.rt.is_ours() {
                return Ok(cached.clone());
            }
        }
        let core = self.provider.get().current(py)?;
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if !cached.0.rt.is_ours() {
            let handle = Handle::new(&core.provider, cached.1.name(), self.kind).py(py)?;
            // The parent's handle holds the parent's provider: never dropped here.
            std::mem::forget(std::mem::replace(&mut *cached, (core, handle)));
        }
        Ok(cached.clone())
    }
}

#[pymethods]
impl Lock {
    /// The lock name.
    #[getter]
    fn name(&self) -> String {
        self.cached.lock().unwrap_or_else(|p| p.into_inner()).1.name().to_owned()
    }

    /// `mutex`, `read`, `write` or `semaphore`.
    #[getter]
    fn kind(&self) -> &'static str {
        self.kind.as_str()
    }

    /// The number of permits of a semaphore; `None` for the other kinds.
    #[getter]
    fn permits(&self) -> Option<u32> {
        match self.kind {
            Kind::Semaphore(p) => Some(p),
            _ => None,
        }
    }

    /// The provider this lock belongs to.
    #[getter]
    fn provider(&self, py: Python<'_>) -> Py<Provider> {
        self.provider.clone_ref(py)
    }

    /// Takes the lock: waits forever (`timeout=-1`), at most `timeout` seconds (then raises
    /// `Timeout`), or makes one attempt (`blocking=False`: `None` when held elsewhere).
    #[pyo3(signature = (blocking=true, timeout=-1.0))]
    fn acquire(&self, py: Python<'_>, blocking: bool, timeout: Option<f64>) -> PyResult<Option<Guard>> {
        let opts = acquire_options(blocking, timeout)?;
        let (core, handle) = self.current(py)?;
        let got = runtime::wait(py, &core.rt, handle.acquire(self.kind, opts))?.py(py)?;
        Ok(got.map(|g| Guard::new(g, self.kind, core.rt.clone())))
    }

    /// `acquire` for asyncio: returns an asyncio future of the running loop (see
    /// `runtime::start_async`).
    #[pyo3(signature = (blocking=true, timeout=-1.0))]
    fn acquire_async<'py>(&self, py: Python<'py>, blocking: bool, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        let opts = acquire_options(blocking, timeout)?;
        let event_loop = runtime::running_loop(py)?;
        let (core, handle) = self.current(py)?;
        let (kind, rt) = (self.kind, core.rt.clone());
        runtime::start_async(py, &core.rt, event_loop, handle.acquire(self.kind, opts), move |py, got| {
            Ok(match got.py(py)? {
                Some(g) => Py::new(py, Guard::new(g, kind, rt))?.into_any(),
                None => py.None(),
            })
        })
    }

    fn __repr__(&self) -> String {
        let cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        match self.kind {
            Kind::Semaphore(p) => format!("<interlock semaphore {:?} permits={p}>", cached.1.name()),
            k => format!("<interlock {} {:?}>", k.as_str(), cached.1.name()),
        }
    }
}
