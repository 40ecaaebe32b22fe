//! The head/tail protocol (DPDK rte_ring's, in C11 atomics).
//!
//! Indices are free-running u32 counters; a slot is `index & mask`. `tail - other.tail` is the
//! number of items (producer side) or `capacity - free` (consumer side) and stays below 2^31.
//!
//! *Multi* side (MP/MC): load `head`, Acquire-load the other side's `tail`, compute room, and
//! CAS `head` forward to claim `[old, old + n)`. Copy the slots. Then wait until our own side's
//! `tail == old` (earlier claimers have published, Acquire so their slot accesses happen before
//! ours is published), and Release-store `tail = old + n`. The other side sees our slots once
//! it Acquire-loads that tail.
//!
//! *Single* side (SP/SC): nobody else moves our head, so there is no CAS; the handle keeps its
//! head privately (the shared `head` field is unused, `tail` is published) and also caches the other side's tail and reloads it only when the cached value says
//! there is not enough room, which keeps the other side's cache line out of the fast path.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use super::layout::Side;
use super::raw::RawRing;

/// A single side's private view: its own head (== its tail, which only it writes) and the last
/// tail it saw of the other side.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cursor {
    pub head: u32,
    pub other: u32,
}

/// Bulk (all or nothing) or burst (as many as fit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Amount {
    Exactly,
    UpTo,
}

#[inline(always)]
fn fit(want: u32, room: u32, amount: Amount) -> u32 {
    if want <= room {
        want
    } else if amount == Amount::Exactly {
        0
    } else {
        room
    }
}

impl<T> RawRing<T> {
    /// Room for the producer: `capacity - (prod - cons_tail)`.
    #[inline(always)]
    fn room(&self, prod: u32, cons_tail: u32) -> u32 {
        self.capacity().wrapping_sub(prod.wrapping_sub(cons_tail))
    }

    /// MP: claim up to `n` slots for writing. Returns (first index, count).
    #[inline(always)]
    pub(crate) fn mp_claim(&self, n: u32, amount: Amount) -> (u32, u32) {
        let h = self.hdr();
        // Acquire: the cons.tail load below must not be satisfied before this head load.
        let mut old = h.prod.head.load(Acquire);
        loop {
            let cons_tail = h.cons.tail.load(Acquire);
            let m = fit(n, self.room(old, cons_tail), amount);
            if m == 0 {
                return (old, 0);
            }
            match h
                .prod
                .head
                .compare_exchange_weak(old, old.wrapping_add(m), Relaxed, Relaxed)
            {
                Ok(_) => return (old, m),
                Err(cur) => {
                    old = cur;
                    std::hint::spin_loop();
                }
            }
        }
    }

    /// MC: claim up to `n` published slots for reading. Returns (first index, count).
    #[inline(always)]
    pub(crate) fn mc_claim(&self, n: u32, amount: Amount) -> (u32, u32) {
        let h = self.hdr();
        let mut old = h.cons.head.load(Acquire);
        loop {
            let prod_tail = h.prod.tail.load(Acquire);
            let m = fit(n, prod_tail.wrapping_sub(old), amount);
            if m == 0 {
                return (old, 0);
            }
            match h
                .cons
                .head
                .compare_exchange_weak(old, old.wrapping_add(m), Relaxed, Relaxed)
            {
                Ok(_) => return (old, m),
                Err(cur) => {
                    old = cur;
                    std::hint::spin_loop();
                }
            }
        }
    }

    /// MP/MC: publish `[old, old + n)` once every earlier claim on this side is published.
    #[inline(always)]
    pub(crate) fn multi_publish(side: &Side, old: u32, n: u32) {
        let mut spins = 0u32;
        while side.tail.load(Acquire) != old {
            // An earlier claimer was preempted between its CAS and its publish: spin briefly,
            // then give it the CPU (matters when threads outnumber cores).
            spins += 1;
            if spins < 128 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        side.tail.store(old.wrapping_add(n), Release);
    }

    /// SP: how many of `n` slots are free from our head, refreshing the cached consumer tail if needed.
    #[inline(always)]
    pub(crate) fn sp_claim(&self, n: u32, amount: Amount, cur: &mut Cursor) -> (u32, u32) {
        let mut room = self.room(cur.head, cur.other);
        if room < n {
            cur.other = self.hdr().cons.tail.load(Acquire);
            room = self.room(cur.head, cur.other);
        }
        (cur.head, fit(n, room, amount))
    }

    /// SC: how many of `n` items are published beyond our head, refreshing the cached producer tail.
    #[inline(always)]
    pub(crate) fn sc_claim(&self, n: u32, amount: Amount, cur: &mut Cursor) -> (u32, u32) {
        let mut avail = cur.other.wrapping_sub(cur.head);
        if avail < n {
            cur.other = self.hdr().prod.tail.load(Acquire);
            avail = cur.other.wrapping_sub(cur.head);
        }
        (cur.head, fit(n, avail, amount))
    }

    /// SP/SC: publish `n` items (producer) or free `n` slots (consumer) from `head`.
    #[inline(always)]
    pub(crate) fn single_publish(side: &Side, cur: &mut Cursor, n: u32) {
        cur.head = cur.head.wrapping_add(n);
        side.tail.store(cur.head, Release);
    }

    /// Items in the ring now (a snapshot; exact when both sides are idle).
    pub(crate) fn count(&self) -> u32 {
        let h = self.hdr();
        let cons = h.cons.tail.load(Acquire);
        let prod = h.prod.tail.load(Acquire);
        prod.wrapping_sub(cons).min(self.capacity())
    }
}
