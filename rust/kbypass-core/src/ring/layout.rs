//! The ring's memory layout: one header followed by the slots, the same whether the memory is a
//! private mapping or a file in `/dev/shm` that several processes map.
//!
//! ```text
//! offset 0     Meta        (128 B)   magic, version, element size, capacity, mode, ready
//! offset 128   prod Side   (128 B)   head word, tail, owner, counters   — written by producers
//! offset 256   cons Side   (128 B)   head word, tail, owner, counters   — written by consumers
//! offset 384   peers       (8 KiB)   generation and pid of each participant (shared rings)
//! offset 8576  slots       capacity × size_of::<T>()
//! ```
//! Producer and consumer state sit on separate 128-byte blocks so that the two sides never
//! share a cache line (128, not 64, because adjacent-line prefetch pairs lines on x86).

use std::sync::atomic::{AtomicU32, AtomicU64};

/// `b"KBYRING2"` as a little-endian u64: identifies a ring file of this layout.
pub const MAGIC: u64 = u64::from_le_bytes(*b"KBYRING2");
/// Layout version; bumped on any change to this file.
pub const VERSION: u32 = 2;
/// The largest capacity: indices are free-running u32 counters, so the distance between head
/// and tail must stay below 2^31.
pub const MAX_CAPACITY: u32 = 1 << 31;
/// Participants (attached `Ring` values over all processes) a shared ring can have at once.
pub const MAX_PEERS: usize = 1024;

/// Identity of the ring (written once by its creator).
#[repr(C, align(128))]
pub struct Meta {
    pub magic: AtomicU64,
    pub version: AtomicU32,
    pub elem_size: AtomicU32,
    pub elem_align: AtomicU32,
    pub capacity: AtomicU32,
    pub mode: AtomicU32,
    /// 1 once the creator has finished initialising; attachers wait for it.
    pub ready: AtomicU32,
    pub creator_pid: AtomicU32,
    pub _pad: u32,
    /// Total bytes of header + slots.
    pub total_len: AtomicU64,
}

/// One side (producer or consumer) of the ring.
#[repr(C, align(128))]
pub struct Side {
    /// Multi sides: the claim word, `pos | token << 32` (see `protocol`): `pos` is the next index
    /// to claim and `token` (0 when idle) names the participant whose claim `[tail, pos)` is in
    /// flight. Single sides keep their position in the handle and leave this at 0.
    pub head: AtomicU64,
    /// Index up to which this side has finished; the other side reads it with Acquire.
    pub tail: AtomicU32,
    /// Single sides: token of the participant holding this side's one handle (0: free).
    pub owner: AtomicU32,
    /// Producer: enqueue calls that found less room than asked. Consumer: dequeue calls that
    /// found fewer items than asked.
    pub short: AtomicU64,
    /// Calls that gave up because a live participant's claim stayed in flight too long.
    pub busy: AtomicU64,
    /// Claims of dead participants that were resolved by another participant.
    pub recovered: AtomicU64,
    /// Slots of those claims given back: producer side, items a dead producer had claimed but
    /// not published (never enqueued); consumer side, items a dead consumer had claimed but not
    /// released (left in the ring for the others).
    pub rolled_back: AtomicU64,
}

/// One participant of a shared ring: its generation (bumped each time the entry is taken, so
/// a token names one registration only) and its pid (for messages).
#[repr(C)]
pub struct Peer {
    pub generation: AtomicU32,
    pub pid: AtomicU32,
}

/// The whole header.
#[repr(C)]
pub struct Header {
    pub meta: Meta,
    pub prod: Side,
    pub cons: Side,
    pub peers: [Peer; MAX_PEERS],
}

/// Byte offset of slot 0 (a multiple of 128, the largest element alignment allowed).
pub const SLOTS_OFFSET: usize = std::mem::size_of::<Header>();

const _: () = assert!(std::mem::size_of::<Meta>() == 128);
const _: () = assert!(std::mem::size_of::<Side>() == 128);
const _: () = assert!(SLOTS_OFFSET == 384 + 8 * MAX_PEERS);
const _: () = assert!(SLOTS_OFFSET % 128 == 0);

/// Bytes needed for a header plus `capacity` slots of `elem_size` bytes, rounded up to `page`.
pub fn total_len(capacity: u32, elem_size: usize, page: usize) -> Option<usize> {
    let bytes = (capacity as usize)
        .checked_mul(elem_size)?
        .checked_add(SLOTS_OFFSET)?;
    bytes.checked_add(page - 1).map(|b| b / page * page)
}
