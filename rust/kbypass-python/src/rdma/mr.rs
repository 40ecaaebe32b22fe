//! `MemoryRegion`, and the scatter/gather lists posts take from Python.

use kbypass_core::rdma::{self, Sge};
use pyo3::prelude::*;

use super::resource::{self, owner, Owner, Resource};
use crate::errors::IntoPyResult;

/// A registered memory region.
#[pyclass(module = "kbypass._core.rdma", extends = Resource)]
pub struct MemoryRegion {
    inner: Option<rdma::MemoryRegion>,
}
owner!(MemoryRegion, rdma::MemoryRegion);

impl MemoryRegion {
    pub fn new(py: Python<'_>, mr: rdma::MemoryRegion) -> PyResult<Py<Self>> {
        resource::new(py, MemoryRegion { inner: Some(mr) })
    }
}

#[pymethods]
impl MemoryRegion {
    /// Start address of the region (what a peer uses as ``remote_addr``).
    #[getter]
    fn addr(&self) -> PyResult<u64> {
        Ok(self.get()?.addr())
    }
    /// Length in bytes.
    #[getter]
    fn length(&self) -> PyResult<usize> {
        Ok(self.get()?.len())
    }
    /// Local key.
    #[getter]
    fn lkey(&self) -> PyResult<u32> {
        Ok(self.get()?.lkey())
    }
    /// Remote key (what a peer needs for RDMA WRITE, READ and atomics).
    #[getter]
    fn rkey(&self) -> PyResult<u32> {
        Ok(self.get()?.rkey())
    }
    /// Whether ``rkey`` still grants remote access: False once a peer's SEND with invalidate
    /// invalidated it.
    #[getter]
    fn valid(&self) -> PyResult<bool> {
        Ok(self.get()?.is_valid())
    }
    /// Let a peer's SEND with invalidate naming ``rkey`` invalidate it (as verbs lets a peer
    /// invalidate a memory window); user-space engine regions only (OSError EOPNOTSUPP on a
    /// kernel RDMA device).
    fn allow_remote_invalidate(&self) -> PyResult<()> {
        self.get()?.allow_remote_invalidate().py()
    }
}

/// One more scatter/gather element from Python: `(mr, offset, length)`.
pub type SgItem<'py> = (PyRef<'py, MemoryRegion>, usize, usize);

/// The SGE list: `mr[offset:offset+length]` (the rest of the region by default), then `more`.
/// Every element comes from a registered region, bounds-checked, and borrows it: the regions
/// stay open (Python cannot close a region it is passing) until the post returns.
pub fn gather<'a>(
    mr: &'a MemoryRegion,
    offset: usize,
    length: Option<usize>,
    more: &'a [SgItem<'_>],
) -> PyResult<Vec<Sge<'a>>> {
    let m = mr.get()?;
    let len = length.unwrap_or(m.len().saturating_sub(offset));
    let mut sges = vec![m.sge(offset, len).py()?];
    for (other, off, len) in more {
        sges.push(other.get()?.sge(*off, *len).py()?);
    }
    Ok(sges)
}
