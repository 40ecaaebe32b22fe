//! The shared receive queue (`ibv_srq`): one pool of receives for many QPs.

use std::ptr;
use std::sync::Arc;

use super::ffi::{self, VerbsPtr};
use super::mr::Sge;
use super::pd::PdInner;
use super::wr::RecvPath;
use crate::error::{Error, Result};

/// A shared receive queue (`ibv_srq`): one pool of receives for many QPs.
pub struct SharedReceiveQueue {
    pub(super) ptr: VerbsPtr<ffi::ibv_srq>,
    recv: RecvPath<ffi::ibv_srq>,
    pub(super) pd: Arc<PdInner>,
}
impl Drop for SharedReceiveQueue {
    fn drop(&mut self) {
        // SAFETY: created by ibv_create_srq; QPs using it hold an Arc, so none remain.
        unsafe { (self.pd.ctx.v.destroy_srq)(self.ptr.as_ptr()) };
    }
}

impl SharedReceiveQueue {
    /// `ibv_create_srq` ([`ProtectionDomain::create_srq`](super::ProtectionDomain::create_srq)).
    pub(super) fn create(pd: &Arc<PdInner>, max_wr: u32, max_sge: u32) -> Result<Self> {
        let ctx = &pd.ctx;
        let Some(post) = ctx.ops().post_srq_recv else {
            return Err(ctx.no_data_path(
                "post_srq_recv",
                "post receives on each QP instead of a shared receive queue",
            ));
        };
        let mut attr = ffi::ibv_srq_init_attr {
            srq_context: ptr::null_mut(),
            attr: ffi::ibv_srq_attr {
                max_wr,
                max_sge,
                srq_limit: 0,
            },
        };
        // SAFETY: valid PD and attributes.
        let srq = unsafe { (ctx.v.create_srq)(pd.ptr.as_ptr(), &mut attr) };
        let ptr = VerbsPtr::new(srq)
            .ok_or_else(|| Error::last_os(format!("ibv_create_srq({max_wr})"), ""))?;
        Ok(SharedReceiveQueue {
            ptr,
            // SAFETY: `post` is the post_srq_recv of the context that created this SRQ, and
            // the path lives in the SRQ, which destroys the queue only when dropped.
            recv: unsafe {
                RecvPath::new(
                    ptr,
                    post,
                    "post_srq_recv",
                    "the shared receive queue is full",
                )
            },
            pd: pd.clone(),
        })
    }

    /// Post one receive work request to the shared pool.
    pub fn post_recv(&self, wr_id: u64, sg: &[Sge<'_>]) -> Result<()> {
        self.recv.post(wr_id, sg)
    }
}
