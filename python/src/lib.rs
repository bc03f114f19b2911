//! The native half of the Python package `interlock`: `interlock._interlock`.
//!
//! It wraps the async core of the `interlock` crate: one tokio runtime per process
//! (`runtime.rs`), waits that release the GIL and stay interruptible, guards that know the process
//! that took them (`fork.rs`). The Python API (`interlock.connect`, context managers, decorators,
//! asyncio) is written in `interlock/__init__.py` on top of these classes.

mod errors;
mod fork;
mod guard;
mod provider;
mod runtime;

use pyo3::prelude::*;

/// Connects to the backend named by `url` (see `interlock.connect`).
#[pyfunction]
fn connect(py: Python<'_>, url: &str) -> PyResult<provider::Provider> {
    provider::Provider::new(py, url)
}

/// The URL used when none is given: a non-blank `$INTERLOCK_URL`, else `file://` (the
/// `interlock` command's default).
#[pyfunction]
fn default_url() -> String {
    interlock::url::default_url()
}

#[pymodule]
fn _interlock(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(connect, m)?)?;
    m.add_function(wrap_pyfunction!(default_url, m)?)?;
    m.add_function(wrap_pyfunction!(fork::_after_fork_in_child, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::_shutdown, m)?)?;
    m.add_class::<provider::Provider>()?;
    m.add_class::<provider::Lock>()?;
    m.add_class::<guard::Guard>()?;
    m.add_class::<runtime::Canceller>()?;
    Ok(())
}
