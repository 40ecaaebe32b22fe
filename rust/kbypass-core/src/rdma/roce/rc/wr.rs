//! Work requests of the RC requester and their segmentation into request packets.

use super::super::wire::{AtomicEth, Bth, ExtHeaders, Op, Opcode, Reth, Transport};
use super::{psn_diff, Bytes, Pkt, RcParams};

/// An operation to post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkRequest {
    /// A send, optionally with immediate data.
    Send {
        /// The message.
        data: Bytes,
        /// Immediate data.
        imm: Option<u32>,
    },
    /// A send with invalidate: the responder invalidates `invalidate_rkey` (a memory window
    /// or fast-registered region of its own) when the message completes, and its receive
    /// completion says so; a key it may not invalidate fails the receive (IBTA class J).
    SendInv {
        /// The message.
        data: Bytes,
        /// The responder's R_Key to invalidate (carried in the IETH of the last packet).
        invalidate_rkey: u32,
    },
    /// An RDMA write, optionally with immediate data.
    Write {
        /// The data.
        data: Bytes,
        /// Remote address.
        va: u64,
        /// Remote key.
        rkey: u32,
        /// Immediate data.
        imm: Option<u32>,
    },
    /// An RDMA read of `len` bytes.
    Read {
        /// Remote address.
        va: u64,
        /// Remote key.
        rkey: u32,
        /// Bytes to read.
        len: u32,
    },
    /// Atomic compare and swap.
    CompareSwap {
        /// Remote address (8-byte aligned).
        va: u64,
        /// Remote key.
        rkey: u32,
        /// Value expected.
        compare: u64,
        /// Value stored if it matched.
        swap: u64,
    },
    /// Atomic fetch and add.
    FetchAdd {
        /// Remote address (8-byte aligned).
        va: u64,
        /// Remote key.
        rkey: u32,
        /// Addend.
        add: u64,
    },
}

impl WorkRequest {
    pub(super) fn expects_response(&self) -> bool {
        matches!(
            self,
            WorkRequest::Read { .. }
                | WorkRequest::CompareSwap { .. }
                | WorkRequest::FetchAdd { .. }
        )
    }
}

/// Packet `k` (at `psn`) of the `npkts` of work request `wr` under `p`, with `una` the
/// oldest unacknowledged PSN, and how many PSNs it takes.
pub(super) fn segment(
    wr: &WorkRequest,
    k: u32,
    npkts: u32,
    psn: u32,
    p: &RcParams,
    una: u32,
) -> (Pkt, u32) {
    let mtu = p.mtu;
    let last = k + 1 == npkts;
    let pos = |first: Op, middle: Op, last_op: Op, only: Op| match (k == 0, last) {
        (true, true) => only,
        (true, false) => first,
        (false, false) => middle,
        (false, true) => last_op,
    };
    let mut ext = ExtHeaders::default();
    let mut payload = Bytes::new();
    let mut advance = 1;
    let op = match wr {
        WorkRequest::Send { data, imm } => {
            payload = chunk(data, k, mtu);
            let only = if imm.is_some() {
                Op::SendOnlyImm
            } else {
                Op::SendOnly
            };
            let last_op = if imm.is_some() {
                Op::SendLastImm
            } else {
                Op::SendLast
            };
            if last {
                ext.imm = *imm;
            }
            pos(Op::SendFirst, Op::SendMiddle, last_op, only)
        }
        WorkRequest::SendInv {
            data,
            invalidate_rkey,
        } => {
            payload = chunk(data, k, mtu);
            if last {
                ext.ieth = Some(*invalidate_rkey);
            }
            pos(
                Op::SendFirst,
                Op::SendMiddle,
                Op::SendLastInv,
                Op::SendOnlyInv,
            )
        }
        WorkRequest::Write {
            data,
            va,
            rkey,
            imm,
        } => {
            payload = chunk(data, k, mtu);
            let only = if imm.is_some() {
                Op::WriteOnlyImm
            } else {
                Op::WriteOnly
            };
            let last_op = if imm.is_some() {
                Op::WriteLastImm
            } else {
                Op::WriteLast
            };
            if last {
                ext.imm = *imm;
            }
            if k == 0 {
                ext.reth = Some(Reth {
                    va: *va,
                    rkey: *rkey,
                    dma_len: data.len() as u32,
                });
            }
            pos(Op::WriteFirst, Op::WriteMiddle, last_op, only)
        }
        WorkRequest::Read { va, rkey, len } => {
            // From the first response still missing: address and length advanced.
            let skip = (k as usize * mtu).min(*len as usize);
            ext.reth = Some(Reth {
                va: va + skip as u64,
                rkey: *rkey,
                dma_len: len - skip as u32,
            });
            advance = npkts - k;
            Op::ReadRequest
        }
        WorkRequest::CompareSwap {
            va,
            rkey,
            compare,
            swap,
        } => {
            ext.atomic = Some(AtomicEth {
                va: *va,
                rkey: *rkey,
                swap_add: *swap,
                compare: *compare,
            });
            Op::CompareSwap
        }
        WorkRequest::FetchAdd { va, rkey, add } => {
            ext.atomic = Some(AtomicEth {
                va: *va,
                rkey: *rkey,
                swap_add: *add,
                compare: 0,
            });
            Op::FetchAdd
        }
    };
    let opcode = Opcode::new(Transport::Rc, op).expect("RC has every operation");
    let mut bth = Bth::new(opcode, p.dest_qp, psn);
    // Ask for an ACK at the end of each message (and on reads and atomics, as rxe does)
    // and at least every half window.
    bth.ack_req = last || wr.expects_response() || psn_diff(psn, una) as u32 >= p.window / 2;
    (Pkt { bth, ext, payload }, advance)
}

/// Packet `k`'s part of a message: a slice sharing the message's bytes.
fn chunk(data: &Bytes, k: u32, mtu: usize) -> Bytes {
    let start = (k as usize * mtu).min(data.len());
    let end = (start + mtu).min(data.len());
    data.slice(start..end)
}
