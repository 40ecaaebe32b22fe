//! The neighbour table (ARP, NDP) over rtnetlink: the MAC address of an on-link peer, asking
//! the kernel to resolve it when it has no entry yet; and an interface's own MAC address.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{attrs, getlink, put_attr, Rtnl};
use crate::error::{Error, Result};

const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NTF_USE: u8 = 0x01;
const IFLA_ADDRESS: u16 = 1;
/// `NUD_INCOMPLETE | NUD_FAILED`: an entry without a usable address (NUD_NONE is 0).
const NUD_UNUSABLE: u16 = 0x01 | 0x20;

fn family(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// `struct ndmsg`.
fn ndmsg(fam: u8, ifindex: u32, state: u16, flags: u8) -> [u8; 12] {
    let mut m = [0u8; 12];
    m[0] = fam;
    m[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    m[8..10].copy_from_slice(&state.to_ne_bytes());
    m[10] = flags;
    m
}

/// The MAC address the kernel's neighbour table has for `ip` on `ifindex` (in the calling
/// thread's network namespace), if it has a usable one (not incomplete or failed).
pub fn lookup(ifindex: u32, ip: IpAddr) -> Result<Option<[u8; 6]>> {
    let body = ndmsg(family(ip), 0, 0, 0);
    let want = ip_bytes(ip);
    let replies = Rtnl::open()?.request(
        libc::RTM_GETNEIGH,
        libc::NLM_F_DUMP as u16,
        &body,
        "netlink RTM_GETNEIGH",
    )?;
    for msg in replies {
        let Some(hdr) = msg.get(..12) else { continue };
        let idx = i32::from_ne_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
        let state = u16::from_ne_bytes([hdr[8], hdr[9]]);
        if idx != ifindex as i32 || state == 0 || state & NUD_UNUSABLE != 0 {
            continue;
        }
        let (mut dst, mut mac) = (None, None);
        for (ty, v) in attrs(&msg[12..]) {
            match ty {
                NDA_DST => dst = Some(v),
                NDA_LLADDR => mac = <[u8; 6]>::try_from(v).ok(),
                _ => {}
            }
        }
        if dst == Some(&want[..]) {
            if let Some(m) = mac {
                return Ok(Some(m));
            }
        }
    }
    Ok(None)
}

/// Asks the kernel to resolve `ip` on `ifindex` (`RTM_NEWNEIGH` with `NTF_USE`: an ARP
/// request or neighbour solicitation goes out, as if a packet were waiting for it).
pub fn request(ifindex: u32, ip: IpAddr) -> Result<()> {
    let mut body = ndmsg(family(ip), ifindex, 0, NTF_USE).to_vec();
    put_attr(&mut body, NDA_DST, &ip_bytes(ip));
    Rtnl::open()?.request(
        libc::RTM_NEWNEIGH,
        (libc::NLM_F_CREATE | libc::NLM_F_REPLACE | libc::NLM_F_ACK) as u16,
        &body,
        &format!("netlink RTM_NEWNEIGH (resolve {ip})"),
    )?;
    Ok(())
}

/// The MAC address of on-link `ip` on `ifindex`: the neighbour table's, or, when it has none,
/// the one the kernel resolves (asked again every 100 ms) within `timeout`.
pub fn resolve(ifindex: u32, ip: IpAddr, timeout: Duration) -> Result<[u8; 6]> {
    resolve_or_stop(ifindex, ip, timeout, &|| Ok(()))
}

/// [`resolve`], calling `stop` every 5 ms while it waits: an error from `stop` (e.g. the
/// caller's Ctrl-C) ends the wait with that error. Resolution leaves no state of its own
/// behind: the kernel keeps (and ages out) its neighbour entry either way.
pub fn resolve_or_stop(
    ifindex: u32,
    ip: IpAddr,
    timeout: Duration,
    stop: &dyn Fn() -> Result<()>,
) -> Result<[u8; 6]> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(mac) = lookup(ifindex, ip)? {
            return Ok(mac);
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "{ip} did not answer ARP/neighbour solicitation on ifindex {ifindex} within {timeout:?}: check that the peer is up on the same link and has that address (or add a static entry with `ip neigh add {ip} lladdr <mac> dev <if>`)"
            )));
        }
        request(ifindex, ip)?;
        let step = Instant::now() + Duration::from_millis(100);
        while Instant::now() < step.min(deadline) {
            std::thread::sleep(Duration::from_millis(5));
            stop()?;
            if let Some(mac) = lookup(ifindex, ip)? {
                return Ok(mac);
            }
        }
    }
}

/// The MAC address of `ifindex` (`IFLA_ADDRESS`).
pub fn link_mac(ifindex: u32) -> Result<[u8; 6]> {
    for msg in getlink(ifindex)? {
        let Some(rest) = msg.get(16..) else { continue };
        for (ty, v) in attrs(rest) {
            if ty == IFLA_ADDRESS {
                if let Ok(m) = <[u8; 6]>::try_from(v) {
                    return Ok(m);
                }
            }
        }
    }
    Err(Error::NotFound(format!(
        "ifindex {ifindex} has no Ethernet address (not an Ethernet interface?)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netns::NetnsGuard;
    use crate::sys::testutil::{is_root, VethPair};
    use crate::sys::xdp::if_nametoindex;

    #[test]
    fn loopback_has_a_zero_mac_and_no_neighbours() {
        assert_eq!(link_mac(1).unwrap(), [0; 6]);
        assert_eq!(lookup(1, "198.18.200.1".parse().unwrap()).unwrap(), None);
    }

    #[test]
    fn resolves_a_peer_the_table_does_not_know() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let pair = VethPair::with(Default::default()).unwrap();
        let _ns = NetnsGuard::enter(&pair.a).unwrap();
        let idx = if_nametoindex(VethPair::IF_A).unwrap();
        let peer = IpAddr::V4(pair.ip(2));
        let out = std::process::Command::new("ip")
            .args(["neigh", "del", &peer.to_string(), "dev", VethPair::IF_A])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(lookup(idx, peer).unwrap(), None);
        let mac = resolve(idx, peer, Duration::from_secs(3)).unwrap();
        assert_eq!(mac, [0x02, 0x00, 0xc6, 0x12, pair.net, 0x02]);
        let unknown = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, pair.net, 77));
        let e = resolve(idx, unknown, Duration::from_millis(300)).unwrap_err();
        assert!(e.to_string().contains("did not answer"), "{e}");
        // `stop` ends the wait long before the timeout, with its error.
        let start = Instant::now();
        let stop = || {
            if start.elapsed() > Duration::from_millis(150) {
                return Err(Error::Interrupted("stopped".into()));
            }
            Ok(())
        };
        let e = resolve_or_stop(idx, unknown, Duration::from_secs(30), &stop).unwrap_err();
        assert!(matches!(e, Error::Interrupted(_)), "{e}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }
}
