//! One QP inside the engine: its state, its transport's state machines, and the work
//! requests between post and completion.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use super::objects::CqShared;
use super::qp::QpState;
use super::work::{
    self, scatter, status_code, with_imm, RecvWqe, SendWqe, GRH_LEN, WC_RECV,
    WC_RECV_RDMA_WITH_IMM, WC_SUCCESS, WC_WR_FLUSH_ERR,
};
use super::{EngineCounters, QpCaps, QpType, WorkCompletion};
use crate::error::{Error, Result};
use crate::rdma::ffi;
use crate::rdma::roce::rc::{MemoryTable, Pkt, RcParams, Requester, Responder, WorkRequest};
use crate::rdma::roce::uc::{UcReceiver, UcRequest, UcSender};
use crate::rdma::roce::ud::{UdDest, UdReceiver, UdSender};

/// Where a QP's packets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Peer {
    pub mac: [u8; 6],
    pub ip: IpAddr,
}

enum Machine {
    /// RESET or INIT: nothing runs yet.
    Idle,
    Rc {
        resp: Box<Responder>,
        req: Option<Box<Requester>>,
    },
    Uc {
        rx: UcReceiver,
        tx: Option<UcSender>,
    },
    Ud {
        rx: UdReceiver,
        tx: Option<UdSender>,
    },
}

/// A send as posted, before the transport takes it.
pub(super) enum Posted {
    Rc(WorkRequest),
    Uc(UcRequest),
    Ud {
        dest: UdDest,
        peer: Peer,
        data: Vec<u8>,
        imm: Option<u32>,
    },
}

pub(super) struct QpEntry {
    pub qpn: u32,
    pub qp_type: QpType,
    pub state: QpState,
    send_cq: Arc<CqShared>,
    recv_cq: Arc<CqShared>,
    mem: MemoryTable,
    caps: QpCaps,
    pub params: RcParams,
    pub qkey: u32,
    pub peer: Option<Peer>,
    pub udp_src: u16,
    m: Machine,
    sends: BTreeMap<u64, SendWqe>,
    recvs: BTreeMap<u64, RecvWqe>,
    /// Receives posted before the transport existed, in order.
    early: VecDeque<u64>,
    ud_out: VecDeque<(u64, Pkt, Peer)>,
    next_id: u64,
    /// Completions dropped because a CQ was full.
    pub overflows: u64,
}

impl QpEntry {
    pub fn new(
        qpn: u32,
        qp_type: QpType,
        send_cq: Arc<CqShared>,
        recv_cq: Arc<CqShared>,
        mem: MemoryTable,
        caps: QpCaps,
    ) -> Self {
        QpEntry {
            qpn,
            qp_type,
            state: QpState::Reset,
            send_cq,
            recv_cq,
            mem,
            caps,
            params: RcParams::default(),
            qkey: 0,
            peer: None,
            // rxe's choice: a source port from the QPN, in the dynamic range.
            udp_src: 0xc000 | (qpn as u16 & 0x3fff),
            m: Machine::Idle,
            sends: BTreeMap::new(),
            recvs: BTreeMap::new(),
            early: VecDeque::new(),
            ud_out: VecDeque::new(),
            next_id: 1,
            overflows: 0,
        }
    }

    pub fn mem(&self) -> &MemoryTable {
        &self.mem
    }

    /// RTR: the receiving half starts (`params` and `peer` are set).
    pub fn start_receiving(&mut self) -> Result<()> {
        let p = self.params;
        self.m = match self.qp_type {
            QpType::Rc => Machine::Rc {
                resp: Box::new(Responder::new(p, self.mem.clone())),
                req: None,
            },
            QpType::Uc => Machine::Uc {
                rx: UcReceiver::new(p.recv_psn, p.mtu, self.mem.clone()),
                tx: None,
            },
            QpType::Ud => Machine::Ud {
                rx: UdReceiver::new(self.qpn, self.qkey),
                tx: None,
            },
        };
        while let Some(id) = self.early.pop_front() {
            let cap = self.recvs.get(&id).map_or(0, |r| r.capacity);
            self.machine_post_recv(id, cap);
        }
        self.state = QpState::Rtr;
        Ok(())
    }

    /// RTS: the sending half starts.
    pub fn start_sending(&mut self) -> Result<()> {
        let p = self.params;
        let bad = |e| Error::invalid(format!("cannot start sending: {e}"));
        match &mut self.m {
            Machine::Rc { req, .. } => *req = Some(Box::new(Requester::new(p))),
            Machine::Uc { tx, .. } => {
                *tx = Some(UcSender::new(p.dest_qp, p.send_psn, p.mtu).map_err(bad)?)
            }
            Machine::Ud { tx, .. } => *tx = Some(UdSender::new(self.qpn, p.mtu).map_err(bad)?),
            Machine::Idle => return Err(Error::State("move the QP to RTR before RTS".into())),
        }
        self.state = QpState::Rts;
        Ok(())
    }

    fn machine_post_recv(&mut self, id: u64, cap: usize) {
        match &mut self.m {
            Machine::Rc { resp, .. } => resp.post_recv(id, cap),
            Machine::Uc { rx, .. } => rx.post_recv(id, cap),
            Machine::Ud { rx, .. } => rx.post_recv(id, cap.saturating_sub(GRH_LEN)),
            Machine::Idle => self.early.push_back(id),
        }
    }

    pub fn post_recv(
        &mut self,
        wr_id: u64,
        spans: Vec<crate::rdma::roce::rc::LocalSpan>,
    ) -> Result<()> {
        if self.state == QpState::Reset {
            return Err(Error::State(
                "post_recv needs the QP in INIT, RTR or RTS (it is in RESET)".into(),
            ));
        }
        if self.recvs.len() >= self.caps.max_recv_wr as usize {
            return Err(Error::State(format!(
                "receive queue full ({} receives posted): poll the CQ, or create the QP with a larger max_recv_wr",
                self.recvs.len()
            )));
        }
        let capacity: usize = spans.iter().map(|s| s.len).sum();
        if self.qp_type == QpType::Ud && capacity < GRH_LEN {
            return Err(Error::invalid(
                "a UD receive buffer starts with 40 bytes of GRH: post at least 40 bytes",
            ));
        }
        let id = self.take_id();
        self.recvs.insert(
            id,
            RecvWqe {
                wr_id,
                spans,
                capacity,
            },
        );
        if self.state == QpState::Error {
            self.flush();
            return Ok(());
        }
        self.machine_post_recv(id, capacity);
        Ok(())
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub fn post_send(&mut self, wqe: SendWqe, what: Posted) -> Result<()> {
        if self.state != QpState::Rts && self.state != QpState::Error {
            return Err(Error::State(format!(
                "post_send needs the QP in RTS (it is in {:?}): connect it first",
                self.state
            )));
        }
        if self.sends.len() >= self.caps.max_send_wr as usize {
            return Err(Error::State(format!(
                "send queue full ({} sends outstanding): poll the CQ, or create the QP with a larger max_send_wr",
                self.sends.len()
            )));
        }
        let id = self.take_id();
        self.sends.insert(id, wqe);
        if self.state == QpState::Error {
            self.flush();
            return Ok(());
        }
        match (&mut self.m, what) {
            (Machine::Rc { req: Some(r), .. }, Posted::Rc(wr)) => r.post(id, wr),
            (Machine::Uc { tx: Some(t), .. }, Posted::Uc(wr)) => t.post(id, wr),
            (
                Machine::Ud { tx: Some(t), .. },
                Posted::Ud {
                    dest,
                    peer,
                    data,
                    imm,
                },
            ) => match t.send(dest, &data, imm) {
                Ok(p) => self.ud_out.push_back((id, p, peer)),
                Err(e) => {
                    self.sends.remove(&id);
                    return Err(Error::invalid(format!(
                        "UD send of {} bytes: {e} (a UD message fits one path MTU)",
                        data.len()
                    )));
                }
            },
            _ => {
                self.sends.remove(&id);
                return Err(Error::invalid(format!(
                    "this operation is not one a {:?} QP performs",
                    self.qp_type
                )));
            }
        }
        Ok(())
    }

    /// Handles a packet for this QP; false when the QP cannot receive. `grh` is the IP
    /// header as verbs places it in front of a UD receive.
    pub fn on_packet(&mut self, now: u64, pkt: &Pkt, grh: &[u8; GRH_LEN]) -> bool {
        if !matches!(self.state, QpState::Rtr | QpState::Rts) {
            return false;
        }
        match &mut self.m {
            Machine::Rc { resp, req } => {
                if pkt.bth.opcode.is_request() {
                    resp.on_packet(pkt);
                } else if let Some(r) = req {
                    r.on_packet(now, pkt);
                } else {
                    return false;
                }
            }
            Machine::Uc { rx, .. } => rx.on_packet(pkt),
            Machine::Ud { rx, .. } => rx.on_packet(pkt),
            Machine::Idle => return false,
        }
        self.complete_recvs(pkt.bth.solicited, grh);
        true
    }

    /// Runs the retransmission timer; true while timers matter (requests outstanding).
    pub fn tick(&mut self, now: u64) -> bool {
        match &mut self.m {
            Machine::Rc { req: Some(r), .. } => {
                r.tick(now);
                r.outstanding() > 0
            }
            _ => false,
        }
    }

    /// The next packet to send and where to.
    pub fn poll_tx(&mut self, now: u64) -> Option<(Pkt, Peer)> {
        let peer = self.peer;
        match &mut self.m {
            Machine::Rc { resp, req } => {
                let p = resp
                    .poll_tx()
                    .or_else(|| req.as_mut().and_then(|r| r.poll_tx(now)))?;
                Some((p, peer?))
            }
            Machine::Uc { tx: Some(t), .. } => Some((t.poll_tx()?, peer?)),
            Machine::Ud { .. } => {
                let (id, p, to) = self.ud_out.pop_front()?;
                self.complete_send(id, WC_SUCCESS, None);
                Some((p, to))
            }
            _ => None,
        }
    }

    fn push(&mut self, send: bool, wc: WorkCompletion, solicited: bool) {
        let cq = if send { &self.send_cq } else { &self.recv_cq };
        if !cq.push(wc, solicited) {
            self.overflows += 1;
        }
    }

    fn complete_send(&mut self, id: u64, status: i32, data: Option<&[u8]>) {
        let Some(w) = self.sends.remove(&id) else {
            return;
        };
        let mut byte_len = w.byte_len;
        if let Some(d) = data {
            scatter(&w.dest, 0, d);
            byte_len = d.len() as u32;
        }
        if w.signaled || status != WC_SUCCESS {
            let wc = work::wc(w.wr_id, status, w.opcode, self.qpn, byte_len);
            self.push(true, wc, false);
        }
    }

    fn complete_recvs(&mut self, solicited: bool, grh: &[u8; GRH_LEN]) {
        loop {
            let (id, data, imm, byte_len, src_qp) = match &mut self.m {
                Machine::Rc { resp, .. } => match resp.poll_completion() {
                    Some(c) => (c.wr_id, c.data, c.imm, c.byte_len, None),
                    None => return,
                },
                Machine::Uc { rx, .. } => match rx.poll_completion() {
                    Some(c) => (c.wr_id, c.data, c.imm, c.byte_len, None),
                    None => return,
                },
                Machine::Ud { rx, .. } => match rx.poll_completion() {
                    Some(c) => {
                        let n = c.data.len();
                        (c.wr_id, c.data, c.imm, n, Some(c.src_qp))
                    }
                    None => return,
                },
                Machine::Idle => return,
            };
            let Some(r) = self.recvs.remove(&id) else {
                continue;
            };
            // A write with immediate places its data remotely and brings no bytes here.
            let write_imm = src_qp.is_none() && data.is_empty() && byte_len > 0;
            let mut wc = if src_qp.is_some() {
                scatter(&r.spans, 0, grh);
                scatter(&r.spans, GRH_LEN, &data);
                let mut wc = work::wc(
                    r.wr_id,
                    WC_SUCCESS,
                    WC_RECV,
                    self.qpn,
                    (GRH_LEN + byte_len) as u32,
                );
                wc.wc_flags |= ffi::WC_GRH;
                wc.src_qp = src_qp.unwrap_or(0);
                wc
            } else if write_imm {
                work::wc(
                    r.wr_id,
                    WC_SUCCESS,
                    WC_RECV_RDMA_WITH_IMM,
                    self.qpn,
                    byte_len as u32,
                )
            } else {
                scatter(&r.spans, 0, &data);
                work::wc(r.wr_id, WC_SUCCESS, WC_RECV, self.qpn, byte_len as u32)
            };
            wc = with_imm(wc, imm);
            self.push(false, wc, solicited);
        }
    }

    /// Moves requester and UC completions to the CQs and enters the error state when a
    /// state machine did.
    pub fn complete(&mut self) {
        loop {
            let next = match &mut self.m {
                Machine::Rc { req: Some(r), .. } => r
                    .poll_completion()
                    .map(|c| (c.wr_id, status_code(c.status), c.data)),
                Machine::Uc { tx: Some(t), .. } => {
                    t.poll_completion().map(|id| (id, WC_SUCCESS, Vec::new()))
                }
                _ => None,
            };
            let Some((id, status, data)) = next else {
                break;
            };
            let got = (!data.is_empty()).then_some(&data[..]);
            self.complete_send(id, status, got);
        }
        let failed = match &self.m {
            Machine::Rc { resp, req } => {
                resp.is_error() || req.as_ref().is_some_and(|r| r.is_error())
            }
            _ => false,
        };
        if failed && self.state != QpState::Error {
            self.fail();
        }
    }

    /// The error state: every outstanding work request completes as flushed.
    pub fn fail(&mut self) {
        self.state = QpState::Error;
        self.flush();
    }

    fn flush(&mut self) {
        self.ud_out.clear();
        self.early.clear();
        for (_, w) in std::mem::take(&mut self.sends) {
            let wc = work::wc(w.wr_id, WC_WR_FLUSH_ERR, w.opcode, self.qpn, 0);
            self.push(true, wc, false);
        }
        for (_, r) in std::mem::take(&mut self.recvs) {
            let wc = work::wc(r.wr_id, WC_WR_FLUSH_ERR, WC_RECV, self.qpn, 0);
            self.push(false, wc, false);
        }
    }

    /// Adds this QP's transport counters to `c`.
    pub fn add_counters(&self, c: &mut EngineCounters) {
        c.cq_overflows += self.overflows;
        match &self.m {
            Machine::Rc { resp, req } => {
                c.duplicates += resp.duplicates;
                c.out_of_sequence += resp.out_of_sequence;
                c.rnr_naks_sent += resp.rnr_naks;
                c.naks_sent += resp.refused;
                c.transport_dropped += resp.dropped;
                if let Some(r) = req {
                    c.retransmits += r.timeouts;
                    c.go_backs += r.go_backs;
                    c.rnr_naks_received += r.rnr_naks;
                    c.transport_dropped += r.dropped;
                }
            }
            Machine::Uc { rx, .. } => {
                c.uc_aborted += rx.aborted;
                c.transport_dropped += rx.dropped;
            }
            Machine::Ud { rx, .. } => {
                c.transport_dropped +=
                    rx.wrong_qpn + rx.bad_qkey + rx.no_buffer + rx.too_long + rx.malformed;
            }
            Machine::Idle => {}
        }
    }
}
