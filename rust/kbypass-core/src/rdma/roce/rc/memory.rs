//! The responder's view of registered memory: regions addressed by R_Key and virtual
//! address, with the remote access rights each grants.

use std::sync::{Arc, Mutex, MutexGuard};

use super::super::wire::NakCode;
use super::external::ExternalMemory;

/// Remote access rights of a region (the `IBV_ACCESS_REMOTE_*` bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RemoteAccess {
    /// RDMA writes may target it.
    pub write: bool,
    /// RDMA reads may target it.
    pub read: bool,
    /// Atomics may target it.
    pub atomic: bool,
}

impl RemoteAccess {
    /// Every right.
    pub const ALL: RemoteAccess = RemoteAccess {
        write: true,
        read: true,
        atomic: true,
    };
}

/// A region: `len` bytes at `off` of `mem`, which the peer addresses from `va`.
#[derive(Debug)]
struct Region {
    rkey: u32,
    va: u64,
    access: RemoteAccess,
    local_write: bool,
    /// A SEND with invalidate may invalidate it (a memory window or fast-registered MR).
    remote_invalidate: bool,
    /// Not invalidated: remote access is checked against it.
    valid: bool,
    mem: Arc<ExternalMemory>,
    off: usize,
    len: usize,
}

/// Why a SEND with invalidate could not invalidate an R_Key (the responder then completes
/// the receive with a remote invalid request error and goes to the error state: IBTA class
/// J, as rxe does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidateError {
    /// No region has the key.
    #[error("no region has R_Key {0:#x}")]
    UnknownKey(u32),
    /// The region is not one a remote peer may invalidate (an ordinary registered MR).
    #[error("R_Key {0:#x} names a region a remote peer may not invalidate")]
    NotInvalidatable(u32),
}

/// Where a local scatter/gather element lies: the memory and the offset in it.
#[derive(Debug, Clone)]
pub struct LocalSpan {
    /// The memory.
    pub mem: Arc<ExternalMemory>,
    /// Offset of the element's first byte in it.
    pub off: usize,
    /// Length.
    pub len: usize,
}

/// Regions registered for remote access. A zero-length write or read needs no valid key or
/// address (as the IBTA spec allows and rxe does): it touches no memory.
///
/// A table is a shared handle: clones see the same regions, so a protection domain registers
/// and deregisters while its QPs' responders serve requests from it. Regions are bytes the
/// table owns ([`MemoryTable::register`]) or [`ExternalMemory`] the caller registered
/// ([`MemoryTable::register_external`]), which the table keeps alive while registered.
#[derive(Debug, Clone)]
pub struct MemoryTable {
    regions: Arc<Mutex<Vec<Region>>>,
    /// Remote rights this handle allows on top of each region's (a QP's access flags).
    mask: RemoteAccess,
}

impl Default for MemoryTable {
    fn default() -> Self {
        MemoryTable {
            regions: Arc::default(),
            mask: RemoteAccess::ALL,
        }
    }
}

/// Which right a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    Write,
    Read,
    Atomic,
}

impl MemoryTable {
    /// An empty table.
    pub fn new() -> Self {
        MemoryTable::default()
    }

    /// A handle on the same regions that allows remote requests only the rights in `mask`
    /// too (a QP's access flags: a right the QP lacks is refused whatever the region grants).
    pub fn with_mask(&self, mask: RemoteAccess) -> MemoryTable {
        MemoryTable {
            regions: Arc::clone(&self.regions),
            mask,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Region>> {
        // A panic elsewhere cannot leave a region half-updated: every change is one push,
        // retain or field store.
        self.regions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `len` zeroed bytes at virtual address `va` under `rkey`. An R_Key already in
    /// use is replaced.
    pub fn register(&mut self, rkey: u32, va: u64, len: usize, access: RemoteAccess) {
        let mem = ExternalMemory::zeroed(len);
        self.register_external(rkey, va, access, true, mem, 0, len);
    }

    /// Registers `len` bytes at offset `off` of `mem` under `key`, addressed from `va`, with
    /// `access` for remote requests and `local_write` for local receives and read results.
    /// A key already in use is replaced. False (nothing registered) when the range is not
    /// inside `mem`.
    #[allow(clippy::too_many_arguments)]
    pub fn register_external(
        &self,
        key: u32,
        va: u64,
        access: RemoteAccess,
        local_write: bool,
        mem: Arc<ExternalMemory>,
        off: usize,
        len: usize,
    ) -> bool {
        if off.checked_add(len).is_none_or(|end| end > mem.len()) {
            return false;
        }
        let mut regions = self.lock();
        regions.retain(|r| r.rkey != key);
        regions.push(Region {
            rkey: key,
            va,
            access,
            local_write,
            remote_invalidate: false,
            valid: true,
            mem,
            off,
            len,
        });
        true
    }

    /// Removes the region under `key` (its memory is released when no request uses it);
    /// false when there is none.
    pub fn deregister(&self, key: u32) -> bool {
        let mut regions = self.lock();
        let before = regions.len();
        regions.retain(|r| r.rkey != key);
        regions.len() != before
    }

    /// Lets a SEND with invalidate naming `rkey` invalidate its region (as one may a memory
    /// window or a fast-registered MR; an ordinary MR may not be); false if no region has it.
    pub fn allow_remote_invalidate(&mut self, rkey: u32) -> bool {
        let mut regions = self.lock();
        let r = regions.iter_mut().find(|r| r.rkey == rkey);
        r.map(|r| r.remote_invalidate = true).is_some()
    }

    /// Invalidates `rkey` for a SEND with invalidate: from then on every remote access with
    /// it is refused (its bytes stay readable locally). Invalidating an invalid key again is
    /// allowed.
    pub fn invalidate(&mut self, rkey: u32) -> Result<(), InvalidateError> {
        let mut regions = self.lock();
        let r = regions
            .iter_mut()
            .find(|r| r.rkey == rkey)
            .ok_or(InvalidateError::UnknownKey(rkey))?;
        if !r.remote_invalidate {
            return Err(InvalidateError::NotInvalidatable(rkey));
        }
        r.valid = false;
        Ok(())
    }

    /// Invalidates `key` locally (a local invalidate, whatever the region is): every access
    /// through it fails from now on; false when there is no such region.
    pub fn invalidate_local(&self, key: u32) -> bool {
        self.lock()
            .iter_mut()
            .find(|r| r.rkey == key)
            .map(|r| r.valid = false)
            .is_some()
    }

    /// Whether `key` names a valid (registered, not invalidated) region.
    pub fn is_valid(&self, key: u32) -> bool {
        self.lock().iter().any(|r| r.rkey == key && r.valid)
    }

    /// Narrows the remote rights of `key` to those also in `access`; false when there is no
    /// such region.
    pub fn restrict(&self, key: u32, access: RemoteAccess) -> bool {
        self.lock()
            .iter_mut()
            .find(|r| r.rkey == key)
            .map(|r| {
                r.access.write &= access.write;
                r.access.read &= access.read;
                r.access.atomic &= access.atomic;
            })
            .is_some()
    }

    /// A copy of the bytes of the region under `rkey`.
    pub fn bytes(&self, rkey: u32) -> Option<Vec<u8>> {
        let regions = self.lock();
        let r = regions.iter().find(|r| r.rkey == rkey)?;
        r.mem.to_vec(r.off, r.len)
    }

    /// The bytes of the region under `rkey` to change in place: a copy that is written back
    /// when the guard is dropped (for setting memory up; a remote write that lands while the
    /// guard lives is overwritten).
    pub fn bytes_mut(&mut self, rkey: u32) -> Option<BytesMut<'_>> {
        let bytes = self.bytes(rkey)?;
        Some(BytesMut {
            table: self,
            rkey,
            bytes,
        })
    }

    /// Copies `data` into the region under `rkey` at offset `off` (a local store, e.g. a
    /// test filling memory); false when there is no such region or it does not fit.
    pub fn fill(&self, rkey: u32, off: usize, data: &[u8]) -> bool {
        let regions = self.lock();
        let Some(r) = regions.iter().find(|r| r.rkey == rkey) else {
            return false;
        };
        off.checked_add(data.len()).is_some_and(|end| end <= r.len)
            && r.mem.write(r.off + off, data)
    }

    /// Where `len` bytes at address `va` under local key `key` are, if the key is valid, the
    /// range lies inside its region, and (with `write`) the region allows local writes.
    pub fn local(&self, key: u32, va: u64, len: usize, write: bool) -> Option<LocalSpan> {
        let regions = self.lock();
        let r = regions.iter().find(|r| r.rkey == key && r.valid)?;
        let off = va.checked_sub(r.va)?;
        let end = off.checked_add(len as u64)?;
        if end > r.len as u64 || (write && !r.local_write) {
            return None;
        }
        Some(LocalSpan {
            mem: Arc::clone(&r.mem),
            off: r.off + off as usize,
            len,
        })
    }

    /// The memory and offset `rkey`, `va`, `len` name, if the key exists and is valid, grants
    /// `need` and the whole range lies inside the region; otherwise the NAK to answer.
    fn check(
        regions: &[Region],
        mask: RemoteAccess,
        rkey: u32,
        va: u64,
        len: usize,
        need: Need,
    ) -> Result<(&ExternalMemory, usize), NakCode> {
        let r = regions
            .iter()
            .find(|r| r.rkey == rkey && r.valid)
            .ok_or(NakCode::RemoteAccessError)?;
        let allowed = match need {
            Need::Write => r.access.write && mask.write,
            Need::Read => r.access.read && mask.read,
            Need::Atomic => r.access.atomic && mask.atomic,
        };
        let off = va.checked_sub(r.va).ok_or(NakCode::RemoteAccessError)?;
        let end = off
            .checked_add(len as u64)
            .ok_or(NakCode::RemoteAccessError)?;
        if !allowed || end > r.len as u64 {
            return Err(NakCode::RemoteAccessError);
        }
        Ok((&r.mem, r.off + off as usize))
    }

    /// Checks a whole transfer before its first byte moves.
    pub(super) fn validate(
        &mut self,
        rkey: u32,
        va: u64,
        len: usize,
        need: Need,
    ) -> Result<(), NakCode> {
        if len == 0 {
            return Ok(());
        }
        Self::check(&self.lock(), self.mask, rkey, va, len, need).map(|_| ())
    }

    /// Checks that a write of `len` bytes at `va` is allowed (before its first byte).
    pub fn check_write(&mut self, rkey: u32, va: u64, len: usize) -> Result<(), NakCode> {
        self.validate(rkey, va, len, Need::Write)
    }

    /// Writes `data` at `va` if the key, bounds and rights allow it (an RDMA write).
    pub fn write(&mut self, rkey: u32, va: u64, data: &[u8]) -> Result<(), NakCode> {
        if data.is_empty() {
            return Ok(());
        }
        let regions = self.lock();
        let (m, off) = Self::check(&regions, self.mask, rkey, va, data.len(), Need::Write)?;
        m.write(off, data);
        Ok(())
    }

    /// Reads `len` bytes at `va` (an RDMA read).
    pub(super) fn read(&mut self, rkey: u32, va: u64, len: usize) -> Result<Vec<u8>, NakCode> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let regions = self.lock();
        let (m, off) = Self::check(&regions, self.mask, rkey, va, len, Need::Read)?;
        m.to_vec(off, len).ok_or(NakCode::RemoteAccessError)
    }

    /// Compare and swap (`compare: Some`) or fetch and add on the 8-byte word at `va` (in
    /// the host's byte order, as an HCA treats memory), which must be 8-byte aligned; returns
    /// the original value.
    pub(super) fn atomic(
        &mut self,
        rkey: u32,
        va: u64,
        compare: Option<u64>,
        swap_add: u64,
    ) -> Result<u64, NakCode> {
        if va % 8 != 0 {
            return Err(NakCode::InvalidRequest);
        }
        let regions = self.lock();
        let (m, off) = Self::check(&regions, self.mask, rkey, va, 8, Need::Atomic)?;
        m.atomic(off, compare, swap_add)
            .ok_or(NakCode::RemoteAccessError)
    }
}

/// A region's bytes being changed ([`MemoryTable::bytes_mut`]); written back on drop.
#[derive(Debug)]
pub struct BytesMut<'a> {
    table: &'a MemoryTable,
    rkey: u32,
    bytes: Vec<u8>,
}

impl std::ops::Deref for BytesMut<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl std::ops::DerefMut for BytesMut<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl Drop for BytesMut<'_> {
    fn drop(&mut self) {
        self.table.fill(self.rkey, 0, &self.bytes);
    }
}
