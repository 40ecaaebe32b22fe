//! Network-namespace helpers for `kbypass.testing`.

use kbypass_core::sys::netns::{self, NetnsGuard};
use pyo3::prelude::*;

use crate::errors::IntoPyResult;

/// Holds the calling thread inside a network namespace until `exit()`.
///
/// Unsendable: it must be exited on the thread that entered.
#[pyclass(module = "kbypass._core", unsendable)]
pub struct NetnsEntry {
    guard: Option<NetnsGuard>,
}

#[pymethods]
impl NetnsEntry {
    /// Enter namespace `name` (an `ip netns` name or an absolute path) on this thread.
    #[new]
    fn new(name: &str) -> PyResult<Self> {
        Ok(NetnsEntry {
            guard: Some(NetnsGuard::enter(name).py()?),
        })
    }

    /// Return this thread to the namespace it was in before. Idempotent.
    fn exit(&mut self) {
        self.guard.take();
    }

    /// Whether the thread is still inside the namespace.
    #[getter]
    fn active(&self) -> bool {
        self.guard.is_some()
    }
}

/// The inode of the calling thread's network namespace.
#[pyfunction]
fn netns_inode() -> PyResult<u64> {
    netns::current_netns_inode().py()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NetnsEntry>()?;
    m.add_function(wrap_pyfunction!(netns_inode, m)?)?;
    Ok(())
}
