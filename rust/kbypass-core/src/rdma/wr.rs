//! Work requests: what a send does ([`SendOp`], [`SendFlags`]) and how one reaches the
//! provider, built without allocating. Receives take one path for QPs and shared receive
//! queues alike ([`RecvPath`]); the scatter/gather elements both carry are
//! [`Sge`](super::Sge)s, which only a memory region hands out.

use std::ffi::c_int;
use std::ptr;

use super::ah::AddressHandle;
use super::ffi::{self, VerbsPtr};
use super::mr::Sge;
use crate::error::{Error, Result};

/// One send work request's operation, for a libibverbs QP and the user-space engine alike.
#[derive(Clone, Copy)]
pub enum SendOp<'a> {
    /// SEND.
    Send,
    /// SEND with 32-bit immediate data (host order).
    SendImm(u32),
    /// SEND with invalidate (`IBV_WR_SEND_WITH_INV`): the responder invalidates its R_Key
    /// `invalidate_rkey` (RC only; the region must allow remote invalidation).
    SendInv {
        /// The responder's R_Key to invalidate.
        invalidate_rkey: u32,
    },
    /// RDMA WRITE to `remote_addr` with `rkey`.
    Write {
        /// Remote virtual address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
    },
    /// RDMA WRITE with immediate data (consumes a receive at the peer).
    WriteImm {
        /// Remote virtual address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
        /// Immediate data (host order).
        imm: u32,
    },
    /// RDMA READ from `remote_addr` into the SGEs.
    Read {
        /// Remote virtual address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
    },
    /// 64-bit compare-and-swap at an 8-byte aligned `remote_addr`; the old value lands in the
    /// SGE (8 bytes).
    CompareSwap {
        /// Remote virtual address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
        /// Expected value.
        compare: u64,
        /// New value.
        swap: u64,
    },
    /// 64-bit fetch-and-add; the old value lands in the SGE (8 bytes).
    FetchAdd {
        /// Remote virtual address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
        /// Addend.
        add: u64,
    },
    /// UD SEND to the QP behind `ah` (an address handle of the QP's own context: libibverbs
    /// or the user-space engine).
    UdSend {
        /// Address handle of the destination port.
        ah: &'a AddressHandle,
        /// Destination QP number.
        remote_qpn: u32,
        /// Destination Q_Key.
        remote_qkey: u32,
        /// Optional immediate data.
        imm: Option<u32>,
    },
}

impl SendOp<'_> {
    /// Whether the SGEs receive data (read results, atomics' original values) rather than
    /// give it.
    pub(crate) fn writes_local(&self) -> bool {
        matches!(
            self,
            SendOp::Read { .. } | SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. }
        )
    }
}

/// Send flags (`enum ibv_send_flags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendFlags(pub u32);

impl SendFlags {
    /// Generate a completion for this request.
    pub const SIGNALED: SendFlags = SendFlags(ffi::SEND_SIGNALED);
    /// Wait for earlier reads/atomics first.
    pub const FENCE: SendFlags = SendFlags(ffi::SEND_FENCE);
    /// Solicited event at the receiver.
    pub const SOLICITED: SendFlags = SendFlags(ffi::SEND_SOLICITED);
    /// Copy the payload into the WQE (no lkey needed).
    pub const INLINE: SendFlags = SendFlags(ffi::SEND_INLINE);
}

impl std::ops::BitOr for SendFlags {
    type Output = SendFlags;
    fn bitor(self, rhs: SendFlags) -> SendFlags {
        SendFlags(self.0 | rhs.0)
    }
}

/// `num_sge` of a work request.
fn num_sge(sg: &[Sge<'_>]) -> Result<c_int> {
    c_int::try_from(sg.len()).map_err(|_| Error::invalid("too many SGEs"))
}

/// The `ibv_send_wr` for one operation; `sg` must outlive the post it is built for.
pub(super) fn send_wr(
    wr_id: u64,
    op: SendOp<'_>,
    sg: &[Sge<'_>],
    flags: SendFlags,
) -> Result<ffi::ibv_send_wr> {
    let mut wr = ffi::ibv_send_wr {
        wr_id,
        next: ptr::null_mut(),
        // The provider only reads the list; `Sge` is `repr(transparent)` over `ibv_sge`.
        sg_list: sg.as_ptr() as *mut ffi::ibv_sge,
        num_sge: num_sge(sg)?,
        opcode: 0,
        send_flags: flags.0,
        imm_data: 0,
        wr: ffi::send_wr_wr::default(),
        qp_type: [0; 2],
        _bind_mw: [0; 6],
    };
    match op {
        SendOp::Send => wr.opcode = ffi::WR_SEND,
        SendOp::SendImm(imm) => {
            wr.opcode = ffi::WR_SEND_WITH_IMM;
            wr.imm_data = imm.to_be();
        }
        SendOp::SendInv { invalidate_rkey } => {
            wr.opcode = ffi::WR_SEND_WITH_INV;
            // `invalidate_rkey` shares `imm_data`'s place, in host order.
            wr.imm_data = invalidate_rkey;
        }
        SendOp::Write { remote_addr, rkey } | SendOp::Read { remote_addr, rkey } => {
            wr.opcode = if matches!(op, SendOp::Read { .. }) {
                ffi::WR_RDMA_READ
            } else {
                ffi::WR_RDMA_WRITE
            };
            wr.wr.w0 = remote_addr;
            wr.wr.w1 = u64::from(rkey);
        }
        SendOp::WriteImm {
            remote_addr,
            rkey,
            imm,
        } => {
            wr.opcode = ffi::WR_RDMA_WRITE_WITH_IMM;
            wr.imm_data = imm.to_be();
            wr.wr.w0 = remote_addr;
            wr.wr.w1 = u64::from(rkey);
        }
        SendOp::CompareSwap {
            remote_addr,
            rkey,
            compare,
            swap,
        } => {
            wr.opcode = ffi::WR_ATOMIC_CMP_AND_SWP;
            wr.wr = ffi::send_wr_wr {
                w0: remote_addr,
                w1: compare,
                w2: swap,
                w3: u64::from(rkey),
            };
        }
        SendOp::FetchAdd {
            remote_addr,
            rkey,
            add,
        } => {
            wr.opcode = ffi::WR_ATOMIC_FETCH_AND_ADD;
            wr.wr = ffi::send_wr_wr {
                w0: remote_addr,
                w1: add,
                w2: 0,
                w3: u64::from(rkey),
            };
        }
        SendOp::UdSend {
            ah,
            remote_qpn,
            remote_qkey,
            imm,
        } => {
            wr.opcode = if imm.is_some() {
                ffi::WR_SEND_WITH_IMM
            } else {
                ffi::WR_SEND
            };
            wr.imm_data = imm.unwrap_or(0).to_be();
            wr.wr.w0 = ah.verbs_ptr()? as u64;
            wr.wr.w1 = u64::from(remote_qpn) | (u64::from(remote_qkey) << 32);
        }
    }
    Ok(wr)
}

/// The provider's receive entry point: `post_recv` for a QP, `post_srq_recv` for an SRQ, one
/// prototype over the queue's type.
pub(super) type PostRecvFn<Q> =
    unsafe extern "C" fn(*mut Q, *mut ffi::ibv_recv_wr, *mut *mut ffi::ibv_recv_wr) -> c_int;

/// A receive queue's way in: the queue with its provider entry point and the words its errors
/// carry. The one `post_recv` of [`QueuePair`](super::QueuePair) and
/// [`SharedReceiveQueue`](super::SharedReceiveQueue).
pub(super) struct RecvPath<Q> {
    queue: VerbsPtr<Q>,
    post: PostRecvFn<Q>,
    what: &'static str,
    fix: &'static str,
}

impl<Q> RecvPath<Q> {
    /// # Safety
    /// `post` must be the receive entry point of the provider that created `queue`, and
    /// `queue` must stay alive (not destroyed) for as long as this value.
    pub(super) unsafe fn new(
        queue: VerbsPtr<Q>,
        post: PostRecvFn<Q>,
        what: &'static str,
        fix: &'static str,
    ) -> Self {
        RecvPath {
            queue,
            post,
            what,
            fix,
        }
    }

    /// Post one receive work request. Does not allocate.
    pub(super) fn post(&self, wr_id: u64, sg: &[Sge<'_>]) -> Result<()> {
        let mut wr = ffi::ibv_recv_wr {
            wr_id,
            next: ptr::null_mut(),
            sg_list: sg.as_ptr() as *mut ffi::ibv_sge,
            num_sge: num_sge(sg)?,
        };
        let mut bad: *mut ffi::ibv_recv_wr = ptr::null_mut();
        // SAFETY: `post` belongs to `queue`, which is alive (`new`'s contract); `wr` and the
        // SGE array it points to outlive the call (the provider copies them into its queue).
        let rc = unsafe { (self.post)(self.queue.as_ptr(), &mut wr, &mut bad) };
        if rc != 0 {
            return Err(Error::os(self.what, rc, self.fix));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_with_invalidate_and_immediate_fill_the_words_libibverbs_reads() {
        let flags = SendFlags::SIGNALED;
        let op = SendOp::SendInv {
            invalidate_rkey: 0x1234_5678,
        };
        assert!(!op.writes_local());
        let wr = send_wr(7, op, &[], flags).unwrap();
        assert_eq!((wr.wr_id, wr.opcode), (7, ffi::WR_SEND_WITH_INV));
        assert_eq!(wr.imm_data, 0x1234_5678, "invalidate_rkey is in host order");
        assert_eq!(wr.send_flags, ffi::SEND_SIGNALED);
        let wr = send_wr(8, SendOp::SendImm(0x1234_5678), &[], flags).unwrap();
        assert_eq!(wr.opcode, ffi::WR_SEND_WITH_IMM);
        assert_eq!(
            wr.imm_data,
            0x1234_5678u32.to_be(),
            "imm_data is in network order"
        );
        let read = SendOp::Read {
            remote_addr: 0x1000,
            rkey: 9,
        };
        assert!(read.writes_local());
        let wr = send_wr(9, read, &[], flags).unwrap();
        assert_eq!(
            (wr.opcode, wr.wr.w0, wr.wr.w1),
            (ffi::WR_RDMA_READ, 0x1000, 9)
        );
    }
}
