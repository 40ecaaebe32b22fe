//! Our XDP programs: the default "redirect everything to the queue's socket" program and match
//! rules compiled to BPF, built with [`super::asm`] and loaded with `sys::bpf`.

use std::os::fd::RawFd;
use std::sync::{Mutex, OnceLock};

use super::asm::{
    helper, Alu, Asm, Cond, Label, Reg, Size, R0, R1, R10, R2, R3, R4, R5, R6, R7, R8, R9,
};
use super::rules::{IpVersion, Prefix, Rule, Vlan, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
use crate::error::{Error, Result};
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
const UNTAGGED: i32 = 0x10000;

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
fn emit_redirect(a: &mut Asm, form: RedirectForm, map_fd: RawFd, ctx: Reg) {
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
        .jmp_reg(Cond::Gt, tmp, R8, fail);
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

/// Compare the big-endian u16 at `base + off` with an inclusive range (clobbers r3).
fn match_port(a: &mut Asm, base: Reg, off: i16, (lo, hi): (u16, u16), fail: Label) {
    if lo == 0 && hi == u16::MAX {
        return;
    }
    a.ldx(Size::H, R3, base, off).to_be(R3, 16);
    if lo == hi {
        a.jmp_imm(Cond::Ne, R3, i32::from(lo), fail);
    } else {
        a.jmp_imm(Cond::Lt, R3, i32::from(lo), fail)
            .jmp_imm(Cond::Gt, R3, i32::from(hi), fail);
    }
}

fn match_proto(a: &mut Asm, r: &Rule, fail: Label) {
    // r2 holds the protocol byte.
    match r.proto {
        Some(p) => {
            a.jmp_imm(Cond::Ne, R2, i32::from(p), fail);
        }
        None if r.sport.is_some() || r.dport.is_some() => {
            let ok = a.label();
            a.jmp_imm(Cond::Eq, R2, i32::from(IPPROTO_UDP), ok)
                .jmp_imm(Cond::Eq, R2, i32::from(IPPROTO_TCP), ok)
                .jmp_imm(Cond::Ne, R2, i32::from(IPPROTO_SCTP), fail)
                .bind(ok);
        }
        None => {}
    }
}

/// One rule for one IP version (or none); falls to `fail` if it does not match, else jumps
/// to `hit`. Registers: r6 ctx, r7 data, r8 data_end, r9 L3 header, r4 EtherType (host order),
/// r5 VLAN id or [`UNTAGGED`].
fn emit_rule(a: &mut Asm, r: &Rule, ver: Option<IpVersion>, hit: Label) {
    let fail = a.label();
    match r.vlan {
        Vlan::Any => {}
        Vlan::Tagged => {
            a.jmp_imm(Cond::Eq, R5, UNTAGGED, fail);
        }
        Vlan::Id(v) => {
            a.jmp_imm(Cond::Ne, R5, i32::from(v), fail);
        }
    }
    if let Some(et) = r.ethertype {
        a.jmp_imm(Cond::Ne, R4, i32::from(et), fail);
    }
    let has_ports = r.sport.is_some() || r.dport.is_some();
    match ver {
        None => {}
        Some(IpVersion::V4) => {
            a.jmp_imm(Cond::Ne, R4, 0x0800, fail);
            bounds(a, R9, 20, R2, fail);
            // Version 4 and IHL ≥ 5, else malformed.
            a.ldx(Size::B, R3, R9, 0)
                .mov64_reg(R2, R3)
                .alu64_imm(Alu::Rsh, R2, 4)
                .jmp_imm(Cond::Ne, R2, 4, fail)
                .alu64_imm(Alu::And, R3, 0x0f)
                .jmp_imm(Cond::Lt, R3, 5, fail);
            a.ldx(Size::B, R2, R9, 9);
            match_proto(a, r, fail);
            if let Some(p) = &r.src {
                match_prefix(a, R9, 12, p, fail);
            }
            if let Some(p) = &r.dst {
                match_prefix(a, R9, 16, p, fail);
            }
            if has_ports {
                // Only the first fragment carries the L4 header.
                a.ldx(Size::H, R2, R9, 6)
                    .to_be(R2, 16)
                    .alu64_imm(Alu::And, R2, 0x1fff)
                    .jmp_imm(Cond::Ne, R2, 0, fail);
                // L4 header at r9 + IHL*4 (20..60 bytes): a bounded variable offset.
                a.ldx(Size::B, R3, R9, 0)
                    .alu64_imm(Alu::And, R3, 0x0f)
                    .alu64_imm(Alu::Lsh, R3, 2)
                    .mov64_reg(R2, R9)
                    .alu64_reg(Alu::Add, R2, R3);
                bounds(a, R2, 4, R3, fail);
                if let Some(pr) = r.sport {
                    match_port(a, R2, 0, pr, fail);
                }
                if let Some(pr) = r.dport {
                    match_port(a, R2, 2, pr, fail);
                }
            }
        }
        Some(IpVersion::V6) => {
            a.jmp_imm(Cond::Ne, R4, 0x86dd, fail);
            bounds(a, R9, if has_ports { 44 } else { 40 }, R2, fail);
            a.ldx(Size::B, R2, R9, 0)
                .alu64_imm(Alu::Rsh, R2, 4)
                .jmp_imm(Cond::Ne, R2, 6, fail);
            a.ldx(Size::B, R2, R9, 6);
            match_proto(a, r, fail);
            if let Some(p) = &r.src {
                match_prefix(a, R9, 8, p, fail);
            }
            if let Some(p) = &r.dst {
                match_prefix(a, R9, 24, p, fail);
            }
            if let Some(pr) = r.sport {
                match_port(a, R9, 40, pr, fail);
            }
            if let Some(pr) = r.dport {
                match_port(a, R9, 42, pr, fail);
            }
        }
    }
    a.ja(hit);
    a.bind(fail);
}

/// A program that redirects frames matching any of `rules` to the queue's socket and passes
/// everything else (including short or malformed frames) to the kernel.
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
    let l3 = a.label();
    a.mov64_reg(R6, R1)
        .ldx(Size::W, R7, R6, 0)
        .ldx(Size::W, R8, R6, 4);
    bounds(&mut a, R7, 14, R2, pass);
    a.ldx(Size::H, R4, R7, 12)
        .to_be(R4, 16)
        .mov64_reg(R9, R7)
        .alu64_imm(Alu::Add, R9, 14)
        .mov64_imm(R5, UNTAGGED);
    let tagged = a.label();
    a.jmp_imm(Cond::Eq, R4, 0x8100, tagged)
        .jmp_imm(Cond::Eq, R4, 0x88a8, tagged)
        .ja(l3);
    a.bind(tagged);
    bounds(&mut a, R7, 18, R2, pass);
    a.ldx(Size::H, R5, R7, 14)
        .to_be(R5, 16)
        .alu64_imm(Alu::And, R5, 0x0fff)
        .ldx(Size::H, R4, R7, 16)
        .to_be(R4, 16)
        .mov64_reg(R9, R7)
        .alu64_imm(Alu::Add, R9, 18);
    a.bind(l3);
    for r in rules {
        let vers = r.versions();
        if vers.is_empty() && r.vlan == Vlan::Any && r.ethertype.is_none() {
            // Matches every frame: later rules would be unreachable code, which the verifier
            // rejects.
            a.ja(hit);
            break;
        }
        if vers.is_empty() {
            emit_rule(&mut a, r, None, hit);
        }
        for v in vers {
            emit_rule(&mut a, r, Some(v), hit);
        }
    }
    a.bind(pass).mov64_imm(R0, XDP_PASS as i32).exit();
    a.bind(hit);
    emit_redirect(&mut a, form, map_fd, R6);
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
