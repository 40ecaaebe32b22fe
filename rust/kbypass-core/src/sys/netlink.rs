//! rtnetlink for XDP: attach/detach a program with `RTM_SETLINK` + `IFLA_XDP` (the fallback on
//! kernels without XDP bpf_links) and query which program an interface has with `RTM_GETLINK`.
//!
//! The socket asks for extended acks (`NETLINK_EXT_ACK`), so kernel messages such as "Native and
//! generic XDP can't be active at the same time" end up in the error.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::{errno, Error, Result};

pub mod neigh;

/// Attach only if the interface has no program (`XDP_FLAGS_UPDATE_IF_NOEXIST`).
pub const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1 << 0;
/// Generic (skb) mode.
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// Native (driver) mode.
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// Offloaded (hardware) mode.
pub const XDP_FLAGS_HW_MODE: u32 = 1 << 3;
/// Replace only the program given by `IFLA_XDP_EXPECTED_FD`.
pub const XDP_FLAGS_REPLACE: u32 = 1 << 4;

const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_PROG_ID: u16 = 4;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_HW_PROG_ID: u16 = 7;
const IFLA_XDP_EXPECTED_FD: u16 = 8;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));
const NETLINK_EXT_ACK: i32 = 11;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLM_F_CAPPED: u16 = 0x100;
const NLMSGERR_ATTR_MSG: u16 = 1;

/// How a program is attached (`IFLA_XDP_ATTACHED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// Native driver mode.
    Native,
    /// Generic (skb) mode.
    Generic,
    /// Offloaded to the NIC.
    Hardware,
}

impl XdpMode {
    /// "native" / "generic" / "hw".
    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
            XdpMode::Hardware => "hw",
        }
    }

    /// The `XDP_FLAGS_*` mode bit.
    pub fn flag(self) -> u32 {
        match self {
            XdpMode::Native => XDP_FLAGS_DRV_MODE,
            XdpMode::Generic => XDP_FLAGS_SKB_MODE,
            XdpMode::Hardware => XDP_FLAGS_HW_MODE,
        }
    }
}

/// One attached program as `RTM_GETLINK` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdpAttached {
    /// Program id.
    pub prog_id: u32,
    /// How it is attached.
    pub mode: XdpMode,
}

/// All XDP programs on an interface (a driver can have native and hw at once).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XdpQuery {
    /// Attached programs, native first.
    pub programs: Vec<XdpAttached>,
}

impl XdpQuery {
    /// The first attached program, if any.
    pub fn first(&self) -> Option<XdpAttached> {
        self.programs.first().copied()
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

pub(crate) fn put_attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(align4(buf.len()), 0);
}

/// Iterate over `(type, payload)` of the netlink attributes in `b`.
pub(crate) fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = &b[align4(len).min(b.len())..];
        Some((ty, payload))
    })
}

pub(crate) fn u32_of(p: &[u8]) -> Option<u32> {
    p.get(..4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

/// A netlink socket (rtnetlink unless opened with [`Rtnl::open_proto`]).
pub(crate) struct Rtnl {
    fd: OwnedFd,
    seq: u32,
}

impl Rtnl {
    pub(crate) fn open() -> Result<Self> {
        Self::open_proto(libc::NETLINK_ROUTE)
    }

    /// A netlink socket of protocol `proto` (`NETLINK_ROUTE`, `NETLINK_GENERIC`, ...).
    pub(crate) fn open_proto(proto: i32) -> Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let fd =
            unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        if fd < 0 {
            return Err(Error::last_os(
                format!("socket(AF_NETLINK, protocol {proto})"),
                "",
            ));
        }
        // SAFETY: fresh fd that we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: i32 = 1;
        // Extended acks are best effort (kernel ≥ 4.12); errors just lose the kernel's message.
        // SAFETY: valid pointer to an int of the size passed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_NETLINK,
                NETLINK_EXT_ACK,
                (&one as *const i32).cast(),
                4,
            )
        };
        // A reply that never comes must not hang the caller.
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: valid pointer to a timeval of the size passed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                core::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Ok(Rtnl { fd, seq: 1 })
    }

    /// Send one request (header filled here) and return the reply messages until the ack/done.
    pub(crate) fn request(
        &mut self,
        ty: u16,
        flags: u16,
        body: &[u8],
        what: &str,
    ) -> Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut msg = Vec::with_capacity(16 + body.len());
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&(flags | libc::NLM_F_REQUEST as u16).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: zeroed sockaddr_nl is valid; nl_family set below.
        let mut sa: libc::sockaddr_nl = unsafe { core::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: msg and sa are valid for the lengths passed.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                core::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            return Err(Error::last_os(format!("{what}: sendto(netlink)"), ""));
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            // SAFETY: buf is writable for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = errno();
                if e == libc::EINTR {
                    continue;
                }
                if e == libc::EAGAIN {
                    return Err(Error::Timeout(format!(
                        "{what}: no netlink reply within 5 s"
                    )));
                }
                return Err(Error::os(format!("{what}: recv(netlink)"), e, ""));
            }
            let mut b = &buf[..n as usize];
            while b.len() >= 16 {
                let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
                let mty = u16::from_ne_bytes([b[4], b[5]]);
                let mflags = u16::from_ne_bytes([b[6], b[7]]);
                let mseq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
                if len < 16 || len > b.len() {
                    break;
                }
                let payload = &b[16..len];
                b = &b[align4(len).min(b.len())..];
                if mseq != seq {
                    continue;
                }
                match mty as i32 {
                    libc::NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .map_or(0, |s| i32::from_ne_bytes([s[0], s[1], s[2], s[3]]));
                        if code == 0 {
                            return Ok(out);
                        }
                        return Err(netlink_error(what, -code, mflags, payload));
                    }
                    libc::NLMSG_DONE => return Ok(out),
                    _ => {
                        out.push(payload.to_vec());
                        if mflags & libc::NLM_F_MULTI as u16 == 0
                            && flags & libc::NLM_F_ACK as u16 == 0
                        {
                            return Ok(out);
                        }
                    }
                }
            }
        }
    }
}

fn netlink_error(what: &str, e: i32, flags: u16, payload: &[u8]) -> Error {
    // payload: int error; struct nlmsghdr of the request (+ its payload unless CAPPED); TLVs.
    let mut ext = String::new();
    if flags & NLM_F_ACK_TLVS != 0 && payload.len() >= 20 {
        let orig_len =
            u32::from_ne_bytes([payload[4], payload[5], payload[6], payload[7]]) as usize;
        let skip = 4 + if flags & NLM_F_CAPPED != 0 {
            16
        } else {
            align4(orig_len)
        };
        if let Some(tlvs) = payload.get(skip..) {
            for (ty, p) in attrs(tlvs) {
                if ty == NLMSGERR_ATTR_MSG {
                    ext = String::from_utf8_lossy(p)
                        .trim_end_matches('\0')
                        .to_string();
                }
            }
        }
    }
    let base = match e {
        libc::EBUSY => "the interface already has an XDP program (or a bpf_link owns it): detach it first, or use force",
        libc::EEXIST => "the interface already has an XDP program: detach it first, or use force",
        libc::EOPNOTSUPP => "the driver has no native XDP: use mode='generic' or 'auto'",
        libc::ERANGE => "the MTU is too large for XDP on this driver: lower it, or load the frags-capable program",
        libc::ENODEV => "no such interface",
        libc::EPERM | libc::EACCES => "needs CAP_NET_ADMIN and CAP_BPF: run as root",
        _ => "",
    };
    let fix = match (ext.is_empty(), base.is_empty()) {
        (true, _) => base.to_string(),
        (false, true) => format!("kernel says: {ext}"),
        (false, false) => format!("kernel says: {ext}; {base}"),
    };
    Error::os(what, e, fix)
}

fn ifinfomsg(ifindex: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[0] = libc::AF_UNSPEC as u8;
    m[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    m
}

/// Attach program `prog_fd` to `ifindex` (`-1` detaches) with `XDP_FLAGS_*`. With
/// `expected_fd`, the kernel replaces only if that program is the one attached
/// (`XDP_FLAGS_REPLACE` is added).
pub fn xdp_set(ifindex: u32, prog_fd: i32, flags: u32, expected_fd: Option<i32>) -> Result<()> {
    let mut nested = Vec::new();
    put_attr(&mut nested, IFLA_XDP_FD, &prog_fd.to_ne_bytes());
    let mut flags = flags;
    if let Some(fd) = expected_fd {
        flags |= XDP_FLAGS_REPLACE;
        put_attr(&mut nested, IFLA_XDP_EXPECTED_FD, &fd.to_ne_bytes());
    }
    if flags != 0 {
        put_attr(&mut nested, IFLA_XDP_FLAGS, &flags.to_ne_bytes());
    }
    let mut body = ifinfomsg(ifindex).to_vec();
    put_attr(&mut body, IFLA_XDP | NLA_F_NESTED, &nested);
    let what = if prog_fd < 0 {
        format!("netlink RTM_SETLINK detach XDP from ifindex {ifindex}")
    } else {
        format!("netlink RTM_SETLINK attach XDP to ifindex {ifindex}")
    };
    Rtnl::open()?.request(libc::RTM_SETLINK, libc::NLM_F_ACK as u16, &body, &what)?;
    Ok(())
}

/// The `RTM_GETLINK` replies for `ifindex` (in the calling thread's network namespace).
fn getlink(ifindex: u32) -> Result<Vec<Vec<u8>>> {
    let body = ifinfomsg(ifindex);
    let what = format!("netlink RTM_GETLINK ifindex {ifindex}");
    Rtnl::open()?
        .request(libc::RTM_GETLINK, 0, &body, &what)
        .map_err(|e| match e.errno() {
            Some(libc::ENODEV) => Error::NotFound(format!("no such interface index: {ifindex}")),
            _ => e,
        })
}

/// Which XDP programs `ifindex` has (`RTM_GETLINK`).
pub fn xdp_query(ifindex: u32) -> Result<XdpQuery> {
    let replies = getlink(ifindex)?;
    let mut q = XdpQuery::default();
    for msg in replies {
        let Some(rest) = msg.get(16..) else { continue };
        for (ty, p) in attrs(rest) {
            if ty != IFLA_XDP {
                continue;
            }
            let (mut attached, mut prog, mut drv, mut skb, mut hw) = (0u8, 0, 0, 0, 0);
            for (t, v) in attrs(p) {
                match t {
                    IFLA_XDP_ATTACHED => attached = v.first().copied().unwrap_or(0),
                    IFLA_XDP_PROG_ID => prog = u32_of(v).unwrap_or(0),
                    IFLA_XDP_DRV_PROG_ID => drv = u32_of(v).unwrap_or(0),
                    IFLA_XDP_SKB_PROG_ID => skb = u32_of(v).unwrap_or(0),
                    IFLA_XDP_HW_PROG_ID => hw = u32_of(v).unwrap_or(0),
                    _ => {}
                }
            }
            // XDP_ATTACHED_{NONE, DRV, SKB, HW, MULTI} = 0..4.
            match attached {
                1 => q.programs.push(XdpAttached {
                    prog_id: prog,
                    mode: XdpMode::Native,
                }),
                2 => q.programs.push(XdpAttached {
                    prog_id: prog,
                    mode: XdpMode::Generic,
                }),
                3 => q.programs.push(XdpAttached {
                    prog_id: prog,
                    mode: XdpMode::Hardware,
                }),
                4 => {
                    for (id, mode) in [
                        (drv, XdpMode::Native),
                        (skb, XdpMode::Generic),
                        (hw, XdpMode::Hardware),
                    ] {
                        if id != 0 {
                            q.programs.push(XdpAttached { prog_id: id, mode });
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(q)
}

const IFLA_MTU: u16 = 4;
const IFLA_NUM_TX_QUEUES: u16 = 31;
const IFLA_NUM_RX_QUEUES: u16 = 32;

/// MTU and queue counts of a link, read with `RTM_GETLINK` in the calling thread's network
/// namespace (unlike /sys, which shows the namespace it was mounted in).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkInfo {
    /// MTU in bytes.
    pub mtu: u32,
    /// RX queues.
    pub rx_queues: u32,
    /// TX queues.
    pub tx_queues: u32,
}

/// [`LinkInfo`] of `ifindex`.
pub fn link_info(ifindex: u32) -> Result<LinkInfo> {
    let replies = getlink(ifindex)?;
    let mut info = LinkInfo::default();
    for msg in replies {
        let Some(rest) = msg.get(16..) else { continue };
        for (ty, v) in attrs(rest) {
            match ty {
                IFLA_MTU => info.mtu = u32_of(v).unwrap_or(0),
                IFLA_NUM_RX_QUEUES => info.rx_queues = u32_of(v).unwrap_or(0),
                IFLA_NUM_TX_QUEUES => info.tx_queues = u32_of(v).unwrap_or(0),
                _ => {}
            }
        }
    }
    Ok(info)
}

/// Run `f` on a new thread inside a fresh, private network namespace (only a down loopback in
/// it); the namespace disappears when the thread ends. Used by probes that must not touch real
/// interfaces. Needs CAP_SYS_ADMIN.
pub fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    std::thread::Builder::new()
        .name("kbx-netns-probe".into())
        .spawn(move || {
            // SAFETY: unshare(CLONE_NEWNET) only changes this thread's network namespace; the
            // thread never returns to a pool, so nothing else runs in it afterwards.
            let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            if r != 0 {
                return Err(Error::last_os(
                    "unshare(CLONE_NEWNET)",
                    "needs CAP_SYS_ADMIN to create a throwaway network namespace: run as root",
                ));
            }
            Ok(f())
        })
        .map_err(|e| Error::State(format!("cannot spawn the probe thread: {e}")))?
        .join()
        .map_err(|_| Error::State("the probe thread panicked".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_info_of_loopback() {
        let i = link_info(1).unwrap();
        assert!(
            i.mtu >= 1500 && i.rx_queues >= 1 && i.tx_queues >= 1,
            "{i:?}"
        );
    }

    #[test]
    fn attrs_roundtrip() {
        let mut b = Vec::new();
        put_attr(&mut b, IFLA_XDP_FD, &7i32.to_ne_bytes());
        put_attr(&mut b, IFLA_XDP_ATTACHED, &[2u8]);
        put_attr(&mut b, IFLA_XDP_FLAGS | NLA_F_NESTED, &3u32.to_ne_bytes());
        let v: Vec<(u16, Vec<u8>)> = attrs(&b).map(|(t, p)| (t, p.to_vec())).collect();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0], (IFLA_XDP_FD, 7i32.to_ne_bytes().to_vec()));
        assert_eq!(v[1], (IFLA_XDP_ATTACHED, vec![2u8]));
        assert_eq!(v[2].0, IFLA_XDP_FLAGS);
        // Truncated input never panics.
        assert_eq!(attrs(&b[..10]).count(), 1);
        assert_eq!(attrs(&b[..6]).count(), 0);
        assert_eq!(attrs(&[0xff, 0xff, 1, 0]).count(), 0);
    }

    #[test]
    fn query_loopback_without_program() {
        // Querying works unprivileged; a missing interface is NotFound.
        xdp_query(1).unwrap();
        assert!(matches!(xdp_query(0x7fff_fff0), Err(Error::NotFound(_))));
    }
}
