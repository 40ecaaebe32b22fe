//! `kbypass.XdpPort` and what every Python handle on a port shares (`PortHandle`): the core's
//! `SharedPort` (UMEM + a socket per queue + program + attachment), opened from one config
//! value built from the keyword arguments `XdpPort` and `XdpSocket` share.
//!
//! Every call takes the port's mutex *inside* `py.detach`, never with the GIL, and holds it for
//! at most one slice of a wait (`SIGNAL_CHECK`), so a thread blocked in `recv(timeout=…)`
//! neither stalls other Python threads nor delays Ctrl-C.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kbypass_core::xdp::AttachMode;
use kbypass_core::xsk::{
    BindMode, BusyPoll, FrameAccount, PortConfig, PortProgram, Queues, SharedPort, SocketConfig,
    TxMetadataMode, UmemConfig, XskPort, XskSocket,
};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyTuple};

use crate::errors::IntoPyResult;
use crate::mem::region_options;
use crate::views::UmemMemory;
use crate::xdp::{filter_rules, filter_text};
use crate::xdp_table::XdpTable;
use crate::xsk::PyXdpSocket;

/// How long a wait with the GIL released (and the port's mutex held) lasts before it comes
/// back to check for signals (Ctrl-C) and let other threads at the port.
pub const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// State shared by the sockets of one port.
pub struct PortHandle {
    pub(crate) port: Arc<SharedPort>,
    /// Where Python reaches the UMEM's frames.
    pub(crate) memory: UmemMemory,
    pub(crate) ifname: String,
    pub(crate) queues: Vec<u32>,
    pub(crate) zerocopy: Vec<bool>,
    pub(crate) xdp_mode: String,
    pub(crate) notes: Vec<String>,
    pub(crate) tier: &'static str,
    pub(crate) tx_oversize: AtomicU64,
    pub(crate) auto_released: AtomicU64,
    /// Set by `close`: read without the mutex (with the GIL held) by `closed`.
    closed: AtomicBool,
}

impl PortHandle {
    /// Run `f` on socket `i` with the GIL released.
    pub(crate) fn with_socket<T: Send>(
        &self,
        py: Python<'_>,
        i: usize,
        f: impl FnOnce(&mut XskSocket) -> kbypass_core::Result<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            let mut g = self.port.lock();
            let port = g.as_mut().ok_or_else(closed)?;
            let s = port.socket_mut(i).ok_or_else(in_use)?;
            f(s)
        })
        .py()
    }

    pub(crate) fn close(&self) {
        // Dropping the port detaches the program, clears the XSKMAP, closes sockets and UMEM.
        self.port.close();
        self.closed.store(true, Ordering::Release);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Run `f` on socket `i` on a helper thread while this one waits without the GIL and
    /// checks signals every `SIGNAL_CHECK`: on Ctrl-C `f`'s stop flag is set, `f` winds down,
    /// and the signal's exception is raised. For loops that hold the socket for long.
    pub(crate) fn with_socket_interruptible<T: Send>(
        self: &Arc<Self>,
        py: Python<'_>,
        i: usize,
        f: impl FnOnce(&mut XskSocket, &AtomicBool) -> kbypass_core::Result<T> + Send,
    ) -> PyResult<T> {
        let stop = AtomicBool::new(false);
        let mut pending: Option<PyErr> = None;
        let joined = std::thread::scope(|sc| {
            let h = sc.spawn(|| {
                let mut g = self.port.lock();
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

/// The keyword arguments `XdpSocket` and `XdpPort` share, as given.
pub(crate) struct PortArgs<'a, 'py> {
    pub(crate) mode: &'a str,
    pub(crate) filter: Option<&'a Bound<'py, PyAny>>,
    pub(crate) frames: u32,
    pub(crate) frame_size: u32,
    pub(crate) hugepages: &'a str,
    pub(crate) busy_poll: bool,
    pub(crate) xdp_mode: &'a str,
    pub(crate) force: bool,
    pub(crate) need_wakeup: bool,
    pub(crate) multi_buffer: bool,
    pub(crate) ring_size: u32,
    pub(crate) headroom: u32,
    /// TX metadata: None (off), "offload" or "kernel" (`XDP_UMEM_TX_SW_CSUM`).
    pub(crate) tx_metadata: Option<&'a str>,
    /// True (the port's own program, from `filter`), False (none) or an `XdpTable`.
    pub(crate) program: Option<&'a Bound<'py, PyAny>>,
}

/// The `XdpTable` behind `obj`: the extension's class, or an object whose
/// `__kbypass_table__()` returns one (`kbypass.XdpTable`).
fn table_of<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, XdpTable>>> {
    if let Ok(t) = obj.cast::<XdpTable>() {
        return Ok(Some(t.clone()));
    }
    if !obj.hasattr("__kbypass_table__")? {
        return Ok(None);
    }
    let t = obj.call_method0("__kbypass_table__")?;
    let t = t.cast_into::<XdpTable>().map_err(|_| {
        PyTypeError::new_err("__kbypass_table__() must return a kbypass._core.XdpTable")
    })?;
    Ok(Some(t))
}

/// The core's TX metadata mode for `tx_metadata=`.
fn tx_metadata_mode(v: Option<&str>) -> PyResult<TxMetadataMode> {
    match v {
        None => Ok(TxMetadataMode::Off),
        Some("offload") => Ok(TxMetadataMode::Offload),
        Some("kernel") => Ok(TxMetadataMode::KernelSoftware),
        Some(o) => Err(PyValueError::new_err(format!(
            "tx_metadata={o:?}: give None (checksums in software), \"offload\" (the driver completes them) or \"kernel\" (the kernel completes them in software, XDP_UMEM_TX_SW_CSUM)"
        ))),
    }
}

impl PortArgs<'_, '_> {
    /// The core's port configuration (every value is checked by the core when the port opens).
    pub(crate) fn config(&self) -> PyResult<PortConfig> {
        Ok(PortConfig {
            umem: UmemConfig {
                frames: self.frames,
                frame_size: self.frame_size,
                headroom: self.headroom,
                region: region_options(self.hugepages, None, "bind", true)?,
                tx_metadata: tx_metadata_mode(self.tx_metadata)?,
            },
            socket: SocketConfig {
                rx_size: self.ring_size,
                tx_size: self.ring_size,
                fill_size: self.ring_size,
                comp_size: self.ring_size,
                mode: self.mode.parse::<BindMode>().py()?,
                need_wakeup: self.need_wakeup,
                busy_poll: self.busy_poll.then(BusyPoll::default),
                multi_buffer: self.multi_buffer,
                tx_budget: None,
                bind_retry: Duration::from_secs(2),
            },
            program: self.program()?,
            attach: self.xdp_mode.parse::<AttachMode>().py()?,
            force: self.force,
        })
    }

    fn program(&self) -> PyResult<PortProgram> {
        let Some(p) = self.program.filter(|p| !p.is_none()) else {
            return Ok(PortProgram::Own(filter_rules(self.filter)?));
        };
        if p.is_instance_of::<PyBool>() {
            if p.is_truthy()? {
                return Ok(PortProgram::Own(filter_rules(self.filter)?));
            }
            if filter_text(self.filter)?.is_some() {
                return Err(PyValueError::new_err(
                    "filter= is for the port's own program, and program=False opens none: drop filter=, or give program=True",
                ));
            }
            return Ok(PortProgram::External);
        }
        let Some(t) = table_of(p)? else {
            return Err(PyTypeError::new_err(format!(
                "program must be True (the port's own program), False (none) or an XdpTable, not {}",
                p.get_type().name()?
            )));
        };
        if filter_text(self.filter)?.is_some() {
            return Err(PyValueError::new_err(
                "filter= is for the port's own program; with program=table the table's entries decide: add the filter as an entry, e.g. table.add(filter, \"allow\")",
            ));
        }
        Ok(PortProgram::Table(t.get().table()?))
    }
}

/// Open `ifname`'s `queues` as `cfg` says (without the GIL) and describe the port for Python.
pub(crate) fn open_port(
    py: Python<'_>,
    ifname: &str,
    queues: Queues,
    cfg: PortConfig,
) -> PyResult<Arc<PortHandle>> {
    let name = ifname.to_string();
    let port = py
        .detach(move || XskPort::open(&name, &queues, &cfg))
        .py()?;
    let umem = port.umem();
    Ok(Arc::new(PortHandle {
        memory: UmemMemory::of(umem),
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
        notes: port
            .notes()
            .into_iter()
            .chain(umem.notes().iter().cloned())
            .collect(),
        tier: umem.tier().name(),
        tx_oversize: AtomicU64::new(0),
        auto_released: AtomicU64::new(0),
        closed: AtomicBool::new(false),
        port: Arc::new(SharedPort::new(port)),
    }))
}

/// One AF_XDP socket per queue of an interface, sharing one UMEM and one XDP program.
///
/// `program`: None or True, the port's own program (frames `filter` matches); False, none
/// (another owner's XSKMAP routes to the sockets); an `XdpTable`, the table's program: the
/// sockets join its XSKMAP, it is attached while the port is open unless it already runs on
/// the interface, and the port keeps it alive (never closes it) until `close()`.
///
/// Example:
///     >>> with XdpPort("eth0", queues="all", filter="udp") as port:
///     ...     for sock in port.sockets:
///     ...         batch = sock.recv(max=64)
///     ...         batch.release()
///     >>> with XdpPort("eth0", program=table) as port:  # the table's "allow" frames
///     ...     pass
#[pyclass(name = "XdpPort", module = "kbypass._core", frozen)]
pub struct PyXdpPort {
    pub(crate) handle: Arc<PortHandle>,
}

#[pymethods]
impl PyXdpPort {
    #[new]
    #[pyo3(signature = (ifname, queues=None, mode="auto", filter=None, frames=None, frame_size=2048,
        hugepages="auto", busy_poll=false, *, xdp_mode="auto", force=false, need_wakeup=true,
        multi_buffer=false, ring_size=2048, headroom=0, program=None, tx_metadata=None))]
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
        program: Option<&Bound<'_, PyAny>>,
        tx_metadata: Option<&str>,
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
        let args = PortArgs {
            mode,
            filter,
            frames: frames.unwrap_or((4096 * n).min(1 << 16)),
            frame_size,
            hugepages,
            busy_poll,
            xdp_mode,
            force,
            need_wakeup,
            multi_buffer,
            ring_size,
            headroom,
            tx_metadata,
            program,
        };
        let handle = open_port(py, ifname, q, args.config()?)?;
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

/// A frame accounting as a dict: free, rx_side, app, held, tx_side, total, balanced.
pub(crate) fn account_dict<'py>(py: Python<'py>, a: &FrameAccount) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("free", a.free)?;
    d.set_item("rx_side", a.rx_side)?;
    d.set_item("app", a.app)?;
    d.set_item("held", a.held)?;
    d.set_item("tx_side", a.tx_side)?;
    d.set_item("total", a.total)?;
    d.set_item("balanced", a.balanced())?;
    Ok(d)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyXdpPort>()?;
    Ok(())
}
