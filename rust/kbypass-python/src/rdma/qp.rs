//! `QueuePair`: state changes, connection set-up (by endpoint, the tools' TCP exchanges or the
//! connection manager) and posting.

use std::net::SocketAddr;
use std::time::Duration;

use kbypass_core::rdma::cm::CmConnection as Cm;
use kbypass_core::rdma::oob::{self, RemoteBuffer};
use kbypass_core::rdma::perftest::Test;
use kbypass_core::rdma::{
    self, Access, Cancel, Endpoint as CoreEndpoint, Gid, PathParams, QpType, SendFlags, SendOp,
};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::ah::AddressHandle;
use super::args::{self, seconds, socket_addr};
use super::context::Context;
use super::cq::CompletionQueue;
use super::endpoint::{endpoint, endpoint_with, CmConnection, Endpoint};
use super::interrupt;
use super::mr::{gather, MemoryRegion, SgItem};
use super::perf;
use super::recv::{self, ReceiveQueue};
use super::resource::Owner;
use crate::errors::IntoPyResult;

/// `send` with both `imm` and `invalidate_rkey`.
const INV_WITH_IMM: &str = "a send carries imm or invalidate_rkey, not both (they share the \
     work request's 32-bit field, as in ibv_send_wr): drop one";
/// `send` with `invalidate_rkey` on UD.
const INV_ON_UD: &str = "a UD send cannot invalidate a key (SEND with invalidate is RC only): \
     drop invalidate_rkey, or send on a connected RC QP";

/// `Cm::connect` or `Cm::accept`.
type CmExchange =
    fn(&rdma::QueuePair, SocketAddr, Access, Duration, &Cancel<'_>) -> kbypass_core::Result<Cm>;

/// A queue pair.
#[pyclass(module = "kbypass._core.rdma", extends = ReceiveQueue)]
pub struct QueuePair {
    inner: Option<rdma::QueuePair>,
    /// Its context, core and Python (as a PD's), let go of on ``close()``.
    ctx: Option<(rdma::Context, Py<Context>)>,
}
impl Owner for QueuePair {
    type Core = rdma::QueuePair;
    fn slot(&self) -> &Option<rdma::QueuePair> {
        &self.inner
    }
    fn slot_mut(&mut self) -> &mut Option<rdma::QueuePair> {
        &mut self.inner
    }
    fn on_release(&mut self) {
        self.ctx = None;
    }
}

impl QueuePair {
    pub fn new(
        py: Python<'_>,
        qp: rdma::QueuePair,
        ctx: rdma::Context,
        ctx_obj: Py<Context>,
    ) -> PyResult<Py<Self>> {
        let qp = QueuePair {
            inner: Some(qp),
            ctx: Some((ctx, ctx_obj)),
        };
        Py::new(py, recv::initializer(qp))
    }

    /// The core context, or the closed error.
    pub(super) fn ctx(&self) -> PyResult<&rdma::Context> {
        self.get()?;
        let c = self.ctx.as_ref().map(|c| &c.0);
        c.ok_or_else(|| PyRuntimeError::new_err("this QueuePair is closed"))
    }

    fn params(&self, port: u8, gid_index: Option<i32>) -> PyResult<PathParams> {
        args::path(self.ctx()?, port, gid_index)
    }

    fn local(&self, p: &PathParams, psn: u32) -> PyResult<CoreEndpoint> {
        let port = p.port;
        Ok(CoreEndpoint {
            qpn: self.get()?.qp_num(),
            psn: psn & 0xff_ffff,
            gid: self.ctx()?.query_gid(port, i32::from(p.sgid_index)).py()?,
            lid: self.ctx()?.query_port(port).py()?.lid,
        })
    }

    fn init_if_reset(&self, p: &PathParams, access: Access) -> PyResult<()> {
        let qp = self.get()?;
        if qp.state().py()? == 0 {
            qp.to_init(p, access).py()?;
        }
        Ok(())
    }

    /// What the tools' TCP exchanges start from (port 1): the timeout, the path (for reads
    /// and atomics with the device's outstanding-read limit), this QP's endpoint; the QP is
    /// brought to INIT (all access rights) unless it left RESET already.
    pub(super) fn tool_exchange(
        &self,
        reads: bool,
        psn: u32,
        timeout: f64,
        gid_index: Option<i32>,
    ) -> PyResult<(Duration, PathParams, CoreEndpoint)> {
        let t = seconds(timeout)?;
        let mut p = self.params(1, gid_index)?;
        if reads {
            p.max_rd_atomic = rdma::perftest::out_reads(self.ctx()?).py()?;
        }
        let local = self.local(&p, psn)?;
        self.init_if_reset(&p, Access::ALL)?;
        Ok((t, p, local))
    }

    /// ``cm_connect``/``cm_accept``: one connection-manager exchange, GIL released, Ctrl-C
    /// honoured.
    fn cm(
        &self,
        py: Python<'_>,
        exchange: CmExchange,
        host: &str,
        port: u16,
        timeout: f64,
        access: i32,
    ) -> PyResult<Py<CmConnection>> {
        let (t, addr, qp) = (seconds(timeout)?, socket_addr(host, port)?, self.get()?);
        let c = interrupt::detach(py, |c| exchange(qp, addr, Access(access), t, c))?;
        CmConnection::new(py, c)
    }

    #[allow(clippy::too_many_arguments)]
    fn post(
        &self,
        mr: &MemoryRegion,
        offset: usize,
        length: Option<usize>,
        wr_id: u64,
        op: SendOp<'_>,
        signaled: bool,
        inline: bool,
        sg: Option<Vec<SgItem<'_>>>,
    ) -> PyResult<()> {
        let more = sg.unwrap_or_default();
        let sges = gather(mr, offset, length, &more)?;
        let mut flags = SendFlags::default();
        if signaled {
            flags = flags | SendFlags::SIGNALED;
        }
        if inline {
            flags = flags | SendFlags::INLINE;
        }
        self.get()?.post_send(wr_id, op, &sges, flags).py()
    }
}

#[pymethods]
impl QueuePair {
    /// The context this queue pair was created on.
    fn context(&self, py: Python<'_>) -> PyResult<Py<Context>> {
        self.get()?;
        let c = self.ctx.as_ref().map(|c| c.1.clone_ref(py));
        c.ok_or_else(|| PyRuntimeError::new_err("this QueuePair is closed"))
    }

    /// The QP number.
    #[getter]
    fn qp_num(&self) -> PyResult<u32> {
        Ok(self.get()?.qp_num())
    }

    /// This QP's endpoint for the peer (GID of the default or given index); with `mr`, it
    /// also carries that region's rkey, address and length for the peer's RDMA operations.
    #[pyo3(signature = (psn = 0, port = 1, gid_index = None, mr = None))]
    fn endpoint(
        &self,
        psn: u32,
        port: u8,
        gid_index: Option<i32>,
        mr: Option<&MemoryRegion>,
    ) -> PyResult<Endpoint> {
        let p = self.params(port, gid_index)?;
        let local = self.local(&p, psn)?;
        let buf = match mr {
            Some(m) => {
                let m = m.get()?;
                RemoteBuffer {
                    addr: m.addr(),
                    rkey: m.rkey(),
                    length: m.len() as u64,
                }
            }
            None => RemoteBuffer::default(),
        };
        Ok(endpoint_with(&local, &buf))
    }

    /// RESET→INIT (port, access rights), so receives can be posted before connecting.
    #[pyo3(signature = (port = 1, access = 15))]
    fn init(&self, port: u8, access: i32) -> PyResult<()> {
        let p = PathParams {
            port,
            ..Default::default()
        };
        self.get()?.to_init(&p, Access(access)).py()
    }

    /// Server side of ``ibv_rc_pingpong``'s TCP exchange: listen on `port`, read the client's
    /// endpoint, bring this QP to RTS towards it, answer with ours, wait for "done". Returns
    /// the client's endpoint. Post receives first (after ``init()``): the client may send at
    /// once. The GIL is released while waiting; TimeoutError when no client comes (or a step
    /// stalls) in `timeout`; Ctrl-C (KeyboardInterrupt) stops it within ~50 ms, port closed.
    #[pyo3(signature = (port = 18515, psn = 0, timeout = 30.0, gid_index = None, bind = "0.0.0.0"))]
    fn pingpong_accept(
        &self,
        py: Python<'_>,
        port: u16,
        psn: u32,
        timeout: f64,
        gid_index: Option<i32>,
        bind: &str,
    ) -> PyResult<Endpoint> {
        let (t, p, local) = self.tool_exchange(false, psn, timeout, gid_index)?;
        let qp = self.get()?;
        let listener = args::listen(bind, port)?;
        let remote = interrupt::detach(py, |c| {
            oob::pingpong_accept(&listener, &local, t, c, |r| {
                qp.connect_cancellable(&p, r, local.psn, c)
            })
        })?;
        Ok(endpoint(&remote))
    }

    /// Be the server of a perftest client (the tools' TCP exchange on `port`) running `test`:
    /// ``"write"`` (``ib_write_bw``), ``"read"`` (``ib_read_bw``), ``"atomic"``
    /// (``ib_atomic_bw``) expose `mr` (remote-writable, -readable or -atomic; the client's
    /// message size plus a page at least) for the client's requests and return the report it
    /// sends at the end; ``"send"`` (``ib_send_bw``) keeps `rx_depth` receives of `size`
    /// bytes posted in `mr`, counts up to `iterations` of them on `cq` (the QP's receive CQ;
    /// fewer when the client finishes first: UC and UD drop a send that finds no receive) and
    /// returns its own report with the count received (the tools exchange none for send;
    /// give the client's ``-s`` and ``-n``). On a UD QP (``ib_send_bw -c UD``) each receive
    /// takes the 40-byte GRH before the message, and `size` is at most the path MTU. The report is a dict of ``size``, ``iters``, ``bw_peak``, ``bw_avg``
    /// (MB/s of 2**20 bytes) and ``msg_rate`` (millions of messages per second). The GIL is
    /// released while waiting; TimeoutError when no client comes (or a step stalls) within
    /// `timeout`; Ctrl-C (KeyboardInterrupt) stops it within ~50 ms, port closed.
    #[pyo3(signature = (mr, port = 18515, psn = 0, timeout = 60.0, gid_index = None, bind = "0.0.0.0", *, test = "write", cq = None, size = 65536, iterations = 1000, rx_depth = 64))]
    #[allow(clippy::too_many_arguments)]
    fn perftest_serve<'py>(
        &self,
        py: Python<'py>,
        mr: &MemoryRegion,
        port: u16,
        psn: u32,
        timeout: f64,
        gid_index: Option<i32>,
        bind: &str,
        test: &str,
        cq: Option<PyRef<'_, CompletionQueue>>,
        size: usize,
        iterations: u64,
        rx_depth: u64,
    ) -> PyResult<Bound<'py, PyDict>> {
        let a = perf::ServeArgs {
            test,
            cq: cq.as_deref(),
            port,
            bind,
            psn,
            timeout,
            gid_index,
            size,
            iterations,
            rx_depth,
        };
        perf::serve(py, self, mr, &a)
    }

    /// Be the client of an ``ib_write_bw`` server at `host`:`port` (retried until `timeout`):
    /// connect this QP, RDMA-write `iterations` messages of `size` bytes from `mr` into the
    /// server's buffer (GIL released, Ctrl-C honoured, as in every ``perftest_*``; `cq` is
    /// the QP's send CQ), send the report, and return it (the dict of ``perftest_serve``).
    #[pyo3(signature = (cq, mr, host, port = 18515, size = 65536, iterations = 1000, psn = 0, timeout = 60.0, gid_index = None))]
    #[allow(clippy::too_many_arguments)]
    fn perftest_write_bw<'py>(
        &self,
        py: Python<'py>,
        cq: &CompletionQueue,
        mr: &MemoryRegion,
        host: &str,
        port: u16,
        size: usize,
        iterations: u64,
        psn: u32,
        timeout: f64,
        gid_index: Option<i32>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let a = perf::ClientArgs::new(host, port, size, iterations, psn, timeout, gid_index);
        perf::client(py, Test::Write, self, cq, mr, &a)
    }

    /// Be the client of an ``ib_read_bw`` server: RDMA-read `iterations` messages of `size`
    /// bytes from its buffer into `mr` (as many reads in flight as both devices allow), send
    /// the report and return it (see ``perftest_write_bw``).
    #[pyo3(signature = (cq, mr, host, port = 18515, size = 65536, iterations = 1000, psn = 0, timeout = 60.0, gid_index = None))]
    #[allow(clippy::too_many_arguments)]
    fn perftest_read_bw<'py>(
        &self,
        py: Python<'py>,
        cq: &CompletionQueue,
        mr: &MemoryRegion,
        host: &str,
        port: u16,
        size: usize,
        iterations: u64,
        psn: u32,
        timeout: f64,
        gid_index: Option<i32>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let a = perf::ClientArgs::new(host, port, size, iterations, psn, timeout, gid_index);
        perf::client(py, Test::Read, self, cq, mr, &a)
    }

    /// Be the client of an ``ib_send_bw`` server: SEND `iterations` messages of `size` bytes
    /// (at most the server's ``-s``) from `mr` once its receives are posted, and return our
    /// report (the server prints its own; see ``perftest_write_bw``). On a UD QP (a server
    /// run with ``-c UD``) each message is one packet (`size` at most the path MTU; ValueError
    /// above it), sent through an address handle for the server's GID with perftest's Q_Key.
    #[pyo3(signature = (cq, mr, host, port = 18515, size = 65536, iterations = 1000, psn = 0, timeout = 60.0, gid_index = None))]
    #[allow(clippy::too_many_arguments)]
    fn perftest_send_bw<'py>(
        &self,
        py: Python<'py>,
        cq: &CompletionQueue,
        mr: &MemoryRegion,
        host: &str,
        port: u16,
        size: usize,
        iterations: u64,
        psn: u32,
        timeout: f64,
        gid_index: Option<i32>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let a = perf::ClientArgs::new(host, port, size, iterations, psn, timeout, gid_index);
        perf::client(py, Test::Send, self, cq, mr, &a)
    }

    /// Be the client of an ``ib_atomic_bw`` server: `iterations` 8-byte fetch-and-adds of 1
    /// (``compare_swap=True``: compare-and-swaps of 0 with 0, for ``ib_atomic_bw -A
    /// CMP_AND_SWAP``) on its buffer, old values landing in `mr`'s first 8 bytes; sends the
    /// report and returns it (see ``perftest_write_bw``).
    #[pyo3(signature = (cq, mr, host, port = 18515, iterations = 1000, psn = 0, timeout = 60.0, gid_index = None, compare_swap = false))]
    #[allow(clippy::too_many_arguments)]
    fn perftest_atomic_bw<'py>(
        &self,
        py: Python<'py>,
        cq: &CompletionQueue,
        mr: &MemoryRegion,
        host: &str,
        port: u16,
        iterations: u64,
        psn: u32,
        timeout: f64,
        gid_index: Option<i32>,
        compare_swap: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let a = perf::ClientArgs::new(host, port, 8, iterations, psn, timeout, gid_index);
        let test = if compare_swap {
            Test::CompareSwap
        } else {
            Test::FetchAdd
        };
        perf::client(py, test, self, cq, mr, &a)
    }

    /// Connect this QP (in RESET) through the RDMA connection manager to a listener at
    /// `host`:`port` (an IP address of an RDMA device's netdev); returns when the QP is in RTS.
    /// Keep the returned connection open while the QP is used; closing it disconnects. The
    /// GIL is released while waiting (Ctrl-C stops it). Needs librdmacm (``apt-get install
    /// librdmacm1``).
    #[pyo3(signature = (host, port = 7471, timeout = 30.0, access = 15))]
    fn cm_connect(
        &self,
        py: Python<'_>,
        host: &str,
        port: u16,
        timeout: f64,
        access: i32,
    ) -> PyResult<Py<CmConnection>> {
        self.cm(py, Cm::connect, host, port, timeout, access)
    }

    /// Listen on `bind`:`port` through the RDMA connection manager and accept the first
    /// connection request for this QP (in RESET); returns when the connection is established
    /// (see ``cm_connect``).
    #[pyo3(signature = (bind, port = 7471, timeout = 30.0, access = 15))]
    fn cm_accept(
        &self,
        py: Python<'_>,
        bind: &str,
        port: u16,
        timeout: f64,
        access: i32,
    ) -> PyResult<Py<CmConnection>> {
        self.cm(py, Cm::accept, bind, port, timeout, access)
    }

    /// Client side of ``ibv_rc_pingpong``'s TCP exchange with a server at `host`:`port`
    /// (retried until `timeout`); brings this QP to RTS towards it and returns its endpoint.
    /// The GIL is released while waiting; Ctrl-C (KeyboardInterrupt) stops it.
    #[pyo3(signature = (host, port = 18515, psn = 0, timeout = 30.0, gid_index = None))]
    fn pingpong_connect(
        &self,
        py: Python<'_>,
        host: &str,
        port: u16,
        psn: u32,
        timeout: f64,
        gid_index: Option<i32>,
    ) -> PyResult<Endpoint> {
        let (t, p, local) = self.tool_exchange(false, psn, timeout, gid_index)?;
        let qp = self.get()?;
        let remote = interrupt::detach(py, |c| {
            let remote = oob::pingpong_connect((host, port), &local, t, c)?;
            qp.connect_cancellable(&p, &remote, local.psn, c)?;
            Ok(remote)
        })?;
        Ok(endpoint(&remote))
    }

    /// (RESET→INIT unless ``init()`` was called)→RTR→RTS towards `remote` (MTU 1024,
    /// timeout 14, retry 7, rnr_retry 7); a UD QP needs no `remote` (Q_Key 0x11111111).
    #[pyo3(signature = (remote = None, psn = 0, port = 1, gid_index = None, access = 15))]
    fn connect(
        &self,
        py: Python<'_>,
        remote: Option<&Endpoint>,
        psn: u32,
        port: u8,
        gid_index: Option<i32>,
        access: i32,
    ) -> PyResult<()> {
        let p = self.params(port, gid_index)?;
        let qp = self.get()?;
        let remote = match (remote, qp.qp_type()) {
            (Some(r), _) => r.core()?,
            (None, QpType::Ud) => CoreEndpoint {
                qpn: 0,
                psn: 0,
                gid: Gid::default(),
                lid: 0,
            },
            (None, t) => {
                return Err(PyValueError::new_err(format!(
                    "a {t:?} QP connects to a peer: pass its endpoint"
                )))
            }
        };
        self.init_if_reset(&p, Access(access))?;
        interrupt::detach(py, |c| qp.connect_cancellable(&p, &remote, psn, c))
    }

    /// Current state: 0 RESET, 1 INIT, 2 RTR, 3 RTS, 6 ERROR.
    #[getter]
    fn state(&self) -> PyResult<i32> {
        self.get()?.state().py()
    }

    /// Move to the error state: outstanding work requests complete with ``WR_FLUSH_ERR``.
    fn to_error(&self) -> PyResult<()> {
        self.get()?.to_error().py()
    }

    /// Back to RESET (from any state), ready for ``init()`` or ``connect()`` again.
    fn to_reset(&self) -> PyResult<()> {
        self.get()?.to_reset().py()
    }

    /// SEND (with immediate data if `imm` is given; SEND with invalidate of the peer's R_Key
    /// `invalidate_rkey` on RC); on a UD QP pass `ah` and `remote_qpn`. `inline=True` has the
    /// provider copy the payload (`mr[offset:offset+length]`, at most the QP's
    /// `max_inline_data` bytes, else ValueError) into the work request during the call.
    #[pyo3(signature = (mr, offset = 0, length = None, wr_id = 0, imm = None, signaled = true, inline = false, ah = None, remote_qpn = None, remote_qkey = 0x1111_1111, sg = None, invalidate_rkey = None))]
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        mr: &MemoryRegion,
        offset: usize,
        length: Option<usize>,
        wr_id: u64,
        imm: Option<u32>,
        signaled: bool,
        inline: bool,
        ah: Option<&AddressHandle>,
        remote_qpn: Option<u32>,
        remote_qkey: u32,
        sg: Option<Vec<SgItem<'_>>>,
        invalidate_rkey: Option<u32>,
    ) -> PyResult<()> {
        let op = match (ah, remote_qpn, invalidate_rkey) {
            (Some(ah), Some(remote_qpn), None) => SendOp::UdSend {
                ah: ah.get()?,
                remote_qpn,
                remote_qkey,
                imm,
            },
            (None, None, None) => imm.map_or(SendOp::Send, SendOp::SendImm),
            (None, None, Some(invalidate_rkey)) if imm.is_none() => {
                SendOp::SendInv { invalidate_rkey }
            }
            (None, None, Some(_)) => return Err(PyValueError::new_err(INV_WITH_IMM)),
            (Some(_), Some(_), Some(_)) => return Err(PyValueError::new_err(INV_ON_UD)),
            _ => {
                return Err(PyValueError::new_err(
                    "a UD send needs both ah and remote_qpn",
                ))
            }
        };
        self.post(mr, offset, length, wr_id, op, signaled, inline, sg)
    }

    /// RDMA WRITE of `mr[offset:offset+length]` (and `sg`) to `remote_addr` with `rkey`; with
    /// `imm`, RDMA WRITE with immediate data, which consumes a receive at the peer.
    #[pyo3(signature = (mr, remote_addr, rkey, offset = 0, length = None, wr_id = 0, imm = None, signaled = true, sg = None))]
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        mr: &MemoryRegion,
        remote_addr: u64,
        rkey: u32,
        offset: usize,
        length: Option<usize>,
        wr_id: u64,
        imm: Option<u32>,
        signaled: bool,
        sg: Option<Vec<SgItem<'_>>>,
    ) -> PyResult<()> {
        let op = match imm {
            Some(imm) => SendOp::WriteImm {
                remote_addr,
                rkey,
                imm,
            },
            None => SendOp::Write { remote_addr, rkey },
        };
        self.post(mr, offset, length, wr_id, op, signaled, false, sg)
    }

    /// RDMA READ from `remote_addr` with `rkey` into `mr[offset:offset+length]` (and `sg`).
    #[pyo3(signature = (mr, remote_addr, rkey, offset = 0, length = None, wr_id = 0, signaled = true, sg = None))]
    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        mr: &MemoryRegion,
        remote_addr: u64,
        rkey: u32,
        offset: usize,
        length: Option<usize>,
        wr_id: u64,
        signaled: bool,
        sg: Option<Vec<SgItem<'_>>>,
    ) -> PyResult<()> {
        self.post(
            mr,
            offset,
            length,
            wr_id,
            SendOp::Read { remote_addr, rkey },
            signaled,
            false,
            sg,
        )
    }

    /// 64-bit compare-and-swap; the old value lands in `mr[offset:offset+8]`.
    #[pyo3(signature = (mr, remote_addr, rkey, compare, swap, offset = 0, wr_id = 0))]
    #[allow(clippy::too_many_arguments)]
    fn compare_swap(
        &self,
        mr: &MemoryRegion,
        remote_addr: u64,
        rkey: u32,
        compare: u64,
        swap: u64,
        offset: usize,
        wr_id: u64,
    ) -> PyResult<()> {
        let op = SendOp::CompareSwap {
            remote_addr,
            rkey,
            compare,
            swap,
        };
        self.post(mr, offset, Some(8), wr_id, op, true, false, None)
    }

    /// 64-bit fetch-and-add; the old value lands in `mr[offset:offset+8]`.
    #[pyo3(signature = (mr, remote_addr, rkey, add, offset = 0, wr_id = 0))]
    fn fetch_add(
        &self,
        mr: &MemoryRegion,
        remote_addr: u64,
        rkey: u32,
        add: u64,
        offset: usize,
        wr_id: u64,
    ) -> PyResult<()> {
        self.post(
            mr,
            offset,
            Some(8),
            wr_id,
            SendOp::FetchAdd {
                remote_addr,
                rkey,
                add,
            },
            true,
            false,
            None,
        )
    }
}
