//! The RC responder: request packets in, data placed and responses out.

use std::collections::VecDeque;

use super::super::wire::{
    Aeth, Bth, ExtHeaders, NakCode, Op, Opcode, Position, Syndrome, Transport,
};
use super::memory::{MemoryTable, Need};
use super::recv::{Recv, RecvError, RecvQueue, Srq};
use super::requester::ack_aeth;
use super::resources::{Resource, Resources};
use super::{packets_for, psn_add, psn_diff, Bytes, Pkt, RcParams, Status};

/// A receive completion: a send (or a write with immediate) that consumed a receive buffer,
/// or a receive that ended in error or was flushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvCompletion {
    /// The receive work request's id.
    pub wr_id: u64,
    /// How it ended: `Success`; `Flushed` for a receive still posted when the QP went to
    /// the error state; the error that moved it there for the one in use then.
    pub status: Status,
    /// The message (empty for a write with immediate and for an error).
    pub data: Vec<u8>,
    /// Immediate data.
    pub imm: Option<u32>,
    /// Bytes written (a write with immediate) or received (a send); 0 for an error.
    pub byte_len: usize,
    /// The R_Key a SEND with invalidate invalidated (`IBV_WC_WITH_INV`).
    pub invalidated_rkey: Option<u32>,
}

impl RecvCompletion {
    /// The completion of a receive that ended with `status` (not a success).
    pub(crate) fn failed(wr_id: u64, status: Status) -> Self {
        RecvCompletion {
            wr_id,
            status,
            data: Vec::new(),
            imm: None,
            byte_len: 0,
            invalidated_rkey: None,
        }
    }
}

#[derive(Debug)]
struct WriteInProgress {
    rkey: u32,
    va: u64,
    len: usize,
    done: usize,
    /// The receive a write with immediate consumes (taken when its immediate arrives).
    recv: Option<Recv>,
}

/// Why an expected request was not executed.
#[derive(Clone, Copy)]
enum Refusal {
    /// No receive buffer: RNR NAK.
    Rnr,
    /// NAK with this code; the responder goes to the error state (unless a PSN sequence
    /// error).
    Nak(NakCode),
    /// A SEND with invalidate whose R_Key could not be invalidated (class J).
    Invalidate,
}

/// The responder half of an RC QP.
#[derive(Debug)]
pub struct Responder {
    p: RcParams,
    mem: MemoryTable,
    epsn: u32,
    msn: u32,
    recvs: RecvQueue,
    send: Option<(Recv, Vec<u8>)>,
    write: Option<WriteInProgress>,
    resources: Resources,
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
    /// Requests refused with a NAK other than RNR and PSN sequence, and SEND with
    /// invalidate requests whose R_Key could not be invalidated.
    pub refused: u64,
    /// Packets dropped (in the error state, not an RC request, headers that are not the
    /// opcode's, or duplicates that cannot be answered).
    pub dropped: u64,
}

impl Responder {
    /// A responder in RTR with `p`'s parameters over `mem`, with its own receive queue.
    pub fn new(p: RcParams, mem: MemoryTable) -> Self {
        Responder::build(p, mem, None)
    }

    /// A responder that takes its receives from the shared receive queue `srq`.
    pub fn with_srq(p: RcParams, mem: MemoryTable, srq: Srq) -> Self {
        Responder::build(p, mem, Some(srq))
    }

    fn build(p: RcParams, mem: MemoryTable, srq: Option<Srq>) -> Self {
        Responder {
            p,
            mem,
            epsn: p.recv_psn,
            msn: 0,
            recvs: RecvQueue::new(srq),
            send: None,
            write: None,
            resources: Resources::new(p.max_dest_rd_atomic),
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

    /// The shared receive queue it takes receives from, if any.
    pub fn srq(&self) -> Option<&Srq> {
        self.recvs.srq()
    }

    /// Posts a receive buffer of `capacity` bytes; refused with an SRQ (post there). In the
    /// error state the receive completes at once as `Flushed`.
    pub fn post_recv(&mut self, wr_id: u64, capacity: usize) -> Result<(), RecvError> {
        if self.error && self.recvs.srq().is_none() {
            let c = RecvCompletion::failed(wr_id, Status::Flushed);
            self.completions.push_back(c);
            return Ok(());
        }
        self.recvs.post(wr_id, capacity)
    }

    /// The next receive completion, if any.
    pub fn poll_completion(&mut self) -> Option<RecvCompletion> {
        self.completions.pop_front()
    }

    /// Whether the responder is in the error state.
    pub fn is_error(&self) -> bool {
        self.error
    }

    /// Moves the responder to the error state (`ibv_modify_qp` to ERR): the receive in use
    /// and every receive posted complete as `Flushed` (an SRQ's stay for its other QPs),
    /// later packets are dropped.
    pub fn set_error(&mut self) {
        self.enter_error(Status::Flushed);
    }

    /// The error state: the receive a message was using completes with `current`, the
    /// QP's own posted receives as `Flushed`.
    fn enter_error(&mut self, current: Status) {
        self.error = true;
        let in_use = self.send.take().map(|(r, _)| r);
        let in_use = in_use.or_else(|| self.write.take().and_then(|w| w.recv));
        if let Some(r) = in_use {
            self.completions
                .push_back(RecvCompletion::failed(r.wr_id, current));
        }
        for r in self.recvs.drain_own() {
            self.completions
                .push_back(RecvCompletion::failed(r.wr_id, Status::Flushed));
        }
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
            payload: Bytes::new(),
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
            self.enter_error(match code {
                NakCode::RemoteAccessError => Status::RemoteAccessError,
                NakCode::RemoteOperationalError => Status::RemoteOperationalError,
                _ => Status::RemoteInvalidRequest,
            });
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
            Err(Refusal::Rnr) => {
                self.rnr_naks += 1;
                let timer = self.p.min_rnr_timer;
                let a = self.ack(Aeth::new(Syndrome::RnrNak { timer }, self.msn), psn);
                self.respond(a);
            }
            Err(Refusal::Nak(code)) => self.nak(code, psn),
            Err(Refusal::Invalidate) => {
                // Class J, as rxe answers it: the receive completed with a remote invalid
                // request error, the request is ACKed (the MSN does not count it), and the
                // QP goes to the error state.
                self.refused += 1;
                self.epsn = psn_add(self.epsn, 1);
                self.ack_pending |= pkt.bth.ack_req;
                self.enter_error(Status::Flushed);
            }
        }
    }

    /// A request whose PSN was already executed.
    fn duplicate(&mut self, pkt: &Pkt) {
        self.duplicates += 1;
        let psn = pkt.bth.psn;
        match pkt.bth.opcode.op() {
            Op::ReadRequest => {
                // Re-executed (the data may have changed, which RDMA allows) if a resource
                // holds a read that covers it; otherwise dropped (class D).
                // The responses still queued for those PSNs are dropped first: the answer
                // replaces them (as rxe restarts its one read in progress), so a requester
                // that re-asks after each gap never gets one stream per gap.
                let Some(r) = pkt.ext.reth else { return };
                let len = r.dma_len;
                if !self.resources.read_covers(psn, r.va, r.rkey, len) {
                    self.dropped += 1;
                    return;
                }
                // Only that read's own PSNs, whatever length the duplicate claims.
                let last = self.resources.read_last_psn(psn).unwrap_or(psn);
                let n = packets_for(len as usize, self.p.mtu).min(psn_diff(last, psn) as u32 + 1);
                self.out.retain(|p| {
                    let d = psn_diff(p.bth.psn, psn);
                    let response = matches!(
                        p.bth.opcode.op(),
                        Op::ReadResponseFirst
                            | Op::ReadResponseMiddle
                            | Op::ReadResponseLast
                            | Op::ReadResponseOnly
                    );
                    !(response && d >= 0 && (d as u32) < n)
                });
                if self.read(psn, r.va, r.rkey, len as usize).is_err() {
                    self.dropped += 1;
                }
            }
            Op::CompareSwap | Op::FetchAdd => match self.resources.atomic_at(psn) {
                Some(orig) => self.atomic_ack(psn, orig),
                None => self.dropped += 1,
            },
            _ => self.ack_pending = true,
        }
    }

    /// Whether the QP's access flags allow `op` (rxe's `check_op_valid`).
    fn op_allowed(&self, op: Op) -> bool {
        let a = self.p.qp_access;
        match op {
            Op::WriteFirst
            | Op::WriteMiddle
            | Op::WriteLast
            | Op::WriteLastImm
            | Op::WriteOnly
            | Op::WriteOnlyImm => a.write,
            Op::ReadRequest => a.read,
            Op::CompareSwap | Op::FetchAdd => a.atomic,
            _ => true,
        }
    }

    /// The payload length rules of rxe's `check_length`: at most one MTU, and a last packet
    /// carries at least one byte (First and Middle are checked to be exactly one MTU where
    /// the data is placed).
    fn length_ok(&self, pkt: &Pkt) -> bool {
        let n = pkt.payload.len();
        n <= self.p.mtu && !(pkt.bth.opcode.position() == Position::Last && n == 0)
    }

    /// Executes the expected request; returns the PSNs it takes, or why not.
    fn execute(&mut self, pkt: &Pkt) -> Result<u32, Refusal> {
        let op = pkt.bth.opcode.op();
        let psn = pkt.bth.psn;
        let inv = Refusal::Nak(NakCode::InvalidRequest);
        let busy = self.send.is_some() || self.write.is_some();
        if !self.op_allowed(op) {
            return Err(inv);
        }
        match op {
            Op::SendFirst | Op::SendOnly | Op::SendOnlyImm | Op::SendOnlyInv => {
                if busy {
                    return Err(inv);
                }
                let r = self.recvs.take().ok_or(Refusal::Rnr)?;
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
                if busy {
                    return Err(inv);
                }
                let reth = pkt.ext.reth.ok_or(inv)?;
                // A write with immediate takes its receive first (rxe checks resources
                // before the R_Key): none is an RNR NAK.
                let recv = match op {
                    Op::WriteOnlyImm => Some(self.recvs.take().ok_or(Refusal::Rnr)?),
                    _ => None,
                };
                let len = reth.dma_len as usize;
                self.write = Some(WriteInProgress {
                    rkey: reth.rkey,
                    va: reth.va,
                    len,
                    done: 0,
                    recv,
                });
                if !self.length_ok(pkt) {
                    return Err(inv);
                }
                self.mem
                    .validate(reth.rkey, reth.va, len, Need::Write)
                    .map_err(Refusal::Nak)?;
                self.write_data(pkt)
            }
            Op::WriteMiddle | Op::WriteLast | Op::WriteLastImm => {
                let need_recv = self.write.as_ref().map(|w| w.recv.is_none());
                match need_recv {
                    None => return Err(inv),
                    Some(true) if op == Op::WriteLastImm => {
                        let r = self.recvs.take().ok_or(Refusal::Rnr)?;
                        self.write.as_mut().expect("checked").recv = Some(r);
                    }
                    Some(_) => {}
                }
                self.write_data(pkt)
            }
            Op::ReadRequest => {
                if busy || !self.resources.enabled() {
                    return Err(inv);
                }
                let r = pkt.ext.reth.ok_or(inv)?;
                let len = r.dma_len as usize;
                self.mem
                    .validate(r.rkey, r.va, len, Need::Read)
                    .map_err(Refusal::Nak)?;
                // The responses carry the MSN that counts this read, as rxe's do.
                self.msn = psn_add(self.msn, 1);
                let n = self.read(psn, r.va, r.rkey, len).map_err(Refusal::Nak)?;
                self.resources.hold(Resource::Read {
                    first_psn: psn,
                    last_psn: psn_add(psn, n - 1),
                    va: r.va,
                    rkey: r.rkey,
                    len: r.dma_len,
                });
                Ok(n)
            }
            Op::CompareSwap | Op::FetchAdd => {
                if busy || !self.resources.enabled() {
                    return Err(inv);
                }
                let a = pkt.ext.atomic.ok_or(inv)?;
                let compare = (op == Op::CompareSwap).then_some(a.compare);
                let orig = self
                    .mem
                    .atomic(a.rkey, a.va, compare, a.swap_add)
                    .map_err(Refusal::Nak)?;
                self.resources.hold(Resource::Atomic { psn, orig });
                self.msn = psn_add(self.msn, 1);
                self.atomic_ack(psn, orig);
                Ok(1)
            }
            _ => Err(inv),
        }
    }

    fn send_data(&mut self, pkt: &Pkt) -> Result<u32, Refusal> {
        if !self.length_ok(pkt) {
            return Err(Refusal::Nak(NakCode::InvalidRequest));
        }
        let (recv, buf) = self.send.as_mut().expect("a send is in progress");
        let full = matches!(
            pkt.bth.opcode.position(),
            Position::First | Position::Middle
        );
        if buf.len() + pkt.payload.len() > recv.capacity
            || (full && pkt.payload.len() != self.p.mtu)
        {
            return Err(Refusal::Nak(NakCode::InvalidRequest));
        }
        buf.extend_from_slice(&pkt.payload);
        if full {
            return Ok(1);
        }
        let (recv, data) = self.send.take().expect("a send is in progress");
        let invalidated_rkey = pkt.ext.ieth;
        if let Some(rkey) = invalidated_rkey {
            if self.mem.invalidate(rkey).is_err() {
                let c = RecvCompletion::failed(recv.wr_id, Status::RemoteInvalidRequest);
                self.completions.push_back(c);
                return Err(Refusal::Invalidate);
            }
        }
        self.msn = psn_add(self.msn, 1);
        self.completions.push_back(RecvCompletion {
            wr_id: recv.wr_id,
            status: Status::Success,
            byte_len: data.len(),
            data,
            imm: pkt.ext.imm,
            invalidated_rkey,
        });
        Ok(1)
    }

    fn write_data(&mut self, pkt: &Pkt) -> Result<u32, Refusal> {
        if !self.length_ok(pkt) {
            return Err(Refusal::Nak(NakCode::InvalidRequest));
        }
        let w = self.write.as_mut().expect("a write is in progress");
        let full = matches!(
            pkt.bth.opcode.position(),
            Position::First | Position::Middle
        );
        let end = w.done + pkt.payload.len();
        let short = !full && end != w.len;
        if end > w.len || short || (full && pkt.payload.len() != self.p.mtu) {
            return Err(Refusal::Nak(NakCode::InvalidRequest));
        }
        let va = w.va + w.done as u64;
        let rkey = w.rkey;
        w.done = end;
        self.mem
            .write(rkey, va, &pkt.payload)
            .map_err(Refusal::Nak)?;
        if !full {
            let w = self.write.take().expect("a write is in progress");
            self.msn = psn_add(self.msn, 1);
            if let (Some(imm), Some(recv)) = (pkt.ext.imm, w.recv) {
                self.completions.push_back(RecvCompletion {
                    wr_id: recv.wr_id,
                    status: Status::Success,
                    data: Vec::new(),
                    imm: Some(imm),
                    byte_len: w.len,
                    invalidated_rkey: None,
                });
            }
        }
        Ok(1)
    }

    /// Queues the responses of a read of `len` bytes at `va`, from PSN `psn`; returns their
    /// count.
    fn read(&mut self, psn: u32, va: u64, rkey: u32, len: usize) -> Result<u32, NakCode> {
        let data = Bytes::from(self.mem.read(rkey, va, len)?);
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
                payload: data.slice(start..end),
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
            payload: Bytes::new(),
        };
        self.respond(p);
    }
}
