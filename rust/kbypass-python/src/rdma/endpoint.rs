//! `Endpoint` (what a peer needs to connect to a QP) and `CmConnection` (a connection the
//! RDMA connection manager made).

use kbypass_core::rdma::oob::{self, RemoteBuffer};
use kbypass_core::rdma::{self, Gid};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::resource::{self, owner, Resource};
use crate::errors::IntoPyResult;
/// What a peer needs to connect to a QP, exchanged out of band.
#[pyclass(module = "kbypass._core.rdma", frozen, get_all, eq)]
#[derive(Clone, PartialEq)]
pub struct Endpoint {
    qpn: u32,
    psn: u32,
    gid: String,
    lid: u16,
    rkey: u32,
    addr: u64,
    length: u64,
}

impl Endpoint {
    pub fn core(&self) -> PyResult<rdma::Endpoint> {
        let gid: std::net::Ipv6Addr = self.gid.parse().map_err(|_| {
            PyValueError::new_err(format!(
                "bad GID {:?}: give an IPv6-style address",
                self.gid
            ))
        })?;
        Ok(rdma::Endpoint {
            qpn: self.qpn,
            psn: self.psn,
            gid: Gid(gid.octets()),
            lid: self.lid,
        })
    }

    fn buffer(&self) -> RemoteBuffer {
        RemoteBuffer {
            addr: self.addr,
            rkey: self.rkey,
            length: self.length,
        }
    }
}

#[pymethods]
impl Endpoint {
    /// An endpoint from its fields (ValueError for a GID that is not an IPv6-style address).
    #[new]
    #[pyo3(signature = (qpn, psn, gid, lid = 0, rkey = 0, addr = 0, length = 0))]
    fn new(
        qpn: u32,
        psn: u32,
        gid: String,
        lid: u16,
        rkey: u32,
        addr: u64,
        length: u64,
    ) -> PyResult<Self> {
        let e = Endpoint {
            qpn,
            psn,
            gid,
            lid,
            rkey,
            addr,
            length,
        };
        e.core()?;
        Ok(e)
    }

    /// kbypass's 52-byte record of every field (big-endian; see ``from_bytes``).
    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(
            py,
            &oob::endpoint_bytes(&self.core()?, &self.buffer()),
        ))
    }

    /// Parse a ``to_bytes`` record (ValueError for anything else).
    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<Self> {
        let (e, b) = oob::parse_endpoint_bytes(data).py()?;
        Ok(endpoint_with(&e, &b))
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyBytes>,))> {
        let from_bytes = slf.get_type().getattr("from_bytes")?;
        Ok((from_bytes, (slf.get().to_bytes(slf.py())?,)))
    }

    /// The 52-byte message ``ibv_rc_pingpong`` exchanges (``LID:QPN:PSN:GID`` in hex).
    fn to_pingpong(&self) -> PyResult<Vec<u8>> {
        Ok(rdma::oob::pingpong_message(&self.core()?).to_vec())
    }

    /// Parse an ``ibv_rc_pingpong`` message.
    #[staticmethod]
    fn from_pingpong(data: &[u8]) -> PyResult<Self> {
        Ok(endpoint(&rdma::oob::parse_pingpong_message(data).py()?))
    }

    fn __repr__(&self) -> String {
        format!(
            "Endpoint(qpn={:#x}, psn={:#x}, gid={:?}, lid={}, rkey={:#x}, addr={:#x}, length={})",
            self.qpn, self.psn, self.gid, self.lid, self.rkey, self.addr, self.length
        )
    }
}

pub fn endpoint(e: &rdma::Endpoint) -> Endpoint {
    endpoint_with(e, &RemoteBuffer::default())
}

pub fn endpoint_with(e: &rdma::Endpoint, b: &RemoteBuffer) -> Endpoint {
    Endpoint {
        qpn: e.qpn,
        psn: e.psn,
        gid: e.gid.to_string(),
        lid: e.lid,
        rkey: b.rkey,
        addr: b.addr,
        length: b.length,
    }
}

/// A connection made by the RDMA connection manager; closing it disconnects.
#[pyclass(module = "kbypass._core.rdma", extends = Resource)]
pub struct CmConnection {
    inner: Option<rdma::cm::CmConnection>,
}
owner!(CmConnection, rdma::cm::CmConnection);

impl CmConnection {
    pub fn new(py: Python<'_>, c: rdma::cm::CmConnection) -> PyResult<Py<Self>> {
        resource::new(py, CmConnection { inner: Some(c) })
    }
}

#[pymethods]
impl CmConnection {
    /// Whether ``close()`` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_none()
    }
}
