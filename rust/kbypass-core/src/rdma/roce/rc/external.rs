//! Memory the RoCE engine reads and writes on a peer's behalf: an [`ExternalMemory`] is a
//! pointer and a length kept valid by the value that owns the bytes (a `Vec`, a HugeRegion, a
//! Mempool, a Python buffer export), which it holds.
//!
//! The bytes may be touched by their owner (the application) at any time, as an HCA's DMA
//! touches registered memory: they are only ever copied in and out through raw pointers
//! (never borrowed as a slice), and atomics use the hardware's 64-bit atomics, so nothing in
//! Rust holds a reference the application's writes could alias.

use std::any::Any;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};

/// Registered bytes and the value that keeps them alive and in place.
pub struct ExternalMemory {
    ptr: NonNull<u8>,
    len: usize,
    _keeper: Box<dyn Any + Send + Sync>,
}

// SAFETY: the bytes are reached only through `copy_*`/atomics on raw pointers (no references
// shared between threads), and the keeper is itself Send + Sync.
unsafe impl Send for ExternalMemory {}
// SAFETY: as above.
unsafe impl Sync for ExternalMemory {}

impl std::fmt::Debug for ExternalMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalMemory")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len)
            .finish()
    }
}

impl ExternalMemory {
    /// `len` zeroed bytes the memory owns (8-byte aligned, so atomics work anywhere).
    pub fn zeroed(len: usize) -> Arc<Self> {
        let mut words = vec![0u64; len.div_ceil(8)].into_boxed_slice();
        let ptr = NonNull::new(words.as_mut_ptr().cast::<u8>()).expect("a Box is never null");
        // The boxed slice's heap buffer does not move when the box moves into the keeper.
        Arc::new(ExternalMemory {
            ptr,
            len,
            _keeper: Box::new(words),
        })
    }

    /// The bytes of `v`, owned from now on.
    pub fn from_vec(mut v: Vec<u8>) -> Arc<Self> {
        let ptr = NonNull::new(v.as_mut_ptr()).expect("a Vec's pointer is never null");
        let len = v.len();
        Arc::new(ExternalMemory {
            ptr,
            len,
            _keeper: Box::new(v),
        })
    }

    /// A whole [`HugeRegion`](crate::mem::HugeRegion); the `Arc` keeps it mapped.
    pub fn from_region(region: Arc<crate::mem::HugeRegion>) -> Result<Arc<Self>> {
        let (ptr, len) = (region.as_ptr(), region.len());
        // SAFETY: the region's mapping is fixed for its lifetime, and the Arc moved in as the
        // keeper keeps it alive as long as this value.
        unsafe { Self::from_raw(ptr, len, Box::new(region)) }
    }

    /// The objects of a [`Mempool`](crate::mem::Mempool) (`count * stride` bytes from object
    /// 0); the `Arc` keeps the pool, and so its region, alive.
    pub fn from_mempool(pool: Arc<crate::mem::Mempool>) -> Result<Arc<Self>> {
        let (ptr, len) = (pool.base(), pool.len());
        // SAFETY: the objects lie inside the pool's region, mapped while the pool (the
        // keeper moved in) lives.
        unsafe { Self::from_raw(ptr, len, Box::new(pool)) }
    }

    /// `len` bytes at `ptr`, kept valid by `keeper`.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be valid for reads and writes, and must not be unmapped, moved or
    /// freed, while `keeper` lives.
    pub unsafe fn from_raw(
        ptr: *mut u8,
        len: usize,
        keeper: Box<dyn Any + Send + Sync>,
    ) -> Result<Arc<Self>> {
        let ptr = NonNull::new(ptr).ok_or_else(|| Error::invalid("memory at address 0"))?;
        if (ptr.as_ptr() as usize).checked_add(len).is_none() {
            return Err(Error::invalid("memory range wraps the address space"));
        }
        Ok(Arc::new(ExternalMemory {
            ptr,
            len,
            _keeper: keeper,
        }))
    }

    /// Address of the first byte.
    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn range(&self, off: usize, len: usize) -> Option<*mut u8> {
        let end = off.checked_add(len)?;
        (end <= self.len).then(|| self.ptr.as_ptr().wrapping_add(off))
    }

    /// Copies `out.len()` bytes at `off` into `out`; false (nothing copied) when out of range.
    pub fn read(&self, off: usize, out: &mut [u8]) -> bool {
        let Some(src) = self.range(off, out.len()) else {
            return false;
        };
        // SAFETY: `range` checked the bytes lie inside the memory, valid while the keeper
        // lives (we hold it); `out` is Rust memory, so it cannot overlap them.
        unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) };
        true
    }

    /// Copies `data` to `off`; false (nothing written) when out of range.
    pub fn write(&self, off: usize, data: &[u8]) -> bool {
        let Some(dst) = self.range(off, data.len()) else {
            return false;
        };
        // SAFETY: as in `read`, with `data` as the source.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        true
    }

    /// `len` bytes at `off`, copied out.
    pub fn to_vec(&self, off: usize, len: usize) -> Option<Vec<u8>> {
        let mut v = vec![0; len];
        self.read(off, &mut v).then_some(v)
    }

    /// Compare and swap (`compare: Some`) or fetch and add on the 8-byte word at `off`, in
    /// host byte order; returns the original value. The word is updated with a 64-bit atomic
    /// when its address is 8-byte aligned (always, for memory whose address the peer sees as
    /// aligned), else read and written back (no other atomic can reach it then).
    pub fn atomic(&self, off: usize, compare: Option<u64>, swap_add: u64) -> Option<u64> {
        let p = self.range(off, 8)?;
        if (p as usize) % 8 == 0 {
            // SAFETY: 8 bytes inside the memory (checked), 8-byte aligned (checked), valid
            // while we hold the keeper; every access the engine makes to them is atomic or a
            // byte copy, as the hardware's would be.
            let a = unsafe { AtomicU64::from_ptr(p.cast::<u64>()) };
            return Some(match compare {
                Some(c) => {
                    match a.compare_exchange(c, swap_add, Ordering::SeqCst, Ordering::SeqCst) {
                        Ok(v) | Err(v) => v,
                    }
                }
                None => a.fetch_add(swap_add, Ordering::SeqCst),
            });
        }
        let mut b = [0u8; 8];
        self.read(off, &mut b);
        let orig = u64::from_ne_bytes(b);
        let new = match compare {
            Some(c) if c == orig => swap_add,
            Some(_) => orig,
            None => orig.wrapping_add(swap_add),
        };
        self.write(off, &new.to_ne_bytes());
        Some(orig)
    }
}
