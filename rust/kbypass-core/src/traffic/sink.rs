//! A counting `XDP_DROP` sink: the ceiling of the receive path, and how a generator's rate into a
//! dropping peer is measured.
//!
//! The program adds 1 and the frame length to a per-CPU array slot and drops the frame. Per-CPU
//! slots need no atomic instructions (XDP runs in softirq context, one frame at a time per CPU);
//! [`DropCounter::read`] sums the slots of all CPUs.

use super::kernel::Throughput;
use crate::error::{Error, Result};
use crate::sys::bpf::{
    BpfInsn, MapFd, ProgFd, ProgLoad, BPF_ANY, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_PROG_TYPE_XDP,
    XDP_DROP,
};
use crate::sys::netlink::XdpMode;
use crate::sys::netns::NetnsGuard;
use crate::xdp::asm::{Alu, Asm, Size, R0, R1, R2, R3, R6, R7};
use crate::xdp::{attach_fd, AttachMode, XdpAttachment};

/// Name of the program (kbypass prefix: a later attach recognises it as ours).
pub const PROGRAM_NAME: &str = "kbypass_dropcnt";

/// Packets and bytes counted by a [`DropCounter`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Frames dropped.
    pub packets: u64,
    /// Bytes of those frames (linear part).
    pub bytes: u64,
}

fn drop_program(map_fd: i32) -> Result<Vec<BpfInsn>> {
    let mut a = Asm::new();
    let out = a.label();
    // r7 = data_end - data (the frame length)
    a.mov64_reg(R6, R1)
        .ldx(Size::W, R7, R6, 4)
        .ldx(Size::W, R2, R6, 0)
        .alu64_reg(Alu::Sub, R7, R2);
    a.lookup_first(map_fd, out);
    a.ldx(Size::DW, R3, R0, 0)
        .alu64_imm(Alu::Add, R3, 1)
        .stx(Size::DW, R0, R3, 0)
        .ldx(Size::DW, R3, R0, 8)
        .alu64_reg(Alu::Add, R3, R7)
        .stx(Size::DW, R0, R3, 8);
    a.bind(out).mov64_imm(R0, XDP_DROP as i32).exit();
    a.finish()
}

/// The counting drop program attached to an interface. Dropping the value detaches it.
///
/// ```no_run
/// use kbypass_core::traffic::sink::DropCounter;
/// use kbypass_core::xdp::AttachMode;
/// let sink = DropCounter::attach("veth1", Some("kbx-b"), AttachMode::Native, false)?;
/// // ... send traffic ...
/// println!("{:?}", sink.read()?);
/// # Ok::<(), kbypass_core::Error>(())
/// ```
#[derive(Debug)]
pub struct DropCounter {
    attachment: Option<XdpAttachment>,
    map: MapFd,
    _prog: ProgFd,
    netns: Option<String>,
    ifname: String,
}

impl DropCounter {
    /// Load the program and attach it to `ifname` (inside `netns` when given) in `mode`.
    /// Another program on the interface is refused unless `force` (see [`crate::xdp::attach`]).
    pub fn attach(
        ifname: &str,
        netns: Option<&str>,
        mode: AttachMode,
        force: bool,
    ) -> Result<Self> {
        let _ns = netns.map(NetnsGuard::enter).transpose()?;
        let map = MapFd::create(BPF_MAP_TYPE_PERCPU_ARRAY, 4, 16, 1, 0, "kbypass_dropcnt")?;
        let insns = drop_program(map.raw())?;
        let prog = ProgFd::load(&ProgLoad {
            prog_type: BPF_PROG_TYPE_XDP,
            insns: &insns,
            name: PROGRAM_NAME,
            license: "GPL",
            expected_attach_type: 0,
            flags: 0,
        })?;
        let id = prog.info()?.id;
        let attachment = attach_fd(&prog, id, ifname, mode, force)?;
        Ok(DropCounter {
            attachment: Some(attachment),
            map,
            _prog: prog,
            netns: netns.map(str::to_string),
            ifname: ifname.to_string(),
        })
    }

    /// The interface.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The mode the kernel reports ("native" / "generic"), or None once detached.
    pub fn mode(&self) -> Option<XdpMode> {
        self.attachment.as_ref().map(XdpAttachment::mode)
    }

    /// Whether the program is still attached.
    pub fn is_attached(&self) -> bool {
        self.attachment.is_some()
    }

    /// Frames and bytes dropped so far (summed over CPUs).
    pub fn read(&self) -> Result<Counts> {
        let mut buf = vec![0u8; self.map.value_len()];
        self.map.lookup(&0u32.to_ne_bytes(), &mut buf)?;
        let mut c = Counts::default();
        for slot in buf.chunks_exact(16) {
            c.packets += u64::from_ne_bytes(slot[0..8].try_into().unwrap_or_default());
            c.bytes += u64::from_ne_bytes(slot[8..16].try_into().unwrap_or_default());
        }
        Ok(c)
    }

    /// Set the counters back to zero (frames arriving meanwhile may be lost to the count).
    pub fn reset(&self) -> Result<()> {
        self.map.update(
            &0u32.to_ne_bytes(),
            &vec![0u8; self.map.value_len()],
            BPF_ANY,
        )
    }

    /// Count for `duration` starting now: the frames and bytes that arrived meanwhile, as a
    /// [`Throughput`] over the measured time.
    pub fn measure(&self, duration: std::time::Duration) -> Result<Throughput> {
        let t0 = std::time::Instant::now();
        let a = self.read()?;
        std::thread::sleep(duration);
        let b = self.read()?;
        Ok(Throughput {
            packets: b.packets - a.packets,
            bytes: b.bytes - a.bytes,
            elapsed: t0.elapsed(),
        })
    }

    /// Detach now (Drop does it too, silently). The counters stay readable.
    pub fn detach(&mut self) -> Result<()> {
        let Some(mut att) = self.attachment.take() else {
            return Ok(());
        };
        // A bpf_link detaches from anywhere; the netlink fallback names the interface by index,
        // which only means something inside its namespace. If the namespace is gone, so is the
        // interface and with it the program.
        let _ns = match self.netns.as_deref().map(NetnsGuard::enter).transpose() {
            Ok(g) => g,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        att.detach()
    }
}

impl Drop for DropCounter {
    fn drop(&mut self) {
        let _ = self.detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_counts_then_drops() {
        let p = drop_program(3).unwrap();
        assert_eq!(p.last().unwrap().code, 0x95);
        assert_eq!(p[p.len() - 2].imm, XDP_DROP as i32);
        assert!(p.iter().any(|i| i.code == 0x85 && i.imm == 1));
    }
}
