//! `kbypass._core.Engine`, `Batch`, `Packet`, `Kept`: the binding of the core poll-mode workers.
//!
//! The workers are core `engine` threads; this file only implements their `BatchHandler` by
//! taking the GIL once per batch, copying the batch's columns into per-worker NumPy buffers
//! (allocated once), calling the Python handler, and copying the verdicts back. When the
//! handler returns it checks, once per batch, whether anything it handed out outlived the call:
//! frame views get a hold (`BatchCtx::hold_view`, see `views.rs`), column buffers are replaced
//! by fresh ones, so nothing Python still sees is ever reused under it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kbypass_core::engine::{
    self, BatchCtx, BatchHandler, HandlerError, OnError, WorkerConfig, WorkerExit, WorkerStats,
    BATCH_HISTOGRAM_BOUNDS,
};
use kbypass_core::mem::HugeRegion;
use kbypass_core::packet::{edit, parse, PacketMeta};
use kbypass_core::sys::xdp::XdpDesc;
use kbypass_core::xsk::{FrameHold, Umem};
use numpy::ndarray::ArrayView2;
use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyUntypedArrayMethods};
use pyo3::exceptions::{PyIndexError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PySlice, PyTuple};

use crate::errors::IntoPyResult;
use crate::mem::RegionMemory;
use crate::packet::PcapWriter;
use crate::views::{refcnt, FrameView};
use crate::xsk::{PortHandle, PyXdpPort};

/// Where Python may reach the frames: the UMEM inside its region, kept mapped by `region`.
#[derive(Clone)]
struct Frames {
    /// Weak: a handle kept by Python must not keep the UMEM's socket bound after close.
    umem: std::sync::Weak<Umem>,
    frame_size: u32,
    frames: u32,
    region: Arc<HugeRegion>,
    /// Offset of the UMEM inside the region.
    pool_off: usize,
}

impl Frames {
    fn umem(&self) -> PyResult<Arc<Umem>> {
        self.umem
            .upgrade()
            .ok_or_else(|| PyRuntimeError::new_err("the port was closed: its frames are gone"))
    }

    /// A view owner for this UMEM, holding `hold` if given.
    fn owner(&self, hold: Option<FrameHold>) -> FrameView {
        FrameView::new(Arc::clone(&self.region), self.pool_off, hold)
    }

    /// The whole UMEM as a (frames, frame_size) uint8 array. Never handed to Python as it is:
    /// `Batch.umem` wraps it in a `UmemWindow`, which returns copies.
    fn umem_2d<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<u8>>> {
        let rows = self.frames as usize;
        let cols = self.frame_size as usize;
        if self.pool_off + rows * cols > self.region.len() {
            return Err(PyRuntimeError::new_err("the UMEM does not fit its region"));
        }
        let owner = Bound::new(py, RegionMemory::new(Arc::clone(&self.region)))?;
        // SAFETY: rows*cols bytes from pool_off lie inside the region (checked above), which
        // `owner` keeps mapped for the array's lifetime.
        let v = unsafe {
            ArrayView2::from_shape_ptr(
                (rows, cols),
                self.region.as_ptr().add(self.pool_off).cast_const(),
            )
        };
        // SAFETY: as above.
        let a = unsafe { PyArray2::borrow_from_array(&v, owner.into_any()) };
        a.call_method1("setflags", (false,))?;
        Ok(a)
    }
}

/// First traceback printed once; every error counted by the workers.
#[derive(Default)]
struct ErrorLog {
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

    fn last(&self) -> Option<String> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Per-worker NumPy buffers, allocated once and sliced per batch. A buffer that a handler kept
/// a reference to (any view of it) is the handler's from then on: the worker notices when the
/// handler returns (`escaped`) and uses fresh buffers for the next batch.
struct Buffers {
    cap: usize,
    lengths: Py<PyArray1<u32>>,
    addrs: Py<PyArray1<u64>>,
    verdicts: Py<PyArray1<u8>>,
    forward_to: Py<PyArray1<u16>>,
    meta_raw: Py<PyArray2<u8>>,
    headers: Py<PyAny>,
    /// The whole UMEM, read-only (see `UmemWindow`).
    umem: Py<PyAny>,
    /// The batch's descriptors as the worker has them.
    descs: Mutex<Vec<XdpDesc>>,
    /// Reference counts of lengths, addrs, verdicts, forward_to, meta_raw, headers with nothing
    /// handed out.
    base: [isize; 6],
}

impl Buffers {
    fn new(py: Python<'_>, cap: usize, frames: &Frames) -> PyResult<Self> {
        let meta_raw = PyArray2::<u8>::zeros(py, [cap, 64], false);
        let dtype = py.import("kbypass.packet")?.getattr("META_DTYPE")?;
        let headers = meta_raw
            .call_method1("view", (dtype,))?
            .call_method1("reshape", (cap,))?;
        let mut b = Buffers {
            cap,
            lengths: PyArray1::<u32>::zeros(py, cap, false).unbind(),
            addrs: PyArray1::<u64>::zeros(py, cap, false).unbind(),
            verdicts: PyArray1::<u8>::zeros(py, cap, false).unbind(),
            forward_to: PyArray1::<u16>::zeros(py, cap, false).unbind(),
            meta_raw: meta_raw.unbind(),
            headers: headers.unbind(),
            umem: frames.umem_2d(py)?.into_any().unbind(),
            descs: Mutex::new(vec![XdpDesc::default(); cap]),
            base: [0; 6],
        };
        b.base = b.refcounts(py);
        Ok(b)
    }

    fn refcounts(&self, py: Python<'_>) -> [isize; 6] {
        [
            refcnt(self.lengths.bind(py).as_any()),
            refcnt(self.addrs.bind(py).as_any()),
            refcnt(self.verdicts.bind(py).as_any()),
            refcnt(self.forward_to.bind(py).as_any()),
            refcnt(self.meta_raw.bind(py).as_any()),
            refcnt(self.headers.bind(py)),
        ]
    }

    /// Whether a column (or a view of one) outlived the handler. Every view NumPy derives from
    /// a buffer has the buffer as its base, so its reference count says.
    fn escaped(&self, py: Python<'_>) -> bool {
        self.refcounts(py) != self.base
    }

    fn head<'py>(&self, py: Python<'py>, arr: &Py<PyAny>, n: usize) -> PyResult<Bound<'py, PyAny>> {
        let a = arr.bind(py);
        if n == self.cap {
            return Ok(a.clone());
        }
        a.get_item(PySlice::new(py, 0, n as isize, 1))
    }

    fn load(&self, py: Python<'_>, ctx: &BatchCtx<'_>) -> PyResult<()> {
        let n = ctx.len();
        self.descs.lock().unwrap_or_else(|e| e.into_inner())[..n].copy_from_slice(ctx.descs());
        {
            let mut l = self.lengths.bind(py).try_readwrite()?;
            let mut a = self.addrs.bind(py).try_readwrite()?;
            let (l, a) = (l.as_slice_mut()?, a.as_slice_mut()?);
            for (i, d) in ctx.descs().iter().enumerate() {
                l[i] = d.len;
                a[i] = d.addr;
            }
        }
        {
            let mut m = self.meta_raw.bind(py).try_readwrite()?;
            let m = m.as_slice_mut()?;
            for (i, meta) in ctx.metas.iter().enumerate() {
                m[i * 64..i * 64 + 64].copy_from_slice(&meta.to_bytes());
            }
        }
        let mut v = self.verdicts.bind(py).try_readwrite()?;
        v.as_slice_mut()?[..n].copy_from_slice(ctx.verdicts);
        let mut f = self.forward_to.bind(py).try_readwrite()?;
        f.as_slice_mut()?[..n].copy_from_slice(ctx.forward_to);
        Ok(())
    }

    fn store(&self, py: Python<'_>, ctx: &mut BatchCtx<'_>) -> PyResult<()> {
        let n = ctx.len();
        let v = self.verdicts.bind(py).try_readonly()?;
        ctx.verdicts.copy_from_slice(&v.as_slice()?[..n]);
        let f = self.forward_to.bind(py).try_readonly()?;
        ctx.forward_to.copy_from_slice(&f.as_slice()?[..n]);
        Ok(())
    }
}

/// What the handlers of one engine share.
struct Common {
    callback: Py<PyAny>,
    frames: Frames,
    errors: Arc<ErrorLog>,
    kept: Arc<Mutex<Vec<Py<PyKept>>>>,
    default_verdict: u8,
    on_error: OnError,
}

impl Common {
    /// Wrap the batch's KEEP frames, each held, in a `Kept` handle for `Engine.kept()`.
    fn collect_kept(
        &self,
        py: Python<'_>,
        ctx: &mut BatchCtx<'_>,
        stats: &Arc<WorkerStats>,
    ) -> PyResult<()> {
        let (mut addrs, mut lens, mut holds) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..ctx.len() {
            if ctx.verdicts[i] != engine::KEEP {
                continue;
            }
            let d = ctx.descs()[i];
            if let Some(h) = ctx.keep(i) {
                addrs.push(d.addr);
                lens.push(d.len);
                holds.push(h);
            }
        }
        if holds.is_empty() {
            return Ok(());
        }
        let k = Py::new(
            py,
            PyKept {
                addrs,
                lens,
                frames: self.frames.clone(),
                holds: Mutex::new(Some(holds)),
                stats: Arc::clone(stats),
            },
        )?;
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).push(k);
        Ok(())
    }
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
fn finalizing() -> bool {
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
struct ThreadState {
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

/// The batch when the interpreter is going away: no Python, every frame back, stop.
fn finalizing_batch(ctx: &mut BatchCtx<'_>) -> Result<(), HandlerError> {
    ctx.verdicts.fill(engine::DROP);
    ctx.stop = true;
    Ok(())
}

struct PyBatchHandler {
    common: Arc<Common>,
    bufs: Arc<Buffers>,
    stats: Arc<WorkerStats>,
    /// `Life::id` of the engine.
    life: usize,
    ts: ThreadState,
}

impl PyBatchHandler {
    /// Run the Python handler on the batch and read its verdicts back.
    fn call(
        &self,
        py: Python<'_>,
        ctx: &mut BatchCtx<'_>,
        batch: &Py<PyBatch>,
    ) -> Result<(), HandlerError> {
        let c = &self.common;
        let r = c.callback.bind(py).call1((batch.clone_ref(py),));
        batch.get().valid.store(false, Ordering::Release);
        let ret = match r {
            Ok(v) => v,
            Err(e) => {
                c.errors.report(py, "the batch handler raised", e);
                return Err(HandlerError);
            }
        };
        if let Err(e) = self.bufs.store(py, ctx) {
            c.errors.report(py, "could not read the verdicts", e);
            return Err(HandlerError);
        }
        if !ret.is_none() {
            match verdict_of(&ret) {
                Some(v) => ctx.verdicts.fill(v),
                None => {
                    c.errors.report(
                        py,
                        "the batch handler returned a wrong value",
                        PyTypeError::new_err(format!(
                            "a batch handler returns None (verdicts written to batch.verdicts) or one verdict for every frame (kbypass.DROP/TX/FORWARD/KEEP), not {}",
                            ret.repr().map(|r| r.to_string()).unwrap_or_default()
                        )),
                    );
                    return Err(HandlerError);
                }
            }
        }
        if let Err(e) = c.collect_kept(py, ctx, &self.stats) {
            c.errors.report(py, "could not record kept frames", e);
        }
        Ok(())
    }
}

impl BatchHandler for PyBatchHandler {
    fn thread_start(&mut self) {
        WORKER_OF.with(|w| w.set(self.life));
        self.ts.start();
    }

    fn thread_end(&mut self) {
        self.ts.end();
        WORKER_OF.with(|w| w.set(0));
    }

    fn handle(&mut self, ctx: &mut BatchCtx<'_>) -> Result<(), HandlerError> {
        if finalizing() {
            return finalizing_batch(ctx);
        }
        Python::attach(|py| {
            let c = &self.common;
            if let Err(e) = self.bufs.load(py, ctx) {
                c.errors.report(py, "could not fill the batch buffers", e);
                return Err(HandlerError);
            }
            let batch = match Py::new(
                py,
                PyBatch {
                    n: ctx.len(),
                    socket: ctx.socket,
                    worker: ctx.worker,
                    bufs: Arc::clone(&self.bufs),
                    frames: c.frames.clone(),
                    valid: AtomicBool::new(true),
                    views: Mutex::new(Vec::new()),
                },
            ) {
                Ok(b) => b,
                Err(e) => {
                    c.errors.report(py, "could not create the batch", e);
                    return Err(HandlerError);
                }
            };
            // Whatever the outcome, the handler's own references (its frame, a traceback, the
            // return value) are gone now: anything still referenced escaped.
            let r = self.call(py, ctx, &batch);
            let views = std::mem::take(&mut *batch.get().lock_views());
            if !views.is_empty() {
                hold_escaped(py, ctx, views);
            }
            if self.bufs.escaped(py) {
                match Buffers::new(py, self.bufs.cap, &c.frames) {
                    Ok(b) => self.bufs = Arc::new(b),
                    Err(e) => {
                        // Without fresh buffers the next batch would write into the arrays
                        // the handler kept: stop instead.
                        c.errors
                            .report(py, "could not replace the batch buffers", e);
                        ctx.stop = true;
                    }
                }
            }
            r
        })
    }
}

/// A verdict value from a Python object: an int (or IntEnum) 0..=3.
fn verdict_of(v: &Bound<'_, PyAny>) -> Option<u8> {
    if v.is_instance_of::<pyo3::types::PyBool>() {
        return None;
    }
    v.extract::<u8>().ok().filter(|&x| engine::valid_verdict(x))
}

struct PyPacketHandler {
    common: Arc<Common>,
    packet: Py<PyPacket>,
    stats: Arc<WorkerStats>,
    /// `Life::id` of the engine.
    life: usize,
    ts: ThreadState,
}

impl PyPacketHandler {
    fn call_each(&self, py: Python<'_>, ctx: &mut BatchCtx<'_>) {
        let c = &self.common;
        let cb = c.callback.bind(py);
        let pkt = self.packet.bind(py);
        for i in 0..ctx.len() {
            {
                let mut p = pkt.borrow_mut();
                p.meta = ctx.metas[i];
                p.addr = ctx.descs()[i].addr;
                p.index = i;
                p.valid = true;
            }
            let r = cb.call1((pkt,));
            pkt.borrow_mut().valid = false;
            let v = match r {
                Ok(v) if v.is_none() => continue,
                Ok(v) => match verdict_of(&v) {
                    Some(x) => Some(x),
                    None => {
                        c.errors.report(
                            py,
                            "the per-packet handler returned a wrong value",
                            PyTypeError::new_err(format!(
                                "a per-packet handler returns a verdict (kbypass.DROP/TX/FORWARD/KEEP) or None for the default, not {}",
                                v.repr().map(|r| r.to_string()).unwrap_or_default()
                            )),
                        );
                        None
                    }
                },
                Err(e) => {
                    c.errors.report(py, "the per-packet handler raised", e);
                    None
                }
            };
            match v {
                Some(x) => ctx.verdicts[i] = x,
                None => {
                    ctx.errors += 1;
                    ctx.verdicts[i] = match c.on_error {
                        OnError::Drop => engine::DROP,
                        OnError::Pass => c.default_verdict,
                        OnError::Stop => {
                            ctx.stop = true;
                            engine::DROP
                        }
                    };
                }
            }
        }
    }
}

impl BatchHandler for PyPacketHandler {
    fn thread_start(&mut self) {
        WORKER_OF.with(|w| w.set(self.life));
        self.ts.start();
    }

    fn thread_end(&mut self) {
        self.ts.end();
        WORKER_OF.with(|w| w.set(0));
    }

    fn handle(&mut self, ctx: &mut BatchCtx<'_>) -> Result<(), HandlerError> {
        if finalizing() {
            return finalizing_batch(ctx);
        }
        Python::attach(|py| {
            self.call_each(py, ctx);
            let c = &self.common;
            if let Err(e) = c.collect_kept(py, ctx, &self.stats) {
                c.errors.report(py, "could not record kept frames", e);
            }
            let views = std::mem::take(&mut self.packet.bind(py).borrow_mut().views);
            if !views.is_empty() {
                hold_escaped(py, ctx, views);
            }
            Ok(())
        })
    }
}

/// One batch of received frames, valid only while the handler runs.
///
/// Columns are NumPy arrays of length `len(batch)`: `lengths` (uint32), `addrs` (uint64 UMEM
/// offsets of the packet data), `headers` (structured, `kbypass.packet.META_DTYPE`),
/// `verdicts` (uint8, writable, pre-filled with the pipeline's default) and `forward_to`
/// (uint16 socket index for FORWARD). `frame(i)` / `frames` are zero-copy, writable views of
/// the packet bytes; `umem` is a read-only window on the whole UMEM indexed as a (frames,
/// frame_size) array, so `umem[addrs // frame_size, addrs % frame_size + k]` gives byte k of
/// every packet at once (indexing it returns copies).
///
/// After the handler returns, every method raises RuntimeError. What the handler kept stays
/// valid and never changes under it: a column array (or view of one) it kept is its own (the
/// next batch gets fresh buffers), and a frame whose view it kept is held, not recycled, until
/// the last view is gone (counted in `stats()["escaped"]`; a TX/FORWARD verdict then sends a
/// copy). Holding frames takes them from the pool: copy what you keep for long, or KEEP it.
///
/// Example:
///     >>> def handler(batch):
///     ...     h = batch.headers
///     ...     batch.verdicts[:] = np.where(h["dst_port"] == 9000, kbypass.TX, kbypass.DROP)
///     ...     batch.swap_macs(batch.verdicts == kbypass.TX)
#[pyclass(name = "Batch", module = "kbypass._core", frozen)]
pub struct PyBatch {
    n: usize,
    socket: usize,
    worker: usize,
    bufs: Arc<Buffers>,
    frames: Frames,
    valid: AtomicBool,
    /// Owner of the views of frame `i` (once one was taken), checked when the handler returns.
    views: Mutex<Vec<Option<Py<FrameView>>>>,
}

impl PyBatch {
    fn check(&self) -> PyResult<()> {
        if !self.valid.load(Ordering::Acquire) {
            return Err(PyRuntimeError::new_err(
                "this Batch ended when the handler returned: its buffers are reused and its frames recycled; copy data you need inside the handler, or give frames the KEEP verdict",
            ));
        }
        Ok(())
    }

    fn lock_views(&self) -> MutexGuard<'_, Vec<Option<Py<FrameView>>>> {
        self.views.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The batch's descriptors (the worker's, not the `addrs`/`lengths` arrays a handler may
    /// have written to).
    fn descs(&self) -> MutexGuard<'_, Vec<XdpDesc>> {
        self.bufs.descs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A view of frame `j`, its owner shared by every view of that frame in this batch.
    fn view<'py>(&self, py: Python<'py>, j: usize) -> PyResult<Bound<'py, PyArray1<u8>>> {
        let d = self.descs()[j];
        if !self.frames.umem()?.in_frame(d.addr, d.len) {
            return Err(PyRuntimeError::new_err("descriptor outside its frame"));
        }
        let known = self
            .lock_views()
            .get(j)
            .and_then(|o| o.as_ref().map(|o| o.clone_ref(py)));
        let owner = match known {
            Some(o) => o.into_bound(py),
            None => {
                // Allocate without the lock held: a GC run here may run arbitrary Python.
                let o = Bound::new(py, self.frames.owner(None))?;
                let mut v = self.lock_views();
                // Under the lock the worker takes the owners with: an owner added after it
                // took them would never be checked.
                self.check()?;
                if v.len() < self.n {
                    v.resize_with(self.n, || None);
                }
                match &v[j] {
                    Some(other) => other.clone_ref(py).into_bound(py),
                    None => {
                        v[j] = Some(o.clone().unbind());
                        o
                    }
                }
            }
        };
        FrameView::array(&owner, d.addr, d.len)
    }

    fn col<'py>(&self, py: Python<'py>, arr: &Py<PyAny>) -> PyResult<Bound<'py, PyAny>> {
        self.check()?;
        self.bufs.head(py, arr, self.n)
    }

    fn mask(&self, mask: Option<PyReadonlyArray1<'_, bool>>) -> PyResult<Option<Vec<bool>>> {
        match mask {
            None => Ok(None),
            Some(m) => {
                if m.len() != self.n {
                    return Err(PyValueError::new_err(format!(
                        "mask has {} entries for a batch of {}: pass a boolean array of len(batch)",
                        m.len(),
                        self.n
                    )));
                }
                Ok(Some(m.as_array().iter().copied().collect()))
            }
        }
    }

    /// Apply `f` to every (masked) frame; returns how many it changed.
    fn edit_each(
        &self,
        _py: Python<'_>,
        mask: Option<PyReadonlyArray1<'_, bool>>,
        f: impl Fn(&mut [u8], &PacketMeta) -> bool,
    ) -> PyResult<usize> {
        self.check()?;
        let m = self.mask(mask)?;
        let descs = self.descs();
        let umem = self.frames.umem()?;
        let mut changed = 0;
        for (i, d) in descs[..self.n].iter().enumerate() {
            if m.as_ref().is_some_and(|m| !m[i]) {
                continue;
            }
            // SAFETY: one frame at a time, and no other Rust reference to it exists. Views of it
            // handed to Python are NumPy arrays of this batch; this thread is attached to the
            // interpreter and runs no Python code while the slice lives, so (with the GIL) none
            // of them is used meanwhile.
            if let Some(frame) = unsafe { engine::frame_mut(&umem, d.addr, d.len) } {
                let meta = parse(frame);
                if f(frame, &meta) {
                    changed += 1;
                }
            }
        }
        Ok(changed)
    }
}

#[pymethods]
impl PyBatch {
    fn __len__(&self) -> usize {
        self.n
    }

    /// Pipeline-wide index of the socket the frames arrived on.
    #[getter]
    fn socket(&self) -> usize {
        self.socket
    }

    /// Index of the worker running the handler.
    #[getter]
    fn worker(&self) -> usize {
        self.worker
    }

    /// Whether the batch is still usable (False once the handler returned).
    #[getter]
    fn valid(&self) -> bool {
        self.valid.load(Ordering::Acquire)
    }

    /// Packet lengths (uint32).
    #[getter]
    fn lengths<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let arr = self.bufs.lengths.clone_ref(py).into_any();
        self.col(py, &arr)
    }

    /// UMEM offsets of the packet data (uint64).
    #[getter]
    fn addrs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let arr = self.bufs.addrs.clone_ref(py).into_any();
        self.col(py, &arr)
    }

    /// Parsed headers (structured array, `kbypass.packet.META_DTYPE`).
    #[getter]
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.col(py, &self.bufs.headers)
    }

    /// Verdicts (uint8, writable), pre-filled with the pipeline's default.
    #[getter]
    fn verdicts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let arr = self.bufs.verdicts.clone_ref(py).into_any();
        self.col(py, &arr)
    }

    /// Target socket index of FORWARD verdicts (uint16, writable; defaults to this socket).
    #[getter]
    fn forward_to<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let arr = self.bufs.forward_to.clone_ref(py).into_any();
        self.col(py, &arr)
    }

    /// A read-only window on the whole UMEM, indexed as a (frames, frame_size) uint8 array;
    /// indexing it returns copies (usable after the handler).
    #[getter]
    fn umem(slf: &Bound<'_, Self>) -> PyResult<UmemWindow> {
        let me = slf.get();
        me.check()?;
        Ok(UmemWindow {
            arr: me.bufs.umem.clone_ref(slf.py()),
            batch: slf.clone().unbind(),
        })
    }

    /// Bytes per UMEM frame.
    #[getter]
    fn frame_size(&self) -> u32 {
        self.frames.frame_size
    }

    /// A zero-copy, writable uint8 view of frame `i`'s packet bytes. If the view outlives the
    /// handler, the frame is held until the view is gone (never recycled under it).
    fn frame<'py>(&self, py: Python<'py>, i: isize) -> PyResult<Bound<'py, PyArray1<u8>>> {
        self.check()?;
        let n = self.n as isize;
        let j = if i < 0 { i + n } else { i };
        if !(0..n).contains(&j) {
            return Err(PyIndexError::new_err(format!(
                "frame {i} out of range for a batch of {n}"
            )));
        }
        self.view(py, j as usize)
    }

    /// Zero-copy views of every frame (one NumPy object each: slower than the columns).
    #[getter]
    fn frames<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.check()?;
        let views = (0..self.n)
            .map(|j| self.view(py, j))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, views)
    }

    /// Swap Ethernet source and destination of the (masked) frames; returns how many.
    #[pyo3(signature = (mask=None))]
    fn swap_macs(
        &self,
        py: Python<'_>,
        mask: Option<PyReadonlyArray1<'_, bool>>,
    ) -> PyResult<usize> {
        self.edit_each(py, mask, |f, _| edit::swap_macs(f))
    }

    /// Swap IPv4/IPv6 source and destination of the (masked) frames; returns how many.
    #[pyo3(signature = (mask=None))]
    fn swap_ips(
        &self,
        py: Python<'_>,
        mask: Option<PyReadonlyArray1<'_, bool>>,
    ) -> PyResult<usize> {
        self.edit_each(py, mask, edit::swap_ips)
    }

    /// Swap UDP/TCP source and destination ports of the (masked) frames; returns how many.
    #[pyo3(signature = (mask=None))]
    fn swap_ports(
        &self,
        py: Python<'_>,
        mask: Option<PyReadonlyArray1<'_, bool>>,
    ) -> PyResult<usize> {
        self.edit_each(py, mask, edit::swap_ports)
    }

    /// Recompute the IPv4 header and UDP/TCP checksums of the (masked) frames; returns how
    /// many frames got a valid L4 checksum.
    #[pyo3(signature = (mask=None))]
    fn fix_checksums(
        &self,
        py: Python<'_>,
        mask: Option<PyReadonlyArray1<'_, bool>>,
    ) -> PyResult<usize> {
        self.edit_each(py, mask, |f, m| {
            edit::fix_ipv4_checksum(f, m);
            edit::fix_l4_checksum(f, m)
        })
    }

    /// Write `value` at byte `offset` from the start of the chosen header (`base`: "l2", "l3",
    /// "l4" or "payload") of the (masked) frames that are long enough; returns how many.
    /// Checksums are not updated: call `fix_checksums` after.
    #[pyo3(signature = (offset, value, mask=None, base="l2"))]
    fn set_field(
        &self,
        py: Python<'_>,
        offset: usize,
        value: &[u8],
        mask: Option<PyReadonlyArray1<'_, bool>>,
        base: &str,
    ) -> PyResult<usize> {
        let pick: fn(&PacketMeta) -> Option<usize> = match base {
            "l2" => |_| Some(0),
            "l3" => |m| (m.ip_version != 0).then_some(m.l3_off as usize),
            "l4" => |m| (m.l4_off != 0).then_some(m.l4_off as usize),
            "payload" => |m| (m.payload_off != 0).then_some(m.payload_off as usize),
            o => {
                return Err(PyValueError::new_err(format!(
                    "base={o:?}: use \"l2\", \"l3\", \"l4\" or \"payload\""
                )))
            }
        };
        let value = value.to_vec();
        self.edit_each(py, mask, move |f, m| {
            let Some(start) = pick(m).and_then(|b| b.checked_add(offset)) else {
                return false;
            };
            match f.get_mut(start..start.saturating_add(value.len())) {
                Some(dst) => {
                    dst.copy_from_slice(&value);
                    true
                }
                None => false,
            }
        })
    }

    /// Append the (masked) frames to a `kbypass.packet.PcapWriter`; returns how many.
    #[pyo3(signature = (writer, mask=None))]
    fn to_pcap(
        &self,
        _py: Python<'_>,
        writer: &Bound<'_, PcapWriter>,
        mask: Option<PyReadonlyArray1<'_, bool>>,
    ) -> PyResult<usize> {
        self.check()?;
        let m = self.mask(mask)?;
        let descs = self.descs();
        let mut w = writer.borrow_mut();
        let out = w.writer()?;
        let ts = kbypass_core::packet::pcap::now_ns();
        let umem = self.frames.umem()?;
        let mut k = 0;
        for (i, d) in descs[..self.n].iter().enumerate() {
            if m.as_ref().is_some_and(|m| !m[i]) {
                continue;
            }
            // SAFETY: as in `edit_each`: one frame at a time, no other Rust reference, and no
            // Python code runs on this thread while the slice lives.
            if let Some(frame) = unsafe { engine::frame_mut(&umem, d.addr, d.len) } {
                out.write_frame(ts, frame)
                    .map_err(|e| crate::packet::io_err("write pcap record", e))?;
                k += 1;
            }
        }
        Ok(k)
    }

    fn __repr__(&self) -> String {
        format!(
            "Batch({} frames, socket {}{})",
            self.n,
            self.socket,
            if self.valid() { "" } else { ", ended" }
        )
    }
}

/// `Batch.umem`: the whole UMEM indexed as a (frames, frame_size) uint8 array, read-only, valid
/// while the handler runs. Indexing returns copies, never views, so nothing taken from it can
/// change after the handler (frames outside the batch show whatever the kernel last wrote:
/// read the batch's rows, `umem[addrs // frame_size, ...]`).
///
/// Example:
///     >>> first = batch.umem[batch.addrs // batch.frame_size, batch.addrs % batch.frame_size]
#[pyclass(name = "UmemWindow", module = "kbypass._core", frozen)]
pub struct UmemWindow {
    arr: Py<PyAny>,
    batch: Py<PyBatch>,
}

#[pymethods]
impl UmemWindow {
    /// A copy of `umem[key]` (NumPy indexing on a (frames, frame_size) array).
    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.batch.get().check()?;
        let arr = self.arr.bind(py);
        let r = arr.get_item(key)?;
        // Basic indexing gives a view whose base is the UMEM array: copy it (fancy indexing
        // already copied).
        if r.getattr(pyo3::intern!(py, "base"))
            .is_ok_and(|b| b.is(arr))
        {
            return r.call_method0(pyo3::intern!(py, "copy"));
        }
        Ok(r)
    }

    fn __setitem__(&self, _key: &Bound<'_, PyAny>, _value: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(PyTypeError::new_err(
            "batch.umem is read-only: edit packets with batch.frame(i), batch.set_field() or the swap helpers",
        ))
    }

    /// (frames, frame_size).
    #[getter]
    fn shape(&self) -> (u32, u32) {
        let f = &self.batch.get().frames;
        (f.frames, f.frame_size)
    }

    fn __len__(&self) -> usize {
        self.batch.get().frames.frames as usize
    }

    fn __repr__(&self) -> String {
        let (r, c) = self.shape();
        format!("UmemWindow({r} frames x {c} bytes, read-only)")
    }
}

/// One packet, for per-packet handlers: valid only during the call (the object is reused).
///
/// `eth`, `ip`, `udp`, `tcp` return small header objects (copies, usable after the call);
/// `udp`/`tcp` are None for other protocols, `ip` is None for non-IP frames.
///
/// Example:
///     >>> @kbypass.processor("veth1")
///     ... def reflect(pkt):
///     ...     return kbypass.TX if pkt.udp and pkt.udp.dst_port == 9000 else kbypass.DROP
#[pyclass(name = "Packet", module = "kbypass._core")]
pub struct PyPacket {
    meta: PacketMeta,
    addr: u64,
    /// Index of the packet in its batch.
    index: usize,
    valid: bool,
    frames: Frames,
    /// Owner of the views of batch frame `i` (`data`), checked when the batch is done.
    views: Vec<Option<Py<FrameView>>>,
}

impl PyPacket {
    fn check(&self) -> PyResult<()> {
        if !self.valid {
            return Err(PyRuntimeError::new_err(
                "this Packet ended when the handler returned: the object is reused for the next packet; copy what you need (pkt.bytes(), pkt.udp) inside the handler",
            ));
        }
        Ok(())
    }

    fn edit(&self, f: impl Fn(&mut [u8], &PacketMeta) -> bool) -> PyResult<bool> {
        self.check()?;
        let umem = self.frames.umem()?;
        // SAFETY: one frame at a time, and no other Rust reference to it exists. Views of it
        // handed to Python are NumPy arrays of this batch; this thread is attached to the
        // interpreter and runs no Python code while the slice lives, so (with the GIL) none
        // of them is used meanwhile.
        Ok(
            match unsafe { engine::frame_mut(&umem, self.addr, self.meta.len) } {
                Some(frame) => {
                    let m = parse(frame);
                    f(frame, &m)
                }
                None => false,
            },
        )
    }
}

#[pymethods]
impl PyPacket {
    fn __len__(&self) -> PyResult<usize> {
        self.check()?;
        Ok(self.meta.len as usize)
    }

    /// Parse flags (`kbypass.packet.FLAG_*`).
    #[getter]
    fn flags(&self) -> PyResult<u16> {
        self.check()?;
        Ok(self.meta.flags)
    }

    /// Ethernet header (copy).
    #[getter]
    fn eth(&self, py: Python<'_>) -> PyResult<Py<EthHeader>> {
        self.check()?;
        let mut dst = [0u8; 6];
        let mut src = [0u8; 6];
        let umem = self.frames.umem()?;
        // SAFETY: one frame at a time, and no other Rust reference to it exists. Views of it
        // handed to Python are NumPy arrays of this batch; this thread is attached to the
        // interpreter and runs no Python code while the slice lives, so (with the GIL) none
        // of them is used meanwhile.
        if let Some(f) = unsafe { engine::frame_mut(&umem, self.addr, self.meta.len) } {
            if f.len() >= 12 {
                dst.copy_from_slice(&f[..6]);
                src.copy_from_slice(&f[6..12]);
            }
        }
        Py::new(
            py,
            EthHeader {
                dst,
                src,
                ethertype: self.meta.ethertype,
                vlan: self.meta.vlan,
            },
        )
    }

    /// IPv4/IPv6 header (copy), or None.
    #[getter]
    fn ip(&self, py: Python<'_>) -> PyResult<Option<Py<IpHeader>>> {
        self.check()?;
        if self.meta.ip_version == 0 {
            return Ok(None);
        }
        Py::new(py, IpHeader { meta: self.meta }).map(Some)
    }

    /// UDP header (copy), or None.
    #[getter]
    fn udp(&self, py: Python<'_>) -> PyResult<Option<Py<L4Header>>> {
        self.l4(py, kbypass_core::packet::parse::IPPROTO_UDP)
    }

    /// TCP header (copy), or None.
    #[getter]
    fn tcp(&self, py: Python<'_>) -> PyResult<Option<Py<L4Header>>> {
        self.l4(py, kbypass_core::packet::parse::IPPROTO_TCP)
    }

    /// A zero-copy, writable uint8 view of the packet bytes. If it outlives the call, the
    /// frame is held until the view is gone (never recycled under it).
    #[getter]
    fn data<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<u8>>> {
        self.check()?;
        if !self.frames.umem()?.in_frame(self.addr, self.meta.len) {
            return Err(PyRuntimeError::new_err("descriptor outside its frame"));
        }
        let i = self.index;
        if self.views.len() <= i {
            self.views.resize_with(i + 1, || None);
        }
        let owner = match &self.views[i] {
            Some(o) => o.bind(py).clone(),
            None => {
                let o = Bound::new(py, self.frames.owner(None))?;
                self.views[i] = Some(o.clone().unbind());
                o
            }
        };
        FrameView::array(&owner, self.addr, self.meta.len)
    }

    /// A copy of the packet bytes.
    fn bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        self.check()?;
        let umem = self.frames.umem()?;
        // SAFETY: one frame at a time, and no other Rust reference to it exists. Views of it
        // handed to Python are NumPy arrays of this batch; this thread is attached to the
        // interpreter and runs no Python code while the slice lives, so (with the GIL) none
        // of them is used meanwhile.
        let f = unsafe { engine::frame_mut(&umem, self.addr, self.meta.len) }
            .ok_or_else(|| PyRuntimeError::new_err("frame not held"))?;
        Ok(PyBytes::new(py, f))
    }

    /// Swap MAC addresses; returns whether it could.
    fn swap_macs(&self) -> PyResult<bool> {
        self.edit(|f, _| edit::swap_macs(f))
    }

    /// Swap IP addresses; returns whether it could.
    fn swap_ips(&self) -> PyResult<bool> {
        self.edit(edit::swap_ips)
    }

    /// Swap UDP/TCP ports; returns whether it could.
    fn swap_ports(&self) -> PyResult<bool> {
        self.edit(edit::swap_ports)
    }

    /// Recompute IPv4 and UDP/TCP checksums; returns whether the L4 checksum was set.
    fn fix_checksums(&self) -> PyResult<bool> {
        self.edit(|f, m| {
            edit::fix_ipv4_checksum(f, m);
            edit::fix_l4_checksum(f, m)
        })
    }

    fn __repr__(&self) -> String {
        if !self.valid {
            return "Packet(ended)".into();
        }
        format!(
            "Packet({} bytes, ethertype 0x{:04x}, proto {}, ports {}->{})",
            self.meta.len,
            self.meta.ethertype,
            self.meta.proto,
            self.meta.src_port,
            self.meta.dst_port
        )
    }
}

impl PyPacket {
    fn l4(&self, py: Python<'_>, proto: u8) -> PyResult<Option<Py<L4Header>>> {
        self.check()?;
        let m = &self.meta;
        if m.proto != proto || m.flags & kbypass_core::packet::parse::FLAG_L4 == 0 {
            return Ok(None);
        }
        Py::new(
            py,
            L4Header {
                src_port: m.src_port,
                dst_port: m.dst_port,
                payload_len: m.payload_len,
            },
        )
        .map(Some)
    }
}

fn mac(b: &[u8; 6]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Ethernet header fields of a `Packet`.
#[pyclass(name = "EthHeader", module = "kbypass._core", frozen, get_all)]
pub struct EthHeader {
    dst: [u8; 6],
    src: [u8; 6],
    /// Ethertype after VLAN tags.
    ethertype: u16,
    /// Outer VLAN id (0 when untagged).
    vlan: u16,
}

#[pymethods]
impl EthHeader {
    /// Destination MAC as "aa:bb:…".
    #[getter]
    fn dst_mac(&self) -> String {
        mac(&self.dst)
    }

    /// Source MAC as "aa:bb:…".
    #[getter]
    fn src_mac(&self) -> String {
        mac(&self.src)
    }

    fn __repr__(&self) -> String {
        format!(
            "EthHeader({} -> {}, type 0x{:04x})",
            mac(&self.src),
            mac(&self.dst),
            self.ethertype
        )
    }
}

/// IP header fields of a `Packet`.
#[pyclass(name = "IpHeader", module = "kbypass._core", frozen)]
pub struct IpHeader {
    meta: PacketMeta,
}

#[pymethods]
impl IpHeader {
    /// 4 or 6.
    #[getter]
    fn version(&self) -> u8 {
        self.meta.ip_version
    }

    /// IP protocol number.
    #[getter]
    fn proto(&self) -> u8 {
        self.meta.proto
    }

    /// Source address as text.
    #[getter]
    fn src(&self) -> String {
        ip_text(self.meta.ip_version, self.meta.src_ip4, &self.meta.src_ip6)
    }

    /// Destination address as text.
    #[getter]
    fn dst(&self) -> String {
        ip_text(self.meta.ip_version, self.meta.dst_ip4, &self.meta.dst_ip6)
    }

    /// IPv4 source as an integer (0 for IPv6).
    #[getter]
    fn src_int(&self) -> u32 {
        self.meta.src_ip4
    }

    /// IPv4 destination as an integer (0 for IPv6).
    #[getter]
    fn dst_int(&self) -> u32 {
        self.meta.dst_ip4
    }

    fn __repr__(&self) -> String {
        format!(
            "IpHeader(v{} {} -> {}, proto {})",
            self.version(),
            self.src(),
            self.dst(),
            self.proto()
        )
    }
}

fn ip_text(version: u8, v4: u32, v6: &[u8; 16]) -> String {
    if version == 6 {
        std::net::Ipv6Addr::from(*v6).to_string()
    } else {
        std::net::Ipv4Addr::from(v4).to_string()
    }
}

/// UDP/TCP header fields of a `Packet`.
#[pyclass(name = "L4Header", module = "kbypass._core", frozen, get_all)]
pub struct L4Header {
    /// Source port.
    src_port: u16,
    /// Destination port.
    dst_port: u16,
    /// Payload bytes present in the frame.
    payload_len: u16,
}

#[pymethods]
impl L4Header {
    fn __repr__(&self) -> String {
        format!(
            "L4Header({} -> {}, {} bytes)",
            self.src_port, self.dst_port, self.payload_len
        )
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
    addrs: Vec<u64>,
    lens: Vec<u32>,
    frames: Frames,
    /// One hold per frame; None once released.
    holds: Mutex<Option<Vec<FrameHold>>>,
    stats: Arc<WorkerStats>,
}

#[pymethods]
impl PyKept {
    fn __len__(&self) -> usize {
        self.addrs.len()
    }

    /// Zero-copy views of the kept frames (each holds its frame while it lives).
    #[getter]
    fn frames<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let holds: Vec<FrameHold> =
            match &*self.holds.lock().unwrap_or_else(|e| e.into_inner()) {
                Some(h) => h.clone(),
                None => return Err(PyRuntimeError::new_err(
                    "these kept frames were released and are recycled: copy data before release()",
                )),
            };
        let v = holds
            .into_iter()
            .zip(self.addrs.iter().zip(&self.lens))
            .map(|(h, (&a, &l))| {
                let owner = Bound::new(py, self.frames.owner(Some(h)))?;
                FrameView::array(&owner, a, l)
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, v)
    }

    /// Packet lengths (uint32).
    #[getter]
    fn lengths<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u32>> {
        PyArray1::from_slice(py, &self.lens)
    }

    /// Whether the frames were released.
    #[getter]
    fn released(&self) -> bool {
        self.holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// Give the frames back for receiving (each as soon as no view of it is left).
    /// Idempotent; returns how many were released.
    fn release(&self) -> usize {
        let holds = self.holds.lock().unwrap_or_else(|e| e.into_inner()).take();
        let n = holds.map_or(0, |h| h.len());
        self.stats.add_released(n as u64);
        n
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
            self.addrs.len(),
            if self.released() { ", released" } else { "" }
        )
    }
}

impl Drop for PyKept {
    fn drop(&mut self) {
        // A handle dropped unreleased gives its frames back (the holds go with it), counted.
        if let Some(h) = self
            .holds
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            self.stats.add_released(h.len() as u64);
        }
    }
}

struct Running {
    handles: Vec<JoinHandle<WorkerExit>>,
    started: Instant,
}

/// What starting and stopping the workers share with the exit hook ([`stop_all_engines`]).
struct Life {
    port: Arc<PortHandle>,
    stop_flag: Arc<AtomicBool>,
    running: Mutex<Option<Running>>,
    last_run: Mutex<Option<(Instant, Instant)>>,
}

thread_local! {
    /// On a worker thread: the `Life` of its engine (as an address), so that `stop()`/`wait()`
    /// called from inside a handler know not to join their own thread.
    static WORKER_OF: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Engines that started workers, for the interpreter-exit hook.
static LIVES: Mutex<Vec<Weak<Life>>> = Mutex::new(Vec::new());

/// Set by the interpreter-exit hook: workers started after it would still run when the
/// interpreter finalizes, so `start` refuses.
static EXITING: AtomicBool = AtomicBool::new(false);

impl Life {
    /// Never held across a GIL release or a wait: every holder only reads or swaps it.
    fn state(&self) -> MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn id(&self) -> usize {
        self as *const Life as usize
    }

    /// Whether the calling thread is one of this engine's workers (inside its handler).
    fn on_worker(&self) -> bool {
        WORKER_OF.with(|w| w.get() == self.id())
    }

    fn finished(&self) -> bool {
        match &*self.state() {
            None => true,
            Some(r) => r.handles.iter().all(|h| h.is_finished()),
        }
    }

    /// Stop the workers, join them without the GIL (a worker may need it to finish its batch)
    /// and put their sockets back into the port. Returns the workers' errors.
    fn stop_join(&self, py: Python<'_>) -> Vec<String> {
        self.stop_flag.store(true, Ordering::Release);
        let Some(r) = self.state().take() else {
            return Vec::new();
        };
        py.detach(|| self.join(r))
    }

    fn join(&self, r: Running) -> Vec<String> {
        let mut errors = Vec::new();
        let exits: Vec<_> = r.handles.into_iter().map(|h| h.join()).collect();
        *self.last_run.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((r.started, Instant::now()));
        let mut g = self.port.lock();
        for x in exits {
            match x {
                Ok(exit) => {
                    if let Some(e) = exit.error {
                        errors.push(e.to_string());
                    }
                    if let Some(port) = g.as_mut() {
                        for (i, s) in exit.sockets {
                            let _ = port.put_socket(i, s);
                        }
                    }
                }
                Err(_) => errors.push("a worker thread panicked".into()),
            }
        }
        errors
    }
}

/// Stop the workers of every engine still running (registered with `atexit` when the module
/// loads): at interpreter exit no worker may still want the GIL, or finalization would end it
/// inside our frames. Returns how many engines had workers to stop.
#[pyfunction]
fn stop_all_engines(py: Python<'_>) -> usize {
    EXITING.store(true, Ordering::Release);
    let lives: Vec<Arc<Life>> = LIVES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain(..)
        .filter_map(|w| w.upgrade())
        .collect();
    let mut n = 0;
    for l in lives {
        if l.state().is_some() {
            n += 1;
        }
        l.stop_join(py);
    }
    n
}

/// The workers of one pipeline over an `XdpPort` (used by `kbypass.Pipeline`).
///
/// Example:
///     >>> eng = Engine(port, handler, batch=64)
///     >>> eng.start(); eng.wait(1.0); eng.stop()
#[pyclass(name = "Engine", module = "kbypass._core", frozen)]
pub struct PyEngine {
    life: Arc<Life>,
    common: Arc<Common>,
    per_packet: bool,
    batch: usize,
    groups: Vec<Vec<usize>>,
    cpus: Vec<Option<usize>>,
    idle_wait: Duration,
    stats: Vec<Arc<WorkerStats>>,
    total: Arc<AtomicU64>,
}

fn parse_verdict(v: &Bound<'_, PyAny>) -> PyResult<u8> {
    verdict_of(v).ok_or_else(|| {
        PyValueError::new_err("default must be a verdict: kbypass.DROP, TX, FORWARD or KEEP")
    })
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (port, handler, *, per_packet=false, batch=64, workers=None, cpus=None,
        default=None, on_error="drop", idle_wait=0.001))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        port: &Bound<'_, PyXdpPort>,
        handler: Py<PyAny>,
        per_packet: bool,
        batch: usize,
        workers: Option<Vec<Vec<usize>>>,
        cpus: Option<Vec<Option<usize>>>,
        default: Option<&Bound<'_, PyAny>>,
        on_error: &str,
        idle_wait: f64,
    ) -> PyResult<Self> {
        if !handler.bind(py).is_callable() {
            return Err(PyTypeError::new_err(
                "handler must be callable: def handler(batch) -> None",
            ));
        }
        if batch == 0 || batch > 4096 {
            return Err(PyValueError::new_err(format!(
                "batch={batch} must be 1..=4096"
            )));
        }
        if !(0.0..=1.0).contains(&idle_wait) || idle_wait == 0.0 {
            return Err(PyValueError::new_err("idle_wait must be in (0, 1] seconds"));
        }
        let on_error: OnError = on_error.parse().py()?;
        let default_verdict = match default {
            Some(d) if !d.is_none() => parse_verdict(d)?,
            _ => engine::DROP,
        };
        let handle = Arc::clone(&port.get().handle);
        let nsock = handle.queues.len();
        let groups = workers.unwrap_or_else(|| (0..nsock).map(|i| vec![i]).collect());
        let mut seen = vec![false; nsock];
        for g in &groups {
            if g.is_empty() {
                return Err(PyValueError::new_err(
                    "a worker group is empty: give each worker at least one socket index",
                ));
            }
            for &i in g {
                if i >= nsock || std::mem::replace(&mut seen[i], true) {
                    return Err(PyValueError::new_err(format!(
                        "workers={groups:?}: socket indexes must be 0..{nsock}, each in one group"
                    )));
                }
            }
        }
        let cpus = match cpus {
            Some(c) if c.len() != groups.len() => {
                return Err(PyValueError::new_err(format!(
                    "cpus has {} entries for {} workers: give one CPU (or None) per worker",
                    c.len(),
                    groups.len()
                )))
            }
            Some(c) => c,
            None => vec![None; groups.len()],
        };
        let umem = py
            .detach(|| handle.lock().as_ref().map(|p| Arc::clone(p.umem())))
            .ok_or_else(|| PyRuntimeError::new_err("the port is closed: open a new one"))?;
        let frames = Frames {
            frame_size: umem.frame_size(),
            frames: umem.frames(),
            umem: Arc::downgrade(&umem),
            region: Arc::clone(&handle.region),
            pool_off: handle.pool_off,
        };
        let stats: Vec<Arc<WorkerStats>> = groups.iter().map(|_| Arc::default()).collect();
        Ok(PyEngine {
            life: Arc::new(Life {
                port: handle,
                stop_flag: Arc::default(),
                running: Mutex::new(None),
                last_run: Mutex::new(None),
            }),
            common: Arc::new(Common {
                callback: handler,
                frames,
                errors: Arc::default(),
                kept: Arc::default(),
                default_verdict,
                on_error,
            }),
            per_packet,
            batch,
            groups,
            cpus,
            idle_wait: Duration::from_secs_f64(idle_wait),
            stats,
            total: Arc::default(),
        })
    }

    /// Start the workers; `packets` stops them after that many packets in total.
    #[pyo3(signature = (packets=None))]
    fn start(&self, py: Python<'_>, packets: Option<u64>) -> PyResult<()> {
        let life = &self.life;
        if life.state().is_some() {
            return Err(PyRuntimeError::new_err(
                "the pipeline is already running: stop() it first",
            ));
        }
        if packets == Some(0) {
            return Err(PyValueError::new_err("packets must be at least 1"));
        }
        if EXITING.load(Ordering::Acquire) {
            return Err(PyRuntimeError::new_err(
                "the interpreter is exiting (kbypass's exit hook already stopped every pipeline): start pipelines before exit, not from atexit handlers",
            ));
        }
        life.stop_flag.store(false, Ordering::Release);
        self.total.store(0, Ordering::Release);
        // Build each worker's handler (NumPy buffers) with the GIL, before taking sockets.
        let mut handlers: Vec<Box<dyn BatchHandler>> = Vec::new();
        for stats in &self.stats {
            let h: Box<dyn BatchHandler> = if self.per_packet {
                let packet = Py::new(
                    py,
                    PyPacket {
                        meta: PacketMeta::default(),
                        addr: 0,
                        index: 0,
                        valid: false,
                        frames: self.common.frames.clone(),
                        views: Vec::new(),
                    },
                )?;
                Box::new(PyPacketHandler {
                    common: Arc::clone(&self.common),
                    packet,
                    stats: Arc::clone(stats),
                    life: life.id(),
                    ts: ThreadState::default(),
                })
            } else {
                Box::new(PyBatchHandler {
                    common: Arc::clone(&self.common),
                    bufs: Arc::new(Buffers::new(py, self.batch, &self.common.frames)?),
                    stats: Arc::clone(stats),
                    life: life.id(),
                    ts: ThreadState::default(),
                })
            };
            handlers.push(h);
        }
        let groups = &self.groups;
        let taken = py.detach(|| {
            let mut g = life.port.lock();
            let port = g
                .as_mut()
                .ok_or_else(|| PyRuntimeError::new_err("the port is closed: open a new one"))?;
            let mut taken: Vec<Vec<(usize, kbypass_core::xsk::XskSocket)>> = Vec::new();
            for grp in groups {
                let mut v = Vec::new();
                for &i in grp {
                    match port.take_socket(i) {
                        Some(s) => v.push((i, s)),
                        None => {
                            taken.push(v);
                            for (j, s) in taken.into_iter().flatten() {
                                let _ = port.put_socket(j, s);
                            }
                            return Err(PyRuntimeError::new_err(format!(
                                "socket {i} is in use (another Pipeline?): stop it first"
                            )));
                        }
                    }
                }
                taken.push(v);
            }
            Ok(taken)
        })?;
        let mut handles = Vec::new();
        let mut err = None;
        let mut back = Vec::new();
        for (wid, ((socks, h), stats)) in
            taken.into_iter().zip(handlers).zip(&self.stats).enumerate()
        {
            if err.is_some() {
                back.extend(socks);
                continue;
            }
            let cfg = WorkerConfig {
                batch: self.batch,
                cpu: self.cpus[wid],
                default_verdict: self.common.default_verdict,
                on_error: self.common.on_error,
                idle_spins: 512,
                idle_wait: self.idle_wait,
                stop: Arc::clone(&life.stop_flag),
                total: Arc::clone(&self.total),
                limit: packets.unwrap_or(u64::MAX),
            };
            // `spawn` consumes the sockets; on failure they are dropped with the error.
            match engine::spawn(wid, socks, h, cfg, Arc::clone(stats)) {
                Ok(j) => handles.push(j),
                Err(e) => err = Some(e),
            }
        }
        if !back.is_empty() {
            py.detach(|| {
                if let Some(port) = life.port.lock().as_mut() {
                    for (j, s) in back {
                        let _ = port.put_socket(j, s);
                    }
                }
            });
        }
        *life.state() = Some(Running {
            handles,
            started: Instant::now(),
        });
        {
            let mut lives = LIVES.lock().unwrap_or_else(|e| e.into_inner());
            lives.retain(|w| w.strong_count() > 0);
            lives.push(Arc::downgrade(life));
        }
        if let Some(e) = err {
            life.stop_join(py);
            return Err(e).py();
        }
        Ok(())
    }

    /// Wait up to `timeout` seconds (None: forever) for the workers to end by themselves
    /// (packet limit reached, handler asked to stop). Returns whether they did. The GIL is
    /// released while waiting and signals are checked every 50 ms, so Ctrl-C interrupts it.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let life = &self.life;
        if life.on_worker() {
            return Err(PyRuntimeError::new_err(
                "wait() inside the handler would wait for its own worker: return from the handler (call stop() there to end the pipeline after this batch) and wait() outside",
            ));
        }
        if timeout.is_some_and(|t| t.is_nan() || t > 1e9) {
            return Err(PyValueError::new_err(
                "timeout must be a number of seconds up to 1e9, or None to wait until they end",
            ));
        }
        let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
        loop {
            let slice_end = match deadline {
                Some(d) => d.min(Instant::now() + SIGNAL_CHECK),
                None => Instant::now() + SIGNAL_CHECK,
            };
            let done = py.detach(|| loop {
                if life.finished() {
                    return true;
                }
                if Instant::now() >= slice_end {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(2));
            });
            if done {
                return Ok(true);
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
        }
    }

    /// Stop the workers and put the sockets back into the port; returns the frame accounting.
    /// Idempotent. Called from inside a handler it only asks the workers to stop after the
    /// current batch and returns None (a worker cannot join itself): `wait()` or `stop()` from
    /// outside then joins them.
    fn stop<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let life = &self.life;
        if life.on_worker() {
            life.stop_flag.store(true, Ordering::Release);
            return Ok(None);
        }
        let errors = life.stop_join(py);
        if !errors.is_empty() {
            return Err(PyRuntimeError::new_err(format!(
                "worker error: {}",
                errors.join("; ")
            )));
        }
        self.check_accounting(py).map(Some)
    }

    /// Frame accounting over the whole UMEM (raises if frames are unaccounted for): `free`,
    /// `rx_side`, `app` (frames in a batch now), `held` (kept frames, received batches not
    /// released, frames whose views outlived their batch), `tx_side`, `total`.
    fn check_accounting<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let life = &self.life;
        let (a, idle) = py
            .detach(|| {
                let g = life.port.lock();
                let Some(p) = g.as_ref() else {
                    return Ok(None);
                };
                // Every socket in the port: no worker (of any engine) runs on it.
                let idle = (0..p.len()).all(|i| p.socket(i).is_some());
                match (0..p.len()).find_map(|i| p.socket(i)) {
                    Some(s) => s.check_accounting().map(|a| Some((a, idle))),
                    None => Ok(None),
                }
            })
            .py()?
            .ok_or_else(|| {
                PyRuntimeError::new_err(
                    "no socket of the port is available (closed, or the pipeline runs): stop() first",
                )
            })?;
        if idle && a.app != 0 {
            // With no worker running, a frame with the application has a hold, or is lost.
            return Err(PyRuntimeError::new_err(format!(
                "frame accounting is off: {} frames are with the application without a hold ({a:?})",
                a.app
            )));
        }
        let d = PyDict::new(py);
        d.set_item("free", a.free)?;
        d.set_item("rx_side", a.rx_side)?;
        d.set_item("app", a.app)?;
        d.set_item("held", a.held)?;
        d.set_item("tx_side", a.tx_side)?;
        d.set_item("total", a.total)?;
        d.set_item("balanced", a.balanced())?;
        Ok(d)
    }

    /// Whether workers are running.
    #[getter]
    fn running(&self) -> bool {
        !self.life.finished()
    }

    /// Frames held now (kept, or with views that outlived their batch, or in received
    /// batches): they go back to the pool when their last handle or view is gone.
    #[getter]
    fn held(&self) -> u32 {
        self.common.frames.umem.upgrade().map_or(0, |u| u.held())
    }

    /// Per-worker counters: a list of dicts.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for (i, s) in self.stats.iter().enumerate() {
            let x = s.snapshot();
            let d = PyDict::new(py);
            d.set_item("worker", i)?;
            d.set_item(
                "queues",
                self.groups[i]
                    .iter()
                    .map(|&j| self.life.port.queues[j])
                    .collect::<Vec<_>>(),
            )?;
            d.set_item("cpu", self.cpus[i])?;
            d.set_item("rx", x.rx)?;
            d.set_item("rx_bytes", x.rx_bytes)?;
            d.set_item("tx", x.tx)?;
            d.set_item("forwarded", x.forwarded)?;
            d.set_item("dropped", x.dropped)?;
            d.set_item("kept", x.kept)?;
            d.set_item("released", x.released)?;
            d.set_item("escaped", x.escaped)?;
            d.set_item("copied", x.copied)?;
            d.set_item("handler_errors", x.handler_errors)?;
            d.set_item("bad_verdicts", x.bad_verdicts)?;
            d.set_item("tx_failed", x.tx_failed)?;
            d.set_item("batches", x.batches)?;
            d.set_item("idle_waits", x.idle_waits)?;
            let b = x.batches.max(1) as f64;
            d.set_item("mean_batch", x.rx as f64 / b)?;
            d.set_item("batch_latency_ns", x.batch_ns as f64 / b)?;
            d.set_item("handler_ns", x.handler_ns as f64 / b)?;
            d.set_item("pps", x.pps())?;
            let h = PyDict::new(py);
            for (k, v) in x.histogram.iter().enumerate() {
                let label = match BATCH_HISTOGRAM_BOUNDS.get(k) {
                    Some(b) => format!("<={b}"),
                    None => format!(">{}", BATCH_HISTOGRAM_BOUNDS[k - 1]),
                };
                h.set_item(label, v)?;
            }
            d.set_item("batch_sizes", h)?;
            out.append(d)?;
        }
        Ok(out)
    }

    /// Handles of frames kept since the last call (KEEP verdicts), oldest first.
    fn kept<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let v: Vec<Py<PyKept>> =
            std::mem::take(&mut *self.common.kept.lock().unwrap_or_else(|e| e.into_inner()));
        PyList::new(py, v)
    }

    /// The latest handler error message, or None.
    #[getter]
    fn last_error(&self) -> Option<String> {
        self.common.errors.last()
    }

    /// Seconds the workers ran (so far, or in the last run).
    #[getter]
    fn elapsed(&self) -> f64 {
        if let Some(r) = &*self.life.state() {
            return r.started.elapsed().as_secs_f64();
        }
        self.life
            .last_run
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|(a, b)| (b - a).as_secs_f64())
            .unwrap_or(0.0)
    }

    /// Worker groups (socket indexes per worker).
    #[getter]
    fn workers(&self) -> Vec<Vec<usize>> {
        self.groups.clone()
    }
}

/// How often a wait with the GIL released comes back to check for signals (Ctrl-C).
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

impl Drop for PyEngine {
    fn drop(&mut self) {
        let life = &self.life;
        life.stop_flag.store(true, Ordering::Release);
        if life.on_worker() || finalizing() {
            // Dropped by its own handler (it cannot join itself), or while the interpreter is
            // finalizing (a worker blocked on the GIL would never come back): the workers see
            // the flag and end by themselves; their sockets go with them.
            return;
        }
        if let Some(r) = life.state().take() {
            // Workers may be waiting for the GIL to finish a batch: join without it.
            Python::attach(|py| py.detach(|| life.join(r)));
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEngine>()?;
    m.add_class::<PyBatch>()?;
    m.add_class::<UmemWindow>()?;
    m.add_class::<PyPacket>()?;
    m.add_class::<PyKept>()?;
    m.add_class::<EthHeader>()?;
    m.add_class::<IpHeader>()?;
    m.add_class::<L4Header>()?;
    m.add("DROP", engine::DROP)?;
    m.add("TX", engine::TX)?;
    m.add("FORWARD", engine::FORWARD)?;
    m.add("KEEP", engine::KEEP)?;
    let stop_all = wrap_pyfunction!(stop_all_engines, m)?;
    m.add("_stop_all_engines", &stop_all)?;
    // Before the interpreter finalizes, stop every engine still running.
    m.py()
        .import("atexit")?
        .call_method1("register", (stop_all,))?;
    Ok(())
}
