//! `kbypass.Packet` and its header classes: one packet for a per-packet handler (reused for
//! every packet of a worker, valid during its call), with copies of its Ethernet, IP and
//! UDP/TCP headers. Frame access goes through the worker's lease on the batch (`BatchFrames`).

use std::sync::Arc;

use kbypass_core::engine::{BatchFrames, NewLen, Pick};
use kbypass_core::packet::{edit, parse, PacketMeta};
use numpy::PyArray1;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::IntoPyResult;
use crate::views::{FrameView, UmemMemory};

/// One packet, for per-packet handlers: valid only during the call (the object is reused).
///
/// `eth`, `ip`, `udp`, `tcp` return small header objects (copies, usable after the call);
/// `udp`/`tcp` are None for other protocols, `ip` is None for non-IP frames.
///
/// Example:
///     >>> @kbypass.processor("veth1")
///     ... def reflect(pkt):
///     ...     return kbypass.TX if pkt.udp and pkt.udp.dst_port == 9000 else kbypass.DROP
#[pyclass(name = "Packet", module = "kbypass._core")]
pub struct PyPacket {
    meta: PacketMeta,
    /// Index of the packet in its batch.
    index: usize,
    valid: bool,
    /// The worker's lease on the batch's frames, and which lease this packet's batch is.
    frames: Arc<BatchFrames>,
    seq: u64,
    memory: UmemMemory,
    /// Owner of the views of batch frame `i` (`data`), checked when the batch is done.
    views: Vec<Option<Py<FrameView>>>,
}

impl PyPacket {
    /// The object a per-packet handler is called with, reused for every packet of the worker.
    pub fn new(frames: &Arc<BatchFrames>, memory: &UmemMemory) -> Self {
        PyPacket {
            meta: PacketMeta::default(),
            index: 0,
            valid: false,
            frames: Arc::clone(frames),
            seq: 0,
            memory: memory.clone(),
            views: Vec::new(),
        }
    }

    /// Make this packet `i` (headers `meta`) of the batch lent as lease `seq`.
    pub fn start(&mut self, seq: u64, i: usize, meta: &PacketMeta) {
        self.meta = *meta;
        self.index = i;
        self.seq = seq;
        self.valid = true;
    }

    /// The handler returned: every method raises until the next `start`.
    pub fn end(&mut self) {
        self.valid = false;
    }

    /// The owners of the views the handler took during the batch.
    pub fn take_views(&mut self) -> Vec<Option<Py<FrameView>>> {
        std::mem::take(&mut self.views)
    }

    fn check(&self) -> PyResult<()> {
        if !self.valid {
            return Err(PyRuntimeError::new_err(
                "this Packet ended when the handler returned: the object is reused for the next packet; copy what you need (pkt.bytes(), pkt.udp) inside the handler",
            ));
        }
        Ok(())
    }

    fn edit(&self, f: impl FnOnce(&mut [u8], &PacketMeta) -> bool) -> PyResult<bool> {
        self.check()?;
        self.frames.edit_one(self.seq, self.index, f).py()
    }

    fn adjust_head(&mut self, delta: i32) -> PyResult<()> {
        self.check()?;
        let one = Pick::One(self.index);
        self.frames.adjust_head(self.seq, one, delta, None).py()?;
        self.reparse()
    }

    /// Parse the packet again (after a reshape): `len`, `flags` and the headers follow it.
    fn reparse(&mut self) -> PyResult<()> {
        self.meta = self
            .frames
            .read_one(self.seq, self.index, parse)
            .py()?
            .unwrap_or_default();
        Ok(())
    }

    fn l4(&self, py: Python<'_>, proto: u8) -> PyResult<Option<Py<L4Header>>> {
        self.check()?;
        let m = &self.meta;
        if m.proto != proto || m.flags & kbypass_core::packet::parse::FLAG_L4 == 0 {
            return Ok(None);
        }
        Py::new(
            py,
            L4Header {
                src_port: m.src_port,
                dst_port: m.dst_port,
                payload_len: m.payload_len,
            },
        )
        .map(Some)
    }
}

#[pymethods]
impl PyPacket {
    fn __len__(&self) -> PyResult<usize> {
        self.check()?;
        Ok(self.meta.len as usize)
    }

    /// Parse flags (`kbypass.packet.FLAG_*`).
    #[getter]
    fn flags(&self) -> PyResult<u16> {
        self.check()?;
        Ok(self.meta.flags)
    }

    /// Ethernet header (copy).
    #[getter]
    fn eth(&self, py: Python<'_>) -> PyResult<Py<EthHeader>> {
        self.check()?;
        let macs = self.frames.read_one(self.seq, self.index, |f| {
            let mut dst = [0u8; 6];
            let mut src = [0u8; 6];
            if f.len() >= 12 {
                dst.copy_from_slice(&f[..6]);
                src.copy_from_slice(&f[6..12]);
            }
            (dst, src)
        });
        let (dst, src) = macs.py()?.unwrap_or_default();
        Py::new(
            py,
            EthHeader {
                dst,
                src,
                ethertype: self.meta.ethertype,
                vlan: self.meta.vlan,
            },
        )
    }

    /// IPv4/IPv6 header (copy), or None.
    #[getter]
    fn ip(&self, py: Python<'_>) -> PyResult<Option<Py<IpHeader>>> {
        self.check()?;
        if self.meta.ip_version == 0 {
            return Ok(None);
        }
        Py::new(py, IpHeader { meta: self.meta }).map(Some)
    }

    /// UDP header (copy), or None.
    #[getter]
    fn udp(&self, py: Python<'_>) -> PyResult<Option<Py<L4Header>>> {
        self.l4(py, kbypass_core::packet::parse::IPPROTO_UDP)
    }

    /// TCP header (copy), or None.
    #[getter]
    fn tcp(&self, py: Python<'_>) -> PyResult<Option<Py<L4Header>>> {
        self.l4(py, kbypass_core::packet::parse::IPPROTO_TCP)
    }

    /// A zero-copy, writable uint8 view of the packet bytes. If it outlives the call, the
    /// frame is held until the view is gone (never recycled under it).
    #[getter]
    fn data<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<u8>>> {
        self.check()?;
        let d = self.frames.desc(self.seq, self.index).py()?;
        let i = self.index;
        if self.views.len() <= i {
            self.views.resize_with(i + 1, || None);
        }
        let owner = match &self.views[i] {
            Some(o) => o.bind(py).clone(),
            None => {
                let o = self.memory.owner(py, None)?;
                self.views[i] = Some(o.clone().unbind());
                o
            }
        };
        FrameView::array(&owner, d.addr, d.len)
    }

    /// A copy of the packet bytes.
    fn bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        self.check()?;
        self.frames
            .read_one(self.seq, self.index, |f| PyBytes::new(py, f))
            .py()?
            .ok_or_else(|| PyRuntimeError::new_err("frame not held"))
    }

    /// Set the packet's length to `n` bytes (its start stays): 14 up to the end of its frame;
    /// bytes it grows by are zeroed. ValueError, and nothing changes, when `n` does not fit.
    fn set_length(&mut self, n: u32) -> PyResult<()> {
        self.check()?;
        let one = Pick::One(self.index);
        self.frames
            .set_len(self.seq, one, NewLen::Each(n), None)
            .py()?;
        self.reparse()
    }

    /// Push `n` zeroed bytes in front of the packet, into the room in front of it (the
    /// kernel's 256 bytes plus the port's `headroom=`); write them through a fresh `data`.
    fn push_front(&mut self, n: u32) -> PyResult<()> {
        let d = i32::try_from(n)
            .map_err(|_| PyValueError::new_err(format!("cannot push {n} bytes")))?;
        self.adjust_head(-d)
    }

    /// Pop `n` bytes off the front of the packet (at least 14 bytes must stay).
    fn pop_front(&mut self, n: u32) -> PyResult<()> {
        let d =
            i32::try_from(n).map_err(|_| PyValueError::new_err(format!("cannot pop {n} bytes")))?;
        self.adjust_head(d)
    }

    /// Send a new frame holding a copy of `data` (see `Batch.emit`): False, counted in
    /// `stats()["emit_failed"]`, when no UMEM frame is free.
    /// `checksum`, `timestamp` and `launch_time` as `Batch.emit`.
    #[pyo3(signature = (data, socket=None, *, checksum=None, timestamp=false, launch_time=None))]
    fn emit(
        &self,
        data: &Bound<'_, PyAny>,
        socket: Option<usize>,
        checksum: Option<&str>,
        timestamp: bool,
        launch_time: Option<u64>,
    ) -> PyResult<bool> {
        self.check()?;
        let ask = crate::batch_emit::tx_ask(checksum, timestamp, launch_time)?;
        crate::batch_emit::emit(&self.frames, self.seq, data, socket, &ask)
    }

    /// Send one frame made from `template` (see `Batch.emit_template`; `fields` values are
    /// scalars here): False, counted in `stats()["emit_failed"]`, when no UMEM frame is free.
    #[pyo3(signature = (template, *, fields=None, socket=None))]
    fn emit_template(
        &self,
        template: &Bound<'_, crate::template::PyTemplate>,
        fields: Option<&Bound<'_, pyo3::types::PyDict>>,
        socket: Option<usize>,
    ) -> PyResult<bool> {
        self.check()?;
        let n = crate::batch_emit::emit_template(
            &self.frames,
            self.seq,
            template,
            Some(1),
            fields,
            socket,
        )?;
        Ok(n == 1)
    }

    /// Swap MAC addresses; returns whether it could.
    fn swap_macs(&self) -> PyResult<bool> {
        self.edit(|f, _| edit::swap_macs(f))
    }

    /// Swap IP addresses; returns whether it could.
    fn swap_ips(&self) -> PyResult<bool> {
        self.edit(edit::swap_ips)
    }

    /// Swap UDP/TCP ports; returns whether it could.
    fn swap_ports(&self) -> PyResult<bool> {
        self.edit(edit::swap_ports)
    }

    /// Recompute IPv4 and UDP/TCP checksums; returns whether the L4 checksum was set.
    /// `offload` and `timestamp` as `Batch.fix_checksums`.
    #[pyo3(signature = (*, offload=false, timestamp=false))]
    fn fix_checksums(&self, offload: bool, timestamp: bool) -> PyResult<bool> {
        self.check()?;
        let ask = crate::batch_emit::tx_ask(
            Some(if offload { "offload" } else { "software" }),
            timestamp,
            None,
        )?;
        let n = self
            .frames
            .prepare_tx(self.seq, Pick::One(self.index), &ask)
            .py()?;
        Ok(n == 1)
    }

    /// Turn the packet round to its sender: `swap_macs`, `swap_ips`, `swap_ports` and
    /// `fix_checksums` in one call; returns whether its IP addresses and ports were swapped.
    #[pyo3(signature = (*, offload=false, timestamp=false))]
    fn reflect(&self, offload: bool, timestamp: bool) -> PyResult<bool> {
        self.check()?;
        let ask = crate::batch_emit::tx_ask(
            Some(if offload { "offload" } else { "software" }),
            timestamp,
            None,
        )?;
        let n = self
            .frames
            .reflect(self.seq, Pick::One(self.index), &ask)
            .py()?;
        Ok(n == 1)
    }

    fn __repr__(&self) -> String {
        if !self.valid {
            return "Packet(ended)".into();
        }
        format!(
            "Packet({} bytes, ethertype 0x{:04x}, proto {}, ports {}->{})",
            self.meta.len,
            self.meta.ethertype,
            self.meta.proto,
            self.meta.src_port,
            self.meta.dst_port
        )
    }
}

fn mac(b: &[u8; 6]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Ethernet header fields of a `Packet`.
#[pyclass(name = "EthHeader", module = "kbypass._core", frozen, get_all)]
pub struct EthHeader {
    dst: [u8; 6],
    src: [u8; 6],
    /// Ethertype after VLAN tags.
    ethertype: u16,
    /// Outer VLAN id (0 when untagged).
    vlan: u16,
}

#[pymethods]
impl EthHeader {
    /// Destination MAC as "aa:bb:…".
    #[getter]
    fn dst_mac(&self) -> String {
        mac(&self.dst)
    }

    /// Source MAC as "aa:bb:…".
    #[getter]
    fn src_mac(&self) -> String {
        mac(&self.src)
    }

    fn __repr__(&self) -> String {
        format!(
            "EthHeader({} -> {}, type 0x{:04x})",
            mac(&self.src),
            mac(&self.dst),
            self.ethertype
        )
    }
}

/// IP header fields of a `Packet`.
#[pyclass(name = "IpHeader", module = "kbypass._core", frozen)]
pub struct IpHeader {
    meta: PacketMeta,
}

#[pymethods]
impl IpHeader {
    /// 4 or 6.
    #[getter]
    fn version(&self) -> u8 {
        self.meta.ip_version
    }

    /// IP protocol number.
    #[getter]
    fn proto(&self) -> u8 {
        self.meta.proto
    }

    /// Source address as text.
    #[getter]
    fn src(&self) -> String {
        ip_text(self.meta.ip_version, self.meta.src_ip4, &self.meta.src_ip6)
    }

    /// Destination address as text.
    #[getter]
    fn dst(&self) -> String {
        ip_text(self.meta.ip_version, self.meta.dst_ip4, &self.meta.dst_ip6)
    }

    /// IPv4 source as an integer (0 for IPv6).
    #[getter]
    fn src_int(&self) -> u32 {
        self.meta.src_ip4
    }

    /// IPv4 destination as an integer (0 for IPv6).
    #[getter]
    fn dst_int(&self) -> u32 {
        self.meta.dst_ip4
    }

    fn __repr__(&self) -> String {
        format!(
            "IpHeader(v{} {} -> {}, proto {})",
            self.version(),
            self.src(),
            self.dst(),
            self.proto()
        )
    }
}

fn ip_text(version: u8, v4: u32, v6: &[u8; 16]) -> String {
    if version == 6 {
        std::net::Ipv6Addr::from(*v6).to_string()
    } else {
        std::net::Ipv4Addr::from(v4).to_string()
    }
}

/// UDP/TCP header fields of a `Packet`.
#[pyclass(name = "L4Header", module = "kbypass._core", frozen, get_all)]
pub struct L4Header {
    /// Source port.
    src_port: u16,
    /// Destination port.
    dst_port: u16,
    /// Payload bytes present in the frame.
    payload_len: u16,
}

#[pymethods]
impl L4Header {
    fn __repr__(&self) -> String {
        format!(
            "L4Header({} -> {}, {} bytes)",
            self.src_port, self.dst_port, self.payload_len
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPacket>()?;
    m.add_class::<EthHeader>()?;
    m.add_class::<IpHeader>()?;
    m.add_class::<L4Header>()?;
    Ok(())
}
