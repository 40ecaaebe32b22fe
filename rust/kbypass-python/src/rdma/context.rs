//! `Context`: an open RDMA device.

use kbypass_core::rdma;
use pyo3::prelude::*;

use super::cq::CompletionQueue;
use super::device::Port;
use super::pd::ProtectionDomain;
use super::resource::{self, owner, Owner, Resource};
use crate::errors::IntoPyResult;

/// An open RDMA device.
#[pyclass(module = "kbypass._core.rdma", extends = Resource)]
pub struct Context {
    inner: Option<rdma::Context>,
}
owner!(Context, rdma::Context);

#[pymethods]
impl Context {
    /// Open the device called `name` (the first one when None); FileNotFoundError names the
    /// devices there are, or the packages to install without libibverbs.
    #[new]
    #[pyo3(signature = (name = None))]
    fn new(py: Python<'_>, name: Option<String>) -> PyResult<PyClassInitializer<Self>> {
        let ctx = py.detach(|| rdma::Context::open(name.as_deref())).py()?;
        Ok(resource::initializer(Context { inner: Some(ctx) }))
    }

    /// The device's name, e.g. ``rxe0``.
    #[getter]
    fn name(&self) -> PyResult<String> {
        Ok(self.get()?.name().to_string())
    }

    /// The attributes of `port` (ports count from 1).
    #[pyo3(signature = (port = 1))]
    fn query_port(&self, port: u8) -> PyResult<Port> {
        Ok(self.get()?.query_port(port).py()?.into())
    }

    /// The GID index used by default: the first IPv4-mapped RoCEv2 GID, else the first
    /// non-zero one.
    #[pyo3(signature = (port = 1))]
    fn default_gid_index(&self, port: u8) -> PyResult<i32> {
        self.get()?.default_gid_index(port).py()
    }

    /// The GID at `index` (the default index when None) as an IPv6-style string.
    #[pyo3(signature = (port = 1, index = None))]
    fn gid(&self, port: u8, index: Option<i32>) -> PyResult<String> {
        let ctx = self.get()?;
        let i = match index {
            Some(i) => i,
            None => ctx.default_gid_index(port).py()?,
        };
        Ok(ctx.query_gid(port, i).py()?.to_string())
    }

    /// Allocate a protection domain.
    fn alloc_pd(&self, py: Python<'_>) -> PyResult<Py<ProtectionDomain>> {
        let ctx = self.get()?;
        ProtectionDomain::new(py, ctx.alloc_pd().py()?, ctx.clone())
    }

    /// A completion queue of at least `entries` entries; ``channel=True`` gives it a completion
    /// channel, which ``wait()`` sleeps on.
    #[pyo3(signature = (entries = 256, channel = false))]
    fn create_cq(
        &self,
        py: Python<'_>,
        entries: i32,
        channel: bool,
    ) -> PyResult<Py<CompletionQueue>> {
        let ctx = self.get()?;
        let ch = if channel {
            Some(ctx.create_comp_channel().py()?)
        } else {
            None
        };
        CompletionQueue::new(py, ctx.create_cq(entries, ch.as_ref()).py()?)
    }
}
