//! As-root tests of the table: crafted frames through `BPF_PROG_TEST_RUN`, and traffic on a
//! veth pair inside namespaces the test creates.

use std::net::IpAddr;

use super::*;
use crate::packet::parse::parse;
use crate::sys::bpf::{XDP_DROP, XDP_PASS, XDP_REDIRECT};
use crate::sys::testutil::is_root;
use crate::xdp::parse_filter;

macro_rules! need_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (CAP_BPF, CAP_NET_ADMIN)");
            return;
        }
    };
}

pub(super) fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// UDP (17), TCP (6) or any other protocol over IPv4; a UDP/TCP header with the ports.
pub(super) fn ip4(proto: u8, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let l4 = l4(proto, sport, dport);
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&l4);
    eth(0x0800, &h)
}

pub(super) fn ip6(proto: u8, src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    let l4 = l4(proto, sport, dport);
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    h.extend_from_slice(&[proto, 64]);
    h.extend_from_slice(&src.parse::<std::net::Ipv6Addr>().unwrap().octets());
    h.extend_from_slice(&dst.parse::<std::net::Ipv6Addr>().unwrap().octets());
    h.extend_from_slice(&l4);
    eth(0x86dd, &h)
}

fn l4(proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    let mut t = vec![0u8; if proto == 6 { 24 } else { 16 }];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    if proto == 6 {
        t[12] = 5 << 4;
    } else {
        t[4..6].copy_from_slice(&16u16.to_be_bytes());
    }
    t
}

const A: [u8; 4] = [198, 18, 0, 1];
const B: [u8; 4] = [198, 18, 0, 2];

pub(super) fn table(max_rules: u32, default: Action) -> XdpTable {
    XdpTable::new(TableOptions {
        max_rules,
        default,
        ..Default::default()
    })
    .unwrap()
}

fn entry(filter: &str, action: Action) -> NewEntry {
    NewEntry::new(parse_filter(filter).unwrap(), action)
}

fn verdict(t: &XdpTable, frame: &[u8]) -> u32 {
    t.test_run(frame, 1).unwrap().retval
}

/// The verifier's "processed N insns" from a load log.
pub(super) fn processed(log: &str) -> usize {
    log.split("processed ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no statistics in the verifier log: {log}"))
}

#[test]
fn loads_for_every_size_and_the_verifier_stays_far_from_its_limit() {
    need_root!();
    for max_rules in [64, 128, 256, 512, 1024] {
        let t = table(max_rules, Action::Pass);
        let n = processed(t.verifier_stats());
        eprintln!(
            "max_rules {max_rules}: {} insns; {}",
            t.insn_count(),
            t.verifier_stats()
        );
        assert_eq!(t.info().name, PROGRAM_NAME);
        assert!(
            n < 400_000,
            "max_rules {max_rules}: the verifier processed {n} insns"
        );
    }
    let e = XdpTable::new(TableOptions {
        max_rules: 100,
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("64, 128, 256, 512 or 1024"), "{e}");
    // The multi-buffer capable variant loads and decides the same.
    let mb = XdpTable::new(TableOptions {
        max_rules: 64,
        frags: true,
        ..Default::default()
    })
    .unwrap();
    mb.add(entry("udp dst port 9000", Action::Drop)).unwrap();
    assert_eq!(verdict(&mb, &ip4(17, A, B, 1, 9000)), XDP_DROP);
    assert_eq!(verdict(&mb, &ip4(17, A, B, 1, 9001)), XDP_PASS);
}

#[test]
fn filter_programs_and_tables_are_one_socket_program_interface() {
    need_root!();
    use crate::sys::xdp::XskFd;
    use crate::xdp::{ProgramOptions, SocketProgram, XdpProgram};
    let progs: Vec<Box<dyn SocketProgram>> = vec![
        Box::new(
            XdpProgram::new(&parse_filter("udp").unwrap(), ProgramOptions::default()).unwrap(),
        ),
        Box::new(table(64, Action::Pass)),
    ];
    let sock = XskFd::new().unwrap();
    for p in &progs {
        assert_eq!(p.prog_id(), p.prog_fd().info().unwrap().id);
        assert_eq!((p.queues(), p.frags()), (64, false));
        p.set_socket(3, sock.raw()).unwrap();
        p.clear_socket(3).unwrap();
        assert!(p.set_socket(64, sock.raw()).is_err(), "beyond the XSKMAP");
    }
}

#[test]
fn empty_table_gives_every_frame_the_default_action() {
    need_root!();
    for (default, want) in [
        (Action::Pass, XDP_PASS),
        (Action::Drop, XDP_DROP),
        (Action::Allow, XDP_REDIRECT),
    ] {
        let t = table(64, default);
        for f in [
            ip4(17, A, B, 1, 2),
            ip6(6, "2001:db8::1", "2001:db8::2", 3, 4),
            eth(0x0806, &[0; 28]),
            vec![0u8; 14],
        ] {
            assert_eq!(verdict(&t, &f), want, "{default:?}");
        }
        assert_eq!(t.default_counts().unwrap().packets, 4);
    }
}

#[test]
fn the_three_actions_and_first_match_order() {
    need_root!();
    let t = table(64, Action::Pass);
    let allow = t
        .add(entry("udp dst port 9000-9010", Action::Allow))
        .unwrap();
    let drop = t
        .add(entry(
            "src 198.18.0.0/15 and udp dst port 9005",
            Action::Drop,
        ))
        .unwrap();
    let pass = t.add(entry("tcp", Action::Pass)).unwrap();
    // The allow entry comes first (same priority, added first): 9005 is allowed.
    assert_eq!(verdict(&t, &ip4(17, A, B, 1, 9005)), XDP_REDIRECT);
    assert_eq!(verdict(&t, &ip4(17, A, B, 1, 8999)), XDP_PASS);
    assert_eq!(verdict(&t, &ip4(6, A, B, 1, 9005)), XDP_PASS);
    // A lower priority runs first.
    let first = t
        .add(NewEntry {
            priority: -1,
            ..entry("src 198.18.0.0/15 and udp dst port 9005", Action::Drop)
        })
        .unwrap();
    assert_eq!(verdict(&t, &ip4(17, A, B, 1, 9005)), XDP_DROP);
    assert_eq!(
        verdict(&t, &ip4(17, [10, 0, 0, 1], B, 1, 9005)),
        XDP_REDIRECT
    );
    let order: Vec<u64> = t.entries().unwrap().iter().map(|e| e.id).collect();
    assert_eq!(order, vec![first, allow, drop, pass]);
    let s = t.stats().unwrap();
    assert_eq!(s[&first].packets, 1);
    assert_eq!(s[&allow].packets, 2);
    assert_eq!(s[&drop].packets, 0);
    assert_eq!(s[&pass].packets, 1);
    assert_eq!(s[&allow].bytes, 2 * ip4(17, A, B, 1, 9005).len() as u64);
}

#[test]
fn prefixes_and_ports_together_ipv4_and_ipv6() {
    need_root!();
    let t = table(64, Action::Pass);
    t.add(entry(
        "src 198.18.0.0/15 and dst 198.18.0.2 and udp src port 1000-2000 and dst port 53",
        Action::Drop,
    ))
    .unwrap();
    t.add(entry(
        "src 2001:db8::/32 and dst 2001:db8:1::/48 and tcp dst port 443",
        Action::Drop,
    ))
    .unwrap();
    t.add(entry("ip6 src 2001:db8:ffff::7", Action::Allow))
        .unwrap();
    let hits = [
        ip4(17, A, B, 1000, 53),
        ip4(17, [198, 19, 255, 255], B, 2000, 53),
        ip6(6, "2001:db8:1::1", "2001:db8:1:ffff::1", 9, 443),
    ];
    for f in &hits {
        assert_eq!(verdict(&t, f), XDP_DROP, "{:?}", parse(f));
    }
    let misses = [
        ip4(17, [198, 20, 0, 1], B, 1000, 53), // source outside /15
        ip4(17, A, [198, 18, 0, 3], 1000, 53), // destination
        ip4(17, A, B, 999, 53),                // source port below the range
        ip4(17, A, B, 2001, 53),               // above
        ip4(6, A, B, 1000, 53),                // TCP
        ip4(17, A, B, 1000, 54),               // destination port
        ip6(6, "2001:db9::1", "2001:db8:1::1", 9, 443),
        ip6(6, "2001:db8::1", "2001:db8:2::1", 9, 443),
        ip6(17, "2001:db8::1", "2001:db8:1::1", 9, 443),
    ];
    for f in &misses {
        assert_eq!(verdict(&t, f), XDP_PASS, "{:?}", parse(f));
    }
    assert_eq!(
        verdict(&t, &ip6(17, "2001:db8:ffff::7", "::1", 1, 1)),
        XDP_REDIRECT
    );
}

#[test]
fn expired_entries_stop_matching_in_the_kernel_and_sweep_removes_them() {
    need_root!();
    let t = table(64, Action::Pass);
    let now = ktime_ns();
    let gone = t
        .add(NewEntry {
            expires_ns: Some(now - 1),
            ..entry("udp", Action::Drop)
        })
        .unwrap();
    let soon = t
        .add(NewEntry {
            expires_ns: Some(now + 300_000_000),
            ..entry("udp dst port 9000", Action::Allow)
        })
        .unwrap();
    let f = ip4(17, A, B, 1, 9000);
    assert_eq!(
        verdict(&t, &f),
        XDP_REDIRECT,
        "the expired first entry is skipped"
    );
    assert_eq!(verdict(&t, &ip4(17, A, B, 1, 1)), XDP_PASS);
    std::thread::sleep(std::time::Duration::from_millis(350));
    assert_eq!(
        verdict(&t, &f),
        XDP_PASS,
        "expired at its deadline without a sweep"
    );
    let s = t.stats().unwrap();
    assert_eq!((s[&gone].packets, s[&soon].packets), (0, 1));
    assert_eq!(
        t.sweep().unwrap(),
        Swept {
            entries: 2,
            blocks: 0
        }
    );
    assert!(t.entries().unwrap().is_empty());
    assert_eq!(t.table_info().unwrap().swept_entries, 2);
    assert!(matches!(t.remove(gone), Err(Error::NotFound(_))));
}

#[test]
fn capacity_is_enforced_with_the_numbers_in_the_error() {
    need_root!();
    let t = table(64, Action::Pass);
    let mut ids = Vec::new();
    for i in 0..32 {
        // `port N` is two rules (source or destination).
        ids.push(
            t.add(entry(&format!("udp port {}", 1000 + i), Action::Drop))
                .unwrap(),
        );
    }
    let e = t.add(entry("tcp", Action::Drop)).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOSPC), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("64 of max_rules=64") && msg.contains("remove()"),
        "{msg}"
    );
    // Nothing changed; removing one entry frees two slots.
    assert_eq!(t.entries().unwrap().len(), 32);
    t.remove(ids[0]).unwrap();
    t.add(entry("tcp or sctp", Action::Drop)).unwrap();
    assert_eq!(verdict(&t, &ip4(6, A, B, 1, 1)), XDP_DROP);
    assert_eq!(verdict(&t, &ip4(17, A, B, 1031, 1)), XDP_DROP);
    assert_eq!(verdict(&t, &ip4(17, A, B, 1000, 1)), XDP_PASS);
}

#[test]
fn blocks_come_first_expire_and_count() {
    need_root!();
    let t = table(64, Action::Pass);
    let allow = t.add(entry("udp", Action::Allow)).unwrap();
    let src: IpAddr = "198.18.0.1".parse().unwrap();
    let src6: IpAddr = "2001:db8::1".parse().unwrap();
    let f = ip4(17, A, B, 1, 2);
    let f6 = ip6(17, "2001:db8::1", "::2", 1, 2);
    assert_eq!(verdict(&t, &f), XDP_REDIRECT);
    t.block(src, Some(0.3), Action::Drop, false).unwrap();
    t.block(src6, None, Action::Pass, false).unwrap();
    assert_eq!(verdict(&t, &f), XDP_DROP);
    assert_eq!(verdict(&t, &f), XDP_DROP);
    assert_eq!(verdict(&t, &f6), XDP_PASS);
    assert_eq!(verdict(&t, &ip4(17, B, A, 1, 2)), XDP_REDIRECT);
    let b = t.blocks().unwrap();
    assert_eq!(b.len(), 2);
    let b4 = b.iter().find(|b| b.addr == src).unwrap();
    assert_eq!(b4.counts.packets, 2);
    assert_eq!(b4.counts.bytes, 2 * f.len() as u64);
    std::thread::sleep(std::time::Duration::from_millis(350));
    assert_eq!(verdict(&t, &f), XDP_REDIRECT, "the block expired");
    assert_eq!(
        t.sweep().unwrap(),
        Swept {
            entries: 0,
            blocks: 1
        }
    );
    assert!(t.unblock(src6).unwrap());
    assert!(!t.unblock(src6).unwrap());
    assert_eq!(verdict(&t, &f6), XDP_REDIRECT);
    assert_eq!(t.stats().unwrap()[&allow].packets, 4);
    let small = XdpTable::new(TableOptions {
        max_rules: 64,
        max_blocks: 2,
        ..Default::default()
    })
    .unwrap();
    small.block(src, None, Action::Drop, false).unwrap();
    small.block(src6, None, Action::Drop, false).unwrap();
    small.block(src, Some(5.0), Action::Drop, false).unwrap(); // renewing is not a new block
    let e = small
        .block("10.0.0.1".parse().unwrap(), None, Action::Drop, false)
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOSPC));
    assert!(e.to_string().contains("max_blocks=2"), "{e}");
}

#[test]
fn every_slot_expired_leaves_the_default() {
    need_root!();
    // 64 entries, all expiring: the binary search over the deadlines must count all of them.
    let t = table(64, Action::Pass);
    let now = ktime_ns();
    let add: Vec<NewEntry> = (0..64)
        .map(|i| NewEntry {
            expires_ns: Some(now - 1000 + i),
            ..entry(&format!("udp dst port {i}"), Action::Drop)
        })
        .collect();
    t.apply(add, &[]).unwrap();
    for port in [0, 31, 62, 63] {
        assert_eq!(
            verdict(&t, &ip4(17, A, B, 1, port)),
            XDP_PASS,
            "port {port}"
        );
    }
    // The last one renewed: only it matches again.
    let last = t.entries().unwrap()[63].id;
    t.apply(
        vec![NewEntry {
            expires_ns: Some(now + HOUR_NS),
            ..entry("udp dst port 63", Action::Drop)
        }],
        &[last],
    )
    .unwrap();
    assert_eq!(verdict(&t, &ip4(17, A, B, 1, 63)), XDP_DROP);
    assert_eq!(verdict(&t, &ip4(17, A, B, 1, 62)), XDP_PASS);
    assert_eq!(t.sweep().unwrap().entries, 63);
}

const HOUR_NS: u64 = 3_600_000_000_000;

// --- On a veth pair: real frames from the peer's kernel -----------------------------------

mod veth {
    use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crate::sys::xdp::XskFd;

    use super::*;
    use crate::sys::netns::NetnsGuard;
    use crate::sys::testutil::{VethOptions, VethPair};
    use crate::sys::xdp::XdpDesc;
    use crate::xsk::{
        BindMode, PortConfig, PortProgram, Queues, SocketConfig, UmemConfig, XskPort, XskSocket,
    };

    const PAYLOAD: usize = 32;
    /// Ethernet + IPv4 + UDP + payload.
    const FRAME: u64 = 14 + 20 + 8 + PAYLOAD as u64;

    fn pair() -> VethPair {
        VethPair::with(VethOptions {
            ipv6: false,
            ..Default::default()
        })
        .expect("create veth pair")
    }

    /// An AF_XDP socket on veth1 queue 0 with no program of its own: the table's XSKMAP
    /// routes to it (what a port wired to a table will do).
    fn socket_port() -> XskPort {
        XskPort::open(
            VethPair::IF_B,
            &Queues::List(vec![0]),
            &PortConfig {
                umem: UmemConfig {
                    frames: 4096,
                    ..Default::default()
                },
                socket: SocketConfig {
                    mode: BindMode::Copy,
                    ..Default::default()
                },
                program: PortProgram::External,
                ..Default::default()
            },
        )
        .expect("bind an AF_XDP socket to veth1")
    }

    /// Send `count` datagrams of PAYLOAD bytes (the first 8 hold the sequence number) from
    /// `src` in namespace `ns` to `dst`, in bursts of 32 with a pause between them so the
    /// veth ring never overflows. Unconnected: ICMP errors from the peer do not stop it.
    fn send(ns: &str, src: Ipv4Addr, dst: SocketAddrV4, count: u64) -> u64 {
        let _g = NetnsGuard::enter(ns).unwrap();
        let s = UdpSocket::bind(SocketAddrV4::new(src, 0)).unwrap();
        let mut p = [0x5au8; PAYLOAD];
        for i in 0..count {
            p[..8].copy_from_slice(&i.to_be_bytes());
            s.send_to(&p, dst).unwrap();
            if i % 32 == 31 {
                std::thread::sleep(Duration::from_micros(300));
            }
        }
        count
    }

    /// Receive what is there within `timeout`, releasing the frames; returns each frame's
    /// (source address, sequence number).
    fn drain(sock: &mut XskSocket, want: usize, timeout: Duration) -> Vec<(Ipv4Addr, u64)> {
        let mut got = Vec::new();
        let mut buf = vec![XdpDesc::default(); 64];
        let deadline = Instant::now() + timeout;
        while got.len() < want && Instant::now() < deadline {
            let n = sock.recv(&mut buf);
            if n == 0 {
                let _ = sock.wait_rx(Duration::from_millis(5));
                continue;
            }
            for d in &buf[..n] {
                let f = sock.app_bytes(d.addr, d.len).unwrap();
                let m = parse(f);
                let seq = u64::from_be_bytes(f[42..50].try_into().unwrap());
                got.push((Ipv4Addr::from(m.src_ip4), seq));
            }
            let addrs: Vec<u64> = buf[..n].iter().map(|d| d.addr).collect();
            assert_eq!(sock.release(&addrs), n);
        }
        got
    }

    fn counts(t: &XdpTable, id: u64) -> Counts {
        t.stats().unwrap()[&id]
    }

    #[test]
    fn three_actions_with_counters_exact_against_what_was_sent() {
        need_root!();
        let pair = pair();
        let _ns = NetnsGuard::enter(&pair.b).unwrap();
        let t = table(64, Action::Pass);
        let drop = t.add(entry("udp dst port 9001", Action::Drop)).unwrap();
        let pass = t.add(entry("udp dst port 9002", Action::Pass)).unwrap();
        let allow = t.add(entry("udp dst port 9003", Action::Allow)).unwrap();
        let mut port = socket_port();
        t.set_socket(0, port.socket(0).unwrap().raw_fd()).unwrap();
        let att = t.attach(VethPair::IF_B, AttachMode::Auto, false).unwrap();
        assert_eq!(att.prog_id, t.info().id);
        let kernel = UdpSocket::bind(SocketAddrV4::new(pair.ip(2), 9002)).unwrap();
        kernel
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        // Read the kernel's socket meanwhile (300 queued datagrams would overflow its buffer).
        let kernel_rx = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            (0..300)
                .map(|i| {
                    kernel.recv(&mut buf).unwrap_or_else(|e| {
                        panic!("datagram {i} of 300 never reached the kernel: {e}")
                    })
                })
                .filter(|&n| n == PAYLOAD)
                .count()
        });
        let (a, src, dst) = (pair.a.clone(), pair.ip(1), pair.ip(2));
        let sender = std::thread::spawn(move || {
            (9001..=9003)
                .map(|p| send(&a, src, SocketAddrV4::new(dst, p), 300))
                .sum::<u64>()
        });
        let got = drain(port.socket_mut(0).unwrap(), 300, Duration::from_secs(5));
        assert_eq!(sender.join().unwrap(), 900);
        assert_eq!(
            kernel_rx.join().unwrap(),
            300,
            "the kernel's socket got the passed frames"
        );
        let extra = drain(port.socket_mut(0).unwrap(), 1, Duration::from_millis(200));
        assert_eq!(
            (got.len(), extra.len()),
            (300, 0),
            "exactly the allowed frames"
        );
        let seqs: Vec<u64> = got.iter().map(|g| g.1).collect();
        assert_eq!(seqs, (0..300).collect::<Vec<u64>>());
        for id in [drop, pass, allow] {
            assert_eq!(
                counts(&t, id),
                Counts {
                    packets: 300,
                    bytes: 300 * FRAME
                },
                "entry {id}"
            );
        }
        assert_eq!(t.default_counts().unwrap().packets, 0);
    }

    #[test]
    fn rules_change_while_traffic_flows_without_reloading() {
        need_root!();
        let pair = pair();
        let _ns = NetnsGuard::enter(&pair.b).unwrap();
        let t = table(64, Action::Pass);
        let first = t.add(entry("udp dst port 9000", Action::Drop)).unwrap();
        t.attach(VethPair::IF_B, AttachMode::Auto, false).unwrap();
        let prog_id = t.info().id;
        let attached = || {
            crate::xdp::query(VethPair::IF_B).unwrap()[0]
                .attached
                .prog_id
        };
        assert_eq!(attached(), prog_id);
        let (a, src, dst) = (pair.a.clone(), pair.ip(1), pair.ip(2));
        let done = Arc::new(AtomicBool::new(false));
        let d2 = done.clone();
        let sender = std::thread::spawn(move || {
            let n = send(&a, src, SocketAddrV4::new(dst, 9000), 30_000);
            d2.store(true, Ordering::Release);
            n
        });
        // Churn while the frames arrive: entries that never match come and go, and halfway a
        // more specific entry with a lower priority takes the flow over.
        let mut changes = 0;
        let mut second = None;
        while !done.load(Ordering::Acquire) {
            let x = t
                .add(entry("tcp dst port 1 or ip6", Action::Allow))
                .unwrap();
            t.remove(x).unwrap();
            changes += 2;
            if changes == 10 {
                second = Some(
                    t.add(NewEntry {
                        priority: -1,
                        ..entry(&format!("src {src} and udp dst port 9000"), Action::Drop)
                    })
                    .unwrap(),
                );
                changes += 1;
            }
        }
        let sent = sender.join().unwrap();
        wait_for_program_runs();
        let second = second.expect("the sender finished before ten changes: send more");
        let (c1, c2) = (counts(&t, first), counts(&t, second));
        eprintln!(
            "{sent} frames during {changes} changes: first entry {} frames, second {}; {:?}",
            c1.packets,
            c2.packets,
            t.table_info().unwrap()
        );
        assert!(c1.packets > 0 && c2.packets > 0, "{c1:?} {c2:?}");
        assert_eq!(c1.packets + c2.packets, sent, "every frame counted once");
        assert_eq!(c1.bytes + c2.bytes, sent * FRAME);
        assert_eq!(
            t.default_counts().unwrap().packets,
            0,
            "no frame fell between banks"
        );
        assert_eq!(t.info().id, prog_id);
        assert_eq!(
            attached(),
            prog_id,
            "still the same program on the interface"
        );
    }

    /// The proof asked for: a handler's decision drops the flow in the kernel from the next
    /// batch on. Two flows (two source addresses) arrive in lockstep rounds; when the handler
    /// sees flow X in a batch it calls `block(X)`; every later round delivers flow Y whole and
    /// nothing of X, whose frames the block's counter counts.
    #[test]
    fn a_block_from_the_handler_drops_the_flow_from_the_next_batch_on() {
        need_root!();
        let pair = pair();
        let (x, y, dst) = (pair.ip(1), pair.ip(3), pair.ip(2));
        let status = std::process::Command::new("ip")
            .args([
                "-n",
                &pair.a,
                "addr",
                "add",
                &format!("{y}/24"),
                "dev",
                VethPair::IF_A,
            ])
            .status()
            .unwrap();
        assert!(status.success());
        let _ns = NetnsGuard::enter(&pair.b).unwrap();
        let t = table(64, Action::Pass);
        let allow = t.add(entry("udp dst port 9000", Action::Allow)).unwrap();
        let mut port = socket_port();
        t.set_socket(0, port.socket(0).unwrap().raw_fd()).unwrap();
        t.attach(VethPair::IF_B, AttachMode::Auto, false).unwrap();
        let sock = port.socket_mut(0).unwrap();
        const PER_FLOW: u64 = 16;
        let mut decided_in = None;
        let mut received_after = 0;
        for round in 0..8 {
            let a = pair.a.clone();
            pair.in_a(move || {
                send(&a, x, SocketAddrV4::new(dst, 9000), PER_FLOW);
                send(&a, y, SocketAddrV4::new(dst, 9000), PER_FLOW);
            });
            let want = if decided_in.is_some() {
                PER_FLOW
            } else {
                2 * PER_FLOW
            };
            let got = drain(sock, want as usize, Duration::from_secs(3));
            // Anything late would show here.
            let late = drain(sock, 1, Duration::from_millis(50));
            let from_x = got.iter().chain(&late).filter(|g| g.0 == x).count() as u64;
            let from_y = got.iter().chain(&late).filter(|g| g.0 == y).count() as u64;
            match decided_in {
                None => {
                    assert_eq!((from_x, from_y), (PER_FLOW, PER_FLOW), "round {round}");
                    if round == 2 {
                        // The handler of this batch decides: X is dropped for 10 s.
                        t.block(IpAddr::V4(x), Some(10.0), Action::Drop, false)
                            .unwrap();
                        decided_in = Some(round);
                    }
                }
                Some(_) => {
                    assert_eq!(
                        from_x, 0,
                        "round {round}: X reached the socket after the block"
                    );
                    assert_eq!(from_y, PER_FLOW, "round {round}: Y lost frames");
                    received_after += from_y;
                }
            }
        }
        let blocked = t.blocks().unwrap();
        assert_eq!(blocked.len(), 1);
        assert_eq!(
            blocked[0].counts,
            Counts {
                packets: 5 * PER_FLOW,
                bytes: 5 * PER_FLOW * FRAME
            },
            "the kernel dropped every X frame of the five rounds after the decision"
        );
        assert_eq!(counts(&t, allow).packets, 3 * 2 * PER_FLOW + received_after);
    }

    /// The same with the flow running continuously: after `block(..., wait=true)` returns,
    /// the allow counter of the flow never moves again, the socket receives only frames that
    /// were redirected before the call, and every frame is counted once.
    #[test]
    fn a_block_with_wait_is_exact_under_continuous_traffic() {
        need_root!();
        let pair = pair();
        let _ns = NetnsGuard::enter(&pair.b).unwrap();
        let t = table(64, Action::Pass);
        let allow = t.add(entry("udp dst port 9000", Action::Allow)).unwrap();
        let mut port = socket_port();
        t.set_socket(0, port.socket(0).unwrap().raw_fd()).unwrap();
        t.attach(VethPair::IF_B, AttachMode::Auto, false).unwrap();
        let (a, src, dst) = (pair.a.clone(), pair.ip(1), pair.ip(2));
        let sender =
            std::thread::spawn(move || send(&a, src, SocketAddrV4::new(dst, 9000), 20_000));
        let sock = port.socket_mut(0).unwrap();
        let before = drain(sock, 1, Duration::from_secs(3));
        assert!(!before.is_empty(), "no frame arrived");
        t.block(IpAddr::V4(src), Some(10.0), Action::Drop, true)
            .unwrap();
        let at_decision = counts(&t, allow).packets;
        let sent = sender.join().unwrap();
        let after = drain(
            sock,
            (at_decision as usize).saturating_sub(before.len()),
            Duration::from_secs(3),
        );
        let late = drain(sock, 1, Duration::from_millis(100));
        let allowed = counts(&t, allow).packets;
        let dropped = t.blocks().unwrap()[0].counts.packets;
        eprintln!(
            "{sent} sent: {} received before the decision, {} after it (already queued), {dropped} dropped by the kernel",
            before.len(),
            after.len()
        );
        assert_eq!(
            allowed, at_decision,
            "nothing was allowed after block() returned"
        );
        assert_eq!(before.len() + after.len() + late.len(), allowed as usize);
        assert!(late.is_empty());
        assert_eq!(allowed + dropped, sent);
        assert!(
            dropped > sent / 2,
            "the block came early: {dropped} of {sent} dropped"
        );
        // The received sequence numbers end where the block began.
        let last = after.last().or(before.last()).unwrap().1;
        assert_eq!(last + 1, allowed);
    }

    // --- A port opened on the table (`PortProgram::Table`) ---------------------------------

    /// A copy-mode port on veth1 queue 0 whose program is the table `t`.
    fn table_port(t: &Arc<XdpTable>) -> Result<XskPort> {
        XskPort::open(
            VethPair::IF_B,
            &Queues::List(vec![0]),
            &PortConfig {
                umem: UmemConfig {
                    frames: 4096,
                    ..Default::default()
                },
                socket: SocketConfig {
                    mode: BindMode::Copy,
                    ..Default::default()
                },
                program: PortProgram::Table(Arc::clone(t)),
                ..Default::default()
            },
        )
    }

    /// The program ids attached to veth1.
    fn on_veth1() -> Vec<u32> {
        crate::xdp::query(VethPair::IF_B)
            .unwrap()
            .iter()
            .map(|p| p.attached.prog_id)
            .collect()
    }

    /// Send `n` datagrams from veth0 to port 9000 and receive them on the port's socket.
    fn round_trip(pair: &VethPair, port: &mut XskPort, n: u64) -> usize {
        send(&pair.a, pair.ip(1), SocketAddrV4::new(pair.ip(2), 9000), n);
        drain(
            port.socket_mut(0).unwrap(),
            n as usize,
            Duration::from_secs(3),
        )
        .len()
    }

    /// The port puts its socket into the table's XSKMAP (the frames the table allows reach
    /// it), attaches the table because nothing else did, and on close detaches it and
    /// empties only the slot it filled; a slot someone else filled is refused, not taken.
    #[test]
    fn a_port_on_a_table_joins_its_xskmap_and_attaches_it_while_open() {
        need_root!();
        let pair = pair();
        let _ns = NetnsGuard::enter(&pair.b).unwrap();
        let t = Arc::new(table(64, Action::Pass));
        let allow = t.add(entry("udp dst port 9000", Action::Allow)).unwrap();
        let mut port = table_port(&t).unwrap();
        assert_eq!(on_veth1(), [t.info().id], "the port attached the table");
        assert_eq!(t.attached().unwrap(), [VethPair::IF_B]);
        assert!(port.program().is_none());
        assert!(Arc::ptr_eq(port.table().unwrap(), &t));
        assert!(port.xdp_mode().is_some());
        assert_eq!(round_trip(&pair, &mut port, 100), 100);
        assert_eq!(counts(&t, allow).packets, 100);
        assert_eq!(port.check_accounting().unwrap().app, 0);
        drop(port);
        assert!(on_veth1().is_empty(), "the port detached what it attached");
        assert!(t.attached().unwrap().is_empty());
        // Its slot is empty again (a port adds only to an empty slot) and stays so when a
        // port is refused because another socket has the slot.
        let stray = XskFd::new().unwrap();
        t.set_socket(0, stray.raw()).unwrap();
        let e = table_port(&t).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EEXIST), "{e}");
        assert!(
            e.to_string()
                .contains("queue 0 of the table already has a socket"),
            "{e}"
        );
        assert!(
            on_veth1().is_empty(),
            "a refused port leaves nothing attached"
        );
        assert!(
            table_port(&t).is_err(),
            "the refused port left the slot alone"
        );
        t.clear_socket(0).unwrap();
        let mut port = table_port(&t).unwrap();
        assert_eq!(round_trip(&pair, &mut port, 10), 10);
        // Beyond the table's XSKMAP, and multi-buffer on a table loaded without frags.
        let small = Arc::new(
            XdpTable::new(TableOptions {
                max_rules: 64,
                queues: 1,
                ..Default::default()
            })
            .unwrap(),
        );
        let two = VethPair::with(VethOptions {
            ipv6: false,
            queues: 2,
            ..Default::default()
        })
        .unwrap();
        let e = {
            let _ns = NetnsGuard::enter(&two.b).unwrap();
            XskPort::open(
                VethPair::IF_B,
                &Queues::List(vec![1]),
                &PortConfig {
                    program: PortProgram::Table(Arc::clone(&small)),
                    ..Default::default()
                },
            )
            .unwrap_err()
        };
        assert!(e.to_string().contains("queues=2 or more"), "{e}");
        let e = XskPort::open(
            VethPair::IF_B,
            &Queues::List(vec![0]),
            &PortConfig {
                socket: SocketConfig {
                    multi_buffer: true,
                    ..Default::default()
                },
                program: PortProgram::Table(Arc::clone(&t)),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("frags=True"), "{e}");
    }

    /// Who attached the table decides how long it stays: the owner's `attach` outlives the
    /// port, a port's hold outlives the owner's `detach`, and the table itself (program and
    /// maps) outlives its owner's reference while a port uses it.
    #[test]
    fn a_port_never_detaches_or_closes_a_table_someone_else_holds() {
        need_root!();
        let pair = pair();
        let _ns = NetnsGuard::enter(&pair.b).unwrap();
        let t = Arc::new(table(64, Action::Pass));
        t.add(entry("udp dst port 9000", Action::Allow)).unwrap();
        let id = t.info().id;
        // The owner attached first: the port uses that attachment and leaves it.
        let owner = t.attach(VethPair::IF_B, AttachMode::Auto, false).unwrap();
        let mut port = table_port(&t).unwrap();
        assert_eq!(port.xdp_mode().map(|m| m.as_str()), Some(owner.mode));
        assert_eq!(round_trip(&pair, &mut port, 20), 20);
        drop(port);
        assert_eq!(on_veth1(), [id], "the owner's attachment stays");
        // The port first, then the owner: attaching again is only a mark, the port's close
        // leaves it attached for the owner.
        assert_eq!(t.detach(None).unwrap(), 1);
        let port = table_port(&t).unwrap();
        assert_eq!(
            t.attach(VethPair::IF_B, AttachMode::Auto, false)
                .unwrap()
                .prog_id,
            id
        );
        drop(port);
        assert_eq!(on_veth1(), [id]);
        // The owner detaches while a port uses it: it stays until the port closes.
        let mut port = table_port(&t).unwrap();
        assert_eq!(t.detach(Some(VethPair::IF_B)).unwrap(), 0);
        assert_eq!(on_veth1(), [id]);
        assert_eq!(round_trip(&pair, &mut port, 20), 20);
        // The owner lets go of the table altogether: the port keeps program and maps.
        drop(t);
        assert_eq!(round_trip(&pair, &mut port, 20), 20);
        assert!(port.table().unwrap().blocks().unwrap().is_empty());
        drop(port);
        assert!(on_veth1().is_empty());
        // Links and programs are freed asynchronously after the last reference goes.
        let t0 = Instant::now();
        while crate::sys::bpf::prog_info_by_id(id).is_ok() {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "program {id} still loaded"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Two ports on two queues of one interface share the table's attachment: it stays
    /// while either is open and goes with the last (what libxdp counts in its default
    /// program's `refcnt`).
    #[test]
    fn ports_on_two_queues_share_one_attachment_until_the_last_closes() {
        need_root!();
        let pair = VethPair::with(VethOptions {
            ipv6: false,
            queues: 2,
            ..Default::default()
        })
        .unwrap();
        let _ns = NetnsGuard::enter(&pair.b).unwrap();
        let t = Arc::new(table(64, Action::Pass));
        let open = |q: u32| {
            XskPort::open(
                VethPair::IF_B,
                &Queues::List(vec![q]),
                &PortConfig {
                    socket: SocketConfig {
                        mode: BindMode::Copy,
                        ..Default::default()
                    },
                    program: PortProgram::Table(Arc::clone(&t)),
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let (p0, p1) = (open(0), open(1));
        assert_eq!(on_veth1(), [t.info().id]);
        assert_eq!(t.attached().unwrap(), [VethPair::IF_B], "one attachment");
        drop(p0);
        assert_eq!(on_veth1(), [t.info().id], "queue 1's port still holds it");
        drop(p1);
        assert!(on_veth1().is_empty());
    }
}
