//! The AF_XDP ring protocol, shared with the kernel through `mmap`.
//!
//! Each ring is a power-of-two array of entries plus a producer index, a consumer index and a
//! flags word, all in memory the kernel also writes. Our side keeps cached copies of both
//! indices so that most calls touch no shared cache line (the libxdp `xsk.h` scheme):
//!
//! * producer side ([`ProdRing`]: FILL and TX): `reserve(n)` → write entries → `submit(n)`
//!   publishes them with a release store of the producer index;
//! * consumer side ([`ConsRing`]: RX and COMPLETION): `peek(n)` (acquire load of the producer
//!   index) → read entries → `release(n)` hands the slots back with a release store of the
//!   consumer index.
//!
//! Indices are free-running `u32`s; `idx & mask` is the slot.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Error, Result};
use crate::sys::mm::Mapping;

/// Where, inside one ring's mapping, the kernel put the indices, the flags and the entries.
pub use crate::sys::xdp::XdpRingOffset as RingOffsets;
pub use crate::sys::xdp::XDP_RING_NEED_WAKEUP;

/// One mapped ring: the mapping plus typed pointers into it.
#[derive(Debug)]
struct RingMem<T> {
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    entries: *mut T,
    mask: u32,
    size: u32,
    _map: Mapping,
    _t: PhantomData<T>,
}

impl<T: Copy> RingMem<T> {
    fn new(map: Mapping, off: RingOffsets, size: u32) -> Result<Self> {
        if size == 0 || !size.is_power_of_two() {
            return Err(Error::invalid(format!(
                "ring size {size} is not a power of two: give e.g. 2048 or 4096"
            )));
        }
        let need = off.desc as usize + size as usize * std::mem::size_of::<T>();
        let words = [off.producer, off.consumer, off.flags];
        if need > map.len()
            || words
                .iter()
                .any(|&w| w as usize + 4 > map.len() || w % 4 != 0)
        {
            return Err(Error::invalid(format!(
                "ring offsets {off:?} with {size} entries do not fit a mapping of {} bytes",
                map.len()
            )));
        }
        if off.desc as usize % std::mem::align_of::<T>() != 0 {
            return Err(Error::invalid("ring entries are misaligned in the mapping"));
        }
        let base = map.as_ptr();
        // SAFETY: every offset was checked above to lie inside the mapping with room for the
        // value read there, and to be suitably aligned; the pointers live as long as `_map`.
        let (producer, consumer, flags, entries) = unsafe {
            (
                base.add(off.producer as usize).cast::<AtomicU32>(),
                base.add(off.consumer as usize).cast::<AtomicU32>(),
                base.add(off.flags as usize).cast::<AtomicU32>(),
                base.add(off.desc as usize).cast::<T>(),
            )
        };
        Ok(RingMem {
            producer,
            consumer,
            flags,
            entries,
            mask: size - 1,
            size,
            _map: map,
            _t: PhantomData,
        })
    }

    #[inline(always)]
    fn producer(&self) -> &AtomicU32 {
        // SAFETY: checked in `new`; the kernel and we access it only atomically.
        unsafe { &*self.producer }
    }

    #[inline(always)]
    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { &*self.consumer }
    }

    #[inline(always)]
    fn flags(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { &*self.flags }
    }

    #[inline(always)]
    fn slot(&self, idx: u32) -> *mut T {
        // SAFETY: `idx & mask` < size, and `new` checked that `size` entries fit.
        unsafe { self.entries.add((idx & self.mask) as usize) }
    }
}

/// Producer side of a ring (FILL: frame addresses `u64`; TX: descriptors).
#[derive(Debug)]
pub struct ProdRing<T> {
    mem: RingMem<T>,
    cached_prod: u32,
    cached_cons: u32,
}

// SAFETY: the ring is owned by one thread at a time (it is `!Sync` by the raw pointers, and all
// its methods take `&mut self`); the kernel side synchronises through the atomics.
unsafe impl<T: Send> Send for ProdRing<T> {}

impl<T: Copy> ProdRing<T> {
    /// Wrap a ring the kernel mapped; `size` entries at `off.desc`.
    pub fn new(map: Mapping, off: RingOffsets, size: u32) -> Result<Self> {
        let mem = RingMem::new(map, off, size)?;
        let cached_prod = mem.producer().load(Ordering::Relaxed);
        let cached_cons = mem.consumer().load(Ordering::Relaxed).wrapping_add(size);
        Ok(ProdRing {
            mem,
            cached_prod,
            cached_cons,
        })
    }

    /// Number of entries.
    #[inline]
    pub fn size(&self) -> u32 {
        self.mem.size
    }

    /// Free slots, refreshing the consumer index from shared memory only when the cached view
    /// shows fewer than `wanted`.
    #[inline]
    pub fn free(&mut self, wanted: u32) -> u32 {
        let free = self.cached_cons.wrapping_sub(self.cached_prod);
        if free >= wanted {
            return free;
        }
        self.cached_cons = self
            .mem
            .consumer()
            .load(Ordering::Acquire)
            .wrapping_add(self.mem.size);
        self.cached_cons.wrapping_sub(self.cached_prod)
    }

    /// Reserve exactly `n` slots (all or nothing); returns the first index to [`write`](Self::write).
    #[inline]
    pub fn reserve(&mut self, n: u32) -> Option<u32> {
        if self.free(n) < n {
            return None;
        }
        let idx = self.cached_prod;
        self.cached_prod = self.cached_prod.wrapping_add(n);
        Some(idx)
    }

    /// Reserve up to `n` slots (burst); returns (first index, how many).
    #[inline]
    pub fn reserve_burst(&mut self, n: u32) -> (u32, u32) {
        let got = self.free(n).min(n);
        let idx = self.cached_prod;
        self.cached_prod = self.cached_prod.wrapping_add(got);
        (idx, got)
    }

    /// Write the entry at a reserved index.
    #[inline(always)]
    pub fn write(&mut self, idx: u32, value: T) {
        // SAFETY: the slot is in bounds (see `slot`); the kernel does not read it before the
        // release store in `submit`, so there is no concurrent access.
        unsafe { self.mem.slot(idx).write(value) }
    }

    /// Publish `n` reserved entries to the kernel.
    #[inline]
    pub fn submit(&mut self, n: u32) {
        let p = self.mem.producer();
        p.store(p.load(Ordering::Relaxed).wrapping_add(n), Ordering::Release);
    }

    /// Give back the last `n` reserved but not submitted slots.
    #[inline]
    pub fn cancel(&mut self, n: u32) {
        self.cached_prod = self.cached_prod.wrapping_sub(n);
    }

    /// Entries submitted and not yet consumed by the kernel.
    #[inline]
    pub fn pending(&self) -> u32 {
        let prod = self.mem.producer().load(Ordering::Relaxed);
        prod.wrapping_sub(self.mem.consumer().load(Ordering::Acquire))
    }

    /// Whether the kernel asked for a wake-up (`XDP_USE_NEED_WAKEUP`).
    #[inline]
    pub fn needs_wakeup(&self) -> bool {
        self.mem.flags().load(Ordering::Relaxed) & XDP_RING_NEED_WAKEUP != 0
    }
}

/// Consumer side of a ring (RX: descriptors; COMPLETION: frame addresses `u64`).
#[derive(Debug)]
pub struct ConsRing<T> {
    mem: RingMem<T>,
    cached_prod: u32,
    cached_cons: u32,
}

// SAFETY: as for `ProdRing`.
unsafe impl<T: Send> Send for ConsRing<T> {}

impl<T: Copy> ConsRing<T> {
    /// Wrap a ring the kernel mapped; `size` entries at `off.desc`.
    pub fn new(map: Mapping, off: RingOffsets, size: u32) -> Result<Self> {
        let mem = RingMem::new(map, off, size)?;
        let cached_cons = mem.consumer().load(Ordering::Relaxed);
        let cached_prod = mem.producer().load(Ordering::Relaxed);
        Ok(ConsRing {
            mem,
            cached_prod,
            cached_cons,
        })
    }

    /// Number of entries.
    #[inline]
    pub fn size(&self) -> u32 {
        self.mem.size
    }

    /// Entries ready, refreshing the producer index only when the cached view is empty.
    #[inline]
    pub fn available(&mut self, wanted: u32) -> u32 {
        let mut entries = self.cached_prod.wrapping_sub(self.cached_cons);
        if entries == 0 {
            self.cached_prod = self.mem.producer().load(Ordering::Acquire);
            entries = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        entries.min(wanted)
    }

    /// Take up to `n` ready entries; returns (first index, how many) to [`read`](Self::read).
    #[inline]
    pub fn peek(&mut self, n: u32) -> (u32, u32) {
        let got = self.available(n);
        let idx = self.cached_cons;
        self.cached_cons = self.cached_cons.wrapping_add(got);
        (idx, got)
    }

    /// Read the entry at a peeked index.
    #[inline(always)]
    pub fn read(&self, idx: u32) -> T {
        // SAFETY: the slot is in bounds; the acquire load in `peek` ordered the kernel's write
        // before this read, and the kernel won't reuse the slot before `release`.
        unsafe { self.mem.slot(idx).read() }
    }

    /// Hand `n` peeked slots back to the kernel.
    #[inline]
    pub fn release(&mut self, n: u32) {
        let c = self.mem.consumer();
        c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Release);
    }

    /// Whether the kernel asked for a wake-up.
    #[inline]
    pub fn needs_wakeup(&self) -> bool {
        self.mem.flags().load(Ordering::Relaxed) & XDP_RING_NEED_WAKEUP != 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fake "kernel" view: the same memory mapped twice through a memfd, with the opposite
    /// role on the other side, like the kernel has.
    fn pair<T: Copy>(size: u32) -> (ProdRing<T>, ConsRing<T>) {
        use std::os::fd::{AsFd, AsRawFd};
        let off = RingOffsets {
            producer: 0,
            consumer: 64,
            flags: 128,
            desc: 192,
        };
        let len = 192 + size as usize * std::mem::size_of::<T>();
        let fd = crate::sys::mm::memfd_create("kbx-xsk-ring-test", 0).unwrap();
        // SAFETY: resizing our own fresh memfd.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), len as i64) }, 0);
        let m1 = Mapping::shared(fd.as_fd(), len, 0).unwrap();
        let m2 = Mapping::shared(fd.as_fd(), len, 0).unwrap();
        (
            ProdRing::new(m1, off, size).unwrap(),
            ConsRing::new(m2, off, size).unwrap(),
        )
    }

    #[test]
    fn reserve_submit_peek_release_round_trip() {
        let (mut p, mut c) = pair::<u64>(8);
        assert_eq!(p.free(8), 8);
        let idx = p.reserve(5).unwrap();
        for i in 0..5 {
            p.write(idx + i, 100 + i as u64);
        }
        // nothing visible before submit
        assert_eq!(c.peek(8).1, 0);
        p.submit(5);
        let (ci, n) = c.peek(8);
        assert_eq!(n, 5);
        let got: Vec<u64> = (0..n).map(|i| c.read(ci + i)).collect();
        assert_eq!(got, vec![100, 101, 102, 103, 104]);
        // producer sees only 3 free until the consumer releases
        assert_eq!(p.free(8), 3);
        assert!(p.reserve(4).is_none());
        c.release(5);
        assert_eq!(p.free(8), 8);
    }

    #[test]
    fn burst_reserve_takes_what_fits_and_indices_wrap() {
        let (mut p, mut c) = pair::<u64>(4);
        let mut next = 0u64;
        let mut seen = Vec::new();
        for _ in 0..1000 {
            let (idx, n) = p.reserve_burst(3);
            for i in 0..n {
                p.write(idx.wrapping_add(i), next);
                next += 1;
            }
            p.submit(n);
            let (ci, m) = c.peek(2);
            for i in 0..m {
                seen.push(c.read(ci.wrapping_add(i)));
            }
            c.release(m);
        }
        let (ci, m) = c.peek(4);
        for i in 0..m {
            seen.push(c.read(ci.wrapping_add(i)));
        }
        c.release(m);
        assert_eq!(seen, (0..next).collect::<Vec<_>>());
    }

    #[test]
    fn cancel_returns_unsubmitted_slots() {
        let (mut p, _c) = pair::<u64>(4);
        p.reserve(4).unwrap();
        assert!(p.reserve(1).is_none());
        p.cancel(2);
        assert_eq!(p.free(4), 2);
    }

    #[test]
    fn bad_geometry_is_refused() {
        let m = Mapping::anonymous(4096, 0).unwrap();
        let off = RingOffsets {
            producer: 0,
            consumer: 64,
            flags: 128,
            desc: 192,
        };
        assert!(ProdRing::<u64>::new(m, off, 6).is_err());
        let m = Mapping::anonymous(4096, 0).unwrap();
        assert!(ProdRing::<u64>::new(m, off, 1024).is_err());
    }

    #[test]
    fn two_threads_move_a_million_entries_in_order() {
        let (mut p, mut c) = pair::<u64>(256);
        const N: u64 = 1_000_000;
        let t = std::thread::spawn(move || {
            let mut next = 0u64;
            while next < N {
                let (idx, n) = p.reserve_burst(32.min((N - next) as u32));
                for i in 0..n {
                    p.write(idx.wrapping_add(i), next + i as u64);
                }
                p.submit(n);
                next += n as u64;
                if n == 0 {
                    std::hint::spin_loop();
                }
            }
        });
        let mut expect = 0u64;
        while expect < N {
            let (idx, n) = c.peek(64);
            for i in 0..n {
                assert_eq!(c.read(idx.wrapping_add(i)), expect);
                expect += 1;
            }
            c.release(n);
        }
        t.join().unwrap();
    }
}
