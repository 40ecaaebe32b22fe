//! The InfiniBand transport headers RoCEv2 carries in UDP: the BTH and the extension
//! headers, each a plain value read from and written to its fixed-size place on the wire
//! (all fields big-endian, as the IBTA spec lays them out).

use super::opcode::Opcode;
use super::WireError;

/// Length of the base transport header.
pub const BTH_LEN: usize = 12;
/// Length of the invariant CRC that ends every packet.
pub const ICRC_LEN: usize = 4;
/// PSNs are 24 bits.
pub const PSN_MASK: u32 = 0x00ff_ffff;
/// QPNs are 24 bits.
pub const QPN_MASK: u32 = 0x00ff_ffff;
/// The default partition key (full membership).
pub const DEFAULT_PKEY: u16 = 0xffff;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be24(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([0, b[at], b[at + 1], b[at + 2]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}
fn put24(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 3].copy_from_slice(&v.to_be_bytes()[1..]);
}

/// Base transport header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bth {
    /// Opcode.
    pub opcode: Opcode,
    /// Solicited event.
    pub solicited: bool,
    /// Migration state (`M`); rxe sends 0 (HCAs often 1); receivers ignore it without APM.
    pub migreq: bool,
    /// Pad count: bytes (0–3) after the payload that align it to 4.
    pub pad: u8,
    /// Transport header version (must be 0).
    pub tver: u8,
    /// Partition key.
    pub pkey: u16,
    /// Forward explicit congestion notification.
    pub fecn: bool,
    /// Backward explicit congestion notification.
    pub becn: bool,
    /// Destination QP (24 bits).
    pub dest_qp: u32,
    /// Acknowledge request.
    pub ack_req: bool,
    /// Packet sequence number (24 bits).
    pub psn: u32,
}

impl Bth {
    /// A BTH with rxe's defaults (P_Key 0xffff, M clear, no flags).
    pub fn new(opcode: Opcode, dest_qp: u32, psn: u32) -> Bth {
        Bth {
            opcode,
            solicited: false,
            migreq: false,
            pad: 0,
            tver: 0,
            pkey: DEFAULT_PKEY,
            fecn: false,
            becn: false,
            dest_qp: dest_qp & QPN_MASK,
            ack_req: false,
            psn: psn & PSN_MASK,
        }
    }

    /// Reads a BTH from the first 12 bytes of `b` (reserved bits are ignored).
    pub fn read(b: &[u8; BTH_LEN]) -> Result<Bth, WireError> {
        let opcode = Opcode::from_u8(b[0]).ok_or(WireError::UnknownOpcode(b[0]))?;
        let tver = b[1] & 0x0f;
        if tver != 0 {
            return Err(WireError::BadVersion(tver));
        }
        Ok(Bth {
            opcode,
            solicited: b[1] & 0x80 != 0,
            migreq: b[1] & 0x40 != 0,
            pad: (b[1] >> 4) & 0x03,
            tver,
            pkey: be16(b, 2),
            fecn: b[4] & 0x80 != 0,
            becn: b[4] & 0x40 != 0,
            dest_qp: be24(b, 5),
            ack_req: b[8] & 0x80 != 0,
            psn: be24(b, 9),
        })
    }

    /// Writes the BTH into `b` (reserved bits zero; QPN and PSN cut to 24 bits, pad to 2).
    pub fn write(&self, b: &mut [u8; BTH_LEN]) {
        b[0] = self.opcode.as_u8();
        b[1] = (u8::from(self.solicited) << 7)
            | (u8::from(self.migreq) << 6)
            | ((self.pad & 3) << 4)
            | (self.tver & 0x0f);
        b[2..4].copy_from_slice(&self.pkey.to_be_bytes());
        b[4] = (u8::from(self.fecn) << 7) | (u8::from(self.becn) << 6);
        put24(b, 5, self.dest_qp & QPN_MASK);
        b[8] = u8::from(self.ack_req) << 7;
        put24(b, 9, self.psn & PSN_MASK);
    }
}

/// RDMA extended transport header (writes and read requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reth {
    /// Remote virtual address.
    pub va: u64,
    /// Remote key.
    pub rkey: u32,
    /// Length of the whole transfer in bytes.
    pub dma_len: u32,
}

impl Reth {
    /// Wire length.
    pub const LEN: usize = 16;

    fn read(b: &[u8]) -> Reth {
        Reth {
            va: be64(b, 0),
            rkey: be32(b, 8),
            dma_len: be32(b, 12),
        }
    }

    fn write(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.va.to_be_bytes());
        b[8..12].copy_from_slice(&self.rkey.to_be_bytes());
        b[12..16].copy_from_slice(&self.dma_len.to_be_bytes());
    }
}

/// NAK codes of an AETH with syndrome `011`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NakCode {
    /// PSN sequence error (the requester goes back to the expected PSN).
    PsnSequenceError,
    /// Invalid request.
    InvalidRequest,
    /// Remote access error (bad R_Key, bounds or access rights).
    RemoteAccessError,
    /// Remote operational error.
    RemoteOperationalError,
    /// Invalid RD request.
    InvalidRdRequest,
    /// A reserved code, kept as received.
    Reserved(u8),
}

impl NakCode {
    /// The 5-bit code.
    pub fn bits(self) -> u8 {
        match self {
            NakCode::PsnSequenceError => 0,
            NakCode::InvalidRequest => 1,
            NakCode::RemoteAccessError => 2,
            NakCode::RemoteOperationalError => 3,
            NakCode::InvalidRdRequest => 4,
            NakCode::Reserved(c) => c & 0x1f,
        }
    }

    fn from_bits(c: u8) -> NakCode {
        match c {
            0 => NakCode::PsnSequenceError,
            1 => NakCode::InvalidRequest,
            2 => NakCode::RemoteAccessError,
            3 => NakCode::RemoteOperationalError,
            4 => NakCode::InvalidRdRequest,
            c => NakCode::Reserved(c),
        }
    }
}

/// What an AETH syndrome says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syndrome {
    /// ACK (`000`) with its credit count (5 bits; 31 means "invalid", no credits).
    Ack {
        /// End-to-end credit count.
        credits: u8,
    },
    /// Receiver not ready (`001`) with its timer code (5 bits, IBTA table 45).
    RnrNak {
        /// Minimum RNR NAK timer field.
        timer: u8,
    },
    /// NAK (`011`).
    Nak(NakCode),
    /// A reserved syndrome (`010`, `1xx`), kept as received.
    Reserved(u8),
}

/// ACK extended transport header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aeth {
    /// The syndrome byte.
    pub syndrome: u8,
    /// Message sequence number (24 bits).
    pub msn: u32,
}

impl Aeth {
    /// Wire length.
    pub const LEN: usize = 4;

    /// An AETH from its meaning and MSN.
    pub fn new(s: Syndrome, msn: u32) -> Aeth {
        let syndrome = match s {
            Syndrome::Ack { credits } => credits & 0x1f,
            Syndrome::RnrNak { timer } => 0x20 | (timer & 0x1f),
            Syndrome::Nak(code) => 0x60 | code.bits(),
            Syndrome::Reserved(b) => b,
        };
        Aeth {
            syndrome,
            msn: msn & PSN_MASK,
        }
    }

    /// What the syndrome says.
    pub fn kind(&self) -> Syndrome {
        let low = self.syndrome & 0x1f;
        match self.syndrome >> 5 {
            0 => Syndrome::Ack { credits: low },
            1 => Syndrome::RnrNak { timer: low },
            3 => Syndrome::Nak(NakCode::from_bits(low)),
            _ => Syndrome::Reserved(self.syndrome),
        }
    }

    fn read(b: &[u8]) -> Aeth {
        Aeth {
            syndrome: b[0],
            msn: be24(b, 1),
        }
    }

    fn write(&self, b: &mut [u8]) {
        b[0] = self.syndrome;
        put24(b, 1, self.msn & PSN_MASK);
    }
}

/// Datagram extended transport header (UD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deth {
    /// Queue key.
    pub qkey: u32,
    /// Source QP (24 bits).
    pub src_qp: u32,
}

impl Deth {
    /// Wire length.
    pub const LEN: usize = 8;

    fn read(b: &[u8]) -> Deth {
        Deth {
            qkey: be32(b, 0),
            src_qp: be24(b, 5),
        }
    }

    fn write(&self, b: &mut [u8]) {
        b[0..4].copy_from_slice(&self.qkey.to_be_bytes());
        b[4] = 0;
        put24(b, 5, self.src_qp & QPN_MASK);
    }
}

/// Atomic extended transport header (compare and swap, fetch and add).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtomicEth {
    /// Remote virtual address (8-byte aligned).
    pub va: u64,
    /// Remote key.
    pub rkey: u32,
    /// Swap value (compare and swap) or addend (fetch and add).
    pub swap_add: u64,
    /// Compare value (compare and swap only).
    pub compare: u64,
}

impl AtomicEth {
    /// Wire length.
    pub const LEN: usize = 28;

    fn read(b: &[u8]) -> AtomicEth {
        AtomicEth {
            va: be64(b, 0),
            rkey: be32(b, 8),
            swap_add: be64(b, 12),
            compare: be64(b, 20),
        }
    }

    fn write(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.va.to_be_bytes());
        b[8..12].copy_from_slice(&self.rkey.to_be_bytes());
        b[12..20].copy_from_slice(&self.swap_add.to_be_bytes());
        b[20..28].copy_from_slice(&self.compare.to_be_bytes());
    }
}

/// The extension headers of one packet: exactly those its opcode's
/// [`headers()`](Opcode::headers) names are `Some`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtHeaders {
    /// DETH (UD).
    pub deth: Option<Deth>,
    /// RETH (first/only write, read request).
    pub reth: Option<Reth>,
    /// AtomicETH (compare and swap, fetch and add).
    pub atomic: Option<AtomicEth>,
    /// AETH (ACKs and read responses).
    pub aeth: Option<Aeth>,
    /// AtomicAckETH: the original remote data.
    pub atomic_ack: Option<u64>,
    /// Immediate data, as the 32-bit big-endian value on the wire.
    pub imm: Option<u32>,
    /// IETH: the R_Key to invalidate.
    pub ieth: Option<u32>,
}

impl ExtHeaders {
    /// The set of headers present.
    pub fn set(&self) -> super::HeaderSet {
        use super::HeaderSet as H;
        let mut s = H::NONE;
        for (present, h) in [
            (self.deth.is_some(), H::DETH),
            (self.reth.is_some(), H::RETH),
            (self.atomic.is_some(), H::ATOMIC_ETH),
            (self.aeth.is_some(), H::AETH),
            (self.atomic_ack.is_some(), H::ATOMIC_ACK_ETH),
            (self.imm.is_some(), H::IMM_DT),
            (self.ieth.is_some(), H::IETH),
        ] {
            if present {
                s = s.with(h);
            }
        }
        s
    }

    /// Reads the headers `opcode` names from the start of `b`; `b` must hold at least
    /// `opcode.headers().wire_len()` bytes (the caller checked).
    pub(super) fn read(opcode: Opcode, b: &[u8]) -> ExtHeaders {
        use super::HeaderSet as H;
        let set = opcode.headers();
        let mut at = 0;
        let mut take = |h: H, len: usize| -> Option<&[u8]> {
            set.contains(h).then(|| {
                let s = &b[at..at + len];
                at += len;
                s
            })
        };
        ExtHeaders {
            deth: take(H::DETH, Deth::LEN).map(Deth::read),
            reth: take(H::RETH, Reth::LEN).map(Reth::read),
            atomic: take(H::ATOMIC_ETH, AtomicEth::LEN).map(AtomicEth::read),
            aeth: take(H::AETH, Aeth::LEN).map(Aeth::read),
            atomic_ack: take(H::ATOMIC_ACK_ETH, 8).map(|s| be64(s, 0)),
            imm: take(H::IMM_DT, 4).map(|s| be32(s, 0)),
            ieth: take(H::IETH, 4).map(|s| be32(s, 0)),
        }
    }

    /// Writes the headers present to the start of `b`, which holds `self.set().wire_len()`
    /// bytes at least (the caller checked), in wire order.
    pub(super) fn write(&self, b: &mut [u8]) {
        let mut at = 0;
        let mut next = |len: usize| {
            let r = at..at + len;
            at += len;
            r
        };
        if let Some(h) = self.deth {
            h.write(&mut b[next(Deth::LEN)]);
        }
        if let Some(h) = self.reth {
            h.write(&mut b[next(Reth::LEN)]);
        }
        if let Some(h) = self.atomic {
            h.write(&mut b[next(AtomicEth::LEN)]);
        }
        if let Some(h) = self.aeth {
            h.write(&mut b[next(Aeth::LEN)]);
        }
        if let Some(v) = self.atomic_ack {
            b[next(8)].copy_from_slice(&v.to_be_bytes());
        }
        if let Some(v) = self.imm {
            b[next(4)].copy_from_slice(&v.to_be_bytes());
        }
        if let Some(v) = self.ieth {
            b[next(4)].copy_from_slice(&v.to_be_bytes());
        }
    }
}
