//! `AddressHandle`: the route to a UD peer's port.

use kbypass_core::rdma;
use pyo3::prelude::*;

use super::resource::{self, owner, Resource};

/// An address handle: the route to a UD peer's port.
#[pyclass(module = "kbypass._core.rdma", extends = Resource)]
pub struct AddressHandle {
    inner: Option<rdma::AddressHandle>,
}
owner!(AddressHandle, rdma::AddressHandle);

impl AddressHandle {
    pub fn new(py: Python<'_>, ah: rdma::AddressHandle) -> PyResult<Py<Self>> {
        resource::new(py, AddressHandle { inner: Some(ah) })
    }
}
