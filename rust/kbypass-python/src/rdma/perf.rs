//! perftest-style measurements (the loops run in the core, GIL released) and the report dict
//! of the ``ib_write_bw`` exchange.

use kbypass_core::rdma;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::cq::CompletionQueue;
use super::mr::MemoryRegion;
use super::qp::QueuePair;
use super::resource::Owner;
use crate::errors::IntoPyResult;

/// perftest-style RDMA write bandwidth (GIL released): returns (bytes, seconds).
#[pyfunction]
#[pyo3(signature = (qp, cq, mr, remote_addr, rkey, size, iterations, depth = 128, signal_every = 100))]
#[allow(clippy::too_many_arguments)]
pub fn write_bandwidth(
    py: Python<'_>,
    qp: PyRef<'_, QueuePair>,
    cq: PyRef<'_, CompletionQueue>,
    mr: PyRef<'_, MemoryRegion>,
    remote_addr: u64,
    rkey: u32,
    size: usize,
    iterations: u64,
    depth: u64,
    signal_every: u64,
) -> PyResult<(u64, f64)> {
    let (q, c, m) = (qp.get()?, cq.get()?, mr.get()?);
    let bw = py
        .detach(|| {
            rdma::perf::write_bandwidth(
                q,
                c,
                m,
                remote_addr,
                rkey,
                size,
                iterations,
                depth,
                signal_every,
            )
        })
        .py()?;
    Ok((bw.bytes, bw.seconds))
}

/// perftest-style RDMA write latency (two threads, GIL released): one-way microseconds.
#[pyfunction]
#[pyo3(signature = (a, b, cq_a, cq_b, mr_a, mr_b, size = 2, iterations = 1000))]
#[allow(clippy::too_many_arguments)]
pub fn write_latency(
    py: Python<'_>,
    a: PyRef<'_, QueuePair>,
    b: PyRef<'_, QueuePair>,
    cq_a: PyRef<'_, CompletionQueue>,
    cq_b: PyRef<'_, CompletionQueue>,
    mr_a: PyRef<'_, MemoryRegion>,
    mr_b: PyRef<'_, MemoryRegion>,
    size: usize,
    iterations: usize,
) -> PyResult<Vec<f64>> {
    let (qa, qb, ca, cb) = (a.get()?, b.get()?, cq_a.get()?, cq_b.get()?);
    let (ma, mb) = (mr_a.get()?, mr_b.get()?);
    py.detach(|| rdma::perf::write_latency(qa, qb, ca, cb, ma, mb, size, iterations))
        .py()
}

/// The ``ib_write_bw`` report as a dict: ``size``, ``iters``, ``bw_peak``, ``bw_avg``,
/// ``msg_rate``.
pub fn report<'py>(py: Python<'py>, r: &rdma::perftest::BwReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("size", r.size)?;
    d.set_item("iters", r.iters)?;
    d.set_item("bw_peak", r.bw_peak)?;
    d.set_item("bw_avg", r.bw_avg)?;
    d.set_item("msg_rate", r.msg_rate)?;
    Ok(d)
}
