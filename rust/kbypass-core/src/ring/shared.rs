//! Rings in named shared memory (DPDK's multi-process model), and who takes part in them.
//!
//! A shared ring named `NAME` is the file `/dev/shm/kbypass.ring.NAME` (mode 0600): the header
//! (magic, layout version, element size, capacity, mode, participant table) followed by the
//! slots. One process creates it ([`Ring::create_shared`]), others map it by name
//! ([`Ring::attach`]), which checks the file belongs to this user and is not open to others.
//!
//! **Participants.** Every `Ring` value attached to the file is a participant: it opens the file
//! itself (its own open file description) and takes an open-file-description lock on one byte
//! of a range far past the end of the file, byte `PEER_LOCKS + i` for entry `i` of the table. Its
//! *token* is `i + 1` plus the entry's generation (bumped at each registration); tokens mark the
//! claims it makes and the single sides it holds. The kernel releases the lock when the process
//! dies, however it dies, and the lock is seen the same from every PID namespace, so "is the
//! holder of this token alive?" is "is its entry still of that generation and its byte locked?"
//! (`F_OFD_GETLK`). A forked child does not inherit participation: the descriptor is closed in
//! the child at fork (`sys::fork`), and the inherited value refuses to work ([`Ring::check`]).
//!
//! **Lifetime.** Registering, leaving and removing the name happen under a second lock, byte
//! `NAME_LOCK`. The last participant to leave (no other entry locked) removes the name; the
//! memory goes with the last mapping. A ring whose participants all crashed keeps its name until
//! [`Ring::unlink`] or `create_shared(.., replace=true)`; creating over it says so.

use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::layout::{Header, MAGIC, MAX_CAPACITY, MAX_PEERS, VERSION};
use super::protocol::{self, SideRef};
use super::raw::header_of;
use super::{Backing, Mode, Pod, Ring};
use crate::error::{Error, Result};
use crate::sys::mm::Mapping;
use crate::sys::{fork, shm};

const PREFIX: &str = "kbypass.ring.";
/// How long `attach` waits for a creator that is still initialising the file.
const INIT_WAIT: Duration = Duration::from_secs(2);
/// How long registering or leaving waits for the name lock (held only for a few syscalls).
const NAME_WAIT: Duration = Duration::from_secs(5);
/// The byte whose lock serialises registering, leaving and removing the name.
const NAME_LOCK: u64 = 1 << 40;
/// Byte `PEER_LOCKS + i` is locked by participant `i` while it lives.
const PEER_LOCKS: u64 = NAME_LOCK + 1;
/// Tokens: entry index + 1 in the low 12 bits, the entry's generation in the high 20.
const INDEX_BITS: u32 = 12;
const GENERATION_MASK: u32 = (1 << (32 - INDEX_BITS)) - 1;
const _: () = assert!(MAX_PEERS < 1 << INDEX_BITS);

/// The `/dev/shm` file name of ring `name`.
fn file_name(name: &str) -> Result<String> {
    shm::validate_name(name)?;
    Ok(format!("{PREFIX}{name}"))
}

fn token_index(token: u32) -> Option<usize> {
    let i = (token & ((1 << INDEX_BITS) - 1)) as usize;
    (1..=MAX_PEERS).contains(&i).then(|| i - 1)
}

/// The pid the participant holding `token` registered with (as seen in its own PID namespace).
pub(super) fn pid_of(hdr: &Header, token: u32) -> Option<u32> {
    let pid = hdr.peers[token_index(token)?].pid.load(Relaxed);
    (pid != 0).then_some(pid)
}

/// The name lock, held while alive.
struct NameLock<'a>(&'a OwnedFd);

impl<'a> NameLock<'a> {
    fn take(fd: &'a OwnedFd, name: &str) -> Result<Self> {
        let started = Instant::now();
        while !shm::try_lock(fd, NAME_LOCK, 1)? {
            if started.elapsed() > NAME_WAIT {
                return Err(Error::Timeout(format!(
                    "shared ring {name:?}: another process has been registering with or leaving the \
                     ring for {NAME_WAIT:?} (it may be stopped): resume or kill it, then retry"
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(NameLock(fd))
    }
}

impl Drop for NameLock<'_> {
    fn drop(&mut self) {
        let _ = shm::unlock(self.0, NAME_LOCK, 1);
    }
}

/// This process's participation in a shared ring.
pub(super) struct Attachment {
    name: String,
    file: String,
    /// (device, inode) of our file, so the last user only removes *its* ring's name and not a
    /// newer ring created under the same name with `replace`.
    identity: (u64, u64),
    /// Our own open file description of the ring file: its lock on `PEER_LOCKS + index` is what
    /// makes us alive to the others. Closed by `detach` (or, in a forked child, at fork).
    fd: ManuallyDrop<OwnedFd>,
    child_close: Option<fork::ChildClose>,
    fork_generation: u64,
    index: usize,
    token: u32,
}

impl Attachment {
    /// Register as a participant of the ring in `fd`/`hdr` (the caller holds the name lock).
    fn register(
        name: &str,
        file: String,
        identity: (u64, u64),
        fd: OwnedFd,
        hdr: &Header,
    ) -> Result<Self> {
        let mut index = None;
        for i in 0..MAX_PEERS {
            if shm::try_lock(&fd, PEER_LOCKS + i as u64, 1)? {
                index = Some(i);
                break;
            }
        }
        let Some(index) = index else {
            return Err(Error::State(format!(
                "shared ring {name:?} already has {MAX_PEERS} participants: close some Ring objects first"
            )));
        };
        let entry = &hdr.peers[index];
        let generation = (entry.generation.load(Acquire).wrapping_add(1)) & GENERATION_MASK;
        entry.generation.store(generation, Release);
        entry.pid.store(shm::getpid(), Relaxed);
        let token = (generation << INDEX_BITS) | (index as u32 + 1);
        // Whoever held this entry before us is dead (we hold its lock now): resolve anything it
        // left on the ring under an older generation of the entry.
        for side in [&hdr.prod, &hdr.cons] {
            let w = side.head.load(Acquire);
            let (_, t) = protocol::split(w);
            if t != 0 && t != token && token_index(t) == Some(index) {
                protocol::recover(&SideRef::of(side), w);
            }
            let owner = side.owner.load(Acquire);
            if owner != 0 && owner != token && token_index(owner) == Some(index) {
                let _ = side.owner.compare_exchange(owner, 0, Relaxed, Relaxed);
            }
        }
        let child_close = Some(fork::close_in_child(fd.as_raw_fd()));
        Ok(Attachment {
            name: name.to_string(),
            file,
            identity,
            fd: ManuallyDrop::new(fd),
            child_close,
            fork_generation: fork::generation(),
            index,
            token,
        })
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn token(&self) -> u32 {
        self.token
    }

    /// Whether this value was inherited by a forked child.
    #[inline(always)]
    pub(super) fn forked(&self) -> bool {
        fork::generation() != self.fork_generation
    }

    /// Whether the participant that made `token` is gone.
    pub(super) fn dead(&self, hdr: &Header, token: u32) -> bool {
        let Some(i) = token_index(token) else {
            return true; // no participant can hold such a token: a corrupted word
        };
        if hdr.peers[i].generation.load(Acquire) != token >> INDEX_BITS {
            return true; // the entry was taken again since: its holder of then is gone
        }
        if i == self.index {
            return token != self.token;
        }
        // Cannot tell (an fcntl error): treat as alive, which only delays.
        !shm::locked_by_other(&self.fd, PEER_LOCKS + i as u64, 1).unwrap_or(true)
    }

    /// Participants alive now (this one included).
    pub(super) fn count_attached(&self, hdr: &Header) -> u32 {
        (0..MAX_PEERS)
            .filter(|&i| {
                i == self.index
                    || (hdr.peers[i].pid.load(Relaxed) != 0
                        && shm::locked_by_other(&self.fd, PEER_LOCKS + i as u64, 1)
                            .unwrap_or(false))
            })
            .count() as u32
    }

    /// Leave the ring; the last participant removes the name.
    pub(super) fn detach(&self, hdr: &Header) {
        if self.forked() {
            return; // the parent's participation; the fd was closed at fork (see Drop)
        }
        let name_lock = NameLock::take(&self.fd, &self.name).ok();
        hdr.peers[self.index].pid.store(0, Relaxed);
        let _ = shm::unlock(&self.fd, PEER_LOCKS + self.index as u64, 1);
        let others = shm::locked_by_other(&self.fd, PEER_LOCKS, MAX_PEERS as u64).unwrap_or(true);
        if name_lock.is_some()
            && !others
            && shm::identity_of_name(&self.file) == Some(self.identity)
        {
            let _ = shm::unlink(&self.file);
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let registered = self.child_close.as_ref().is_some_and(|c| c.registered());
        if self.forked() && registered {
            return; // closed in the child right after fork: closing again could hit a reused fd
        }
        // Unregister first, so that a fork between the close and the unregistration cannot
        // close a reused descriptor number in the child.
        drop(self.child_close.take());
        // SAFETY: dropped exactly once, here; nothing uses the descriptor afterwards.
        unsafe { ManuallyDrop::drop(&mut self.fd) };
    }
}

/// Register as a participant through `fd`'s open file description, under the name lock. With
/// `check_name`, first make sure the name still leads to this file (the last user may have
/// removed it since it was opened).
fn join(
    fd: &OwnedFd,
    name: &str,
    identity: (u64, u64),
    file: &str,
    hdr: &Header,
    check_name: bool,
) -> Result<Attachment> {
    let _lock = NameLock::take(fd, name)?;
    if check_name && shm::identity_of_name(file) != Some(identity) {
        return Err(Error::NotFound(format!(
            "shared ring {name:?} was removed by its last user while attaching: create it again"
        )));
    }
    // The duplicate shares `fd`'s description, so the participant lock it takes outlives `fd`
    // (closed by the caller) and goes only when the attachment closes it.
    let dup = fd
        .try_clone()
        .map_err(|e| Error::os("dup(ring file)", e.raw_os_error().unwrap_or(0), ""))?;
    Attachment::register(name, file.to_string(), identity, dup, hdr)
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
                let abandoned = shm::open_existing(&file, "")
                    .and_then(|fd| shm::locked_by_other(&fd, PEER_LOCKS, MAX_PEERS as u64))
                    .is_ok_and(|alive| !alive);
                let state = if abandoned {
                    format!(
                        "no live process is attached to it, so it was left by processes that \
                         crashed: remove it with unlink({name:?}) or create with replace=True"
                    )
                } else {
                    format!("attach to it with attach({name:?}) or choose another name")
                };
                return Err(Error::os(
                    format!("create shared ring {name:?}"),
                    libc::EEXIST,
                    format!(
                        "a ring of that name exists ({}): {state}",
                        shm::path_of(&file)?.display()
                    ),
                ));
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
        let mut ring = Self::init(mapping, capacity as u32, mode, Backing::Private);
        let registered = join(&fd, name, identity, &file, ring.raw.hdr(), false);
        let attachment = match registered {
            Ok(a) => a,
            Err(e) => {
                let _ = shm::unlink(&file);
                return Err(e);
            }
        };
        ring.backing = Backing::Shared(attachment);
        ring.raw.hdr().meta.ready.store(1, Release);
        Ok(Arc::new(ring))
    }

    /// Map the shared ring `name` created by another process (or this one).
    ///
    /// A missing name is [`Error::NotFound`]; a file of another user or open to other users is
    /// [`Error::Permission`]; a ring of another element type, a file that is not a kbypass
    /// ring, or one of another layout version is [`Error::InvalidArgument`].
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
        shm::check_private(&fd, &file)?;
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
        let not_ring = |what: String| {
            Error::invalid(format!(
                "{} is not usable: {what}",
                shm::path_of(&file)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ))
        };
        let magic = meta.magic.load(Acquire);
        if magic != MAGIC && magic != 0 {
            return Err(not_ring(
                "it is not a kbypass ring of this layout (bad magic): use the same kbypass version in all processes"
                    .into(),
            ));
        }
        while meta.ready.load(Acquire) != 1 {
            if started.elapsed() > INIT_WAIT {
                return Err(stale("was never initialised"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
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
        let mut ring = Self::from_mapping(mapping, capacity, mode, Backing::Private);
        let attachment = join(&fd, name, identity, &file, ring.raw.hdr(), true)?;
        ring.backing = Backing::Shared(attachment);
        Ok(Arc::new(ring))
    }

    /// Remove the name of shared ring `name` (e.g. one left by a crashed process). Processes
    /// still attached keep working; new `attach` calls fail. Returns whether a ring was there.
    pub fn unlink(name: &str) -> Result<bool> {
        shm::unlink(&file_name(name)?)
    }
}
