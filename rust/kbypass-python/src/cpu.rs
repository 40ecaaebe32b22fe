//! `kbypass.cpu` primitives: topology as plain dicts (the Python module wraps them in
//! dataclasses), pinning of the calling thread, NIC NUMA node and queue IRQs.

use kbypass_core::cpu;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::IntoPyResult;

fn cpus_arg(cpus: Vec<i64>) -> PyResult<Vec<usize>> {
    if cpus.is_empty() {
        return Err(PyValueError::new_err("give at least one CPU number"));
    }
    cpus.into_iter()
        .map(|c| {
            usize::try_from(c)
                .map_err(|_| PyValueError::new_err(format!("CPU numbers are >= 0, got {c}")))
        })
        .collect()
}

/// The machine's CPU layout (online/allowed/isolated CPUs, cores, packages, NUMA nodes).
#[pyfunction]
fn cpu_topology(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let t = cpu::topology().py()?;
    let d = PyDict::new(py);
    d.set_item("online", &t.online)?;
    d.set_item("allowed", &t.allowed)?;
    d.set_item("isolated", &t.isolated)?;
    d.set_item("nohz_full", &t.nohz_full)?;
    let cpus = PyList::empty(py);
    for c in &t.cpus {
        let e = PyDict::new(py);
        e.set_item("id", c.id)?;
        e.set_item("core_id", c.core_id)?;
        e.set_item("package", c.package)?;
        e.set_item("node", c.node)?;
        e.set_item("siblings", &c.siblings)?;
        cpus.append(e)?;
    }
    d.set_item("cpus", cpus)?;
    let cores = PyList::empty(py);
    for c in &t.cores {
        let e = PyDict::new(py);
        e.set_item("package", c.package)?;
        e.set_item("core_id", c.core_id)?;
        e.set_item("cpus", &c.cpus)?;
        cores.append(e)?;
    }
    d.set_item("cores", cores)?;
    d.set_item("packages", &t.packages)?;
    let nodes = PyDict::new(py);
    for n in &t.nodes {
        nodes.set_item(n.id, &n.cpus)?;
    }
    d.set_item("nodes", nodes)?;
    Ok(d)
}

/// CPUs the calling thread may run on.
#[pyfunction]
fn cpu_allowed() -> PyResult<Vec<usize>> {
    cpu::allowed().py()
}

/// Pin the calling thread to `cpus`.
#[pyfunction]
fn cpu_pin(cpus: Vec<i64>) -> PyResult<()> {
    cpu::pin(&cpus_arg(cpus)?).py()
}

/// NUMA node of the NIC behind `ifname` (None when unknown or virtual).
#[pyfunction]
fn nic_numa_node(ifname: &str) -> PyResult<Option<usize>> {
    cpu::nic_numa_node(ifname).py()
}

/// The interrupts of `ifname`: dicts with irq, name, queue, affinity, effective.
#[pyfunction]
fn queue_irqs<'py>(py: Python<'py>, ifname: &str) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    for q in cpu::queue_irqs(ifname).py()? {
        let e = PyDict::new(py);
        e.set_item("irq", q.irq)?;
        e.set_item("name", &q.name)?;
        e.set_item("queue", q.queue_name())?;
        e.set_item("affinity", &q.affinity)?;
        e.set_item("effective", &q.effective)?;
        out.append(e)?;
    }
    Ok(out)
}

/// A CPU for the poll-mode worker of `ifname`'s queue `queue`.
#[pyfunction]
#[pyo3(signature = (ifname, queue = 0))]
fn worker_cpu(ifname: &str, queue: i64) -> PyResult<usize> {
    let queue = usize::try_from(queue)
        .map_err(|_| PyValueError::new_err(format!("queue numbers are >= 0, got {queue}")))?;
    cpu::worker_cpu(ifname, queue).py()
}

/// Register the cpu functions.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cpu_topology, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_allowed, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_pin, m)?)?;
    m.add_function(wrap_pyfunction!(nic_numa_node, m)?)?;
    m.add_function(wrap_pyfunction!(queue_irqs, m)?)?;
    m.add_function(wrap_pyfunction!(worker_cpu, m)?)?;
    Ok(())
}
