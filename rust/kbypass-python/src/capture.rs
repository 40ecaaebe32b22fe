//! `kbypass._core.capture`: the Rust capture loop (pcap file or text lines), GIL released.

use std::fs::File;
use std::io::BufWriter;
use std::time::Duration;

use kbypass_core::capture::{
    capture as core_capture, CaptureConfig, CaptureLimits, CaptureSink, CaptureSummary, PcapSink,
    TextSink,
};
use kbypass_core::xdp::AttachMode;
use kbypass_core::xsk::{BindMode, Queues};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::errors::IntoPyResult;
use crate::xdp::filter_rules;

fn queues_arg(q: Option<&Bound<'_, PyAny>>) -> PyResult<Queues> {
    let Some(q) = q.filter(|q| !q.is_none()) else {
        return Ok(Queues::List(vec![0]));
    };
    if let Ok(s) = q.cast::<PyString>() {
        return match s.to_str()? {
            "all" => Ok(Queues::All),
            o => Err(PyValueError::new_err(format!(
                "queues={o:?}: give \"all\", a queue id, or a list of queue ids"
            ))),
        };
    }
    if let Ok(n) = q.extract::<u32>() {
        return Ok(Queues::List(vec![n]));
    }
    q.extract::<Vec<u32>>().map(Queues::List).map_err(|_| {
        PyTypeError::new_err("queues must be \"all\", a queue id, or a list of queue ids")
    })
}

fn summary_dict<'py>(py: Python<'py>, s: &CaptureSummary) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("packets", s.packets)?;
    d.set_item("bytes", s.bytes)?;
    d.set_item("elapsed", s.elapsed.as_secs_f64())?;
    d.set_item("pps", s.pps())?;
    d.set_item("stopped", s.reason.as_str())?;
    d.set_item("kernel_dropped", s.kernel_dropped())?;
    let k = PyDict::new(py);
    k.set_item("rx_dropped", s.kernel.rx_dropped)?;
    k.set_item("rx_invalid_descs", s.kernel.rx_invalid_descs)?;
    k.set_item("rx_ring_full", s.kernel.rx_ring_full)?;
    k.set_item(
        "rx_fill_ring_empty_descs",
        s.kernel.rx_fill_ring_empty_descs,
    )?;
    d.set_item("kernel", k)?;
    d.set_item("invalid_descs", s.invalid_descs)?;
    d.set_item("queues", s.queues.clone())?;
    d.set_item("xdp_mode", s.xdp_mode.as_str())?;
    d.set_item("mode", if s.zerocopy { "zerocopy" } else { "copy" })?;
    d.set_item("notes", s.notes.clone())?;
    Ok(d)
}

enum Out {
    Pcap(PcapSink<BufWriter<File>>),
    PcapStdout(PcapSink<BufWriter<std::io::Stdout>>),
    Text(TextSink<BufWriter<std::io::Stdout>>),
}

impl CaptureSink for Out {
    fn frame(&mut self, ts_ns: u64, frame: &[u8]) -> std::io::Result<()> {
        match self {
            Out::Pcap(s) => s.frame(ts_ns, frame),
            Out::PcapStdout(s) => s.frame(ts_ns, frame),
            Out::Text(s) => s.frame(ts_ns, frame),
        }
    }
    fn end_burst(&mut self) -> std::io::Result<()> {
        match self {
            Out::Pcap(s) => s.end_burst(),
            Out::PcapStdout(s) => s.end_burst(),
            Out::Text(s) => s.end_burst(),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Out::Pcap(s) => s.flush(),
            Out::PcapStdout(s) => s.flush(),
            Out::Text(s) => s.flush(),
        }
    }
}

fn open_output(write: Option<&str>, snaplen: u32) -> kbypass_core::Result<Out> {
    let io = |what: String, e: std::io::Error| {
        kbypass_core::Error::os(
            what,
            e.raw_os_error().unwrap_or(libc::EIO),
            "check the path and its directory's permissions",
        )
    };
    Ok(match write {
        None => Out::Text(TextSink::new(BufWriter::new(std::io::stdout()))),
        Some("-") => Out::PcapStdout(
            PcapSink::new(BufWriter::new(std::io::stdout()), snaplen, true)
                .map_err(|e| io("write the pcap header to stdout".into(), e))?,
        ),
        Some(path) => {
            let f = File::create(path).map_err(|e| io(format!("create {path}"), e))?;
            Out::Pcap(
                PcapSink::new(BufWriter::with_capacity(1 << 20, f), snaplen, false)
                    .map_err(|e| io(format!("write {path}"), e))?,
            )
        }
    })
}

/// Capture frames matching `filter` on `ifname` in a Rust loop with the GIL released; write them
/// to the pcap file `write` ("-": stdout) or print one line each (write=None). Returns the summary
/// dict. Ctrl-C stops the loop within ~50 ms; the file is flushed and the program detached, then
/// KeyboardInterrupt is raised (interrupt="raise") or the summary returned (interrupt="stop").
#[pyfunction]
#[pyo3(signature = (ifname, *, queues=None, filter=None, count=None, duration=None, write=None,
    snaplen=0, mode="auto", xdp_mode="auto", netns=None, frames=4096, batch=64, force=false,
    interrupt="raise"))]
#[allow(clippy::too_many_arguments)]
fn capture<'py>(
    py: Python<'py>,
    ifname: &str,
    queues: Option<&Bound<'py, PyAny>>,
    filter: Option<&Bound<'py, PyAny>>,
    count: Option<u64>,
    duration: Option<f64>,
    write: Option<&str>,
    snaplen: u32,
    mode: &str,
    xdp_mode: &str,
    netns: Option<&str>,
    frames: u32,
    batch: usize,
    force: bool,
    interrupt: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let raise = match interrupt {
        "raise" => true,
        "stop" => false,
        o => {
            return Err(PyValueError::new_err(format!(
                "interrupt={o:?}: use \"raise\" or \"stop\""
            )))
        }
    };
    let duration = match duration {
        Some(d) if !(d.is_finite() && d > 0.0) => {
            return Err(PyValueError::new_err(format!(
                "duration={d} must be a positive number of seconds"
            )))
        }
        d => d.map(Duration::from_secs_f64),
    };
    let cfg = CaptureConfig {
        queues: queues_arg(queues)?,
        rules: filter_rules(filter)?,
        mode: mode.parse::<BindMode>().py()?,
        attach: xdp_mode.parse::<AttachMode>().py()?,
        frames,
        batch,
        netns: netns.map(str::to_string),
        force,
    };
    // Signal handlers run only on the main thread: elsewhere the loop never takes the GIL.
    let threading = py.import("threading")?;
    let on_main = threading
        .call_method0("main_thread")?
        .is(&threading.call_method0("current_thread")?);
    let mut out = open_output(write, snaplen).py()?;
    let ifname = ifname.to_string();
    let mut pending: Option<PyErr> = None;
    let result = py.detach(|| {
        let limits = CaptureLimits {
            count,
            duration,
            stop: None,
        };
        let mut interrupted = || {
            on_main
                && Python::attach(|py| match py.check_signals() {
                    Ok(()) => false,
                    Err(e) => {
                        pending = Some(e);
                        true
                    }
                })
        };
        core_capture(&ifname, &cfg, &limits, &mut out, &mut interrupted)
    });
    drop(out);
    let summary = result.py()?;
    if let (true, Some(e)) = (raise, pending) {
        return Err(e);
    }
    summary_dict(py, &summary)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(capture, m)?)?;
    Ok(())
}
