//! Traffic for benches and tests: the live-frames generator and the counting drop sink (the
//! kernel-socket baselines are in `kernel.rs`). Every blocking call releases the GIL.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kbypass_core::traffic::{self, LiveOptions, LiveResult, LiveRun, UdpTemplate};
use kbypass_core::xdp::AttachMode;
use kbypass_core::Error;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::IntoPyResult;

pub(crate) fn parse_ip(s: &str, what: &str) -> PyResult<Ipv4Addr> {
    s.parse()
        .map_err(|_| PyValueError::new_err(format!("{what}={s:?} is not an IPv4 address")))
}

fn parse_mac(s: &str, what: &str) -> PyResult<[u8; 6]> {
    let bad = || {
        PyValueError::new_err(format!(
            "{what}={s:?} is not a MAC address: give six hex bytes like '02:00:c6:12:00:01'"
        ))
    };
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.is_empty() || p.len() > 2 {
            return Err(bad());
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

pub(crate) fn seconds(v: Option<f64>, what: &str) -> PyResult<Option<Duration>> {
    v.map(|s| {
        if s.is_finite() && s >= 0.0 {
            Ok(Duration::from_secs_f64(s))
        } else {
            Err(PyValueError::new_err(format!(
                "{what}={s} must be a non-negative number of seconds"
            )))
        }
    })
    .transpose()
}

pub(crate) fn throughput_dict<'py>(
    py: Python<'py>,
    t: &traffic::Throughput,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("packets", t.packets)?;
    d.set_item("bytes", t.bytes)?;
    d.set_item("elapsed", t.elapsed.as_secs_f64())?;
    d.set_item("pps", t.pps())?;
    Ok(d)
}

fn live_dict<'py>(py: Python<'py>, r: &LiveResult) -> PyResult<Bound<'py, PyDict>> {
    let d = throughput_dict(py, &r.throughput)?;
    d.set_item("calls", r.calls)?;
    d.set_item("interrupted", r.interrupted)?;
    Ok(d)
}

/// A signal (Ctrl-C) that interrupted a run is raised once the GIL is back.
fn finish<'py>(py: Python<'py>, r: &LiveResult) -> PyResult<Bound<'py, PyDict>> {
    if r.interrupted {
        py.check_signals()?;
    }
    live_dict(py, r)
}

/// Everything a run needs, owned, so a background thread can take it.
#[derive(Clone)]
struct RunArgs {
    ifname: String,
    netns: Option<String>,
    count: Option<u64>,
    duration: Option<Duration>,
    rate: Option<f64>,
    cpu: Option<usize>,
    queue: u32,
}

impl RunArgs {
    fn run(
        &self,
        gen: &traffic::LiveGenerator,
        stop: Option<&AtomicBool>,
        ready: Option<&AtomicBool>,
    ) -> kbypass_core::Result<LiveResult> {
        gen.run(
            &self.ifname,
            self.netns.as_deref(),
            &LiveRun {
                count: self.count,
                duration: self.duration,
                rate: self.rate,
                stop,
                cpu: self.cpu,
                queue: self.queue,
                ready,
            },
        )
    }
}

struct Background {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<kbypass_core::Result<LiveResult>>,
}

impl Background {
    fn join(self) -> kbypass_core::Result<LiveResult> {
        self.handle
            .join()
            .unwrap_or_else(|_| Err(Error::State("the generator thread panicked".into())))
    }
}

/// The XDP live-frames traffic generator (a loaded XDP_TX program and its frame).
#[pyclass(module = "kbypass._core", frozen)]
pub struct LiveGenerator {
    inner: Arc<traffic::LiveGenerator>,
    bg: Mutex<Option<Background>>,
}

impl LiveGenerator {
    fn bg(&self) -> PyResult<std::sync::MutexGuard<'_, Option<Background>>> {
        self.bg
            .lock()
            .map_err(|_| PyRuntimeError::new_err("LiveGenerator lock poisoned"))
    }
}

#[allow(clippy::too_many_arguments)]
fn run_args(
    ifname: &str,
    netns: Option<String>,
    count: Option<u64>,
    duration: Option<f64>,
    rate: Option<f64>,
    cpu: Option<usize>,
    queue: u32,
) -> PyResult<RunArgs> {
    Ok(RunArgs {
        ifname: ifname.to_string(),
        netns,
        count,
        duration: seconds(duration, "duration")?,
        rate,
        cpu,
        queue,
    })
}

#[pymethods]
impl LiveGenerator {
    #[new]
    #[pyo3(signature = (*, size=None, flows=1, src_ip="198.18.0.1", dst_ip="198.18.0.2", src_port=10000, dst_port=9000, src_mac="02:00:c6:12:00:01", dst_mac="02:00:c6:12:00:02", udp_checksum=true, batch_size=0, payload=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        size: Option<usize>,
        flows: u32,
        src_ip: &str,
        dst_ip: &str,
        src_port: u16,
        dst_port: u16,
        src_mac: &str,
        dst_mac: &str,
        udp_checksum: bool,
        batch_size: u32,
        payload: Option<Vec<u8>>,
    ) -> PyResult<Self> {
        // Without a payload the default frame is a minimum-size one; with one, its length
        // follows from the payload unless a size is given (which must then agree).
        let size = size.unwrap_or(if payload.is_some() { 0 } else { 60 });
        let opts = LiveOptions {
            template: UdpTemplate {
                dst_mac: parse_mac(dst_mac, "dst_mac")?,
                src_mac: parse_mac(src_mac, "src_mac")?,
                src_ip: parse_ip(src_ip, "src_ip")?,
                dst_ip: parse_ip(dst_ip, "dst_ip")?,
                src_port,
                dst_port,
                size,
                udp_checksum,
            },
            flows,
            batch_size,
            payload,
        };
        let inner = py.detach(|| traffic::LiveGenerator::new(&opts)).py()?;
        Ok(LiveGenerator {
            inner: Arc::new(inner),
            bg: Mutex::new(None),
        })
    }

    /// The frame every run sends (before the per-flow source port).
    #[getter]
    fn frame(&self) -> Vec<u8> {
        self.inner.frame().to_vec()
    }

    /// Frame size in bytes (without the FCS).
    #[getter]
    fn size(&self) -> usize {
        self.inner.frame().len()
    }

    /// Distinct UDP source ports.
    #[getter]
    fn flows(&self) -> u32 {
        self.inner.options().flows
    }

    /// Why the program is not kept in the XDP dispatcher between calls (None normally).
    #[getter]
    fn keeper_note(&self) -> Option<String> {
        self.inner.keeper_note().map(str::to_string)
    }

    /// Whether the frame carries a UDP checksum (false when flows vary).
    #[getter]
    fn udp_checksum(&self) -> bool {
        self.inner.options().template.udp_checksum
    }

    /// Send until a limit is reached; returns packets, bytes, elapsed, pps, calls, interrupted.
    #[pyo3(signature = (ifname, netns=None, *, count=None, duration=None, rate=None, cpu=None, queue=0))]
    #[allow(clippy::too_many_arguments)]
    fn run<'py>(
        &self,
        py: Python<'py>,
        ifname: &str,
        netns: Option<String>,
        count: Option<u64>,
        duration: Option<f64>,
        rate: Option<f64>,
        cpu: Option<usize>,
        queue: u32,
    ) -> PyResult<Bound<'py, PyDict>> {
        let args = run_args(ifname, netns, count, duration, rate, cpu, queue)?;
        let gen = Arc::clone(&self.inner);
        let r = py.detach(|| args.run(&gen, None, None)).py()?;
        finish(py, &r)
    }

    /// Start sending in a background thread (until `stop()`, or a count/duration limit).
    /// Set-up errors (interface, namespace, CPU) are raised here.
    #[pyo3(signature = (ifname, netns=None, *, count=None, duration=None, rate=None, cpu=None, queue=0))]
    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        py: Python<'_>,
        ifname: &str,
        netns: Option<String>,
        count: Option<u64>,
        duration: Option<f64>,
        rate: Option<f64>,
        cpu: Option<usize>,
        queue: u32,
    ) -> PyResult<()> {
        let args = run_args(ifname, netns, count, duration, rate, cpu, queue)?;
        let mut bg = self.bg()?;
        if bg.is_some() {
            return Err(PyRuntimeError::new_err(
                "the generator is already running: call stop() or wait() first",
            ));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(AtomicBool::new(false));
        let gen = Arc::clone(&self.inner);
        let (s2, r2) = (Arc::clone(&stop), Arc::clone(&ready));
        let handle = std::thread::Builder::new()
            .name("kbx-live-gen".into())
            .spawn(move || args.run(&gen, Some(&s2), Some(&r2)))
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start a thread: {e}")))?;
        let task = Background { stop, handle };
        // Wait until sending began or the thread ended: a thread that ends without having
        // signalled `ready` failed in its set-up, and the error is raised here.
        let started = py.detach(|| loop {
            if ready.load(Ordering::Acquire) {
                return true;
            }
            if task.handle.is_finished() {
                return ready.load(Ordering::Acquire);
            }
            std::thread::sleep(Duration::from_millis(1));
        });
        if !started {
            let r = py.detach(|| task.join());
            return match r {
                Err(e) => Err(e).py(),
                Ok(_) => Err(PyRuntimeError::new_err(
                    "the generator thread ended without starting",
                )),
            };
        }
        *bg = Some(task);
        Ok(())
    }

    /// Whether a background run is in progress (false once it ended by itself).
    #[getter]
    fn running(&self) -> PyResult<bool> {
        Ok(self.bg()?.as_ref().is_some_and(|b| !b.handle.is_finished()))
    }

    /// Stop the background run and return its result.
    fn stop<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let task = self.bg()?.take().ok_or_else(|| {
            PyRuntimeError::new_err("the generator is not running: call start() first")
        })?;
        task.stop.store(true, Ordering::Relaxed);
        let r = py.detach(|| task.join()).py()?;
        finish(py, &r)
    }

    /// Wait for the background run to end by its own count/duration limit and return its
    /// result (TimeoutError after `timeout` seconds; the run keeps going).
    #[pyo3(signature = (timeout=None))]
    fn wait<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyDict>> {
        let timeout = seconds(timeout, "timeout")?;
        let mut bg = self.bg()?;
        let Some(task) = bg.as_ref() else {
            return Err(PyRuntimeError::new_err(
                "the generator is not running: call start() first",
            ));
        };
        let t0 = std::time::Instant::now();
        let done = py.detach(|| loop {
            if task.handle.is_finished() {
                return true;
            }
            if timeout.is_some_and(|t| t0.elapsed() >= t) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        });
        if !done {
            return Err(Error::Timeout(format!(
                "the generator is still running after {:.3} s: call stop() to end it",
                t0.elapsed().as_secs_f64()
            )))
            .py();
        }
        let task = bg
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("background run vanished"))?;
        drop(bg);
        let r = py.detach(|| task.join()).py()?;
        finish(py, &r)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        if let Some(task) = self.bg()?.take() {
            task.stop.store(true, Ordering::Relaxed);
            py.detach(|| task.join()).py()?;
        }
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let o = self.inner.options();
        format!(
            "LiveGenerator(size={}, flows={}, {}:{} -> {}:{})",
            self.inner.frame().len(),
            o.flows,
            o.template.src_ip,
            o.template.src_port,
            o.template.dst_ip,
            o.template.dst_port
        )
    }
}

impl Drop for LiveGenerator {
    fn drop(&mut self) {
        if let Ok(mut g) = self.bg.lock() {
            if let Some(task) = g.take() {
                task.stop.store(true, Ordering::Relaxed);
                let _ = task.join();
            }
        }
    }
}

/// The counting XDP_DROP program attached to an interface.
#[pyclass(module = "kbypass._core", frozen)]
pub struct DropCounter {
    inner: Mutex<traffic::DropCounter>,
    mode: &'static str,
    ifname: String,
}

impl DropCounter {
    fn lock(&self) -> PyResult<std::sync::MutexGuard<'_, traffic::DropCounter>> {
        self.inner
            .lock()
            .map_err(|_| PyRuntimeError::new_err("DropCounter lock poisoned"))
    }
}

fn counts_dict<'py>(py: Python<'py>, c: traffic::Counts) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("packets", c.packets)?;
    d.set_item("bytes", c.bytes)?;
    Ok(d)
}

#[pymethods]
impl DropCounter {
    #[new]
    #[pyo3(signature = (ifname, netns=None, mode="native", force=false))]
    fn new(
        py: Python<'_>,
        ifname: &str,
        netns: Option<String>,
        mode: &str,
        force: bool,
    ) -> PyResult<Self> {
        let mode: AttachMode = mode.parse().py()?;
        let inner = py
            .detach(|| traffic::DropCounter::attach(ifname, netns.as_deref(), mode, force))
            .py()?;
        Ok(DropCounter {
            mode: inner.mode().map_or("detached", |m| m.as_str()),
            ifname: ifname.to_string(),
            inner: Mutex::new(inner),
        })
    }

    /// The attach mode the kernel reports ("native" or "generic").
    #[getter]
    fn mode(&self) -> &'static str {
        self.mode
    }

    /// The interface.
    #[getter]
    fn ifname(&self) -> String {
        self.ifname.clone()
    }

    /// Whether the program is still attached.
    #[getter]
    fn attached(&self) -> PyResult<bool> {
        Ok(self.lock()?.is_attached())
    }

    /// Frames and bytes dropped so far: {"packets": int, "bytes": int}.
    fn read<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.lock()?.read().py()?;
        counts_dict(py, c)
    }

    /// Set the counters to zero.
    fn reset(&self) -> PyResult<()> {
        self.lock()?.reset().py()
    }

    /// Count for `duration` seconds from now: packets, bytes, elapsed, pps.
    fn measure<'py>(&self, py: Python<'py>, duration: f64) -> PyResult<Bound<'py, PyDict>> {
        let d = seconds(Some(duration), "duration")?.unwrap_or_default();
        let t = py
            .detach(|| match self.inner.lock() {
                Ok(g) => g.measure(d),
                Err(_) => Err(Error::State("DropCounter lock poisoned".into())),
            })
            .py()?;
        throughput_dict(py, &t)
    }

    /// Detach the program (idempotent; the counters stay readable).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| match self.inner.lock() {
            Ok(mut g) => g.detach(),
            Err(_) => Err(Error::State("DropCounter lock poisoned".into())),
        })
        .py()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> PyResult<String> {
        Ok(format!(
            "DropCounter(ifname={:?}, mode={:?}, attached={})",
            self.ifname,
            self.mode,
            if self.lock()?.is_attached() {
                "True"
            } else {
                "False"
            }
        ))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<LiveGenerator>()?;
    m.add_class::<DropCounter>()?;
    Ok(())
}
