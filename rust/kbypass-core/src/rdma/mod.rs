//! RDMA: the verbs object model (Context → PD → MR, CQ → QP, AH) over libibverbs.
//!
//! libibverbs is loaded at run time ([`ffi::verbs`]), so kbypass builds and runs on machines
//! without rdma-core; there [`devices`] returns an error that says what to install. The
//! data path (post_send, post_recv, poll_cq, req_notify_cq) calls the provider's `ops` table
//! directly, as verbs.h's inline functions do.
//!
//! ```no_run
//! use kbypass_core::rdma::{devices, Context};
//! for d in devices()? {
//!     let ctx = Context::open(Some(&d.name))?;
//!     println!("{} port 1: {:?}", d.name, ctx.query_port(1)?);
//! }
//! # Ok::<(), kbypass_core::Error>(())
//! ```

pub mod cm;
pub mod ffi;
pub mod oob;
pub mod perf;
pub mod perftest;
mod verbs;

pub use verbs::{
    devices, mtu_bytes, Access, AddressHandle, CompletionChannel, CompletionQueue, Context,
    DeviceAttr, DeviceInfo, Endpoint, Gid, MemoryRegion, PathParams, PortAttr, ProtectionDomain,
    QpCaps, QpType, QueuePair, SendFlags, SendOp, Sge, SharedReceiveQueue, WorkCompletion,
};

#[cfg(test)]
mod tests;
