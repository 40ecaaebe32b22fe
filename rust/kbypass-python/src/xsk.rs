//! `kbypass.XdpSocket`, `kbypass.XdpPort`, `kbypass.RxBatch`: AF_XDP for Python.
//!
//! A Python socket is a handle on one socket of a core `XskPort` (UMEM + sockets + program +
//! attachment). Every call takes the port's mutex *inside* `py.detach`, never with the GIL,
//! and holds it for at most one slice of a wait (`SIGNAL_CHECK`), so a thread blocked in
//! `recv(timeout=…)` neither stalls other Python threads nor delays Ctrl-C. Received frames
//! are held (`FrameHold`) by their `RxBatch` and by every view taken from it, so releasing a
//! batch or dropping it needs no lock and never lets a view see a recycled frame.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kbypass_core::mem::HugeRegion;
use kbypass_core::packet::parse;
use kbypass_core::sys::xdp::{XdpDesc, XDP_PKT_CONTD};
use kbypass_core::traffic::xsk::{rx_drop, tx_flood};
use kbypass_core::traffic::{StopWhen, Throughput};
use kbypass_core::xdp::{parse_filter, AttachMode, Rule};
use kbypass_core::xsk::{
    BindMode, BusyPoll, FrameHold, PortConfig, Queues, SocketConfig, UmemConfig, XskPort, XskSocket,
};
use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::errors::IntoPyResult;
use crate::mem::region_options;
use crate::views::FrameView;

/// How long a wait with the GIL released (and the port's mutex held) lasts before it comes
/// back to check for signals (Ctrl-C) and let other threads at the port.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// State shared by the sockets of one port.
pub struct PortHandle {
    pub(crate) port: Mutex<Option<XskPort>>,
    pub(crate) region: Arc<HugeRegion>,
    /// Offset of the UMEM's frame 0 inside `region` (fixed for the port's life).
    pub(crate) pool_off: usize,
    pub(crate) ifname: String,
    pub(crate) queues: Vec<u32>,
    zerocopy: Vec<bool>,
    xdp_mode: String,
    notes: Vec<String>,
    frame_size: u32,
    frames: u32,
    tier: &'static str,
    tx_oversize: AtomicU64,
    auto_released: AtomicU64,
    /// Set by `close`: read without the mutex (with the GIL held) by `closed`.
    closed: AtomicBool,
}

impl PortHandle {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Option<XskPort>> {
        self.port.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `f` on socket `i` with the GIL released.
    fn with_socket<T: Send>(
        &self,
        py: Python<'_>,
        i: usize,
        f: impl FnOnce(&mut XskSocket) -> kbypass_core::Result<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            let mut g = self.lock();
            let port = g.as_mut().ok_or_else(closed)?;
            let s = port.socket_mut(i).ok_or_else(in_use)?;
            f(s)
        })
        .py()
    }

    fn close(&self) {
        // Dropping the port detaches the program, clears the XSKMAP, closes sockets and UMEM.
        let port = self.lock().take();
        self.closed.store(true, Ordering::Release);
        drop(port);
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Run `f` on socket `i` on a helper thread while this one waits without the GIL and
    /// checks signals every `SIGNAL_CHECK`: on Ctrl-C `f`'s stop flag is set, `f` winds down,
    /// and the signal's exception is raised. For loops that hold the socket for long.
    fn with_socket_interruptible<T: Send>(
        self: &Arc<Self>,
        py: Python<'_>,
        i: usize,
        f: impl FnOnce(&mut XskSocket, &AtomicBool) -> kbypass_core::Result<T> + Send,
    ) -> PyResult<T> {
        let stop = AtomicBool::new(false);
        let mut pending: Option<PyErr> = None;
        let joined = std::thread::scope(|sc| {
            let h = sc.spawn(|| {
                let mut g = self.lock();
                let port = g.as_mut().ok_or_else(closed)?;
                let s = port.socket_mut(i).ok_or_else(in_use)?;
                f(s, &stop)
            });
            loop {
                let done = py.detach(|| {
                    let end = Instant::now() + SIGNAL_CHECK;
                    while !h.is_finished() && Instant::now() < end {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    h.is_finished()
                });
                if done {
                    break;
                }
                if pending.is_none() {
                    if let Err(e) = py.check_signals() {
                        pending = Some(e);
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            }
            h.join()
        });
        if let Some(e) = pending {
            return Err(e);
        }
        joined
            .map_err(|_| PyRuntimeError::new_err("the socket loop's thread panicked"))?
            .py()
    }
}

fn in_use() -> kbypass_core::Error {
    kbypass_core::Error::State("this socket is in use by a running Pipeline".into())
}

fn closed() -> kbypass_core::Error {
    kbypass_core::Error::State("the AF_XDP socket is closed: open a new one".into())
}

fn filter_rules(filter: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<Rule>> {
    let Some(f) = filter else {
        return Ok(Vec::new());
    };
    if f.is_none() {
        return Ok(Vec::new());
    }
    let text = if let Ok(s) = f.cast::<PyString>() {
        s.to_str()?.to_string()
    } else if let Ok(items) = f.try_iter() {
        let mut parts = Vec::new();
        for item in items {
            parts.push(item?.str()?.to_str()?.to_string());
        }
        if parts.is_empty() {
            return Err(PyValueError::new_err(
                "filter is an empty list: pass None to redirect everything, or at least one Rule",
            ));
        }
        parts.join(" or ")
    } else {
        return Err(PyTypeError::new_err(
            "filter must be a string like 'udp dst port 9000', a Rule, a list of Rules, or None",
        ));
    };
    if f.cast::<PyString>().is_err() && text.is_empty() {
        return Err(PyValueError::new_err("filter is empty"));
    }
    parse_filter(&text).py()
}

#[allow(clippy::too_many_arguments)]
fn open_port(
    py: Python<'_>,
    ifname: &str,
    queues: Queues,
    mode: &str,
    filter: Option<&Bound<'_, PyAny>>,
    frames: u32,
    frame_size: u32,
    hugepages: &str,
    busy_poll: bool,
    xdp_mode: &str,
    force: bool,
    need_wakeup: bool,
    multi_buffer: bool,
    ring_size: u32,
    headroom: u32,
    program: bool,
) -> PyResult<Arc<PortHandle>> {
    let rules = filter_rules(filter)?;
    let attach = match xdp_mode {
        "auto" => AttachMode::Auto,
        "native" | "drv" => AttachMode::Native,
        "generic" | "skb" => AttachMode::Generic,
        o => {
            return Err(PyValueError::new_err(format!(
                "xdp_mode={o:?}: use \"auto\", \"native\" or \"generic\""
            )))
        }
    };
    let cfg = PortConfig {
        umem: UmemConfig {
            frames,
            frame_size,
            headroom,
            region: region_options(hugepages, None, "bind", true)?,
        },
        socket: SocketConfig {
            rx_size: ring_size,
            tx_size: ring_size,
            fill_size: ring_size,
            comp_size: ring_size,
            mode: mode.parse::<BindMode>().py()?,
            need_wakeup,
            busy_poll: busy_poll.then(BusyPoll::default),
            multi_buffer,
            tx_budget: None,
            bind_retry: Duration::from_secs(2),
        },
        rules,
        attach,
        force,
        program,
    };
    let name = ifname.to_string();
    let port = py
        .detach(move || XskPort::open(&name, &queues, &cfg))
        .py()?;
    let umem = Arc::clone(port.umem());
    Ok(Arc::new(PortHandle {
        region: Arc::clone(umem.pool().region()),
        pool_off: umem.pool().base() as usize - umem.pool().region().as_ptr() as usize,
        ifname: ifname.to_string(),
        queues: port.queues().to_vec(),
        zerocopy: (0..port.len())
            .map(|i| port.socket(i).is_some_and(|s| s.zerocopy()))
            .collect(),
        xdp_mode: port
            .xdp_mode()
            .map(|m| m.as_str())
            .unwrap_or("detached")
            .to_string(),
        notes: port.notes(),
        frame_size: umem.frame_size(),
        frames: umem.frames(),
        tier: umem.tier().name(),
        tx_oversize: AtomicU64::new(0),
        auto_released: AtomicU64::new(0),
        closed: AtomicBool::new(false),
        port: Mutex::new(Some(port)),
    }))
}

fn throughput_dict<'py>(py: Python<'py>, t: &Throughput) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("packets", t.packets)?;
    d.set_item("bytes", t.bytes)?;
    d.set_item("elapsed", t.elapsed.as_secs_f64())?;
    d.set_item("pps", t.pps())?;
    Ok(d)
}

/// An AF_XDP socket on one interface queue, with its own UMEM and XDP program.
///
/// Frames matching `filter` (all frames when None) arrive on the socket; everything else goes to
/// the kernel as usual. Open it inside the interface's network namespace. Needs root
/// (CAP_NET_ADMIN, CAP_BPF, CAP_IPC_LOCK).
///
/// Example:
///     >>> with XdpSocket("eth0", queue=0, filter="udp dst port 9000") as sock:
///     ...     with sock.recv(max=64, timeout=1.0) as batch:
///     ...         for i in range(len(batch)):
///     ...             print(bytes(batch[i][:14]).hex())
#[pyclass(name = "XdpSocket", module = "kbypass._core", frozen)]
pub struct PyXdpSocket {
    handle: Arc<PortHandle>,
    index: usize,
}

#[pymethods]
impl PyXdpSocket {
    #[new]
    #[pyo3(signature = (ifname, queue=0, mode="auto", filter=None, frames=4096, frame_size=2048,
        hugepages="auto", busy_poll=false, *, xdp_mode="auto", force=false, need_wakeup=true,
        multi_buffer=false, ring_size=2048, headroom=0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        ifname: &str,
        queue: u32,
        mode: &str,
        filter: Option<&Bound<'_, PyAny>>,
        frames: u32,
        frame_size: u32,
        hugepages: &str,
        busy_poll: bool,
        xdp_mode: &str,
        force: bool,
        need_wakeup: bool,
        multi_buffer: bool,
        ring_size: u32,
        headroom: u32,
    ) -> PyResult<Self> {
        let handle = open_port(
            py,
            ifname,
            Queues::List(vec![queue]),
            mode,
            filter,
            frames,
            frame_size,
            hugepages,
            busy_poll,
            xdp_mode,
            force,
            need_wakeup,
            multi_buffer,
            ring_size,
            headroom,
            true,
        )?;
        Ok(PyXdpSocket { handle, index: 0 })
    }

    /// Receive up to `max` frames. With `timeout` (seconds), wait for the first one without
    /// holding the GIL (Ctrl-C interrupts the wait); returns an empty batch on timeout.
    #[pyo3(signature = (max=64, timeout=None))]
    fn recv(&self, py: Python<'_>, max: usize, timeout: Option<f64>) -> PyResult<PyRxBatch> {
        if max == 0 || max > 4096 {
            return Err(PyValueError::new_err(format!("max={max} must be 1..=4096")));
        }
        let wait = match timeout {
            Some(t) if !(0.0..=86_400.0).contains(&t) => {
                return Err(PyValueError::new_err(
                    "timeout must be between 0 and 86400 seconds",
                ))
            }
            Some(t) => Some(Duration::from_secs_f64(t)),
            None => None,
        };
        let deadline = wait.map(|w| Instant::now() + w);
        loop {
            // One slice: receive, else wait up to SIGNAL_CHECK and receive again. The port's
            // mutex is held for the slice only, the GIL not at all.
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let got = self.handle.with_socket(py, self.index, |s| {
                let mut d = vec![XdpDesc::default(); max];
                let mut n = s.recv(&mut d);
                if n == 0 {
                    if let Some(l) = left.filter(|l| !l.is_zero()) {
                        s.wait_rx(l.min(SIGNAL_CHECK))?;
                        n = s.recv(&mut d);
                    }
                }
                d.truncate(n);
                // Every frame of the batch is held from now on: no lock is needed to give it
                // back, and no view of it can outlive its hold.
                let mut holds = Vec::with_capacity(n);
                let mut descs = Vec::with_capacity(n);
                for x in d {
                    match s.hold(x.addr) {
                        Some(h) => {
                            holds.push(h);
                            descs.push(x);
                        }
                        None => debug_assert!(false, "a received frame could not be held"),
                    }
                }
                Ok((descs, holds))
            })?;
            let expired = deadline.is_none_or(|d| Instant::now() >= d);
            if !got.0.is_empty() || expired {
                return Ok(PyRxBatch {
                    handle: Arc::clone(&self.handle),
                    index: self.index,
                    descs: got.0,
                    holds: Mutex::new(Some(got.1)),
                });
            }
            py.check_signals()?;
        }
    }

    /// Send packets (a list of bytes-like objects, or a 2-D uint8 array with `lengths`), each
    /// copied into a free frame. Returns how many were queued; packets larger than a frame are
    /// skipped and counted in `stats()["tx_oversize"]`.
    #[pyo3(signature = (packets, lengths=None))]
    fn send(
        &self,
        py: Python<'_>,
        packets: &Bound<'_, PyAny>,
        lengths: Option<PyReadonlyArray1<'_, u32>>,
    ) -> PyResult<usize> {
        let data: Vec<Vec<u8>> = if let Ok(arr) = packets.extract::<PyReadonlyArray2<'_, u8>>() {
            let a = arr.as_array();
            let lens: Vec<u32> = match &lengths {
                Some(l) => l.as_slice()?.to_vec(),
                None => vec![a.ncols() as u32; a.nrows()],
            };
            if lens.len() != a.nrows() {
                return Err(PyValueError::new_err("lengths must have one entry per row"));
            }
            a.rows()
                .into_iter()
                .zip(&lens)
                .map(|(r, &l)| r.iter().take(l as usize).copied().collect())
                .collect()
        } else if let Ok(b) = buf_bytes(py, packets) {
            vec![b]
        } else if let Ok(list) = packets.try_iter() {
            let mut v = Vec::new();
            for p in list {
                v.push(buf_bytes(py, &p?).map_err(|_| {
                    PyTypeError::new_err(
                        "each packet must be bytes, bytearray, memoryview or a 1-D uint8 array",
                    )
                })?);
            }
            v
        } else {
            return Err(PyTypeError::new_err(
                "packets must be bytes, a list of bytes-like objects, or a 2-D uint8 array",
            ));
        };
        let handle = Arc::clone(&self.handle);
        let (sent, oversize) = self.handle.with_socket(py, self.index, move |s| {
            let cap = s.umem().tx_capacity() as usize;
            let (ok, big): (Vec<&Vec<u8>>, Vec<&Vec<u8>>) =
                data.iter().partition(|p| !p.is_empty() && p.len() <= cap);
            let mut sent = 0usize;
            let mut addrs = vec![0u64; 64];
            for chunk in ok.chunks(64) {
                s.complete();
                let got = s.alloc(&mut addrs[..chunk.len()]);
                let mut descs = Vec::with_capacity(got);
                for (p, &a) in chunk.iter().zip(&addrs[..got]) {
                    let ptr = s.app_ptr(a, p.len() as u32).ok_or_else(|| {
                        kbypass_core::Error::State("allocated frame not held".into())
                    })?;
                    // SAFETY: app_ptr checked that p.len() bytes at `a` lie in a frame the
                    // application holds exclusively.
                    unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), ptr, p.len()) };
                    descs.push(XdpDesc {
                        addr: a,
                        len: p.len() as u32,
                        options: 0,
                    });
                }
                let q = s.send(&descs);
                if q < got {
                    s.release(&addrs[q..got]);
                }
                sent += q;
                if q < chunk.len() {
                    break;
                }
            }
            Ok((sent, big.len()))
        })?;
        handle
            .tx_oversize
            .fetch_add(oversize as u64, Ordering::Relaxed);
        Ok(sent)
    }

    /// Reap transmitted frames back to the pool; returns how many.
    fn complete(&self, py: Python<'_>) -> PyResult<usize> {
        self.handle
            .with_socket(py, self.index, |s| Ok(s.complete()))
    }

    /// Receive and drop in a Rust loop (the GIL released) for `duration` seconds or `count`
    /// packets; returns {packets, bytes, elapsed, pps}.
    #[pyo3(signature = (duration=None, count=None, batch=64, idle=None))]
    fn rx_drop<'py>(
        &self,
        py: Python<'py>,
        duration: Option<f64>,
        count: Option<u64>,
        batch: usize,
        idle: Option<f64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        if duration.is_none() && count.is_none() {
            return Err(PyValueError::new_err(
                "give duration (seconds) or count (packets)",
            ));
        }
        let when = StopWhen {
            count,
            duration: duration.map(Duration::from_secs_f64),
            idle: Duration::from_secs_f64(idle.unwrap_or(3600.0)),
            stop: None,
        };
        let t = self
            .handle
            .with_socket_interruptible(py, self.index, move |s, stop| {
                rx_drop(
                    s,
                    batch,
                    StopWhen {
                        stop: Some(stop),
                        ..when
                    },
                )
            })?;
        throughput_dict(py, &t)
    }

    /// Send `count` copies of `frame` in a Rust loop (the GIL released); returns
    /// {packets, bytes, elapsed, pps}.
    #[pyo3(signature = (frame, count, batch=64))]
    fn tx_flood<'py>(
        &self,
        py: Python<'py>,
        frame: &[u8],
        count: u64,
        batch: usize,
    ) -> PyResult<Bound<'py, PyDict>> {
        let frame = frame.to_vec();
        let t = self
            .handle
            .with_socket_interruptible(py, self.index, move |s, stop| {
                tx_flood(s, &frame, count, batch, Some(stop))
            })?;
        throughput_dict(py, &t)
    }

    /// Counters: ours (rx/tx packets and bytes, completions, fill-ring empty, invalid
    /// descriptors, ring full, wake-ups), the kernel's XDP_STATISTICS, and frame accounting.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (c, k, a) = self.handle.with_socket(py, self.index, |s| {
            Ok((s.counters(), s.kernel_stats()?, s.account()))
        })?;
        let d = PyDict::new(py);
        d.set_item("rx_packets", c.rx_packets)?;
        d.set_item("rx_descs", c.rx_descs)?;
        d.set_item("rx_bytes", c.rx_bytes)?;
        d.set_item("tx_packets", c.tx_packets)?;
        d.set_item("tx_bytes", c.tx_bytes)?;
        d.set_item("tx_completions", c.tx_completions)?;
        d.set_item("fill_empty", c.fill_empty)?;
        d.set_item("invalid_descs", c.invalid_descs)?;
        d.set_item("tx_ring_full", c.tx_ring_full)?;
        d.set_item(
            "tx_oversize",
            self.handle.tx_oversize.load(Ordering::Relaxed),
        )?;
        d.set_item(
            "auto_released",
            self.handle.auto_released.load(Ordering::Relaxed),
        )?;
        d.set_item("rx_wakeups", c.rx_wakeups)?;
        d.set_item("tx_wakeups", c.tx_wakeups)?;
        d.set_item("kernel_rx_dropped", k.rx_dropped)?;
        d.set_item("kernel_rx_invalid_descs", k.rx_invalid_descs)?;
        d.set_item("kernel_tx_invalid_descs", k.tx_invalid_descs)?;
        d.set_item("kernel_rx_ring_full", k.rx_ring_full)?;
        d.set_item("kernel_rx_fill_ring_empty", k.rx_fill_ring_empty_descs)?;
        d.set_item("kernel_tx_ring_empty", k.tx_ring_empty_descs)?;
        d.set_item("frames_free", a.free)?;
        d.set_item("frames_rx_side", a.rx_side)?;
        d.set_item("frames_app", a.app)?;
        d.set_item("frames_held", a.held)?;
        d.set_item("frames_tx_side", a.tx_side)?;
        d.set_item("frames_total", a.total)?;
        Ok(d)
    }

    /// Check that every frame is in exactly one place; returns the counts or raises
    /// RuntimeError saying where they differ.
    fn check_accounting<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let a = self
            .handle
            .with_socket(py, self.index, |s| s.check_accounting())?;
        let d = PyDict::new(py);
        d.set_item("free", a.free)?;
        d.set_item("rx_side", a.rx_side)?;
        d.set_item("app", a.app)?;
        d.set_item("held", a.held)?;
        d.set_item("tx_side", a.tx_side)?;
        d.set_item("total", a.total)?;
        Ok(d)
    }

    /// The socket's file descriptor (for select/poll).
    fn fileno(&self, py: Python<'_>) -> PyResult<i32> {
        self.handle.with_socket(py, self.index, |s| Ok(s.raw_fd()))
    }

    /// Interface name.
    #[getter]
    fn ifname(&self) -> &str {
        &self.handle.ifname
    }

    /// Queue id.
    #[getter]
    fn queue(&self) -> u32 {
        self.handle.queues[self.index]
    }

    /// "zerocopy" or "copy": what the bind got.
    #[getter]
    fn mode(&self) -> &'static str {
        if self.handle.zerocopy[self.index] {
            "zerocopy"
        } else {
            "copy"
        }
    }

    /// "native" or "generic": how the XDP program is attached.
    #[getter]
    fn xdp_mode(&self) -> &str {
        &self.handle.xdp_mode
    }

    /// Fallbacks taken while opening (zero-copy refused, native XDP refused, …).
    #[getter]
    fn notes(&self) -> Vec<String> {
        self.handle.notes.clone()
    }

    /// Bytes per UMEM frame.
    #[getter]
    fn frame_size(&self) -> u32 {
        self.handle.frame_size
    }

    /// Frames in the UMEM.
    #[getter]
    fn frames(&self) -> u32 {
        self.handle.frames
    }

    /// Page tier of the UMEM: "1g", "2m", "thp" or "4k".
    #[getter]
    fn tier(&self) -> &'static str {
        self.handle.tier
    }

    /// Whether the socket (its port) is closed.
    #[getter]
    fn closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Detach the program, close the socket(s) and free the UMEM. Idempotent. Views of frames
    /// stay valid memory (they hold the UMEM's memory) but are no longer meaningful.
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.handle.close());
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "XdpSocket({:?}, queue={}, mode={:?}, xdp_mode={:?}, frames={}, frame_size={})",
            self.handle.ifname,
            self.queue(),
            self.mode(),
            self.handle.xdp_mode,
            self.handle.frames,
            self.handle.frame_size
        )
    }
}

/// One AF_XDP socket per queue of an interface, sharing one UMEM and one XDP program.
///
/// Example:
///     >>> with XdpPort("eth0", queues="all", filter="udp") as port:
///     ...     for sock in port.sockets:
///     ...         batch = sock.recv(max=64)
///     ...         batch.release()
#[pyclass(name = "XdpPort", module = "kbypass._core", frozen)]
pub struct PyXdpPort {
    pub(crate) handle: Arc<PortHandle>,
}

#[pymethods]
impl PyXdpPort {
    #[new]
    #[pyo3(signature = (ifname, queues=None, mode="auto", filter=None, frames=None, frame_size=2048,
        hugepages="auto", busy_poll=false, *, xdp_mode="auto", force=false, need_wakeup=true,
        multi_buffer=false, ring_size=2048, headroom=0, program=true))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        ifname: &str,
        queues: Option<&Bound<'_, PyAny>>,
        mode: &str,
        filter: Option<&Bound<'_, PyAny>>,
        frames: Option<u32>,
        frame_size: u32,
        hugepages: &str,
        busy_poll: bool,
        xdp_mode: &str,
        force: bool,
        need_wakeup: bool,
        multi_buffer: bool,
        ring_size: u32,
        headroom: u32,
        program: bool,
    ) -> PyResult<Self> {
        let q = match queues {
            None => Queues::All,
            Some(q) if q.extract::<String>().is_ok_and(|s| s == "all") => Queues::All,
            Some(q) => Queues::List(q.extract::<Vec<u32>>().map_err(|_| {
                PyTypeError::new_err("queues must be \"all\" or a list of queue ids")
            })?),
        };
        let n = match &q {
            Queues::All => 4,
            Queues::List(l) => l.len().max(1) as u32,
        };
        let frames = frames.unwrap_or((4096 * n).min(1 << 16));
        let handle = open_port(
            py,
            ifname,
            q,
            mode,
            filter,
            frames,
            frame_size,
            hugepages,
            busy_poll,
            xdp_mode,
            force,
            need_wakeup,
            multi_buffer,
            ring_size,
            headroom,
            program,
        )?;
        Ok(PyXdpPort { handle })
    }

    /// One XdpSocket per queue, in queue order.
    #[getter]
    fn sockets(&self) -> Vec<PyXdpSocket> {
        (0..self.handle.queues.len())
            .map(|index| PyXdpSocket {
                handle: Arc::clone(&self.handle),
                index,
            })
            .collect()
    }

    /// Queue ids.
    #[getter]
    fn queues(&self) -> Vec<u32> {
        self.handle.queues.clone()
    }

    /// "native" or "generic".
    #[getter]
    fn xdp_mode(&self) -> &str {
        &self.handle.xdp_mode
    }

    /// Interface name.
    #[getter]
    fn ifname(&self) -> &str {
        &self.handle.ifname
    }

    /// Whether the port is closed.
    #[getter]
    fn closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Close every socket, detach the program, free the UMEM. Idempotent.
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.handle.close());
    }

    fn __len__(&self) -> usize {
        self.handle.queues.len()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> bool {
        self.close(py);
        false
    }
}

/// Frames received by one `recv()`: zero-copy views, owned by you until `release()` (or
/// `send()`), after which indexing raises.
///
/// The batch holds its frames, and so does every view taken from it: a frame goes back to the
/// pool when the batch is released *and* its last view is gone, so a view you keep never shows
/// another packet. `send()` transmits a frame as it is, or, if a view of it is still alive, a
/// copy (the view keeps the original). A batch dropped unreleased gives its frames back
/// (counted in `stats()["auto_released"]`); none of this takes a lock.
#[pyclass(name = "RxBatch", module = "kbypass._core", frozen)]
pub struct PyRxBatch {
    handle: Arc<PortHandle>,
    index: usize,
    descs: Vec<XdpDesc>,
    /// One hold per frame; None once released or sent.
    holds: Mutex<Option<Vec<FrameHold>>>,
}

impl PyRxBatch {
    fn lock(&self) -> MutexGuard<'_, Option<Vec<FrameHold>>> {
        self.holds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The holds, cloned (None once released).
    fn holds(&self) -> PyResult<Vec<FrameHold>> {
        self.lock().clone().ok_or_else(|| {
            PyRuntimeError::new_err(
                "this batch was released: its frames are recycled; copy data you need before release() (views taken before stay valid)",
            )
        })
    }

    fn view<'py>(
        &self,
        py: Python<'py>,
        d: &XdpDesc,
        hold: FrameHold,
    ) -> PyResult<Bound<'py, PyArray1<u8>>> {
        let owner = Bound::new(
            py,
            FrameView::new(
                Arc::clone(&self.handle.region),
                self.handle.pool_off,
                Some(hold),
            ),
        )?;
        FrameView::array(&owner, d.addr, d.len)
    }

    /// Drop the holds: each frame goes back to the pool as soon as no view of it is left. No
    /// lock, no GIL needed (a few atomic operations per frame).
    fn do_release(&self) -> usize {
        self.lock().take().map_or(0, |h| h.len())
    }
}

#[pymethods]
impl PyRxBatch {
    fn __len__(&self) -> usize {
        self.descs.len()
    }

    /// A zero-copy uint8 view of frame `i`'s packet bytes (holds the frame while it lives).
    fn __getitem__<'py>(&self, py: Python<'py>, i: isize) -> PyResult<Bound<'py, PyArray1<u8>>> {
        let n = self.descs.len() as isize;
        let j = if i < 0 { i + n } else { i };
        let hold = {
            let g = self.lock();
            let Some(holds) = g.as_ref() else {
                drop(g);
                return Err(self
                    .holds()
                    .err()
                    .unwrap_or_else(|| PyRuntimeError::new_err("this batch was released")));
            };
            if !(0..n).contains(&j) {
                return Err(pyo3::exceptions::PyIndexError::new_err(format!(
                    "frame {i} out of range for a batch of {n}"
                )));
            }
            holds[j as usize].clone()
        };
        self.view(py, &self.descs[j as usize], hold)
    }

    /// Zero-copy views of every frame.
    fn frames<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let views = self
            .holds()?
            .into_iter()
            .zip(&self.descs)
            .map(|(h, d)| self.view(py, d, h))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, views)
    }

    /// Parsed header columns, one record per frame (NumPy structured array with
    /// `kbypass.packet.META_DTYPE`), computed in Rust without copying the frames.
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let holds = self.holds()?;
        let mut out = vec![0u8; self.descs.len() * 64];
        for ((d, h), rec) in self.descs.iter().zip(&holds).zip(out.chunks_exact_mut(64)) {
            let m = h.bytes(d.addr, d.len).map(parse).unwrap_or_default();
            rec.copy_from_slice(&m.to_bytes());
        }
        let raw = PyArray1::from_vec(py, out);
        let dtype = py.import("kbypass.packet")?.getattr("META_DTYPE")?;
        raw.call_method1("view", (dtype,))
    }

    /// UMEM addresses of the frames (uint64).
    #[getter]
    fn addrs<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        PyArray1::from_iter(py, self.descs.iter().map(|d| d.addr))
    }

    /// Packet lengths (uint32).
    #[getter]
    fn lengths<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u32>> {
        PyArray1::from_iter(py, self.descs.iter().map(|d| d.len))
    }

    /// Whether each descriptor continues in the next one (multi-buffer packets).
    #[getter]
    fn continued<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<bool>> {
        PyArray1::from_iter(
            py,
            self.descs.iter().map(|d| d.options & XDP_PKT_CONTD != 0),
        )
    }

    /// Whether the frames were released.
    #[getter]
    fn released(&self) -> bool {
        self.lock().is_none()
    }

    /// Give the frames back for receiving (each as soon as no view of it is left): straight
    /// to the socket's FILL ring, so it stays topped up. Idempotent; returns how many were
    /// released.
    fn release(&self, py: Python<'_>) -> usize {
        let Some(holds) = self.lock().take() else {
            return 0;
        };
        let index = self.index;
        py.detach(|| {
            match self
                .handle
                .lock()
                .as_mut()
                .and_then(|p| p.socket_mut(index))
            {
                Some(s) => s.release_holds(holds),
                // Closed, or a Pipeline has the socket: the frames go back to the pool.
                None => holds.len(),
            }
        })
    }

    /// Transmit the frames (as they are now, e.g. after editing them in place) out of the same
    /// socket; frames where `mask` is False are released instead. A frame a view still holds
    /// is sent as a copy (the view keeps the original). Returns how many were queued.
    #[pyo3(signature = (mask=None))]
    fn send(&self, py: Python<'_>, mask: Option<PyReadonlyArray1<'_, bool>>) -> PyResult<usize> {
        let m = match &mask {
            Some(m) => {
                let s = m.as_slice()?.to_vec();
                if s.len() != self.descs.len() {
                    return Err(PyValueError::new_err("mask must have one entry per frame"));
                }
                Some(s)
            }
            None => None,
        };
        let Some(holds) = self.lock().take() else {
            return Err(PyRuntimeError::new_err(
                "this batch was already released or sent",
            ));
        };
        let items: Vec<(FrameHold, XdpDesc)> = holds
            .into_iter()
            .zip(self.descs.iter().copied())
            .enumerate()
            .filter(|(i, _)| m.as_ref().is_none_or(|m| m[*i]))
            .map(|(_, x)| x)
            .collect();
        self.handle.with_socket(py, self.index, move |s| {
            let r = s.send_holds(items);
            s.complete();
            Ok(r.queued)
        })
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> bool {
        self.release(py);
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "RxBatch({} frames{})",
            self.descs.len(),
            if self.released() { ", released" } else { "" }
        )
    }
}

impl Drop for PyRxBatch {
    fn drop(&mut self) {
        // A batch dropped without release gives its frames back, counted, so none is lost. No
        // lock and no GIL needed: dropping holds is a few atomic operations.
        let n = self.do_release();
        if n > 0 {
            self.handle
                .auto_released
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// The bytes of any object exporting a byte buffer (bytes, bytearray, memoryview, uint8 array).
fn buf_bytes(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let b = pyo3::buffer::PyBuffer::<u8>::get(obj)?;
    b.to_vec(py)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyXdpSocket>()?;
    m.add_class::<PyXdpPort>()?;
    m.add_class::<PyRxBatch>()?;
    Ok(())
}
