//! `FaultPath`: fault injection on two ports for tests (`kbypass.testing.faults` builds the
//! namespaces around it). Calls that load programs or stop the middlebox release the GIL; the
//! middlebox thread never takes it.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use kbypass_core::xdp::faults::{FaultPath as CorePath, FaultRates, PathOptions, Timing};
use kbypass_core::xdp::AttachMode;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::IntoPyResult;
use crate::xdp::filter_rules;

fn direction(d: usize) -> PyResult<usize> {
    if d > 1 {
        return Err(PyValueError::new_err(format!(
            "direction={d} must be 0 (frames arriving on the first port) or 1"
        )));
    }
    Ok(d)
}

fn seconds(v: f64, what: &str) -> PyResult<Duration> {
    if v.is_finite() && (0.0..=60.0).contains(&v) {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(PyValueError::new_err(format!(
            "{what}={v} must be a number of seconds in 0..=60"
        )))
    }
}

/// Fault injection between two ports of a namespace: an XDP injector on each port and an
/// AF_XDP middlebox thread. Direction 0 is the frames arriving on ``ports[0]``.
#[pyclass(module = "kbypass._core", frozen)]
pub struct FaultPath {
    inner: Mutex<Option<CorePath>>,
}

impl FaultPath {
    fn lock(&self) -> PyResult<MutexGuard<'_, Option<CorePath>>> {
        self.inner
            .lock()
            .map_err(|_| PyRuntimeError::new_err("FaultPath lock poisoned"))
    }

    fn with<T>(&self, f: impl FnOnce(&CorePath) -> PyResult<T>) -> PyResult<T> {
        let g = self.lock()?;
        match g.as_ref() {
            Some(p) => f(p),
            None => Err(PyRuntimeError::new_err(
                "the FaultPath is closed: make a new one",
            )),
        }
    }
}

#[pymethods]
impl FaultPath {
    /// Attach injectors to both `ports` inside `netns` and start the middlebox.
    #[new]
    #[pyo3(signature = (netns, ports, *, filter=None, mode="auto", frames=4096, seed=None))]
    fn new(
        py: Python<'_>,
        netns: &str,
        ports: (String, String),
        filter: Option<&Bound<'_, PyAny>>,
        mode: &str,
        frames: u32,
        seed: Option<u64>,
    ) -> PyResult<Self> {
        let rules = filter_rules(filter)?;
        let opts = PathOptions {
            rules: [rules.clone(), rules],
            mode: mode.parse::<AttachMode>().py()?,
            frames,
            seed,
            ..Default::default()
        };
        let path = py
            .detach(|| CorePath::new(netns, [&ports.0, &ports.1], &opts))
            .py()?;
        Ok(FaultPath {
            inner: Mutex::new(Some(path)),
        })
    }

    /// Set direction `direction`'s probabilities.
    fn set_rates(
        &self,
        direction: usize,
        loss: f64,
        duplicate: f64,
        reorder: f64,
        delay: f64,
    ) -> PyResult<()> {
        let d = self::direction(direction)?;
        let r = FaultRates {
            loss,
            duplicate,
            reorder,
            delay,
        };
        self.with(|p| p.set_rates(d, r).py())
    }

    /// Direction `direction`'s probabilities (keys: loss, duplicate, reorder, delay).
    fn rates<'py>(&self, py: Python<'py>, direction: usize) -> PyResult<Bound<'py, PyDict>> {
        let d = self::direction(direction)?;
        let r = self.with(|p| Ok(p.injector(d).py()?.rates()))?;
        let out = PyDict::new(py);
        out.set_item("loss", r.loss)?;
        out.set_item("duplicate", r.duplicate)?;
        out.set_item("reorder", r.reorder)?;
        out.set_item("delay", r.delay)?;
        Ok(out)
    }

    /// Set direction `direction`'s filter (None: every frame).
    #[pyo3(signature = (direction, filter=None))]
    fn set_filter(
        &self,
        py: Python<'_>,
        direction: usize,
        filter: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let d = self::direction(direction)?;
        let rules = filter_rules(filter)?;
        self.with(|p| py.detach(|| p.set_filter(d, &rules)).py())
    }

    /// Direction `direction`'s filter ("" for every frame).
    fn filter(&self, direction: usize) -> PyResult<String> {
        let d = self::direction(direction)?;
        self.with(|p| Ok(p.injector(d).py()?.filter()))
    }

    /// Set direction `direction`'s reorder and delay timing.
    fn set_timing(
        &self,
        direction: usize,
        reorder_after: u32,
        reorder_timeout: f64,
        delay: f64,
    ) -> PyResult<()> {
        let d = self::direction(direction)?;
        let t = Timing {
            reorder_after,
            reorder_timeout: seconds(reorder_timeout, "reorder_timeout")?,
            delay: seconds(delay, "delay")?,
        };
        self.with(|p| p.set_timing(d, &t).py())
    }

    /// Direction `direction`'s timing (keys: reorder_after, reorder_timeout, delay).
    fn timing<'py>(&self, py: Python<'py>, direction: usize) -> PyResult<Bound<'py, PyDict>> {
        let d = self::direction(direction)?;
        let t = self.with(|p| p.timing(d).py())?;
        let out = PyDict::new(py);
        out.set_item("reorder_after", t.reorder_after)?;
        out.set_item("reorder_timeout", t.reorder_timeout.as_secs_f64())?;
        out.set_item("delay", t.delay.as_secs_f64())?;
        Ok(out)
    }

    /// Direction `direction`'s counters: the injector's (seen, matched, passed, dropped,
    /// to_middlebox, no_socket) and the middlebox's (received, duplicated, reordered,
    /// reorder_timeouts, delayed, forwarded, sent, tx_failed, held, kernel_lost), in one dict.
    fn counters<'py>(&self, py: Python<'py>, direction: usize) -> PyResult<Bound<'py, PyDict>> {
        let d = self::direction(direction)?;
        let c = self.with(|p| p.counters(d).py())?;
        let (i, m) = (c.injector, c.middlebox);
        let out = PyDict::new(py);
        for (k, v) in [
            ("seen", i.seen),
            ("matched", i.matched),
            ("passed", i.passed),
            ("dropped", i.dropped),
            ("to_middlebox", i.to_middlebox),
            ("no_socket", i.no_socket),
            ("received", m.received),
            ("duplicated", m.duplicated),
            ("reordered", m.reordered),
            ("reorder_timeouts", m.reorder_timeouts),
            ("delayed", m.delayed),
            ("forwarded", m.forwarded),
            ("sent", m.sent),
            ("tx_failed", m.tx_failed),
            ("held", m.held),
            ("kernel_lost", m.kernel_lost),
        ] {
            out.set_item(k, v)?;
        }
        Ok(out)
    }

    /// Where direction `direction`'s injector is: keys port, mode ("native"/"generic"),
    /// prog_id (the attached program's kernel id; it never changes).
    fn info<'py>(&self, py: Python<'py>, direction: usize) -> PyResult<Bound<'py, PyDict>> {
        let d = self::direction(direction)?;
        let out = PyDict::new(py);
        self.with(|p| {
            let inj = p.injector(d).py()?;
            let (port, mode) = inj.attached().unwrap_or((p.ports()[d], "detached"));
            out.set_item("port", port)?;
            out.set_item("mode", mode)?;
            out.set_item("prog_id", inj.prog_id())?;
            Ok(())
        })?;
        Ok(out)
    }

    /// Stop the middlebox (it sends what it holds first), close its sockets, detach the
    /// programs and close the maps. Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let taken = self.lock()?.take();
        if let Some(mut p) = taken {
            py.detach(move || p.close());
        }
        Ok(())
    }

    /// Whether :meth:`close` ran.
    #[getter]
    fn closed(&self) -> PyResult<bool> {
        Ok(self.lock()?.is_none())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<FaultPath>()?;
    Ok(())
}
