//! `kbypass._core.rdma`: the core's verbs objects for Python, one file per object as in the
//! core crate (`kbypass_core::rdma`) and pyverbs; `python/kbypass/_core/rdma.pyi` mirrors it.
//!
//! Every class that owns a verbs object extends [`resource::Resource`], which holds
//! `close()`/`__enter__`/`__exit__` once; core objects keep their parents alive, so closing
//! in any order is safe, and a user-space context (`Context.userspace`) closes the objects
//! made from it first, so its `close()` releases the engine.

mod ah;
mod args;
mod context;
mod cq;
mod device;
mod endpoint;
mod interrupt;
mod mr;
mod pd;
mod perf;
mod qp;
mod recv;
mod resource;
mod srq;

use pyo3::prelude::*;

/// The submodule's name, as `import` and pickle see it.
const NAME: &str = "kbypass._core.rdma";

/// Create `kbypass._core.rdma` under `parent` (`kbypass._core`).
pub fn register(parent: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = parent.py();
    let m = PyModule::new(py, NAME)?;
    m.gil_used(false)?;
    m.add_class::<resource::Resource>()?;
    m.add_class::<recv::ReceiveQueue>()?;
    m.add_class::<device::RdmaDevice>()?;
    m.add_class::<device::Port>()?;
    m.add_class::<endpoint::Endpoint>()?;
    m.add_class::<endpoint::CmConnection>()?;
    m.add_class::<cq::WorkCompletion>()?;
    m.add("CompletionError", py.get_type::<cq::CompletionError>())?;
    m.add_class::<context::Context>()?;
    m.add_class::<pd::ProtectionDomain>()?;
    m.add_class::<mr::MemoryRegion>()?;
    m.add_class::<cq::CompletionQueue>()?;
    m.add_class::<qp::QueuePair>()?;
    m.add_class::<srq::SharedReceiveQueue>()?;
    m.add_class::<ah::AddressHandle>()?;
    m.add_function(wrap_pyfunction!(device::devices, &m)?)?;
    m.add_function(wrap_pyfunction!(perf::write_bandwidth, &m)?)?;
    m.add_function(wrap_pyfunction!(perf::write_latency, &m)?)?;
    parent.add_submodule(&m)?;
    // An extension module is no package: `import kbypass._core.rdma` (and pickle, which
    // imports a class's module) finds the submodule only in sys.modules.
    py.import("sys")?.getattr("modules")?.set_item(NAME, &m)?;
    Ok(())
}
