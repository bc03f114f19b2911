//! interlock's errors as Python exceptions.
//!
//! The classes live in `interlock/_errors.py` (Python makes multiple inheritance such as
//! `class Timeout(Error, TimeoutError)` easy); this maps each variant of the Rust enum to its class,
//! with the same one-line message (URLs in it are already redacted by the core).

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

/// The Python class name for an error of the core.
fn class_of(e: &interlock::Error) -> &'static str {
    use interlock::Error as E;
    match e {
        E::Timeout { .. } => "Timeout",
        E::LockLost { .. } => "LockLost",
        E::InvalidName { .. } => "InvalidName",
        E::InvalidUrl { .. } => "InvalidUrl",
        E::InvalidArgument(_) => "InvalidArgument",
        E::PermitsMismatch { .. } => "PermitsMismatch",
        E::Unsupported { .. } => "Unsupported",
        E::Unavailable { .. } => "Unavailable",
        E::Auth { .. } => "Auth",
        E::Backend { .. } => "Backend",
        E::Io { .. } => "Io",
        _ => "Error",
    }
}

/// Makes an exception of class `class` (a name in `interlock._errors`) with `message`.
pub(crate) fn new_err(py: Python<'_>, class: &str, message: String) -> PyErr {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let made = MODULE
        .get_or_try_init(py, || PyModule::import(py, "interlock._errors").map(Bound::unbind))
        .and_then(|m| m.bind(py).getattr(class))
        .and_then(|cls| cls.call1((message.clone(),)));
    match made {
        Ok(instance) => PyErr::from_value(instance),
        // The package is broken (its Python half missing): still say what went wrong.
        Err(_) => PyRuntimeError::new_err(message),
    }
}

/// The core's error as the matching Python exception.
pub(crate) fn to_py(py: Python<'_>, e: &interlock::Error) -> PyErr {
    new_err(py, class_of(e), e.to_string())
}

/// Extension for `interlock::Result`: `.py(py)?` turns the error into the Python exception.
pub(crate) trait IntoPy<T> {
    fn py(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPy<T> for interlock::Result<T> {
    fn py(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, &e))
    }
}
