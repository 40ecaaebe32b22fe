//! `kbypass.packet.Template`: a UDP/TCP over IPv4/IPv6 packet with named fields to fill (the
//! core's `packet::template`), and the conversion of a `fields={...}` dict into a core `Fill`
//! (scalars, NumPy columns, address strings, per-packet payloads), shared by
//! `Template.frames`, `Batch.emit_template` and `Packet.emit_template`.

use std::net::IpAddr;

use kbypass_core::packet::parse::{IPPROTO_TCP, IPPROTO_UDP};
use kbypass_core::packet::template::{Checksum, Field, Fill, Payloads, Slot, Spec, Values};
use kbypass_core::packet::Template;
use numpy::{PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::{PyKeyError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList, PyString, PyTuple};

use crate::errors::IntoPyResult;
use crate::reply::{ip_arg, mac_arg};

/// A UDP or TCP packet over IPv4 or IPv6 (optionally with an 802.1Q tag) whose named fields are
/// filled per packet in Rust: lengths, the IPv4 header checksum and the UDP/TCP checksum are
/// set for every packet made. Build it from fields (`Template(src_ip=..., proto="tcp", ...)`,
/// unset ones take the defaults shown by `repr`) or from a frame (`Template.from_frame(raw)`).
///
/// Fields (`fields`): dst_mac, src_mac, vlan, pcp (tagged templates), src_ip, dst_ip, ttl
/// (alias hop_limit), tos (alias traffic_class), ip_id (IPv4), flow_label (IPv6), src_port,
/// dst_port, seq, ack, tcp_flags, window (TCP), and "payload".
///
/// Example:
///     >>> tpl = kbypass.packet.Template(dst_ip="198.18.0.2", dst_port=53, payload=b"hi")
///     >>> batch.emit_template(tpl, 64, fields={"src_port": np.arange(64) + 1000})
#[pyclass(name = "Template", module = "kbypass._core", frozen)]
pub struct PyTemplate {
    pub(crate) inner: Template,
}

fn tcp_flags_arg(v: &Bound<'_, PyAny>) -> PyResult<u8> {
    if let Ok(s) = v.extract::<String>() {
        return s.chars().try_fold(0u8, |acc, c| {
            let bit = match c.to_ascii_uppercase() {
                'F' => 0x01,
                'S' => 0x02,
                'R' => 0x04,
                'P' => 0x08,
                'A' => 0x10,
                'U' => 0x20,
                'E' => 0x40,
                'C' => 0x80,
                _ => {
                    return Err(PyValueError::new_err(format!(
                        "tcp_flags {s:?}: use the letters FSRPAUEC (as scapy: 'S', 'SA', 'PA') or an int"
                    )))
                }
            };
            Ok(acc | bit)
        });
    }
    v.extract::<u8>()
        .map_err(|_| PyValueError::new_err("tcp_flags must be an int 0..=255 or letters like 'SA'"))
}

fn ip_addr(v: &Bound<'_, PyAny>) -> PyResult<IpAddr> {
    let b = ip_arg(v)?;
    match b.len() {
        4 => Ok(IpAddr::from(<[u8; 4]>::try_from(b).expect("4 bytes"))),
        16 => Ok(IpAddr::from(<[u8; 16]>::try_from(b).expect("16 bytes"))),
        n => Err(PyValueError::new_err(format!(
            "an IP address is 4 or 16 bytes, not {n}"
        ))),
    }
}

fn mac6(v: &Bound<'_, PyAny>) -> PyResult<[u8; 6]> {
    <[u8; 6]>::try_from(mac_arg(v)?).map_err(|_| PyValueError::new_err("a MAC address is 6 bytes"))
}

/// One value of `slot`'s field from a Python scalar: an int, an address string or
/// `ipaddress` object (IP fields), a MAC string (MAC fields), or bytes of the field's width.
/// None when `v` is not a scalar.
fn scalar(slot: &Slot, v: &Bound<'_, PyAny>) -> PyResult<Option<u128>> {
    let name = slot.field.name();
    let from_bytes = |b: &[u8]| -> PyResult<u128> {
        if b.len() != slot.width || slot.bits as usize != slot.width * 8 {
            return Err(PyValueError::new_err(format!(
                "{name} in this template is {} bits: {} bytes do not fit, give an int or {}",
                slot.bits,
                b.len(),
                if matches!(slot.field, Field::SrcIp | Field::DstIp) {
                    "an address of the template's IP version"
                } else {
                    "bytes of the field's width"
                }
            )));
        }
        let mut w = [0u8; 16];
        w[16 - b.len()..].copy_from_slice(b);
        Ok(u128::from_be_bytes(w))
    };
    if v.is_instance_of::<PyInt>() {
        return v.extract::<u128>().map(Some).map_err(|_| {
            PyValueError::new_err(format!("{name} must be a non-negative int, not {v}"))
        });
    }
    if slot.field == Field::TcpFlags && v.is_instance_of::<PyString>() {
        return tcp_flags_arg(v).map(|f| Some(f.into()));
    }
    let mac = matches!(slot.field, Field::DstMac | Field::SrcMac);
    let ip = matches!(slot.field, Field::SrcIp | Field::DstIp);
    if v.is_instance_of::<PyString>() || (ip && v.hasattr("packed")?) {
        let b = if mac {
            mac_arg(v)?
        } else if ip {
            ip_arg(v)?
        } else {
            return Err(PyTypeError::new_err(format!(
                "{name} takes an int or a NumPy column, not a string"
            )));
        };
        return from_bytes(&b).map(Some);
    }
    if let Ok(b) = v.cast::<PyBytes>() {
        return from_bytes(b.as_bytes()).map(Some);
    }
    Ok(None)
}

/// A field's values, owned (converted from Python).
enum Owned {
    One(u128),
    Each(Vec<u64>),
    Bytes(Vec<u8>),
}

/// A payload, owned.
enum OwnedPayload {
    Template,
    One(Vec<u8>),
    Each(Vec<Vec<u8>>),
}

/// `fields={...}` converted, with the packet count.
pub(crate) struct FillArgs {
    n: usize,
    sets: Vec<(Field, Owned)>,
    payload: OwnedPayload,
}

fn column(slot: &Slot, v: &Bound<'_, PyAny>) -> PyResult<Owned> {
    let py = v.py();
    let name = slot.field.name();
    // Rows of bytes: an (n, width) uint8 array (IPv6 addresses, MACs).
    if let Ok(a) = v.extract::<PyReadonlyArray2<'_, u8>>() {
        if a.shape()[1] != slot.width {
            return Err(PyValueError::new_err(format!(
                "{name} rows are {} bytes wide; the field is {} bytes",
                a.shape()[1],
                slot.width
            )));
        }
        return Ok(Owned::Bytes(a.as_array().iter().copied().collect()));
    }
    // A list of strings or address objects: convert each.
    if v.is_instance_of::<PyList>() || v.is_instance_of::<PyTuple>() {
        let items: Vec<Bound<'_, PyAny>> = v.try_iter()?.collect::<PyResult<_>>()?;
        if items.iter().any(|x| !x.is_instance_of::<PyInt>()) {
            let vals = items
                .iter()
                .map(|x| {
                    scalar(slot, x)?.ok_or_else(|| {
                        PyTypeError::new_err(format!("{name} values must be ints or addresses"))
                    })
                })
                .collect::<PyResult<Vec<u128>>>()?;
            if slot.bits <= 64 {
                return Ok(Owned::Each(vals.into_iter().map(|x| x as u64).collect()));
            }
            let mut out = Vec::with_capacity(vals.len() * slot.width);
            for x in vals {
                out.extend_from_slice(&x.to_be_bytes()[16 - slot.width..]);
            }
            return Ok(Owned::Bytes(out));
        }
    }
    let np = py.import("numpy")?;
    let arr = np
        .call_method1("asarray", (v, np.getattr("uint64")?))
        .map_err(|e| {
            PyValueError::new_err(format!(
                "{name} must be a value or a 1-D column of non-negative ints ({e})"
            ))
        })?;
    let a = arr.extract::<PyReadonlyArray1<'_, u64>>().map_err(|_| {
        PyValueError::new_err(format!(
            "{name} must be a 1-D column (one value per packet)"
        ))
    })?;
    Ok(Owned::Each(a.as_array().to_vec()))
}

fn payload_arg(v: &Bound<'_, PyAny>) -> PyResult<OwnedPayload> {
    if v.is_none() {
        return Ok(OwnedPayload::Template);
    }
    if v.is_instance_of::<PyList>() || v.is_instance_of::<PyTuple>() {
        let each = v
            .try_iter()?
            .map(|x| x?.extract::<Vec<u8>>())
            .collect::<PyResult<_>>()
            .map_err(|_| {
                PyTypeError::new_err("payload must be bytes, or a list of bytes (one per packet)")
            })?;
        return Ok(OwnedPayload::Each(each));
    }
    if let Ok(b) = v.cast::<PyBytes>() {
        return Ok(OwnedPayload::One(b.as_bytes().to_vec()));
    }
    let buf = pyo3::buffer::PyBuffer::<u8>::get(v).map_err(|_| {
        PyTypeError::new_err("payload must be bytes, a bytes-like object, or a list of bytes")
    })?;
    Ok(OwnedPayload::One(buf.to_vec(v.py())?))
}

impl FillArgs {
    /// Convert `fields` for `tpl`; `count` None takes the length of the first column or
    /// payload list, else 1.
    pub(crate) fn new(
        tpl: &Template,
        count: Option<usize>,
        fields: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let mut sets = Vec::new();
        let mut payload = OwnedPayload::Template;
        let mut inferred = None;
        for (k, v) in fields.into_iter().flat_map(|d| d.iter()) {
            let key = k
                .extract::<String>()
                .map_err(|_| PyTypeError::new_err("fields keys must be field names (str)"))?;
            if key == "payload" {
                payload = payload_arg(&v)?;
                if let OwnedPayload::Each(l) = &payload {
                    inferred = inferred.or(Some(l.len()));
                }
                continue;
            }
            let field = Field::from_name(&key).ok_or_else(|| {
                let have: Vec<_> = tpl.fields().iter().map(|f| f.name()).collect();
                PyKeyError::new_err(format!(
                    "no field {key:?}: this template's fields are {have:?} and \"payload\""
                ))
            })?;
            let slot = tpl
                .slot(field)
                .map_err(|e| PyKeyError::new_err(e.to_string()))?;
            let owned = match scalar(&slot, &v)? {
                Some(x) => Owned::One(x),
                None => column(&slot, &v)?,
            };
            match &owned {
                Owned::Each(c) => inferred = inferred.or(Some(c.len())),
                Owned::Bytes(b) => inferred = inferred.or(Some(b.len() / slot.width)),
                Owned::One(_) => {}
            }
            sets.push((field, owned));
        }
        Ok(FillArgs {
            n: count.or(inferred).unwrap_or(1),
            sets,
            payload,
        })
    }

    /// Run `f` on the core `Fill` (every value checked: ValueError naming the first bad one).
    pub(crate) fn with_fill<R>(
        &self,
        tpl: &Template,
        f: impl FnOnce(&Fill<'_>) -> PyResult<R>,
    ) -> PyResult<R> {
        let mut fill = Fill::new(self.n);
        for (field, owned) in &self.sets {
            let v = match owned {
                Owned::One(x) => Values::One(*x),
                Owned::Each(c) => Values::Each(c),
                Owned::Bytes(b) => Values::Bytes(b),
            };
            fill.set(tpl, *field, v).py()?;
        }
        let refs: Vec<&[u8]>;
        let p = match &self.payload {
            OwnedPayload::Template => Payloads::Template,
            OwnedPayload::One(b) => Payloads::One(b),
            OwnedPayload::Each(l) => {
                refs = l.iter().map(|b| &b[..]).collect();
                Payloads::Each(&refs)
            }
        };
        fill.payload(tpl, p).py()?;
        f(&fill)
    }
}

#[pymethods]
impl PyTemplate {
    /// A template from fields; unset ones keep the defaults (see `repr`). `proto` is "udp" or
    /// "tcp"; `vlan` (an id) adds an 802.1Q tag with priority `pcp`; `tcp_flags` is an int or
    /// letters as scapy writes them ("S", "SA", "PA").
    #[new]
    #[pyo3(signature = (*, dst_mac=None, src_mac=None, src_ip=None, dst_ip=None, proto="udp",
        src_port=None, dst_port=None, vlan=None, pcp=0, ttl=None, tos=0, ip_id=0,
        dont_fragment=true, flow_label=0, seq=0, ack=0, tcp_flags=None, window=None,
        payload=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        dst_mac: Option<&Bound<'_, PyAny>>,
        src_mac: Option<&Bound<'_, PyAny>>,
        src_ip: Option<&Bound<'_, PyAny>>,
        dst_ip: Option<&Bound<'_, PyAny>>,
        proto: &str,
        src_port: Option<u16>,
        dst_port: Option<u16>,
        vlan: Option<u16>,
        pcp: u8,
        ttl: Option<u8>,
        tos: u8,
        ip_id: u16,
        dont_fragment: bool,
        flow_label: u32,
        seq: u32,
        ack: u32,
        tcp_flags: Option<&Bound<'_, PyAny>>,
        window: Option<u16>,
        payload: Option<Vec<u8>>,
    ) -> PyResult<Self> {
        let d = Spec::default();
        let proto = match proto.to_ascii_lowercase().as_str() {
            "udp" => IPPROTO_UDP,
            "tcp" => IPPROTO_TCP,
            p => {
                return Err(PyValueError::new_err(format!(
                    "proto {p:?}: give \"udp\" or \"tcp\""
                )))
            }
        };
        if vlan.is_some_and(|v| v > 4095) || pcp > 7 {
            return Err(PyValueError::new_err(format!(
                "vlan={vlan:?}, pcp={pcp}: a VLAN id is 0..=4095 and a priority 0..=7"
            )));
        }
        let src_ip = src_ip.map(ip_addr).transpose()?;
        let dst_ip = dst_ip.map(ip_addr).transpose()?;
        // One address given as IPv6 makes the other default IPv6 too (fd00::1 / fd00::2).
        let v6 = src_ip.or(dst_ip).is_some_and(|a| a.is_ipv6());
        let (dsrc, ddst) = if v6 {
            (
                IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 1u16]),
                IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 2u16]),
            )
        } else {
            (d.src_ip, d.dst_ip)
        };
        let spec = Spec {
            dst_mac: dst_mac.map(mac6).transpose()?.unwrap_or(d.dst_mac),
            src_mac: src_mac.map(mac6).transpose()?.unwrap_or(d.src_mac),
            vlan_tci: vlan.map(|v| (pcp as u16) << 13 | v),
            src_ip: src_ip.unwrap_or(dsrc),
            dst_ip: dst_ip.unwrap_or(ddst),
            proto,
            src_port: src_port.unwrap_or(d.src_port),
            dst_port: dst_port.unwrap_or(d.dst_port),
            ttl: ttl.unwrap_or(d.ttl),
            tos,
            ip_id,
            dont_fragment,
            flow_label,
            seq,
            ack,
            tcp_flags: tcp_flags
                .map(tcp_flags_arg)
                .transpose()?
                .unwrap_or(d.tcp_flags),
            window: window.unwrap_or(d.window),
            payload: payload.unwrap_or_default(),
        };
        Ok(PyTemplate {
            inner: Template::build(&spec).py()?,
        })
    }

    /// A template from a frame (bytes-like): Ethernet (VLAN tags allowed), IPv4 or IPv6, a
    /// whole UDP or TCP header; its field values and payload become the template's.
    #[staticmethod]
    fn from_frame(frame: Vec<u8>) -> PyResult<Self> {
        Ok(PyTemplate {
            inner: Template::from_frame(&frame).py()?,
        })
    }

    /// Names of the fields this template has (besides "payload").
    #[getter]
    fn fields(&self) -> Vec<&'static str> {
        self.inner.fields().iter().map(|f| f.name()).collect()
    }

    /// 4 or 6.
    #[getter]
    fn ip_version(&self) -> u8 {
        self.inner.ip_version()
    }

    /// The IP protocol number (17 UDP, 6 TCP).
    #[getter]
    fn proto(&self) -> u8 {
        self.inner.proto()
    }

    /// The template's own payload.
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.payload())
    }

    /// The value of field `name` in the template (an int: MACs and addresses as integers).
    fn __getitem__(&self, name: &str) -> PyResult<u128> {
        let f = Field::from_name(name)
            .ok_or_else(|| PyKeyError::new_err(format!("no field {name:?}: see .fields")))?;
        self.inner
            .value(f)
            .map_err(|e| PyKeyError::new_err(e.to_string()))
    }

    /// The frame the template makes unfilled (lengths and checksums set; padded to 60 bytes).
    fn frame<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.frame())
    }

    /// `count` frames filled as `Batch.emit_template` would emit them, as bytes (e.g. to send
    /// through another socket, or to check a fill). `fields` as there.
    #[pyo3(signature = (count=None, fields=None))]
    fn frames<'py>(
        &self,
        py: Python<'py>,
        count: Option<usize>,
        fields: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let args = FillArgs::new(&self.inner, count, fields)?;
        let tpl = &self.inner;
        args.with_fill(tpl, |fill| {
            let mut buf = vec![0u8; fill.max_frame_len(tpl)];
            (0..fill.len())
                .map(|i| {
                    let w = fill.write(tpl, i, &mut buf, Checksum::Full).py()?;
                    Ok(PyBytes::new(py, &buf[..w.len]))
                })
                .collect()
        })
    }

    fn __repr__(&self) -> String {
        let t = &self.inner;
        let parts: Vec<String> = t
            .fields()
            .iter()
            .map(|f| format!("{}={:#x}", f.name(), t.value(*f).unwrap_or(0)))
            .collect();
        format!(
            "Template(IPv{} {}, {}, payload {} bytes)",
            t.ip_version(),
            if t.proto() == IPPROTO_TCP {
                "TCP"
            } else {
                "UDP"
            },
            parts.join(", "),
            t.payload().len()
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTemplate>()?;
    Ok(())
}
