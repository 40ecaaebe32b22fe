//! Raw access to ring memory: the ring area's unsafe boundary.
//!
//! [`RawRing`] is a header pointer, a slot pointer and a mask. Creating one is `unsafe` (the
//! caller promises the memory is a valid, initialised ring that outlives the value); copying
//! slots is `unsafe` (the caller promises it owns the index range by the head/tail protocol in
//! `protocol.rs`). Everything else in `ring/` is safe code on top of these few functions.

use std::ptr::NonNull;

use super::layout::{Header, SLOTS_OFFSET};

/// Pointers into one mapped ring.
pub(crate) struct RawRing<T> {
    hdr: NonNull<Header>,
    slots: NonNull<T>,
    mask: u32,
}

// SAFETY: RawRing only points at memory whose shared parts (the header) are atomics; slot access
// is `unsafe` and synchronised by the head/tail protocol, and T: Send is required to move items.
unsafe impl<T: Send> Send for RawRing<T> {}
// SAFETY: as above; `&RawRing` hands out `&Header` (atomics only) and nothing else safely.
unsafe impl<T: Send> Sync for RawRing<T> {}

/// The header at the start of `mapping`, if the mapping is large enough to hold one.
///
/// Used by `attach` to read a ring file's identity before trusting its capacity.
pub(crate) fn header_of(mapping: &crate::sys::mm::Mapping) -> Option<&Header> {
    if mapping.len() < SLOTS_OFFSET {
        return None;
    }
    // SAFETY: the mapping is page aligned, at least SLOTS_OFFSET bytes long, and lives as long
    // as the returned reference; the header is made of atomics (any bit pattern is valid).
    Some(unsafe { &*mapping.as_ptr().cast::<Header>() })
}

impl<T> RawRing<T> {
    /// # Safety
    /// `base` points at a mapping at least `SLOTS_OFFSET + capacity * size_of::<T>()` bytes long,
    /// 128-byte aligned, whose header has been initialised (or is all zero and about to be), that
    /// stays mapped for the life of the returned value; `capacity` is a power of two.
    pub(crate) unsafe fn new(base: NonNull<u8>, capacity: u32) -> Self {
        debug_assert!(capacity.is_power_of_two());
        debug_assert!(std::mem::align_of::<T>() <= 128);
        // SAFETY: the caller guarantees the mapping covers the header and the slots.
        let slots = unsafe { base.add(SLOTS_OFFSET) }.cast::<T>();
        RawRing {
            hdr: base.cast(),
            slots,
            mask: capacity - 1,
        }
    }

    /// A second set of the same pointers, for a handle that also holds the owning `Ring` (so
    /// the memory outlives the copy); saves the hot path the hop through the `Arc`.
    pub(crate) fn alias(&self) -> Self {
        RawRing {
            hdr: self.hdr,
            slots: self.slots,
            mask: self.mask,
        }
    }

    /// The shared header.
    #[inline(always)]
    pub(crate) fn hdr(&self) -> &Header {
        // SAFETY: by the contract of `new`, the header is mapped and initialised for as long as
        // `self` lives, and it consists of atomics only, so shared references are sound.
        unsafe { self.hdr.as_ref() }
    }

    /// Items in the ring now (a snapshot; exact when both sides are idle).
    pub(crate) fn count(&self) -> u32 {
        let h = self.hdr();
        let cons = h.cons.tail.load(std::sync::atomic::Ordering::Acquire);
        let prod = h.prod.tail.load(std::sync::atomic::Ordering::Acquire);
        prod.wrapping_sub(cons).min(self.capacity())
    }

    /// Slot capacity.
    #[inline(always)]
    pub(crate) fn capacity(&self) -> u32 {
        self.mask + 1
    }

    /// The slot range `[idx, idx + len)` (mod capacity) as at most two contiguous pieces.
    #[inline(always)]
    fn split(&self, idx: u32, len: usize) -> (usize, usize, usize) {
        let start = (idx & self.mask) as usize;
        let first = len.min(self.capacity() as usize - start);
        (start, first, len - first)
    }

    /// Copy `src` into the slots starting at index `idx`.
    ///
    /// # Safety
    /// The calling producer owns slots `[idx, idx + src.len())` (it moved the producer head over
    /// them and the consumer tail shows them free), and `src.len() <= capacity`.
    #[inline(always)]
    pub(crate) unsafe fn write(&self, idx: u32, src: &[T])
    where
        T: Copy,
    {
        let (start, first, second) = self.split(idx, src.len());
        let p = self.slots.as_ptr();
        // SAFETY: both pieces lie inside the slot array (split keeps start + first <= capacity
        // and second <= start), the caller owns them exclusively, and src cannot overlap ring
        // memory it does not own.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), p.add(start), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), p, second);
        }
    }

    /// Copy slots starting at index `idx` into `dst`.
    ///
    /// # Safety
    /// The calling consumer owns slots `[idx, idx + dst.len())`, which a producer has filled and
    /// published, and `dst.len() <= capacity`.
    #[inline(always)]
    pub(crate) unsafe fn read(&self, idx: u32, dst: &mut [T])
    where
        T: Copy,
    {
        let (start, first, second) = self.split(idx, dst.len());
        let p = self.slots.as_ptr();
        // SAFETY: as in `write`, with the slots initialised by the producer that published them.
        unsafe {
            std::ptr::copy_nonoverlapping(p.add(start), dst.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr().add(first), second);
        }
    }

    /// The item in slot `idx`.
    ///
    /// # Safety
    /// As for [`RawRing::read`], for the one slot `idx`.
    #[inline(always)]
    pub(crate) unsafe fn read_one(&self, idx: u32) -> T
    where
        T: Copy,
    {
        // SAFETY: the slot lies inside the slot array (masked) and holds a published item the
        // caller owns.
        unsafe { self.slots.as_ptr().add((idx & self.mask) as usize).read() }
    }

    /// Slots `[idx, idx + len)` as two readable pieces (for zero-copy peek/release).
    ///
    /// # Safety
    /// As for [`RawRing::read`], for the lifetime `'a` of the returned slices.
    #[inline(always)]
    pub(crate) unsafe fn slots<'a>(&self, idx: u32, len: usize) -> (&'a [T], &'a [T]) {
        let (start, first, second) = self.split(idx, len);
        let p = self.slots.as_ptr();
        // SAFETY: the pieces are inside the slot array, initialised and published by a producer,
        // and no producer writes them until the caller moves the consumer tail past them.
        unsafe {
            (
                std::slice::from_raw_parts(p.add(start), first),
                std::slice::from_raw_parts(p, second),
            )
        }
    }
}
