//! The RC requester: work requests in, request packets out, responses in, completions out.

use std::collections::VecDeque;

use super::super::wire::{Aeth, NakCode, Op, Syndrome, Transport};
use super::wr::{segment, WorkRequest};
use super::{packets_for, psn_add, psn_diff, rnr_timer_ns, Completion, Pkt, RcParams, Status};

#[derive(Debug)]
struct Wqe {
    wr_id: u64,
    wr: WorkRequest,
    first_psn: u32,
    npkts: u32,
    /// Read data received so far (responses accepted in PSN order).
    data: Vec<u8>,
    /// Read response packets accepted.
    got: u32,
}

impl Wqe {
    fn contains(&self, psn: u32) -> bool {
        let d = psn_diff(psn, self.first_psn);
        d >= 0 && (d as u32) < self.npkts
    }
    fn last_psn(&self) -> u32 {
        psn_add(self.first_psn, self.npkts - 1)
    }
}

/// The requester half of an RC QP.
#[derive(Debug)]
pub struct Requester {
    p: RcParams,
    wqes: VecDeque<Wqe>,
    /// The next PSN to assign to a posted request.
    next_psn: u32,
    /// The next PSN to transmit.
    send_psn: u32,
    /// One past the highest PSN transmitted (after a go-back, `send_psn` is behind it, and
    /// responses up to it are still ours).
    sent_end: u32,
    /// The oldest PSN not yet acknowledged.
    una: u32,
    retries_left: u8,
    rnr_left: u8,
    /// The PSN of the last go-back after a NAK (explicit or implicit), until the next
    /// progress.
    naked: Option<u32>,
    deadline: Option<u64>,
    rnr_until: Option<u64>,
    error: bool,
    completions: VecDeque<Completion>,
    /// Retransmissions after a timeout.
    pub timeouts: u64,
    /// Go-backs after a PSN sequence NAK or an implicit NAK.
    pub go_backs: u64,
    /// RNR NAKs received.
    pub rnr_naks: u64,
    /// `poll_tx` calls that found the next packet a new read or atomic and no credit for it
    /// (`max_rd_atomic` outstanding).
    pub rd_atomic_waits: u64,
    /// Packets dropped: duplicates, responses to nothing outstanding, requests, headers that
    /// are not the opcode's, anything in the error state.
    pub dropped: u64,
}

impl Requester {
    /// A requester in RTS with `p`'s parameters.
    pub fn new(p: RcParams) -> Self {
        Requester {
            p,
            wqes: VecDeque::new(),
            next_psn: p.send_psn,
            send_psn: p.send_psn,
            sent_end: p.send_psn,
            una: p.send_psn,
            retries_left: p.retry_cnt,
            rnr_left: p.rnr_retry,
            naked: None,
            deadline: None,
            rnr_until: None,
            error: false,
            completions: VecDeque::new(),
            timeouts: 0,
            go_backs: 0,
            rnr_naks: 0,
            rd_atomic_waits: 0,
            dropped: 0,
        }
    }

    /// Posts a work request. In the error state it completes at once as `Flushed`. A read
    /// or atomic on a QP with `max_rd_atomic` 0 (which may have none outstanding) completes
    /// at once as `LocalQpOperationError` and moves the QP to the error state (the work
    /// requests before it are flushed).
    pub fn post(&mut self, wr_id: u64, wr: WorkRequest) {
        if wr.expects_response() && self.p.max_rd_atomic == 0 && !self.error {
            self.set_error();
            self.completions.push_back(Completion {
                wr_id,
                status: Status::LocalQpOperationError,
                data: Vec::new(),
            });
            return;
        }
        if self.error {
            self.completions.push_back(Completion {
                wr_id,
                status: Status::Flushed,
                data: Vec::new(),
            });
            return;
        }
        let npkts = match &wr {
            WorkRequest::Send { data, .. }
            | WorkRequest::SendInv { data, .. }
            | WorkRequest::Write { data, .. } => packets_for(data.len(), self.p.mtu),
            WorkRequest::Read { len, .. } => packets_for(*len as usize, self.p.mtu),
            _ => 1,
        };
        let first_psn = self.next_psn;
        self.next_psn = psn_add(first_psn, npkts);
        self.wqes.push_back(Wqe {
            wr_id,
            wr,
            first_psn,
            npkts,
            data: Vec::new(),
            got: 0,
        });
    }

    /// The next completion, if any.
    pub fn poll_completion(&mut self) -> Option<Completion> {
        self.completions.pop_front()
    }

    /// Whether the QP is in the error state.
    pub fn is_error(&self) -> bool {
        self.error
    }

    /// Work requests posted and not completed.
    pub fn outstanding(&self) -> usize {
        self.wqes.len()
    }

    /// Reads and atomics sent and not completed (at most `max_rd_atomic`).
    pub fn rd_atomic_outstanding(&self) -> usize {
        self.wqes
            .iter()
            .filter(|w| w.wr.expects_response() && psn_diff(w.first_psn, self.sent_end) < 0)
            .count()
    }

    /// Moves the QP to the error state (`ibv_modify_qp` to ERR): every work request not
    /// completed completes as `Flushed`, and so does every one posted later.
    pub fn set_error(&mut self) {
        self.error = true;
        self.deadline = None;
        while let Some(w) = self.wqes.pop_front() {
            self.completions.push_back(Completion {
                wr_id: w.wr_id,
                status: Status::Flushed,
                data: Vec::new(),
            });
        }
    }

    /// The next packet to send at time `now`, if the window, the RNR wait, the read and
    /// atomic credits (`max_rd_atomic`: a new read or atomic waits, and everything after it
    /// with it, while that many are outstanding) and the work queue allow one.
    pub fn poll_tx(&mut self, now: u64) -> Option<Pkt> {
        if psn_diff(self.una, self.send_psn) > 0 {
            // Acknowledged past the go-back point: nothing before the ACK needs sending.
            self.send_psn = self.una;
        }
        if self.error || psn_diff(self.send_psn, self.next_psn) >= 0 {
            return None;
        }
        if let Some(t) = self.rnr_until {
            if now < t {
                return None;
            }
            self.rnr_until = None;
        }
        if psn_diff(self.send_psn, self.una) >= self.p.window as i32 {
            return None;
        }
        let idx = self.wqes.iter().position(|w| w.contains(self.send_psn))?;
        let new = psn_diff(self.send_psn, self.sent_end) >= 0;
        if new
            && self.wqes[idx].wr.expects_response()
            && self.rd_atomic_outstanding() >= usize::from(self.p.max_rd_atomic)
        {
            self.rd_atomic_waits += 1;
            return None;
        }
        let psn = self.send_psn;
        let w = &self.wqes[idx];
        let k = psn_diff(psn, w.first_psn) as u32;
        let (pkt, advance) = segment(&w.wr, k, w.npkts, psn, &self.p, self.una);
        self.send_psn = psn_add(psn, advance);
        if psn_diff(self.send_psn, self.sent_end) > 0 {
            self.sent_end = self.send_psn;
        }
        if self.deadline.is_none() {
            self.deadline = Some(now + self.p.timeout_ns());
        }
        Some(pkt)
    }

    /// Handles the retransmission timer at time `now`.
    pub fn tick(&mut self, now: u64) {
        let Some(d) = self.deadline else { return };
        if self.error || now < d {
            return;
        }
        if self.wqes.is_empty() {
            self.deadline = None;
            return;
        }
        if self.retries_left == 0 {
            self.fail(Status::RetryExceeded);
            return;
        }
        self.retries_left -= 1;
        self.timeouts += 1;
        self.rewind(self.una);
        self.deadline = Some(now + self.p.timeout_ns());
    }

    /// Handles a packet from the responder at time `now`.
    pub fn on_packet(&mut self, now: u64, pkt: &Pkt) {
        if self.error
            || pkt.bth.opcode.is_request()
            || pkt.bth.opcode.transport() != Transport::Rc
            || pkt.ext.set() != pkt.bth.opcode.headers()
        {
            self.dropped += 1;
            return;
        }
        let psn = pkt.bth.psn;
        // Anything beyond what was sent is not a response to us.
        if psn_diff(psn, self.sent_end) >= 0 || psn_diff(psn, self.una) < -(1 << 22) {
            self.dropped += 1;
            return;
        }
        let op = pkt.bth.opcode.op();
        match (op, pkt.ext.aeth.map(|a| a.kind())) {
            (Op::Acknowledge, Some(Syndrome::Ack { .. })) => self.acked_upto(now, psn),
            (Op::Acknowledge, Some(Syndrome::RnrNak { timer })) => {
                self.acked_upto(now, psn_add(psn, 0xff_ffff));
                self.rnr_naks += 1;
                if self.rnr_left == 0 {
                    self.fail(Status::RnrRetryExceeded);
                    return;
                }
                if self.p.rnr_retry != 7 {
                    self.rnr_left -= 1;
                }
                self.rnr_until = Some(now + rnr_timer_ns(timer));
                self.rewind(psn);
                self.deadline = Some(now + rnr_timer_ns(timer) + self.p.timeout_ns());
            }
            (Op::Acknowledge, Some(Syndrome::Nak(NakCode::PsnSequenceError))) => {
                self.acked_upto(now, psn_add(psn, 0xff_ffff));
                self.go_back(psn);
            }
            (Op::Acknowledge, Some(Syndrome::Nak(code))) => {
                self.acked_upto(now, psn_add(psn, 0xff_ffff));
                self.fail(match code {
                    NakCode::RemoteAccessError => Status::RemoteAccessError,
                    NakCode::RemoteOperationalError => Status::RemoteOperationalError,
                    _ => Status::RemoteInvalidRequest,
                });
            }
            (
                Op::ReadResponseFirst
                | Op::ReadResponseMiddle
                | Op::ReadResponseLast
                | Op::ReadResponseOnly,
                _,
            ) => {
                self.read_response(now, pkt);
            }
            (Op::AtomicAcknowledge, Some(Syndrome::Ack { .. })) => {
                let orig = pkt.ext.atomic_ack.unwrap_or(0);
                self.acked_before(now, psn);
                match self.wqes.front() {
                    Some(w)
                        if w.first_psn == psn
                            && w.wr.expects_response()
                            && !matches!(w.wr, WorkRequest::Read { .. }) =>
                    {
                        let w = self.wqes.pop_front().expect("front exists");
                        self.complete(now, w.wr_id, Status::Success, orig.to_ne_bytes().to_vec());
                        self.una = psn_add(psn, 1);
                    }
                    _ => self.passed_by(psn),
                }
            }
            _ => self.dropped += 1,
        }
    }

    fn read_response(&mut self, now: u64, pkt: &Pkt) {
        let psn = pkt.bth.psn;
        self.acked_before(now, psn);
        let mtu = self.p.mtu;
        let Some(w) = self.wqes.front_mut() else {
            self.dropped += 1;
            return;
        };
        let WorkRequest::Read { len, .. } = w.wr else {
            self.dropped += 1;
            return;
        };
        if !w.contains(psn) {
            self.passed_by(psn);
            return;
        }
        let expected = psn_add(w.first_psn, w.got);
        let d = psn_diff(psn, expected);
        if d < 0 {
            self.dropped += 1;
            return;
        }
        if d > 0 {
            // A response was lost: ask again from the first missing one.
            self.go_back(expected);
            return;
        }
        let want = (len as usize - w.data.len()).min(mtu);
        if pkt.payload.len() != want {
            self.dropped += 1;
            return;
        }
        w.data.extend_from_slice(&pkt.payload);
        w.got += 1;
        let done = w.got == w.npkts;
        self.una = psn_add(psn, 1);
        self.progress(now);
        if done {
            let w = self.wqes.pop_front().expect("front exists");
            self.complete(now, w.wr_id, Status::Success, w.data);
        }
    }

    /// An ACK of every PSN up to `psn`: completes the sends and writes it covers. A read or
    /// atomic it passes without its response lost that response: go back to it.
    fn acked_upto(&mut self, now: u64, psn: u32) {
        while let Some(w) = self.wqes.front() {
            if psn_diff(psn, w.first_psn) < 0 {
                break;
            }
            if w.wr.expects_response() {
                let resume = psn_add(w.first_psn, w.got);
                if psn_diff(psn, resume) >= 0 {
                    self.go_back(resume);
                }
                return;
            }
            if psn_diff(psn, w.last_psn()) < 0 {
                // Part of a multi-packet message.
                if psn_diff(psn, self.una) >= 0 {
                    self.una = psn_add(psn, 1);
                    self.progress(now);
                }
                return;
            }
            let w = self.wqes.pop_front().expect("front exists");
            self.una = psn_add(w.last_psn(), 1);
            self.complete(now, w.wr_id, Status::Success, Vec::new());
        }
    }

    /// A response for `psn` that is not the head's: if it is past the head read or atomic,
    /// that one's response was lost (implicit NAK): go back to it.
    fn passed_by(&mut self, psn: u32) {
        self.dropped += 1;
        if let Some(w) = self.wqes.front() {
            let resume = psn_add(w.first_psn, w.got);
            if w.wr.expects_response() && psn_diff(psn, resume) > 0 {
                self.go_back(resume);
            }
        }
    }

    /// A response for `psn` implies every request before it was executed.
    fn acked_before(&mut self, now: u64, psn: u32) {
        while let Some(w) = self.wqes.front() {
            if w.contains(psn) || psn_diff(w.first_psn, psn) > 0 || w.wr.expects_response() {
                return;
            }
            let w = self.wqes.pop_front().expect("front exists");
            self.una = psn_add(w.last_psn(), 1);
            self.complete(now, w.wr_id, Status::Success, Vec::new());
        }
    }

    fn complete(&mut self, now: u64, wr_id: u64, status: Status, data: Vec<u8>) {
        self.completions.push_back(Completion {
            wr_id,
            status,
            data,
        });
        self.progress(now);
    }

    /// Forward progress: the retry budgets refill and the timer restarts (or stops).
    fn progress(&mut self, now: u64) {
        self.naked = None;
        self.retries_left = self.p.retry_cnt;
        self.rnr_left = self.p.rnr_retry;
        self.deadline = (!self.wqes.is_empty()).then(|| now + self.p.timeout_ns());
    }

    /// Go-back-N to `psn` after a sequence NAK or an implicit one, once: until the next
    /// progress, further signs of the same gap (copies of the NAK, each later response past
    /// a lost one) do not go back (and re-request) again.
    fn go_back(&mut self, psn: u32) {
        if self.naked != Some(psn) {
            self.naked = Some(psn);
            self.go_backs += 1;
            self.rewind(psn);
        }
    }

    /// Go back to `psn` and send again from there (go-back-N). A read goes back to its
    /// first missing response.
    fn rewind(&mut self, psn: u32) {
        if psn_diff(psn, self.sent_end) > 0 {
            return;
        }
        let Some(w) = self.wqes.iter().find(|w| w.contains(psn)) else {
            return;
        };
        self.send_psn = if w.wr.expects_response() {
            psn_add(w.first_psn, w.got)
        } else {
            psn
        };
        if psn_diff(self.una, self.send_psn) > 0 {
            self.una = self.send_psn;
        }
    }

    /// The head work request ends with `status`, the rest are flushed, the QP is in error.
    fn fail(&mut self, status: Status) {
        self.error = true;
        self.deadline = None;
        let mut first = true;
        while let Some(w) = self.wqes.pop_front() {
            let s = if first { status } else { Status::Flushed };
            first = false;
            self.completions.push_back(Completion {
                wr_id: w.wr_id,
                status: s,
                data: Vec::new(),
            });
        }
    }
}

/// The AETH of an ACK, for the responder.
pub(super) fn ack_aeth(msn: u32) -> Aeth {
    Aeth::new(Syndrome::Ack { credits: 31 }, msn)
}
