//! Packet templates: a UDP or TCP frame over IPv4 or IPv6 (optionally VLAN-tagged) whose named
//! fields are filled per packet, as pktgen's or scapy's packet descriptions are.
//!
//! A [`Template`] is built from fields ([`Spec`]) or from a frame (bytes), which it parses
//! once: the offset and width of every fillable [`Field`] are computed then ([`Template::slot`]),
//! so filling a packet is copying the headers, writing values at known offsets, copying the
//! payload, setting the IP and UDP lengths and the IPv4 header checksum, and either computing
//! the UDP/TCP checksum or leaving it to the device ([`Checksum::Offload`]: the pseudo-header
//! sum in the field, as `CHECKSUM_PARTIAL` and AF_XDP TX metadata want it).
//!
//! A [`Fill`] says what to write into `n` packets: per field one value for all or one per
//! packet, and the payload (the template's, one for all, or one per packet). Every value and
//! length is checked when it is added, so writing a packet cannot fail half-way.
//!
//! Frames shorter than an Ethernet minimum (60 bytes without the FCS) are padded with zeros
//! after the IP datagram, which the IP length excludes.

use std::net::IpAddr;

use super::parse::{
    parse, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, FLAG_FRAGMENT, FLAG_L4, FLAG_MALFORMED,
    FLAG_TRUNCATED, FLAG_VLAN, IPPROTO_TCP, IPPROTO_UDP,
};
use crate::error::{Error, Result};

mod fill;
pub use fill::{Checksum, Fill, Payloads, Values, Written};

/// Shortest Ethernet frame without the FCS; shorter packets are padded with zeros.
pub const ETH_ZLEN: usize = 60;

/// A fillable field of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// Ethernet destination (48-bit integer, or 6 bytes).
    DstMac,
    /// Ethernet source.
    SrcMac,
    /// Outer VLAN id (12 bits; the template must have a tag).
    Vlan,
    /// Outer VLAN priority (3 bits).
    Pcp,
    /// IP source (32-bit IPv4 or 128-bit IPv6 integer, or its bytes).
    SrcIp,
    /// IP destination.
    DstIp,
    /// IPv4 TTL or IPv6 hop limit.
    Ttl,
    /// IPv4 TOS or IPv6 traffic class (8 bits).
    Tos,
    /// IPv4 identification (16 bits; IPv4 only).
    IpId,
    /// IPv6 flow label (20 bits; IPv6 only).
    FlowLabel,
    /// UDP/TCP source port.
    SrcPort,
    /// UDP/TCP destination port.
    DstPort,
    /// TCP sequence number (TCP only).
    Seq,
    /// TCP acknowledgment number (TCP only).
    Ack,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, URG 0x20, ...).
    TcpFlags,
    /// TCP window (TCP only).
    Window,
}

impl Field {
    /// Every field, in a stable order.
    pub const ALL: [Field; 16] = [
        Field::DstMac,
        Field::SrcMac,
        Field::Vlan,
        Field::Pcp,
        Field::SrcIp,
        Field::DstIp,
        Field::Ttl,
        Field::Tos,
        Field::IpId,
        Field::FlowLabel,
        Field::SrcPort,
        Field::DstPort,
        Field::Seq,
        Field::Ack,
        Field::TcpFlags,
        Field::Window,
    ];

    /// Its name, as Python spells it.
    pub fn name(self) -> &'static str {
        match self {
            Field::DstMac => "dst_mac",
            Field::SrcMac => "src_mac",
            Field::Vlan => "vlan",
            Field::Pcp => "pcp",
            Field::SrcIp => "src_ip",
            Field::DstIp => "dst_ip",
            Field::Ttl => "ttl",
            Field::Tos => "tos",
            Field::IpId => "ip_id",
            Field::FlowLabel => "flow_label",
            Field::SrcPort => "src_port",
            Field::DstPort => "dst_port",
            Field::Seq => "seq",
            Field::Ack => "ack",
            Field::TcpFlags => "tcp_flags",
            Field::Window => "window",
        }
    }

    /// The field named `name` (also `hop_limit` for the TTL, `traffic_class` for the TOS).
    pub fn from_name(name: &str) -> Option<Field> {
        match name {
            "hop_limit" => Some(Field::Ttl),
            "traffic_class" => Some(Field::Tos),
            _ => Field::ALL.into_iter().find(|f| f.name() == name),
        }
    }
}

/// Where a field lives in a template's frame: `bits` bits ending `shift` bits before the end
/// of the `width` big-endian bytes at `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The field.
    pub field: Field,
    /// Offset of its first byte in the frame.
    pub off: usize,
    /// Bytes it touches (1..=16).
    pub width: usize,
    /// Its value's bits (a value must fit).
    pub bits: u32,
    /// How far its lowest bit is from the end of the bytes.
    pub shift: u32,
}

impl Slot {
    /// Whether `v` fits the field.
    pub fn fits(&self, v: u128) -> bool {
        self.bits >= 128 || v >> self.bits == 0
    }

    /// Write `v` (which fits) into `frame`, keeping the bits around it.
    pub fn write(&self, frame: &mut [u8], v: u128) {
        let bytes = &mut frame[self.off..self.off + self.width];
        if self.shift == 0 && self.bits as usize == self.width * 8 {
            bytes.copy_from_slice(&v.to_be_bytes()[16 - self.width..]);
            return;
        }
        let mut old = [0u8; 16];
        old[16 - self.width..].copy_from_slice(bytes);
        let word = u128::from_be_bytes(old);
        let mask = ((1u128 << self.bits) - 1) << self.shift;
        let new = (word & !mask) | ((v << self.shift) & mask);
        bytes.copy_from_slice(&new.to_be_bytes()[16 - self.width..]);
    }

    /// The field's value in `frame`.
    pub fn read(&self, frame: &[u8]) -> u128 {
        let mut b = [0u8; 16];
        b[16 - self.width..].copy_from_slice(&frame[self.off..self.off + self.width]);
        let word = u128::from_be_bytes(b) >> self.shift;
        if self.bits >= 128 {
            word
        } else {
            word & ((1u128 << self.bits) - 1)
        }
    }
}

/// Header offsets of a template, from parsing it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    vlan: bool,
    l3: usize,
    ip_version: u8,
    proto: u8,
    l4: usize,
    payload: usize,
}

/// A UDP or TCP packet over IPv4 or IPv6 with fillable fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Headers, Ethernet to the end of the L4 header.
    head: Vec<u8>,
    /// The payload packets get unless a fill gives one.
    payload: Vec<u8>,
    layout: Layout,
}

/// The fields of a template built from scratch (see [`Template::build`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Ethernet destination.
    pub dst_mac: [u8; 6],
    /// Ethernet source.
    pub src_mac: [u8; 6],
    /// An 802.1Q tag's TCI (priority << 13 | id), or none.
    pub vlan_tci: Option<u16>,
    /// IP source; IPv4 or IPv6, as the destination.
    pub src_ip: IpAddr,
    /// IP destination.
    pub dst_ip: IpAddr,
    /// [`IPPROTO_UDP`] or [`IPPROTO_TCP`].
    pub proto: u8,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// IPv4 TTL / IPv6 hop limit.
    pub ttl: u8,
    /// IPv4 TOS / IPv6 traffic class.
    pub tos: u8,
    /// IPv4 identification.
    pub ip_id: u16,
    /// IPv4 don't-fragment bit.
    pub dont_fragment: bool,
    /// IPv6 flow label (20 bits).
    pub flow_label: u32,
    /// TCP sequence number.
    pub seq: u32,
    /// TCP acknowledgment number.
    pub ack: u32,
    /// TCP flags byte.
    pub tcp_flags: u8,
    /// TCP window.
    pub window: u16,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            dst_mac: [0x02, 0, 0xc6, 0x12, 0, 0x02],
            src_mac: [0x02, 0, 0xc6, 0x12, 0, 0x01],
            vlan_tci: None,
            src_ip: IpAddr::from([198, 18, 0, 1]),
            dst_ip: IpAddr::from([198, 18, 0, 2]),
            proto: IPPROTO_UDP,
            src_port: 10000,
            dst_port: 9000,
            ttl: 64,
            tos: 0,
            ip_id: 0,
            dont_fragment: true,
            flow_label: 0,
            seq: 0,
            ack: 0,
            tcp_flags: 0x02,
            window: 8192,
            payload: Vec::new(),
        }
    }
}

/// Largest frame a template makes (a jumbo frame without the FCS).
pub const MAX_FRAME: usize = 9014;

impl Template {
    /// Build a template from fields.
    pub fn build(s: &Spec) -> Result<Template> {
        let mut f = Vec::with_capacity(14 + 4 + 40 + 20 + s.payload.len());
        f.extend_from_slice(&s.dst_mac);
        f.extend_from_slice(&s.src_mac);
        if let Some(tci) = s.vlan_tci {
            f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        let l4_len = match s.proto {
            IPPROTO_UDP => 8,
            IPPROTO_TCP => 20,
            p => {
                return Err(Error::invalid(format!(
                    "protocol {p}: a template is UDP ({IPPROTO_UDP}) or TCP ({IPPROTO_TCP})"
                )))
            }
        };
        match (s.src_ip, s.dst_ip) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                f.extend_from_slice(&ETH_P_IP.to_be_bytes());
                let flags: u16 = if s.dont_fragment { 0x4000 } else { 0 };
                f.extend_from_slice(&[0x45, s.tos, 0, 0]);
                f.extend_from_slice(&s.ip_id.to_be_bytes());
                f.extend_from_slice(&flags.to_be_bytes());
                f.extend_from_slice(&[s.ttl, s.proto, 0, 0]);
                f.extend_from_slice(&src.octets());
                f.extend_from_slice(&dst.octets());
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                if s.flow_label >> 20 != 0 {
                    return Err(Error::invalid(format!(
                        "flow label {:#x} does not fit 20 bits",
                        s.flow_label
                    )));
                }
                f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                let word = 6u32 << 28 | (s.tos as u32) << 20 | s.flow_label;
                f.extend_from_slice(&word.to_be_bytes());
                f.extend_from_slice(&[0, 0, s.proto, s.ttl]);
                f.extend_from_slice(&src.octets());
                f.extend_from_slice(&dst.octets());
            }
            (a, b) => {
                return Err(Error::invalid(format!(
                    "src_ip {a} and dst_ip {b} are of different IP versions: give two IPv4 or two IPv6 addresses"
                )))
            }
        }
        f.extend_from_slice(&s.src_port.to_be_bytes());
        f.extend_from_slice(&s.dst_port.to_be_bytes());
        if l4_len == 8 {
            f.extend_from_slice(&[0; 4]);
        } else {
            f.extend_from_slice(&s.seq.to_be_bytes());
            f.extend_from_slice(&s.ack.to_be_bytes());
            f.extend_from_slice(&[5 << 4, s.tcp_flags]);
            f.extend_from_slice(&s.window.to_be_bytes());
            f.extend_from_slice(&[0; 4]);
        }
        let head_len = f.len();
        let ip_version = if s.src_ip.is_ipv4() { 4 } else { 6 };
        let l3 = if s.vlan_tci.is_some() { 18 } else { 14 };
        let layout = Layout {
            vlan: s.vlan_tci.is_some(),
            l3,
            ip_version,
            proto: s.proto,
            l4: head_len - l4_len,
            payload: head_len,
        };
        let t = Template {
            head: f,
            payload: s.payload.clone(),
            layout,
        };
        t.check_len(t.payload.len())?;
        Ok(t)
    }

    /// A template from a frame: Ethernet (up to two VLAN tags), IPv4 (options allowed) or IPv6
    /// (extension headers allowed), and a whole UDP or TCP header; its payload is the
    /// template's. Field values are the frame's.
    pub fn from_frame(frame: &[u8]) -> Result<Template> {
        let m = parse(frame);
        let bad = |why: &str| {
            Err(Error::invalid(format!(
                "this {}-byte frame cannot be a template: {why} (give Ethernet, IPv4 or IPv6, then a whole UDP or TCP header)",
                frame.len()
            )))
        };
        if m.flags & (FLAG_TRUNCATED | FLAG_MALFORMED) != 0 {
            return bad("it is cut short or malformed");
        }
        if m.flags & FLAG_FRAGMENT != 0 {
            return bad("it is an IP fragment");
        }
        if m.flags & FLAG_L4 == 0 || (m.proto != IPPROTO_UDP && m.proto != IPPROTO_TCP) {
            return bad("it has no UDP or TCP header");
        }
        let (l4, payload) = (m.l4_off as usize, m.payload_off as usize);
        let t = Template {
            head: frame[..payload].to_vec(),
            payload: frame[payload..payload + m.payload_len as usize].to_vec(),
            layout: Layout {
                vlan: m.flags & FLAG_VLAN != 0,
                l3: m.l3_off as usize,
                ip_version: m.ip_version,
                proto: m.proto,
                l4,
                payload,
            },
        };
        t.check_len(t.payload.len())?;
        Ok(t)
    }

    /// 4 or 6.
    pub fn ip_version(&self) -> u8 {
        self.layout.ip_version
    }

    /// [`IPPROTO_UDP`] or [`IPPROTO_TCP`].
    pub fn proto(&self) -> u8 {
        self.layout.proto
    }

    /// Offsets of the L3 header, the L4 header and the payload.
    pub fn offsets(&self) -> (usize, usize, usize) {
        (self.layout.l3, self.layout.l4, self.layout.payload)
    }

    /// The template's own payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The frame the template makes unfilled (lengths and checksums set).
    pub fn frame(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.frame_len(self.payload.len())];
        Fill::new(1)
            .write(self, 0, &mut out, Checksum::Full)
            .expect("a template's own frame fits");
        out
    }

    /// Length of a frame with a `payload`-byte payload (padded to [`ETH_ZLEN`]).
    pub fn frame_len(&self, payload: usize) -> usize {
        (self.layout.payload + payload).max(ETH_ZLEN)
    }

    fn check_len(&self, payload: usize) -> Result<()> {
        let len = self.layout.payload + payload;
        if len > MAX_FRAME {
            return Err(Error::invalid(format!(
                "a {payload}-byte payload makes a {len}-byte frame, more than {MAX_FRAME}: give a shorter payload"
            )));
        }
        Ok(())
    }

    /// The fields this template has (VLAN ones only with a tag, IPv4/IPv6 and TCP ones by
    /// kind).
    pub fn fields(&self) -> Vec<Field> {
        Field::ALL
            .into_iter()
            .filter(|f| self.find(*f).is_some())
            .collect()
    }

    /// Where `field` lives; an error naming the template's fields when it has no such field.
    pub fn slot(&self, field: Field) -> Result<Slot> {
        self.find(field).ok_or_else(|| {
            let have: Vec<_> = self.fields().iter().map(|f| f.name()).collect();
            Error::invalid(format!(
                "this IPv{} {} template has no field {:?}: its fields are {have:?} and \"payload\"",
                self.layout.ip_version,
                if self.layout.proto == IPPROTO_TCP {
                    "TCP"
                } else {
                    "UDP"
                },
                field.name()
            ))
        })
    }

    fn find(&self, field: Field) -> Option<Slot> {
        let Layout {
            vlan,
            l3,
            ip_version: v,
            proto,
            l4,
            ..
        } = self.layout;
        let tcp = proto == IPPROTO_TCP;
        let s = |off, width, bits, shift| {
            Some(Slot {
                field,
                off,
                width,
                bits,
                shift,
            })
        };
        match field {
            Field::DstMac => s(0, 6, 48, 0),
            Field::SrcMac => s(6, 6, 48, 0),
            Field::Vlan if vlan => s(14, 2, 12, 0),
            Field::Pcp if vlan => s(14, 1, 3, 5),
            Field::SrcIp if v == 4 => s(l3 + 12, 4, 32, 0),
            Field::DstIp if v == 4 => s(l3 + 16, 4, 32, 0),
            Field::SrcIp => s(l3 + 8, 16, 128, 0),
            Field::DstIp => s(l3 + 24, 16, 128, 0),
            Field::Ttl if v == 4 => s(l3 + 8, 1, 8, 0),
            Field::Ttl => s(l3 + 7, 1, 8, 0),
            Field::Tos if v == 4 => s(l3 + 1, 1, 8, 0),
            Field::Tos => s(l3, 2, 8, 4),
            Field::IpId if v == 4 => s(l3 + 4, 2, 16, 0),
            Field::FlowLabel if v == 6 => s(l3 + 1, 3, 20, 0),
            Field::SrcPort => s(l4, 2, 16, 0),
            Field::DstPort => s(l4 + 2, 2, 16, 0),
            Field::Seq if tcp => s(l4 + 4, 4, 32, 0),
            Field::Ack if tcp => s(l4 + 8, 4, 32, 0),
            Field::TcpFlags if tcp => s(l4 + 13, 1, 8, 0),
            Field::Window if tcp => s(l4 + 14, 2, 16, 0),
            _ => None,
        }
    }

    /// The value of `field` in the template.
    pub fn value(&self, field: Field) -> Result<u128> {
        Ok(self.slot(field)?.read(&self.head))
    }
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;
