//! In-place frame edits that are slow in Python: address/port swaps and checksums.
//!
//! Each function takes the frame and its [`PacketMeta`] (from [`super::parse`]) and returns
//! whether it could apply the edit; a frame without the needed headers is left untouched.
//! Swapping source and destination never changes a one's-complement checksum (the sum is
//! commutative), so `swap_*` keep valid checksums valid.

use super::checksum::{fold, ip_addrs, pseudo_header_sum, sum16, upper_layer_checksum};
use super::parse::{PacketMeta, FLAG_FRAGMENT, FLAG_L4, FLAG_TRUNCATED, IPPROTO_TCP, IPPROTO_UDP};

/// Swap the Ethernet source and destination MAC addresses.
pub fn swap_macs(frame: &mut [u8]) -> bool {
    if frame.len() < 12 {
        return false;
    }
    let (dst, rest) = frame.split_at_mut(6);
    dst.swap_with_slice(&mut rest[..6]);
    true
}

/// Whether the frame has a VLAN tag (802.1Q or 802.1ad) right after its MAC addresses.
pub fn has_vlan_tag(frame: &[u8]) -> bool {
    frame.len() >= 18
        && matches!(
            u16::from_be_bytes([frame[12], frame[13]]),
            super::parse::ETH_P_8021Q | super::parse::ETH_P_8021AD
        )
}

/// Tag a frame that has 4 bytes room in front of its Ethernet header (`frame[4..]` is the
/// frame, `frame[..4]` the room, e.g. just pushed): move the MAC addresses to the front and
/// write the tag (`tpid`, `tci`) after them. False (nothing written) when `frame` cannot hold
/// the MACs and the tag.
pub fn write_vlan_tag(frame: &mut [u8], tpid: u16, tci: u16) -> bool {
    if frame.len() < 16 + 2 {
        return false;
    }
    frame.copy_within(4..16, 0);
    frame[12..14].copy_from_slice(&tpid.to_be_bytes());
    frame[14..16].copy_from_slice(&tci.to_be_bytes());
    true
}

/// Untag a frame whose outer VLAN tag is right after its MAC addresses
/// ([`has_vlan_tag`]): move the MACs 4 bytes on, over the tag, so that `frame[4..]` is the
/// untagged frame (pop those 4 bytes next). False (nothing moved) without a tag.
pub fn unwrap_vlan_tag(frame: &mut [u8]) -> bool {
    if !has_vlan_tag(frame) {
        return false;
    }
    frame.copy_within(0..12, 4);
    true
}

/// Swap IPv4 or IPv6 source and destination addresses.
pub fn swap_ips(frame: &mut [u8], m: &PacketMeta) -> bool {
    let l3 = m.l3_off as usize;
    let (src, len) = match m.ip_version {
        4 => (l3 + 12, 4),
        6 => (l3 + 8, 16),
        _ => return false,
    };
    if frame.len() < src + 2 * len {
        return false;
    }
    let (a, b) = frame[src..src + 2 * len].split_at_mut(len);
    a.swap_with_slice(b);
    true
}

/// The header an offset counts from (see [`set_field`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderBase {
    /// The Ethernet header (the frame's first byte).
    L2,
    /// The IPv4/IPv6 header.
    L3,
    /// The UDP/TCP/SCTP header (or what follows the IP header).
    L4,
    /// The L4 payload.
    Payload,
}

impl std::str::FromStr for HeaderBase {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "l2" => Ok(HeaderBase::L2),
            "l3" => Ok(HeaderBase::L3),
            "l4" => Ok(HeaderBase::L4),
            "payload" => Ok(HeaderBase::Payload),
            o => Err(crate::Error::invalid(format!(
                "base={o:?}: use \"l2\", \"l3\", \"l4\" or \"payload\""
            ))),
        }
    }
}

impl HeaderBase {
    /// Where this header starts in a frame parsed as `m`, if the frame has it.
    pub fn start(self, m: &PacketMeta) -> Option<usize> {
        match self {
            HeaderBase::L2 => Some(0),
            HeaderBase::L3 => (m.ip_version != 0).then_some(m.l3_off as usize),
            HeaderBase::L4 => (m.l4_off != 0).then_some(m.l4_off as usize),
            HeaderBase::Payload => (m.payload_off != 0).then_some(m.payload_off as usize),
        }
    }
}

/// Write `value` at `offset` bytes from the start of header `base`; false (and nothing
/// written) when the frame lacks that header or is too short for the whole value. Checksums
/// are not updated.
pub fn set_field(
    frame: &mut [u8],
    m: &PacketMeta,
    base: HeaderBase,
    offset: usize,
    value: &[u8],
) -> bool {
    let Some(start) = base.start(m).and_then(|b| b.checked_add(offset)) else {
        return false;
    };
    match frame.get_mut(start..start.saturating_add(value.len())) {
        Some(dst) => {
            dst.copy_from_slice(value);
            true
        }
        None => false,
    }
}

/// Whether `m` has a UDP or TCP header (SCTP has ports too, but its CRC32c checksum is not a
/// one's-complement sum: swapping its ports would break it, and it is not verified here).
fn udp_or_tcp(m: &PacketMeta) -> bool {
    m.flags & FLAG_L4 != 0 && (m.proto == IPPROTO_UDP || m.proto == IPPROTO_TCP)
}

/// Swap UDP/TCP source and destination ports.
pub fn swap_ports(frame: &mut [u8], m: &PacketMeta) -> bool {
    if !udp_or_tcp(m) {
        return false;
    }
    let at = m.l4_off as usize;
    if frame.len() < at + 4 {
        return false;
    }
    let (a, b) = frame[at..at + 4].split_at_mut(2);
    a.swap_with_slice(b);
    true
}

/// Recompute the IPv4 header checksum. Returns false for non-IPv4 or truncated headers.
pub fn fix_ipv4_checksum(frame: &mut [u8], m: &PacketMeta) -> bool {
    if m.ip_version != 4 {
        return false;
    }
    let l3 = m.l3_off as usize;
    let Some(&vihl) = frame.get(l3) else {
        return false;
    };
    let ihl = (vihl & 0x0f) as usize * 4;
    if ihl < 20 || frame.len() < l3 + ihl {
        return false;
    }
    frame[l3 + 10] = 0;
    frame[l3 + 11] = 0;
    let c = fold(sum16(&frame[l3..l3 + ihl], 0));
    frame[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    true
}

/// Recompute the UDP or TCP checksum (with the IPv4/IPv6 pseudo-header). Returns false when the
/// frame has no complete, unfragmented UDP/TCP segment.
pub fn fix_l4_checksum(frame: &mut [u8], m: &PacketMeta) -> bool {
    if m.flags & (FLAG_TRUNCATED | FLAG_FRAGMENT) != 0 || m.flags & FLAG_L4 == 0 {
        return false;
    }
    let l3 = m.l3_off as usize;
    let l4 = m.l4_off as usize;
    let end = m.payload_off as usize + m.payload_len as usize;
    if end > frame.len() || l4 >= end {
        return false;
    }
    let seg_len = end - l4;
    let csum_at = match m.proto {
        IPPROTO_UDP => l4 + 6,
        IPPROTO_TCP => l4 + 16,
        _ => return false,
    };
    if csum_at + 2 > end {
        return false;
    }
    let Some(addrs) = ip_addrs(frame, l3, m.ip_version) else {
        return false;
    };
    let acc = pseudo_header_sum(addrs, m.proto, seg_len);
    frame[csum_at] = 0;
    frame[csum_at + 1] = 0;
    let mut c = fold(sum16(&frame[l4..end], acc));
    if m.proto == IPPROTO_UDP && c == 0 {
        c = 0xffff; // RFC 768: a computed zero is sent as all ones
    }
    frame[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// Whether the IPv4 header checksum and the UDP/TCP checksum verify (UDP checksum 0 over IPv4
/// means "none" and verifies).
pub fn checksums_ok(frame: &[u8], m: &PacketMeta) -> bool {
    let l3 = m.l3_off as usize;
    if m.ip_version == 4 {
        let ihl = (frame.get(l3).copied().unwrap_or(0) & 0x0f) as usize * 4;
        if ihl < 20 || frame.len() < l3 + ihl || fold(sum16(&frame[l3..l3 + ihl], 0)) != 0 {
            return false;
        }
    }
    if !udp_or_tcp(m) || m.flags & (FLAG_TRUNCATED | FLAG_FRAGMENT) != 0 {
        return m.ip_version == 4 || m.ip_version == 6;
    }
    let l4 = m.l4_off as usize;
    let end = m.payload_off as usize + m.payload_len as usize;
    if end > frame.len() {
        return false;
    }
    if m.proto == IPPROTO_UDP && m.ip_version == 4 && frame[l4 + 6] == 0 && frame[l4 + 7] == 0 {
        return true;
    }
    upper_layer_checksum(frame, l3, m.ip_version, m.proto, l4, end) == Some(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vlan_tag_is_written_into_room_in_front_and_unwrapped_again() {
        let plain: Vec<u8> = (0..40u8).collect(); // MACs 0..12, "EtherType" 12, 13, ...
        let mut f = vec![0u8; 4];
        f.extend_from_slice(&plain);
        assert!(write_vlan_tag(&mut f, 0x8100, 0x2064));
        assert_eq!(f[..12], plain[..12]);
        assert_eq!(f[12..16], [0x81, 0x00, 0x20, 0x64]);
        assert_eq!(f[16..], plain[12..]);
        assert!(has_vlan_tag(&f));
        assert!(unwrap_vlan_tag(&mut f));
        assert_eq!(
            f[4..],
            plain[..],
            "popping 4 bytes leaves the frame as it was"
        );
        assert!(
            !unwrap_vlan_tag(&mut plain.clone()),
            "no tag: nothing moves"
        );
        assert!(!write_vlan_tag(&mut [0u8; 17], 0x8100, 1), "too short");
        let mut qinq = vec![0u8; 4];
        qinq.extend_from_slice(&plain);
        assert!(write_vlan_tag(&mut qinq, 0x88a8, 7) && has_vlan_tag(&qinq));
    }

    #[test]
    fn set_field_counts_from_the_chosen_header_and_refuses_what_does_not_fit() {
        use crate::packet::parse;
        let mut f = vec![0u8; 14 + 20 + 8 + 4];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&34u16.to_be_bytes()); // IP total length: 20 + 8 + 6
        f[23] = 17;
        f[38..40].copy_from_slice(&12u16.to_be_bytes()); // UDP length
        let m = parse(&f);
        assert_eq!(m.l4_off, 34);
        assert!(set_field(&mut f, &m, HeaderBase::L4, 2, &[0x23, 0x28]));
        assert_eq!(&f[36..38], &[0x23, 0x28]);
        assert!(set_field(&mut f, &m, HeaderBase::L2, 0, &[0xAA]));
        assert_eq!(f[0], 0xAA);
        assert!(
            !set_field(&mut f, &m, HeaderBase::Payload, 3, &[1, 2]),
            "past the end"
        );
        assert!(
            !set_field(&mut f, &m, HeaderBase::L3, usize::MAX, &[1]),
            "no overflow"
        );
        let arp = {
            let mut a = vec![0u8; 42];
            a[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
            a
        };
        assert!(!set_field(
            &mut arp.clone(),
            &parse(&arp),
            HeaderBase::L3,
            0,
            &[1]
        ));
        assert_eq!(
            "payload".parse::<HeaderBase>().unwrap(),
            HeaderBase::Payload
        );
        let e = "l5".parse::<HeaderBase>().unwrap_err().to_string();
        assert!(e.contains("\"l2\", \"l3\", \"l4\" or \"payload\""), "{e}");
    }

    use super::super::parse::{parse, tests::udp4};
    #[test]
    fn checksums_computed_then_verify_and_survive_swaps() {
        let mut f = udp4(23, 4000, 9000);
        for (i, b) in f[42..].iter_mut().enumerate() {
            *b = i as u8 * 7;
        }
        let m = parse(&f);
        assert!(fix_ipv4_checksum(&mut f, &m));
        assert!(fix_l4_checksum(&mut f, &m));
        assert!(checksums_ok(&f, &m));
        assert!(swap_macs(&mut f) && swap_ips(&mut f, &m) && swap_ports(&mut f, &m));
        let m2 = parse(&f);
        assert_eq!((m2.src_port, m2.dst_port), (9000, 4000));
        assert_eq!(m2.src_ip4, m.dst_ip4);
        assert_eq!(f[0..6], [2, 0, 0, 0, 0, 1]);
        assert!(checksums_ok(&f, &m2));
        // a flipped payload bit is caught
        f[50] ^= 1;
        assert!(!checksums_ok(&f, &m2));
    }

    #[test]
    fn edits_refuse_frames_without_the_headers() {
        let mut short = vec![0u8; 10];
        assert!(!swap_macs(&mut short));
        let mut f = udp4(0, 1, 2);
        f.truncate(36);
        let m = parse(&f);
        assert!(!swap_ports(&mut f, &m));
        assert!(!fix_l4_checksum(&mut f, &m));
        // SCTP has ports, but a CRC32c checksum: its ports are not swapped, its checksum not
        // judged.
        let mut f = udp4(8, 1, 2);
        f[23] = crate::packet::parse::IPPROTO_SCTP;
        let m = parse(&f);
        assert!(m.flags & FLAG_L4 != 0);
        assert!(fix_ipv4_checksum(&mut f, &m));
        assert!(!swap_ports(&mut f, &m) && !fix_l4_checksum(&mut f, &m));
        assert!(checksums_ok(&f, &m));
    }
}
