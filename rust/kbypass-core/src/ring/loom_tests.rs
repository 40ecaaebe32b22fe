//! The multi-side claim protocol (`protocol.rs`) under the loom model checker: every interleaving
//! (up to a preemption bound) of producers and consumers, some of which die at any step of a
//! claim, with the slots as loom cells so that an unsynchronised slot access is reported.
//!
//! Checked: items of live producers are delivered exactly once and, per producer, in order; a
//! dead producer's item is delivered iff it was published; a dead consumer's unreleased item is
//! delivered to a live consumer; nobody waits forever for a dead claimant.
//!
//! A participant's death is modelled by a flag it Release-stores as its last act, which the
//! others' `Peers::dead` Acquire-loads — the happens-before edge that, in a real process, the
//! kernel gives through the released file lock and `F_OFD_GETLK`.

use loom::cell::UnsafeCell;
use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
use loom::sync::Arc;
use std::sync::atomic::Ordering::{self, Acquire, Relaxed, Release, SeqCst};

use super::protocol::{multi_claim, multi_publish, Amount, Claim, Peers, SideRef, Word32, Word64};

impl Word32 for AtomicU32 {
    fn load(&self, order: Ordering) -> u32 {
        AtomicU32::load(self, order)
    }
    fn store(&self, value: u32, order: Ordering) {
        AtomicU32::store(self, value, order)
    }
}

impl Word64 for AtomicU64 {
    fn load(&self, order: Ordering) -> u64 {
        AtomicU64::load(self, order)
    }
    fn store(&self, value: u64, order: Ordering) {
        AtomicU64::store(self, value, order)
    }
    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64> {
        AtomicU64::compare_exchange(self, current, new, success, failure)
    }
    fn fetch_add(&self, value: u64, order: Ordering) -> u64 {
        AtomicU64::fetch_add(self, value, order)
    }
}

struct Side {
    head: AtomicU64,
    tail: AtomicU32,
    busy: AtomicU64,
    recovered: AtomicU64,
    rolled_back: AtomicU64,
}

impl Side {
    fn new(at: u32) -> Self {
        Side {
            head: AtomicU64::new(u64::from(at)),
            tail: AtomicU32::new(at),
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

/// A ring of `cap` u32 slots; `alive[t]` for the participant with token `t`.
struct Model {
    prod: Side,
    cons: Side,
    cap: u32,
    slots: Vec<UnsafeCell<u32>>,
    alive: Vec<AtomicBool>,
}

impl Model {
    /// A ring of `cap` slots already holding `items` (written before any thread starts).
    fn new(cap: u32, items: &[u32]) -> Arc<Model> {
        let n = items.len() as u32;
        let slots: Vec<_> = (0..cap as usize)
            .map(|i| UnsafeCell::new(items.get(i).copied().unwrap_or(0)))
            .collect();
        Arc::new(Model {
            prod: Side::new(n),
            cons: Side::new(0),
            cap,
            slots,
            alive: (0..8).map(|_| AtomicBool::new(true)).collect(),
        })
    }

    fn who(&self, token: u32) -> Who<'_> {
        Who { m: self, token }
    }
}

struct Who<'a> {
    m: &'a Model,
    token: u32,
}

impl Peers for Who<'_> {
    fn token(&self) -> u32 {
        self.token
    }
    fn dead(&self, token: u32) -> bool {
        !self.m.alive[token as usize].load(Acquire)
    }
    fn patient(&self) -> bool {
        true // a live claimant always finishes in the model; waiting forever would be a bug
    }
    fn check_every(&self) -> u32 {
        1
    }
    fn pause(&self, _round: u32) {
        loom::thread::yield_now();
    }
    fn fence(&self) {
        fence(SeqCst);
    }
}

impl Who<'_> {
    fn claim(&self, producer: bool, n: u32) -> Option<(u32, u32)> {
        let (side, other) = if producer {
            (&self.m.prod, &self.m.cons.tail)
        } else {
            (&self.m.cons, &self.m.prod.tail)
        };
        match multi_claim(
            &side.r(),
            other,
            self.m.cap,
            n,
            Amount::Exactly,
            producer,
            self,
        ) {
            Claim::Got { start, n } => Some((start, n)),
            Claim::Short => None,
            Claim::Busy => unreachable!("patient participants never give up"),
        }
    }

    fn write(&self, idx: u32, v: u32) {
        self.m.slots[(idx % self.m.cap) as usize].with_mut(|p| {
            // SAFETY: the claim gives this participant the slot (loom reports it otherwise).
            unsafe { *p = v }
        });
    }

    fn read(&self, idx: u32) -> u32 {
        // SAFETY: the claim gives this participant the published slot.
        self.m.slots[(idx % self.m.cap) as usize].with(|p| unsafe { *p })
    }

    /// Enqueue `v`, waiting for room.
    fn enqueue(&self, v: u32) {
        loop {
            if let Some((start, _)) = self.claim(true, 1) {
                self.write(start, v);
                multi_publish(&self.m.prod.r(), start, 1);
                return;
            }
            loom::thread::yield_now();
        }
    }

    /// Dequeue one item if there is one.
    fn dequeue(&self) -> Option<u32> {
        let (start, _) = self.claim(false, 1)?;
        let v = self.read(start);
        multi_publish(&self.m.cons.r(), start, 1);
        Some(v)
    }

    /// Take items until `n` have been taken by everyone (`taken` counts them).
    fn drain(&self, taken: &AtomicUsize, n: usize) -> Vec<u32> {
        let mut got = Vec::new();
        while taken.load(Acquire) < n {
            match self.dequeue() {
                Some(v) => {
                    got.push(v);
                    taken.fetch_add(1, Release);
                }
                None => loom::thread::yield_now(),
            }
        }
        got
    }

    fn die(&self) {
        self.m.alive[self.token as usize].store(false, Release);
    }
}

/// Where a claimant dies.
#[derive(Clone, Copy, Debug)]
enum Death {
    /// Right after its CAS on the claim word.
    Claimed,
    /// After copying its slot, before publishing.
    Copied,
    /// After its tail store, before clearing the claim word.
    Published,
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(2);
    // Waiting loops (for room, items, or a claim in flight) yield to the scheduler; each wait is
    // a few branches, and a schedule that never ends still fails at this bound.
    b.max_branches = 20_000;
    b.check(f);
}

#[test]
fn loom_two_producers_and_a_consumer_exactly_once_in_order() {
    model(|| {
        let m = Model::new(4, &[]);
        let p1 = {
            let m = m.clone();
            loom::thread::spawn(move || {
                m.who(1).enqueue(10);
                m.who(1).enqueue(11);
            })
        };
        let p2 = {
            let m = m.clone();
            loom::thread::spawn(move || m.who(2).enqueue(20))
        };
        // Two attempts while the producers run, the rest once they are done.
        let consumer = m.who(3);
        let mut got: Vec<u32> = (0..2).filter_map(|_| consumer.dequeue()).collect();
        p1.join().unwrap();
        p2.join().unwrap();
        while let Some(v) = consumer.dequeue() {
            got.push(v);
        }
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![10, 11, 20], "{got:?}");
        let pos = |v| got.iter().position(|&x| x == v).unwrap();
        assert!(pos(10) < pos(11), "one producer's items in order: {got:?}");
    });
}

#[test]
fn loom_two_consumers_take_each_item_once() {
    model(|| {
        let m = Model::new(2, &[1, 2]);
        let c2 = {
            let m = m.clone();
            loom::thread::spawn(move || m.who(2).dequeue())
        };
        // Both items are there: each consumer gets one, waiting for the other's claim if needed.
        let mine = m.who(1).dequeue().expect("an item");
        let theirs = c2.join().unwrap().expect("an item");
        let mut got = vec![mine, theirs];
        got.sort_unstable();
        assert_eq!(got, vec![1, 2]);
        assert_eq!(m.who(1).dequeue(), None);
    });
}

fn dead_producer(death: Death) {
    model(move || {
        let m = Model::new(4, &[]);
        let dead = {
            let m = m.clone();
            loom::thread::spawn(move || {
                let who = m.who(1);
                let (start, _) = who.claim(true, 1).expect("3 items never fill 4 slots");
                if !matches!(death, Death::Claimed) {
                    who.write(start, 99);
                }
                if matches!(death, Death::Published) {
                    m.prod.tail.store(start + 1, Release);
                }
                who.die();
            })
        };
        let live = {
            let m = m.clone();
            loom::thread::spawn(move || {
                m.who(2).enqueue(20);
                m.who(2).enqueue(21);
            })
        };
        dead.join().unwrap();
        let published = matches!(death, Death::Published);
        let want = 2 + usize::from(published);
        let taken = AtomicUsize::new(0);
        let mut got = m.who(3).drain(&taken, want);
        live.join().unwrap();
        let live_order: Vec<u32> = got.iter().copied().filter(|&v| v != 99).collect();
        assert_eq!(live_order, vec![20, 21], "{death:?}: {got:?}");
        got.sort_unstable();
        let mut expect = vec![20, 21];
        if published {
            expect.push(99);
        }
        assert_eq!(got, expect, "{death:?}");
        // The next enqueue meets the dead claim, if nobody did yet, and resolves it.
        m.who(2).enqueue(22);
        assert_eq!(m.who(3).dequeue(), Some(22), "{death:?}");
        assert_eq!(m.prod.recovered.load(Relaxed), 1, "{death:?}");
        let back = m.prod.rolled_back.load(Relaxed);
        assert_eq!(back, u64::from(!published), "{death:?}");
    });
}

#[test]
fn loom_dead_producer_after_claim() {
    dead_producer(Death::Claimed);
}

#[test]
fn loom_dead_producer_after_copy() {
    dead_producer(Death::Copied);
}

#[test]
fn loom_dead_producer_after_tail() {
    dead_producer(Death::Published);
}

fn dead_consumer(death: Death) {
    model(move || {
        let m = Model::new(2, &[1, 2]);
        let dead = {
            let m = m.clone();
            loom::thread::spawn(move || {
                let who = m.who(1);
                if let Some((start, _)) = who.claim(false, 1) {
                    if !matches!(death, Death::Claimed) {
                        assert_eq!(who.read(start), 1);
                    }
                    if matches!(death, Death::Published) {
                        m.cons.tail.store(start + 1, Release);
                    }
                }
                who.die();
            })
        };
        let producer = {
            let m = m.clone();
            loom::thread::spawn(move || m.who(3).enqueue(3))
        };
        dead.join().unwrap();
        // The dead consumer took item 1 only if it released it; everything else reaches us.
        let released = matches!(death, Death::Published);
        let want = 3 - usize::from(released);
        let taken = AtomicUsize::new(0);
        let got = m.who(2).drain(&taken, want);
        producer.join().unwrap();
        let expect: Vec<u32> = if released { vec![2, 3] } else { vec![1, 2, 3] };
        assert_eq!(got, expect, "{death:?}");
        assert_eq!(m.cons.recovered.load(Relaxed), 1, "{death:?}");
    });
}

#[test]
fn loom_dead_consumer_after_claim() {
    dead_consumer(Death::Claimed);
}

#[test]
fn loom_dead_consumer_after_read() {
    dead_consumer(Death::Copied);
}

#[test]
fn loom_dead_consumer_after_tail() {
    dead_consumer(Death::Published);
}

#[test]
fn loom_a_dead_claim_is_resolved_once_by_racing_producers() {
    model(|| {
        let m = Model::new(4, &[]);
        {
            // Dead before the live ones start: both of them meet its claim.
            let who = m.who(1);
            who.claim(true, 1).expect("room");
            who.die();
        }
        let spawn = |token: u32, v: u32| {
            let m = m.clone();
            loom::thread::spawn(move || m.who(token).enqueue(v))
        };
        let (a, b) = (spawn(2, 20), spawn(3, 30));
        a.join().unwrap();
        b.join().unwrap();
        let consumer = m.who(4);
        let mut got = vec![consumer.dequeue().unwrap(), consumer.dequeue().unwrap()];
        assert_eq!(consumer.dequeue(), None);
        got.sort_unstable();
        assert_eq!(got, vec![20, 30]);
        assert_eq!(m.prod.recovered.load(Relaxed), 1);
        assert_eq!(m.prod.rolled_back.load(Relaxed), 1);
    });
}
