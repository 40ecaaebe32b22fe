//! Replies built in place: a request frame is turned into its answer in the same buffer, so a
//! packet processor can be a responder (send it back with the TX verdict).
//!
//! Every helper takes `frame`, the whole buffer (its length is the *capacity*: how long the
//! reply may grow), and `len`, the bytes of the request in it; it returns the reply's length,
//! or a [`ReplyError`] saying why the frame is not answered. On an error the frame is left
//! exactly as it was: every check is made before the first byte is written, and nothing is
//! ever read or written past `len` (request) or `frame.len()` (reply).
//!
//! What the replies share:
//! - Ethernet: source and destination swapped (ARP and Neighbor Advertisement: from `my_mac`
//!   to the asker); up to two VLAN tags (802.1Q, QinQ) are kept as they are.
//! - IP: source and destination swapped, a fresh header: IPv4 without options (IHL 5, DF set,
//!   the request's identification and DSCP, ECN cleared, TTL [`REPLY_HOP_LIMIT`]); IPv6
//!   without extension headers (the request's DSCP, flow label 0, hop limit
//!   [`REPLY_HOP_LIMIT`], or [`ND_HOP_LIMIT`] for Neighbor Discovery). A request's IPv4
//!   options or IPv6 extension headers are not repeated: the answer moves up behind the
//!   fixed header.
//! - Lengths and checksums: IPv4 total length and header checksum, UDP length, and the UDP,
//!   TCP, ICMP and ICMPv6 checksums are computed (a UDP checksum over IPv4 too, never 0).
//! - A reply shorter than Ethernet's 60-byte minimum is zero-padded to 60 bytes when the buffer
//!   holds them (and returned shorter otherwise: most NICs pad on their own).
//!
//! What is not answered (an error, the frame untouched): a frame cut short or whose lengths
//! disagree, another protocol, an IP fragment, an IPv4 header whose checksum fails, an
//! ICMP/ICMPv6 request whose checksum fails (UDP and TCP checksums of requests are not
//! checked: on veth and with checksum offload the kernel leaves them partial), a request sent
//! to or from a multicast or broadcast address (the reply's source would be that address), a
//! TCP RST, an ARP or Neighbor Solicitation asking for another address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::checksum::{fold, sum16, upper_layer_checksum};
use super::edit::swap_macs;
use super::parse::{
    is_ipv6_ext, parse, PacketMeta, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, FLAG_FRAGMENT, FLAG_MALFORMED,
    FLAG_TRUNCATED, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};

/// TTL / hop limit of UDP, ICMP echo and TCP replies.
pub const REPLY_HOP_LIMIT: u8 = 64;
/// Hop limit of a Neighbor Advertisement (RFC 4861: 255, so the receiver knows it is from the
/// link).
pub const ND_HOP_LIMIT: u8 = 255;
/// Ethernet's minimum frame length without the FCS; shorter replies are padded to it.
pub const ETH_MIN_LEN: usize = 60;

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
const ND_NEIGHBOR_SOLICITATION: u8 = 135;
const ND_NEIGHBOR_ADVERTISEMENT: u8 = 136;
const ND_OPT_SOURCE_LL: u8 = 1;
const ND_OPT_TARGET_LL: u8 = 2;
const NA_FLAG_SOLICITED: u8 = 0x40;
const NA_FLAG_OVERRIDE: u8 = 0x20;
/// Bytes of a Neighbor Advertisement with a target link-layer address option.
const NA_LEN: usize = 32;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const ARP_LEN: usize = 28;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
const ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// Why a frame was not answered (the frame is then unchanged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// An argument is wrong, not the frame: `len` past the buffer, an address a reply cannot
    /// come from, an unknown reply kind.
    #[error("{0}")]
    Argument(String),
    /// The frame ends before a header or message its headers announce.
    #[error("the frame is cut short: it ends inside its {0}")]
    Truncated(&'static str),
    /// A header contradicts itself or another one.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// Not the kind of frame this helper answers.
    #[error("the frame is not {0}")]
    NotA(&'static str),
    /// The kind of frame this helper answers, but one that must not be answered.
    #[error("not answered: {0}")]
    NotAnswered(&'static str),
    /// The request's checksum does not verify.
    #[error("the request's {0} checksum does not verify")]
    BadChecksum(&'static str),
    /// An ARP request or Neighbor Solicitation for another address.
    #[error("the request asks for {asked}, not for {ours}")]
    NotOurs {
        /// The address asked for.
        asked: IpAddr,
        /// The address the helper answers for.
        ours: IpAddr,
    },
    /// The reply is longer than the buffer.
    #[error(
        "the reply needs {need} bytes but the buffer holds {capacity}: give the frame room for it"
    )]
    NoRoom {
        /// The reply's length.
        need: usize,
        /// The buffer's length.
        capacity: usize,
    },
    /// A UDP payload too long for one datagram.
    #[error("a payload of {len} bytes does not fit one UDP datagram over this IP version ({max} at most)")]
    TooLong {
        /// The payload's length.
        len: usize,
        /// The longest payload.
        max: usize,
    },
}

type Result<T> = std::result::Result<T, ReplyError>;

#[inline]
fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

#[inline]
fn be32(f: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]])
}

#[inline]
fn put16(f: &mut [u8], at: usize, v: u16) {
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
fn put32(f: &mut [u8], at: usize, v: u32) {
    f[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn is_group_mac(mac: &[u8]) -> bool {
    mac[0] & 1 != 0
}

/// IPv4 multicast, reserved (240/4) or limited broadcast.
fn is_ipv4_group(ip: &[u8]) -> bool {
    ip[0] >= 224
}

fn check_my_mac(mac: &[u8; 6]) -> Result<()> {
    if is_group_mac(mac) || mac == &[0; 6] {
        return Err(ReplyError::Argument(format!(
            "my_mac {} is a multicast or zero address: give the interface's unicast MAC",
            Mac(mac)
        )));
    }
    Ok(())
}

/// The addresses an ARP reply gives: a unicast MAC and IPv4 address.
fn check_arp_args(mac: &[u8; 6], ip: &[u8; 4]) -> Result<()> {
    check_my_mac(mac)?;
    if ip == &[0; 4] || is_ipv4_group(ip) {
        return Err(ReplyError::Argument(format!(
            "my_ipv4 {} is not a unicast address",
            Ipv4Addr::from(*ip)
        )));
    }
    Ok(())
}

/// The addresses a Neighbor Advertisement gives: a unicast MAC and IPv6 address.
fn check_nd_args(mac: &[u8; 6], ip: &[u8; 16]) -> Result<()> {
    check_my_mac(mac)?;
    if ip[0] == 0xff || ip == &[0; 16] {
        return Err(ReplyError::Argument(format!(
            "my_ipv6 {} is not a unicast address",
            Ipv6Addr::from(*ip)
        )));
    }
    Ok(())
}

/// A MAC address in the usual notation.
struct Mac<'a>(&'a [u8; 6]);

impl std::fmt::Display for Mac<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// The request `frame[..len]`, parsed; an error when `len` is past the buffer.
fn request(frame: &[u8], len: usize) -> Result<(&[u8], PacketMeta)> {
    let f = frame.get(..len).ok_or_else(|| {
        ReplyError::Argument(format!(
            "len {len} is longer than the buffer ({} bytes)",
            frame.len()
        ))
    })?;
    Ok((f, parse(f)))
}

/// Where an IP request's parts are, all inside the frame: the IP header at `l3`, the
/// upper-layer message at `l4` (after IPv4 options or IPv6 extension headers), the datagram's
/// end (by its length field; Ethernet padding after it is not part of it).
#[derive(Debug, Clone, Copy)]
struct IpRequest {
    version: u8,
    l3: usize,
    l4: usize,
    end: usize,
}

impl IpRequest {
    /// The fixed IP header's length: where the reply's upper-layer message starts after `l3`.
    fn header_len(&self) -> usize {
        if self.version == 4 {
            20
        } else {
            40
        }
    }

    /// The source and destination addresses in the request's IP header.
    fn addrs<'f>(&self, f: &'f [u8]) -> (&'f [u8], &'f [u8]) {
        if self.version == 4 {
            (
                &f[self.l3 + 12..self.l3 + 16],
                &f[self.l3 + 16..self.l3 + 20],
            )
        } else {
            (
                &f[self.l3 + 8..self.l3 + 24],
                &f[self.l3 + 24..self.l3 + 40],
            )
        }
    }
}

/// Check that `f` (parsed as `m`) is a whole, unfragmented IPv4/IPv6 datagram carrying `proto`
/// (`what` names what the helper answers, for the error).
fn ip_request(f: &[u8], m: &PacketMeta, proto: u8, what: &'static str) -> Result<IpRequest> {
    if m.ethertype != ETH_P_IP && m.ethertype != ETH_P_IPV6 {
        return Err(ReplyError::NotA(what));
    }
    if m.ip_version == 0 {
        return Err(if m.flags & FLAG_TRUNCATED != 0 {
            ReplyError::Truncated("IP header")
        } else {
            ReplyError::Malformed("a bad IP version or IPv4 header length")
        });
    }
    let l3 = m.l3_off as usize;
    let (header_end, end) = if m.ip_version == 4 {
        let ihl = (f[l3] & 0x0f) as usize * 4;
        let total = be16(f, l3 + 2) as usize;
        if f.len() < l3 + ihl {
            return Err(ReplyError::Truncated("IPv4 options"));
        }
        if total < ihl {
            return Err(ReplyError::Malformed(
                "the IPv4 total length is below the header length",
            ));
        }
        if l3 + total > f.len() {
            return Err(ReplyError::Truncated("IP datagram"));
        }
        if fold(sum16(&f[l3..l3 + ihl], 0)) != 0 {
            return Err(ReplyError::BadChecksum("IPv4 header"));
        }
        (l3 + ihl, l3 + total)
    } else {
        let end = l3 + 40 + be16(f, l3 + 4) as usize;
        if end > f.len() {
            return Err(ReplyError::Truncated("IP datagram"));
        }
        (l3 + 40, end)
    };
    if m.flags & FLAG_FRAGMENT != 0 {
        return Err(ReplyError::NotAnswered("an IP fragment"));
    }
    if m.ip_version == 6 && is_ipv6_ext(m.proto) {
        return Err(if m.flags & FLAG_MALFORMED != 0 {
            ReplyError::Malformed("an IPv6 extension header reaches past the datagram")
        } else {
            ReplyError::NotAnswered("more IPv6 extension headers than are walked (8)")
        });
    }
    if m.proto != proto {
        return Err(ReplyError::NotA(what));
    }
    let l4 = m.l4_off as usize;
    if m.flags & (FLAG_TRUNCATED | FLAG_MALFORMED) != 0 || l4 < header_end || l4 > end {
        return Err(ReplyError::Malformed(
            "the IP datagram is too short for the headers it announces",
        ));
    }
    Ok(IpRequest {
        version: m.ip_version,
        l3,
        l4,
        end,
    })
}

/// Check that a request can be answered from the address it was sent to: unicast MACs and IP
/// addresses, and a source that is not unspecified.
fn check_unicast(f: &[u8], ip: &IpRequest) -> Result<()> {
    if is_group_mac(&f[0..6]) {
        return Err(ReplyError::NotAnswered(
            "sent to a multicast or broadcast MAC address (a reply cannot come from it)",
        ));
    }
    if is_group_mac(&f[6..12]) {
        return Err(ReplyError::Malformed("a multicast source MAC address"));
    }
    let (src, dst) = ip.addrs(f);
    let (dst_group, src_bad) = if ip.version == 4 {
        (is_ipv4_group(dst), is_ipv4_group(src) || src == [0; 4])
    } else {
        (dst[0] == 0xff, src[0] == 0xff || src == [0; 16])
    };
    if dst_group {
        return Err(ReplyError::NotAnswered(
            "sent to a multicast or broadcast IP address (a reply cannot come from it)",
        ));
    }
    if src_bad {
        return Err(ReplyError::NotAnswered(
            "from an unspecified, multicast or broadcast source address",
        ));
    }
    Ok(())
}

/// The fields of a reply's fixed IP header besides its addresses.
struct IpHead {
    /// IPv4 TOS / IPv6 traffic class (DSCP; ECN left clear).
    class: u8,
    /// IPv4 identification (IPv6 has none).
    id: u16,
    proto: u8,
    /// Bytes of the upper-layer message behind the header.
    l4_len: usize,
    hop_limit: u8,
}

/// Write a fixed IPv4 (`N` = 4: IHL 5, DF, checksum computed) or IPv6 (`N` = 16: flow label 0)
/// header at `l3`; returns where the upper-layer message starts.
fn write_ip<const N: usize>(
    f: &mut [u8],
    l3: usize,
    head: &IpHead,
    src: [u8; N],
    dst: [u8; N],
) -> usize {
    if N == 4 {
        let h = &mut f[l3..l3 + 20];
        h[0] = 0x45;
        h[1] = head.class;
        put16(h, 2, (20 + head.l4_len) as u16);
        put16(h, 4, head.id);
        put16(h, 6, 0x4000); // DF, no fragment offset
        h[8] = head.hop_limit;
        h[9] = head.proto;
        put16(h, 10, 0);
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        let c = fold(sum16(h, 0));
        put16(h, 10, c);
        l3 + 20
    } else {
        let h = &mut f[l3..l3 + 40];
        h[0] = 0x60 | head.class >> 4;
        h[1] = head.class << 4;
        h[2] = 0;
        h[3] = 0;
        put16(h, 4, head.l4_len as u16);
        h[6] = head.proto;
        h[7] = head.hop_limit;
        h[8..24].copy_from_slice(&src);
        h[24..40].copy_from_slice(&dst);
        l3 + 40
    }
}

/// Write the reply's IP header over the request's (addresses swapped, see the module docs)
/// for an upper-layer message of `l4_len` bytes of `proto`; returns where that message
/// starts: right after the fixed header.
fn write_reply_ip(f: &mut [u8], ip: &IpRequest, proto: u8, l4_len: usize) -> usize {
    let l3 = ip.l3;
    let mut head = IpHead {
        class: 0,
        id: 0,
        proto,
        l4_len,
        hop_limit: REPLY_HOP_LIMIT,
    };
    let (src, dst) = ip.addrs(f);
    if ip.version == 4 {
        let (src, dst): ([u8; 4], _) = (array(src), array(dst));
        (head.class, head.id) = (f[l3 + 1] & 0xfc, be16(f, l3 + 4));
        write_ip(f, l3, &head, dst, src)
    } else {
        let (src, dst): ([u8; 16], _) = (array(src), array(dst));
        head.class = ((f[l3] & 0x0f) << 4 | f[l3 + 1] >> 4) & 0xfc;
        write_ip(f, l3, &head, dst, src)
    }
}

/// A copy of an address slice of the right length (the callers slice exactly `N` bytes).
fn array<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    a
}

/// Set the checksum field at `l4 + field` of the upper-layer message `f[l4..end]` of `proto`
/// behind the IP header at `l3` (ICMP has no pseudo-header; a UDP zero is sent as all ones).
fn put_checksum(
    f: &mut [u8],
    l3: usize,
    version: u8,
    proto: u8,
    l4: usize,
    end: usize,
    field: usize,
) -> Result<()> {
    put16(f, l4 + field, 0);
    let c = if proto == IPPROTO_ICMP {
        fold(sum16(&f[l4..end], 0))
    } else {
        upper_layer_checksum(f, l3, version, proto, l4, end)
            .ok_or(ReplyError::Truncated("IP header"))?
    };
    put16(
        f,
        l4 + field,
        if proto == IPPROTO_UDP && c == 0 {
            0xffff
        } else {
            c
        },
    );
    Ok(())
}

/// The reply's length: `end`, or [`ETH_MIN_LEN`] with zeros after `end` when the buffer holds
/// that many.
fn finish(f: &mut [u8], end: usize) -> usize {
    if end < ETH_MIN_LEN && f.len() >= ETH_MIN_LEN {
        f[end..ETH_MIN_LEN].fill(0);
        ETH_MIN_LEN
    } else {
        end
    }
}

/// Answer the UDP datagram in `frame[..len]` with `payload`: MACs, IP addresses and ports
/// swapped, the payload replaced, lengths and checksums computed (see the
/// [module docs](self)). Returns the reply's length; an error when the frame is not a whole
/// unicast UDP datagram, or the reply does not fit `frame`.
pub fn udp_reply(frame: &mut [u8], len: usize, payload: &[u8]) -> Result<usize> {
    const WHAT: &str = "a UDP datagram over IPv4 or IPv6";
    let (f, m) = request(frame, len)?;
    let ip = ip_request(f, &m, IPPROTO_UDP, WHAT)?;
    if ip.end - ip.l4 < 8 {
        return Err(ReplyError::Malformed(
            "a UDP datagram shorter than its header",
        ));
    }
    let udp_len = be16(f, ip.l4 + 4) as usize;
    if udp_len < 8 || udp_len > ip.end - ip.l4 {
        return Err(ReplyError::Malformed(
            "the UDP length is below 8 or reaches past the IP datagram",
        ));
    }
    check_unicast(f, &ip)?;
    let (sport, dport) = (be16(f, ip.l4), be16(f, ip.l4 + 2));
    let max = u16::MAX as usize - 8 - if ip.version == 4 { 20 } else { 0 };
    if payload.len() > max {
        return Err(ReplyError::TooLong {
            len: payload.len(),
            max,
        });
    }
    let l4 = ip.l3 + ip.header_len();
    let end = l4 + 8 + payload.len();
    if end > frame.len() {
        return Err(ReplyError::NoRoom {
            need: end,
            capacity: frame.len(),
        });
    }
    swap_macs(frame);
    write_reply_ip(frame, &ip, IPPROTO_UDP, 8 + payload.len());
    put16(frame, l4, dport);
    put16(frame, l4 + 2, sport);
    put16(frame, l4 + 4, (8 + payload.len()) as u16);
    frame[l4 + 8..end].copy_from_slice(payload);
    put_checksum(frame, ip.l3, ip.version, IPPROTO_UDP, l4, end, 6)?;
    Ok(finish(frame, end))
}

/// Answer the ICMP echo request (type 8) or ICMPv6 echo request (type 128) in `frame[..len]`
/// with its echo reply (type 0 / 129): identifier, sequence number and data kept, addresses
/// swapped, TTL/hop limit [`REPLY_HOP_LIMIT`], checksums computed (ICMPv6 with its
/// pseudo-header). The request's ICMP checksum must verify. Returns the reply's length.
pub fn icmp_echo_reply(frame: &mut [u8], len: usize) -> Result<usize> {
    const WHAT: &str = "an ICMP or ICMPv6 echo request";
    let (f, m) = request(frame, len)?;
    let (proto, request_type, reply_type) = if m.ethertype == ETH_P_IPV6 {
        (IPPROTO_ICMPV6, ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY)
    } else {
        (IPPROTO_ICMP, ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)
    };
    let ip = ip_request(f, &m, proto, WHAT)?;
    let n = ip.end - ip.l4;
    if n < 8 {
        return Err(ReplyError::Malformed(
            "an ICMP message shorter than an echo header",
        ));
    }
    if f[ip.l4] != request_type || f[ip.l4 + 1] != 0 {
        return Err(ReplyError::NotA(WHAT));
    }
    if proto == IPPROTO_ICMP {
        if fold(sum16(&f[ip.l4..ip.end], 0)) != 0 {
            return Err(ReplyError::BadChecksum("ICMP"));
        }
    } else if upper_layer_checksum(f, ip.l3, 6, proto, ip.l4, ip.end) != Some(0) {
        return Err(ReplyError::BadChecksum("ICMPv6"));
    }
    check_unicast(f, &ip)?;
    // The message moves up behind the fixed header (no overlap with it: l4 >= that end).
    let l4 = ip.l3 + ip.header_len();
    frame.copy_within(ip.l4..ip.end, l4);
    swap_macs(frame);
    write_reply_ip(frame, &ip, proto, n);
    frame[l4] = reply_type;
    put_checksum(frame, ip.l3, ip.version, proto, l4, l4 + n, 2)?;
    Ok(finish(frame, l4 + n))
}

/// Answer the TCP segment in `frame[..len]` with a reset (RFC 9293 3.10.7.1): when the segment
/// has ACK, the RST's sequence number is its acknowledgment number (flags RST); otherwise the
/// sequence number is 0 and it acknowledges the segment (flags RST|ACK, acknowledgment number
/// = sequence number + data length, SYN and FIN counting one each). Ports and addresses
/// swapped, no options, window 0, checksums computed. A RST is never answered. Returns the
/// reply's length.
pub fn tcp_rst(frame: &mut [u8], len: usize) -> Result<usize> {
    const WHAT: &str = "a TCP segment over IPv4 or IPv6";
    let (f, m) = request(frame, len)?;
    let ip = ip_request(f, &m, IPPROTO_TCP, WHAT)?;
    let seg = ip.end - ip.l4;
    if seg < 20 {
        return Err(ReplyError::Malformed(
            "a TCP segment shorter than its header",
        ));
    }
    let data_off = (f[ip.l4 + 12] >> 4) as usize * 4;
    if data_off < 20 || data_off > seg {
        return Err(ReplyError::Malformed(
            "the TCP data offset is below 5 or reaches past the segment",
        ));
    }
    let flags = f[ip.l4 + 13];
    if flags & TCP_RST != 0 {
        return Err(ReplyError::NotAnswered("a TCP RST is never answered"));
    }
    check_unicast(f, &ip)?;
    let (sport, dport) = (be16(f, ip.l4), be16(f, ip.l4 + 2));
    let (seq, ack) = (be32(f, ip.l4 + 4), be32(f, ip.l4 + 8));
    let (rst_seq, rst_ack, rst_flags) = if flags & TCP_ACK != 0 {
        (ack, 0, TCP_RST)
    } else {
        let seg_len = (seg - data_off) as u32
            + u32::from(flags & TCP_SYN != 0)
            + u32::from(flags & TCP_FIN != 0);
        (0, seq.wrapping_add(seg_len), TCP_RST | TCP_ACK)
    };
    swap_macs(frame);
    let l4 = write_reply_ip(frame, &ip, IPPROTO_TCP, 20);
    put16(frame, l4, dport);
    put16(frame, l4 + 2, sport);
    put32(frame, l4 + 4, rst_seq);
    put32(frame, l4 + 8, rst_ack);
    frame[l4 + 12] = 5 << 4;
    frame[l4 + 13] = rst_flags;
    put16(frame, l4 + 14, 0); // window
    put16(frame, l4 + 18, 0); // urgent pointer
    put_checksum(frame, ip.l3, ip.version, IPPROTO_TCP, l4, l4 + 20, 16)?;
    Ok(finish(frame, l4 + 20))
}

/// Answer the ARP request in `frame[..len]` asking for `my_ipv4` with an ARP reply saying it
/// is at `my_mac` (RFC 826), so a processor can own an address on an interface whose kernel
/// does not: sent from `my_mac` to the asker's hardware address, VLAN tags kept. Not
/// answered: requests for other addresses, ARP replies, gratuitous ARP (sender address =
/// target address: an announcement). A probe (sender address 0.0.0.0, RFC 5227) is answered,
/// which defends the address. Returns the reply's length.
pub fn arp_reply(frame: &mut [u8], len: usize, my_mac: [u8; 6], my_ipv4: [u8; 4]) -> Result<usize> {
    const WHAT: &str = "an ARP request for an IPv4 address over Ethernet";
    check_arp_args(&my_mac, &my_ipv4)?;
    let (f, m) = request(frame, len)?;
    if m.ethertype != ETH_P_ARP {
        return Err(ReplyError::NotA(WHAT));
    }
    let a = m.l3_off as usize;
    if a + ARP_LEN > f.len() {
        return Err(ReplyError::Truncated("ARP packet"));
    }
    let ethernet_ipv4 = be16(f, a) == 1 && be16(f, a + 2) == ETH_P_IP && be16(f, a + 4) == 0x0604;
    if !ethernet_ipv4 || be16(f, a + 6) != ARP_REQUEST {
        return Err(ReplyError::NotA(WHAT));
    }
    let sha: [u8; 6] = array(&f[a + 8..a + 14]);
    let spa: [u8; 4] = array(&f[a + 14..a + 18]);
    let tpa: [u8; 4] = array(&f[a + 24..a + 28]);
    if is_group_mac(&sha) || sha == [0; 6] {
        return Err(ReplyError::Malformed(
            "an ARP request from a multicast or zero hardware address",
        ));
    }
    if tpa != my_ipv4 {
        return Err(ReplyError::NotOurs {
            asked: Ipv4Addr::from(tpa).into(),
            ours: Ipv4Addr::from(my_ipv4).into(),
        });
    }
    if spa == tpa {
        return Err(ReplyError::NotAnswered(
            "a gratuitous ARP announces an address, it asks nothing",
        ));
    }
    frame[0..6].copy_from_slice(&sha);
    frame[6..12].copy_from_slice(&my_mac);
    put16(frame, a + 6, ARP_REPLY);
    frame[a + 8..a + 14].copy_from_slice(&my_mac);
    frame[a + 14..a + 18].copy_from_slice(&my_ipv4);
    frame[a + 18..a + 24].copy_from_slice(&sha);
    frame[a + 24..a + 28].copy_from_slice(&spa);
    Ok(finish(frame, a + ARP_LEN))
}

/// The solicited-node multicast address of `target` (RFC 4291 2.7.1).
fn solicited_node(target: &[u8]) -> [u8; 16] {
    let mut a = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0];
    a[13..16].copy_from_slice(&target[13..16]);
    a
}

/// Answer the Neighbor Solicitation in `frame[..len]` for `my_ipv6` with a Neighbor
/// Advertisement (RFC 4861 7.2.4), the IPv6 counterpart of [`arp_reply`]: from `my_mac` and
/// `my_ipv6`, hop limit 255, override flag set, a target link-layer address option with
/// `my_mac`, the ICMPv6 checksum computed. To a solicitation from an address: solicited flag
/// set, sent to that address and to its source link-layer address option (else the frame's
/// source MAC). To duplicate address detection (source `::`): sent to all nodes (ff02::1,
/// 33:33:00:00:00:01) without the solicited flag, which tells the prober the address is
/// taken. The solicitation is checked as RFC 4861 7.1.1 says (hop limit 255, code 0, at least
/// 24 bytes, checksum, options of non-zero length, a unicast target; from `::` only to the
/// solicited-node address and without a source link-layer option). The advertisement is 32
/// bytes behind the IPv6 header, longer than a solicitation without options: the buffer
/// needs the room. Returns the reply's length.
pub fn neighbor_advert(
    frame: &mut [u8],
    len: usize,
    my_mac: [u8; 6],
    my_ipv6: [u8; 16],
) -> Result<usize> {
    const WHAT: &str = "an IPv6 Neighbor Solicitation";
    check_nd_args(&my_mac, &my_ipv6)?;
    let (f, m) = request(frame, len)?;
    if m.ethertype != ETH_P_IPV6 {
        return Err(ReplyError::NotA(WHAT));
    }
    let ip = ip_request(f, &m, IPPROTO_ICMPV6, WHAT)?;
    let (l3, l4, end) = (ip.l3, ip.l4, ip.end);
    if end - l4 < 2 || f[l4] != ND_NEIGHBOR_SOLICITATION {
        return Err(ReplyError::NotA(WHAT));
    }
    if f[l4 + 1] != 0 {
        return Err(ReplyError::Malformed(
            "a Neighbor Solicitation with an ICMPv6 code other than 0",
        ));
    }
    if end - l4 < 24 {
        return Err(ReplyError::Malformed(
            "a Neighbor Solicitation shorter than 24 bytes",
        ));
    }
    if f[l3 + 7] != ND_HOP_LIMIT {
        return Err(ReplyError::NotAnswered(
            "a Neighbor Solicitation with a hop limit below 255 did not come from the link",
        ));
    }
    if upper_layer_checksum(f, l3, 6, IPPROTO_ICMPV6, l4, end) != Some(0) {
        return Err(ReplyError::BadChecksum("ICMPv6"));
    }
    let target = &f[l4 + 8..l4 + 24];
    if target[0] == 0xff {
        return Err(ReplyError::Malformed(
            "a Neighbor Solicitation for a multicast address",
        ));
    }
    if target != my_ipv6 {
        return Err(ReplyError::NotOurs {
            asked: Ipv6Addr::from(array::<16>(target)).into(),
            ours: Ipv6Addr::from(my_ipv6).into(),
        });
    }
    let mut source_ll = None;
    let mut at = l4 + 24;
    while at < end {
        if end - at < 2 || f[at + 1] == 0 {
            return Err(ReplyError::Malformed(
                "a Neighbor Discovery option of length 0 or cut short",
            ));
        }
        let opt_len = f[at + 1] as usize * 8;
        if opt_len > end - at {
            return Err(ReplyError::Malformed(
                "a Neighbor Discovery option reaches past the message",
            ));
        }
        if f[at] == ND_OPT_SOURCE_LL {
            if opt_len != 8 {
                return Err(ReplyError::Malformed(
                    "a source link-layer address option not of Ethernet's length",
                ));
            }
            source_ll = Some(array::<6>(&f[at + 2..at + 8]));
        }
        at += opt_len;
    }
    let (src, dst) = ip.addrs(f);
    let (ip_dst, eth_dst, flags) = if src == [0; 16] {
        // Duplicate address detection (RFC 4861 7.2.4: answered to all nodes).
        if source_ll.is_some() {
            return Err(ReplyError::Malformed(
                "a Neighbor Solicitation from :: with a source link-layer address option",
            ));
        }
        if dst != solicited_node(target) {
            return Err(ReplyError::Malformed(
                "a Neighbor Solicitation from :: not sent to the target's solicited-node address",
            ));
        }
        (ALL_NODES, ALL_NODES_MAC, NA_FLAG_OVERRIDE)
    } else {
        if src[0] == 0xff {
            return Err(ReplyError::Malformed(
                "a Neighbor Solicitation from a multicast address",
            ));
        }
        let mac = source_ll.unwrap_or_else(|| array(&f[6..12]));
        if is_group_mac(&mac) || mac == [0; 6] {
            return Err(ReplyError::Malformed(
                "a Neighbor Solicitation from a multicast or zero link-layer address",
            ));
        }
        (array(src), mac, NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE)
    };
    let l4 = l3 + 40;
    let need = l4 + NA_LEN;
    if need > frame.len() {
        return Err(ReplyError::NoRoom {
            need,
            capacity: frame.len(),
        });
    }
    frame[0..6].copy_from_slice(&eth_dst);
    frame[6..12].copy_from_slice(&my_mac);
    let head = IpHead {
        class: 0,
        id: 0,
        proto: IPPROTO_ICMPV6,
        l4_len: NA_LEN,
        hop_limit: ND_HOP_LIMIT,
    };
    write_ip(frame, l3, &head, my_ipv6, ip_dst);
    let na = &mut frame[l4..need];
    na.fill(0);
    na[0] = ND_NEIGHBOR_ADVERTISEMENT;
    na[4] = flags;
    na[8..24].copy_from_slice(&my_ipv6);
    na[24] = ND_OPT_TARGET_LL;
    na[25] = 1;
    na[26..32].copy_from_slice(&my_mac);
    put_checksum(frame, l3, 6, IPPROTO_ICMPV6, l4, need, 2)?;
    Ok(finish(frame, need))
}

/// One kind of reply with what it needs, for answering many frames the same way
/// ([`crate::packet::Rows::reply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// [`udp_reply`] with this payload.
    Udp {
        /// The reply's payload.
        payload: &'a [u8],
    },
    /// [`icmp_echo_reply`].
    IcmpEcho,
    /// [`tcp_rst`].
    TcpRst,
    /// [`arp_reply`] for this address.
    Arp {
        /// The MAC address the reply gives.
        mac: [u8; 6],
        /// The IPv4 address answered for.
        ip: [u8; 4],
    },
    /// [`neighbor_advert`] for this address.
    NeighborAdvert {
        /// The MAC address the advertisement gives.
        mac: [u8; 6],
        /// The IPv6 address answered for.
        ip: [u8; 16],
    },
}

/// The reply kinds [`Reply::new`] knows, by name.
pub const REPLY_KINDS: &[&str] = &["udp", "icmp_echo", "tcp_rst", "arp", "neighbor_advert"];

impl<'a> Reply<'a> {
    /// The reply named `kind` (one of [`REPLY_KINDS`]) with its arguments: `payload` for
    /// "udp"; `mac` (6 bytes) and `ip` (4 bytes for "arp", 16 for "neighbor_advert") for the
    /// address answerers. An argument the kind does not take is refused, as is one it lacks.
    pub fn new(
        kind: &str,
        payload: Option<&'a [u8]>,
        mac: Option<&[u8]>,
        ip: Option<&[u8]>,
    ) -> Result<Self> {
        let arg = |m: String| ReplyError::Argument(m);
        let refuse = |name: &str, given: bool| {
            if given {
                Err(arg(format!("kind={kind:?} takes no {name}")))
            } else {
                Ok(())
            }
        };
        let sized = |name: &str, v: Option<&[u8]>, n: usize| match v {
            Some(b) if b.len() == n => Ok(b.to_vec()),
            Some(b) => Err(arg(format!(
                "{name} must be {n} bytes for kind={kind:?}, not {}",
                b.len()
            ))),
            None => Err(arg(format!("kind={kind:?} needs {name}"))),
        };
        let reply = match kind {
            "udp" => {
                refuse("mac", mac.is_some())?;
                refuse("ip", ip.is_some())?;
                let payload =
                    payload.ok_or_else(|| arg("kind=\"udp\" needs a payload".to_string()))?;
                Reply::Udp { payload }
            }
            "icmp_echo" | "tcp_rst" => {
                refuse("payload", payload.is_some())?;
                refuse("mac", mac.is_some())?;
                refuse("ip", ip.is_some())?;
                if kind == "tcp_rst" {
                    Reply::TcpRst
                } else {
                    Reply::IcmpEcho
                }
            }
            "arp" | "neighbor_advert" => {
                refuse("payload", payload.is_some())?;
                let mac = array(&sized("mac", mac, 6)?);
                if kind == "arp" {
                    Reply::Arp {
                        mac,
                        ip: array(&sized("ip", ip, 4)?),
                    }
                } else {
                    Reply::NeighborAdvert {
                        mac,
                        ip: array(&sized("ip", ip, 16)?),
                    }
                }
            }
            o => {
                return Err(arg(format!(
                    "kind={o:?}: use one of {}",
                    REPLY_KINDS
                        .iter()
                        .map(|k| format!("{k:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        };
        reply.check()?;
        Ok(reply)
    }

    /// Whether the reply's own arguments are right (the addresses are unicast), checked once
    /// before answering many frames.
    pub fn check(&self) -> Result<()> {
        match self {
            Reply::Arp { mac, ip } => check_arp_args(mac, ip),
            Reply::NeighborAdvert { mac, ip } => check_nd_args(mac, ip),
            Reply::Udp { .. } | Reply::IcmpEcho | Reply::TcpRst => Ok(()),
        }
    }

    /// Answer `frame[..len]` in place (see the function of each kind); returns the reply's
    /// length.
    pub fn apply(&self, frame: &mut [u8], len: usize) -> Result<usize> {
        match *self {
            Reply::Udp { payload } => udp_reply(frame, len, payload),
            Reply::IcmpEcho => icmp_echo_reply(frame, len),
            Reply::TcpRst => tcp_rst(frame, len),
            Reply::Arp { mac, ip } => arp_reply(frame, len, mac, ip),
            Reply::NeighborAdvert { mac, ip } => neighbor_advert(frame, len, mac, ip),
        }
    }
}

#[cfg(test)]
mod tests;
