//! `kbypass.XdpSocket`, `kbypass.XdpPort`, `kbypass.RxBatch`: AF_XDP for Python.
//!
//! A Python socket is a handle on one socket of a core `XskPort` (UMEM + sockets + program +
//! attachment). Every call takes the port's mutex *inside* `py.detach`, so a thread blocked in
//! `recv(timeout=…)` never holds the GIL and never deadlocks another thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kbypass_core::mem::HugeRegion;
use kbypass_core::packet::parse;
use kbypass_core::sys::xdp::{XdpDesc, XDP_PKT_CONTD};
use kbypass_core::traffic::xsk::{rx_drop, tx_flood};
use kbypass_core::traffic::{StopWhen, Throughput};
use kbypass_core::xdp::{parse_filter, AttachMode, Rule};
use kbypass_core::xsk::{
    BindMode, BusyPoll, PortConfig, Queues, SocketConfig, UmemConfig, XskPort, XskSocket,
};
use numpy::ndarray::ArrayView1;
use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::errors::IntoPyResult;
use crate::mem::{region_options, RegionMemory};

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
            let s = port.socket_mut(i).ok_or_else(|| {
                kbypass_core::Error::State("this socket is in use by a running Pipeline".into())
            })?;
            f(s)
        })
        .py()
    }

    fn close(&self) {
        // Dropping the port detaches the program, clears the XSKMAP, closes sockets and UMEM.
        let port = self.lock().take();
        drop(port);
    }
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
    /// holding the GIL; returns an empty batch on timeout.
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
        let descs = self.handle.with_socket(py, self.index, |s| {
            let mut d = vec![XdpDesc::default(); max];
            let mut n = s.recv(&mut d);
            if n == 0 {
                if let Some(w) = wait {
                    let deadline = std::time::Instant::now() + w;
                    while n == 0 {
                        let left = deadline.saturating_duration_since(std::time::Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        s.wait_rx(left.min(Duration::from_millis(100)))?;
                        n = s.recv(&mut d);
                    }
                }
            }
            d.truncate(n);
            Ok(d)
        })?;
        Ok(PyRxBatch {
            handle: Arc::clone(&self.handle),
            index: self.index,
            descs,
            released: AtomicBool::new(false),
        })
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
            .with_socket(py, self.index, |s| rx_drop(s, batch, when))?;
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
            .with_socket(py, self.index, move |s| tx_flood(s, &frame, count, batch))?;
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
        self.handle.lock().is_none()
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
        self.handle.lock().is_none()
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
/// `send()`), after which the frames are recycled and indexing raises.
///
/// Views you took stay readable memory after release (they keep the UMEM mapped) but the
/// kernel may overwrite their contents: copy what you keep (`bytes(batch[i])`).
#[pyclass(name = "RxBatch", module = "kbypass._core", frozen)]
pub struct PyRxBatch {
    handle: Arc<PortHandle>,
    index: usize,
    descs: Vec<XdpDesc>,
    released: AtomicBool,
}

impl PyRxBatch {
    fn check(&self) -> PyResult<()> {
        if self.released.load(Ordering::Acquire) {
            return Err(PyRuntimeError::new_err(
                "this batch was released: its frames are recycled; copy data you need before release()",
            ));
        }
        Ok(())
    }

    fn view<'py>(&self, py: Python<'py>, d: &XdpDesc) -> PyResult<Bound<'py, PyArray1<u8>>> {
        let base = self.handle.region.as_ptr();
        let start = self.handle.pool_off + d.addr as usize;
        if start + d.len as usize > self.handle.region.len() {
            return Err(PyRuntimeError::new_err("descriptor outside the UMEM"));
        }
        let owner = Bound::new(py, RegionMemory::new(Arc::clone(&self.handle.region)))?;
        // SAFETY: start..start+len lies inside the region (checked above), which `owner` (the
        // array's base) keeps mapped; the frame belongs to the application until release.
        let v = unsafe { ArrayView1::from_shape_ptr(d.len as usize, base.add(start).cast_const()) };
        // SAFETY: as above.
        Ok(unsafe { PyArray1::borrow_from_array(&v, owner.into_any()) })
    }

    fn do_release(&self) -> usize {
        if self.released.swap(true, Ordering::AcqRel) {
            return 0;
        }
        let addrs: Vec<u64> = self.descs.iter().map(|d| d.addr).collect();
        let mut g = self.handle.lock();
        match g.as_mut().and_then(|p| p.socket_mut(self.index)) {
            Some(s) => s.release(&addrs),
            None => 0,
        }
    }
}

#[pymethods]
impl PyRxBatch {
    fn __len__(&self) -> usize {
        self.descs.len()
    }

    /// A zero-copy uint8 view of frame `i`'s packet bytes.
    fn __getitem__<'py>(&self, py: Python<'py>, i: isize) -> PyResult<Bound<'py, PyArray1<u8>>> {
        self.check()?;
        let n = self.descs.len() as isize;
        let j = if i < 0 { i + n } else { i };
        if !(0..n).contains(&j) {
            return Err(pyo3::exceptions::PyIndexError::new_err(format!(
                "frame {i} out of range for a batch of {n}"
            )));
        }
        self.view(py, &self.descs[j as usize])
    }

    /// Zero-copy views of every frame.
    fn frames<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.check()?;
        let views = self
            .descs
            .iter()
            .map(|d| self.view(py, d))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, views)
    }

    /// Parsed header columns, one record per frame (NumPy structured array with
    /// `kbypass.packet.META_DTYPE`), computed in Rust without copying the frames.
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.check()?;
        let descs = self.descs.clone();
        let bytes = py
            .detach(|| {
                let g = self.handle.lock();
                let port = g.as_ref().ok_or_else(closed)?;
                let s = port.socket(self.index).ok_or_else(|| {
                    kbypass_core::Error::State("this socket is in use by a running Pipeline".into())
                })?;
                let mut out = vec![0u8; descs.len() * 64];
                for (d, rec) in descs.iter().zip(out.chunks_exact_mut(64)) {
                    let m = match s.app_ptr(d.addr, d.len) {
                        // SAFETY: app_ptr checked that the range lies in a frame the application
                        // holds; nobody writes it while we read.
                        Some(p) => parse(unsafe { std::slice::from_raw_parts(p, d.len as usize) }),
                        None => Default::default(),
                    };
                    rec.copy_from_slice(&m.to_bytes());
                }
                Ok::<_, kbypass_core::Error>(out)
            })
            .py()?;
        let raw = PyArray1::from_vec(py, bytes);
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
        self.released.load(Ordering::Acquire)
    }

    /// Give the frames back for receiving. Idempotent; returns how many were released.
    fn release(&self, py: Python<'_>) -> usize {
        py.detach(|| self.do_release())
    }

    /// Transmit the frames (as they are now, e.g. after editing them in place) out of the same
    /// socket; frames where `mask` is False are released instead. Returns how many were queued.
    #[pyo3(signature = (mask=None))]
    fn send(&self, py: Python<'_>, mask: Option<PyReadonlyArray1<'_, bool>>) -> PyResult<usize> {
        self.check()?;
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
        if self.released.swap(true, Ordering::AcqRel) {
            return Err(PyRuntimeError::new_err("this batch was already released"));
        }
        let descs = self.descs.clone();
        self.handle.with_socket(py, self.index, move |s| {
            let mut tx = Vec::with_capacity(descs.len());
            let mut keep = Vec::new();
            for (i, d) in descs.iter().enumerate() {
                if m.as_ref().is_none_or(|m| m[i]) {
                    tx.push(*d);
                } else {
                    keep.push(d.addr);
                }
            }
            let q = s.send(&tx);
            let mut back: Vec<u64> = tx[q..].iter().map(|d| d.addr).collect();
            back.extend(keep);
            s.release(&back);
            s.complete();
            Ok(q)
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
        // A batch dropped without release gives its frames back, counted, so none is lost.
        if !self.released.load(Ordering::Acquire) && !self.descs.is_empty() {
            let n = self.do_release();
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
