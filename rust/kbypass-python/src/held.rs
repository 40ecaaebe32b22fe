//! `kbypass.RxBatch` and `kbypass.Kept`: frames the application holds, both over the core's
//! `HeldFrames` (a descriptor and a `FrameHold` per frame).
//!
//! Views of their frames hold the frames too (`views.rs`), so a frame goes back to the pool
//! when its batch or handle is released *and* its last view is gone. Releasing or dropping one
//! only drops holds: no lock but the value's own, no GIL needed.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use kbypass_core::engine::Kept;
use kbypass_core::sys::xdp::XDP_PKT_CONTD;
use kbypass_core::xsk::HeldFrames;
use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::exceptions::{PyIndexError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use crate::errors::IntoPyResult;
use crate::port::PortHandle;
use crate::views::UmemMemory;

fn lengths<'py>(py: Python<'py>, frames: &HeldFrames) -> Bound<'py, PyArray1<u32>> {
    PyArray1::from_iter(py, frames.descs().iter().map(|d| d.len))
}

/// Frames received by one `recv()`: zero-copy views, owned by you until `release()` (or
/// `send()`), after which indexing raises.
///
/// The batch holds its frames, and so does every view taken from it: a frame goes back to the
/// pool when the batch is released *and* its last view is gone, so a view you keep never shows
/// another packet. `send()` transmits a frame as it is, or, if a view of it is still alive, a
/// copy (the view keeps the original). A batch dropped unreleased gives its frames back
/// (counted in `stats()["auto_released"]`); none of this takes a lock.
#[pyclass(name = "RxBatch", module = "kbypass._core", frozen)]
pub struct PyRxBatch {
    handle: Arc<PortHandle>,
    index: usize,
    frames: HeldFrames,
}

impl PyRxBatch {
    /// The frames `recv()` got from socket `index` of `handle`'s port.
    pub fn new(handle: Arc<PortHandle>, index: usize, frames: HeldFrames) -> Self {
        PyRxBatch {
            handle,
            index,
            frames,
        }
    }

    fn released_err() -> PyErr {
        PyRuntimeError::new_err(
            "this batch was released: its frames are recycled; copy data you need before release() (views taken before stay valid)",
        )
    }
}

#[pymethods]
impl PyRxBatch {
    fn __len__(&self) -> usize {
        self.frames.len()
    }

    /// A zero-copy uint8 view of frame `i`'s packet bytes (holds the frame while it lives).
    fn __getitem__<'py>(&self, py: Python<'py>, i: isize) -> PyResult<Bound<'py, PyArray1<u8>>> {
        if self.frames.released() {
            return Err(Self::released_err());
        }
        let n = self.frames.len() as isize;
        let j = if i < 0 { i + n } else { i };
        if !(0..n).contains(&j) {
            return Err(PyIndexError::new_err(format!(
                "frame {i} out of range for a batch of {n}"
            )));
        }
        self.handle
            .memory
            .held_view(py, &self.frames, j as usize)?
            .ok_or_else(Self::released_err)
    }

    /// Zero-copy views of every frame.
    fn frames<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.handle
            .memory
            .held_views(py, &self.frames)?
            .ok_or_else(Self::released_err)
    }

    /// Parsed header columns, one record per frame (NumPy structured array with
    /// `kbypass.packet.META_DTYPE`), computed in Rust without copying the frames.
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let mut raw = vec![0u8; self.frames.len() * 64];
        self.frames
            .headers(&mut raw)
            .ok_or_else(Self::released_err)?;
        crate::packet::records(py, raw)
    }

    /// UMEM addresses of the frames (uint64).
    #[getter]
    fn addrs<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        PyArray1::from_iter(py, self.frames.descs().iter().map(|d| d.addr))
    }

    /// Packet lengths (uint32).
    #[getter]
    fn lengths<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u32>> {
        lengths(py, &self.frames)
    }

    /// Whether each descriptor continues in the next one (multi-buffer packets).
    #[getter]
    fn continued<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<bool>> {
        let descs = self.frames.descs().iter();
        PyArray1::from_iter(py, descs.map(|d| d.options & XDP_PKT_CONTD != 0))
    }

    /// Whether the frames were released.
    #[getter]
    fn released(&self) -> bool {
        self.frames.released()
    }

    /// Give the frames back for receiving (each as soon as no view of it is left): straight
    /// to the socket's FILL ring, so it stays topped up. Idempotent; returns how many were
    /// released.
    fn release(&self, py: Python<'_>) -> usize {
        let Some(holds) = self.frames.take() else {
            return 0;
        };
        let index = self.index;
        py.detach(|| {
            match self
                .handle
                .port
                .lock()
                .as_mut()
                .and_then(|p| p.socket_mut(index))
            {
                Some(s) => s.release_holds(holds),
                // Closed, or a Pipeline has the socket: the frames go back to the pool.
                None => holds.len(),
            }
        })
    }

    /// Transmit the frames (as they are now, e.g. after editing them in place) out of the same
    /// socket; frames where `mask` is False are released instead. A frame a view still holds
    /// is sent as a copy (the view keeps the original). Returns how many were queued.
    /// `checksum`, `timestamp` and `launch_time` as `Batch.emit` (OSError(EOPNOTSUPP), the
    /// frames released, for a timestamp or launch time the socket cannot give).
    #[pyo3(signature = (mask=None, *, checksum=None, timestamp=false, launch_time=None))]
    fn send(
        &self,
        py: Python<'_>,
        mask: Option<PyReadonlyArray1<'_, bool>>,
        checksum: Option<&str>,
        timestamp: bool,
        launch_time: Option<u64>,
    ) -> PyResult<usize> {
        let ask = crate::batch_emit::tx_ask(checksum, timestamp, launch_time)?;
        let mask = mask.map(|m| m.as_array().to_vec());
        let items = self.frames.take_for_send(mask.as_deref()).py()?;
        self.handle.with_socket(py, self.index, move |s| {
            let r = s.send_holds_with(items, ask)?;
            s.complete();
            Ok(r.queued)
        })
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> bool {
        self.release(py);
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "RxBatch({} frames{})",
            self.frames.len(),
            if self.released() { ", released" } else { "" }
        )
    }
}

impl Drop for PyRxBatch {
    fn drop(&mut self) {
        // A batch dropped without release gives its frames back, counted, so none is lost. No
        // lock and no GIL needed: dropping holds is a few atomic operations.
        let n = self.frames.release();
        if n > 0 {
            self.handle
                .auto_released
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Frames a handler kept (KEEP verdict), held until `release()` (or until the handle is
/// garbage-collected). Views from `frames` hold their frame too: a frame goes back to the pool
/// when the handle is released *and* its last view is gone.
///
/// Example:
///     >>> for k in pipeline.kept():
///     ...     data = [bytes(f) for f in k.frames]
///     ...     k.release()
#[pyclass(name = "Kept", module = "kbypass._core", frozen)]
pub struct PyKept {
    kept: Kept,
    memory: UmemMemory,
}

impl PyKept {
    /// A handle on `kept`, whose frames Python reaches through `memory`.
    pub fn new(kept: Kept, memory: UmemMemory) -> Self {
        PyKept { kept, memory }
    }
}

#[pymethods]
impl PyKept {
    fn __len__(&self) -> usize {
        self.kept.frames().len()
    }

    /// Zero-copy views of the kept frames (each holds its frame while it lives).
    #[getter]
    fn frames<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.memory
            .held_views(py, self.kept.frames())?
            .ok_or_else(|| {
                PyRuntimeError::new_err(
                    "these kept frames were released and are recycled: copy data before release()",
                )
            })
    }

    /// Packet lengths (uint32).
    #[getter]
    fn lengths<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u32>> {
        lengths(py, self.kept.frames())
    }

    /// Whether the frames were released.
    #[getter]
    fn released(&self) -> bool {
        self.kept.frames().released()
    }

    /// Give the frames back for receiving (each as soon as no view of it is left).
    /// Idempotent; returns how many were released.
    fn release(&self) -> usize {
        self.kept.release()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) -> bool {
        self.release();
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "Kept({} frames{})",
            self.kept.frames().len(),
            if self.released() { ", released" } else { "" }
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRxBatch>()?;
    m.add_class::<PyKept>()?;
    Ok(())
}
