//! The claim protocol: how a handle gets slots to write (producer) or items to read (consumer),
//! and how a claim left behind by a dead process is resolved.
//!
//! Indices are free-running u32 counters; a slot is `index & mask`. Each side has a `tail` (up
//! to where it has finished; the other side Acquire-loads it) and, on a *multi* side, a 64-bit
//! claim word `head = pos | token << 32`.
//!
//! **Multi sides** (MP/MC) follow DPDK's HTS mode ("head/tail sync"): one claim in flight per
//! side at a time. Idle, the word is `(tail, 0)`. A claimant Acquire-loads the word; if it is
//! idle it Acquire-loads the other side's tail, computes room (or items) and CASes the word to
//! `(pos + n, token)`: it now owns `[pos, pos + n)`. It copies, then Release-stores
//! `tail = pos + k` (k ≤ n: a zero-copy claim may finish fewer) and then Release-stores the word
//! back to `(pos + k, 0)`. Because at most one claim is in flight and the token in the word
//! names its owner, a claim whose owner died is *known*: it is `[tail, pos)` with the dead token.
//! Any participant that sees a token for long enough asks whether its owner is alive (see
//! `Peers`); if not, it CASes the word from exactly the value it saw to `(tail, 0)`: whatever
//! the dead claimant published stays published (its tail store is one atomic store), and the
//! rest of its claim is given back — a producer's unpublished slots are free again, a
//! consumer's unreleased items stay in the ring for the others. Nothing the dead owner did can
//! race with that CAS: it is dead, and while the word holds its token no one else moves this
//! side's tail. Tokens carry a generation, so a new registrant reusing the dead one's entry
//! cannot make the CAS succeed against a newer claim (no ABA). Items from live producers are
//! therefore delivered exactly once, whatever happens to the others.
//!
//! A *live* claimant that is slow (preempted, stopped) delays the others on its side only:
//! private rings wait for it (it is a thread of this process and will run), shared rings give
//! up after `PATIENCE` (200 µs) and report `Busy`, so no call waits unboundedly.
//!
//! **Single sides** (SP/SC) have one handle: it keeps its position privately and caches the
//! other side's tail, refreshing it only when the cache says there is not enough room.
//!
//! The multi-side functions are generic over the atomics (`Word32`/`Word64`) and the liveness
//! oracle (`Peers`), so the loom model in `loom_tests.rs` checks this very code.

use std::sync::atomic::Ordering::{self, AcqRel, Acquire, Relaxed, Release};

/// A 32-bit atomic word (std's, or the model checker's).
pub(crate) trait Word32: Sync {
    fn load(&self, order: Ordering) -> u32;
    fn store(&self, value: u32, order: Ordering);
}

/// A 64-bit atomic word (std's, or the model checker's).
pub(crate) trait Word64: Sync {
    fn load(&self, order: Ordering) -> u64;
    fn store(&self, value: u64, order: Ordering);
    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64>;
    fn fetch_add(&self, value: u64, order: Ordering) -> u64;
}

impl Word32 for std::sync::atomic::AtomicU32 {
    #[inline(always)]
    fn load(&self, order: Ordering) -> u32 {
        self.load(order)
    }
    #[inline(always)]
    fn store(&self, value: u32, order: Ordering) {
        self.store(value, order)
    }
}

impl Word64 for std::sync::atomic::AtomicU64 {
    #[inline(always)]
    fn load(&self, order: Ordering) -> u64 {
        self.load(order)
    }
    #[inline(always)]
    fn store(&self, value: u64, order: Ordering) {
        self.store(value, order)
    }
    #[inline(always)]
    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64> {
        self.compare_exchange(current, new, success, failure)
    }
    #[inline(always)]
    fn fetch_add(&self, value: u64, order: Ordering) -> u64 {
        self.fetch_add(value, order)
    }
}

/// The words of one multi side the protocol touches.
pub(crate) struct SideRef<'a, W32, W64> {
    pub head: &'a W64,
    pub tail: &'a W32,
    pub busy: &'a W64,
    pub recovered: &'a W64,
    pub rolled_back: &'a W64,
}

impl<'a> SideRef<'a, std::sync::atomic::AtomicU32, std::sync::atomic::AtomicU64> {
    /// The protocol's view of a side of the ring header.
    #[inline(always)]
    pub(crate) fn of(side: &'a super::layout::Side) -> Self {
        SideRef {
            head: &side.head,
            tail: &side.tail,
            busy: &side.busy,
            recovered: &side.recovered,
            rolled_back: &side.rolled_back,
        }
    }
}

/// Who takes part in a ring, and how to wait for them.
pub(crate) trait Peers {
    /// This participant's token (never 0).
    fn token(&self) -> u32;
    /// Whether the participant that holds `token` is gone, so that its claim may be resolved by
    /// others. Never asked about [`Peers::token`].
    fn dead(&self, token: u32) -> bool;
    /// Whether a live participant's claim may be waited for without bound (private rings: the
    /// claimant is a thread of this process and will run). Otherwise a claim gives up after
    /// [`PATIENCE`] with [`Claim::Busy`] (and at least one liveness check).
    fn patient(&self) -> bool;
    /// Ask [`Peers::dead`] every this many waiting rounds.
    fn check_every(&self) -> u32 {
        SPINS
    }
    /// One waiting round: spin first, then yield the CPU.
    fn pause(&self, round: u32) {
        if round < SPINS {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    /// Make the dead participant's last stores visible before acting on its claim.
    fn fence(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
    }
}

/// Waiting rounds spent spinning before the first liveness check and the first yield.
pub(crate) const SPINS: u32 = 64;
/// How long a claim that cannot wait forever waits for a live claimant before giving up.
pub(crate) const PATIENCE: std::time::Duration = std::time::Duration::from_micros(200);

/// Whether an impatient claim has waited long enough: after the spins, by the clock (a yield on
/// a loaded machine can take a whole time slice, so rounds say nothing about time).
#[inline]
fn out_of_patience(round: u32, since: &mut Option<std::time::Instant>) -> bool {
    if round < SPINS {
        return false;
    }
    let now = std::time::Instant::now();
    now.duration_since(*since.get_or_insert(now)) >= PATIENCE
}

/// Bulk (all or nothing) or burst (as many as fit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Amount {
    Exactly,
    UpTo,
}

/// What a claim got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// `[start, start + n)` belongs to the caller until it publishes.
    Got { start: u32, n: u32 },
    /// Not enough room (producer) or items (consumer) for the request.
    Short,
    /// Another live participant's claim stayed in flight; nothing was claimed (counted).
    Busy,
}

#[inline(always)]
pub(crate) fn fit(want: u32, room: u32, amount: Amount) -> u32 {
    if want <= room {
        want
    } else if amount == Amount::Exactly {
        0
    } else {
        room
    }
}

#[inline(always)]
pub(crate) fn word(pos: u32, token: u32) -> u64 {
    u64::from(pos) | u64::from(token) << 32
}

#[inline(always)]
pub(crate) fn split(w: u64) -> (u32, u32) {
    (w as u32, (w >> 32) as u32)
}

/// Claim up to `want` slots (producer: free slots, from `other_tail` = the consumer tail) or
/// items (consumer: published items, from `other_tail` = the producer tail) on a multi side.
#[inline]
pub(crate) fn multi_claim<W32: Word32, W64: Word64, P: Peers>(
    side: &SideRef<'_, W32, W64>,
    other_tail: &W32,
    capacity: u32,
    want: u32,
    amount: Amount,
    producer: bool,
    peers: &P,
) -> Claim {
    let mut round = 0u32;
    let mut since = None;
    loop {
        // Acquire: the other side's tail is loaded after this word, also after a failed CAS
        // (the acquire fence DPDK issues there).
        let w = side.head.load(Acquire);
        let (pos, token) = split(w);
        if token != 0 {
            round += 1;
            if token != peers.token() && round % peers.check_every() == 0 && peers.dead(token) {
                peers.fence();
                recover(side, w);
                continue;
            }
            if !peers.patient() && out_of_patience(round, &mut since) {
                side.busy.fetch_add(1, Relaxed);
                return Claim::Busy;
            }
            peers.pause(round);
            continue;
        }
        let other = other_tail.load(Acquire);
        let used = if producer {
            pos.wrapping_sub(other)
        } else {
            other.wrapping_sub(pos)
        };
        if used > capacity {
            // The two loads straddle another claim (the word moved on since): reload. A header
            // that never settles (corrupted by a misbehaving process) ends like a busy side.
            round += 1;
            if !peers.patient() && out_of_patience(round, &mut since) {
                side.busy.fetch_add(1, Relaxed);
                return Claim::Busy;
            }
            peers.pause(round);
            continue;
        }
        let avail = if producer { capacity - used } else { used };
        let n = fit(want, avail, amount);
        if n == 0 {
            return Claim::Short;
        }
        if side
            .head
            .compare_exchange(w, word(pos.wrapping_add(n), peers.token()), AcqRel, Relaxed)
            .is_ok()
        {
            return Claim::Got { start: pos, n };
        }
    }
}

/// Finish a claim that began at `start`: publish its first `k` slots (producer: items for the
/// consumers; consumer: free slots for the producers) and give the rest of it back.
#[inline]
pub(crate) fn multi_publish<W32: Word32, W64: Word64>(
    side: &SideRef<'_, W32, W64>,
    start: u32,
    k: u32,
) {
    let end = start.wrapping_add(k);
    side.tail.store(end, Release);
    side.head.store(word(end, 0), Release);
}

/// Resolve the claim `seen` (a word with a dead participant's token): keep what it published,
/// give back the rest. Returns whether this call did it (another participant may have).
pub(crate) fn recover<W32: Word32, W64: Word64>(side: &SideRef<'_, W32, W64>, seen: u64) -> bool {
    let (pos, _) = split(seen);
    // While the word holds the dead token nobody else moves this side's tail, so this load is
    // its final value: the claim's published part ends here.
    let tail = side.tail.load(Acquire);
    let back = pos.wrapping_sub(tail);
    if side
        .head
        .compare_exchange(seen, word(tail, 0), AcqRel, Relaxed)
        .is_ok()
    {
        side.recovered.fetch_add(1, Relaxed);
        side.rolled_back.fetch_add(u64::from(back), Relaxed);
        true
    } else {
        false
    }
}

/// A single side's private view: its own position (== its tail, which only it writes) and the
/// last tail it saw of the other side.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cursor {
    pub head: u32,
    pub other: u32,
}

/// Free slots for a single producer at `head` given the consumer tail `cons_tail`; 0 when the
/// pair is inconsistent (a tail beyond the head: a corrupted shared header).
#[inline(always)]
pub(crate) fn room(capacity: u32, head: u32, cons_tail: u32) -> u32 {
    capacity.saturating_sub(head.wrapping_sub(cons_tail))
}

/// Items for a single consumer at `head` given the producer tail `prod_tail`; 0 when the pair is
/// inconsistent.
#[inline(always)]
pub(crate) fn items(capacity: u32, head: u32, prod_tail: u32) -> u32 {
    let n = prod_tail.wrapping_sub(head);
    if n > capacity {
        0
    } else {
        n
    }
}

/// SP: claim up to `want` free slots from our position, refreshing the cached consumer tail when
/// the cache says there is not enough room. Returns (first index, count).
#[inline(always)]
pub(crate) fn sp_claim<W32: Word32>(
    cons_tail: &W32,
    capacity: u32,
    want: u32,
    amount: Amount,
    cur: &mut Cursor,
) -> (u32, u32) {
    let mut free = room(capacity, cur.head, cur.other);
    if free < want {
        cur.other = cons_tail.load(Acquire);
        free = room(capacity, cur.head, cur.other);
    }
    (cur.head, fit(want, free, amount))
}

/// SC: claim up to `want` published items beyond our position, refreshing the cached producer
/// tail. Returns (first index, count).
#[inline(always)]
pub(crate) fn sc_claim<W32: Word32>(
    prod_tail: &W32,
    capacity: u32,
    want: u32,
    amount: Amount,
    cur: &mut Cursor,
) -> (u32, u32) {
    let mut avail = items(capacity, cur.head, cur.other);
    if avail < want {
        cur.other = prod_tail.load(Acquire);
        avail = items(capacity, cur.head, cur.other);
    }
    (cur.head, fit(want, avail, amount))
}

/// SP/SC: publish `n` items (producer) or free `n` slots (consumer) from our position.
#[inline(always)]
pub(crate) fn single_publish<W32: Word32>(tail: &W32, cur: &mut Cursor, n: u32) {
    cur.head = cur.head.wrapping_add(n);
    tail.store(cur.head, Release);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, AtomicU64};

    struct Side {
        head: AtomicU64,
        tail: AtomicU32,
        busy: AtomicU64,
        recovered: AtomicU64,
        rolled_back: AtomicU64,
    }

    impl Side {
        fn new() -> Self {
            Side {
                head: AtomicU64::new(0),
                tail: AtomicU32::new(0),
                busy: AtomicU64::new(0),
                recovered: AtomicU64::new(0),
                rolled_back: AtomicU64::new(0),
            }
        }
        fn r(&self) -> SideRef<'_, AtomicU32, AtomicU64> {
            SideRef {
                head: &self.head,
                tail: &self.tail,
                busy: &self.busy,
                recovered: &self.recovered,
                rolled_back: &self.rolled_back,
            }
        }
    }

    struct Me {
        token: u32,
        dead: Vec<u32>,
        patient: bool,
    }

    impl Peers for Me {
        fn token(&self) -> u32 {
            self.token
        }
        fn dead(&self, token: u32) -> bool {
            self.dead.contains(&token)
        }
        fn patient(&self) -> bool {
            self.patient
        }
    }

    #[test]
    fn a_live_claim_in_flight_makes_an_impatient_claim_busy_and_counted() {
        let (prod, cons_tail) = (Side::new(), AtomicU32::new(0));
        let a = Me {
            token: 7,
            dead: vec![],
            patient: false,
        };
        let b = Me {
            token: 9,
            dead: vec![],
            patient: false,
        };
        assert_eq!(
            multi_claim(&prod.r(), &cons_tail, 8, 3, Amount::Exactly, true, &a),
            Claim::Got { start: 0, n: 3 }
        );
        assert_eq!(split(prod.head.load(Relaxed)), (3, 7));
        assert_eq!(
            multi_claim(&prod.r(), &cons_tail, 8, 1, Amount::Exactly, true, &b),
            Claim::Busy
        );
        assert_eq!(prod.busy.load(Relaxed), 1);
        multi_publish(&prod.r(), 0, 2); // a zero-copy claim finishing 2 of its 3 slots
        assert_eq!(
            (prod.tail.load(Relaxed), split(prod.head.load(Relaxed))),
            (2, (2, 0))
        );
        assert_eq!(
            multi_claim(&prod.r(), &cons_tail, 8, 9, Amount::UpTo, true, &b),
            Claim::Got { start: 2, n: 6 }
        );
    }

    #[test]
    fn a_dead_claim_is_rolled_back_to_what_it_published() {
        let (cons, prod_tail) = (Side::new(), AtomicU32::new(5));
        let dead = Me {
            token: 3,
            dead: vec![],
            patient: false,
        };
        let live = Me {
            token: 4,
            dead: vec![3],
            patient: false,
        };
        assert_eq!(
            multi_claim(&cons.r(), &prod_tail, 8, 4, Amount::Exactly, false, &dead),
            Claim::Got { start: 0, n: 4 }
        );
        // The dead consumer never released: all 4 items go back into the ring.
        assert_eq!(
            multi_claim(&cons.r(), &prod_tail, 8, 5, Amount::Exactly, false, &live),
            Claim::Got { start: 0, n: 5 }
        );
        assert_eq!(
            (cons.recovered.load(Relaxed), cons.rolled_back.load(Relaxed)),
            (1, 4)
        );
        // Died between its tail store and clearing the word: what it published stays.
        multi_publish(&cons.r(), 0, 5);
        cons.head.store(word(7, 3), Relaxed);
        cons.tail.store(7, Relaxed);
        assert!(recover(&cons.r(), word(7, 3)));
        assert!(!recover(&cons.r(), word(7, 3)), "only once");
        assert_eq!(split(cons.head.load(Relaxed)), (7, 0));
        assert_eq!(cons.rolled_back.load(Relaxed), 4);
    }

    #[test]
    fn inconsistent_tails_never_yield_room() {
        assert_eq!(room(8, 3, 5), 0, "consumer tail beyond our head");
        assert_eq!(items(8, 5, 3), 0, "producer tail behind our head");
        assert_eq!(room(8, 2, u32::MAX - 1), 4, "wrapping indices");
        assert_eq!(items(8, u32::MAX - 1, 2), 4, "wrapping indices");
        let (prod, cons_tail) = (Side::new(), AtomicU32::new(100));
        let me = Me {
            token: 1,
            dead: vec![],
            patient: false,
        };
        assert_eq!(
            multi_claim(&prod.r(), &cons_tail, 8, 1, Amount::Exactly, true, &me),
            Claim::Busy,
            "a header that never settles ends the call"
        );
    }
}
