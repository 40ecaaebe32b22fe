//! `SharedReceiveQueue`: one pool of receives for every QP created with it.

use std::sync::Arc;

use kbypass_core::rdma;
use pyo3::prelude::*;

use super::mr::{gather, MemoryRegion, SgItem};
use super::resource::{self, owner, Owner, Resource};
use crate::errors::IntoPyResult;

/// A shared receive queue: one pool of receives for every QP created with it.
#[pyclass(module = "kbypass._core.rdma", extends = Resource)]
pub struct SharedReceiveQueue {
    inner: Option<Arc<rdma::SharedReceiveQueue>>,
}
owner!(SharedReceiveQueue, Arc<rdma::SharedReceiveQueue>);

impl SharedReceiveQueue {
    pub fn new(py: Python<'_>, srq: Arc<rdma::SharedReceiveQueue>) -> PyResult<Py<Self>> {
        resource::new(py, SharedReceiveQueue { inner: Some(srq) })
    }
}

#[pymethods]
impl SharedReceiveQueue {
    /// Post one receive into `mr[offset:offset+length]` (the rest of the region by default).
    #[pyo3(signature = (mr, offset = 0, length = None, wr_id = 0, sg = None))]
    fn post_recv(
        &self,
        mr: &MemoryRegion,
        offset: usize,
        length: Option<usize>,
        wr_id: u64,
        sg: Option<Vec<SgItem<'_>>>,
    ) -> PyResult<()> {
        let more = sg.unwrap_or_default();
        let sges = gather(mr, offset, length, &more)?;
        self.get()?.post_recv(wr_id, &sges).py()
    }
}
