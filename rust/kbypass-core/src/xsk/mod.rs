//! AF_XDP: the UMEM (frames from a [`crate::mem::Mempool`]), the four rings, and sockets.

pub mod holds;
pub mod port;
pub mod ring;
pub mod socket;
#[cfg(test)]
mod tests;
pub mod umem;

pub use holds::FrameHold;
pub use port::{PortConfig, Queues, XskPort};
pub use ring::{ConsRing, ProdRing, RingOffsets};
pub use socket::{
    BindMode, BusyPoll, FrameAccount, HeldSend, SocketConfig, XskCounters, XskSocket,
};
pub use umem::{FrameState, Umem, UmemConfig, XDP_PACKET_HEADROOM};
