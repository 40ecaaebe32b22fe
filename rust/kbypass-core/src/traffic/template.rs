//! The traffic generators' UDP/IPv4 frame: a size and addresses, made by the one packet
//! template implementation ([`crate::packet::template`]).

use std::net::Ipv4Addr;

use crate::error::{Error, Result};
use crate::packet::template::{Spec, Template};

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
        let mut payload = vec![0u8; self.size - UDP_OFFSET - 8];
        for (i, b) in payload[8..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let mut f = Template::build(&Spec {
            dst_mac: self.dst_mac,
            src_mac: self.src_mac,
            src_ip: self.src_ip.into(),
            dst_ip: self.dst_ip.into(),
            src_port: self.src_port,
            dst_port: self.dst_port,
            payload,
            ..Spec::default()
        })?
        .frame();
        if !self.udp_checksum {
            f[UDP_OFFSET + 6..UDP_OFFSET + 8].fill(0);
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
    use crate::packet::parse;

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
