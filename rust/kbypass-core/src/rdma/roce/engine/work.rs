//! Work requests and completions: what a caller posts (a verbs [`SendOp`], [`Sge`]s), what
//! the engine keeps of it until it completes, and the [`WorkCompletion`] it ends as.

use super::{SendOp, WorkCompletion};
use crate::rdma::ffi;
use crate::rdma::roce::rc::{LocalSpan, MemoryTable, Status};

/// `IBV_WC_WITH_INV`: `imm_data` holds the invalidated R_Key.
pub(super) use crate::rdma::ffi::WC_WITH_INV;

/// `IBV_WC_SEND`.
pub const WC_SEND: i32 = 0;
/// `IBV_WC_RDMA_WRITE`.
pub const WC_RDMA_WRITE: i32 = 1;
/// `IBV_WC_RDMA_READ`.
pub const WC_RDMA_READ: i32 = 2;
/// `IBV_WC_COMP_SWAP`.
pub const WC_COMP_SWAP: i32 = 3;
/// `IBV_WC_FETCH_ADD`.
pub const WC_FETCH_ADD: i32 = 4;
/// `IBV_WC_RECV`.
pub const WC_RECV: i32 = 128;
/// `IBV_WC_RECV_RDMA_WITH_IMM`.
pub const WC_RECV_RDMA_WITH_IMM: i32 = 129;

pub(super) const WC_SUCCESS: i32 = 0;
pub(super) const WC_LOC_LEN_ERR: i32 = 1;
pub(super) const WC_WR_FLUSH_ERR: i32 = 5;

/// Bytes of GRH in front of every UD receive (verbs places the IP header there).
pub(super) const GRH_LEN: usize = crate::rdma::UD_GRH_LEN;

/// A scatter/gather element (`ibv_sge`): `len` bytes at `addr` of the memory region with
/// local key `lkey`. Checked against the region when posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sge {
    /// Address (the region's [`addr`](super::MemoryRegion::addr) plus an offset).
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// The region's local key.
    pub lkey: u32,
}

/// The completion opcode of `op`.
pub(super) fn wc_opcode(op: &SendOp<'_>) -> i32 {
    match op {
        SendOp::Send | SendOp::SendImm(_) | SendOp::SendInv { .. } | SendOp::UdSend { .. } => {
            WC_SEND
        }
        SendOp::Write { .. } | SendOp::WriteImm { .. } => WC_RDMA_WRITE,
        SendOp::Read { .. } => WC_RDMA_READ,
        SendOp::CompareSwap { .. } => WC_COMP_SWAP,
        SendOp::FetchAdd { .. } => WC_FETCH_ADD,
    }
}

/// Where a list of SGEs lies, checked: for gathering (`write` false) or scattering.
pub(super) fn resolve(mem: &MemoryTable, sg: &[Sge], write: bool) -> crate::Result<Vec<LocalSpan>> {
    sg.iter()
        .map(|s| {
            mem.local(s.lkey, s.addr, s.len as usize, write).ok_or_else(|| {
                crate::Error::invalid(format!(
                    "SGE of {} bytes at {:#x} with lkey {:#x} is not inside a memory region of this QP's protection domain{}",
                    s.len,
                    s.addr,
                    s.lkey,
                    if write { " registered with LOCAL_WRITE" } else { "" }
                ))
            })
        })
        .collect()
}

/// The bytes of `spans`, one after the other.
pub(super) fn gather(spans: &[LocalSpan]) -> Vec<u8> {
    let mut out = vec![0; spans.iter().map(|s| s.len).sum()];
    let mut at = 0;
    for s in spans {
        s.mem.read(s.off, &mut out[at..at + s.len]);
        at += s.len;
    }
    out
}

/// Copies `data` across `spans`, from `skip` bytes into them; false when it does not fit
/// (nothing past the end is written).
pub(super) fn scatter(spans: &[LocalSpan], mut skip: usize, mut data: &[u8]) -> bool {
    for s in spans {
        if data.is_empty() {
            break;
        }
        if skip >= s.len {
            skip -= s.len;
            continue;
        }
        let n = (s.len - skip).min(data.len());
        s.mem.write(s.off + skip, &data[..n]);
        data = &data[n..];
        skip = 0;
    }
    data.is_empty()
}

/// A send work request between post and completion.
#[derive(Debug)]
pub(super) struct SendWqe {
    pub wr_id: u64,
    pub opcode: i32,
    pub signaled: bool,
    /// Where read results or an atomic's original value go.
    pub dest: Vec<LocalSpan>,
    pub byte_len: u32,
}

/// A receive work request between post and completion.
#[derive(Debug)]
pub(super) struct RecvWqe {
    pub wr_id: u64,
    pub spans: Vec<LocalSpan>,
    pub capacity: usize,
}

/// The `ibv_wc_status` of a requester completion.
pub(super) fn status_code(s: Status) -> i32 {
    match s {
        Status::Success => WC_SUCCESS,
        Status::RemoteAccessError => 10,
        Status::RemoteInvalidRequest => 9,
        Status::RemoteOperationalError => 11,
        Status::RetryExceeded => 12,
        Status::RnrRetryExceeded => 13,
        Status::Flushed => WC_WR_FLUSH_ERR,
        Status::LocalQpOperationError => 2,
    }
}

/// A work completion with the fields every completion has.
pub(super) fn wc(wr_id: u64, status: i32, opcode: i32, qpn: u32, byte_len: u32) -> WorkCompletion {
    WorkCompletion {
        wr_id,
        status,
        opcode,
        byte_len,
        qp_num: qpn,
        ..Default::default()
    }
}

/// `wc` carrying immediate data (stored in network byte order, as libibverbs does).
pub(super) fn with_imm(mut wc: WorkCompletion, imm: Option<u32>) -> WorkCompletion {
    if let Some(i) = imm {
        wc.imm_data = i.to_be();
        wc.wc_flags |= ffi::WC_WITH_IMM;
    }
    wc
}

/// Which sends carry the solicited event bit (`SendFlags::SOLICITED`): set on the last packet
/// of the message, and on its retransmissions. The transports emit messages in posting order,
/// so the flags of posted sends are matched, in order, to the last packets of sends the
/// first time each goes out.
#[derive(Debug, Default)]
pub(super) struct Solicited {
    pending: std::collections::VecDeque<bool>,
    marked: std::collections::HashSet<u32>,
    highest: Option<u32>,
}

impl Solicited {
    /// A send was posted (with `solicited` or not).
    pub fn posted(&mut self, solicited: bool) {
        self.pending.push_back(solicited);
    }

    /// Sets the bit on `pkt` if it is the last packet of a solicited send.
    pub fn mark(&mut self, pkt: &mut crate::rdma::roce::rc::Pkt) {
        use crate::rdma::roce::rc::psn_diff;
        use crate::rdma::roce::wire::{Op, Position};
        let op = pkt.bth.opcode.op();
        let is_send = matches!(
            op,
            Op::SendOnly
                | Op::SendOnlyImm
                | Op::SendOnlyInv
                | Op::SendLast
                | Op::SendLastImm
                | Op::SendLastInv
        );
        if !is_send || !matches!(pkt.bth.opcode.position(), Position::Last | Position::Only) {
            return;
        }
        let psn = pkt.bth.psn;
        let first_time = self.highest.is_none_or(|h| psn_diff(psn, h) > 0);
        if first_time {
            self.highest = Some(psn);
            if self.pending.pop_front() == Some(true) {
                self.marked.insert(psn);
                if self.marked.len() > 1024 {
                    self.marked.retain(|&p| psn_diff(psn, p) < 1 << 22);
                }
            }
        }
        if self.marked.contains(&psn) {
            pkt.bth.solicited = true;
        }
    }
}
