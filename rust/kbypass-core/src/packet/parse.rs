//! Header parsing into fixed columns (one [`PacketMeta`] per frame).
//!
//! The parser never reads past the frame: every field is bounds-checked, and a frame that is
//! shorter than its headers claim, or whose headers are inconsistent, is *flagged* (never
//! guessed at). Absent fields are zero, so the columns are integer-only and NaN-free.

/// The frame had an 802.1Q / 802.1ad tag (the outer VLAN id is in `vlan`).
pub const FLAG_VLAN: u16 = 1 << 0;
/// The frame ends before a header it announces (Ethernet, VLAN, IP, UDP/TCP).
pub const FLAG_TRUNCATED: u16 = 1 << 1;
/// A header is inconsistent (IPv4 IHL < 5, IP total length < header, bad version, TCP offset).
pub const FLAG_MALFORMED: u16 = 1 << 2;
/// An IP fragment; ports are parsed only for the first fragment.
pub const FLAG_FRAGMENT: u16 = 1 << 3;
/// IPv4 header with options (IHL > 5) or IPv6 with extension headers.
pub const FLAG_IP_OPTIONS: u16 = 1 << 4;
/// UDP or TCP ports were parsed.
pub const FLAG_L4: u16 = 1 << 5;

/// Ethertypes the parser understands.
pub const ETH_P_IP: u16 = 0x0800;
/// IPv6.
pub const ETH_P_IPV6: u16 = 0x86DD;
/// 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// 802.1ad service VLAN tag.
pub const ETH_P_8021AD: u16 = 0x88A8;
/// ARP.
pub const ETH_P_ARP: u16 = 0x0806;

/// IP protocol numbers.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;
/// ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

/// Parsed header columns of one frame: `#[repr(C)]` so that a slice of these is a NumPy
/// structured array without copying. All multi-byte numbers are in host order except the
/// IPv6 addresses, which are raw network-order bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PacketMeta {
    /// Frame length in bytes.
    pub len: u32,
    /// Ethertype after any VLAN tags (0 if the frame is shorter than an Ethernet header).
    pub ethertype: u16,
    /// Outer VLAN id (12 bits), 0 when untagged (see `FLAG_VLAN`).
    pub vlan: u16,
    /// Offset of the L3 header.
    pub l3_off: u16,
    /// Offset of the L4 header (0 when not reached).
    pub l4_off: u16,
    /// Offset of the L4 payload (0 when not reached).
    pub payload_off: u16,
    /// Payload length as present in the frame (bounded by the IP length and the frame).
    pub payload_len: u16,
    /// 4, 6 or 0.
    pub ip_version: u8,
    /// IP protocol (after IPv6 extension headers), 0 when not IP.
    pub proto: u8,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// UDP/TCP source port.
    pub src_port: u16,
    /// UDP/TCP destination port.
    pub dst_port: u16,
    /// IPv4 source address as a host-order integer (0 when not IPv4).
    pub src_ip4: u32,
    /// IPv4 destination address as a host-order integer.
    pub dst_ip4: u32,
    /// IPv6 source address bytes (zero when not IPv6).
    pub src_ip6: [u8; 16],
    /// IPv6 destination address bytes.
    pub dst_ip6: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<PacketMeta>() == 64);

impl PacketMeta {
    /// The record as little-endian bytes in the layout of [`PACKET_META_FIELDS`].
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..4].copy_from_slice(&self.len.to_le_bytes());
        b[4..6].copy_from_slice(&self.ethertype.to_le_bytes());
        b[6..8].copy_from_slice(&self.vlan.to_le_bytes());
        b[8..10].copy_from_slice(&self.l3_off.to_le_bytes());
        b[10..12].copy_from_slice(&self.l4_off.to_le_bytes());
        b[12..14].copy_from_slice(&self.payload_off.to_le_bytes());
        b[14..16].copy_from_slice(&self.payload_len.to_le_bytes());
        b[16] = self.ip_version;
        b[17] = self.proto;
        b[18..20].copy_from_slice(&self.flags.to_le_bytes());
        b[20..22].copy_from_slice(&self.src_port.to_le_bytes());
        b[22..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.src_ip4.to_le_bytes());
        b[28..32].copy_from_slice(&self.dst_ip4.to_le_bytes());
        b[32..48].copy_from_slice(&self.src_ip6);
        b[48..64].copy_from_slice(&self.dst_ip6);
        b
    }
}

/// The NumPy dtype description of [`PacketMeta`]: (name, numpy type string, byte offset).
pub const PACKET_META_FIELDS: &[(&str, &str, usize)] = &[
    ("len", "<u4", std::mem::offset_of!(PacketMeta, len)),
    (
        "ethertype",
        "<u2",
        std::mem::offset_of!(PacketMeta, ethertype),
    ),
    ("vlan", "<u2", std::mem::offset_of!(PacketMeta, vlan)),
    ("l3_off", "<u2", std::mem::offset_of!(PacketMeta, l3_off)),
    ("l4_off", "<u2", std::mem::offset_of!(PacketMeta, l4_off)),
    (
        "payload_off",
        "<u2",
        std::mem::offset_of!(PacketMeta, payload_off),
    ),
    (
        "payload_len",
        "<u2",
        std::mem::offset_of!(PacketMeta, payload_len),
    ),
    (
        "ip_version",
        "u1",
        std::mem::offset_of!(PacketMeta, ip_version),
    ),
    ("proto", "u1", std::mem::offset_of!(PacketMeta, proto)),
    ("flags", "<u2", std::mem::offset_of!(PacketMeta, flags)),
    (
        "src_port",
        "<u2",
        std::mem::offset_of!(PacketMeta, src_port),
    ),
    (
        "dst_port",
        "<u2",
        std::mem::offset_of!(PacketMeta, dst_port),
    ),
    ("src_ip4", "<u4", std::mem::offset_of!(PacketMeta, src_ip4)),
    ("dst_ip4", "<u4", std::mem::offset_of!(PacketMeta, dst_ip4)),
    (
        "src_ip6",
        "(16,)u1",
        std::mem::offset_of!(PacketMeta, src_ip6),
    ),
    (
        "dst_ip6",
        "(16,)u1",
        std::mem::offset_of!(PacketMeta, dst_ip6),
    ),
];

#[inline(always)]
fn be16(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]))
}

#[inline(always)]
fn be32(f: &[u8], at: usize) -> Option<u32> {
    let b = f.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn clamp16(v: usize) -> u16 {
    v.min(u16::MAX as usize) as u16
}

/// Parse one Ethernet frame.
pub fn parse(frame: &[u8]) -> PacketMeta {
    let mut m = PacketMeta {
        len: frame.len().min(u32::MAX as usize) as u32,
        ..Default::default()
    };
    let Some(mut ethertype) = be16(frame, 12) else {
        m.flags |= FLAG_TRUNCATED;
        return m;
    };
    let mut off = 14usize;
    // Up to two VLAN tags (QinQ); the outer id is reported.
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let (Some(tci), Some(inner)) = (be16(frame, off), be16(frame, off + 2)) else {
            m.ethertype = ethertype;
            m.flags |= FLAG_TRUNCATED;
            return m;
        };
        if m.flags & FLAG_VLAN == 0 {
            m.vlan = tci & 0x0fff;
            m.flags |= FLAG_VLAN;
        }
        ethertype = inner;
        off += 4;
    }
    m.ethertype = ethertype;
    m.l3_off = clamp16(off);
    match ethertype {
        ETH_P_IP => parse_ipv4(frame, off, &mut m),
        ETH_P_IPV6 => parse_ipv6(frame, off, &mut m),
        _ => {}
    }
    m
}

fn parse_ipv4(f: &[u8], off: usize, m: &mut PacketMeta) {
    let Some(&vihl) = f.get(off) else {
        m.flags |= FLAG_TRUNCATED;
        return;
    };
    if vihl >> 4 != 4 {
        m.flags |= FLAG_MALFORMED;
        return;
    }
    m.ip_version = 4;
    let ihl = (vihl & 0x0f) as usize * 4;
    if ihl < 20 {
        m.flags |= FLAG_MALFORMED;
        return;
    }
    if f.len() < off + 20 {
        m.flags |= FLAG_TRUNCATED;
        return;
    }
    m.proto = f[off + 9];
    m.src_ip4 = be32(f, off + 12).unwrap_or(0);
    m.dst_ip4 = be32(f, off + 16).unwrap_or(0);
    if ihl > 20 {
        m.flags |= FLAG_IP_OPTIONS;
    }
    let total = be16(f, off + 2).unwrap_or(0) as usize;
    if total < ihl {
        m.flags |= FLAG_MALFORMED;
        return;
    }
    if f.len() < off + ihl {
        m.flags |= FLAG_TRUNCATED;
        return;
    }
    // The IP datagram ends at total length or at the frame end, whichever comes first.
    let ip_end = if off + total > f.len() {
        m.flags |= FLAG_TRUNCATED;
        f.len()
    } else {
        off + total
    };
    let frag = be16(f, off + 6).unwrap_or(0);
    let more_fragments = frag & 0x2000 != 0;
    let frag_offset = frag & 0x1fff;
    if more_fragments || frag_offset != 0 {
        m.flags |= FLAG_FRAGMENT;
        if frag_offset != 0 {
            // Not the first fragment: no L4 header here.
            return;
        }
    }
    parse_l4(f, off + ihl, ip_end, m);
}

fn parse_ipv6(f: &[u8], off: usize, m: &mut PacketMeta) {
    let Some(&v) = f.get(off) else {
        m.flags |= FLAG_TRUNCATED;
        return;
    };
    if v >> 4 != 6 {
        m.flags |= FLAG_MALFORMED;
        return;
    }
    m.ip_version = 6;
    if f.len() < off + 40 {
        m.flags |= FLAG_TRUNCATED;
        return;
    }
    m.src_ip6.copy_from_slice(&f[off + 8..off + 24]);
    m.dst_ip6.copy_from_slice(&f[off + 24..off + 40]);
    let payload = be16(f, off + 4).unwrap_or(0) as usize;
    let ip_end = if off + 40 + payload > f.len() {
        m.flags |= FLAG_TRUNCATED;
        f.len()
    } else {
        off + 40 + payload
    };
    let mut next = f[off + 6];
    let mut at = off + 40;
    // Walk a bounded number of extension headers.
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => {
                // hop-by-hop, routing, destination options: (next, hdr ext len in 8-octet units)
                let (Some(&n), Some(&l)) = (f.get(at), f.get(at + 1)) else {
                    m.flags |= FLAG_TRUNCATED;
                    return;
                };
                m.flags |= FLAG_IP_OPTIONS;
                next = n;
                at += (l as usize + 1) * 8;
            }
            44 => {
                // fragment header: fixed 8 bytes
                let (Some(&n), Some(fo)) = (f.get(at), be16(f, at + 2)) else {
                    m.flags |= FLAG_TRUNCATED;
                    return;
                };
                m.flags |= FLAG_FRAGMENT | FLAG_IP_OPTIONS;
                next = n;
                at += 8;
                if fo >> 3 != 0 {
                    m.proto = next;
                    return;
                }
            }
            _ => break,
        }
        if at > ip_end {
            m.flags |= FLAG_TRUNCATED;
            return;
        }
    }
    m.proto = next;
    parse_l4(f, at, ip_end, m);
}

fn parse_l4(f: &[u8], at: usize, ip_end: usize, m: &mut PacketMeta) {
    m.l4_off = clamp16(at);
    let hdr = match m.proto {
        IPPROTO_UDP => 8,
        IPPROTO_TCP => {
            let Some(&doff) = f.get(at + 12) else {
                m.flags |= FLAG_TRUNCATED;
                return;
            };
            let h = (doff >> 4) as usize * 4;
            if h < 20 {
                m.flags |= FLAG_MALFORMED;
                return;
            }
            h
        }
        _ => {
            m.payload_off = clamp16(at);
            m.payload_len = clamp16(ip_end.saturating_sub(at));
            return;
        }
    };
    let (Some(sp), Some(dp)) = (be16(f, at), be16(f, at + 2)) else {
        m.flags |= FLAG_TRUNCATED;
        return;
    };
    m.src_port = sp;
    m.dst_port = dp;
    m.flags |= FLAG_L4;
    if at + hdr > ip_end {
        m.flags |= FLAG_TRUNCATED;
        return;
    }
    m.payload_off = clamp16(at + hdr);
    m.payload_len = clamp16(ip_end - (at + hdr));
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A UDP/IPv4 frame with valid lengths (checksums zero).
    pub(crate) fn udp4(payload: usize, sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8 + payload];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((20 + 8 + payload) as u16).to_be_bytes());
        f[22] = 64;
        f[23] = IPPROTO_UDP;
        f[26..30].copy_from_slice(&[198, 18, 0, 1]);
        f[30..34].copy_from_slice(&[198, 18, 0, 2]);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f[38..40].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        f
    }

    #[test]
    fn to_bytes_matches_the_field_table() {
        let m = parse(&udp4(18, 0x1234, 0x5678));
        let b = m.to_bytes();
        let at = |name: &str| PACKET_META_FIELDS.iter().find(|f| f.0 == name).unwrap().2;
        assert_eq!(
            u16::from_le_bytes([b[at("src_port")], b[at("src_port") + 1]]),
            0x1234
        );
        assert_eq!(
            u16::from_le_bytes([b[at("dst_port")], b[at("dst_port") + 1]]),
            0x5678
        );
        assert_eq!(b[at("proto")], IPPROTO_UDP);
        let ip = u32::from_le_bytes(b[at("dst_ip4")..at("dst_ip4") + 4].try_into().unwrap());
        assert_eq!(ip, m.dst_ip4);
        assert_eq!(
            u16::from_le_bytes([b[at("flags")], b[at("flags") + 1]]),
            FLAG_L4
        );
    }

    #[test]
    fn udp_ipv4() {
        let m = parse(&udp4(18, 1234, 9000));
        assert_eq!(m.ethertype, ETH_P_IP);
        assert_eq!((m.ip_version, m.proto), (4, IPPROTO_UDP));
        assert_eq!((m.src_port, m.dst_port), (1234, 9000));
        assert_eq!(m.src_ip4, u32::from_be_bytes([198, 18, 0, 1]));
        assert_eq!(
            (m.l3_off, m.l4_off, m.payload_off, m.payload_len),
            (14, 34, 42, 18)
        );
        assert_eq!(m.flags, FLAG_L4);
        assert_eq!(m.len, 60);
    }

    #[test]
    fn vlan_tagged_tcp_ipv6_with_extension_header() {
        let mut f = vec![0u8; 18];
        f[12..14].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
        f[14..16].copy_from_slice(&0x0123u16.to_be_bytes());
        f[16..18].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        let mut ip = vec![0u8; 40];
        ip[0] = 0x60;
        ip[6] = 60; // destination options follow
        ip[8..24].copy_from_slice(&[0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let mut ext = vec![0u8; 8];
        ext[0] = IPPROTO_TCP;
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&443u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&50000u16.to_be_bytes());
        tcp[12] = 5 << 4;
        let payload = [7u8; 10];
        let plen = (ext.len() + tcp.len() + payload.len()) as u16;
        ip[4..6].copy_from_slice(&plen.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&ext);
        f.extend_from_slice(&tcp);
        f.extend_from_slice(&payload);
        let m = parse(&f);
        assert_eq!(m.vlan, 0x123);
        assert_eq!(
            (m.ethertype, m.ip_version, m.proto),
            (ETH_P_IPV6, 6, IPPROTO_TCP)
        );
        assert_eq!((m.src_port, m.dst_port), (443, 50000));
        assert_eq!(m.l3_off, 18);
        assert_eq!(m.l4_off, 18 + 40 + 8);
        assert_eq!(m.payload_len, 10);
        assert_eq!(m.src_ip6[0..2], [0x20, 0x01]);
        assert_eq!(m.flags, FLAG_VLAN | FLAG_IP_OPTIONS | FLAG_L4);
    }

    #[test]
    fn truncated_frames_are_flagged_at_every_length() {
        let full = udp4(18, 1, 2);
        for n in 0..full.len() {
            let m = parse(&full[..n]);
            assert_eq!(m.len as usize, n);
            if n < 42 {
                assert!(m.flags & FLAG_TRUNCATED != 0, "len {n}: {m:?}");
            }
        }
    }

    #[test]
    fn malformed_headers_are_flagged() {
        let mut f = udp4(0, 1, 2);
        f[14] = 0x43; // IHL 3
        assert!(parse(&f).flags & FLAG_MALFORMED != 0);
        let mut f = udp4(0, 1, 2);
        f[16..18].copy_from_slice(&10u16.to_be_bytes()); // total length < header
        assert!(parse(&f).flags & FLAG_MALFORMED != 0);
        let mut f = udp4(0, 1, 2);
        f[14] = 0x55; // version 5 in an IPv4 ethertype
        assert!(parse(&f).flags & FLAG_MALFORMED != 0);
    }

    #[test]
    fn later_fragments_have_no_ports() {
        let mut f = udp4(8, 1, 2);
        f[20..22].copy_from_slice(&0x0010u16.to_be_bytes()); // offset 16*8
        let m = parse(&f);
        assert!(m.flags & FLAG_FRAGMENT != 0);
        assert_eq!((m.src_port, m.dst_port, m.flags & FLAG_L4), (0, 0, 0));
    }

    #[test]
    fn parse_never_panics_on_random_bytes() {
        // A deterministic xorshift fuzz; every length and byte pattern must parse.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let base = udp4(40, 5, 6);
        for _ in 0..20_000 {
            let mut f = base.clone();
            let n = (rnd() % (f.len() as u64 + 1)) as usize;
            f.truncate(n);
            for _ in 0..(rnd() % 6) {
                if !f.is_empty() {
                    let i = (rnd() % f.len() as u64) as usize;
                    f[i] = rnd() as u8;
                }
            }
            let m = parse(&f);
            assert!(
                m.payload_off as usize + m.payload_len as usize
                    <= f.len().max(m.payload_off as usize)
            );
            assert!(m.l4_off as usize <= f.len() || m.flags & FLAG_TRUNCATED != 0);
        }
    }
}
