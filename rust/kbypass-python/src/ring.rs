//! `kbypass.Ring`: a lock-free ring of uint64 items (see `kbypass_core::ring`).
//!
//! The Python object owns the ring and, lazily, one producer and one consumer handle (taken at
//! the first enqueue / dequeue, so a process that only consumes never holds the producer side
//! of a single-producer ring). Each handle sits behind its own mutex because a Python object
//! may be used from several threads; the mutex is uncontended in normal use and never held
//! while waiting: blocking calls release the GIL and retake the handle for each attempt.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kbypass_core::ring::{Backoff, Consumer, Mode, Producer, Ring};
use numpy::{PyArray1, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyTimeoutError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt};

use crate::errors::IntoPyResult;

/// How long the GIL stays released in one go while waiting, so Ctrl-C is noticed.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a handle cannot leave it half-updated (all updates are atomics in
    // ring memory), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn closed_err() -> PyErr {
    PyRuntimeError::new_err("the ring is closed: create or attach a new Ring")
}

/// An int argument as i64, with ValueError/TypeError that say what to pass.
fn int_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<i64> {
    if !obj.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be an int, got {}",
            obj.get_type().name()?
        )));
    }
    obj.extract::<i64>().map_err(|_| {
        PyValueError::new_err(format!("{what} is out of range: pass a value below 2**63"))
    })
}

fn count_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<usize> {
    let v = int_arg(obj, what)?;
    usize::try_from(v)
        .map_err(|_| PyValueError::new_err(format!("{what} must not be negative, got {v}")))
}

fn item_arg(x: &Bound<'_, PyAny>) -> PyResult<u64> {
    if let Ok(v) = x.extract::<u64>() {
        return Ok(v);
    }
    if x.is_instance_of::<PyInt>() {
        Err(PyValueError::new_err(
            "ring items are uint64: pass an int in [0, 2**64)",
        ))
    } else {
        Err(PyTypeError::new_err(format!(
            "ring items are uint64: pass an int, got {}",
            x.get_type().name()?
        )))
    }
}

fn timeout_arg(timeout: Option<f64>) -> PyResult<Option<Duration>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_finite() && t >= 0.0 => Ok(Some(Duration::from_secs_f64(t))),
        Some(t) => Err(PyValueError::new_err(format!(
            "timeout must be None (wait forever) or a number of seconds >= 0, got {t}"
        ))),
    }
}

/// The items of a 1-D uint64 array: borrowed when contiguous, copied otherwise.
enum Items<'py> {
    Borrowed(numpy::PyReadonlyArray1<'py, u64>),
    Copied(Vec<u64>),
}

impl Items<'_> {
    fn as_slice(&self) -> &[u64] {
        match self {
            Items::Borrowed(a) => a.as_slice().expect("checked contiguous"),
            Items::Copied(v) => v,
        }
    }
}

fn items_arg<'py>(arr: &Bound<'py, PyAny>) -> PyResult<Items<'py>> {
    let fix = "pass a 1-D numpy array of dtype uint64, e.g. numpy.asarray(x, dtype=numpy.uint64)";
    let Ok(untyped) = arr.cast::<PyUntypedArray>() else {
        return Err(PyTypeError::new_err(format!(
            "expected a numpy.ndarray of uint64, got {}: {fix}",
            arr.get_type().name()?
        )));
    };
    let Ok(typed) = arr.cast::<PyArray1<u64>>() else {
        return Err(PyTypeError::new_err(format!(
            "expected a 1-D uint64 array, got a {}-D array of dtype {}: {fix}",
            untyped.ndim(),
            untyped.dtype().str()?
        )));
    };
    let ro = typed
        .try_readonly()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot read the array: {e}")))?;
    if ro.as_slice().is_ok() {
        Ok(Items::Borrowed(ro))
    } else {
        // Strided views (arr[::2]) are copied once; pass contiguous arrays to avoid it.
        Ok(Items::Copied(ro.as_array().iter().copied().collect()))
    }
}

/// A lock-free ring of uint64 items (DPDK rte_ring style), private or shared between processes.
///
/// ``Ring(capacity, mode="spsc")`` makes a private ring; ``Ring.create_shared(name, capacity)``
/// puts one in ``/dev/shm`` that other processes open with ``Ring.attach(name)``; the last user
/// to close removes the name, and ``Ring.unlink(name)`` removes one left by a crashed process.
/// ``capacity`` is a power of two; ``mode`` is "spsc", "mpsc", "spmc" or "mpmc" (a single side
/// allows one producer/consumer object at a time, across all processes). A process that dies in
/// the middle of a call (SIGKILL) does not block the others: its call is resolved and counted
/// (``stats()``); a stopped one makes their non-blocking calls give up (counted as busy) and
/// their blocking calls time out. A shared Ring inherited across ``fork()`` raises
/// RuntimeError: attach by name in the child.
///
/// Non-blocking: ``enqueue(x) -> bool``, ``dequeue() -> int | None``; NumPy uint64 arrays with
/// ``enqueue_bulk`` (all or nothing) / ``enqueue_burst`` (as many as fit) returning the count,
/// and ``dequeue_bulk(n)`` / ``dequeue_burst(n)`` returning an array (empty when nothing was
/// taken), or ``dequeue_into(out)`` into a preallocated array. Blocking, with the GIL released
/// while waiting and ``TimeoutError`` at ``timeout`` seconds (None waits forever): ``put``,
/// ``get``, ``put_bulk``, ``get_bulk``, ``get_burst``.
///
/// Example::
///
///     import numpy as np
///     from kbypass import Ring
///     with Ring(1024) as r:
///         r.enqueue_bulk(np.arange(3, dtype=np.uint64))  # -> 3
///         r.dequeue_burst(8)                              # -> array([0, 1, 2], dtype=uint64)
///         r.dequeue()                                     # -> None (empty)
#[pyclass(name = "Ring", module = "kbypass._core", frozen)]
pub struct PyRing {
    ring: Mutex<Option<Arc<Ring<u64>>>>,
    tx: Mutex<Option<Producer<u64>>>,
    rx: Mutex<Option<Consumer<u64>>>,
    capacity: usize,
    mode: Mode,
    name: Option<String>,
}

impl PyRing {
    fn wrap(ring: Arc<Ring<u64>>) -> Self {
        PyRing {
            capacity: ring.capacity(),
            mode: ring.mode(),
            name: ring.name().map(str::to_string),
            ring: Mutex::new(Some(ring)),
            tx: Mutex::new(None),
            rx: Mutex::new(None),
        }
    }

    /// The ring, or RuntimeError when closed or inherited across fork() (see `Ring::check`).
    fn ring(&self) -> PyResult<Arc<Ring<u64>>> {
        let r = lock(&self.ring).clone().ok_or_else(closed_err)?;
        r.check().py()?;
        Ok(r)
    }

    /// Run `f` with the producer handle (taken at first use). Every call is bounded: on a
    /// shared multi-producer ring a claim of another process that stays in flight makes it
    /// give up (counted as busy) instead of waiting.
    fn with_tx<R>(&self, f: impl FnOnce(&mut Producer<u64>) -> R) -> PyResult<R> {
        let ring = self.ring()?;
        let mut g = lock(&self.tx);
        if g.is_none() {
            *g = Some(ring.producer().py()?);
        }
        Ok(f(g.as_mut().expect("just set")))
    }

    /// Run `f` with the consumer handle (taken at first use); bounded like `with_tx`.
    fn with_rx<R>(&self, f: impl FnOnce(&mut Consumer<u64>) -> R) -> PyResult<R> {
        let ring = self.ring()?;
        let mut g = lock(&self.rx);
        if g.is_none() {
            *g = Some(ring.consumer().py()?);
        }
        Ok(f(g.as_mut().expect("just set")))
    }

    /// Try `attempt` until it yields, with the GIL released between tries; checks for signals
    /// every 100 ms and raises TimeoutError at the deadline.
    fn wait<R: Send>(
        py: Python<'_>,
        timeout: Option<Duration>,
        what: &str,
        attempt: impl Fn() -> PyResult<Option<R>> + Sync,
    ) -> PyResult<R> {
        if let Some(r) = attempt()? {
            return Ok(r);
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let slice = match deadline {
                Some(d) => d
                    .saturating_duration_since(Instant::now())
                    .min(SIGNAL_CHECK),
                None => SIGNAL_CHECK,
            };
            let got = py.detach(|| {
                let mut backoff = Backoff::new(Some(slice));
                loop {
                    if let Some(r) = attempt()? {
                        return Ok(Some(r));
                    }
                    if backoff.snooze(what).is_err() {
                        return Ok::<_, PyErr>(None);
                    }
                }
            })?;
            if let Some(r) = got {
                return Ok(r);
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(PyTimeoutError::new_err(format!(
                    "{what} for {:.3} s: make sure the other side is running, or pass a longer timeout",
                    timeout.unwrap_or_default().as_secs_f64()
                )));
            }
        }
    }

    fn bulk_len(&self, n: usize, verb: &str) -> PyResult<()> {
        if n > self.capacity {
            return Err(PyValueError::new_err(format!(
                "cannot {verb} {n} items at once with a ring of capacity {}: use at most {} per call, or a larger ring",
                self.capacity, self.capacity
            )));
        }
        Ok(())
    }
}

#[pymethods]
impl PyRing {
    /// Create a private ring (use ``create_shared`` to share it with other processes).
    #[new]
    #[pyo3(signature = (capacity, mode = "spsc"))]
    fn new(capacity: &Bound<'_, PyAny>, mode: &str) -> PyResult<Self> {
        let cap = count_arg(capacity, "capacity")?;
        let mode: Mode = mode.parse().py()?;
        Ok(Self::wrap(Ring::new(cap, mode).py()?))
    }

    /// Create a ring in shared memory named ``name`` for other processes to ``attach``.
    #[staticmethod]
    #[pyo3(signature = (name, capacity, mode = "spsc", replace = false))]
    fn create_shared(
        name: &str,
        capacity: &Bound<'_, PyAny>,
        mode: &str,
        replace: bool,
    ) -> PyResult<Self> {
        let cap = count_arg(capacity, "capacity")?;
        let mode: Mode = mode.parse().py()?;
        Ok(Self::wrap(
            Ring::create_shared(name, cap, mode, replace).py()?,
        ))
    }

    /// Attach to the shared ring ``name`` created by ``create_shared``.
    #[staticmethod]
    fn attach(name: &str) -> PyResult<Self> {
        Ok(Self::wrap(Ring::attach(name).py()?))
    }

    /// Remove the name of a shared ring (e.g. one left by a crashed process).
    #[staticmethod]
    fn unlink(name: &str) -> PyResult<bool> {
        Ring::<u64>::unlink(name).py()
    }

    /// Enqueue one item; False if the ring is full.
    fn enqueue(&self, x: &Bound<'_, PyAny>) -> PyResult<bool> {
        let v = item_arg(x)?;
        self.with_tx(|tx| tx.push(v))
    }

    /// Dequeue one item; None if the ring is empty.
    fn dequeue(&self) -> PyResult<Option<u64>> {
        self.with_rx(|rx| rx.pop())
    }

    /// Enqueue all of ``items`` or none; returns ``len(items)`` or 0.
    fn enqueue_bulk(&self, items: &Bound<'_, PyAny>) -> PyResult<usize> {
        let items = items_arg(items)?;
        self.with_tx(|tx| tx.enqueue_bulk(items.as_slice()))
    }

    /// Enqueue as many of ``items`` as fit (a prefix); returns how many.
    fn enqueue_burst(&self, items: &Bound<'_, PyAny>) -> PyResult<usize> {
        let items = items_arg(items)?;
        self.with_tx(|tx| tx.enqueue_burst(items.as_slice()))
    }

    /// Dequeue exactly ``n`` items, or none (an empty array) if fewer are there.
    fn dequeue_bulk<'py>(
        &self,
        py: Python<'py>,
        n: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<u64>>> {
        let n = count_arg(n, "n")?;
        self.bulk_len(n, "dequeue")?;
        let mut out = vec![0u64; n];
        let got = self.with_rx(|rx| rx.dequeue_bulk(&mut out))?;
        out.truncate(got);
        Ok(PyArray1::from_vec(py, out))
    }

    /// Dequeue up to ``n`` items (possibly none).
    fn dequeue_burst<'py>(
        &self,
        py: Python<'py>,
        n: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<u64>>> {
        let n = count_arg(n, "n")?.min(self.ring()?.len());
        let mut out = vec![0u64; n];
        let got = self.with_rx(|rx| rx.dequeue_burst(&mut out))?;
        out.truncate(got);
        Ok(PyArray1::from_vec(py, out))
    }

    /// Dequeue into the preallocated uint64 array ``out`` without allocating: up to
    /// ``len(out)`` items (burst), or exactly ``len(out)`` or none with ``bulk=True``.
    /// Returns how many were written to the front of ``out``.
    #[pyo3(signature = (out, bulk = false))]
    fn dequeue_into(&self, out: &Bound<'_, PyAny>, bulk: bool) -> PyResult<usize> {
        let fix = "pass a writable, C-contiguous 1-D numpy array of dtype uint64, e.g. numpy.empty(n, dtype=numpy.uint64)";
        let typed = out
            .cast::<PyArray1<u64>>()
            .map_err(|_| PyTypeError::new_err(format!("out must be a 1-D uint64 array: {fix}")))?;
        let mut rw = typed
            .try_readwrite()
            .map_err(|e| PyValueError::new_err(format!("out is not writable ({e}): {fix}")))?;
        let slice = rw
            .as_slice_mut()
            .map_err(|_| PyValueError::new_err(format!("out is not contiguous: {fix}")))?;
        if bulk {
            self.bulk_len(slice.len(), "dequeue")?;
            self.with_rx(|rx| rx.dequeue_bulk(slice))
        } else {
            self.with_rx(|rx| rx.dequeue_burst(slice))
        }
    }

    /// Enqueue one item, waiting (GIL released) for room up to ``timeout`` seconds.
    #[pyo3(signature = (x, timeout = None))]
    fn put(&self, py: Python<'_>, x: &Bound<'_, PyAny>, timeout: Option<f64>) -> PyResult<()> {
        let v = item_arg(x)?;
        let t = timeout_arg(timeout)?;
        Self::wait(py, t, "put: the ring stayed full", || {
            Ok(self.with_tx(|tx| tx.push(v))?.then_some(()))
        })
    }

    /// Dequeue one item, waiting (GIL released) up to ``timeout`` seconds.
    #[pyo3(signature = (timeout = None))]
    fn get(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<u64> {
        let t = timeout_arg(timeout)?;
        Self::wait(py, t, "get: the ring stayed empty", || {
            self.with_rx(|rx| rx.pop())
        })
    }

    /// Enqueue all of ``items`` at once, waiting (GIL released) for room up to ``timeout``.
    #[pyo3(signature = (items, timeout = None))]
    fn put_bulk(
        &self,
        py: Python<'_>,
        items: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let items = items_arg(items)?;
        let t = timeout_arg(timeout)?;
        let slice = items.as_slice();
        self.bulk_len(slice.len(), "enqueue")?;
        if slice.is_empty() || self.with_tx(|tx| tx.enqueue_bulk(slice))? == slice.len() {
            return Ok(());
        }
        // Copy before releasing the GIL: Python code may write to the array meanwhile.
        let owned = slice.to_vec();
        Self::wait(py, t, "put_bulk: the ring stayed too full", || {
            Ok((self.with_tx(|tx| tx.enqueue_bulk(&owned))? == owned.len()).then_some(()))
        })
    }

    /// Dequeue exactly ``n`` items, waiting (GIL released) up to ``timeout`` for all of them.
    #[pyo3(signature = (n, timeout = None))]
    fn get_bulk<'py>(
        &self,
        py: Python<'py>,
        n: &Bound<'py, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyArray1<u64>>> {
        let n = count_arg(n, "n")?;
        let t = timeout_arg(timeout)?;
        self.bulk_len(n, "dequeue")?;
        let out = Mutex::new(vec![0u64; n]);
        Self::wait(py, t, "get_bulk: the ring held too few items", || {
            let mut o = lock(&out);
            Ok((n == 0 || self.with_rx(|rx| rx.dequeue_bulk(&mut o))? == n).then_some(()))
        })?;
        Ok(PyArray1::from_vec(
            py,
            out.into_inner().unwrap_or_else(|e| e.into_inner()),
        ))
    }

    /// Dequeue between 1 and ``n`` items, waiting (GIL released) up to ``timeout`` for the first.
    #[pyo3(signature = (n, timeout = None))]
    fn get_burst<'py>(
        &self,
        py: Python<'py>,
        n: &Bound<'py, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyArray1<u64>>> {
        let n = count_arg(n, "n")?.min(self.capacity);
        let t = timeout_arg(timeout)?;
        if n == 0 {
            return Ok(PyArray1::from_vec(py, Vec::new()));
        }
        let out = Mutex::new(vec![0u64; n]);
        let got = Self::wait(py, t, "get_burst: the ring stayed empty", || {
            let mut o = lock(&out);
            let k = self.with_rx(|rx| rx.dequeue_burst(&mut o))?;
            Ok((k > 0).then_some(k))
        })?;
        let mut v = out.into_inner().unwrap_or_else(|e| e.into_inner());
        v.truncate(got);
        Ok(PyArray1::from_vec(py, v))
    }

    /// Items in the ring now (a snapshot while other threads or processes work on it).
    fn __len__(&self) -> PyResult<usize> {
        Ok(self.ring()?.len())
    }

    /// Free slots now (a snapshot).
    #[getter]
    fn free(&self) -> PyResult<usize> {
        Ok(self.ring()?.free())
    }

    /// Number of slots (a power of two).
    #[getter]
    fn capacity(&self) -> usize {
        self.capacity
    }

    /// ``"spsc"``, ``"mpsc"``, ``"spmc"`` or ``"mpmc"``.
    #[getter]
    fn mode(&self) -> &'static str {
        self.mode.as_str()
    }

    /// The shared-memory name, or None for a private ring.
    #[getter]
    fn name(&self) -> Option<String> {
        self.name.clone()
    }

    /// Whether ``close()`` has been called.
    #[getter]
    fn closed(&self) -> bool {
        lock(&self.ring).is_none()
    }

    /// Counters: ``full`` (enqueues that found too little room), ``empty`` (dequeues that found
    /// too few items), ``len``, ``attached`` (Ring objects on this ring, over all live
    /// processes); ``producer_busy``/``consumer_busy`` (calls that gave up because another
    /// process's call stayed in flight); ``producer_recovered``/``consumer_recovered`` (calls of
    /// processes that died mid-call, resolved by the others) and ``producer_rolled_back``
    /// (items such dead producers never finished enqueuing) / ``consumer_rolled_back`` (items
    /// dead consumers had taken but not finished, left in the ring for the others);
    /// ``producer_claim``/``consumer_claim``: pid of the process whose call is in flight, or None.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.ring()?.stats();
        let d = PyDict::new(py);
        d.set_item("full", s.full)?;
        d.set_item("empty", s.empty)?;
        d.set_item("len", s.len)?;
        d.set_item("attached", s.attached)?;
        d.set_item("producer_busy", s.producer_busy)?;
        d.set_item("consumer_busy", s.consumer_busy)?;
        d.set_item("producer_recovered", s.producer_recovered)?;
        d.set_item("producer_rolled_back", s.producer_rolled_back)?;
        d.set_item("consumer_recovered", s.consumer_recovered)?;
        d.set_item("consumer_rolled_back", s.consumer_rolled_back)?;
        d.set_item("producer_claim", s.producer_claim)?;
        d.set_item("consumer_claim", s.consumer_claim)?;
        Ok(d)
    }

    /// Release the ring; the last user of a shared ring removes its name. Idempotent.
    fn close(&self) {
        let tx = lock(&self.tx).take();
        let rx = lock(&self.rx).take();
        let ring = lock(&self.ring).take();
        drop((tx, rx, ring));
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        let state = match lock(&self.ring).as_ref() {
            None => "closed".to_string(),
            Some(r) => format!("len={}", r.len()),
        };
        match &self.name {
            Some(n) => format!(
                "Ring(name={n:?}, capacity={}, mode={:?}, {state})",
                self.capacity,
                self.mode.as_str()
            ),
            None => format!(
                "Ring(capacity={}, mode={:?}, {state})",
                self.capacity,
                self.mode.as_str()
            ),
        }
    }
}

/// Register the ring class.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRing>()
}
