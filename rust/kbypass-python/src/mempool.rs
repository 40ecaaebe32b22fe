//! `kbypass.Mempool`: fixed-size objects in hugepage memory, handed out by index.

use std::sync::{Arc, Mutex};

use kbypass_core::mem::Mempool;
use numpy::{PyArray1, PyArray2, PyArrayDescrMethods, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::IntoPyResult;
use crate::mem::region_options;
use crate::views::RegionMemory;

/// A pool of `count` fixed-size objects carved from a HugeRegion (DPDK rte_mempool-style).
///
/// Objects are named by index. `get(n)` hands out up to `n` free indices (burst: fewer when the
/// pool runs low, possibly none), `get_bulk(n)` exactly `n` or none; `put(indices)` returns them
/// and refuses (ValueError, nothing changes) an index that is out of range or already free.
/// `view(i)` and `array` are zero-copy NumPy views that keep the memory alive.
///
/// Example:
///     >>> pool = Mempool(4096, 2048)
///     >>> idx = pool.get(32)
///     >>> pool.view(int(idx[0]))[:4] = [1, 2, 3, 4]
///     >>> pool.put(idx)
#[pyclass(name = "Mempool", module = "kbypass._core", frozen)]
pub struct PyMempool {
    pool: Mutex<Option<Arc<Mempool>>>,
    count: u32,
    size: usize,
    stride: usize,
    tier: &'static str,
    notes: Vec<String>,
}

impl PyMempool {
    fn get_pool(&self) -> PyResult<Arc<Mempool>> {
        self.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| PyRuntimeError::new_err("Mempool is closed: create a new one"))
    }

    /// The shared pool, for other binding classes (RDMA registration) that use its memory.
    pub fn shared(&self) -> PyResult<Arc<Mempool>> {
        self.get_pool()
    }
}

fn check_n(n: i64, count: u32) -> PyResult<usize> {
    if n < 0 {
        return Err(PyValueError::new_err(format!("n must be >= 0, got {n}")));
    }
    if n > count as i64 {
        return Err(PyValueError::new_err(format!(
            "cannot get {n} objects from a pool of {count}: ask for at most {count}"
        )));
    }
    Ok(n as usize)
}

/// Read object indices from a 1-D integer array (any integer dtype whose values fit in u32).
fn indices(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    if let Ok(a) = obj.cast::<PyArray1<u32>>() {
        return Ok(a
            .readonly()
            .as_slice()
            .map(<[u32]>::to_vec)
            .unwrap_or_else(|_| a.to_vec().unwrap_or_default()));
    }
    if let Ok(a) = obj.cast::<numpy::PyUntypedArray>() {
        let kind = a.dtype().kind();
        if kind != b'i' && kind != b'u' {
            return Err(PyTypeError::new_err(format!(
                "indices must be an integer array, not dtype {}: pass the array get() returned",
                a.dtype()
            )));
        }
        if a.ndim() != 1 {
            return Err(PyValueError::new_err("indices must be a 1-D array"));
        }
    }
    let v: Vec<i64> = obj.extract().map_err(|_| {
        PyTypeError::new_err("indices must be a 1-D integer array or a sequence of ints")
    })?;
    v.into_iter()
        .map(|i| {
            u32::try_from(i).map_err(|_| {
                PyValueError::new_err(format!(
                    "object {i} is not from this pool (negative or too large)"
                ))
            })
        })
        .collect()
}

#[pymethods]
impl PyMempool {
    #[new]
    #[pyo3(signature = (count, size, hugepages = "auto", numa_node = None))]
    fn new(
        py: Python<'_>,
        count: i64,
        size: i64,
        hugepages: &str,
        numa_node: Option<i64>,
    ) -> PyResult<Self> {
        if count <= 0 || size <= 0 {
            return Err(PyValueError::new_err(format!(
                "count and size must be greater than zero (got count={count}, size={size})"
            )));
        }
        let opts = region_options(hugepages, numa_node, "bind", true)?;
        let pool = py
            .detach(|| Mempool::new(count as usize, size as usize, &opts))
            .py()?;
        Ok(PyMempool {
            count: pool.count(),
            size: pool.size(),
            stride: pool.stride(),
            tier: pool.tier().name(),
            notes: pool.region().notes(),
            pool: Mutex::new(Some(pool)),
        })
    }

    /// Take up to `n` free objects (burst): a uint32 array of their indices, shorter — possibly
    /// empty — when fewer are free.
    fn get<'py>(&self, py: Python<'py>, n: i64) -> PyResult<Bound<'py, PyArray1<u32>>> {
        let pool = self.get_pool()?;
        let mut out = vec![0u32; check_n(n, self.count)?];
        let got = pool.get_burst(&mut out);
        out.truncate(got);
        Ok(PyArray1::from_vec(py, out))
    }

    /// Take exactly `n` objects, or none (an empty array) when fewer are free.
    fn get_bulk<'py>(&self, py: Python<'py>, n: i64) -> PyResult<Bound<'py, PyArray1<u32>>> {
        let pool = self.get_pool()?;
        let mut out = vec![0u32; check_n(n, self.count)?];
        if !pool.get_bulk(&mut out) {
            out.clear();
        }
        Ok(PyArray1::from_vec(py, out))
    }

    /// Return objects. Raises ValueError, and returns none of them, if any index is out of
    /// range, already free, or listed twice.
    fn put(&self, indices_: &Bound<'_, PyAny>) -> PyResult<()> {
        let pool = self.get_pool()?;
        let idx = indices(indices_)?;
        pool.put_bulk(&idx).py()
    }

    /// A zero-copy uint8 view of object `i` (`size` bytes).
    fn view<'py>(&self, py: Python<'py>, i: i64) -> PyResult<Bound<'py, PyArray1<u8>>> {
        let pool = self.get_pool()?;
        let i = u32::try_from(i)
            .ok()
            .filter(|&i| i < self.count)
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "object {i} is out of range: the pool has 0..{}",
                    self.count
                ))
            })?;
        let offset = pool.region_offset() + i as usize * self.stride;
        RegionMemory::bytes(py, pool.region(), offset, self.size)
    }

    /// A zero-copy (count, size) uint8 view of every object (rows are `stride` bytes apart).
    #[getter]
    fn array<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<u8>>> {
        let pool = self.get_pool()?;
        let shape = (self.count as usize, self.size, self.stride);
        RegionMemory::rows(py, pool.region(), pool.region_offset(), shape)
    }

    /// Objects in the pool.
    #[getter]
    fn count(&self) -> u32 {
        self.count
    }

    /// Bytes per object.
    #[getter]
    fn size(&self) -> usize {
        self.size
    }

    /// Bytes between objects.
    #[getter]
    fn stride(&self) -> usize {
        self.stride
    }

    /// The page tier of the memory: "1g", "2m", "thp" or "4k".
    #[getter]
    fn tier(&self) -> &'static str {
        self.tier
    }

    /// What was changed to get the memory (a raised RLIMIT_MEMLOCK, see
    /// ``kbypass.memlock_raises()``); empty when nothing was.
    #[getter]
    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    /// Free objects right now.
    #[getter]
    fn available(&self) -> PyResult<u32> {
        let s = self.get_pool()?.stats();
        Ok(s.available + s.cached)
    }

    /// Objects handed out and not returned.
    #[getter]
    fn in_use(&self) -> PyResult<u32> {
        Ok(self.get_pool()?.stats().in_use)
    }

    /// Counters: count, size, stride, tier, available, cached, in_use, gets, puts,
    /// get_failures, refused_puts.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.get_pool()?.stats();
        let d = PyDict::new(py);
        d.set_item("count", s.count)?;
        d.set_item("size", s.size)?;
        d.set_item("stride", s.stride)?;
        d.set_item("tier", self.tier)?;
        d.set_item("available", s.available)?;
        d.set_item("cached", s.cached)?;
        d.set_item("in_use", s.in_use)?;
        d.set_item("gets", s.gets)?;
        d.set_item("puts", s.puts)?;
        d.set_item("get_failures", s.get_failures)?;
        d.set_item("refused_puts", s.refused_puts)?;
        Ok(d)
    }

    /// Time `rounds` get+put cycles of `bulk` objects through a per-thread cache of
    /// `cache_size` in Rust, without the GIL; returns elapsed nanoseconds (for benchmarks).
    #[pyo3(signature = (rounds, bulk = 32, cache_size = 512))]
    fn bench_cycle(
        &self,
        py: Python<'_>,
        rounds: u64,
        bulk: usize,
        cache_size: usize,
    ) -> PyResult<u64> {
        let pool = self.get_pool()?;
        if bulk == 0 || bulk > 4096 {
            return Err(PyValueError::new_err("bulk must be 1..=4096"));
        }
        py.detach(|| kbypass_core::mem::mempool::bench_cycle(&pool, rounds, bulk, cache_size))
            .py()
    }

    /// Drop this handle's reference; the memory goes when no view uses it any more.
    fn close(&self) {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).take();
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
        self.count as usize
    }

    fn __repr__(&self) -> String {
        format!(
            "Mempool(count={}, size={}, stride={}, tier={:?})",
            self.count, self.size, self.stride, self.tier
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyMempool>()?;
    Ok(())
}
