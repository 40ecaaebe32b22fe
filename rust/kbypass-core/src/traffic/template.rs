//! UDP/IPv4 frame templates for the traffic generators.

use std::net::Ipv4Addr;

use crate::error::{Error, Result};
use crate::packet::edit::{fix_ipv4_checksum, fix_l4_checksum};
use crate::packet::parse;

/// Offset of the UDP header in a template frame (Ethernet + 20-byte IPv4).
pub const UDP_OFFSET: usize = 14 + 20;

/// What a generated UDP/IPv4 frame looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpTemplate {
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Source address.
    pub src_ip: Ipv4Addr,
    /// Destination address.
    pub dst_ip: Ipv4Addr,
    /// UDP source port (the first of `flows` ports when flows vary).
    pub src_port: u16,
    /// UDP destination port.
    pub dst_port: u16,
    /// Frame size in bytes without the FCS (60..=9000; 64-byte "wire" frames are 60 here).
    pub size: usize,
    /// Write a UDP checksum (false: 0, "no checksum", which IPv4 allows and which lets the
    /// generator vary ports without touching checksums).
    pub udp_checksum: bool,
}

impl Default for UdpTemplate {
    fn default() -> Self {
        UdpTemplate {
            dst_mac: [0x02, 0, 0xc6, 0x12, 0, 0x02],
            src_mac: [0x02, 0, 0xc6, 0x12, 0, 0x01],
            src_ip: Ipv4Addr::new(198, 18, 0, 1),
            dst_ip: Ipv4Addr::new(198, 18, 0, 2),
            src_port: 10000,
            dst_port: 9000,
            size: 60,
            udp_checksum: true,
        }
    }
}

/// Smallest frame: Ethernet + IPv4 + UDP with an 18-byte payload (a 64-byte wire frame).
pub const MIN_FRAME: usize = 60;
/// Largest frame the templates build (jumbo).
pub const MAX_FRAME: usize = 9014;

impl UdpTemplate {
    /// Build the frame bytes: valid IPv4 header checksum, UDP checksum as configured, and a
    /// payload that starts with a sequence-number slot (8 bytes, zero) followed by a pattern.
    pub fn build(&self) -> Result<Vec<u8>> {
        if !(MIN_FRAME..=MAX_FRAME).contains(&self.size) {
            return Err(Error::invalid(format!(
                "frame size {} is out of range: give {MIN_FRAME}..={MAX_FRAME} bytes (64-byte wire frames are 60 without the FCS)",
                self.size
            )));
        }
        let mut f = vec![0u8; self.size];
        f[0..6].copy_from_slice(&self.dst_mac);
        f[6..12].copy_from_slice(&self.src_mac);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip_len = (self.size - 14) as u16;
        f[14] = 0x45;
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[20..22].copy_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
        f[22] = 64;
        f[23] = 17;
        f[26..30].copy_from_slice(&self.src_ip.octets());
        f[30..34].copy_from_slice(&self.dst_ip.octets());
        let u = UDP_OFFSET;
        f[u..u + 2].copy_from_slice(&self.src_port.to_be_bytes());
        f[u + 2..u + 4].copy_from_slice(&self.dst_port.to_be_bytes());
        f[u + 4..u + 6].copy_from_slice(&(ip_len - 20).to_be_bytes());
        for (i, b) in f[u + 16..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let m = parse(&f);
        fix_ipv4_checksum(&mut f, &m);
        if self.udp_checksum {
            fix_l4_checksum(&mut f, &m);
        }
        Ok(f)
    }

    /// The UDP payload (what a kernel socket sends for the same frame).
    pub fn payload(&self) -> Result<Vec<u8>> {
        Ok(self.build()?[UDP_OFFSET + 8..].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::edit::checksums_ok;

    #[test]
    fn template_is_a_valid_udp_frame() {
        for size in [60, 64, 1514, 9014] {
            let t = UdpTemplate {
                size,
                ..Default::default()
            };
            let f = t.build().unwrap();
            let m = parse(&f);
            assert_eq!(f.len(), size);
            assert_eq!((m.src_port, m.dst_port, m.proto), (10000, 9000, 17));
            assert_eq!(m.payload_len as usize, size - 42);
            assert_eq!(m.flags, crate::packet::parse::FLAG_L4);
            assert!(checksums_ok(&f, &m), "size {size}");
        }
    }

    #[test]
    fn no_udp_checksum_option_writes_zero() {
        let f = UdpTemplate {
            udp_checksum: false,
            ..Default::default()
        }
        .build()
        .unwrap();
        assert_eq!(&f[UDP_OFFSET + 6..UDP_OFFSET + 8], &[0, 0]);
        assert!(checksums_ok(&f, &parse(&f)));
    }

    #[test]
    fn sizes_out_of_range_are_refused() {
        assert!(UdpTemplate {
            size: 59,
            ..Default::default()
        }
        .build()
        .is_err());
        assert!(UdpTemplate {
            size: 9015,
            ..Default::default()
        }
        .build()
        .is_err());
    }
}
