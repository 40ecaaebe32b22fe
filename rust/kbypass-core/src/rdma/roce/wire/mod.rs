//! The RoCEv2 wire format: Ethernet, IPv4 or IPv6, UDP to port 4791, the InfiniBand BTH and
//! extension headers, payload, pad and ICRC.
//!
//! [`Frame::parse`] is a checked view over a received frame: every length is checked against
//! the bytes there are and against the lengths the IP and UDP headers claim, the opcode must
//! be one of RC, UC or UD, its extension headers must be all there, the pad must fit, the
//! payload is at most 4096 bytes, a UDP checksum that is not zero must match (IPv4 and IPv6)
//! and the ICRC must match; the payload is a slice of the
//! frame, not a copy. [`FrameSpec::build`] writes a frame into the caller's buffer, with the
//! pad, the IPv4 header checksum, the UDP length (and, on IPv6, checksum) and the ICRC filled
//! in. Failures are [`WireError`]s, one variant per reason, so a receiver can count them.
//!
//! - `opcode`: opcodes and the table of the headers each carries;
//! - `headers`: BTH, RETH, AETH, DETH, AtomicETH, AtomicAckETH, ImmDt, IETH;
//! - `icrc`: the invariant CRC;
//! - `packet`: the frame (Ethernet, IP, UDP) around them;
//! - `gid`: GIDs as IP addresses (IPv4-mapped or IPv6) and back.

mod gid;
mod headers;
pub mod icrc;
mod opcode;
mod packet;

#[cfg(test)]
mod checksum_tests;
#[cfg(test)]
mod fuzz;
#[cfg(test)]
pub(super) mod interop_tests;
#[cfg(test)]
mod tests;

pub use gid::{gid_ipv4, ipv4_gid, DEFAULT_HOP_LIMIT};
pub use headers::{
    Aeth, AtomicEth, Bth, Deth, ExtHeaders, NakCode, Reth, Syndrome, BTH_LEN, DEFAULT_PKEY,
    ICRC_LEN, PSN_MASK, QPN_MASK,
};
pub use opcode::{HeaderSet, Op, Opcode, Position, Transport};
pub use packet::{Frame, FrameSpec, IpHeader, Packet};

/// UDP destination port of RoCEv2.
pub const ROCE_PORT: u16 = 4791;
/// Largest payload of one packet: the largest path MTU.
pub const MAX_PAYLOAD: usize = 4096;

/// Why a frame is not a valid RoCEv2 packet, or cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than a header (or the lengths the headers claim) needs.
    #[error("truncated {layer}: needs {need} bytes, has {have}")]
    Truncated {
        /// The layer that is cut short.
        layer: &'static str,
        /// Bytes it needs.
        need: usize,
        /// Bytes there are.
        have: usize,
    },
    /// A well-formed frame that is not RoCEv2 (another EtherType, protocol or port).
    #[error("not RoCEv2: {0}")]
    NotRoce(&'static str),
    /// An IP header that contradicts itself.
    #[error("bad IP header: {0}")]
    BadIpHeader(&'static str),
    /// The IPv4 header checksum does not match.
    #[error("bad IPv4 header checksum")]
    BadIpChecksum,
    /// The UDP checksum is not zero and does not match the datagram.
    #[error("bad UDP checksum")]
    BadUdpChecksum,
    /// GIDs of two address families: one IPv4-mapped (`::ffff:a.b.c.d`), the other not.
    #[error("source and destination GIDs are not both IPv4-mapped or both IPv6")]
    MixedGidFamilies,
    /// An IP fragment (RoCEv2 packets are never fragmented).
    #[error("IP fragment: RoCEv2 packets are sent with DF and never fragmented")]
    Fragmented,
    /// Two length fields disagree.
    #[error("{what} is {claimed} bytes but {actual} bytes carry it")]
    LengthMismatch {
        /// The field, e.g. "UDP length".
        what: &'static str,
        /// What the field says.
        claimed: usize,
        /// What the enclosing header leaves for it.
        actual: usize,
    },
    /// An opcode of a transport kbypass does not speak (RD, CNP, XRC, vendor) or a reserved
    /// one.
    #[error("unknown BTH opcode 0x{0:02x} (not RC, UC or UD)")]
    UnknownOpcode(u8),
    /// A BTH transport version other than 0.
    #[error("BTH transport header version {0}, only 0 exists")]
    BadVersion(u8),
    /// The pad count does not fit the packet (bigger than the data, set on an opcode
    /// without payload, or payload and pad not a multiple of 4 bytes).
    #[error("bad pad count {pad} for {data_len} bytes of payload and pad")]
    BadPad {
        /// The pad count of the BTH.
        pad: u8,
        /// Bytes between the headers and the ICRC.
        data_len: usize,
    },
    /// A payload longer than allowed (4096, or 0 for an opcode without payload).
    #[error("payload of {len} bytes, at most {max} allowed")]
    Oversize {
        /// Its length.
        len: usize,
        /// The most allowed.
        max: usize,
    },
    /// The ICRC does not match the packet.
    #[error("bad ICRC: packet has {found:02x?}, computed {computed:02x?}")]
    BadIcrc {
        /// ICRC bytes computed over the packet.
        computed: [u8; 4],
        /// ICRC bytes the packet carries.
        found: [u8; 4],
    },
    /// Building: the extension headers given are not those the opcode carries.
    #[error("opcode 0x{opcode:02x} carries headers {expected:?}, given {given:?}")]
    HeadersMismatch {
        /// The opcode.
        opcode: u8,
        /// The headers it carries.
        expected: HeaderSet,
        /// The headers given.
        given: HeaderSet,
    },
    /// A path MTU other than 256, 512, 1024, 2048 or 4096.
    #[error("path MTU {0} is not 256, 512, 1024, 2048 or 4096")]
    BadMtu(usize),
    /// Building: the output buffer is too small.
    #[error("buffer of {have} bytes, the frame needs {need}")]
    BufferTooSmall {
        /// Bytes the frame needs.
        need: usize,
        /// Bytes the buffer has.
        have: usize,
    },
}
