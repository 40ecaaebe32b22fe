//! A libibverbs context's asynchronous events (`ibv_get_async_event` on the context's
//! `async_fd`). They are read when someone asks (an SRQ's `limit_reached`, the context's
//! `async_events`), never by a thread of ours: the descriptor is made non-blocking on the first
//! read, every event is acknowledged (`ibv_ack_async_event`) as soon as it is read, so no
//! destroy call waits for it, and counted by type; an SRQ limit event also raises its SRQ's
//! flag, which that SRQ's `limit_reached` takes, as the engine's SRQs do.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::context::ContextInner;
use super::ffi;
use crate::error::{errno, Error, Result};
use crate::sys::event::set_nonblocking;

/// What a context has read from its asynchronous event queue.
#[derive(Default)]
pub(super) struct AsyncEvents {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Set once `async_fd` is non-blocking.
    nonblocking: bool,
    /// The live SRQs, by their `ibv_srq` address (the `element` of their events).
    srqs: HashMap<usize, Arc<SrqEvents>>,
    /// Events read, by rdma-core's name of their type.
    counts: BTreeMap<&'static str, u64>,
}

/// One SRQ's pending limit event.
#[derive(Default)]
pub(super) struct SrqEvents {
    limit: AtomicBool,
}

impl SrqEvents {
    /// Whether a limit event arrived since the last call; clears it.
    pub(super) fn take_limit(&self) -> bool {
        self.limit.swap(false, Ordering::AcqRel)
    }
}

impl AsyncEvents {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever a panicking holder did (counters and a map).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Route the events of the SRQ at `srq` to the returned flags until [`forget_srq`].
    ///
    /// [`forget_srq`]: Self::forget_srq
    pub(super) fn watch_srq(&self, srq: *mut ffi::ibv_srq) -> Arc<SrqEvents> {
        let ev = Arc::new(SrqEvents::default());
        self.state().srqs.insert(srq as usize, ev.clone());
        ev
    }

    /// Stop routing events to `ev` (after its SRQ was destroyed; a new SRQ at the same address
    /// keeps its own entry).
    pub(super) fn forget_srq(&self, srq: *mut ffi::ibv_srq, ev: &Arc<SrqEvents>) {
        let mut st = self.state();
        if st
            .srqs
            .get(&(srq as usize))
            .is_some_and(|e| Arc::ptr_eq(e, ev))
        {
            st.srqs.remove(&(srq as usize));
        }
    }
}

impl ContextInner {
    /// Read every pending asynchronous event without blocking: acknowledge it, count it, and
    /// raise the limit flag of the SRQ an `SRQ_LIMIT_REACHED` is about.
    pub(super) fn read_async_events(&self) -> Result<()> {
        let mut st = self.events.state();
        // SAFETY: the context is open while `self` lives.
        let fd = unsafe { self.ptr.as_ref().async_fd };
        if !st.nonblocking {
            // SAFETY: the context keeps its async_fd open while `self` lives (until
            // ibv_close_device in Drop), and the borrow ends with this call.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            set_nonblocking(borrowed).map_err(|e| {
                e.with_fix(format!(
                    "{}'s async event descriptor stays blocking",
                    self.name
                ))
            })?;
            st.nonblocking = true;
        }
        loop {
            let mut ev = ffi::ibv_async_event::default();
            // SAFETY: an open context and a writable event; the descriptor is non-blocking.
            if unsafe { (self.v.get_async_event)(self.ptr.as_ptr(), &mut ev) } != 0 {
                let e = errno();
                if e == libc::EAGAIN || e == libc::EWOULDBLOCK {
                    return Ok(());
                }
                if e == libc::EINTR {
                    continue;
                }
                return Err(Error::os(
                    format!("ibv_get_async_event({})", self.name),
                    e,
                    "",
                ));
            }
            *st.counts.entry(ffi::event_name(ev.event_type)).or_default() += 1;
            if ev.event_type == ffi::EVENT_SRQ_LIMIT_REACHED {
                // SAFETY: for an SRQ event libibverbs sets the `srq` member; it is only used
                // as a key here, never dereferenced.
                let srq = unsafe { ev.element.srq } as usize;
                if let Some(s) = st.srqs.get(&srq) {
                    s.limit.store(true, Ordering::Release);
                }
            }
            // SAFETY: `ev` was filled by ibv_get_async_event and is acknowledged once, while
            // the object it names is alive (its destroy call waits for the acknowledgement).
            unsafe { (self.v.ack_async_event)(&mut ev) };
        }
    }

    /// The asynchronous events read so far, by type name, after reading the pending ones.
    pub(super) fn async_event_counts(&self) -> Result<BTreeMap<&'static str, u64>> {
        self.read_async_events()?;
        Ok(self.events.state().counts.clone())
    }
}
