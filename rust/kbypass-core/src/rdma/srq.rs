//! The shared receive queue (`ibv_srq`, or the user-space engine's): one pool of receives for
//! many QPs.

use std::ptr;
use std::sync::Arc;

use super::events::SrqEvents;
use super::ffi::{self, VerbsPtr};
use super::mr::Sge;
use super::pd::PdInner;
use super::user::UserSrq;
use super::wr::RecvPath;
use crate::error::{Error, Result};

/// A shared receive queue (`ibv_srq`, or the engine's): one pool of receives for many QPs.
pub struct SharedReceiveQueue {
    pub(super) imp: Srq,
}

/// A shared receive queue's backend.
pub(super) enum Srq {
    Verbs(VerbsSrq),
    User(UserSrq),
}

/// The libibverbs half: the `ibv_srq` and its receive entry point.
pub(super) struct VerbsSrq {
    pub(super) ptr: VerbsPtr<ffi::ibv_srq>,
    recv: RecvPath<ffi::ibv_srq>,
    pub(super) pd: Arc<PdInner>,
    /// Its limit event, raised when the context reads it.
    events: Arc<SrqEvents>,
}
impl Drop for VerbsSrq {
    fn drop(&mut self) {
        // SAFETY: created by ibv_create_srq; QPs using it hold an Arc, so none remain.
        unsafe { (self.pd.ctx.v.destroy_srq)(self.ptr.as_ptr()) };
        // After the destroy: the kernel has dropped its unread events by then.
        self.pd
            .ctx
            .events
            .forget_srq(self.ptr.as_ptr(), &self.events);
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
        let events = ctx.events.watch_srq(ptr.as_ptr());
        Ok(SharedReceiveQueue {
            imp: Srq::Verbs(VerbsSrq {
                ptr,
                events,
                // SAFETY: `post` is the post_srq_recv of the context that created this SRQ,
                // and the path lives in the SRQ, which destroys the queue only when dropped.
                recv: unsafe {
                    RecvPath::new(
                        ptr,
                        post,
                        "post_srq_recv",
                        "the shared receive queue is full",
                    )
                },
                pd: pd.clone(),
            }),
        })
    }

    /// The engine's shared receive queue as one.
    pub(super) fn user(srq: UserSrq) -> Self {
        SharedReceiveQueue {
            imp: Srq::User(srq),
        }
    }

    /// True on a user-space context.
    pub fn is_userspace(&self) -> bool {
        matches!(self.imp, Srq::User(_))
    }

    /// Post one receive work request to the shared pool.
    pub fn post_recv(&self, wr_id: u64, sg: &[Sge<'_>]) -> Result<()> {
        match &self.imp {
            Srq::Verbs(s) => s.recv.post(wr_id, sg),
            Srq::User(s) => s.post_recv(wr_id, sg),
        }
    }

    /// Arm the limit event (`ibv_modify_srq` with `IBV_SRQ_LIMIT`): the first receive taken
    /// that leaves fewer than `limit` posted raises it once ([`limit_reached`](Self::limit_reached)).
    pub fn set_limit(&self, limit: u32) -> Result<()> {
        match &self.imp {
            Srq::Verbs(s) => s.set_limit(limit),
            Srq::User(s) => {
                s.set_limit(limit);
                Ok(())
            }
        }
    }

    /// Whether the limit event was raised since the last call (`IBV_EVENT_SRQ_LIMIT_REACHED`);
    /// the call clears it. Re-arm with [`set_limit`](Self::set_limit). On a libibverbs device
    /// it first reads the context's pending asynchronous events
    /// ([`Context::async_events`](super::Context::async_events) counts them all).
    pub fn limit_reached(&self) -> Result<bool> {
        match &self.imp {
            Srq::Verbs(s) => {
                s.pd.ctx.read_async_events()?;
                Ok(s.events.take_limit())
            }
            Srq::User(s) => Ok(s.take_limit_event()),
        }
    }

    /// The receives posted and not yet taken (user-space contexts; libibverbs does not say).
    pub fn posted(&self) -> Result<usize> {
        match &self.imp {
            Srq::Verbs(_) => Err(Error::Unsupported {
                what: "counting a libibverbs SRQ's posted receives".into(),
                fix: "count the receives you post and their completions".into(),
            }),
            Srq::User(s) => Ok(s.len()),
        }
    }
}

impl VerbsSrq {
    fn set_limit(&self, limit: u32) -> Result<()> {
        let mut attr = ffi::ibv_srq_attr {
            srq_limit: limit,
            ..Default::default()
        };
        // SAFETY: a live SRQ and attributes of which the mask selects `srq_limit`.
        let rc =
            unsafe { (self.pd.ctx.v.modify_srq)(self.ptr.as_ptr(), &mut attr, ffi::SRQ_LIMIT) };
        if rc != 0 {
            return Err(Error::os(
                format!("ibv_modify_srq(srq_limit={limit})"),
                rc,
                "the limit must not exceed the SRQ's max_wr (and the device must support SRQ \
                 limits)",
            ));
        }
        Ok(())
    }
}
