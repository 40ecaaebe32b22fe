//! The ring's memory layout: one header followed by the slots, the same whether the memory is a
//! private mapping or a file in `/dev/shm` that several processes map.
//!
//! ```text
//! offset 0     Meta      (128 B)  magic, version, element size, capacity, mode, refcount
//! offset 128   prod Side (128 B)  head, tail, owner, full counter   — written by producers
//! offset 256   cons Side (128 B)  head, tail, owner, empty counter  — written by consumers
//! offset 384   slots     capacity × size_of::<T>()
//! ```
//! Producer and consumer state sit on separate 128-byte blocks so that the two sides never
//! share a cache line (128, not 64, because adjacent-line prefetch pairs lines on x86).

use std::sync::atomic::{AtomicU32, AtomicU64};

/// `b"KBYRING1"` as a little-endian u64: identifies a ring file.
pub const MAGIC: u64 = u64::from_le_bytes(*b"KBYRING1");
/// Layout version; bumped on any change to this file.
pub const VERSION: u32 = 1;
/// The largest capacity: indices are free-running u32 counters, so the distance between head
/// and tail must stay below 2^31.
pub const MAX_CAPACITY: u32 = 1 << 31;

/// Identity and lifetime of the ring (read-mostly).
#[repr(C, align(128))]
pub struct Meta {
    pub magic: AtomicU64,
    pub version: AtomicU32,
    pub elem_size: AtomicU32,
    pub elem_align: AtomicU32,
    pub capacity: AtomicU32,
    pub mode: AtomicU32,
    /// Number of attached `Ring` values across all processes (shared rings only).
    pub refcount: AtomicU32,
    /// 1 once the creator has finished initialising; attachers wait for it.
    pub ready: AtomicU32,
    pub creator_pid: AtomicU32,
    /// Total bytes of header + slots.
    pub total_len: AtomicU64,
}

/// One side (producer or consumer) of the ring.
#[repr(C, align(128))]
pub struct Side {
    /// Next index to claim (multi sides: moved by CAS before the slots are touched; single
    /// sides keep their head in the handle and leave this at 0).
    pub head: AtomicU32,
    /// Index up to which this side has finished; the other side reads it with Acquire.
    pub tail: AtomicU32,
    /// Single-producer/consumer rings: pid of the process holding this side's handle (0: free).
    pub owner: AtomicU32,
    pub _pad: u32,
    /// Producer: enqueue calls that found less room than asked. Consumer: dequeue calls that
    /// found fewer items than asked.
    pub short: AtomicU64,
}

/// The whole header.
#[repr(C)]
pub struct Header {
    pub meta: Meta,
    pub prod: Side,
    pub cons: Side,
}

/// Byte offset of slot 0.
pub const SLOTS_OFFSET: usize = std::mem::size_of::<Header>();

const _: () = assert!(std::mem::size_of::<Meta>() == 128);
const _: () = assert!(std::mem::size_of::<Side>() == 128);
const _: () = assert!(SLOTS_OFFSET == 384);

/// Bytes needed for a header plus `capacity` slots of `elem_size` bytes, rounded up to `page`.
pub fn total_len(capacity: u32, elem_size: usize, page: usize) -> Option<usize> {
    let bytes = (capacity as usize)
        .checked_mul(elem_size)?
        .checked_add(SLOTS_OFFSET)?;
    bytes.checked_add(page - 1).map(|b| b / page * page)
}
