//! The user-space backend of the verbs objects: each object's half that runs on the RoCEv2
//! engine ([`roce::engine`](super::roce::engine)) instead of libibverbs. This file is the only
//! caller of the engine's API; the object files ([`Context`](super::Context) and its
//! children) hold these halves and call them.
//!
//! A user-space context is named `kbx-<interface>` and listed by [`devices`](super::devices)
//! while it is open (a registry of weak references, so listing never keeps one alive). It has
//! one port (1) with one GID (index 0: the engine's address, IPv4-mapped or IPv6, RoCE v2).

use std::any::Any;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::cancel::Cancel;
use super::device::{DeviceAttr, DeviceInfo, Gid, PortAttr};
use super::mr::{Access, Sge};
use super::qp::{Endpoint, PathParams, QpCaps, QpType};
use super::roce::engine as e;
use super::wr::{SendFlags, SendOp};
use super::WorkCompletion;
use crate::error::{Error, Result};
use crate::sys::netns::NetnsGuard;

pub use e::{EngineCounters, EngineOptions, Progress};

/// Prefix of a user-space context's name (`kbx-eth0`).
pub const USER_PREFIX: &str = "kbx-";

/// How long opening retries while the queue is still busy (a previous engine on it is
/// closing: its socket and XDP program go when its last object does).
const BUSY_RETRY: Duration = Duration::from_secs(2);
/// How long it sleeps between two attempts.
const BUSY_STEP: Duration = Duration::from_millis(50);

/// The most SGEs one work request carries on the engine (as rxe's `max_sge`).
pub(super) const MAX_SGE: usize = 32;

/// What the verbs-only calls say on a user-space object.
pub(super) fn unsupported(what: &str) -> Error {
    Error::Unsupported {
        what: format!("{what} on a user-space RoCE context (kbx-…)"),
        fix: "the user-space engine supports contexts, PDs, MRs, CQs with completion channels, \
              RC/UC/UD QPs (init, connect, post_send, post_recv, to_error, to_reset), shared \
              receive queues, AHs, the tools' exchanges (pingpong, perftest); use a libibverbs \
              device (e.g. rxe0) for this"
            .into(),
    }
}

/// An open engine as a context.
pub(super) struct UserContext {
    engine: Arc<e::Engine>,
    name: String,
}

impl std::fmt::Debug for UserContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)
    }
}

/// The open user-space contexts, for [`list`] and [`find`].
static OPEN: Mutex<Vec<Weak<UserContext>>> = Mutex::new(Vec::new());

fn registry() -> std::sync::MutexGuard<'static, Vec<Weak<UserContext>>> {
    OPEN.lock().unwrap_or_else(|e| e.into_inner())
}

/// The open user-space contexts' device records.
pub(super) fn list() -> Vec<DeviceInfo> {
    let mut open = registry();
    open.retain(|w| w.strong_count() > 0);
    open.iter()
        .filter_map(Weak::upgrade)
        .map(|c| c.info())
        .collect()
}

/// The open user-space context called `name`, if any.
pub(super) fn find(name: &str) -> Option<Arc<UserContext>> {
    registry()
        .iter()
        .filter_map(Weak::upgrade)
        .find(|c| c.name == name)
}

impl UserContext {
    /// Open the engine on `queue` of `interface` (inside network namespace `netns` when
    /// given) for address `ip`, retrying for up to two seconds while the queue is busy, or
    /// until `cancel` says stop (a failed attempt left nothing open, so neither does that).
    pub(super) fn open(
        interface: &str,
        queue: u32,
        ip: IpAddr,
        netns: Option<&str>,
        opts: &EngineOptions,
        cancel: &Cancel<'_>,
    ) -> Result<Arc<Self>> {
        let _inside = netns.map(NetnsGuard::enter).transpose()?;
        let deadline = Instant::now() + BUSY_RETRY;
        let what = format!("opening {interface} queue {queue} (busy: waiting for it)");
        let engine = loop {
            match e::Engine::open(interface, queue, ip, opts) {
                Ok(engine) => break engine,
                Err(err) if err.errno() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(BUSY_STEP);
                    cancel.check(&what)?;
                }
                Err(err) => return Err(err),
            }
        };
        let ctx = Arc::new(UserContext {
            engine,
            name: format!("{USER_PREFIX}{interface}"),
        });
        registry().push(Arc::downgrade(&ctx));
        Ok(ctx)
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn interface(&self) -> &str {
        self.engine.ifname()
    }

    pub(super) fn info(&self) -> DeviceInfo {
        DeviceInfo {
            name: self.name.clone(),
            uverbs: String::new(),
            node_type: 1,
            transport_type: 0,
            ibdev_path: String::new(),
            userspace: true,
            interface: Some(self.engine.ifname().to_string()),
        }
    }

    pub(super) fn counters(&self) -> EngineCounters {
        self.engine.counters()
    }

    pub(super) fn notes(&self) -> Vec<String> {
        self.engine.notes().to_vec()
    }

    /// The engine's limits, in the device record's terms (as rxe reports its own).
    pub(super) fn query_device(&self) -> DeviceAttr {
        let m = self.engine.mac();
        // EUI-64 from the MAC, as rxe derives its node GUID.
        let guid = [m[0] ^ 2, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]];
        DeviceAttr {
            fw_ver: format!("kbypass {}", env!("CARGO_PKG_VERSION")),
            node_guid: u64::from_ne_bytes(guid),
            max_qp: 1 << 16,
            max_qp_wr: 1 << 14,
            max_sge: MAX_SGE as i32,
            max_cqe: 1 << 20,
            max_mr: 1 << 20,
            max_qp_init_rd_atom: 128,
            max_qp_rd_atom: 128,
            atomic_cap: 1,
            phys_port_cnt: 1,
        }
    }

    fn check_port(&self, port: u8) -> Result<()> {
        if port != 1 {
            return Err(Error::invalid(format!(
                "{} has one port, 1 (not {port})",
                self.name
            )));
        }
        Ok(())
    }

    pub(super) fn query_port(&self, port: u8) -> Result<PortAttr> {
        self.check_port(port)?;
        let mtu = match self.engine.max_mtu() {
            4096 => 5,
            2048 => 4,
            1024 => 3,
            512 => 2,
            _ => 1,
        };
        Ok(PortAttr {
            state: 4,
            max_mtu: mtu,
            active_mtu: mtu,
            gid_tbl_len: 1,
            lid: 0,
            link_layer: 2,
        })
    }

    pub(super) fn query_gid(&self, port: u8, index: i32) -> Result<Gid> {
        self.check_port(port)?;
        if index != 0 {
            return Err(Error::invalid(format!(
                "{} has one GID, index 0 (its address {}), not {index}",
                self.name,
                self.engine.ip()
            )));
        }
        Ok(self.engine.gid())
    }

    pub(super) fn alloc_pd(&self) -> Result<UserPd> {
        self.engine.alloc_pd().map(UserPd)
    }

    pub(super) fn create_comp_channel(&self) -> Result<UserChannel> {
        self.engine.create_comp_channel().map(UserChannel)
    }

    pub(super) fn create_cq(&self, cqe: i32, channel: Option<&UserChannel>) -> Result<UserCq> {
        let cqe = u32::try_from(cqe)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| Error::invalid(format!("a CQ needs at least 1 entry, got {cqe}")))?;
        self.engine
            .create_cq(cqe, channel.map(|c| &c.0))
            .map(UserCq)
    }
}

/// A protection domain on the engine.
#[derive(Clone)]
pub(super) struct UserPd(e::ProtectionDomain);

impl UserPd {
    /// # Safety
    /// `addr..addr+len` must be valid for reads and writes, and stay mapped and in place,
    /// while `owner` lives.
    pub(super) unsafe fn register_raw(
        &self,
        addr: *mut u8,
        len: usize,
        access: Access,
        owner: Box<dyn Any + Send + Sync>,
    ) -> Result<UserMr> {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.0.register_raw(addr, len, access, owner) }.map(UserMr)
    }

    pub(super) fn register_region(
        &self,
        region: Arc<crate::mem::HugeRegion>,
        access: Access,
    ) -> Result<UserMr> {
        self.0.register_region(region, access).map(UserMr)
    }

    pub(super) fn register_mempool(
        &self,
        pool: Arc<crate::mem::Mempool>,
        access: Access,
    ) -> Result<UserMr> {
        self.0.register_mempool(pool, access).map(UserMr)
    }

    pub(super) fn create_ah(&self, dest: &Endpoint, cancel: &Cancel<'_>) -> Result<UserAh> {
        self.0.create_ah(dest, cancel).map(UserAh)
    }

    pub(super) fn create_srq(&self, max_wr: u32, max_sge: u32) -> Result<UserSrq> {
        self.0.create_srq(max_wr, max_sge).map(UserSrq)
    }

    /// A QP completing on `send_cq` and `recv_cq`, taking its receives from `srq` when given.
    pub(super) fn create_qp(
        &self,
        qp_type: QpType,
        send_cq: &UserCq,
        recv_cq: &UserCq,
        caps: QpCaps,
        srq: Option<&UserSrq>,
    ) -> Result<UserQp> {
        match srq {
            None => self
                .0
                .create_qp(qp_type, &send_cq.0, &recv_cq.0, caps, false),
            Some(s) => self
                .0
                .create_qp_with_srq(qp_type, &send_cq.0, &recv_cq.0, caps, false, &s.0),
        }
        .map(UserQp)
    }
}

/// A shared receive queue on the engine.
pub(super) struct UserSrq(Arc<e::SharedReceiveQueue>);

impl UserSrq {
    pub(super) fn post_recv(&self, wr_id: u64, sg: &[Sge<'_>]) -> Result<()> {
        let (s, n) = sges(sg)?;
        self.0.post_recv(wr_id, &s[..n])
    }
    pub(super) fn set_limit(&self, limit: u32) {
        self.0.set_limit(limit)
    }
    pub(super) fn take_limit_event(&self) -> bool {
        self.0.take_limit_event()
    }
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

/// A memory region on the engine.
pub(super) struct UserMr(e::MemoryRegion);

impl UserMr {
    pub(super) fn addr(&self) -> u64 {
        self.0.addr()
    }
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
    pub(super) fn lkey(&self) -> u32 {
        self.0.lkey()
    }
    pub(super) fn rkey(&self) -> u32 {
        self.0.rkey()
    }
    pub(super) fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.0.read(offset, out)
    }
    pub(super) fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.0.write(offset, data)
    }
    pub(super) fn allow_remote_invalidate(&self) {
        self.0.allow_remote_invalidate()
    }
    pub(super) fn is_valid(&self) -> bool {
        self.0.is_valid()
    }
}

/// A completion channel on the engine (an eventfd).
#[derive(Clone)]
pub(super) struct UserChannel(e::CompletionChannel);

impl UserChannel {
    pub(super) fn fd(&self) -> i32 {
        self.0.fd()
    }
}

/// A completion queue on the engine.
#[derive(Clone)]
pub(super) struct UserCq(e::CompletionQueue);

impl UserCq {
    pub(super) fn poll(&self, out: &mut [WorkCompletion]) -> Result<usize> {
        self.0.poll(out)
    }

    pub(super) fn wait_ready(&self, timeout: Duration) -> bool {
        self.0.wait_ready(timeout)
    }
    pub(super) fn req_notify(&self, solicited_only: bool) -> Result<()> {
        self.0.req_notify(solicited_only)
    }
    pub(super) fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        self.0.wait(timeout)
    }
    pub(super) fn poll_blocking(
        &self,
        out: &mut [WorkCompletion],
        timeout: Option<Duration>,
    ) -> Result<usize> {
        self.0.poll_blocking(out, timeout)
    }
}

/// An address handle on the engine.
pub(super) struct UserAh(pub(super) e::AddressHandle);

impl From<e::AddressHandle> for super::AddressHandle {
    /// The engine's address handle as a verbs one (what a UD [`SendOp`] carries).
    fn from(ah: e::AddressHandle) -> Self {
        super::AddressHandle::user(UserAh(ah))
    }
}

/// The engine's SGEs for `sg`, on the stack.
fn sges(sg: &[Sge<'_>]) -> Result<([e::Sge; MAX_SGE], usize)> {
    if sg.len() > MAX_SGE {
        return Err(Error::invalid(format!(
            "{} SGEs in one work request: the user-space engine takes at most {MAX_SGE}",
            sg.len()
        )));
    }
    let mut out = [e::Sge {
        addr: 0,
        len: 0,
        lkey: 0,
    }; MAX_SGE];
    for (o, s) in out.iter_mut().zip(sg) {
        *o = e::Sge {
            addr: s.addr(),
            len: s.length(),
            lkey: s.lkey(),
        };
    }
    Ok((out, sg.len()))
}

/// A queue pair on the engine.
pub(super) struct UserQp(e::QueuePair);

impl UserQp {
    pub(super) fn qp_num(&self) -> u32 {
        self.0.qp_num()
    }
    pub(super) fn pd(&self) -> UserPd {
        UserPd(self.0.pd().clone())
    }
    pub(super) fn state(&self) -> i32 {
        self.0.state().raw()
    }
    pub(super) fn to_init(&self, p: &PathParams, access: Access) -> Result<()> {
        self.0.to_init(p, access)
    }
    pub(super) fn to_rtr(&self, p: &PathParams, remote: &Endpoint, c: &Cancel<'_>) -> Result<()> {
        self.0.to_rtr(p, remote, c)
    }
    pub(super) fn to_rts(&self, p: &PathParams, psn: u32) -> Result<()> {
        self.0.to_rts(p, psn)
    }
    pub(super) fn to_error(&self) -> Result<()> {
        self.0.to_error()
    }
    pub(super) fn to_reset(&self) -> Result<()> {
        self.0.to_reset()
    }
    pub(super) fn post_recv(&self, wr_id: u64, sg: &[Sge<'_>]) -> Result<()> {
        let (s, n) = sges(sg)?;
        self.0.post_recv(wr_id, &s[..n])
    }

    /// Post `op` (a UD send's address handle must be the engine's).
    pub(super) fn post_send(
        &self,
        wr_id: u64,
        op: SendOp<'_>,
        sg: &[Sge<'_>],
        flags: SendFlags,
    ) -> Result<()> {
        let (s, n) = sges(sg)?;
        self.0.post_send(wr_id, op, &s[..n], flags)
    }
}
