//! Our XDP programs: the default "redirect everything to the queue's socket" program and match
//! rules compiled to BPF, built with [`super::asm`] and loaded with `sys::bpf`.

use std::os::fd::RawFd;
use std::sync::{Mutex, OnceLock};

use super::asm::{
    helper, Alu, Asm, Cond, Label, Reg, Size, R0, R1, R10, R2, R3, R4, R5, R6, R7, R8, R9,
};
use super::rules::{IpVersion, Prefix, Rule, Vlan};
use crate::error::{Error, Result};
use crate::packet::parse::{
    ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, IPV6_EXT_HEADERS,
    VLAN_TAGS,
};
use crate::sys::bpf::{
    BpfInsn, MapFd, ProgFd, ProgInfo, ProgLoad, TestRun, TestRunResult, BPF_F_XDP_HAS_FRAGS,
    BPF_PROG_TYPE_XDP, XDP_PASS,
};
use crate::sys::xdp::XskFd;

/// Offset of `rx_queue_index` in `struct xdp_md`.
const XDP_MD_RX_QUEUE_INDEX: i16 = 16;
/// Names of our programs start with this, so we can recognise them on an interface.
pub const NAME_PREFIX: &str = "kbypass";
/// Marker in r5 for "no VLAN tag" (outside the 12-bit VLAN id range).
pub(crate) const UNTAGGED: i32 = 0x10000;

/// How the program tells the kernel "redirect if a socket is there, else pass".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectForm {
    /// `bpf_redirect_map(map, queue, XDP_PASS)`: the low bits of flags are the action when the
    /// slot is empty (kernel ≥ 5.3).
    FlagsDefault,
    /// Older kernels: `bpf_map_lookup_elem` first, then `bpf_redirect_map(map, queue, 0)`, or
    /// `XDP_PASS` when the slot is empty.
    LookupFirst,
}

impl RedirectForm {
    /// "flags-default" / "lookup-first".
    pub fn as_str(self) -> &'static str {
        match self {
            RedirectForm::FlagsDefault => "flags-default",
            RedirectForm::LookupFirst => "lookup-first",
        }
    }
}

/// Emit the redirect tail: the queue index comes from the context in `ctx`.
pub(crate) fn emit_redirect(a: &mut Asm, form: RedirectForm, map_fd: RawFd, ctx: Reg) {
    a.ldx(Size::W, R2, ctx, XDP_MD_RX_QUEUE_INDEX);
    match form {
        RedirectForm::FlagsDefault => {
            a.ld_map_fd(R1, map_fd)
                .mov64_imm(R3, XDP_PASS as i32)
                .call(helper::REDIRECT_MAP)
                .exit();
        }
        RedirectForm::LookupFirst => {
            let pass = a.label();
            a.stx(Size::W, R10, R2, -4)
                .ld_map_fd(R1, map_fd)
                .mov64_reg(R2, R10)
                .alu64_imm(Alu::Add, R2, -4)
                .call(helper::MAP_LOOKUP_ELEM)
                .jmp_imm(Cond::Eq, R0, 0, pass)
                .ldx(Size::W, R2, R10, -4)
                .ld_map_fd(R1, map_fd)
                .mov64_imm(R3, 0)
                .call(helper::REDIRECT_MAP)
                .exit()
                .bind(pass)
                .mov64_imm(R0, XDP_PASS as i32)
                .exit();
        }
    }
}

/// The default program: every frame to the socket of its RX queue, XDP_PASS if there is none.
/// In the flags-default form this is 6 instructions.
pub fn default_program(map_fd: RawFd, form: RedirectForm) -> Result<Vec<BpfInsn>> {
    let mut a = Asm::new();
    emit_redirect(&mut a, form, map_fd, R1);
    a.finish()
}

/// `if (ptr + n > data_end) goto fail` for the packet pointer in `base` (clobbers `tmp`).
fn bounds(a: &mut Asm, base: Reg, n: i32, tmp: Reg, fail: Label) {
    a.mov64_reg(tmp, base)
        .alu64_imm(Alu::Add, tmp, n)
        .jmp_reg(Cond::Gt, tmp, hdr::END, fail);
}

/// Added to the protocol in [`hdr::PROTO`] when the ports are in [`hdr::SPORT`] and [`hdr::DPORT`].
pub(crate) const L4_OK: i32 = 0x100;

/// Where [`emit_headers`] leaves what it found; the rules only read these.
pub(crate) mod hdr {
    use super::super::asm::{Reg, R0, R1, R3, R4, R5, R6, R7, R8, R9};
    /// The XDP context (for the redirect's queue index).
    pub const CTX: Reg = R6;
    /// `data_end` while the headers are walked (then the destination port).
    pub const END: Reg = R8;
    /// EtherType after up to two VLAN tags.
    pub const ETHERTYPE: Reg = R4;
    /// Outer VLAN id, or [`super::UNTAGGED`].
    pub const VLAN: Reg = R5;
    /// 4 or 6 when the fixed IP header is in the frame and valid, else 0.
    pub const IP: Reg = R1;
    /// IP protocol (IPv6: after the extension headers walked), plus [`super::L4_OK`] when the
    /// whole UDP/TCP/SCTP header lies inside the datagram and the frame.
    pub const PROTO: Reg = R0;
    /// The L3 header (at least 20 bytes readable when IP is 4, 40 when 6).
    pub const L3: Reg = R9;
    /// Source port when PROTO ≥ L4_OK, else 0 (on IP paths).
    pub const SPORT: Reg = R7;
    /// Destination port when PROTO ≥ L4_OK, else 0 (on IP paths).
    pub const DPORT: Reg = R8;
    /// Offset of the L4 header from the L3 header when PROTO ≥ L4_OK (scratch for the rules).
    pub const L4_OFF: Reg = R3;
}

/// IPv6 extension headers the walk goes through, as a bit mask over next-header values < 64
/// (hop-by-hop 0, routing 43, fragment 44, destination options 60).
const IPV6_EXT_MASK: u64 = (1 << IPPROTO_HOPOPTS)
    | (1 << IPPROTO_ROUTING)
    | (1 << IPPROTO_FRAGMENT)
    | (1 << IPPROTO_DSTOPTS);

/// How deep the rules need the headers parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Depth {
    /// Ethernet and VLAN tags.
    L2,
    /// Plus the IP header and IPv6 extension headers.
    L3,
    /// Plus whether the L4 header (ports) is there.
    L4,
}

/// What [`emit_headers`] emits: the depth, and which IP versions any rule looks at (the other
/// version's code is left out; its frames then look like non-IP ones, which no IP rule of
/// the program matches anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeaderWalk {
    /// How deep.
    pub depth: Depth,
    /// Parse IPv4 headers.
    pub ipv4: bool,
    /// Parse IPv6 headers and walk their extension headers.
    pub ipv6: bool,
}

impl HeaderWalk {
    /// Everything: what the parser does (the fuzz's probe program uses it).
    #[cfg(test)]
    pub const FULL: HeaderWalk = HeaderWalk {
        depth: Depth::L4,
        ipv4: true,
        ipv6: true,
    };

    /// What `rules` need.
    pub fn for_rules(rules: &[Rule]) -> Self {
        let mut w = HeaderWalk {
            depth: Depth::L2,
            ipv4: false,
            ipv6: false,
        };
        for r in rules {
            let vers = r.versions();
            w.ipv4 |= vers.contains(&IpVersion::V4);
            w.ipv6 |= vers.contains(&IpVersion::V6);
            let d = if r.sport.is_some() || r.dport.is_some() {
                Depth::L4
            } else if vers.is_empty() {
                Depth::L2
            } else {
                Depth::L3
            };
            w.depth = w.depth.max(d);
        }
        w
    }
}

/// `if r0 is not an IPv6 extension header walked goto not_ext` (clobbers r1).
fn jmp_not_ext(a: &mut Asm, not_ext: Label) {
    a.jmp_imm(Cond::Gt, R0, 63, not_ext)
        .ld_imm64(R1, IPV6_EXT_MASK)
        .alu64_reg(Alu::Rsh, R1, R0)
        .alu64_imm(Alu::And, R1, 1)
        .jmp_imm(Cond::Eq, R1, 0, not_ext);
}

/// The header walk shared by every filter program (and mirrored by `packet::parse`): leaves
/// its findings in the [`hdr`] registers and falls through; frames without a complete
/// Ethernet header and VLAN tags go to `short`.
///
/// Up to two VLAN tags (0x8100/0x88a8, any order); the outer id is kept. An IP header counts
/// when its fixed part is in the frame and valid (IPv4: version 4, IHL ≥ 5; IPv6: version 6).
/// IPv6 extension headers (hop-by-hop, routing, fragment, destination options) are walked up
/// to [`IPV6_EXT_HEADERS`] deep, each only if it lies entirely inside the payload length and
/// the frame; where the walk stops, that header's number is the protocol. Ports are readable
/// only in a first fragment whose whole L4 header (UDP 8, SCTP 12, TCP data offset × 4 ≥ 20)
/// lies inside the IP datagram (IPv4 total length, IPv6 40 + payload length) and the frame.
///
/// Written for the verifier: the ports leave as scalars in r7/r8 (zero without L4), never as a
/// pointer whose offset differs with the path, and the extension-header walk has no branch
/// per header type (the type decides the length arithmetically), so the number of distinct
/// states the verifier carries into the rules stays small whatever the depth.
pub(crate) fn emit_headers(a: &mut Asm, walk: HeaderWalk, short: Label) {
    let depth = walk.depth;
    let l3 = a.label();
    let done = a.label();
    a.mov64_reg(R6, R1)
        .ldx(Size::W, R7, R6, 0)
        .ldx(Size::W, R8, R6, 4);
    bounds(a, R7, 14, R2, short);
    a.ldx(Size::H, R4, R7, 12)
        .to_be(R4, 16)
        .mov64_reg(R9, R7)
        .alu64_imm(Alu::Add, R9, 14)
        .mov64_imm(R5, UNTAGGED);
    for tag in 0..VLAN_TAGS {
        let tagged = a.label();
        a.jmp_imm(Cond::Eq, R4, i32::from(ETH_P_8021Q), tagged)
            .jmp_imm(Cond::Ne, R4, i32::from(ETH_P_8021AD), l3)
            .bind(tagged);
        bounds(a, R9, 4, R2, short);
        if tag == 0 {
            a.ldx(Size::H, R5, R9, 0)
                .to_be(R5, 16)
                .alu64_imm(Alu::And, R5, 0x0fff);
        }
        a.ldx(Size::H, R4, R9, 2)
            .to_be(R4, 16)
            .alu64_imm(Alu::Add, R9, 4);
    }
    a.bind(l3);
    if depth == Depth::L2 {
        a.bind(done);
        return;
    }
    let (v4, v6) = (a.label(), a.label());
    a.mov64_imm(R0, 0).mov64_imm(R1, 0).mov64_reg(R7, R9);
    if walk.ipv4 {
        a.jmp_imm(Cond::Eq, R4, i32::from(ETH_P_IP), v4);
    }
    if walk.ipv6 {
        a.jmp_imm(Cond::Eq, R4, i32::from(ETH_P_IPV6), v6);
    }
    a.ja(done);
    if walk.ipv4 {
        emit_ipv4(a, depth, v4, done);
    }
    if walk.ipv6 {
        emit_ipv6(a, depth, v6, done);
    }
    a.bind(done);
}

/// IPv4 (at `v4`, leaving through `done`): r3 = L4 offset from L3 (IHL × 4), r2 = datagram
/// end from L3 (total length).
fn emit_ipv4(a: &mut Asm, depth: Depth, v4: Label, done: Label) {
    let v4_none = a.label();
    a.bind(v4);
    bounds(a, R9, 20, R2, done);
    a.ldx(Size::B, R3, R9, 0)
        .mov64_reg(R2, R3)
        .alu64_imm(Alu::Rsh, R2, 4)
        .jmp_imm(Cond::Ne, R2, 4, done)
        .alu64_imm(Alu::And, R3, 0x0f)
        .jmp_imm(Cond::Lt, R3, 5, done)
        .ldx(Size::B, R0, R9, 9);
    if depth == Depth::L4 {
        // Only the first fragment carries the L4 header.
        a.ldx(Size::H, R2, R9, 6)
            .to_be(R2, 16)
            .alu64_imm(Alu::And, R2, 0x1fff)
            .jmp_imm(Cond::Ne, R2, 0, v4_none)
            .alu64_imm(Alu::Lsh, R3, 2)
            .ldx(Size::H, R2, R9, 2)
            .to_be(R2, 16);
        emit_l4(a, v4_none);
        a.mov64_imm(R1, 4).ja(done);
    }
    a.bind(v4_none)
        .mov64_imm(R7, 0)
        .mov64_imm(R8, 0)
        .mov64_imm(R1, 4)
        .ja(done);
}

/// IPv6 (at `v6`, leaving through `done`): r0 = next header, r3 = its offset from L3, r2 =
/// datagram end from L3; r1, r4 and r7 are scratch until v6_stop or the L4 success path set
/// r1 and restore r4 (and set r7, r8).
fn emit_ipv6(a: &mut Asm, depth: Depth, v6: Label, done: Label) {
    let (v6_stop, nonfirst, upper) = (a.label(), a.label(), a.label());
    a.bind(v6);
    bounds(a, R9, 40, R2, done);
    a.ldx(Size::B, R2, R9, 0)
        .alu64_imm(Alu::Rsh, R2, 4)
        .jmp_imm(Cond::Ne, R2, 6, done)
        .ldx(Size::B, R0, R9, 6)
        .ldx(Size::H, R2, R9, 4)
        .to_be(R2, 16)
        .alu64_imm(Alu::Add, R2, 40)
        .mov64_imm(R3, 40);
    for _ in 0..IPV6_EXT_HEADERS {
        jmp_not_ext(a, upper);
        // Its first 8 bytes (next header, length, fragment offset) inside the datagram and
        // the frame, else the walk stops at it.
        a.mov64_reg(R1, R3)
            .alu64_imm(Alu::Add, R1, 8)
            .jmp_reg(Cond::Gt, R1, R2, v6_stop)
            .mov64_reg(R7, R9)
            .alu64_reg(Alu::Add, R7, R3);
        bounds(a, R7, 8, R1, v6_stop);
        // r4 = 1 for a fragment header, else 0, without a branch: ((r0 ^ 44) - 1) >> 63.
        a.mov64_reg(R4, R0)
            .alu64_imm(Alu::Xor, R4, i32::from(IPPROTO_FRAGMENT))
            .alu64_imm(Alu::Sub, R4, 1)
            .alu64_imm(Alu::Rsh, R4, 63);
        // A non-first fragment names the protocol but carries no L4 header.
        a.ldx(Size::H, R1, R7, 2)
            .to_be(R1, 16)
            .alu64_imm(Alu::And, R1, 0xfff8)
            .alu64_reg(Alu::Mul, R1, R4)
            .jmp_imm(Cond::Ne, R1, 0, nonfirst);
        // Length: 8 for a fragment header, (hdr ext len + 1) × 8 for the others; all of it
        // inside the datagram and the frame.
        a.alu64_imm(Alu::Sub, R4, 1)
            .ldx(Size::B, R1, R7, 1)
            .alu64_reg(Alu::And, R1, R4)
            .alu64_imm(Alu::Add, R1, 1)
            .alu64_imm(Alu::Lsh, R1, 3)
            .alu64_reg(Alu::Add, R1, R3)
            .jmp_reg(Cond::Gt, R1, R2, v6_stop)
            .mov64_reg(R4, R9)
            .alu64_reg(Alu::Add, R4, R1)
            .jmp_reg(Cond::Gt, R4, R8, v6_stop)
            .ldx(Size::B, R0, R7, 0)
            .mov64_reg(R3, R1);
    }
    // Deeper than IPV6_EXT_HEADERS: the first header not walked is the protocol.
    jmp_not_ext(a, upper);
    a.ja(v6_stop);
    a.bind(upper);
    if depth == Depth::L4 {
        emit_l4(a, v6_stop);
        a.mov64_imm(R1, 6)
            .mov64_imm(R4, i32::from(ETH_P_IPV6))
            .ja(done);
    } else {
        a.ja(v6_stop);
    }
    a.bind(nonfirst).ldx(Size::B, R0, R7, 0);
    a.bind(v6_stop)
        .mov64_imm(R7, 0)
        .mov64_imm(R8, 0)
        .mov64_imm(R1, 6)
        .mov64_imm(R4, i32::from(ETH_P_IPV6))
        .ja(done);
}

/// With r0 = protocol, r3 = L4 offset and r2 = datagram end (both from the L3 header in r9):
/// when the whole UDP/TCP/SCTP header lies inside the datagram and the frame, load the source
/// port into r7 and the destination port into r8 (data_end is not needed after this) and add
/// [`L4_OK`] to r0; otherwise go to `out` with r0 unchanged. Clobbers r1, r2, r7.
/// (r3 is at most 40 + 8 × 2048 by construction, so the pointer arithmetic stays inside the
/// verifier's 64 KiB packet offset bound without capping the IP length.)
fn emit_l4(a: &mut Asm, out: Label) {
    let have = a.label();
    a.mov64_reg(R7, R9)
        .alu64_reg(Alu::Add, R7, hdr::L4_OFF)
        .mov64_imm(R1, 8)
        .jmp_imm(Cond::Eq, R0, i32::from(IPPROTO_UDP), have)
        .mov64_imm(R1, 12)
        .jmp_imm(Cond::Eq, R0, i32::from(IPPROTO_SCTP), have)
        .jmp_imm(Cond::Ne, R0, i32::from(IPPROTO_TCP), out);
    // TCP: the header length is the data offset, read from the 20-byte fixed part.
    bounds(a, R7, 20, R1, out);
    a.ldx(Size::B, R1, R7, 12)
        .alu64_imm(Alu::Rsh, R1, 4)
        .alu64_imm(Alu::Lsh, R1, 2)
        .jmp_imm(Cond::Lt, R1, 20, out);
    // r1 = header length: it must end inside the datagram and inside the frame.
    a.bind(have)
        .alu64_reg(Alu::Add, R1, hdr::L4_OFF)
        .jmp_reg(Cond::Gt, R1, R2, out)
        .mov64_reg(R2, R9)
        .alu64_reg(Alu::Add, R2, R1)
        .jmp_reg(Cond::Gt, R2, R8, out);
    // Implied by the check above; tells the verifier the ports are readable through r7.
    bounds(a, R7, 4, R2, out);
    a.ldx(Size::H, R1, R7, 0)
        .to_be(R1, 16)
        .ldx(Size::H, R8, R7, 2)
        .to_be(R8, 16)
        .mov64_reg(R7, R1)
        .alu64_imm(Alu::Add, R0, L4_OK);
}

/// Compare the `bits` high bits of the 32-bit big-endian word at `base + off` with `value`.
fn match_word(a: &mut Asm, base: Reg, off: i16, value: u32, bits: u32, fail: Label) {
    if bits == 0 {
        return;
    }
    a.ldx(Size::W, R2, base, off).to_be(R2, 32);
    let mask = if bits >= 32 {
        u32::MAX
    } else {
        u32::MAX << (32 - bits)
    };
    if bits < 32 {
        a.alu32_imm(Alu::And, R2, mask);
    }
    a.mov32_imm(R3, value & mask)
        .jmp_reg(Cond::Ne, R2, R3, fail);
}

fn match_prefix(a: &mut Asm, base: Reg, off: i16, p: &Prefix, fail: Label) {
    match p.addr {
        std::net::IpAddr::V4(v) => match_word(a, base, off, u32::from(v), u32::from(p.len), fail),
        std::net::IpAddr::V6(v) => {
            let x = u128::from(v);
            for i in 0..4u32 {
                let bits = (u32::from(p.len)).saturating_sub(32 * i).min(32);
                let word = (x >> (96 - 32 * i)) as u32;
                match_word(a, base, off + 4 * i as i16, word, bits, fail);
            }
        }
    }
}

/// Compare the port in `reg` with an inclusive range.
fn match_port(a: &mut Asm, reg: Reg, (lo, hi): (u16, u16), fail: Label) {
    if lo == 0 && hi == u16::MAX {
        return;
    }
    if lo == hi {
        a.jmp_imm(Cond::Ne, reg, i32::from(lo), fail);
    } else {
        a.jmp_imm(Cond::Lt, reg, i32::from(lo), fail)
            .jmp_imm(Cond::Gt, reg, i32::from(hi), fail);
    }
}

/// The protocol and "ports readable" conditions of a rule, on [`hdr::PROTO`].
fn match_proto(a: &mut Asm, r: &Rule, fail: Label) {
    let ports = r.sport.is_some() || r.dport.is_some();
    match (r.proto, ports) {
        (Some(p), true) => {
            a.jmp_imm(Cond::Ne, hdr::PROTO, L4_OK + i32::from(p), fail);
        }
        // Only UDP, TCP and SCTP get L4_OK.
        (None, true) => {
            a.jmp_imm(Cond::Lt, hdr::PROTO, L4_OK, fail);
        }
        (Some(p), false) => {
            let ok = a.label();
            a.jmp_imm(Cond::Eq, hdr::PROTO, i32::from(p), ok)
                .jmp_imm(Cond::Ne, hdr::PROTO, L4_OK + i32::from(p), fail)
                .bind(ok);
        }
        (None, false) => {}
    }
}

/// One rule for one IP version (or none): jumps to `hit` if it matches, else falls through.
fn emit_rule(a: &mut Asm, r: &Rule, ver: Option<IpVersion>, hit: Label) {
    let fail = a.label();
    match r.vlan {
        Vlan::Any => {}
        Vlan::Tagged => {
            a.jmp_imm(Cond::Eq, hdr::VLAN, UNTAGGED, fail);
        }
        Vlan::Id(v) => {
            a.jmp_imm(Cond::Ne, hdr::VLAN, i32::from(v), fail);
        }
    }
    if let Some(et) = r.ethertype {
        a.jmp_imm(Cond::Ne, hdr::ETHERTYPE, i32::from(et), fail);
    }
    if let Some(v) = ver {
        let (n, src, dst) = match v {
            IpVersion::V4 => (4, 12, 16),
            IpVersion::V6 => (6, 8, 24),
        };
        a.jmp_imm(Cond::Ne, hdr::IP, n, fail);
        match_proto(a, r, fail);
        if let Some(p) = &r.src {
            match_prefix(a, hdr::L3, src, p, fail);
        }
        if let Some(p) = &r.dst {
            match_prefix(a, hdr::L3, dst, p, fail);
        }
        if let Some(pr) = r.sport {
            match_port(a, hdr::SPORT, pr, fail);
        }
        if let Some(pr) = r.dport {
            match_port(a, hdr::DPORT, pr, fail);
        }
    }
    a.ja(hit);
    a.bind(fail);
}

/// After [`emit_headers`] (walked for `rules`): jump to `hit` when any of `rules` matches,
/// else fall through. `rules` must be validated.
pub(crate) fn emit_match(a: &mut Asm, rules: &[Rule], hit: Label) {
    for r in rules {
        let vers = r.versions();
        if vers.is_empty() && r.vlan == Vlan::Any && r.ethertype.is_none() {
            // Matches every frame: later rules would be unreachable code, which the verifier
            // rejects.
            a.ja(hit);
            break;
        }
        if vers.is_empty() {
            emit_rule(a, r, None, hit);
        }
        for v in vers {
            emit_rule(a, r, Some(v), hit);
        }
    }
}

/// A program that redirects frames matching any of `rules` to the queue's socket and passes
/// everything else (including short or malformed frames) to the kernel. It decides exactly as
/// [`super::rules::matches()`] does on the frame's [`crate::packet::parse()`].
pub fn filter_program(rules: &[Rule], map_fd: RawFd, form: RedirectForm) -> Result<Vec<BpfInsn>> {
    if rules.is_empty() {
        return default_program(map_fd, form);
    }
    for r in rules {
        r.validate()?;
    }
    let mut a = Asm::new();
    let pass = a.label();
    let hit = a.label();
    emit_headers(&mut a, HeaderWalk::for_rules(rules), pass);
    emit_match(&mut a, rules, hit);
    a.bind(pass).mov64_imm(R0, XDP_PASS as i32).exit();
    a.bind(hit);
    emit_redirect(&mut a, form, map_fd, hdr::CTX);
    a.finish()
}

/// Options of [`XdpProgram::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramOptions {
    /// Load with `BPF_F_XDP_HAS_FRAGS` for multi-buffer sockets (reads only the linear part).
    pub frags: bool,
    /// Slots of the XSKMAP (the highest queue index + 1 that can have a socket).
    pub queues: u32,
}

impl Default for ProgramOptions {
    fn default() -> Self {
        ProgramOptions {
            frags: false,
            queues: 64,
        }
    }
}

fn load(insns: &[BpfInsn], name: &str, frags: bool) -> Result<ProgFd> {
    ProgFd::load(&ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insns,
        name,
        license: "GPL",
        expected_attach_type: 0,
        flags: if frags { BPF_F_XDP_HAS_FRAGS } else { 0 },
    })
    .map_err(|e| match (frags, e.errno()) {
        (true, Some(libc::EINVAL)) => Error::Unsupported {
            what: format!("loading {name} with BPF_F_XDP_HAS_FRAGS"),
            fix: format!("multi-buffer XDP needs kernel ≥ 5.18 ({e}); use frags=False"),
        },
        _ => e,
    })
}

/// Which redirect form this kernel supports, probed once per process by a test run of the
/// default program on an empty XSKMAP (flags-default answers XDP_PASS, older kernels abort).
pub fn redirect_form() -> Result<RedirectForm> {
    static FORM: OnceLock<RedirectForm> = OnceLock::new();
    if let Some(f) = FORM.get() {
        return Ok(*f);
    }
    let map = MapFd::xskmap(1, "kbypass_probe")?;
    let prog = load(
        &default_program(map.raw(), RedirectForm::FlagsDefault)?,
        "kbypass_probe",
        false,
    )?;
    let r = prog.test_run(TestRun {
        data: &[0u8; 64],
        repeat: 1,
        ..Default::default()
    })?;
    let form = if r.retval == XDP_PASS {
        RedirectForm::FlagsDefault
    } else {
        RedirectForm::LookupFirst
    };
    Ok(*FORM.get_or_init(|| form))
}

/// A loaded XDP program with its XSKMAP. Dropping it closes both (an attachment keeps its own
/// reference to the program in the kernel).
#[derive(Debug)]
pub struct XdpProgram {
    prog: ProgFd,
    map: MapFd,
    info: ProgInfo,
    rules: Vec<Rule>,
    opts: ProgramOptions,
    form: RedirectForm,
    insn_count: usize,
    /// For `test_run`: the same code on a private XSKMAP holding an unbound socket.
    twin: Mutex<Option<TestTwin>>,
}

#[derive(Debug)]
struct TestTwin {
    prog: ProgFd,
    _map: MapFd,
    _sock: XskFd,
}

impl XdpProgram {
    /// Build and load the program for `rules` (empty: redirect everything).
    pub fn new(rules: &[Rule], opts: ProgramOptions) -> Result<Self> {
        if opts.queues == 0 || opts.queues > 4096 {
            return Err(Error::invalid(format!(
                "queues={} must be 1..=4096",
                opts.queues
            )));
        }
        let form = redirect_form()?;
        let map = MapFd::xskmap(opts.queues, "kbypass_xsks")?;
        let insns = filter_program(rules, map.raw(), form)?;
        let prog = load(&insns, Self::name_for(rules, opts.frags), opts.frags)?;
        let info = prog.info()?;
        Ok(XdpProgram {
            prog,
            map,
            info,
            rules: rules.to_vec(),
            opts,
            form,
            insn_count: insns.len(),
            twin: Mutex::new(None),
        })
    }

    fn name_for(rules: &[Rule], frags: bool) -> &'static str {
        match (rules.is_empty(), frags) {
            (true, false) => "kbypass_xsk",
            (true, true) => "kbypass_xsk_mb",
            (false, false) => "kbypass_filter",
            (false, true) => "kbypass_filt_mb",
        }
    }

    /// The program fd.
    pub fn prog(&self) -> &ProgFd {
        &self.prog
    }

    /// The XSKMAP (queue index → socket).
    pub fn map(&self) -> &MapFd {
        &self.map
    }

    /// Kernel id, name and tag.
    pub fn info(&self) -> &ProgInfo {
        &self.info
    }

    /// The rules it was built from.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether it was loaded frags-capable.
    pub fn frags(&self) -> bool {
        self.opts.frags
    }

    /// XSKMAP slots.
    pub fn queues(&self) -> u32 {
        self.opts.queues
    }

    /// The redirect form in use.
    pub fn form(&self) -> RedirectForm {
        self.form
    }

    /// Number of BPF instructions.
    pub fn insn_count(&self) -> usize {
        self.insn_count
    }

    fn check_queue(&self, queue: u32) -> Result<()> {
        if queue >= self.opts.queues {
            return Err(Error::invalid(format!(
                "queue {queue} is beyond the program's {} XSKMAP slots: build it with more queues",
                self.opts.queues
            )));
        }
        Ok(())
    }

    /// Route queue `queue` to the AF_XDP socket `xsk_fd`.
    pub fn set_socket(&self, queue: u32, xsk_fd: RawFd) -> Result<()> {
        self.check_queue(queue)?;
        self.map.set_xsk(queue, xsk_fd)
    }

    /// Stop routing queue `queue` to a socket (its frames go to the kernel again).
    pub fn clear_socket(&self, queue: u32) -> Result<()> {
        self.check_queue(queue)?;
        self.map.clear_xsk(queue).map(|_| ())
    }

    /// Run the program's code on `frame` as if it arrived on RX queue 0 with a socket bound
    /// there: `XDP_REDIRECT` means "would reach the socket", `XDP_PASS` "goes to the kernel".
    /// Runs on a private twin (same code, private XSKMAP holding an unbound socket at queue 0) so
    /// traffic on an attached interface is never affected. (The kernel only accepts another
    /// queue index together with a real ingress device, hence queue 0.)
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<TestRunResult> {
        if frame.len() < 14 {
            // The kernel refuses test runs below an Ethernet header; the program would pass it.
            return Err(Error::invalid(format!(
                "frame of {} bytes is shorter than an Ethernet header (14): XDP never sees such frames",
                frame.len()
            )));
        }
        let mut g = self
            .twin
            .lock()
            .map_err(|_| Error::State("XdpProgram test twin lock poisoned".into()))?;
        if g.is_none() {
            let map = MapFd::xskmap(self.opts.queues, "kbypass_xsks")?;
            let insns = filter_program(&self.rules, map.raw(), self.form)?;
            let prog = load(&insns, "kbypass_test", self.opts.frags)?;
            let sock = XskFd::new()?;
            map.set_xsk(0, sock.raw())?;
            *g = Some(TestTwin {
                prog,
                _map: map,
                _sock: sock,
            });
        }
        let t = g
            .as_ref()
            .ok_or_else(|| Error::State("test twin missing".into()))?;
        let mut out = vec![0u8; frame.len() + 256];
        t.prog.test_run(TestRun {
            data: frame,
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_program_is_six_instructions() {
        let v = default_program(7, RedirectForm::FlagsDefault).unwrap();
        assert_eq!(v.len(), 6);
        assert_eq!(
            v[0],
            BpfInsn {
                code: 0x61,
                regs: 0x12,
                off: 16,
                imm: 0
            }
        ); // r2 = ctx->rx_queue_index
        assert_eq!((v[1].code, v[1].regs, v[1].imm), (0x18, 0x11, 7)); // r1 = map fd 7
        assert_eq!(
            v[3],
            BpfInsn {
                code: 0xb7,
                regs: 0x03,
                off: 0,
                imm: 2
            }
        ); // r3 = XDP_PASS
        assert_eq!(v[4].imm, helper::REDIRECT_MAP);
        assert_eq!(v[5].code, 0x95);
        let old = default_program(7, RedirectForm::LookupFirst).unwrap();
        assert!(old
            .iter()
            .any(|i| i.code == 0x85 && i.imm == helper::MAP_LOOKUP_ELEM));
        assert!(old
            .iter()
            .any(|i| i.code == 0xb7 && i.regs == 0x03 && i.imm == 0));
    }

    #[test]
    fn filter_program_compiles_all_rule_shapes() {
        let rules = crate::xdp::rules::parse_filter(
            "udp dst port 9000-9010 or ip6 tcp src port 22 or ip src 198.18.0.0/15 or ether proto 0x88b5 \
             or vlan 100 udp or dst 2001:db8::/33 or port 53 or all",
        )
        .unwrap();
        let v = filter_program(&rules, 3, RedirectForm::FlagsDefault).unwrap();
        assert!(v.len() > 100, "{}", v.len());
        // Every jump lands inside the program.
        for (i, ins) in v.iter().enumerate() {
            if ins.code & 0x07 == 0x05 && ins.code != 0x85 && ins.code != 0x95 {
                let t = i as i64 + 1 + i64::from(ins.off);
                assert!(t >= 0 && (t as usize) < v.len(), "jump at {i} to {t}");
            }
        }
        assert_eq!(
            filter_program(&[], 3, RedirectForm::FlagsDefault)
                .unwrap()
                .len(),
            6
        );
    }
}
