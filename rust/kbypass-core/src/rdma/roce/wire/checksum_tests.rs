//! UDP checksums on receive (IPv4 and IPv6) and GIDs as IP headers.

use super::tests::{build, spec, v4, v6};
use super::*;

/// The UDP checksum of the datagram at `udp` in the IP packet `ip` (RFC 768 / RFC 8200), as
/// a sender computes it: the pseudo-header and the datagram with its checksum field zero.
fn udp_checksum(ip: &[u8], udp: usize) -> u16 {
    let addrs = if udp == 40 { &ip[8..40] } else { &ip[12..20] };
    let mut d = ip[udp..].to_vec();
    d[6..8].fill(0);
    let mut words: Vec<u32> = addrs
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .collect();
    words.push(17);
    words.push(d.len() as u32);
    if d.len() % 2 == 1 {
        d.push(0);
    }
    words.extend(
        d.chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))),
    );
    let mut acc: u64 = words.iter().map(|&w| u64::from(w)).sum();
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    match !(acc as u16) {
        0 => 0xffff,
        c => c,
    }
}

fn send_frame(ip: IpHeader, payload: &[u8]) -> Vec<u8> {
    build(
        &spec(Opcode::from_u8(0x04).unwrap(), ip, None, [3, 1, 4, 1]),
        payload,
    )
}

#[test]
fn ipv4_udp_checksum_is_checked_when_present() {
    let mut f = send_frame(v4(), b"checksummed!");
    assert_eq!(
        &f[14 + 20 + 6..14 + 20 + 8],
        &[0, 0],
        "built with none, as rxe does"
    );
    assert!(Frame::parse(&f).is_ok());
    let c = udp_checksum(&f[14..], 20);
    f[40..42].copy_from_slice(&c.to_be_bytes());
    // The ICRC masks the UDP checksum: it stays right whatever the checksum says.
    assert!(Frame::parse(&f).is_ok(), "a right checksum");
    f[41] ^= 0x10;
    assert_eq!(Frame::parse(&f), Err(WireError::BadUdpChecksum));
    assert!(
        Frame::parse_headers(&f).is_ok(),
        "parse_headers checks neither"
    );
    f[41] ^= 0x10;
    let n = f.len();
    f[n - 6] ^= 1; // a payload byte: the checksum catches it before the ICRC
    assert_eq!(Frame::parse(&f), Err(WireError::BadUdpChecksum));
}

#[test]
fn ipv6_udp_checksum_is_checked() {
    let payload: Vec<u8> = (0..333u32).map(|i| (i * 7) as u8).collect();
    let f = send_frame(v6(), &payload);
    let at = 14 + 40 + 6;
    let sent = u16::from_be_bytes([f[at], f[at + 1]]);
    assert_ne!(sent, 0, "IPv6 frames carry a checksum");
    assert_eq!(sent, udp_checksum(&f[14..], 40), "and it is the right one");
    assert!(Frame::parse(&f).is_ok());
    for bit in [0x01u8, 0x80] {
        let mut g = f.clone();
        g[at + 1] ^= bit;
        assert_eq!(Frame::parse(&g), Err(WireError::BadUdpChecksum));
    }
    // A changed source address (the pseudo-header) with the ICRC resealed: only the UDP
    // checksum sees it... and the ICRC covers the addresses too, so reseal that.
    let mut g = f.clone();
    g[14 + 8 + 15] ^= 0x04;
    let n = g.len();
    let crc = icrc::compute(&g[14..n - 4], 40).unwrap();
    g[n - 4..].copy_from_slice(&crc);
    assert_eq!(Frame::parse(&g), Err(WireError::BadUdpChecksum));
    // No checksum at all is accepted (the ICRC masks the field).
    let mut g = f.clone();
    g[at..at + 2].fill(0);
    assert!(Frame::parse(&g).is_ok());
}

#[test]
fn gids_map_to_ipv4_or_ipv6_headers_and_back() {
    let a4 = ipv4_gid([198, 18, 0, 1]);
    let b4 = ipv4_gid([198, 18, 0, 2]);
    assert_eq!(&a4[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
    assert_eq!(gid_ipv4(&a4), Some([198, 18, 0, 1]));
    let h = IpHeader::for_gids(a4, b4).unwrap();
    assert_eq!(
        h,
        IpHeader::V4 {
            src: [198, 18, 0, 1],
            dst: [198, 18, 0, 2],
            tos: 0,
            ttl: DEFAULT_HOP_LIMIT,
            id: 0
        }
    );
    assert_eq!(h.gids(), (a4, b4));
    let IpHeader::V6 { src, dst, .. } = v6() else {
        unreachable!()
    };
    assert_eq!(gid_ipv4(&src), None);
    let h6 = IpHeader::for_gids(src, dst).unwrap();
    assert!(matches!(
        h6,
        IpHeader::V6 {
            hop_limit: 64,
            flow_label: 0,
            ..
        }
    ));
    assert_eq!(h6.gids(), (src, dst));
    assert_eq!(v4().gids(), (a4, b4));
    assert_eq!(
        IpHeader::for_gids(a4, dst),
        Err(WireError::MixedGidFamilies)
    );
    assert_eq!(
        IpHeader::for_gids(src, b4),
        Err(WireError::MixedGidFamilies)
    );
    // A frame built from GIDs parses back to the same GIDs, on both families.
    for h in [h, h6] {
        let f = send_frame(h, b"gid");
        assert_eq!(Frame::parse(&f).unwrap().ip.gids(), h.gids());
    }
}
