//! The UD transport as I/O-free state machines: single-packet sends (at most one path MTU)
//! carrying a DETH with the Q_Key and the source QP, and a receiver that checks its QPN and
//! Q_Key and fills receive buffers. Nothing is acknowledged; whatever the receiver refuses
//! it counts. The GRH that verbs put before a UD message is the driver's (it has the IP
//! header); the completion carries the source QP.

use std::collections::VecDeque;

use super::rc::{psn_add, Bytes, Pkt, Recv, RecvError, RecvQueue, Srq};
use super::wire::{Bth, Deth, ExtHeaders, Op, Opcode, Transport, WireError, MAX_PAYLOAD};

/// Where a UD send goes (the QP half of an address handle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdDest {
    /// Remote QP number.
    pub qpn: u32,
    /// Remote Q_Key.
    pub qkey: u32,
}

/// The sending half of a UD QP.
#[derive(Debug)]
pub struct UdSender {
    qpn: u32,
    mtu: usize,
    psn: u32,
}

impl UdSender {
    /// A sender for local QP `qpn` with path MTU `mtu` (256–4096).
    pub fn new(qpn: u32, mtu: usize) -> Result<Self, WireError> {
        if !(256..=MAX_PAYLOAD).contains(&mtu) || !mtu.is_power_of_two() {
            return Err(WireError::BadMtu(mtu));
        }
        Ok(UdSender { qpn, mtu, psn: 0 })
    }

    /// The packet of a send of `data` to `dest`; a message over one MTU is refused.
    pub fn send(&mut self, dest: UdDest, data: &[u8], imm: Option<u32>) -> Result<Pkt, WireError> {
        if data.len() > self.mtu {
            return Err(WireError::Oversize {
                len: data.len(),
                max: self.mtu,
            });
        }
        let op = if imm.is_some() {
            Op::SendOnlyImm
        } else {
            Op::SendOnly
        };
        let opcode = Opcode::new(Transport::Ud, op).expect("UD sends");
        let bth = Bth::new(opcode, dest.qpn, self.psn);
        self.psn = psn_add(self.psn, 1);
        Ok(Pkt {
            bth,
            ext: ExtHeaders {
                deth: Some(Deth {
                    qkey: dest.qkey,
                    src_qp: self.qpn,
                }),
                imm,
                ..ExtHeaders::default()
            },
            payload: Bytes::copy_from_slice(data),
        })
    }
}

/// A UD receive completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdCompletion {
    /// The receive work request's id.
    pub wr_id: u64,
    /// The message.
    pub data: Vec<u8>,
    /// Immediate data.
    pub imm: Option<u32>,
    /// The sender's QP number.
    pub src_qp: u32,
}

/// The receiving half of a UD QP.
#[derive(Debug)]
pub struct UdReceiver {
    qpn: u32,
    qkey: u32,
    recvs: RecvQueue,
    completions: VecDeque<UdCompletion>,
    /// Packets for another QPN.
    pub wrong_qpn: u64,
    /// Packets whose Q_Key is not this QP's.
    pub bad_qkey: u64,
    /// Messages that found no receive buffer (in its own queue or its SRQ).
    pub no_buffer: u64,
    /// Messages longer than the next receive buffer (dropped; the buffer stays posted).
    pub too_long: u64,
    /// Packets that are not UD sends or whose headers are not the opcode's.
    pub malformed: u64,
}

impl UdReceiver {
    /// A receiver for local QP `qpn` with Q_Key `qkey`.
    pub fn new(qpn: u32, qkey: u32) -> Self {
        UdReceiver::build(qpn, qkey, None)
    }

    /// A receiver like [`UdReceiver::new`] that takes its receives from `srq`.
    pub fn with_srq(qpn: u32, qkey: u32, srq: Srq) -> Self {
        UdReceiver::build(qpn, qkey, Some(srq))
    }

    fn build(qpn: u32, qkey: u32, srq: Option<Srq>) -> Self {
        UdReceiver {
            qpn,
            qkey,
            recvs: RecvQueue::new(srq),
            completions: VecDeque::new(),
            wrong_qpn: 0,
            bad_qkey: 0,
            no_buffer: 0,
            too_long: 0,
            malformed: 0,
        }
    }

    /// Posts a receive buffer of `capacity` bytes; refused with an SRQ (post there).
    pub fn post_recv(&mut self, wr_id: u64, capacity: usize) -> Result<(), RecvError> {
        self.recvs.post(wr_id, capacity)
    }

    /// The next receive completion.
    pub fn poll_completion(&mut self) -> Option<UdCompletion> {
        self.completions.pop_front()
    }

    /// Handles a packet.
    pub fn on_packet(&mut self, pkt: &Pkt) {
        let opcode = pkt.bth.opcode;
        let Some(deth) = pkt.ext.deth else {
            self.malformed += 1;
            return;
        };
        if opcode.transport() != Transport::Ud || pkt.ext.set() != opcode.headers() {
            self.malformed += 1;
            return;
        }
        if pkt.bth.dest_qp != self.qpn {
            self.wrong_qpn += 1;
            return;
        }
        if deth.qkey != self.qkey {
            self.bad_qkey += 1;
            return;
        }
        let Some(Recv { wr_id, capacity }) = self.recvs.take() else {
            self.no_buffer += 1;
            return;
        };
        if pkt.payload.len() > capacity {
            self.recvs.put_back(Recv { wr_id, capacity });
            self.too_long += 1;
            return;
        }
        self.completions.push_back(UdCompletion {
            wr_id,
            data: pkt.payload.to_vec(),
            imm: pkt.ext.imm,
            src_qp: deth.src_qp,
        });
    }
}
