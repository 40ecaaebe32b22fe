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
    #[new]
    #[pyo3(signature = (name = None))]
    fn new(py: Python<'_>, name: Option<String>) -> PyResult<PyClassInitializer<Self>> {
        let ctx = py.detach(|| rdma::Context::open(name.as_deref())).py()?;
        Ok(resource::initializer(Context { inner: Some(ctx) }))
    }

    #[getter]
    fn name(&self) -> PyResult<String> {
        Ok(self.get()?.name().to_string())
    }

    #[pyo3(signature = (port = 1))]
    fn query_port(&self, port: u8) -> PyResult<Port> {
        Ok(self.get()?.query_port(port).py()?.into())
    }

    #[pyo3(signature = (port = 1))]
    fn default_gid_index(&self, port: u8) -> PyResult<i32> {
        self.get()?.default_gid_index(port).py()
    }

    #[pyo3(signature = (port = 1, index = None))]
    fn gid(&self, port: u8, index: Option<i32>) -> PyResult<String> {
        let ctx = self.get()?;
        let i = match index {
            Some(i) => i,
            None => ctx.default_gid_index(port).py()?,
        };
        Ok(ctx.query_gid(port, i).py()?.to_string())
    }

    fn alloc_pd(&self, py: Python<'_>) -> PyResult<Py<ProtectionDomain>> {
        let ctx = self.get()?;
        ProtectionDomain::new(py, ctx.alloc_pd().py()?, ctx.clone())
    }

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
