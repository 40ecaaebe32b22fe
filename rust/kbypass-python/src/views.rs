//! NumPy views of UMEM frames that never show a recycled frame.
//!
//! Every view of a frame has a `_FrameView` as its NumPy `base`, so whatever Python derives
//! from it (slices, `np.frombuffer`, memoryviews) keeps that object alive, and its reference
//! count says whether anything still sees the frame. A view of a frame held for the
//! application (a kept frame, a received `RxBatch`) carries a `FrameHold` from the start; a
//! view a batch handler takes is checked once when the handler returns and, if it outlived the
//! call, gets a hold then (`BatchCtx::hold_view`). Either way the frame is never recycled while
//! the owner lives, and goes back to the pool when the last view is gone.

use std::sync::{Arc, OnceLock};

use kbypass_core::mem::HugeRegion;
use kbypass_core::xsk::FrameHold;
use numpy::ndarray::ArrayView1;
use numpy::PyArray1;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// The base object of NumPy views of one UMEM frame: keeps the memory mapped and, once armed,
/// the frame held.
#[pyclass(name = "_FrameView", module = "kbypass._core", frozen)]
pub struct FrameView {
    region: Arc<HugeRegion>,
    /// Offset of UMEM address 0 inside `region`.
    pool_off: usize,
    hold: OnceLock<FrameHold>,
}

impl FrameView {
    /// An owner for views into `region`'s UMEM at `pool_off`, holding `hold` if given.
    pub fn new(region: Arc<HugeRegion>, pool_off: usize, hold: Option<FrameHold>) -> Self {
        let cell = OnceLock::new();
        if let Some(h) = hold {
            let _ = cell.set(h);
        }
        FrameView {
            region,
            pool_off,
            hold: cell,
        }
    }

    /// Give the owner its hold (a view of a batch frame that outlived the handler). Returns
    /// false, dropping `h`, if it had one already.
    pub fn arm(&self, h: FrameHold) -> bool {
        self.hold.set(h).is_ok()
    }

    /// A zero-copy uint8 view of `len` bytes at UMEM address `addr`, with `owner` as its base.
    /// The caller checked that the range lies inside one frame the application has.
    pub fn array<'py>(
        owner: &Bound<'py, FrameView>,
        addr: u64,
        len: u32,
    ) -> PyResult<Bound<'py, PyArray1<u8>>> {
        let me = owner.get();
        let start = me.pool_off + addr as usize;
        if start + len as usize > me.region.len() {
            return Err(PyRuntimeError::new_err("descriptor outside the UMEM"));
        }
        // SAFETY: start..start+len lies inside the region (checked above), which `owner`, the
        // array's base object, keeps mapped for as long as the array and its derivatives live.
        let v = unsafe {
            ArrayView1::from_shape_ptr(len as usize, me.region.as_ptr().add(start).cast_const())
        };
        // SAFETY: as above; `owner` becomes the array's base.
        Ok(unsafe { PyArray1::borrow_from_array(&v, owner.clone().into_any()) })
    }
}

#[pymethods]
impl FrameView {
    fn __repr__(&self) -> String {
        match self.hold.get() {
            Some(h) => format!("<kbypass frame view: frame {} held>", h.frame()),
            None => "<kbypass frame view>".into(),
        }
    }
}

/// References to `obj` right now (`sys.getrefcount` without its own argument).
pub fn refcnt(obj: &Bound<'_, PyAny>) -> isize {
    // SAFETY: `obj` is a live object this thread holds a reference to, attached to the
    // interpreter; reading its reference count has no other requirement.
    unsafe { pyo3::ffi::Py_REFCNT(obj.as_ptr()) }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<FrameView>()?;
    Ok(())
}
