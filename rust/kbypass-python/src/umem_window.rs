//! `Batch.umem`: a read-only window on the whole UMEM for the length of a handler call.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use crate::batch::PyBatch;

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

impl UmemWindow {
    /// The window on `arr` (the UMEM as a (frames, frame_size) array) for `batch`.
    pub(crate) fn new(arr: Py<PyAny>, batch: Py<PyBatch>) -> Self {
        UmemWindow { arr, batch }
    }
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
        let m = &self.batch.get().memory;
        (m.frames, m.frame_size)
    }

    fn __len__(&self) -> usize {
        self.batch.get().memory.frames as usize
    }

    fn __repr__(&self) -> String {
        let (r, c) = self.shape();
        format!("UmemWindow({r} frames x {c} bytes, read-only)")
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<UmemWindow>()?;
    Ok(())
}
