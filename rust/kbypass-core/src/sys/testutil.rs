//! Test helpers: root check, C layout probes, and the one veth bench of the core's tests
//! ([`VethPair`]: throwaway network namespaces joined by a veth pair).

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::sys::netns::{NetnsGuard, NETNS_RUN_DIR};

/// Whether the tests run as root (they then must exercise the kernel paths).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Compile `src` with the system C compiler and return its stdout, or `None` when no compiler
/// or headers are available (the caller skips with an "optional:" reason).
pub fn compile_and_run_c(name: &str, src: &str) -> Option<String> {
    let dir = std::env::temp_dir().join(format!("kbx-c-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let c = dir.join("probe.c");
    let exe = dir.join("probe");
    std::fs::write(&c, src).ok()?;
    let ok = Command::new("cc")
        .arg("-o")
        .arg(&exe)
        .arg(&c)
        .output()
        .ok()?
        .status
        .success();
    let out = if ok {
        Command::new(&exe).output().ok()
    } else {
        None
    };
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip (from iproute2: bash .ci/install-system-deps): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// How to build a [`VethPair`].
#[derive(Clone, Copy, Debug)]
pub struct VethOptions {
    /// RX and TX queues of each end.
    pub queues: u32,
    /// Generic receive offload on both ends: frames that XDP sends into a veth are dropped
    /// unless the receiving end has GRO on or a native XDP program of its own.
    pub gro: bool,
    /// Leave IPv6 on; off, the link carries no router solicitations or MLD reports that would
    /// be counted as traffic.
    pub ipv6: bool,
    /// Both ends in namespace `a` (`b` is then the same name as `a`).
    pub one_namespace: bool,
}

impl Default for VethOptions {
    fn default() -> Self {
        VethOptions {
            queues: 1,
            gro: false,
            ipv6: true,
            one_namespace: false,
        }
    }
}

/// The one veth test bench of the core's tests: namespaces `kbx-<pid>-<n>-a` and `-b` (the name
/// pattern `kbypass.testing.VethPair.cleanup_stale()` removes once this process is gone) joined by
/// `veth0` in `a` (198.18.`net`.1, 02:00:c6:12:`net`:01) and `veth1` in `b` (198.18.`net`.2,
/// 02:00:c6:12:`net`:02), both up with loopback, static neighbour entries both ways (an XDP
/// program that redirects everything also swallows ARP), GRO and IPv6 as asked. Everything is
/// done with `ip` (iproute2) and in-process calls from a thread inside the namespace (sysctl
/// through /proc, GRO through the `SIOCETHTOOL` ioctl): no `ip netns exec`, no ethtool binary.
/// Both namespaces are removed on drop, even when the test panics.
pub struct VethPair {
    /// Namespace of `veth0`.
    pub a: String,
    /// Namespace of `veth1` (equal to `a` with [`VethOptions::one_namespace`]).
    pub b: String,
    /// Third octet of the /24 in 198.18.0.0/15 and fifth byte of both MACs.
    pub net: u8,
}

impl VethPair {
    /// Interface name of the end in namespace `a`.
    pub const IF_A: &'static str = "veth0";
    /// Interface name of the end in namespace `b`.
    pub const IF_B: &'static str = "veth1";

    /// Build a bench as `opts` says.
    pub fn with(opts: VethOptions) -> Result<Self, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let tag = format!("kbx-{}-{n}", std::process::id());
        let a = format!("{tag}-a");
        let b = if opts.one_namespace {
            a.clone()
        } else {
            format!("{tag}-b")
        };
        ip(&["netns", "add", &a])?;
        // From here on, Drop removes what was made even if a later step fails.
        let me = VethPair {
            a,
            b,
            net: 1 + (n % 250) as u8,
        };
        if !opts.one_namespace {
            ip(&["netns", "add", &me.b])?;
        }
        let q = opts.queues.max(1).to_string();
        let (mac_a, mac_b) = (me.mac_text(1), me.mac_text(2));
        ip(&[
            "-n",
            &me.a,
            "link",
            "add",
            Self::IF_A,
            "numrxqueues",
            &q,
            "numtxqueues",
            &q,
            "address",
            &mac_a,
            "type",
            "veth",
            "peer",
            "name",
            Self::IF_B,
            "netns",
            &me.b,
            "numrxqueues",
            &q,
            "numtxqueues",
            &q,
            "address",
            &mac_b,
        ])?;
        for (ns, dev, me_host, peer_host) in [(&me.a, Self::IF_A, 1, 2), (&me.b, Self::IF_B, 2, 1)]
        {
            let addr = format!("{}/24", me.ip(me_host));
            let peer = me.ip(peer_host).to_string();
            let peer_mac = me.mac_text(peer_host);
            if !opts.ipv6 {
                in_netns(ns, || {
                    for k in ["all", "default"] {
                        let p = format!("/proc/sys/net/ipv6/conf/{k}/disable_ipv6");
                        std::fs::write(&p, "1").map_err(|e| format!("write {p}: {e}"))?;
                    }
                    Ok(())
                })?;
            }
            ip(&["-n", ns, "addr", "add", &addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                ns,
                "neigh",
                "replace",
                &peer,
                "lladdr",
                &peer_mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ])?;
            if opts.gro {
                in_netns(ns, || {
                    crate::sys::socket::set_gro(dev, true).map_err(|e| e.to_string())
                })?;
            }
        }
        Ok(me)
    }

    /// Address of host `host` (1 = `veth0`, 2 = `veth1`) in this bench's /24.
    pub fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.net, host)
    }

    /// MAC of host `host` (1 = `veth0`, 2 = `veth1`).
    pub fn mac(&self, host: u8) -> [u8; 6] {
        [2, 0, 0xc6, 0x12, self.net, host]
    }

    fn mac_text(&self, host: u8) -> String {
        let m = self.mac(host);
        format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }

    /// Run `f` on a fresh thread inside namespace `a` (setns affects only the thread).
    pub fn in_a<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        run_in(&self.a, f)
    }

    /// Run `f` on a fresh thread inside namespace `b`.
    pub fn in_b<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        run_in(&self.b, f)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.a]);
        if self.b != self.a {
            let _ = ip(&["netns", "del", &self.b]);
        }
    }
}

/// Run `f` on a fresh thread inside the named namespace; a failure to enter it is an `Err`.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T, String> + Send) -> Result<T, String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let _guard = NetnsGuard::enter(ns).map_err(|e| e.to_string())?;
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

fn run_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("{NETNS_RUN_DIR}/{ns}");
    std::thread::spawn(move || {
        enter_netns(&path);
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Move the calling thread into the network namespace at `path` (panics on failure: test helper).
pub fn enter_netns(path: &str) {
    let f = std::fs::File::open(path).expect("open netns");
    use std::os::fd::AsRawFd;
    // SAFETY: a valid namespace fd; CLONE_NEWNET only changes this thread's network namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
}

/// A raw `AF_PACKET` socket on one interface of the calling thread's namespace (it stays in
/// that namespace when the thread leaves it): sends crafted frames and receives every frame
/// the interface sees, both ways, with a receive timeout.
pub struct RawSocket {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
}

impl RawSocket {
    /// Open one on `ifname`, receives timing out after `timeout`.
    pub fn open(ifname: &str, timeout: std::time::Duration) -> crate::Result<Self> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let ifindex = crate::sys::xdp::if_nametoindex(ifname)? as i32;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        let err = |what: &str| {
            let e = std::io::Error::last_os_error();
            crate::Error::os(what, e.raw_os_error().unwrap_or(0), "")
        };
        // SAFETY: plain socket(2); the result is checked before it is owned.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if raw < 0 {
            return Err(err("socket(AF_PACKET)"));
        }
        // SAFETY: `raw` is a new socket nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: all-zero is a valid sockaddr_ll; the fields set below make the address.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex;
        // SAFETY: a valid fd and a live sockaddr_ll of the size passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r != 0 {
            return Err(err("bind(AF_PACKET)"));
        }
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: a valid fd and a live timeval of the size passed.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        if r != 0 {
            return Err(err("setsockopt(SO_RCVTIMEO)"));
        }
        Ok(RawSocket { fd, ifindex })
    }

    /// Send one whole Ethernet frame out of the interface.
    pub fn send(&self, frame: &[u8]) -> crate::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: all-zero is a valid sockaddr_ll; the fields set below make the address.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        // SAFETY: `frame` and `sll` are live for the lengths passed.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r != frame.len() as isize {
            let e = std::io::Error::last_os_error();
            return Err(crate::Error::os(
                "sendto(AF_PACKET)",
                e.raw_os_error().unwrap_or(0),
                "",
            ));
        }
        Ok(())
    }

    /// The next frame the interface saw, or `None` at the timeout.
    pub fn recv(&self) -> Option<Vec<u8>> {
        use std::os::fd::AsRawFd;
        let mut buf = vec![0u8; 65536];
        // SAFETY: `buf` is live and writable for its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = usize::try_from(n).ok()?;
        buf.truncate(n);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_pair_sets_gro_ipv6_and_neighbours_without_external_tools() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        for gro in [false, true] {
            let p = VethPair::with(VethOptions {
                gro,
                ipv6: false,
                queues: 2,
                ..Default::default()
            })
            .unwrap();
            let (got, v6) = p.in_b(|| {
                (
                    crate::sys::socket::gro(VethPair::IF_B).unwrap(),
                    std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6").unwrap(),
                )
            });
            assert_eq!(got, gro);
            assert_eq!(v6.trim(), "1");
            // Switching it back and forth through the ioctl is seen by the query.
            p.in_a(|| {
                crate::sys::socket::set_gro(VethPair::IF_A, true).unwrap();
                assert!(crate::sys::socket::gro(VethPair::IF_A).unwrap());
                crate::sys::socket::set_gro(VethPair::IF_A, false).unwrap();
                assert!(!crate::sys::socket::gro(VethPair::IF_A).unwrap());
                assert!(matches!(
                    crate::sys::socket::gro("kbx-none0"),
                    Err(crate::Error::NotFound(_))
                ));
            });
        }
        let one = VethPair::with(VethOptions {
            one_namespace: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(one.a, one.b);
        let both = one.in_a(|| {
            [VethPair::IF_A, VethPair::IF_B].map(|i| crate::sys::socket::if_mtu(i).is_ok())
        });
        assert_eq!(both, [true, true]);
    }
}
