//! Poll-mode workers: receive a burst, parse it into [`crate::packet::PacketMeta`] columns, hand it to a
//! [`BatchHandler`], apply the verdicts.
//!
//! Each worker is a thread that owns one or more [`crate::xsk::XskSocket`]s (taken from an `XskPort`) and
//! loops: reap TX completions, receive up to `batch` descriptors, parse every frame (bounds-
//! checked, see [`crate::packet::parse`]), pre-fill the verdicts with the default, call the
//! handler once, then apply the verdicts: DROP returns the frame to the FILL ring at once, TX
//! sends it out of the socket it came from, FORWARD out of another socket of the port
//! (zero-copy: the sockets share the UMEM, so only the descriptor moves; a socket of another
//! worker gets it through that worker's inbox, see `handoff`), KEEP leaves it with
//! the application, held by a [`crate::xsk::FrameHold`] the handler took with
//! [`BatchCtx::keep`], until the last hold is dropped. A frame whose Python view outlived the
//! handler is held the same way ([`BatchCtx::hold_view`]), so nothing the application can still
//! see is ever recycled under it. Nothing on this path allocates or locks: the scratch vectors
//! are sized once when the worker starts, counters are per-worker atomics, and a batch where
//! nothing was held costs one branch per frame more than before.
//!
//! When a round over its sockets finds nothing, a worker waits as its [`Latency`] says: poll on
//! for a bounded time, then sleep until a packet or a stop wakes it (the default), never sleep,
//! or the fixed sleeps of before (see `idle.rs`).
//!
//! On stop a worker reaps its outstanding TX completions (bounded wait) and returns its
//! sockets, so the port can check the frame accounting and detach.
//!
//! A [`Pipeline`] is the workers of one port and their whole life cycle: the configuration
//! checked once ([`PipelineConfig::validate`], worker groups and CPUs against the port),
//! sockets taken from the port and put back, start / stop / join, the queue of kept frames.
//! [`BatchFrames`] lends a batch's frames to code that cannot borrow the [`BatchCtx`] (a
//! binding's batch object, called back from inside the handler) for edits by descriptor and
//! mask.

mod build;
mod ctx;
mod frames;
mod handoff;
mod idle;
mod kept;
mod pipeline;
mod stats;
mod worker;

pub use frames::{BatchFrames, Columns, Lent, NewLen, PacketVerdict, Pick};
pub use idle::{Latency, MAX_SPIN};
pub use kept::{Kept, KeptQueue};
pub use pipeline::{Cpus, Pipeline, PipelineConfig, Workers, DEFAULT_SPIN};
pub use worker::{
    batch_capacity, BatchCtx, BatchHandler, HandlerError, OnError, WorkerStats,
    WorkerStatsSnapshot, BATCH_HISTOGRAM_BOUNDS,
};

#[cfg(test)]
mod build_tests;
#[cfg(test)]
mod mb_tests;
#[cfg(test)]
mod tests;

/// Verdict: give the frame back to the FILL ring.
pub const DROP: u8 = 0;
/// Verdict: send the frame (as edited) out of the socket it arrived on.
pub const TX: u8 = 1;
/// Verdict: send the frame out of the socket named in `forward_to`.
pub const FORWARD: u8 = 2;
/// Verdict: the application keeps the frame until it releases it (the handler takes it with
/// [`BatchCtx::keep`] or [`BatchCtx::keep_verdicts`]; a KEEP frame nobody took is counted as
/// a bad verdict and dropped).
pub const KEEP: u8 = 3;

/// Whether `v` is a verdict value.
#[inline]
pub fn valid_verdict(v: u8) -> bool {
    v <= KEEP
}

/// The packet bytes of a frame the application has for the current call (state `App`).
///
/// None when `addr..addr+len` is not inside one frame or the frame is not in the application
/// state (so a stale or forged descriptor never reaches memory the kernel owns or a frame
/// someone holds).
///
/// # Safety
/// No `&mut` to the same bytes may exist while the returned slice lives, and nothing outside
/// Rust (a view handed out) may write them meanwhile. The frame state proves the kernel and the
/// rings do not use the frame; only the caller can prove the rest ([`BatchCtx`] by `&self` /
/// `&mut self`, [`BatchFrames`] by its mutex).
unsafe fn frame_bytes(umem: &crate::xsk::Umem, addr: u64, len: u32) -> Option<&[u8]> {
    let p = app_ptr(umem, addr, len)?;
    // SAFETY: `app_ptr` checked that `len` bytes at `addr` lie inside one frame of the UMEM
    // mapping (which `umem` keeps mapped for the borrow) and that the frame is the
    // application's; the caller guarantees no writer meanwhile.
    Some(unsafe { std::slice::from_raw_parts(p, len as usize) })
}

/// As [`frame_bytes`], to write.
///
/// # Safety
/// No other reference to the same bytes may exist while the returned slice lives, and nothing
/// outside Rust may read or write them meanwhile (see [`frame_bytes`]).
// The UMEM is memory shared with the kernel, reached through `&Umem` by design; exclusivity is
// the caller's contract above.
#[allow(clippy::mut_from_ref)]
unsafe fn frame_bytes_mut(umem: &crate::xsk::Umem, addr: u64, len: u32) -> Option<&mut [u8]> {
    let p = app_ptr(umem, addr, len)?;
    // SAFETY: as in `frame_bytes`, and the caller guarantees this is the only reference.
    Some(unsafe { std::slice::from_raw_parts_mut(p, len as usize) })
}

fn app_ptr(umem: &crate::xsk::Umem, addr: u64, len: u32) -> Option<*mut u8> {
    let f = umem.frame_of(addr)?;
    if umem.state(f) != crate::xsk::FrameState::App {
        return None;
    }
    umem.ptr(addr, len)
}
