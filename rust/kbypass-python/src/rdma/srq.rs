//! `SharedReceiveQueue`: one pool of receives for every QP created with it.

use std::sync::Arc;

use kbypass_core::rdma;
use pyo3::prelude::*;

use super::recv::{self, ReceiveQueue};
use super::resource::{owner, Owner};
use crate::errors::IntoPyResult;

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

#[pymethods]
impl SharedReceiveQueue {
    /// Arm the limit event (``ibv_modify_srq`` with ``IBV_SRQ_LIMIT``): the first receive taken
    /// that leaves fewer than `limit` posted raises it once; ``limit_reached()`` reports it.
    /// 0 disarms it; OSError (EINVAL) when `limit` exceeds what the device takes.
    fn set_limit(&self, limit: u32) -> PyResult<()> {
        self.get()?.set_limit(limit).py()
    }

    /// Whether the limit event (``IBV_EVENT_SRQ_LIMIT_REACHED``) was raised since the last
    /// call; the call clears it, and ``set_limit`` arms it again. On a libibverbs device the
    /// event comes on the context's asynchronous event queue, which the call reads first
    /// (``Context.async_events()`` counts every event read).
    fn limit_reached(&self) -> PyResult<bool> {
        self.get()?.limit_reached().py()
    }

    /// The receives posted and not yet taken (user-space contexts only).
    #[getter]
    fn posted(&self) -> PyResult<usize> {
        self.get()?.posted().py()
    }
}
