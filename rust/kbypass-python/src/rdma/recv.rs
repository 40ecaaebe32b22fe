//! `ReceiveQueue`: the base of `QueuePair` and `SharedReceiveQueue`, holding their one
//! ``post_recv`` (verbs' `ibv_post_recv` and `ibv_post_srq_recv` take the same arguments).

use pyo3::prelude::*;
use pyo3::PyClass;

use super::mr::{gather, MemoryRegion, SgItem};
use super::qp::QueuePair;
use super::resource::{base, Owner, Resource};
use super::srq::SharedReceiveQueue;
use crate::errors::IntoPyResult;

/// A queue that takes receives: a ``QueuePair`` or a ``SharedReceiveQueue``.
#[pyclass(subclass, frozen, module = "kbypass._core.rdma", extends = Resource)]
pub struct ReceiveQueue {}

#[pymethods]
impl ReceiveQueue {
    /// Post one receive into `mr[offset:offset+length]` (the rest of the region by default),
    /// followed by the ``(mr, offset, length)`` elements of `sg`.
    #[pyo3(signature = (mr, offset = 0, length = None, wr_id = 0, sg = None))]
    fn post_recv(
        slf: &Bound<'_, Self>,
        mr: &MemoryRegion,
        offset: usize,
        length: Option<usize>,
        wr_id: u64,
        sg: Option<Vec<SgItem<'_>>>,
    ) -> PyResult<()> {
        let more = sg.unwrap_or_default();
        let sges = gather(mr, offset, length, &more)?;
        if let Ok(qp) = slf.as_any().cast::<QueuePair>() {
            return qp.borrow().get()?.post_recv(wr_id, &sges).py();
        }
        let srq = slf.as_any().cast::<SharedReceiveQueue>()?;
        let srq = srq.borrow();
        srq.get()?.post_recv(wr_id, &sges).py()
    }
}

/// The initializer of `obj` with its [`ReceiveQueue`] and [`Resource`] bases.
pub fn initializer<T: Owner + PyClass<BaseType = ReceiveQueue>>(obj: T) -> PyClassInitializer<T> {
    PyClassInitializer::from(base::<T>())
        .add_subclass(ReceiveQueue {})
        .add_subclass(obj)
}
