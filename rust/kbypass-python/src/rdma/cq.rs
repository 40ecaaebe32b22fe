//! `CompletionQueue` and the `WorkCompletion`s polled from it.

use std::time::Instant;

use kbypass_core::rdma::{self, cancel::CANCEL_EVERY};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use super::args::seconds;
use super::interrupt;
use super::resource::{self, owner, Owner, Resource};
use crate::errors::IntoPyResult;

pyo3::create_exception!(
    kbypass._core.rdma,
    CompletionError,
    pyo3::exceptions::PyOSError,
    "A work completion with a failed status, raised by ``WorkCompletion.check()``."
);

/// One work completion.
#[pyclass(module = "kbypass._core.rdma", frozen, get_all)]
pub struct WorkCompletion {
    wr_id: u64,
    status: i32,
    status_name: &'static str,
    opcode: i32,
    byte_len: u32,
    imm: Option<u32>,
    invalidated_rkey: Option<u32>,
    wc_flags: u32,
    qp_num: u32,
    src_qp: u32,
    vendor_err: u32,
}

impl From<&rdma::WorkCompletion> for WorkCompletion {
    fn from(w: &rdma::WorkCompletion) -> Self {
        WorkCompletion {
            wr_id: w.wr_id,
            status: w.status,
            status_name: w.status_name(),
            opcode: w.opcode,
            byte_len: w.byte_len,
            imm: w.imm(),
            invalidated_rkey: w.invalidated_rkey(),
            wc_flags: w.wc_flags,
            qp_num: w.qp_num,
            src_qp: w.src_qp,
            vendor_err: w.vendor_err,
        }
    }
}

#[pymethods]
impl WorkCompletion {
    /// Return ``self`` when the status is SUCCESS, else raise ``CompletionError`` (an
    /// OSError with errno EIO) naming the status, the work request and the likely fix.
    fn check(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        let c = slf.get();
        let wc = rdma::WorkCompletion {
            wr_id: c.wr_id,
            status: c.status,
            vendor_err: c.vendor_err,
            ..Default::default()
        };
        match wc.check() {
            Ok(()) => Ok(slf),
            Err(e) => Err(CompletionError::new_err((libc::EIO, e.to_string()))),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "WorkCompletion(wr_id={}, status={}, opcode={}, byte_len={})",
            self.wr_id, self.status_name, self.opcode, self.byte_len
        )
    }
}

/// A completion queue.
#[pyclass(module = "kbypass._core.rdma", extends = Resource)]
pub struct CompletionQueue {
    inner: Option<rdma::CompletionQueue>,
}
owner!(CompletionQueue, rdma::CompletionQueue);

impl CompletionQueue {
    pub fn new(py: Python<'_>, cq: rdma::CompletionQueue) -> PyResult<Py<Self>> {
        resource::new(py, CompletionQueue { inner: Some(cq) })
    }
}

/// Room for up to `max` completions (1 to 4096).
fn buffer(max: usize) -> Vec<rdma::WorkCompletion> {
    vec![rdma::WorkCompletion::default(); max.clamp(1, 4096)]
}

#[pymethods]
impl CompletionQueue {
    /// Up to `max` completions, as objects.
    #[pyo3(signature = (max = 16))]
    fn poll(&self, max: usize) -> PyResult<Vec<WorkCompletion>> {
        let mut buf = buffer(max);
        let n = self.get()?.poll(&mut buf).py()?;
        Ok(buf[..n].iter().map(WorkCompletion::from).collect())
    }

    /// Poll straight into a writable, 8-byte aligned buffer of 48-byte ``ibv_wc`` records
    /// (a NumPy array of ``kbypass.rdma.WC_DTYPE``); returns how many were written.
    fn poll_into(&self, out: &Bound<'_, PyAny>) -> PyResult<usize> {
        let buf = PyUntypedBuffer::get(out)?;
        let size = std::mem::size_of::<rdma::WorkCompletion>();
        let ptr = buf.buf_ptr();
        if buf.readonly() || !buf.is_c_contiguous() || ptr as usize % 8 != 0 {
            return Err(PyTypeError::new_err(
                "poll_into needs a writable, C-contiguous, 8-byte aligned buffer",
            ));
        }
        let n = buf.len_bytes() / size;
        // SAFETY: the buffer is writable, aligned, and holds `n` whole records; `buf` keeps
        // the export alive for the call.
        unsafe { self.get()?.poll_raw(ptr.cast(), n) }.py()
    }

    /// Return up to `max` completions, sleeping on the completion channel (GIL released)
    /// until one arrives or `timeout` seconds pass (then an empty list); Ctrl-C
    /// (KeyboardInterrupt) stops the wait within ~50 ms.
    #[pyo3(signature = (timeout = None, max = 16))]
    fn wait(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        max: usize,
    ) -> PyResult<Vec<WorkCompletion>> {
        let cq = self.get()?.clone();
        let t = timeout.map(seconds).transpose()?;
        let mut buf = buffer(max);
        let deadline = t.map(|t| Instant::now() + t);
        let n = interrupt::detach(py, |cancel| loop {
            // Sleep in slices, asking for signals in between.
            let left = deadline.map_or(CANCEL_EVERY, |d| {
                d.saturating_duration_since(Instant::now())
            });
            let n = cq.poll_blocking(&mut buf, Some(left.min(CANCEL_EVERY)))?;
            if n > 0 || (deadline.is_some() && left <= CANCEL_EVERY) {
                break Ok(n);
            }
            cancel.check("CompletionQueue.wait")?;
        })?;
        Ok(buf[..n].iter().map(WorkCompletion::from).collect())
    }
}
