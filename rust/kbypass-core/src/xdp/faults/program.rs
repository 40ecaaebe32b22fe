//! The fault injector's two XDP programs, built with [`crate::xdp::asm`].
//!
//! ```text
//! entry (attached; never replaced):
//!     count SEEN; tail_call(progs[0])            (the matcher)
//!     count PASSED; return XDP_PASS              (only if the slot were empty)
//! matcher (one per filter; swapped into progs[0] at run time):
//!     header walk + filter rules                 no match → count PASSED, XDP_PASS
//!     count MATCHED; cfg = config[0]
//!     prandom_u32() < cfg.loss_threshold         → count DROPPED, XDP_DROP
//!     prandom_u32() < cfg.middlebox_threshold    → redirect_map(xsks, rx_queue, XDP_PASS)
//!         socket there                           → count TO_MIDDLEBOX, XDP_REDIRECT
//!         no socket                              → count NO_SOCKET + PASSED, XDP_PASS
//!     count PASSED; return XDP_PASS
//! ```
//!
//! Thresholds are `p × 2³²` held as u64 and compared with the 32-bit random number in 64-bit
//! registers, so p = 1 (2³², above every u32) always fires and p = 0 never does. Counters are
//! one per-CPU row of u64s (`counter::*`), so every verdict is counted exactly once besides
//! SEEN (and MATCHED, NO_SOCKET, which break PASSED and SEEN down).

use std::os::fd::RawFd;

use crate::error::Result;
use crate::sys::bpf::{BpfInsn, XDP_DROP, XDP_PASS, XDP_REDIRECT};
use crate::xdp::asm::{helper, Alu, Asm, Cond, Size, R0, R1, R10, R2, R3, R6, R7};
use crate::xdp::program::{emit_headers, emit_match, HeaderWalk};
use crate::xdp::rules::Rule;

/// `bpf_get_prandom_u32()`.
const GET_PRANDOM_U32: i32 = 7;
/// `bpf_tail_call(ctx, prog_array, index)`.
const TAIL_CALL: i32 = 12;
/// Offset of `rx_queue_index` in `struct xdp_md`.
const XDP_MD_RX_QUEUE_INDEX: i16 = 16;
/// Stack slot of the 4-byte map keys.
const S_KEY: i16 = -4;

/// Slots of the per-CPU counter row.
pub mod counter {
    /// Frames the entry program saw.
    pub const SEEN: usize = 0;
    /// Frames the filter matched.
    pub const MATCHED: usize = 1;
    /// Frames passed to the kernel (the bridge forwards them): unmatched, not chosen, or
    /// chosen for the middlebox with no socket there.
    pub const PASSED: usize = 2;
    /// Frames dropped (loss).
    pub const DROPPED: usize = 3;
    /// Frames redirected to the middlebox's AF_XDP socket.
    pub const TO_MIDDLEBOX: usize = 4;
    /// Frames chosen for the middlebox while no socket was in the XSKMAP (also in PASSED).
    pub const NO_SOCKET: usize = 5;
    /// Slots in a row.
    pub const COUNT: usize = 6;
}

/// Bytes of the config map's value: the loss threshold, then the middlebox threshold (u64s).
pub const CONFIG_VALUE_SIZE: u32 = 16;

/// The fds the programs reference.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Maps {
    /// ARRAY, 1 entry of [`CONFIG_VALUE_SIZE`] bytes.
    pub config: RawFd,
    /// PERCPU_ARRAY, 1 entry of [`counter::COUNT`] u64s.
    pub counters: RawFd,
    /// XSKMAP indexed by RX queue.
    pub xsks: RawFd,
    /// PROG_ARRAY, 1 entry: the matcher.
    pub progs: RawFd,
}

/// `counters[0][slot] += 1` (atomically; clobbers r0..r5).
fn count(a: &mut Asm, counters: RawFd, slot: usize) {
    let skip = a.label();
    a.st_imm(Size::W, R10, S_KEY, 0)
        .ld_map_fd(R1, counters)
        .mov64_reg(R2, R10)
        .alu64_imm(Alu::Add, R2, i32::from(S_KEY))
        .call(helper::MAP_LOOKUP_ELEM)
        .jmp_imm(Cond::Eq, R0, 0, skip)
        .mov64_imm(R1, 1)
        .atomic_add64(R0, R1, 8 * slot as i16)
        .bind(skip);
}

/// `count PASSED; return XDP_PASS`.
fn pass(a: &mut Asm, counters: RawFd) {
    count(a, counters, counter::PASSED);
    a.mov64_imm(R0, XDP_PASS as i32).exit();
}

/// The attached program: counts the frame, then tail-calls the matcher in `progs[0]`.
pub(crate) fn entry_program(m: Maps) -> Result<Vec<BpfInsn>> {
    let mut a = Asm::new();
    a.mov64_reg(R6, R1);
    count(&mut a, m.counters, counter::SEEN);
    a.mov64_reg(R1, R6)
        .ld_map_fd(R2, m.progs)
        .mov64_imm(R3, 0)
        .call(TAIL_CALL);
    pass(&mut a, m.counters);
    a.finish()
}

/// The matcher for `rules` (validated; empty: every frame matches).
pub(crate) fn matcher_program(rules: &[Rule], m: Maps) -> Result<Vec<BpfInsn>> {
    let mut a = Asm::new();
    let (nomatch, hit) = (a.label(), a.label());
    if rules.is_empty() {
        a.mov64_reg(R6, R1);
    } else {
        // Leaves the context in r6 (the header walk's short frames, too, do not match).
        emit_headers(&mut a, HeaderWalk::for_rules(rules), nomatch);
        emit_match(&mut a, rules, hit);
        a.bind(nomatch);
        pass(&mut a, m.counters);
    }

    let (drop, to_mb, no_cfg, redirected) = (a.label(), a.label(), a.label(), a.label());
    a.bind(hit);
    count(&mut a, m.counters, counter::MATCHED);
    a.st_imm(Size::W, R10, S_KEY, 0)
        .ld_map_fd(R1, m.config)
        .mov64_reg(R2, R10)
        .alu64_imm(Alu::Add, R2, i32::from(S_KEY))
        .call(helper::MAP_LOOKUP_ELEM)
        .jmp_imm(Cond::Eq, R0, 0, no_cfg)
        .mov64_reg(R7, R0)
        .call(GET_PRANDOM_U32)
        .ldx(Size::DW, R1, R7, 0)
        .jmp_reg(Cond::Lt, R0, R1, drop)
        .call(GET_PRANDOM_U32)
        .ldx(Size::DW, R1, R7, 8)
        .jmp_reg(Cond::Lt, R0, R1, to_mb);
    a.bind(no_cfg);
    pass(&mut a, m.counters);

    a.bind(drop);
    count(&mut a, m.counters, counter::DROPPED);
    a.mov64_imm(R0, XDP_DROP as i32).exit();

    a.bind(to_mb)
        .ldx(Size::W, R2, R6, XDP_MD_RX_QUEUE_INDEX)
        .ld_map_fd(R1, m.xsks)
        .mov64_imm(R3, XDP_PASS as i32)
        .call(helper::REDIRECT_MAP)
        .jmp_imm(Cond::Eq, R0, XDP_REDIRECT as i32, redirected);
    count(&mut a, m.counters, counter::NO_SOCKET);
    pass(&mut a, m.counters);
    a.bind(redirected);
    count(&mut a, m.counters, counter::TO_MIDDLEBOX);
    a.mov64_imm(R0, XDP_REDIRECT as i32).exit();
    a.finish()
}

/// `p × 2³²`, the threshold a 32-bit random number is compared with (p in 0..=1).
pub(crate) fn threshold(p: f64) -> u64 {
    (p.clamp(0.0, 1.0) * 4_294_967_296.0).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xdp::rules::parse_filter;

    const M: Maps = Maps {
        config: 3,
        counters: 4,
        xsks: 5,
        progs: 6,
    };

    #[test]
    fn thresholds_cover_never_and_always() {
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(1.0), 1 << 32);
        assert_eq!(threshold(0.5), 1 << 31);
        assert_eq!(threshold(-1.0), 0);
    }

    #[test]
    fn programs_assemble_with_jumps_inside() {
        for insns in [
            entry_program(M).unwrap(),
            matcher_program(&[], M).unwrap(),
            matcher_program(&parse_filter("udp dst port 4791 or ip6 tcp").unwrap(), M).unwrap(),
        ] {
            for (i, ins) in insns.iter().enumerate() {
                if ins.code & 0x07 == 0x05 && ins.code != 0x85 && ins.code != 0x95 {
                    let t = i as i64 + 1 + i64::from(ins.off);
                    assert!(t >= 0 && (t as usize) < insns.len(), "jump at {i} to {t}");
                }
            }
        }
    }
}
