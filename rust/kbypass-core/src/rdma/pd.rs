//! The protection domain (`ibv_pd`): memory regions, queue pairs, shared receive queues and
//! address handles are created in one and may only be used together inside it.

use std::any::Any;
use std::sync::Arc;

use super::ah::AddressHandle;
use super::cancel::Cancel;
use super::context::{Context, ContextInner, Ctx};
use super::ffi::{self, VerbsPtr};
use super::mr::{Access, MemoryRegion};
use super::qp::Endpoint;
use super::srq::SharedReceiveQueue;
use super::user::UserPd;
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

/// A protection domain (`ibv_pd`, or the user-space engine's).
#[derive(Clone)]
pub struct ProtectionDomain {
    pub(super) inner: Pd,
}

/// A protection domain's backend.
#[derive(Clone)]
pub(super) enum Pd {
    Verbs(Arc<PdInner>),
    User(UserPd),
}

impl ProtectionDomain {
    /// `ibv_alloc_pd` on `ctx` ([`Context::alloc_pd`](super::Context::alloc_pd)).
    pub(super) fn alloc(ctx: &Context) -> Result<Self> {
        let c = match &ctx.inner {
            Ctx::Verbs(c) => c,
            Ctx::User(u) => {
                return Ok(ProtectionDomain {
                    inner: Pd::User(u.alloc_pd()?),
                })
            }
        };
        // SAFETY: an open context.
        let pd = unsafe { (c.v.alloc_pd)(c.ptr.as_ptr()) };
        let ptr = VerbsPtr::new(pd).ok_or_else(|| Error::last_os("ibv_alloc_pd", ""))?;
        Ok(ProtectionDomain {
            inner: Pd::Verbs(Arc::new(PdInner {
                ptr,
                ctx: c.clone(),
            })),
        })
    }

    /// True on a user-space context.
    pub fn is_userspace(&self) -> bool {
        matches!(self.inner, Pd::User(_))
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
        if let Pd::User(u) = &self.inner {
            return u.register_region(region, access).map(MemoryRegion::user);
        }
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
        if let Pd::User(u) = &self.inner {
            return u.register_mempool(pool, access).map(MemoryRegion::user);
        }
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
        match &self.inner {
            // SAFETY: the caller's promise, passed on.
            Pd::Verbs(pd) => unsafe { MemoryRegion::register(pd, addr, len, access, owner) },
            Pd::User(u) => {
                // SAFETY: as above.
                let mr = unsafe { u.register_raw(addr, len, access, owner) };
                mr.map(MemoryRegion::user)
            }
        }
    }

    /// Create a shared receive queue of `max_wr` receives with up to `max_sge` SGEs each.
    pub fn create_srq(&self, max_wr: u32, max_sge: u32) -> Result<Arc<SharedReceiveQueue>> {
        match &self.inner {
            Pd::Verbs(pd) => SharedReceiveQueue::create(pd, max_wr, max_sge).map(Arc::new),
            Pd::User(u) => u
                .create_srq(max_wr, max_sge)
                .map(|s| Arc::new(SharedReceiveQueue::user(s))),
        }
    }

    /// Create an address handle for UD sends to `dest` (a user-space context resolves its
    /// MAC address here; `sgid_index` and `port` are its only GID and port).
    pub fn create_ah(&self, dest: &Endpoint, sgid_index: u8, port: u8) -> Result<AddressHandle> {
        self.create_ah_cancellable(dest, sgid_index, port, &Cancel::never())
    }

    /// [`create_ah`](Self::create_ah) whose wait (a user-space context's resolution of the
    /// peer's MAC address, up to its `neigh_timeout`) ends with [`Error::Interrupted`] as soon
    /// as `cancel` says stop.
    pub fn create_ah_cancellable(
        &self,
        dest: &Endpoint,
        sgid_index: u8,
        port: u8,
        cancel: &Cancel<'_>,
    ) -> Result<AddressHandle> {
        match &self.inner {
            Pd::Verbs(pd) => AddressHandle::create(pd, dest, sgid_index, port),
            Pd::User(u) => u.create_ah(dest, cancel).map(AddressHandle::user),
        }
    }
}
