//! One QP inside the engine: its state, its transport's state machines, and the work
//! requests between post and completion.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use super::objects::CqShared;
use super::qp::QpState;
use super::srq::SrqShared;
use super::work::{
    self, scatter, status_code, with_imm, RecvWqe, SendWqe, Solicited, GRH_LEN, WC_LOC_LEN_ERR,
    WC_RECV, WC_RECV_RDMA_WITH_IMM, WC_SUCCESS, WC_WITH_INV, WC_WR_FLUSH_ERR,
};
use super::{EngineCounters, QpCaps, QpType, WorkCompletion};
use crate::error::{Error, Result};
use crate::rdma::ffi;
use crate::rdma::roce::rc::{
    MemoryTable, Pkt, RcParams, RemoteAccess, Requester, Responder, Status, WorkRequest,
};
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
    /// The QP's remote access flags.
    pub access: RemoteAccess,
    pub qkey: u32,
    pub peer: Option<Peer>,
    pub udp_src: u16,
    m: Machine,
    srq: Option<Arc<SrqShared>>,
    sends: BTreeMap<u64, SendWqe>,
    recvs: BTreeMap<u64, RecvWqe>,
    /// Receives posted before the transport existed, in order.
    early: VecDeque<u64>,
    ud_out: VecDeque<(u64, Pkt, Peer)>,
    solicited: Solicited,
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
        srq: Option<Arc<SrqShared>>,
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
            access: RemoteAccess::default(),
            qkey: 0,
            peer: None,
            // rxe's choice: a source port from the QPN, in the dynamic range.
            udp_src: 0xc000 | (qpn as u16 & 0x3fff),
            m: Machine::Idle,
            srq,
            sends: BTreeMap::new(),
            recvs: BTreeMap::new(),
            early: VecDeque::new(),
            ud_out: VecDeque::new(),
            solicited: Solicited::default(),
            next_id: 1,
            overflows: 0,
        }
    }

    pub fn mem(&self) -> &MemoryTable {
        &self.mem
    }

    /// RTR: the receiving half starts (`params` and `peer` are set).
    pub fn start_receiving(&mut self) -> Result<()> {
        // The responder refuses what the QP's access flags do not allow as rxe does (an
        // invalid request, before any region); UC, which has no responses, through the
        // memory handle's mask.
        let mut p = self.params;
        p.qp_access = self.access;
        let mem = self.mem.with_mask(self.access);
        let srq = self.srq.as_ref().map(|s| s.srq.clone());
        self.m = match (self.qp_type, srq) {
            (QpType::Rc, None) => Machine::Rc {
                resp: Box::new(Responder::new(p, mem)),
                req: None,
            },
            (QpType::Rc, Some(q)) => Machine::Rc {
                resp: Box::new(Responder::with_srq(p, mem, q)),
                req: None,
            },
            (QpType::Uc, None) => Machine::Uc {
                rx: UcReceiver::new(p.recv_psn, p.mtu, mem),
                tx: None,
            },
            (QpType::Uc, Some(q)) => Machine::Uc {
                rx: UcReceiver::with_srq(p.recv_psn, p.mtu, mem, q),
                tx: None,
            },
            (QpType::Ud, None) => Machine::Ud {
                rx: UdReceiver::new(self.qpn, self.qkey),
                tx: None,
            },
            (QpType::Ud, Some(q)) => Machine::Ud {
                rx: UdReceiver::with_srq(self.qpn, self.qkey, q),
                tx: None,
            },
        };
        while let Some(id) = self.early.pop_front() {
            let cap = self.recvs.get(&id).map_or(0, |r| r.capacity);
            self.machine_post_recv(id, cap)?;
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

    fn machine_post_recv(&mut self, id: u64, cap: usize) -> Result<()> {
        let r = match &mut self.m {
            Machine::Rc { resp, .. } => resp.post_recv(id, cap),
            Machine::Uc { rx, .. } => rx.post_recv(id, cap),
            Machine::Ud { rx, .. } => rx.post_recv(id, cap.saturating_sub(GRH_LEN)),
            Machine::Idle => {
                self.early.push_back(id);
                Ok(())
            }
        };
        r.map_err(|e| Error::State(e.to_string()))
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
        if self.srq.is_some() {
            return Err(Error::State(
                "this QP takes its receives from a shared receive queue: post them to the SRQ"
                    .into(),
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
        if let Err(e) = self.machine_post_recv(id, capacity) {
            self.recvs.remove(&id);
            return Err(e);
        }
        Ok(())
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Whether a send may be posted now: the QP in RTS (or ERROR, where it is flushed) and
    /// room in its send queue.
    pub fn check_post_send(&self) -> Result<()> {
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
        Ok(())
    }

    pub fn post_send(&mut self, wqe: SendWqe, what: Posted, solicited: bool) -> Result<()> {
        self.check_post_send()?;
        let id = self.take_id();
        self.sends.insert(id, wqe);
        if self.state == QpState::Error {
            self.flush();
            return Ok(());
        }
        match (&mut self.m, what) {
            (Machine::Rc { req: Some(r), .. }, Posted::Rc(wr)) => {
                if matches!(wr, WorkRequest::Send { .. } | WorkRequest::SendInv { .. }) {
                    self.solicited.posted(solicited);
                }
                r.post(id, wr);
            }
            (Machine::Uc { tx: Some(t), .. }, Posted::Uc(wr)) => {
                if matches!(wr, UcRequest::Send { .. }) {
                    self.solicited.posted(solicited);
                }
                t.post(id, wr);
            }
            (
                Machine::Ud { tx: Some(t), .. },
                Posted::Ud {
                    dest,
                    peer,
                    data,
                    imm,
                },
            ) => match t.send(dest, &data, imm) {
                Ok(mut p) => {
                    p.bth.solicited = solicited;
                    self.ud_out.push_back((id, p, peer));
                }
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
                if let Some(p) = resp.poll_tx() {
                    return Some((p, peer?));
                }
                let mut p = req.as_mut()?.poll_tx(now)?;
                self.solicited.mark(&mut p);
                Some((p, peer?))
            }
            Machine::Uc { tx: Some(t), .. } => {
                let mut p = t.poll_tx()?;
                self.solicited.mark(&mut p);
                Some((p, peer?))
            }
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
            let (id, status, data, imm, byte_len, src_qp, inv) = match &mut self.m {
                Machine::Rc { resp, .. } => match resp.poll_completion() {
                    Some(c) => (
                        c.wr_id,
                        c.status,
                        c.data,
                        c.imm,
                        c.byte_len,
                        None,
                        c.invalidated_rkey,
                    ),
                    None => return,
                },
                Machine::Uc { rx, .. } => match rx.poll_completion() {
                    Some(c) => (c.wr_id, c.status, c.data, c.imm, c.byte_len, None, None),
                    None => return,
                },
                Machine::Ud { rx, .. } => match rx.poll_completion() {
                    Some(c) => {
                        let n = c.data.len();
                        (
                            c.wr_id,
                            Status::Success,
                            c.data,
                            c.imm,
                            n,
                            Some(c.src_qp),
                            None,
                        )
                    }
                    None => return,
                },
                Machine::Idle => return,
            };
            let found = self.recvs.remove(&id);
            let Some(r) = found.or_else(|| self.srq.as_ref().and_then(|s| s.take(id))) else {
                continue;
            };
            if status != Status::Success {
                let wc = work::wc(r.wr_id, status_code(status), WC_RECV, self.qpn, 0);
                self.push(false, wc, true);
                continue;
            }
            // A write with immediate places its data remotely and brings no bytes here.
            let write_imm = src_qp.is_none() && data.is_empty() && byte_len > 0;
            let mut wc = if let Some(src) = src_qp {
                let fits = scatter(&r.spans, 0, grh) && scatter(&r.spans, GRH_LEN, &data);
                let st = if fits { WC_SUCCESS } else { WC_LOC_LEN_ERR };
                let len = (GRH_LEN + byte_len) as u32;
                let mut wc = work::wc(r.wr_id, st, WC_RECV, self.qpn, len);
                wc.wc_flags |= ffi::WC_GRH;
                wc.src_qp = src;
                wc
            } else if write_imm {
                let len = byte_len as u32;
                work::wc(r.wr_id, WC_SUCCESS, WC_RECV_RDMA_WITH_IMM, self.qpn, len)
            } else {
                scatter(&r.spans, 0, &data);
                work::wc(r.wr_id, WC_SUCCESS, WC_RECV, self.qpn, byte_len as u32)
            };
            wc = with_imm(wc, imm);
            if let Some(k) = inv {
                wc.imm_data = k;
                wc.wc_flags |= WC_WITH_INV;
            }
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

    /// RESET: everything outstanding is discarded without completions (as verbs does) and
    /// the QP can be set up again.
    pub fn reset(&mut self) {
        self.m = Machine::Idle;
        self.sends.clear();
        self.recvs.clear();
        self.early.clear();
        self.ud_out.clear();
        self.solicited = Solicited::default();
        self.params = RcParams::default();
        self.peer = None;
        self.state = QpState::Reset;
    }

    /// The error state: every outstanding work request completes as flushed.
    pub fn fail(&mut self) {
        self.state = QpState::Error;
        match &mut self.m {
            Machine::Rc { resp, req } => {
                resp.set_error();
                if let Some(r) = req {
                    r.set_error();
                }
            }
            Machine::Uc { .. } | Machine::Ud { .. } | Machine::Idle => {}
        }
        self.complete();
        self.complete_recvs(false, &[0; GRH_LEN]);
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
