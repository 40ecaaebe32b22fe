//! The responder's view of registered memory: regions addressed by R_Key and virtual
//! address, with the remote access rights each grants.

use super::super::wire::NakCode;

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

#[derive(Debug)]
struct Region {
    rkey: u32,
    va: u64,
    access: RemoteAccess,
    bytes: Vec<u8>,
    /// A SEND with invalidate may invalidate it (a memory window or fast-registered MR).
    remote_invalidate: bool,
    /// Not invalidated: remote access is checked against it.
    valid: bool,
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

/// Regions registered for remote access. A zero-length write or read needs no valid key or
/// address (as the IBTA spec allows and rxe does): it touches no memory.
#[derive(Debug, Default)]
pub struct MemoryTable {
    regions: Vec<Region>,
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

    /// Registers `len` zeroed bytes at virtual address `va` under `rkey`. An R_Key already in
    /// use is replaced.
    pub fn register(&mut self, rkey: u32, va: u64, len: usize, access: RemoteAccess) {
        self.regions.retain(|r| r.rkey != rkey);
        self.regions.push(Region {
            rkey,
            va,
            access,
            bytes: vec![0; len],
            remote_invalidate: false,
            valid: true,
        });
    }

    /// Lets a SEND with invalidate naming `rkey` invalidate its region (as one may a memory
    /// window or a fast-registered MR; an ordinary MR may not be); false if no region has it.
    pub fn allow_remote_invalidate(&mut self, rkey: u32) -> bool {
        let r = self.regions.iter_mut().find(|r| r.rkey == rkey);
        r.map(|r| r.remote_invalidate = true).is_some()
    }

    /// Invalidates `rkey` for a SEND with invalidate: from then on every remote access with
    /// it is refused (its bytes stay readable locally). Invalidating an invalid key again is
    /// allowed.
    pub fn invalidate(&mut self, rkey: u32) -> Result<(), InvalidateError> {
        let r = self
            .regions
            .iter_mut()
            .find(|r| r.rkey == rkey)
            .ok_or(InvalidateError::UnknownKey(rkey))?;
        if !r.remote_invalidate {
            return Err(InvalidateError::NotInvalidatable(rkey));
        }
        r.valid = false;
        Ok(())
    }

    /// Whether `rkey` names a region that was not invalidated.
    pub fn is_valid(&self, rkey: u32) -> bool {
        self.regions.iter().any(|r| r.rkey == rkey && r.valid)
    }

    /// The bytes of the region under `rkey`.
    pub fn bytes(&self, rkey: u32) -> Option<&[u8]> {
        self.regions
            .iter()
            .find(|r| r.rkey == rkey)
            .map(|r| &r.bytes[..])
    }

    /// The bytes of the region under `rkey`, to fill.
    pub fn bytes_mut(&mut self, rkey: u32) -> Option<&mut [u8]> {
        self.regions
            .iter_mut()
            .find(|r| r.rkey == rkey)
            .map(|r| &mut r.bytes[..])
    }

    /// The region and offset `rkey`, `va`, `len` name, if the key exists, grants `need` and
    /// the whole range lies inside the region; otherwise the NAK to answer.
    fn check(
        &mut self,
        rkey: u32,
        va: u64,
        len: usize,
        need: Need,
    ) -> Result<(&mut Region, usize), NakCode> {
        let r = self
            .regions
            .iter_mut()
            .find(|r| r.rkey == rkey && r.valid)
            .ok_or(NakCode::RemoteAccessError)?;
        let allowed = match need {
            Need::Write => r.access.write,
            Need::Read => r.access.read,
            Need::Atomic => r.access.atomic,
        };
        let off = va.checked_sub(r.va).ok_or(NakCode::RemoteAccessError)?;
        let end = off
            .checked_add(len as u64)
            .ok_or(NakCode::RemoteAccessError)?;
        if !allowed || end > r.bytes.len() as u64 {
            return Err(NakCode::RemoteAccessError);
        }
        Ok((r, off as usize))
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
        self.check(rkey, va, len, need).map(|_| ())
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
        let (r, off) = self.check(rkey, va, data.len(), Need::Write)?;
        r.bytes[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }

    /// Reads `len` bytes at `va` (an RDMA read).
    pub(super) fn read(&mut self, rkey: u32, va: u64, len: usize) -> Result<Vec<u8>, NakCode> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let (r, off) = self.check(rkey, va, len, Need::Read)?;
        Ok(r.bytes[off..off + len].to_vec())
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
        let (r, off) = self.check(rkey, va, 8, Need::Atomic)?;
        let word = &mut r.bytes[off..off + 8];
        let orig = u64::from_ne_bytes(word.try_into().expect("8 bytes"));
        let new = match compare {
            Some(c) if c == orig => swap_add,
            Some(_) => orig,
            None => orig.wrapping_add(swap_add),
        };
        word.copy_from_slice(&new.to_ne_bytes());
        Ok(orig)
    }
}
