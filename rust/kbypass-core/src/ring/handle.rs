//! Producer and consumer handles: where items go in and out.

use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::sync::Arc;
use std::time::Duration;

use super::layout::Side;
use super::protocol::{self, Amount, Claim, Cursor, Peers, SideRef};
use super::raw::RawRing;
use super::wait::Backoff;
use super::{Pod, Ring};
use crate::error::{Error, Result};

/// Take the single `owner` slot of a side, or explain who holds it. A holder that is gone (its
/// process died: its participant lock was released) is replaced: single sides never leave a
/// claimed-but-unpublished range behind, because they move their position and tail together
/// at publish time.
fn take_single<T: Pod>(ring: &Ring<T>, side: &Side, what: &str) -> Result<()> {
    let peers = ring.peers();
    let me = peers.token();
    loop {
        match side.owner.compare_exchange(0, me, AcqRel, Acquire) {
            Ok(_) => return Ok(()),
            Err(holder) if holder != me && peers.dead(holder) => {
                peers.fence();
                if side
                    .owner
                    .compare_exchange(holder, me, AcqRel, Acquire)
                    .is_ok()
                {
                    return Ok(());
                }
            }
            Err(holder) => {
                let who = if holder == me {
                    "another handle of this Ring object".to_string()
                } else {
                    peers.describe(holder)
                };
                return Err(Error::State(format!(
                    "this {} ring allows one {what} at a time and {who} already holds it: \
                     close/drop that handle first, or create the ring with mode \"mpmc\" for several",
                    ring.mode().as_str()
                )));
            }
        }
    }
}

/// Give the single `owner` slot back (unless this value was inherited by a forked child: the
/// slot belongs to the parent).
fn drop_single<T: Pod>(ring: &Ring<T>, side: &Side) {
    if ring.check().is_ok() {
        let _ = side
            .owner
            .compare_exchange(ring.peers().token(), 0, AcqRel, Relaxed);
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
///
/// Every operation panics if the handle was inherited across `fork()` (attach by name in the
/// child instead; [`Ring::check`] tells before you call).
pub struct Producer<T: Pod> {
    raw: RawRing<T>,
    cur: Cursor,
    single: bool,
    ring: Arc<Ring<T>>,
}

impl<T: Pod> std::fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("ring", &self.ring)
            .field("single", &self.single)
            .finish()
    }
}

impl<T: Pod> Producer<T> {
    pub(super) fn new(ring: Arc<Ring<T>>) -> Result<Self> {
        ring.check()?;
        let single = ring.mode().single_producer();
        if single {
            take_single(&ring, &ring.raw().hdr().prod, "producer")?;
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

    /// Claim up to `n` slots: (first index, count); a count of 0 claims nothing.
    #[inline(always)]
    fn claim(&mut self, n: u32, amount: Amount) -> (u32, u32) {
        self.ring.assert_usable();
        let raw = &self.raw;
        let h = raw.hdr();
        if self.single {
            protocol::sp_claim(&h.cons.tail, raw.capacity(), n, amount, &mut self.cur)
        } else {
            match protocol::multi_claim(
                &SideRef::of(&h.prod),
                &h.cons.tail,
                raw.capacity(),
                n,
                amount,
                true,
                &self.ring.peers(),
            ) {
                Claim::Got { start, n } => (start, n),
                Claim::Short | Claim::Busy => (0, 0),
            }
        }
    }

    /// Publish the first `k` slots of a claim that began at `start`.
    #[inline(always)]
    fn publish(&mut self, start: u32, k: u32) {
        let h = self.raw.hdr();
        if self.single {
            protocol::single_publish(&h.prod.tail, &mut self.cur, k);
        } else {
            protocol::multi_publish(&SideRef::of(&h.prod), start, k);
        }
    }

    #[inline(always)]
    fn enqueue(&mut self, items: &[T], amount: Amount) -> usize {
        let Some(n) = request(items.len(), self.raw.capacity(), amount) else {
            self.raw.hdr().prod.short.fetch_add(1, Relaxed);
            return 0;
        };
        let (start, m) = self.claim(n, amount);
        if (m as usize) < items.len() {
            self.raw.hdr().prod.short.fetch_add(1, Relaxed);
        }
        if m == 0 {
            return 0;
        }
        // SAFETY: the claim gave this handle slots [start, start + m): on a single side by the
        // owner claim plus room computed from the consumer tail, on a multi side by the CAS of
        // the claim word; m <= items.len() <= capacity.
        unsafe { self.raw.write(start, &items[..m as usize]) };
        self.publish(start, m);
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

    /// Enqueue one item; `false` if the ring is full (or, on a shared multi-producer ring,
    /// another process's enqueue stayed in flight: counted as `busy`).
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

    /// Zero-copy: reserve exactly `n` free slots to fill in place, or `None` if fewer are free.
    ///
    /// On a multi-producer ring the reservation is the side's one claim in flight: other
    /// producers wait until it is committed or dropped, so fill it and commit promptly.
    #[inline]
    pub fn reserve(&mut self, n: usize) -> Option<WriteSlots<'_, T>> {
        let w = self.reserve_amount(n, Amount::Exactly);
        (w.len() == n && n > 0).then_some(w)
    }

    /// Zero-copy: reserve up to `max` free slots (possibly none).
    #[inline]
    pub fn reserve_up_to(&mut self, max: usize) -> WriteSlots<'_, T> {
        self.reserve_amount(max, Amount::UpTo)
    }

    #[inline(always)]
    fn reserve_amount(&mut self, n: usize, amount: Amount) -> WriteSlots<'_, T> {
        let (start, m) = match request(n, self.raw.capacity(), amount) {
            Some(k) => self.claim(k, amount),
            None => (0, 0),
        };
        if (m as usize) < n {
            self.raw.hdr().prod.short.fetch_add(1, Relaxed);
        }
        WriteSlots {
            producer: self,
            start,
            len: m,
            written: 0,
        }
    }
}

impl<T: Pod> Drop for Producer<T> {
    fn drop(&mut self) {
        if self.single {
            drop_single(&self.ring, &self.ring.raw().hdr().prod);
        }
    }
}

/// Slots reserved by [`Producer::reserve`]: fill them in order with [`push`](WriteSlots::push)
/// or [`extend_from_slice`](WriteSlots::extend_from_slice), then [`commit`](WriteSlots::commit),
/// which publishes exactly the slots written (never one that was not). Dropping without
/// committing publishes nothing and gives the reservation back.
pub struct WriteSlots<'a, T: Pod> {
    producer: &'a mut Producer<T>,
    start: u32,
    len: u32,
    written: u32,
}

impl<T: Pod> std::fmt::Debug for WriteSlots<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteSlots")
            .field("len", &self.len)
            .field("written", &self.written)
            .finish()
    }
}

impl<T: Pod> WriteSlots<'_, T> {
    /// Number of reserved slots.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether nothing was reserved.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots written so far (what [`commit`](WriteSlots::commit) will publish).
    pub fn written(&self) -> usize {
        self.written as usize
    }

    /// Write the next slot; `false` (and nothing written) when all reserved slots are written.
    #[inline]
    pub fn push(&mut self, value: T) -> bool {
        self.extend_from_slice(std::slice::from_ref(&value)) == 1
    }

    /// Write the next slots from `values`; returns how many fit (a prefix of `values`).
    #[inline]
    pub fn extend_from_slice(&mut self, values: &[T]) -> usize {
        let k = values.len().min((self.len - self.written) as usize);
        // SAFETY: [start, start + len) was claimed by this reservation (see `Producer::claim`)
        // and [written, written + k) lies inside it.
        unsafe {
            self.producer
                .raw
                .write(self.start.wrapping_add(self.written), &values[..k])
        };
        self.written += k as u32;
        k
    }

    /// Publish the slots written; returns how many.
    #[inline]
    pub fn commit(mut self) -> usize {
        let k = self.written;
        self.finish(k);
        k as usize
    }

    fn finish(&mut self, k: u32) {
        if self.len > 0 {
            self.producer.publish(self.start, k);
            self.len = 0;
        }
    }
}

impl<T: Pod> Drop for WriteSlots<'_, T> {
    fn drop(&mut self) {
        // An uncommitted reservation publishes nothing; on a multi side its claim is released.
        self.finish(0);
    }
}

/// The consumer side of a [`Ring`]. `Send`, not `Sync`: one thread uses it at a time.
///
/// Every operation panics if the handle was inherited across `fork()` (attach by name in the
/// child instead; [`Ring::check`] tells before you call).
pub struct Consumer<T: Pod> {
    raw: RawRing<T>,
    cur: Cursor,
    single: bool,
    ring: Arc<Ring<T>>,
}

impl<T: Pod> std::fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("ring", &self.ring)
            .field("single", &self.single)
            .finish()
    }
}

impl<T: Pod> Consumer<T> {
    pub(super) fn new(ring: Arc<Ring<T>>) -> Result<Self> {
        ring.check()?;
        let single = ring.mode().single_consumer();
        if single {
            take_single(&ring, &ring.raw().hdr().cons, "consumer")?;
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

    /// Claim up to `n` items, counting a short claim: (first index, count).
    #[inline(always)]
    fn claim(&mut self, n: usize, amount: Amount) -> (u32, u32) {
        self.ring.assert_usable();
        let raw = &self.raw;
        let h = raw.hdr();
        let Some(k) = request(n, raw.capacity(), amount) else {
            h.cons.short.fetch_add(1, Relaxed);
            return (0, 0);
        };
        let (start, m) = if self.single {
            protocol::sc_claim(&h.prod.tail, raw.capacity(), k, amount, &mut self.cur)
        } else {
            match protocol::multi_claim(
                &SideRef::of(&h.cons),
                &h.prod.tail,
                raw.capacity(),
                k,
                amount,
                false,
                &self.ring.peers(),
            ) {
                Claim::Got { start, n } => (start, n),
                Claim::Short | Claim::Busy => (0, 0),
            }
        };
        if (m as usize) < n {
            h.cons.short.fetch_add(1, Relaxed);
        }
        (start, m)
    }

    /// Release the first `k` items of a claim that began at `start` to the producers.
    #[inline(always)]
    fn publish(&mut self, start: u32, k: u32) {
        let h = self.raw.hdr();
        if self.single {
            protocol::single_publish(&h.cons.tail, &mut self.cur, k);
        } else {
            protocol::multi_publish(&SideRef::of(&h.cons), start, k);
        }
    }

    #[inline(always)]
    fn dequeue(&mut self, out: &mut [T], amount: Amount) -> usize {
        let (start, m) = self.claim(out.len(), amount);
        if m == 0 {
            return 0;
        }
        // SAFETY: the claim gave this handle the published slots [start, start + m).
        unsafe { self.raw.read(start, &mut out[..m as usize]) };
        self.publish(start, m);
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

    /// Take one item, `None` if the ring is empty (or, on a shared multi-consumer ring, another
    /// process's dequeue stayed in flight: counted as `busy`).
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        let (start, m) = self.claim(1, Amount::Exactly);
        if m == 0 {
            return None;
        }
        // SAFETY: the claim gave this handle the published slot `start`.
        let item = unsafe { self.raw.read_one(start) };
        self.publish(start, 1);
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
    ///
    /// On a multi-consumer ring the items are the side's one claim in flight: other consumers
    /// wait until they are released or the view is dropped, so release promptly.
    #[inline]
    pub fn peek(&mut self, n: usize) -> Option<ReadSlots<'_, T>> {
        let r = self.peek_amount(n, Amount::Exactly);
        (r.len() == n && n > 0).then_some(r)
    }

    /// Zero-copy: look at up to `max` items in place (possibly none).
    #[inline]
    pub fn peek_up_to(&mut self, max: usize) -> ReadSlots<'_, T> {
        self.peek_amount(max, Amount::UpTo)
    }

    #[inline(always)]
    fn peek_amount(&mut self, n: usize, amount: Amount) -> ReadSlots<'_, T> {
        let (start, m) = self.claim(n, amount);
        ReadSlots {
            consumer: self,
            start,
            len: m,
        }
    }
}

impl<T: Pod> Drop for Consumer<T> {
    fn drop(&mut self) {
        if self.single {
            drop_single(&self.ring, &self.ring.raw().hdr().cons);
        }
    }
}

/// Items seen by [`Consumer::peek`]: read them, then [`release`](ReadSlots::release) some or all
/// of them to the producers. Dropping without releasing leaves them all in the ring.
pub struct ReadSlots<'a, T: Pod> {
    consumer: &'a mut Consumer<T>,
    start: u32,
    len: u32,
}

impl<T: Pod> std::fmt::Debug for ReadSlots<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadSlots").field("len", &self.len).finish()
    }
}

impl<T: Pod> ReadSlots<'_, T> {
    /// Number of items.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The items in place, as the part up to the end of the ring and the part from its start.
    #[inline]
    pub fn as_slices(&self) -> (&[T], &[T]) {
        // SAFETY: [start, start + len) was claimed by this view (see `Consumer::claim`) and holds
        // published items; no producer writes them until `release` moves the consumer tail past
        // them, and the slices borrow `self`.
        unsafe { self.consumer.raw.slots(self.start, self.len as usize) }
    }

    /// Item `i` (0-based). Panics if `i >= len()`.
    #[inline]
    pub fn get(&self, i: usize) -> T {
        let (a, b) = self.as_slices();
        if i < a.len() {
            a[i]
        } else {
            b[i - a.len()]
        }
    }

    /// Give the first `n` items back to the producers (the rest stay in the ring). Panics if `n`
    /// exceeds what was peeked.
    #[inline]
    pub fn release(mut self, n: usize) {
        assert!(
            n <= self.len(),
            "release({n}) exceeds the {} peeked items",
            self.len()
        );
        self.finish(n as u32);
    }

    fn finish(&mut self, k: u32) {
        if self.len > 0 {
            self.consumer.publish(self.start, k);
            self.len = 0;
        }
    }
}

impl<T: Pod> Drop for ReadSlots<'_, T> {
    fn drop(&mut self) {
        self.finish(0);
    }
}
