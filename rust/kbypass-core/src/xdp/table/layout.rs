//! What the table's maps hold for a set of entries, and the reference matcher.
//!
//! Everything here is plain computation (no syscalls), so it is tested without root and is
//! the single source of both the kernel's map contents and [`decide`], the Rust answer the
//! kernel's is compared with.
//!
//! # Ranks and bitsets
//!
//! The rules of all entries are sorted by (entry priority, entry id) and, inside an entry, in
//! filter order; a rule's position is its *rank*, and bit `rank` of a bitset stands for it.
//! Each field the program looks up returns the bitset of the rules that field lets through:
//!
//! - the *class* array, indexed by (IP version, protocol, whether the L4 header is there):
//!   the IP version, protocol and "has ports" conditions of every rule at once;
//! - LPM tries for the IPv4/IPv6 source and destination and for the source and destination
//!   port (a port range is stored as the aligned blocks that tile it, at most 30).
//!
//! An LPM trie answers with its longest matching entry only, so an entry's bitset holds every
//! rule whose prefix (or range) contains the entry, plus every rule without a condition on
//! that field. Each trie also holds a /0 entry, so a lookup always finds something. The
//! longest entry containing a value `x` is contained in every rule prefix containing `x`
//! (aligned blocks nest), so the bitset found is exactly the rules that let `x` through.
//!
//! The AND of the bitsets is the set of matching rules; the lowest rank whose entry has not
//! expired wins.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use super::super::rules::{IpVersion, Prefix, Rule, Vlan};
use crate::error::{Error, Result};
use crate::packet::parse::PacketMeta;
#[cfg(test)]
use crate::packet::parse::FLAG_L4;
use crate::sys::bpf::{XDP_DROP, XDP_PASS, XDP_REDIRECT};

/// Class array entries per bank: IP version (0 none, 1 IPv4, 2 IPv6) × (L4 header present
/// × 256 + protocol).
pub(crate) const CLASS_PER_BANK: usize = 3 * 512;

/// Feature bits: which lookups a bank's rules need (the others are skipped).
pub(crate) mod feature {
    /// Some rule has an IPv4 source prefix.
    pub const SRC4: u32 = 1;
    /// Some rule has an IPv4 destination prefix.
    pub const DST4: u32 = 2;
    /// Some rule has an IPv6 source prefix.
    pub const SRC6: u32 = 4;
    /// Some rule has an IPv6 destination prefix.
    pub const DST6: u32 = 8;
    /// Some rule has a source port range.
    pub const SPORT: u32 = 16;
    /// Some rule has a destination port range.
    pub const DPORT: u32 = 32;
    /// Some entry expires.
    pub const EXPIRY: u32 = 64;
}

/// What the table does with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Redirect to the AF_XDP socket of the frame's RX queue (the kernel gets it when no socket
    /// is registered for that queue).
    Allow,
    /// Drop in the kernel (`XDP_DROP`).
    Drop,
    /// Hand to the kernel's stack (`XDP_PASS`).
    Pass,
}

impl Action {
    /// The XDP verdict the program returns for it.
    pub fn verdict(self) -> u32 {
        match self {
            Action::Allow => XDP_REDIRECT,
            Action::Drop => XDP_DROP,
            Action::Pass => XDP_PASS,
        }
    }

    /// "allow", "drop" or "pass".
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Drop => "drop",
            Action::Pass => "pass",
        }
    }
}

impl std::str::FromStr for Action {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "allow" | "redirect" => Ok(Action::Allow),
            "drop" => Ok(Action::Drop),
            "pass" => Ok(Action::Pass),
            _ => Err(Error::invalid(format!(
                "action {s:?} is not one of 'allow' (to the AF_XDP socket), 'drop' (in the kernel), 'pass' (to the kernel's stack)"
            ))),
        }
    }
}

/// One entry of the table: rules (ORed, as in a filter) and what to do with a frame that
/// matches one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Id given by the table (never reused).
    pub id: u64,
    /// The rules; each takes one rule slot.
    pub rules: Vec<Rule>,
    /// The action.
    pub action: Action,
    /// Lower runs first; equal priorities run in the order added.
    pub priority: i32,
    /// `CLOCK_MONOTONIC` deadline in ns ([`crate::sys::bpf::ktime_ns`]) after which the entry
    /// no longer matches, or None.
    pub expires_ns: Option<u64>,
}

impl Entry {
    /// Whether it still matches at `now` (ns on `CLOCK_MONOTONIC`).
    pub fn live(&self, now: u64) -> bool {
        self.expires_ns.is_none_or(|t| now < t)
    }
}

/// Check that `rules` can go into a table: no VLAN or EtherType terms, at least one rule.
pub fn check_rules(rules: &[Rule]) -> Result<()> {
    if rules.is_empty() {
        return Err(Error::invalid(
            "the entry has no rules: give a filter such as 'udp dst port 53' ('all' matches every frame)",
        ));
    }
    for r in rules {
        r.validate()?;
        if r.vlan != Vlan::Any || r.ethertype.is_some() {
            return Err(Error::invalid(format!(
                "`{r}`: XdpTable rules match IP addresses, protocols and ports; `vlan` and `ether proto` terms are not supported here (use an XdpProgram filter for them)"
            )));
        }
    }
    Ok(())
}

/// A source decision pushed by `block()`: every frame from `addr` gets `action` until
/// `expires_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// What happens to the source's frames.
    pub action: Action,
    /// Deadline (`CLOCK_MONOTONIC` ns), or None for "until unblocked".
    pub expires_ns: Option<u64>,
}

impl Block {
    /// Whether it still applies at `now`.
    pub fn live(&self, now: u64) -> bool {
        self.expires_ns.is_none_or(|t| now < t)
    }
}

/// Who decided a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A `block()` of the frame's source address.
    Block(IpAddr),
    /// The entry with this id.
    Entry(u64),
    /// No block and no live entry matched: the table's default action.
    Default,
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) as IPv4: blocks are keyed by the mapped
/// form, so a block of an IPv4 address also covers IPv6 frames from its mapped address.
pub fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

/// The frame's source address as a block key: IPv4 as its IPv4-mapped IPv6 form.
pub(crate) fn block_key(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The source address of a parsed frame, if it has an IP header.
pub(crate) fn source(m: &PacketMeta) -> Option<IpAddr> {
    match m.ip_version {
        4 => Some(IpAddr::V4(m.src_ip4.into())),
        6 => Some(IpAddr::V6(m.src_ip6.into())),
        _ => None,
    }
}

/// The reference matcher: what the table's program decides for the frame `m` was parsed from
/// at time `now`, given its entries and blocks.
///
/// 1. A frame cut inside its Ethernet header or VLAN tags matches nothing: default.
/// 2. A live block of the frame's source address decides.
/// 3. Otherwise the first live entry in (priority, id) order with a rule that matches
///    ([`Rule::matches`]: the same semantics as filters) decides.
/// 4. Otherwise the default action.
pub fn decide(
    entries: &[Entry],
    blocks: &HashMap<IpAddr, Block>,
    m: &PacketMeta,
    now: u64,
) -> Decision {
    if m.l3_off == 0 {
        return Decision::Default;
    }
    if let Some(src) = source(m) {
        let src = canonical(src);
        if blocks.get(&src).is_some_and(|b| b.live(now)) {
            return Decision::Block(src);
        }
    }
    let mut order: Vec<&Entry> = entries.iter().collect();
    order.sort_by_key(|e| (e.priority, e.id));
    order
        .into_iter()
        .find(|e| e.live(now) && e.rules.iter().any(|r| r.matches(m)))
        .map_or(Decision::Default, |e| Decision::Entry(e.id))
}

/// The aligned blocks `(prefix length, base)` of 16-bit values that tile `[lo, hi]`.
pub(crate) fn port_blocks(lo: u16, hi: u16) -> Vec<(u8, u16)> {
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    let mut out = Vec::new();
    while lo <= hi {
        let mut size: u32 = if lo == 0 {
            1 << 16
        } else {
            lo & lo.wrapping_neg()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push(((16 - size.trailing_zeros()) as u8, lo as u16));
        lo += size;
    }
    out
}

/// A bitset over ranks.
pub(crate) type Bits = Vec<u64>;

/// One rule slot of a bank: what the program reads for the winning rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Record {
    /// XDP verdict.
    pub verdict: u32,
    /// Counter slot.
    pub counter: u32,
}

impl Record {
    /// The rules-array value: the program loads it as one u64, verdict in the low half.
    pub fn bytes(&self) -> [u8; 8] {
        (u64::from(self.verdict) | (u64::from(self.counter) << 32)).to_ne_bytes()
    }
}

/// A rule in rank order with what the bank needs of its entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ranked<'a> {
    /// The rule.
    pub rule: &'a Rule,
    /// Its entry's verdict and counter.
    pub record: Record,
    /// Its entry's id (rules of one entry are consecutive).
    pub entry: u64,
    /// Its entry's deadline (`CLOCK_MONOTONIC` ns).
    pub expires: Option<u64>,
}

/// The complete content of one bank: what the maps must hold for a set of entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bank {
    /// [`CLASS_PER_BANK`] bitsets.
    pub class: Vec<Bits>,
    /// Source IPv4 trie: (prefix length, address) → bits.
    pub src4: BTreeMap<(u8, u32), Bits>,
    /// Destination IPv4 trie.
    pub dst4: BTreeMap<(u8, u32), Bits>,
    /// Source IPv6 trie.
    pub src6: BTreeMap<(u8, u128), Bits>,
    /// Destination IPv6 trie.
    pub dst6: BTreeMap<(u8, u128), Bits>,
    /// Source port trie: (prefix length of 16, base) → bits.
    pub sport: BTreeMap<(u8, u16), Bits>,
    /// Destination port trie.
    pub dport: BTreeMap<(u8, u16), Bits>,
    /// One record per rank (unused ranks zero).
    pub records: Vec<Record>,
    /// The deadlines of the entries that expire, ascending; `u64::MAX` after them (one slot
    /// per rank).
    pub deadlines: Vec<u64>,
    /// `cmask[c]`: the ranks of the entries with the first `c` deadlines (ranks + 1 slots).
    pub cmask: Vec<Bits>,
    /// [`feature`] bits.
    pub features: u32,
    /// Verdict for frames no live rule matches.
    pub default: u32,
}

impl Bank {
    /// The content for `ranked` (every rule in rank order). `words` × 64 is the number of
    /// ranks.
    pub fn build(ranked: &[Ranked<'_>], words: usize, default: Action) -> Bank {
        let ranks = words * 64;
        assert!(ranked.len() <= ranks, "more rules than ranks");
        let empty = vec![0u64; words];
        let mut b = Bank {
            class: vec![empty.clone(); CLASS_PER_BANK],
            src4: BTreeMap::new(),
            dst4: BTreeMap::new(),
            src6: BTreeMap::new(),
            dst6: BTreeMap::new(),
            sport: BTreeMap::new(),
            dport: BTreeMap::new(),
            records: vec![Record::default(); ranks],
            deadlines: vec![u64::MAX; ranks],
            cmask: vec![empty.clone(); ranks + 1],
            features: 0,
            default: default.verdict(),
        };
        let set = |bits: &mut Bits, rank: usize| bits[rank / 64] |= 1 << (rank % 64);
        // Entries that expire, by deadline (then id): their ranks.
        let mut expiring: BTreeMap<(u64, u64), Bits> = BTreeMap::new();
        for (rank, r) in ranked.iter().enumerate() {
            b.records[rank] = r.record;
            if let Some(t) = r.expires {
                set(
                    expiring
                        .entry((t, r.entry))
                        .or_insert_with(|| empty.clone()),
                    rank,
                );
            }
            let vers = r.rule.versions();
            for ip in [0u8, 4, 6] {
                for l4 in [false, true] {
                    for proto in 0..=255u8 {
                        if class_lets_through(r.rule, &vers, ip, proto, l4) {
                            set(&mut b.class[class_index(ip, proto, l4)], rank);
                        }
                    }
                }
            }
        }
        if !expiring.is_empty() {
            b.features |= feature::EXPIRY;
        }
        let mut acc = empty.clone();
        for (c, ((t, _), bits)) in expiring.iter().enumerate() {
            b.deadlines[c] = *t;
            acc.iter_mut().zip(bits).for_each(|(a, x)| *a |= x);
            b.cmask[c + 1] = acc.clone();
        }
        for c in expiring.len() + 1..=ranks {
            b.cmask[c] = acc.clone();
        }
        // The prefixes each trie needs: every rule's, and /0.
        let v4 = |p: &Option<Prefix>| match p.map(|p| (p.addr, p.len)) {
            Some((IpAddr::V4(a), len)) => Some((len, u32::from(a))),
            _ => None,
        };
        let v6 = |p: &Option<Prefix>| match p.map(|p| (p.addr, p.len)) {
            Some((IpAddr::V6(a), len)) => Some((len, u128::from(a))),
            _ => None,
        };
        fill_trie(
            &mut b.src4,
            ranked,
            words,
            32,
            |r| v4(&r.src),
            |r| r.src.is_none(),
        );
        fill_trie(
            &mut b.dst4,
            ranked,
            words,
            32,
            |r| v4(&r.dst),
            |r| r.dst.is_none(),
        );
        fill_trie(
            &mut b.src6,
            ranked,
            words,
            128,
            |r| v6(&r.src),
            |r| r.src.is_none(),
        );
        fill_trie(
            &mut b.dst6,
            ranked,
            words,
            128,
            |r| v6(&r.dst),
            |r| r.dst.is_none(),
        );
        fill_port_trie(&mut b.sport, ranked, words, |r| r.sport);
        fill_port_trie(&mut b.dport, ranked, words, |r| r.dport);
        for r in ranked.iter().map(|r| r.rule) {
            let f = [
                (v4(&r.src).is_some(), feature::SRC4),
                (v4(&r.dst).is_some(), feature::DST4),
                (v6(&r.src).is_some(), feature::SRC6),
                (v6(&r.dst).is_some(), feature::DST6),
                (r.sport.is_some(), feature::SPORT),
                (r.dport.is_some(), feature::DPORT),
            ];
            for (on, bit) in f {
                if on {
                    b.features |= bit;
                }
            }
        }
        // A trie no rule constrains is not looked up: keep it empty.
        let off = |bit: u32| b.features & bit == 0;
        if off(feature::SRC4) {
            b.src4.clear();
        }
        if off(feature::DST4) {
            b.dst4.clear();
        }
        if off(feature::SRC6) {
            b.src6.clear();
        }
        if off(feature::DST6) {
            b.dst6.clear();
        }
        if off(feature::SPORT) {
            b.sport.clear();
        }
        if off(feature::DPORT) {
            b.dport.clear();
        }
        b
    }

    /// What the maps of a bank hold when they are created: zeros, no trie entries.
    pub fn zeroed(words: usize) -> Bank {
        let ranks = words * 64;
        Bank {
            class: vec![vec![0; words]; CLASS_PER_BANK],
            src4: BTreeMap::new(),
            dst4: BTreeMap::new(),
            src6: BTreeMap::new(),
            dst6: BTreeMap::new(),
            sport: BTreeMap::new(),
            dport: BTreeMap::new(),
            records: vec![Record::default(); ranks],
            deadlines: vec![0; ranks],
            cmask: vec![vec![0; words]; ranks + 1],
            features: 0,
            default: 0,
        }
    }

    /// A bank whose content is unknown between `a` and `b` (a sync failed half-way): every
    /// key of either compares unequal to anything real, so the next sync rewrites or deletes
    /// it.
    pub fn unknown(a: &Bank, b: &Bank) -> Bank {
        fn both<K: Ord + Copy>(a: &BTreeMap<K, Bits>, b: &BTreeMap<K, Bits>) -> BTreeMap<K, Bits> {
            a.keys().chain(b.keys()).map(|k| (*k, Vec::new())).collect()
        }
        Bank {
            class: vec![Vec::new(); a.class.len()],
            src4: both(&a.src4, &b.src4),
            dst4: both(&a.dst4, &b.dst4),
            src6: both(&a.src6, &b.src6),
            dst6: both(&a.dst6, &b.dst6),
            sport: both(&a.sport, &b.sport),
            dport: both(&a.dport, &b.dport),
            records: vec![
                Record {
                    counter: u32::MAX,
                    ..Record::default()
                };
                a.records.len()
            ],
            deadlines: vec![0; a.deadlines.len()],
            cmask: vec![Vec::new(); a.cmask.len()],
            features: u32::MAX,
            default: u32::MAX,
        }
    }

    /// The meta value of the bank: features in the low half, the default verdict in the high.
    pub fn meta(&self) -> u64 {
        u64::from(self.features) | (u64::from(self.default) << 32)
    }
}

/// Index of the class entry for a frame: IP version `ip` (0/4/6), protocol byte, L4 header
/// present. The program computes the same: `(ip * 3 >> 3) * 512 + l4 * 256 + proto`.
pub(crate) fn class_index(ip: u8, proto: u8, l4: bool) -> usize {
    ((usize::from(ip) * 3) >> 3) * 512 + usize::from(l4) * 256 + usize::from(proto)
}

/// Whether rule `r` (whose [`Rule::versions`] are `vers`) lets frames of IP version `ip`
/// (0/4/6) with protocol `proto` and the L4 header present or not through: its IP version,
/// protocol and "has ports" conditions ([`Rule::matches`] restricted to those).
fn class_lets_through(r: &Rule, vers: &[IpVersion], ip: u8, proto: u8, l4: bool) -> bool {
    if vers.is_empty() {
        return true;
    }
    let v = match ip {
        4 => IpVersion::V4,
        6 => IpVersion::V6,
        _ => return false,
    };
    if !vers.contains(&v) || r.proto.is_some_and(|p| p != proto) {
        return false;
    }
    !(r.sport.is_some() || r.dport.is_some()) || l4
}

/// The bit-width-generic prefix containment test: does `(plen, p)` contain `(elen, e)`?
fn contains<T>(plen: u8, p: T, elen: u8, e: T, width: u32) -> bool
where
    T: Copy + PartialEq + std::ops::Shr<u32, Output = T>,
{
    if plen > elen {
        return false;
    }
    let shift = width - u32::from(plen);
    plen == 0 || (p >> shift) == (e >> shift)
}

fn fill_trie<T>(
    trie: &mut BTreeMap<(u8, T), Bits>,
    ranked: &[Ranked<'_>],
    words: usize,
    width: u32,
    prefix: impl Fn(&Rule) -> Option<(u8, T)>,
    wildcard: impl Fn(&Rule) -> bool,
) where
    T: Copy + Ord + Default + std::ops::Shr<u32, Output = T>,
{
    trie.insert((0, T::default()), vec![0u64; words]);
    for r in ranked {
        if let Some(p) = prefix(r.rule) {
            trie.insert(p, vec![0u64; words]);
        }
    }
    for (&(elen, e), bits) in trie.iter_mut() {
        for (rank, r) in ranked.iter().map(|r| r.rule).enumerate() {
            let hit =
                wildcard(r) || prefix(r).is_some_and(|(plen, p)| contains(plen, p, elen, e, width));
            if hit {
                bits[rank / 64] |= 1 << (rank % 64);
            }
        }
    }
}

fn fill_port_trie(
    trie: &mut BTreeMap<(u8, u16), Bits>,
    ranked: &[Ranked<'_>],
    words: usize,
    range: impl Fn(&Rule) -> Option<(u16, u16)>,
) {
    trie.insert((0, 0), vec![0u64; words]);
    for r in ranked {
        if let Some((lo, hi)) = range(r.rule) {
            for blk in port_blocks(lo, hi) {
                trie.insert(blk, vec![0u64; words]);
            }
        }
    }
    for (&(len, base), bits) in trie.iter_mut() {
        let end = u32::from(base) + (1u32 << (16 - u32::from(len))) - 1;
        for (rank, r) in ranked.iter().map(|r| r.rule).enumerate() {
            let hit = match range(r) {
                None => true,
                Some((lo, hi)) => lo <= base && end <= u32::from(hi),
            };
            if hit {
                bits[rank / 64] |= 1 << (rank % 64);
            }
        }
    }
}

/// The bank's answer for a parsed frame, computed from its bitsets the way the program does
/// (class AND tries, then the lowest live rank): checks [`Bank::build`] against
/// [`Rule::matches`] without a kernel.
#[cfg(test)]
pub(crate) fn bank_winner(b: &Bank, m: &PacketMeta, now: u64) -> Option<usize> {
    if m.l3_off == 0 {
        return None;
    }
    let l4 = m.flags & FLAG_L4 != 0;
    let mut acc = b.class[class_index(m.ip_version, m.proto, l4)].clone();
    let and = |acc: &mut Bits, bits: &Bits| acc.iter_mut().zip(bits).for_each(|(a, b)| *a &= b);
    fn longest<T: Copy + Ord + std::ops::Shr<u32, Output = T>>(
        t: &BTreeMap<(u8, T), Bits>,
        x: T,
        width: u32,
    ) -> &Bits {
        t.iter()
            .filter(|(&(len, p), _)| contains(len, p, width as u8, x, width))
            .max_by_key(|(&(len, _), _)| len)
            .map(|(_, b)| b)
            .expect("every trie has a /0 entry")
    }
    let on = |bit: u32| b.features & bit != 0;
    match m.ip_version {
        4 => {
            if on(feature::SRC4) {
                and(&mut acc, longest(&b.src4, m.src_ip4, 32));
            }
            if on(feature::DST4) {
                and(&mut acc, longest(&b.dst4, m.dst_ip4, 32));
            }
        }
        6 => {
            if on(feature::SRC6) {
                and(
                    &mut acc,
                    longest(&b.src6, u128::from_be_bytes(m.src_ip6), 128),
                );
            }
            if on(feature::DST6) {
                and(
                    &mut acc,
                    longest(&b.dst6, u128::from_be_bytes(m.dst_ip6), 128),
                );
            }
        }
        _ => {}
    }
    if l4 {
        if on(feature::SPORT) {
            and(&mut acc, longest(&b.sport, m.src_port, 16));
        }
        if on(feature::DPORT) {
            and(&mut acc, longest(&b.dport, m.dst_port, 16));
        }
    }
    if on(feature::EXPIRY) {
        let c = b.deadlines.iter().filter(|&&t| t <= now).count();
        and(&mut acc, &b.cmask[c].iter().map(|w| !w).collect());
    }
    (0..acc.len() * 64).find(|&rank| acc[rank / 64] & (1 << (rank % 64)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::parse;
    use crate::xdp::rules::parse_filter;

    #[test]
    fn port_blocks_tile_the_range_exactly() {
        assert_eq!(port_blocks(0, 65535), vec![(0, 0)]);
        assert_eq!(port_blocks(9000, 9000), vec![(16, 9000)]);
        assert_eq!(port_blocks(8, 15), vec![(13, 8)]);
        for (lo, hi) in [
            (1, 65534),
            (1, 1024),
            (9000, 9010),
            (0, 0),
            (65535, 65535),
            (3, 70),
        ] {
            let blocks = port_blocks(lo, hi);
            assert!(blocks.len() <= 30, "{lo}-{hi}: {}", blocks.len());
            let mut covered = Vec::new();
            for (len, base) in blocks {
                let size = 1u32 << (16 - u32::from(len));
                assert_eq!(u32::from(base) % size, 0, "aligned");
                covered.extend((u32::from(base)..u32::from(base) + size).map(|p| p as u16));
            }
            assert_eq!(covered, (lo..=hi).collect::<Vec<u16>>(), "{lo}-{hi}");
        }
    }

    #[test]
    fn class_index_matches_the_program_formula() {
        assert_eq!(class_index(0, 0, false), 0);
        assert_eq!(class_index(4, 17, true), 512 + 256 + 17);
        assert_eq!(class_index(6, 255, true), 1024 + 511);
    }

    #[test]
    fn actions_parse_and_map_to_verdicts() {
        assert_eq!("ALLOW".parse::<Action>().unwrap(), Action::Allow);
        assert_eq!("drop".parse::<Action>().unwrap().verdict(), XDP_DROP);
        assert_eq!(Action::Pass.verdict(), XDP_PASS);
        assert!("reject"
            .parse::<Action>()
            .unwrap_err()
            .to_string()
            .contains("'allow'"));
    }

    #[test]
    fn vlan_and_ethertype_rules_are_refused_with_a_fix() {
        for f in ["vlan 100", "ether proto arp", "vlan and udp"] {
            let e = check_rules(&parse_filter(f).unwrap())
                .unwrap_err()
                .to_string();
            assert!(e.contains("XdpProgram filter"), "{f}: {e}");
        }
        assert!(check_rules(&[]).is_err());
        assert!(check_rules(
            &parse_filter("ip6 src 2001:db8::/32 and tcp dst port 1-1024").unwrap()
        )
        .is_ok());
    }

    fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&28u16.to_be_bytes());
        f[23] = 17;
        f[26..30].copy_from_slice(&src);
        f[30..34].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    /// The bitsets of a bank pick the same rule as `Rule::matches` in rank order, on frames
    /// around the rules' prefixes and port ranges.
    #[test]
    fn bank_bitsets_agree_with_the_rule_matcher() {
        let filters = [
            "src 198.18.0.0/15 and udp dst port 9000-9010",
            "src 198.18.0.5 and dst 198.18.0.0/16",
            "udp src port 1-1023",
            "tcp",
            "dst 198.18.128.0/17 and port 53",
            "ip6 src 2001:db8::/32",
            "all",
        ];
        let rules: Vec<Rule> = filters
            .iter()
            .flat_map(|f| parse_filter(f).unwrap())
            .collect();
        let ranked: Vec<Ranked<'_>> = rules
            .iter()
            .enumerate()
            .map(|(i, r)| Ranked {
                rule: r,
                record: Record {
                    verdict: 1,
                    counter: i as u32,
                },
                entry: i as u64,
                expires: None,
            })
            .collect();
        let bank = Bank::build(&ranked, 1, Action::Pass);
        assert_eq!(
            bank.features,
            feature::SRC4 | feature::DST4 | feature::SRC6 | feature::SPORT | feature::DPORT
        );
        let addrs = [
            [198, 18, 0, 5],
            [198, 18, 0, 6],
            [198, 19, 1, 1],
            [198, 18, 200, 1],
            [10, 0, 0, 1],
        ];
        let ports = [0u16, 1, 53, 1023, 1024, 8999, 9000, 9010, 9011];
        let mut n = 0;
        for src in addrs {
            for dst in addrs {
                for sp in ports {
                    for dp in ports {
                        let m = parse(&udp4(src, dst, sp, dp));
                        let want = rules.iter().position(|r| r.matches(&m));
                        assert_eq!(
                            bank_winner(&bank, &m, 0),
                            want,
                            "{src:?}:{sp} > {dst:?}:{dp}"
                        );
                        n += 1;
                    }
                }
            }
        }
        assert!(n > 1000);
    }
}
