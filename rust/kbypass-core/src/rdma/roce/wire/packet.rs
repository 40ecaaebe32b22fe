//! A RoCEv2 frame: Ethernet (optionally one 802.1Q tag), IPv4 or IPv6, UDP to port 4791, and
//! the InfiniBand transport packet it carries ([`Packet`]).

use super::headers::{Bth, ExtHeaders, BTH_LEN, ICRC_LEN};
use super::{icrc, WireError, MAX_PAYLOAD, ROCE_PORT};

const ETH_LEN: usize = 14;
const VLAN_LEN: usize = 4;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const UDP_LEN: usize = 8;
const PROTO_UDP: u8 = 17;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn need(layer: &'static str, b: &[u8], n: usize) -> Result<(), WireError> {
    if b.len() < n {
        Err(WireError::Truncated {
            layer,
            need: n,
            have: b.len(),
        })
    } else {
        Ok(())
    }
}

/// One's complement sum of 16-bit words (RFC 1071), not yet complemented.
fn sum16(mut acc: u32, b: &[u8]) -> u32 {
    let mut chunks = b.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The IP header of a RoCEv2 frame (the fields the sender chooses; lengths, protocol and
/// checksums follow from the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpHeader {
    /// IPv4 (sent with DF, no options).
    V4 {
        /// Source address.
        src: [u8; 4],
        /// Destination address.
        dst: [u8; 4],
        /// Type of service (DSCP and ECN).
        tos: u8,
        /// Time to live.
        ttl: u8,
        /// Identification.
        id: u16,
    },
    /// IPv6 (no extension headers).
    V6 {
        /// Source address.
        src: [u8; 16],
        /// Destination address.
        dst: [u8; 16],
        /// Traffic class.
        traffic_class: u8,
        /// Flow label (20 bits).
        flow_label: u32,
        /// Hop limit.
        hop_limit: u8,
    },
}

impl IpHeader {
    fn len(&self) -> usize {
        match self {
            IpHeader::V4 { .. } => IPV4_LEN,
            IpHeader::V6 { .. } => IPV6_LEN,
        }
    }
}

/// The InfiniBand transport packet in a UDP datagram: BTH, extension headers, payload (a
/// view into the frame), pad and ICRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// Base transport header.
    pub bth: Bth,
    /// The extension headers the opcode carries.
    pub ext: ExtHeaders,
    /// The payload, without the pad.
    pub payload: &'a [u8],
    /// The ICRC bytes as received.
    pub icrc: [u8; ICRC_LEN],
}

impl<'a> Packet<'a> {
    /// Parses the UDP payload of a RoCEv2 datagram (no ICRC check: that needs the IP and UDP
    /// headers, see [`Frame::parse`]).
    pub fn parse(udp_payload: &'a [u8]) -> Result<Packet<'a>, WireError> {
        let b = udp_payload;
        need("BTH", b, BTH_LEN)?;
        let bth_bytes: &[u8; BTH_LEN] = b[..BTH_LEN].try_into().expect("12 bytes checked");
        let bth = Bth::read(bth_bytes)?;
        let ext_len = bth.opcode.headers().wire_len();
        need(
            "extension headers and ICRC",
            b,
            BTH_LEN + ext_len + ICRC_LEN,
        )?;
        let ext = ExtHeaders::read(bth.opcode, &b[BTH_LEN..]);
        let (data, icrc) = b[BTH_LEN + ext_len..].split_at(b.len() - BTH_LEN - ext_len - ICRC_LEN);
        let pad = bth.pad;
        let bad_pad = WireError::BadPad {
            pad,
            data_len: data.len(),
        };
        if !bth.opcode.has_payload() {
            if pad != 0 {
                return Err(bad_pad);
            }
            if !data.is_empty() {
                return Err(WireError::Oversize {
                    len: data.len(),
                    max: 0,
                });
            }
        }
        if usize::from(pad) > data.len() || data.len() % 4 != 0 {
            return Err(bad_pad);
        }
        let payload = &data[..data.len() - usize::from(pad)];
        if payload.len() > MAX_PAYLOAD {
            return Err(WireError::Oversize {
                len: payload.len(),
                max: MAX_PAYLOAD,
            });
        }
        Ok(Packet {
            bth,
            ext,
            payload,
            icrc: icrc.try_into().expect("4 bytes checked"),
        })
    }
}

/// A received RoCEv2 frame, parsed and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Destination MAC.
    pub eth_dst: [u8; 6],
    /// Source MAC.
    pub eth_src: [u8; 6],
    /// The 802.1Q tag control information, if the frame is tagged.
    pub vlan_tci: Option<u16>,
    /// The IP header.
    pub ip: IpHeader,
    /// UDP source port (the sender's flow entropy).
    pub udp_src: u16,
    /// The transport packet.
    pub packet: Packet<'a>,
}

impl<'a> Frame<'a> {
    /// Parses and checks a frame, the UDP checksum (when not zero) and the ICRC included.
    /// Bytes after the IP packet (Ethernet padding of short frames) are ignored.
    pub fn parse(frame: &'a [u8]) -> Result<Frame<'a>, WireError> {
        let (f, ip, ip_hdr_len) = Frame::parse_inner(frame)?;
        if !udp_checksum_ok(ip, ip_hdr_len) {
            return Err(WireError::BadUdpChecksum);
        }
        let body = &ip[..ip.len() - ICRC_LEN];
        let computed = icrc::compute(body, ip_hdr_len)?;
        if computed != f.packet.icrc {
            return Err(WireError::BadIcrc {
                computed,
                found: f.packet.icrc,
            });
        }
        Ok(f)
    }

    /// Parses and checks a frame like [`Frame::parse`] but leaves the ICRC unchecked (for
    /// tools that show damaged packets).
    pub fn parse_headers(frame: &'a [u8]) -> Result<Frame<'a>, WireError> {
        Frame::parse_inner(frame).map(|(f, _, _)| f)
    }

    /// The frame, the IP packet it holds and that packet's header length.
    fn parse_inner(frame: &'a [u8]) -> Result<(Frame<'a>, &'a [u8], usize), WireError> {
        need("Ethernet header", frame, ETH_LEN)?;
        let mut ethertype = be16(frame, 12);
        let mut l3 = ETH_LEN;
        let mut vlan_tci = None;
        if ethertype == ETHERTYPE_VLAN {
            need("802.1Q tag", frame, ETH_LEN + VLAN_LEN)?;
            vlan_tci = Some(be16(frame, 14));
            ethertype = be16(frame, 16);
            l3 += VLAN_LEN;
        }
        let rest = &frame[l3..];
        let (ip_hdr, ip_hdr_len, ip) = match ethertype {
            ETHERTYPE_IPV4 => parse_ipv4(rest)?,
            ETHERTYPE_IPV6 => parse_ipv6(rest)?,
            _ => return Err(WireError::NotRoce("EtherType is neither IPv4 nor IPv6")),
        };
        let l4 = &ip[ip_hdr_len..];
        need("UDP header", l4, UDP_LEN)?;
        if be16(l4, 2) != ROCE_PORT {
            return Err(WireError::NotRoce("UDP destination port is not 4791"));
        }
        let udp_len = usize::from(be16(l4, 4));
        if udp_len != l4.len() {
            return Err(WireError::LengthMismatch {
                what: "UDP length",
                claimed: udp_len,
                actual: l4.len(),
            });
        }
        let packet = Packet::parse(&l4[UDP_LEN..])?;
        let f = Frame {
            eth_dst: frame[0..6].try_into().expect("6 bytes"),
            eth_src: frame[6..12].try_into().expect("6 bytes"),
            vlan_tci,
            ip: ip_hdr,
            udp_src: be16(l4, 0),
            packet,
        };
        Ok((f, ip, ip_hdr_len))
    }
}

/// Whether the UDP checksum of the datagram after `ip_hdr_len` bytes of `ip` (an IPv4 or
/// IPv6 packet cut to its length) is zero (not computed, as rxe sends it over IPv4) or
/// right: the one's complement sum over the pseudo-header (addresses, protocol, UDP length)
/// and the datagram, checksum included, is all ones.
fn udp_checksum_ok(ip: &[u8], ip_hdr_len: usize) -> bool {
    let udp = &ip[ip_hdr_len..];
    if be16(udp, 6) == 0 {
        return true;
    }
    let addrs = if ip_hdr_len == IPV6_LEN {
        &ip[8..40]
    } else {
        &ip[12..20]
    };
    let mut acc = sum16(0, addrs);
    acc += udp.len() as u32 + u32::from(PROTO_UDP);
    fold(sum16(acc, udp)) == 0xffff
}

/// The header, its length and the IP packet (cut to its total length).
fn parse_ipv4(b: &[u8]) -> Result<(IpHeader, usize, &[u8]), WireError> {
    need("IPv4 header", b, IPV4_LEN)?;
    if b[0] >> 4 != 4 {
        return Err(WireError::BadIpHeader(
            "version is not 4 under EtherType IPv4",
        ));
    }
    let hl = usize::from(b[0] & 0x0f) * 4;
    if hl < IPV4_LEN {
        return Err(WireError::BadIpHeader("IPv4 header length below 20"));
    }
    need("IPv4 header with options", b, hl)?;
    let total = usize::from(be16(b, 2));
    if total < hl {
        return Err(WireError::LengthMismatch {
            what: "IPv4 total length",
            claimed: total,
            actual: hl,
        });
    }
    need("IPv4 packet", b, total)?;
    if be16(b, 6) & 0x3fff != 0 {
        return Err(WireError::Fragmented);
    }
    if b[9] != PROTO_UDP {
        return Err(WireError::NotRoce("IPv4 protocol is not UDP"));
    }
    if fold(sum16(0, &b[..hl])) != 0xffff {
        return Err(WireError::BadIpChecksum);
    }
    let h = IpHeader::V4 {
        src: b[12..16].try_into().expect("4 bytes"),
        dst: b[16..20].try_into().expect("4 bytes"),
        tos: b[1],
        ttl: b[8],
        id: be16(b, 4),
    };
    Ok((h, hl, &b[..total]))
}

fn parse_ipv6(b: &[u8]) -> Result<(IpHeader, usize, &[u8]), WireError> {
    need("IPv6 header", b, IPV6_LEN)?;
    if b[0] >> 4 != 6 {
        return Err(WireError::BadIpHeader(
            "version is not 6 under EtherType IPv6",
        ));
    }
    if b[6] != PROTO_UDP {
        return Err(WireError::NotRoce(
            "IPv6 next header is not UDP (RoCEv2 uses no extension headers)",
        ));
    }
    let total = IPV6_LEN + usize::from(be16(b, 4));
    need("IPv6 packet", b, total)?;
    let word = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let h = IpHeader::V6 {
        src: b[8..24].try_into().expect("16 bytes"),
        dst: b[24..40].try_into().expect("16 bytes"),
        traffic_class: (word >> 20) as u8,
        flow_label: word & 0x000f_ffff,
        hop_limit: b[7],
    };
    Ok((h, IPV6_LEN, &b[..total]))
}

/// Everything a RoCEv2 frame is built from but its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSpec {
    /// Destination MAC.
    pub eth_dst: [u8; 6],
    /// Source MAC.
    pub eth_src: [u8; 6],
    /// An 802.1Q tag control information to tag the frame with.
    pub vlan_tci: Option<u16>,
    /// The IP header.
    pub ip: IpHeader,
    /// UDP source port.
    pub udp_src: u16,
    /// The BTH (its pad count is computed from the payload).
    pub bth: Bth,
    /// The extension headers: exactly those the opcode carries.
    pub ext: ExtHeaders,
}

impl FrameSpec {
    /// Length of the frame this spec builds around `payload_len` bytes of payload.
    pub fn frame_len(&self, payload_len: usize) -> usize {
        let vlan = if self.vlan_tci.is_some() { VLAN_LEN } else { 0 };
        ETH_LEN
            + vlan
            + self.ip.len()
            + UDP_LEN
            + BTH_LEN
            + self.bth.opcode.headers().wire_len()
            + payload_len.next_multiple_of(4)
            + ICRC_LEN
    }

    /// Writes the frame around `payload` into `out` and returns its length. The BTH pad
    /// count, the pad bytes (zero), IP and UDP lengths, the IPv4 header checksum (DF set),
    /// the UDP checksum (zero on IPv4, as rxe sends it; computed on IPv6, where rxe sends
    /// zero too, and both are accepted by rxe's UDP tunnel and by [`Frame::parse`]) and the
    /// ICRC are filled in.
    pub fn build(&self, payload: &[u8], out: &mut [u8]) -> Result<usize, WireError> {
        let opcode = self.bth.opcode;
        let expected = opcode.headers();
        let given = self.ext.set();
        if expected != given {
            return Err(WireError::HeadersMismatch {
                opcode: opcode.as_u8(),
                expected,
                given,
            });
        }
        let max = if opcode.has_payload() { MAX_PAYLOAD } else { 0 };
        if payload.len() > max {
            return Err(WireError::Oversize {
                len: payload.len(),
                max,
            });
        }
        let len = self.frame_len(payload.len());
        if out.len() < len {
            return Err(WireError::BufferTooSmall {
                need: len,
                have: out.len(),
            });
        }
        let out = &mut out[..len];
        out[0..6].copy_from_slice(&self.eth_dst);
        out[6..12].copy_from_slice(&self.eth_src);
        let ethertype = match self.ip {
            IpHeader::V4 { .. } => ETHERTYPE_IPV4,
            IpHeader::V6 { .. } => ETHERTYPE_IPV6,
        };
        let mut l3 = ETH_LEN;
        if let Some(tci) = self.vlan_tci {
            out[12..14].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
            out[14..16].copy_from_slice(&tci.to_be_bytes());
            l3 += VLAN_LEN;
        }
        out[l3 - 2..l3].copy_from_slice(&ethertype.to_be_bytes());
        let ip_hdr_len = self.ip.len();
        let ip = &mut out[l3..];
        let ip_len = ip.len();
        let udp_len = ip_len - ip_hdr_len;
        // Transport packet first: the checksums cover it.
        let t = &mut ip[ip_hdr_len + UDP_LEN..];
        let mut bth = self.bth;
        bth.pad = ((4 - payload.len() % 4) % 4) as u8;
        bth.write((&mut t[..BTH_LEN]).try_into().expect("12 bytes"));
        let ext_len = expected.wire_len();
        self.ext.write(&mut t[BTH_LEN..BTH_LEN + ext_len]);
        let t_len = t.len();
        let data = &mut t[BTH_LEN + ext_len..t_len - ICRC_LEN];
        data[..payload.len()].copy_from_slice(payload);
        data[payload.len()..].fill(0);
        let udp = &mut ip[ip_hdr_len..ip_hdr_len + UDP_LEN];
        udp[0..2].copy_from_slice(&self.udp_src.to_be_bytes());
        udp[2..4].copy_from_slice(&ROCE_PORT.to_be_bytes());
        udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        udp[6..8].fill(0);
        match self.ip {
            IpHeader::V4 {
                src,
                dst,
                tos,
                ttl,
                id,
            } => {
                let h = &mut ip[..IPV4_LEN];
                h[0] = 0x45;
                h[1] = tos;
                h[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
                h[4..6].copy_from_slice(&id.to_be_bytes());
                h[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
                h[8] = ttl;
                h[9] = PROTO_UDP;
                h[10..12].fill(0);
                h[12..16].copy_from_slice(&src);
                h[16..20].copy_from_slice(&dst);
                let c = !fold(sum16(0, h));
                h[10..12].copy_from_slice(&c.to_be_bytes());
            }
            IpHeader::V6 {
                src,
                dst,
                traffic_class,
                flow_label,
                hop_limit,
            } => {
                let word = (6u32 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0xfffff);
                let h = &mut ip[..IPV6_LEN];
                h[0..4].copy_from_slice(&word.to_be_bytes());
                h[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
                h[6] = PROTO_UDP;
                h[7] = hop_limit;
                h[8..24].copy_from_slice(&src);
                h[24..40].copy_from_slice(&dst);
            }
        }
        let icrc_at = ip_len - ICRC_LEN;
        let crc = icrc::compute(&ip[..icrc_at], ip_hdr_len)?;
        ip[icrc_at..].copy_from_slice(&crc);
        if let IpHeader::V6 { .. } = self.ip {
            // Pseudo-header (addresses, UDP length, next header) and the datagram; the ICRC
            // is in the datagram, so this comes last.
            let mut acc = sum16(0, &ip[8..40]);
            acc += udp_len as u32 + u32::from(PROTO_UDP);
            acc = sum16(acc, &ip[IPV6_LEN..]);
            let c = match !fold(acc) {
                0 => 0xffff,
                c => c,
            };
            ip[IPV6_LEN + 6..IPV6_LEN + 8].copy_from_slice(&c.to_be_bytes());
        }
        Ok(len)
    }
}
