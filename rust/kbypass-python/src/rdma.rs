//! `kbypass.rdma`: the core's verbs provider (libibverbs loaded at run time) for Python.
//!
//! Each class owns one core object in an `Option`, so `close()` (and `__exit__`) release it
//! early; core objects keep their parents alive, so closing in any order is safe.

use std::time::Duration;

use std::sync::Arc;

use kbypass_core::rdma::oob::{self, RemoteBuffer};
use kbypass_core::rdma::{
    self, Access, AddressHandle, CompletionQueue, Context, Endpoint, Gid, MemoryRegion, PathParams,
    ProtectionDomain, QpCaps, QpType, QueuePair, SendFlags, SendOp, SharedReceiveQueue,
    WorkCompletion,
};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

pyo3::create_exception!(
    kbypass._core,
    RdmaCompletionError,
    pyo3::exceptions::PyOSError,
    "A work completion with a failed status, raised by ``WorkCompletion.check()``."
);

use crate::errors::IntoPyResult;
use crate::mem::PyHugeRegion;
use crate::mempool::PyMempool;

fn closed(what: &str) -> PyErr {
    PyRuntimeError::new_err(format!("this {what} is closed"))
}

/// One RDMA device as libibverbs lists it.
#[pyclass(module = "kbypass._core", name = "RdmaDevice", frozen, get_all)]
#[derive(Clone)]
pub struct RdmaDevice {
    /// Kernel name, e.g. ``rxe0``.
    name: String,
    /// Its uverbs character device, e.g. ``uverbs0``.
    uverbs: String,
    /// ``enum ibv_node_type`` (1 = CA, 4 = RNIC).
    node_type: i32,
    /// ``enum ibv_transport_type`` (0 = InfiniBand, also for RoCE).
    transport_type: i32,
    /// sysfs path of the device.
    ibdev_path: String,
}

#[pymethods]
impl RdmaDevice {
    fn __repr__(&self) -> String {
        format!("RdmaDevice(name={:?}, uverbs={:?})", self.name, self.uverbs)
    }
}

/// The machine's RDMA devices (empty without any); FileNotFoundError names the packages to
/// install when libibverbs is missing.
#[pyfunction]
fn rdma_devices(py: Python<'_>) -> PyResult<Vec<RdmaDevice>> {
    let list = py.detach(rdma::devices).py()?;
    Ok(list
        .into_iter()
        .map(|d| RdmaDevice {
            name: d.name,
            uverbs: d.uverbs,
            node_type: d.node_type,
            transport_type: d.transport_type,
            ibdev_path: d.ibdev_path,
        })
        .collect())
}

/// Port attributes.
#[pyclass(module = "kbypass._core", name = "RdmaPort", frozen, get_all)]
pub struct RdmaPort {
    state: i32,
    active_mtu: u32,
    max_mtu: u32,
    gid_tbl_len: i32,
    lid: u16,
    link_layer: String,
}

/// What a peer needs to connect to a QP, exchanged out of band.
#[pyclass(module = "kbypass._core", name = "RdmaEndpoint", frozen, get_all, eq)]
#[derive(Clone, PartialEq)]
pub struct RdmaEndpoint {
    qpn: u32,
    psn: u32,
    gid: String,
    lid: u16,
    rkey: u32,
    addr: u64,
    length: u64,
}

impl RdmaEndpoint {
    fn core(&self) -> PyResult<Endpoint> {
        let gid: std::net::Ipv6Addr = self.gid.parse().map_err(|_| {
            PyValueError::new_err(format!(
                "bad GID {:?}: give an IPv6-style address",
                self.gid
            ))
        })?;
        Ok(Endpoint {
            qpn: self.qpn,
            psn: self.psn,
            gid: Gid(gid.octets()),
            lid: self.lid,
        })
    }

    fn buffer(&self) -> RemoteBuffer {
        RemoteBuffer {
            addr: self.addr,
            rkey: self.rkey,
            length: self.length,
        }
    }
}

#[pymethods]
impl RdmaEndpoint {
    #[new]
    #[pyo3(signature = (qpn, psn, gid, lid = 0, rkey = 0, addr = 0, length = 0))]
    fn new(
        qpn: u32,
        psn: u32,
        gid: String,
        lid: u16,
        rkey: u32,
        addr: u64,
        length: u64,
    ) -> PyResult<Self> {
        let e = RdmaEndpoint {
            qpn,
            psn,
            gid,
            lid,
            rkey,
            addr,
            length,
        };
        e.core()?;
        Ok(e)
    }

    /// kbypass's 52-byte record of every field (big-endian; see ``from_bytes``).
    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(
            py,
            &oob::endpoint_bytes(&self.core()?, &self.buffer()),
        ))
    }

    /// Parse a ``to_bytes`` record (ValueError for anything else).
    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<Self> {
        let (e, b) = oob::parse_endpoint_bytes(data).py()?;
        Ok(endpoint_with(&e, &b))
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyBytes>,))> {
        let from_bytes = slf.get_type().getattr("from_bytes")?;
        Ok((from_bytes, (slf.get().to_bytes(slf.py())?,)))
    }

    /// The 52-byte message ``ibv_rc_pingpong`` exchanges (``LID:QPN:PSN:GID`` in hex).
    fn to_pingpong(&self) -> PyResult<Vec<u8>> {
        Ok(rdma::oob::pingpong_message(&self.core()?).to_vec())
    }

    /// Parse an ``ibv_rc_pingpong`` message.
    #[staticmethod]
    fn from_pingpong(data: &[u8]) -> PyResult<Self> {
        Ok(endpoint(&rdma::oob::parse_pingpong_message(data).py()?))
    }

    fn __repr__(&self) -> String {
        format!(
            "RdmaEndpoint(qpn={:#x}, psn={:#x}, gid={:?}, lid={}, rkey={:#x}, addr={:#x}, length={})",
            self.qpn, self.psn, self.gid, self.lid, self.rkey, self.addr, self.length
        )
    }
}

fn endpoint(e: &Endpoint) -> RdmaEndpoint {
    endpoint_with(e, &RemoteBuffer::default())
}

fn endpoint_with(e: &Endpoint, b: &RemoteBuffer) -> RdmaEndpoint {
    RdmaEndpoint {
        qpn: e.qpn,
        psn: e.psn,
        gid: e.gid.to_string(),
        lid: e.lid,
        rkey: b.rkey,
        addr: b.addr,
        length: b.length,
    }
}

/// One work completion.
#[pyclass(module = "kbypass._core", name = "RdmaCompletion", frozen, get_all)]
pub struct RdmaCompletion {
    wr_id: u64,
    status: i32,
    status_name: &'static str,
    opcode: i32,
    byte_len: u32,
    imm: Option<u32>,
    qp_num: u32,
    src_qp: u32,
    vendor_err: u32,
}

#[pymethods]
impl RdmaCompletion {
    /// Return ``self`` when the status is SUCCESS, else raise ``RdmaCompletionError`` (an
    /// OSError with errno EIO) naming the status, the work request and the likely fix.
    fn check(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        let c = slf.get();
        let wc = WorkCompletion {
            wr_id: c.wr_id,
            status: c.status,
            vendor_err: c.vendor_err,
            ..Default::default()
        };
        match wc.check() {
            Ok(()) => Ok(slf),
            Err(e) => Err(RdmaCompletionError::new_err((libc::EIO, e.to_string()))),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "RdmaCompletion(wr_id={}, status={}, opcode={}, byte_len={})",
            self.wr_id, self.status_name, self.opcode, self.byte_len
        )
    }
}

fn completion(w: &WorkCompletion) -> RdmaCompletion {
    RdmaCompletion {
        wr_id: w.wr_id,
        status: w.status,
        status_name: w.status_name(),
        opcode: w.opcode,
        byte_len: w.byte_len,
        imm: w.imm(),
        qp_num: w.qp_num,
        src_qp: w.src_qp,
        vendor_err: w.vendor_err,
    }
}

/// An open RDMA device.
#[pyclass(module = "kbypass._core", name = "RdmaContext")]
pub struct RdmaContext {
    inner: Option<Context>,
}

impl RdmaContext {
    fn get(&self) -> PyResult<&Context> {
        self.inner.as_ref().ok_or_else(|| closed("Context"))
    }
}

#[pymethods]
impl RdmaContext {
    #[new]
    #[pyo3(signature = (name = None))]
    fn new(py: Python<'_>, name: Option<String>) -> PyResult<Self> {
        let ctx = py.detach(|| Context::open(name.as_deref())).py()?;
        Ok(RdmaContext { inner: Some(ctx) })
    }

    #[getter]
    fn name(&self) -> PyResult<String> {
        Ok(self.get()?.name().to_string())
    }

    #[pyo3(signature = (port = 1))]
    fn query_port(&self, port: u8) -> PyResult<RdmaPort> {
        let a = self.get()?.query_port(port).py()?;
        Ok(RdmaPort {
            state: a.state,
            active_mtu: rdma::mtu_bytes(a.active_mtu).unwrap_or(0),
            max_mtu: rdma::mtu_bytes(a.max_mtu).unwrap_or(0),
            gid_tbl_len: a.gid_tbl_len,
            lid: a.lid,
            link_layer: match a.link_layer {
                1 => "InfiniBand",
                2 => "Ethernet",
                _ => "unspecified",
            }
            .to_string(),
        })
    }

    #[pyo3(signature = (port = 1))]
    fn default_gid_index(&self, port: u8) -> PyResult<i32> {
        self.get()?.default_gid_index(port).py()
    }

    #[pyo3(signature = (port = 1, index = None))]
    fn gid(&self, port: u8, index: Option<i32>) -> PyResult<String> {
        let ctx = self.get()?;
        let i = match index {
            Some(i) => i,
            None => ctx.default_gid_index(port).py()?,
        };
        Ok(ctx.query_gid(port, i).py()?.to_string())
    }

    fn alloc_pd(&self) -> PyResult<RdmaPd> {
        Ok(RdmaPd {
            inner: Some(self.get()?.alloc_pd().py()?),
            ctx: self.get()?.clone(),
        })
    }

    #[pyo3(signature = (entries = 256, channel = false))]
    fn create_cq(&self, entries: i32, channel: bool) -> PyResult<RdmaCq> {
        let ctx = self.get()?;
        let ch = if channel {
            Some(ctx.create_comp_channel().py()?)
        } else {
            None
        };
        Ok(RdmaCq {
            inner: Some(ctx.create_cq(entries, ch.as_ref()).py()?),
        })
    }

    fn close(&mut self) {
        self.inner = None;
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &mut self,
        _t: Option<Bound<'_, PyAny>>,
        _v: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) {
        self.close();
    }
}

/// A protection domain.
#[pyclass(module = "kbypass._core", name = "RdmaPd")]
pub struct RdmaPd {
    inner: Option<ProtectionDomain>,
    ctx: Context,
}

impl RdmaPd {
    fn get(&self) -> PyResult<&ProtectionDomain> {
        self.inner
            .as_ref()
            .ok_or_else(|| closed("ProtectionDomain"))
    }
}

#[pymethods]
impl RdmaPd {
    /// Register a C-contiguous buffer (bytearray, NumPy array, memoryview, mmap); the region
    /// holds the buffer export, so the object cannot be resized while registered.
    ///
    /// A `HugeRegion` registers whole and a `Mempool` registers its objects (object `i` at
    /// offset `i * pool.stride`); the region holds the memory, so it stays mapped and
    /// registered after the HugeRegion or Mempool is closed, until the region is.
    #[pyo3(signature = (buffer, access = 15))]
    fn register(&self, buffer: &Bound<'_, PyAny>, access: i32) -> PyResult<RdmaMr> {
        if let Ok(region) = buffer.cast::<PyHugeRegion>() {
            let mr = self
                .get()?
                .register_region(region.get().shared()?, Access(access))
                .py()?;
            return Ok(RdmaMr { inner: Some(mr) });
        }
        if let Ok(pool) = buffer.cast::<PyMempool>() {
            let mr = self
                .get()?
                .register_mempool(pool.get().shared()?, Access(access))
                .py()?;
            return Ok(RdmaMr { inner: Some(mr) });
        }
        let buf = PyUntypedBuffer::get(buffer)?;
        if !buf.is_c_contiguous() {
            return Err(PyTypeError::new_err(
                "register a C-contiguous buffer (np.ascontiguousarray)",
            ));
        }
        if buf.readonly() && access & !rdma::ffi::ACCESS_REMOTE_READ != 0 {
            return Err(PyTypeError::new_err(
                "the buffer is read-only: register it with access=REMOTE_READ only, or pass a writable one",
            ));
        }
        let (ptr, len) = (buf.buf_ptr().cast::<u8>(), buf.len_bytes());
        // SAFETY: the exported buffer stays valid and in place while its export (`buf`) lives,
        // and the region owns the export.
        let mr = unsafe {
            self.get()?
                .register_raw(ptr, len, Access(access), Box::new(buf))
        }
        .py()?;
        Ok(RdmaMr { inner: Some(mr) })
    }

    /// An address handle for UD sends to `remote`'s port.
    #[pyo3(signature = (remote, port = 1, gid_index = None))]
    fn create_ah(
        &self,
        remote: &RdmaEndpoint,
        port: u8,
        gid_index: Option<i32>,
    ) -> PyResult<RdmaAh> {
        let idx = match gid_index {
            Some(i) => i,
            None => self.ctx.default_gid_index(port).py()?,
        };
        let sgid =
            u8::try_from(idx).map_err(|_| PyValueError::new_err(format!("bad GID index {idx}")))?;
        let ah = self.get()?.create_ah(&remote.core()?, sgid, port).py()?;
        Ok(RdmaAh { inner: Some(ah) })
    }

    /// A shared receive queue of `max_wr` receives (`max_sge` SGEs each) for QPs created with
    /// ``srq=``.
    #[pyo3(signature = (max_wr = 128, max_sge = 1))]
    fn create_srq(&self, max_wr: u32, max_sge: u32) -> PyResult<RdmaSrq> {
        Ok(RdmaSrq {
            inner: Some(self.get()?.create_srq(max_wr, max_sge).py()?),
        })
    }

    #[pyo3(signature = (qp_type, send_cq, recv_cq = None, max_send_wr = 128, max_recv_wr = 128, max_sge = 4, max_inline_data = 64, srq = None))]
    #[allow(clippy::too_many_arguments)]
    fn create_qp(
        &self,
        qp_type: &str,
        send_cq: &RdmaCq,
        recv_cq: Option<&RdmaCq>,
        max_send_wr: u32,
        max_recv_wr: u32,
        max_sge: u32,
        max_inline_data: u32,
        srq: Option<&RdmaSrq>,
    ) -> PyResult<RdmaQp> {
        let t = match qp_type.to_ascii_uppercase().as_str() {
            "RC" => QpType::Rc,
            "UC" => QpType::Uc,
            "UD" => QpType::Ud,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "qp_type is 'RC', 'UC' or 'UD', not {qp_type:?}"
                )))
            }
        };
        let scq = send_cq.get()?;
        let rcq = recv_cq.map_or(Ok(scq), |c| c.get())?;
        let caps = QpCaps {
            max_send_wr,
            max_recv_wr,
            max_send_sge: max_sge,
            max_recv_sge: max_sge,
            max_inline_data,
        };
        let srq = srq.map(|s| s.get()).transpose()?;
        let qp = QueuePair::create_with_srq(self.get()?, t, scq, rcq, caps, srq).py()?;
        Ok(RdmaQp {
            inner: Some(qp),
            ctx: self.ctx.clone(),
        })
    }

    fn close(&mut self) {
        self.inner = None;
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &mut self,
        _t: Option<Bound<'_, PyAny>>,
        _v: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) {
        self.close();
    }
}

/// A shared receive queue: one pool of receives for every QP created with it.
#[pyclass(module = "kbypass._core", name = "RdmaSrq")]
pub struct RdmaSrq {
    inner: Option<Arc<SharedReceiveQueue>>,
}

impl RdmaSrq {
    fn get(&self) -> PyResult<&Arc<SharedReceiveQueue>> {
        self.inner
            .as_ref()
            .ok_or_else(|| closed("SharedReceiveQueue"))
    }
}

#[pymethods]
impl RdmaSrq {
    /// Post one receive into `mr[offset:offset+length]` (the rest of the region by default).
    #[pyo3(signature = (mr, offset = 0, length = None, wr_id = 0, sg = None))]
    fn post_recv(
        &self,
        mr: &RdmaMr,
        offset: usize,
        length: Option<usize>,
        wr_id: u64,
        sg: Option<Vec<SgItem<'_>>>,
    ) -> PyResult<()> {
        let more = sg.unwrap_or_default();
        let sges = gather(mr, offset, length, &more)?;
        self.get()?.post_recv(wr_id, &sges).py()
    }

    fn close(&mut self) {
        self.inner = None;
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &mut self,
        _t: Option<Bound<'_, PyAny>>,
        _v: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) {
        self.close();
    }
}

/// An address handle: the route to a UD peer's port.
#[pyclass(module = "kbypass._core", name = "RdmaAh")]
pub struct RdmaAh {
    inner: Option<AddressHandle>,
}

#[pymethods]
impl RdmaAh {
    fn close(&mut self) {
        self.inner = None;
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &mut self,
        _t: Option<Bound<'_, PyAny>>,
        _v: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) {
        self.close();
    }
}

/// A registered memory region.
#[pyclass(module = "kbypass._core", name = "RdmaMr")]
pub struct RdmaMr {
    inner: Option<MemoryRegion>,
}

impl RdmaMr {
    fn get(&self) -> PyResult<&MemoryRegion> {
        self.inner.as_ref().ok_or_else(|| closed("MemoryRegion"))
    }
}

#[pymethods]
impl RdmaMr {
    #[getter]
    fn addr(&self) -> PyResult<u64> {
        Ok(self.get()?.addr())
    }
    #[getter]
    fn length(&self) -> PyResult<usize> {
        Ok(self.get()?.len())
    }
    #[getter]
    fn lkey(&self) -> PyResult<u32> {
        Ok(self.get()?.lkey())
    }
    #[getter]
    fn rkey(&self) -> PyResult<u32> {
        Ok(self.get()?.rkey())
    }

    fn close(&mut self) {
        self.inner = None;
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &mut self,
        _t: Option<Bound<'_, PyAny>>,
        _v: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) {
        self.close();
    }
}

/// A completion queue.
#[pyclass(module = "kbypass._core", name = "RdmaCq")]
pub struct RdmaCq {
    inner: Option<CompletionQueue>,
}

impl RdmaCq {
    fn get(&self) -> PyResult<&CompletionQueue> {
        self.inner.as_ref().ok_or_else(|| closed("CompletionQueue"))
    }
}

#[pymethods]
impl RdmaCq {
    /// Up to `max` completions, as objects.
    #[pyo3(signature = (max = 16))]
    fn poll(&self, max: usize) -> PyResult<Vec<RdmaCompletion>> {
        let mut buf = vec![WorkCompletion::default(); max.clamp(1, 4096)];
        let n = self.get()?.poll(&mut buf).py()?;
        Ok(buf[..n].iter().map(completion).collect())
    }

    /// Poll straight into a writable, 8-byte aligned buffer of 48-byte ``ibv_wc`` records
    /// (a NumPy array of ``kbypass.rdma.WC_DTYPE``); returns how many were written.
    fn poll_into(&self, out: &Bound<'_, PyAny>) -> PyResult<usize> {
        let buf = PyUntypedBuffer::get(out)?;
        let size = std::mem::size_of::<WorkCompletion>();
        let ptr = buf.buf_ptr();
        if buf.readonly() || !buf.is_c_contiguous() || ptr as usize % 8 != 0 {
            return Err(PyTypeError::new_err(
                "poll_into needs a writable, C-contiguous, 8-byte aligned buffer",
            ));
        }
        let n = buf.len_bytes() / size;
        // SAFETY: the buffer is writable, aligned, and holds `n` whole records; `buf` keeps
        // the export alive for the call.
        unsafe { self.get()?.poll_raw(ptr.cast(), n) }.py()
    }

    /// Return up to `max` completions, sleeping on the completion channel (GIL released)
    /// until one arrives or `timeout` seconds pass (then an empty list).
    #[pyo3(signature = (timeout = None, max = 16))]
    fn wait(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        max: usize,
    ) -> PyResult<Vec<RdmaCompletion>> {
        let cq = self.get()?.clone();
        let t = timeout.map(seconds).transpose()?;
        let mut buf = vec![WorkCompletion::default(); max.clamp(1, 4096)];
        let n = py.detach(|| cq.poll_blocking(&mut buf, t)).py()?;
        Ok(buf[..n].iter().map(completion).collect())
    }

    fn close(&mut self) {
        self.inner = None;
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &mut self,
        _t: Option<Bound<'_, PyAny>>,
        _v: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) {
        self.close();
    }
}

/// One more scatter/gather element from Python: `(mr, offset, length)`.
type SgItem<'py> = (PyRef<'py, RdmaMr>, usize, usize);

/// The SGE list: `mr[offset:offset+length]` (the rest of the region by default), then `more`.
/// Every element comes from a registered region, bounds-checked, and borrows it: the regions
/// stay open (Python cannot close a region it is passing) until the post returns.
fn gather<'a>(
    mr: &'a RdmaMr,
    offset: usize,
    length: Option<usize>,
    more: &'a [SgItem<'_>],
) -> PyResult<Vec<rdma::Sge<'a>>> {
    let m = mr.get()?;
    let len = length.unwrap_or(m.len().saturating_sub(offset));
    let mut sges = vec![m.sge(offset, len).py()?];
    for (other, off, len) in more {
        sges.push(other.get()?.sge(*off, *len).py()?);
    }
    Ok(sges)
}

fn socket_addr(host: &str, port: u16) -> PyResult<std::net::SocketAddr> {
    let ip: std::net::IpAddr = host.parse().map_err(|_| {
        PyValueError::new_err(format!(
            "{host:?} is not an IP address: give the RDMA device's IPv4 or IPv6 address"
        ))
    })?;
    Ok(std::net::SocketAddr::new(ip, port))
}

/// A connection made by the RDMA connection manager; closing it disconnects.
#[pyclass(module = "kbypass._core", name = "RdmaCmConnection")]
pub struct RdmaCmConnection {
    inner: Option<rdma::cm::CmConnection>,
}

#[pymethods]
impl RdmaCmConnection {
    /// Whether ``close()`` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_none()
    }

    fn close(&mut self) {
        self.inner = None;
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &mut self,
        _t: Option<Bound<'_, PyAny>>,
        _v: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) {
        self.close();
    }
}

fn report<'py>(py: Python<'py>, r: &rdma::perftest::BwReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("size", r.size)?;
    d.set_item("iters", r.iters)?;
    d.set_item("bw_peak", r.bw_peak)?;
    d.set_item("bw_avg", r.bw_avg)?;
    d.set_item("msg_rate", r.msg_rate)?;
    Ok(d)
}

fn seconds(s: f64) -> PyResult<Duration> {
    if s >= 0.0 && s.is_finite() {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(PyValueError::new_err(format!(
            "timeout must be >= 0 seconds, got {s}"
        )))
    }
}

/// A queue pair.
#[pyclass(module = "kbypass._core", name = "RdmaQp")]
pub struct RdmaQp {
    inner: Option<QueuePair>,
    ctx: Context,
}

impl RdmaQp {
    fn get(&self) -> PyResult<&QueuePair> {
        self.inner.as_ref().ok_or_else(|| closed("QueuePair"))
    }

    fn params(&self, port: u8, gid_index: Option<i32>) -> PyResult<PathParams> {
        let idx = match gid_index {
            Some(i) => i,
            None => self.ctx.default_gid_index(port).py()?,
        };
        let sgid_index =
            u8::try_from(idx).map_err(|_| PyValueError::new_err(format!("bad GID index {idx}")))?;
        Ok(PathParams {
            port,
            sgid_index,
            ..Default::default()
        })
    }

    fn local(&self, p: &PathParams, psn: u32) -> PyResult<Endpoint> {
        let port = p.port;
        Ok(Endpoint {
            qpn: self.get()?.qp_num(),
            psn: psn & 0xff_ffff,
            gid: self.ctx.query_gid(port, i32::from(p.sgid_index)).py()?,
            lid: self.ctx.query_port(port).py()?.lid,
        })
    }

    fn init_if_reset(&self, p: &PathParams, access: Access) -> PyResult<()> {
        let qp = self.get()?;
        if qp.state().py()? == 0 {
            qp.to_init(p, access).py()?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn post(
        &self,
        mr: &RdmaMr,
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
impl RdmaQp {
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
        mr: Option<&RdmaMr>,
    ) -> PyResult<RdmaEndpoint> {
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
    /// once. The GIL is released while waiting; TimeoutError when no client comes in `timeout`.
    #[pyo3(signature = (port = 18515, psn = 0, timeout = 30.0, gid_index = None, bind = "0.0.0.0"))]
    fn pingpong_accept(
        &self,
        py: Python<'_>,
        port: u16,
        psn: u32,
        timeout: f64,
        gid_index: Option<i32>,
        bind: &str,
    ) -> PyResult<RdmaEndpoint> {
        let t = seconds(timeout)?;
        let p = self.params(1, gid_index)?;
        let local = self.local(&p, psn)?;
        self.init_if_reset(&p, Access::ALL)?;
        let qp = self.get()?;
        let listener = std::net::TcpListener::bind((bind, port)).map_err(|e| {
            pyo3::exceptions::PyOSError::new_err((
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("listen on {bind}:{port}: {e}: pick a free port"),
            ))
        })?;
        let remote = py
            .detach(|| oob::pingpong_accept(&listener, &local, t, |r| qp.connect(&p, r, local.psn)))
            .py()?;
        Ok(endpoint(&remote))
    }

    /// Be the server of an ``ib_write_bw`` client (perftest's TCP exchange on `port`): expose
    /// `mr` (remote-writable; the client's message size plus a page at least) for its RDMA
    /// writes, connect this QP to it, and return the report it sends at the end: a dict of
    /// ``size``, ``iters``, ``bw_peak``, ``bw_avg`` (MB/s of 2**20 bytes) and ``msg_rate``
    /// (millions of messages per second). The GIL is released while waiting; TimeoutError
    /// when no client comes (or a step stalls) within `timeout`.
    #[pyo3(signature = (mr, port = 18515, psn = 0, timeout = 60.0, gid_index = None, bind = "0.0.0.0"))]
    #[allow(clippy::too_many_arguments)]
    fn perftest_serve<'py>(
        &self,
        py: Python<'py>,
        mr: &RdmaMr,
        port: u16,
        psn: u32,
        timeout: f64,
        gid_index: Option<i32>,
        bind: &str,
    ) -> PyResult<Bound<'py, PyDict>> {
        let t = seconds(timeout)?;
        let p = self.params(1, gid_index)?;
        let local = self.local(&p, psn)?;
        self.init_if_reset(&p, Access::ALL)?;
        let (qp, m) = (self.get()?, mr.get()?);
        let listener = std::net::TcpListener::bind((bind, port)).map_err(|e| {
            pyo3::exceptions::PyOSError::new_err((
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("listen on {bind}:{port}: {e}: pick a free port"),
            ))
        })?;
        let r = py
            .detach(|| rdma::perftest::serve_write_bw(&listener, qp, m, &p, &local, t))
            .py()?;
        report(py, &r)
    }

    /// Be the client of an ``ib_write_bw`` server at `host`:`port` (retried until `timeout`):
    /// connect this QP, RDMA-write `iterations` messages of `size` bytes from `mr` into the
    /// server's buffer (GIL released), send the report, and return it (the dict of
    /// ``perftest_serve``).
    #[pyo3(signature = (cq, mr, host, port = 18515, size = 65536, iterations = 1000, psn = 0, timeout = 60.0, gid_index = None))]
    #[allow(clippy::too_many_arguments)]
    fn perftest_write_bw<'py>(
        &self,
        py: Python<'py>,
        cq: &RdmaCq,
        mr: &RdmaMr,
        host: &str,
        port: u16,
        size: usize,
        iterations: u64,
        psn: u32,
        timeout: f64,
        gid_index: Option<i32>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let t = seconds(timeout)?;
        let p = self.params(1, gid_index)?;
        let local = self.local(&p, psn)?;
        self.init_if_reset(&p, Access::ALL)?;
        let (qp, c, m) = (self.get()?, cq.get()?, mr.get()?);
        let r = py
            .detach(|| {
                rdma::perftest::client_write_bw(
                    (host, port),
                    qp,
                    c,
                    m,
                    &p,
                    &local,
                    size,
                    iterations,
                    t,
                )
            })
            .py()?;
        report(py, &r)
    }

    /// Connect this QP (in RESET) through the RDMA connection manager to a listener at
    /// `host`:`port` (an IP address of an RDMA device's netdev); returns when the QP is in RTS.
    /// Keep the returned connection open while the QP is used; closing it disconnects. The
    /// GIL is released while waiting. Needs librdmacm (``apt-get install librdmacm1``).
    #[pyo3(signature = (host, port = 7471, timeout = 30.0, access = 15))]
    fn cm_connect(
        &self,
        py: Python<'_>,
        host: &str,
        port: u16,
        timeout: f64,
        access: i32,
    ) -> PyResult<RdmaCmConnection> {
        let t = seconds(timeout)?;
        let addr = socket_addr(host, port)?;
        let qp = self.get()?;
        let c = py
            .detach(|| rdma::cm::CmConnection::connect(qp, addr, Access(access), t))
            .py()?;
        Ok(RdmaCmConnection { inner: Some(c) })
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
    ) -> PyResult<RdmaCmConnection> {
        let t = seconds(timeout)?;
        let addr = socket_addr(bind, port)?;
        let qp = self.get()?;
        let c = py
            .detach(|| rdma::cm::CmConnection::accept(qp, addr, Access(access), t))
            .py()?;
        Ok(RdmaCmConnection { inner: Some(c) })
    }

    /// Client side of ``ibv_rc_pingpong``'s TCP exchange with a server at `host`:`port`
    /// (retried until `timeout`); brings this QP to RTS towards it and returns its endpoint.
    #[pyo3(signature = (host, port = 18515, psn = 0, timeout = 30.0, gid_index = None))]
    fn pingpong_connect(
        &self,
        py: Python<'_>,
        host: &str,
        port: u16,
        psn: u32,
        timeout: f64,
        gid_index: Option<i32>,
    ) -> PyResult<RdmaEndpoint> {
        let t = seconds(timeout)?;
        let p = self.params(1, gid_index)?;
        let local = self.local(&p, psn)?;
        self.init_if_reset(&p, Access::ALL)?;
        let remote = py
            .detach(|| oob::pingpong_connect((host, port), &local, t))
            .py()?;
        self.get()?.connect(&p, &remote, local.psn).py()?;
        Ok(endpoint(&remote))
    }

    /// (RESET→INIT unless ``init()`` was called)→RTR→RTS towards `remote` (MTU 1024,
    /// timeout 14, retry 7, rnr_retry 7); a UD QP needs no `remote` (Q_Key 0x11111111).
    #[pyo3(signature = (remote = None, psn = 0, port = 1, gid_index = None, access = 15))]
    fn connect(
        &self,
        remote: Option<&RdmaEndpoint>,
        psn: u32,
        port: u8,
        gid_index: Option<i32>,
        access: i32,
    ) -> PyResult<()> {
        let p = self.params(port, gid_index)?;
        let qp = self.get()?;
        let remote = match (remote, qp.qp_type()) {
            (Some(r), _) => r.core()?,
            (None, QpType::Ud) => Endpoint {
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
        qp.connect(&p, &remote, psn).py()
    }

    /// Current state: 0 RESET, 1 INIT, 2 RTR, 3 RTS, 6 ERROR.
    #[getter]
    fn state(&self) -> PyResult<i32> {
        self.get()?.state().py()
    }

    fn to_error(&self) -> PyResult<()> {
        self.get()?.to_error().py()
    }

    fn to_reset(&self) -> PyResult<()> {
        self.get()?.to_reset().py()
    }

    #[pyo3(signature = (mr, offset = 0, length = None, wr_id = 0, sg = None))]
    fn post_recv(
        &self,
        mr: &RdmaMr,
        offset: usize,
        length: Option<usize>,
        wr_id: u64,
        sg: Option<Vec<SgItem<'_>>>,
    ) -> PyResult<()> {
        let more = sg.unwrap_or_default();
        let sges = gather(mr, offset, length, &more)?;
        self.get()?.post_recv(wr_id, &sges).py()
    }

    /// SEND (with immediate data if `imm` is given); on a UD QP pass `ah` and `remote_qpn`.
    /// `inline=True` has the provider copy the payload (`mr[offset:offset+length]`, at most the
    /// QP's `max_inline_data` bytes, else ValueError) into the work request during the call.
    #[pyo3(signature = (mr, offset = 0, length = None, wr_id = 0, imm = None, signaled = true, inline = false, ah = None, remote_qpn = None, remote_qkey = 0x1111_1111, sg = None))]
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        mr: &RdmaMr,
        offset: usize,
        length: Option<usize>,
        wr_id: u64,
        imm: Option<u32>,
        signaled: bool,
        inline: bool,
        ah: Option<&RdmaAh>,
        remote_qpn: Option<u32>,
        remote_qkey: u32,
        sg: Option<Vec<SgItem<'_>>>,
    ) -> PyResult<()> {
        let op = match (ah, remote_qpn) {
            (Some(ah), Some(remote_qpn)) => SendOp::UdSend {
                ah: ah.inner.as_ref().ok_or_else(|| closed("AddressHandle"))?,
                remote_qpn,
                remote_qkey,
                imm,
            },
            (None, None) => imm.map_or(SendOp::Send, SendOp::SendImm),
            _ => {
                return Err(PyValueError::new_err(
                    "a UD send needs both ah and remote_qpn",
                ))
            }
        };
        self.post(mr, offset, length, wr_id, op, signaled, inline, sg)
    }

    #[pyo3(signature = (mr, remote_addr, rkey, offset = 0, length = None, wr_id = 0, imm = None, signaled = true, sg = None))]
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        mr: &RdmaMr,
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

    #[pyo3(signature = (mr, remote_addr, rkey, offset = 0, length = None, wr_id = 0, signaled = true, sg = None))]
    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        mr: &RdmaMr,
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
        mr: &RdmaMr,
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
        mr: &RdmaMr,
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

    fn close(&mut self) {
        self.inner = None;
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &mut self,
        _t: Option<Bound<'_, PyAny>>,
        _v: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) {
        self.close();
    }
}

/// perftest-style RDMA write bandwidth (GIL released): returns (bytes, seconds).
#[pyfunction]
#[pyo3(signature = (qp, cq, mr, remote_addr, rkey, size, iterations, depth = 128, signal_every = 100))]
#[allow(clippy::too_many_arguments)]
fn rdma_write_bandwidth(
    py: Python<'_>,
    qp: PyRef<'_, RdmaQp>,
    cq: PyRef<'_, RdmaCq>,
    mr: PyRef<'_, RdmaMr>,
    remote_addr: u64,
    rkey: u32,
    size: usize,
    iterations: u64,
    depth: u64,
    signal_every: u64,
) -> PyResult<(u64, f64)> {
    let (q, c, m) = (qp.get()?, cq.get()?, mr.get()?);
    let bw = py
        .detach(|| {
            rdma::perf::write_bandwidth(
                q,
                c,
                m,
                remote_addr,
                rkey,
                size,
                iterations,
                depth,
                signal_every,
            )
        })
        .py()?;
    Ok((bw.bytes, bw.seconds))
}

/// perftest-style RDMA write latency (two threads, GIL released): one-way microseconds.
#[pyfunction]
#[pyo3(signature = (a, b, cq_a, cq_b, mr_a, mr_b, size = 2, iterations = 1000))]
#[allow(clippy::too_many_arguments)]
fn rdma_write_latency(
    py: Python<'_>,
    a: PyRef<'_, RdmaQp>,
    b: PyRef<'_, RdmaQp>,
    cq_a: PyRef<'_, RdmaCq>,
    cq_b: PyRef<'_, RdmaCq>,
    mr_a: PyRef<'_, RdmaMr>,
    mr_b: PyRef<'_, RdmaMr>,
    size: usize,
    iterations: usize,
) -> PyResult<Vec<f64>> {
    let (qa, qb, ca, cb) = (a.get()?, b.get()?, cq_a.get()?, cq_b.get()?);
    let (ma, mb) = (mr_a.get()?, mr_b.get()?);
    py.detach(|| rdma::perf::write_latency(qa, qb, ca, cb, ma, mb, size, iterations))
        .py()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RdmaDevice>()?;
    m.add_class::<RdmaPort>()?;
    m.add_class::<RdmaEndpoint>()?;
    m.add_class::<RdmaCompletion>()?;
    m.add_class::<RdmaContext>()?;
    m.add_class::<RdmaPd>()?;
    m.add_class::<RdmaMr>()?;
    m.add_class::<RdmaAh>()?;
    m.add_class::<RdmaSrq>()?;
    m.add_class::<RdmaCmConnection>()?;
    m.add(
        "RdmaCompletionError",
        m.py().get_type::<RdmaCompletionError>(),
    )?;
    m.add_class::<RdmaCq>()?;
    m.add_class::<RdmaQp>()?;
    m.add_function(wrap_pyfunction!(rdma_devices, m)?)?;
    m.add_function(wrap_pyfunction!(rdma_write_bandwidth, m)?)?;
    m.add_function(wrap_pyfunction!(rdma_write_latency, m)?)?;
    Ok(())
}
