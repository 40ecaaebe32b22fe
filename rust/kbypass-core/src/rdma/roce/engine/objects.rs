//! The engine's verbs objects besides the QP: protection domains, memory regions, completion
//! queues and channels, address handles. Children hold their parents (`Arc`), so an engine
//! lives while any of its objects does.

use std::any::Any;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::context::Engine;
use super::work::Sge;
use super::{Access, Endpoint, ExternalMemory, WorkCompletion};
use crate::error::{Error, Result};
use crate::rdma::roce::rc::{MemoryTable, RemoteAccess};
use crate::rdma::Cancel;
use crate::sys::event::EventFd;

pub(super) struct PdInner {
    pub engine: Arc<Engine>,
    pub table: MemoryTable,
}

/// A protection domain: the memory regions its QPs may touch, locally and remotely.
#[derive(Clone)]
pub struct ProtectionDomain {
    pub(super) inner: Arc<PdInner>,
}

impl ProtectionDomain {
    pub(super) fn new(engine: Arc<Engine>) -> Self {
        ProtectionDomain {
            inner: Arc::new(PdInner {
                engine,
                table: MemoryTable::new(),
            }),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.inner.engine
    }

    /// Registers all of `mem` with `access`. `REMOTE_WRITE` and `REMOTE_ATOMIC` need
    /// `LOCAL_WRITE` too (as in verbs).
    pub fn register(&self, mem: Arc<ExternalMemory>, access: Access) -> Result<MemoryRegion> {
        let len = mem.len();
        self.register_range(mem, 0, len, access)
    }

    /// Registers `len` bytes at `offset` of `mem`.
    pub fn register_range(
        &self,
        mem: Arc<ExternalMemory>,
        offset: usize,
        len: usize,
        access: Access,
    ) -> Result<MemoryRegion> {
        if len == 0 {
            return Err(Error::invalid("cannot register 0 bytes"));
        }
        let a = access.0;
        let local_write = a & Access::LOCAL_WRITE.0 != 0;
        if !local_write && a & (Access::REMOTE_WRITE.0 | Access::REMOTE_ATOMIC.0) != 0 {
            return Err(Error::invalid(
                "REMOTE_WRITE and REMOTE_ATOMIC need LOCAL_WRITE too: add Access::LOCAL_WRITE",
            ));
        }
        if offset.checked_add(len).is_none_or(|e| e > mem.len()) {
            return Err(Error::invalid(format!(
                "{len} bytes at offset {offset} do not fit the {} bytes of memory",
                mem.len()
            )));
        }
        let remote = RemoteAccess {
            write: a & Access::REMOTE_WRITE.0 != 0,
            read: a & Access::REMOTE_READ.0 != 0,
            atomic: a & Access::REMOTE_ATOMIC.0 != 0,
        };
        let key = self.inner.engine.next_key();
        let addr = mem.addr() + offset as u64;
        let ok = self.inner.table.register_external(
            key,
            addr,
            remote,
            local_write,
            Arc::clone(&mem),
            offset,
            len,
        );
        debug_assert!(ok, "range checked above");
        Ok(MemoryRegion {
            pd: self.clone(),
            key,
            addr,
            len,
            access,
            mem,
            off: offset,
        })
    }

    /// Registers a whole [`HugeRegion`](crate::mem::HugeRegion), kept mapped while the region
    /// is registered.
    pub fn register_region(
        &self,
        region: Arc<crate::mem::HugeRegion>,
        access: Access,
    ) -> Result<MemoryRegion> {
        self.register(ExternalMemory::from_region(region)?, access)
    }

    /// Registers the objects of a [`Mempool`](crate::mem::Mempool) (object `i` at offset
    /// `i * stride`), kept alive while registered.
    pub fn register_mempool(
        &self,
        pool: Arc<crate::mem::Mempool>,
        access: Access,
    ) -> Result<MemoryRegion> {
        self.register(ExternalMemory::from_mempool(pool)?, access)
    }

    /// Registers `len` bytes at `addr`, keeping `owner` alive as long as the region.
    ///
    /// # Safety
    /// `addr..addr+len` must be valid for reads and writes, and stay mapped and in place,
    /// while `owner` lives.
    pub unsafe fn register_raw(
        &self,
        addr: *mut u8,
        len: usize,
        access: Access,
        owner: Box<dyn Any + Send + Sync>,
    ) -> Result<MemoryRegion> {
        // SAFETY: the caller's promise, passed on.
        let mem = unsafe { ExternalMemory::from_raw(addr, len, owner)? };
        self.register(mem, access)
    }

    /// An address handle towards `dest`'s GID (an IPv4-mapped or IPv6 address on the
    /// engine's link), for UD sends; resolves the peer's MAC address.
    pub fn create_ah(&self, dest: &Endpoint) -> Result<AddressHandle> {
        self.create_ah_cancellable(dest, &Cancel::never())
    }

    /// [`create_ah`](Self::create_ah), whose wait for the peer's MAC address ends with
    /// [`Error::Interrupted`] as soon as `cancel` says stop.
    pub fn create_ah_cancellable(
        &self,
        dest: &Endpoint,
        cancel: &Cancel<'_>,
    ) -> Result<AddressHandle> {
        let ip = self.inner.engine.peer_ip(&dest.gid)?;
        let mac = self.inner.engine.resolve_mac(ip, cancel)?;
        Ok(AddressHandle {
            _pd: self.clone(),
            ip,
            mac,
        })
    }
}

/// A registered memory region; dropping it deregisters it (requests through its key fail
/// from then on; the memory is released once no request in flight uses it).
pub struct MemoryRegion {
    pd: ProtectionDomain,
    key: u32,
    addr: u64,
    len: usize,
    access: Access,
    mem: Arc<ExternalMemory>,
    off: usize,
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        self.pd.inner.table.deregister(self.key);
    }
}

impl std::fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("addr", &format_args!("{:#x}", self.addr))
            .field("len", &self.len)
            .field("key", &format_args!("{:#x}", self.key))
            .finish()
    }
}

impl MemoryRegion {
    /// Start address (what a peer uses as the remote address).
    pub fn addr(&self) -> u64 {
        self.addr
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Always false: empty regions cannot be registered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Local key.
    pub fn lkey(&self) -> u32 {
        self.key
    }
    /// Remote key (the same number, as in rxe).
    pub fn rkey(&self) -> u32 {
        self.key
    }
    /// The access rights it was registered with.
    pub fn access(&self) -> Access {
        self.access
    }
    /// The memory it covers (all of it; the region starts at [`Self::offset`]).
    pub fn memory(&self) -> &Arc<ExternalMemory> {
        &self.mem
    }
    /// Offset of the region's first byte in [`Self::memory`].
    pub fn offset(&self) -> usize {
        self.off
    }

    /// Lets a peer's SEND with invalidate naming this region's R_Key invalidate it (as a
    /// memory window or fast-registered MR may be); after that, remote access through the
    /// key fails.
    pub fn allow_remote_invalidate(&self) {
        self.pd
            .inner
            .table
            .clone()
            .allow_remote_invalidate(self.key);
    }

    /// Whether the region's key is still valid (not invalidated by a SEND with invalidate).
    pub fn is_valid(&self) -> bool {
        self.pd.inner.table.is_valid(self.key)
    }

    /// A scatter/gather element for `len` bytes at `offset`, bounds-checked.
    pub fn sge(&self, offset: usize, len: usize) -> Result<Sge> {
        let end = offset.checked_add(len);
        if end.is_none_or(|e| e > self.len) || u32::try_from(len).is_err() {
            return Err(Error::invalid(format!(
                "{len} bytes at offset {offset} do not fit the {}-byte memory region",
                self.len
            )));
        }
        Ok(Sge {
            addr: self.addr + offset as u64,
            len: len as u32,
            lkey: self.key,
        })
    }

    /// Copies bytes out of the region at `offset`.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.sge(offset, out.len())?;
        self.mem.read(self.off + offset, out);
        Ok(())
    }

    /// Copies `data` into the region at `offset`; needs `LOCAL_WRITE` (a region registered
    /// without it may be read-only memory).
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        if self.access.0 & Access::LOCAL_WRITE.0 == 0 {
            return Err(Error::invalid(
                "the region was registered without LOCAL_WRITE: write to its memory directly",
            ));
        }
        self.sge(offset, data.len())?;
        self.mem.write(self.off + offset, data);
        Ok(())
    }
}

pub(super) struct ChannelShared {
    pub efd: EventFd,
}

/// A completion channel: an eventfd that CQs armed with
/// [`CompletionQueue::req_notify`] make readable at their next completion.
#[derive(Clone)]
pub struct CompletionChannel {
    pub(super) inner: Arc<ChannelShared>,
}

impl CompletionChannel {
    pub(super) fn new() -> Result<Self> {
        Ok(CompletionChannel {
            inner: Arc::new(ChannelShared {
                efd: EventFd::new()?,
            }),
        })
    }

    /// The file descriptor (readable when an event is pending), for `poll`/`select`/asyncio.
    pub fn fd(&self) -> i32 {
        self.inner.efd.raw()
    }
}

const UNARMED: u8 = 0;
const ARMED_ANY: u8 = 1;
const ARMED_SOLICITED: u8 = 2;

/// The completions of a CQ, shared by its handles and the engine's QPs.
pub(super) struct CqShared {
    q: Mutex<VecDeque<WorkCompletion>>,
    depth: usize,
    armed: AtomicU8,
    channel: Option<Arc<ChannelShared>>,
    /// Signalled after a push while a caller waits in [`CqShared::wait_ready`].
    ready: Condvar,
    /// Callers waiting on `ready` (a push without waiters makes no wake-up syscall).
    waiters: AtomicUsize,
}

impl CqShared {
    /// Adds a completion; false (dropped, the caller counts it) when the CQ is full.
    pub fn push(&self, wc: WorkCompletion, solicited: bool) -> bool {
        {
            let mut q = self.q.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= self.depth {
                return false;
            }
            q.push_back(wc);
        }
        // A waiter registers under the queue's lock before it looks at the queue, so one
        // that found it empty is counted here and woken.
        if self.waiters.load(Ordering::Acquire) > 0 {
            self.ready.notify_all();
        }
        let fire = match self.armed.load(Ordering::Acquire) {
            ARMED_ANY => true,
            ARMED_SOLICITED => solicited || wc.status != 0,
            _ => false,
        };
        if fire && self.armed.swap(UNARMED, Ordering::AcqRel) != UNARMED {
            if let Some(ch) = &self.channel {
                ch.efd.signal();
            }
        }
        true
    }

    /// Blocks until the queue holds a completion or `timeout` passes; true if it holds one.
    fn wait_ready(&self, timeout: Duration) -> bool {
        let q = self.q.lock().unwrap_or_else(|e| e.into_inner());
        if !q.is_empty() {
            return true;
        }
        self.waiters.fetch_add(1, Ordering::AcqRel);
        let (q, _) = self
            .ready
            .wait_timeout_while(q, timeout, |q| q.is_empty())
            .unwrap_or_else(|e| e.into_inner());
        self.waiters.fetch_sub(1, Ordering::AcqRel);
        !q.is_empty()
    }

    fn pop_into(&self, out: &mut [WorkCompletion]) -> usize {
        let mut q = self.q.lock().unwrap_or_else(|e| e.into_inner());
        let n = out.len().min(q.len());
        for (o, wc) in out.iter_mut().zip(q.drain(..n)) {
            *o = wc;
        }
        n
    }
}

/// A completion queue of `WorkCompletion`s in `ibv_wc` layout.
#[derive(Clone)]
pub struct CompletionQueue {
    pub(super) engine: Arc<Engine>,
    pub(super) shared: Arc<CqShared>,
    channel: Option<CompletionChannel>,
}

impl CompletionQueue {
    pub(super) fn new(
        engine: Arc<Engine>,
        cqe: u32,
        channel: Option<&CompletionChannel>,
    ) -> Result<Self> {
        if cqe == 0 {
            return Err(Error::invalid("a CQ needs at least 1 entry"));
        }
        Ok(CompletionQueue {
            engine,
            shared: Arc::new(CqShared {
                q: Mutex::new(VecDeque::with_capacity(cqe.min(1 << 16) as usize)),
                depth: cqe as usize,
                armed: AtomicU8::new(UNARMED),
                channel: channel.map(|c| Arc::clone(&c.inner)),
                ready: Condvar::new(),
                waiters: AtomicUsize::new(0),
            }),
            channel: channel.cloned(),
        })
    }

    /// Entries it holds at most (more completions are dropped and counted).
    pub fn depth(&self) -> usize {
        self.shared.depth
    }

    /// Polls up to `out.len()` completions into `out`; returns how many. With
    /// [`Progress::Caller`](super::Progress::Caller) the engine runs first.
    pub fn poll(&self, out: &mut [WorkCompletion]) -> Result<usize> {
        self.engine.caller_progress();
        Ok(self.shared.pop_into(out))
    }

    /// Waits until a poll would find a completion, or `timeout` passes (false then), without
    /// spinning: with a poll thread the caller sleeps until the engine pushes a completion,
    /// leaving the CPU to the engine; with [`Progress::Caller`](super::Progress::Caller) the
    /// engine runs once instead (only the caller's polls move it), so this returns at once.
    /// A busy-polling loop calls it when polls keep coming back empty.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        if self.engine.progress_mode() == super::Progress::Caller {
            self.engine.caller_progress();
            return !self
                .shared
                .q
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
        }
        self.shared.wait_ready(timeout)
    }

    /// Asks for an event on the completion channel at the next completion (the next
    /// solicited or failed one with `solicited_only`).
    pub fn req_notify(&self, solicited_only: bool) -> Result<()> {
        if self.channel.is_none() {
            return Err(Error::State(
                "this CQ has no completion channel: create it with one to be notified".into(),
            ));
        }
        let v = if solicited_only {
            ARMED_SOLICITED
        } else {
            ARMED_ANY
        };
        self.shared.armed.store(v, Ordering::Release);
        Ok(())
    }

    /// Waits until the completion channel has an event, or `timeout` passes (false then).
    /// Call [`req_notify`](Self::req_notify) before, then poll after.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        let Some(ch) = &self.channel else {
            return Err(Error::State(
                "this CQ has no completion channel: create it with one to wait".into(),
            ));
        };
        let got = self.engine.wait_fd(ch.inner.efd.raw(), timeout)?;
        if got {
            ch.inner.efd.drain();
        }
        Ok(got)
    }

    /// Polls, and if nothing is there, sleeps on the completion channel until a completion
    /// arrives or `timeout` passes (then 0). Race-free: the CQ is armed and polled again
    /// before sleeping.
    pub fn poll_blocking(
        &self,
        out: &mut [WorkCompletion],
        timeout: Option<Duration>,
    ) -> Result<usize> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let n = self.poll(out)?;
            if n > 0 {
                return Ok(n);
            }
            self.req_notify(false)?;
            let n = self.poll(out)?;
            if n > 0 {
                return Ok(n);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) || !self.wait(left)? {
                return self.poll(out);
            }
        }
    }
}

/// An address handle: where UD sends to a peer go (its IP and MAC addresses).
pub struct AddressHandle {
    _pd: ProtectionDomain,
    pub(super) ip: IpAddr,
    pub(super) mac: [u8; 6],
}

impl AddressHandle {
    /// The peer's IP address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
    /// The peer's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }
}
