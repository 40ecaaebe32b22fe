//! AF_XDP: UMEM, the four rings and sockets.

pub mod ring;

pub use ring::{ConsRing, ProdRing, RingOffsets};
