//! Differential fuzz of the filter semantics: the kernel against the Rust matcher and parser.
//!
//! Each round draws a random rule set from the filter grammar and loads its XDP program; then
//! frames built *near* the rules (their addresses, ports, VLAN ids and protocols, one off at
//! the edges) are mutated — cut at every layer, IP lengths that lie in both directions, IPv4
//! options, VLAN and QinQ tags, IPv6 extension header chains, fragments, trailers that hold
//! port numbers, flipped bytes — and every frame must get:
//!
//! 1. the same verdict from the kernel (`BPF_PROG_TEST_RUN` of the compiled program: redirect
//!    or pass) as [`super::rules::matches()`] on [`crate::packet::parse()`];
//! 2. the same fields from the program's header walk (a probe program: the walk of
//!    [`super::program::emit_headers`] followed by a dump of its registers into a map) as the
//!    parser: EtherType, outer VLAN, IP version, protocol, whether the ports exist, the ports,
//!    the L3 and L4 offsets.
//!
//! A mismatch is shrunk (cut and zeroed while it still disagrees) and reported with the
//! filter, the seed and the frame in hex. As root, `cargo test -p kbypass-core` runs a bounded,
//! fixed-seed number of cases; longer runs:
//!
//! ```text
//! KBYPASS_FUZZ_CASES=1000000 cargo test -p kbypass-core --release --lib -- xdp::fuzz --nocapture
//! KBYPASS_FUZZ_SEED=12345 ...   # another sequence (the seed of a failure is in its report)
//! ```

use std::fmt::Write as _;
use std::time::Instant;

use super::asm::{helper, Alu, Asm, Cond, Size, R0, R1, R10, R2, R3};
use super::program::{emit_headers, hdr, HeaderWalk, L4_OK, UNTAGGED};
use super::rules::{format_filter, matches, parse_filter, IpVersion, Rule, Vlan};
use super::{ProgramOptions, XdpProgram};
use crate::packet::parse::{
    parse, PacketMeta, FLAG_FRAGMENT, FLAG_IP_OPTIONS, FLAG_L4, FLAG_MALFORMED, FLAG_TRUNCATED,
    FLAG_VLAN,
};
use crate::sys::bpf::{
    MapFd, ProgFd, ProgLoad, TestRun, BPF_MAP_TYPE_ARRAY, BPF_PROG_TYPE_XDP, XDP_PASS, XDP_REDIRECT,
};
use crate::sys::testutil::is_root;

/// Cases in the default (CI) run.
const DEFAULT_CASES: u64 = 20_000;
/// Frames per rule set (each rule set costs a program load).
const FRAMES_PER_RULE_SET: u64 = 200;
/// Largest frame: what `BPF_PROG_TEST_RUN` takes for XDP with 4 KiB pages (4096 - 256
/// headroom - 320 `skb_shared_info`).
pub(super) const MAX_FRAME: usize = 3520;

/// xorshift64*: small, fast, and the same sequence for the same seed everywhere.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn upto(&mut self, n: usize) -> usize {
        self.below(n as u64 + 1) as usize
    }
    pub(super) fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    pub(super) fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// The values rules and frames are drawn from, so that they meet often.
pub(super) const V4: [[u8; 4]; 5] = [
    [198, 18, 0, 1],
    [198, 19, 255, 254],
    [198, 18, 128, 0],
    [10, 0, 0, 1],
    [0, 0, 0, 0],
];
pub(super) const V6: [[u16; 8]; 4] = [
    [0x2001, 0xdb8, 0, 0, 0, 0, 0, 1],
    [0x2001, 0xdb8, 0x8000, 0, 0, 0, 0, 5],
    [0xfe80, 0, 0, 0, 0, 0, 0, 1],
    [0, 0, 0, 0, 0, 0, 0, 0],
];
pub(super) const PORTS: [u16; 8] = [0, 1, 22, 53, 1234, 9000, 9001, 65535];
const VLANS: [u16; 5] = [0, 1, 5, 100, 4095];
/// Protocols for `proto N`: the usual ones, the extension headers (where a walk can stop) and
/// a few others.
pub(super) const PROTOS: [u8; 13] = [0, 1, 6, 17, 43, 44, 47, 50, 51, 58, 60, 132, 255];

pub(super) fn v6_addr(a: [u16; 8]) -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::new(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7])
}

/// One random rule as filter text (it may be rejected by the grammar: conflicts are part of
/// what is generated).
fn rule_text(g: &mut Rng) -> String {
    let mut t: Vec<String> = Vec::new();
    if g.chance(5) {
        return "all".into();
    }
    if g.chance(20) {
        t.push(if g.chance(40) {
            "vlan".into()
        } else {
            format!("vlan {}", g.pick(&VLANS))
        });
    }
    if g.chance(10) {
        t.push(format!(
            "ether proto {}",
            g.pick(&["arp", "0x88b5", "0x0806", "ip", "ip6", "0x8100", "0x9000"])
        ));
        return t.join(" ");
    }
    let v6 = g.chance(40);
    if g.chance(45) {
        t.push(g.pick(&["ip", "ip4", "ip6"]).into());
    }
    match g.below(10) {
        0..=4 => t.push(g.pick(&["udp", "tcp", "sctp"]).into()),
        5 => t.push(if v6 { "icmp6" } else { "icmp" }.into()),
        6 => t.push(format!("proto {}", g.pick(&PROTOS))),
        _ => {}
    }
    for dir in ["src", "dst"] {
        if g.chance(25) {
            let kw = g.pick(&["", "host ", "net "]);
            let p = if v6 {
                format!(
                    "{}/{}",
                    v6_addr(g.pick(&V6)),
                    g.pick(&[0, 16, 33, 64, 127, 128])
                )
            } else {
                let a = g.pick(&V4);
                format!(
                    "{}.{}.{}.{}/{}",
                    a[0],
                    a[1],
                    a[2],
                    a[3],
                    g.pick(&[0, 8, 15, 16, 17, 31, 32])
                )
            };
            t.push(format!("{dir} {kw}{p}"));
        }
    }
    for dir in ["src ", "dst ", ""] {
        if g.chance(if dir.is_empty() { 10 } else { 30 }) {
            let lo = g.pick(&PORTS);
            let r = match g.below(3) {
                0 => format!("{lo}"),
                1 => format!("{lo}-{}", lo.saturating_add(g.pick(&[1, 8, 1000]))),
                _ => format!("{lo}-{lo}"),
            };
            t.push(format!("{dir}port {r}"));
        }
    }
    if t.is_empty() {
        t.push("all".into());
    }
    let sep = if g.chance(50) { " " } else { " and " };
    t.join(sep)
}

/// A rule set of 1..=4 rules that the grammar accepts.
fn rule_set(g: &mut Rng) -> (String, Vec<Rule>) {
    loop {
        let n = 1 + g.below(4);
        let texts: Vec<String> = (0..n).map(|_| rule_text(g)).collect();
        let sep = g.pick(&[" or ", ", ", "; "]);
        let text = texts.join(sep);
        if let Ok(rules) = parse_filter(&text) {
            return (text, rules);
        }
    }
}

/// A value inside or just outside a port range.
fn port_near(g: &mut Rng, r: Option<(u16, u16)>) -> u16 {
    match r {
        Some((lo, hi)) if g.chance(85) => match g.below(5) {
            0 => lo,
            1 => hi,
            2 => lo.wrapping_sub(1),
            3 => hi.wrapping_add(1),
            _ => lo + (g.below(u64::from(hi - lo) + 1) as u16),
        },
        _ => g.pick(&PORTS),
    }
}

/// An address inside the rule's prefix, or one bit off at its edge.
fn v4_near(g: &mut Rng, p: Option<super::Prefix>) -> [u8; 4] {
    match p.map(|p| (p.addr, p.len)) {
        Some((std::net::IpAddr::V4(a), len)) if g.chance(85) => {
            let mut x = u32::from(a);
            if len < 32 {
                x |= (g.next() as u32) & (u32::MAX >> len);
            }
            if len > 0 && g.chance(25) {
                x ^= 1 << (32 - u32::from(len));
            }
            x.to_be_bytes()
        }
        _ => g.pick(&V4),
    }
}

fn v6_near(g: &mut Rng, p: Option<super::Prefix>) -> [u8; 16] {
    match p.map(|p| (p.addr, p.len)) {
        Some((std::net::IpAddr::V6(a), len)) if g.chance(85) => {
            let mut x = u128::from(a);
            if len < 128 {
                let r = (u128::from(g.next()) << 64) | u128::from(g.next());
                x |= r & (u128::MAX >> len);
            }
            if len > 0 && g.chance(25) {
                x ^= 1 << (128 - u32::from(len));
            }
            x.to_be_bytes()
        }
        _ => v6_addr(g.pick(&V6)).octets(),
    }
}

/// Where the builder put things, for the mutations.
pub(super) struct Built {
    pub(super) frame: Vec<u8>,
    /// Offset of the IP header, when there is one.
    pub(super) l3: Option<usize>,
    /// IP version of that header.
    pub(super) ip: u8,
    /// Offsets where headers start (cut points worth trying).
    marks: Vec<usize>,
}

fn l4_header(g: &mut Rng, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    // TCP data offset: mostly 5, sometimes with options, sometimes malformed (< 5).
    let doff: u8 = match g.below(10) {
        0 => g.below(5) as u8,
        1..=2 => 6 + g.below(10) as u8,
        _ => 5,
    };
    let len = match proto {
        17 => 8,
        132 => 12,
        6 => usize::from(doff.max(5)) * 4,
        _ => 8,
    };
    let mut h: Vec<u8> = (0..len).map(|_| g.byte()).collect();
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    if proto == 6 {
        h[12] = (doff << 4) | (h[12] & 0x0f);
    }
    h
}

/// A frame near `r` (or near nothing in particular when `r` is None).
pub(super) fn build(g: &mut Rng, r: Option<&Rule>) -> Built {
    let mut f: Vec<u8> = (0..12).map(|_| g.byte()).collect();
    let mut marks = vec![12];
    let tags = match g.below(100) {
        0..=54 => 0,
        55..=79 => 1,
        80..=94 => 2,
        _ => 3,
    };
    let want_vlan = r.and_then(|r| match r.vlan {
        Vlan::Id(v) => Some(v),
        _ => None,
    });
    for i in 0..tags {
        f.extend_from_slice(&g.pick(&[0x8100u16, 0x88a8]).to_be_bytes());
        let id = match (i, want_vlan) {
            (0, Some(v)) if g.chance(80) => v,
            _ => g.pick(&VLANS),
        };
        f.extend_from_slice(&(id | ((g.below(16) as u16) << 12)).to_be_bytes());
        marks.push(f.len());
    }
    let ver = r.and_then(|r| {
        let v = r.versions();
        (!v.is_empty()).then(|| v[g.below(v.len() as u64) as usize])
    });
    let ethertype = match (r.and_then(|r| r.ethertype), ver) {
        (Some(e), _) if g.chance(85) => e,
        (_, Some(IpVersion::V4)) if g.chance(90) => 0x0800,
        (_, Some(IpVersion::V6)) if g.chance(90) => 0x86dd,
        _ => g.pick(&[
            0x0800, 0x86dd, 0x0800, 0x86dd, 0x0806, 0x88b5, 0x8100, 0x9000,
        ]),
    };
    f.extend_from_slice(&ethertype.to_be_bytes());
    let l3 = f.len();
    marks.push(l3);
    let proto = match r.and_then(|r| r.proto) {
        Some(p) if g.chance(85) => p,
        _ if r.is_some_and(|r| r.sport.is_some() || r.dport.is_some()) && g.chance(80) => {
            g.pick(&[17, 6, 132])
        }
        _ => g.pick(&[17, 17, 6, 6, 132, 1, 58, 47, 0, 60, 44]),
    };
    let sport = port_near(g, r.and_then(|r| r.sport));
    let dport = port_near(g, r.and_then(|r| r.dport));
    let payload: Vec<u8> = (0..g.upto(40)).map(|_| g.byte()).collect();
    let (src, dst) = (r.and_then(|r| r.src), r.and_then(|r| r.dst));
    let ip = match ethertype {
        0x0800 => {
            let opts = if g.chance(25) { g.upto(10) * 4 } else { 0 };
            let ihl = 20 + opts;
            let mut h = vec![0u8; ihl];
            h[0] = 0x40 | (ihl / 4) as u8;
            h[1] = g.byte();
            h[4] = g.byte();
            h[5] = g.byte();
            let frag: u16 = match g.below(10) {
                0 => 0x2000,                                // first fragment, MF
                1 => 1 + g.below(0x1fff) as u16,            // a later one
                2 => 0x2000 | (1 + g.below(0x1fff) as u16), // a middle one
                3 => 0x4000,                                // DF
                _ => 0,
            };
            h[6..8].copy_from_slice(&frag.to_be_bytes());
            h[8] = 64;
            h[9] = proto;
            h[12..16].copy_from_slice(&v4_near(g, src));
            h[16..20].copy_from_slice(&v4_near(g, dst));
            for b in &mut h[20..] {
                let r = g.byte();
                *b = g.pick(&[0, 1, r]);
            }
            let l4 = l4_header(g, proto, sport, dport);
            let total = ihl + l4.len() + payload.len();
            h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            f.extend(h);
            marks.push(f.len());
            f.extend(l4);
            4
        }
        0x86dd => {
            let mut h = vec![0u8; 40];
            h[0] = 0x60 | (g.byte() & 0x0f);
            h[8..24].copy_from_slice(&v6_near(g, src));
            h[24..40].copy_from_slice(&v6_near(g, dst));
            h[7] = 64;
            let n_ext = match g.below(10) {
                0..=3 => 0,
                4..=7 => 1 + g.below(3) as usize,
                _ => 4 + g.below(7) as usize, // up to 10: past the walk's 8
            };
            let mut chain: Vec<u8> = Vec::new();
            let mut ext_marks = Vec::new();
            let mut next_of_prev = 6usize; // index of the next-header byte (in h, then chain)
            let mut in_chain = false;
            for _ in 0..n_ext {
                let t: u8 = g.pick(&[0, 43, 60, 44, 60]);
                let at = chain.len();
                if in_chain {
                    chain[next_of_prev] = t;
                } else {
                    h[6] = t;
                }
                if t == 44 {
                    let off: u16 = if g.chance(25) {
                        1 + g.below(0x1fff) as u16
                    } else {
                        0
                    };
                    let m = u16::from(g.chance(50));
                    chain.extend([0, 0]);
                    chain.extend(((off << 3) | m).to_be_bytes());
                    chain.extend([g.byte(), g.byte(), g.byte(), g.byte()]);
                } else {
                    let budget = (MAX_FRAME.saturating_sub(f.len() + 40 + chain.len() + 200)) / 8;
                    let units = match g.below(10) {
                        0..=5 => 0,
                        6..=8 => 1 + g.below(3) as usize,
                        _ => g.upto(255),
                    }
                    .min(budget.saturating_sub(1))
                    .min(255);
                    chain.push(0);
                    chain.push(units as u8);
                    for _ in 0..units * 8 + 6 {
                        let r = g.byte();
                        chain.push(g.pick(&[0, 1, 0x04, 0xd2, 0x23, 0x28, r]));
                    }
                }
                next_of_prev = at;
                in_chain = true;
                ext_marks.push(chain.len());
            }
            if in_chain {
                chain[next_of_prev] = proto;
            } else {
                h[6] = proto;
            }
            let l4 = l4_header(g, proto, sport, dport);
            let plen = chain.len() + l4.len() + payload.len();
            h[4..6].copy_from_slice(&(plen.min(0xffff) as u16).to_be_bytes());
            f.extend(h);
            let base = f.len();
            marks.push(base);
            marks.extend(ext_marks.iter().map(|m| base + m));
            f.extend(chain);
            f.extend(l4);
            6
        }
        _ => {
            let n = g.upto(60);
            f.extend((0..n).map(|_| g.byte()));
            0
        }
    };
    marks.push(f.len());
    f.extend(payload);
    f.truncate(MAX_FRAME);
    Built {
        frame: f,
        l3: (ip != 0).then_some(l3),
        ip,
        marks,
    }
}

/// Mutations that make frames lie: cuts, wrong IP lengths, trailers, flipped bytes, a broken
/// version or IHL.
pub(super) fn mutate(g: &mut Rng, b: &mut Built) {
    let f = &mut b.frame;
    if let Some(l3) = b.l3 {
        if g.chance(30) {
            // A length field that lies: around a header boundary, zero, or anything.
            let (at, base) = if b.ip == 4 {
                (l3 + 2, l3)
            } else {
                (l3 + 4, l3 + 40)
            };
            if f.len() >= at + 2 {
                let mark = g.pick(&b.marks).saturating_sub(base);
                let v = match g.below(5) {
                    0 => 0,
                    1 => g.next() as u16,
                    2 => (f.len() - base) as u16 + g.below(64) as u16,
                    _ => (mark as u16)
                        .wrapping_add(g.pick(&[0u16, 1, 2, 3, 4, 7, 8, 12, 20]))
                        .wrapping_sub(g.below(4) as u16),
                };
                f[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
        }
        if g.chance(4) && f.len() > l3 {
            let r = g.byte();
            f[l3] = g.pick(&[0x44, 0x4f, 0x46, 0x65, 0x60, 0x00, r]);
        }
    }
    if g.chance(20) {
        // A trailer after the datagram holding port-like bytes (Ethernet padding is one).
        for _ in 0..1 + g.below(4) {
            let p = g.pick(&PORTS);
            f.extend(p.to_be_bytes());
        }
        if g.chance(50) && f.len() < 60 {
            f.resize(60, 0);
        }
    }
    if g.chance(25) {
        // Cut: at or near a header boundary, or anywhere.
        let n = if g.chance(70) {
            let m = g.pick(&b.marks) as i64 + g.below(11) as i64 - 3;
            m.max(14) as usize
        } else {
            14 + g.upto(f.len().saturating_sub(14))
        };
        f.truncate(n.max(14));
    }
    if g.chance(8) {
        for _ in 0..1 + g.below(3) {
            if !f.is_empty() {
                let i = g.below(f.len() as u64) as usize;
                f[i] = g.byte();
            }
        }
    }
    f.truncate(MAX_FRAME);
    if f.len() < 14 {
        f.resize(14, 0);
    }
}

/// What the probe program reports: the header walk's registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fields {
    complete: bool,
    ethertype: u64,
    vlan: u64,
    ip: u64,
    proto: u64,
    sport: u64,
    dport: u64,
    l3_off: u64,
    l4_off_from_l3: u64,
}

const SLOTS: usize = 9;

/// The header walk of every filter program, then its registers stored into slot 0 of an
/// ARRAY map (`SLOTS` u64 values). Root only (it subtracts packet pointers).
fn probe_program(map: &MapFd) -> ProgFd {
    let mut a = Asm::new();
    let short = a.label();
    let write = a.label();
    let no_l4 = a.label();
    let slot = |i: usize| -(8 * (i as i16 + 1));
    a.mov64_imm(R3, 0);
    emit_headers(&mut a, HeaderWalk::FULL, short);
    a.st_imm(Size::DW, R10, slot(0), 1)
        .stx(Size::DW, R10, hdr::ETHERTYPE, slot(1))
        .stx(Size::DW, R10, hdr::VLAN, slot(2))
        .stx(Size::DW, R10, hdr::IP, slot(3))
        .stx(Size::DW, R10, hdr::PROTO, slot(4))
        .st_imm(Size::DW, R10, slot(5), 0)
        .st_imm(Size::DW, R10, slot(6), 0)
        .st_imm(Size::DW, R10, slot(8), 0)
        .jmp_imm(Cond::Lt, hdr::PROTO, L4_OK, no_l4)
        .stx(Size::DW, R10, hdr::SPORT, slot(5))
        .stx(Size::DW, R10, hdr::DPORT, slot(6))
        .stx(Size::DW, R10, hdr::L4_OFF, slot(8))
        .bind(no_l4)
        .ldx(Size::W, R2, hdr::CTX, 0)
        .mov64_reg(R3, hdr::L3)
        .alu64_reg(Alu::Sub, R3, R2)
        .stx(Size::DW, R10, R3, slot(7))
        .ja(write);
    a.bind(short);
    for i in 0..SLOTS {
        a.st_imm(Size::DW, R10, slot(i), 0);
    }
    a.bind(write);
    let out = a.label();
    let key = slot(SLOTS) + 4;
    a.st_imm(Size::W, R10, key, 0)
        .ld_map_fd(R1, map.raw())
        .mov64_reg(R2, R10)
        .alu64_imm(Alu::Add, R2, i32::from(key))
        .call(helper::MAP_LOOKUP_ELEM)
        .jmp_imm(Cond::Eq, R0, 0, out);
    for i in 0..SLOTS {
        a.ldx(Size::DW, R1, R10, slot(i))
            .stx(Size::DW, R0, R1, 8 * i as i16);
    }
    a.bind(out).mov64_imm(R0, XDP_PASS as i32).exit();
    let insns = a.finish().unwrap();
    ProgFd::load(&ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insns: &insns,
        name: "kbx_walk_probe",
        license: "GPL",
        expected_attach_type: 0,
        flags: 0,
    })
    .unwrap()
}

struct Probe {
    prog: ProgFd,
    map: MapFd,
}

impl Probe {
    fn new() -> Self {
        let map = MapFd::create(BPF_MAP_TYPE_ARRAY, 4, 8 * SLOTS as u32, 1, 0, "kbx_walk").unwrap();
        Probe {
            prog: probe_program(&map),
            map,
        }
    }

    fn walk(&self, frame: &[u8]) -> Fields {
        let r = self
            .prog
            .test_run(TestRun {
                data: frame,
                repeat: 1,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(r.retval, XDP_PASS);
        let mut v = [0u8; 8 * SLOTS];
        assert!(self.map.lookup(&0u32.to_ne_bytes(), &mut v).unwrap());
        let s = |i: usize| u64::from_ne_bytes(v[8 * i..8 * i + 8].try_into().unwrap());
        Fields {
            complete: s(0) == 1,
            ethertype: s(1),
            vlan: s(2),
            ip: s(3),
            proto: s(4),
            sport: s(5),
            dport: s(6),
            l3_off: s(7),
            l4_off_from_l3: s(8),
        }
    }
}

/// The walk the parser's fields say the program must have done.
fn expected_walk(m: &PacketMeta) -> Fields {
    let complete = m.l3_off != 0;
    if !complete {
        return Fields {
            complete,
            ethertype: 0,
            vlan: 0,
            ip: 0,
            proto: 0,
            sport: 0,
            dport: 0,
            l3_off: 0,
            l4_off_from_l3: 0,
        };
    }
    let l4 = m.flags & FLAG_L4 != 0;
    Fields {
        complete,
        ethertype: u64::from(m.ethertype),
        vlan: if m.flags & FLAG_VLAN != 0 {
            u64::from(m.vlan)
        } else {
            UNTAGGED as u64
        },
        ip: u64::from(m.ip_version),
        proto: u64::from(m.proto) + if l4 { L4_OK as u64 } else { 0 },
        sport: if l4 { u64::from(m.src_port) } else { 0 },
        dport: if l4 { u64::from(m.dst_port) } else { 0 },
        l3_off: u64::from(m.l3_off),
        l4_off_from_l3: if l4 {
            u64::from(m.l4_off - m.l3_off)
        } else {
            0
        },
    }
}

/// One frame through all three; `Err` describes the first disagreement.
fn check(prog: &XdpProgram, probe: &Probe, rules: &[Rule], frame: &[u8]) -> Result<bool, String> {
    let m = parse(frame);
    let want = matches(rules, &m);
    let got = prog.test_run(frame, 1).unwrap().retval;
    if got != if want { XDP_REDIRECT } else { XDP_PASS } {
        return Err(format!(
            "verdict: kernel {}, Rust matcher {} (parser: {m:?})",
            crate::sys::bpf::xdp_action_name(got),
            if want { "REDIRECT" } else { "PASS" }
        ));
    }
    let (walk, expect) = (probe.walk(frame), expected_walk(&m));
    if walk != expect {
        return Err(format!(
            "fields: program {walk:?}, parser {expect:?} (parser: {m:?})"
        ));
    }
    Ok(want)
}

/// Make a failing frame smaller while it still fails: cut the end, zero bytes.
fn shrink(prog: &XdpProgram, probe: &Probe, rules: &[Rule], frame: &[u8]) -> Vec<u8> {
    let fails = |f: &[u8]| f.len() >= 14 && check(prog, probe, rules, f).is_err();
    let mut f = frame.to_vec();
    let mut budget = 20_000;
    loop {
        let mut changed = false;
        while f.len() > 14 && budget > 0 && fails(&f[..f.len() - 1]) {
            f.pop();
            budget -= 1;
            changed = true;
        }
        for i in 0..f.len() {
            if budget == 0 {
                break;
            }
            if f[i] != 0 {
                let old = f[i];
                f[i] = 0;
                budget -= 1;
                if fails(&f) {
                    changed = true;
                } else {
                    f[i] = old;
                }
            }
        }
        if !changed || budget == 0 {
            return f;
        }
    }
}

pub(super) fn hex(f: &[u8]) -> String {
    let mut s = String::new();
    for (i, b) in f.iter().enumerate() {
        if i > 0 && i % 32 == 0 {
            s.push('\n');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub(super) fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim().replace('_', "");
    Some(
        v.strip_prefix("0x")
            .map_or_else(|| v.parse(), |h| u64::from_str_radix(h, 16))
            .unwrap_or_else(|e| panic!("{name}={v}: {e}")),
    )
}

#[test]
fn kernel_matcher_and_parser_agree() {
    if !is_root() {
        eprintln!("skipped: needs root (CAP_BPF) to load and test-run XDP programs");
        return;
    }
    let cases = env_u64("KBYPASS_FUZZ_CASES").unwrap_or(DEFAULT_CASES);
    let seed = env_u64("KBYPASS_FUZZ_SEED").unwrap_or(0x6b62_7970_6173_7308);
    let mut g = Rng::new(seed);
    let probe = Probe::new();
    let t0 = Instant::now();
    let (mut done, mut hits, mut rule_sets) = (0u64, 0u64, 0u64);
    // What the frames exercised, as the parser saw them.
    let mut seen = Coverage::default();
    while done < cases {
        let (text, rules) = rule_set(&mut g);
        let frags = g.chance(20);
        let prog = XdpProgram::new(&rules, ProgramOptions { frags, queues: 1 })
            .unwrap_or_else(|e| panic!("filter `{text}` failed to load: {e}"));
        rule_sets += 1;
        for _ in 0..FRAMES_PER_RULE_SET.min(cases - done) {
            let r = (!g.chance(15)).then(|| &rules[g.below(rules.len() as u64) as usize]);
            let mut b = build(&mut g, r);
            if g.chance(70) {
                mutate(&mut g, &mut b);
            }
            match check(&prog, &probe, &rules, &b.frame) {
                Ok(hit) => hits += u64::from(hit),
                Err(first) => {
                    let small = shrink(&prog, &probe, &rules, &b.frame);
                    let why = check(&prog, &probe, &rules, &small).err().unwrap_or(first);
                    panic!(
                        "the kernel and Rust disagree (seed {seed:#x}, case {done}, frags {frags})\n\
                         filter: {text}\n  = {}\n{why}\nframe ({} bytes, shrunk from {}):\n{}",
                        format_filter(&rules),
                        small.len(),
                        b.frame.len(),
                        hex(&small)
                    );
                }
            }
            seen.add(&parse(&b.frame));
            done += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "xdp::fuzz: {done} frames over {rule_sets} rule sets agree (seed {seed:#x}) in {secs:.1} s \
         ({:.0} frames/s); {hits} redirected; {seen}",
        done as f64 / secs
    );
    // The generator must exercise both verdicts and every kind of frame substantially.
    assert!(
        hits > done / 10 && hits < done * 9 / 10,
        "{hits} of {done} redirected"
    );
    for (what, n) in seen.counts() {
        assert!(n > done / 100, "only {n} of {done} frames had {what}");
    }
}

/// How many frames had each feature (as parsed).
#[derive(Debug, Default)]
struct Coverage {
    ports: u64,
    qinq: u64,
    ipv4_options: u64,
    ipv6_ext: u64,
    fragments: u64,
    truncated: u64,
    malformed: u64,
}

impl Coverage {
    fn add(&mut self, m: &PacketMeta) {
        let f = |flag: u16| u64::from(m.flags & flag != 0);
        self.ports += f(FLAG_L4);
        self.qinq += u64::from(m.flags & FLAG_VLAN != 0 && m.l3_off == 22);
        self.ipv4_options += u64::from(m.ip_version == 4) * f(FLAG_IP_OPTIONS);
        self.ipv6_ext += u64::from(m.ip_version == 6) * f(FLAG_IP_OPTIONS);
        self.fragments += f(FLAG_FRAGMENT);
        self.truncated += f(FLAG_TRUNCATED);
        self.malformed += f(FLAG_MALFORMED);
    }

    fn counts(&self) -> [(&'static str, u64); 7] {
        [
            ("ports", self.ports),
            ("two VLAN tags", self.qinq),
            ("IPv4 options", self.ipv4_options),
            ("IPv6 extension headers", self.ipv6_ext),
            ("fragments", self.fragments),
            ("truncation", self.truncated),
            ("malformed headers", self.malformed),
        ]
    }
}

impl std::fmt::Display for Coverage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .counts()
            .iter()
            .map(|(what, n)| format!("{n} with {what}"))
            .collect();
        f.write_str(&parts.join(", "))
    }
}
