//! RDMA: the verbs object model (Context → PD → MR, CQ → QP, SRQ, AH) over libibverbs, or
//! over kbypass's user-space RoCEv2 engine ([`roce::engine`]) on hosts without kernel RDMA.
//!
//! Two backends behind one API: [`Context::open`] opens a libibverbs device,
//! [`Context::userspace`] the engine on an interface queue; each object (context, PD, MR, CQ,
//! channel, QP, SRQ, AH) holds its backend's half, the engine's through `user` (the only
//! caller of the engine's API). What only libibverbs has (raw `ibv_modify_qp`, the connection
//! manager) answers [`Error::Unsupported`](crate::Error::Unsupported) (EOPNOTSUPP) on a
//! user-space object, naming what is supported. A libibverbs context's asynchronous events
//! (`events`) are read when asked: an SRQ's limit event reaches its
//! [`limit_reached`](SharedReceiveQueue::limit_reached) as the engine's does, and every event
//! is counted ([`Context::async_events`]).
//!
//! libibverbs is loaded at run time ([`ffi::verbs`]), so kbypass builds and runs on machines
//! without rdma-core; there [`devices`] returns an error that says what to install. The
//! data path (post_send, post_recv, poll_cq, req_notify_cq) calls the provider's `ops` table
//! directly, as verbs.h's inline functions do.
//!
//! One file per verbs object, as in pyverbs: [`device`](DeviceInfo) (the device list and the
//! attribute records), `context`, `pd`, `mr` (with the [`Sge`] only a region hands out), `cq`
//! (with the completion channel), `qp`, `srq`, `ah`, and `wr` (the work requests and the one
//! receive path QPs and SRQs share). Every object owns its libibverbs object and releases it in
//! `Drop`; children hold their parents (`Arc`), so a parent is released only after its last
//! child, whatever order the caller drops them in. This module is the crate's second FFI
//! boundary (after `sys`): `ffi` declares libibverbs' and librdmacm's ABI and loads them, and
//! every `unsafe` block in the object files and `cm` calls them or the provider's `ops` table.
//!
//! ```no_run
//! use kbypass_core::rdma::{devices, Context};
//! for d in devices()? {
//!     let ctx = Context::open(Some(&d.name))?;
//!     println!("{} port 1: {:?}", d.name, ctx.query_port(1)?);
//! }
//! # Ok::<(), kbypass_core::Error>(())
//! ```

mod ah;
pub mod cancel;
pub mod cm;
mod context;
mod cq;
mod device;
mod events;
pub mod ffi;
mod mr;
pub mod oob;
mod pd;
pub mod perf;
pub mod perftest;
mod qp;
pub mod roce;
mod srq;
mod user;
mod wr;

pub use ah::AddressHandle;
pub use cancel::Cancel;
pub use context::Context;
pub use cq::{CompletionChannel, CompletionQueue, WorkCompletion};
pub use device::{devices, mtu_bytes, DeviceAttr, DeviceInfo, Gid, PortAttr};
pub use mr::{Access, MemoryRegion, Sge};
pub use pd::ProtectionDomain;
pub use qp::{Endpoint, PathParams, QpCaps, QpType, QueuePair};
pub use srq::SharedReceiveQueue;
pub use user::{EngineCounters, EngineOptions, Progress, USER_PREFIX};
pub use wr::{SendFlags, SendOp};

/// Bytes of the GRH in front of every UD receive (verbs places the packet's IPv6 header there,
/// or its IPv4 header in the last 20 bytes).
pub const UD_GRH_LEN: usize = 40;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod user_tests;
