//! Fuzz of the RoCEv2 parser: random bytes, and valid frames of every opcode damaged by cuts,
//! extensions, flipped and overwritten bytes and lying length fields, resealed (IPv4
//! checksum, UDP checksum where there is one, and ICRC recomputed) or not. Every input must be answered without a panic, and:
//!
//! 1. a parsed payload lies inside the input and is at most 4096 bytes;
//! 2. [`Frame::parse`] and [`Frame::parse_headers`] agree but for the ICRC: both succeed with
//!    the same frame, or both fail with the same error, or only `parse` fails, with
//!    [`WireError::BadIcrc`] or [`WireError::BadUdpChecksum`];
//! 3. whatever parses builds back (parse ∘ build): the frame built from the parsed fields
//!    parses to the same fields.
//!
//! `cargo test -p kbypass-core rdma::roce` runs a bounded, fixed-seed number of cases (and
//! proptest's random-bytes and round-trip properties); longer runs:
//!
//! ```text
//! KBYPASS_FUZZ_CASES=10000000 cargo test -p kbypass-core --release --lib -- rdma::roce::wire::fuzz --nocapture
//! KBYPASS_FUZZ_SEED=12345 ...   # another sequence (a failure reports its seed and case)
//! ```

use proptest::prelude::*;

use super::tests::{assert_matches_spec, build, spec, v4, v6};
use super::*;

/// Cases of the mutation fuzz in the default (CI) run.
const DEFAULT_CASES: u64 = 20_000;

/// xorshift64*: the same sequence for the same seed everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim().replace('_', "");
    Some(
        v.strip_prefix("0x")
            .map_or_else(|| v.parse(), |h| u64::from_str_radix(h, 16))
            .unwrap_or_else(|e| panic!("{name}={v}: {e}")),
    )
}

/// A valid frame of a random opcode, IP version, tag and payload, with its spec.
fn valid(g: &mut Rng) -> (FrameSpec, Vec<u8>, Vec<u8>) {
    let all: Vec<Opcode> = Opcode::all().collect();
    let opcode = all[g.below(all.len() as u64) as usize];
    let ip = if g.chance(50) { v4() } else { v6() };
    let vlan = g.chance(20).then(|| g.next() as u16);
    let s = spec(opcode, ip, vlan, [g.next(), g.next(), g.next(), g.next()]);
    let len = if !opcode.has_payload() {
        0
    } else if g.chance(10) {
        MAX_PAYLOAD - g.below(4) as usize
    } else {
        g.below(300) as usize
    };
    let payload: Vec<u8> = (0..len).map(|_| g.next() as u8).collect();
    let f = build(&s, &payload);
    (s, payload, f)
}

/// Where the IP packet starts (after Ethernet and an optional 802.1Q tag).
fn l3_of(f: &[u8]) -> usize {
    if f.len() >= 14 && f[12..14] == [0x81, 0x00] {
        18
    } else {
        14
    }
}

/// Recomputes the IPv4 header checksum and the ICRC after damage, where the frame is still
/// long enough to hold them, so the damage itself is what the parser meets.
fn reseal(f: &mut [u8]) {
    let l3 = l3_of(f);
    if f.len() < l3 + 1 {
        return;
    }
    let hl = match f[l3] >> 4 {
        4 => usize::from(f[l3] & 0x0f) * 4,
        6 => 40,
        _ => return,
    };
    if hl < 20 || f.len() < l3 + hl {
        return;
    }
    if f[l3] >> 4 == 4 {
        f[l3 + 10..l3 + 12].fill(0);
        let mut acc: u32 = 0;
        for c in f[l3..l3 + hl].chunks(2) {
            acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        f[l3 + 10..l3 + 12].copy_from_slice(&(!(acc as u16)).to_be_bytes());
    }
    // The ICRC ends the IP packet its length field claims, if that is inside the frame.
    let total = if f[l3] >> 4 == 4 {
        usize::from(u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]))
    } else {
        40 + usize::from(u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]))
    };
    if total >= hl + 8 + BTH_LEN + ICRC_LEN && l3 + total <= f.len() {
        let ip = &mut f[l3..l3 + total];
        let at = hl + 6;
        if ip[at..at + 2] != [0, 0] {
            ip[at..at + 2].fill(0);
            let addrs = if hl == 40 { 8..40 } else { 12..20 };
            let mut acc: u32 = (total - hl) as u32 + 17;
            for c in ip[addrs].chunks(2).chain(ip[hl..].chunks(2)) {
                let hi = c[0];
                let lo = c.get(1).copied().unwrap_or(0);
                acc += u32::from(u16::from_be_bytes([hi, lo]));
            }
            while acc > 0xffff {
                acc = (acc & 0xffff) + (acc >> 16);
            }
            let c = match !(acc as u16) {
                0 => 0xffff,
                c => c,
            };
            ip[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        if let Ok(crc) = icrc::compute(&ip[..total - ICRC_LEN], hl) {
            ip[total - ICRC_LEN..].copy_from_slice(&crc);
        }
    }
}

/// Damages `f` in one to four ways.
fn mutate(g: &mut Rng, f: &mut Vec<u8>) {
    for _ in 0..1 + g.below(4) {
        if f.is_empty() {
            return;
        }
        let at = g.below(f.len() as u64) as usize;
        match g.below(7) {
            0 => f.truncate(at),
            1 => f.extend((0..1 + g.below(16)).map(|_| g.next() as u8)),
            2 => f[at] ^= 1 << g.below(8),
            3 => f[at] = g.next() as u8,
            4 => {
                // Lengths and fields that steer the parser: IP lengths, UDP length, opcode,
                // pad count, TVer, EtherType.
                let l3 = l3_of(f);
                let spots = [
                    12,
                    l3,
                    l3 + 2,
                    l3 + 3,
                    l3 + 5,
                    l3 + 24,
                    l3 + 25,
                    l3 + 44,
                    l3 + 45,
                ];
                let s = spots[g.below(spots.len() as u64) as usize];
                if s < f.len() {
                    f[s] = g.next() as u8;
                }
            }
            5 => {
                // The BTH's opcode and flags byte.
                let l3 = l3_of(f);
                let hl = if f.get(l3).is_some_and(|b| b >> 4 == 6) {
                    40
                } else {
                    20
                };
                let bth = l3 + hl + 8;
                if bth + 1 < f.len() {
                    f[bth + g.below(2) as usize] = g.next() as u8;
                }
            }
            _ => f.insert(at, g.next() as u8),
        }
    }
    if g.chance(70) {
        reseal(f);
    }
}

/// The invariants of the module doc for one input.
fn check(input: &[u8]) -> Result<(), String> {
    let full = Frame::parse(input);
    let headers = Frame::parse_headers(input);
    match (&full, &headers) {
        (Ok(a), Ok(b)) if a == b => {}
        (Err(a), Err(b)) if a == b => {}
        (Err(WireError::BadIcrc { .. } | WireError::BadUdpChecksum), Ok(_)) => {}
        _ => return Err(format!("parse {full:?} but parse_headers {headers:?}")),
    }
    let Ok(f) = headers else { return Ok(()) };
    let p = f.packet.payload;
    let inside = input.as_ptr_range();
    let within =
        p.is_empty() || (inside.contains(&p.as_ptr()) && p.as_ptr_range().end <= inside.end);
    if p.len() > MAX_PAYLOAD || !within {
        return Err(format!("payload of {} bytes outside the input", p.len()));
    }
    let s = FrameSpec {
        eth_dst: f.eth_dst,
        eth_src: f.eth_src,
        vlan_tci: f.vlan_tci,
        ip: f.ip,
        udp_src: f.udp_src,
        bth: f.packet.bth,
        ext: f.packet.ext,
    };
    let rebuilt = build(&s, p);
    let again = Frame::parse(&rebuilt).map_err(|e| format!("rebuilt frame fails: {e}"))?;
    assert_matches_spec(&again, &s, p);
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn damaged_frames_never_panic_and_keep_the_invariants() {
    let cases = env_u64("KBYPASS_FUZZ_CASES").unwrap_or(DEFAULT_CASES);
    let seed = env_u64("KBYPASS_FUZZ_SEED").unwrap_or(0x726f_6365_7632_0001);
    let mut g = Rng::new(seed);
    let (mut ok, mut bad_icrc, mut other) = (0u64, 0u64, 0u64);
    for case in 0..cases {
        let (_, _, mut f) = valid(&mut g);
        if g.chance(90) {
            mutate(&mut g, &mut f);
        }
        if let Err(why) = check(&f) {
            panic!("seed {seed:#x} case {case}: {why}\nframe {}", hex(&f));
        }
        match Frame::parse(&f) {
            Ok(_) => ok += 1,
            Err(WireError::BadIcrc { .. } | WireError::BadUdpChecksum) => bad_icrc += 1,
            Err(_) => other += 1,
        }
    }
    eprintln!(
        "{cases} cases (seed {seed:#x}): {ok} parsed, {bad_icrc} bad ICRC or UDP checksum, \
         {other} other errors"
    );
    // The mix reaches every outcome (and so the checks behind each).
    if cases >= 1000 {
        assert!(
            ok > cases / 20 && bad_icrc > cases / 50 && other > cases / 5,
            "{ok} {bad_icrc} {other}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random bytes, with or without an Ethernet/IPv4/UDP 4791 prefix to get past the outer
    /// layers, never panic and keep the invariants.
    #[test]
    fn random_bytes(tail in proptest::collection::vec(any::<u8>(), 0..120), prefix in any::<bool>()) {
        let mut f = Vec::new();
        if prefix {
            let len = 20 + 8 + tail.len();
            f.extend_from_slice(&[0u8; 12]);
            f.extend_from_slice(&[0x08, 0x00, 0x45, 0, (len >> 8) as u8, len as u8, 0, 0, 0x40, 0, 64, 17, 0, 0]);
            f.extend_from_slice(&[198, 18, 0, 1, 198, 18, 0, 2]);
            let ulen = 8 + tail.len();
            f.extend_from_slice(&[0xc0, 0, 0x12, 0xb7, (ulen >> 8) as u8, ulen as u8, 0, 0]);
            f.extend_from_slice(&tail);
            reseal(&mut f);
        } else {
            f = tail;
        }
        prop_assert_eq!(check(&f), Ok(()));
        let _ = Packet::parse(&f);
    }

    /// parse ∘ build is the identity on every valid frame.
    #[test]
    fn build_then_parse_round_trips(seed in any::<u64>()) {
        let mut g = Rng::new(seed);
        let (s, payload, f) = valid(&mut g);
        let p = Frame::parse(&f).map_err(|e| TestCaseError::fail(e.to_string()))?;
        assert_matches_spec(&p, &s, &payload);
    }
}
