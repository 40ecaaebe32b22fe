//! Memory regions (`ibv_mr`) and the scatter/gather elements ([`Sge`]) cut from them.
//!
//! [`Sge`] lives here, beside the region, so that its fields stay private to this file:
//! [`MemoryRegion::sge`] is the only safe way to make one.

use std::any::Any;
use std::marker::PhantomData;
use std::ptr;
use std::sync::Arc;

use super::ffi::{self, VerbsPtr};
use super::pd::PdInner;
use super::user::UserMr;
use crate::error::{Error, Result};

/// Memory access rights of a memory region or a QP (`enum ibv_access_flags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Access(pub i32);

impl Access {
    /// Only local reads (the device reads it to send).
    pub const LOCAL_READ: Access = Access(0);
    /// The device may write it (receives, read responses).
    pub const LOCAL_WRITE: Access = Access(ffi::ACCESS_LOCAL_WRITE);
    /// Remote peers may RDMA-write it.
    pub const REMOTE_WRITE: Access = Access(ffi::ACCESS_REMOTE_WRITE);
    /// Remote peers may RDMA-read it.
    pub const REMOTE_READ: Access = Access(ffi::ACCESS_REMOTE_READ);
    /// Remote peers may run atomics on it.
    pub const REMOTE_ATOMIC: Access = Access(ffi::ACCESS_REMOTE_ATOMIC);
    /// Everything above.
    pub const ALL: Access = Access(
        ffi::ACCESS_LOCAL_WRITE
            | ffi::ACCESS_REMOTE_WRITE
            | ffi::ACCESS_REMOTE_READ
            | ffi::ACCESS_REMOTE_ATOMIC,
    );
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}

/// A registered memory region (`ibv_mr`, or the user-space engine's), owning (or keeping
/// alive) its memory.
pub struct MemoryRegion {
    imp: Mr,
}

enum Mr {
    Verbs(VerbsMr),
    User(UserMr),
}

/// The libibverbs half: the `ibv_mr` and the memory it keeps alive.
struct VerbsMr {
    ptr: VerbsPtr<ffi::ibv_mr>,
    addr: *mut u8,
    len: usize,
    pd: Arc<PdInner>,
    _owner: Box<dyn Any + Send + Sync>,
}
// SAFETY: see `VerbsPtr` for the ibv_mr; the bytes are shared with the device, and reads/writes through
// `read`/`write` are copies whose ordering against the device is the caller's (completions).
unsafe impl Send for VerbsMr {}
// SAFETY: as above.
unsafe impl Sync for VerbsMr {}

impl Drop for VerbsMr {
    fn drop(&mut self) {
        // SAFETY: registered by ibv_reg_mr; deregistered once, before the memory (`_owner`,
        // dropped after this) and the PD (Arc) go.
        unsafe { (self.pd.ctx.v.dereg_mr)(self.ptr.as_ptr()) };
    }
}

impl MemoryRegion {
    /// `ibv_reg_mr` ([`ProtectionDomain::register_raw`](super::ProtectionDomain::register_raw)).
    ///
    /// # Safety
    /// `addr..addr+len` must stay valid, and not be moved or freed, while `owner` lives.
    pub(super) unsafe fn register(
        pd: &Arc<PdInner>,
        addr: *mut u8,
        len: usize,
        access: Access,
        owner: Box<dyn Any + Send + Sync>,
    ) -> Result<Self> {
        if len == 0 {
            return Err(Error::invalid("cannot register 0 bytes"));
        }
        // SAFETY: valid PD; the caller guarantees the memory range.
        let mr = unsafe { (pd.ctx.v.reg_mr)(pd.ptr.as_ptr(), addr.cast(), len, access.0) };
        let ptr = VerbsPtr::new(mr).ok_or_else(|| {
            Error::last_os(
                format!("ibv_reg_mr({len} bytes)"),
                "RLIMIT_MEMLOCK too low? run as root or raise it with `ulimit -l unlimited`",
            )
        })?;
        Ok(MemoryRegion {
            imp: Mr::Verbs(VerbsMr {
                ptr,
                addr,
                len,
                pd: pd.clone(),
                _owner: owner,
            }),
        })
    }

    /// A region the user-space engine registered.
    pub(super) fn user(mr: UserMr) -> Self {
        MemoryRegion { imp: Mr::User(mr) }
    }

    /// Start address of the region (what a peer uses as `remote_addr`).
    pub fn addr(&self) -> u64 {
        match &self.imp {
            Mr::Verbs(m) => m.addr as u64,
            Mr::User(m) => m.addr(),
        }
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match &self.imp {
            Mr::Verbs(m) => m.len,
            Mr::User(m) => m.len(),
        }
    }
    /// Always false: empty regions cannot be registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Local key.
    pub fn lkey(&self) -> u32 {
        match &self.imp {
            // SAFETY: the ibv_mr is valid while self lives.
            Mr::Verbs(m) => unsafe { m.ptr.as_ref().lkey },
            Mr::User(m) => m.lkey(),
        }
    }
    /// Remote key.
    pub fn rkey(&self) -> u32 {
        match &self.imp {
            // SAFETY: as above.
            Mr::Verbs(m) => unsafe { m.ptr.as_ref().rkey },
            Mr::User(m) => m.rkey(),
        }
    }

    /// Lets a peer's SEND with invalidate ([`SendOp::SendInv`](super::SendOp::SendInv))
    /// naming this region's R_Key invalidate it, as verbs lets a peer invalidate a memory
    /// window or a fast-registered MR (the engine has neither). Without it the engine refuses
    /// such a SEND as rxe refuses one naming an ordinary MR: the receive completes with
    /// `REM_INV_REQ_ERR` and the receiving QP goes to the error state. Engine regions only.
    pub fn allow_remote_invalidate(&self) -> Result<()> {
        match &self.imp {
            Mr::Verbs(_) => Err(Error::Unsupported {
                what: "letting a peer invalidate a kernel verbs memory region".into(),
                fix: "a peer may invalidate only a memory window or a fast-registered MR, \
                      which kbypass does not offer on kernel RDMA devices; use a user-space \
                      context (Context::userspace)"
                    .into(),
            }),
            Mr::User(m) => {
                m.allow_remote_invalidate();
                Ok(())
            }
        }
    }

    /// Whether the region's R_Key still grants remote access: false once a peer's SEND with
    /// invalidate invalidated it (a kernel verbs MR, which no peer may invalidate, stays valid).
    pub fn is_valid(&self) -> bool {
        match &self.imp {
            Mr::Verbs(_) => true,
            Mr::User(m) => m.is_valid(),
        }
    }

    /// A scatter/gather element for `len` bytes at `offset`, bounds-checked against the
    /// region. It borrows the region, so the memory stays registered and mapped while the
    /// element can be posted.
    pub fn sge(&self, offset: usize, len: usize) -> Result<Sge<'_>> {
        Ok(Sge {
            raw: sge_in(self.addr(), self.len(), self.lkey(), offset, len)?,
            _mr: PhantomData,
        })
    }

    /// Copy bytes out of the region.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        check_range(offset, out.len(), self.len())?;
        match &self.imp {
            // SAFETY: bounds checked; the region is valid memory that `out` cannot overlap.
            Mr::Verbs(m) => unsafe {
                ptr::copy_nonoverlapping(m.addr.add(offset), out.as_mut_ptr(), out.len())
            },
            Mr::User(m) => m.read(offset, out)?,
        }
        Ok(())
    }

    /// Read one byte with a volatile load (the device may change it at any time).
    pub fn read_volatile(&self, offset: usize) -> Result<u8> {
        check_range(offset, 1, self.len())?;
        match &self.imp {
            // SAFETY: bounds checked; a volatile byte load from valid memory.
            Mr::Verbs(m) => Ok(unsafe { ptr::read_volatile(m.addr.add(offset)) }),
            Mr::User(m) => {
                let mut b = [0u8];
                m.read(offset, &mut b)?;
                Ok(b[0])
            }
        }
    }

    /// Copy bytes into the region.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        check_range(offset, data.len(), self.len())?;
        match &self.imp {
            // SAFETY: bounds checked; the region is valid memory that `data` cannot overlap.
            Mr::Verbs(m) => unsafe {
                ptr::copy_nonoverlapping(data.as_ptr(), m.addr.add(offset), data.len())
            },
            Mr::User(m) => m.write(offset, data)?,
        }
        Ok(())
    }
}

/// A scatter/gather element (`ibv_sge`): address, length and lkey of registered memory.
///
/// Safe code gets one only from [`MemoryRegion::sge`], bounds-checked, and it borrows the
/// region: an [`SendFlags::INLINE`](super::SendFlags::INLINE) send, which the provider copies from the address with the
/// CPU and no lkey check, reads only memory this process registered and still holds. Memory
/// registered elsewhere needs the `unsafe` [`Sge::from_raw`].
///
/// ```no_run
/// use kbypass_core::rdma::{Access, QueuePair, ProtectionDomain, SendFlags, SendOp};
/// use kbypass_core::sys::mm::Mapping;
/// fn send_hello(pd: &ProtectionDomain, qp: &QueuePair) -> kbypass_core::Result<()> {
///     let mr = pd.register(Mapping::anonymous(4096, 0)?, Access::LOCAL_WRITE)?;
///     mr.write(0, b"hello")?;
///     let flags = SendFlags::SIGNALED | SendFlags::INLINE;
///     qp.post_send(1, SendOp::Send, &[mr.sge(0, 5)?], flags)
/// }
/// ```
///
/// Safe code cannot build one from a raw address:
///
/// ```compile_fail,E0423
/// use kbypass_core::rdma::{ffi, Sge};
/// let payload = *b"anything";
/// let sge = Sge(ffi::ibv_sge { addr: payload.as_ptr() as u64, length: 8, lkey: 0 });
/// ```
///
/// and one taken from a memory region cannot outlive it:
///
/// ```compile_fail,E0597
/// use kbypass_core::rdma::{Access, ProtectionDomain};
/// use kbypass_core::sys::mm::Mapping;
/// fn dangling(pd: &ProtectionDomain) -> kbypass_core::Result<()> {
///     let sge = {
///         let mr = pd.register(Mapping::anonymous(4096, 0)?, Access::LOCAL_WRITE)?;
///         mr.sge(0, 64)?
///     }; // `mr` is deregistered and unmapped here
///     let _still_used = sge;
///     Ok(())
/// }
/// ```
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sge<'a> {
    raw: ffi::ibv_sge,
    _mr: PhantomData<&'a MemoryRegion>,
}

impl Sge<'_> {
    /// An element over memory that is not a [`MemoryRegion`] of this crate (e.g. one
    /// registered by other code).
    ///
    /// # Safety
    /// For as long as the element is passed to `post_send`, `post_recv` or an SRQ's
    /// `post_recv`, `addr..addr + length` must be memory the process may read (an
    /// [`SendFlags::INLINE`](super::SendFlags::INLINE) send copies it with the CPU, lkey unchecked) and, for the device,
    /// lie inside a registration whose local key is `lkey` in the queue pair's protection
    /// domain; memory the device writes (receives, READ and atomic results) must stay mapped
    /// until the work request completes.
    pub unsafe fn from_raw(addr: u64, length: u32, lkey: u32) -> Self {
        Sge {
            raw: ffi::ibv_sge { addr, length, lkey },
            _mr: PhantomData,
        }
    }

    /// Start address.
    pub fn addr(&self) -> u64 {
        self.raw.addr
    }
    /// Length in bytes.
    pub fn length(&self) -> u32 {
        self.raw.length
    }
    /// Local key of the region it lies in.
    pub fn lkey(&self) -> u32 {
        self.raw.lkey
    }
}

/// `offset..offset + len` must lie inside a region of `region_len` bytes.
fn check_range(offset: usize, len: usize, region_len: usize) -> Result<()> {
    if offset.checked_add(len).is_none_or(|end| end > region_len) {
        return Err(Error::invalid(format!(
            "bytes {offset}..{} are outside the {region_len}-byte region",
            offset.saturating_add(len),
        )));
    }
    Ok(())
}

/// The `ibv_sge` for `len` bytes at `offset` of a region of `region_len` bytes at `base`.
fn sge_in(
    base: u64,
    region_len: usize,
    lkey: u32,
    offset: usize,
    len: usize,
) -> Result<ffi::ibv_sge> {
    check_range(offset, len, region_len)?;
    let length = u32::try_from(len).map_err(|_| {
        Error::invalid(format!(
            "an SGE holds at most 4 GiB - 1, got {len} bytes: split it into several SGEs"
        ))
    })?;
    Ok(ffi::ibv_sge {
        addr: base + offset as u64,
        length,
        lkey,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sge_bounds_are_checked_against_the_region() {
        let base = 0x7000_0000_0000u64;
        let whole = sge_in(base, 4096, 7, 0, 4096).unwrap();
        assert_eq!((whole.addr, whole.length, whole.lkey), (base, 4096, 7));
        let tail = sge_in(base, 4096, 7, 4032, 64).unwrap();
        assert_eq!((tail.addr, tail.length), (base + 4032, 64));
        assert!(sge_in(base, 4096, 7, 4096, 0).is_ok());
        for (offset, len) in [(4033, 64), (0, 4097), (4097, 0), (usize::MAX, 2)] {
            let e = sge_in(base, 4096, 7, offset, len).unwrap_err();
            assert!(
                matches!(e, Error::InvalidArgument(_)),
                "{offset}+{len}: {e}"
            );
            assert!(
                e.to_string().contains("outside the 4096-byte region"),
                "{e}"
            );
        }
        let huge = 1usize << 33;
        let e = sge_in(base, huge, 7, 0, 1 << 32).unwrap_err();
        assert!(e.to_string().contains("at most 4 GiB"), "{e}");
    }

    #[test]
    fn an_sge_has_the_layout_of_ibv_sge() {
        assert_eq!(
            std::mem::size_of::<Sge<'_>>(),
            std::mem::size_of::<ffi::ibv_sge>()
        );
        assert_eq!(
            std::mem::align_of::<Sge<'_>>(),
            std::mem::align_of::<ffi::ibv_sge>()
        );
        // SAFETY: never posted; only the accessors read it.
        let s = unsafe { Sge::from_raw(0x1000, 64, 9) };
        assert_eq!((s.addr(), s.length(), s.lkey()), (0x1000, 64, 9));
    }
}
