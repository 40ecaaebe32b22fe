//! The protection domain (`ibv_pd`): memory regions, queue pairs, shared receive queues and
//! address handles are created in one and may only be used together inside it.

use std::any::Any;
use std::sync::Arc;

use super::ah::AddressHandle;
use super::context::ContextInner;
use super::ffi::{self, VerbsPtr};
use super::mr::{Access, MemoryRegion};
use super::qp::Endpoint;
use super::srq::SharedReceiveQueue;
use crate::error::{Error, Result};
use crate::sys::mm::Mapping;

/// The allocated PD; its children hold an `Arc` of it (and it one of its context).
pub(super) struct PdInner {
    pub(super) ptr: VerbsPtr<ffi::ibv_pd>,
    pub(super) ctx: Arc<ContextInner>,
}
impl Drop for PdInner {
    fn drop(&mut self) {
        // SAFETY: allocated by ibv_alloc_pd; MRs, QPs, SRQs and AHs hold an Arc to this, so
        // none remain.
        unsafe { (self.ctx.v.dealloc_pd)(self.ptr.as_ptr()) };
    }
}

/// A protection domain (`ibv_pd`).
#[derive(Clone)]
pub struct ProtectionDomain {
    pub(super) inner: Arc<PdInner>,
}

impl ProtectionDomain {
    /// `ibv_alloc_pd` on `ctx` ([`Context::alloc_pd`](super::Context::alloc_pd)).
    pub(super) fn alloc(ctx: &Arc<ContextInner>) -> Result<Self> {
        // SAFETY: an open context.
        let pd = unsafe { (ctx.v.alloc_pd)(ctx.ptr.as_ptr()) };
        let ptr = VerbsPtr::new(pd).ok_or_else(|| Error::last_os("ibv_alloc_pd", ""))?;
        Ok(ProtectionDomain {
            inner: Arc::new(PdInner {
                ptr,
                ctx: ctx.clone(),
            }),
        })
    }

    /// Register an owned anonymous mapping; the region keeps it alive.
    pub fn register(&self, mem: Mapping, access: Access) -> Result<MemoryRegion> {
        let (addr, len) = (mem.as_ptr(), mem.len());
        // SAFETY: the mapping is valid for `len` bytes and is moved into the region, so it
        // outlives the registration.
        unsafe { self.register_raw(addr, len, access, Box::new(mem)) }
    }

    /// Register a whole [`HugeRegion`](crate::mem::HugeRegion); the memory region holds
    /// an `Arc` of it, so the pages stay mapped (and pinned) while the registration lives.
    pub fn register_region(
        &self,
        region: Arc<crate::mem::HugeRegion>,
        access: Access,
    ) -> Result<MemoryRegion> {
        let (addr, len) = (region.as_ptr(), region.len());
        // SAFETY: the region's mapping is fixed for its lifetime, and the `Arc` moved into the
        // memory region keeps it alive at least as long as the registration.
        unsafe { self.register_raw(addr, len, access, Box::new(region)) }
    }

    /// Register the objects of a [`Mempool`](crate::mem::Mempool): `count * stride` bytes
    /// from object 0, so object `i` is at offset `i * stride` of the memory region.
    pub fn register_mempool(
        &self,
        pool: Arc<crate::mem::Mempool>,
        access: Access,
    ) -> Result<MemoryRegion> {
        let (addr, len) = (pool.base(), pool.len());
        // SAFETY: the objects lie inside the pool's region, which the pool keeps mapped; the
        // `Arc` moved into the memory region keeps the pool alive with the registration.
        unsafe { self.register_raw(addr, len, access, Box::new(pool)) }
    }

    /// Register `len` bytes at `addr`, keeping `owner` alive as long as the region.
    ///
    /// # Safety
    /// `addr..addr+len` must stay valid, and not be moved or freed, while `owner` lives.
    pub unsafe fn register_raw(
        &self,
        addr: *mut u8,
        len: usize,
        access: Access,
        owner: Box<dyn Any + Send + Sync>,
    ) -> Result<MemoryRegion> {
        // SAFETY: the caller's promise, passed on.
        unsafe { MemoryRegion::register(&self.inner, addr, len, access, owner) }
    }

    /// Create a shared receive queue of `max_wr` receives with up to `max_sge` SGEs each.
    pub fn create_srq(&self, max_wr: u32, max_sge: u32) -> Result<Arc<SharedReceiveQueue>> {
        SharedReceiveQueue::create(&self.inner, max_wr, max_sge).map(Arc::new)
    }

    /// Create an address handle for UD sends to `dest`.
    pub fn create_ah(&self, dest: &Endpoint, sgid_index: u8, port: u8) -> Result<AddressHandle> {
        AddressHandle::create(&self.inner, dest, sgid_index, port)
    }
}
