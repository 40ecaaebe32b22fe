//! The UC transport as I/O-free state machines: a sender that segments sends and RDMA
//! writes by the path MTU and assigns PSNs, and a receiver that places them and drops a
//! message with a gap in its PSNs. UC has no ACKs and no retransmission: a work request
//! completes once its last packet is handed out, and a message that lost a packet is not
//! delivered (the receiver counts it) — the receive buffer it had taken serves the next one.

use std::collections::VecDeque;

use super::rc::{
    packets_for, psn_add, Bytes, MemoryTable, Pkt, Recv, RecvCompletion, RecvError, RecvQueue, Srq,
    Status,
};
use super::wire::{Bth, ExtHeaders, Op, Opcode, Position, Reth, Transport, WireError, MAX_PAYLOAD};

/// A UC work request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UcRequest {
    /// A send, optionally with immediate data.
    Send {
        /// The message.
        data: Bytes,
        /// Immediate data.
        imm: Option<u32>,
    },
    /// An RDMA write, optionally with immediate data.
    Write {
        /// The data.
        data: Bytes,
        /// Remote address.
        va: u64,
        /// Remote key.
        rkey: u32,
        /// Immediate data.
        imm: Option<u32>,
    },
}

/// The sending half of a UC QP.
#[derive(Debug)]
pub struct UcSender {
    dest_qp: u32,
    mtu: usize,
    psn: u32,
    queue: VecDeque<(u64, UcRequest, u32)>,
    done: VecDeque<u64>,
}

impl UcSender {
    /// A sender to `dest_qp` starting at `psn`, with path MTU `mtu` (256–4096).
    pub fn new(dest_qp: u32, psn: u32, mtu: usize) -> Result<Self, WireError> {
        if !(256..=MAX_PAYLOAD).contains(&mtu) || !mtu.is_power_of_two() {
            return Err(WireError::BadMtu(mtu));
        }
        Ok(UcSender {
            dest_qp,
            mtu,
            psn,
            queue: VecDeque::new(),
            done: VecDeque::new(),
        })
    }

    /// Posts a work request.
    pub fn post(&mut self, wr_id: u64, wr: UcRequest) {
        self.queue.push_back((wr_id, wr, 0));
    }

    /// The id of the next completed work request (all UC completions are successes).
    pub fn poll_completion(&mut self) -> Option<u64> {
        self.done.pop_front()
    }

    /// The next packet to send.
    pub fn poll_tx(&mut self) -> Option<Pkt> {
        let (wr_id, wr, k) = self.queue.front_mut()?;
        let (data, imm) = match wr {
            UcRequest::Send { data, imm } | UcRequest::Write { data, imm, .. } => (data, *imm),
        };
        let n = packets_for(data.len(), self.mtu);
        let first = *k == 0;
        let last = *k + 1 == n;
        let start = (*k as usize * self.mtu).min(data.len());
        let payload = data.slice(start..(start + self.mtu).min(data.len()));
        let mut ext = ExtHeaders::default();
        if last {
            ext.imm = imm;
        }
        let ops = match wr {
            UcRequest::Send { .. } => [
                Op::SendOnly,
                Op::SendOnlyImm,
                Op::SendFirst,
                Op::SendMiddle,
                Op::SendLast,
                Op::SendLastImm,
            ],
            UcRequest::Write { va, rkey, data, .. } => {
                if first {
                    ext.reth = Some(Reth {
                        va: *va,
                        rkey: *rkey,
                        dma_len: data.len() as u32,
                    });
                }
                [
                    Op::WriteOnly,
                    Op::WriteOnlyImm,
                    Op::WriteFirst,
                    Op::WriteMiddle,
                    Op::WriteLast,
                    Op::WriteLastImm,
                ]
            }
        };
        let with_imm = usize::from(imm.is_some());
        let op = match (first, last) {
            (true, true) => ops[with_imm],
            (true, false) => ops[2],
            (false, false) => ops[3],
            (false, true) => ops[4 + with_imm],
        };
        let opcode = Opcode::new(Transport::Uc, op).expect("UC has sends and writes");
        let pkt = Pkt {
            bth: Bth::new(opcode, self.dest_qp, self.psn),
            ext,
            payload,
        };
        self.psn = psn_add(self.psn, 1);
        *k += 1;
        if last {
            let id = *wr_id;
            self.queue.pop_front();
            self.done.push_back(id);
        }
        Some(pkt)
    }
}

#[derive(Debug)]
enum InProgress {
    Send {
        wr_id: u64,
        capacity: usize,
        data: Vec<u8>,
    },
    Write {
        rkey: u32,
        va: u64,
        len: usize,
        done: usize,
    },
}

/// The receiving half of a UC QP.
#[derive(Debug)]
pub struct UcReceiver {
    mtu: usize,
    epsn: u32,
    mem: MemoryTable,
    recvs: RecvQueue,
    cur: Option<InProgress>,
    completions: VecDeque<RecvCompletion>,
    /// Messages dropped because a packet of theirs was lost (a PSN gap).
    pub aborted: u64,
    /// Messages (sends and writes with immediate) dropped because no receive was posted
    /// (in its own queue or its SRQ).
    pub no_buffer: u64,
    /// Packets dropped: not UC, not a message start after a gap, no receive buffer, too long
    /// for the buffer, a write outside the memory table's rights or bounds, headers that are
    /// not the opcode's.
    pub dropped: u64,
}

impl UcReceiver {
    /// A receiver expecting `psn` first, with path MTU `mtu`, placing writes in `mem`.
    pub fn new(psn: u32, mtu: usize, mem: MemoryTable) -> Self {
        UcReceiver::build(psn, mtu, mem, None)
    }

    /// A receiver like [`UcReceiver::new`] that takes its receives from `srq`.
    pub fn with_srq(psn: u32, mtu: usize, mem: MemoryTable, srq: Srq) -> Self {
        UcReceiver::build(psn, mtu, mem, Some(srq))
    }

    fn build(psn: u32, mtu: usize, mem: MemoryTable, srq: Option<Srq>) -> Self {
        UcReceiver {
            mtu,
            epsn: psn,
            mem,
            recvs: RecvQueue::new(srq),
            cur: None,
            completions: VecDeque::new(),
            aborted: 0,
            no_buffer: 0,
            dropped: 0,
        }
    }

    /// The memory writes land in.
    pub fn memory(&self) -> &MemoryTable {
        &self.mem
    }

    /// Posts a receive buffer of `capacity` bytes; refused with an SRQ (post there).
    pub fn post_recv(&mut self, wr_id: u64, capacity: usize) -> Result<(), RecvError> {
        self.recvs.post(wr_id, capacity)
    }

    /// The next receive completion.
    pub fn poll_completion(&mut self) -> Option<RecvCompletion> {
        self.completions.pop_front()
    }

    /// Drops the message in progress; a send's receive buffer serves the next message.
    fn abort(&mut self) {
        match self.cur.take() {
            Some(InProgress::Send {
                wr_id, capacity, ..
            }) => {
                self.recvs.put_back(Recv { wr_id, capacity });
                self.aborted += 1;
            }
            Some(InProgress::Write { .. }) => self.aborted += 1,
            None => {}
        }
    }

    /// Handles a packet.
    pub fn on_packet(&mut self, pkt: &Pkt) {
        let opcode = pkt.bth.opcode;
        if opcode.transport() != Transport::Uc || pkt.ext.set() != opcode.headers() {
            self.dropped += 1;
            return;
        }
        if pkt.bth.psn != self.epsn {
            self.abort();
        }
        self.epsn = psn_add(pkt.bth.psn, 1);
        let pos = opcode.position();
        let starts = matches!(pos, Position::First | Position::Only);
        if starts {
            self.abort();
        } else if self.cur.is_none() {
            self.dropped += 1;
            return;
        }
        if self.place(pkt, starts).is_err() {
            self.abort();
            self.dropped += 1;
        }
    }

    fn place(&mut self, pkt: &Pkt, starts: bool) -> Result<(), ()> {
        let op = pkt.bth.opcode.op();
        let pos = pkt.bth.opcode.position();
        let full = matches!(pos, Position::First | Position::Middle);
        let n = pkt.payload.len();
        // rxe's length rules: First and Middle exactly one MTU, none over it, no empty Last.
        if (full && n != self.mtu) || n > self.mtu || (pos == Position::Last && n == 0) {
            return Err(());
        }
        let is_send = matches!(
            op,
            Op::SendFirst
                | Op::SendMiddle
                | Op::SendLast
                | Op::SendLastImm
                | Op::SendOnly
                | Op::SendOnlyImm
        );
        if starts {
            self.cur = Some(if is_send {
                let Some(Recv { wr_id, capacity }) = self.recvs.take() else {
                    self.no_buffer += 1;
                    return Err(());
                };
                InProgress::Send {
                    wr_id,
                    capacity,
                    data: Vec::new(),
                }
            } else {
                let r = pkt.ext.reth.ok_or(())?;
                let len = r.dma_len as usize;
                self.mem.check_write(r.rkey, r.va, len).map_err(|_| ())?;
                InProgress::Write {
                    rkey: r.rkey,
                    va: r.va,
                    len,
                    done: 0,
                }
            });
        }
        let imm = pkt.ext.imm;
        let mut imm_recv = None;
        match self.cur.as_mut().ok_or(())? {
            InProgress::Send { data, capacity, .. } => {
                if !is_send || data.len() + pkt.payload.len() > *capacity {
                    return Err(());
                }
                data.extend_from_slice(&pkt.payload);
            }
            InProgress::Write {
                rkey,
                va,
                len,
                done,
            } => {
                let end = *done + pkt.payload.len();
                if is_send || end > *len || (!full && end != *len) {
                    return Err(());
                }
                if imm.is_some() {
                    let Some(r) = self.recvs.take() else {
                        self.no_buffer += 1;
                        return Err(());
                    };
                    imm_recv = Some(r);
                }
                let at = *va + *done as u64;
                let key = *rkey;
                *done = end;
                if self.mem.write(key, at, &pkt.payload).is_err() {
                    if let Some(r) = imm_recv {
                        self.recvs.put_back(r);
                    }
                    return Err(());
                }
            }
        }
        if !full {
            match self.cur.take().ok_or(())? {
                InProgress::Send { wr_id, data, .. } => {
                    self.completions.push_back(RecvCompletion {
                        wr_id,
                        status: Status::Success,
                        byte_len: data.len(),
                        data,
                        imm,
                        invalidated_rkey: None,
                    })
                }
                InProgress::Write { len, .. } => {
                    if let (Some(imm), Some(r)) = (imm, imm_recv) {
                        self.completions.push_back(RecvCompletion {
                            wr_id: r.wr_id,
                            status: Status::Success,
                            data: Vec::new(),
                            imm: Some(imm),
                            byte_len: len,
                            invalidated_rkey: None,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}
