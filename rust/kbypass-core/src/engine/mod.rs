//! Poll-mode workers: receive a burst, parse it into [`crate::packet::PacketMeta`] columns, hand it to a
//! [`BatchHandler`], apply the verdicts.
//!
//! Each worker is a thread that owns one or more [`crate::xsk::XskSocket`]s (taken from an `XskPort`) and
//! loops: reap TX completions, receive up to `batch` descriptors, parse every frame (bounds-
//! checked, see [`crate::packet::parse`]), pre-fill the verdicts with the default, call the
//! handler once, then apply the verdicts: DROP returns the frame to the FILL ring at once, TX
//! sends it out of the socket it came from, FORWARD out of another socket of the same worker
//! (zero-copy: the sockets share the UMEM, so only the descriptor moves), KEEP leaves it with
//! the application, held by a [`crate::xsk::FrameHold`] the handler took with
//! [`BatchCtx::keep`], until the last hold is dropped. A frame whose Python view outlived the
//! handler is held the same way ([`BatchCtx::hold_view`]), so nothing the application can still
//! see is ever recycled under it. Nothing on this path allocates or locks: the scratch vectors
//! are sized once when the worker starts, counters are per-worker atomics, and a batch where
//! nothing was held costs one branch per frame more than before.
//!
//! On stop a worker reaps its outstanding TX completions (bounded wait) and returns its
//! sockets, so the port can check the frame accounting and detach.

mod worker;

pub use worker::{
    spawn, BatchCtx, BatchHandler, HandlerError, OnError, WorkerConfig, WorkerExit, WorkerStats,
    WorkerStatsSnapshot, BATCH_HISTOGRAM_BOUNDS,
};

#[cfg(test)]
mod tests;

/// Verdict: give the frame back to the FILL ring.
pub const DROP: u8 = 0;
/// Verdict: send the frame (as edited) out of the socket it arrived on.
pub const TX: u8 = 1;
/// Verdict: send the frame out of the socket named in `forward_to`.
pub const FORWARD: u8 = 2;
/// Verdict: the application keeps the frame until it releases it (the handler takes it with
/// [`BatchCtx::keep`]; a KEEP frame nobody took is counted as a bad verdict and dropped).
pub const KEEP: u8 = 3;

/// Whether `v` is a verdict value.
#[inline]
pub fn valid_verdict(v: u8) -> bool {
    v <= KEEP
}

/// A mutable view of the packet bytes of a frame the application holds.
///
/// Returns None when `addr..addr+len` is not inside one frame or the frame is not held by the
/// application (so a stale or forged descriptor can never reach memory the kernel owns).
///
/// # Safety
/// The caller must not hold another reference to the same frame bytes while the returned
/// slice lives (the frame state proves the kernel is not using it; only the caller can prove
/// no other view of it is alive). The worker and the binding use it for one frame at a time.
// The UMEM is memory shared with the kernel, reached through `&Umem` by design; exclusivity is
// the caller's contract above.
#[allow(clippy::mut_from_ref)]
pub unsafe fn frame_mut(umem: &crate::xsk::Umem, addr: u64, len: u32) -> Option<&mut [u8]> {
    let f = umem.frame_of(addr)?;
    if umem.state(f) != crate::xsk::FrameState::App {
        return None;
    }
    let p = umem.ptr(addr, len)?;
    // SAFETY: `ptr` checked that `len` bytes at `addr` lie inside one frame of the UMEM mapping
    // (which `umem` keeps mapped for the returned borrow); the frame is in the application
    // state, so neither the kernel nor a ring references it, and the worker that received it
    // is the only code holding its descriptor while the handler runs.
    Some(unsafe { std::slice::from_raw_parts_mut(p, len as usize) })
}
