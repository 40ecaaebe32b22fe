//! [`UdpEcho`]: an XDP program that answers sockperf's UDP requests itself, with `XDP_TX`: the
//! floor of a UDP request/response latency bench (no user space, no socket, no copy: the
//! request is turned around in the driver's receive path and sent back out of the same
//! interface).
//!
//! It does what `kbypass.pingpong.sockperf_echo` and `xsk_ref udpecho` do, in the kernel: an
//! IPv4 frame (no IP options, not a fragment) carrying UDP to the port, whose sockperf message
//! header (the first 14 bytes of the payload: u64 sequence number, u16 flags, u32 length,
//! big-endian) asks for an answer and is not a warm-up (flag bits client 1, answer wanted 2,
//! warm-up 4: `flags & 7 == 3`) is answered: the client bit cleared, the UDP checksum set to 0
//! (no checksum, which IPv4 allows: the payload changed and the program does not walk it to
//! sum it), MAC addresses, IP addresses and ports swapped (the IP header checksum stays valid:
//! the sum of a swapped pair does not change). Other sockperf messages to the port are dropped
//! (`sockperf server` does not answer them either); everything else (ARP, other ports) goes
//! on to the kernel (`XDP_PASS`).
//!
//! On a veth, attach it in generic mode (the latency bench does): in native mode a veth queues
//! what `XDP_TX` sends for its peer but wakes the peer's receive only when the peer has an XDP
//! program of its own (the answers wait in the peer's ring otherwise; measured on 6.18: counted
//! as `xdp_tx`, never received). Generic XDP sends the answer back through the veth's
//! transmit path.

use super::asm::{Alu, Asm, Cond, Size, R0, R1, R2, R3, R4, R5};
use crate::error::{Error, Result};
use crate::sys::bpf::{
    BpfInsn, ProgFd, ProgInfo, ProgLoad, TestRun, TestRunResult, BPF_PROG_TYPE_XDP, XDP_DROP,
    XDP_PASS, XDP_TX,
};

/// Offsets in an Ethernet + IPv4 (no options) + UDP frame.
const ETH_TYPE: i16 = 12;
const IP_VHL: i16 = 14;
const IP_FRAG: i16 = 20;
const IP_PROTO: i16 = 23;
const IP_SRC: i16 = 26;
const IP_DST: i16 = 30;
const UDP_SPORT: i16 = 34;
const UDP_DPORT: i16 = 36;
const UDP_CSUM: i16 = 40;
/// The low byte of sockperf's flags (the payload's 10th byte).
const SOCKPERF_FLAGS: i16 = 42 + 9;
/// Bytes the program reads: the headers and sockperf's message header.
const NEEDED: i32 = 42 + 14;

/// Flag bits of sockperf's message header.
const CLIENT: i32 = 1;
const ANSWER_WANTED: i32 = 2;
const WARMUP: i32 = 4;

/// The program's instructions, answering sockperf requests to UDP port `port`.
pub fn sockperf_echo_program(port: u16) -> Result<Vec<BpfInsn>> {
    // Loads are little-endian: a 16-bit network-order field reads as its bytes swapped.
    let le16 = |v: u16| i32::from(v.swap_bytes());
    let mut a = Asm::new();
    let pass = a.label();
    let drop = a.label();
    // r2 = data, r3 = data_end (struct xdp_md: data at 0, data_end at 4).
    a.ldx(Size::W, R2, R1, 0).ldx(Size::W, R3, R1, 4);
    a.mov64_reg(R4, R2)
        .alu64_imm(Alu::Add, R4, NEEDED)
        .jmp_reg(Cond::Gt, R4, R3, pass);
    a.ldx(Size::H, R4, R2, ETH_TYPE)
        .jmp_imm(Cond::Ne, R4, le16(0x0800), pass);
    a.ldx(Size::B, R4, R2, IP_VHL)
        .jmp_imm(Cond::Ne, R4, 0x45, pass);
    a.ldx(Size::B, R4, R2, IP_PROTO)
        .jmp_imm(Cond::Ne, R4, 17, pass);
    // More fragments, or a fragment offset: not a whole datagram.
    a.ldx(Size::H, R4, R2, IP_FRAG)
        .jmp_imm(Cond::Set, R4, le16(0x3fff), pass);
    a.ldx(Size::H, R4, R2, UDP_DPORT)
        .jmp_imm(Cond::Ne, R4, le16(port), pass);
    // A request that asks for an answer and is not a warm-up.
    a.ldx(Size::B, R4, R2, SOCKPERF_FLAGS)
        .mov64_reg(R5, R4)
        .alu64_imm(Alu::And, R5, CLIENT | ANSWER_WANTED | WARMUP)
        .jmp_imm(Cond::Ne, R5, CLIENT | ANSWER_WANTED, drop);
    a.alu64_imm(Alu::And, R4, !CLIENT & 0xff)
        .stx(Size::B, R2, R4, SOCKPERF_FLAGS);
    a.st_imm(Size::H, R2, UDP_CSUM, 0);
    // Swap the MACs: 6 bytes each, as a word and a half-word.
    a.ldx(Size::W, R4, R2, 0)
        .ldx(Size::W, R5, R2, 6)
        .stx(Size::W, R2, R5, 0)
        .stx(Size::W, R2, R4, 6);
    a.ldx(Size::H, R4, R2, 4)
        .ldx(Size::H, R5, R2, 10)
        .stx(Size::H, R2, R5, 4)
        .stx(Size::H, R2, R4, 10);
    // Swap the IP addresses and the ports.
    a.ldx(Size::W, R4, R2, IP_SRC)
        .ldx(Size::W, R5, R2, IP_DST)
        .stx(Size::W, R2, R5, IP_SRC)
        .stx(Size::W, R2, R4, IP_DST);
    a.ldx(Size::H, R4, R2, UDP_SPORT)
        .ldx(Size::H, R5, R2, UDP_DPORT)
        .stx(Size::H, R2, R5, UDP_SPORT)
        .stx(Size::H, R2, R4, UDP_DPORT);
    a.mov64_imm(R0, XDP_TX as i32).exit();
    a.bind(drop).mov64_imm(R0, XDP_DROP as i32).exit();
    a.bind(pass).mov64_imm(R0, XDP_PASS as i32).exit();
    a.finish()
}

/// The loaded echo program (see the [module docs](self)); attach it with
/// [`super::attach_fd`] (its kernel name starts with `kbypass`, so later attaches know it).
#[derive(Debug)]
pub struct UdpEcho {
    prog: ProgFd,
    info: ProgInfo,
    port: u16,
    insn_count: usize,
}

impl UdpEcho {
    /// Build and load the program answering sockperf requests to UDP port `port`.
    pub fn new(port: u16) -> Result<Self> {
        if port == 0 {
            return Err(Error::invalid(
                "port 0: give the UDP port the client sends to (sockperf's default is 11111)",
            ));
        }
        let insns = sockperf_echo_program(port)?;
        let prog = ProgFd::load(&ProgLoad {
            prog_type: BPF_PROG_TYPE_XDP,
            insns: &insns,
            name: "kbypass_echo",
            license: "GPL",
            expected_attach_type: 0,
            flags: 0,
        })?;
        let info = prog.info()?;
        Ok(UdpEcho {
            prog,
            info,
            port,
            insn_count: insns.len(),
        })
    }

    /// The program fd.
    pub fn prog(&self) -> &ProgFd {
        &self.prog
    }

    /// Kernel id, name and tag.
    pub fn info(&self) -> &ProgInfo {
        &self.info
    }

    /// The UDP port it answers.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Number of BPF instructions.
    pub fn insn_count(&self) -> usize {
        self.insn_count
    }

    /// Run the program once on a copy of `frame` (the kernel's test run; no interface is
    /// touched): the verdict and the frame as the program left it.
    pub fn test_run(&self, frame: &[u8]) -> Result<(TestRunResult, Vec<u8>)> {
        if frame.len() < 14 {
            return Err(Error::invalid(format!(
                "frame of {} bytes is shorter than an Ethernet header (14)",
                frame.len()
            )));
        }
        let mut out = vec![0u8; frame.len() + 256];
        let r = self.prog.test_run(TestRun {
            data: frame,
            data_out: Some(&mut out),
            ..Default::default()
        })?;
        out.truncate(r.data_size_out as usize);
        Ok((r, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::testutil::is_root;

    /// An Ethernet + IPv4 + UDP frame to port 11111 from 40000 carrying a sockperf header with
    /// `flags`, and 8 more payload bytes.
    fn request(flags: u8) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        let total: u16 = 20 + 8 + 22;
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2,
        ];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        let sum = crate::packet::checksum::fold(crate::packet::checksum::sum16(&ip, 0));
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&11111u16.to_be_bytes());
        f.extend_from_slice(&30u16.to_be_bytes());
        f.extend_from_slice(&[0xab, 0xcd]);
        f.extend_from_slice(&7u64.to_be_bytes());
        f.extend_from_slice(&[0, flags]);
        f.extend_from_slice(&22u32.to_be_bytes());
        f.extend_from_slice(b"payload!");
        f
    }

    #[test]
    fn the_program_assembles_without_a_kernel() {
        let v = sockperf_echo_program(11111).unwrap();
        assert!(v.len() > 30 && v.len() < 64, "{}", v.len());
        assert_eq!(v.last().unwrap().code, 0x95, "ends with exit");
        assert!(UdpEcho::new(0).is_err() || !is_root());
    }

    #[test]
    fn requests_are_answered_others_dropped_or_passed() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let e = UdpEcho::new(11111).unwrap();
        assert_eq!(e.info().name, "kbypass_echo");
        let req = request(0x03);
        let (r, out) = e.test_run(&req).unwrap();
        assert_eq!(r.retval, XDP_TX);
        assert_eq!(out.len(), req.len());
        assert_eq!((&out[0..6], &out[6..12]), (&req[6..12], &req[0..6]), "MACs");
        assert_eq!(
            (&out[26..30], &out[30..34]),
            (&req[30..34], &req[26..30]),
            "IPs"
        );
        assert_eq!(
            (&out[34..36], &out[36..38]),
            (&req[36..38], &req[34..36]),
            "ports"
        );
        assert_eq!(&out[40..42], &[0, 0], "no UDP checksum");
        assert_eq!(out[51], 0x02, "the client bit cleared");
        assert_eq!(
            &out[14..26],
            &req[14..26],
            "IP header as it was (its checksum holds)"
        );
        assert_eq!(
            crate::packet::checksum::fold(crate::packet::checksum::sum16(&out[14..34], 0)),
            0
        );
        assert_eq!(&out[42..51], &req[42..51]);
        assert_eq!(&out[52..], &req[52..]);
        // A warm-up message, or one that asks for no answer: dropped, as sockperf server does.
        for flags in [0x07, 0x01, 0x02] {
            assert_eq!(e.test_run(&request(flags)).unwrap().0.retval, XDP_DROP);
        }
        // Another port, a fragment, IP options, a runt, ARP: the kernel's.
        let mut other = request(0x03);
        other[37] ^= 1;
        let mut frag = request(0x03);
        frag[20] |= 0x20;
        let mut opts = request(0x03);
        opts[14] = 0x46;
        let mut arp = request(0x03);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        for f in [other, frag, opts, arp, request(0x03)[..50].to_vec()] {
            assert_eq!(e.test_run(&f).unwrap().0.retval, XDP_PASS);
        }
    }
}
