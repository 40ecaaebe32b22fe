//! RFC 1071 one's-complement sums: the IPv4 header checksum and the UDP, TCP and ICMPv6
//! checksums over their IPv4/IPv6 pseudo-header. Shared by [`super::edit`] (fixing and
//! verifying checksums) and [`super::reply`] (building answers).

/// Add `data` to a running one's-complement sum (RFC 1071), 16 bits at a time.
pub fn sum16(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        // Four 16-bit words at once; carries are folded at the end.
        acc += u16::from_be_bytes([c[0], c[1]]) as u64
            + u16::from_be_bytes([c[2], c[3]]) as u64
            + u16::from_be_bytes([c[4], c[5]]) as u64
            + u16::from_be_bytes([c[6], c[7]]) as u64;
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        acc += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [b] = rest.remainder() {
        acc += (*b as u64) << 8;
    }
    acc
}

/// Fold a running sum to the 16-bit one's-complement checksum.
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The source and destination address bytes of the IPv4 (`ip_version` 4) or IPv6 (6) header
/// at `l3`: what a pseudo-header sums. None for another version or a header past the frame.
pub fn ip_addrs(frame: &[u8], l3: usize, ip_version: u8) -> Option<&[u8]> {
    match ip_version {
        4 => frame.get(l3 + 12..l3 + 20),
        6 => frame.get(l3 + 8..l3 + 40),
        _ => None,
    }
}

/// The running sum of the pseudo-header of an upper-layer message of `len` bytes of protocol
/// `proto` between `addrs` (from [`ip_addrs`]).
pub fn pseudo_header_sum(addrs: &[u8], proto: u8, len: usize) -> u64 {
    sum16(addrs, 0) + proto as u64 + len as u64
}

/// The checksum of the upper-layer message `frame[l4..end]` (its checksum field as it is) with
/// the pseudo-header of the IP header at `l3`; 0 over a message whose checksum field is right.
pub fn upper_layer_checksum(
    frame: &[u8],
    l3: usize,
    ip_version: u8,
    proto: u8,
    l4: usize,
    end: usize,
) -> Option<u16> {
    let msg = frame.get(l4..end)?;
    let acc = pseudo_header_sum(ip_addrs(frame, l3, ip_version)?, proto, msg.len());
    Some(fold(sum16(msg, acc)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ipv4_header_checksum() {
        // Example header from RFC 1071 discussions / Wikipedia: checksum 0xb861.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(fold(sum16(&hdr, 0)), 0xb861);
    }

    #[test]
    fn odd_lengths_pad_with_a_zero_byte() {
        assert_eq!(sum16(&[0x12, 0x34, 0x56], 0), 0x1234 + 0x5600);
        assert_eq!(fold(0x1_fffe), !0xffffu16);
    }

    #[test]
    fn pseudo_header_needs_the_addresses() {
        let mut f = [0u8; 40];
        f[12..20].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let addrs = ip_addrs(&f, 0, 4).unwrap();
        assert_eq!(addrs, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            pseudo_header_sum(addrs, 17, 9),
            0x0102 + 0x0304 + 0x0506 + 0x0708 + 17 + 9
        );
        assert_eq!(ip_addrs(&f[..19], 0, 4), None);
        assert_eq!(ip_addrs(&f, 0, 6).map(<[u8]>::len), Some(32));
        assert_eq!(ip_addrs(&f, 1, 6), None);
        assert_eq!(ip_addrs(&f, 0, 5), None);
        assert_eq!(upper_layer_checksum(&f, 0, 4, 17, 30, 41), None);
    }
}
