//! The RC transport as pure, I/O-free state machines: a [`Requester`] and a [`Responder`]
//! that take packets in, hand packets out and read an abstract clock (nanoseconds), so they
//! run deterministically in tests and under any driver (an AF_XDP poll loop, an in-memory
//! link).
//!
//! The requester assigns PSNs, segments messages by the path MTU (256–4096), keeps at most
//! `window` packets outstanding, completes work requests on ACKs (coalesced or implicit:
//! a read response or atomic ACK acknowledges what precedes it), goes back to the NAKed PSN
//! on a PSN sequence error (go-back-N), waits the RNR timer and retries on an RNR NAK
//! (`rnr_retry` times; 7 is unlimited), and retransmits from the oldest unacknowledged PSN
//! when the retransmission timer (4.096 µs × 2^`timeout`) expires (`retry_cnt` times). A
//! read that lost responses is re-requested from the first missing PSN with its address and
//! length advanced.
//!
//! The responder checks PSNs (a packet ahead of the expected one draws one PSN-sequence NAK
//! until the expected one arrives), answers duplicates from its state (send and write
//! duplicates are ACKed again; reads re-executed and atomics' original values replayed, both
//! only from the `max_dest_rd_atomic` read and atomic resources it holds), coalesces ACKs
//! (one ACK for everything received since the last one), sends RNR NAKs when a send finds no
//! receive buffer (in its own queue or a shared [`Srq`]), checks lengths and the QP's access
//! flags as rxe does (invalid request NAK), and checks every RDMA and atomic request against
//! the R_Key, bounds and access flags of its [`MemoryTable`] (a failure is a remote access
//! error NAK). A NAK other than PSN sequence moves the responder to the error state, which
//! completes the receive in use with the error and flushes the posted ones. A SEND with
//! invalidate invalidates an R_Key of the table (class J error if it may not). The requester
//! keeps at most `max_rd_atomic` reads and atomics outstanding.

mod external;
mod memory;
mod recv;
mod requester;
mod resources;
mod responder;
mod wr;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod spec_tests;
#[cfg(test)]
mod srq_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod unit_tests;

pub use external::ExternalMemory;
pub use memory::{BytesMut, InvalidateError, LocalSpan, MemoryTable, RemoteAccess};
pub(crate) use recv::{Recv, RecvQueue};
pub use recv::{RecvError, Srq};
pub use requester::Requester;
pub use responder::{RecvCompletion, Responder};
pub use wr::WorkRequest;

pub use bytes::Bytes;

use super::wire::{Bth, ExtHeaders, PSN_MASK};

/// A transport packet as the state machines see it: the BTH, its extension headers and its
/// payload. The driver frames it ([`super::wire::FrameSpec`]) and parses it back
/// ([`super::wire::Frame`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkt {
    /// Base transport header (the pad is the framer's).
    pub bth: Bth,
    /// Extension headers, exactly those of the opcode.
    pub ext: ExtHeaders,
    /// Payload: a message's packets share its bytes (`Bytes` slices: no copy per packet).
    pub payload: Bytes,
}

/// Status of a requester's completion (the `ibv_wc_status` values that RC produces here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Done.
    Success,
    /// The responder refused the R_Key, bounds or access rights (`REM_ACCESS_ERR`).
    RemoteAccessError,
    /// The responder found the request invalid (`REM_INV_REQ_ERR`).
    RemoteInvalidRequest,
    /// The responder hit an operational error (`REM_OP_ERR`).
    RemoteOperationalError,
    /// No ACK after `retry_cnt` retransmissions (`RETRY_EXC_ERR`).
    RetryExceeded,
    /// Still RNR NAKed after `rnr_retry` retries (`RNR_RETRY_EXC_ERR`).
    RnrRetryExceeded,
    /// Not executed: the QP went to the error state before it (`WR_FLUSH_ERR`).
    Flushed,
    /// Refused locally: a read or atomic on a QP with `max_rd_atomic` 0
    /// (`LOC_QP_OP_ERR`).
    LocalQpOperationError,
}

/// A requester's work completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The work request's id.
    pub wr_id: u64,
    /// How it ended.
    pub status: Status,
    /// Data a read returned, or the 8 bytes of an atomic's original value (host byte order,
    /// as the local buffer of an HCA's atomic holds it).
    pub data: Vec<u8>,
}

/// Connection and retry parameters of an RC QP (the `ibv_qp_attr` fields that matter here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RcParams {
    /// The peer's QP number.
    pub dest_qp: u32,
    /// First PSN this side sends.
    pub send_psn: u32,
    /// First PSN this side expects.
    pub recv_psn: u32,
    /// Path MTU in bytes: 256, 512, 1024, 2048 or 4096.
    pub mtu: usize,
    /// Most packets outstanding (sent and not acknowledged).
    pub window: u32,
    /// Local ACK timeout exponent: 4.096 µs × 2^timeout (0 would mean infinite; use ≥ 1).
    pub timeout: u8,
    /// Retransmissions after a timeout before `RetryExceeded` (0–7).
    pub retry_cnt: u8,
    /// Retries after an RNR NAK before `RnrRetryExceeded` (0–6; 7 retries forever).
    pub rnr_retry: u8,
    /// The RNR timer code this side's responder puts in its RNR NAKs (IBTA table 45).
    pub min_rnr_timer: u8,
    /// Reads and atomics this side's requester keeps outstanding at most (its credits, the
    /// peer's `max_dest_rd_atomic`); 0 refuses reads and atomics.
    pub max_rd_atomic: u8,
    /// Reads and atomics this side's responder keeps resources for: duplicates are answered
    /// only from them (a read re-executed over the range it first named, an atomic's
    /// original value replayed); 0 NAKs every read and atomic as an invalid request, as
    /// rxe does.
    pub max_dest_rd_atomic: u8,
    /// The remote operations this side's responder accepts at all (the QP's
    /// `qp_access_flags`); an RDMA write, read or atomic it does not is NAKed as an invalid
    /// request, as rxe does, before any region is looked at.
    pub qp_access: RemoteAccess,
}

impl Default for RcParams {
    fn default() -> Self {
        RcParams {
            dest_qp: 0,
            send_psn: 0,
            recv_psn: 0,
            mtu: 1024,
            window: 128,
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 7,
            min_rnr_timer: 12,
            max_rd_atomic: 16,
            max_dest_rd_atomic: 16,
            qp_access: RemoteAccess::ALL,
        }
    }
}

impl RcParams {
    /// The retransmission timeout in nanoseconds.
    pub fn timeout_ns(&self) -> u64 {
        4096u64 << self.timeout.clamp(1, 31)
    }
}

/// The RNR NAK timer in nanoseconds for a 5-bit timer code (IBTA table 45: code 0 is
/// 655.36 ms, 1 is 0.01 ms, up to 31 at 491.52 ms).
pub fn rnr_timer_ns(code: u8) -> u64 {
    const US_X100: [u64; 32] = [
        65536, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024,
        1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384, 24576, 32768, 49152,
    ];
    US_X100[usize::from(code & 0x1f)] * 10_000
}

/// `a - b` in 24-bit PSN arithmetic, as a signed distance.
pub fn psn_diff(a: u32, b: u32) -> i32 {
    ((a.wrapping_sub(b) << 8) as i32) >> 8
}

/// `a + n` in 24-bit PSN arithmetic.
pub fn psn_add(a: u32, n: u32) -> u32 {
    a.wrapping_add(n) & PSN_MASK
}

/// Packets a message of `len` bytes takes at `mtu` (at least one).
pub fn packets_for(len: usize, mtu: usize) -> u32 {
    len.div_ceil(mtu).max(1) as u32
}
