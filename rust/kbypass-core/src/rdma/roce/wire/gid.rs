//! GIDs as IP addresses: RoCEv2 carries a GID in the IP header, an IPv4 address as the
//! IPv4-mapped GID `::ffff:a.b.c.d` and an IPv6 address as itself.

use super::{IpHeader, WireError};

const MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// The IPv4 address of an IPv4-mapped GID, or `None` for an IPv6 one.
pub fn gid_ipv4(gid: &[u8; 16]) -> Option<[u8; 4]> {
    (gid[..12] == MAPPED_PREFIX).then(|| [gid[12], gid[13], gid[14], gid[15]])
}

/// The IPv4-mapped GID of an IPv4 address.
pub fn ipv4_gid(addr: [u8; 4]) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[..12].copy_from_slice(&MAPPED_PREFIX);
    g[12..].copy_from_slice(&addr);
    g
}

/// Time to live / hop limit of headers made from GIDs (Linux's default, as rxe sends).
pub const DEFAULT_HOP_LIMIT: u8 = 64;

impl IpHeader {
    /// The IP header between two GIDs: IPv4 when both are IPv4-mapped, IPv6 when neither is
    /// (TOS or traffic class 0, flow label and identification 0, TTL or hop limit 64);
    /// [`WireError::MixedGidFamilies`] otherwise.
    pub fn for_gids(src_gid: [u8; 16], dst_gid: [u8; 16]) -> Result<IpHeader, WireError> {
        match (gid_ipv4(&src_gid), gid_ipv4(&dst_gid)) {
            (Some(src), Some(dst)) => Ok(IpHeader::V4 {
                src,
                dst,
                tos: 0,
                ttl: DEFAULT_HOP_LIMIT,
                id: 0,
            }),
            (None, None) => Ok(IpHeader::V6 {
                src: src_gid,
                dst: dst_gid,
                traffic_class: 0,
                flow_label: 0,
                hop_limit: DEFAULT_HOP_LIMIT,
            }),
            _ => Err(WireError::MixedGidFamilies),
        }
    }

    /// The source and destination GIDs of the header: IPv4 addresses IPv4-mapped.
    pub fn gids(&self) -> ([u8; 16], [u8; 16]) {
        match *self {
            IpHeader::V4 { src, dst, .. } => (ipv4_gid(src), ipv4_gid(dst)),
            IpHeader::V6 { src, dst, .. } => (src, dst),
        }
    }
}
