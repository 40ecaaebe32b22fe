//! The user-space RoCEv2 engine: the verbs object model run over an AF_XDP socket, for hosts
//! without kernel RDMA.
//!
//! [`Engine::open`] binds an AF_XDP socket to one queue of an interface and attaches the
//! project's XDP program with one rule: UDP to port 4791 for the engine's IP address (IPv4 or
//! IPv6) goes to the socket, everything else (ARP, neighbour discovery, the rest of the
//! host's traffic) stays with the kernel. On it run the pure transports of
//! [`super::rc`], [`super::uc`] and [`super::ud`], framed by [`super::wire`]:
//!
//! - [`ProtectionDomain`] → [`MemoryRegion`] over caller memory ([`ExternalMemory`]: a
//!   `Vec`, HugeRegion, Mempool or a buffer kept alive by its owner), checked on every
//!   remote request against its R_Key, bounds and access rights;
//! - [`CompletionQueue`] (polled, or armed with [`CompletionQueue::req_notify`] to signal
//!   a [`CompletionChannel`], an eventfd), with [`WorkCompletion`]s as libibverbs writes them;
//! - [`QueuePair`] of type RC, UC or UD, moved through INIT → RTR → RTS with the same
//!   [`PathParams`] and [`Endpoint`] as the libibverbs provider (GIDs are IPv4-mapped or IPv6
//!   addresses; the peer's MAC comes from the kernel's neighbour table, resolved on demand);
//!   [`AddressHandle`]s for UD.
//!
//! Progress is made by a poll thread of the engine's own (never touching Python, optionally
//! pinned) or, with [`Progress::Caller`], inside the caller's CQ polls and waits; timers run on
//! a monotonic clock. Everything the engine drops or refuses is counted in [`EngineCounters`].
//! Dropping the last handle (every object holds its engine) stops the thread and releases
//! the socket, the XDP program, its maps and the attachment.
//!
//! The path MTU is capped at what the link MTU and a UMEM frame carry ([`Engine::max_mtu`]),
//! as rxe caps it at the port's active MTU.

mod context;
mod objects;
mod qp;
mod srq;
mod state;
mod transport;
mod work;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use context::Engine;
pub use objects::{
    AddressHandle, CompletionChannel, CompletionQueue, MemoryRegion, ProtectionDomain,
};
pub use qp::{QpState, QueuePair};
pub use srq::SharedReceiveQueue;
pub use work::{
    Sge, WC_COMP_SWAP, WC_FETCH_ADD, WC_RDMA_READ, WC_RDMA_WRITE, WC_RECV, WC_RECV_RDMA_WITH_IMM,
    WC_SEND,
};

pub use super::rc::ExternalMemory;
pub use crate::rdma::{
    Access, Endpoint, Gid, PathParams, QpCaps, QpType, SendFlags, SendOp, WorkCompletion,
};
pub use crate::xdp::AttachMode;
pub use crate::xsk::{BindMode, BusyPoll};

/// Who makes progress (receives, retransmits, completes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The engine's own poll thread, pinned to `cpu` when given. It sleeps in `poll(2)` on
    /// the socket when there is nothing to do.
    Thread {
        /// CPU to pin the thread to.
        cpu: Option<usize>,
    },
    /// The caller: every CQ poll and wait runs the engine first. Nothing moves while no one
    /// polls (a peer's retransmissions then go unanswered).
    Caller,
}

/// The poll thread's default [`EngineOptions::spin`].
pub const DEFAULT_SPIN: Duration = Duration::from_micros(0);

/// How to open an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Poll thread or caller-driven progress.
    pub progress: Progress,
    /// UMEM frames (shared by receive and send).
    pub frames: u32,
    /// Bytes per UMEM frame (2048 or 4096); caps the path MTU with the link MTU.
    pub frame_size: u32,
    /// Entries of each of the four AF_XDP rings (a power of two).
    pub ring_size: u32,
    /// Copy, zero-copy, or zero-copy when the driver has it.
    pub bind: BindMode,
    /// Native or generic XDP, or native with a fallback.
    pub attach: AttachMode,
    /// Replace an XDP program another owner attached.
    pub force: bool,
    /// How long connecting waits for the kernel to resolve a peer's MAC address.
    pub neigh_timeout: Duration,
    /// How long the poll thread goes on polling after its last work before it sleeps in
    /// `poll(2)` (0: sleep at once). Spinning saves the wake-up a sleeping thread costs both
    /// itself and the sender that wakes it, at the price of that much CPU after traffic stops.
    pub spin: Duration,
    /// Busy polling: `SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL` and `SO_BUSY_POLL_BUDGET` on the
    /// socket, so an empty receive runs the queue's NAPI work in the polling thread (on its
    /// CPU) instead of waiting for the softirq; the poll thread then never sleeps (a whole
    /// CPU). Where the kernel refuses the options the engine polls without them and says so
    /// in [`Engine::notes`](super::Engine::notes).
    pub busy_poll: Option<BusyPoll>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            progress: Progress::Thread { cpu: None },
            frames: 4096,
            frame_size: 4096,
            ring_size: 1024,
            bind: BindMode::Auto,
            attach: AttachMode::Auto,
            force: false,
            neigh_timeout: Duration::from_secs(3),
            spin: DEFAULT_SPIN,
            busy_poll: None,
        }
    }
}

/// What the engine did, and every packet it dropped or refused, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineCounters {
    /// RoCEv2 frames received.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Frames the kernel dropped because the socket's RX ring was full (the poll loop fell
    /// behind; RC retransmits them).
    pub rx_ring_full: u64,
    /// Frames the kernel dropped for the socket otherwise (no fill-ring frame, invalid
    /// descriptors: `XDP_STATISTICS`).
    pub kernel_rx_dropped: u64,
    /// Frames dropped for a bad ICRC.
    pub bad_icrc: u64,
    /// Frames accepted on their ICRC although their UDP checksum did not verify (a sender
    /// on the same host whose checksum offload was never finished).
    pub udp_checksum_ignored: u64,
    /// Frames dropped as malformed (truncated, bad lengths, checksums, opcodes, pads).
    pub malformed: u64,
    /// Frames for another IP address (the XDP rule lets none through; counted if one does).
    pub not_for_us: u64,
    /// Frames for a QP number that does not exist.
    pub wrong_qpn: u64,
    /// Frames for a QP that cannot receive (RESET, INIT, or the error state).
    pub bad_state: u64,
    /// Frames the transports dropped (duplicates they could not answer, headers not the
    /// opcode's, a UD Q_Key or QPN mismatch, no UD receive buffer, ...).
    pub transport_dropped: u64,
    /// Frames that could not be sent: no free UMEM frame or TX ring room for too long.
    pub dropped_no_frame: u64,
    /// RC retransmissions after a timeout.
    pub retransmits: u64,
    /// RC go-backs after a PSN sequence NAK or an implicit NAK.
    pub go_backs: u64,
    /// RNR NAKs received.
    pub rnr_naks_received: u64,
    /// RNR NAKs sent.
    pub rnr_naks_sent: u64,
    /// NAKs sent for a refused request (access, invalid request, operational error), and
    /// SEND with invalidate requests refused for an R_Key the receiver may not invalidate
    /// (class J: ACKed as rxe does, the receive completed with `REM_INV_REQ_ERR`).
    pub naks_sent: u64,
    /// Duplicate requests answered from the responder's state.
    pub duplicates: u64,
    /// Requests ahead of the expected PSN.
    pub out_of_sequence: u64,
    /// UC messages dropped for a lost packet.
    pub uc_aborted: u64,
    /// Completions dropped because their CQ was full.
    pub cq_overflows: u64,
}
