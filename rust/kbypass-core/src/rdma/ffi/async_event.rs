//! libibverbs' asynchronous events (`struct ibv_async_event`, `enum ibv_event_type`): what a
//! device reports outside the completion queues (an SRQ below its limit, a QP's fatal error, a
//! port going up or down), read with `ibv_get_async_event` from the context's `async_fd`.

use std::ffi::c_int;

use super::{ibv_cq, ibv_qp, ibv_srq};

/// The object an event is about (`ibv_async_event.element`); which member is valid depends on
/// the event type.
#[repr(C)]
#[derive(Clone, Copy)]
pub union ibv_async_event_element {
    pub cq: *mut ibv_cq,
    pub qp: *mut ibv_qp,
    pub srq: *mut ibv_srq,
    /// `struct ibv_wq *` (work queues are not used by kbypass).
    pub wq: *mut std::ffi::c_void,
    pub port_num: c_int,
}

/// `struct ibv_async_event`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ibv_async_event {
    pub element: ibv_async_event_element,
    /// `enum ibv_event_type`.
    pub event_type: c_int,
}

impl Default for ibv_async_event {
    fn default() -> Self {
        ibv_async_event {
            element: ibv_async_event_element {
                srq: std::ptr::null_mut(),
            },
            event_type: -1,
        }
    }
}

/// `IBV_EVENT_SRQ_ERR`.
pub const EVENT_SRQ_ERR: c_int = 14;
/// `IBV_EVENT_SRQ_LIMIT_REACHED`.
pub const EVENT_SRQ_LIMIT_REACHED: c_int = 15;

/// `enum ibv_event_type` by value, as rdma-core names it without `IBV_EVENT_`.
pub const EVENT_NAMES: [&str; 20] = [
    "CQ_ERR",
    "QP_FATAL",
    "QP_REQ_ERR",
    "QP_ACCESS_ERR",
    "COMM_EST",
    "SQ_DRAINED",
    "PATH_MIG",
    "PATH_MIG_ERR",
    "DEVICE_FATAL",
    "PORT_ACTIVE",
    "PORT_ERR",
    "LID_CHANGE",
    "PKEY_CHANGE",
    "SM_CHANGE",
    "SRQ_ERR",
    "SRQ_LIMIT_REACHED",
    "QP_LAST_WQE_REACHED",
    "CLIENT_REREGISTER",
    "GID_CHANGE",
    "WQ_FATAL",
];

/// The name of an event type; `UNKNOWN` for a value newer than this list.
pub fn event_name(event_type: c_int) -> &'static str {
    usize::try_from(event_type)
        .ok()
        .and_then(|i| EVENT_NAMES.get(i).copied())
        .unwrap_or("UNKNOWN")
}

/// `enum ibv_srq_attr_mask`: `IBV_SRQ_LIMIT`, for `ibv_modify_srq`.
pub const SRQ_LIMIT: c_int = 1 << 1;
