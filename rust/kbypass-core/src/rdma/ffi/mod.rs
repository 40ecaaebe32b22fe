//! The C boundary of the RDMA area: the slices of libibverbs' and librdmacm's ABI that kbypass
//! uses, resolved at run time (libloading) so that nothing here needs rdma-core to build.
//!
//! `libibverbs` is `<infiniband/verbs.h>` (LP64 Linux): struct layouts, enum values and the
//! exported functions in [`Verbs`] (loaded by [`verbs()`]); `librdmacm` is `<rdma/rdma_cma.h>`
//! for the connection manager ([`RdmaCm`], loaded by [`rdmacm()`]). The layouts are checked field by field in `tests` against the
//! offsets the C compiler gives for rdma-core 44's headers; rdma-core keeps these structs
//! ABI-stable (new fields go into `_ex` structs and the `verbs_context` that precedes
//! `ibv_context`).
//!
//! The data path (`post_send`, `post_recv`, `poll_cq`, `req_notify_cq`) is not exported: the
//! header's inline functions call through `ibv_context.ops`, and so do
//! [`QueuePair`](super::QueuePair), [`CompletionQueue`](super::CompletionQueue) and
//! [`SharedReceiveQueue`](super::SharedReceiveQueue).

#![allow(non_camel_case_types)]

mod async_event;
mod libibverbs;
mod librdmacm;

pub use async_event::*;
pub use libibverbs::*;
pub use librdmacm::*;

#[cfg(test)]
mod tests;
