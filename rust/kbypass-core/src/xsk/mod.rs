//! AF_XDP: the UMEM (frames from a [`crate::mem::Mempool`]), the four rings, and sockets.

mod copies;
pub mod holds;
pub mod port;
pub mod ring;
pub mod socket;
#[cfg(test)]
pub(crate) mod tests;
pub mod txask;
pub mod txmd;
#[cfg(test)]
mod txmd_tests;
pub mod umem;
pub(crate) mod whole;

pub use copies::MAX_DESCS_PER_PACKET;
pub use holds::{FrameHold, HeldFrames};
pub use port::{PortConfig, PortProgram, Queues, SharedPort, XskPort};
pub use ring::{ConsRing, ProdRing, RingOffsets};
pub use socket::{
    BindMode, BusyPoll, CopySend, FrameAccount, HeldSend, SocketConfig, XskCounters, XskSocket,
};
pub use txask::{CsumAsk, TxAsk, TxCaps, TxOffloadCounts};
pub use txmd::{TxMetadataMode, TxRequest};
pub use umem::{FrameState, Umem, UmemConfig, MIN_PACKET, XDP_PACKET_HEADROOM};
