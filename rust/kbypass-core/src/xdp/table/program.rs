//! The table's XDP program, built with [`crate::xdp::asm`] on the filter programs' header walk.
//!
//! ```text
//! bank = meta[0]; (features, default) = meta[1 + bank]; len = data_end - data
//! emit_headers (the filter programs' walk)       cut short → default
//! if meta[3] and IP: blocks[source] live?        → count blocks, its action
//! M = class[bank][ip, l4, proto]
//! M &= src/dst trie[bank][address]               (IPv4 or IPv6, when a rule has one)
//! M &= sport/dport trie[bank][port]              (when the L4 header is there and a rule has one)
//! M &= ~cmask[bank][c]                           (when an entry of the bank expires: c =
//!                                                 how many deadlines[bank] are ≤ now)
//! rank = lowest bit of M                          none → default
//! record = rules[bank][rank]; count counters[record.counter]; return record's verdict
//! ```
//!
//! There is no loop: expiry is one unrolled binary search over the bank's sorted deadlines
//! (skipped while the first deadline is ahead) and one precomputed mask; the lowest set bit
//! is isolated with `x & -x` and its index counted with a branch-free popcount of
//! `(x & -x) - 1`. So the verifier's work grows with the number of 64-rule words, not with
//! the rules. Keys for the tries start with the bank as a 32-bit word, so both banks live in
//! one trie and a bank is a subtree.

use std::os::fd::RawFd;

use super::super::asm::{helper, Alu, Asm, Cond, Label, Size, R0, R1, R10, R2, R3, R5, R6};
use super::super::program::{emit_headers, emit_redirect, hdr, Depth, HeaderWalk, RedirectForm};
use super::layout::{feature, CLASS_PER_BANK};
use crate::error::Result;
use crate::sys::bpf::{BpfInsn, XDP_DROP, XDP_PASS, XDP_REDIRECT};

/// The fds of the maps the program uses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MapFds {
    pub meta: RawFd,
    pub class: RawFd,
    pub src4: RawFd,
    pub dst4: RawFd,
    pub src6: RawFd,
    pub dst6: RawFd,
    pub sport: RawFd,
    pub dport: RawFd,
    pub rules: RawFd,
    pub deadlines: RawFd,
    pub cmask: RawFd,
    pub counters: RawFd,
    pub blocks: RawFd,
    pub block_counts: RawFd,
    pub xsks: RawFd,
}

/// Meta array slots.
pub(crate) mod meta {
    /// The active bank (0 or 1).
    pub const ACTIVE: u32 = 0;
    /// Bank b's features and default verdict are at `BANK0 + b`.
    pub const BANK0: u32 = 1;
    /// Non-zero once a block was ever pushed (the block lookup is skipped before).
    pub const BLOCKS: u32 = 3;
    /// Entries.
    pub const ENTRIES: u32 = 4;
}

// Stack slots (offsets from r10, 8-byte aligned).
const S_BANK: i16 = -8;
const S_FEAT: i16 = -16;
const S_DEFAULT: i16 = -24;
const S_LEN: i16 = -32;
const S_VER: i16 = -40;
const S_PROTO: i16 = -48;
const S_SPORT: i16 = -56;
const S_DPORT: i16 = -64;
const S_NOW: i16 = -72;
const S_J: i16 = -80;
const S_EXP: i16 = -88;
const S_ACT: i16 = -112;
/// 4-byte array keys.
const S_AKEY: i16 = -120;
/// 24-byte trie / 16-byte block keys.
const S_KEY: i16 = -144;

/// Where the rule bitset M starts (`words` u64s below the key).
fn s_m(words: usize) -> i16 {
    S_KEY - 8 * words as i16
}

/// The shape of the program.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// u64 words per bitset (rule slots / 64).
    pub words: usize,
    /// Rule slots.
    pub slots: u32,
    /// The counter slot of the default action.
    pub default_counter: u32,
    /// How "allow" redirects.
    pub form: RedirectForm,
}

/// `r0 = lookup(map, r10 + key)`; on NULL go to `null`.
fn lookup(a: &mut Asm, map: RawFd, key: i16, null: Label) {
    a.ld_map_fd(R1, map)
        .mov64_reg(R2, R10)
        .alu64_imm(Alu::Add, R2, i32::from(key))
        .call(helper::MAP_LOOKUP_ELEM)
        .jmp_imm(Cond::Eq, R0, 0, null);
}

/// 4-byte array key from a constant.
fn akey_imm(a: &mut Asm, v: i32) {
    a.st_imm(Size::W, R10, S_AKEY, v);
}

/// M[i] &= value[i] for the value at r0.
fn and_into_m(a: &mut Asm, words: usize) {
    for i in 0..words {
        let off = s_m(words) + 8 * i as i16;
        a.ldx(Size::DW, R1, R0, 8 * i as i16)
            .ldx(Size::DW, R2, R10, off)
            .alu64_reg(Alu::And, R2, R1)
            .stx(Size::DW, R10, R2, off);
    }
}

/// Trie key header: prefix length `bits` (bank word + data) and the bank word.
fn trie_key_head(a: &mut Asm, bits: i32) {
    a.st_imm(Size::W, R10, S_KEY, bits)
        .ldx(Size::DW, R1, R10, S_BANK)
        .stx(Size::W, R10, R1, S_KEY + 4);
}

/// Count the frame (packets + 1, bytes + length) in the per-CPU value of `map` under the key
/// already on the stack at `key`; nothing when the key is absent.
fn count(a: &mut Asm, map: RawFd, key: i16) {
    let skip = a.label();
    lookup(a, map, key, skip);
    a.ldx(Size::DW, R1, R0, 0)
        .alu64_imm(Alu::Add, R1, 1)
        .stx(Size::DW, R0, R1, 0)
        .ldx(Size::DW, R1, R0, 8)
        .ldx(Size::DW, R2, R10, S_LEN)
        .alu64_reg(Alu::Add, R1, R2)
        .stx(Size::DW, R0, R1, 8)
        .bind(skip);
}

/// Return the verdict in S_ACT: redirect for XDP_REDIRECT, drop, else pass.
fn dispatch(a: &mut Asm, m: &MapFds, form: RedirectForm) {
    let (redirect, drop) = (a.label(), a.label());
    a.ldx(Size::DW, R1, R10, S_ACT)
        .jmp_imm(Cond::Eq, R1, XDP_REDIRECT as i32, redirect)
        .jmp_imm(Cond::Eq, R1, XDP_DROP as i32, drop)
        .mov64_imm(R0, XDP_PASS as i32)
        .exit()
        .bind(drop)
        .mov64_imm(R0, XDP_DROP as i32)
        .exit()
        .bind(redirect);
    emit_redirect(a, form, m.xsks, hdr::CTX);
}

/// popcount(r1) into r1 (branch-free; clobbers r2, r5).
fn popcount(a: &mut Asm) {
    a.mov64_reg(R2, R1)
        .alu64_imm(Alu::Rsh, R2, 1)
        .ld_imm64(R5, 0x5555_5555_5555_5555)
        .alu64_reg(Alu::And, R2, R5)
        .alu64_reg(Alu::Sub, R1, R2)
        .ld_imm64(R5, 0x3333_3333_3333_3333)
        .mov64_reg(R2, R1)
        .alu64_reg(Alu::And, R2, R5)
        .alu64_imm(Alu::Rsh, R1, 2)
        .alu64_reg(Alu::And, R1, R5)
        .alu64_reg(Alu::Add, R1, R2)
        .mov64_reg(R2, R1)
        .alu64_imm(Alu::Rsh, R2, 4)
        .alu64_reg(Alu::Add, R1, R2)
        .ld_imm64(R5, 0x0f0f_0f0f_0f0f_0f0f)
        .alu64_reg(Alu::And, R1, R5)
        .ld_imm64(R5, 0x0101_0101_0101_0101)
        .alu64_reg(Alu::Mul, R1, R5)
        .alu64_imm(Alu::Rsh, R1, 56);
}

/// The program. `m` are the maps (the XSKMAP decides where "allow" goes: the table's own, or
/// a test twin's).
pub(crate) fn table_program(m: &MapFds, shape: Shape) -> Result<Vec<BpfInsn>> {
    let words = shape.words;
    let sm = s_m(words);
    let mut a = Asm::new();
    let default = a.label();
    let short = a.label();
    let rules = a.label();

    // Bank, its features and default verdict, the frame length (ctx kept in r6 meanwhile).
    a.mov64_reg(R6, R1);
    akey_imm(&mut a, meta::ACTIVE as i32);
    let no_meta = a.label();
    lookup(&mut a, m.meta, S_AKEY, no_meta);
    a.ldx(Size::W, R1, R0, 0)
        .alu64_imm(Alu::And, R1, 1)
        .stx(Size::DW, R10, R1, S_BANK)
        .alu64_imm(Alu::Add, R1, meta::BANK0 as i32)
        .stx(Size::W, R10, R1, S_AKEY);
    lookup(&mut a, m.meta, S_AKEY, no_meta);
    a.ldx(Size::W, R1, R0, 0)
        .stx(Size::DW, R10, R1, S_FEAT)
        .ldx(Size::W, R1, R0, 4)
        .stx(Size::DW, R10, R1, S_DEFAULT)
        .ldx(Size::W, R2, R6, 4)
        .ldx(Size::W, R3, R6, 0)
        .alu64_reg(Alu::Sub, R2, R3)
        .stx(Size::DW, R10, R2, S_LEN)
        .mov64_reg(R1, R6);

    emit_headers(
        &mut a,
        HeaderWalk {
            depth: Depth::L4,
            ipv4: true,
            ipv6: true,
        },
        short,
    );
    a.stx(Size::DW, R10, hdr::IP, S_VER)
        .stx(Size::DW, R10, hdr::PROTO, S_PROTO)
        .stx(Size::DW, R10, hdr::SPORT, S_SPORT)
        .stx(Size::DW, R10, hdr::DPORT, S_DPORT);

    // Blocks: the source address as a 16-byte key (IPv4 mapped into IPv6).
    {
        let (v4, key_done, live) = (a.label(), a.label(), a.label());
        akey_imm(&mut a, meta::BLOCKS as i32);
        lookup(&mut a, m.meta, S_AKEY, rules);
        a.ldx(Size::W, R1, R0, 0)
            .jmp_imm(Cond::Eq, R1, 0, rules)
            .ldx(Size::DW, R1, R10, S_VER)
            .jmp_imm(Cond::Eq, R1, 4, v4)
            .jmp_imm(Cond::Ne, R1, 6, rules)
            .ldx(Size::DW, R2, hdr::L3, 8)
            .stx(Size::DW, R10, R2, S_KEY)
            .ldx(Size::DW, R2, hdr::L3, 16)
            .stx(Size::DW, R10, R2, S_KEY + 8)
            .ja(key_done)
            .bind(v4)
            .st_imm(Size::DW, R10, S_KEY, 0)
            .st_imm(Size::W, R10, S_KEY + 8, 0xffff_0000u32 as i32)
            .ldx(Size::W, R2, hdr::L3, 12)
            .stx(Size::W, R10, R2, S_KEY + 12)
            .bind(key_done);
        lookup(&mut a, m.blocks, S_KEY, rules);
        a.ldx(Size::DW, R1, R0, 0)
            .ldx(Size::W, R2, R0, 8)
            .stx(Size::DW, R10, R2, S_ACT)
            .jmp_imm(Cond::Eq, R1, 0, live)
            .stx(Size::DW, R10, R1, S_EXP)
            .call(helper::KTIME_GET_NS)
            .ldx(Size::DW, R1, R10, S_EXP)
            .jmp_reg(Cond::Ge, R0, R1, rules)
            .bind(live);
        count(&mut a, m.block_counts, S_KEY);
        dispatch(&mut a, m, shape.form);
    }

    // Rules: M = class ∧ tries ∧ ¬expired.
    a.bind(rules);
    a.ldx(Size::DW, R1, R10, S_BANK)
        .alu64_imm(Alu::Mul, R1, CLASS_PER_BANK as i32)
        .ldx(Size::DW, R2, R10, S_VER)
        .alu64_imm(Alu::Mul, R2, 3)
        .alu64_imm(Alu::Rsh, R2, 3)
        .alu64_imm(Alu::Lsh, R2, 9)
        .alu64_reg(Alu::Add, R1, R2)
        .ldx(Size::DW, R2, R10, S_PROTO)
        .alu64_imm(Alu::And, R2, 0x1ff)
        .alu64_reg(Alu::Add, R1, R2)
        .stx(Size::W, R10, R1, S_AKEY);
    lookup(&mut a, m.class, S_AKEY, default);
    for i in 0..words {
        a.ldx(Size::DW, R1, R0, 8 * i as i16)
            .stx(Size::DW, R10, R1, sm + 8 * i as i16);
    }
    let tries_done = a.label();
    {
        let (v6, ports) = (a.label(), a.label());
        a.ldx(Size::DW, R1, R10, S_VER)
            .jmp_imm(Cond::Eq, R1, 6, v6)
            .jmp_imm(Cond::Ne, R1, 4, ports);
        for (bit, off, map) in [(feature::SRC4, 12, m.src4), (feature::DST4, 16, m.dst4)] {
            let (on, after) = (a.label(), a.label());
            a.ldx(Size::DW, R1, R10, S_FEAT)
                .jmp_imm(Cond::Set, R1, bit as i32, on)
                .ja(after)
                .bind(on);
            trie_key_head(&mut a, 64);
            a.ldx(Size::W, R1, hdr::L3, off)
                .stx(Size::W, R10, R1, S_KEY + 8);
            lookup(&mut a, map, S_KEY, default);
            and_into_m(&mut a, words);
            a.bind(after);
        }
        a.ja(ports);
        a.bind(v6);
        for (bit, off, map) in [(feature::SRC6, 8, m.src6), (feature::DST6, 24, m.dst6)] {
            let (on, after) = (a.label(), a.label());
            a.ldx(Size::DW, R1, R10, S_FEAT)
                .jmp_imm(Cond::Set, R1, bit as i32, on)
                .ja(after)
                .bind(on);
            trie_key_head(&mut a, 160);
            a.ldx(Size::DW, R1, hdr::L3, off)
                .stx(Size::DW, R10, R1, S_KEY + 8)
                .ldx(Size::DW, R1, hdr::L3, off + 8)
                .stx(Size::DW, R10, R1, S_KEY + 16);
            lookup(&mut a, map, S_KEY, default);
            and_into_m(&mut a, words);
            a.bind(after);
        }
        a.bind(ports);
        a.ldx(Size::DW, R1, R10, S_PROTO)
            .jmp_imm(Cond::Lt, R1, 0x100, tries_done);
        for (bit, slot, map) in [
            (feature::SPORT, S_SPORT, m.sport),
            (feature::DPORT, S_DPORT, m.dport),
        ] {
            let (on, after) = (a.label(), a.label());
            a.ldx(Size::DW, R1, R10, S_FEAT)
                .jmp_imm(Cond::Set, R1, bit as i32, on)
                .ja(after)
                .bind(on);
            trie_key_head(&mut a, 48);
            // The port register holds the host-order value: back to network order.
            a.ldx(Size::DW, R1, R10, slot)
                .to_be(R1, 16)
                .stx(Size::H, R10, R1, S_KEY + 8);
            lookup(&mut a, map, S_KEY, default);
            and_into_m(&mut a, words);
            a.bind(after);
        }
    }
    a.bind(tries_done);
    // Expired entries: with the bank's deadlines sorted, the ranks expired by `now` are the
    // union of the first c entries' ranks, c = how many deadlines are ≤ now (a binary search
    // over the sorted array, unrolled), and that union is precomputed: `M &= ~cmask[c]`.
    {
        let (on, after) = (a.label(), a.label());
        let n = shape.slots as i32;
        a.ldx(Size::DW, R1, R10, S_FEAT)
            .jmp_imm(Cond::Set, R1, feature::EXPIRY as i32, on)
            .ja(after)
            .bind(on)
            .call(helper::KTIME_GET_NS)
            .stx(Size::DW, R10, R0, S_NOW)
            .st_imm(Size::DW, R10, S_J, 0);
        // Deadline i of bank b is at b * n + i.
        let deadline_le_now = |a: &mut Asm, extra: i32, skip: Label| {
            a.ldx(Size::DW, R1, R10, S_BANK)
                .alu64_imm(Alu::Mul, R1, n)
                .ldx(Size::DW, R2, R10, S_J)
                .alu64_reg(Alu::Add, R1, R2)
                .alu64_imm(Alu::Add, R1, extra)
                .stx(Size::W, R10, R1, S_AKEY);
            lookup(a, m.deadlines, S_AKEY, skip);
            a.ldx(Size::DW, R1, R0, 0)
                .ldx(Size::DW, R2, R10, S_NOW)
                .jmp_reg(Cond::Gt, R1, R2, skip);
        };
        // Nothing expired yet: the first deadline is still ahead (the usual case).
        deadline_le_now(&mut a, 0, after);
        let mut step = n / 2;
        while step >= 1 {
            let skip = a.label();
            deadline_le_now(&mut a, step - 1, skip);
            a.ldx(Size::DW, R1, R10, S_J)
                .alu64_imm(Alu::Add, R1, step)
                .stx(Size::DW, R10, R1, S_J)
                .bind(skip);
            step /= 2;
        }
        let last = a.label();
        deadline_le_now(&mut a, 0, last);
        a.ldx(Size::DW, R1, R10, S_J)
            .alu64_imm(Alu::Add, R1, 1)
            .stx(Size::DW, R10, R1, S_J)
            .bind(last);
        // cmask c of bank b is at b * (n + 1) + c.
        a.ldx(Size::DW, R1, R10, S_BANK)
            .alu64_imm(Alu::Mul, R1, n + 1)
            .ldx(Size::DW, R2, R10, S_J)
            .alu64_reg(Alu::Add, R1, R2)
            .stx(Size::W, R10, R1, S_AKEY);
        lookup(&mut a, m.cmask, S_AKEY, after);
        for i in 0..words {
            let off = sm + 8 * i as i16;
            a.ldx(Size::DW, R1, R0, 8 * i as i16)
                .alu64_imm(Alu::Xor, R1, -1)
                .ldx(Size::DW, R2, R10, off)
                .alu64_reg(Alu::And, R2, R1)
                .stx(Size::DW, R10, R2, off);
        }
        a.bind(after);
    }

    // The lowest rank left: first non-zero word, then its lowest bit (x & -x) counted by a
    // branch-free popcount of (x & -x) - 1.
    let found = a.label();
    let word_labels: Vec<Label> = (0..words).map(|_| a.label()).collect();
    for (i, &l) in word_labels.iter().enumerate() {
        a.ldx(Size::DW, R2, R10, sm + 8 * i as i16)
            .jmp_imm(Cond::Ne, R2, 0, l);
    }
    a.ja(default);
    for (i, &l) in word_labels.iter().enumerate() {
        a.bind(l).mov64_imm(R3, i as i32).ja(found);
    }
    // r2 = the word, r3 = its index.
    a.bind(found)
        .stx(Size::DW, R10, R3, S_J)
        .mov64_imm(R1, 0)
        .alu64_reg(Alu::Sub, R1, R2)
        .alu64_reg(Alu::And, R1, R2)
        .alu64_imm(Alu::Sub, R1, 1);
    popcount(&mut a);
    a.ldx(Size::DW, R3, R10, S_J)
        .alu64_imm(Alu::Lsh, R3, 6)
        .alu64_reg(Alu::Add, R3, R1)
        .ldx(Size::DW, R1, R10, S_BANK)
        .alu64_imm(Alu::Mul, R1, shape.slots as i32)
        .alu64_reg(Alu::Add, R1, R3)
        .stx(Size::W, R10, R1, S_AKEY);
    lookup(&mut a, m.rules, S_AKEY, default);
    // The record: verdict in the low half, counter slot in the high half.
    a.ldx(Size::DW, R1, R0, 0)
        .mov64_reg(R2, R1)
        .alu64_imm(Alu::Lsh, R2, 32)
        .alu64_imm(Alu::Rsh, R2, 32)
        .stx(Size::DW, R10, R2, S_ACT)
        .alu64_imm(Alu::Rsh, R1, 32)
        .stx(Size::W, R10, R1, S_AKEY);
    count(&mut a, m.counters, S_AKEY);
    dispatch(&mut a, m, shape.form);

    // No rule: the default verdict, counted in the last counter slot.
    a.bind(short).bind(default);
    a.ldx(Size::DW, R1, R10, S_DEFAULT)
        .stx(Size::DW, R10, R1, S_ACT);
    akey_imm(&mut a, shape.default_counter as i32);
    count(&mut a, m.counters, S_AKEY);
    dispatch(&mut a, m, shape.form);

    // Meta missing (cannot happen: arrays always have their slots): pass.
    a.bind(no_meta).mov64_imm(R0, XDP_PASS as i32).exit();
    a.finish()
}
