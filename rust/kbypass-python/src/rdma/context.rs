//! `Context`: an open RDMA device, or the user-space RoCEv2 engine on an interface queue.

use std::net::IpAddr;

use kbypass_core::rdma::{self, EngineOptions, Progress};
use kbypass_core::xsk::BusyPoll;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::args::seconds;
use super::cq::CompletionQueue;
use super::device::Port;
use super::interrupt;
use super::pd::ProtectionDomain;
use super::resource::{self, owner, Owner, Resource};
use crate::errors::IntoPyResult;

/// An open RDMA device.
#[pyclass(module = "kbypass._core.rdma", extends = Resource)]
pub struct Context {
    inner: Option<rdma::Context>,
}
owner!(Context, rdma::Context);

/// The engine options ``Context.userspace`` takes from Python.
#[allow(clippy::too_many_arguments)]
fn options(
    progress: &str,
    cpu: Option<usize>,
    frames: u32,
    frame_size: u32,
    ring_size: u32,
    bind: &str,
    attach: &str,
    force: bool,
    neigh_timeout: f64,
    spin: f64,
    busy_poll: bool,
) -> PyResult<EngineOptions> {
    if !(spin >= 0.0 && spin.is_finite()) {
        return Err(PyValueError::new_err(format!(
            "spin must be >= 0 seconds (0: the poll thread sleeps at once), got {spin}"
        )));
    }
    if progress == "caller" && spin > 0.0 {
        return Err(PyValueError::new_err(
            "spin= is how long the engine's poll thread polls before it sleeps: use it with \
             progress='thread'",
        ));
    }
    let progress = match progress {
        "thread" => Progress::Thread { cpu },
        "caller" if cpu.is_none() => Progress::Caller,
        "caller" => {
            return Err(PyValueError::new_err(
                "cpu= pins the engine's poll thread: use it with progress='thread'",
            ))
        }
        _ => {
            return Err(PyValueError::new_err(format!(
                "progress is 'thread' (the engine's poll thread) or 'caller' (CQ polls run the \
                 engine), not {progress:?}"
            )))
        }
    };
    Ok(EngineOptions {
        progress,
        frames,
        frame_size,
        ring_size,
        bind: bind.parse().py()?,
        attach: attach.parse().py()?,
        force,
        neigh_timeout: seconds(neigh_timeout)?,
        spin: seconds(spin)?,
        busy_poll: busy_poll.then(BusyPoll::default),
    })
}

#[pymethods]
impl Context {
    /// Open the device called `name` (the first libibverbs device when None; the name of an
    /// open user-space context, ``kbx-<interface>``, gives another handle to it);
    /// FileNotFoundError names the devices there are, or the packages to install without
    /// libibverbs.
    #[new]
    #[pyo3(signature = (name = None))]
    fn new(py: Python<'_>, name: Option<String>) -> PyResult<PyClassInitializer<Self>> {
        let ctx = py.detach(|| rdma::Context::open(name.as_deref())).py()?;
        let track = ctx.is_userspace();
        Ok(resource::initializer_tracking(
            Context { inner: Some(ctx) },
            track,
        ))
    }

    /// RDMA without kernel RDMA: open kbypass's user-space RoCEv2 engine on `queue` of
    /// `interface` for `ip` (an address of the interface; IPv4 or IPv6), inside network
    /// namespace `netns` (an ``ip netns`` name or a path) when given. It speaks rxe's wire
    /// protocol (UDP 4791), so it talks to rxe and RDMA NICs; the XDP program it attaches
    /// redirects only RoCE for `ip`, the kernel keeps everything else. Named
    /// ``kbx-<interface>`` and listed by ``devices()`` while open.
    ///
    /// Options: `progress` ``'thread'`` (a poll thread of the engine's own, pinned to `cpu`
    /// when given) or ``'caller'`` (CQ polls and waits run the engine); `frames`,
    /// `frame_size` and `ring_size` of the AF_XDP socket; `bind` (``'auto'``, ``'copy'``,
    /// ``'zerocopy'``) and `attach` (``'auto'``, ``'native'``, ``'generic'``) modes; `force`
    /// replaces another XDP program; `neigh_timeout` (seconds) bounds resolving a peer's
    /// MAC address; `spin` (seconds) is how long the poll thread goes on polling after its
    /// last work before it sleeps (no wake-up for traffic that comes back within it, that
    /// much CPU after it stops); `busy_poll` turns the kernel's busy polling on for the
    /// socket (``SO_PREFER_BUSY_POLL``, ``SO_BUSY_POLL`` 20 µs, budget 64: an empty receive
    /// runs the queue's NAPI work in the polling thread) and keeps the poll thread from ever
    /// sleeping (a whole CPU; with ``progress='caller'`` the caller's polls do it); a refusal
    /// is in ``notes``. Retries for two seconds while the queue is busy (an engine closing on
    /// it); Ctrl-C (KeyboardInterrupt) stops that wait, and the one for a peer's MAC address
    /// (``connect``, ``create_ah``). ``close()`` closes every object made from it first and
    /// releases the engine.
    ///
    /// Example::
    ///
    ///     with rdma.Context.userspace("veth0", ip="198.18.0.1", netns="ns-a") as ctx:
    ///         pd, cq = ctx.alloc_pd(), ctx.create_cq(64)
    #[staticmethod]
    #[pyo3(signature = (interface, queue = 0, *, ip, netns = None, progress = "thread", cpu = None, frames = 4096, frame_size = 4096, ring_size = 1024, bind = "auto", attach = "auto", force = false, neigh_timeout = 3.0, spin = 0.0, busy_poll = false))]
    #[allow(clippy::too_many_arguments)]
    fn userspace(
        py: Python<'_>,
        interface: &str,
        queue: u32,
        ip: &str,
        netns: Option<&str>,
        progress: &str,
        cpu: Option<usize>,
        frames: u32,
        frame_size: u32,
        ring_size: u32,
        bind: &str,
        attach: &str,
        force: bool,
        neigh_timeout: f64,
        spin: f64,
        busy_poll: bool,
    ) -> PyResult<Py<Context>> {
        let ip: IpAddr = ip.parse().map_err(|_| {
            PyValueError::new_err(format!(
                "ip={ip:?} is not an IP address: give the interface's IPv4 or IPv6 address"
            ))
        })?;
        let opts = options(
            progress,
            cpu,
            frames,
            frame_size,
            ring_size,
            bind,
            attach,
            force,
            neigh_timeout,
            spin,
            busy_poll,
        )?;
        let ctx = interrupt::detach(py, |c| {
            rdma::Context::userspace_with(interface, queue, ip, netns, &opts, c)
        })?;
        let init = resource::initializer_tracking(Context { inner: Some(ctx) }, true);
        Py::new(py, init)
    }

    /// The device's name, e.g. ``rxe0`` (``kbx-<interface>`` for a user-space context).
    #[getter]
    fn name(&self) -> PyResult<String> {
        Ok(self.get()?.name().to_string())
    }

    /// True for kbypass's user-space RoCEv2 engine (``Context.userspace``).
    #[getter]
    fn is_userspace(&self) -> PyResult<bool> {
        Ok(self.get()?.is_userspace())
    }

    /// The interface a user-space context runs on (None for a libibverbs device).
    #[getter]
    fn interface(&self) -> PyResult<Option<String>> {
        Ok(self.get()?.interface().map(str::to_string))
    }

    /// Notes from opening a user-space engine (XDP attach-mode or copy-mode fallbacks).
    #[getter]
    fn notes(&self) -> PyResult<Vec<String>> {
        Ok(self.get()?.notes())
    }

    /// The asynchronous events a libibverbs device reported (``ibv_get_async_event``), counted
    /// by type as rdma-core names it without ``IBV_EVENT_`` (``SRQ_LIMIT_REACHED``,
    /// ``QP_FATAL``, ``QP_LAST_WQE_REACHED``, ``PORT_ERR``, ...) since the context was opened;
    /// pending events are read and acknowledged first. An SRQ's limit event also reaches its
    /// ``limit_reached()``. Empty for a user-space engine, which raises none (its SRQs report
    /// their limit through ``limit_reached()``, its errors arrive as work completions).
    fn async_events<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let counts = self.get()?.async_events().py()?;
        let d = PyDict::new(py);
        for (k, v) in counts {
            d.set_item(k, v)?;
        }
        Ok(d)
    }

    /// A user-space engine's counters: packets and bytes in and out, and every frame it
    /// dropped or refused, by reason (``bad_icrc``, ``malformed``, ``wrong_qpn``,
    /// ``retransmits``, ``cq_overflows``, ...). OSError (EOPNOTSUPP) for a libibverbs device.
    fn engine_counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.get()?.engine_counters().py()?;
        let d = PyDict::new(py);
        for (k, v) in [
            ("rx_packets", c.rx_packets),
            ("rx_bytes", c.rx_bytes),
            ("tx_packets", c.tx_packets),
            ("tx_bytes", c.tx_bytes),
            ("bad_icrc", c.bad_icrc),
            ("malformed", c.malformed),
            ("not_for_us", c.not_for_us),
            ("wrong_qpn", c.wrong_qpn),
            ("bad_state", c.bad_state),
            ("transport_dropped", c.transport_dropped),
            ("dropped_no_frame", c.dropped_no_frame),
            ("retransmits", c.retransmits),
            ("go_backs", c.go_backs),
            ("rnr_naks_received", c.rnr_naks_received),
            ("rnr_naks_sent", c.rnr_naks_sent),
            ("naks_sent", c.naks_sent),
            ("duplicates", c.duplicates),
            ("out_of_sequence", c.out_of_sequence),
            ("uc_aborted", c.uc_aborted),
            ("cq_overflows", c.cq_overflows),
        ] {
            d.set_item(k, v)?;
        }
        Ok(d)
    }

    /// The attributes of `port` (ports count from 1).
    #[pyo3(signature = (port = 1))]
    fn query_port(&self, port: u8) -> PyResult<Port> {
        Ok(self.get()?.query_port(port).py()?.into())
    }

    /// The GID index used by default: the first IPv4-mapped RoCEv2 GID, else the first
    /// non-zero one (a user-space context has one: index 0).
    #[pyo3(signature = (port = 1))]
    fn default_gid_index(&self, port: u8) -> PyResult<i32> {
        self.get()?.default_gid_index(port).py()
    }

    /// The GID at `index` (the default index when None) as an IPv6-style string.
    #[pyo3(signature = (port = 1, index = None))]
    fn gid(&self, port: u8, index: Option<i32>) -> PyResult<String> {
        let ctx = self.get()?;
        let i = match index {
            Some(i) => i,
            None => ctx.default_gid_index(port).py()?,
        };
        Ok(ctx.query_gid(port, i).py()?.to_string())
    }

    /// Allocate a protection domain.
    fn alloc_pd(slf: &Bound<'_, Self>) -> PyResult<Py<ProtectionDomain>> {
        let py = slf.py();
        let ctx = slf.borrow().get()?.clone();
        let pd = ProtectionDomain::new(py, ctx.alloc_pd().py()?, ctx, slf.clone().unbind())?;
        resource::adopt(slf.as_any(), pd.bind(py).as_any())?;
        Ok(pd)
    }

    /// A completion queue of at least `entries` entries; ``channel=True`` gives it a completion
    /// channel, which ``wait()`` sleeps on.
    #[pyo3(signature = (entries = 256, channel = false))]
    fn create_cq(
        slf: &Bound<'_, Self>,
        entries: i32,
        channel: bool,
    ) -> PyResult<Py<CompletionQueue>> {
        let py = slf.py();
        let ctx = slf.borrow().get()?.clone();
        let ch = if channel {
            Some(ctx.create_comp_channel().py()?)
        } else {
            None
        };
        let cq = CompletionQueue::new(py, ctx.create_cq(entries, ch.as_ref()).py()?)?;
        resource::adopt(slf.as_any(), cq.bind(py).as_any())?;
        Ok(cq)
    }
}
