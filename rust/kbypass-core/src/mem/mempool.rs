//! A DPDK `rte_mempool`-style pool of fixed-size objects carved from a [`HugeRegion`].
//!
//! * Objects are named by index (`0..count`); object `i` lives at `base + i * stride`.
//! * The free objects sit in a lock-free MPMC [`Ring<u32>`] (the pool's backend).
//! * [`PoolCache`] is a per-thread cache (DPDK's per-lcore cache): gets and puts hit a small
//!   local stack and reach the ring only in bulk, so the fast path touches no shared line.
//! * Every object has a state byte (free / in use): a put of an index that is out of range or
//!   already free is refused with an error and changes nothing, instead of corrupting the pool.
//!   The check is exact for puts through the pool; through a cache it is a plain load/store, so
//!   two threads racing to put the *same* object can both pass (a bug either way, and DPDK's
//!   debug mode has the same limit).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::mem::{HugeRegion, RegionOptions, Tier};
use crate::ring::{Consumer, Mode, Producer, Ring};

const FREE: u8 = 0;
const IN_USE: u8 = 1;

/// Largest number of objects in one pool (the ring's capacity limit).
pub const MAX_OBJECTS: usize = 1 << 30;

/// Counters of a pool (all pools and caches add to them; read with [`Mempool::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MempoolStats {
    /// Objects in the pool.
    pub count: u32,
    /// Bytes per object as requested.
    pub size: usize,
    /// Distance between objects (size rounded up to a cache line unless it is a power of two).
    pub stride: usize,
    /// Free objects in the shared ring.
    pub available: u32,
    /// Free objects held by per-thread caches.
    pub cached: u32,
    /// Objects handed out and not returned.
    pub in_use: u32,
    /// Objects handed out, ever.
    pub gets: u64,
    /// Objects returned, ever.
    pub puts: u64,
    /// Get calls that could not be served in full (bulk refused, burst shortened).
    pub get_failures: u64,
    /// Put calls refused because an object was out of range or already free.
    pub refused_puts: u64,
}

/// A pool of `count` objects of `size` bytes (see the [module docs](self)).
#[derive(Debug)]
pub struct Mempool {
    region: Arc<HugeRegion>,
    offset: usize,
    size: usize,
    stride: usize,
    count: u32,
    ring: Arc<Ring<u32>>,
    state: Box<[AtomicU8]>,
    cached: AtomicU64,
    gets: AtomicU64,
    puts: AtomicU64,
    get_failures: AtomicU64,
    refused_puts: AtomicU64,
}

/// The stride for objects of `size` bytes: powers of two stay as they are (AF_XDP frames of
/// 2048/4096 must be exactly that apart), anything else is rounded up to a 64-byte cache line.
pub fn stride_for(size: usize) -> usize {
    if size.is_power_of_two() {
        size
    } else {
        size.div_ceil(64) * 64
    }
}

impl Mempool {
    /// A pool of `count` objects of `size` bytes in a new region allocated with `opts`.
    pub fn new(count: usize, size: usize, opts: &RegionOptions) -> Result<Arc<Self>> {
        let (count32, stride) = check_geometry(count, size)?;
        let bytes = (count32 as usize)
            .checked_mul(stride)
            .ok_or_else(|| too_large(count, size))?;
        let region = Arc::new(HugeRegion::new(bytes, opts)?);
        Self::build(region, 0, count32, size, stride)
    }

    fn build(
        region: Arc<HugeRegion>,
        offset: usize,
        count: u32,
        size: usize,
        stride: usize,
    ) -> Result<Arc<Self>> {
        let ring = Ring::<u32>::new((count as usize).next_power_of_two().max(2), Mode::Mpmc)?;
        let mut prod = ring.producer()?;
        let all: Vec<u32> = (0..count).collect();
        for chunk in all.chunks(4096) {
            if prod.enqueue_bulk(chunk) != chunk.len() {
                return Err(Error::State(
                    "mempool ring refused its initial objects".into(),
                ));
            }
        }
        drop(prod);
        let state = (0..count).map(|_| AtomicU8::new(FREE)).collect();
        Ok(Arc::new(Mempool {
            region,
            offset,
            size,
            stride,
            count,
            ring,
            state,
            cached: AtomicU64::new(0),
            gets: AtomicU64::new(0),
            puts: AtomicU64::new(0),
            get_failures: AtomicU64::new(0),
            refused_puts: AtomicU64::new(0),
        }))
    }

    /// Objects in the pool.
    #[inline]
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Requested object size.
    #[inline]
    pub fn size(&self) -> usize {
        self.size
    }

    /// Distance between objects.
    #[inline]
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Address of object 0.
    #[inline]
    pub fn base(&self) -> *mut u8 {
        self.region.as_ptr().wrapping_add(self.offset)
    }

    /// Where object 0 lies in [`Mempool::region`] (bytes from its start).
    #[inline]
    pub fn region_offset(&self) -> usize {
        self.offset
    }

    /// Bytes spanned by the objects (`count * stride`).
    #[inline]
    pub fn len(&self) -> usize {
        self.count as usize * self.stride
    }

    /// Always false: empty pools are refused.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The region the pool lives in.
    pub fn region(&self) -> &Arc<HugeRegion> {
        &self.region
    }

    /// The page tier of the memory.
    pub fn tier(&self) -> Tier {
        self.region.tier()
    }

    /// Address of object `idx`, or `None` when it is out of range.
    #[inline]
    pub fn obj_ptr(&self, idx: u32) -> Option<*mut u8> {
        (idx < self.count).then(|| self.base().wrapping_add(idx as usize * self.stride))
    }

    /// Whether object `idx` is currently handed out.
    pub fn is_in_use(&self, idx: u32) -> bool {
        self.state
            .get(idx as usize)
            .is_some_and(|s| s.load(Relaxed) == IN_USE)
    }

    /// Take exactly `out.len()` objects, or none (returns whether it did).
    pub fn get_bulk(&self, out: &mut [u32]) -> bool {
        let n = self
            .ring
            .consumer()
            .map(|mut c| c.dequeue_bulk(out))
            .unwrap_or(0);
        if n < out.len() && !out.is_empty() {
            self.get_failures.fetch_add(1, Relaxed);
        }
        self.mark_taken(&out[..n]);
        n == out.len()
    }

    /// Take up to `out.len()` objects; returns how many.
    pub fn get_burst(&self, out: &mut [u32]) -> usize {
        let n = self
            .ring
            .consumer()
            .map(|mut c| c.dequeue_burst(out))
            .unwrap_or(0);
        if n < out.len() {
            self.get_failures.fetch_add(1, Relaxed);
        }
        self.mark_taken(&out[..n]);
        n
    }

    fn mark_taken(&self, objs: &[u32]) {
        for &i in objs {
            self.state[i as usize].store(IN_USE, Relaxed);
        }
        self.gets.fetch_add(objs.len() as u64, Relaxed);
    }

    /// Validate and mark `objs` free: all or nothing. Exact (atomic swap per object).
    fn release_checked(&self, objs: &[u32]) -> Result<()> {
        for (k, &i) in objs.iter().enumerate() {
            let bad = if i >= self.count {
                Some(format!(
                    "object {i} is not from this pool (it has {} objects, 0..{})",
                    self.count, self.count
                ))
            } else if self.state[i as usize].swap(FREE, Relaxed) != IN_USE {
                Some(format!(
                    "object {i} is already free (double put): put each object back once"
                ))
            } else {
                None
            };
            if let Some(msg) = bad {
                // Undo what this call already marked, so a refused put changes nothing.
                for &j in &objs[..k] {
                    self.state[j as usize].store(IN_USE, Relaxed);
                }
                self.refused_puts.fetch_add(1, Relaxed);
                return Err(Error::invalid(format!("{msg}; nothing was put back")));
            }
        }
        Ok(())
    }

    /// Return objects to the pool; refused (and nothing changes) if any is out of range, free,
    /// or listed twice.
    pub fn put_bulk(&self, objs: &[u32]) -> Result<()> {
        self.release_checked(objs)?;
        let mut prod = self.ring.producer()?;
        // The ring has room for every object of the pool, so this cannot fall short.
        let n = prod.enqueue_bulk(objs);
        debug_assert_eq!(n, objs.len());
        self.puts.fetch_add(objs.len() as u64, Relaxed);
        Ok(())
    }

    /// A per-thread cache of up to `size` objects (DPDK's default is 512; 0 disables caching).
    pub fn cache(self: &Arc<Self>, size: usize) -> Result<PoolCache> {
        if size > self.count as usize {
            return Err(Error::invalid(format!(
                "cache size {size} is larger than the pool ({} objects): use at most a fraction of it",
                self.count
            )));
        }
        Ok(PoolCache {
            prod: self.ring.producer()?,
            cons: self.ring.consumer()?,
            objs: Vec::with_capacity(size + size / 2 + 1 + 1024),
            size,
            flush_at: size + size / 2,
            pool: Arc::clone(self),
        })
    }

    /// Free objects in the shared ring (not counting caches).
    pub fn available(&self) -> usize {
        self.ring.len()
    }

    /// Counters and a snapshot of where the objects are.
    pub fn stats(&self) -> MempoolStats {
        let available = self.ring.len() as u32;
        let cached = self.cached.load(Relaxed) as u32;
        MempoolStats {
            count: self.count,
            size: self.size,
            stride: self.stride,
            available,
            cached,
            in_use: self.count.saturating_sub(available + cached),
            gets: self.gets.load(Relaxed),
            puts: self.puts.load(Relaxed),
            get_failures: self.get_failures.load(Relaxed),
            refused_puts: self.refused_puts.load(Relaxed),
        }
    }
}

fn too_large(count: usize, size: usize) -> Error {
    Error::invalid(format!(
        "{count} objects of {size} bytes do not fit in memory: use fewer or smaller objects"
    ))
}

fn check_geometry(count: usize, size: usize) -> Result<(u32, usize)> {
    if count == 0 || count > MAX_OBJECTS {
        return Err(Error::invalid(format!(
            "count must be 1..={MAX_OBJECTS} objects, not {count}"
        )));
    }
    if size == 0 || size > 1 << 30 {
        return Err(Error::invalid(format!(
            "object size must be 1..=1 GiB bytes, not {size}"
        )));
    }
    Ok((count as u32, stride_for(size)))
}

/// A per-thread cache in front of a [`Mempool`]: `Send`, not `Sync`; flushed back when dropped.
#[derive(Debug)]
pub struct PoolCache {
    pool: Arc<Mempool>,
    prod: Producer<u32>,
    cons: Consumer<u32>,
    objs: Vec<u32>,
    size: usize,
    flush_at: usize,
}

impl PoolCache {
    /// The pool behind this cache.
    pub fn pool(&self) -> &Arc<Mempool> {
        &self.pool
    }

    /// Objects held by this cache.
    pub fn len(&self) -> usize {
        self.objs.len()
    }

    /// Whether the cache holds no objects.
    pub fn is_empty(&self) -> bool {
        self.objs.is_empty()
    }

    /// Take exactly `out.len()` objects or none.
    #[inline]
    pub fn get_bulk(&mut self, out: &mut [u32]) -> bool {
        let n = out.len();
        if self.objs.len() < n && !self.refill(n) {
            self.pool.get_failures.fetch_add(1, Relaxed);
            return false;
        }
        let from = self.objs.len() - n;
        out.copy_from_slice(&self.objs[from..]);
        self.objs.truncate(from);
        self.pool.cached.fetch_sub(n as u64, Relaxed);
        self.pool.mark_taken(out);
        true
    }

    /// Take up to `out.len()` objects; returns how many.
    #[inline]
    pub fn get_burst(&mut self, out: &mut [u32]) -> usize {
        if self.objs.len() < out.len() {
            self.refill(out.len());
        }
        let n = out.len().min(self.objs.len());
        if n < out.len() {
            self.pool.get_failures.fetch_add(1, Relaxed);
        }
        let from = self.objs.len() - n;
        out[..n].copy_from_slice(&self.objs[from..]);
        self.objs.truncate(from);
        self.pool.cached.fetch_sub(n as u64, Relaxed);
        self.pool.mark_taken(&out[..n]);
        n
    }

    /// Pull from the ring until the cache holds at least `want` objects (plus `size` spare).
    fn refill(&mut self, want: usize) -> bool {
        let have = self.objs.len();
        let target = want + self.size;
        self.objs.resize(target.max(have), 0);
        let got = self
            .cons
            .dequeue_burst(&mut self.objs[have..target.max(have)]);
        self.objs.truncate(have + got);
        self.pool.cached.fetch_add(got as u64, Relaxed);
        self.objs.len() >= want
    }

    /// Return objects: refused, and nothing changes, if any is out of range or already free.
    #[inline]
    pub fn put_bulk(&mut self, objs: &[u32]) -> Result<()> {
        let pool = &self.pool;
        for (k, &i) in objs.iter().enumerate() {
            let ok = i < pool.count && pool.state[i as usize].load(Relaxed) == IN_USE;
            if !ok {
                for &j in &objs[..k] {
                    pool.state[j as usize].store(IN_USE, Relaxed);
                }
                pool.refused_puts.fetch_add(1, Relaxed);
                let why = if i >= pool.count {
                    "is not from this pool"
                } else {
                    "is already free (double put)"
                };
                return Err(Error::invalid(format!(
                    "object {i} {why}; nothing was put back"
                )));
            }
            pool.state[i as usize].store(FREE, Relaxed);
        }
        self.objs.extend_from_slice(objs);
        pool.cached.fetch_add(objs.len() as u64, Relaxed);
        pool.puts.fetch_add(objs.len() as u64, Relaxed);
        if self.objs.len() > self.flush_at {
            let keep = self.size;
            self.spill(keep);
        }
        Ok(())
    }

    /// Move cached objects beyond `keep` to the shared ring.
    fn spill(&mut self, keep: usize) {
        if self.objs.len() <= keep {
            return;
        }
        let n = self.prod.enqueue_burst(&self.objs[keep..]);
        debug_assert_eq!(
            n,
            self.objs.len() - keep,
            "the ring holds every object of the pool"
        );
        self.objs.truncate(self.objs.len() - n);
        self.pool.cached.fetch_sub(n as u64, Relaxed);
    }

    /// Return every cached object to the shared ring.
    pub fn flush(&mut self) {
        self.spill(0);
    }
}

impl Drop for PoolCache {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Time `rounds` get+put cycles of `bulk` objects through a fresh cache of `cache_size`;
/// returns elapsed nanoseconds. Used by the benchmarks (the work is real: every object is
/// state-checked on put).
pub fn bench_cycle(
    pool: &Arc<Mempool>,
    rounds: u64,
    bulk: usize,
    cache_size: usize,
) -> Result<u64> {
    let mut cache = pool.cache(cache_size.min(pool.count() as usize))?;
    let mut objs = vec![0u32; bulk];
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        if !cache.get_bulk(&mut objs) {
            return Err(Error::State(
                "pool ran dry during the benchmark: use a larger pool".into(),
            ));
        }
        cache.put_bulk(std::hint::black_box(&objs))?;
    }
    Ok(start.elapsed().as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::HugePages;

    fn small(count: usize, size: usize) -> Arc<Mempool> {
        let opts = RegionOptions {
            hugepages: HugePages::Never,
            lock: false,
            ..Default::default()
        };
        Mempool::new(count, size, &opts).unwrap()
    }

    #[test]
    fn get_put_bulk_and_burst_semantics() {
        let p = small(100, 2048);
        assert_eq!((p.count(), p.stride(), p.len()), (100, 2048, 204_800));
        let mut a = vec![0u32; 64];
        assert!(p.get_bulk(&mut a));
        let mut b = vec![0u32; 64];
        assert!(!p.get_bulk(&mut b), "bulk is all or nothing");
        assert_eq!(p.get_burst(&mut b), 36);
        let s = p.stats();
        assert_eq!(
            (s.available, s.in_use, s.gets, s.get_failures),
            (0, 100, 100, 2) // the refused bulk and the short burst
        );
        let mut all: Vec<u32> = a.iter().chain(&b[..36]).copied().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..100).collect::<Vec<_>>(),
            "every object handed out once"
        );
        p.put_bulk(&a).unwrap();
        assert_eq!(p.stats().available, 64);
    }

    #[test]
    fn double_and_foreign_puts_are_refused_without_effect() {
        let p = small(16, 100);
        assert_eq!(p.stride(), 128);
        let mut a = vec![0u32; 4];
        assert!(p.get_bulk(&mut a));
        p.put_bulk(&a[..2]).unwrap();
        let e = p.put_bulk(&a).unwrap_err().to_string();
        assert!(e.contains("already free"), "{e}");
        // a[2], a[3] are still in use: the refused call changed nothing
        assert!(p.is_in_use(a[2]) && p.is_in_use(a[3]));
        assert!(p
            .put_bulk(&[99])
            .unwrap_err()
            .to_string()
            .contains("not from this pool"));
        assert!(p
            .put_bulk(&[a[2], a[2]])
            .unwrap_err()
            .to_string()
            .contains("already free"));
        assert!(p.is_in_use(a[2]));
        p.put_bulk(&a[2..]).unwrap();
        assert_eq!(p.stats().refused_puts, 3);
        assert_eq!(p.stats().available, 16);
    }

    #[test]
    fn cache_serves_and_flushes() {
        let p = small(1024, 64);
        let mut c = p.cache(128).unwrap();
        let mut a = [0u32; 32];
        for _ in 0..10 {
            assert!(c.get_bulk(&mut a));
            c.put_bulk(&a).unwrap();
        }
        assert!(
            c.put_bulk(&a).is_err(),
            "double put through a cache is refused"
        );
        let s = p.stats();
        assert_eq!(s.in_use, 0);
        assert_eq!(s.cached as usize, c.len());
        drop(c);
        assert_eq!(p.stats().available, 1024);
    }

    #[test]
    fn caches_on_many_threads_never_hand_out_an_object_twice() {
        let p = small(4096, 64);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let p = Arc::clone(&p);
                std::thread::spawn(move || {
                    let mut c = p.cache(64).unwrap();
                    let mut held = [0u32; 32];
                    for round in 0..20_000u32 {
                        if !c.get_bulk(&mut held) {
                            continue;
                        }
                        // write a stamp into each object and check nobody else holds it
                        for &i in &held {
                            let obj = p.obj_ptr(i).unwrap();
                            let stamp = (t << 24) | (round & 0xff_ffff);
                            // SAFETY: object i is exclusively ours until put back; 4 bytes fit.
                            unsafe {
                                obj.cast::<u32>().write(stamp);
                                std::hint::spin_loop();
                                assert_eq!(obj.cast::<u32>().read(), stamp);
                            }
                        }
                        c.put_bulk(&held).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = p.stats();
        assert_eq!((s.available, s.in_use, s.cached), (4096, 0, 0));
        assert_eq!(s.gets, s.puts);
    }

    #[test]
    fn bad_geometry_is_refused() {
        let opts = RegionOptions {
            hugepages: HugePages::Never,
            lock: false,
            ..Default::default()
        };
        assert!(Mempool::new(0, 64, &opts).is_err());
        assert!(Mempool::new(10, 0, &opts).is_err());
        assert!(Mempool::new(usize::MAX, 64, &opts).is_err());
        let p = small(8, 64);
        assert!(p.cache(9).is_err());
        assert!(p.obj_ptr(8).is_none());
    }
}
