//! `kbypass._core.Engine` and `EngineConfig`: a core `engine::Pipeline` driven from Python.
//!
//! The life cycle (configuration checks, sockets taken from the port and put back, start /
//! stop / join, kept frames) is the core's; this file converts arguments, builds one Python
//! handler per worker (`handler.rs`), waits without the GIL in slices that answer Ctrl-C, and
//! stops every engine still running when the interpreter exits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use kbypass_core::engine::{
    self, BatchHandler, Cpus, Latency, OnError, Pipeline, PipelineConfig, Workers,
    BATCH_HISTOGRAM_BOUNDS,
};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyList};

use crate::errors::IntoPyResult;
use crate::handler::{finalizing, verdict_of, ErrorLog, PyHandler, Shared};
use crate::held::PyKept;
use crate::port::{account_dict, PyXdpPort, SIGNAL_CHECK};

/// Pipelines that started workers, for the interpreter-exit hook.
static LIVES: Mutex<Vec<Weak<Pipeline>>> = Mutex::new(Vec::new());

/// Set by the interpreter-exit hook: workers started after it would still run when the
/// interpreter finalizes, so `start` refuses.
static EXITING: AtomicBool = AtomicBool::new(false);

/// Stop the workers of every engine still running (registered with `atexit` when the module
/// loads): at interpreter exit no worker may still want the GIL, or finalization would end it
/// inside our frames. Returns how many engines had workers to stop.
#[pyfunction]
fn stop_all_engines(py: Python<'_>) -> usize {
    EXITING.store(true, Ordering::Release);
    let lives: Vec<Arc<Pipeline>> = LIVES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain(..)
        .filter_map(|w| w.upgrade())
        .collect();
    let mut n = 0;
    for p in lives {
        if p.running() {
            n += 1;
        }
        // Exiting anyway: the workers' errors were theirs to report while running.
        let _ = py.detach(|| p.join());
    }
    n
}

/// How the workers of an `Engine` run, checked once, before any port is opened.
///
/// `workers`: None (one per socket), a count (sockets dealt round-robin) or groups of socket
/// indexes; `cpus`: None (chosen with `kbypass.cpu.worker_cpu`), False (not pinned) or one
/// CPU (or None) per worker; `default`: the verdict every frame starts with; `on_error`:
/// "drop", "pass" or "stop"; `idle_wait`: seconds of one idle sleep at most, in (0, 1];
/// `latency`: how workers wait for packets, "adaptive" (poll for `spin` seconds after the last
/// packet, then sleep in poll(2) until a packet or stop wakes them), "busy" (never sleep; the
/// kernel's busy polling where it accepts it) or "sleep" (fixed sleeps after 512 empty polls);
/// `spin`: the adaptive mode's polling time, in [0, 0.1] seconds.
///
/// Example:
///     >>> cfg = EngineConfig(batch=64, on_error="pass", cpus=False, latency="busy")
///     >>> eng = Engine(port, handler, cfg)
#[pyclass(name = "EngineConfig", module = "kbypass._core", frozen)]
pub struct PyEngineConfig {
    cfg: PipelineConfig,
}

#[pymethods]
impl PyEngineConfig {
    #[new]
    #[pyo3(signature = (*, batch=64, workers=None, cpus=None, default=None, on_error="drop",
        idle_wait=0.001, latency="adaptive", spin=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        batch: usize,
        workers: Option<&Bound<'_, PyAny>>,
        cpus: Option<&Bound<'_, PyAny>>,
        default: Option<&Bound<'_, PyAny>>,
        on_error: &str,
        idle_wait: f64,
        latency: &str,
        spin: Option<f64>,
    ) -> PyResult<Self> {
        let workers = match workers.filter(|w| !w.is_none()) {
            None => Workers::PerSocket,
            Some(w) if w.is_instance_of::<PyBool>() => {
                return Err(PyTypeError::new_err(
                    "workers must be a number of workers or groups of socket indexes",
                ))
            }
            Some(w) => match w.extract::<usize>() {
                Ok(n) => Workers::Count(n),
                Err(_) => Workers::Groups(w.extract().map_err(|_| {
                    PyTypeError::new_err(
                        "workers must be a number of workers or groups of socket indexes, e.g. [[0, 1]]",
                    )
                })?),
            },
        };
        let cpus = match cpus.filter(|c| !c.is_none()) {
            None => Cpus::Auto,
            Some(c) if c.is_instance_of::<PyBool>() && !c.is_truthy()? => Cpus::Unpinned,
            Some(c) => Cpus::List(c.extract().map_err(|_| {
                PyTypeError::new_err("cpus must be one CPU (or None) per worker, None or False")
            })?),
        };
        let default_verdict = match default.filter(|d| !d.is_none()) {
            None => engine::DROP,
            Some(d) => verdict_of(d).ok_or_else(|| {
                PyValueError::new_err(
                    "default must be a verdict: kbypass.DROP, TX, FORWARD or KEEP",
                )
            })?,
        };
        let cfg = PipelineConfig {
            batch,
            workers,
            cpus,
            default_verdict,
            on_error: on_error.parse::<OnError>().py()?,
            idle_wait: Duration::try_from_secs_f64(idle_wait)
                .map_err(|_| PyValueError::new_err("idle_wait must be in (0, 1] seconds"))?,
            latency: latency.parse::<Latency>().py()?,
            spin: match spin {
                None => engine::DEFAULT_SPIN,
                Some(s) => Duration::try_from_secs_f64(s)
                    .map_err(|_| PyValueError::new_err("spin must be in [0, 0.1] seconds"))?,
            },
            ..PipelineConfig::default()
        };
        cfg.validate().py()?;
        Ok(PyEngineConfig { cfg })
    }

    fn __repr__(&self) -> String {
        let c = &self.cfg;
        format!(
            "EngineConfig(batch={}, workers={:?}, cpus={:?}, default={}, on_error={:?}, idle_wait={}, latency={:?}, spin={})",
            c.batch,
            c.workers,
            c.cpus,
            c.default_verdict,
            c.on_error,
            c.idle_wait.as_secs_f64(),
            c.latency.as_str(),
            c.spin.as_secs_f64()
        )
    }
}

/// The workers of one pipeline over an `XdpPort` (used by `kbypass.Pipeline`).
///
/// Example:
///     >>> eng = Engine(port, handler, EngineConfig(batch=64))
///     >>> eng.start(); eng.wait(1.0); eng.stop()
#[pyclass(name = "Engine", module = "kbypass._core", frozen)]
pub struct PyEngine {
    pipeline: Arc<Pipeline>,
    shared: Arc<Shared>,
    per_packet: bool,
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (port, handler, config=None, *, per_packet=false))]
    fn new(
        py: Python<'_>,
        port: &Bound<'_, PyXdpPort>,
        handler: Py<PyAny>,
        config: Option<&Bound<'_, PyEngineConfig>>,
        per_packet: bool,
    ) -> PyResult<Self> {
        if !handler.bind(py).is_callable() {
            return Err(PyTypeError::new_err(
                "handler must be callable: def handler(batch) -> None",
            ));
        }
        let cfg = config.map(|c| c.get().cfg.clone()).unwrap_or_default();
        let handle = &port.get().handle;
        let shared_port = Arc::clone(&handle.port);
        let pipeline = py.detach(|| Pipeline::new(shared_port, cfg)).py()?;
        Ok(PyEngine {
            pipeline: Arc::new(pipeline),
            shared: Arc::new(Shared {
                callback: handler,
                memory: handle.memory.clone(),
                errors: ErrorLog::default(),
            }),
            per_packet,
        })
    }

    /// Start the workers; `packets` stops them after that many packets in total.
    #[pyo3(signature = (packets=None))]
    fn start(&self, py: Python<'_>, packets: Option<u64>) -> PyResult<()> {
        if EXITING.load(Ordering::Acquire) {
            return Err(PyRuntimeError::new_err(
                "the interpreter is exiting (kbypass's exit hook already stopped every pipeline): start pipelines before exit, not from atexit handlers",
            ));
        }
        let p = &self.pipeline;
        if p.running() {
            return Err(PyRuntimeError::new_err(
                "the pipeline is already running: stop() it first",
            ));
        }
        // Each worker's handler (NumPy buffers, its Packet) is built with the GIL.
        let cap = kbypass_core::engine::batch_capacity(p.config().batch);
        let handlers = (0..p.groups().len())
            .map(|_| -> PyResult<Box<dyn BatchHandler>> {
                let h = PyHandler::new(py, &self.shared, cap, self.per_packet)?;
                Ok(Box::new(h))
            })
            .collect::<PyResult<Vec<_>>>()?;
        {
            let mut lives = LIVES.lock().unwrap_or_else(|e| e.into_inner());
            lives.retain(|w| w.strong_count() > 0);
            lives.push(Arc::downgrade(p));
        }
        // Without the GIL: a worker whose first batch begins at once needs it.
        py.detach(|| p.start(handlers, packets)).py()
    }

    /// Wait up to `timeout` seconds (None: forever) for the workers to end by themselves
    /// (packet limit reached, handler asked to stop). Returns whether they did. The GIL is
    /// released while waiting and signals are checked every 50 ms, so Ctrl-C interrupts it.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let p = &self.pipeline;
        if p.on_worker() {
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
            let slice_end = Instant::now() + SIGNAL_CHECK;
            let slice_end = deadline.map_or(slice_end, |d| d.min(slice_end));
            if py.detach(|| p.wait_until(slice_end)) {
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
        let p = &self.pipeline;
        if p.on_worker() {
            p.stop();
            return Ok(None);
        }
        // Workers may be waiting for the GIL to finish a batch: join without it.
        py.detach(|| p.join()).py()?;
        self.check_accounting(py).map(Some)
    }

    /// Frame accounting over the whole UMEM (raises if frames are unaccounted for): `free`,
    /// `rx_side`, `app` (frames in a batch now), `held` (kept frames, received batches not
    /// released, frames whose views outlived their batch), `tx_side`, `total`.
    fn check_accounting<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let p = &self.pipeline;
        let a = py.detach(|| p.check_accounting()).py()?;
        account_dict(py, &a)
    }

    /// Whether workers are running.
    #[getter]
    fn running(&self) -> bool {
        self.pipeline.running()
    }

    /// Frames held now (kept, or with views that outlived their batch, or in received
    /// batches): they go back to the pool when their last handle or view is gone.
    #[getter]
    fn held(&self) -> u32 {
        self.pipeline.held()
    }

    /// Per-worker counters: a list of dicts.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let p = &self.pipeline;
        let out = PyList::empty(py);
        for (i, s) in p.stats().iter().enumerate() {
            let x = s.snapshot();
            let d = PyDict::new(py);
            d.set_item("worker", i)?;
            let queues: Vec<u32> = p.groups()[i].iter().map(|&j| p.queues()[j]).collect();
            d.set_item("queues", queues)?;
            d.set_item("cpu", p.cpus()[i])?;
            d.set_item("rx", x.rx)?;
            d.set_item("rx_bytes", x.rx_bytes)?;
            d.set_item("tx", x.tx)?;
            d.set_item("forwarded", x.forwarded)?;
            d.set_item("dropped", x.dropped)?;
            d.set_item("kept", x.kept)?;
            d.set_item("released", x.released)?;
            d.set_item("escaped", x.escaped)?;
            d.set_item("copied", x.copied)?;
            d.set_item("emitted", x.emitted)?;
            d.set_item("emit_failed", x.emit_failed)?;
            d.set_item("forward_ring_full", x.forward_ring_full)?;
            d.set_item("forwarded_out", x.forwarded_out)?;
            d.set_item("forwarded_in", x.forwarded_in)?;
            d.set_item("forward_in_failed", x.forward_in_failed)?;
            d.set_item("forward_wakeups", x.forward_wakeups)?;
            d.set_item("handler_errors", x.handler_errors)?;
            d.set_item("bad_verdicts", x.bad_verdicts)?;
            d.set_item("tx_failed", x.tx_failed)?;
            d.set_item("batches", x.batches)?;
            d.set_item("idle_waits", x.idle_waits)?;
            d.set_item("latency", p.config().latency.as_str())?;
            d.set_item("busy_poll", x.busy_poll)?;
            d.set_item("notes", s.notes())?;
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
        let memory = &self.shared.memory;
        let kept = self.pipeline.kept().into_iter();
        let handles = kept
            .map(|k| Py::new(py, PyKept::new(k, memory.clone())))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, handles)
    }

    /// The latest handler error message, or None.
    #[getter]
    fn last_error(&self) -> Option<String> {
        self.shared.errors.last()
    }

    /// Seconds the workers ran (so far, or in the last run).
    #[getter]
    fn elapsed(&self) -> f64 {
        self.pipeline.elapsed().as_secs_f64()
    }

    /// Worker groups (socket indexes per worker).
    #[getter]
    fn workers(&self) -> Vec<Vec<usize>> {
        self.pipeline.groups().to_vec()
    }
}

impl Drop for PyEngine {
    fn drop(&mut self) {
        let p = &self.pipeline;
        if p.on_worker() || finalizing() {
            // Dropped by its own handler (it cannot join itself), or while the interpreter is
            // finalizing (a worker blocked on the GIL would never come back): the workers see
            // the flag and end by themselves; their sockets go with them.
            p.abandon();
            return;
        }
        // Workers may be waiting for the GIL to finish a batch: join without it (the core's
        // own drop would join with it held). Nobody is left to report errors to.
        Python::attach(|py| {
            let _ = py.detach(|| p.join());
        });
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEngine>()?;
    m.add_class::<PyEngineConfig>()?;
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
