//! The RC responder: request packets in, data placed and responses out.

use std::collections::VecDeque;

use super::super::wire::{Aeth, Bth, ExtHeaders, NakCode, Op, Opcode, Syndrome, Transport};
use super::memory::{MemoryTable, Need};
use super::requester::ack_aeth;
use super::{packets_for, psn_add, psn_diff, Pkt, RcParams};

/// Atomic results kept to answer duplicate atomics.
const ATOMIC_REPLAY: usize = 32;

/// A receive completion: a send (or a write with immediate) that consumed a receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvCompletion {
    /// The receive work request's id.
    pub wr_id: u64,
    /// The message (empty for a write with immediate).
    pub data: Vec<u8>,
    /// Immediate data.
    pub imm: Option<u32>,
    /// Bytes written (a write with immediate) or received (a send).
    pub byte_len: usize,
}

#[derive(Debug)]
struct Recv {
    wr_id: u64,
    capacity: usize,
}

#[derive(Debug)]
struct WriteInProgress {
    rkey: u32,
    va: u64,
    len: usize,
    done: usize,
}

/// The responder half of an RC QP.
#[derive(Debug)]
pub struct Responder {
    p: RcParams,
    mem: MemoryTable,
    epsn: u32,
    msn: u32,
    recvs: VecDeque<Recv>,
    send: Option<(Recv, Vec<u8>)>,
    write: Option<WriteInProgress>,
    atomics: VecDeque<(u32, u64)>,
    out: VecDeque<Pkt>,
    ack_pending: bool,
    nak_sent: bool,
    error: bool,
    completions: VecDeque<RecvCompletion>,
    /// Duplicate requests answered from state.
    pub duplicates: u64,
    /// Out-of-sequence requests (PSN ahead of the expected one).
    pub out_of_sequence: u64,
    /// RNR NAKs sent.
    pub rnr_naks: u64,
    /// Requests refused with a NAK other than RNR and PSN sequence.
    pub refused: u64,
    /// Packets dropped (in the error state, not an RC request, headers that are not the
    /// opcode's, or duplicates that cannot be answered).
    pub dropped: u64,
}

impl Responder {
    /// A responder in RTR with `p`'s parameters over `mem`.
    pub fn new(p: RcParams, mem: MemoryTable) -> Self {
        Responder {
            p,
            mem,
            epsn: p.recv_psn,
            msn: 0,
            recvs: VecDeque::new(),
            send: None,
            write: None,
            atomics: VecDeque::new(),
            out: VecDeque::new(),
            ack_pending: false,
            nak_sent: false,
            error: false,
            completions: VecDeque::new(),
            duplicates: 0,
            out_of_sequence: 0,
            rnr_naks: 0,
            refused: 0,
            dropped: 0,
        }
    }

    /// The memory the responder serves.
    pub fn memory(&self) -> &MemoryTable {
        &self.mem
    }

    /// The memory, to register or fill regions.
    pub fn memory_mut(&mut self) -> &mut MemoryTable {
        &mut self.mem
    }

    /// Posts a receive buffer of `capacity` bytes.
    pub fn post_recv(&mut self, wr_id: u64, capacity: usize) {
        self.recvs.push_back(Recv { wr_id, capacity });
    }

    /// The next receive completion, if any.
    pub fn poll_completion(&mut self) -> Option<RecvCompletion> {
        self.completions.pop_front()
    }

    /// Whether the responder is in the error state.
    pub fn is_error(&self) -> bool {
        self.error
    }

    /// The next response to send: queued read responses, atomic ACKs and NAKs first, then
    /// one ACK for everything received since the last.
    pub fn poll_tx(&mut self) -> Option<Pkt> {
        if let Some(p) = self.out.pop_front() {
            return Some(p);
        }
        if self.ack_pending {
            self.ack_pending = false;
            return Some(self.ack(ack_aeth(self.msn), psn_add(self.epsn, 0xff_ffff)));
        }
        None
    }

    fn ack(&self, aeth: Aeth, psn: u32) -> Pkt {
        let opcode = Opcode::new(Transport::Rc, Op::Acknowledge).expect("RC ACK");
        Pkt {
            bth: Bth::new(opcode, self.p.dest_qp, psn),
            ext: ExtHeaders {
                aeth: Some(aeth),
                ..ExtHeaders::default()
            },
            payload: Vec::new(),
        }
    }

    /// Queues a response after the pending ACK (which it must not overtake).
    fn respond(&mut self, p: Pkt) {
        if self.ack_pending {
            self.ack_pending = false;
            let a = self.ack(ack_aeth(self.msn), psn_add(self.epsn, 0xff_ffff));
            self.out.push_back(a);
        }
        self.out.push_back(p);
    }

    fn nak(&mut self, code: NakCode, psn: u32) {
        let a = self.ack(Aeth::new(Syndrome::Nak(code), self.msn), psn);
        self.respond(a);
        if code != NakCode::PsnSequenceError {
            self.refused += 1;
            self.error = true;
        }
    }

    /// Handles a request packet.
    pub fn on_packet(&mut self, pkt: &Pkt) {
        if self.error
            || !pkt.bth.opcode.is_request()
            || pkt.bth.opcode.transport() != Transport::Rc
            || pkt.ext.set() != pkt.bth.opcode.headers()
        {
            self.dropped += 1;
            return;
        }
        let psn = pkt.bth.psn;
        let d = psn_diff(psn, self.epsn);
        if d > 0 {
            self.out_of_sequence += 1;
            if !self.nak_sent {
                self.nak_sent = true;
                self.nak(NakCode::PsnSequenceError, self.epsn);
            }
            return;
        }
        if d < 0 {
            self.duplicate(pkt);
            return;
        }
        self.nak_sent = false;
        match self.execute(pkt) {
            Ok(advance) => {
                self.epsn = psn_add(self.epsn, advance);
                if pkt.bth.ack_req
                    && !matches!(
                        pkt.bth.opcode.op(),
                        Op::ReadRequest | Op::CompareSwap | Op::FetchAdd
                    )
                {
                    self.ack_pending = true;
                }
            }
            Err(None) => {
                self.rnr_naks += 1;
                let timer = self.p.min_rnr_timer;
                let a = self.ack(Aeth::new(Syndrome::RnrNak { timer }, self.msn), psn);
                self.respond(a);
            }
            Err(Some(code)) => self.nak(code, psn),
        }
    }

    /// A request whose PSN was already executed.
    fn duplicate(&mut self, pkt: &Pkt) {
        self.duplicates += 1;
        match pkt.bth.opcode.op() {
            Op::ReadRequest => {
                // Re-executed: the data may have changed, which RDMA allows.
                if let Some(r) = pkt.ext.reth {
                    if self
                        .read(pkt.bth.psn, r.va, r.rkey, r.dma_len as usize)
                        .is_err()
                    {
                        self.dropped += 1;
                    }
                }
            }
            Op::CompareSwap | Op::FetchAdd => {
                match self.atomics.iter().find(|(p, _)| *p == pkt.bth.psn) {
                    Some(&(psn, orig)) => self.atomic_ack(psn, orig),
                    None => self.dropped += 1,
                }
            }
            _ => self.ack_pending = true,
        }
    }

    /// Executes the expected request; returns the PSNs it takes, or the NAK to answer
    /// (`None` for RNR).
    fn execute(&mut self, pkt: &Pkt) -> Result<u32, Option<NakCode>> {
        let op = pkt.bth.opcode.op();
        let psn = pkt.bth.psn;
        let inv = Some(NakCode::InvalidRequest);
        match op {
            Op::SendFirst | Op::SendOnly | Op::SendOnlyImm | Op::SendOnlyInv => {
                if self.send.is_some() || self.write.is_some() {
                    return Err(inv);
                }
                let r = self.recvs.pop_front().ok_or(None)?;
                self.send = Some((r, Vec::new()));
                self.send_data(pkt)
            }
            Op::SendMiddle | Op::SendLast | Op::SendLastImm | Op::SendLastInv => {
                if self.send.is_none() {
                    return Err(inv);
                }
                self.send_data(pkt)
            }
            Op::WriteFirst | Op::WriteOnly | Op::WriteOnlyImm => {
                if self.send.is_some() || self.write.is_some() {
                    return Err(inv);
                }
                let reth = pkt.ext.reth.ok_or(inv)?;
                if op == Op::WriteOnlyImm && self.recvs.is_empty() {
                    return Err(None);
                }
                let len = reth.dma_len as usize;
                self.mem
                    .validate(reth.rkey, reth.va, len, Need::Write)
                    .map_err(Some)?;
                self.write = Some(WriteInProgress {
                    rkey: reth.rkey,
                    va: reth.va,
                    len,
                    done: 0,
                });
                self.write_data(pkt)
            }
            Op::WriteMiddle | Op::WriteLast | Op::WriteLastImm => {
                if self.write.is_none() {
                    return Err(inv);
                }
                if op == Op::WriteLastImm && self.recvs.is_empty() {
                    return Err(None);
                }
                self.write_data(pkt)
            }
            Op::ReadRequest => {
                if self.send.is_some() || self.write.is_some() {
                    return Err(inv);
                }
                let r = pkt.ext.reth.ok_or(inv)?;
                let len = r.dma_len as usize;
                self.mem
                    .validate(r.rkey, r.va, len, Need::Read)
                    .map_err(Some)?;
                // The responses carry the MSN that counts this read, as rxe's do.
                self.msn = psn_add(self.msn, 1);
                self.read(psn, r.va, r.rkey, len).map_err(Some)
            }
            Op::CompareSwap | Op::FetchAdd => {
                if self.send.is_some() || self.write.is_some() {
                    return Err(inv);
                }
                let a = pkt.ext.atomic.ok_or(inv)?;
                let compare = (op == Op::CompareSwap).then_some(a.compare);
                let orig = self
                    .mem
                    .atomic(a.rkey, a.va, compare, a.swap_add)
                    .map_err(Some)?;
                if self.atomics.len() == ATOMIC_REPLAY {
                    self.atomics.pop_front();
                }
                self.atomics.push_back((psn, orig));
                self.msn = psn_add(self.msn, 1);
                self.atomic_ack(psn, orig);
                Ok(1)
            }
            _ => Err(inv),
        }
    }

    fn send_data(&mut self, pkt: &Pkt) -> Result<u32, Option<NakCode>> {
        let (recv, buf) = self.send.as_mut().expect("a send is in progress");
        let pos = pkt.bth.opcode.position();
        let full = matches!(
            pos,
            super::super::wire::Position::First | super::super::wire::Position::Middle
        );
        if buf.len() + pkt.payload.len() > recv.capacity
            || (full && pkt.payload.len() != self.p.mtu)
        {
            return Err(Some(NakCode::InvalidRequest));
        }
        buf.extend_from_slice(&pkt.payload);
        if !full {
            let (recv, data) = self.send.take().expect("a send is in progress");
            self.msn = psn_add(self.msn, 1);
            self.completions.push_back(RecvCompletion {
                wr_id: recv.wr_id,
                byte_len: data.len(),
                data,
                imm: pkt.ext.imm,
            });
        }
        Ok(1)
    }

    fn write_data(&mut self, pkt: &Pkt) -> Result<u32, Option<NakCode>> {
        let w = self.write.as_mut().expect("a write is in progress");
        let pos = pkt.bth.opcode.position();
        let full = matches!(
            pos,
            super::super::wire::Position::First | super::super::wire::Position::Middle
        );
        let end = w.done + pkt.payload.len();
        let short = !full && end != w.len;
        if end > w.len || short || (full && pkt.payload.len() != self.p.mtu) {
            return Err(Some(NakCode::InvalidRequest));
        }
        let va = w.va + w.done as u64;
        let rkey = w.rkey;
        w.done = end;
        self.mem.write(rkey, va, &pkt.payload).map_err(Some)?;
        if !full {
            let w = self.write.take().expect("a write is in progress");
            self.msn = psn_add(self.msn, 1);
            if let Some(imm) = pkt.ext.imm {
                let recv = self
                    .recvs
                    .pop_front()
                    .expect("checked before the data moved");
                self.completions.push_back(RecvCompletion {
                    wr_id: recv.wr_id,
                    data: Vec::new(),
                    imm: Some(imm),
                    byte_len: w.len,
                });
            }
        }
        Ok(1)
    }

    /// Queues the responses of a read of `len` bytes at `va`, from PSN `psn`; returns their
    /// count.
    fn read(&mut self, psn: u32, va: u64, rkey: u32, len: usize) -> Result<u32, NakCode> {
        let data = self.mem.read(rkey, va, len)?;
        let mtu = self.p.mtu;
        let n = packets_for(len, mtu);
        for k in 0..n {
            let op = match (k == 0, k + 1 == n) {
                (true, true) => Op::ReadResponseOnly,
                (true, false) => Op::ReadResponseFirst,
                (false, false) => Op::ReadResponseMiddle,
                (false, true) => Op::ReadResponseLast,
            };
            let start = (k as usize * mtu).min(len);
            let end = (start + mtu).min(len);
            let opcode = Opcode::new(Transport::Rc, op).expect("RC read response");
            let aeth = (op != Op::ReadResponseMiddle).then(|| ack_aeth(self.msn));
            let p = Pkt {
                bth: Bth::new(opcode, self.p.dest_qp, psn_add(psn, k)),
                ext: ExtHeaders {
                    aeth,
                    ..ExtHeaders::default()
                },
                payload: data[start..end].to_vec(),
            };
            self.respond(p);
        }
        Ok(n)
    }

    fn atomic_ack(&mut self, psn: u32, orig: u64) {
        let opcode = Opcode::new(Transport::Rc, Op::AtomicAcknowledge).expect("RC atomic ACK");
        let p = Pkt {
            bth: Bth::new(opcode, self.p.dest_qp, psn),
            ext: ExtHeaders {
                aeth: Some(ack_aeth(self.msn)),
                atomic_ack: Some(orig),
                ..ExtHeaders::default()
            },
            payload: Vec::new(),
        };
        self.respond(p);
    }
}
