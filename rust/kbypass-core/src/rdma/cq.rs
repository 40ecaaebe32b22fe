//! Completion queues (`ibv_cq`), their completion channels (`ibv_comp_channel`) and the work
//! completions (`ibv_wc`) polled from them.

use std::ffi::{c_int, c_void};
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use super::context::{Context, ContextInner, Ctx};
use super::ffi::{self, VerbsPtr};
use super::user::{UserChannel, UserCq};
use crate::error::{errno, Error, Result};

/// A created completion channel; CQs tied to it hold an `Arc` of it.
pub(super) struct ChannelInner {
    ptr: VerbsPtr<ffi::ibv_comp_channel>,
    ctx: Arc<ContextInner>,
}
impl Drop for ChannelInner {
    fn drop(&mut self) {
        // SAFETY: created by ibv_create_comp_channel; CQs using it hold an Arc, so none remain.
        unsafe { (self.ctx.v.destroy_comp_channel)(self.ptr.as_ptr()) };
    }
}

/// A completion channel (`ibv_comp_channel`, or the user-space engine's eventfd).
#[derive(Clone)]
pub struct CompletionChannel {
    inner: Chan,
}

#[derive(Clone)]
enum Chan {
    Verbs(Arc<ChannelInner>),
    User(UserChannel),
}

impl CompletionChannel {
    /// `ibv_create_comp_channel` ([`Context::create_comp_channel`](super::Context::create_comp_channel)).
    pub(super) fn create(ctx: &Context) -> Result<Self> {
        let c = match &ctx.inner {
            Ctx::Verbs(c) => c,
            Ctx::User(u) => {
                return Ok(CompletionChannel {
                    inner: Chan::User(u.create_comp_channel()?),
                })
            }
        };
        // SAFETY: an open context.
        let ch = unsafe { (c.v.create_comp_channel)(c.ptr.as_ptr()) };
        let ptr = VerbsPtr::new(ch).ok_or_else(|| Error::last_os("ibv_create_comp_channel", ""))?;
        Ok(CompletionChannel {
            inner: Chan::Verbs(Arc::new(ChannelInner {
                ptr,
                ctx: c.clone(),
            })),
        })
    }

    /// The channel's file descriptor (readable when a CQ event is pending).
    pub fn fd(&self) -> i32 {
        match &self.inner {
            Chan::Verbs(c) => c.fd(),
            Chan::User(c) => c.fd(),
        }
    }
}

impl ChannelInner {
    fn fd(&self) -> i32 {
        // SAFETY: the channel is alive while `self` is.
        unsafe { self.ptr.as_ref().fd }
    }
}

/// A created CQ with the provider's data-path entries for it; QPs hold an `Arc` of it.
pub(super) struct CqInner {
    pub(super) ptr: VerbsPtr<ffi::ibv_cq>,
    pub(super) ctx: Arc<ContextInner>,
    channel: Option<Arc<ChannelInner>>,
    poll: ffi::PollCqFn,
    notify: ffi::ReqNotifyCqFn,
}
impl Drop for CqInner {
    fn drop(&mut self) {
        // SAFETY: created by ibv_create_cq; QPs hold an Arc so none remain, and every event
        // taken from the channel was acknowledged in `wait`.
        unsafe { (self.ctx.v.destroy_cq)(self.ptr.as_ptr()) };
    }
}

/// A work completion (`ibv_wc`), exactly as the provider writes it.
pub type WorkCompletion = ffi::ibv_wc;

impl ffi::ibv_wc {
    /// True when the work request succeeded.
    pub fn is_success(&self) -> bool {
        self.status == 0
    }
    /// The status as rdma-core names it without the `IBV_WC_` prefix, e.g. `REM_ACCESS_ERR`.
    pub fn status_name(&self) -> &'static str {
        usize::try_from(self.status)
            .ok()
            .and_then(|i| ffi::WC_STATUS_NAMES.get(i).copied())
            .unwrap_or("UNKNOWN")
    }
    /// `Ok` for a successful completion, else an error naming the status and the work request.
    pub fn check(&self) -> Result<()> {
        if self.is_success() {
            return Ok(());
        }
        Err(Error::Os {
            what: format!(
                "work request {} completed with {} (vendor error {:#x})",
                self.wr_id,
                self.status_name(),
                self.vendor_err
            ),
            errno: libc::EIO,
            fix: match self.status {
                10 => "the remote key, address or access rights are wrong".into(),
                12 | 13 => "the peer is gone or has no receive posted (RNR)".into(),
                5 => "the QP went to the error state; reset and reconnect it".into(),
                _ => String::new(),
            },
        })
    }

    /// The immediate data in host order, if the completion carries it.
    pub fn imm(&self) -> Option<u32> {
        (self.wc_flags & ffi::WC_WITH_IMM != 0).then(|| u32::from_be(self.imm_data))
    }
    /// The R_Key a SEND with invalidate invalidated at this receiver (`IBV_WC_WITH_INV`;
    /// `invalidated_rkey` shares `imm_data`'s place, in host order).
    pub fn invalidated_rkey(&self) -> Option<u32> {
        (self.wc_flags & ffi::WC_WITH_INV != 0).then_some(self.imm_data)
    }
}

/// A completion queue (`ibv_cq`, or the user-space engine's).
#[derive(Clone)]
pub struct CompletionQueue {
    pub(super) inner: Cq,
}

/// A completion queue's backend.
#[derive(Clone)]
pub(super) enum Cq {
    Verbs(Arc<CqInner>),
    User(UserCq),
}

impl CompletionQueue {
    /// `ibv_create_cq` ([`Context::create_cq`](super::Context::create_cq)).
    pub(super) fn create(
        context: &Context,
        cqe: i32,
        channel: Option<&CompletionChannel>,
    ) -> Result<Self> {
        if cqe < 1 {
            return Err(Error::invalid(format!(
                "a CQ needs at least 1 entry, got {cqe}"
            )));
        }
        let other = || {
            Error::invalid(
                "the completion channel belongs to another context: create it on this one",
            )
        };
        let ctx = match &context.inner {
            Ctx::Verbs(c) => c,
            Ctx::User(u) => {
                let ch = match channel.map(|c| &c.inner) {
                    None => None,
                    Some(Chan::User(c)) => Some(c),
                    Some(Chan::Verbs(_)) => return Err(other()),
                };
                return Ok(CompletionQueue {
                    inner: Cq::User(u.create_cq(cqe, ch)?),
                });
            }
        };
        let channel = match channel.map(|c| &c.inner) {
            None => None,
            Some(Chan::Verbs(c)) if Arc::ptr_eq(&c.ctx, ctx) => Some(c),
            Some(_) => return Err(other()),
        };
        let ops = ctx.ops();
        let (Some(poll), Some(notify)) = (ops.poll_cq, ops.req_notify_cq) else {
            return Err(ctx.no_data_path(
                "poll_cq/req_notify_cq",
                "use a device whose provider implements the classic verbs data path",
            ));
        };
        let ch = channel.map_or(ptr::null_mut(), |c| c.ptr.as_ptr());
        // SAFETY: an open context; `ch` is NULL or a live channel of the same context.
        let cq = unsafe { (ctx.v.create_cq)(ctx.ptr.as_ptr(), cqe, ptr::null_mut(), ch, 0) };
        let ptr =
            VerbsPtr::new(cq).ok_or_else(|| Error::last_os(format!("ibv_create_cq({cqe})"), ""))?;
        Ok(CompletionQueue {
            inner: Cq::Verbs(Arc::new(CqInner {
                ptr,
                ctx: ctx.clone(),
                channel: channel.cloned(),
                poll,
                notify,
            })),
        })
    }

    /// True on a user-space context.
    pub fn is_userspace(&self) -> bool {
        matches!(self.inner, Cq::User(_))
    }

    /// For busy-polling loops whose polls keep coming back empty: on a user-space engine with
    /// a poll thread, sleeps until a completion is there or `timeout` passes (true if one
    /// is), so the spinning caller does not take the CPU the engine needs to make it; with
    /// caller progress the engine runs once. A verbs CQ returns false at once: hardware (or
    /// the kernel's rxe) makes progress whether the caller spins or not.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        match &self.inner {
            Cq::Verbs(_) => false,
            Cq::User(c) => c.wait_ready(timeout),
        }
    }

    /// Poll up to `out.len()` completions into `out`; returns how many were written.
    /// Never blocks, never allocates.
    pub fn poll(&self, out: &mut [WorkCompletion]) -> Result<usize> {
        // SAFETY: a slice of `WorkCompletion`s: valid for `out.len()` writes and aligned.
        unsafe { self.poll_raw(out.as_mut_ptr(), out.len()) }
    }

    /// Poll into raw memory: up to `n` completions written at `out`, returning how many.
    ///
    /// # Safety
    /// `out` must be valid for writes of `n` [`WorkCompletion`]s and 8-byte aligned.
    pub unsafe fn poll_raw(&self, out: *mut WorkCompletion, n: usize) -> Result<usize> {
        let cq = match &self.inner {
            Cq::Verbs(c) => c,
            // SAFETY: the caller vouches that `out` is valid for writes of `n` completions.
            Cq::User(c) => return c.poll(unsafe { std::slice::from_raw_parts_mut(out, n) }),
        };
        let n = c_int::try_from(n).unwrap_or(c_int::MAX);
        // SAFETY: the provider's poll_cq for this CQ; the caller vouches for `out`.
        let got = unsafe { (cq.poll)(cq.ptr.as_ptr(), n, out) };
        if got < 0 {
            return Err(Error::os(
                "poll_cq",
                -got,
                "the CQ overran or the device failed",
            ));
        }
        Ok(got as usize)
    }

    /// Ask for an event on the completion channel at the next (solicited) completion.
    pub fn req_notify(&self, solicited_only: bool) -> Result<()> {
        let cq = match &self.inner {
            Cq::Verbs(c) => c,
            Cq::User(c) => return c.req_notify(solicited_only),
        };
        // SAFETY: the provider's req_notify_cq for this CQ.
        let rc = unsafe { (cq.notify)(cq.ptr.as_ptr(), c_int::from(solicited_only)) };
        if rc != 0 {
            return Err(Error::os("req_notify_cq", rc, ""));
        }
        Ok(())
    }

    /// Wait until the completion channel reports an event for this CQ, or `timeout` passes
    /// (returns false then). Call [`req_notify`](Self::req_notify) before, then poll after.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        let this = match &self.inner {
            Cq::Verbs(c) => c,
            Cq::User(c) => return c.wait(timeout),
        };
        let Some(ch) = &this.channel else {
            return Err(Error::State(
                "this CQ has no completion channel: create it with one to wait".into(),
            ));
        };
        let fd = ch.fd();
        let ms = timeout.map_or(-1, |t| c_int::try_from(t.as_millis()).unwrap_or(c_int::MAX));
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc == 0 {
                return Ok(false);
            }
            if rc < 0 {
                let e = errno();
                if e == libc::EINTR {
                    continue;
                }
                return Err(Error::os("poll(completion channel)", e, ""));
            }
            break;
        }
        let mut cq: *mut ffi::ibv_cq = ptr::null_mut();
        let mut cq_ctx: *mut c_void = ptr::null_mut();
        let v = this.ctx.v;
        // SAFETY: the channel is readable, so this does not block; out-pointers are valid.
        let rc = unsafe { (v.get_cq_event)(ch.ptr.as_ptr(), &mut cq, &mut cq_ctx) };
        if rc != 0 {
            return Err(Error::last_os("ibv_get_cq_event", ""));
        }
        if !cq.is_null() {
            // SAFETY: `cq` is a CQ of this channel that is still alive (an event for it came
            // in); every event is acknowledged at once so destroy_cq never waits.
            unsafe { (v.ack_cq_events)(cq, 1) };
        }
        Ok(true)
    }

    /// Poll, and if nothing is there, sleep on the completion channel until a completion
    /// arrives or `timeout` passes (then 0). Race-free: the CQ is armed and polled again
    /// before sleeping, so a completion that lands in between is not missed.
    pub fn poll_blocking(
        &self,
        out: &mut [WorkCompletion],
        timeout: Option<Duration>,
    ) -> Result<usize> {
        if let Cq::User(c) = &self.inner {
            return c.poll_blocking(out, timeout);
        }
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            let n = self.poll(out)?;
            if n > 0 {
                return Ok(n);
            }
            self.req_notify(false)?;
            let n = self.poll(out)?;
            if n > 0 {
                return Ok(n);
            }
            let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
            if left == Some(Duration::ZERO) || !self.wait(left)? {
                return self.poll(out);
            }
        }
    }
}
