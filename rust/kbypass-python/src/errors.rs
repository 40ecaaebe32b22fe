//! Core errors → Python exceptions (the mapping is documented in docs/architecture.md).

use kbypass_core::Error;
use pyo3::exceptions::{
    PyFileNotFoundError, PyOSError, PyPermissionError, PyRuntimeError, PyTimeoutError, PyTypeError,
    PyValueError,
};
use pyo3::PyErr;

/// Convert a core error into the Python exception users expect.
pub fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::InvalidArgument(_) => PyValueError::new_err(msg),
        Error::WrongType(_) => PyTypeError::new_err(msg),
        Error::Permission { .. } => PyPermissionError::new_err((libc::EPERM, msg)),
        Error::NotFound(_) => PyFileNotFoundError::new_err((libc::ENOENT, msg)),
        Error::Os { errno, .. } => PyOSError::new_err((errno, msg)),
        Error::Unsupported { .. } => PyOSError::new_err((libc::EOPNOTSUPP, msg)),
        Error::Timeout(_) => PyTimeoutError::new_err(msg),
        Error::State(_) => PyRuntimeError::new_err(msg),
        Error::Interrupted(_) => pyo3::exceptions::PyKeyboardInterrupt::new_err(msg),
    }
}

/// `?`-friendly conversion for binding code: `core_call().map_err(to_py)?` reads as `.py()?`.
pub trait IntoPyResult<T> {
    /// Map the core error to a Python exception.
    fn py(self) -> pyo3::PyResult<T>;
}

impl<T> IntoPyResult<T> for kbypass_core::Result<T> {
    #[inline]
    fn py(self) -> pyo3::PyResult<T> {
        self.map_err(to_py)
    }
}
