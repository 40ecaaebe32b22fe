//! `kbypass.rdma`: RDMA devices through the core's verbs provider (libibverbs loaded at run time).

use kbypass_core::rdma;
use pyo3::prelude::*;

use crate::errors::IntoPyResult;

/// One RDMA device as libibverbs lists it.
#[pyclass(module = "kbypass._core", name = "RdmaDevice", frozen, get_all)]
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
    /// sysfs path of the device.
    ibdev_path: String,
}

#[pymethods]
impl RdmaDevice {
    fn __repr__(&self) -> String {
        format!("RdmaDevice(name={:?}, uverbs={:?})", self.name, self.uverbs)
    }
}

/// The machine's RDMA devices (empty without any); FileNotFoundError names the packages to
/// install when libibverbs is missing.
#[pyfunction]
fn rdma_devices(py: Python<'_>) -> PyResult<Vec<RdmaDevice>> {
    let list = py.detach(rdma::devices).py()?;
    Ok(list
        .into_iter()
        .map(|d| RdmaDevice {
            name: d.name,
            uverbs: d.uverbs,
            node_type: d.node_type,
            transport_type: d.transport_type,
            ibdev_path: d.ibdev_path,
        })
        .collect())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RdmaDevice>()?;
    m.add_function(wrap_pyfunction!(rdma_devices, m)?)?;
    Ok(())
}
