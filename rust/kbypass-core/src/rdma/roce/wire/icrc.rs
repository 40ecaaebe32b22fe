//! The invariant CRC (ICRC) of a RoCEv2 packet, as the IBTA spec (annex A17) defines it and
//! Linux rxe (`rxe_icrc.c`) computes it.
//!
//! The CRC-32 of the Ethernet polynomial runs over a pseudo-packet: 8 bytes of `0xff`
//! standing for the InfiniBand LRH, then the IP header with its variant fields set to all
//! ones (IPv4: TOS, TTL and header checksum; IPv6: traffic class, flow label and hop limit),
//! the UDP header with its checksum set to all ones, the BTH with its byte 4 (FECN, BECN and
//! the 6 reserved bits) set to all ones, then everything else up to the ICRC unchanged: the
//! extension headers, the payload and the pad bytes. The CRC is the standard one (initial
//! value all ones, final complement; rxe's seed `0xdebb20e3` is that initial value run over
//! the 8 LRH bytes), and it is stored least significant byte first, as rxe stores its `u32`.

use super::headers::{BTH_LEN, ICRC_LEN};
use super::WireError;

const UDP_LEN: usize = 8;
/// Longest IP header whose variant fields are masked: IPv4 with 40 bytes of options.
const MAX_IP_HDR: usize = 60;

/// The ICRC of `ip`, an IPv4 or IPv6 packet carrying RoCEv2 (from the first byte of the IP
/// header to the last pad byte, without the ICRC itself), as the 4 bytes that follow it on
/// the wire. `ip_hdr_len` is the IP header's length (IPv4: IHL × 4; IPv6: 40).
pub fn compute(ip: &[u8], ip_hdr_len: usize) -> Result<[u8; ICRC_LEN], WireError> {
    let masked_len = ip_hdr_len + UDP_LEN + BTH_LEN;
    if !(20..=MAX_IP_HDR).contains(&ip_hdr_len) {
        return Err(WireError::BadIpHeader(
            "IP header length out of range for the ICRC",
        ));
    }
    if ip.len() < masked_len {
        return Err(WireError::Truncated {
            layer: "IP/UDP/BTH for the ICRC",
            need: masked_len,
            have: ip.len(),
        });
    }
    let mut pseudo = [0u8; MAX_IP_HDR + UDP_LEN + BTH_LEN];
    let pseudo = &mut pseudo[..masked_len];
    pseudo.copy_from_slice(&ip[..masked_len]);
    match ip[0] >> 4 {
        4 => {
            pseudo[1] = 0xff; // TOS (DSCP + ECN)
            pseudo[8] = 0xff; // TTL
            pseudo[10] = 0xff; // header checksum
            pseudo[11] = 0xff;
        }
        6 => {
            // Version stays; traffic class and flow label become ones.
            pseudo[0] |= 0x0f;
            pseudo[1] = 0xff;
            pseudo[2] = 0xff;
            pseudo[3] = 0xff;
            pseudo[7] = 0xff; // hop limit
        }
        v => return Err(WireError::BadIpHeader(ip_version_text(v))),
    }
    let udp = ip_hdr_len;
    pseudo[udp + 6] = 0xff; // UDP checksum
    pseudo[udp + 7] = 0xff;
    pseudo[udp + UDP_LEN + 4] = 0xff; // BTH: FECN, BECN, reserved 6 bits
    let mut h = crc32fast::Hasher::new();
    h.update(&[0xff; 8]);
    h.update(pseudo);
    h.update(&ip[masked_len..]);
    Ok(h.finalize().to_le_bytes())
}

fn ip_version_text(v: u8) -> &'static str {
    if v == 4 || v == 6 {
        "IP version does not match the EtherType"
    } else {
        "IP version is neither 4 nor 6"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// rxe's seed is the CRC register after the 8 LRH bytes of ones: the construction above
    /// (standard CRC-32 over `ff`×8 and then the rest) is rxe's `crc32_le(0xdebb20e3, ...)`.
    #[test]
    fn rxe_seed_is_the_crc_of_the_masked_lrh() {
        // crc32_le without pre/post inversion, bit by bit (reflected polynomial 0xedb88320).
        let mut crc: u32 = 0xffff_ffff;
        for _ in 0..8 {
            crc ^= 0xff;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        assert_eq!(crc, 0xdebb_20e3);
    }

    /// A CNP captured from a Mellanox ConnectX-4 Lx (published in scapy's RoCE tests): the ICRC
    /// a real HCA put on the wire.
    #[test]
    fn icrc_of_a_packet_captured_from_a_connectx4() {
        let frame = hex("e41d 2dab 2bc2 7cfe 9064 3b32 0800 45c2
             003c 718c 4000 4011 9161 0a00 1101 0a00
             1201 0000 12b7 0028 0000 8100 ffff 4000
             0118 0000 0000 0000 0000 0000 0000 0000
             0000 0000 0000 82fd 002a");
        let ip = &frame[14..];
        let (body, icrc) = ip.split_at(ip.len() - ICRC_LEN);
        assert_eq!(compute(body, 20).unwrap(), icrc);
        // Every masked field may change without changing the ICRC; anything else changes it.
        let mut v = body.to_vec();
        for at in [1, 8, 10, 11, 26, 27, 32] {
            v[at] ^= 0x5a;
        }
        assert_eq!(compute(&v, 20).unwrap(), icrc);
        for at in [0, 2, 9, 12, 20, 24, 28, 33, 36, body.len() - 1] {
            let mut w = body.to_vec();
            w[at] ^= 0x01;
            assert_ne!(compute(&w, 20).unwrap(), icrc, "byte {at} is covered");
        }
    }

    #[test]
    fn short_or_wrong_headers_are_errors() {
        assert!(matches!(
            compute(&[0x45; 30], 20),
            Err(WireError::Truncated {
                need: 40,
                have: 30,
                ..
            })
        ));
        assert!(matches!(
            compute(&[0x55; 40], 20),
            Err(WireError::BadIpHeader(_))
        ));
        assert!(matches!(
            compute(&[0x45; 40], 64),
            Err(WireError::BadIpHeader(_))
        ));
    }
}
