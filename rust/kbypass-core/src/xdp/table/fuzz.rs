//! Differential test of the table: the kernel against [`layout::decide`] on random rule sets,
//! blocks and frames.
//!
//! One table lives through many rounds. Each round changes it the way a user would — removes
//! some entries, adds others (1–3 rules each from the filter grammar's IP terms: v4/v6 source
//! and destination prefixes, protocols, port ranges, in any combination), with random actions,
//! priorities that tie often, and deadlines already passed or an hour away; blocks and
//! unblocks source addresses, with passed or future deadlines; sometimes sweeps — then runs
//! frames built near a random rule (its prefixes, ports and protocol, one bit or one port
//! off at the edges), sometimes from a blocked source, mutated like the filter fuzz's frames
//! (cuts, lying lengths, VLAN tags, IPv6 extension headers, fragments, flipped bytes). Every
//! frame must get the verdict the reference gives (`BPF_PROG_TEST_RUN`), and after every
//! round each entry's, each block's and the default's counters must equal the packets and
//! bytes the reference attributed to them. The program id never changes.
//!
//! ```text
//! cargo test -p kbypass-core --lib -- xdp::table::fuzz --nocapture                 # CI: 20,000 frames
//! KBYPASS_FUZZ_CASES=1000000 cargo test -p kbypass-core --release --lib -- xdp::table::fuzz --nocapture
//! KBYPASS_FUZZ_SEED=0x1234 ...
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Instant;

use super::super::fuzz::{build, env_u64, hex, mutate, v6_addr, Rng, PORTS, PROTOS, V4, V6};
use super::super::rules::{format_filter, parse_filter, Rule};
use super::*;
use crate::packet::parse::parse;
use crate::sys::bpf::{xdp_action_name, XDP_DROP, XDP_PASS, XDP_REDIRECT};
use crate::sys::testutil::is_root;

const DEFAULT_CASES: u64 = 20_000;
const FRAMES_PER_ROUND: u64 = 200;
const HOUR: u64 = 3_600_000_000_000;

/// One random rule of the IP subset of the grammar (conflicts included; the caller retries).
fn rule_text(g: &mut Rng) -> String {
    if g.chance(3) {
        return "all".into();
    }
    let v6 = g.chance(40);
    let mut t: Vec<String> = Vec::new();
    if g.chance(30) {
        t.push(if v6 { "ip6" } else { g.pick(&["ip", "ip4"]) }.into());
    }
    match g.below(20) {
        0..=9 => t.push(g.pick(&["udp", "tcp", "sctp"]).into()),
        10 => t.push(if v6 { "icmp6" } else { "icmp" }.into()),
        11..=12 => t.push(format!("proto {}", g.pick(&PROTOS))),
        _ => {}
    }
    for dir in ["src", "dst"] {
        if g.chance(if dir == "src" { 45 } else { 30 }) {
            let p = if v6 {
                format!(
                    "{}/{}",
                    v6_addr(g.pick(&V6)),
                    g.pick(&[0, 16, 32, 33, 64, 127, 128])
                )
            } else {
                let a = g.pick(&V4);
                format!(
                    "{}.{}.{}.{}/{}",
                    a[0],
                    a[1],
                    a[2],
                    a[3],
                    g.pick(&[0, 8, 15, 16, 17, 24, 31, 32])
                )
            };
            t.push(format!("{dir} {p}"));
        }
    }
    for dir in ["src ", "dst ", ""] {
        if g.chance(if dir.is_empty() { 8 } else { 30 }) {
            let lo = g.pick(&PORTS);
            let r = match g.below(4) {
                0 => format!("{lo}"),
                1 => format!(
                    "{lo}-{}",
                    lo.saturating_add(g.pick(&[1, 7, 8, 1000, 40000]))
                ),
                2 => format!("0-{lo}"),
                _ => format!("{lo}-65535"),
            };
            t.push(format!("{dir}port {r}"));
        }
    }
    if t.is_empty() {
        t.push("all".into());
    }
    t.join(" ")
}

/// An entry's rules: 1–3 random rules the table accepts.
fn entry_rules(g: &mut Rng) -> (String, Vec<Rule>) {
    loop {
        let n = 1 + g.below(3);
        let text = (0..n)
            .map(|_| rule_text(g))
            .collect::<Vec<_>>()
            .join(" or ");
        if let Ok(rules) = parse_filter(&text) {
            if check_rules(&rules).is_ok() && rules.len() <= 4 {
                return (text, rules);
            }
        }
    }
}

/// Source addresses blocks are drawn from (the same pools the rules and frames use).
fn block_addr(g: &mut Rng) -> IpAddr {
    if g.chance(60) {
        IpAddr::from(g.pick(&V4))
    } else {
        IpAddr::from(v6_addr(g.pick(&V6)))
    }
}

/// Expected counters, from the reference's decisions.
#[derive(Default)]
struct Expected {
    entries: BTreeMap<u64, Counts>,
    blocks: HashMap<IpAddr, Counts>,
    default: Counts,
}

fn bump(c: &mut Counts, len: usize) {
    c.packets += 1;
    c.bytes += len as u64;
}

/// What the frames exercised.
#[derive(Debug, Default)]
struct Seen {
    blocked: u64,
    allow: u64,
    drop: u64,
    pass: u64,
    default: u64,
    /// Frames an expired entry would have decided had it not expired.
    past_expired: u64,
    /// Frames whose winner was not the first entry that matched in id order (priorities).
    reordered: u64,
    ipv6: u64,
    /// Frames decided by an entry whose rules sit beyond the first 64-bit word.
    high_rank: u64,
}

#[test]
fn kernel_and_reference_agree_on_random_tables() {
    if !is_root() {
        eprintln!("skipped: needs root (CAP_BPF) to load and test-run XDP programs");
        return;
    }
    let cases = env_u64("KBYPASS_FUZZ_CASES").unwrap_or(DEFAULT_CASES);
    let seed = env_u64("KBYPASS_FUZZ_SEED").unwrap_or(0x7461_626c_6573_0001);
    let mut g = Rng::new(seed);
    let mut seen = Seen::default();
    let t0 = Instant::now();
    // A small table, full at times; then a larger one whose first 100 ranks hold entries no
    // frame matches, so that the random entries live in the second and third 64-bit words.
    let first = cases / 2;
    let (r1, i1) = phase(&mut g, seed, 64, 0, first, &mut seen);
    let (r2, i2) = phase(&mut g, seed, 256, 100, cases - first, &mut seen);
    let done = cases;
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "xdp::table::fuzz: {done} frames over {} rounds agree (seed {seed:#x}) in {secs:.1} s \
         ({:.0} frames/s); {seen:?}; {i1:?}; {i2:?}",
        r1 + r2,
        done as f64 / secs
    );
    for (what, n) in [
        ("blocked", seen.blocked),
        ("allowed", seen.allow),
        ("dropped", seen.drop),
        ("passed by an entry", seen.pass),
        ("default", seen.default),
        ("an expired entry skipped", seen.past_expired),
        ("a later entry winning on priority", seen.reordered),
        ("IPv6", seen.ipv6),
        ("decided by a rank beyond 64", seen.high_rank),
    ] {
        assert!(n > done / 200, "only {n} of {done} frames were {what}");
    }
}

/// `cases` frames through one table of `max_rules` slots whose first `fillers` ranks hold
/// entries that match no frame; returns the rounds and the table's bookkeeping.
fn phase(
    g: &mut Rng,
    seed: u64,
    max_rules: u32,
    fillers: u32,
    cases: u64,
    seen: &mut Seen,
) -> (u64, TableInfo) {
    let t = XdpTable::new(TableOptions {
        max_rules,
        max_blocks: 64,
        default: Action::Pass,
        ..Default::default()
    })
    .unwrap();
    let prog_id = t.info().id;
    let mut texts: HashMap<u64, String> = HashMap::new();
    let mut want = Expected::default();
    // Sources and ports no frame has (the pools hold neither 203.0.113.0/24 nor port 7).
    let filler_ids = t
        .apply(
            (0..fillers)
                .map(|i| NewEntry {
                    priority: -10,
                    ..NewEntry::new(
                        parse_filter(&format!("src 203.0.113.{i} and udp dst port 7")).unwrap(),
                        Action::Drop,
                    )
                })
                .collect(),
            &[],
        )
        .unwrap();
    for id in &filler_ids {
        want.entries.insert(*id, Counts::default());
    }
    let (mut done, mut rounds) = (0u64, 0u64);
    while done < cases {
        rounds += 1;
        let now = ktime_ns();
        // Change the table.
        let live: Vec<u64> = t
            .entries()
            .unwrap()
            .iter()
            .map(|e| e.id)
            .filter(|id| !filler_ids.contains(id))
            .collect();
        let remove: Vec<u64> = live.into_iter().filter(|_| g.chance(30)).collect();
        let mut add = Vec::new();
        for _ in 0..g.below(5) {
            let (text, rules) = entry_rules(g);
            add.push((
                text,
                NewEntry {
                    rules,
                    action: g.pick(&[Action::Allow, Action::Drop, Action::Pass]),
                    priority: g.pick(&[0, 0, 0, 1, -1, 5]),
                    expires_ns: match g.below(5) {
                        0 => Some(now - 1 - g.below(HOUR)),
                        1 => Some(now + HOUR),
                        _ => None,
                    },
                },
            ));
        }
        let news: Vec<NewEntry> = add.iter().map(|(_, e)| e.clone()).collect();
        match t.apply(news, &remove) {
            Ok(ids) => {
                for id in &remove {
                    texts.remove(id);
                    want.entries.remove(id);
                }
                for (id, (text, _)) in ids.iter().zip(&add) {
                    texts.insert(*id, text.clone());
                    want.entries.insert(*id, Counts::default());
                }
            }
            Err(e) => assert_eq!(e.errno(), Some(libc::ENOSPC), "apply failed: {e}"),
        }
        for _ in 0..g.below(3) {
            let addr = block_addr(g);
            if g.chance(25) {
                t.unblock(addr).unwrap();
                want.blocks.remove(&canonical(addr));
                continue;
            }
            let deadline = match g.below(3) {
                0 => Some(now - 1 - g.below(HOUR)),
                1 => Some(now + HOUR),
                _ => None,
            };
            let action = g.pick(&[Action::Drop, Action::Pass, Action::Allow]);
            t.block_until(addr, deadline, action).unwrap();
            want.blocks.entry(canonical(addr)).or_default();
        }
        if g.chance(10) {
            let entries = t.entries().unwrap();
            let blocks = t.blocks().unwrap();
            let now = ktime_ns();
            let dead_e: Vec<u64> = entries
                .iter()
                .filter(|e| !e.live(now))
                .map(|e| e.id)
                .collect();
            let dead_b = blocks.iter().filter(|b| !b.block.live(now)).count();
            let s = t.sweep().unwrap();
            assert_eq!((s.entries, s.blocks), (dead_e.len(), dead_b));
            for id in dead_e {
                want.entries.remove(&id);
                texts.remove(&id);
            }
            want.blocks
                .retain(|a, _| blocks.iter().any(|b| b.addr == *a && b.block.live(now)));
        }
        assert_eq!(t.info().id, prog_id);
        assert_eq!(
            t.prog().info().unwrap().id,
            prog_id,
            "the program was never replaced"
        );

        // Frames.
        let entries = t.entries().unwrap();
        let blocks: HashMap<IpAddr, Block> = t
            .blocks()
            .unwrap()
            .iter()
            .map(|b| (b.addr, b.block))
            .collect();
        let block_list: Vec<IpAddr> = blocks.keys().copied().collect();
        let rules: Vec<&Rule> = entries
            .iter()
            .filter(|e| !filler_ids.contains(&e.id))
            .flat_map(|e| &e.rules)
            .collect();
        // Rank of each entry's first rule, to see how far up the bitsets the winners are.
        let mut first_rank = HashMap::new();
        let mut rank = 0;
        for e in &entries {
            first_rank.insert(e.id, rank);
            rank += e.rules.len();
        }
        for _ in 0..FRAMES_PER_ROUND.min(cases - done) {
            let r = (!rules.is_empty() && !g.chance(10))
                .then(|| rules[g.below(rules.len() as u64) as usize]);
            let mut b = build(g, r);
            if !block_list.is_empty() && g.chance(15) {
                if let Some(l3) = b.l3 {
                    match (g.pick(&block_list), b.ip) {
                        (IpAddr::V4(a), 4) => {
                            b.frame[l3 + 12..l3 + 16].copy_from_slice(&a.octets())
                        }
                        (IpAddr::V6(a), 6) => b.frame[l3 + 8..l3 + 24].copy_from_slice(&a.octets()),
                        _ => {}
                    }
                }
            }
            if g.chance(50) {
                mutate(g, &mut b);
            }
            let f = &b.frame;
            let m = parse(f);
            let now = ktime_ns();
            let d = decide(&entries, &blocks, &m, now);
            let want_verdict = match d {
                Decision::Block(a) => blocks[&a].action.verdict(),
                Decision::Entry(id) => entries
                    .iter()
                    .find(|e| e.id == id)
                    .unwrap()
                    .action
                    .verdict(),
                Decision::Default => XDP_PASS,
            };
            let got = t.test_run(f, 1).unwrap().retval;
            if got != want_verdict {
                let rules_text: Vec<String> = entries
                    .iter()
                    .map(|e| {
                        format!(
                            "  id {} prio {} {:?} {} live {}: {}",
                            e.id,
                            e.priority,
                            e.action,
                            format_filter(&e.rules),
                            e.live(now),
                            texts.get(&e.id).map_or("", String::as_str)
                        )
                    })
                    .collect();
                panic!(
                    "the kernel and the reference disagree (seed {seed:#x}, case {done}, round {rounds})\n\
                     kernel {}, reference {} ({d:?})\nentries (decision order):\n{}\nblocks: {blocks:?}\n\
                     parsed: {m:?}\nframe ({} bytes):\n{}",
                    xdp_action_name(got),
                    xdp_action_name(want_verdict),
                    rules_text.join("\n"),
                    f.len(),
                    hex(f)
                );
            }
            match d {
                Decision::Block(a) => {
                    bump(want.blocks.get_mut(&a).unwrap(), f.len());
                    seen.blocked += 1;
                }
                Decision::Entry(id) => {
                    bump(want.entries.get_mut(&id).unwrap(), f.len());
                    let first = entries
                        .iter()
                        .filter(|e| e.live(now) && e.rules.iter().any(|r| r.matches(&m)))
                        .map(|e| e.id)
                        .min();
                    seen.reordered += u64::from(first != Some(id));
                    seen.high_rank += u64::from(first_rank[&id] >= 64);
                }
                Decision::Default => {
                    bump(&mut want.default, f.len());
                    seen.default += 1;
                }
            }
            match (d, got) {
                (Decision::Entry(_), XDP_REDIRECT) => seen.allow += 1,
                (Decision::Entry(_), XDP_DROP) => seen.drop += 1,
                (Decision::Entry(_), _) => seen.pass += 1,
                _ => {}
            }
            let expired_would_win = entries
                .iter()
                .filter(|e| e.rules.iter().any(|r| r.matches(&m)))
                .min_by_key(|e| (e.priority, e.id))
                .is_some_and(|e| !e.live(now));
            seen.past_expired += u64::from(expired_would_win && m.l3_off != 0);
            seen.ipv6 += u64::from(m.ip_version == 6);
            done += 1;
        }
        // Counters: exactly what the reference attributed.
        let stats = t.stats().unwrap();
        assert_eq!(
            stats.keys().collect::<Vec<_>>(),
            want.entries.keys().collect::<Vec<_>>()
        );
        for (id, c) in &want.entries {
            assert_eq!(
                stats[id], *c,
                "counters of entry {id} (round {rounds}, seed {seed:#x})"
            );
        }
        for bi in t.blocks().unwrap() {
            assert_eq!(
                bi.counts,
                want.blocks.get(&bi.addr).copied().unwrap_or_default(),
                "counters of block {} (round {rounds}, seed {seed:#x})",
                bi.addr
            );
        }
        assert_eq!(
            t.default_counts().unwrap(),
            want.default,
            "default counters"
        );
    }
    (rounds, t.table_info().unwrap())
}
