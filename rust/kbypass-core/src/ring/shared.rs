//! Rings in named shared memory (DPDK's multi-process model).
//!
//! A shared ring named `NAME` is the file `/dev/shm/kbypass.ring.NAME`: the header (magic,
//! layout version, element size, capacity, mode, attach count) followed by the slots. One
//! process creates it ([`Ring::create_shared`]), others map it by name ([`Ring::attach`]).
//!
//! Lifetime: the header counts attached `Ring` values over all processes; the last one to drop
//! removes the name (the memory goes when the last mapping does). A process that crashes never
//! decrements, so its ring stays until [`Ring::unlink`] (or `create_shared(.., replace=true)`)
//! removes it. Creating over an existing name fails unless `replace` is set.

use std::os::fd::AsFd;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::layout::{Meta, MAGIC, MAX_CAPACITY, VERSION};
use super::raw::header_of;
use super::{Backing, Mode, Pod, Ring};
use crate::error::{Error, Result};
use crate::sys::mm::Mapping;
use crate::sys::shm;

const PREFIX: &str = "kbypass.ring.";
/// How long `attach` waits for a creator that is still initialising the file.
const INIT_WAIT: Duration = Duration::from_secs(2);

/// The `/dev/shm` file name of ring `name`.
fn file_name(name: &str) -> Result<String> {
    shm::validate_name(name)?;
    Ok(format!("{PREFIX}{name}"))
}

/// This process's attachment to a shared ring.
pub(super) struct Attachment {
    name: String,
    file: String,
    /// (device, inode) of our file, so the last user only removes *its* ring's name and not a
    /// newer ring created under the same name with `replace`.
    identity: (u64, u64),
}

impl Attachment {
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Drop one reference; the last one removes the name.
    pub(super) fn detach(&self, meta: &Meta) {
        if meta.refcount.fetch_sub(1, AcqRel) == 1
            && shm::identity_of_name(&self.file) == Some(self.identity)
        {
            let _ = shm::unlink(&self.file);
        }
    }
}

impl<T: Pod> Ring<T> {
    /// Create a ring named `name` in shared memory for other processes to [`attach`](Ring::attach).
    ///
    /// Fails with `EEXIST` if the name is taken, unless `replace` is true, in which case the old
    /// name is removed first (processes still attached to the old ring keep using it, alone).
    pub fn create_shared(
        name: &str,
        capacity: usize,
        mode: Mode,
        replace: bool,
    ) -> Result<Arc<Self>> {
        let file = file_name(name)?;
        let len = Self::memory_size(capacity)?;
        let fd = match shm::create_exclusive(&file, len) {
            Err(e) if replace && e.errno() == Some(libc::EEXIST) => {
                shm::unlink(&file)?;
                shm::create_exclusive(&file, len)?
            }
            Err(e) if e.errno() == Some(libc::EEXIST) => {
                return Err(Error::os(
                    format!("create shared ring {name:?}"),
                    libc::EEXIST,
                    format!(
                        "a ring of that name exists ({}): attach to it with attach({name:?}), choose another name, \
                         or if it was left by a crashed process remove it with unlink({name:?}) or create with replace=True",
                        shm::path_of(&file)?.display()
                    ),
                ))
            }
            r => r?,
        };
        let identity = shm::identity_of_fd(&fd)?;
        let mapping = match Mapping::shared(fd.as_fd(), len, 0) {
            Ok(m) => m,
            Err(e) => {
                let _ = shm::unlink(&file);
                return Err(e);
            }
        };
        let backing = Backing::Shared(Attachment {
            name: name.to_string(),
            file,
            identity,
        });
        let ring = Self::init(mapping, capacity as u32, mode, backing);
        let meta = &ring.raw.hdr().meta;
        meta.refcount.store(1, Relaxed);
        meta.ready.store(1, Release);
        Ok(Arc::new(ring))
    }

    /// Map the shared ring `name` created by another process (or this one).
    ///
    /// A missing name is [`Error::NotFound`]; a ring of another element type, a file that is not
    /// a kbypass ring, or one of another layout version is [`Error::InvalidArgument`].
    pub fn attach(name: &str) -> Result<Arc<Self>> {
        let file = file_name(name)?;
        let fd = shm::open_existing(
            &file,
            &format!(
                "no shared ring named {name:?}: create it first (Ring.create_shared({name:?}, capacity) in \
                 the owning process) and check the name; existing rings are listed by `ls {}/{PREFIX}*`",
                shm::SHM_DIR
            ),
        )?;
        let identity = shm::identity_of_fd(&fd)?;
        let stale = |what: &str| {
            Error::State(format!(
                "shared ring {name:?} {what}: its creator may have crashed while creating it; \
                 remove it with unlink({name:?}) and create it again"
            ))
        };
        // The creator may still be between open(O_EXCL) and ftruncate.
        let started = Instant::now();
        let size = loop {
            let size = shm::file_size(&fd)? as usize;
            if size > 0 {
                break size;
            }
            if started.elapsed() > INIT_WAIT {
                return Err(stale("is an empty file"));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let mapping = Mapping::shared(fd.as_fd(), size, 0)?;
        let meta = &header_of(&mapping)
            .ok_or_else(|| stale("is too small to be a ring"))?
            .meta;
        while meta.ready.load(Acquire) != 1 {
            if started.elapsed() > INIT_WAIT {
                return Err(stale("was never initialised"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let not_ring = |what: String| {
            Error::invalid(format!(
                "{} is not usable: {what}",
                shm::path_of(&file)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ))
        };
        if meta.magic.load(Relaxed) != MAGIC {
            return Err(not_ring("it is not a kbypass ring (bad magic)".into()));
        }
        let version = meta.version.load(Relaxed);
        if version != VERSION {
            return Err(not_ring(format!(
                "it has ring layout version {version}, this kbypass understands {VERSION}: use the same kbypass version in all processes"
            )));
        }
        let (es, ea) = (
            meta.elem_size.load(Relaxed) as usize,
            meta.elem_align.load(Relaxed) as usize,
        );
        if es != std::mem::size_of::<T>() || ea != std::mem::align_of::<T>() {
            return Err(not_ring(format!(
                "it holds {es}-byte elements (alignment {ea}), attached as {} ({}-byte, alignment {}): attach with the creator's element type",
                std::any::type_name::<T>(),
                std::mem::size_of::<T>(),
                std::mem::align_of::<T>()
            )));
        }
        let capacity = meta.capacity.load(Relaxed);
        let mode = Mode::from_u32(meta.mode.load(Relaxed));
        let needed = Self::memory_size(capacity as usize).ok();
        let (Some(mode), Some(needed)) = (mode, needed) else {
            return Err(not_ring(format!(
                "its header is corrupt (capacity {capacity}, mode {})",
                meta.mode.load(Relaxed)
            )));
        };
        if !capacity.is_power_of_two()
            || capacity > MAX_CAPACITY
            || needed > size
            || meta.total_len.load(Relaxed) != size as u64
        {
            return Err(not_ring(format!(
                "its header is corrupt (capacity {capacity}, file size {size})"
            )));
        }
        // Join unless the last user is already removing it.
        let mut n = meta.refcount.load(Relaxed);
        loop {
            if n == 0 {
                return Err(Error::NotFound(format!(
                    "shared ring {name:?} is being removed by its last user: create it again"
                )));
            }
            match meta
                .refcount
                .compare_exchange_weak(n, n + 1, AcqRel, Relaxed)
            {
                Ok(_) => break,
                Err(cur) => n = cur,
            }
        }
        let backing = Backing::Shared(Attachment {
            name: name.to_string(),
            file,
            identity,
        });
        Ok(Arc::new(Self::from_mapping(
            mapping, capacity, mode, backing,
        )))
    }

    /// Remove the name of shared ring `name` (e.g. one left by a crashed process). Processes
    /// still attached keep working; new `attach` calls fail. Returns whether a ring was there.
    pub fn unlink(name: &str) -> Result<bool> {
        shm::unlink(&file_name(name)?)
    }
}
