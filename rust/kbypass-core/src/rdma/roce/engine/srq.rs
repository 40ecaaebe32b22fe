//! Shared receive queues: receives posted once, taken by whichever of the QPs created on the
//! queue gets a message first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::objects::ProtectionDomain;
use super::work::{resolve, RecvWqe, Sge};
use crate::error::{Error, Result};
use crate::rdma::roce::rc::Srq;

/// Receive ids of shared receive queues have the top bit set (a QP's own do not), so a
/// completion finds its buffer in one place or the other.
const SRQ_ID: u64 = 1 << 63;

/// The queue the QPs hold and the buffers behind its receives.
pub(super) struct SrqShared {
    pub srq: Srq,
    wqes: Mutex<HashMap<u64, RecvWqe>>,
    next: AtomicU64,
}

impl SrqShared {
    /// The buffer of receive `id`, taken out (its completion is being made).
    pub fn take(&self, id: u64) -> Option<RecvWqe> {
        if id & SRQ_ID == 0 {
            return None;
        }
        self.wqes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
    }
}

/// A shared receive queue of the engine.
pub struct SharedReceiveQueue {
    pd: ProtectionDomain,
    pub(super) inner: Arc<SrqShared>,
    max_sge: usize,
}

impl ProtectionDomain {
    /// A shared receive queue of `max_wr` receives of up to `max_sge` SGEs each, for QPs
    /// created with [`create_qp_with_srq`](Self::create_qp_with_srq).
    pub fn create_srq(&self, max_wr: u32, max_sge: u32) -> Result<Arc<SharedReceiveQueue>> {
        if max_wr == 0 || max_sge == 0 {
            return Err(Error::invalid("an SRQ needs max_wr and max_sge above 0"));
        }
        Ok(Arc::new(SharedReceiveQueue {
            pd: self.clone(),
            inner: Arc::new(SrqShared {
                srq: Srq::new(max_wr as usize),
                wqes: Mutex::new(HashMap::new()),
                next: AtomicU64::new(1),
            }),
            max_sge: max_sge as usize,
        }))
    }
}

impl SharedReceiveQueue {
    /// Posts one receive of the SGEs' bytes (which need `LOCAL_WRITE`).
    pub fn post_recv(&self, wr_id: u64, sg: &[Sge]) -> Result<()> {
        if sg.len() > self.max_sge {
            return Err(Error::invalid(format!(
                "{} SGEs, the SRQ takes at most {}",
                sg.len(),
                self.max_sge
            )));
        }
        let spans = resolve(&self.pd.inner.table, sg, true)?;
        let capacity = spans.iter().map(|s| s.len).sum();
        let id = SRQ_ID | self.inner.next.fetch_add(1, Ordering::Relaxed);
        self.inner
            .wqes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id,
                RecvWqe {
                    wr_id,
                    spans,
                    capacity,
                },
            );
        if let Err(e) = self.inner.srq.post_recv(id, capacity) {
            self.inner.take(id);
            return Err(Error::State(e.to_string()));
        }
        self.pd.engine().kick();
        Ok(())
    }

    /// Receives posted and not taken.
    pub fn len(&self) -> usize {
        self.inner.srq.len()
    }

    /// Whether no receive is posted.
    pub fn is_empty(&self) -> bool {
        self.inner.srq.is_empty()
    }

    /// Arms the limit event: the first take that leaves fewer than `limit` receives raises
    /// it once (`IBV_EVENT_SRQ_LIMIT_REACHED`).
    pub fn set_limit(&self, limit: u32) {
        self.inner.srq.set_limit(limit as usize);
    }

    /// Whether the limit event was raised since the last call (and clears it).
    pub fn take_limit_event(&self) -> bool {
        self.inner.srq.take_limit_event()
    }

    /// The protection domain.
    pub fn pd(&self) -> &ProtectionDomain {
        &self.pd
    }
}
