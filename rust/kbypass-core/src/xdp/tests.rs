//! As-root tests: compiled programs verified with BPF_PROG_TEST_RUN on crafted frames, and
//! attach/detach on a veth pair inside a network namespace the test creates.
//!
//! Verdict checking: `XdpProgram::test_run` runs the *same* compiled code with a private XSKMAP
//! that holds an unbound AF_XDP socket at queue 0, so a matching frame really returns
//! XDP_REDIRECT from `bpf_redirect_map` and a non-matching one XDP_PASS — no special test mode
//! in the program itself.

use super::*;
use crate::error::Error;
use crate::packet::parse::FLAG_L4;
use crate::sys::bpf::{
    MapFd, ProgFd, ProgLoad, TestRun, BPF_PROG_TYPE_XDP, XDP_PASS, XDP_REDIRECT,
};
use crate::sys::netlink::{xdp_query, xdp_set, XdpMode, XDP_FLAGS_SKB_MODE};
use crate::sys::testutil::{is_root, VethOptions, VethPair};
use crate::sys::xdp::{if_nametoindex, XskFd};

macro_rules! need_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (CAP_BPF, CAP_NET_ADMIN)");
            return;
        }
    };
}

fn eth(ethertype: u16, vlan: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    if let Some(v) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ipv4(
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
    options: &[u8],
    frag: u16,
    payload: &[u8],
) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let ihl = 5 + options.len() / 4;
    let total = (ihl * 4 + payload.len()) as u16;
    let mut h = vec![(4 << 4) | ihl as u8, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(options);
    h.extend_from_slice(payload);
    h
}

fn ipv6(next: u8, src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src.parse::<std::net::Ipv6Addr>().unwrap().octets());
    h.extend_from_slice(&dst.parse::<std::net::Ipv6Addr>().unwrap().octets());
    h.extend_from_slice(payload);
    h
}

/// A UDP header (8 bytes, length 16) and 8 bytes of payload; also a whole SCTP common header
/// (12 bytes) plus 4.
fn l4(sport: u16, dport: u16) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&[0, 16, 0, 0]);
    u.extend_from_slice(&[0xab; 8]);
    u
}

/// A TCP header (20 bytes, data offset 5) and 4 bytes of payload.
fn tcp(sport: u16, dport: u16) -> Vec<u8> {
    let mut t = vec![0u8; 24];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02; // SYN
    t[20..].copy_from_slice(b"data");
    t
}

/// An IPv6 hop-by-hop, routing or destination options header of `(units + 1) × 8` bytes.
fn ext_hdr(next: u8, units: u8) -> Vec<u8> {
    let mut h = vec![0u8; (usize::from(units) + 1) * 8];
    h[0] = next;
    h[1] = units;
    if h.len() >= 4 {
        h[2..4].copy_from_slice(&[0x04, 0xd2]); // option bytes that look like port 1234
    }
    h
}

/// An IPv6 fragment header: `offset` in 8-byte units, M flag `more`.
fn frag_hdr(next: u8, offset: u16, more: bool) -> Vec<u8> {
    let mut h = vec![next, 0];
    h.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
    h.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    h
}

const A: [u8; 4] = [198, 18, 0, 1];
const B: [u8; 4] = [198, 18, 0, 2];

fn udp4(dport: u16) -> Vec<u8> {
    eth(0x0800, None, &ipv4(17, A, B, &[], 0, &l4(40000, dport)))
}

fn prog(filter: &str) -> XdpProgram {
    let rules = if filter.is_empty() {
        vec![]
    } else {
        parse_filter(filter).unwrap()
    };
    XdpProgram::new(&rules, ProgramOptions::default()).unwrap()
}

fn verdict(p: &XdpProgram, frame: &[u8]) -> u32 {
    p.test_run(frame, 1).unwrap().retval
}

#[test]
fn default_program_redirects_everything() {
    need_root!();
    let p = prog("");
    assert_eq!(p.insn_count(), 6);
    assert_eq!(p.info().name, "kbypass_xsk");
    assert_eq!(verdict(&p, &udp4(1)), XDP_REDIRECT);
    assert_eq!(verdict(&p, &eth(0x0806, None, &[0; 28])), XDP_REDIRECT);
    assert_eq!(verdict(&p, &[0u8; 14]), XDP_REDIRECT);
    // The probed form on this kernel: flags-default (≥ 5.3).
    assert_eq!(redirect_form().unwrap(), RedirectForm::FlagsDefault);
}

#[test]
fn udp_port_range_ipv4() {
    need_root!();
    let p = prog("udp dst port 9000-9010");
    assert_eq!(p.info().name, "kbypass_filter");
    for (port, want) in [
        (9000, XDP_REDIRECT),
        (9005, XDP_REDIRECT),
        (9010, XDP_REDIRECT),
        (8999, XDP_PASS),
        (9011, XDP_PASS),
    ] {
        assert_eq!(verdict(&p, &udp4(port)), want, "port {port}");
    }
    let tcp4 = eth(0x0800, None, &ipv4(6, A, B, &[], 0, &tcp(1, 9005)));
    assert_eq!(verdict(&p, &tcp4), XDP_PASS);
    let arp = eth(0x0806, None, &[0; 28]);
    assert_eq!(verdict(&p, &arp), XDP_PASS);
}

#[test]
fn truncated_and_malformed_frames_pass() {
    need_root!();
    let p = prog("udp dst port 9000-9010 or ip6 udp dst port 9000 or ip src 198.18.0.0/15");
    let full = udp4(9005);
    assert_eq!(verdict(&p, &full), XDP_REDIRECT);
    // Every prefix shorter than eth + IPv4 (20) + the whole 8-byte UDP header passes: ports
    // exist only with the whole L4 header in the frame.
    let p_ports = prog("udp dst port 9000-9010");
    for len in [14, 15, 20, 33, 34, 37, 38, 41] {
        assert_eq!(verdict(&p_ports, &full[..len]), XDP_PASS, "len {len}");
    }
    assert_eq!(
        verdict(&p_ports, &full[..42]),
        XDP_REDIRECT,
        "42 bytes hold the UDP header (the payload may be cut)"
    );
    // IHL < 5 and wrong version are malformed.
    let mut bad = full.clone();
    bad[14] = 0x44;
    assert_eq!(verdict(&p_ports, &bad), XDP_PASS);
    let mut bad = full.clone();
    bad[14] = 0x65;
    assert_eq!(verdict(&p_ports, &bad), XDP_PASS);
    // IHL 15 claims 60 bytes of header that are not there.
    let mut bad = full.clone();
    bad[14] = 0x4f;
    assert_eq!(verdict(&p_ports, &bad), XDP_PASS);
    // IPv6 truncated inside the fixed header and inside the ports.
    let v6 = eth(
        0x86dd,
        None,
        &ipv6(17, "2001:db8::1", "2001:db8::2", &l4(1, 9000)),
    );
    assert_eq!(verdict(&p, &v6), XDP_REDIRECT);
    for len in [14, 30, 53, 54, 57, 61] {
        assert_eq!(verdict(&p, &v6[..len]), XDP_PASS, "v6 len {len}");
    }
    assert_eq!(verdict(&p, &v6[..62]), XDP_REDIRECT);
}

#[test]
fn ipv4_options_shift_the_l4_header() {
    need_root!();
    let p = prog("udp dst port 9000");
    // IHL 6: four bytes of options (NOP NOP NOP EOL) whose last two bytes would read as port
    // 0x0100 if the program assumed IHL 5; the real ports follow them.
    let opts = [1, 1, 1, 0];
    let f = eth(0x0800, None, &ipv4(17, A, B, &opts, 0, &l4(1, 9000)));
    assert_eq!(verdict(&p, &f), XDP_REDIRECT);
    // Options making a fixed offset read 9000 while the real port is 1 must not match.
    let opts = [0x00, 0x01, 0x23, 0x28];
    let f = eth(0x0800, None, &ipv4(17, A, B, &opts, 0, &l4(1, 1)));
    assert_eq!(verdict(&p, &f), XDP_PASS);
    // Largest IHL (15, 40 bytes of options) with the ports right after.
    let f = eth(0x0800, None, &ipv4(17, A, B, &[1; 40], 0, &l4(1, 9000)));
    assert_eq!(verdict(&p, &f), XDP_REDIRECT);
    // Non-first fragments carry no ports; the first fragment does.
    let f = eth(0x0800, None, &ipv4(17, A, B, &[], 185, &l4(1, 9000)));
    assert_eq!(verdict(&p, &f), XDP_PASS);
    let f = eth(0x0800, None, &ipv4(17, A, B, &[], 0x2000, &l4(1, 9000)));
    assert_eq!(verdict(&p, &f), XDP_REDIRECT);
}

#[test]
fn ipv6_and_prefixes() {
    need_root!();
    let p = prog("ip6 tcp src port 22");
    let f = eth(
        0x86dd,
        None,
        &ipv6(6, "2001:db8::1", "2001:db8::2", &tcp(22, 5555)),
    );
    assert_eq!(verdict(&p, &f), XDP_REDIRECT);
    let f4 = eth(0x0800, None, &ipv4(6, A, B, &[], 0, &tcp(22, 5555)));
    assert_eq!(verdict(&p, &f4), XDP_PASS);
    let p = prog("src 2001:db8::/33 or dst 198.18.0.0/15 and udp");
    let hit = eth(
        0x86dd,
        None,
        &ipv6(17, "2001:db8:7fff::9", "::1", &l4(1, 2)),
    );
    let miss = eth(
        0x86dd,
        None,
        &ipv6(17, "2001:db8:8000::9", "::1", &l4(1, 2)),
    );
    assert_eq!(verdict(&p, &hit), XDP_REDIRECT);
    assert_eq!(verdict(&p, &miss), XDP_PASS);
    let hit4 = eth(
        0x0800,
        None,
        &ipv4(17, A, [198, 19, 255, 255], &[], 0, &l4(1, 2)),
    );
    let miss4 = eth(
        0x0800,
        None,
        &ipv4(17, A, [198, 20, 0, 1], &[], 0, &l4(1, 2)),
    );
    let tcp4 = eth(
        0x0800,
        None,
        &ipv4(6, A, [198, 19, 0, 1], &[], 0, &tcp(1, 2)),
    );
    assert_eq!(verdict(&p, &hit4), XDP_REDIRECT);
    assert_eq!(verdict(&p, &miss4), XDP_PASS);
    assert_eq!(verdict(&p, &tcp4), XDP_PASS);
    // A full /128 and a port given without protocol (udp, tcp or sctp).
    let p = prog("dst host 2001:db8::2 port 53");
    let f = eth(
        0x86dd,
        None,
        &ipv6(132, "2001:db8::1", "2001:db8::2", &l4(53, 9)),
    );
    assert_eq!(verdict(&p, &f), XDP_REDIRECT);
    let f = eth(
        0x86dd,
        None,
        &ipv6(1, "2001:db8::1", "2001:db8::2", &l4(53, 9)),
    );
    assert_eq!(verdict(&p, &f), XDP_PASS);
    let f = eth(
        0x86dd,
        None,
        &ipv6(17, "2001:db8::1", "2001:db8::3", &l4(53, 9)),
    );
    assert_eq!(verdict(&p, &f), XDP_PASS);
}

#[test]
fn vlan_and_ethertype() {
    need_root!();
    let p = prog("vlan 100 and udp dst port 9000");
    let inner = ipv4(17, A, B, &[], 0, &l4(1, 9000));
    assert_eq!(verdict(&p, &eth(0x0800, Some(100), &inner)), XDP_REDIRECT);
    assert_eq!(
        verdict(&p, &eth(0x0800, Some(0x2000 | 100), &inner)),
        XDP_REDIRECT,
        "PCP bits ignored"
    );
    assert_eq!(verdict(&p, &eth(0x0800, Some(101), &inner)), XDP_PASS);
    assert_eq!(verdict(&p, &eth(0x0800, None, &inner)), XDP_PASS);
    let tagged_short = eth(0x0800, Some(100), &[]);
    assert_eq!(verdict(&p, &tagged_short[..16]), XDP_PASS);
    // Without a vlan term, tagged and untagged frames both match.
    let p = prog("udp dst port 9000");
    assert_eq!(verdict(&p, &eth(0x0800, Some(7), &inner)), XDP_REDIRECT);
    assert_eq!(verdict(&p, &eth(0x0800, None, &inner)), XDP_REDIRECT);
    let p = prog("vlan");
    assert_eq!(verdict(&p, &eth(0x0806, Some(1), &[0; 28])), XDP_REDIRECT);
    assert_eq!(verdict(&p, &eth(0x0806, None, &[0; 28])), XDP_PASS);
    let p = prog("ether proto 0x88b5");
    assert_eq!(verdict(&p, &eth(0x88b5, None, &[1; 46])), XDP_REDIRECT);
    assert_eq!(verdict(&p, &eth(0x88b5, Some(3), &[1; 46])), XDP_REDIRECT);
    assert_eq!(verdict(&p, &udp4(9000)), XDP_PASS);
}

/// Issue 8: port rules read past the IP datagram. A frame with IPv4 total length 20 (no UDP
/// header) whose Ethernet trailer holds `04d2 2328` was redirected by `udp dst port 9000`.
#[test]
fn ports_are_never_read_past_the_ip_datagram() {
    need_root!();
    let p = prog("udp dst port 9000");
    let mut f = eth(0x0800, None, &ipv4(17, A, B, &[], 0, &[]));
    f.extend_from_slice(&[0x04, 0xd2, 0x23, 0x28]);
    f.resize(60, 0); // padded to the Ethernet minimum: all trailer
    assert_eq!(u16::from_be_bytes([f[16], f[17]]), 20, "total length 20");
    assert_eq!(verdict(&p, &f), XDP_PASS, "trailer bytes are not ports");
    let m = crate::packet::parse(&f);
    assert_eq!((m.src_port, m.dst_port, m.flags & FLAG_L4), (0, 0, 0));
    // The same bytes inside a datagram long enough for the UDP header are ports; one byte
    // short of it they are not.
    f[16..18].copy_from_slice(&28u16.to_be_bytes());
    assert_eq!(verdict(&p, &f), XDP_REDIRECT);
    f[16..18].copy_from_slice(&27u16.to_be_bytes());
    assert_eq!(verdict(&p, &f), XDP_PASS);
    // IPv6: payload length 0, the UDP header in the trailer.
    let mut f6 = eth(0x86dd, None, &ipv6(17, "2001:db8::1", "2001:db8::2", &[]));
    f6.extend_from_slice(&[0x04, 0xd2, 0x23, 0x28, 0, 8, 0, 0]);
    assert_eq!(verdict(&p, &f6), XDP_PASS);
    f6[18..20].copy_from_slice(&8u16.to_be_bytes());
    assert_eq!(verdict(&p, &f6), XDP_REDIRECT);
    // IPv4 options (IHL 6) push the UDP header past a total length that would fit it at IHL 5.
    let mut f = eth(
        0x0800,
        None,
        &ipv4(17, A, B, &[1, 1, 1, 0], 0, &l4(1234, 9000)),
    );
    assert_eq!(verdict(&p, &f), XDP_REDIRECT);
    f[16..18].copy_from_slice(&31u16.to_be_bytes()); // 24 + 7
    assert_eq!(verdict(&p, &f), XDP_PASS);
    // TCP: the whole header, data offset included, must lie inside the datagram.
    let pt = prog("tcp dst port 9000");
    let mut t = tcp(1234, 9000);
    let f = eth(0x0800, None, &ipv4(6, A, B, &[], 0, &t));
    assert_eq!(verdict(&pt, &f), XDP_REDIRECT);
    t[12] = 8 << 4; // claims 32 bytes of header, the datagram holds 24
    let f = eth(0x0800, None, &ipv4(6, A, B, &[], 0, &t));
    assert_eq!(verdict(&pt, &f), XDP_PASS);
    t[12] = 4 << 4; // below the 20-byte minimum: malformed
    let f = eth(0x0800, None, &ipv4(6, A, B, &[], 0, &t));
    assert_eq!(verdict(&pt, &f), XDP_PASS);
}

/// Issue 8: QinQ frames. The parser read two tags, the program stepped over one and then saw
/// EtherType 0x8100 instead of IP.
#[test]
fn qinq_frames_are_matched_on_the_inner_ethertype() {
    need_root!();
    let qinq = |tpids: &[u16], ids: &[u16], l3: &[u8]| {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for (t, v) in tpids.iter().zip(ids) {
            f.extend_from_slice(&t.to_be_bytes());
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        f.extend_from_slice(l3);
        f
    };
    let ip = ipv4(17, A, B, &[], 0, &l4(1234, 9000));
    let f = qinq(&[0x88a8, 0x8100], &[100, 0x2000 | 7], &ip);
    for filter in [
        "udp dst port 9000",
        "vlan 100 and udp dst port 9000",
        "vlan and ip src 198.18.0.1",
        "ip",
    ] {
        assert_eq!(verdict(&prog(filter), &f), XDP_REDIRECT, "{filter}");
    }
    // `vlan N` is the outer tag.
    assert_eq!(verdict(&prog("vlan 7"), &f), XDP_PASS);
    let m = crate::packet::parse(&f);
    assert_eq!((m.ethertype, m.vlan, m.l3_off), (0x0800, 100, 22));
    assert_eq!((m.src_port, m.dst_port), (1234, 9000));
    // Two 802.1Q tags are QinQ too.
    let f = qinq(&[0x8100, 0x8100], &[5, 6], &ip);
    assert_eq!(verdict(&prog("vlan 5 udp dst port 9000"), &f), XDP_REDIRECT);
    // A third tag is not descended into: not IP, but still tagged.
    let f = qinq(&[0x88a8, 0x8100, 0x8100], &[100, 7, 8], &ip);
    assert_eq!(verdict(&prog("udp dst port 9000 or ip"), &f), XDP_PASS);
    assert_eq!(verdict(&prog("vlan 100"), &f), XDP_REDIRECT);
    assert_eq!(crate::packet::parse(&f).ethertype, 0x8100);
    // A second tag cut short: no rule matches, not even `all`.
    let f = qinq(&[0x88a8, 0x8100], &[100, 7], &[]);
    assert_eq!(verdict(&prog("all"), &f[..20]), XDP_PASS);
    assert_eq!(verdict(&prog("all"), &f[..22]), XDP_REDIRECT);
}

/// Issue 8: IPv6 extension headers are walked as the parser walks them (up to eight).
#[test]
fn ipv6_extension_headers_are_walked() {
    need_root!();
    let v6 = |next: u8, chain: &[u8]| {
        eth(
            0x86dd,
            None,
            &ipv6(next, "2001:db8::1", "2001:db8::2", chain),
        )
    };
    let mut chain = ext_hdr(43, 0); // hop-by-hop → routing
    chain.extend(ext_hdr(44, 2)); // routing (24 bytes) → fragment
    chain.extend(frag_hdr(60, 0, true)); // first fragment → destination options
    chain.extend(ext_hdr(17, 1)); // destination options (16 bytes) → UDP
    chain.extend(l4(1234, 9000));
    let f = v6(0, &chain);
    for filter in ["udp dst port 9000", "ip6 udp", "port 1234", "proto 17"] {
        assert_eq!(verdict(&prog(filter), &f), XDP_REDIRECT, "{filter}");
    }
    assert_eq!(verdict(&prog("proto 0"), &f), XDP_PASS);
    let m = crate::packet::parse(&f);
    assert_eq!((m.proto, m.src_port, m.dst_port), (17, 1234, 9000));
    // A later fragment names UDP but has no ports.
    let mut later = frag_hdr(17, 185, false);
    later.extend(l4(1234, 9000));
    let f = v6(44, &later);
    assert_eq!(verdict(&prog("udp dst port 9000"), &f), XDP_PASS);
    assert_eq!(verdict(&prog("udp"), &f), XDP_REDIRECT);
    // Eight extension headers are walked; a ninth is the protocol.
    let deep = |n: usize| {
        let mut c = Vec::new();
        for i in 0..n {
            c.extend(ext_hdr(if i + 1 == n { 17 } else { 60 }, 0));
        }
        c.extend(l4(1234, 9000));
        v6(60, &c)
    };
    assert_eq!(verdict(&prog("udp dst port 9000"), &deep(8)), XDP_REDIRECT);
    assert_eq!(verdict(&prog("udp dst port 9000"), &deep(9)), XDP_PASS);
    assert_eq!(verdict(&prog("proto 60"), &deep(9)), XDP_REDIRECT);
    // An extension header reaching past the payload length stops the walk there.
    let mut f = v6(0, &chain);
    f[18..20].copy_from_slice(&12u16.to_be_bytes());
    assert_eq!(verdict(&prog("udp"), &f), XDP_PASS);
    assert_eq!(verdict(&prog("ip6 proto 43"), &f), XDP_REDIRECT);
}

#[test]
fn frags_variant_loads_and_matches_the_same() {
    need_root!();
    let rules = parse_filter("udp dst port 9000-9010").unwrap();
    let p = XdpProgram::new(
        &rules,
        ProgramOptions {
            frags: true,
            queues: 4,
        },
    )
    .unwrap();
    assert!(p.frags());
    assert_eq!(p.info().name, "kbypass_filt_mb");
    assert_eq!(verdict(&p, &udp4(9001)), XDP_REDIRECT);
    assert_eq!(verdict(&p, &udp4(1)), XDP_PASS);
    let d = XdpProgram::new(
        &[],
        ProgramOptions {
            frags: true,
            queues: 4,
        },
    )
    .unwrap();
    assert_eq!(d.info().name, "kbypass_xsk_mb");
}

#[test]
fn lookup_first_form_behaves_like_flags_default() {
    need_root!();
    // The pre-5.3 form also runs on new kernels: check it gives the same verdicts.
    let rules = parse_filter("udp dst port 9000").unwrap();
    let map = MapFd::xskmap(1, "kbx_t").unwrap();
    let run = |insns: &[crate::sys::bpf::BpfInsn], frame: &[u8]| {
        let p = ProgFd::load(&ProgLoad {
            prog_type: BPF_PROG_TYPE_XDP,
            insns,
            name: "kbx_lookup",
            license: "GPL",
            expected_attach_type: 0,
            flags: 0,
        })
        .unwrap();
        p.test_run(TestRun {
            data: frame,
            repeat: 1,
            ..Default::default()
        })
        .unwrap()
        .retval
    };
    let filt = filter_program(&rules, map.raw(), RedirectForm::LookupFirst).unwrap();
    let dflt = default_program(map.raw(), RedirectForm::LookupFirst).unwrap();
    // Empty map: everything passes.
    assert_eq!(run(&filt, &udp4(9000)), XDP_PASS);
    assert_eq!(run(&dflt, &udp4(9000)), XDP_PASS);
    let sock = XskFd::new().unwrap();
    map.set_xsk(0, sock.raw()).unwrap();
    assert_eq!(run(&filt, &udp4(9000)), XDP_REDIRECT);
    assert_eq!(run(&filt, &udp4(9001)), XDP_PASS);
    assert_eq!(run(&dflt, &udp4(9001)), XDP_REDIRECT);
}

#[test]
fn match_all_rule_makes_later_rules_moot() {
    need_root!();
    // Regression: code after an unconditional rule is unreachable and was rejected.
    let p = prog("all or udp dst port 9000");
    assert_eq!(verdict(&p, &eth(0x0806, None, &[0; 28])), XDP_REDIRECT);
    let p = prog("udp dst port 9000 or all");
    assert_eq!(verdict(&p, &eth(0x0806, None, &[0; 28])), XDP_REDIRECT);
    assert_eq!(verdict(&p, &[0u8; 14]), XDP_REDIRECT);
}

#[test]
fn many_rules_still_verify() {
    need_root!();
    let text: Vec<String> = (0..64)
        .map(|i| format!("udp dst port {} or ip6 src 2001:db8:{i:x}::/48", 1000 + i))
        .collect();
    let p = prog(&text.join(" or "));
    assert_eq!(verdict(&p, &udp4(1063)), XDP_REDIRECT);
    assert_eq!(verdict(&p, &udp4(1064)), XDP_PASS);
}

#[test]
fn socket_slots_are_bounded() {
    need_root!();
    let p = XdpProgram::new(
        &[],
        ProgramOptions {
            frags: false,
            queues: 2,
        },
    )
    .unwrap();
    let s = XskFd::new().unwrap();
    p.set_socket(1, s.raw()).unwrap();
    p.clear_socket(1).unwrap();
    assert!(matches!(
        p.set_socket(2, s.raw()),
        Err(Error::InvalidArgument(_))
    ));
    assert!(XdpProgram::new(
        &[],
        ProgramOptions {
            frags: false,
            queues: 0
        }
    )
    .is_err());
    assert!(matches!(
        p.test_run(&[0; 10], 1),
        Err(Error::InvalidArgument(_))
    ));
}

fn foreign_prog(name: &str) -> ProgFd {
    let insns = [
        crate::sys::bpf::BpfInsn {
            code: 0xb7,
            regs: 0,
            off: 0,
            imm: 2,
        },
        crate::sys::bpf::BpfInsn {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    ProgFd::load(&ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insns: &insns,
        name,
        license: "GPL",
        expected_attach_type: 0,
        flags: 0,
    })
    .unwrap()
}

#[test]
fn attach_detach_on_veth_in_netns() {
    need_root!();
    let ns = VethPair::with(VethOptions {
        one_namespace: true,
        ..Default::default()
    })
    .expect("create netns + veth");
    ns.in_a(|| {
        let p = prog("udp dst port 9000");
        let idx = if_nametoindex("veth0").unwrap();
        for (mode, want) in [
            (AttachMode::Native, XdpMode::Native),
            (AttachMode::Generic, XdpMode::Generic),
            (AttachMode::Auto, XdpMode::Native),
        ] {
            let att = attach(&p, "veth0", mode, false).unwrap();
            assert_eq!(att.mode(), want, "{mode:?}");
            assert_eq!(att.via(), "bpf_link");
            let q = query("veth0").unwrap();
            assert_eq!(q.len(), 1);
            assert_eq!(q[0].attached.prog_id, p.info().id);
            assert!(q[0].is_ours() && q[0].link_id.is_some());
            drop(att);
            assert!(
                xdp_query(idx).unwrap().programs.is_empty(),
                "{mode:?}: detached on drop"
            );
        }
        // A second kbypass program while a live link holds the first: refused, naming it.
        let att = attach(&p, "veth0", AttachMode::Native, false).unwrap();
        let other = prog("");
        let e = attach(&other, "veth0", AttachMode::Native, false).unwrap_err();
        let s = e.to_string();
        assert_eq!(e.errno(), Some(libc::EBUSY), "{s}");
        assert!(
            s.contains("kbypass_filter") && s.contains(&format!("id {}", p.info().id)),
            "{s}"
        );
        // force takes it over; the first attachment's Drop is then harmless.
        let mut att2 = attach(&other, "veth0", AttachMode::Native, true).unwrap();
        assert!(att2.notes().iter().any(|n| n.contains("replaced")));
        assert_eq!(
            xdp_query(idx).unwrap().first().unwrap().prog_id,
            other.info().id
        );
        drop(att);
        assert_eq!(
            xdp_query(idx).unwrap().first().unwrap().prog_id,
            other.info().id
        );
        att2.detach().unwrap();
        assert!(!att2.is_attached());
        assert!(xdp_query(idx).unwrap().programs.is_empty());
        // Missing interface: NotFound.
        assert!(matches!(
            attach(&p, "kbx-none", AttachMode::Auto, false),
            Err(Error::NotFound(_))
        ));
    });
}

#[test]
fn auto_falls_back_to_generic_where_native_is_missing() {
    need_root!();
    let ns = VethPair::with(VethOptions {
        one_namespace: true,
        ..Default::default()
    })
    .expect("create netns + veth");
    ns.in_a(|| {
        // Loopback has no native XDP.
        let p = prog("");
        let e = attach(&p, "lo", AttachMode::Native, false).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EOPNOTSUPP), "{e}");
        assert!(e.to_string().contains("mode='generic' or 'auto'"), "{e}");
        let att = attach(&p, "lo", AttachMode::Auto, false).unwrap();
        assert_eq!(att.mode(), XdpMode::Generic);
        assert!(
            att.notes().iter().any(|n| n.contains("native mode failed")),
            "{:?}",
            att.notes()
        );
        drop(att);
        assert!(xdp_query(1).unwrap().programs.is_empty());
    });
}

#[test]
fn jumbo_mtu_on_veth_needs_the_frags_program() {
    need_root!();
    let ns = VethPair::with(VethOptions {
        one_namespace: true,
        ..Default::default()
    })
    .expect("create netns + veth");
    for dev in ["veth0", "veth1"] {
        let ok = std::process::Command::new("ip")
            .args(["-n", &ns.a, "link", "set", dev, "mtu", "9000"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "set mtu 9000 on {dev}");
    }
    ns.in_a(|| {
        let plain = prog("udp");
        let e = attach(&plain, "veth1", AttachMode::Native, false).unwrap_err();
        assert_eq!(e.errno(), Some(libc::ERANGE), "{e}");
        assert!(e.to_string().contains("frags-capable"), "{e}");
        let rules = parse_filter("udp").unwrap();
        let mb = XdpProgram::new(
            &rules,
            ProgramOptions {
                frags: true,
                queues: 4,
            },
        )
        .unwrap();
        let att = attach(&mb, "veth1", AttachMode::Native, false).unwrap();
        assert_eq!(att.mode(), XdpMode::Native);
    });
}

#[test]
fn refuse_foreign_program_unless_forced() {
    need_root!();
    let ns = VethPair::with(VethOptions {
        one_namespace: true,
        ..Default::default()
    })
    .expect("create netns + veth");
    ns.in_a(|| {
        let idx = if_nametoindex("veth1").unwrap();
        let foreign = foreign_prog("not_ours");
        let finfo = foreign.info().unwrap();
        xdp_set(idx, foreign.raw(), XDP_FLAGS_SKB_MODE, None).unwrap();
        assert_eq!(
            xdp_query(idx).unwrap().first().unwrap().mode,
            XdpMode::Generic
        );
        let p = prog("");
        let e = attach(&p, "veth1", AttachMode::Auto, false).unwrap_err();
        let s = e.to_string();
        assert_eq!(e.errno(), Some(libc::EEXIST), "{s}");
        assert!(
            s.contains("not_ours")
                && s.contains(&finfo.tag)
                && s.contains(&format!("id {}", finfo.id)),
            "{s}"
        );
        assert!(s.contains("force=True"), "{s}");
        // Still there, untouched.
        assert_eq!(xdp_query(idx).unwrap().first().unwrap().prog_id, finfo.id);
        let att = attach(&p, "veth1", AttachMode::Auto, true).unwrap();
        assert_eq!(att.mode(), XdpMode::Native);
        drop(att);
        assert!(xdp_query(idx).unwrap().programs.is_empty());
    });
}

#[test]
fn stale_kbypass_program_is_replaced_without_force() {
    need_root!();
    let ns = VethPair::with(VethOptions {
        one_namespace: true,
        ..Default::default()
    })
    .expect("create netns + veth");
    ns.in_a(|| {
        let idx = if_nametoindex("veth0").unwrap();
        // A kbypass program left attached via netlink by a process that is gone.
        {
            let stale = foreign_prog("kbypass_xsk");
            xdp_set(
                idx,
                stale.raw(),
                crate::sys::netlink::XDP_FLAGS_DRV_MODE,
                None,
            )
            .unwrap();
        }
        assert_eq!(xdp_query(idx).unwrap().programs.len(), 1);
        let p = prog("");
        let att = attach(&p, "veth0", AttachMode::Native, false).unwrap();
        assert!(
            att.notes().iter().any(|n| n.contains("replaced")),
            "{:?}",
            att.notes()
        );
        drop(att);
        assert!(xdp_query(idx).unwrap().programs.is_empty());
    });
}

#[test]
fn netlink_attach_query_detach() {
    need_root!();
    let ns = VethPair::with(VethOptions {
        one_namespace: true,
        ..Default::default()
    })
    .expect("create netns + veth");
    ns.in_a(|| {
        let idx = if_nametoindex("veth0").unwrap();
        let a = foreign_prog("kbx_nl_a");
        let b = foreign_prog("kbx_nl_b");
        let flags = crate::sys::netlink::XDP_FLAGS_DRV_MODE;
        xdp_set(
            idx,
            a.raw(),
            flags | crate::sys::netlink::XDP_FLAGS_UPDATE_IF_NOEXIST,
            None,
        )
        .unwrap();
        let q = xdp_query(idx).unwrap();
        assert_eq!(q.first().unwrap().prog_id, a.info().unwrap().id);
        assert_eq!(q.first().unwrap().mode, XdpMode::Native);
        // UPDATE_IF_NOEXIST refuses to replace; the kernel's extack text is in the error.
        let e = xdp_set(
            idx,
            b.raw(),
            flags | crate::sys::netlink::XDP_FLAGS_UPDATE_IF_NOEXIST,
            None,
        )
        .unwrap_err();
        assert_eq!(e.errno(), Some(libc::EBUSY), "{e}");
        // Replace only if `a` is there (IFLA_XDP_EXPECTED_FD), then detach expecting `b`.
        xdp_set(idx, b.raw(), flags, Some(a.raw())).unwrap();
        assert_eq!(
            xdp_query(idx).unwrap().first().unwrap().prog_id,
            b.info().unwrap().id
        );
        assert!(xdp_set(idx, -1, flags, Some(a.raw())).is_err());
        xdp_set(idx, -1, flags, Some(b.raw())).unwrap();
        assert!(xdp_query(idx).unwrap().programs.is_empty());
    });
}

#[test]
fn probe_reports_everything_here() {
    need_root!();
    let r = probe();
    assert!(r.af_xdp_socket.ok, "{:?}", r.af_xdp_socket);
    assert!(r.prog_load.ok, "{:?}", r.prog_load);
    assert_eq!(r.redirect_form, Some(RedirectForm::FlagsDefault));
    assert!(r.frags.ok, "{:?}", r.frags);
    assert!(r.xdp_link.ok, "{:?}", r.xdp_link);
    assert!(r.live_frames.ok, "{:?}", r.live_frames);
    assert!(!r.kernel.is_empty());
}

/// Child role of `link_detaches_when_owner_is_killed`: attach in the given namespace, say so,
/// and wait to be killed.
#[test]
#[ignore = "helper process started by link_detaches_when_owner_is_killed"]
fn link_owner_child() {
    let Ok(path) = std::env::var("KBX_CHILD_NETNS") else {
        return;
    };
    crate::sys::testutil::enter_netns(&path);
    let p = prog("");
    let _att = attach(&p, "veth0", AttachMode::Native, false).unwrap();
    println!("KBX-READY {}", p.info().id);
    std::thread::sleep(std::time::Duration::from_secs(60));
}

#[test]
fn link_detaches_when_owner_is_killed() {
    need_root!();
    use std::io::BufRead;
    let ns = VethPair::with(VethOptions {
        one_namespace: true,
        ..Default::default()
    })
    .expect("create netns + veth");
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "xdp::tests::link_owner_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KBX_CHILD_NETNS", format!("/var/run/netns/{}", ns.a))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut child = KillOnDrop(child);
    let mut lines = std::io::BufReader::new(stdout).lines();
    let id: u32 = loop {
        let line = lines
            .next()
            .expect("child exited before attaching")
            .unwrap();
        // libtest prints the test name on the same line, before our output.
        if let Some(at) = line.find("KBX-READY ") {
            break line[at + 10..].trim().parse().unwrap();
        }
    };
    let attached = ns.in_a(move || xdp_query(if_nametoindex("veth0").unwrap()).unwrap());
    assert_eq!(attached.first().map(|a| a.prog_id), Some(id));
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    let gone = ns.in_a(|| {
        let idx = if_nametoindex("veth0").unwrap();
        // The link is released with the dead process's files; allow the kernel a moment.
        for _ in 0..100 {
            if xdp_query(idx).unwrap().programs.is_empty() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    });
    assert!(
        gone,
        "the interface still has an XDP program after its owner was SIGKILLed"
    );
}

/// XDP program counting frames in slot 0 of an ARRAY map, then dropping them.
fn counting_drop_prog(map: &MapFd) -> ProgFd {
    use super::asm::{Asm, R0, R1};
    let mut a = Asm::new();
    let out = a.label();
    a.lookup_first(map.raw(), out)
        .mov64_imm(R1, 1)
        .atomic_add64(R0, R1, 0)
        .bind(out)
        .mov64_imm(R0, crate::sys::bpf::XDP_DROP as i32)
        .exit();
    let insns = a.finish().unwrap();
    ProgFd::load(&ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insns: &insns,
        name: "kbx_count",
        license: "GPL",
        expected_attach_type: 0,
        flags: 0,
    })
    .unwrap()
}

#[test]
fn live_frames_generator_reaches_the_peer() {
    need_root!();
    let ns = VethPair::with(VethOptions {
        one_namespace: true,
        ..Default::default()
    })
    .expect("create netns + veth");
    let (sent, got, secs) = ns.in_a(|| {
        let counter =
            MapFd::create(crate::sys::bpf::BPF_MAP_TYPE_ARRAY, 4, 8, 1, 0, "kbx_cnt").unwrap();
        let sink = counting_drop_prog(&counter);
        let rx = if_nametoindex("veth1").unwrap();
        let tx = if_nametoindex("veth0").unwrap();
        // Native XDP on the receiving veth end (veth drops XDP-sent frames otherwise).
        let _link =
            crate::sys::bpf::LinkFd::create_xdp(&sink, rx, crate::sys::netlink::XDP_FLAGS_DRV_MODE)
                .unwrap();
        let xdp_tx = foreign_prog_returning("kbx_gen_tx", crate::sys::bpf::XDP_TX);
        // The sending end's RX queue must have XDP rxq info registered: give it a program.
        let pass = foreign_prog_returning("kbx_pass", XDP_PASS);
        let _tx_link =
            crate::sys::bpf::LinkFd::create_xdp(&pass, tx, crate::sys::netlink::XDP_FLAGS_DRV_MODE)
                .unwrap();
        let frame = eth(0x0800, None, &ipv4(17, A, B, &[], 0, &l4(1, 9000)));
        let repeat = std::env::var("KBX_LIVE_REPEAT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let t0 = std::time::Instant::now();
        let r = xdp_tx.run_live(&frame, repeat, 0, Some((tx, 0))).unwrap();
        let secs = t0.elapsed().as_secs_f64();
        assert_eq!(r.retval, 0, "live mode reports no per-frame verdict");
        let mut v = [0u8; 8];
        counter.lookup(&0u32.to_ne_bytes(), &mut v).unwrap();
        (repeat, u64::from_ne_bytes(v), secs)
    });
    eprintln!(
        "live frames: {sent} sent, {got} counted by the peer in {secs:.3} s = {:.2} Mpps",
        got as f64 / secs / 1e6
    );
    assert!(
        got > u64::from(sent) / 2,
        "only {got} of {sent} frames arrived"
    );
    // The kernel's own IPv6 neighbour/router solicitations on the fresh link may add a few.
    assert!(got <= u64::from(sent) + 16, "{got} counted for {sent} sent");
}

fn foreign_prog_returning(name: &str, verdict: u32) -> ProgFd {
    let insns = [
        crate::sys::bpf::BpfInsn {
            code: 0xb7,
            regs: 0,
            off: 0,
            imm: verdict as i32,
        },
        crate::sys::bpf::BpfInsn {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    ProgFd::load(&ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insns: &insns,
        name,
        license: "GPL",
        expected_attach_type: 0,
        flags: 0,
    })
    .unwrap()
}

/// The verifier's "processed N insns" for `filter` (its work, against a limit of 1,000,000).
fn verifier_processed(filter: &str) -> (usize, usize, String) {
    let rules = parse_filter(filter).unwrap();
    let map = MapFd::xskmap(1, "kbx_t").unwrap();
    let insns = filter_program(&rules, map.raw(), RedirectForm::FlagsDefault).unwrap();
    let (_p, log) = ProgFd::load_with_stats(&ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insns: &insns,
        name: "kbx_stats",
        license: "GPL",
        expected_attach_type: 0,
        flags: 0,
    })
    .unwrap();
    let n = log
        .split("processed ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no statistics in the verifier log: {log}"));
    (insns.len(), n, log.trim().to_string())
}

/// The header walk (eight IPv6 extension headers unrolled) must not make the verifier's work
/// explode: it is what loading a filter costs, and older kernels prune less.
#[test]
fn verifier_work_stays_far_from_its_limit() {
    need_root!();
    let many: Vec<String> = (0..64)
        .map(|i| format!("udp dst port {} or ip6 src 2001:db8:{i:x}::/48", 1000 + i))
        .collect();
    for (filter, budget) in [
        ("udp dst port 9000".to_string(), 20_000),
        ("ip src 198.18.0.0/15 and udp".to_string(), 20_000),
        (
            "vlan 100 or ip6 proto 17 or tcp src port 22".to_string(),
            20_000,
        ),
        (many.join(" or "), 250_000),
    ] {
        let (insns, processed, log) = verifier_processed(&filter);
        eprintln!("{insns} insns; {log}; filter {filter:.60}");
        assert!(
            processed < budget,
            "the verifier processed {processed} insns for `{filter:.60}` (budget {budget})"
        );
    }
}
