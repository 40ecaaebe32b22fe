//! The context (`ibv_context`): an open device, the root every other verbs object hangs from.
//! Two backends: a libibverbs device ([`Context::open`]), or the user-space RoCEv2 engine on
//! an interface queue ([`Context::userspace`], the [`user`](super::user) half of each
//! object).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use super::cancel::Cancel;
use super::cq::{CompletionChannel, CompletionQueue};
use super::device::{c_string, devices, with_device_list, DeviceAttr, Gid, PortAttr};
use super::events::AsyncEvents;
use super::ffi::{self, verbs, Verbs, VerbsPtr};
use super::pd::ProtectionDomain;
use super::user::{self, EngineCounters, EngineOptions, UserContext};
use crate::error::{errno, Error, Result};

/// The open device; every child object holds an `Arc` of it, so it is closed after the last.
pub(super) struct ContextInner {
    pub(super) ptr: VerbsPtr<ffi::ibv_context>,
    pub(super) v: &'static Verbs,
    pub(super) name: String,
    /// The asynchronous events read from the context (`events`).
    pub(super) events: AsyncEvents,
}

impl Drop for ContextInner {
    fn drop(&mut self) {
        // SAFETY: the context was opened by ibv_open_device and every child (which holds an Arc
        // to this) is gone.
        unsafe { (self.v.close_device)(self.ptr.as_ptr()) };
    }
}

impl ContextInner {
    /// The provider's dispatch table, whose data-path entries (`poll_cq`, `post_send`, …)
    /// the CQ, QP and SRQ copy out when they are created.
    pub(super) fn ops(&self) -> &ffi::ibv_context_ops {
        // SAFETY: the context is open while `self` lives, and its ops table is part of it.
        unsafe { &(*self.ptr.as_ptr()).ops }
    }

    /// The error for a provider whose `ops` table lacks a data-path entry.
    pub(super) fn no_data_path(&self, what: &str, fix: &str) -> Error {
        Error::Unsupported {
            what: format!("{}: the provider has no {what}", self.name),
            fix: fix.into(),
        }
    }
}

/// An open RDMA device (`ibv_context`), or a user-space RoCEv2 engine.
#[derive(Clone)]
pub struct Context {
    pub(super) inner: Ctx,
}

/// A context's backend.
#[derive(Clone)]
pub(super) enum Ctx {
    /// A libibverbs device.
    Verbs(Arc<ContextInner>),
    /// The user-space engine.
    User(Arc<UserContext>),
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Context({})", self.name())
    }
}

impl Context {
    /// Open the device called `name`, or the first libibverbs device when `name` is `None`.
    /// A name of an open user-space context (`kbx-eth0`, see [`devices`]) gives another
    /// handle to it.
    pub fn open(name: Option<&str>) -> Result<Self> {
        if let Some(u) = name.and_then(user::find) {
            return Ok(Context {
                inner: Ctx::User(u),
            });
        }
        let v = verbs()?;
        let opened = with_device_list(v, |dev, info| {
            if name.is_some_and(|n| n != info.name) {
                return None;
            }
            // SAFETY: `dev` is a live entry of the device list.
            let ctx = unsafe { (v.open_device)(dev) };
            Some((info.name, VerbsPtr::new(ctx).ok_or_else(errno)))
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
            inner: Ctx::Verbs(Arc::new(ContextInner {
                ptr,
                v,
                name: dev_name,
                events: AsyncEvents::default(),
            })),
        })
    }

    /// Open the user-space RoCEv2 engine on `queue` of `interface` for `ip` (an address of
    /// the interface), inside network namespace `netns` (an `ip netns` name or a path) when
    /// given, with the default [`EngineOptions`]; named `kbx-<interface>`. Retries for up to
    /// two seconds while the queue is busy (an engine closing on it).
    pub fn userspace(interface: &str, queue: u32, ip: IpAddr, netns: Option<&str>) -> Result<Self> {
        let never = Cancel::never();
        Self::userspace_with(
            interface,
            queue,
            ip,
            netns,
            &EngineOptions::default(),
            &never,
        )
    }

    /// [`userspace`](Self::userspace) with `options` (progress thread or caller, frames, ring
    /// sizes, bind and attach modes, neighbour timeout); the retry while the queue is busy
    /// ends with [`Error::Interrupted`] as soon as `cancel` says stop (nothing stays open).
    pub fn userspace_with(
        interface: &str,
        queue: u32,
        ip: IpAddr,
        netns: Option<&str>,
        options: &EngineOptions,
        cancel: &Cancel<'_>,
    ) -> Result<Self> {
        let u = UserContext::open(interface, queue, ip, netns, options, cancel)?;
        Ok(Context {
            inner: Ctx::User(u),
        })
    }

    /// True for a user-space engine context.
    pub fn is_userspace(&self) -> bool {
        matches!(self.inner, Ctx::User(_))
    }

    /// The device's name (`kbx-<interface>` for a user-space context).
    pub fn name(&self) -> &str {
        match &self.inner {
            Ctx::Verbs(c) => &c.name,
            Ctx::User(u) => u.name(),
        }
    }

    /// The interface a user-space context runs on (`None` for a libibverbs device).
    pub fn interface(&self) -> Option<&str> {
        match &self.inner {
            Ctx::Verbs(_) => None,
            Ctx::User(u) => Some(u.interface()),
        }
    }

    /// What a user-space engine did and dropped, by reason.
    pub fn engine_counters(&self) -> Result<EngineCounters> {
        match &self.inner {
            Ctx::Verbs(_) => Err(Error::Unsupported {
                what: format!("engine counters of {}", self.name()),
                fix: "a libibverbs device has its own counters (`rdma statistic show`)".into(),
            }),
            Ctx::User(u) => Ok(u.counters()),
        }
    }

    /// The asynchronous events a libibverbs device reported (`ibv_get_async_event`), by type
    /// as rdma-core names it without `IBV_EVENT_` (`SRQ_LIMIT_REACHED`, `QP_FATAL`,
    /// `QP_LAST_WQE_REACHED`, `PORT_ERR`, ...), counted since the context was opened; pending
    /// events are read (and acknowledged) first. Empty for a user-space engine, which raises
    /// none: its SRQs report their limit through
    /// [`limit_reached`](super::SharedReceiveQueue::limit_reached) and its errors arrive as
    /// work completions.
    pub fn async_events(&self) -> Result<Vec<(String, u64)>> {
        match &self.inner {
            Ctx::Verbs(c) => Ok(c
                .async_event_counts()?
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()),
            Ctx::User(_) => Ok(Vec::new()),
        }
    }

    /// Notes from opening a user-space engine (attach-mode and copy-mode fallbacks); empty
    /// for a libibverbs device.
    pub fn notes(&self) -> Vec<String> {
        match &self.inner {
            Ctx::Verbs(_) => Vec::new(),
            Ctx::User(u) => u.notes(),
        }
    }

    /// Device attributes (`ibv_query_device`).
    pub fn query_device(&self) -> Result<DeviceAttr> {
        let c = match &self.inner {
            Ctx::Verbs(c) => c,
            Ctx::User(u) => return Ok(u.query_device()),
        };
        // SAFETY: ibv_device_attr is plain data; all-zero is a valid value.
        let mut a: ffi::ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: valid context and a properly sized out-struct.
        let rc = unsafe { (c.v.query_device)(c.ptr.as_ptr(), &mut a) };
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
        let c = match &self.inner {
            Ctx::Verbs(c) => c,
            Ctx::User(u) => return u.query_port(port),
        };
        let mut a = ffi::ibv_port_attr::default();
        // SAFETY: valid context; the exported function fills a prefix of the zeroed struct.
        let rc = unsafe { (c.v.query_port)(c.ptr.as_ptr(), port, &mut a) };
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
        let c = match &self.inner {
            Ctx::Verbs(c) => c,
            Ctx::User(u) => return u.query_gid(port, index),
        };
        let mut g = ffi::ibv_gid::default();
        // SAFETY: valid context and out-pointer.
        let rc = unsafe { (c.v.query_gid)(c.ptr.as_ptr(), port, index, &mut g) };
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
        if let Ctx::User(u) = &self.inner {
            return u.query_gid(port, index).ok().map(|_| "RoCE v2".to_string());
        }
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
        ProtectionDomain::alloc(self)
    }

    /// Create a completion channel (a file descriptor that becomes readable on CQ events).
    pub fn create_comp_channel(&self) -> Result<CompletionChannel> {
        CompletionChannel::create(self)
    }

    /// Create a completion queue of at least `cqe` entries, optionally tied to `channel`.
    pub fn create_cq(
        &self,
        cqe: i32,
        channel: Option<&CompletionChannel>,
    ) -> Result<CompletionQueue> {
        CompletionQueue::create(self, cqe, channel)
    }
}
