//! Producer and consumer handles: where items go in and out.

use std::mem::MaybeUninit;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Arc;
use std::time::Duration;

use super::layout::Side;
use super::ops::{Amount, Cursor};
use super::raw::RawRing;
use super::wait::Backoff;
use super::Ring;
use crate::error::{Error, Result};
use crate::sys::shm::{getpid, pid_alive};

/// Take the single `owner` slot of a side, or explain who holds it. A holder whose process is
/// gone (crashed) is replaced: single sides never leave a claimed-but-unpublished range behind,
/// because they move head and tail together at publish time.
fn claim(side: &Side, ring_mode: &str, what: &str) -> Result<()> {
    let me = getpid();
    loop {
        match side.owner.compare_exchange(0, me, Acquire, Acquire) {
            Ok(_) => return Ok(()),
            Err(holder) if holder != me && !pid_alive(holder) => {
                if side
                    .owner
                    .compare_exchange(holder, me, Acquire, Acquire)
                    .is_ok()
                {
                    return Ok(());
                }
            }
            Err(holder) => {
                let who = if holder == me {
                    "this process".to_string()
                } else {
                    format!("process {holder}")
                };
                return Err(Error::State(format!(
                    "this {ring_mode} ring allows one {what} at a time and {who} already holds it: \
                     close/drop that handle first, or create the ring with mode \"mpmc\" for several"
                )));
            }
        }
    }
}

/// Clamp a request to one ring's worth, or report that a bulk request can never fit.
#[inline(always)]
fn request(len: usize, capacity: u32, amount: Amount) -> Option<u32> {
    if len <= capacity as usize {
        Some(len as u32)
    } else if amount == Amount::UpTo {
        Some(capacity)
    } else {
        None
    }
}

/// The producer side of a [`Ring`]. `Send`, not `Sync`: one thread uses it at a time.
pub struct Producer<T: Copy> {
    raw: RawRing<T>,
    cur: Cursor,
    single: bool,
    ring: Arc<Ring<T>>,
}

impl<T: Copy> std::fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("ring", &self.ring)
            .field("single", &self.single)
            .finish()
    }
}

impl<T: Copy> Producer<T> {
    pub(super) fn new(ring: Arc<Ring<T>>) -> Result<Self> {
        let single = ring.mode().single_producer();
        if single {
            claim(&ring.raw().hdr().prod, ring.mode().as_str(), "producer")?;
        }
        let h = ring.raw().hdr();
        let cur = Cursor {
            head: h.prod.tail.load(Acquire),
            other: h.cons.tail.load(Acquire),
        };
        Ok(Producer {
            raw: ring.raw().alias(),
            cur,
            single,
            ring,
        })
    }

    /// The ring this handle feeds.
    pub fn ring(&self) -> &Arc<Ring<T>> {
        &self.ring
    }

    #[inline(always)]
    fn enqueue(&mut self, items: &[T], amount: Amount) -> usize {
        let raw = &self.raw;
        let Some(n) = request(items.len(), raw.capacity(), amount) else {
            raw.hdr().prod.short.fetch_add(1, Relaxed);
            return 0;
        };
        let (head, m) = if self.single {
            raw.sp_claim(n, amount, &mut self.cur)
        } else {
            raw.mp_claim(n, amount)
        };
        if (m as usize) < items.len() {
            raw.hdr().prod.short.fetch_add(1, Relaxed);
        }
        if m == 0 {
            return 0;
        }
        // SAFETY: the claim above gave this handle slots [head, head + m): on a single side by
        // the owner claim plus room computed from the consumer tail, on a multi side by the CAS.
        unsafe { raw.write(head, &items[..m as usize]) };
        if self.single {
            RawRing::<T>::single_publish(&raw.hdr().prod, &mut self.cur, m);
        } else {
            RawRing::<T>::multi_publish(&raw.hdr().prod, head, m);
        }
        m as usize
    }

    /// Enqueue all of `items` or none; returns `items.len()` or 0.
    #[inline]
    pub fn enqueue_bulk(&mut self, items: &[T]) -> usize {
        self.enqueue(items, Amount::Exactly)
    }

    /// Enqueue as many of `items` as fit (a prefix); returns how many.
    #[inline]
    pub fn enqueue_burst(&mut self, items: &[T]) -> usize {
        self.enqueue(items, Amount::UpTo)
    }

    /// Enqueue one item; `false` if the ring is full.
    #[inline]
    pub fn push(&mut self, item: T) -> bool {
        self.enqueue(std::slice::from_ref(&item), Amount::Exactly) == 1
    }

    /// Enqueue all of `items`, waiting (spin, then yield, then sleep) for room up to `timeout`
    /// (`None`: forever). `items.len()` must not exceed the capacity.
    pub fn enqueue_bulk_wait(&mut self, items: &[T], timeout: Option<Duration>) -> Result<()> {
        if items.len() > self.ring.capacity() {
            return Err(Error::invalid(format!(
                "cannot enqueue {} items at once into a ring of capacity {}: split the batch or use a larger ring",
                items.len(),
                self.ring.capacity()
            )));
        }
        let mut backoff = Backoff::new(timeout);
        while self.enqueue_bulk(items) == 0 && !items.is_empty() {
            backoff.snooze("enqueue: the ring stayed full")?;
        }
        Ok(())
    }

    /// Zero-copy: reserve exactly `n` free slots to write in place, or `None` if fewer are free.
    /// Single-producer rings only (panics otherwise: a multi-producer claim cannot be undone).
    #[inline]
    pub fn reserve(&mut self, n: usize) -> Option<WriteSlots<'_, T>> {
        let w = self.reserve_amount(n, Amount::Exactly);
        (w.len() == n && n > 0).then_some(w)
    }

    /// Zero-copy: reserve up to `max` free slots (possibly none). Single-producer rings only.
    #[inline]
    pub fn reserve_up_to(&mut self, max: usize) -> WriteSlots<'_, T> {
        self.reserve_amount(max, Amount::UpTo)
    }

    #[inline(always)]
    fn reserve_amount(&mut self, n: usize, amount: Amount) -> WriteSlots<'_, T> {
        assert!(
            self.single,
            "reserve/commit needs a single-producer ring (Mode::Spsc or Mode::Spmc)"
        );
        let raw = &self.raw;
        let (head, m) = match request(n, raw.capacity(), amount) {
            Some(n) => raw.sp_claim(n, amount, &mut self.cur),
            None => (0, 0),
        };
        if (m as usize) < n {
            raw.hdr().prod.short.fetch_add(1, Relaxed);
        }
        // SAFETY: this handle is the only producer (owner claim) and the consumer tail shows
        // [head, head + m) free; the slices borrow `self` mutably, so no other enqueue can run
        // until they are gone.
        let (first, second) = unsafe { raw.slots_mut(head, m as usize) };
        debug_assert_eq!(head, self.cur.head);
        WriteSlots {
            side: &raw.hdr().prod,
            cur: &mut self.cur,
            first,
            second,
        }
    }
}

impl<T: Copy> Drop for Producer<T> {
    fn drop(&mut self) {
        if self.single {
            self.ring.raw().hdr().prod.owner.store(0, Release);
        }
    }
}

/// Slots reserved by [`Producer::reserve`]: write them, then [`commit`](WriteSlots::commit).
/// Dropping without committing publishes nothing.
pub struct WriteSlots<'a, T: Copy> {
    side: &'a Side,
    cur: &'a mut Cursor,
    /// Slots up to the end of the ring.
    pub first: &'a mut [MaybeUninit<T>],
    /// Slots from the start of the ring, when the reservation wraps.
    pub second: &'a mut [MaybeUninit<T>],
}

impl<T: Copy> WriteSlots<'_, T> {
    /// Number of reserved slots.
    pub fn len(&self) -> usize {
        self.first.len() + self.second.len()
    }

    /// Whether nothing was reserved.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Write slot `i` (0-based within the reservation).
    #[inline]
    pub fn write(&mut self, i: usize, value: T) {
        if i < self.first.len() {
            self.first[i] = MaybeUninit::new(value);
        } else {
            self.second[i - self.first.len()] = MaybeUninit::new(value);
        }
    }

    /// Publish the first `n` reserved slots, which must all have been written.
    ///
    /// Panics if `n` exceeds the reservation.
    #[inline]
    pub fn commit(self, n: usize) {
        assert!(
            n <= self.len(),
            "commit({n}) exceeds the {} reserved slots",
            self.len()
        );
        RawRing::<T>::single_publish(self.side, self.cur, n as u32);
    }
}

/// The consumer side of a [`Ring`]. `Send`, not `Sync`: one thread uses it at a time.
pub struct Consumer<T: Copy> {
    raw: RawRing<T>,
    cur: Cursor,
    single: bool,
    ring: Arc<Ring<T>>,
}

impl<T: Copy> std::fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("ring", &self.ring)
            .field("single", &self.single)
            .finish()
    }
}

impl<T: Copy> Consumer<T> {
    pub(super) fn new(ring: Arc<Ring<T>>) -> Result<Self> {
        let single = ring.mode().single_consumer();
        if single {
            claim(&ring.raw().hdr().cons, ring.mode().as_str(), "consumer")?;
        }
        let h = ring.raw().hdr();
        let cur = Cursor {
            head: h.cons.tail.load(Acquire),
            other: h.prod.tail.load(Acquire),
        };
        Ok(Consumer {
            raw: ring.raw().alias(),
            cur,
            single,
            ring,
        })
    }

    /// The ring this handle drains.
    pub fn ring(&self) -> &Arc<Ring<T>> {
        &self.ring
    }

    #[inline(always)]
    fn claim(&mut self, n: usize, amount: Amount) -> (u32, u32) {
        let raw = &self.raw;
        let Some(k) = request(n, raw.capacity(), amount) else {
            raw.hdr().cons.short.fetch_add(1, Relaxed);
            return (0, 0);
        };
        let (head, m) = if self.single {
            raw.sc_claim(k, amount, &mut self.cur)
        } else {
            raw.mc_claim(k, amount)
        };
        if (m as usize) < n {
            raw.hdr().cons.short.fetch_add(1, Relaxed);
        }
        (head, m)
    }

    #[inline(always)]
    fn dequeue(&mut self, out: &mut [T], amount: Amount) -> usize {
        let (head, m) = self.claim(out.len(), amount);
        if m == 0 {
            return 0;
        }
        let raw = &self.raw;
        // SAFETY: the claim gave this handle the published slots [head, head + m).
        unsafe { raw.read(head, &mut out[..m as usize]) };
        if self.single {
            RawRing::<T>::single_publish(&raw.hdr().cons, &mut self.cur, m);
        } else {
            RawRing::<T>::multi_publish(&raw.hdr().cons, head, m);
        }
        m as usize
    }

    /// Fill all of `out` or take nothing; returns `out.len()` or 0.
    #[inline]
    pub fn dequeue_bulk(&mut self, out: &mut [T]) -> usize {
        self.dequeue(out, Amount::Exactly)
    }

    /// Take as many items as are there, up to `out.len()`; returns how many (a prefix of `out`).
    #[inline]
    pub fn dequeue_burst(&mut self, out: &mut [T]) -> usize {
        self.dequeue(out, Amount::UpTo)
    }

    /// Take one item, `None` if the ring is empty.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        let (head, m) = self.claim(1, Amount::Exactly);
        if m == 0 {
            return None;
        }
        let raw = &self.raw;
        // SAFETY: the claim gave this handle the published slot `head`.
        let (first, _) = unsafe { raw.slots(head, 1) };
        let item = first[0];
        if self.single {
            RawRing::<T>::single_publish(&raw.hdr().cons, &mut self.cur, 1);
        } else {
            RawRing::<T>::multi_publish(&raw.hdr().cons, head, 1);
        }
        Some(item)
    }

    /// Fill all of `out`, waiting for items up to `timeout` (`None`: forever).
    /// `out.len()` must not exceed the capacity.
    pub fn dequeue_bulk_wait(&mut self, out: &mut [T], timeout: Option<Duration>) -> Result<()> {
        if out.len() > self.ring.capacity() {
            return Err(Error::invalid(format!(
                "cannot dequeue {} items at once from a ring of capacity {}: ask for fewer",
                out.len(),
                self.ring.capacity()
            )));
        }
        let mut backoff = Backoff::new(timeout);
        while self.dequeue_bulk(out) == 0 && !out.is_empty() {
            backoff.snooze("dequeue: the ring stayed empty")?;
        }
        Ok(())
    }

    /// Take at least one item (up to `out.len()`), waiting up to `timeout` (`None`: forever).
    pub fn dequeue_burst_wait(
        &mut self,
        out: &mut [T],
        timeout: Option<Duration>,
    ) -> Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let mut backoff = Backoff::new(timeout);
        loop {
            let n = self.dequeue_burst(out);
            if n > 0 {
                return Ok(n);
            }
            backoff.snooze("dequeue: the ring stayed empty")?;
        }
    }

    /// Zero-copy: look at exactly `n` items in place, or `None` if fewer are there.
    /// Single-consumer rings only (panics otherwise).
    #[inline]
    pub fn peek(&mut self, n: usize) -> Option<ReadSlots<'_, T>> {
        let r = self.peek_amount(n, Amount::Exactly);
        (r.len() == n && n > 0).then_some(r)
    }

    /// Zero-copy: look at up to `max` items in place (possibly none). Single-consumer only.
    #[inline]
    pub fn peek_up_to(&mut self, max: usize) -> ReadSlots<'_, T> {
        self.peek_amount(max, Amount::UpTo)
    }

    #[inline(always)]
    fn peek_amount(&mut self, n: usize, amount: Amount) -> ReadSlots<'_, T> {
        assert!(
            self.single,
            "peek/release needs a single-consumer ring (Mode::Spsc or Mode::Mpsc)"
        );
        let (head, m) = self.claim(n, amount);
        // SAFETY: this handle is the only consumer (owner claim) and [head, head + m) is
        // published; the slices borrow `self` mutably, so no dequeue runs until they are gone,
        // and the producer cannot reuse the slots before `release` moves the tail.
        let (first, second) = unsafe { self.raw.slots(head, m as usize) };
        debug_assert_eq!(head, self.cur.head);
        ReadSlots {
            side: &self.raw.hdr().cons,
            cur: &mut self.cur,
            first,
            second,
        }
    }
}

impl<T: Copy> Drop for Consumer<T> {
    fn drop(&mut self) {
        if self.single {
            self.ring.raw().hdr().cons.owner.store(0, Release);
        }
    }
}

/// Items seen by [`Consumer::peek`]: read them, then [`release`](ReadSlots::release) the slots.
/// Dropping without releasing leaves them in the ring.
pub struct ReadSlots<'a, T: Copy> {
    side: &'a Side,
    cur: &'a mut Cursor,
    /// Items up to the end of the ring.
    pub first: &'a [T],
    /// Items from the start of the ring, when the range wraps.
    pub second: &'a [T],
}

impl<T: Copy> ReadSlots<'_, T> {
    /// Number of items.
    pub fn len(&self) -> usize {
        self.first.len() + self.second.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Item `i` (0-based).
    #[inline]
    pub fn get(&self, i: usize) -> T {
        if i < self.first.len() {
            self.first[i]
        } else {
            self.second[i - self.first.len()]
        }
    }

    /// Give the first `n` slots back to the producer. Panics if `n` exceeds what was peeked.
    #[inline]
    pub fn release(self, n: usize) {
        assert!(
            n <= self.len(),
            "release({n}) exceeds the {} peeked items",
            self.len()
        );
        RawRing::<T>::single_publish(self.side, self.cur, n as u32);
    }
}
