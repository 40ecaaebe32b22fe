//! `SharedReceiveQueue`: one pool of receives for every QP created with it.

use std::sync::Arc;

use kbypass_core::rdma;
use pyo3::prelude::*;

use super::recv::{self, ReceiveQueue};
use super::resource::owner;

/// A shared receive queue: one pool of receives for every QP created with it.
#[pyclass(module = "kbypass._core.rdma", extends = ReceiveQueue)]
pub struct SharedReceiveQueue {
    inner: Option<Arc<rdma::SharedReceiveQueue>>,
}
owner!(SharedReceiveQueue, Arc<rdma::SharedReceiveQueue>);

impl SharedReceiveQueue {
    pub fn new(py: Python<'_>, srq: Arc<rdma::SharedReceiveQueue>) -> PyResult<Py<Self>> {
        Py::new(
            py,
            recv::initializer(SharedReceiveQueue { inner: Some(srq) }),
        )
    }
}
