//! What the workers run: the core `BatchHandler` for a Python batch handler and for a Python
//! per-packet handler.
//!
//! Each takes the GIL once per batch (keeping one Python thread state for the worker's life),
//! lends the batch's frames to the Python objects it hands out (`BatchFrames`), calls Python,
//! and reads the verdicts back. When the call returns it checks, once per batch, whether
//! anything it handed out outlived the call: frame views get a hold (`BatchCtx::hold_view`,
//! see `views.rs`), column buffers are replaced by fresh ones, so nothing Python still sees is
//! ever reused under it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kbypass_core::engine::{
    self, BatchCtx, BatchFrames, BatchHandler, HandlerError, Lent, PacketVerdict,
};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use crate::batch::PyBatch;
use crate::columns::Buffers;
use crate::errors::IntoPyResult;
use crate::packet_view::PyPacket;
use crate::views::{refcnt, FrameView, UmemMemory};

/// First traceback printed once; every error counted by the workers.
#[derive(Default)]
pub struct ErrorLog {
    shown: AtomicBool,
    last: Mutex<Option<String>>,
}

impl ErrorLog {
    fn report(&self, py: Python<'_>, what: &str, err: PyErr) {
        let msg = format!("{what}: {err}");
        if !self.shown.swap(true, Ordering::AcqRel) {
            eprintln!("kbypass: {what} (shown once; later errors are only counted in stats()):");
            err.display(py);
        }
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
    }

    /// The latest error message.
    pub fn last(&self) -> Option<String> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What the handlers of one engine share.
pub struct Shared {
    pub callback: Py<PyAny>,
    pub memory: UmemMemory,
    pub errors: ErrorLog,
}

/// A verdict value from a Python object: an int (or IntEnum) 0..=3.
pub fn verdict_of(v: &Bound<'_, PyAny>) -> Option<u8> {
    if v.is_instance_of::<pyo3::types::PyBool>() {
        return None;
    }
    v.extract::<u8>().ok().filter(|&x| engine::valid_verdict(x))
}

/// Hold the frames whose views outlived the handler: `views[i]` is the owner of batch frame
/// `i`'s views, if the handler took any; we hold the only other reference to it.
fn hold_escaped(py: Python<'_>, ctx: &mut BatchCtx<'_>, views: Vec<Option<Py<FrameView>>>) {
    for (i, owner) in views.into_iter().enumerate() {
        let Some(owner) = owner else { continue };
        if refcnt(owner.bind(py).as_any()) <= 1 {
            continue; // no view left: the frame follows its verdict
        }
        match ctx.hold_view(i) {
            Some(h) => {
                owner.get().arm(h);
            }
            // Only a frame that left the App state could refuse, which a worker's batch
            // frame cannot have done.
            None => debug_assert!(false, "batch frame {i} could not be held"),
        }
    }
}

/// Whether the interpreter is finalizing: a thread that takes the GIL then is ended by
/// CPython in the middle of our frames, so workers must not try.
pub fn finalizing() -> bool {
    #[cfg(Py_3_13)]
    // SAFETY: Py_IsFinalizing has no preconditions (it reads one runtime flag).
    let f = unsafe { pyo3::ffi::Py_IsFinalizing() };
    #[cfg(not(Py_3_13))]
    // SAFETY: _Py_IsFinalizing (3.8-3.12) has no preconditions either.
    let f = unsafe { _Py_IsFinalizing() };
    f != 0
}

#[cfg(not(Py_3_13))]
extern "C" {
    fn _Py_IsFinalizing() -> std::os::raw::c_int;
}

/// A Python thread state kept for the worker thread's whole life.
///
/// Without it every `Python::attach` on a non-Python thread creates and destroys a thread
/// state (PyGILState_Ensure/Release at count zero): ~15 µs per batch measured here. Holding one
/// outer ensure makes each per-batch attach a plain GIL take/release.
#[derive(Default)]
pub struct ThreadState {
    held: Option<(pyo3::ffi::PyGILState_STATE, usize)>,
}

impl ThreadState {
    fn start(&mut self) {
        if self.held.is_some() || finalizing() {
            return;
        }
        // SAFETY: called on the worker thread, which does not hold the GIL. Ensure creates this
        // thread's state and takes the GIL; SaveThread releases the GIL but keeps the state,
        // whose pointer we keep to restore it in `end` on the same thread.
        let held = unsafe {
            let g = pyo3::ffi::PyGILState_Ensure();
            let ts = pyo3::ffi::PyEval_SaveThread();
            (g, ts as usize)
        };
        self.held = Some(held);
    }

    fn end(&mut self) {
        let Some((g, ts)) = self.held.take() else {
            return;
        };
        if finalizing() {
            // Taking the GIL now would end this thread inside CPython; the interpreter's
            // teardown frees the state with the others.
            return;
        }
        // SAFETY: same thread as `start`, GIL not held (every per-batch attach released
        // it); restore the saved state, then undo the outer Ensure.
        unsafe {
            pyo3::ffi::PyEval_RestoreThread(ts as *mut pyo3::ffi::PyThreadState);
            pyo3::ffi::PyGILState_Release(g);
        }
    }
}

/// How the Python handler is called.
enum Calls {
    /// Once per batch with a `Batch` over these column buffers (`def handler(batch) -> None |
    /// verdict`).
    Batch(Arc<Buffers>),
    /// Once per packet with this reused `Packet` (`def handler(pkt) -> verdict | None`).
    Packet(Py<PyPacket>),
}

/// The core `BatchHandler` of a Python handler, one per worker.
pub struct PyHandler {
    shared: Arc<Shared>,
    /// The worker's lease on its batches' frames, for the objects handed to Python.
    frames: Arc<BatchFrames>,
    calls: Calls,
    ts: ThreadState,
}

impl PyHandler {
    /// A handler for batches of up to `cap` frames, per packet or per batch (allocates the
    /// NumPy buffers or the reused `Packet`: needs the GIL).
    pub fn new(
        py: Python<'_>,
        shared: &Arc<Shared>,
        cap: usize,
        per_packet: bool,
    ) -> PyResult<Self> {
        let umem = shared.memory.umem()?;
        let frames = Arc::new(BatchFrames::new(&umem, cap).py()?);
        let calls = if per_packet {
            Calls::Packet(Py::new(py, PyPacket::new(&frames, &shared.memory))?)
        } else {
            Calls::Batch(Arc::new(Buffers::new(py, cap, &shared.memory)?))
        };
        Ok(PyHandler {
            shared: Arc::clone(shared),
            frames,
            calls,
            ts: ThreadState::default(),
        })
    }

    /// Call the batch handler with a `Batch` and read its verdicts back.
    fn batch(
        &self,
        py: Python<'_>,
        bufs: &Arc<Buffers>,
        ctx: &mut BatchCtx<'_>,
    ) -> Result<(), HandlerError> {
        let c = &self.shared;
        let mut lent = self.frames.lend(ctx);
        if let Err(e) = bufs.load(py, &mut lent) {
            c.errors.report(py, "could not fill the batch buffers", e);
            return Err(HandlerError);
        }
        let batch = match Py::new(py, PyBatch::new(&lent, &self.frames, bufs, &c.memory)) {
            Ok(b) => b,
            Err(e) => {
                c.errors.report(py, "could not create the batch", e);
                return Err(HandlerError);
            }
        };
        // Whatever the outcome, the handler's own references (its frame, a traceback, the
        // return value) are gone once it returns: anything still referenced escaped.
        let r = call_batch(py, c, bufs, &mut lent, &batch);
        let ctx = lent.end();
        if r.is_ok() {
            ctx.keep_verdicts();
        }
        let views = batch.get().take_views();
        if !views.is_empty() {
            hold_escaped(py, ctx, views);
        }
        r
    }

    /// Call the per-packet handler once per packet with the reused `Packet`.
    fn packets(&self, py: Python<'_>, pkt: &Py<PyPacket>, ctx: &mut BatchCtx<'_>) {
        let c = &self.shared;
        let cb = c.callback.bind(py);
        let pkt = pkt.bind(py);
        let mut lent = self.frames.lend(ctx);
        let seq = lent.seq();
        lent.for_each_packet(|i, meta| {
            pkt.borrow_mut().start(seq, i, meta);
            let r = cb.call1((pkt,));
            pkt.borrow_mut().end();
            match r {
                Ok(v) if v.is_none() => PacketVerdict::Default,
                Ok(v) => match verdict_of(&v) {
                    Some(x) => PacketVerdict::Set(x),
                    None => {
                        c.errors.report(
                            py,
                            "the per-packet handler returned a wrong value",
                            PyTypeError::new_err(format!(
                                "a per-packet handler returns a verdict (kbypass.DROP/TX/FORWARD/KEEP) or None for the default, not {}",
                                v.repr().map(|r| r.to_string()).unwrap_or_default()
                            )),
                        );
                        PacketVerdict::Failed
                    }
                },
                Err(e) => {
                    c.errors.report(py, "the per-packet handler raised", e);
                    PacketVerdict::Failed
                }
            }
        });
        let ctx = lent.end();
        ctx.keep_verdicts();
        let views = pkt.borrow_mut().take_views();
        if !views.is_empty() {
            hold_escaped(py, ctx, views);
        }
    }
}

/// Run the Python batch handler on `batch` and read its verdicts back.
fn call_batch(
    py: Python<'_>,
    c: &Shared,
    bufs: &Buffers,
    lent: &mut Lent<'_, '_, '_>,
    batch: &Py<PyBatch>,
) -> Result<(), HandlerError> {
    let r = c.callback.bind(py).call1((batch.clone_ref(py),));
    batch.get().end();
    let ret = match r {
        Ok(v) => v,
        Err(e) => {
            c.errors.report(py, "the batch handler raised", e);
            return Err(HandlerError);
        }
    };
    if let Err(e) = bufs.store(py, lent) {
        c.errors.report(py, "could not read the verdicts", e);
        return Err(HandlerError);
    }
    if ret.is_none() {
        return Ok(());
    }
    match verdict_of(&ret) {
        Some(v) => {
            lent.verdicts().fill(v);
            Ok(())
        }
        None => {
            c.errors.report(
                py,
                "the batch handler returned a wrong value",
                PyTypeError::new_err(format!(
                    "a batch handler returns None (verdicts written to batch.verdicts) or one verdict for every frame (kbypass.DROP/TX/FORWARD/KEEP), not {}",
                    ret.repr().map(|r| r.to_string()).unwrap_or_default()
                )),
            );
            Err(HandlerError)
        }
    }
}

impl BatchHandler for PyHandler {
    fn thread_start(&mut self) {
        self.ts.start();
    }

    fn thread_end(&mut self) {
        self.ts.end();
    }

    fn handle(&mut self, ctx: &mut BatchCtx<'_>) -> Result<(), HandlerError> {
        if finalizing() {
            // The interpreter is going away: no Python, every frame back, stop.
            ctx.verdicts.fill(engine::DROP);
            ctx.stop = true;
            return Ok(());
        }
        Python::attach(|py| match &self.calls {
            Calls::Packet(pkt) => {
                self.packets(py, pkt, ctx);
                Ok(())
            }
            Calls::Batch(bufs) => {
                let r = self.batch(py, bufs, ctx);
                if bufs.escaped(py) {
                    match Buffers::new(py, bufs.cap(), &self.shared.memory) {
                        Ok(b) => self.calls = Calls::Batch(Arc::new(b)),
                        Err(e) => {
                            // Without fresh buffers the next batch would write into the
                            // arrays the handler kept: stop instead.
                            let what = "could not replace the batch buffers";
                            self.shared.errors.report(py, what, e);
                            ctx.stop = true;
                        }
                    }
                }
                r
            }
        })
    }
}
