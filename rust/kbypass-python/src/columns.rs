//! The per-worker column buffers of a batch handler (`Buffers`): NumPy arrays allocated once,
//! sliced per batch, filled from the lease and read back, rewritten by reshapes, replaced when a
//! handler kept one.

use kbypass_core::engine::{Columns, Lent};
use numpy::{Element, PyArray, PyArray1, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PySlice;

use crate::errors::IntoPyResult;
use crate::packet::meta_dtype;
use crate::views::{refcnt, UmemMemory};

/// On a free-threaded interpreter another thread may be taking a new view of a column while the
/// escape check runs, so the check cannot prove the buffers private: the checked path (NumPy's
/// borrow tracking) always runs there.
const FREE_THREADED: bool = cfg!(Py_GIL_DISABLED);

/// Per-worker NumPy buffers, allocated once and sliced per batch. A buffer that a handler kept
/// a reference to (any view of it) is the handler's from then on: the worker notices when the
/// handler returns (`escaped`) and uses fresh buffers for the next batch.
pub struct Buffers {
    pub(crate) cap: usize,
    pub(crate) lengths: Py<PyArray1<u32>>,
    pub(crate) addrs: Py<PyArray1<u64>>,
    /// Read-only views of `lengths` and `addrs`, what Python gets: a descriptor changes only
    /// through `set_length`/`push_front`/…, which rewrite the columns themselves.
    pub(crate) lengths_ro: Py<PyAny>,
    pub(crate) addrs_ro: Py<PyAny>,
    pub(crate) verdicts: Py<PyArray1<u8>>,
    pub(crate) forward_to: Py<PyArray1<u16>>,
    pub(crate) meta_raw: Py<PyArray2<u8>>,
    pub(crate) headers: Py<PyAny>,
    /// The whole UMEM, read-only (see `UmemWindow`).
    pub(crate) umem: Py<PyAny>,
    /// Reference counts of lengths, addrs, their read-only views, verdicts, forward_to,
    /// meta_raw, headers with nothing handed out.
    pub(crate) base: [isize; 8],
}

/// A read-only view of `arr`.
fn read_only(arr: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let v = arr.call_method0("view")?;
    v.call_method1("setflags", (false,))?;
    Ok(v.unbind())
}

impl Buffers {
    pub fn new(py: Python<'_>, cap: usize, memory: &UmemMemory) -> PyResult<Self> {
        let meta_raw = PyArray2::<u8>::zeros(py, [cap, 64], false);
        let headers = meta_raw
            .call_method1("view", (meta_dtype(py)?,))?
            .call_method1("reshape", (cap,))?;
        let lengths = PyArray1::<u32>::zeros(py, cap, false);
        let addrs = PyArray1::<u64>::zeros(py, cap, false);
        let mut b = Buffers {
            cap,
            lengths_ro: read_only(lengths.as_any())?,
            addrs_ro: read_only(addrs.as_any())?,
            lengths: lengths.unbind(),
            addrs: addrs.unbind(),
            verdicts: PyArray1::<u8>::zeros(py, cap, false).unbind(),
            forward_to: PyArray1::<u16>::zeros(py, cap, false).unbind(),
            meta_raw: meta_raw.unbind(),
            headers: headers.unbind(),
            umem: memory.umem_2d(py)?.into_any().unbind(),
            base: [0; 8],
        };
        b.base = b.refcounts(py);
        Ok(b)
    }

    /// Frames per batch at most.
    pub fn cap(&self) -> usize {
        self.cap
    }

    fn refcounts(&self, py: Python<'_>) -> [isize; 8] {
        [
            refcnt(self.lengths.bind(py).as_any()),
            refcnt(self.addrs.bind(py).as_any()),
            refcnt(self.lengths_ro.bind(py)),
            refcnt(self.addrs_ro.bind(py)),
            refcnt(self.verdicts.bind(py).as_any()),
            refcnt(self.forward_to.bind(py).as_any()),
            refcnt(self.meta_raw.bind(py).as_any()),
            refcnt(self.headers.bind(py)),
        ]
    }

    /// Whether a column (or a view of one) outlived the handler. Every view NumPy derives from
    /// a buffer has the buffer as its base, so its reference count says.
    pub fn escaped(&self, py: Python<'_>) -> bool {
        self.refcounts(py) != self.base
    }

    pub(crate) fn head<'py>(
        &self,
        py: Python<'py>,
        arr: &Py<PyAny>,
        n: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let a = arr.bind(py);
        if n == self.cap {
            return Ok(a.clone());
        }
        a.get_item(PySlice::new(py, 0, n as isize, 1))
    }

    /// Copy the batch's columns in, through the buffers' data pointers: NumPy's borrow
    /// tracking (a shared hash map, an allocation per borrow) was most of a small batch's cost.
    /// Only private buffers are written this way, and a handler gets fresh buffers after
    /// keeping one, so this always holds; if it ever did not, the checked path runs.
    fn load_private(&self, py: Python<'_>, lent: &mut Lent<'_, '_, '_>) -> bool {
        if FREE_THREADED || self.escaped(py) {
            return false;
        }
        let n = lent.len();
        // SAFETY: the buffers are private (no Python reference to any of them, or to a view of
        // one, the read-only views included, but ours: checked just now, attached to the
        // interpreter, on the worker thread, the only one that uses these `Buffers`), so
        // nothing but these slices reaches their memory while they live, and each is within
        // its array (`column`).
        let (l, a, m, v, f) = unsafe {
            (
                column(self.lengths.bind(py), self.cap),
                column(self.addrs.bind(py), self.cap),
                column(self.meta_raw.bind(py), self.cap * 64),
                column(self.verdicts.bind(py), n),
                column(self.forward_to.bind(py), n),
            )
        };
        lent.write_columns(l, a, m);
        v.copy_from_slice(lent.verdicts());
        f.copy_from_slice(lent.forward_to());
        true
    }

    /// Read the verdicts and FORWARD targets back through the data pointers when the buffers
    /// are private (see `load_private`); false: use the checked path.
    fn store_private(&self, py: Python<'_>, lent: &mut Lent<'_, '_, '_>) -> bool {
        if FREE_THREADED || self.escaped(py) {
            return false;
        }
        let n = lent.len();
        // SAFETY: as in `load_private`: the handler returned and kept no reference to these
        // buffers, so only these two slices reach their memory while they live.
        let (v, f) = unsafe {
            (
                column(self.verdicts.bind(py), n),
                column(self.forward_to.bind(py), n),
            )
        };
        lent.verdicts().copy_from_slice(v);
        lent.forward_to().copy_from_slice(f);
        true
    }

    /// Fill the columns from the batch lent to the handler.
    pub fn load(&self, py: Python<'_>, lent: &mut Lent<'_, '_, '_>) -> PyResult<()> {
        if self.load_private(py, lent) {
            return Ok(());
        }
        let n = lent.len();
        {
            let mut l = self.lengths.bind(py).try_readwrite()?;
            let mut a = self.addrs.bind(py).try_readwrite()?;
            let mut m = self.meta_raw.bind(py).try_readwrite()?;
            lent.write_columns(l.as_slice_mut()?, a.as_slice_mut()?, m.as_slice_mut()?);
        }
        let mut v = self.verdicts.bind(py).try_readwrite()?;
        v.as_slice_mut()?[..n].copy_from_slice(lent.verdicts());
        let mut f = self.forward_to.bind(py).try_readwrite()?;
        f.as_slice_mut()?[..n].copy_from_slice(lent.forward_to());
        Ok(())
    }

    /// Run `f` with the columns a reshape rewrites (lengths, addresses, headers).
    pub(crate) fn with_columns<T>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(Columns<'_>) -> kbypass_core::Result<T>,
    ) -> PyResult<T> {
        let mut l = self.lengths.bind(py).try_readwrite()?;
        let mut a = self.addrs.bind(py).try_readwrite()?;
        let mut m = self.meta_raw.bind(py).try_readwrite()?;
        f(Columns {
            lengths: l.as_slice_mut()?,
            addrs: a.as_slice_mut()?,
            headers: m.as_slice_mut()?,
        })
        .py()
    }

    /// Read the verdicts (and FORWARD targets) the handler wrote back into the batch.
    pub fn store(&self, py: Python<'_>, lent: &mut Lent<'_, '_, '_>) -> PyResult<()> {
        if self.store_private(py, lent) {
            return Ok(());
        }
        let n = lent.len();
        let v = self.verdicts.bind(py).try_readonly()?;
        lent.verdicts().copy_from_slice(&v.as_slice()?[..n]);
        let f = self.forward_to.bind(py).try_readonly()?;
        lent.forward_to().copy_from_slice(&f.as_slice()?[..n]);
        Ok(())
    }
}

/// The first `n` elements of a column buffer's memory, without NumPy's borrow tracking.
///
/// # Safety
/// Nothing else may read or write the array's memory while the slice lives: no Python object
/// but its owner's references the array or a view of it, and no other Rust slice of it exists.
/// (Bounds, contiguity and alignment are checked here: the buffers are C-contiguous arrays
/// `Buffers::new` allocated, which NumPy aligns for their type.)
// A NumPy array is a shared Python object, reached through `&Bound` by design; exclusivity is the
// caller's contract above.
#[allow(clippy::mut_from_ref)]
unsafe fn column<'a, T: Element, D: numpy::ndarray::Dimension>(
    arr: &'a Bound<'_, PyArray<T, D>>,
    n: usize,
) -> &'a mut [T] {
    assert!(n <= arr.len() && arr.is_c_contiguous() && arr.is_aligned());
    // SAFETY: `n` elements of the array's own, contiguous, aligned data (checked above), which
    // live as long as `arr`; exclusive by the caller's contract.
    unsafe { std::slice::from_raw_parts_mut(arr.data(), n) }
}
