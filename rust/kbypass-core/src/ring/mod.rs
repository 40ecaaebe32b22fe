//! Lock-free rings in the style of DPDK's `rte_ring`.
//!
//! A [`Ring<T>`] is a fixed, power-of-two number of slots of a plain-data type ([`Pod`]: mempool
//! object indices, descriptors, …) with a producer side and a consumer side, each either
//! *single* (one handle at a time, no atomic read-modify-write on the fast path) or *multi*
//! (any number of handles; DPDK's HTS mode: one claim in flight per side, made by a CAS on a
//! word that also names the claimant, so a claim left by a process that died is found and
//! resolved by the others — see `protocol.rs`). The [`Mode`] is chosen once, at creation.
//!
//! Items move through handles: [`Ring::producer`] gives a [`Producer`], [`Ring::consumer`] a
//! [`Consumer`]. On a single side only one handle may exist at a time (across processes, for
//! a shared ring), which is what makes the single-side fast path sound; a second one is
//! refused with [`Error::State`](crate::Error::State).
//!
//! Every operation comes as *bulk* (all or nothing: `enqueue_bulk`, `dequeue_bulk`) and *burst*
//! (as many as fit: `enqueue_burst`, `dequeue_burst`), as in DPDK, plus single-item helpers
//! and zero-copy [`Producer::reserve`]/[`WriteSlots::commit`] (publishes exactly the slots
//! written) and [`Consumer::peek`]/[`ReadSlots::release`].
//!
//! Shared rings survive their users: a process that dies holding a claim, or a single side, is
//! noticed through a lock it held on the ring file (released by the kernel when it dies, and
//! valid across PID namespaces) and its claim is resolved and counted ([`RingStats`]); a live
//! but stalled process makes the others' calls report busy rather than wait without bound. A
//! `Ring` inherited across `fork()` refuses to work ([`Ring::check`]); attach by name instead.
//!
//! Memory: header and slots live in one mapping — private ([`Ring::new`], or a mapping you
//! supply with [`Ring::in_mapping`], e.g. hugepages) or a named file in `/dev/shm` that other
//! processes attach to ([`Ring::create_shared`], [`Ring::attach`]; see `shared.rs`).
//!
//! ```
//! use kbypass_core::ring::{Mode, Ring};
//! let ring = Ring::<u64>::new(1024, Mode::Spsc).unwrap();
//! let (mut tx, mut rx) = (ring.producer().unwrap(), ring.consumer().unwrap());
//! assert_eq!(tx.enqueue_burst(&[1, 2, 3]), 3);
//! let mut out = [0u64; 8];
//! assert_eq!(rx.dequeue_bulk(&mut out[..4]), 0); // bulk: all 4 or nothing
//! assert_eq!(rx.dequeue_burst(&mut out), 3); // burst: what is there
//! assert_eq!(&out[..3], &[1, 2, 3]);
//! ```

mod handle;
mod layout;
mod protocol;
mod raw;
mod shared;
mod wait;

use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::Ordering::{Relaxed, Release};
use std::sync::Arc;

pub use handle::{Consumer, Producer, ReadSlots, WriteSlots};
pub use layout::MAX_CAPACITY;
pub use wait::Backoff;

use crate::error::{Error, Result};
use crate::sys::mm::{page_size, Mapping};
use layout::{total_len, MAGIC, VERSION};
use raw::RawRing;

/// Synchronisation of each side, named once at creation (DPDK's SP/MP and SC/MC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Mode {
    /// Single producer, single consumer: no atomic read-modify-write at all.
    Spsc = 0,
    /// Many producers, single consumer.
    Mpsc = 1,
    /// Single producer, many consumers.
    Spmc = 2,
    /// Many producers, many consumers.
    Mpmc = 3,
}

impl Mode {
    /// Only one producer handle may exist at a time.
    pub fn single_producer(self) -> bool {
        matches!(self, Mode::Spsc | Mode::Spmc)
    }

    /// Only one consumer handle may exist at a time.
    pub fn single_consumer(self) -> bool {
        matches!(self, Mode::Spsc | Mode::Mpsc)
    }

    /// `"spsc"`, `"mpsc"`, `"spmc"` or `"mpmc"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Spsc => "spsc",
            Mode::Mpsc => "mpsc",
            Mode::Spmc => "spmc",
            Mode::Mpmc => "mpmc",
        }
    }

    fn from_u32(v: u32) -> Option<Mode> {
        Some(match v {
            0 => Mode::Spsc,
            1 => Mode::Mpsc,
            2 => Mode::Spmc,
            3 => Mode::Mpmc,
            _ => return None,
        })
    }
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Mode> {
        match s.to_ascii_lowercase().as_str() {
            "spsc" => Ok(Mode::Spsc),
            "mpsc" => Ok(Mode::Mpsc),
            "spmc" => Ok(Mode::Spmc),
            "mpmc" => Ok(Mode::Mpmc),
            _ => Err(Error::invalid(format!(
                "unknown ring mode {s:?}: use \"spsc\", \"mpsc\", \"spmc\" or \"mpmc\""
            ))),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Plain old data: a `Copy` type with no pointers, references or invalid bit patterns — what may
/// be placed in ring slots, which another process (or a crashed writer) may have filled.
///
/// A ring of references, pointers or types with invalid bit patterns does not compile:
///
/// ```compile_fail
/// use kbypass_core::ring::{Mode, Ring};
/// let r = Ring::<&u64>::new(8, Mode::Spsc); // &u64 is not Pod
/// ```
/// ```compile_fail
/// use kbypass_core::ring::{Mode, Ring};
/// let r = Ring::<bool>::new(8, Mode::Spsc); // a byte of 2 is not a bool
/// ```
///
/// # Safety
/// Implement only for types whose every bit pattern is a valid value and that contain no
/// references, pointers or padding that must stay private (`#[repr(C)]` structs of integers).
pub unsafe trait Pod: Copy + Send + 'static {}

macro_rules! pod {
    ($($t:ty),*) => { $(
        // SAFETY: every bit pattern of a primitive integer or float is a valid value.
        unsafe impl Pod for $t {}
    )* };
}
pod!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64);
// SAFETY: an array of Pod values is Pod.
unsafe impl<T: Pod, const N: usize> Pod for [T; N] {}

/// Counters of a ring (shared by all handles and processes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Enqueue calls that found less room than they asked for (bulk refused, burst shortened).
    pub full: u64,
    /// Dequeue calls that found fewer items than they asked for.
    pub empty: u64,
    /// Items in the ring at the time of the call.
    pub len: u32,
    /// `Ring` values attached to a shared ring, over all live processes (1 for a private ring).
    pub attached: u32,
    /// Enqueue calls that gave up because another live process's enqueue stayed in flight.
    pub producer_busy: u64,
    /// Dequeue calls that gave up because another live process's dequeue stayed in flight.
    pub consumer_busy: u64,
    /// Enqueues of dead processes resolved by the others.
    pub producer_recovered: u64,
    /// Slots those dead producers had claimed but not published (their items were never
    /// enqueued: the call that claimed them never returned).
    pub producer_rolled_back: u64,
    /// Dequeues of dead processes resolved by the others.
    pub consumer_recovered: u64,
    /// Items those dead consumers had claimed but not released: left in the ring and delivered
    /// to the others.
    pub consumer_rolled_back: u64,
    /// Pid (as the claimant saw itself) of the process whose enqueue is in flight, if any.
    pub producer_claim: Option<u32>,
    /// Pid of the process whose dequeue is in flight, if any.
    pub consumer_claim: Option<u32>,
}

enum Backing {
    Private,
    Shared(shared::Attachment),
}

/// The token of every handle of a private ring: its claims are made by threads of this process,
/// which cannot die without it.
const PRIVATE_TOKEN: u32 = 1;

/// The participants of one ring as the claim protocol sees them.
pub(crate) struct RingPeers<'a> {
    backing: &'a Backing,
    hdr: &'a layout::Header,
}

impl protocol::Peers for RingPeers<'_> {
    #[inline(always)]
    fn token(&self) -> u32 {
        match self.backing {
            Backing::Private => PRIVATE_TOKEN,
            Backing::Shared(a) => a.token(),
        }
    }

    fn dead(&self, token: u32) -> bool {
        match self.backing {
            Backing::Private => false,
            Backing::Shared(a) => a.dead(self.hdr, token),
        }
    }

    #[inline(always)]
    fn patient(&self) -> bool {
        matches!(self.backing, Backing::Private)
    }
}

impl RingPeers<'_> {
    /// "process PID" for the participant holding `token`.
    fn describe(&self, token: u32) -> String {
        match shared::pid_of(self.hdr, token) {
            Some(pid) => format!("process {pid}"),
            None => "another participant".into(),
        }
    }
}

/// A lock-free ring of `T` (see the [module docs](self)).
pub struct Ring<T: Pod> {
    raw: RawRing<T>,
    mode: Mode,
    backing: Backing,
    // Declared last so that it is unmapped after everything that points into it.
    mapping: Mapping,
}

impl<T: Pod> fmt::Debug for Ring<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.capacity())
            .field("mode", &self.mode)
            .field("len", &self.len())
            .field("name", &self.name())
            .finish()
    }
}

/// Check a requested capacity; returns it as u32.
pub fn check_capacity(capacity: usize) -> Result<u32> {
    if capacity == 0 {
        return Err(Error::invalid(
            "ring capacity must be a power of two greater than zero, e.g. 1024",
        ));
    }
    if capacity > MAX_CAPACITY as usize {
        return Err(Error::invalid(format!(
            "ring capacity {capacity} is too large: the maximum is 2^31 ({MAX_CAPACITY}); use a smaller power of two"
        )));
    }
    if !capacity.is_power_of_two() {
        return Err(Error::invalid(format!(
            "ring capacity {capacity} is not a power of two: use {} or {}",
            capacity.next_power_of_two() / 2,
            capacity.next_power_of_two()
        )));
    }
    Ok(capacity as u32)
}

impl<T: Pod> Ring<T> {
    /// Bytes of memory (header + slots, rounded to the page size) a ring of `capacity` needs.
    pub fn memory_size(capacity: usize) -> Result<usize> {
        let cap = check_capacity(capacity)?;
        if std::mem::align_of::<T>() > 128 {
            return Err(Error::invalid(
                "ring elements may be aligned to at most 128 bytes: use a less aligned type",
            ));
        }
        total_len(cap, std::mem::size_of::<T>(), page_size()).ok_or_else(|| {
            Error::invalid(format!(
                "a ring of {capacity} elements of {} bytes does not fit in memory: use a smaller capacity",
                std::mem::size_of::<T>()
            ))
        })
    }

    /// A ring in a private anonymous mapping.
    pub fn new(capacity: usize, mode: Mode) -> Result<Arc<Self>> {
        let len = Self::memory_size(capacity)?;
        let mapping = Mapping::anonymous(len, libc::MAP_NORESERVE)?;
        Self::in_mapping(mapping, capacity, mode)
    }

    /// A ring placed at the start of a mapping you provide (hugepages, locked memory, …),
    /// which must be at least [`Ring::memory_size`] bytes. Its contents are overwritten.
    pub fn in_mapping(mapping: Mapping, capacity: usize, mode: Mode) -> Result<Arc<Self>> {
        let len = Self::memory_size(capacity)?;
        if mapping.len() < len {
            return Err(Error::invalid(format!(
                "mapping of {} bytes is too small for a ring of {capacity}: it needs Ring::memory_size() = {len} bytes",
                mapping.len()
            )));
        }
        let ring = Self::init(mapping, capacity as u32, mode, Backing::Private);
        ring.raw.hdr().meta.ready.store(1, Release);
        Ok(Arc::new(ring))
    }

    /// Wrap an initialised (or about to be initialised) ring header in `mapping`.
    fn from_mapping(mapping: Mapping, capacity: u32, mode: Mode, backing: Backing) -> Self {
        let base = NonNull::new(mapping.as_ptr()).expect("mmap never returns NULL");
        // SAFETY: every caller checked that the mapping holds header + capacity slots; it is page
        // aligned and lives in `Ring::mapping`, which outlives `raw`.
        let raw = unsafe { RawRing::<T>::new(base, capacity) };
        Ring {
            raw,
            mode,
            backing,
            mapping,
        }
    }

    /// Write a fresh header into `mapping` and wrap it (not yet marked ready).
    fn init(mapping: Mapping, capacity: u32, mode: Mode, backing: Backing) -> Self {
        let ring = Self::from_mapping(mapping, capacity, mode, backing);
        let h = ring.raw.hdr();
        for side in [&h.prod, &h.cons] {
            side.head.store(0, Relaxed);
            side.tail.store(0, Relaxed);
            side.owner.store(0, Relaxed);
            for c in [&side.short, &side.busy, &side.recovered, &side.rolled_back] {
                c.store(0, Relaxed);
            }
        }
        for p in &h.peers {
            p.generation.store(0, Relaxed);
            p.pid.store(0, Relaxed);
        }
        let m = &h.meta;
        m.version.store(VERSION, Relaxed);
        m.elem_size.store(std::mem::size_of::<T>() as u32, Relaxed);
        m.elem_align
            .store(std::mem::align_of::<T>() as u32, Relaxed);
        m.capacity.store(capacity, Relaxed);
        m.mode.store(mode as u32, Relaxed);
        m.creator_pid.store(std::process::id(), Relaxed);
        m.total_len.store(ring.mapping.len() as u64, Relaxed);
        m.magic.store(MAGIC, Relaxed);
        ring
    }

    /// A producer handle. On a single-producer ring only one may exist at a time.
    pub fn producer(self: &Arc<Self>) -> Result<Producer<T>> {
        Producer::new(Arc::clone(self))
    }

    /// A consumer handle. On a single-consumer ring only one may exist at a time.
    pub fn consumer(self: &Arc<Self>) -> Result<Consumer<T>> {
        Consumer::new(Arc::clone(self))
    }

    /// Number of slots.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.raw.capacity() as usize
    }

    /// Items in the ring (a snapshot while other threads work on it).
    #[inline]
    pub fn len(&self) -> usize {
        self.raw.count() as usize
    }

    /// Whether the ring holds no items (a snapshot).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Free slots (a snapshot).
    #[inline]
    pub fn free(&self) -> usize {
        self.capacity() - self.len()
    }

    /// The synchronisation mode chosen at creation.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The shared-memory name, or `None` for a private ring.
    pub fn name(&self) -> Option<&str> {
        match &self.backing {
            Backing::Private => None,
            Backing::Shared(a) => Some(a.name()),
        }
    }

    /// Counters and a length snapshot.
    pub fn stats(&self) -> RingStats {
        let h = self.raw.hdr();
        let claim = |side: &layout::Side| {
            let (_, token) = protocol::split(side.head.load(Relaxed));
            match (&self.backing, token) {
                (_, 0) => None,
                (Backing::Private, _) => Some(std::process::id()),
                (Backing::Shared(_), t) => shared::pid_of(h, t),
            }
        };
        RingStats {
            full: h.prod.short.load(Relaxed),
            empty: h.cons.short.load(Relaxed),
            len: self.raw.count(),
            attached: match &self.backing {
                Backing::Private => 1,
                Backing::Shared(a) => a.count_attached(h),
            },
            producer_busy: h.prod.busy.load(Relaxed),
            consumer_busy: h.cons.busy.load(Relaxed),
            producer_recovered: h.prod.recovered.load(Relaxed),
            producer_rolled_back: h.prod.rolled_back.load(Relaxed),
            consumer_recovered: h.cons.recovered.load(Relaxed),
            consumer_rolled_back: h.cons.rolled_back.load(Relaxed),
            producer_claim: claim(&h.prod),
            consumer_claim: claim(&h.cons),
        }
    }

    /// `Err(State)` when this value was inherited across `fork()`: a shared ring's attachment
    /// (its place among the participants, its single-side handles) belongs to the process that
    /// made it. In the child, attach by name. A private ring is copied into a child like the
    /// rest of its memory (not shared with the parent) and stays usable there.
    pub fn check(&self) -> Result<()> {
        match &self.backing {
            Backing::Shared(a) if a.forked() => Err(Error::State(format!(
                "this Ring {:?} was inherited across fork(): it belongs to the parent process;                  attach to the ring by name in this process (Ring.attach({:?}))",
                a.name(),
                a.name()
            ))),
            _ => Ok(()),
        }
    }

    /// Panic on a handle used in a forked child (one relaxed load on the hot path).
    #[inline(always)]
    pub(crate) fn assert_usable(&self) {
        if let Backing::Shared(a) = &self.backing {
            if a.forked() {
                panic!("{}", self.check().unwrap_err());
            }
        }
    }

    pub(crate) fn raw(&self) -> &RawRing<T> {
        &self.raw
    }

    #[inline(always)]
    pub(crate) fn peers(&self) -> RingPeers<'_> {
        RingPeers {
            backing: &self.backing,
            hdr: self.raw.hdr(),
        }
    }
}

impl<T: Pod> Drop for Ring<T> {
    fn drop(&mut self) {
        if let Backing::Shared(a) = &self.backing {
            a.detach(self.raw.hdr());
        }
    }
}

#[cfg(test)]
mod loom_tests;
#[cfg(test)]
mod tests;
