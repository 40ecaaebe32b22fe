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
