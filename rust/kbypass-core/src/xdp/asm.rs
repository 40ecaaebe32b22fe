//! A small eBPF assembler: instruction encoding and forward/backward jump labels.
//!
//! Only what our XDP programs need: 64- and 32-bit ALU with immediates and registers, byte swaps,
//! loads/stores, conditional jumps to labels, helper calls, exit, and map fd loads
//! (`BPF_LD | BPF_DW | BPF_IMM` with `BPF_PSEUDO_MAP_FD`).

use crate::error::{Error, Result};
use crate::sys::bpf::BpfInsn;

/// A register `r0`..`r10` (`r10` is the read-only frame pointer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reg(pub u8);

/// Return value / helper result.
pub const R0: Reg = Reg(0);
/// First argument (the context on entry).
pub const R1: Reg = Reg(1);
/// Second argument.
pub const R2: Reg = Reg(2);
/// Third argument.
pub const R3: Reg = Reg(3);
/// Fourth argument.
pub const R4: Reg = Reg(4);
/// Fifth argument.
pub const R5: Reg = Reg(5);
/// Callee-saved.
pub const R6: Reg = Reg(6);
/// Callee-saved.
pub const R7: Reg = Reg(7);
/// Callee-saved.
pub const R8: Reg = Reg(8);
/// Callee-saved.
pub const R9: Reg = Reg(9);
/// Frame pointer (read only).
pub const R10: Reg = Reg(10);

// Instruction classes.
const BPF_LD: u8 = 0x00;
const BPF_LDX: u8 = 0x01;
const BPF_ST: u8 = 0x02;
const BPF_STX: u8 = 0x03;
const BPF_ALU: u8 = 0x04;
const BPF_JMP: u8 = 0x05;
const BPF_ALU64: u8 = 0x07;
// Modes and sources.
const BPF_IMM: u8 = 0x00;
const BPF_MEM: u8 = 0x60;
const BPF_ATOMIC: u8 = 0xc0;
const BPF_K: u8 = 0x00;
const BPF_X: u8 = 0x08;
const BPF_TO_BE: u8 = 0x08;
const BPF_END: u8 = 0xd0;
const BPF_CALL: u8 = 0x80;
const BPF_EXIT: u8 = 0x90;
const BPF_JA: u8 = 0x00;
/// `src_reg` of `BPF_LD_IMM64` meaning "imm is a map fd".
pub const BPF_PSEUDO_MAP_FD: u8 = 1;

/// Memory access size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// 8 bits.
    B = 0x10,
    /// 16 bits.
    H = 0x08,
    /// 32 bits.
    W = 0x00,
    /// 64 bits.
    DW = 0x18,
}

/// ALU operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alu {
    /// `+=`
    Add = 0x00,
    /// `-=`
    Sub = 0x10,
    /// `*=`
    Mul = 0x20,
    /// `|=`
    Or = 0x40,
    /// `&=`
    And = 0x50,
    /// `<<=`
    Lsh = 0x60,
    /// `>>=` (logical)
    Rsh = 0x70,
    /// `^=`
    Xor = 0xa0,
    /// `=`
    Mov = 0xb0,
}

/// Jump conditions (unsigned unless named signed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    /// `==`
    Eq = 0x10,
    /// `>`
    Gt = 0x20,
    /// `>=`
    Ge = 0x30,
    /// `& != 0`
    Set = 0x40,
    /// `!=`
    Ne = 0x50,
    /// `<`
    Lt = 0xa0,
    /// `<=`
    Le = 0xb0,
}

/// Well-known helper ids.
pub mod helper {
    /// `bpf_map_lookup_elem(map, key)`.
    pub const MAP_LOOKUP_ELEM: i32 = 1;
    /// `bpf_ktime_get_ns()`: `CLOCK_MONOTONIC` in nanoseconds.
    pub const KTIME_GET_NS: i32 = 5;
    /// `bpf_redirect_map(map, key, flags)`.
    pub const REDIRECT_MAP: i32 = 51;
}

/// A jump target; bind it with [`Asm::bind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label(usize);

/// The assembler: push instructions, jump to labels, [`Asm::finish`] resolves the offsets.
#[derive(Debug, Default)]
pub struct Asm {
    insns: Vec<BpfInsn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
}

fn regs(dst: Reg, src: Reg) -> u8 {
    (src.0 << 4) | (dst.0 & 0x0f)
}

impl Asm {
    /// An empty program.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of instructions so far (an `ld_map_fd` counts two).
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    /// Whether no instruction was emitted yet.
    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    fn emit(&mut self, code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> &mut Self {
        self.insns.push(BpfInsn {
            code,
            regs: regs(dst, src),
            off,
            imm,
        });
        self
    }

    /// A new, unbound label.
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Bind `l` to the next instruction.
    pub fn bind(&mut self, l: Label) -> &mut Self {
        self.labels[l.0] = Some(self.insns.len());
        self
    }

    /// 64-bit `dst op= imm` (imm is sign-extended to 64 bits).
    pub fn alu64_imm(&mut self, op: Alu, dst: Reg, imm: i32) -> &mut Self {
        self.emit(BPF_ALU64 | op as u8 | BPF_K, dst, Reg(0), 0, imm)
    }

    /// 64-bit `dst op= src`.
    pub fn alu64_reg(&mut self, op: Alu, dst: Reg, src: Reg) -> &mut Self {
        self.emit(BPF_ALU64 | op as u8 | BPF_X, dst, src, 0, 0)
    }

    /// 32-bit `dst op= imm` (the result is zero-extended to 64 bits).
    pub fn alu32_imm(&mut self, op: Alu, dst: Reg, imm: u32) -> &mut Self {
        self.emit(BPF_ALU | op as u8 | BPF_K, dst, Reg(0), 0, imm as i32)
    }

    /// `dst = imm` (64-bit, sign-extended).
    pub fn mov64_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.alu64_imm(Alu::Mov, dst, imm)
    }

    /// `dst = imm` as an unsigned 32-bit value (zero-extended).
    pub fn mov32_imm(&mut self, dst: Reg, imm: u32) -> &mut Self {
        self.alu32_imm(Alu::Mov, dst, imm)
    }

    /// `dst = src` (64-bit).
    pub fn mov64_reg(&mut self, dst: Reg, src: Reg) -> &mut Self {
        self.alu64_reg(Alu::Mov, dst, src)
    }

    /// Convert the low `bits` (16/32/64) of `dst` between host and network order (`BPF_TO_BE`):
    /// a swap on little-endian hosts, a truncation on big-endian ones.
    pub fn to_be(&mut self, dst: Reg, bits: i32) -> &mut Self {
        self.emit(BPF_ALU | BPF_END | BPF_TO_BE, dst, Reg(0), 0, bits)
    }

    /// `dst = *(size *)(src + off)`.
    pub fn ldx(&mut self, size: Size, dst: Reg, src: Reg, off: i16) -> &mut Self {
        self.emit(BPF_LDX | BPF_MEM | size as u8, dst, src, off, 0)
    }

    /// `*(size *)(dst + off) = src`.
    pub fn stx(&mut self, size: Size, dst: Reg, src: Reg, off: i16) -> &mut Self {
        self.emit(BPF_STX | BPF_MEM | size as u8, dst, src, off, 0)
    }

    /// `*(size *)(dst + off) = imm`.
    pub fn st_imm(&mut self, size: Size, dst: Reg, off: i16, imm: i32) -> &mut Self {
        self.emit(BPF_ST | BPF_MEM | size as u8, dst, Reg(0), off, imm)
    }

    /// `lock *(u64 *)(dst + off) += src` (`BPF_ATOMIC | BPF_ADD`, kernel ≥ 5.12; the same
    /// encoding as the older `BPF_XADD`).
    pub fn atomic_add64(&mut self, dst: Reg, src: Reg, off: i16) -> &mut Self {
        self.emit(BPF_STX | BPF_ATOMIC | Size::DW as u8, dst, src, off, 0)
    }

    /// `dst = map` (two instruction slots; the kernel swaps the fd for the map pointer).
    pub fn ld_map_fd(&mut self, dst: Reg, map_fd: i32) -> &mut Self {
        self.emit(
            BPF_LD | Size::DW as u8 | BPF_IMM,
            dst,
            Reg(BPF_PSEUDO_MAP_FD),
            0,
            map_fd,
        );
        self.emit(0, Reg(0), Reg(0), 0, 0)
    }

    /// `dst = imm` for a full 64-bit constant (two instruction slots, `BPF_LD | BPF_DW | BPF_IMM`).
    pub fn ld_imm64(&mut self, dst: Reg, imm: u64) -> &mut Self {
        self.emit(
            BPF_LD | Size::DW as u8 | BPF_IMM,
            dst,
            Reg(0),
            0,
            imm as u32 as i32,
        );
        self.emit(0, Reg(0), Reg(0), 0, (imm >> 32) as u32 as i32)
    }

    /// `if dst <cond> imm goto target` (imm sign-extended; use small non-negative values or
    /// [`Asm::jmp_reg`] with [`Asm::mov32_imm`] for full 32-bit constants).
    pub fn jmp_imm(&mut self, cond: Cond, dst: Reg, imm: i32, target: Label) -> &mut Self {
        self.fixups.push((self.insns.len(), target));
        self.emit(BPF_JMP | cond as u8 | BPF_K, dst, Reg(0), 0, imm)
    }

    /// `if dst <cond> src goto target`.
    pub fn jmp_reg(&mut self, cond: Cond, dst: Reg, src: Reg, target: Label) -> &mut Self {
        self.fixups.push((self.insns.len(), target));
        self.emit(BPF_JMP | cond as u8 | BPF_X, dst, src, 0, 0)
    }

    /// `goto target`.
    pub fn ja(&mut self, target: Label) -> &mut Self {
        self.fixups.push((self.insns.len(), target));
        self.emit(BPF_JMP | BPF_JA, Reg(0), Reg(0), 0, 0)
    }

    /// Call helper `id` (arguments in r1..r5, result in r0; r1..r5 are clobbered).
    pub fn call(&mut self, id: i32) -> &mut Self {
        self.emit(BPF_JMP | BPF_CALL, Reg(0), Reg(0), 0, id)
    }

    /// `r0 = &map[0]` of an array map (the 32-bit key 0 on the stack at `r10 - 4`), going to
    /// `missing` when the lookup finds nothing: a per-CPU counter's slot. Clobbers r1..r5.
    pub fn lookup_first(&mut self, map_fd: i32, missing: Label) -> &mut Self {
        self.st_imm(Size::W, R10, -4, 0)
            .ld_map_fd(R1, map_fd)
            .mov64_reg(R2, R10)
            .alu64_imm(Alu::Add, R2, -4)
            .call(helper::MAP_LOOKUP_ELEM)
            .jmp_imm(Cond::Eq, R0, 0, missing)
    }

    /// `return r0`.
    pub fn exit(&mut self) -> &mut Self {
        self.emit(BPF_JMP | BPF_EXIT, Reg(0), Reg(0), 0, 0)
    }

    /// Resolve the labels and return the instructions.
    pub fn finish(mut self) -> Result<Vec<BpfInsn>> {
        for &(at, Label(l)) in &self.fixups {
            let target = self.labels[l]
                .ok_or_else(|| Error::invalid(format!("BPF label {l} was never bound")))?;
            let off = target as i64 - (at as i64 + 1);
            self.insns[at].off = i16::try_from(off).map_err(|_| {
                Error::invalid("BPF jump is out of range (program too large): use fewer rules")
            })?;
        }
        Ok(self.insns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(f: impl FnOnce(&mut Asm)) -> BpfInsn {
        let mut a = Asm::new();
        f(&mut a);
        a.finish().unwrap()[0]
    }

    #[test]
    fn encodings_match_the_kernel_macros() {
        // Values as produced by the kernel's BPF_* macros (include/linux/filter.h).
        assert_eq!(
            one(|a| {
                a.mov64_imm(R0, 2);
            }),
            BpfInsn {
                code: 0xb7,
                regs: 0x00,
                off: 0,
                imm: 2
            }
        );
        assert_eq!(
            one(|a| {
                a.mov64_reg(R6, R1);
            }),
            BpfInsn {
                code: 0xbf,
                regs: 0x16,
                off: 0,
                imm: 0
            }
        );
        assert_eq!(
            one(|a| {
                a.ldx(Size::W, R2, R1, 16);
            }),
            BpfInsn {
                code: 0x61,
                regs: 0x12,
                off: 16,
                imm: 0
            }
        );
        assert_eq!(
            one(|a| {
                a.ldx(Size::H, R4, R7, 12);
            }),
            BpfInsn {
                code: 0x69,
                regs: 0x74,
                off: 12,
                imm: 0
            }
        );
        assert_eq!(
            one(|a| {
                a.ldx(Size::B, R3, R9, 9);
            }),
            BpfInsn {
                code: 0x71,
                regs: 0x93,
                off: 9,
                imm: 0
            }
        );
        assert_eq!(
            one(|a| {
                a.stx(Size::W, R10, R2, -4);
            }),
            BpfInsn {
                code: 0x63,
                regs: 0x2a,
                off: -4,
                imm: 0
            }
        );
        assert_eq!(
            one(|a| {
                a.st_imm(Size::W, R10, -8, 7);
            }),
            BpfInsn {
                code: 0x62,
                regs: 0x0a,
                off: -8,
                imm: 7
            }
        );
        assert_eq!(
            one(|a| {
                a.alu64_imm(Alu::Add, R2, 14);
            }),
            BpfInsn {
                code: 0x07,
                regs: 0x02,
                off: 0,
                imm: 14
            }
        );
        assert_eq!(
            one(|a| {
                a.alu64_reg(Alu::Add, R2, R3);
            }),
            BpfInsn {
                code: 0x0f,
                regs: 0x32,
                off: 0,
                imm: 0
            }
        );
        assert_eq!(
            one(|a| {
                a.alu32_imm(Alu::And, R2, 0xffff_0000);
            }),
            BpfInsn {
                code: 0x54,
                regs: 0x02,
                off: 0,
                imm: 0xffff_0000u32 as i32
            }
        );
        assert_eq!(
            one(|a| {
                a.mov32_imm(R3, 0xc612_0000);
            }),
            BpfInsn {
                code: 0xb4,
                regs: 0x03,
                off: 0,
                imm: 0xc612_0000u32 as i32
            }
        );
        assert_eq!(
            one(|a| {
                a.to_be(R4, 16);
            }),
            BpfInsn {
                code: 0xdc,
                regs: 0x04,
                off: 0,
                imm: 16
            }
        );
        assert_eq!(
            one(|a| {
                a.call(helper::REDIRECT_MAP);
            }),
            BpfInsn {
                code: 0x85,
                regs: 0,
                off: 0,
                imm: 51
            }
        );
        assert_eq!(
            one(|a| {
                a.exit();
            }),
            BpfInsn {
                code: 0x95,
                regs: 0,
                off: 0,
                imm: 0
            }
        );
    }

    #[test]
    fn map_fd_load_is_two_slots() {
        let mut a = Asm::new();
        a.ld_map_fd(R1, 42);
        let v = a.finish().unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(
            v[0],
            BpfInsn {
                code: 0x18,
                regs: 0x11,
                off: 0,
                imm: 42
            }
        );
        assert_eq!(v[1], BpfInsn::default());
    }

    #[test]
    fn imm64_load_is_two_slots_low_word_first() {
        let mut a = Asm::new();
        a.ld_imm64(R1, 0x1000_1800_0000_0801);
        let v = a.finish().unwrap();
        assert_eq!(
            v,
            vec![
                BpfInsn {
                    code: 0x18,
                    regs: 0x01,
                    off: 0,
                    imm: 0x0000_0801
                },
                BpfInsn {
                    code: 0,
                    regs: 0,
                    off: 0,
                    imm: 0x1000_1800
                }
            ]
        );
    }

    #[test]
    fn labels_resolve_forward_and_backward() {
        let mut a = Asm::new();
        let back = a.label();
        let fwd = a.label();
        a.bind(back);
        a.mov64_imm(R0, 0); // 0
        a.jmp_imm(Cond::Gt, R2, 5, fwd); // 1 → 4: off 2
        a.jmp_reg(Cond::Ne, R2, R3, back); // 2 → 0: off -3
        a.ja(fwd); // 3 → 4: off 0
        a.bind(fwd);
        a.exit(); // 4
        let v = a.finish().unwrap();
        assert_eq!(
            v[1],
            BpfInsn {
                code: 0x25,
                regs: 0x02,
                off: 2,
                imm: 5
            }
        );
        assert_eq!(
            v[2],
            BpfInsn {
                code: 0x5d,
                regs: 0x32,
                off: -3,
                imm: 0
            }
        );
        assert_eq!(
            v[3],
            BpfInsn {
                code: 0x05,
                regs: 0,
                off: 0,
                imm: 0
            }
        );
    }

    #[test]
    fn unbound_label_is_an_error() {
        let mut a = Asm::new();
        let l = a.label();
        a.ja(l);
        assert!(a.finish().is_err());
    }
}
