//! UDP/TCP checksums left to the kernel or the device (`CHECKSUM_PARTIAL`, AF_XDP TX
//! metadata): the checksum field holds the pseudo-header sum, folded and not complemented, and
//! the completer sums from `csum_start` to the end of the packet and stores the complement at
//! `csum_start + csum_offset` (the kernel's `skb_checksum_help`; a UDP result of 0 goes out as
//! 0xffff there).

use super::checksum::{fold, ip_addrs, pseudo_header_sum, sum16};
use super::parse::{PacketMeta, FLAG_FRAGMENT, FLAG_L4, FLAG_TRUNCATED, IPPROTO_TCP, IPPROTO_UDP};

/// Prepare the UDP or TCP checksum of `frame` (parsed as `m`) for completion by the kernel or
/// the device: writes the pseudo-header sum into the field and returns `(csum_start,
/// csum_offset)`, counted from the frame's first byte. None, and nothing written, when the
/// frame has no complete unfragmented UDP/TCP segment, or bytes other than zero padding after
/// it (the completer sums to the end of the frame, so they would spoil the sum): compute that
/// one in software.
pub fn partial_l4_checksum(frame: &mut [u8], m: &PacketMeta) -> Option<(u16, u16)> {
    if m.flags & (FLAG_TRUNCATED | FLAG_FRAGMENT) != 0 || m.flags & FLAG_L4 == 0 {
        return None;
    }
    let (l3, l4) = (m.l3_off as usize, m.l4_off as usize);
    let end = m.payload_off as usize + m.payload_len as usize;
    if end > frame.len() || l4 >= end || frame[end..].iter().any(|&b| b != 0) {
        return None;
    }
    let off = match m.proto {
        IPPROTO_UDP => 6,
        IPPROTO_TCP => 16,
        _ => return None,
    };
    if l4 + off + 2 > end {
        return None;
    }
    let acc = pseudo_header_sum(ip_addrs(frame, l3, m.ip_version)?, m.proto, end - l4);
    let start = u16::try_from(l4).ok()?;
    frame[l4 + off..l4 + off + 2].copy_from_slice(&(!fold(acc)).to_be_bytes());
    Some((start, off as u16))
}

/// Complete a partial checksum as the kernel does (`skb_checksum_help`): sum `frame` from
/// `start` to its end and store the complement at `start + offset` (0 as 0xffff). False, and
/// nothing written, when the field does not lie inside the frame.
pub fn complete_partial(frame: &mut [u8], start: u16, offset: u16) -> bool {
    let (s, at) = (start as usize, start as usize + offset as usize);
    if at + 2 > frame.len() {
        return false;
    }
    let c = match fold(sum16(&frame[s..], 0)) {
        0 => 0xffff,
        c => c,
    };
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::edit::{checksums_ok, fix_ipv4_checksum, fix_l4_checksum};
    use crate::packet::parse::parse;
    use crate::packet::template::{Spec, Template};

    fn frame(proto: u8, v6: bool, pad: usize) -> Vec<u8> {
        let (src, dst) = if v6 {
            ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap())
        } else {
            ("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap())
        };
        let t = Template::build(&Spec {
            src_ip: src,
            dst_ip: dst,
            proto,
            payload: b"an odd-length payload".to_vec(),
            ..Spec::default()
        })
        .unwrap();
        let mut f = t.frame();
        f.extend(std::iter::repeat_n(0, pad));
        f
    }

    #[test]
    fn a_partial_checksum_completes_to_the_software_one() {
        for proto in [IPPROTO_UDP, IPPROTO_TCP] {
            for v6 in [false, true] {
                let mut f = frame(proto, v6, 7);
                let m = parse(&f);
                fix_ipv4_checksum(&mut f, &m);
                let mut soft = f.clone();
                assert!(fix_l4_checksum(&mut soft, &m));
                let (start, off) = partial_l4_checksum(&mut f, &m).unwrap();
                assert_eq!(start, m.l4_off);
                assert_eq!(off, if proto == IPPROTO_UDP { 6 } else { 16 });
                assert!(!checksums_ok(&f, &m), "left partial");
                assert!(complete_partial(&mut f, start, off));
                assert_eq!(f, soft, "proto {proto} v6 {v6}");
                assert!(checksums_ok(&f, &m));
            }
        }
    }

    #[test]
    fn frames_it_cannot_prepare_are_left_alone() {
        let mut f = frame(IPPROTO_UDP, false, 4);
        let n = f.len();
        f[n - 1] = 9; // not zero padding: the completer would add it in
        let m = parse(&f);
        let before = f.clone();
        assert_eq!(partial_l4_checksum(&mut f, &m), None);
        assert_eq!(f, before);
        let mut short = frame(IPPROTO_UDP, false, 0);
        short.truncate(40); // cut inside the UDP header
        let m = parse(&short);
        assert_eq!(partial_l4_checksum(&mut short, &m), None);
        assert!(!complete_partial(&mut short, 34, 6));
    }
}
