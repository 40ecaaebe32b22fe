//! `HugeRegion` for Python: a handle on an `Arc<kbypass_core::mem::HugeRegion>`.
//!
//! NumPy views hold their own `Arc` (through a small owner object set as the array's base, see
//! `views.rs`), so `close()` and garbage collection of the `HugeRegion` never invalidate a live
//! view: the memory is unmapped when the last of them goes.

use std::sync::{Arc, Mutex};

use kbypass_core::mem::{HugePages, HugeRegion, NumaPolicy, RegionOptions, Tier};
use numpy::PyArray1;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::IntoPyResult;
use crate::views::RegionMemory;

/// Anonymous memory on the largest pages available (1 GiB → 2 MiB → THP → 4 KiB).
///
/// `hugepages`: "auto" (fall back), "require" (hugetlb pages or OSError with the fix),
/// "never" (4 KiB pages), or one tier: "1g", "2m", "thp", "4k". Populated and, when
/// swappable, mlocked. NumPy views keep the memory alive after `close()`.
///
/// Example:
///     >>> with HugeRegion(64 << 20) as r:
///     ...     a = r.array          # zero-copy uint8 view
///     ...     a[:4] = 1
///     >>> int(a[:4].sum())         # still valid after the with block
///     4
#[pyclass(name = "HugeRegion", module = "kbypass._core", frozen)]
pub struct PyHugeRegion {
    region: Mutex<Option<Arc<HugeRegion>>>,
    tier: Tier,
    size: usize,
    page_size: usize,
    huge_bytes: usize,
    locked: bool,
    numa_node: Option<usize>,
    notes: Vec<String>,
}

impl PyHugeRegion {
    fn get(&self) -> PyResult<Arc<HugeRegion>> {
        let g = self.region.lock().unwrap_or_else(|e| e.into_inner());
        g.clone().ok_or_else(|| {
            PyRuntimeError::new_err(
                "HugeRegion is closed: create a new one (views taken before close() stay valid)",
            )
        })
    }

    /// The shared region, for other binding classes (RDMA registration) that use its memory.
    pub fn shared(&self) -> PyResult<Arc<HugeRegion>> {
        self.get()
    }
}

fn parse_size(size: i128) -> PyResult<usize> {
    if size <= 0 {
        return Err(PyValueError::new_err(format!(
            "size must be greater than zero, got {size}: give the region size in bytes"
        )));
    }
    usize::try_from(size).map_err(|_| {
        PyValueError::new_err(format!(
            "size {size} is larger than any address space: ask for less"
        ))
    })
}

/// Region options from the Python keywords shared by `HugeRegion`, `Mempool` and `XdpSocket`.
pub fn region_options(
    hugepages: &str,
    numa_node: Option<i64>,
    numa_policy: &str,
    lock: bool,
) -> PyResult<RegionOptions> {
    let hugepages: HugePages = hugepages.parse().py()?;
    let numa_node = match numa_node {
        None => None,
        Some(n) if n >= 0 => Some(n as usize),
        Some(n) => {
            return Err(PyValueError::new_err(format!(
                "numa_node must be a node number >= 0 or None, got {n}"
            )))
        }
    };
    let numa_policy = match numa_policy {
        "bind" => NumaPolicy::Bind,
        "preferred" => NumaPolicy::Preferred,
        other => {
            return Err(PyValueError::new_err(format!(
                "numa_policy={other:?}: use \"bind\" (only that node) or \"preferred\" (that node first)"
            )))
        }
    };
    Ok(RegionOptions {
        hugepages,
        numa_node,
        numa_policy,
        lock,
    })
}

#[pymethods]
impl PyHugeRegion {
    #[new]
    #[pyo3(signature = (size, hugepages = "auto", numa_node = None, *, numa_policy = "bind", lock = true))]
    fn new(
        py: Python<'_>,
        size: i128,
        hugepages: &str,
        numa_node: Option<i64>,
        numa_policy: &str,
        lock: bool,
    ) -> PyResult<Self> {
        let size = parse_size(size)?;
        let opts = region_options(hugepages, numa_node, numa_policy, lock)?;
        // Populating a large region takes a while; let other threads run.
        let region = py.detach(|| HugeRegion::new(size, &opts)).py()?;
        Ok(PyHugeRegion {
            tier: region.tier(),
            size: region.len(),
            page_size: region.page_size(),
            huge_bytes: region.huge_bytes(),
            locked: region.locked(),
            numa_node: region.numa_node(),
            notes: region.notes(),
            region: Mutex::new(Some(Arc::new(region))),
        })
    }

    /// The tier it got: "1g", "2m", "thp" or "4k".
    #[getter]
    fn tier(&self) -> &'static str {
        self.tier.name()
    }

    /// Size in bytes (the request rounded up to the page size).
    #[getter]
    fn size(&self) -> usize {
        self.size
    }

    /// Page size in bytes.
    #[getter]
    fn page_size(&self) -> usize {
        self.page_size
    }

    /// Bytes backed by huge pages.
    #[getter]
    fn huge_bytes(&self) -> usize {
        self.huge_bytes
    }

    /// Whether the memory cannot be swapped (mlocked, or hugetlb).
    #[getter]
    fn locked(&self) -> bool {
        self.locked
    }

    /// The NUMA node it was bound to, if any.
    #[getter]
    fn numa_node(&self) -> Option<usize> {
        self.numa_node
    }

    /// What was changed to get the region, one sentence each: today a raised RLIMIT_MEMLOCK
    /// ("RLIMIT_MEMLOCK raised from 8 MiB to 24 MiB (hard limit unlimited) to lock 16 MiB
    /// (8 MiB already locked)"); empty when nothing was.
    #[getter]
    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    /// Whether close() was called.
    #[getter]
    fn closed(&self) -> bool {
        self.region
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// Address of the first byte (for ctypes and debugging).
    #[getter]
    fn address(&self) -> PyResult<usize> {
        Ok(self.get()?.as_ptr() as usize)
    }

    /// A zero-copy, writable NumPy uint8 view of the whole region.
    #[getter]
    fn array<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<u8>>> {
        let region = self.get()?;
        RegionMemory::bytes(py, &region, 0, region.len())
    }

    /// Time `count` dependent random 8-byte reads over the region (fixed-seed xorshift),
    /// without the GIL; returns the elapsed nanoseconds.
    #[pyo3(signature = (count, seed = 0x2545_F491_4F6C_DD1D))]
    fn random_reads(&self, py: Python<'_>, count: u64, seed: u64) -> PyResult<u64> {
        let region = self.get()?;
        let (ns, _) = py.detach(|| region.random_reads(count, seed)).py()?;
        Ok(ns)
    }

    /// Drop this handle's reference; the memory goes when no NumPy view uses it any more.
    fn close(&self) {
        self.region.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close();
        false
    }

    fn __len__(&self) -> usize {
        self.size
    }

    fn __repr__(&self) -> String {
        let state = if self.closed() { ", closed" } else { "" };
        format!(
            "HugeRegion(size={}, tier={:?}, page_size={}, numa_node={:?}{state})",
            self.size,
            self.tier.name(),
            self.page_size,
            self.numa_node
        )
    }
}

/// Return the raises of RLIMIT_MEMLOCK kbypass made in this process, oldest first.
///
/// A region is locked (when swappable) so that the kernel never pages it out under a NIC or
/// an RDMA device. When RLIMIT_MEMLOCK is too low for that, kbypass raises the soft limit to
/// what the process had locked plus what the region needs (never to unlimited; the hard
/// limit only when it is lower and the process has CAP_SYS_RESOURCE) and records it here and
/// in the region's ``notes``. Each entry: ``locked`` and ``needed`` (bytes), ``soft_before``,
/// ``hard_before``, ``soft``, ``hard`` (bytes, None for unlimited).
///
/// Example:
///     >>> kbypass.memlock_raises()   # root (CAP_IPC_LOCK) never needs one
///     []
#[pyfunction]
fn memlock_raises(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    kbypass_core::sys::mm::memlock_raises()
        .iter()
        .map(|r| {
            let d = PyDict::new(py);
            d.set_item("locked", r.locked)?;
            d.set_item("needed", r.needed)?;
            d.set_item("soft_before", r.before.soft)?;
            d.set_item("hard_before", r.before.hard)?;
            d.set_item("soft", r.after.soft)?;
            d.set_item("hard", r.after.hard)?;
            Ok(d)
        })
        .collect()
}

/// Register the memory classes.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(memlock_raises, m)?)?;
    m.add_class::<PyHugeRegion>()?;
    Ok(())
}
