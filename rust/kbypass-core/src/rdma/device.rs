//! Devices (`ibv_device`): the list libibverbs reports, and the plain attribute records a
//! [`Context`](super::Context) answers queries with (device, port, GID).

use std::ffi::c_int;
use std::fmt;

use super::ffi::{self, verbs, Verbs};
use crate::error::{errno, Error, Result};

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
    /// sysfs path of the device (`/sys/class/infiniband/<name>`; empty for user-space).
    pub ibdev_path: String,
    /// True for a user-space RoCEv2 context (`kbx-<interface>`, open in this process).
    pub userspace: bool,
    /// The network interface it runs on (a libibverbs device's port 1 netdev, when sysfs
    /// names one).
    pub interface: Option<String>,
}

pub(super) fn c_string(raw: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Walks the device list, calling `f` with each entry (valid until `f` returns) and what it
/// says about itself, until `f` returns `Some`; then frees the list.
pub(super) fn with_device_list<T>(
    v: &Verbs,
    mut f: impl FnMut(*mut ffi::ibv_device, DeviceInfo) -> Option<T>,
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
        // SAFETY: a non-NULL entry of the list, which is not freed before the loop ends.
        let info = device_info(unsafe { &*dev });
        if let Some(t) = f(dev, info) {
            found = Some(t);
            break;
        }
    }
    // SAFETY: `list` came from ibv_get_device_list and is freed once; devices opened from it
    // stay valid (libibverbs reference-counts them).
    unsafe { (v.free_device_list)(list) };
    Ok(found)
}

fn device_info(d: &ffi::ibv_device) -> DeviceInfo {
    let name = c_string(&d.name);
    let netdev = format!("/sys/class/infiniband/{name}/ports/1/gid_attrs/ndevs/0");
    DeviceInfo {
        interface: std::fs::read_to_string(netdev)
            .ok()
            .map(|s| s.trim().to_string()),
        name,
        uverbs: c_string(&d.dev_name),
        node_type: d.node_type,
        transport_type: d.transport_type,
        ibdev_path: c_string(&d.ibdev_path),
        userspace: false,
    }
}

/// The RDMA devices of this machine, then the user-space contexts open in this process
/// ([`Context::userspace`](super::Context::userspace)). Without libibverbs: an error naming
/// the packages to install, unless a user-space context is open (then only those).
pub fn devices() -> Result<Vec<DeviceInfo>> {
    let user = super::user::list();
    let v = match verbs() {
        Ok(v) => v,
        Err(_) if !user.is_empty() => return Ok(user),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    with_device_list(v, |_, info| {
        out.push(info);
        None::<()>
    })?;
    out.extend(user);
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
