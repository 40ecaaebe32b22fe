//! BTH opcodes and which extension headers each one carries.
//!
//! An opcode is 3 bits of transport (RC `000`, UC `001`, RD `010`, UD `011`) over 5 bits of
//! operation. The table of which headers follow the BTH is the one of the IBTA spec (vol. 1,
//! 9.2 and table 38), as Linux rxe's `rxe_opcode.c` also has it. kbypass speaks the
//! transports rxe speaks for user QPs — RC, UC and UD — so RD, CNP, XRC and the vendor
//! opcodes parse as [`WireError::UnknownOpcode`](super::WireError::UnknownOpcode).

use std::fmt;

/// The transport an opcode belongs to (its 3 high bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Reliable connected (`000`).
    Rc,
    /// Unreliable connected (`001`).
    Uc,
    /// Unreliable datagram (`011`).
    Ud,
}

impl Transport {
    /// The 3 high opcode bits of this transport, in place.
    pub const fn bits(self) -> u8 {
        match self {
            Transport::Rc => 0x00,
            Transport::Uc => 0x20,
            Transport::Ud => 0x60,
        }
    }
}

/// The operation an opcode names (its 5 low bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    /// First packet of a multi-packet send.
    SendFirst = 0x00,
    /// Middle packet of a send.
    SendMiddle = 0x01,
    /// Last packet of a send.
    SendLast = 0x02,
    /// Last packet of a send with immediate data.
    SendLastImm = 0x03,
    /// A send in one packet.
    SendOnly = 0x04,
    /// A send with immediate data in one packet.
    SendOnlyImm = 0x05,
    /// First packet of an RDMA write.
    WriteFirst = 0x06,
    /// Middle packet of an RDMA write.
    WriteMiddle = 0x07,
    /// Last packet of an RDMA write.
    WriteLast = 0x08,
    /// Last packet of an RDMA write with immediate data.
    WriteLastImm = 0x09,
    /// An RDMA write in one packet.
    WriteOnly = 0x0a,
    /// An RDMA write with immediate data in one packet.
    WriteOnlyImm = 0x0b,
    /// RDMA read request.
    ReadRequest = 0x0c,
    /// First packet of a read response.
    ReadResponseFirst = 0x0d,
    /// Middle packet of a read response.
    ReadResponseMiddle = 0x0e,
    /// Last packet of a read response.
    ReadResponseLast = 0x0f,
    /// A read response in one packet.
    ReadResponseOnly = 0x10,
    /// Acknowledge (ACK, NAK, RNR NAK: see the AETH syndrome).
    Acknowledge = 0x11,
    /// Acknowledge of an atomic, with the original remote data.
    AtomicAcknowledge = 0x12,
    /// Atomic compare and swap.
    CompareSwap = 0x13,
    /// Atomic fetch and add.
    FetchAdd = 0x14,
    /// Last packet of a send with invalidate.
    SendLastInv = 0x16,
    /// A send with invalidate in one packet.
    SendOnlyInv = 0x17,
}

impl Op {
    const ALL: [Op; 23] = [
        Op::SendFirst,
        Op::SendMiddle,
        Op::SendLast,
        Op::SendLastImm,
        Op::SendOnly,
        Op::SendOnlyImm,
        Op::WriteFirst,
        Op::WriteMiddle,
        Op::WriteLast,
        Op::WriteLastImm,
        Op::WriteOnly,
        Op::WriteOnlyImm,
        Op::ReadRequest,
        Op::ReadResponseFirst,
        Op::ReadResponseMiddle,
        Op::ReadResponseLast,
        Op::ReadResponseOnly,
        Op::Acknowledge,
        Op::AtomicAcknowledge,
        Op::CompareSwap,
        Op::FetchAdd,
        Op::SendLastInv,
        Op::SendOnlyInv,
    ];

    fn from_bits(b: u8) -> Option<Op> {
        Op::ALL.iter().copied().find(|op| *op as u8 == b)
    }
}

/// A set of extension headers (bit flags), in the order they follow the BTH on the wire:
/// DETH, RETH, AtomicETH, AETH, AtomicAckETH, ImmDt, IETH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HeaderSet(pub u8);

impl HeaderSet {
    /// Datagram ETH (8 bytes: Q_Key, source QP).
    pub const DETH: HeaderSet = HeaderSet(1);
    /// RDMA ETH (16 bytes: virtual address, R_Key, DMA length).
    pub const RETH: HeaderSet = HeaderSet(2);
    /// Atomic ETH (28 bytes: virtual address, R_Key, swap/add, compare).
    pub const ATOMIC_ETH: HeaderSet = HeaderSet(4);
    /// ACK ETH (4 bytes: syndrome, MSN).
    pub const AETH: HeaderSet = HeaderSet(8);
    /// Atomic ACK ETH (8 bytes: original remote data).
    pub const ATOMIC_ACK_ETH: HeaderSet = HeaderSet(16);
    /// Immediate data (4 bytes).
    pub const IMM_DT: HeaderSet = HeaderSet(32);
    /// Invalidate ETH (4 bytes: the R_Key to invalidate).
    pub const IETH: HeaderSet = HeaderSet(64);
    /// No extension header.
    pub const NONE: HeaderSet = HeaderSet(0);

    /// Whether every header of `other` is in `self`.
    pub const fn contains(self, other: HeaderSet) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union of two sets.
    pub const fn with(self, other: HeaderSet) -> HeaderSet {
        HeaderSet(self.0 | other.0)
    }

    /// Bytes the headers of this set take on the wire.
    pub const fn wire_len(self) -> usize {
        let mut n = 0;
        if self.contains(HeaderSet::DETH) {
            n += 8;
        }
        if self.contains(HeaderSet::RETH) {
            n += 16;
        }
        if self.contains(HeaderSet::ATOMIC_ETH) {
            n += 28;
        }
        if self.contains(HeaderSet::AETH) {
            n += 4;
        }
        if self.contains(HeaderSet::ATOMIC_ACK_ETH) {
            n += 8;
        }
        if self.contains(HeaderSet::IMM_DT) {
            n += 4;
        }
        if self.contains(HeaderSet::IETH) {
            n += 4;
        }
        n
    }
}

/// Where a packet sits in its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Position {
    /// First of several.
    First,
    /// Neither first nor last.
    Middle,
    /// Last of several.
    Last,
    /// The whole message (or a request/ack that is not segmented).
    Only,
}

/// A valid BTH opcode of RC, UC or UD.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Opcode(u8);

impl Opcode {
    /// The opcode of `op` on `transport`, if that transport has it (UC has sends and writes
    /// only; UD has `SendOnly` and `SendOnlyImm` only).
    pub fn new(transport: Transport, op: Op) -> Option<Opcode> {
        let ok = match transport {
            Transport::Rc => true,
            Transport::Uc => (op as u8) <= Op::WriteOnlyImm as u8,
            Transport::Ud => matches!(op, Op::SendOnly | Op::SendOnlyImm),
        };
        ok.then_some(Opcode(transport.bits() | op as u8))
    }

    /// The opcode of a BTH's first byte, or `None` for an opcode of another transport (RD,
    /// CNP, XRC, vendor) or a reserved one.
    pub fn from_u8(b: u8) -> Option<Opcode> {
        let transport = match b & 0xe0 {
            0x00 => Transport::Rc,
            0x20 => Transport::Uc,
            0x60 => Transport::Ud,
            _ => return None,
        };
        Opcode::new(transport, Op::from_bits(b & 0x1f)?)
    }

    /// Every valid opcode, in numeric order.
    pub fn all() -> impl Iterator<Item = Opcode> {
        (0u8..=0xff).filter_map(Opcode::from_u8)
    }

    /// The byte on the wire.
    pub const fn as_u8(self) -> u8 {
        self.0
    }

    /// Its transport.
    pub fn transport(self) -> Transport {
        match self.0 & 0xe0 {
            0x00 => Transport::Rc,
            0x20 => Transport::Uc,
            _ => Transport::Ud,
        }
    }

    /// Its operation.
    pub fn op(self) -> Op {
        Op::from_bits(self.0 & 0x1f).expect("an Opcode holds a valid operation")
    }

    /// The extension headers that follow the BTH, per the IBTA table.
    pub fn headers(self) -> HeaderSet {
        use HeaderSet as H;
        let base = match self.op() {
            Op::SendFirst | Op::SendMiddle | Op::SendLast | Op::SendOnly => H::NONE,
            Op::SendLastImm | Op::SendOnlyImm => H::IMM_DT,
            Op::WriteFirst | Op::WriteOnly | Op::ReadRequest => H::RETH,
            Op::WriteMiddle | Op::WriteLast | Op::ReadResponseMiddle => H::NONE,
            Op::WriteLastImm => H::IMM_DT,
            Op::WriteOnlyImm => H::RETH.with(H::IMM_DT),
            Op::ReadResponseFirst
            | Op::ReadResponseLast
            | Op::ReadResponseOnly
            | Op::Acknowledge => H::AETH,
            Op::AtomicAcknowledge => H::AETH.with(H::ATOMIC_ACK_ETH),
            Op::CompareSwap | Op::FetchAdd => H::ATOMIC_ETH,
            Op::SendLastInv | Op::SendOnlyInv => H::IETH,
        };
        if self.transport() == Transport::Ud {
            base.with(H::DETH)
        } else {
            base
        }
    }

    /// Whether packets of this opcode carry a payload (data, possibly empty).
    pub fn has_payload(self) -> bool {
        !matches!(
            self.op(),
            Op::ReadRequest
                | Op::Acknowledge
                | Op::AtomicAcknowledge
                | Op::CompareSwap
                | Op::FetchAdd
        )
    }

    /// Where the packet sits in its message.
    pub fn position(self) -> Position {
        match self.op() {
            Op::SendFirst | Op::WriteFirst | Op::ReadResponseFirst => Position::First,
            Op::SendMiddle | Op::WriteMiddle | Op::ReadResponseMiddle => Position::Middle,
            Op::SendLast
            | Op::SendLastImm
            | Op::SendLastInv
            | Op::WriteLast
            | Op::WriteLastImm
            | Op::ReadResponseLast => Position::Last,
            _ => Position::Only,
        }
    }

    /// Whether a requester sends it (as opposed to a responder's read response or ACK).
    pub fn is_request(self) -> bool {
        !matches!(
            self.op(),
            Op::ReadResponseFirst
                | Op::ReadResponseMiddle
                | Op::ReadResponseLast
                | Op::ReadResponseOnly
                | Op::Acknowledge
                | Op::AtomicAcknowledge
        )
    }

    /// The name the IBTA spec (and Wireshark) give it, e.g. `RC_SEND_ONLY`.
    pub fn name(self) -> String {
        let t = match self.transport() {
            Transport::Rc => "RC",
            Transport::Uc => "UC",
            Transport::Ud => "UD",
        };
        let o = match self.op() {
            Op::SendFirst => "SEND_FIRST",
            Op::SendMiddle => "SEND_MIDDLE",
            Op::SendLast => "SEND_LAST",
            Op::SendLastImm => "SEND_LAST_WITH_IMMEDIATE",
            Op::SendOnly => "SEND_ONLY",
            Op::SendOnlyImm => "SEND_ONLY_WITH_IMMEDIATE",
            Op::WriteFirst => "RDMA_WRITE_FIRST",
            Op::WriteMiddle => "RDMA_WRITE_MIDDLE",
            Op::WriteLast => "RDMA_WRITE_LAST",
            Op::WriteLastImm => "RDMA_WRITE_LAST_WITH_IMMEDIATE",
            Op::WriteOnly => "RDMA_WRITE_ONLY",
            Op::WriteOnlyImm => "RDMA_WRITE_ONLY_WITH_IMMEDIATE",
            Op::ReadRequest => "RDMA_READ_REQUEST",
            Op::ReadResponseFirst => "RDMA_READ_RESPONSE_FIRST",
            Op::ReadResponseMiddle => "RDMA_READ_RESPONSE_MIDDLE",
            Op::ReadResponseLast => "RDMA_READ_RESPONSE_LAST",
            Op::ReadResponseOnly => "RDMA_READ_RESPONSE_ONLY",
            Op::Acknowledge => "ACKNOWLEDGE",
            Op::AtomicAcknowledge => "ATOMIC_ACKNOWLEDGE",
            Op::CompareSwap => "COMPARE_SWAP",
            Op::FetchAdd => "FETCH_ADD",
            Op::SendLastInv => "SEND_LAST_WITH_INVALIDATE",
            Op::SendOnlyInv => "SEND_ONLY_WITH_INVALIDATE",
        };
        format!("{t}_{o}")
    }
}

impl fmt::Debug for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(0x{:02x})", self.name(), self.0)
    }
}
