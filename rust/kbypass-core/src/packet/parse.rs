//! Header parsing into fixed columns (one [`PacketMeta`] per frame).
//!
//! The parser never reads past the frame: every field is bounds-checked, and a frame that is
//! shorter than its headers claim, or whose headers are inconsistent, is *flagged* (never
//! guessed at). Absent fields are zero, so the columns are integer-only and NaN-free.
//!
//! Its header walk is the same as the XDP filter program's (the rules are in the
//! [`crate::xdp::rules`] module docs): a field is reported exactly when a filter rule can match
//! on it, and `xdp::fuzz` checks the two against each other on random and mutated frames.

/// The frame had an 802.1Q / 802.1ad tag (the outer VLAN id is in `vlan`).
pub const FLAG_VLAN: u16 = 1 << 0;
/// The frame ends before a header it announces (Ethernet, VLAN, IP, extension header, L4).
pub const FLAG_TRUNCATED: u16 = 1 << 1;
/// A header is inconsistent: IPv4 IHL < 5 or total length < header, a bad version, TCP data
/// offset < 5, or an IP length too short for the extension or L4 header it announces.
pub const FLAG_MALFORMED: u16 = 1 << 2;
/// An IP fragment; ports are parsed only for the first fragment.
pub const FLAG_FRAGMENT: u16 = 1 << 3;
/// IPv4 header with options (IHL > 5) or IPv6 with extension headers.
pub const FLAG_IP_OPTIONS: u16 = 1 << 4;
/// UDP, TCP or SCTP ports were parsed: the whole L4 header is inside the datagram and frame.
pub const FLAG_L4: u16 = 1 << 5;

/// VLAN tags descended into (802.1Q, and QinQ's outer 802.1ad tag).
pub const VLAN_TAGS: usize = 2;
/// IPv6 extension headers (hop-by-hop, routing, fragment, destination options) walked before
/// the upper-layer protocol; the XDP program unrolls the same number.
pub const IPV6_EXT_HEADERS: usize = 8;

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
/// SCTP.
pub const IPPROTO_SCTP: u8 = 132;
/// ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 hop-by-hop options header.
pub const IPPROTO_HOPOPTS: u8 = 0;
/// IPv6 routing header.
pub const IPPROTO_ROUTING: u8 = 43;
/// IPv6 fragment header.
pub const IPPROTO_FRAGMENT: u8 = 44;
/// IPv6 destination options header.
pub const IPPROTO_DSTOPTS: u8 = 60;

/// Parsed header columns of one frame: `#[repr(C)]` so that a slice of these is a NumPy
/// structured array without copying. All multi-byte numbers are in host order except the
/// IPv6 addresses, which are raw network-order bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PacketMeta {
    /// Frame length in bytes.
    pub len: u32,
    /// Ethertype after up to two VLAN tags (0 if the frame is shorter than an Ethernet header;
    /// a third tag's TPID when there is one).
    pub ethertype: u16,
    /// Outer VLAN id (12 bits), 0 when untagged (see `FLAG_VLAN`).
    pub vlan: u16,
    /// Offset of the L3 header (0 when the Ethernet header or a VLAN tag is cut short).
    pub l3_off: u16,
    /// Offset of the L4 header (0 when not reached).
    pub l4_off: u16,
    /// Offset of the L4 payload (0 when not reached).
    pub payload_off: u16,
    /// Payload length as present in the frame (bounded by the IP length and the frame).
    pub payload_len: u16,
    /// 4 or 6 when the fixed IP header is in the frame and valid (version; IPv4 IHL ≥ 5), else 0.
    pub ip_version: u8,
    /// IP protocol, 0 when not IP. For IPv6 the first header after the extension headers walked;
    /// an extension header number when the walk stopped there (cut short or too deep).
    pub proto: u8,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// UDP/TCP/SCTP source port (0 without `FLAG_L4`).
    pub src_port: u16,
    /// UDP/TCP/SCTP destination port (0 without `FLAG_L4`).
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
///
/// The header walk is the one kbypass's XDP filter program compiles (`xdp::program`), so a
/// rule matches a frame exactly when [`crate::xdp::rules::matches`] says so for its
/// `PacketMeta`; the rules are written out in the `xdp::rules` module docs. In short: up to two
/// VLAN tags; an IP header counts when its fixed part is in the frame and valid; IPv6 extension
/// headers are walked up to [`IPV6_EXT_HEADERS`] deep; ports exist only when the whole UDP, TCP
/// or SCTP header lies inside the IP datagram *and* inside the frame, in a first fragment.
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
    // Up to two VLAN tags (QinQ); the outer id is reported. A third tag is not descended into:
    // its TPID is the EtherType, so the frame is not IP.
    for _ in 0..VLAN_TAGS {
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

/// Flag a header that would end at `end` but does not fit: past the frame is truncation, past
/// the IP datagram (`ip_end`, from the IP length field) is a malformed packet.
fn flag_short(m: &mut PacketMeta, end: usize, frame_len: usize, ip_end: usize) {
    if end > frame_len {
        m.flags |= FLAG_TRUNCATED;
    }
    if end > ip_end {
        m.flags |= FLAG_MALFORMED;
    }
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
    let ihl = (vihl & 0x0f) as usize * 4;
    if ihl < 20 {
        m.flags |= FLAG_MALFORMED;
        return;
    }
    if f.len() < off + 20 {
        m.flags |= FLAG_TRUNCATED;
        return;
    }
    // The fixed header is complete and valid: protocol and addresses exist.
    m.ip_version = 4;
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
    let ip_end = off + total;
    if ip_end > f.len() {
        m.flags |= FLAG_TRUNCATED;
    }
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

/// Whether `next` is an IPv6 extension header the walk goes through.
pub fn is_ipv6_ext(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_FRAGMENT | IPPROTO_DSTOPTS
    )
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
    if f.len() < off + 40 {
        m.flags |= FLAG_TRUNCATED;
        return;
    }
    m.ip_version = 6;
    m.src_ip6.copy_from_slice(&f[off + 8..off + 24]);
    m.dst_ip6.copy_from_slice(&f[off + 24..off + 40]);
    let ip_end = off + 40 + be16(f, off + 4).unwrap_or(0) as usize;
    if ip_end > f.len() {
        m.flags |= FLAG_TRUNCATED;
    }
    let limit = ip_end.min(f.len());
    let mut next = f[off + 6];
    let mut at = off + 40;
    for _ in 0..IPV6_EXT_HEADERS {
        if !is_ipv6_ext(next) {
            break;
        }
        m.flags |= FLAG_IP_OPTIONS;
        // An extension header counts only when all of it lies in the payload and the frame;
        // otherwise the walk stops and it is the protocol.
        if at + 8 > limit {
            flag_short(m, at + 8, f.len(), ip_end);
            m.proto = next;
            return;
        }
        let len = if next == IPPROTO_FRAGMENT {
            8
        } else {
            (f[at + 1] as usize + 1) * 8
        };
        if at + len > limit {
            flag_short(m, at + len, f.len(), ip_end);
            m.proto = next;
            return;
        }
        if next == IPPROTO_FRAGMENT {
            m.flags |= FLAG_FRAGMENT;
            if be16(f, at + 2).unwrap_or(0) >> 3 != 0 {
                // Not the first fragment: the protocol is named, its header is elsewhere.
                m.proto = f[at];
                return;
            }
        }
        next = f[at];
        at += len;
    }
    m.proto = next;
    if is_ipv6_ext(next) {
        // Deeper than IPV6_EXT_HEADERS: the protocol is the first header not walked.
        return;
    }
    parse_l4(f, at, ip_end, m);
}

/// The L4 header at `at` of a first fragment; `ip_end` is where the IP length field says the
/// datagram ends (it may lie beyond the frame).
fn parse_l4(f: &[u8], at: usize, ip_end: usize, m: &mut PacketMeta) {
    m.l4_off = clamp16(at);
    let hdr = match m.proto {
        IPPROTO_UDP => 8,
        IPPROTO_SCTP => 12,
        IPPROTO_TCP => {
            if f.len() < at + 20 {
                flag_short(m, at + 20, f.len(), ip_end);
                return;
            }
            let h = (f[at + 12] >> 4) as usize * 4;
            if h < 20 {
                m.flags |= FLAG_MALFORMED;
                return;
            }
            h
        }
        _ => {
            m.payload_off = clamp16(at);
            m.payload_len = clamp16(ip_end.min(f.len()).saturating_sub(at));
            return;
        }
    };
    // Ports exist only when the whole L4 header lies in the datagram and in the frame.
    if at + hdr > ip_end || at + hdr > f.len() {
        flag_short(m, at + hdr, f.len(), ip_end);
        return;
    }
    m.src_port = be16(f, at).unwrap_or(0);
    m.dst_port = be16(f, at + 2).unwrap_or(0);
    m.flags |= FLAG_L4;
    m.payload_off = clamp16(at + hdr);
    m.payload_len = clamp16(ip_end.min(f.len()) - (at + hdr));
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

    /// Issue 8: the parser reported `dst_port=9000` for an IPv4 datagram of total length 20
    /// (no UDP header) whose Ethernet trailer held `04d2 2328`, while flagging it truncated.
    #[test]
    fn trailer_bytes_are_never_ports() {
        let mut f = udp4(0, 1, 2);
        f.truncate(34);
        f[16..18].copy_from_slice(&20u16.to_be_bytes());
        f.extend_from_slice(&[0x04, 0xd2, 0x23, 0x28]);
        f.resize(60, 0);
        let m = parse(&f);
        assert_eq!((m.src_port, m.dst_port), (0, 0), "{m:?}");
        assert_eq!(m.flags & (FLAG_L4 | FLAG_TRUNCATED), 0, "{m:?}");
        assert_ne!(
            m.flags & FLAG_MALFORMED,
            0,
            "a UDP datagram too short for its header"
        );
        assert_eq!((m.ip_version, m.proto, m.payload_len), (4, IPPROTO_UDP, 0));
        // Long enough for the header: ports, and the payload ends at the datagram's end.
        f[16..18].copy_from_slice(&30u16.to_be_bytes());
        let m = parse(&f);
        assert_eq!((m.src_port, m.dst_port, m.flags), (1234, 9000, FLAG_L4));
        assert_eq!((m.payload_off, m.payload_len), (42, 2));
        // A header cut by the frame end is truncation, not a guess.
        let m = parse(&udp4(10, 1, 2)[..41]);
        assert_eq!((m.dst_port, m.flags & FLAG_L4), (0, 0));
        assert_ne!(m.flags & FLAG_TRUNCATED, 0);
    }

    #[test]
    fn tcp_and_sctp_headers_must_be_whole() {
        let mut f = udp4(12, 80, 443);
        f[23] = IPPROTO_TCP;
        f[34 + 12] = 5 << 4; // 20-byte header: the frame holds 8 + 12 = 20 bytes of segment
        let m = parse(&f);
        assert_eq!(
            (m.proto, m.src_port, m.dst_port, m.flags),
            (6, 80, 443, FLAG_L4)
        );
        f[34 + 12] = 6 << 4; // 24 bytes claimed
        let m = parse(&f);
        assert_eq!((m.dst_port, m.flags & FLAG_L4), (0, 0));
        assert_ne!(m.flags & FLAG_MALFORMED, 0);
        f[23] = IPPROTO_SCTP;
        let m = parse(&f);
        assert_eq!(
            (m.proto, m.src_port, m.dst_port, m.flags),
            (132, 80, 443, FLAG_L4)
        );
        assert_eq!((m.payload_off, m.payload_len), (46, 8));
    }

    #[test]
    fn ip_version_only_for_a_valid_fixed_header() {
        let mut f = udp4(0, 1, 2);
        f[14] = 0x44;
        assert_eq!(parse(&f).ip_version, 0);
        assert_eq!(parse(&udp4(0, 1, 2)[..33]).ip_version, 0);
        assert_eq!(parse(&udp4(0, 1, 2)[..34]).ip_version, 4);
        // Total length below the header: addresses are read, no L4.
        let mut f = udp4(0, 1, 2);
        f[16..18].copy_from_slice(&19u16.to_be_bytes());
        let m = parse(&f);
        assert_eq!(
            (m.ip_version, m.dst_ip4, m.flags & FLAG_L4),
            (4, 0xc612_0002, 0)
        );
    }

    /// An IPv6 UDP frame behind `chain` (extension headers), `first` the first next header.
    fn udp6_behind(first: u8, chain: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        let mut ip = vec![0u8; 40];
        ip[0] = 0x60;
        ip[6] = first;
        let udp = [0x04, 0xd2, 0x23, 0x28, 0, 8, 0, 0];
        ip[4..6].copy_from_slice(&((chain.len() + udp.len()) as u16).to_be_bytes());
        f.extend(ip);
        f.extend_from_slice(chain);
        f.extend_from_slice(&udp);
        f
    }

    fn opts(next: u8, units: u8) -> Vec<u8> {
        let mut h = vec![0u8; (units as usize + 1) * 8];
        h[0] = next;
        h[1] = units;
        h
    }

    #[test]
    fn ipv6_extension_headers_walk_and_its_limits() {
        let mut chain = opts(IPPROTO_ROUTING, 0);
        chain.extend(opts(IPPROTO_FRAGMENT, 2));
        chain.extend([IPPROTO_DSTOPTS, 0, 0, 1, 0, 0, 0, 9]); // first fragment, M set
        chain.extend(opts(IPPROTO_UDP, 1));
        let m = parse(&udp6_behind(IPPROTO_HOPOPTS, &chain));
        assert_eq!((m.proto, m.src_port, m.dst_port), (17, 1234, 9000));
        assert_eq!(m.l4_off as usize, 14 + 40 + chain.len());
        assert_eq!(m.flags, FLAG_IP_OPTIONS | FLAG_FRAGMENT | FLAG_L4);
        // Eight are walked, a ninth is the protocol.
        let deep = |n: usize| {
            let mut c = Vec::new();
            for i in 0..n {
                c.extend(opts(if i + 1 == n { IPPROTO_UDP } else { 60 }, 0));
            }
            parse(&udp6_behind(IPPROTO_DSTOPTS, &c))
        };
        assert_eq!((deep(8).proto, deep(8).dst_port), (17, 9000));
        assert_eq!(
            (deep(9).proto, deep(9).dst_port, deep(9).flags & FLAG_L4),
            (60, 0, 0)
        );
        // A header reaching past the payload length: the walk stops at it (malformed); past
        // the frame end: truncated.
        let mut f = udp6_behind(IPPROTO_HOPOPTS, &chain);
        f[18..20].copy_from_slice(&12u16.to_be_bytes());
        let m = parse(&f);
        assert_eq!((m.proto, m.flags & FLAG_L4), (IPPROTO_ROUTING, 0));
        assert_ne!(m.flags & FLAG_MALFORMED, 0);
        let f = udp6_behind(IPPROTO_HOPOPTS, &chain);
        let m = parse(&f[..14 + 40 + 20]);
        assert_eq!((m.proto, m.flags & FLAG_L4), (IPPROTO_ROUTING, 0));
        assert_ne!(m.flags & FLAG_TRUNCATED, 0);
        // A later fragment names the protocol, without ports.
        let m = parse(&udp6_behind(
            IPPROTO_FRAGMENT,
            &[17, 0, 0x05, 0xc8, 0, 0, 0, 1],
        ));
        assert_eq!((m.proto, m.dst_port, m.flags & FLAG_L4), (17, 0, 0));
    }

    #[test]
    fn qinq_and_a_third_tag() {
        let ip = udp4(0, 1234, 9000)[14..].to_vec();
        let tagged = |tags: &[(u16, u16)]| {
            let mut f = vec![0u8; 12];
            for (tpid, tci) in tags {
                f.extend_from_slice(&tpid.to_be_bytes());
                f.extend_from_slice(&tci.to_be_bytes());
            }
            f.extend_from_slice(&ETH_P_IP.to_be_bytes());
            f.extend_from_slice(&ip);
            f
        };
        let m = parse(&tagged(&[(ETH_P_8021AD, 100), (ETH_P_8021Q, 7)]));
        assert_eq!(
            (m.ethertype, m.vlan, m.l3_off, m.dst_port),
            (ETH_P_IP, 100, 22, 9000)
        );
        let m = parse(&tagged(&[
            (ETH_P_8021AD, 100),
            (ETH_P_8021Q, 7),
            (ETH_P_8021Q, 8),
        ]));
        assert_eq!((m.ethertype, m.vlan, m.ip_version), (ETH_P_8021Q, 100, 0));
        assert_eq!(m.flags, FLAG_VLAN);
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
