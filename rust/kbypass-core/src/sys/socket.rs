//! Kernel socket paths used as baselines: batched UDP (`sendmmsg`/`recvmmsg`) and
//! `AF_PACKET` with a `TPACKET_V3` receive ring.

use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{errno, Error, Result};
use crate::sys::mm::Mapping;

/// `SO_BUSY_POLL` (asm-generic/socket.h): microseconds to busy-poll in blocking calls.
pub const SO_BUSY_POLL: i32 = 46;
/// `SO_PREFER_BUSY_POLL`: prefer busy polling over softirq processing.
pub const SO_PREFER_BUSY_POLL: i32 = 69;
/// `SO_BUSY_POLL_BUDGET`: packets per busy-poll round.
pub const SO_BUSY_POLL_BUDGET: i32 = 70;

/// Most messages one `sendmmsg`/`recvmmsg` call moves here.
pub const MAX_BATCH: usize = 1024;

fn set_int_opt(fd: RawFd, level: i32, opt: i32, v: i32, what: &str) -> Result<()> {
    // SAFETY: passes a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    if rc != 0 {
        return Err(Error::last_os(format!("setsockopt({what})"), ""));
    }
    Ok(())
}

/// Make a UDP socket's receive buffer as large as the kernel allows (root may exceed rmem_max).
pub fn grow_rcvbuf(sock: &UdpSocket, bytes: i32) {
    let fd = sock.as_raw_fd();
    if set_int_opt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        bytes,
        "SO_RCVBUFFORCE",
    )
    .is_err()
    {
        let _ = set_int_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, bytes, "SO_RCVBUF");
    }
}

/// Send `count` copies of `payload` on a connected UDP socket, `batch` per `sendmmsg`.
/// Returns how many datagrams the kernel accepted (ENOBUFS/EAGAIN count as not sent).
pub fn sendmmsg_repeat(
    sock: &UdpSocket,
    payload: &[u8],
    count: usize,
    batch: usize,
) -> Result<usize> {
    let batch = batch.clamp(1, MAX_BATCH);
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut _,
        iov_len: payload.len(),
    };
    let mut msgs: Vec<libc::mmsghdr> = (0..batch)
        .map(|_| {
            // SAFETY: mmsghdr is plain old data; all-zero is a valid "no name, no control" value.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = &mut iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let mut sent = 0usize;
    while sent < count {
        let n = (count - sent).min(batch);
        // SAFETY: msgs holds n initialised headers whose iovec points at `payload`, alive for the
        // call; the socket is connected, so no destination address is needed.
        let r = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
        if r < 0 {
            match errno() {
                libc::ENOBUFS | libc::EAGAIN | libc::EINTR => continue,
                libc::ECONNREFUSED => continue, // an ICMP from a missing listener; keep sending
                e => return Err(Error::os("sendmmsg", e, "")),
            }
        }
        sent += r as usize;
    }
    Ok(sent)
}

/// Receive into `bufs` (one datagram per buffer) with one `recvmmsg`; returns the count, 0 on
/// timeout (the socket's SO_RCVTIMEO) or EINTR. Lengths go to `lens`.
pub fn recvmmsg_into(sock: &UdpSocket, bufs: &mut [Vec<u8>], lens: &mut [u32]) -> Result<usize> {
    let n = bufs.len().min(lens.len()).min(MAX_BATCH);
    let mut iovs: Vec<libc::iovec> = bufs[..n]
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: plain old data, zero is valid.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: msgs/iovs point at `n` live buffers owned by the caller for the whole call.
    let r = unsafe {
        libc::recvmmsg(
            sock.as_raw_fd(),
            msgs.as_mut_ptr(),
            n as u32,
            libc::MSG_WAITFORONE,
            std::ptr::null_mut(),
        )
    };
    if r < 0 {
        return match errno() {
            libc::EAGAIN | libc::EINTR => Ok(0),
            e => Err(Error::os("recvmmsg", e, "")),
        };
    }
    for (l, m) in lens.iter_mut().zip(&msgs[..r as usize]) {
        *l = m.msg_len;
    }
    Ok(r as usize)
}

/// A bound UDP socket with a receive timeout, for the recvmmsg baseline.
pub fn udp_bind(addr: SocketAddrV4, timeout_ms: u64) -> Result<UdpSocket> {
    let s = UdpSocket::bind(addr).map_err(|e| {
        Error::os(
            format!("bind UDP {addr}"),
            e.raw_os_error().unwrap_or(0),
            "is the address on an interface of this namespace?",
        )
    })?;
    s.set_read_timeout(Some(std::time::Duration::from_millis(timeout_ms.max(1))))
        .map_err(|e| Error::os("SO_RCVTIMEO", e.raw_os_error().unwrap_or(0), ""))?;
    Ok(s)
}

/// An `ifreq` naming `ifname`, or `InvalidArgument` for a name the kernel would not accept.
fn ifreq_for(ifname: &str) -> Result<libc::ifreq> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ || ifname.contains('\0') {
        return Err(Error::invalid(format!(
            "interface name {ifname:?} is invalid: it must be 1..15 bytes without NUL"
        )));
    }
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

/// A throwaway socket for interface ioctls: it lives in the calling thread's network namespace
/// (`/sys/class/net` would show the namespace sysfs was mounted in instead).
fn ioctl_socket() -> Result<UdpSocket> {
    UdpSocket::bind("0.0.0.0:0")
        .map_err(|e| Error::os("socket(AF_INET)", e.raw_os_error().unwrap_or(0), ""))
}

fn ifreq_error(what: &str, ifname: &str, e: i32) -> Error {
    if e == libc::ENODEV {
        return Error::NotFound(format!(
            "no such interface: {ifname:?} (list them with `ip link`; inside a network namespace run in it)"
        ));
    }
    Error::os(format!("ioctl({what} {ifname})"), e, "")
}

/// The MTU of interface `ifname` in the calling thread's network namespace (`SIOCGIFMTU`).
pub fn if_mtu(ifname: &str) -> Result<u32> {
    let mut req = ifreq_for(ifname)?;
    let sock = ioctl_socket()?;
    // SAFETY: req is a live ifreq with a NUL-terminated name; SIOCGIFMTU writes ifru_mtu only.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) };
    if rc != 0 {
        return Err(ifreq_error("SIOCGIFMTU", ifname, errno()));
    }
    // SAFETY: the kernel filled the ifru_mtu member of the union.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    Ok(mtu.max(0) as u32)
}

const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

/// `struct ethtool_value` of `<linux/ethtool.h>`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// One `SIOCETHTOOL` command carrying a `struct ethtool_value`; returns its `data`.
fn ethtool_value(ifname: &str, cmd: u32, data: u32) -> Result<u32> {
    let mut req = ifreq_for(ifname)?;
    let mut value = EthtoolValue { cmd, data };
    req.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    let sock = ioctl_socket()?;
    // SAFETY: req names the interface and points ifru_data at `value`, a live ethtool_value that
    // outlives the call; the kernel reads and writes only that struct for GGRO/SGRO.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    if rc != 0 {
        let e = errno();
        let what = format!("SIOCETHTOOL {cmd:#x}");
        return Err(if e == libc::EPERM {
            Error::os(
                format!("{what} on {ifname}"),
                e,
                "needs CAP_NET_ADMIN: run as root",
            )
        } else {
            ifreq_error(&what, ifname, e)
        });
    }
    Ok(value.data)
}

/// Whether generic receive offload is on for `ifname` (as `ethtool -k IF | grep gro`), in the
/// calling thread's network namespace.
pub fn gro(ifname: &str) -> Result<bool> {
    Ok(ethtool_value(ifname, ETHTOOL_GGRO, 0)? != 0)
}

/// Turn generic receive offload on or off for `ifname` (as `ethtool -K IF gro on|off`), in the
/// calling thread's network namespace. On veth, GRO on is what lets frames sent by XDP reach a
/// receiver without an XDP program of its own.
pub fn set_gro(ifname: &str, on: bool) -> Result<()> {
    ethtool_value(ifname, ETHTOOL_SGRO, u32::from(on)).map(|_| ())
}

// ---- AF_PACKET TPACKET_V3 --------------------------------------------------------------------

const TPACKET_V3: i32 = 2;
const PACKET_VERSION: i32 = 10;
const PACKET_RX_RING: i32 = 5;
const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;
const ETH_P_ALL: u16 = 0x0003;

#[repr(C)]
struct TpacketReq3 {
    tp_block_size: u32,
    tp_block_nr: u32,
    tp_frame_size: u32,
    tp_frame_nr: u32,
    tp_retire_blk_tov: u32,
    tp_sizeof_priv: u32,
    tp_feature_req_word: u32,
}

// struct tpacket_block_desc { u32 version; u32 offset_to_priv; struct tpacket_hdr_v1 hdr; }
// tpacket_hdr_v1 { u32 block_status; u32 num_pkts; u32 offset_to_first_pkt; ... }
const BLOCK_STATUS_OFF: usize = 8;
const BLOCK_NUM_PKTS_OFF: usize = 12;

/// An `AF_PACKET` socket bound to one interface with a memory-mapped `TPACKET_V3` RX ring.
#[derive(Debug)]
pub struct PacketV3Socket {
    fd: OwnedFd,
    ring: Mapping,
    block_size: usize,
    blocks: usize,
    next: usize,
}

impl PacketV3Socket {
    /// Open, set up the ring (`blocks` × `block_size`), and bind to `ifindex` (all ethertypes).
    pub fn open(ifindex: u32, block_size: usize, blocks: usize) -> Result<Self> {
        if !block_size.is_power_of_two() || block_size < 4096 || blocks == 0 {
            return Err(Error::invalid(
                "TPACKET_V3 blocks must be a power of two ≥ 4096 bytes, at least one",
            ));
        }
        // SAFETY: plain socket(2) call; the fd is checked and owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                ETH_P_ALL.to_be() as i32,
            )
        };
        if raw < 0 {
            return Err(Error::last_os(
                "socket(AF_PACKET)",
                "needs CAP_NET_RAW: run as root",
            ));
        }
        // SAFETY: raw is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        set_int_opt(
            raw,
            libc::SOL_PACKET,
            PACKET_VERSION,
            TPACKET_V3,
            "PACKET_VERSION",
        )?;
        let req = TpacketReq3 {
            tp_block_size: block_size as u32,
            tp_block_nr: blocks as u32,
            tp_frame_size: 2048,
            tp_frame_nr: (block_size / 2048 * blocks) as u32,
            tp_retire_blk_tov: 10,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        // SAFETY: req is a live, initialised tpacket_req3 of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_PACKET,
                PACKET_RX_RING,
                (&req as *const TpacketReq3).cast(),
                std::mem::size_of::<TpacketReq3>() as u32,
            )
        };
        if rc != 0 {
            return Err(Error::last_os("setsockopt(PACKET_RX_RING)", ""));
        }
        let ring = Mapping::shared(fd.as_fd(), block_size * blocks, libc::MAP_POPULATE)?;
        // SAFETY: sockaddr_ll is plain old data; zero then fill the fields bind needs.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: sll is a live sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                raw,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(Error::last_os(
                format!("bind(AF_PACKET ifindex {ifindex})"),
                "",
            ));
        }
        Ok(PacketV3Socket {
            fd,
            ring,
            block_size,
            blocks,
            next: 0,
        })
    }

    fn status(&self, block: usize) -> &AtomicU32 {
        // SAFETY: the offset is inside block `block` of the mapping, 4-byte aligned; the kernel
        // and we access the status word only atomically.
        unsafe {
            &*self
                .ring
                .as_ptr()
                .add(block * self.block_size + BLOCK_STATUS_OFF)
                .cast::<AtomicU32>()
        }
    }

    /// Count the packets of every block the kernel has retired, give the blocks back, and
    /// return the count; waits up to `timeout_ms` in poll(2) when nothing is ready.
    pub fn drain(&mut self, timeout_ms: i32) -> Result<u64> {
        let mut total = 0u64;
        for _ in 0..self.blocks {
            let b = self.next;
            if self.status(b).load(Ordering::Acquire) & TP_STATUS_USER == 0 {
                break;
            }
            // SAFETY: within block b; the kernel handed the block to us (TP_STATUS_USER).
            let n = unsafe {
                self.ring
                    .as_ptr()
                    .add(b * self.block_size + BLOCK_NUM_PKTS_OFF)
                    .cast::<u32>()
                    .read()
            };
            total += n as u64;
            self.status(b).store(TP_STATUS_KERNEL, Ordering::Release);
            self.next = (b + 1) % self.blocks;
        }
        if total == 0 && timeout_ms != 0 {
            let mut p = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN | libc::POLLERR,
                revents: 0,
            };
            // SAFETY: one live pollfd.
            unsafe { libc::poll(&mut p, 1, timeout_ms) };
        }
        Ok(total)
    }

    /// Kernel drop counters (`PACKET_STATISTICS`: packets, drops), reset on read.
    pub fn statistics(&self) -> Result<(u32, u32)> {
        let mut st = [0u32; 3];
        let mut len = std::mem::size_of_val(&st) as libc::socklen_t;
        // SAFETY: st is large enough for tpacket_stats_v3 and len says so.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                st.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(Error::last_os("getsockopt(PACKET_STATISTICS)", ""));
        }
        Ok((st[0], st[1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn sendmmsg_and_recvmmsg_over_loopback() {
        let rx = udp_bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 200).unwrap();
        let port = rx.local_addr().unwrap().port();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(("127.0.0.1", port)).unwrap();
        assert_eq!(sendmmsg_repeat(&tx, b"hello", 100, 32).unwrap(), 100);
        let mut bufs = vec![vec![0u8; 64]; 64];
        let mut lens = vec![0u32; 64];
        let mut got = 0;
        for _ in 0..100 {
            let n = recvmmsg_into(&rx, &mut bufs, &mut lens).unwrap();
            for i in 0..n {
                assert_eq!(&bufs[i][..lens[i] as usize], b"hello");
            }
            got += n;
            if got == 100 || n == 0 {
                break;
            }
        }
        assert_eq!(got, 100);
    }

    #[test]
    fn loopback_mtu_and_missing_interface() {
        assert!(if_mtu("lo").unwrap() >= 1500);
        assert!(matches!(if_mtu("kbxnope0"), Err(Error::NotFound(_))));
        assert!(if_mtu("").is_err());
    }

    #[test]
    fn tpacket_v3_geometry_is_checked() {
        assert!(PacketV3Socket::open(1, 1000, 4).is_err());
        assert!(PacketV3Socket::open(1, 1 << 16, 0).is_err());
    }
}
