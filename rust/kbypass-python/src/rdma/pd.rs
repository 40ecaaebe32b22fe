//! `ProtectionDomain`: registers memory and creates QPs, SRQs and address handles.

use kbypass_core::rdma::{self, Access, QpCaps, QpType};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyMemoryView;

use super::ah::AddressHandle;
use super::args;
use super::context::Context;
use super::cq::CompletionQueue;
use super::endpoint::Endpoint;
use super::interrupt;
use super::mr::MemoryRegion;
use super::qp::QueuePair;
use super::resource::{self, Owner, Resource};
use super::srq::SharedReceiveQueue;
use crate::errors::IntoPyResult;
use crate::mem::PyHugeRegion;
use crate::mempool::PyMempool;

/// A protection domain.
#[pyclass(module = "kbypass._core.rdma", extends = Resource)]
pub struct ProtectionDomain {
    inner: Option<rdma::ProtectionDomain>,
    /// Its context: the core's (for queries) and the Python object (``context()``); let go
    /// of on ``close()``, so a closed PD holds no engine.
    ctx: Option<(rdma::Context, Py<Context>)>,
}
impl Owner for ProtectionDomain {
    type Core = rdma::ProtectionDomain;
    fn slot(&self) -> &Option<rdma::ProtectionDomain> {
        &self.inner
    }
    fn slot_mut(&mut self) -> &mut Option<rdma::ProtectionDomain> {
        &mut self.inner
    }
    fn on_release(&mut self) {
        self.ctx = None;
    }
}

impl ProtectionDomain {
    pub fn new(
        py: Python<'_>,
        pd: rdma::ProtectionDomain,
        ctx: rdma::Context,
        ctx_obj: Py<Context>,
    ) -> PyResult<Py<Self>> {
        resource::new(
            py,
            ProtectionDomain {
                inner: Some(pd),
                ctx: Some((ctx, ctx_obj)),
            },
        )
    }

    /// The context (core and Python), or the closed error.
    fn ctx(&self) -> PyResult<&(rdma::Context, Py<Context>)> {
        self.get()?;
        self.ctx
            .as_ref()
            .ok_or_else(|| PyRuntimeError::new_err("this ProtectionDomain is closed"))
    }

    fn register_core(
        &self,
        buffer: &Bound<'_, PyAny>,
        access: i32,
    ) -> PyResult<rdma::MemoryRegion> {
        let (pd, access) = (self.get()?, Access(access));
        if let Ok(region) = buffer.cast::<PyHugeRegion>() {
            return pd.register_region(region.get().shared()?, access).py();
        }
        if let Ok(pool) = buffer.cast::<PyMempool>() {
            return pd.register_mempool(pool.get().shared()?, access).py();
        }
        // The region keeps a memoryview of the buffer, not the export itself: the view pins the
        // memory the same way (a bytearray cannot resize while it lives), and whichever thread
        // drops the region last — the engine's poll thread finishing a receive or a READ under
        // its lock, say — only queues the view's decref for the next holder of the GIL, where
        // releasing an export would wait for the GIL there (and deadlock against a Python
        // thread that holds it and waits for that lock).
        let view = PyMemoryView::from(buffer)?;
        let buf = PyUntypedBuffer::get(view.as_any())?;
        if !buf.is_c_contiguous() {
            return Err(PyTypeError::new_err(
                "register a C-contiguous buffer (np.ascontiguousarray)",
            ));
        }
        if buf.readonly() && access.0 & !rdma::ffi::ACCESS_REMOTE_READ != 0 {
            return Err(PyTypeError::new_err(
                "the buffer is read-only: register it with access=REMOTE_READ only, or pass a writable one",
            ));
        }
        let (ptr, len) = (buf.buf_ptr().cast::<u8>(), buf.len_bytes());
        drop(buf);
        let keeper: Py<PyAny> = view.unbind().into_any();
        // SAFETY: the memory stays valid and in place while the memoryview's own export of the
        // buffer lives, i.e. while the view does; the region owns the only reference to the
        // view (no Python code can reach it to release it).
        unsafe { pd.register_raw(ptr, len, access, Box::new(keeper)) }.py()
    }
}

#[pymethods]
impl ProtectionDomain {
    /// Register a C-contiguous buffer (bytearray, NumPy array, memoryview, mmap); the region
    /// holds the buffer export, so the object cannot be resized while registered.
    ///
    /// A `HugeRegion` registers whole and a `Mempool` registers its objects (object `i` at
    /// offset `i * pool.stride`); the region holds the memory, so it stays mapped and
    /// registered after the HugeRegion or Mempool is closed, until the region is.
    #[pyo3(signature = (buffer, access = 15))]
    fn register(
        slf: &Bound<'_, Self>,
        buffer: &Bound<'_, PyAny>,
        access: i32,
    ) -> PyResult<Py<MemoryRegion>> {
        let mr = MemoryRegion::new(slf.py(), slf.borrow().register_core(buffer, access)?)?;
        resource::adopt(slf.as_any(), mr.bind(slf.py()).as_any())?;
        Ok(mr)
    }

    /// The context this protection domain was allocated on.
    fn context(&self, py: Python<'_>) -> PyResult<Py<Context>> {
        Ok(self.ctx()?.1.clone_ref(py))
    }

    /// An address handle for UD sends to `remote`'s port.
    #[pyo3(signature = (remote, port = 1, gid_index = None))]
    fn create_ah(
        slf: &Bound<'_, Self>,
        remote: &Endpoint,
        port: u8,
        gid_index: Option<i32>,
    ) -> PyResult<Py<AddressHandle>> {
        let this = slf.borrow();
        let sgid = args::gid_index(&this.ctx()?.0, port, gid_index)?;
        let (pd, dest) = (this.get()?, remote.core()?);
        let ah = interrupt::detach(slf.py(), |c| pd.create_ah_cancellable(&dest, sgid, port, c))?;
        let ah = AddressHandle::new(slf.py(), ah)?;
        resource::adopt(slf.as_any(), ah.bind(slf.py()).as_any())?;
        Ok(ah)
    }

    /// A shared receive queue of `max_wr` receives (`max_sge` SGEs each) for QPs created with
    /// ``srq=``.
    #[pyo3(signature = (max_wr = 128, max_sge = 1))]
    fn create_srq(
        slf: &Bound<'_, Self>,
        max_wr: u32,
        max_sge: u32,
    ) -> PyResult<Py<SharedReceiveQueue>> {
        let srq = slf.borrow().get()?.create_srq(max_wr, max_sge).py()?;
        let srq = SharedReceiveQueue::new(slf.py(), srq)?;
        resource::adopt(slf.as_any(), srq.bind(slf.py()).as_any())?;
        Ok(srq)
    }

    /// A queue pair of `qp_type` ``'RC'``, ``'UC'`` or ``'UD'`` on `send_cq` (and `recv_cq`, the same
    /// CQ when None), with the given queue sizes; with `srq` its receives come from that shared
    /// receive queue.
    #[pyo3(signature = (qp_type, send_cq, recv_cq = None, max_send_wr = 128, max_recv_wr = 128, max_sge = 4, max_inline_data = 64, srq = None))]
    #[allow(clippy::too_many_arguments)]
    fn create_qp(
        slf: &Bound<'_, Self>,
        qp_type: &str,
        send_cq: &CompletionQueue,
        recv_cq: Option<&CompletionQueue>,
        max_send_wr: u32,
        max_recv_wr: u32,
        max_sge: u32,
        max_inline_data: u32,
        srq: Option<&SharedReceiveQueue>,
    ) -> PyResult<Py<QueuePair>> {
        let t = match qp_type.to_ascii_uppercase().as_str() {
            "RC" => QpType::Rc,
            "UC" => QpType::Uc,
            "UD" => QpType::Ud,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "qp_type is 'RC', 'UC' or 'UD', not {qp_type:?}"
                )))
            }
        };
        let scq = send_cq.get()?;
        let rcq = recv_cq.map_or(Ok(scq), |c| c.get())?;
        let caps = QpCaps {
            max_send_wr,
            max_recv_wr,
            max_send_sge: max_sge,
            max_recv_sge: max_sge,
            max_inline_data,
        };
        let srq = srq.map(|s| s.get()).transpose()?;
        let this = slf.borrow();
        let qp = rdma::QueuePair::create_with_srq(this.get()?, t, scq, rcq, caps, srq).py()?;
        let (ctx, ctx_obj) = this.ctx()?;
        let qp = QueuePair::new(slf.py(), qp, ctx.clone(), ctx_obj.clone_ref(slf.py()))?;
        resource::adopt(slf.as_any(), qp.bind(slf.py()).as_any())?;
        Ok(qp)
    }
}
