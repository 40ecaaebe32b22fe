//! The devices libibverbs lists, and a port's attributes.

use kbypass_core::rdma::{self, PortAttr};
use pyo3::prelude::*;

use crate::errors::IntoPyResult;

/// One RDMA device as libibverbs lists it.
#[pyclass(module = "kbypass._core.rdma", frozen, get_all)]
#[derive(Clone)]
pub struct RdmaDevice {
    /// Kernel name, e.g. ``rxe0``.
    name: String,
    /// Its uverbs character device, e.g. ``uverbs0``.
    uverbs: String,
    /// ``enum ibv_node_type`` (1 = CA, 4 = RNIC).
    node_type: i32,
    /// ``enum ibv_transport_type`` (0 = InfiniBand, also for RoCE).
    transport_type: i32,
    /// sysfs path of the device (empty for a user-space context).
    ibdev_path: String,
    /// True for a user-space RoCEv2 context (``Context.userspace``), listed while open.
    userspace: bool,
    /// The network interface it runs on (a libibverbs device's netdev, when sysfs names it).
    interface: Option<String>,
}

#[pymethods]
impl RdmaDevice {
    fn __repr__(&self) -> String {
        format!(
            "RdmaDevice(name={:?}, uverbs={:?}, userspace={})",
            self.name,
            self.uverbs,
            if self.userspace { "True" } else { "False" }
        )
    }
}

/// List this machine's RDMA devices (empty without any), then the user-space contexts open
/// in this process (``kbx-<interface>``, ``userspace=True``).
///
/// Raises FileNotFoundError ("no libibverbs: apt-get install rdma-core ibverbs-providers")
/// when libibverbs is missing and no user-space context is open.
///
/// Example::
///
///     for d in devices():
///         print(d.name, d.uverbs)
#[pyfunction]
pub fn devices(py: Python<'_>) -> PyResult<Vec<RdmaDevice>> {
    let list = py.detach(rdma::devices).py()?;
    Ok(list
        .into_iter()
        .map(|d| RdmaDevice {
            name: d.name,
            uverbs: d.uverbs,
            node_type: d.node_type,
            transport_type: d.transport_type,
            ibdev_path: d.ibdev_path,
            userspace: d.userspace,
            interface: d.interface,
        })
        .collect())
}

/// Port attributes (``Context.query_port``).
#[pyclass(module = "kbypass._core.rdma", frozen, get_all)]
pub struct Port {
    state: i32,
    active_mtu: u32,
    max_mtu: u32,
    gid_tbl_len: i32,
    lid: u16,
    link_layer: String,
}

impl From<PortAttr> for Port {
    fn from(a: PortAttr) -> Self {
        Port {
            state: a.state,
            active_mtu: rdma::mtu_bytes(a.active_mtu).unwrap_or(0),
            max_mtu: rdma::mtu_bytes(a.max_mtu).unwrap_or(0),
            gid_tbl_len: a.gid_tbl_len,
            lid: a.lid,
            link_layer: match a.link_layer {
                1 => "InfiniBand",
                2 => "Ethernet",
                _ => "unspecified",
            }
            .to_string(),
        }
    }
}
