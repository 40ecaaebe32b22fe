//! perftest-style measurements (the loops run in the core, GIL released), and the perftest
//! runs behind ``QueuePair.perftest_*`` (their exchange and loops are the core's); each
//! honours Ctrl-C ([`interrupt::detach`]).

use std::time::Duration;

use kbypass_core::rdma::{self, perftest::Test, Endpoint as CoreEndpoint, PathParams};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::args;
use super::cq::CompletionQueue;
use super::interrupt;
use super::mr::MemoryRegion;
use super::qp::QueuePair;
use super::resource::Owner;
use crate::errors::IntoPyResult;

/// perftest-style RDMA write bandwidth (GIL released, Ctrl-C honoured): returns (bytes,
/// seconds).
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
    let bw = interrupt::detach(py, |cancel| {
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
            cancel,
        )
    })?;
    Ok((bw.bytes, bw.seconds))
}

/// perftest-style RDMA write latency (two threads, GIL released, Ctrl-C honoured): one-way
/// microseconds.
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
    interrupt::detach(py, |c| {
        rdma::perf::write_latency(qa, qb, ca, cb, ma, mb, size, iterations, c)
    })
}

/// A perftest tool's report as a dict: ``size``, ``iters``, ``bw_peak``, ``bw_avg``,
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

/// The test a ``perftest_serve(test=...)`` name stands for.
fn test_named(name: &str) -> PyResult<Test> {
    match name {
        "write" => Ok(Test::Write),
        "read" => Ok(Test::Read),
        "send" => Ok(Test::Send),
        "atomic" => Ok(Test::FetchAdd),
        _ => Err(PyValueError::new_err(format!(
            "unknown perftest test {name:?}: use 'write', 'read', 'send' or 'atomic'"
        ))),
    }
}

/// The options of ``perftest_serve`` besides the QP and region.
pub struct ServeArgs<'a> {
    pub test: &'a str,
    pub cq: Option<&'a CompletionQueue>,
    pub port: u16,
    pub bind: &'a str,
    pub psn: u32,
    pub timeout: f64,
    pub gid_index: Option<i32>,
    pub size: usize,
    pub iterations: u64,
    pub rx_depth: u64,
}

/// ``QueuePair.perftest_serve``: the server of any of the four tools.
/// The tools' exchange at perftest's path MTU: the port's active MTU (perftest without
/// ``-m``), which the peers then lower to the smaller of theirs.
fn perftest_exchange(
    qp: &QueuePair,
    test: Test,
    psn: u32,
    timeout: f64,
    gid_index: Option<i32>,
) -> PyResult<(Duration, PathParams, CoreEndpoint)> {
    let (t, mut p, local) = qp.tool_exchange(reads(test), psn, timeout, gid_index)?;
    p.mtu = qp.ctx()?.query_port(p.port).py()?.active_mtu;
    Ok((t, p, local))
}

pub fn serve<'py>(
    py: Python<'py>,
    qp: &QueuePair,
    mr: &MemoryRegion,
    a: &ServeArgs<'_>,
) -> PyResult<Bound<'py, PyDict>> {
    let test = test_named(a.test)?;
    let cq = match (test, a.cq) {
        (Test::Send, None) => {
            return Err(PyValueError::new_err(
                "an ib_send_bw server counts receives: pass cq= (the QP's receive CQ)",
            ))
        }
        (Test::Send, Some(c)) => Some(c.get()?),
        _ => None,
    };
    let (t, p, local) = perftest_exchange(qp, test, a.psn, a.timeout, a.gid_index)?;
    let (q, m) = (qp.get()?, mr.get()?);
    let listener = args::listen(a.bind, a.port)?;
    let run = rdma::perftest::SendRun {
        size: a.size,
        iterations: a.iterations,
        rx_depth: a.rx_depth,
    };
    let r = interrupt::detach(py, |x| match cq {
        Some(c) => rdma::perftest::serve_send(&listener, q, c, m, &p, &local, &run, t, x),
        None => rdma::perftest::serve(&listener, test, q, m, &p, &local, t, x),
    })?;
    report(py, &r)
}

/// The options of the ``perftest_*_bw`` clients besides the QP, CQ and region.
pub struct ClientArgs<'a> {
    pub host: &'a str,
    pub port: u16,
    pub size: usize,
    pub iterations: u64,
    pub psn: u32,
    pub timeout: f64,
    pub gid_index: Option<i32>,
}

impl<'a> ClientArgs<'a> {
    pub fn new(
        host: &'a str,
        port: u16,
        size: usize,
        iterations: u64,
        psn: u32,
        timeout: f64,
        gid_index: Option<i32>,
    ) -> Self {
        ClientArgs {
            host,
            port,
            size,
            iterations,
            psn,
            timeout,
            gid_index,
        }
    }
}

/// Reads and atomics announce (and use) the device's outstanding-read limit.
fn reads(test: Test) -> bool {
    matches!(test, Test::Read | Test::FetchAdd | Test::CompareSwap)
}

/// ``QueuePair.perftest_{write,read,send,atomic}_bw``: the client of a tool's server.
pub fn client<'py>(
    py: Python<'py>,
    test: Test,
    qp: &QueuePair,
    cq: &CompletionQueue,
    mr: &MemoryRegion,
    a: &ClientArgs<'_>,
) -> PyResult<Bound<'py, PyDict>> {
    let (t, p, local) = perftest_exchange(qp, test, a.psn, a.timeout, a.gid_index)?;
    let (q, c, m) = (qp.get()?, cq.get()?, mr.get()?);
    let (host, port, size, n) = (a.host, a.port, a.size, a.iterations);
    let r = interrupt::detach(py, |x| {
        rdma::perftest::client((host, port), test, q, c, m, &p, &local, size, n, t, x)
    })?;
    report(py, &r)
}
