//! TX metadata end to end on a veth pair in copy mode (root): a checksum request completed by
//! the kernel in software (`XDP_UMEM_TX_SW_CSUM`) arrives right on the wire; one left to the
//! driver (veth: `CHECKSUM_PARTIAL` crosses the pair) is accepted by the receiving kernel and
//! completes to the right checksum; a timestamp request gets a CLOCK_TAI time at completion.

use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::tests::copy_config;
use super::*;
use crate::packet::checksum::{fold, sum16};
use crate::packet::template::{Checksum, Fill, Spec, Template};
use crate::packet::{edit, parse};
use crate::sys::netns::NetnsGuard;
use crate::sys::testutil::{is_root, VethOptions, VethPair};
use crate::sys::xdp::{if_nametoindex, XdpDesc};
use crate::traffic::kernel::{udp_recv, StopWhen};

/// An AF_PACKET socket on `ifname` (in the current namespace) with a 100 ms receive timeout.
fn sniffer(ifname: &str) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the result is checked before it is owned.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
    assert!(fd >= 0, "AF_PACKET socket");
    // SAFETY: `fd` is a new socket nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_ll; the fields set below make the bind address.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = if_nametoindex(ifname).unwrap() as i32;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: valid fd, pointers to live values of the sizes passed.
    unsafe {
        assert_eq!(
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            ),
            0
        );
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    fd
}

/// Frames to UDP port `dport` the sniffer saw, until `n` or two seconds.
fn sniffed(fd: &OwnedFd, dport: u16, n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while out.len() < n && std::time::Instant::now() < deadline {
        // SAFETY: `buf` is live and writable for its length.
        let k = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if k <= 0 {
            continue;
        }
        let f = buf[..k as usize].to_vec();
        if parse(&f).dst_port == dport {
            out.push(f);
        }
    }
    out
}

fn tai_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_TAI, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Send `n` UDP frames from a (veth0) to b's `dport` through a port whose UMEM has `mode`,
/// each asking for checksum completion and a timestamp; returns what b's kernel socket got
/// (packets), what b's sniffer saw, the timestamps, the TAI window and the socket's counters.
#[allow(clippy::type_complexity)]
fn send(
    mode: TxMetadataMode,
    dport: u16,
    n: usize,
) -> (
    u64,
    Vec<Vec<u8>>,
    Vec<(u64, u64)>,
    (u64, u64),
    XskCounters,
    TxMetadataMode,
) {
    let pair = VethPair::with(VethOptions::default()).unwrap();
    let (b, dst) = (pair.b.clone(), pair.ip(2));
    let rx = std::thread::spawn(move || {
        udp_recv(
            Some(&b),
            SocketAddrV4::new(dst, dport),
            16,
            StopWhen {
                count: Some(n as u64),
                duration: Some(Duration::from_secs(3)),
                ..Default::default()
            },
        )
        .unwrap()
    });
    let sniff = {
        let _ns = NetnsGuard::enter(&pair.b).unwrap();
        sniffer("veth1")
    };
    std::thread::sleep(Duration::from_millis(200));
    let _ns = NetnsGuard::enter(&pair.a).unwrap();
    let mut cfg = copy_config(256, None);
    cfg.umem.tx_metadata = mode;
    let mut port = XskPort::open("veth0", &Queues::All, &cfg).unwrap();
    let got_mode = port.socket(0).unwrap().umem().tx_metadata();
    let tpl = Template::build(&Spec {
        dst_mac: pair.mac(2),
        src_mac: pair.mac(1),
        src_ip: pair.ip(1).into(),
        dst_ip: pair.ip(2).into(),
        dst_port: dport,
        payload: b"tx metadata, odd length".to_vec(),
        ..Spec::default()
    })
    .unwrap();
    let s = port.socket_mut(0).unwrap();
    let t0 = tai_ns();
    let mut addrs = vec![0u64; n];
    assert_eq!(s.alloc(&mut addrs), n);
    let fill = Fill::new(1);
    let mut descs = Vec::new();
    for &a in &addrs {
        let len = fill.frame_len(&tpl, 0) as u32;
        // SAFETY: the frame was just allocated (App) and nothing else reaches it.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(s.app_ptr(a, len).unwrap(), len as usize) };
        let w = fill.write(&tpl, 0, bytes, Checksum::Offload).unwrap();
        let mut d = XdpDesc {
            addr: a,
            len,
            options: 0,
        };
        let req = TxRequest {
            csum: Some((w.csum_start, w.csum_offset)),
            timestamp: true,
            launch_time: None,
        };
        assert_eq!(
            s.request_tx_metadata(&mut d, req),
            mode != TxMetadataMode::Off
        );
        descs.push(d);
    }
    assert_eq!(s.send(&descs), n);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut done = 0;
    while done < n && std::time::Instant::now() < deadline {
        done += s.complete();
        std::thread::sleep(Duration::from_millis(5));
    }
    let t1 = tai_ns();
    assert_eq!(done, n, "every frame completed");
    let times = s.take_tx_timestamps();
    let counters = s.counters();
    let got = rx.join().unwrap();
    (
        got.packets,
        sniffed(&sniff, dport, n),
        times,
        (t0, t1),
        counters,
        got_mode,
    )
}

/// `f` with its UDP checksum completed as a device does from `CHECKSUM_PARTIAL`.
fn completed(mut f: Vec<u8>) -> Vec<u8> {
    let m = parse(&f);
    let (l4, end) = (m.l4_off as usize, (m.payload_off + m.payload_len) as usize);
    let c = match fold(sum16(&f[l4..end], 0)) {
        0 => 0xffff,
        c => c,
    };
    f[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
    f
}

#[test]
fn kernel_software_checksum_arrives_complete_with_timestamps() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let n = 8;
    let (got, seen, times, (t0, t1), c, mode) = send(TxMetadataMode::KernelSoftware, 9301, n);
    assert_eq!(
        mode,
        TxMetadataMode::KernelSoftware,
        "this kernel (6.18) has TX metadata"
    );
    assert_eq!(got, n as u64, "b's kernel accepted every datagram");
    assert_eq!(seen.len(), n);
    for f in &seen {
        assert!(
            edit::checksums_ok(f, &parse(f)),
            "the kernel completed the checksum"
        );
    }
    assert_eq!(
        (c.tx_metadata, c.tx_timestamps, c.tx_timestamps_missing),
        (n as u64, n as u64, 0)
    );
    assert_eq!(times.len(), n);
    assert!(
        times.iter().all(|&(_, ns)| t0 <= ns && ns <= t1),
        "{times:?} not in [{t0}, {t1}]"
    );
}

#[test]
fn offloaded_checksum_is_accepted_and_completes_right() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let n = 8;
    let (got, seen, times, _, c, mode) = send(TxMetadataMode::Offload, 9302, n);
    assert_eq!(mode, TxMetadataMode::Offload);
    assert_eq!(got, n as u64, "b's kernel accepted every datagram");
    assert_eq!(seen.len(), n);
    for f in &seen {
        // veth hands CHECKSUM_PARTIAL over as it is: the field holds the pseudo-header sum,
        // which the sum a device adds makes right.
        assert!(edit::checksums_ok(&completed(f.clone()), &parse(f)));
    }
    assert_eq!((c.tx_metadata, c.tx_timestamps), (n as u64, n as u64));
    assert_eq!(times.len(), n);
}

#[test]
fn without_tx_metadata_nothing_is_requested() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (_, _, times, _, c, mode) = send(TxMetadataMode::Off, 9303, 2);
    assert_eq!(mode, TxMetadataMode::Off);
    assert_eq!((c.tx_metadata, c.tx_timestamps, times.len()), (0, 0, 0));
}

/// On a UMEM with TX metadata the kernel wants `tx_metadata_len` bytes in front of every packet
/// sent and skips, never completing, one that starts closer to its frame's start: such a
/// descriptor is refused by `send` (counted, the frame stays the application's), the room to
/// push headers leaves those bytes out, and a push into them is refused.
#[test]
fn a_packet_starting_inside_the_metadata_room_is_refused_not_lost() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let pair = VethPair::with(VethOptions::default()).unwrap();
    let _ns = NetnsGuard::enter(&pair.a).unwrap();
    let mut cfg = copy_config(256, None);
    cfg.umem.tx_metadata = TxMetadataMode::KernelSoftware;
    let mut port = XskPort::open("veth0", &Queues::All, &cfg).unwrap();
    let s = port.socket_mut(0).unwrap();
    let meta = s.umem().tx_metadata_len();
    assert!(meta > 0, "this kernel registers TX metadata");
    let mut a = [0u64; 2];
    assert_eq!(s.alloc(&mut a), 2);
    let fs = u64::from(s.umem().frame_size());
    let frame_start = move |x: u64| x & !(fs - 1);
    let bad = XdpDesc {
        addr: frame_start(a[0]) + u64::from(meta) - 1,
        len: 60,
        options: 0,
    };
    let good = XdpDesc {
        addr: a[1],
        len: 60,
        options: 0,
    };
    assert!(!s.umem().tx_front_ok(bad.addr) && s.umem().tx_front_ok(good.addr));
    let before = s.counters().invalid_descs;
    // The refused descriptor ends the send: what was queued is a prefix (none here).
    assert_eq!(s.send(&[bad, good]), 0);
    assert_eq!(s.counters().invalid_descs, before + 1);
    assert_eq!(
        s.umem().state(s.umem().frame_of(bad.addr).unwrap()),
        FrameState::App
    );
    let at = XdpDesc {
        addr: frame_start(a[0]) + u64::from(meta),
        ..bad
    };
    assert_eq!(
        s.umem().room(&at).unwrap().0,
        0,
        "no room in front but the metadata's"
    );
    assert!(s.umem().adjusted_head(0, &at, -1).is_err());
    assert_eq!(
        s.send(&[at, good]),
        2,
        "a packet right after the metadata room goes"
    );
}
