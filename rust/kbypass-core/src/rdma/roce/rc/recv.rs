//! Receive queues: a QP's own, or a shared receive queue ([`Srq`]) that several responders
//! (RC, UC and UD alike) take receive buffers from.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

/// A posted receive: its work request id and buffer size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recv {
    pub(crate) wr_id: u64,
    pub(crate) capacity: usize,
}

/// Why a receive could not be posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// The QP takes its receives from a shared receive queue.
    #[error("this QP takes its receives from a shared receive queue: post them to the SRQ")]
    HasSrq,
    /// The shared receive queue is full.
    #[error(
        "the shared receive queue holds its maximum of {max_wr} receives: let messages \
         consume some first, or create it with a larger max_wr"
    )]
    SrqFull {
        /// Its capacity.
        max_wr: usize,
    },
}

#[derive(Debug)]
struct SrqState {
    recvs: VecDeque<Recv>,
    max_wr: usize,
    limit: usize,
    limit_event: bool,
    limit_events: u64,
    taken: u64,
}

/// A shared receive queue: receive buffers posted once, taken by whichever responder's
/// message arrives first. Cloning gives another handle to the same queue (each responder
/// created [`with_srq`](super::Responder::with_srq) holds one).
///
/// An RC responder that finds it empty answers an RNR NAK (the requester retries); UC and
/// UD receivers drop the message and count it. With a limit armed ([`Srq::set_limit`]), the
/// first take that leaves fewer than `limit` receives raises one limit event
/// ([`Srq::take_limit_event`]) and disarms it, as `IBV_EVENT_SRQ_LIMIT_REACHED` does.
#[derive(Debug, Clone)]
pub struct Srq(Arc<Mutex<SrqState>>);

impl Srq {
    /// An empty queue that holds at most `max_wr` receives.
    pub fn new(max_wr: usize) -> Srq {
        Srq(Arc::new(Mutex::new(SrqState {
            recvs: VecDeque::new(),
            max_wr,
            limit: 0,
            limit_event: false,
            limit_events: 0,
            taken: 0,
        })))
    }

    fn state(&self) -> MutexGuard<'_, SrqState> {
        // The state is consistent after every statement that changes it: a panic elsewhere
        // while the lock was held leaves nothing half done.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Posts a receive buffer of `capacity` bytes.
    pub fn post_recv(&self, wr_id: u64, capacity: usize) -> Result<(), RecvError> {
        let mut s = self.state();
        if s.recvs.len() >= s.max_wr {
            return Err(RecvError::SrqFull { max_wr: s.max_wr });
        }
        s.recvs.push_back(Recv { wr_id, capacity });
        Ok(())
    }

    /// Receives posted and not taken.
    pub fn len(&self) -> usize {
        self.state().recvs.len()
    }

    /// Whether no receive is posted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most receives it holds.
    pub fn max_wr(&self) -> usize {
        self.state().max_wr
    }

    /// Arms the limit (`ibv_modify_srq` with `IBV_SRQ_LIMIT`): the first take that leaves
    /// fewer than `limit` receives raises a limit event and disarms it. 0 disarms.
    pub fn set_limit(&self, limit: usize) {
        self.state().limit = limit;
    }

    /// The armed limit (0: none).
    pub fn limit(&self) -> usize {
        self.state().limit
    }

    /// Whether a limit event was raised since the last call (and clears it).
    pub fn take_limit_event(&self) -> bool {
        std::mem::take(&mut self.state().limit_event)
    }

    /// Limit events raised so far.
    pub fn limit_events(&self) -> u64 {
        self.state().limit_events
    }

    /// Receives taken by messages so far.
    pub fn taken(&self) -> u64 {
        self.state().taken
    }

    /// Whether `other` is a handle to the same queue.
    pub fn same_queue(&self, other: &Srq) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Takes the oldest receive for a message.
    pub(crate) fn take(&self) -> Option<Recv> {
        let mut s = self.state();
        let r = s.recvs.pop_front()?;
        s.taken += 1;
        if s.limit > 0 && s.recvs.len() < s.limit {
            s.limit = 0;
            s.limit_event = true;
            s.limit_events += 1;
        }
        Some(r)
    }

    /// Gives back a receive a message took and did not use (it is next again).
    pub(crate) fn put_back(&self, r: Recv) {
        let mut s = self.state();
        s.taken = s.taken.saturating_sub(1);
        s.recvs.push_front(r);
    }
}

/// Where a responder takes its receives from.
#[derive(Debug)]
pub(crate) enum RecvQueue {
    /// Its own queue.
    Own(VecDeque<Recv>),
    /// A shared receive queue.
    Shared(Srq),
}

impl RecvQueue {
    pub(crate) fn new(srq: Option<Srq>) -> Self {
        match srq {
            Some(s) => RecvQueue::Shared(s),
            None => RecvQueue::Own(VecDeque::new()),
        }
    }

    /// Posts to the QP's own queue; refused with an SRQ.
    pub(crate) fn post(&mut self, wr_id: u64, capacity: usize) -> Result<(), RecvError> {
        match self {
            RecvQueue::Own(q) => {
                q.push_back(Recv { wr_id, capacity });
                Ok(())
            }
            RecvQueue::Shared(_) => Err(RecvError::HasSrq),
        }
    }

    pub(crate) fn take(&mut self) -> Option<Recv> {
        match self {
            RecvQueue::Own(q) => q.pop_front(),
            RecvQueue::Shared(s) => s.take(),
        }
    }

    pub(crate) fn put_back(&mut self, r: Recv) {
        match self {
            RecvQueue::Own(q) => q.push_front(r),
            RecvQueue::Shared(s) => s.put_back(r),
        }
    }

    /// The QP's own receives, all taken (to flush them); none from an SRQ, whose receives
    /// serve its other QPs.
    pub(crate) fn drain_own(&mut self) -> Vec<Recv> {
        match self {
            RecvQueue::Own(q) => q.drain(..).collect(),
            RecvQueue::Shared(_) => Vec::new(),
        }
    }

    pub(crate) fn srq(&self) -> Option<&Srq> {
        match self {
            RecvQueue::Own(_) => None,
            RecvQueue::Shared(s) => Some(s),
        }
    }
}
