//! The live-frames generator's XDP program (see [`super::live`]): `XDP_TX` for every frame,
//! with two optional steps in front of it.
//!
//! * Rewrite: write the whole frame into the packet before it leaves. The kernel's live-frames
//!   mode fills each page of its page pool with the frame once and, when a page comes back
//!   round, resets only the frame's pointers, not its bytes (`reset_ctx` in
//!   `net/bpf/test_run.c`). A receiver that edits a frame in place and sends it back (an
//!   `XDP_TX` echo: swapped addresses, a cleared flag) returns the page with its edits, and
//!   without the rewrite the generator would send that answer again instead of the request
//!   (measured: the in-kernel sockperf echo answered 64 requests per call, one kernel batch).
//!   The frame's bytes are immediates of the program, one 32-bit store per 4 bytes.
//! * Flows: the UDP source port becomes `base + (n mod flows)`, `n` counting this CPU's frames
//!   in a per-CPU array map.

use super::template::UDP_OFFSET;
use crate::error::Result;
use crate::sys::bpf::{BpfInsn, XDP_PASS, XDP_TX};
use crate::xdp::asm::{Alu, Asm, Cond, Size, R0, R1, R2, R3, R4, R6, R7, R8};

/// Offset of `ingress_ifindex` in `struct xdp_md`.
const XDP_MD_INGRESS_IFINDEX: i16 = 12;
/// `ifindex` of a loopback device (the same in every network namespace).
const LOOPBACK_IFINDEX: i32 = 1;

/// What the program does besides `XDP_TX`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Steps<'a> {
    /// Write these bytes at the start of every frame first (skipped for a shorter frame).
    pub rewrite: Option<&'a [u8]>,
    /// Distinct source ports (more than 1: the port rewrite, with `map_fd` its counter).
    pub flows: u32,
    /// The first source port.
    pub base_port: u16,
    /// The per-CPU frame counter for flows.
    pub map_fd: Option<i32>,
}

/// Emit stores of `bytes` at `[base + 0 ..]`: 32-bit stores, then a 16- and an 8-bit one for
/// the rest.
fn store_bytes(a: &mut Asm, base: crate::xdp::asm::Reg, bytes: &[u8]) {
    let mut off = 0usize;
    let mut chunks = bytes.chunks_exact(4);
    for c in &mut chunks {
        a.st_imm(
            Size::W,
            base,
            off as i16,
            i32::from_ne_bytes([c[0], c[1], c[2], c[3]]),
        );
        off += 4;
    }
    let rest = chunks.remainder();
    if rest.len() >= 2 {
        let h = u16::from_ne_bytes([rest[0], rest[1]]);
        a.st_imm(Size::H, base, off as i16, i32::from(h));
        off += 2;
    }
    if rest.len() % 2 == 1 {
        a.st_imm(Size::B, base, off as i16, i32::from(rest[rest.len() - 1]));
    }
}

/// The generator's program.
pub(super) fn generator_program(steps: &Steps<'_>) -> Result<Vec<BpfInsn>> {
    let mut a = Asm::new();
    // Frames that really arrive on a loopback (the keeper's) pass untouched.
    let live = a.label();
    a.ldx(Size::W, R2, R1, XDP_MD_INGRESS_IFINDEX)
        .jmp_imm(Cond::Ne, R2, LOOPBACK_IFINDEX, live)
        .mov64_imm(R0, XDP_PASS as i32)
        .exit()
        .bind(live);
    if let Some(bytes) = steps.rewrite.filter(|b| !b.is_empty()) {
        let done = a.label();
        // r2 = data, r3 = data_end; a frame shorter than the bytes is left as it is.
        a.ldx(Size::W, R2, R1, 0)
            .ldx(Size::W, R3, R1, 4)
            .mov64_reg(R4, R2)
            .alu64_imm(Alu::Add, R4, bytes.len() as i32)
            .jmp_reg(Cond::Gt, R4, R3, done);
        store_bytes(&mut a, R2, bytes);
        a.bind(done);
    }
    if let (true, Some(fd)) = (steps.flows > 1, steps.map_fd) {
        let flows = steps.flows;
        let tx = a.label();
        let store = a.label();
        // r7 = data, r8 = data_end; frames too short for a UDP header go out unchanged.
        a.mov64_reg(R6, R1)
            .ldx(Size::W, R7, R6, 0)
            .ldx(Size::W, R8, R6, 4)
            .mov64_reg(R2, R7)
            .alu64_imm(Alu::Add, R2, (UDP_OFFSET + 8) as i32)
            .jmp_reg(Cond::Gt, R2, R8, tx);
        // r0 = &counter[this cpu]
        a.lookup_first(fd, tx);
        // r1 = n (in 0..flows); counter = n + 1 wrapping at flows
        a.ldx(Size::W, R1, R0, 0)
            .mov64_reg(R3, R1)
            .alu64_imm(Alu::Add, R3, 1)
            .jmp_imm(Cond::Lt, R3, flows as i32, store)
            .mov64_imm(R3, 0)
            .bind(store)
            .stx(Size::W, R0, R3, 0);
        // A counter beyond `flows` (cannot happen unless user space wrote the map) is folded
        // back so the port stays in range.
        let ok = a.label();
        a.jmp_imm(Cond::Lt, R1, flows as i32, ok)
            .mov64_imm(R1, 0)
            .bind(ok);
        // udp.source = htons(base + n)
        a.alu64_imm(Alu::Add, R1, i32::from(steps.base_port))
            .to_be(R1, 16)
            .stx(Size::H, R7, R1, UDP_OFFSET as i16);
        a.bind(tx);
    }
    a.mov64_imm(R0, XDP_TX as i32).exit();
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_shapes() {
        let plain = generator_program(&Steps {
            flows: 1,
            base_port: 10000,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(plain.len(), 6);
        // ingress_ifindex == loopback → XDP_PASS, else XDP_TX
        assert_eq!(
            (plain[0].code, plain[0].off),
            (0x61, XDP_MD_INGRESS_IFINDEX)
        );
        assert_eq!((plain[2].code, plain[2].imm), (0xb7, XDP_PASS as i32));
        assert_eq!((plain[4].code, plain[4].imm), (0xb7, XDP_TX as i32));
        let flows = generator_program(&Steps {
            flows: 8,
            base_port: 10000,
            map_fd: Some(5),
            ..Default::default()
        })
        .unwrap();
        assert!(flows.len() > 20);
        // The port store is a 16-bit store at the UDP header.
        assert!(flows
            .iter()
            .any(|i| i.code == 0x6b && i.off == UDP_OFFSET as i16));
    }

    /// Run the stores the program makes over a buffer: they must reproduce the bytes.
    fn replay(insns: &[BpfInsn], len: usize) -> Vec<u8> {
        let mut out = vec![0xeeu8; len];
        for i in insns.iter().filter(|i| i.code & 0x07 == 0x02) {
            // BPF_ST | BPF_MEM | size: 0x62 (W), 0x6a (H), 0x72 (B)
            let off = i.off as usize;
            let imm = i.imm.to_ne_bytes();
            let n = match i.code {
                0x62 => 4,
                0x6a => 2,
                0x72 => 1,
                c => panic!("unexpected store {c:#x}"),
            };
            out[off..off + n].copy_from_slice(&imm[..n]);
        }
        out
    }

    #[test]
    fn rewrite_stores_every_byte_of_the_frame() {
        for len in [60usize, 61, 62, 63, 106, 1514] {
            let frame: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            let insns = generator_program(&Steps {
                rewrite: Some(&frame),
                flows: 1,
                ..Default::default()
            })
            .unwrap();
            assert_eq!(replay(&insns, len), frame, "length {len}");
            // Bounds check, then one store per 4 bytes (and the tail), then XDP_TX.
            let stores = insns.iter().filter(|i| i.code & 0x07 == 0x02).count();
            assert_eq!(stores, len / 4 + usize::from(len % 4 >= 2) + len % 2);
            assert!(insns.iter().any(|i| i.code == 0x2d), "the data_end check");
        }
    }
}
