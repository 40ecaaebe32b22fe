//! The verbs provider: the verbs object model over libibverbs loaded at run time.
//!
//! Every object owns its libibverbs object and releases it in `Drop`; children hold their
//! parents (`Arc`) so a parent is released only after its last child, whatever order the
//! caller drops them in. This module and [`super::ffi`] are the RDMA area's FFI boundary:
//! every `unsafe` block here calls libibverbs or the provider's `ops` table.

use std::any::Any;
use std::ffi::{c_int, c_void};
use std::fmt;
use std::marker::PhantomData;
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::time::Duration;

use super::ffi::{self, verbs, Verbs};
use crate::error::{errno, Error, Result};
use crate::sys::mm::Mapping;

/// One RDMA device as `ibv_get_device_list` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Kernel name of the device, e.g. `rxe0` or `mlx5_0`.
    pub name: String,
    /// Its uverbs character device, e.g. `uverbs0`.
    pub uverbs: String,
    /// `enum ibv_node_type` (1 = CA, 4 = RNIC).
    pub node_type: i32,
    /// `enum ibv_transport_type` (0 = InfiniBand, also for RoCE).
    pub transport_type: i32,
    /// sysfs path of the device (`/sys/class/infiniband/<name>`).
    pub ibdev_path: String,
}

fn c_string(raw: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Walks the device list, calling `f` on each entry, and frees the list.
fn with_device_list<T>(
    v: &Verbs,
    mut f: impl FnMut(*mut ffi::ibv_device) -> Option<T>,
) -> Result<Option<T>> {
    let mut n: c_int = 0;
    // SAFETY: ibv_get_device_list writes the count through a valid pointer and returns a
    // NULL-terminated array (or NULL with errno set).
    let list = unsafe { (v.get_device_list)(&mut n) };
    if list.is_null() {
        let e = errno();
        // ENOSYS: the kernel has no uverbs support at all, i.e. there are no devices.
        if e == libc::ENOSYS || e == 0 {
            return Ok(None);
        }
        return Err(Error::os("ibv_get_device_list", e, ""));
    }
    let mut found = None;
    for i in 0..usize::try_from(n).unwrap_or(0) {
        // SAFETY: the array holds `n` valid device pointers.
        let dev = unsafe { *list.add(i) };
        if dev.is_null() {
            break;
        }
        if let Some(t) = f(dev) {
            found = Some(t);
            break;
        }
    }
    // SAFETY: `list` came from ibv_get_device_list and is freed once; devices opened from it
    // stay valid (libibverbs reference-counts them).
    unsafe { (v.free_device_list)(list) };
    Ok(found)
}

fn device_info(dev: *mut ffi::ibv_device) -> DeviceInfo {
    // SAFETY: `dev` is a live entry of the device list.
    let d = unsafe { &*dev };
    DeviceInfo {
        name: c_string(&d.name),
        uverbs: c_string(&d.dev_name),
        node_type: d.node_type,
        transport_type: d.transport_type,
        ibdev_path: c_string(&d.ibdev_path),
    }
}

/// The RDMA devices of this machine: empty when the kernel has none, an error naming the
/// packages to install when libibverbs itself is missing.
pub fn devices() -> Result<Vec<DeviceInfo>> {
    let v = verbs()?;
    let mut out = Vec::new();
    with_device_list(v, |dev| {
        out.push(device_info(dev));
        None::<()>
    })?;
    Ok(out)
}

/// A GID (16 bytes, network order). RoCEv2 over IPv4 uses the IPv4-mapped form `::ffff:a.b.c.d`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Gid(pub [u8; 16]);

impl Gid {
    /// True for an all-zero (unused) table entry.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
    /// The IPv4 address if this is an IPv4-mapped GID.
    pub fn ipv4(&self) -> Option<std::net::Ipv4Addr> {
        std::net::Ipv6Addr::from(self.0).to_ipv4_mapped()
    }
    /// The 32 lowercase hex digits rdma-core's pingpong examples exchange.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
    /// Parse 32 hex digits (the inverse of [`Gid::to_hex`]).
    pub fn from_hex(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid(format!("a GID is 32 hex digits, got {s:?}")));
        }
        let mut g = [0u8; 16];
        for (i, byte) in g.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(Error::invalid)?;
        }
        Ok(Gid(g))
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&std::net::Ipv6Addr::from(self.0), f)
    }
}

impl fmt::Debug for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gid({self})")
    }
}

/// The port attributes kbypass uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortAttr {
    /// `enum ibv_port_state` (4 = ACTIVE).
    pub state: i32,
    /// `enum ibv_mtu` of the port's maximum and active MTU (1 = 256 … 5 = 4096).
    pub max_mtu: i32,
    /// See `max_mtu`.
    pub active_mtu: i32,
    /// Entries in the GID table.
    pub gid_tbl_len: i32,
    /// The port's LID (0 on RoCE).
    pub lid: u16,
    /// 1 = InfiniBand, 2 = Ethernet (RoCE).
    pub link_layer: u8,
}

/// Bytes of an `enum ibv_mtu` value.
pub fn mtu_bytes(mtu: i32) -> Option<u32> {
    (1..=5).contains(&mtu).then(|| 128u32 << mtu)
}

/// The device attributes kbypass uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAttr {
    /// Firmware version string.
    pub fw_ver: String,
    /// Node GUID (as the device reports it, network order).
    pub node_guid: u64,
    /// Limits.
    pub max_qp: i32,
    /// Work requests per queue.
    pub max_qp_wr: i32,
    /// Scatter/gather entries per work request.
    pub max_sge: i32,
    /// Completion queue entries.
    pub max_cqe: i32,
    /// Memory regions.
    pub max_mr: i32,
    /// Outstanding RDMA reads/atomics a QP may initiate.
    pub max_qp_init_rd_atom: i32,
    /// … and may serve.
    pub max_qp_rd_atom: i32,
    /// `enum ibv_atomic_cap` (0 = none, 1 = HCA, 2 = global).
    pub atomic_cap: i32,
    /// Number of physical ports.
    pub phys_port_cnt: u8,
}

struct ContextInner {
    ptr: NonNull<ffi::ibv_context>,
    v: &'static Verbs,
    name: String,
}

// SAFETY: libibverbs objects may be used from any thread (the library locks internally where
// it must); the pointer is only released in Drop, when no other reference exists.
unsafe impl Send for ContextInner {}
// SAFETY: as above.
unsafe impl Sync for ContextInner {}

impl Drop for ContextInner {
    fn drop(&mut self) {
        // SAFETY: the context was opened by ibv_open_device and every child (which holds an Arc
        // to this) is gone.
        unsafe { (self.v.close_device)(self.ptr.as_ptr()) };
    }
}

/// An open RDMA device (`ibv_context`).
#[derive(Clone)]
pub struct Context {
    inner: Arc<ContextInner>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Context({})", self.inner.name)
    }
}

impl Context {
    /// Open the device called `name`, or the first device when `name` is `None`.
    pub fn open(name: Option<&str>) -> Result<Self> {
        let v = verbs()?;
        let opened = with_device_list(v, |dev| {
            let info = device_info(dev);
            if name.is_some_and(|n| n != info.name) {
                return None;
            }
            // SAFETY: `dev` is a live entry of the device list.
            let ctx = unsafe { (v.open_device)(dev) };
            Some((info.name, NonNull::new(ctx).ok_or_else(errno)))
        })?;
        let Some((dev_name, ctx)) = opened else {
            let known: Vec<String> = devices()?.into_iter().map(|d| d.name).collect();
            return Err(Error::NotFound(match name {
                Some(n) => format!("no RDMA device {n:?} (devices: {known:?})"),
                None => "no RDMA device: load a driver (e.g. `rdma link add rxe0 type rxe netdev eth0` for soft-RoCE)".into(),
            }));
        };
        let ptr = ctx.map_err(|e| Error::os(format!("ibv_open_device({dev_name})"), e, ""))?;
        Ok(Context {
            inner: Arc::new(ContextInner {
                ptr,
                v,
                name: dev_name,
            }),
        })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn raw(&self) -> *mut ffi::ibv_context {
        self.inner.ptr.as_ptr()
    }

    /// Device attributes (`ibv_query_device`).
    pub fn query_device(&self) -> Result<DeviceAttr> {
        // SAFETY: ibv_device_attr is plain data; all-zero is a valid value.
        let mut a: ffi::ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: valid context and a properly sized out-struct.
        let rc = unsafe { (self.inner.v.query_device)(self.raw(), &mut a) };
        if rc != 0 {
            return Err(Error::os("ibv_query_device", rc, ""));
        }
        Ok(DeviceAttr {
            fw_ver: c_string(&a.fw_ver),
            node_guid: a.node_guid,
            max_qp: a.max_qp,
            max_qp_wr: a.max_qp_wr,
            max_sge: a.max_sge,
            max_cqe: a.max_cqe,
            max_mr: a.max_mr,
            max_qp_init_rd_atom: a.max_qp_init_rd_atom,
            max_qp_rd_atom: a.max_qp_rd_atom,
            atomic_cap: a.atomic_cap,
            phys_port_cnt: a.phys_port_cnt,
        })
    }

    /// Port attributes (`ibv_query_port`; ports count from 1).
    pub fn query_port(&self, port: u8) -> Result<PortAttr> {
        let mut a = ffi::ibv_port_attr::default();
        // SAFETY: valid context; the exported function fills a prefix of the zeroed struct.
        let rc = unsafe { (self.inner.v.query_port)(self.raw(), port, &mut a) };
        if rc != 0 {
            return Err(Error::os(
                format!("ibv_query_port({port})"),
                rc,
                "ports count from 1",
            ));
        }
        Ok(PortAttr {
            state: a.state,
            max_mtu: a.max_mtu,
            active_mtu: a.active_mtu,
            gid_tbl_len: a.gid_tbl_len,
            lid: a.lid,
            link_layer: a.link_layer,
        })
    }

    /// One GID table entry (`ibv_query_gid`).
    pub fn query_gid(&self, port: u8, index: i32) -> Result<Gid> {
        let mut g = ffi::ibv_gid::default();
        // SAFETY: valid context and out-pointer.
        let rc = unsafe { (self.inner.v.query_gid)(self.raw(), port, index, &mut g) };
        if rc != 0 {
            return Err(Error::os(
                format!("ibv_query_gid({port}, {index})"),
                errno(),
                "",
            ));
        }
        Ok(Gid(g.raw))
    }

    /// The GID type of a table entry as sysfs names it ("RoCE v2", "IB/RoCE v1"), if known.
    pub fn gid_type(&self, port: u8, index: i32) -> Option<String> {
        let p = format!(
            "/sys/class/infiniband/{}/ports/{port}/gid_attrs/types/{index}",
            self.name()
        );
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// The GID index to use by default: the first IPv4-mapped RoCEv2 GID, else the first
    /// non-zero one (InfiniBand: index 0).
    pub fn default_gid_index(&self, port: u8) -> Result<i32> {
        let n = self.query_port(port)?.gid_tbl_len;
        let mut first = None;
        for i in 0..n {
            let Ok(g) = self.query_gid(port, i) else {
                continue;
            };
            if g.is_zero() {
                continue;
            }
            if g.ipv4().is_some() && self.gid_type(port, i).as_deref() == Some("RoCE v2") {
                return Ok(i);
            }
            first.get_or_insert(i);
        }
        first.ok_or_else(|| {
            Error::NotFound(format!(
                "{} port {port} has no GID: give its netdev an IP address",
                self.name()
            ))
        })
    }

    /// Allocate a protection domain.
    pub fn alloc_pd(&self) -> Result<ProtectionDomain> {
        // SAFETY: valid context.
        let pd = unsafe { (self.inner.v.alloc_pd)(self.raw()) };
        let ptr = NonNull::new(pd).ok_or_else(|| Error::last_os("ibv_alloc_pd", ""))?;
        Ok(ProtectionDomain {
            inner: Arc::new(PdInner {
                ptr,
                ctx: self.inner.clone(),
            }),
        })
    }

    /// Create a completion channel (a file descriptor that becomes readable on CQ events).
    pub fn create_comp_channel(&self) -> Result<CompletionChannel> {
        // SAFETY: valid context.
        let ch = unsafe { (self.inner.v.create_comp_channel)(self.raw()) };
        let ptr = NonNull::new(ch).ok_or_else(|| Error::last_os("ibv_create_comp_channel", ""))?;
        Ok(CompletionChannel {
            inner: Arc::new(ChannelInner {
                ptr,
                ctx: self.inner.clone(),
            }),
        })
    }

    /// Create a completion queue of at least `cqe` entries, optionally tied to `channel`.
    pub fn create_cq(
        &self,
        cqe: i32,
        channel: Option<&CompletionChannel>,
    ) -> Result<CompletionQueue> {
        if cqe < 1 {
            return Err(Error::invalid(format!(
                "a CQ needs at least 1 entry, got {cqe}"
            )));
        }
        // SAFETY: the context's ops table lives as long as the context.
        let ops = unsafe { &(*self.raw()).ops };
        let (Some(poll), Some(notify)) = (ops.poll_cq, ops.req_notify_cq) else {
            return Err(Error::Unsupported {
                what: format!("{}: the provider has no poll_cq/req_notify_cq", self.name()),
                fix: "use a device whose provider implements the classic verbs data path".into(),
            });
        };
        let ch = channel.map_or(ptr::null_mut(), |c| c.inner.ptr.as_ptr());
        // SAFETY: valid context; `ch` is NULL or a channel of the same context.
        let cq = unsafe { (self.inner.v.create_cq)(self.raw(), cqe, ptr::null_mut(), ch, 0) };
        let ptr =
            NonNull::new(cq).ok_or_else(|| Error::last_os(format!("ibv_create_cq({cqe})"), ""))?;
        Ok(CompletionQueue {
            inner: Arc::new(CqInner {
                ptr,
                ctx: self.inner.clone(),
                channel: channel.map(|c| c.inner.clone()),
                poll,
                notify,
            }),
        })
    }
}

struct PdInner {
    ptr: NonNull<ffi::ibv_pd>,
    ctx: Arc<ContextInner>,
}
// SAFETY: see ContextInner.
unsafe impl Send for PdInner {}
// SAFETY: see ContextInner.
unsafe impl Sync for PdInner {}
impl Drop for PdInner {
    fn drop(&mut self) {
        // SAFETY: allocated by ibv_alloc_pd; MRs, QPs and AHs hold an Arc to this, so none remain.
        unsafe { (self.ctx.v.dealloc_pd)(self.ptr.as_ptr()) };
    }
}

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

/// A protection domain (`ibv_pd`).
#[derive(Clone)]
pub struct ProtectionDomain {
    inner: Arc<PdInner>,
}

impl ProtectionDomain {
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
        if len == 0 {
            return Err(Error::invalid("cannot register 0 bytes"));
        }
        let v = self.inner.ctx.v;
        // SAFETY: valid PD; the caller guarantees the memory range.
        let mr = unsafe { (v.reg_mr)(self.inner.ptr.as_ptr(), addr.cast(), len, access.0) };
        let ptr = NonNull::new(mr).ok_or_else(|| {
            Error::last_os(
                format!("ibv_reg_mr({len} bytes)"),
                "RLIMIT_MEMLOCK too low? run as root or raise it with `ulimit -l unlimited`",
            )
        })?;
        Ok(MemoryRegion {
            ptr,
            addr,
            len,
            pd: self.inner.clone(),
            _owner: owner,
        })
    }

    /// Create a shared receive queue of `max_wr` receives with up to `max_sge` SGEs each.
    pub fn create_srq(&self, max_wr: u32, max_sge: u32) -> Result<Arc<SharedReceiveQueue>> {
        let ctx = &self.inner.ctx;
        // SAFETY: the ops table lives as long as the context.
        let Some(post) = (unsafe { (*ctx.ptr.as_ptr()).ops.post_srq_recv }) else {
            return Err(Error::Unsupported {
                what: format!("{}: the provider has no post_srq_recv", ctx.name),
                fix: "post receives on each QP instead of a shared receive queue".into(),
            });
        };
        let mut attr = ffi::ibv_srq_init_attr {
            srq_context: ptr::null_mut(),
            attr: ffi::ibv_srq_attr {
                max_wr,
                max_sge,
                srq_limit: 0,
            },
        };
        // SAFETY: valid PD and attributes.
        let srq = unsafe { (ctx.v.create_srq)(self.inner.ptr.as_ptr(), &mut attr) };
        let ptr = NonNull::new(srq)
            .ok_or_else(|| Error::last_os(format!("ibv_create_srq({max_wr})"), ""))?;
        Ok(Arc::new(SharedReceiveQueue {
            ptr,
            post,
            pd: self.inner.clone(),
        }))
    }

    /// Create an address handle for UD sends to `dest`.
    pub fn create_ah(&self, dest: &Endpoint, sgid_index: u8, port: u8) -> Result<AddressHandle> {
        let mut attr = ffi::ibv_ah_attr {
            grh: ffi::ibv_global_route {
                dgid: ffi::ibv_gid { raw: dest.gid.0 },
                sgid_index,
                hop_limit: 1,
                ..Default::default()
            },
            dlid: dest.lid,
            is_global: u8::from(!dest.gid.is_zero()),
            port_num: port,
            ..Default::default()
        };
        let v = self.inner.ctx.v;
        // SAFETY: valid PD and attribute struct.
        let ah = unsafe { (v.create_ah)(self.inner.ptr.as_ptr(), &mut attr) };
        let ptr = NonNull::new(ah).ok_or_else(|| Error::last_os("ibv_create_ah", ""))?;
        Ok(AddressHandle {
            ptr,
            pd: self.inner.clone(),
        })
    }
}

/// A shared receive queue (`ibv_srq`): one pool of receives for many QPs.
pub struct SharedReceiveQueue {
    ptr: NonNull<ffi::ibv_srq>,
    post: ffi::PostSrqRecvFn,
    pd: Arc<PdInner>,
}
// SAFETY: see ContextInner.
unsafe impl Send for SharedReceiveQueue {}
// SAFETY: see ContextInner.
unsafe impl Sync for SharedReceiveQueue {}
impl Drop for SharedReceiveQueue {
    fn drop(&mut self) {
        // SAFETY: created by ibv_create_srq; QPs using it hold an Arc, so none remain.
        unsafe { (self.pd.ctx.v.destroy_srq)(self.ptr.as_ptr()) };
    }
}

impl SharedReceiveQueue {
    /// Post one receive work request to the shared pool.
    pub fn post_recv(&self, wr_id: u64, sg: &[Sge<'_>]) -> Result<()> {
        let mut wr = ffi::ibv_recv_wr {
            wr_id,
            next: ptr::null_mut(),
            sg_list: sg.as_ptr() as *mut ffi::ibv_sge,
            num_sge: c_int::try_from(sg.len()).map_err(|_| Error::invalid("too many SGEs"))?,
        };
        let mut bad: *mut ffi::ibv_recv_wr = ptr::null_mut();
        // SAFETY: the provider's post_srq_recv for this SRQ; `wr` and its SGEs outlive the call.
        let rc = unsafe { (self.post)(self.ptr.as_ptr(), &mut wr, &mut bad) };
        if rc != 0 {
            return Err(Error::os(
                "post_srq_recv",
                rc,
                "the shared receive queue is full",
            ));
        }
        Ok(())
    }
}

/// A registered memory region (`ibv_mr`), owning (or keeping alive) its memory.
pub struct MemoryRegion {
    ptr: NonNull<ffi::ibv_mr>,
    addr: *mut u8,
    len: usize,
    pd: Arc<PdInner>,
    _owner: Box<dyn Any + Send + Sync>,
}
// SAFETY: see ContextInner; the bytes are shared with the device, and reads/writes through
// `read`/`write` are copies whose ordering against the device is the caller's (completions).
unsafe impl Send for MemoryRegion {}
// SAFETY: as above.
unsafe impl Sync for MemoryRegion {}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: registered by ibv_reg_mr; deregistered once, before the memory (`_owner`,
        // dropped after this) and the PD (Arc) go.
        unsafe { (self.pd.ctx.v.dereg_mr)(self.ptr.as_ptr()) };
    }
}

impl MemoryRegion {
    /// Start address of the region (what a peer uses as `remote_addr`).
    pub fn addr(&self) -> u64 {
        self.addr as u64
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
        // SAFETY: the ibv_mr is valid while self lives.
        unsafe { self.ptr.as_ref().lkey }
    }
    /// Remote key.
    pub fn rkey(&self) -> u32 {
        // SAFETY: as above.
        unsafe { self.ptr.as_ref().rkey }
    }

    fn check(&self, offset: usize, len: usize) -> Result<()> {
        check_range(offset, len, self.len)
    }

    /// A scatter/gather element for `len` bytes at `offset`, bounds-checked against the
    /// region. It borrows the region, so the memory stays registered and mapped while the
    /// element can be posted.
    pub fn sge(&self, offset: usize, len: usize) -> Result<Sge<'_>> {
        Ok(Sge {
            raw: sge_in(self.addr(), self.len, self.lkey(), offset, len)?,
            _mr: PhantomData,
        })
    }

    /// Copy bytes out of the region.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.check(offset, out.len())?;
        // SAFETY: bounds checked; the region is valid memory that `out` cannot overlap.
        unsafe { ptr::copy_nonoverlapping(self.addr.add(offset), out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Read one byte with a volatile load (the device may change it at any time).
    pub fn read_volatile(&self, offset: usize) -> Result<u8> {
        self.check(offset, 1)?;
        // SAFETY: bounds checked; a volatile byte load from valid memory.
        Ok(unsafe { ptr::read_volatile(self.addr.add(offset)) })
    }

    /// Copy bytes into the region.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.check(offset, data.len())?;
        // SAFETY: bounds checked; the region is valid memory that `data` cannot overlap.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), self.addr.add(offset), data.len()) };
        Ok(())
    }
}

/// A scatter/gather element (`ibv_sge`): address, length and lkey of registered memory.
///
/// Safe code gets one only from [`MemoryRegion::sge`], bounds-checked, and it borrows the
/// region: an [`SendFlags::INLINE`] send, which the provider copies from the address with the
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
    /// [`SendFlags::INLINE`] send copies it with the CPU, lkey unchecked) and, for the device,
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

/// An address handle for UD (`ibv_ah`).
pub struct AddressHandle {
    ptr: NonNull<ffi::ibv_ah>,
    pd: Arc<PdInner>,
}
// SAFETY: see ContextInner.
unsafe impl Send for AddressHandle {}
// SAFETY: see ContextInner.
unsafe impl Sync for AddressHandle {}
impl Drop for AddressHandle {
    fn drop(&mut self) {
        // SAFETY: created by ibv_create_ah, destroyed once, before its PD.
        unsafe { (self.pd.ctx.v.destroy_ah)(self.ptr.as_ptr()) };
    }
}

struct ChannelInner {
    ptr: NonNull<ffi::ibv_comp_channel>,
    ctx: Arc<ContextInner>,
}
// SAFETY: see ContextInner.
unsafe impl Send for ChannelInner {}
// SAFETY: see ContextInner.
unsafe impl Sync for ChannelInner {}
impl Drop for ChannelInner {
    fn drop(&mut self) {
        // SAFETY: created by ibv_create_comp_channel; CQs using it hold an Arc, so none remain.
        unsafe { (self.ctx.v.destroy_comp_channel)(self.ptr.as_ptr()) };
    }
}

/// A completion channel (`ibv_comp_channel`).
#[derive(Clone)]
pub struct CompletionChannel {
    inner: Arc<ChannelInner>,
}

impl CompletionChannel {
    /// The channel's file descriptor (readable when a CQ event is pending).
    pub fn fd(&self) -> i32 {
        // SAFETY: valid channel.
        unsafe { self.inner.ptr.as_ref().fd }
    }
}

struct CqInner {
    ptr: NonNull<ffi::ibv_cq>,
    ctx: Arc<ContextInner>,
    channel: Option<Arc<ChannelInner>>,
    poll: ffi::PollCqFn,
    notify: ffi::ReqNotifyCqFn,
}
// SAFETY: see ContextInner.
unsafe impl Send for CqInner {}
// SAFETY: see ContextInner.
unsafe impl Sync for CqInner {}
impl Drop for CqInner {
    fn drop(&mut self) {
        // SAFETY: created by ibv_create_cq; QPs hold an Arc so none remain, and every event
        // taken from the channel was acknowledged in `wait`.
        unsafe { (self.ctx.v.destroy_cq)(self.ptr.as_ptr()) };
    }
}

/// A work completion (`ibv_wc`), exactly as the provider writes it.
pub type WorkCompletion = ffi::ibv_wc;

impl ffi::ibv_wc {
    /// True when the work request succeeded.
    pub fn is_success(&self) -> bool {
        self.status == 0
    }
    /// The status as rdma-core names it without the `IBV_WC_` prefix, e.g. `REM_ACCESS_ERR`.
    pub fn status_name(&self) -> &'static str {
        usize::try_from(self.status)
            .ok()
            .and_then(|i| ffi::WC_STATUS_NAMES.get(i).copied())
            .unwrap_or("UNKNOWN")
    }
    /// `Ok` for a successful completion, else an error naming the status and the work request.
    pub fn check(&self) -> Result<()> {
        if self.is_success() {
            return Ok(());
        }
        Err(Error::Os {
            what: format!(
                "work request {} completed with {} (vendor error {:#x})",
                self.wr_id,
                self.status_name(),
                self.vendor_err
            ),
            errno: libc::EIO,
            fix: match self.status {
                10 => "the remote key, address or access rights are wrong".into(),
                12 | 13 => "the peer is gone or has no receive posted (RNR)".into(),
                5 => "the QP went to the error state; reset and reconnect it".into(),
                _ => String::new(),
            },
        })
    }

    /// The immediate data in host order, if the completion carries it.
    pub fn imm(&self) -> Option<u32> {
        (self.wc_flags & ffi::WC_WITH_IMM != 0).then(|| u32::from_be(self.imm_data))
    }
}

/// A completion queue (`ibv_cq`).
#[derive(Clone)]
pub struct CompletionQueue {
    inner: Arc<CqInner>,
}

impl CompletionQueue {
    /// Poll up to `out.len()` completions into `out`; returns how many were written.
    /// Never blocks, never allocates.
    pub fn poll(&self, out: &mut [WorkCompletion]) -> Result<usize> {
        let n = c_int::try_from(out.len()).unwrap_or(c_int::MAX);
        // SAFETY: `poll` is the provider's poll_cq for this CQ's context; `out` has room for
        // `n` completions.
        let got = unsafe { (self.inner.poll)(self.inner.ptr.as_ptr(), n, out.as_mut_ptr()) };
        if got < 0 {
            return Err(Error::os(
                "poll_cq",
                -got,
                "the CQ overran or the device failed",
            ));
        }
        Ok(got as usize)
    }

    /// Poll into raw memory: up to `n` completions written at `out`, returning how many.
    ///
    /// # Safety
    /// `out` must be valid for writes of `n` [`WorkCompletion`]s and 8-byte aligned.
    pub unsafe fn poll_raw(&self, out: *mut WorkCompletion, n: usize) -> Result<usize> {
        let n = c_int::try_from(n).unwrap_or(c_int::MAX);
        // SAFETY: the provider's poll_cq for this CQ; the caller vouches for `out`.
        let got = unsafe { (self.inner.poll)(self.inner.ptr.as_ptr(), n, out) };
        if got < 0 {
            return Err(Error::os(
                "poll_cq",
                -got,
                "the CQ overran or the device failed",
            ));
        }
        Ok(got as usize)
    }

    /// Ask for an event on the completion channel at the next (solicited) completion.
    pub fn req_notify(&self, solicited_only: bool) -> Result<()> {
        // SAFETY: the provider's req_notify_cq for this CQ.
        let rc =
            unsafe { (self.inner.notify)(self.inner.ptr.as_ptr(), c_int::from(solicited_only)) };
        if rc != 0 {
            return Err(Error::os("req_notify_cq", rc, ""));
        }
        Ok(())
    }

    /// Wait until the completion channel reports an event for this CQ, or `timeout` passes
    /// (returns false then). Call [`req_notify`](Self::req_notify) before, then poll after.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        let Some(ch) = &self.inner.channel else {
            return Err(Error::State(
                "this CQ has no completion channel: create it with one to wait".into(),
            ));
        };
        // SAFETY: valid channel.
        let fd = unsafe { ch.ptr.as_ref().fd };
        let ms = timeout.map_or(-1, |t| c_int::try_from(t.as_millis()).unwrap_or(c_int::MAX));
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc == 0 {
                return Ok(false);
            }
            if rc < 0 {
                let e = errno();
                if e == libc::EINTR {
                    continue;
                }
                return Err(Error::os("poll(completion channel)", e, ""));
            }
            break;
        }
        let mut cq: *mut ffi::ibv_cq = ptr::null_mut();
        let mut cq_ctx: *mut c_void = ptr::null_mut();
        let v = self.inner.ctx.v;
        // SAFETY: the channel is readable, so this does not block; out-pointers are valid.
        let rc = unsafe { (v.get_cq_event)(ch.ptr.as_ptr(), &mut cq, &mut cq_ctx) };
        if rc != 0 {
            return Err(Error::last_os("ibv_get_cq_event", ""));
        }
        if !cq.is_null() {
            // SAFETY: `cq` is a CQ of this channel that is still alive (an event for it came
            // in); every event is acknowledged at once so destroy_cq never waits.
            unsafe { (v.ack_cq_events)(cq, 1) };
        }
        Ok(true)
    }
}

impl CompletionQueue {
    /// Poll, and if nothing is there, sleep on the completion channel until a completion
    /// arrives or `timeout` passes (then 0). Race-free: the CQ is armed and polled again
    /// before sleeping, so a completion that lands in between is not missed.
    pub fn poll_blocking(
        &self,
        out: &mut [WorkCompletion],
        timeout: Option<Duration>,
    ) -> Result<usize> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
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
            let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
            if left == Some(Duration::ZERO) || !self.wait(left)? {
                return self.poll(out);
            }
        }
    }
}

/// Transport of a queue pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QpType {
    /// Reliable connected.
    Rc,
    /// Unreliable connected.
    Uc,
    /// Unreliable datagram.
    Ud,
}

impl QpType {
    fn raw(self) -> c_int {
        match self {
            QpType::Rc => ffi::QPT_RC,
            QpType::Uc => ffi::QPT_UC,
            QpType::Ud => ffi::QPT_UD,
        }
    }
}

/// Queue sizes of a QP (`ibv_qp_cap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpCaps {
    /// Outstanding send work requests.
    pub max_send_wr: u32,
    /// Outstanding receive work requests.
    pub max_recv_wr: u32,
    /// SGEs per send.
    pub max_send_sge: u32,
    /// SGEs per receive.
    pub max_recv_sge: u32,
    /// Largest inline send.
    pub max_inline_data: u32,
}

impl Default for QpCaps {
    fn default() -> Self {
        QpCaps {
            max_send_wr: 128,
            max_recv_wr: 128,
            max_send_sge: 4,
            max_recv_sge: 4,
            max_inline_data: 64,
        }
    }
}

/// What a peer needs to connect to a QP (exchanged out of band).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// QP number.
    pub qpn: u32,
    /// Initial packet sequence number (24 bits).
    pub psn: u32,
    /// GID of the port.
    pub gid: Gid,
    /// LID (0 on RoCE).
    pub lid: u16,
}

/// Path and retry parameters for the INIT→RTR→RTS transitions, with the usual defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathParams {
    /// Port number (from 1).
    pub port: u8,
    /// Local GID index (the RoCEv2 IPv4 one, see [`Context::default_gid_index`]).
    pub sgid_index: u8,
    /// `enum ibv_mtu` (3 = 1024).
    pub mtu: i32,
    /// Local ACK timeout exponent (4.096 µs · 2^timeout).
    pub timeout: u8,
    /// Transport retries.
    pub retry_cnt: u8,
    /// RNR retries (7 = infinite).
    pub rnr_retry: u8,
    /// Minimum RNR NAK timer code.
    pub min_rnr_timer: u8,
    /// Outstanding RDMA reads/atomics, both directions.
    pub max_rd_atomic: u8,
    /// Service level.
    pub sl: u8,
    /// Q_Key for UD.
    pub qkey: u32,
}

impl Default for PathParams {
    fn default() -> Self {
        PathParams {
            port: 1,
            sgid_index: 0,
            mtu: 3,
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 7,
            min_rnr_timer: 12,
            max_rd_atomic: 1,
            sl: 0,
            qkey: 0x1111_1111,
        }
    }
}

/// One send work request's operation.
#[derive(Clone, Copy)]
pub enum SendOp<'a> {
    /// SEND.
    Send,
    /// SEND with 32-bit immediate data (host order).
    SendImm(u32),
    /// RDMA WRITE to `remote_addr` with `rkey`.
    Write {
        /// Remote virtual address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
    },
    /// RDMA WRITE with immediate data (consumes a receive at the peer).
    WriteImm {
        /// Remote virtual address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
        /// Immediate data (host order).
        imm: u32,
    },
    /// RDMA READ from `remote_addr`.
    Read {
        /// Remote virtual address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
    },
    /// 64-bit compare-and-swap at an 8-byte aligned `remote_addr`; the old value lands in the SGE.
    CompareSwap {
        /// Remote virtual address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
        /// Expected value.
        compare: u64,
        /// New value.
        swap: u64,
    },
    /// 64-bit fetch-and-add; the old value lands in the SGE.
    FetchAdd {
        /// Remote virtual address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
        /// Addend.
        add: u64,
    },
    /// UD SEND to the QP behind `ah`.
    UdSend {
        /// Address handle of the destination port.
        ah: &'a AddressHandle,
        /// Destination QP number.
        remote_qpn: u32,
        /// Destination Q_Key.
        remote_qkey: u32,
        /// Optional immediate data.
        imm: Option<u32>,
    },
}

/// Send flags (`enum ibv_send_flags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendFlags(pub u32);

impl SendFlags {
    /// Generate a completion for this request.
    pub const SIGNALED: SendFlags = SendFlags(ffi::SEND_SIGNALED);
    /// Wait for earlier reads/atomics first.
    pub const FENCE: SendFlags = SendFlags(ffi::SEND_FENCE);
    /// Solicited event at the receiver.
    pub const SOLICITED: SendFlags = SendFlags(ffi::SEND_SOLICITED);
    /// Copy the payload into the WQE (no lkey needed).
    pub const INLINE: SendFlags = SendFlags(ffi::SEND_INLINE);
}

impl std::ops::BitOr for SendFlags {
    type Output = SendFlags;
    fn bitor(self, rhs: SendFlags) -> SendFlags {
        SendFlags(self.0 | rhs.0)
    }
}

/// A queue pair (`ibv_qp`).
pub struct QueuePair {
    ptr: NonNull<ffi::ibv_qp>,
    qp_type: QpType,
    max_inline: u32,
    post_send: ffi::PostSendFn,
    post_recv: ffi::PostRecvFn,
    pd: Arc<PdInner>,
    _send_cq: Arc<CqInner>,
    _recv_cq: Arc<CqInner>,
    _srq: Option<Arc<SharedReceiveQueue>>,
}
// SAFETY: see ContextInner.
unsafe impl Send for QueuePair {}
// SAFETY: see ContextInner.
unsafe impl Sync for QueuePair {}
impl Drop for QueuePair {
    fn drop(&mut self) {
        // SAFETY: created by ibv_create_qp; destroyed once, before its CQs and PD (Arcs).
        unsafe { (self.pd.ctx.v.destroy_qp)(self.ptr.as_ptr()) };
    }
}

impl QueuePair {
    /// Create a QP on `pd` with the given CQs (they may be the same).
    pub fn create(
        pd: &ProtectionDomain,
        qp_type: QpType,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        caps: QpCaps,
    ) -> Result<Self> {
        Self::create_with_srq(pd, qp_type, send_cq, recv_cq, caps, None)
    }

    /// Create a QP whose receives come from `srq` (when given) instead of its own queue.
    pub fn create_with_srq(
        pd: &ProtectionDomain,
        qp_type: QpType,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        caps: QpCaps,
        srq: Option<&Arc<SharedReceiveQueue>>,
    ) -> Result<Self> {
        let ctx = &pd.inner.ctx;
        // SAFETY: the ops table lives as long as the context.
        let ops = unsafe { &(*ctx.ptr.as_ptr()).ops };
        let (Some(post_send), Some(post_recv)) = (ops.post_send, ops.post_recv) else {
            return Err(Error::Unsupported {
                what: format!("{}: the provider has no post_send/post_recv", ctx.name),
                fix: "use a device whose provider implements the classic verbs data path".into(),
            });
        };
        let mut attr = ffi::ibv_qp_init_attr {
            qp_context: ptr::null_mut(),
            send_cq: send_cq.inner.ptr.as_ptr(),
            recv_cq: recv_cq.inner.ptr.as_ptr(),
            srq: srq.map_or(ptr::null_mut(), |s| s.ptr.as_ptr().cast()),
            cap: ffi::ibv_qp_cap {
                max_send_wr: caps.max_send_wr,
                max_recv_wr: caps.max_recv_wr,
                max_send_sge: caps.max_send_sge,
                max_recv_sge: caps.max_recv_sge,
                max_inline_data: caps.max_inline_data,
            },
            qp_type: qp_type.raw(),
            sq_sig_all: 0,
        };
        // SAFETY: valid PD, CQs of the same context, initialised attributes.
        let qp = unsafe { (ctx.v.create_qp)(pd.inner.ptr.as_ptr(), &mut attr) };
        let ptr = NonNull::new(qp).ok_or_else(|| {
            Error::last_os(
                format!("ibv_create_qp({qp_type:?}, {caps:?})"),
                "lower the queue sizes?",
            )
        })?;
        Ok(QueuePair {
            ptr,
            qp_type,
            // ibv_create_qp writes the sizes it granted back into `attr.cap`.
            max_inline: attr.cap.max_inline_data,
            post_send,
            post_recv,
            pd: pd.inner.clone(),
            _send_cq: send_cq.inner.clone(),
            _recv_cq: recv_cq.inner.clone(),
            _srq: srq.cloned(),
        })
    }

    /// The QP number.
    pub fn qp_num(&self) -> u32 {
        // SAFETY: valid QP.
        unsafe { self.ptr.as_ref().qp_num }
    }

    /// The transport.
    pub fn qp_type(&self) -> QpType {
        self.qp_type
    }

    /// The largest [`SendFlags::INLINE`] payload the provider granted at creation.
    pub fn max_inline_data(&self) -> u32 {
        self.max_inline
    }

    /// Refuse inline sends the provider would read past (too long) or that verbs does not
    /// define (anything but SEND and RDMA WRITE).
    fn check_inline(&self, op: &SendOp<'_>, sg: &[Sge<'_>]) -> Result<()> {
        if matches!(
            op,
            SendOp::Read { .. } | SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. }
        ) {
            return Err(Error::invalid(
                "INLINE is only for SEND and RDMA WRITE: post READ and atomics without it",
            ));
        }
        let total: u64 = sg.iter().map(|s| u64::from(s.length())).sum();
        if total > u64::from(self.max_inline) {
            return Err(Error::invalid(format!(
                "an inline send of {total} bytes exceeds this QP's max_inline_data ({}): send it without INLINE or create the QP with a larger max_inline_data",
                self.max_inline
            )));
        }
        Ok(())
    }

    /// The current state (`enum ibv_qp_state`: 0 RESET, 1 INIT, 2 RTR, 3 RTS, 6 ERR), queried.
    pub fn state(&self) -> Result<i32> {
        let mut attr = ffi::ibv_qp_attr::default();
        // SAFETY: ibv_qp_init_attr is plain data; zero is a valid value.
        let mut init: ffi::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        // SAFETY: valid QP and out-structs.
        let rc = unsafe {
            (self.pd.ctx.v.query_qp)(self.ptr.as_ptr(), &mut attr, ffi::QP_STATE, &mut init)
        };
        if rc != 0 {
            return Err(Error::os("ibv_query_qp", rc, ""));
        }
        Ok(attr.qp_state)
    }

    /// `ibv_modify_qp` with a raw attribute struct and mask.
    pub fn modify(&self, attr: &mut ffi::ibv_qp_attr, mask: c_int) -> Result<()> {
        // SAFETY: valid QP; the attribute struct is fully initialised.
        let rc = unsafe { (self.pd.ctx.v.modify_qp)(self.ptr.as_ptr(), attr, mask) };
        if rc != 0 {
            return Err(Error::os(
                format!("ibv_modify_qp(to state {})", attr.qp_state),
                rc,
                "check the transition order RESET→INIT→RTR→RTS and the peer's endpoint",
            ));
        }
        Ok(())
    }

    /// RESET→INIT with `access` rights for remote peers (RC/UC) or the Q_Key (UD).
    pub fn to_init(&self, p: &PathParams, access: Access) -> Result<()> {
        let mut a = ffi::ibv_qp_attr {
            qp_state: ffi::QPS_INIT,
            pkey_index: 0,
            port_num: p.port,
            ..Default::default()
        };
        let mut mask = ffi::QP_STATE | ffi::QP_PKEY_INDEX | ffi::QP_PORT;
        if self.qp_type == QpType::Ud {
            a.qkey = p.qkey;
            mask |= ffi::QP_QKEY;
        } else {
            a.qp_access_flags = access.0 as u32;
            mask |= ffi::QP_ACCESS_FLAGS;
        }
        self.modify(&mut a, mask)
    }

    /// INIT→RTR towards `remote` (ignored for UD, which only needs the state).
    pub fn to_rtr(&self, p: &PathParams, remote: &Endpoint) -> Result<()> {
        let mut a = ffi::ibv_qp_attr {
            qp_state: ffi::QPS_RTR,
            ..Default::default()
        };
        let mut mask = ffi::QP_STATE;
        if self.qp_type != QpType::Ud {
            a.path_mtu = p.mtu;
            a.dest_qp_num = remote.qpn;
            a.rq_psn = remote.psn & 0xff_ffff;
            a.ah_attr = ffi::ibv_ah_attr {
                grh: ffi::ibv_global_route {
                    dgid: ffi::ibv_gid { raw: remote.gid.0 },
                    sgid_index: p.sgid_index,
                    hop_limit: 1,
                    ..Default::default()
                },
                dlid: remote.lid,
                sl: p.sl,
                is_global: u8::from(!remote.gid.is_zero()),
                port_num: p.port,
                ..Default::default()
            };
            mask |= ffi::QP_AV | ffi::QP_PATH_MTU | ffi::QP_DEST_QPN | ffi::QP_RQ_PSN;
            if self.qp_type == QpType::Rc {
                a.max_dest_rd_atomic = p.max_rd_atomic;
                a.min_rnr_timer = p.min_rnr_timer;
                mask |= ffi::QP_MAX_DEST_RD_ATOMIC | ffi::QP_MIN_RNR_TIMER;
            }
        }
        self.modify(&mut a, mask)
    }

    /// RTR→RTS with our send PSN.
    pub fn to_rts(&self, p: &PathParams, psn: u32) -> Result<()> {
        let mut a = ffi::ibv_qp_attr {
            qp_state: ffi::QPS_RTS,
            sq_psn: psn & 0xff_ffff,
            ..Default::default()
        };
        let mut mask = ffi::QP_STATE | ffi::QP_SQ_PSN;
        if self.qp_type == QpType::Rc {
            a.timeout = p.timeout;
            a.retry_cnt = p.retry_cnt;
            a.rnr_retry = p.rnr_retry;
            a.max_rd_atomic = p.max_rd_atomic;
            mask |=
                ffi::QP_TIMEOUT | ffi::QP_RETRY_CNT | ffi::QP_RNR_RETRY | ffi::QP_MAX_QP_RD_ATOMIC;
        }
        self.modify(&mut a, mask)
    }

    /// INIT→RTR→RTS towards `remote` in one call (after [`to_init`](Self::to_init)).
    pub fn connect(&self, p: &PathParams, remote: &Endpoint, local_psn: u32) -> Result<()> {
        self.to_rtr(p, remote)?;
        self.to_rts(p, local_psn)
    }

    /// Move to the error state: outstanding work requests complete with WR_FLUSH_ERR.
    pub fn to_error(&self) -> Result<()> {
        let mut a = ffi::ibv_qp_attr {
            qp_state: ffi::QPS_ERR,
            ..Default::default()
        };
        self.modify(&mut a, ffi::QP_STATE)
    }

    /// Back to RESET (from any state), ready for `to_init` again.
    pub fn to_reset(&self) -> Result<()> {
        let mut a = ffi::ibv_qp_attr {
            qp_state: ffi::QPS_RESET,
            ..Default::default()
        };
        self.modify(&mut a, ffi::QP_STATE)
    }

    /// Post one send work request. Does not allocate.
    ///
    /// With [`SendFlags::INLINE`] the provider copies the SGEs' bytes into the work request
    /// during this call (verbs does not check the lkey then): they come from memory regions
    /// the elements borrow, at most [`max_inline_data`](Self::max_inline_data) bytes in all,
    /// and only for SEND and RDMA WRITE (verbs defines inline for nothing else).
    pub fn post_send(
        &self,
        wr_id: u64,
        op: SendOp<'_>,
        sg: &[Sge<'_>],
        flags: SendFlags,
    ) -> Result<()> {
        if flags.0 & SendFlags::INLINE.0 != 0 {
            self.check_inline(&op, sg)?;
        }
        let mut wr = ffi::ibv_send_wr {
            wr_id,
            next: ptr::null_mut(),
            sg_list: sg.as_ptr() as *mut ffi::ibv_sge,
            num_sge: c_int::try_from(sg.len()).map_err(|_| Error::invalid("too many SGEs"))?,
            opcode: 0,
            send_flags: flags.0,
            imm_data: 0,
            wr: ffi::send_wr_wr::default(),
            qp_type: [0; 2],
            _bind_mw: [0; 6],
        };
        match op {
            SendOp::Send => wr.opcode = ffi::WR_SEND,
            SendOp::SendImm(imm) => {
                wr.opcode = ffi::WR_SEND_WITH_IMM;
                wr.imm_data = imm.to_be();
            }
            SendOp::Write { remote_addr, rkey } | SendOp::Read { remote_addr, rkey } => {
                wr.opcode = if matches!(op, SendOp::Read { .. }) {
                    ffi::WR_RDMA_READ
                } else {
                    ffi::WR_RDMA_WRITE
                };
                wr.wr.w0 = remote_addr;
                wr.wr.w1 = u64::from(rkey);
            }
            SendOp::WriteImm {
                remote_addr,
                rkey,
                imm,
            } => {
                wr.opcode = ffi::WR_RDMA_WRITE_WITH_IMM;
                wr.imm_data = imm.to_be();
                wr.wr.w0 = remote_addr;
                wr.wr.w1 = u64::from(rkey);
            }
            SendOp::CompareSwap {
                remote_addr,
                rkey,
                compare,
                swap,
            } => {
                wr.opcode = ffi::WR_ATOMIC_CMP_AND_SWP;
                wr.wr = ffi::send_wr_wr {
                    w0: remote_addr,
                    w1: compare,
                    w2: swap,
                    w3: u64::from(rkey),
                };
            }
            SendOp::FetchAdd {
                remote_addr,
                rkey,
                add,
            } => {
                wr.opcode = ffi::WR_ATOMIC_FETCH_AND_ADD;
                wr.wr = ffi::send_wr_wr {
                    w0: remote_addr,
                    w1: add,
                    w2: 0,
                    w3: u64::from(rkey),
                };
            }
            SendOp::UdSend {
                ah,
                remote_qpn,
                remote_qkey,
                imm,
            } => {
                if self.qp_type != QpType::Ud {
                    return Err(Error::invalid("UdSend needs a UD queue pair"));
                }
                wr.opcode = if imm.is_some() {
                    ffi::WR_SEND_WITH_IMM
                } else {
                    ffi::WR_SEND
                };
                wr.imm_data = imm.unwrap_or(0).to_be();
                wr.wr.w0 = ah.ptr.as_ptr() as u64;
                wr.wr.w1 = u64::from(remote_qpn) | (u64::from(remote_qkey) << 32);
            }
        }
        let mut bad: *mut ffi::ibv_send_wr = ptr::null_mut();
        // SAFETY: the provider's post_send for this QP; `wr` and the SGE array it points to
        // live until the call returns (the provider copies them into its queue).
        let rc = unsafe { (self.post_send)(self.ptr.as_ptr(), &mut wr, &mut bad) };
        if rc != 0 {
            return Err(Error::os(
                "post_send",
                rc,
                "send queue full (poll the CQ) or QP not in RTS",
            ));
        }
        Ok(())
    }

    /// Post one receive work request.
    pub fn post_recv(&self, wr_id: u64, sg: &[Sge<'_>]) -> Result<()> {
        let mut wr = ffi::ibv_recv_wr {
            wr_id,
            next: ptr::null_mut(),
            sg_list: sg.as_ptr() as *mut ffi::ibv_sge,
            num_sge: c_int::try_from(sg.len()).map_err(|_| Error::invalid("too many SGEs"))?,
        };
        let mut bad: *mut ffi::ibv_recv_wr = ptr::null_mut();
        // SAFETY: the provider's post_recv for this QP; `wr` and its SGEs outlive the call.
        let rc = unsafe { (self.post_recv)(self.ptr.as_ptr(), &mut wr, &mut bad) };
        if rc != 0 {
            return Err(Error::os(
                "post_recv",
                rc,
                "receive queue full or QP in RESET",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod sge_tests {
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
