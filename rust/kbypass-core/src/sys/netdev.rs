//! What a network device offers AF_XDP, asked of the generic-netlink "netdev" family
//! (`Documentation/netlink/specs/netdev.yaml`, kernel ≥ 6.3; `xsk-features` since 6.8): its
//! XDP features (zero-copy among them) and the AF_XDP TX metadata offloads its driver
//! implements in zero-copy mode (`tx-timestamp`, `tx-checksum`, `tx-launch-time-fifo`).
//!
//! Copy mode does not depend on these: there the kernel builds an skb from each descriptor and
//! applies the request itself (see [`crate::xsk::txmd`]).

use super::netlink::{attrs, put_attr, u32_of, Rtnl};
use crate::error::{Error, Result};

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const NETDEV_A_DEV_XDP_ZC_MAX_SEGS: u16 = 4;
const NETDEV_A_DEV_XSK_FEATURES: u16 = 6;

/// `NETDEV_XDP_ACT_XSK_ZEROCOPY`: the driver binds AF_XDP sockets in zero-copy mode.
pub const XDP_ACT_XSK_ZEROCOPY: u64 = 1 << 3;
/// `NETDEV_XSK_FLAGS_TX_TIMESTAMP`: the driver reports TX times through TX metadata.
pub const XSK_TX_TIMESTAMP: u64 = 1 << 0;
/// `NETDEV_XSK_FLAGS_TX_CHECKSUM`: the driver completes L4 checksums through TX metadata.
pub const XSK_TX_CHECKSUM: u64 = 1 << 1;
/// `NETDEV_XSK_FLAGS_TX_LAUNCH_TIME_FIFO`: the driver sends at a launch time (kernel ≥ 6.15).
pub const XSK_TX_LAUNCH_TIME: u64 = 1 << 2;

/// A device's XDP and AF_XDP features (`netdev dev-get`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DevFeatures {
    /// `xdp-features`: `NETDEV_XDP_ACT_*` bits.
    pub xdp_features: u64,
    /// `xsk-features`: `NETDEV_XSK_FLAGS_*` bits (0 before 6.8, which does not report them).
    pub xsk_features: u64,
    /// `xdp-zc-max-segs`: buffers per packet in zero-copy mode (1 without multi-buffer).
    pub zc_max_segs: u32,
}

impl DevFeatures {
    /// Whether the driver binds AF_XDP sockets in zero-copy mode.
    pub fn zerocopy(&self) -> bool {
        self.xdp_features & XDP_ACT_XSK_ZEROCOPY != 0
    }

    /// The names of the `xsk-features` bits set (as `ynl` prints them).
    pub fn xsk_names(&self) -> Vec<&'static str> {
        [
            (XSK_TX_TIMESTAMP, "tx-timestamp"),
            (XSK_TX_CHECKSUM, "tx-checksum"),
            (XSK_TX_LAUNCH_TIME, "tx-launch-time-fifo"),
        ]
        .into_iter()
        .filter(|(b, _)| self.xsk_features & b != 0)
        .map(|(_, n)| n)
        .collect()
    }
}

/// A generic-netlink message body: `genlmsghdr` (cmd, version 1) and attributes.
fn genl(cmd: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut b = vec![cmd, 1, 0, 0];
    for (ty, p) in attrs {
        put_attr(&mut b, *ty, p);
    }
    b
}

/// A netlink unsigned integer attribute (the kernel writes 4 or 8 bytes).
fn uint_of(p: &[u8]) -> Option<u64> {
    match p.len() {
        8 => Some(u64::from_ne_bytes(p.try_into().ok()?)),
        4 => u32_of(p).map(u64::from),
        _ => None,
    }
}

/// The id of generic-netlink family `name`; None when the kernel has no such family.
fn family_id(nl: &mut Rtnl, name: &str) -> Result<Option<u16>> {
    let mut z = name.as_bytes().to_vec();
    z.push(0);
    let body = genl(CTRL_CMD_GETFAMILY, &[(CTRL_ATTR_FAMILY_NAME, &z)]);
    let what = format!("resolve the generic netlink family {name:?}");
    let msgs = match nl.request(GENL_ID_CTRL, 0, &body, &what) {
        Ok(m) => m,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(msgs.iter().find_map(|m| {
        attrs(m.get(4..)?)
            .find(|(ty, _)| *ty == CTRL_ATTR_FAMILY_ID)
            .and_then(|(_, p)| p.get(..2).map(|s| u16::from_ne_bytes([s[0], s[1]])))
    }))
}

/// The XDP and AF_XDP features of device `ifindex` (in the caller's network namespace); None
/// when the kernel has no "netdev" generic-netlink family (before 6.3), so it cannot say.
pub fn dev_features(ifindex: u32) -> Result<Option<DevFeatures>> {
    let mut nl = Rtnl::open_proto(libc::NETLINK_GENERIC)?;
    let Some(id) = family_id(&mut nl, "netdev")? else {
        return Ok(None);
    };
    let body = genl(
        NETDEV_CMD_DEV_GET,
        &[(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes())],
    );
    let msgs = nl.request(
        id,
        0,
        &body,
        &format!("netdev dev-get of ifindex {ifindex}"),
    )?;
    let m = msgs.first().and_then(|m| m.get(4..)).ok_or_else(|| {
        Error::State(format!(
            "netdev dev-get of ifindex {ifindex}: the kernel answered nothing"
        ))
    })?;
    let mut f = DevFeatures::default();
    for (ty, p) in attrs(m) {
        match ty {
            NETDEV_A_DEV_XDP_FEATURES => f.xdp_features = uint_of(p).unwrap_or(0),
            NETDEV_A_DEV_XSK_FEATURES => f.xsk_features = uint_of(p).unwrap_or(0),
            NETDEV_A_DEV_XDP_ZC_MAX_SEGS => f.zc_max_segs = u32_of(p).unwrap_or(0),
            _ => {}
        }
    }
    Ok(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genl_body_and_uints() {
        let b = genl(7, &[(1, &5u32.to_ne_bytes())]);
        assert_eq!(&b[..4], &[7, 1, 0, 0]);
        assert_eq!(
            attrs(&b[4..]).collect::<Vec<_>>(),
            vec![(1, &5u32.to_ne_bytes()[..])]
        );
        assert_eq!(uint_of(&9u64.to_ne_bytes()), Some(9));
        assert_eq!(uint_of(&9u32.to_ne_bytes()), Some(9));
        assert_eq!(uint_of(&[1, 2]), None);
        let f = DevFeatures {
            xsk_features: XSK_TX_CHECKSUM | XSK_TX_LAUNCH_TIME,
            ..Default::default()
        };
        assert_eq!(f.xsk_names(), vec!["tx-checksum", "tx-launch-time-fifo"]);
        assert!(!f.zerocopy());
    }

    #[test]
    fn loopback_has_basic_xdp_and_no_xsk_offloads() {
        // Asking needs no privilege; loopback is ifindex 1 in every namespace.
        let Some(f) = dev_features(1).unwrap() else {
            return; // a kernel before 6.3 has no netdev family: nothing to ask
        };
        // Loopback runs XDP only generically and has no AF_XDP TX metadata offloads.
        assert!(!f.zerocopy(), "{f:?}");
        assert_eq!(f.xsk_features, 0, "{f:?}");
    }

    #[test]
    fn an_unknown_device_is_an_error() {
        if let Ok(Some(_)) = dev_features(1) {
            let r = dev_features(0x7fff_fff0);
            assert!(r.is_err(), "{r:?}");
        }
    }
}
