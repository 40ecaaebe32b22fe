//! librdmacm (`<rdma/rdma_cma.h>`), loaded separately: only the connection manager needs it.

use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

use super::ibv_qp_attr;
use crate::error::{Error, Result};

/// `struct rdma_event_channel { int fd; }`.
#[repr(C)]
pub struct rdma_event_channel {
    pub fd: c_int,
}

/// `struct rdma_cm_id`: opaque here (kbypass creates its QPs itself).
#[repr(C)]
pub struct rdma_cm_id {
    _opaque: [u8; 0],
}

/// The head of `struct rdma_cm_event` (librdmacm allocates it; the `param` union after these
/// fields is not read).
#[repr(C)]
pub struct rdma_cm_event {
    pub id: *mut rdma_cm_id,
    pub listen_id: *mut rdma_cm_id,
    pub event: c_int,
    pub status: c_int,
}

/// `struct rdma_conn_param`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rdma_conn_param {
    pub private_data: *const c_void,
    pub private_data_len: u8,
    pub responder_resources: u8,
    pub initiator_depth: u8,
    pub flow_control: u8,
    pub retry_count: u8,
    pub rnr_retry_count: u8,
    pub srq: u8,
    pub qp_num: u32,
}

impl Default for rdma_conn_param {
    fn default() -> Self {
        rdma_conn_param {
            private_data: std::ptr::null(),
            private_data_len: 0,
            responder_resources: 0,
            initiator_depth: 0,
            flow_control: 0,
            retry_count: 0,
            rnr_retry_count: 0,
            srq: 0,
            qp_num: 0,
        }
    }
}

/// `RDMA_PS_TCP`: reliable connected port space.
pub const RDMA_PS_TCP: c_int = 0x0106;
/// `enum rdma_cm_event_type` names, by value.
pub const CM_EVENT_NAMES: [&str; 16] = [
    "ADDR_RESOLVED",
    "ADDR_ERROR",
    "ROUTE_RESOLVED",
    "ROUTE_ERROR",
    "CONNECT_REQUEST",
    "CONNECT_RESPONSE",
    "CONNECT_ERROR",
    "UNREACHABLE",
    "REJECTED",
    "ESTABLISHED",
    "DISCONNECTED",
    "DEVICE_REMOVAL",
    "MULTICAST_JOIN",
    "MULTICAST_ERROR",
    "ADDR_CHANGE",
    "TIMEWAIT_EXIT",
];

/// The functions kbypass calls from `librdmacm.so.1`, resolved once per process (kept loaded,
/// like [`Verbs`](super::Verbs)).
pub struct RdmaCm {
    _lib: libloading::Library,
    pub create_event_channel: unsafe extern "C" fn() -> *mut rdma_event_channel,
    pub destroy_event_channel: unsafe extern "C" fn(*mut rdma_event_channel),
    pub create_id: unsafe extern "C" fn(
        *mut rdma_event_channel,
        *mut *mut rdma_cm_id,
        *mut c_void,
        c_int,
    ) -> c_int,
    pub destroy_id: unsafe extern "C" fn(*mut rdma_cm_id) -> c_int,
    pub bind_addr: unsafe extern "C" fn(*mut rdma_cm_id, *const libc::sockaddr) -> c_int,
    pub listen: unsafe extern "C" fn(*mut rdma_cm_id, c_int) -> c_int,
    pub resolve_addr: unsafe extern "C" fn(
        *mut rdma_cm_id,
        *const libc::sockaddr,
        *const libc::sockaddr,
        c_int,
    ) -> c_int,
    pub resolve_route: unsafe extern "C" fn(*mut rdma_cm_id, c_int) -> c_int,
    pub get_cm_event:
        unsafe extern "C" fn(*mut rdma_event_channel, *mut *mut rdma_cm_event) -> c_int,
    pub ack_cm_event: unsafe extern "C" fn(*mut rdma_cm_event) -> c_int,
    pub connect: unsafe extern "C" fn(*mut rdma_cm_id, *mut rdma_conn_param) -> c_int,
    pub accept: unsafe extern "C" fn(*mut rdma_cm_id, *mut rdma_conn_param) -> c_int,
    pub establish: unsafe extern "C" fn(*mut rdma_cm_id) -> c_int,
    pub disconnect: unsafe extern "C" fn(*mut rdma_cm_id) -> c_int,
    pub init_qp_attr: unsafe extern "C" fn(*mut rdma_cm_id, *mut ibv_qp_attr, *mut c_int) -> c_int,
}

/// The message for a machine without librdmacm.
pub const NO_LIBRDMACM: &str = "no librdmacm: apt-get install librdmacm1";

impl RdmaCm {
    fn load() -> std::result::Result<Self, String> {
        // SAFETY: loading librdmacm runs its constructors, which initialise only its own state.
        let lib = unsafe { libloading::Library::new("librdmacm.so.1") }
            .map_err(|e| format!("{NO_LIBRDMACM} ({e})"))?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: an exported librdmacm function; the field's type is its prototype
                // from rdma_cma.h; the library lives in the same never-dropped static.
                *unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| format!("librdmacm.so.1 lacks {}: {e}", $name))?
            };
        }
        Ok(RdmaCm {
            create_event_channel: sym!("rdma_create_event_channel"),
            destroy_event_channel: sym!("rdma_destroy_event_channel"),
            create_id: sym!("rdma_create_id"),
            destroy_id: sym!("rdma_destroy_id"),
            bind_addr: sym!("rdma_bind_addr"),
            listen: sym!("rdma_listen"),
            resolve_addr: sym!("rdma_resolve_addr"),
            resolve_route: sym!("rdma_resolve_route"),
            get_cm_event: sym!("rdma_get_cm_event"),
            ack_cm_event: sym!("rdma_ack_cm_event"),
            connect: sym!("rdma_connect"),
            accept: sym!("rdma_accept"),
            establish: sym!("rdma_establish"),
            disconnect: sym!("rdma_disconnect"),
            init_qp_attr: sym!("rdma_init_qp_attr"),
            _lib: lib,
        })
    }
}

/// librdmacm, loaded on first use; the error says how to install it.
pub fn rdmacm() -> Result<&'static RdmaCm> {
    static CM: OnceLock<std::result::Result<RdmaCm, String>> = OnceLock::new();
    CM.get_or_init(RdmaCm::load)
        .as_ref()
        .map_err(|e| Error::NotFound(e.clone()))
}
