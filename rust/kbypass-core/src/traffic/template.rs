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
        self.frame_with(payload)
    }

    /// Build a frame whose UDP payload is `payload` (IP and UDP lengths and checksums follow
    /// from it). Its length is `42 + payload.len()`, padded with zeros after the datagram to
    /// the Ethernet minimum of 60 bytes; `size` must be 0 (follow the payload) or that length.
    pub fn build_with_payload(&self, payload: &[u8]) -> Result<Vec<u8>> {
        let len = Self::frame_len(payload);
        let max = MAX_FRAME - UDP_OFFSET - 8;
        if payload.len() > max {
            return Err(Error::invalid(format!(
                "a {}-byte UDP payload makes a {len}-byte frame, over the {MAX_FRAME}-byte maximum: give at most {max} bytes",
                payload.len()
            )));
        }
        if self.size != 0 && self.size != len {
            return Err(Error::invalid(format!(
                "size={} conflicts with the {}-byte payload, which makes a {len}-byte frame: give the size or the payload, not both (or size {len})",
                self.size,
                payload.len()
            )));
        }
        self.frame_with(payload.to_vec())
    }

    /// The frame length a UDP payload of `payload.len()` bytes makes (at least [`MIN_FRAME`]).
    pub fn frame_len(payload: &[u8]) -> usize {
        (UDP_OFFSET + 8 + payload.len()).max(MIN_FRAME)
    }

    fn frame_with(&self, payload: Vec<u8>) -> Result<Vec<u8>> {
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
    fn a_given_payload_is_the_datagram() {
        let t = UdpTemplate {
            size: 0,
            ..Default::default()
        };
        for (n, want_len) in [(64usize, 106usize), (0, 60), (5, 60), (18, 60), (19, 61)] {
            let p: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            let f = t.build_with_payload(&p).unwrap();
            let m = parse(&f);
            assert_eq!(f.len(), want_len, "payload {n}");
            assert_eq!(f.len(), UdpTemplate::frame_len(&p));
            // IPv4 total length and UDP length count the datagram, not the Ethernet padding.
            assert_eq!(u16::from_be_bytes([f[16], f[17]]) as usize, 28 + n);
            assert_eq!(u16::from_be_bytes([f[38], f[39]]) as usize, 8 + n);
            assert_eq!(m.payload_len as usize, n);
            assert_eq!(&f[UDP_OFFSET + 8..UDP_OFFSET + 8 + n], &p[..]);
            assert!(f[UDP_OFFSET + 8 + n..].iter().all(|&b| b == 0));
            assert!(checksums_ok(&f, &m), "payload {n}");
        }
        // The size it makes is accepted too; another size, or a payload too large, is not.
        let p = [1u8; 64];
        let sized = UdpTemplate {
            size: 106,
            ..t.clone()
        };
        assert_eq!(
            sized.build_with_payload(&p).unwrap(),
            t.build_with_payload(&p).unwrap()
        );
        let e = UdpTemplate {
            size: 60,
            ..t.clone()
        }
        .build_with_payload(&p)
        .unwrap_err();
        assert!(e.to_string().contains("conflicts"), "{e}");
        let e = t.build_with_payload(&vec![0; MAX_FRAME]).unwrap_err();
        assert!(e.to_string().contains("at most 8972"), "{e}");
        let no_sum = UdpTemplate {
            udp_checksum: false,
            ..t
        };
        let f = no_sum.build_with_payload(&p).unwrap();
        assert_eq!(&f[UDP_OFFSET + 6..UDP_OFFSET + 8], &[0, 0]);
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
