//! Holds: frames the application keeps beyond the call that gave them out.
//!
//! A received frame is the application's until it is released or sent, and usually that
//! happens in the same call (a worker's batch). Some uses outlive it: a KEEP verdict, an
//! `RxBatch` not yet released, a NumPy view of a frame that Python kept after its batch
//! ended. Each of those takes a [`FrameHold`]. While a frame has a hold it is in the `Held`
//! state, which no release, send or refill accepts, so neither the kernel nor a later batch
//! can get it, and whoever holds it sees bytes that never change under them. When the last
//! hold is dropped (on any thread, without a lock) the frame goes straight back to the pool,
//! from which the sockets refill their FILL rings.
//!
//! Holds are counted per frame. The first hold can only be taken by whoever owns the frame in
//! the `App` state (a worker during its batch, a socket call), further ones only from a live
//! hold (`Clone`) or while one is alive, so a hold never revives a frame already given back.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::umem::FrameState;
use crate::error::{Error, Result};
use crate::mem::Mempool;
use crate::packet::parse;
use crate::sys::xdp::XdpDesc;

/// Per-frame state and hold counts of one UMEM. Shared (through `Arc`) by the UMEM and by the
/// holds, which may outlive it: a hold keeps the frame memory mapped (through the pool) but not
/// the UMEM's socket, so closing a port is never delayed by a hold Python still has.
#[derive(Debug)]
pub(crate) struct FrameTable {
    pool: Arc<Mempool>,
    states: Box<[AtomicU8]>,
    holds: Box<[AtomicU32]>,
    frame_shift: u32,
    frame_size: u32,
    /// Frames whose last hold went (back to the pool), ever.
    returned: AtomicU64,
    /// Frames the pool refused when their last hold went (a bookkeeping bug; never expected).
    lost: AtomicU64,
}

impl FrameTable {
    pub(crate) fn new(pool: Arc<Mempool>, frame_size: u32) -> Self {
        let n = pool.count() as usize;
        FrameTable {
            states: (0..n)
                .map(|_| AtomicU8::new(FrameState::Free as u8))
                .collect(),
            holds: (0..n).map(|_| AtomicU32::new(0)).collect(),
            frame_shift: frame_size.trailing_zeros(),
            frame_size,
            returned: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            pool,
        }
    }

    #[inline]
    pub(crate) fn state(&self, idx: u32) -> FrameState {
        FrameState::from_u8(self.states[idx as usize].load(Ordering::Relaxed))
    }

    #[inline]
    pub(crate) fn set_state(&self, idx: u32, s: FrameState) {
        self.states[idx as usize].store(s as u8, Ordering::Relaxed);
    }

    /// See `Umem::transition`: the frame's single owner moves it, so load + store suffice.
    #[inline]
    pub(crate) fn transition(&self, idx: u32, from: FrameState, to: FrameState) -> bool {
        let Some(s) = self.states.get(idx as usize) else {
            return false;
        };
        if s.load(Ordering::Relaxed) != from as u8 {
            return false;
        }
        s.store(to as u8, Ordering::Relaxed);
        true
    }

    pub(crate) fn census(&self) -> [u32; 5] {
        let mut c = [0u32; 5];
        for s in self.states.iter() {
            c[FrameState::from_u8(s.load(Ordering::Relaxed)) as usize] += 1;
        }
        c
    }

    /// The first hold on frame `idx`, owned by the caller in the `App` state.
    pub(crate) fn hold_app(table: &Arc<Self>, idx: u32) -> Option<FrameHold> {
        if !table.transition(idx, FrameState::App, FrameState::Held) {
            return None;
        }
        table.holds[idx as usize].store(1, Ordering::Relaxed);
        Some(FrameHold {
            table: Arc::clone(table),
            frame: idx,
        })
    }

    /// One more hold on frame `idx` if a hold keeps it now.
    pub(crate) fn hold_again(table: &Arc<Self>, idx: u32) -> Option<FrameHold> {
        let c = table.holds.get(idx as usize)?;
        c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n > 0 && n < u32::MAX / 2).then_some(n + 1)
        })
        .ok()?;
        Some(FrameHold {
            table: Arc::clone(table),
            frame: idx,
        })
    }

    /// Frames whose last hold went back to the pool, ever.
    pub(crate) fn returned(&self) -> u64 {
        self.returned.load(Ordering::Relaxed)
    }

    /// Frames the pool refused on their way back (0 unless the bookkeeping has a bug).
    pub(crate) fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

/// One hold on one UMEM frame (see the [module docs](self)). Dropping the last hold of a frame
/// gives it back to the pool.
#[derive(Debug)]
pub struct FrameHold {
    table: Arc<FrameTable>,
    frame: u32,
}

impl FrameHold {
    /// The frame's index in the UMEM.
    #[inline]
    pub fn frame(&self) -> u32 {
        self.frame
    }

    /// The UMEM address of the frame's first byte.
    #[inline]
    pub fn addr(&self) -> u64 {
        (self.frame as u64) << self.table.frame_shift
    }

    /// Holds on this frame now (at least 1: this one).
    pub fn holders(&self) -> u32 {
        self.table.holds[self.frame as usize].load(Ordering::Relaxed)
    }

    /// Pointer to `len` bytes at UMEM address `addr`, if they lie inside this frame (for a
    /// NumPy view, which must keep the UMEM's memory mapped and this hold alive).
    pub fn ptr(&self, addr: u64, len: u32) -> Option<*mut u8> {
        let off = addr.checked_sub(self.addr())?;
        if off.checked_add(len as u64)? > self.table.frame_size as u64 {
            return None;
        }
        Some(self.table.pool.base().wrapping_add(addr as usize))
    }

    /// The `len` bytes at UMEM address `addr`, if they lie inside this frame (e.g. to parse the
    /// headers of a held frame without any lock).
    pub fn bytes(&self, addr: u64, len: u32) -> Option<&[u8]> {
        let p = self.ptr(addr, len)?;
        // SAFETY: `ptr` checked that the range lies inside this frame, inside the pool's
        // mapping, which `self.table.pool` keeps mapped for the borrow. The frame is `Held`
        // while `self` lives: the kernel, the rings and every Rust API that writes frames (the
        // engine's `BatchCtx::frame_mut` and `BatchFrames` edits, `app_ptr`, `alloc`, all of
        // which want the `App` or `Free` state) refuse it, so no Rust code writes it meanwhile.
        Some(unsafe { std::slice::from_raw_parts(p, len as usize) })
    }

    /// Give the frame back to the `App` state if this is its only hold (to send it); otherwise
    /// return the hold unchanged.
    pub(crate) fn into_app(mut self) -> Result<u32, FrameHold> {
        let c = &self.table.holds[self.frame as usize];
        if c.compare_exchange(1, 0, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(self);
        }
        let frame = self.frame;
        let ok = self
            .table
            .transition(frame, FrameState::Held, FrameState::App);
        debug_assert!(ok, "a held frame with one hold is in the Held state");
        // The count is already 0 and the frame is the caller's again: our Drop does nothing.
        self.frame = MOVED;
        Ok(frame)
    }
}

/// `FrameHold::frame` of a hold whose frame went back to the application (`into_app`).
const MOVED: u32 = u32::MAX;

impl Clone for FrameHold {
    fn clone(&self) -> Self {
        // `self` is a live hold, so the count is at least 1 and no one can give the frame back
        // while we add ours.
        let old = self.table.holds[self.frame as usize].fetch_add(1, Ordering::Relaxed);
        if old >= u32::MAX / 2 {
            // As `Arc` does: a count this high is a leak of holds, never a real use.
            std::process::abort();
        }
        FrameHold {
            table: Arc::clone(&self.table),
            frame: self.frame,
        }
    }
}

impl Drop for FrameHold {
    fn drop(&mut self) {
        if self.frame == MOVED {
            return;
        }
        let t = &self.table;
        if t.holds[self.frame as usize].fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        // Everything done under the other holds happens before the frame is reused.
        fence(Ordering::Acquire);
        if t.transition(self.frame, FrameState::Held, FrameState::Free)
            && t.pool.put_bulk(&[self.frame]).is_ok()
        {
            t.returned.fetch_add(1, Ordering::Relaxed);
        } else {
            t.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Frames the application holds as one group beyond the call that gave them out: a batch
/// received with [`super::XskSocket::recv_held`] and not yet released, the KEEP frames of a
/// worker's batch. One descriptor and one [`FrameHold`] per frame. Releasing drops the holds
/// (each frame goes back to the pool once nothing else holds it); so does dropping the value.
/// Every method takes `&self` and no lock but this value's own, so any thread may release.
#[derive(Debug)]
pub struct HeldFrames {
    descs: Vec<XdpDesc>,
    /// One hold per descriptor; None once released (or taken to be sent).
    holds: Mutex<Option<Vec<FrameHold>>>,
}

impl HeldFrames {
    /// Group held frames (descriptor, hold on the frame the descriptor is in).
    pub fn new(frames: Vec<(XdpDesc, FrameHold)>) -> Self {
        let (descs, holds) = frames.into_iter().unzip();
        HeldFrames {
            descs,
            holds: Mutex::new(Some(holds)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Vec<FrameHold>>> {
        // Dropping holds cannot leave the Vec half-changed: a poisoned lock is still valid.
        self.holds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Frames in the group.
    pub fn len(&self) -> usize {
        self.descs.len()
    }

    /// Whether the group is empty.
    pub fn is_empty(&self) -> bool {
        self.descs.is_empty()
    }

    /// The descriptors (UMEM address of packet data, length, options).
    pub fn descs(&self) -> &[XdpDesc] {
        &self.descs
    }

    /// Whether the holds were dropped (released or sent).
    pub fn released(&self) -> bool {
        self.lock().is_none()
    }

    /// Another hold on frame `i` (for a view of it), or None once released or out of range.
    pub fn hold(&self, i: usize) -> Option<FrameHold> {
        self.lock().as_ref()?.get(i).cloned()
    }

    /// Another hold on every frame, or None once released.
    pub fn holds(&self) -> Option<Vec<FrameHold>> {
        self.lock().clone()
    }

    /// Take the holds out (e.g. to give the frames straight back to a FILL ring); None once
    /// released.
    pub fn take(&self) -> Option<Vec<FrameHold>> {
        self.lock().take()
    }

    /// Drop the holds (idempotent); returns how many frames this released.
    pub fn release(&self) -> usize {
        self.take().map_or(0, |h| h.len())
    }

    /// Take the holds of the frames to send, each with its descriptor: every frame, or those
    /// where `mask` is true (the others are released). An error if `mask` does not have one
    /// entry per frame (nothing changes) or the frames were released.
    pub fn take_for_send(&self, mask: Option<&[bool]>) -> Result<Vec<(FrameHold, XdpDesc)>> {
        if mask.is_some_and(|m| m.len() != self.descs.len()) {
            return Err(Error::invalid("mask must have one entry per frame"));
        }
        let holds = self
            .take()
            .ok_or_else(|| Error::State("this batch was already released or sent".into()))?;
        Ok(holds
            .into_iter()
            .zip(self.descs.iter().copied())
            .enumerate()
            .filter(|(i, _)| mask.is_none_or(|m| m[*i]))
            .map(|(_, x)| x)
            .collect())
    }

    /// Parse every frame's headers into `out`, one 64-byte record per frame
    /// ([`crate::packet::PacketMeta::to_bytes`]; `out` holds at least `len()` of them), without copying the
    /// frames. None once released.
    pub fn headers(&self, out: &mut [u8]) -> Option<()> {
        let g = self.lock();
        let holds = g.as_ref()?;
        for ((d, h), rec) in self.descs.iter().zip(holds).zip(out.chunks_exact_mut(64)) {
            let m = h.bytes(d.addr, d.len).map(parse).unwrap_or_default();
            rec.copy_from_slice(&m.to_bytes());
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{HugePages, RegionOptions};

    /// A table over a small pool (no UMEM registration, no root), and `n` frames taken from
    /// the pool into the `App` state as a received batch would be.
    fn table_with_app_frames(n: usize) -> (Arc<FrameTable>, Vec<u32>) {
        let pool = Mempool::new(
            64,
            2048,
            &RegionOptions {
                hugepages: HugePages::Never,
                lock: false,
                ..Default::default()
            },
        )
        .unwrap();
        let mut got = vec![0u32; n];
        assert!(pool.get_bulk(&mut got));
        let t = Arc::new(FrameTable::new(pool, 2048));
        for &f in &got {
            t.set_state(f, FrameState::App);
        }
        (t, got)
    }

    #[test]
    fn first_hold_only_from_app_more_only_while_one_lives() {
        let (t, f) = table_with_app_frames(2);
        let h = FrameTable::hold_app(&t, f[0]).unwrap();
        assert_eq!(t.state(f[0]), FrameState::Held);
        assert!(FrameTable::hold_app(&t, f[0]).is_none(), "Held is not App");
        assert!(
            FrameTable::hold_again(&t, f[1]).is_none(),
            "nothing holds it"
        );
        assert!(FrameTable::hold_app(&t, 1_000).is_none(), "out of range");
        let h2 = FrameTable::hold_again(&t, f[0]).unwrap();
        let h3 = h2.clone();
        assert_eq!(h.holders(), 3);
        drop(h);
        drop(h2);
        assert_eq!(t.state(f[0]), FrameState::Held, "h3 still holds it");
        let before = t.pool.available();
        drop(h3);
        assert_eq!(t.state(f[0]), FrameState::Free);
        assert_eq!(t.pool.available(), before + 1, "back in the pool");
        assert_eq!((t.returned(), t.lost()), (1, 0));
        assert!(
            FrameTable::hold_again(&t, f[0]).is_none(),
            "no reviving a returned frame"
        );
    }

    #[test]
    fn into_app_only_for_the_only_hold() {
        let (t, f) = table_with_app_frames(1);
        let h = FrameTable::hold_app(&t, f[0]).unwrap();
        let other = h.clone();
        let h = h.into_app().unwrap_err();
        drop(other);
        assert_eq!(h.into_app().unwrap(), f[0]);
        assert_eq!(
            t.state(f[0]),
            FrameState::App,
            "the caller's again, not the pool's"
        );
        assert_eq!(t.returned(), 0);
    }

    #[test]
    fn bytes_stay_inside_the_frame() {
        let (t, f) = table_with_app_frames(1);
        let h = FrameTable::hold_app(&t, f[0]).unwrap();
        let a = h.addr();
        assert_eq!(h.bytes(a + 256, 100).unwrap().len(), 100);
        assert!(h.bytes(a + 2000, 100).is_none());
        assert!(h.bytes(a + 2048, 1).is_none(), "the next frame is not ours");
        assert!(h.bytes(a.wrapping_sub(1), 1).is_none());
    }

    #[test]
    fn holds_dropped_on_many_threads_return_each_frame_exactly_once() {
        let (t, frames) = table_with_app_frames(32);
        let before = t.pool.available();
        for _ in 0..50 {
            let holds: Vec<FrameHold> = frames
                .iter()
                .map(|&f| FrameTable::hold_app(&t, f).unwrap())
                .collect();
            std::thread::scope(|s| {
                for k in 0..8 {
                    let mine: Vec<FrameHold> = holds.to_vec();
                    s.spawn(move || {
                        for (i, h) in mine.into_iter().enumerate() {
                            if (i + k) % 3 == 0 {
                                let again = h.clone();
                                drop(h);
                                drop(again);
                            }
                        }
                    });
                }
                drop(holds);
            });
            assert!(frames.iter().all(|&f| t.state(f) == FrameState::Free));
            assert_eq!(t.pool.available(), before + 32);
            // Everything free, taken out: each of our frames is there exactly once.
            let mut all = vec![0u32; before + 32];
            assert!(t.pool.get_bulk(&mut all));
            for f in &frames {
                assert_eq!(all.iter().filter(|&&x| x == *f).count(), 1, "frame {f}");
            }
            let others: Vec<u32> = all.into_iter().filter(|x| !frames.contains(x)).collect();
            t.pool.put_bulk(&others).unwrap();
            for &f in &frames {
                t.set_state(f, FrameState::App);
            }
        }
        assert_eq!((t.returned(), t.lost()), (50 * 32, 0));
    }
}
