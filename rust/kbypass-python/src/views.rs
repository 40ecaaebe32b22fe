//! NumPy views of region memory (a `HugeRegion`, a `Mempool`, UMEM frames), made in one place.
//!
//! Every view's NumPy `base` is an owner object that keeps the memory mapped: `_RegionMemory`
//! for regions and pools, `_FrameView` for UMEM frames. Whatever Python derives from a view
//! (slices, `np.frombuffer`, memoryviews) keeps that owner alive, so a view never dangles after
//! `close()`. A `_FrameView` also holds its frame (`FrameHold`), from the start for a frame the
//! application holds (a kept frame, a received `RxBatch`), or once a batch handler returns
//! with the view still referenced (`BatchCtx::hold_view`, through its reference count): a view
//! never shows a recycled frame either, and the frame goes back to the pool when the last view
//! is gone.

use std::sync::{Arc, OnceLock, Weak};

use kbypass_core::mem::HugeRegion;
use kbypass_core::xsk::{FrameHold, HeldFrames, Umem};
use numpy::ndarray::{ArrayView, Dimension, Ix1, Ix2, ShapeBuilder};
use numpy::{PyArray, PyArray1, PyArray2};
use pyo3::exceptions::{PyIndexError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::PyList;

/// An object that keeps a region mapped while it lives, so it can be a NumPy array's base.
pub trait RegionOwner: pyo3::PyClass + Sync {
    /// The region.
    fn region(&self) -> &Arc<HugeRegion>;
}

/// A uint8 array over region memory: `dim` elements `strides` bytes apart (per axis) from
/// `offset`, with `owner` — which keeps the region mapped — as its base. Refused when any byte
/// it reaches lies outside the region.
pub fn region_array<
    'py,
    O: RegionOwner<Frozen = pyo3::pyclass::boolean_struct::True>,
    D: Dimension,
>(
    owner: &Bound<'py, O>,
    offset: usize,
    dim: D,
    strides: D,
) -> PyResult<Bound<'py, PyArray<u8, D>>> {
    let region = owner.get().region();
    // The last byte the shape reaches is offset + sum((d - 1) * s) over the axes.
    let span = if dim.size() == 0 {
        Some(0)
    } else {
        dim.slice()
            .iter()
            .zip(strides.slice())
            .try_fold(1usize, |acc, (&d, &s)| {
                acc.checked_add((d - 1).checked_mul(s)?)
            })
    };
    if span
        .and_then(|s| offset.checked_add(s))
        .is_none_or(|end| end > region.len())
    {
        return Err(PyRuntimeError::new_err(
            "a view would reach past its memory (a descriptor outside the UMEM?)",
        ));
    }
    // SAFETY: every byte the shape and strides reach lies in offset..offset+span, inside the
    // region (checked above); `owner`, which becomes the array's base, keeps the region mapped
    // for as long as the array and whatever NumPy derives from it live; u8 has no invalid
    // values. Writes through the array are Python code's; kbypass's own Rust borrows of this
    // memory (frame edits, copies of held frames) are made by a thread attached to the
    // interpreter that runs no Python code meanwhile, so with the GIL none overlaps them.
    let view = unsafe {
        ArrayView::from_shape_ptr(
            dim.strides(strides),
            region.as_ptr().add(offset).cast_const(),
        )
    };
    // SAFETY: as above; `owner` is the container that keeps the memory alive.
    Ok(unsafe { PyArray::borrow_from_array(&view, owner.clone().into_any()) })
}

/// Keeps a region mapped while a NumPy array uses it (the array's `base`).
#[pyclass(name = "_RegionMemory", module = "kbypass._core", frozen)]
pub struct RegionMemory {
    region: Arc<HugeRegion>,
}

impl RegionMemory {
    /// A view of `len` bytes of `region` at `offset`.
    pub fn bytes<'py>(
        py: Python<'py>,
        region: &Arc<HugeRegion>,
        offset: usize,
        len: usize,
    ) -> PyResult<Bound<'py, PyArray1<u8>>> {
        let owner = Bound::new(
            py,
            RegionMemory {
                region: Arc::clone(region),
            },
        )?;
        region_array(&owner, offset, Ix1(len), Ix1(1))
    }

    /// A (rows, cols) view of `region` from `offset`, rows `stride` bytes apart.
    pub fn rows<'py>(
        py: Python<'py>,
        region: &Arc<HugeRegion>,
        offset: usize,
        (rows, cols, stride): (usize, usize, usize),
    ) -> PyResult<Bound<'py, PyArray2<u8>>> {
        let owner = Bound::new(
            py,
            RegionMemory {
                region: Arc::clone(region),
            },
        )?;
        region_array(&owner, offset, Ix2(rows, cols), Ix2(stride, 1))
    }
}

impl RegionOwner for RegionMemory {
    fn region(&self) -> &Arc<HugeRegion> {
        &self.region
    }
}

#[pymethods]
impl RegionMemory {
    fn __repr__(&self) -> String {
        format!(
            "<kbypass region memory: {} bytes on {} pages>",
            self.region.len(),
            self.region.tier()
        )
    }
}

/// The base object of NumPy views of one UMEM frame: keeps the memory mapped and, once armed,
/// the frame held.
#[pyclass(name = "_FrameView", module = "kbypass._core", frozen)]
pub struct FrameView {
    region: Arc<HugeRegion>,
    /// Offset of UMEM address 0 inside `region`.
    pool_off: usize,
    hold: OnceLock<FrameHold>,
}

impl RegionOwner for FrameView {
    fn region(&self) -> &Arc<HugeRegion> {
        &self.region
    }
}

impl FrameView {
    /// Give the owner its hold (a view of a batch frame that outlived the handler). Returns
    /// false, dropping `h`, if it had one already.
    pub fn arm(&self, h: FrameHold) -> bool {
        self.hold.set(h).is_ok()
    }

    /// A zero-copy uint8 view of `len` bytes at UMEM address `addr`, with `owner` as its base.
    pub fn array<'py>(
        owner: &Bound<'py, FrameView>,
        addr: u64,
        len: u32,
    ) -> PyResult<Bound<'py, PyArray1<u8>>> {
        let start = owner.get().pool_off.checked_add(addr as usize);
        let start = start.ok_or_else(|| PyRuntimeError::new_err("descriptor outside the UMEM"))?;
        region_array(owner, start, Ix1(len as usize), Ix1(1))
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

/// Where Python reaches a UMEM's frames: the region they live in (views keep it mapped), their
/// offset there, the UMEM's shape, and the UMEM itself weakly (a Python object that outlives
/// its port must not keep the port's sockets bound).
#[derive(Clone)]
pub struct UmemMemory {
    umem: Weak<Umem>,
    region: Arc<HugeRegion>,
    pool_off: usize,
    pub frames: u32,
    pub frame_size: u32,
}

impl UmemMemory {
    /// The memory of `umem`.
    pub fn of(umem: &Arc<Umem>) -> Self {
        let pool = umem.pool();
        UmemMemory {
            umem: Arc::downgrade(umem),
            region: Arc::clone(pool.region()),
            pool_off: pool.region_offset(),
            frames: umem.frames(),
            frame_size: umem.frame_size(),
        }
    }

    /// The UMEM, while its port is open.
    pub fn umem(&self) -> PyResult<Arc<Umem>> {
        self.umem
            .upgrade()
            .ok_or_else(|| PyRuntimeError::new_err("the port was closed: its frames are gone"))
    }

    /// Frames held now (0 once the port is gone).
    pub fn held(&self) -> u32 {
        self.umem.upgrade().map_or(0, |u| u.held())
    }

    /// A new owner for views of one frame, holding `hold` if given.
    pub fn owner<'py>(
        &self,
        py: Python<'py>,
        hold: Option<FrameHold>,
    ) -> PyResult<Bound<'py, FrameView>> {
        let cell = OnceLock::new();
        if let Some(h) = hold {
            let _ = cell.set(h);
        }
        Bound::new(
            py,
            FrameView {
                region: Arc::clone(&self.region),
                pool_off: self.pool_off,
                hold: cell,
            },
        )
    }

    /// A view of held frame `i` of `frames` (the view holds it too), or None once released.
    pub fn held_view<'py>(
        &self,
        py: Python<'py>,
        frames: &HeldFrames,
        i: usize,
    ) -> PyResult<Option<Bound<'py, PyArray1<u8>>>> {
        let Some(d) = frames.descs().get(i).copied() else {
            return Err(PyIndexError::new_err(format!(
                "frame {i} out of range for {} frames",
                frames.len()
            )));
        };
        let Some(hold) = frames.hold(i) else {
            return Ok(None);
        };
        FrameView::array(&self.owner(py, Some(hold))?, d.addr, d.len).map(Some)
    }

    /// Views of every frame of `frames` (each holds its frame), or None once released.
    pub fn held_views<'py>(
        &self,
        py: Python<'py>,
        frames: &HeldFrames,
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        let Some(holds) = frames.holds() else {
            return Ok(None);
        };
        let views = holds
            .into_iter()
            .zip(frames.descs())
            .map(|(h, d)| FrameView::array(&self.owner(py, Some(h))?, d.addr, d.len))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, views).map(Some)
    }

    /// The whole UMEM as a read-only (frames, frame_size) uint8 array. Never handed to Python
    /// as it is: `Batch.umem` wraps it in a `UmemWindow`, which returns copies.
    pub fn umem_2d<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<u8>>> {
        let fs = self.frame_size as usize;
        let a = RegionMemory::rows(
            py,
            &self.region,
            self.pool_off,
            (self.frames as usize, fs, fs),
        )?;
        a.call_method1("setflags", (false,))?;
        Ok(a)
    }
}

/// References to `obj` right now (`sys.getrefcount` without its own argument).
pub fn refcnt(obj: &Bound<'_, PyAny>) -> isize {
    // SAFETY: `obj` is a live object this thread holds a reference to, attached to the
    // interpreter; reading its reference count has no other requirement.
    unsafe { pyo3::ffi::Py_REFCNT(obj.as_ptr()) }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RegionMemory>()?;
    m.add_class::<FrameView>()?;
    Ok(())
}
