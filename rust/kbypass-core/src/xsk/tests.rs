//! End-to-end tests of UMEM, sockets and ports on a veth pair between two namespaces (root).

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use super::*;
use crate::sys::netns::NetnsGuard;
use crate::sys::testutil::{VethOptions, VethPair};
use crate::sys::xdp::{if_nametoindex, XdpDesc};
use crate::traffic::kernel::{udp_recv, udp_send, StopWhen};

/// The shared veth bench with `queues` queues (veth0 198.18.net.1 in `a`, veth1 .2 in `b`).
fn pair(queues: u32) -> VethPair {
    VethPair::with(VethOptions {
        queues,
        ..Default::default()
    })
    .expect("create veth pair")
}

fn root() -> bool {
    crate::sys::testutil::is_root()
}

/// A copy-mode port configuration of `frames` frames taking the frames `filter` matches (every
/// frame with None); the engine's tests use it too.
pub(crate) fn copy_config(frames: u32, filter: Option<&str>) -> PortConfig {
    PortConfig {
        program: PortProgram::Own(
            filter.map_or_else(Vec::new, |f| crate::xdp::parse_filter(f).unwrap()),
        ),
        umem: UmemConfig {
            frames,
            ..Default::default()
        },
        socket: SocketConfig {
            mode: BindMode::Copy,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn recv_until(sock: &mut XskSocket, n: usize, timeout: Duration) -> Vec<XdpDesc> {
    let mut got = Vec::new();
    let mut buf = vec![XdpDesc::default(); 64];
    let deadline = Instant::now() + timeout;
    while got.len() < n && Instant::now() < deadline {
        let k = sock.recv(&mut buf);
        got.extend_from_slice(&buf[..k]);
        if k == 0 {
            let _ = sock.wait_rx(Duration::from_millis(10));
        }
    }
    got
}

#[test]
fn port_receives_exactly_what_the_peer_sends_and_accounts_every_frame() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let pair = pair(1);
    let _ns = NetnsGuard::enter(&pair.b).unwrap();
    let cfg = copy_config(1024, Some("udp dst port 9000"));
    let mut port = XskPort::open("veth1", &Queues::All, &cfg).unwrap();
    assert_eq!(port.queues(), &[0]);
    let (a, src, dst) = (pair.a.clone(), pair.ip(1), pair.ip(2));
    let sent = std::thread::spawn(move || {
        udp_send(
            Some(&a),
            src,
            SocketAddrV4::new(dst, 9000),
            &[0x5a; 32],
            500,
            50,
        )
        .unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(sent.packets, 500);
    let sock = port.socket_mut(0).unwrap();
    let got = recv_until(sock, 500, Duration::from_secs(5));
    assert_eq!(got.len(), 500);
    // every frame is a 74-byte UDP frame to port 9000 with our payload
    for d in &got {
        assert_eq!(d.len, 14 + 20 + 8 + 32);
        let p = sock.app_ptr(d.addr, d.len).unwrap();
        // SAFETY: app_ptr checked the range lies in a frame the application holds.
        let f = unsafe { std::slice::from_raw_parts(p, d.len as usize) };
        let m = crate::packet::parse(f);
        assert_eq!((m.dst_port, m.payload_len), (9000, 32));
        assert!(f[42..].iter().all(|&b| b == 0x5a));
    }
    let acc = sock.check_accounting().unwrap();
    assert_eq!(acc.app, 500);
    // Nothing more arrives; release everything, the accounting balances with 0 in the app.
    let addrs: Vec<u64> = got.iter().map(|d| d.addr).collect();
    assert_eq!(sock.release(&addrs), 500);
    // A double release is refused and counted, not corrupting.
    assert_eq!(sock.release(&addrs[..3]), 0);
    assert_eq!(sock.counters().invalid_descs, 3);
    let acc = sock.check_accounting().unwrap();
    assert_eq!((acc.app, acc.total), (0, 1024));
    assert_eq!(sock.counters().rx_packets, 500);
}

#[test]
fn filter_leaves_other_traffic_to_the_kernel() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let pair = pair(1);
    let _ns = NetnsGuard::enter(&pair.b).unwrap();
    let cfg = copy_config(512, Some("udp dst port 9000"));
    let mut port = XskPort::open("veth1", &Queues::List(vec![0]), &cfg).unwrap();
    let (b, dst) = (pair.b.clone(), pair.ip(2));
    let rx = std::thread::spawn(move || {
        udp_recv(
            Some(&b),
            SocketAddrV4::new(dst, 9001),
            16,
            StopWhen {
                count: Some(100),
                duration: Some(Duration::from_secs(5)),
                ..Default::default()
            },
        )
        .unwrap()
    });
    std::thread::sleep(Duration::from_millis(200));
    let (a, src) = (pair.a.clone(), pair.ip(1));
    std::thread::spawn(move || {
        udp_send(
            Some(&a),
            src,
            SocketAddrV4::new(dst, 9001),
            b"kernel",
            100,
            10,
        )
        .unwrap();
        udp_send(
            Some(&a),
            src,
            SocketAddrV4::new(dst, 9000),
            b"bypass",
            100,
            10,
        )
        .unwrap();
    })
    .join()
    .unwrap();
    let kernel = rx.join().unwrap();
    assert_eq!(kernel.packets, 100, "port 9001 stays with the kernel");
    let got = recv_until(port.socket_mut(0).unwrap(), 100, Duration::from_secs(5));
    assert_eq!(got.len(), 100, "port 9000 reaches the socket");
}

/// A kernel UDP receiver in namespace b expecting `count` datagrams to `udp_port` (its thread:
/// join it for what arrived), this thread moved into namespace a with a port of `frames` frames
/// on veth0, and a `size`-byte UDP frame from a to b's `udp_port`.
fn tx_bench(
    pair: &VethPair,
    udp_port: u16,
    count: u64,
    frames: u32,
    size: usize,
) -> (
    std::thread::JoinHandle<crate::traffic::Throughput>,
    NetnsGuard,
    XskPort,
    Vec<u8>,
) {
    let (b, dst) = (pair.b.clone(), pair.ip(2));
    let rx = std::thread::spawn(move || {
        udp_recv(
            Some(&b),
            SocketAddrV4::new(dst, udp_port),
            16,
            StopWhen {
                count: Some(count),
                duration: Some(Duration::from_secs(5)),
                ..Default::default()
            },
        )
        .unwrap()
    });
    std::thread::sleep(Duration::from_millis(200));
    let ns = NetnsGuard::enter(&pair.a).unwrap();
    let cfg = copy_config(frames, None);
    let port = XskPort::open("veth0", &Queues::All, &cfg).unwrap();
    let t = crate::traffic::UdpTemplate {
        dst_mac: pair.mac(2),
        src_mac: pair.mac(1),
        src_ip: pair.ip(1),
        dst_ip: pair.ip(2),
        dst_port: udp_port,
        size,
        ..Default::default()
    };
    (rx, ns, port, t.build().unwrap())
}

#[test]
fn tx_reaches_the_peer_kernel_socket_and_completions_return_frames() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let pair = pair(1);
    let (rx, _ns, mut port, frame) = tx_bench(&pair, 9100, 300, 256, 100);
    let r =
        crate::traffic::xsk::tx_flood(port.socket_mut(0).unwrap(), &frame, 300, 32, false, None)
            .unwrap();
    assert_eq!(r.packets, 300);
    let got = rx.join().unwrap();
    assert_eq!(
        got.packets, 300,
        "every frame arrived with valid checksums (the kernel checked)"
    );
    assert_eq!(got.bytes, 300 * (100 - 42));
    let s = port.socket(0).unwrap();
    assert_eq!(s.counters().tx_packets, 300);
    let acc = s.check_accounting().unwrap();
    assert_eq!((acc.tx_side, acc.app), (0, 0), "{acc:?}");
}

#[test]
fn tx_flood_fresh_copies_every_frame_and_refuses_what_no_frame_holds() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let pair = pair(1);
    let (rx, _ns, mut port, frame) = tx_bench(&pair, 9102, 300, 256, 100);
    let sock = port.socket_mut(0).unwrap();
    let r = crate::traffic::xsk::tx_flood(sock, &frame, 300, 32, true, None).unwrap();
    assert_eq!((r.packets, r.bytes), (300, 300 * 100));
    let got = rx.join().unwrap();
    assert_eq!(got.packets, 300, "every copy arrived, checksums valid");
    assert_eq!(got.bytes, 300 * (100 - 42));
    // A frame longer than a UMEM frame needs a multi-buffer socket, fresh or not.
    let big = vec![0u8; sock.umem().tx_capacity() as usize + 1];
    for fresh in [false, true] {
        let e = crate::traffic::xsk::tx_flood(sock, &big, 10, 32, fresh, None).unwrap_err();
        assert!(e.to_string().contains("multi_buffer"), "{e}");
    }
    assert_eq!(sock.counters().tx_packets, 300);
    let acc = sock.check_accounting().unwrap();
    assert_eq!((acc.tx_side, acc.app), (0, 0), "{acc:?}");
}

#[test]
fn shared_umem_port_over_two_queues() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let pair = pair(2);
    let _ns = NetnsGuard::enter(&pair.b).unwrap();
    let cfg = PortConfig {
        umem: UmemConfig {
            frames: 2048,
            ..Default::default()
        },
        socket: SocketConfig {
            mode: BindMode::Copy,
            fill_size: 512,
            rx_size: 512,
            ..Default::default()
        },
        ..Default::default()
    };
    let port = XskPort::open("veth1", &Queues::All, &cfg).unwrap();
    assert_eq!(port.queues(), &[0, 1]);
    assert_eq!(port.len(), 2);
    let acc = port.socket(1).unwrap().check_accounting().unwrap();
    // both fill rings were stocked from the one UMEM
    assert_eq!(acc.rx_side, 1024);
    assert!(Queues::List(vec![0, 0]) != Queues::All);
    assert!(XskPort::open("veth1", &Queues::List(vec![2]), &cfg).is_err());
}

#[test]
fn bad_configuration_is_refused_with_a_fix() {
    let e = Umem::new(&UmemConfig {
        frame_size: 3000,
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("2048 or 4096"), "{e}");
    let e = Umem::new(&UmemConfig {
        frames: 10,
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("frames=10"), "{e}");
    let e = XskPort::open("kbx-no-such-if", &Queues::All, &PortConfig::default()).unwrap_err();
    assert!(matches!(e, crate::Error::NotFound(_)), "{e}");
}

/// A port on `veth1` (namespace `b`) taking UDP to port 9000, copy mode, `frames` frames.
fn udp_port(frames: u32) -> XskPort {
    let cfg = copy_config(frames, Some("udp dst port 9000"));
    XskPort::open("veth1", &Queues::All, &cfg).unwrap()
}

fn send_from_a(pair: &VethPair, payload: &[u8], count: u64) {
    let (a, src, dst, payload) = (pair.a.clone(), pair.ip(1), pair.ip(2), payload.to_vec());
    let sent = std::thread::spawn(move || {
        udp_send(
            Some(&a),
            src,
            SocketAddrV4::new(dst, 9000),
            &payload,
            count,
            16,
        )
        .unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(sent.packets, count);
}

#[test]
fn held_frames_are_never_recycled_and_return_when_the_last_hold_goes() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let pair = pair(1);
    let _ns = NetnsGuard::enter(&pair.b).unwrap();
    let mut port = udp_port(256);
    send_from_a(&pair, b"held-frame", 10);
    let sock = port.socket_mut(0).unwrap();
    let got = recv_until(sock, 10, Duration::from_secs(5));
    assert_eq!(got.len(), 10);
    let holds: Vec<FrameHold> = got.iter().map(|d| sock.hold(d.addr).unwrap()).collect();
    assert!(
        sock.hold(got[0].addr).is_none(),
        "a held frame is not the App's to hold"
    );
    let acc = sock.check_accounting().unwrap();
    assert_eq!((acc.app, acc.held), (0, 10), "{acc:?}");
    // Nothing that would hand a held frame to the kernel accepts it; refusals are counted.
    assert_eq!(sock.release(&[got[0].addr]), 0);
    assert_eq!(sock.send(&got[..1]), 0);
    assert_eq!(sock.counters().invalid_descs, 2);
    let snap = holds[3].bytes(got[3].addr, got[3].len).unwrap().to_vec();
    assert!(snap.ends_with(b"held-frame"));
    let extra = holds[3].clone();
    assert_eq!(extra.holders(), 2);
    drop(holds);
    assert_eq!(sock.check_accounting().unwrap().held, 1);
    // Every other frame of the UMEM goes round the rings several times meanwhile.
    for _ in 0..4 {
        send_from_a(&pair, &[0xA5; 300], 100);
        let more = recv_until(sock, 100, Duration::from_secs(5));
        assert_eq!(more.len(), 100);
        let addrs: Vec<u64> = more.iter().map(|d| d.addr).collect();
        assert_eq!(sock.release(&addrs), 100);
    }
    assert_eq!(extra.bytes(got[3].addr, got[3].len).unwrap(), &snap[..]);
    assert!(
        extra.bytes(got[3].addr, 4096).is_none(),
        "bounded to its frame"
    );
    drop(extra);
    let acc = sock.check_accounting().unwrap();
    assert_eq!((acc.app, acc.held), (0, 0), "{acc:?}");
    assert_eq!(sock.umem().holds_returned(), 10);
    assert_eq!(sock.umem().holds_lost(), 0);
}

#[test]
fn release_holds_refills_and_send_holds_copies_what_other_holds_keep() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let pair = pair(1);
    let _ns = NetnsGuard::enter(&pair.b).unwrap();
    let mut port = udp_port(256);
    send_from_a(&pair, b"copy-me", 4);
    let sock = port.socket_mut(0).unwrap();
    let got = recv_until(sock, 4, Duration::from_secs(5));
    assert_eq!(got.len(), 4);
    let holds: Vec<FrameHold> = got.iter().map(|d| sock.hold(d.addr).unwrap()).collect();
    let view = holds[0].clone(); // as a Python view of frame 0 would
    let rx_before = sock.account().rx_side;
    // Frames 2 and 3: released, the only hold each straight to FILL.
    let mut holds = holds;
    let last_two = holds.split_off(2);
    assert_eq!(sock.release_holds(last_two), 2);
    assert_eq!(sock.account().rx_side, rx_before + 2);
    // Frames 0 and 1 sent: 1 as it is, 0 as a copy (the view keeps the original).
    let items = holds.into_iter().zip(got[..2].iter().copied()).collect();
    let r = sock.send_holds(items);
    assert_eq!((r.queued, r.copied, r.failed), (2, 1, 0));
    assert_eq!(sock.counters().tx_packets, 2);
    let deadline = Instant::now() + Duration::from_secs(2);
    while sock.account().tx_side > 0 && Instant::now() < deadline {
        sock.complete();
    }
    let acc = sock.check_accounting().unwrap();
    assert_eq!((acc.app, acc.held, acc.tx_side), (0, 1, 0), "{acc:?}");
    assert!(view
        .bytes(got[0].addr, got[0].len)
        .unwrap()
        .ends_with(b"copy-me"));
    drop(view);
    assert_eq!(sock.check_accounting().unwrap().held, 0);
    assert_eq!(sock.counters().invalid_descs, 0);
}

#[test]
fn recv_held_holds_a_batch_that_parses_sends_and_releases_without_the_socket() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let pair = pair(1);
    let _ns = NetnsGuard::enter(&pair.b).unwrap();
    let mut port = udp_port(256);
    send_from_a(&pair, b"held-batch", 6);
    let sock = port.socket_mut(0).unwrap();
    let mut batch = sock.recv_held(64, Some(Duration::from_secs(2))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while batch.len() < 6 && Instant::now() < deadline {
        // Frames may arrive over several receives: collect them into one group.
        let more = sock.recv_held(64, Some(Duration::from_millis(20))).unwrap();
        let mut all: Vec<(XdpDesc, FrameHold)> = Vec::new();
        for g in [&batch, &more] {
            all.extend(g.descs().iter().copied().zip(g.take().unwrap()));
        }
        batch = HeldFrames::new(all);
    }
    assert_eq!(batch.len(), 6);
    assert_eq!(sock.account().held, 6);
    let mut recs = vec![0u8; 6 * 64];
    batch.headers(&mut recs).unwrap();
    for (d, (h, rec)) in batch
        .descs()
        .iter()
        .zip(batch.holds().unwrap().iter().zip(recs.chunks(64)))
    {
        let m = crate::packet::parse(h.bytes(d.addr, d.len).unwrap());
        assert_eq!(m.dst_port, 9000);
        assert_eq!(rec, &m.to_bytes()[..], "the record is the parser's");
    }
    // A bad mask changes nothing; a good one sends three and releases the rest.
    let e = batch.take_for_send(Some(&[true; 5])).unwrap_err();
    assert!(e.to_string().contains("one entry per frame"), "{e}");
    assert!(!batch.released());
    let mask = [true, false, true, false, true, false];
    let items = batch.take_for_send(Some(&mask)).unwrap();
    assert!(batch.released() && batch.hold(0).is_none() && batch.release() == 0);
    assert!(batch.take_for_send(None).is_err(), "sent once");
    assert_eq!(sock.send_holds(items).queued, 3);
    let deadline = Instant::now() + Duration::from_secs(2);
    while sock.account().tx_side > 0 && Instant::now() < deadline {
        sock.complete();
    }
    let acc = sock.check_accounting().unwrap();
    assert_eq!((acc.app, acc.held, acc.tx_side), (0, 0, 0), "{acc:?}");
    // Nothing there: an empty group after the wait.
    let t = Instant::now();
    let none = sock.recv_held(8, Some(Duration::from_millis(30))).unwrap();
    assert!(none.is_empty() && t.elapsed() >= Duration::from_millis(25));
}

#[test]
fn send_copies_sends_bytes_in_order_and_counts_what_does_not_fit() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let pair = pair(1);
    let (rx, _ns, mut port, frame) = tx_bench(&pair, 9200, 150, 512, 90);
    let sock = port.socket_mut(0).unwrap();
    let big = vec![0u8; sock.umem().tx_capacity() as usize + 1];
    let mut packets: Vec<&[u8]> = vec![&frame[..]; 150];
    packets.insert(7, &[]);
    packets.insert(70, &big);
    let r = sock.send_copies(&packets);
    assert_eq!((r.queued, r.oversize), (150, 2));
    let got = rx.join().unwrap();
    assert_eq!(got.packets, 150);
    assert_eq!(got.bytes, 150 * (90 - 42));
    let deadline = Instant::now() + Duration::from_secs(2);
    while sock.account().tx_side > 0 && Instant::now() < deadline {
        sock.complete();
    }
    let acc = sock.check_accounting().unwrap();
    assert_eq!((acc.app, acc.tx_side), (0, 0), "{acc:?}");
    assert_eq!(sock.counters().invalid_descs, 0);
}

#[test]
fn a_port_gives_sockets_out_all_or_none_and_refuses_a_wrong_one_back() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let pair = pair(2);
    let _ns = NetnsGuard::enter(&pair.b).unwrap();
    let mut cfg = copy_config(4096, None);
    cfg.socket.fill_size = 256;
    let mut port = XskPort::open("veth1", &Queues::All, &cfg).unwrap();
    let one = port.take_socket(1).unwrap();
    let e = port.take_sockets(&[vec![0], vec![1]]).unwrap_err();
    assert!(e.to_string().contains("socket 1 is in use"), "{e}");
    assert!(port.socket(0).is_some(), "all or none: socket 0 went back");
    let e = port.check_accounting();
    assert!(e.is_ok(), "a socket is out: no strict check ({e:?})");
    // Socket 1 does not belong in slot 0.
    let e = port.put_sockets([(0, one)]).unwrap_err().to_string();
    assert!(e.contains("could not go back into the port"), "{e}");
    assert!(port.socket(1).is_none(), "refused, and closed");
    let mut taken = port.take_sockets(&[vec![0]]).unwrap();
    port.put_sockets(taken.pop().unwrap()).unwrap();
    // With every socket in the port, a frame with the application and no hold is lost.
    let mut port2 = udp_port_on("veth1", 1, 512);
    let s = port2.socket_mut(0).unwrap();
    let mut a = [0u64; 2];
    assert_eq!(s.alloc(&mut a), 2);
    let e = port2.check_accounting().unwrap_err().to_string();
    assert!(
        e.contains("2 frames are with the application without a hold"),
        "{e}"
    );
}

/// A port on `ifname` queue `queue` (in the current namespace), copy mode, no program.
fn udp_port_on(ifname: &str, queue: u32, frames: u32) -> XskPort {
    let cfg = PortConfig {
        program: PortProgram::External,
        ..copy_config(frames, None)
    };
    XskPort::open(ifname, &Queues::List(vec![queue]), &cfg).unwrap()
}

#[test]
fn a_forked_child_dropping_the_port_leaves_the_parents_program_and_sockets_working() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let pair = pair(1);
    let _ns = NetnsGuard::enter(&pair.b).unwrap();
    let mut port = udp_port(256);
    let prog_id = port.program().unwrap().info().id;
    let ifindex = if_nametoindex("veth1").unwrap();
    // SAFETY: the child only drops its copy of the port and leaves with _exit (no unwinding,
    // no atexit handlers of the test harness run in it).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        drop(port);
        // Before the fix the child's Drop detached the parent's program and cleared its
        // XSKMAP slot; the child checks the program is still there after its drop.
        let still = crate::sys::netlink::xdp_query(ifindex)
            .map(|q| q.programs.iter().any(|a| a.prog_id == prog_id))
            .unwrap_or(false);
        // SAFETY: _exit ends the forked child immediately.
        unsafe { libc::_exit(if still { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waitpid on the child we forked, writing into our own int.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child's drop detached the parent's program (status {status})"
    );
    // The parent's XSKMAP slot still points at its socket: frames keep arriving.
    send_from_a(&pair, b"after-fork", 8);
    let got = recv_until(port.socket_mut(0).unwrap(), 8, Duration::from_secs(5));
    assert_eq!(got.len(), 8, "the parent's socket lost its XSKMAP slot");
}

#[test]
fn a_small_fill_ring_is_refilled_by_receiving_alone() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    // A FILL ring of 32 (less than a refill burst of 64) and a receiver that never sleeps in
    // wait_rx (a busy or spinning worker): every frame is kept, so only refills bring new
    // frames to the kernel. 100 packets one at a time would run a ring never refilled dry
    // after 32.
    let pair = pair(1);
    let _ns = NetnsGuard::enter(&pair.b).unwrap();
    let mut cfg = copy_config(512, Some("udp dst port 9000"));
    cfg.socket.fill_size = 32;
    let mut port = XskPort::open("veth1", &Queues::All, &cfg).unwrap();
    let sock = port.socket_mut(0).unwrap();
    let (a, src, dst) = (pair.a.clone(), pair.ip(1), pair.ip(2));
    let mut holds = Vec::new();
    let mut buf = [XdpDesc::default(); 8];
    for i in 0..100 {
        let a = a.clone();
        std::thread::spawn(move || {
            udp_send(Some(&a), src, SocketAddrV4::new(dst, 9000), b"one", 1, 1).unwrap()
        })
        .join()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        let k = loop {
            let k = sock.recv(&mut buf);
            if k > 0 || Instant::now() >= deadline {
                break k;
            }
        };
        assert_eq!(k, 1, "packet {i} never arrived");
        holds.push(sock.hold(buf[0].addr).unwrap());
    }
    assert_eq!(sock.kernel_stats().unwrap().rx_fill_ring_empty_descs, 0);
    drop(holds);
}

#[test]
fn send_copies_splits_packets_larger_than_a_frame_on_a_multi_buffer_socket() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let pair = pair(1);
    for (ns, ifname) in [(&pair.a, VethPair::IF_A), (&pair.b, VethPair::IF_B)] {
        let out = std::process::Command::new("ip")
            .args(["-n", ns, "link", "set", ifname, "mtu", "9000"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let frame = |size| {
        crate::traffic::UdpTemplate {
            dst_mac: pair.mac(2),
            src_mac: pair.mac(1),
            src_ip: pair.ip(1),
            dst_ip: pair.ip(2),
            dst_port: 9300,
            size,
            ..Default::default()
        }
        .build()
        .unwrap()
    };
    // 6000-byte frames (two 4096-byte UMEM frames each) and 200-byte ones; the peer's kernel
    // UDP socket must get each datagram whole.
    let (big, small) = (frame(6000), frame(200));
    let want: Vec<Vec<u8>> = (0..100)
        .map(|i| if i % 10 == 0 { &small } else { &big }[42..].to_vec())
        .collect();
    let (b, dst) = (pair.b.clone(), pair.ip(2));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let rx = std::thread::spawn(move || {
        let _g = NetnsGuard::enter(&b).unwrap();
        let s = std::net::UdpSocket::bind(SocketAddrV4::new(dst, 9300)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = vec![0u8; 9000];
        let mut got = Vec::new();
        while got.len() < 100 {
            match s.recv(&mut buf) {
                Ok(n) => got.push(buf[..n].to_vec()),
                Err(_) => break,
            }
        }
        got
    });
    ready_rx.recv().unwrap();
    let _ns = NetnsGuard::enter(&pair.a).unwrap();
    let mut cfg = copy_config(1024, None);
    cfg.socket.multi_buffer = true;
    let mut port = XskPort::open(VethPair::IF_A, &Queues::All, &cfg).unwrap();
    let sock = port.socket_mut(0).unwrap();
    assert!(sock.multi_buffer());
    let too_big = vec![0u8; sock.umem().tx_capacity() as usize * (MAX_DESCS_PER_PACKET + 1)];
    let mut packets: Vec<&[u8]> = (0..100)
        .map(|i| if i % 10 == 0 { &small[..] } else { &big[..] })
        .collect();
    packets.insert(50, &too_big);
    // In bursts the receiving socket's buffer holds (6000-byte datagrams fill it fast).
    let (mut queued, mut oversize) = (0, 0);
    for burst in packets.chunks(10) {
        let r = sock.send_copies(burst);
        queued += r.queued;
        oversize += r.oversize;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!((queued, oversize), (100, 1));
    let got = rx.join().unwrap();
    assert_eq!(got.len(), 100);
    assert!(got == want, "every datagram whole and in order");
    let deadline = Instant::now() + Duration::from_secs(2);
    while sock.account().tx_side > 0 && Instant::now() < deadline {
        sock.complete();
    }
    let acc = sock.check_accounting().unwrap();
    assert_eq!((acc.app, acc.tx_side), (0, 0), "{acc:?}");
    let c = sock.counters();
    assert_eq!((c.tx_packets, c.invalid_descs), (100, 0), "{c:?}");
}

#[test]
fn build_frame_writes_in_place_and_gives_refused_frames_back() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let pair = pair(1);
    let (rx, _ns, mut port, frame) = tx_bench(&pair, 9301, 20, 512, 300);
    let sock = port.socket_mut(0).unwrap();
    let free = sock.account().free;
    // Refusals: the writer gives up, claims nothing, or claims more than the frame's room.
    let cap = sock.umem().tx_capacity() as usize;
    assert!(sock.build_frame(|_| None).is_none());
    assert!(sock.build_frame(|_| Some(0)).is_none());
    assert!(sock.build_frame(|b| Some(b.len() + 1)).is_none());
    assert_eq!(sock.account().free, free, "refused frames went back");
    let mut descs = Vec::new();
    for _ in 0..20 {
        let d = sock
            .build_frame(|b| {
                assert_eq!(b.len(), cap);
                b[..frame.len()].copy_from_slice(&frame);
                Some(frame.len())
            })
            .unwrap();
        assert_eq!(d.len as usize, frame.len());
        descs.push(d);
    }
    assert_eq!(sock.send(&descs), 20);
    let got = rx.join().unwrap();
    assert_eq!((got.packets, got.bytes), (20, 20 * (300 - 42)));
    let deadline = Instant::now() + Duration::from_secs(2);
    while sock.account().tx_side > 0 && Instant::now() < deadline {
        sock.complete();
    }
    let acc = sock.check_accounting().unwrap();
    assert_eq!((acc.app, acc.tx_side), (0, 0), "{acc:?}");
}
