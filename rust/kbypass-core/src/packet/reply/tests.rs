//! Requests are built with `etherparse` (independent of kbypass), replies read back with it, and
//! every checksum is recomputed here the plain way ([`rfc1071`]).

use super::*;
use crate::packet::parse::{ETH_P_8021AD, ETH_P_8021Q};
use crate::packet::{edit, Rows};
use etherparse::{
    ip_number, ArpEthIpv4Packet, ArpOperation, IpHeaders, Ipv4Header, Ipv4Options, Ipv6Extensions,
    Ipv6Header, Ipv6RawExtHeader, LinkExtHeader, LinkHeader, NetHeaders, PacketBuilder,
    PacketBuilderStep, PacketHeaders, SlicedPacket, TransportHeader,
};
use proptest::prelude::*;

const ASKER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa1];
const MY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb2];
const ASKER4: [u8; 4] = [198, 18, 0, 1];
const MY4: [u8; 4] = [198, 18, 0, 2];
const ASKER6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const MY6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xbe, 0xef];
/// Bytes a test buffer has past the request, filled with this, so a reply that forgot to write
/// something shows it.
const JUNK: u8 = 0x5a;

/// The Internet checksum as RFC 1071 states it: the one's-complement sum of 16-bit words (an odd
/// byte padded with zero), complemented. Over a message with its checksum in place: 0.
fn rfc1071(parts: &[&[u8]]) -> u16 {
    let mut bytes: Vec<u8> = parts.concat();
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    let mut sum: u32 = 0;
    for w in bytes.chunks(2) {
        sum += u32::from(w[0]) << 8 | u32::from(w[1]);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The IPv4 / IPv6 pseudo-header bytes.
fn pseudo(src: &[u8], dst: &[u8], proto: u8, len: usize) -> Vec<u8> {
    let mut p = [src, dst].concat();
    if src.len() == 4 {
        p.extend([0, proto]);
        p.extend((len as u16).to_be_bytes());
    } else {
        p.extend((len as u32).to_be_bytes());
        p.extend([0, 0, 0, proto]);
    }
    p
}

/// Ethernet from the asker to us, then `ip`.
fn eth_ip(ip: IpHeaders) -> PacketBuilderStep<IpHeaders> {
    PacketBuilder::ethernet2(ASKER_MAC, MY_MAC).ip(ip)
}

/// `frame` with VLAN tags inserted after its MAC addresses: one 802.1Q tag, or an 802.1ad
/// outer and an 802.1Q inner tag.
fn tagged(mut frame: Vec<u8>, tags: &[u16]) -> Vec<u8> {
    let tpids: &[u16] = if tags.len() == 2 {
        &[ETH_P_8021AD, ETH_P_8021Q]
    } else {
        &[ETH_P_8021Q]
    };
    let mut t = Vec::new();
    for (tpid, id) in tpids.iter().zip(tags) {
        t.extend(tpid.to_be_bytes());
        t.extend(id.to_be_bytes());
    }
    frame.splice(12..12, t);
    frame
}

/// An IPv4 header from the asker to us, with `options` (a multiple of 4 bytes).
fn v4(options: &[u8]) -> IpHeaders {
    let mut h = Ipv4Header::new(0, 17, ip_number::UDP, ASKER4, MY4).unwrap();
    h.identification = 0x4242;
    h.dscp = etherparse::IpDscp::try_new(10).unwrap();
    h.ecn = etherparse::IpEcn::try_new(1).unwrap();
    h.options = Ipv4Options::try_from(options).unwrap();
    IpHeaders::Ipv4(h, Default::default())
}

/// An IPv6 header from the asker to us, with a destination options header when `ext`.
fn v6(ext: bool, hop_limit: u8) -> IpHeaders {
    v6_between(ASKER6, MY6, ext, hop_limit)
}

fn v6_between(src: [u8; 16], dst: [u8; 16], ext: bool, hop_limit: u8) -> IpHeaders {
    let h = Ipv6Header {
        traffic_class: 0x29,
        flow_label: etherparse::Ipv6FlowLabel::try_new(0x12345).unwrap(),
        hop_limit,
        source: src,
        destination: dst,
        ..Default::default()
    };
    let mut exts = Ipv6Extensions::default();
    if ext {
        // PadN over the 6 bytes of an 8-byte destination options header.
        exts.destination_options =
            Some(Ipv6RawExtHeader::new_raw(ip_number::UDP, &[1, 4, 0, 0, 0, 0]).unwrap());
    }
    IpHeaders::Ipv6(h, exts)
}

/// Where the IP header starts behind `tags`.
fn l3_of(tags: &[u16]) -> usize {
    14 + 4 * tags.len()
}

/// `request` in a buffer of `cap` bytes (junk after it), answered by `f`; returns the buffer and
/// the reply's length.
fn answer(
    request: &[u8],
    cap: usize,
    f: impl FnOnce(&mut [u8], usize) -> Result<usize>,
) -> (Vec<u8>, Result<usize>) {
    let mut buf = request.to_vec();
    buf.resize(cap, JUNK);
    let r = f(&mut buf, request.len());
    (buf, r)
}

/// Check what every IP reply shares and return (IP version, l4 offset): the frame parses back
/// whole with etherparse, MACs swapped, VLAN tags as they were, a fixed IP header with the
/// addresses swapped, TTL `ttl`, the IPv4 header checksum right.
fn check_ip_reply(reply: &[u8], tags: &[u16], ttl: u8) -> (u8, usize) {
    SlicedPacket::from_ethernet(reply).expect("the reply parses back");
    let h = headers(reply);
    let Some(LinkHeader::Ethernet2(e)) = &h.link else {
        panic!("no Ethernet header")
    };
    assert_eq!((e.source, e.destination), (MY_MAC, ASKER_MAC));
    let ids: Vec<u16> = h
        .link_exts
        .iter()
        .map(|x| match x {
            LinkExtHeader::Vlan(v) => v.vlan_id.value(),
            LinkExtHeader::Macsec(_) => panic!("macsec"),
        })
        .collect();
    assert_eq!(ids, tags);
    let l3 = l3_of(tags);
    let (version, l4) = match &h.net {
        Some(NetHeaders::Ipv4(ip, exts)) => {
            assert_eq!((ip.source, ip.destination), (MY4, ASKER4));
            assert_eq!(ip.time_to_live, ttl);
            assert!(ip.options.is_empty() && exts.auth.is_none());
            assert!(ip.dont_fragment && !ip.more_fragments);
            assert_eq!(ip.header_checksum, ip.calc_header_checksum());
            assert_eq!(rfc1071(&[&reply[l3..l3 + 20]]), 0);
            assert_eq!(
                (ip.identification, ip.dscp.value(), ip.ecn.value()),
                (0x4242, 10, 0),
                "identification and DSCP kept, ECN cleared"
            );
            (4, l3 + 20)
        }
        Some(NetHeaders::Ipv6(ip, exts)) => {
            assert_eq!((ip.source, ip.destination), (MY6, ASKER6));
            assert_eq!(ip.hop_limit, ttl);
            assert_eq!(
                (ip.traffic_class, ip.flow_label.value()),
                (0x28, 0),
                "DSCP kept, ECN cleared, no flow label"
            );
            assert!(exts.is_empty(), "no extension headers");
            (6, l3 + 40)
        }
        o => panic!("not IP: {o:?}"),
    };
    (version, l4)
}

/// The upper-layer checksum of `reply[l4..end]` with the pseudo-header (ICMPv4: without) is 0.
fn assert_l4_checksum(reply: &[u8], l3: usize, version: u8, proto: u8, l4: usize, end: usize) {
    let msg = &reply[l4..end];
    let (src, n) = if version == 4 {
        (l3 + 12, 4)
    } else {
        (l3 + 8, 16)
    };
    let header = pseudo(
        &reply[src..src + n],
        &reply[src + n..src + 2 * n],
        proto,
        msg.len(),
    );
    let c = if (version, proto) == (4, 1) {
        rfc1071(&[msg])
    } else {
        rfc1071(&[&header, msg])
    };
    assert_eq!(c, 0, "{proto} checksum over {msg:02x?}");
}

/// Padding to 60 bytes is zeros, and returned `n` is the padded length.
fn assert_padded(buf: &[u8], end: usize, n: usize) {
    if end < ETH_MIN_LEN && buf.len() >= ETH_MIN_LEN {
        assert_eq!(n, ETH_MIN_LEN);
        assert!(buf[end..n].iter().all(|&b| b == 0), "{:02x?}", &buf[end..n]);
    } else {
        assert_eq!(n, end);
    }
}

/// Answer `req` with `f` in a buffer of `cap` bytes and check what every IP reply shares
/// ([`check_ip_reply`]: IP `version`, TTL 64; zero padding after the `l4_len` bytes behind the
/// IP header); returns the buffer, the reply's length and where its upper layer starts.
fn ip_reply(
    req: &[u8],
    cap: usize,
    tags: &[u16],
    version: u8,
    l4_len: usize,
    f: impl FnOnce(&mut [u8], usize) -> Result<usize>,
) -> (Vec<u8>, usize, usize) {
    let (buf, r) = answer(req, cap, f);
    let n = r.unwrap();
    let (v, l4) = check_ip_reply(&buf[..n], tags, REPLY_HOP_LIMIT);
    assert_eq!(v, version);
    assert_padded(&buf, l4 + l4_len, n);
    (buf, n, l4)
}

/// The headers of a frame, read by etherparse.
fn headers(frame: &[u8]) -> PacketHeaders<'_> {
    PacketHeaders::from_ethernet_slice(frame).unwrap()
}

fn udp_request(tags: &[u16], version: u8, options: bool, payload: &[u8]) -> Vec<u8> {
    let ip = if version == 4 {
        v4(if options {
            &[0x94, 4, 0, 0, 1, 1, 1, 0]
        } else {
            &[]
        })
    } else {
        v6(options, 64)
    };
    let mut v = Vec::new();
    eth_ip(ip).udp(40000, 53).write(&mut v, payload).unwrap();
    tagged(v, tags)
}

const TAGS: [&[u16]; 3] = [&[], &[7], &[100, 7]];

/// Every (VLAN tags, IP version, IPv4 options or an IPv6 extension header) a test covers.
fn shapes() -> impl Iterator<Item = (&'static [u16], u8, bool)> {
    TAGS.into_iter()
        .flat_map(|tags| [(4, false), (4, true), (6, false), (6, true)].map(|(v, o)| (tags, v, o)))
}

#[test]
fn udp_reply_over_ipv4_and_ipv6_tagged_with_options_and_any_payload() {
    for (tags, version, options) in shapes() {
        for payload in [&b""[..], b"pong", &[0xa5; 301]] {
            let req = udp_request(tags, version, options, b"ping-with-a-longer-body");
            let udp = |f: &mut [u8], n| udp_reply(f, n, payload);
            let (buf, n, l4) = ip_reply(&req, 512, tags, version, 8 + payload.len(), udp);
            let (reply, end) = (&buf[..n], l4 + 8 + payload.len());
            let h = headers(reply);
            let Some(TransportHeader::Udp(u)) = h.transport else {
                panic!("not UDP")
            };
            assert_eq!((u.source_port, u.destination_port), (53, 40000));
            assert_eq!(u.length as usize, 8 + payload.len());
            assert_eq!(&reply[l4 + 8..end], payload);
            let expect = match &h.net {
                Some(NetHeaders::Ipv4(ip, _)) => {
                    assert_eq!(ip.total_len as usize, 28 + payload.len());
                    u.calc_checksum_ipv4(ip, payload).unwrap()
                }
                Some(NetHeaders::Ipv6(ip, _)) => {
                    assert_eq!(ip.payload_length as usize, 8 + payload.len());
                    u.calc_checksum_ipv6(ip, payload).unwrap()
                }
                _ => unreachable!(),
            };
            assert_ne!(u.checksum, 0, "a UDP checksum is always computed");
            assert_eq!(u.checksum, expect);
            assert_l4_checksum(reply, l3_of(tags), version, 17, l4, end);
            // kbypass's own parser and checker agree.
            let m = parse(&reply[..end]);
            assert_eq!((m.src_port, m.dst_port, m.proto), (53, 40000, 17));
            assert!(edit::checksums_ok(&reply[..end], &m));
        }
    }
}

#[test]
fn a_udp_checksum_computed_as_zero_is_sent_as_all_ones() {
    for version in [4, 6] {
        let req = udp_request(&[], version, false, b"ab");
        let l4 = if version == 4 { 34 } else { 54 };
        let (buf, r) = answer(&req, 128, |f, n| udp_reply(f, n, &[0, 0]));
        r.unwrap();
        // A payload word equal to that checksum brings the sum to all ones: checksum 0.
        let c = be16(&buf, l4 + 6);
        let (buf, r) = answer(&req, 128, |f, n| udp_reply(f, n, &c.to_be_bytes()));
        let n = r.unwrap();
        assert_eq!(
            be16(&buf, l4 + 6),
            0xffff,
            "RFC 768: zero is sent as all ones"
        );
        assert_l4_checksum(&buf[..n], 14, version, 17, l4, l4 + 10);
    }
}

#[test]
fn udp_reply_needs_room_and_a_whole_unicast_datagram() {
    let req = udp_request(&[], 4, false, b"abc");
    // The same length fits in place; a longer payload needs a buffer with room.
    let (_, r) = answer(&req, req.len(), |f, n| udp_reply(f, n, b"xyz"));
    assert_eq!(r, Ok(req.len()), "45 bytes: no room to pad to 60");
    let (buf, r) = answer(&req, req.len(), |f, n| udp_reply(f, n, b"xyzw"));
    assert_eq!(
        r,
        Err(ReplyError::NoRoom {
            need: req.len() + 1,
            capacity: req.len()
        })
    );
    assert_eq!(buf, req, "untouched");
    let e = r.unwrap_err().to_string();
    assert!(e.contains("needs 46 bytes but the buffer holds 45"), "{e}");
    // 65507 bytes is the most one IPv4 datagram carries; IPv6 carries 65527.
    let big = vec![1u8; 65508];
    let (_, r) = answer(&req, 70000, |f, n| udp_reply(f, n, &big));
    assert_eq!(
        r,
        Err(ReplyError::TooLong {
            len: 65508,
            max: 65507
        })
    );
    let (_, r) = answer(&req, 70000, |f, n| udp_reply(f, n, &big[1..]));
    assert_eq!(r, Ok(14 + 20 + 8 + 65507));
    let req6 = udp_request(&[], 6, false, b"abc");
    let (_, r) = answer(&req6, 70000, |f, n| udp_reply(f, n, &big));
    assert_eq!(r, Ok(14 + 40 + 8 + 65508));
    // len past the buffer is the caller's mistake.
    let mut f = req.clone();
    let e = udp_reply(&mut f, req.len() + 1, b"").unwrap_err();
    assert!(matches!(e, ReplyError::Argument(_)), "{e}");
    assert!(e.to_string().contains("longer than the buffer"), "{e}");
}

/// Frames each helper refuses, and with what; every one is left as it was.
fn refused(f: impl Fn(&mut [u8], usize) -> Result<usize>, frame: &[u8], cap: usize) -> ReplyError {
    let (buf, r) = answer(frame, cap, f);
    assert_eq!(
        &buf[..frame.len()],
        frame,
        "a refused frame is left as it was"
    );
    assert!(buf[frame.len()..].iter().all(|&b| b == JUNK));
    r.expect_err("refused")
}

#[test]
fn udp_reply_refuses_what_it_does_not_answer() {
    let udp = |f: &mut [u8], n| udp_reply(f, n, b"x");
    let req = udp_request(&[7], 4, false, b"abcdef");
    let l3 = 18;
    let set = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut f = req.clone();
        edit(&mut f);
        f
    };
    // Fix the IPv4 header checksum after an edit (so only the edit is judged).
    let fix = |f: &mut Vec<u8>| {
        f[l3 + 10] = 0;
        f[l3 + 11] = 0;
        let c = rfc1071(&[&f[l3..l3 + 20]]);
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    };
    let cases: Vec<(Vec<u8>, ReplyError)> = vec![
        (
            req[..10].to_vec(),
            ReplyError::NotA("a UDP datagram over IPv4 or IPv6"),
        ),
        (req[..l3 + 10].to_vec(), ReplyError::Truncated("IP header")),
        (
            req[..req.len() - 1].to_vec(),
            ReplyError::Truncated("IP datagram"),
        ),
        (
            set(&|f| {
                f[l3 + 2..l3 + 4].copy_from_slice(&200u16.to_be_bytes());
                fix(f)
            }),
            ReplyError::Truncated("IP datagram"),
        ),
        (
            set(&|f| {
                f[l3 + 2..l3 + 4].copy_from_slice(&24u16.to_be_bytes());
                fix(f)
            }),
            ReplyError::Malformed("the IP datagram is too short for the headers it announces"),
        ),
        (
            set(&|f| f[l3 + 24..l3 + 26].copy_from_slice(&100u16.to_be_bytes())),
            ReplyError::Malformed("the UDP length is below 8 or reaches past the IP datagram"),
        ),
        (
            set(&|f| f[l3 + 24..l3 + 26].copy_from_slice(&7u16.to_be_bytes())),
            ReplyError::Malformed("the UDP length is below 8 or reaches past the IP datagram"),
        ),
        (
            set(&|f| f[l3 + 8] ^= 1),
            ReplyError::BadChecksum("IPv4 header"),
        ),
        (
            set(&|f| {
                f[l3 + 6] = 0x20; // more fragments
                fix(f)
            }),
            ReplyError::NotAnswered("an IP fragment"),
        ),
        (
            set(&|f| {
                f[l3 + 9] = 6;
                fix(f)
            }),
            ReplyError::NotA("a UDP datagram over IPv4 or IPv6"),
        ),
        (
            set(&|f| f[0..6].copy_from_slice(&[0xff; 6])),
            ReplyError::NotAnswered(
                "sent to a multicast or broadcast MAC address (a reply cannot come from it)",
            ),
        ),
        (
            set(&|f| {
                f[l3 + 16..l3 + 20].copy_from_slice(&[255; 4]);
                fix(f)
            }),
            ReplyError::NotAnswered(
                "sent to a multicast or broadcast IP address (a reply cannot come from it)",
            ),
        ),
        (
            set(&|f| {
                f[l3 + 12..l3 + 16].copy_from_slice(&[0; 4]);
                fix(f)
            }),
            ReplyError::NotAnswered("from an unspecified, multicast or broadcast source address"),
        ),
        (
            set(&|f| f[6] = 0x01),
            ReplyError::Malformed("a multicast source MAC address"),
        ),
        (
            set(&|f| {
                f[l3] = 0x44;
            }),
            ReplyError::Malformed("a bad IP version or IPv4 header length"),
        ),
        (
            set(&|f| f[16..18].copy_from_slice(&ETH_P_ARP.to_be_bytes())),
            ReplyError::NotA("a UDP datagram over IPv4 or IPv6"),
        ),
    ];
    for (frame, want) in cases {
        assert_eq!(refused(udp, &frame, 128), want, "{frame:02x?}");
    }
    // IPv4 options cut by the frame end.
    let mut f = udp_request(&[], 4, true, b"");
    f.truncate(14 + 22);
    assert_eq!(refused(udp, &f, 128), ReplyError::Truncated("IPv4 options"));
    // An IPv6 extension header reaching past the payload length.
    let mut f = udp_request(&[], 6, true, b"");
    f[18..20].copy_from_slice(&4u16.to_be_bytes());
    f.truncate(14 + 40 + 4);
    assert_eq!(
        refused(udp, &f, 128),
        ReplyError::Malformed("an IPv6 extension header reaches past the datagram")
    );
    // Nine extension headers are more than the parser walks.
    let mut f = udp_request(&[], 6, false, b"");
    let udp_hdr = f[54..].to_vec();
    f.truncate(54);
    f[20] = IPPROTO_DSTOPTS_FOR_TEST;
    for i in 0..9 {
        f.extend([if i == 8 { 17 } else { 60 }, 0, 1, 4, 0, 0, 0, 0]);
    }
    f.extend(udp_hdr);
    let plen = (f.len() - 54) as u16;
    f[18..20].copy_from_slice(&plen.to_be_bytes());
    assert_eq!(
        refused(udp, &f, 256),
        ReplyError::NotAnswered("more IPv6 extension headers than are walked (8)")
    );
}

const IPPROTO_DSTOPTS_FOR_TEST: u8 = 60;

fn echo_request(tags: &[u16], version: u8, options: bool, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    if version == 4 {
        let ip = v4(if options { &[0x94, 4, 0, 0] } else { &[] });
        eth_ip(ip)
            .icmpv4_echo_request(0x1234, 7)
            .write(&mut v, data)
            .unwrap();
    } else {
        eth_ip(v6(options, 3))
            .icmpv6_echo_request(0x1234, 7)
            .write(&mut v, data)
            .unwrap();
    }
    tagged(v, tags)
}

#[test]
fn icmp_echo_reply_over_ipv4_and_ipv6() {
    for (tags, version, options) in shapes() {
        for data in [&b""[..], b"abcdefgh-odd", &[0x77; 56]] {
            let req = echo_request(tags, version, options, data);
            let echo = icmp_echo_reply;
            let (buf, n, l4) = ip_reply(&req, req.len(), tags, version, 8 + data.len(), echo);
            let (reply, end) = (&buf[..n], l4 + 8 + data.len());
            let h = headers(reply);
            assert_eq!(&reply[l4 + 8..end], data, "data echoed");
            let l3 = l3_of(tags);
            let echo_reply = etherparse::IcmpEchoHeader { id: 0x1234, seq: 7 };
            let (checksum, expected) = match h.transport {
                Some(TransportHeader::Icmpv4(i)) => {
                    assert_eq!(i.icmp_type, etherparse::Icmpv4Type::EchoReply(echo_reply));
                    (i.checksum, i.icmp_type.calc_checksum(data))
                }
                Some(TransportHeader::Icmpv6(i)) => {
                    assert_eq!(i.icmp_type, etherparse::Icmpv6Type::EchoReply(echo_reply));
                    let c = i.icmp_type.calc_checksum(MY6, ASKER6, data).unwrap();
                    (i.checksum, c)
                }
                o => panic!("{o:?}"),
            };
            assert_eq!(checksum, expected);
            let proto = if version == 4 { 1 } else { 58 };
            assert_l4_checksum(reply, l3, version, proto, l4, end);
            // A reply is not a request: not answered again.
            let mut again = reply.to_vec();
            assert_eq!(
                icmp_echo_reply(&mut again, n),
                Err(ReplyError::NotA("an ICMP or ICMPv6 echo request"))
            );
        }
    }
}

#[test]
fn icmp_echo_reply_refuses_bad_requests() {
    let req = echo_request(&[], 4, false, b"12345678");
    let mut bad = req.clone();
    bad[14 + 20 + 9] ^= 1;
    assert_eq!(
        refused(icmp_echo_reply, &bad, 100),
        ReplyError::BadChecksum("ICMP")
    );
    let req6 = echo_request(&[], 6, false, b"12345678");
    let mut bad = req6.clone();
    bad[14 + 8] ^= 1; // the source address: the pseudo-header no longer matches
    assert_eq!(
        refused(icmp_echo_reply, &bad, 100),
        ReplyError::BadChecksum("ICMPv6")
    );
    let mut code = req.clone();
    code[14 + 20 + 1] = 1;
    assert_eq!(
        refused(icmp_echo_reply, &code, 100),
        ReplyError::NotA("an ICMP or ICMPv6 echo request")
    );
    // Shorter than an echo header, by the IP length.
    let mut short = req[..14 + 20 + 4].to_vec();
    short[16..18].copy_from_slice(&24u16.to_be_bytes());
    short[24..26].copy_from_slice(&[0, 0]);
    let c = rfc1071(&[&short[14..34]]);
    short[24..26].copy_from_slice(&c.to_be_bytes());
    assert_eq!(
        refused(icmp_echo_reply, &short, 100),
        ReplyError::Malformed("an ICMP message shorter than an echo header")
    );
    // A ping to ff02::1 is not answered (from which address?).
    let mut all_nodes_req = Vec::new();
    PacketBuilder::ethernet2(ASKER_MAC, MY_MAC)
        .ip(v6_between(ASKER6, ALL_NODES, false, 1))
        .icmpv6_echo_request(1, 1)
        .write(&mut all_nodes_req, b"")
        .unwrap();
    assert!(matches!(
        refused(icmp_echo_reply, &all_nodes_req, 100),
        ReplyError::NotAnswered(_)
    ));
    assert_eq!(
        refused(icmp_echo_reply, &udp_request(&[], 4, false, b""), 100),
        ReplyError::NotA("an ICMP or ICMPv6 echo request")
    );
}

fn tcp_request(version: u8, tags: &[u16], flags: &str, seq: u32, ack: u32, data: &[u8]) -> Vec<u8> {
    let ip = if version == 4 { v4(&[]) } else { v6(false, 64) };
    let mut t = eth_ip(ip).tcp(40000, 80, seq, 1000);
    for c in flags.chars() {
        t = match c {
            'S' => t.syn(),
            'F' => t.fin(),
            'A' => t.ack(ack),
            'R' => t.rst(),
            'P' => t.psh(),
            _ => unreachable!(),
        };
    }
    // A timestamp-like option, so the request's header is longer than the reply's.
    t = t
        .options_raw(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
        .unwrap();
    let mut v = Vec::new();
    t.write(&mut v, data).unwrap();
    tagged(v, tags)
}

#[test]
fn tcp_rst_follows_rfc_9293() {
    // (flags, seq, ack, data length) -> (RST seq, RST ack, ACK flag)
    let cases: [(&str, u32, u32, usize, u32, u32, bool); 6] = [
        ("S", 1000, 0, 0, 0, 1001, true),
        ("SF", 1000, 0, 10, 0, 1012, true),
        ("P", u32::MAX - 1, 0, 5, 0, 3, true), // wraps
        ("A", 5, 777, 0, 777, 0, false),
        ("PA", 5, 0xdead_beef, 100, 0xdead_beef, 0, false),
        ("SA", 5, 9, 0, 9, 0, false),
    ];
    for tags in TAGS {
        for version in [4, 6] {
            for &(flags, seq, ack, dlen, rseq, rack, rack_flag) in &cases {
                let data = vec![0x42; dlen];
                let req = tcp_request(version, tags, flags, seq, ack, &data);
                let (buf, n, l4) = ip_reply(&req, req.len(), tags, version, 20, tcp_rst);
                let reply = &buf[..n];
                let h = headers(reply);
                let Some(TransportHeader::Tcp(t)) = h.transport else {
                    panic!("not TCP")
                };
                assert_eq!((t.source_port, t.destination_port), (80, 40000));
                assert_eq!(
                    (t.sequence_number, t.acknowledgment_number, t.ack),
                    (rseq, rack, rack_flag),
                    "{flags} seq {seq} ack {ack} len {dlen}"
                );
                assert!(t.rst && !t.syn && !t.fin && !t.psh);
                assert_eq!(
                    (t.data_offset(), t.window_size, t.urgent_pointer),
                    (5, 0, 0)
                );
                let expect = match &h.net {
                    Some(NetHeaders::Ipv4(ip, _)) => t.calc_checksum_ipv4(ip, &[]).unwrap(),
                    Some(NetHeaders::Ipv6(ip, _)) => t.calc_checksum_ipv6(ip, &[]).unwrap(),
                    _ => unreachable!(),
                };
                assert_eq!(t.checksum, expect);
                assert_l4_checksum(reply, l3_of(tags), version, 6, l4, l4 + 20);
            }
        }
    }
    let rst = tcp_request(4, &[], "RA", 1, 2, b"");
    assert_eq!(
        refused(tcp_rst, &rst, 100),
        ReplyError::NotAnswered("a TCP RST is never answered")
    );
    let mut off = tcp_request(6, &[], "S", 1, 0, b"");
    off[14 + 40 + 12] = 0xf0; // 60 bytes of header in a 32-byte segment
    assert_eq!(
        refused(tcp_rst, &off, 100),
        ReplyError::Malformed("the IP datagram is too short for the headers it announces")
    );
    off[14 + 40 + 12] = 0x40; // 16 bytes
    assert_eq!(
        refused(tcp_rst, &off, 100),
        ReplyError::Malformed("the IP datagram is too short for the headers it announces")
    );
}

fn arp_request(tags: &[u16], op: ArpOperation, spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let pkt = ArpEthIpv4Packet {
        operation: op,
        sender_mac: ASKER_MAC,
        sender_ipv4: spa,
        target_mac: [0; 6],
        target_ipv4: tpa,
    }
    .to_arp_packet();
    let mut v = Vec::new();
    PacketBuilder::ethernet2(ASKER_MAC, [0xff; 6])
        .arp(pkt)
        .write(&mut v)
        .unwrap();
    tagged(v, tags)
}

fn check_arp_reply(reply: &[u8], tags: &[u16], to_ip: [u8; 4]) {
    let h = headers(reply);
    let Some(LinkHeader::Ethernet2(e)) = &h.link else {
        panic!()
    };
    assert_eq!((e.source, e.destination), (MY_MAC, ASKER_MAC));
    assert_eq!(h.link_exts.len(), tags.len());
    let Some(NetHeaders::Arp(a)) = &h.net else {
        panic!("not ARP")
    };
    let a = a.try_eth_ipv4().unwrap();
    assert_eq!(a.operation, ArpOperation::REPLY);
    assert_eq!((a.sender_mac, a.sender_ipv4), (MY_MAC, MY4));
    assert_eq!((a.target_mac, a.target_ipv4), (ASKER_MAC, to_ip));
}

#[test]
fn arp_reply_answers_requests_for_our_address() {
    for tags in TAGS {
        let req = arp_request(tags, ArpOperation::REQUEST, ASKER4, MY4);
        let end = l3_of(tags) + 28;
        assert_eq!(req.len(), end);
        // In place (42 bytes untagged: no room to pad) and with room (padded to 60).
        for cap in [req.len(), 128] {
            let (buf, r) = answer(&req, cap, |f, n| arp_reply(f, n, MY_MAC, MY4));
            let n = r.unwrap();
            assert_padded(&buf, end, n);
            check_arp_reply(&buf[..n], tags, ASKER4);
        }
        // A probe (RFC 5227: sender 0.0.0.0) is answered: the address is defended.
        let probe = arp_request(tags, ArpOperation::REQUEST, [0; 4], MY4);
        let (buf, r) = answer(&probe, 64, |f, n| arp_reply(f, n, MY_MAC, MY4));
        check_arp_reply(&buf[..r.unwrap()], tags, [0; 4]);
    }
    let arp = |f: &mut [u8], n| arp_reply(f, n, MY_MAC, MY4);
    let other = arp_request(&[], ArpOperation::REQUEST, ASKER4, [198, 18, 0, 9]);
    let e = refused(arp, &other, 64);
    assert_eq!(
        e.to_string(),
        "the request asks for 198.18.0.9, not for 198.18.0.2"
    );
    let reply = arp_request(&[], ArpOperation::REPLY, ASKER4, MY4);
    assert_eq!(
        refused(arp, &reply, 64),
        ReplyError::NotA("an ARP request for an IPv4 address over Ethernet")
    );
    let gratuitous = arp_request(&[5], ArpOperation::REQUEST, MY4, MY4);
    assert!(matches!(
        refused(arp, &gratuitous, 64),
        ReplyError::NotAnswered(_)
    ));
    let req = arp_request(&[5], ArpOperation::REQUEST, ASKER4, MY4);
    assert_eq!(
        refused(arp, &req[..req.len() - 1], 64),
        ReplyError::Truncated("ARP packet")
    );
    let mut multicast_sha = req.clone();
    multicast_sha[18 + 8] |= 1;
    assert!(matches!(
        refused(arp, &multicast_sha, 64),
        ReplyError::Malformed(_)
    ));
    let mut ipv6_ptype = req.clone();
    ipv6_ptype[18 + 2..18 + 4].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    assert!(matches!(refused(arp, &ipv6_ptype, 64), ReplyError::NotA(_)));
    assert!(matches!(
        refused(arp, &udp_request(&[], 4, false, b""), 64),
        ReplyError::NotA(_)
    ));
    // The owner's addresses must be unicast.
    let mut f = req.clone();
    let e = arp_reply(&mut f, req.len(), [0xff; 6], MY4).unwrap_err();
    assert!(
        e.to_string()
            .contains("ff:ff:ff:ff:ff:ff is a multicast or zero"),
        "{e}"
    );
    let e = arp_reply(&mut f, req.len(), MY_MAC, [224, 0, 0, 1]).unwrap_err();
    assert_eq!(e.to_string(), "my_ipv4 224.0.0.1 is not a unicast address");
    assert_eq!(f, req);
}

/// A Neighbor Solicitation for `target` (options after the target address), checksum by
/// etherparse.
fn ns_request(
    tags: &[u16],
    src: [u8; 16],
    dst: [u8; 16],
    eth_dst: [u8; 6],
    hop_limit: u8,
    target: [u8; 16],
    options: &[u8],
) -> Vec<u8> {
    let mut body = target.to_vec();
    body.extend_from_slice(options);
    let mut v = Vec::new();
    PacketBuilder::ethernet2(ASKER_MAC, eth_dst)
        .ip(v6_between(src, dst, false, hop_limit))
        .icmpv6_raw(135, 0, [0; 4])
        .write(&mut v, &body)
        .unwrap();
    tagged(v, tags)
}

const SOLICITED_MY6: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0xbe, 0xef];
const SOLICITED_MY6_MAC: [u8; 6] = [0x33, 0x33, 0xff, 0, 0xbe, 0xef];
const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc3];

/// A solicitation for address resolution: from the asker to MY6's solicited-node address, with
/// a source link-layer address option naming OTHER_MAC.
fn resolution_ns(tags: &[u16]) -> Vec<u8> {
    let sllao = sllao(OTHER_MAC);
    ns_request(
        tags,
        ASKER6,
        SOLICITED_MY6,
        SOLICITED_MY6_MAC,
        255,
        MY6,
        &sllao,
    )
}

/// A duplicate address detection probe for MY6 (from ::).
fn dad_ns(tags: &[u16]) -> Vec<u8> {
    ns_request(
        tags,
        [0; 16],
        SOLICITED_MY6,
        SOLICITED_MY6_MAC,
        255,
        MY6,
        &[],
    )
}

fn sllao(mac: [u8; 6]) -> Vec<u8> {
    let mut o = vec![1, 1];
    o.extend(mac);
    o
}

/// Check a Neighbor Advertisement: to `ip_dst`/`eth_dst`, `flags`, our addresses, hop limit
/// 255, the target link-layer address option, the checksum.
fn check_na(reply: &[u8], tags: &[u16], ip_dst: [u8; 16], eth_dst: [u8; 6], flags: u8) {
    SlicedPacket::from_ethernet(reply).expect("parses back");
    let h = headers(reply);
    let Some(LinkHeader::Ethernet2(e)) = &h.link else {
        panic!()
    };
    assert_eq!((e.source, e.destination), (MY_MAC, eth_dst));
    assert_eq!(h.link_exts.len(), tags.len());
    let Some(NetHeaders::Ipv6(ip, exts)) = &h.net else {
        panic!("not IPv6")
    };
    assert!(exts.is_empty());
    assert_eq!(
        (ip.source, ip.destination, ip.hop_limit),
        (MY6, ip_dst, 255)
    );
    assert_eq!(ip.payload_length, 32);
    let l3 = l3_of(tags);
    let l4 = l3 + 40;
    let na = &reply[l4..l4 + 32];
    assert_eq!(
        (na[0], na[1], na[4], &na[5..8]),
        (136, 0, flags, &[0u8; 3][..])
    );
    assert_eq!(&na[8..24], &MY6);
    assert_eq!(&na[24..26], &[2, 1], "target link-layer address option");
    assert_eq!(&na[26..32], &MY_MAC);
    assert_l4_checksum(reply, l3, 6, 58, l4, l4 + 32);
    let Some(TransportHeader::Icmpv6(i)) = &h.transport else {
        panic!()
    };
    let payload = &reply[l4 + 8..l4 + 32];
    assert_eq!(
        i.checksum,
        i.icmp_type.calc_checksum(MY6, ip_dst, payload).unwrap()
    );
}

#[test]
fn neighbor_advert_answers_solicitations_for_our_address() {
    let na = |f: &mut [u8], n| neighbor_advert(f, n, MY_MAC, MY6);
    for tags in TAGS {
        let l3 = l3_of(tags);
        // Address resolution: multicast, with the asker's link-layer address option (which
        // says where to answer, over the frame's source).
        let req = resolution_ns(tags);
        assert_eq!(req.len(), l3 + 40 + 32);
        let (buf, r) = answer(&req, req.len(), na);
        assert_eq!(r, Ok(l3 + 72));
        check_na(&buf[..l3 + 72], tags, ASKER6, OTHER_MAC, 0x60);
        // Unreachability detection: unicast, no option: answered to the frame's source, and
        // the advertisement (32 bytes) is longer than the solicitation (24): it needs room.
        let req = ns_request(tags, ASKER6, MY6, MY_MAC, 255, MY6, &[]);
        assert_eq!(
            refused(na, &req, req.len()),
            ReplyError::NoRoom {
                need: l3 + 72,
                capacity: l3 + 64
            }
        );
        let (buf, r) = answer(&req, 256, na);
        check_na(&buf[..r.unwrap()], tags, ASKER6, ASKER_MAC, 0x60);
        // Duplicate address detection: from ::, answered to all nodes, not solicited.
        let req = dad_ns(tags);
        let (buf, r) = answer(&req, 256, na);
        check_na(&buf[..r.unwrap()], tags, ALL_NODES, ALL_NODES_MAC, 0x20);
    }
    // Another option before the source link-layer one is skipped.
    let mut opts = vec![14, 1, 1, 2, 3, 4, 5, 6]; // a nonce option
    opts.extend(sllao(OTHER_MAC));
    let req = ns_request(
        &[],
        ASKER6,
        SOLICITED_MY6,
        SOLICITED_MY6_MAC,
        255,
        MY6,
        &opts,
    );
    let (buf, r) = answer(&req, 256, na);
    check_na(&buf[..r.unwrap()], &[], ASKER6, OTHER_MAC, 0x60);
}

#[test]
fn neighbor_advert_checks_the_solicitation() {
    let na = |f: &mut [u8], n| neighbor_advert(f, n, MY_MAC, MY6);
    let ns = |src, dst, hop, target, opts: &[u8]| {
        ns_request(&[], src, dst, SOLICITED_MY6_MAC, hop, target, opts)
    };
    let ok = ns(ASKER6, SOLICITED_MY6, 255, MY6, &sllao(OTHER_MAC));
    assert!(matches!(
        refused(na, &ns(ASKER6, SOLICITED_MY6, 254, MY6, &[]), 256),
        ReplyError::NotAnswered(_)
    ));
    let mut other = MY6;
    other[15] = 1;
    let e = refused(na, &ns(ASKER6, SOLICITED_MY6, 255, other, &[]), 256);
    assert_eq!(
        e.to_string(),
        "the request asks for fd00::be01, not for fd00::beef"
    );
    let mut bad = ok.clone();
    bad[14 + 40 + 10] ^= 0x10;
    assert_eq!(refused(na, &bad, 256), ReplyError::BadChecksum("ICMPv6"));
    assert!(matches!(
        refused(na, &ns(ASKER6, SOLICITED_MY6, 255, SOLICITED_MY6, &[]), 256),
        ReplyError::Malformed("a Neighbor Solicitation for a multicast address")
    ));
    for opts in [
        &[1u8, 0, 0, 0, 0, 0, 0, 0][..],
        &[1, 2, 0, 0, 0, 0, 0, 0],
        &[1, 1, 0, 0, 0, 0, 0, 0, 1, 1],
    ] {
        assert!(
            matches!(
                refused(na, &ns(ASKER6, SOLICITED_MY6, 255, MY6, opts), 256),
                ReplyError::Malformed(_)
            ),
            "{opts:?}"
        );
    }
    assert!(matches!(
        refused(
            na,
            &ns([0; 16], SOLICITED_MY6, 255, MY6, &sllao(OTHER_MAC)),
            256
        ),
        ReplyError::Malformed(_)
    ));
    assert!(matches!(
        refused(na, &ns([0; 16], MY6, 255, MY6, &[]), 256),
        ReplyError::Malformed(_)
    ));
    let mut code = ok.clone();
    code[14 + 40 + 1] = 1;
    assert!(matches!(refused(na, &code, 256), ReplyError::Malformed(_)));
    // 16 bytes of solicitation: too short for the target address.
    let mut short = ns(ASKER6, SOLICITED_MY6, 255, MY6, &[]);
    short.truncate(14 + 40 + 16);
    short[18..20].copy_from_slice(&16u16.to_be_bytes());
    assert!(matches!(refused(na, &short, 256), ReplyError::Malformed(_)));
    assert_eq!(
        refused(na, &echo_request(&[], 6, false, b""), 256),
        ReplyError::NotA("an IPv6 Neighbor Solicitation")
    );
    assert_eq!(
        refused(
            na,
            &arp_request(&[], ArpOperation::REQUEST, ASKER4, MY4),
            256
        ),
        ReplyError::NotA("an IPv6 Neighbor Solicitation")
    );
    let mut f = ok.clone();
    let e = neighbor_advert(&mut f, ok.len(), MY_MAC, ALL_NODES).unwrap_err();
    assert_eq!(e.to_string(), "my_ipv6 ff02::1 is not a unicast address");
}

#[test]
fn reply_kinds_by_name() {
    assert_eq!(
        Reply::new("udp", Some(b"x"), None, None),
        Ok(Reply::Udp { payload: b"x" })
    );
    assert_eq!(
        Reply::new("icmp_echo", None, None, None),
        Ok(Reply::IcmpEcho)
    );
    assert_eq!(Reply::new("tcp_rst", None, None, None), Ok(Reply::TcpRst));
    assert_eq!(
        Reply::new("arp", None, Some(&MY_MAC), Some(&MY4)),
        Ok(Reply::Arp {
            mac: MY_MAC,
            ip: MY4
        })
    );
    assert_eq!(
        Reply::new("neighbor_advert", None, Some(&MY_MAC), Some(&MY6)),
        Ok(Reply::NeighborAdvert {
            mac: MY_MAC,
            ip: MY6
        })
    );
    let err = |r: Result<Reply<'_>>| r.unwrap_err().to_string();
    assert_eq!(
        err(Reply::new("udp", None, None, None)),
        "kind=\"udp\" needs a payload"
    );
    assert_eq!(
        err(Reply::new("tcp_rst", Some(b""), None, None)),
        "kind=\"tcp_rst\" takes no payload"
    );
    assert_eq!(
        err(Reply::new("arp", None, Some(&MY_MAC), Some(&MY6))),
        "ip must be 4 bytes for kind=\"arp\", not 16"
    );
    assert_eq!(
        err(Reply::new("neighbor_advert", None, None, Some(&MY6))),
        "kind=\"neighbor_advert\" needs mac"
    );
    assert_eq!(
        err(Reply::new("arp", None, Some(&[0; 6]), Some(&MY4))),
        "my_mac 00:00:00:00:00:00 is a multicast or zero address: give the interface's unicast MAC"
    );
    assert_eq!(
        err(Reply::new("ping", None, None, None)),
        "kind=\"ping\": use one of \"udp\", \"icmp_echo\", \"tcp_rst\", \"arp\", \"neighbor_advert\""
    );
}

#[test]
fn rows_answer_the_masked_frames_and_report_lengths() {
    let frames = [
        echo_request(&[], 4, false, b"0123456789"),
        udp_request(&[], 4, false, b"q"),
        echo_request(&[3], 6, true, b"abc"),
        echo_request(&[], 4, false, b"masked out"),
    ];
    let width = 128;
    let mut data = vec![0u8; frames.len() * width];
    let lens: Vec<u32> = frames.iter().map(|f| f.len() as u32).collect();
    for (i, f) in frames.iter().enumerate() {
        data[i * width..i * width + f.len()].copy_from_slice(f);
    }
    let before = data.clone();
    let rows = Rows::new(frames.len(), width, &lens).unwrap();
    let mut out = vec![0u32; frames.len()];
    let mut answered = vec![true; frames.len()];
    let mask = [true, true, true, false];
    let k = rows
        .reply(
            &mut data,
            &Reply::IcmpEcho,
            Some(&mask),
            &mut out,
            &mut answered,
        )
        .unwrap();
    assert_eq!(k, 2);
    assert_eq!(answered, [true, false, true, false]);
    // The IPv6 request loses its 8-byte extension header.
    // The IPv4 reply (52 bytes) is padded to 60 in its 128-byte row.
    assert_eq!(out, [ETH_MIN_LEN as u32, lens[1], lens[2] - 8, lens[3]]);
    assert_eq!(
        &data[width..2 * width],
        &before[width..2 * width],
        "not an echo: untouched"
    );
    assert_eq!(
        &data[3 * width..],
        &before[3 * width..],
        "masked out: untouched"
    );
    check_ip_reply(&data[..out[0] as usize], &[], REPLY_HOP_LIMIT);
    check_ip_reply(
        &data[2 * width..2 * width + out[2] as usize],
        &[3],
        REPLY_HOP_LIMIT,
    );
    // Checked once: the shapes and the reply's own arguments.
    let bad = Reply::Arp {
        mac: [0xff; 6],
        ip: MY4,
    };
    let e = rows
        .reply(&mut data, &bad, None, &mut out, &mut answered)
        .unwrap_err();
    assert!(e.to_string().contains("multicast or zero"), "{e}");
    let e = rows
        .reply(
            &mut data,
            &Reply::TcpRst,
            None,
            &mut out[..1],
            &mut answered,
        )
        .unwrap_err();
    assert!(e.to_string().contains("one entry per frame"), "{e}");
    let e = rows
        .reply(
            &mut data,
            &Reply::TcpRst,
            Some(&[true]),
            &mut out,
            &mut answered,
        )
        .unwrap_err();
    assert!(e.to_string().contains("mask"), "{e}");
    let e = rows
        .reply(
            &mut data[..width],
            &Reply::TcpRst,
            None,
            &mut out,
            &mut answered,
        )
        .unwrap_err();
    assert!(e.to_string().contains("shorter than its rows"), "{e}");
    // Rows of width 0 (no frames' bytes at all) are fine.
    let empty = Rows::new(2, 0, &[0, 0]).unwrap();
    let mut a2 = [true; 2];
    assert_eq!(
        empty
            .reply(&mut [], &Reply::IcmpEcho, None, &mut [0; 2], &mut a2)
            .unwrap(),
        0
    );
    assert_eq!(a2, [false; 2]);
}

/// Every request kind the helpers answer, in every shape the generator picks.
fn any_request() -> impl Strategy<Value = Vec<u8>> {
    let tags = prop_oneof![Just(vec![]), Just(vec![7u16]), Just(vec![100u16, 7])];
    (
        0u8..6,
        tags,
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..40),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(kind, tags, v6, opts, data, seq, ack)| {
            let version = if v6 { 6 } else { 4 };
            match kind {
                0 => udp_request(&tags, version, opts, &data),
                1 => echo_request(&tags, version, opts, &data),
                2 => tcp_request(
                    version,
                    &tags,
                    if opts { "SF" } else { "PA" },
                    seq,
                    ack,
                    &data,
                ),
                3 => arp_request(&tags, ArpOperation::REQUEST, ASKER4, MY4),
                4 => resolution_ns(&tags),
                _ => dad_ns(&tags),
            }
        })
}

/// A request, then damaged: cut, bytes overwritten (lengths and offsets lie), grown with junk.
fn any_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        any_request(),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        proptest::option::of(any::<prop::sample::Index>()),
        0usize..8,
    )
        .prop_map(|(mut f, flips, cut, grow)| {
            for (i, b) in flips {
                let i = i.index(f.len());
                f[i] = b;
            }
            if let Some(c) = cut {
                f.truncate(c.index(f.len() + 1));
            }
            f.extend(std::iter::repeat_n(0u8, grow));
            f
        })
}

/// What a reply must be, whatever the request was: no longer than the buffer, and a frame
/// whose headers parse whole and whose checksums verify.
fn check_any_reply(reply: &[u8]) {
    let m = parse(reply);
    assert_eq!(
        m.flags & (FLAG_TRUNCATED | FLAG_MALFORMED | FLAG_FRAGMENT),
        0,
        "{m:?}"
    );
    if m.ethertype == ETH_P_ARP {
        assert_eq!(be16(reply, m.l3_off as usize + 6), ARP_REPLY);
        return;
    }
    assert!(m.ip_version == 4 || m.ip_version == 6, "{m:?}");
    let l3 = m.l3_off as usize;
    let end = if m.ip_version == 4 {
        assert_eq!(rfc1071(&[&reply[l3..l3 + 20]]), 0);
        l3 + be16(reply, l3 + 2) as usize
    } else {
        l3 + 40 + be16(reply, l3 + 4) as usize
    };
    assert!(end <= reply.len());
    assert_eq!(
        m.l4_off as usize,
        l3 + if m.ip_version == 4 { 20 } else { 40 }
    );
    assert_l4_checksum(reply, l3, m.ip_version, m.proto, m.l4_off as usize, end);
    SlicedPacket::from_ethernet(reply).expect("parses back");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Random and damaged frames, in buffers with or without room: no helper panics, a refused
    /// frame is left as it was, nothing past the buffer changes, and every reply is a whole
    /// frame with valid checksums.
    #[test]
    fn replies_never_panic_and_always_parse(frame in any_frame(), room in 0usize..64, payload in proptest::collection::vec(any::<u8>(), 0..80)) {
        let replies = [
            Reply::Udp { payload: &payload },
            Reply::IcmpEcho,
            Reply::TcpRst,
            Reply::Arp { mac: MY_MAC, ip: MY4 },
            Reply::NeighborAdvert { mac: MY_MAC, ip: MY6 },
        ];
        for reply in replies {
            let cap = frame.len() + room;
            // A guard after the buffer the helper is given.
            let mut buf = frame.clone();
            buf.resize(cap + 16, JUNK);
            let r = reply.apply(&mut buf[..cap], frame.len());
            prop_assert!(buf[cap..].iter().all(|&b| b == JUNK));
            match r {
                Ok(n) => {
                    prop_assert!(n <= cap);
                    check_any_reply(&buf[..n]);
                }
                Err(e) => {
                    prop_assert!(!matches!(e, ReplyError::Argument(_)), "{e}");
                    prop_assert_eq!(&buf[..frame.len()], &frame[..]);
                }
            }
        }
    }

    /// Undamaged requests are answered by the helper for their kind when the buffer has room.
    #[test]
    fn whole_requests_are_answered(frame in any_request()) {
        let mut answered = 0;
        for reply in [
            Reply::Udp { payload: b"reply" },
            Reply::IcmpEcho,
            Reply::TcpRst,
            Reply::Arp { mac: MY_MAC, ip: MY4 },
            Reply::NeighborAdvert { mac: MY_MAC, ip: MY6 },
        ] {
            let (buf, r) = answer(&frame, frame.len() + 64, |f, n| reply.apply(f, n));
            if let Ok(n) = r {
                check_any_reply(&buf[..n]);
                answered += 1;
            }
        }
        prop_assert_eq!(answered, 1);
    }
}
