//! The kernel-socket baselines benches compare against (`sendmmsg`/`recvmmsg` UDP, an
//! `AF_PACKET` TPACKET_V3 ring), run without the GIL, optionally pinned and in a namespace.

use std::net::SocketAddrV4;

use kbypass_core::cpu::Pinned;
use kbypass_core::traffic::{kernel, StopWhen};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::IntoPyResult;
use crate::traffic::{parse_ip, seconds, throughput_dict};

fn pinned(cpu: Option<usize>) -> kbypass_core::Result<Option<Pinned>> {
    cpu.map(|c| Pinned::new(&[c])).transpose()
}

fn stop_when(count: Option<u64>, duration: Option<f64>, idle: f64) -> PyResult<StopWhen<'static>> {
    let duration = seconds(duration, "duration")?;
    let idle = seconds(Some(idle), "idle")?.unwrap_or_default();
    if count.is_none() && duration.is_none() {
        return Err(PyValueError::new_err(
            "give count= or duration=, or the receiver never stops",
        ));
    }
    Ok(StopWhen {
        count,
        duration,
        idle,
        stop: None,
    })
}

/// Send `count` UDP datagrams with `sendmmsg` (kernel TX baseline).
#[pyfunction]
#[pyo3(signature = (src_ip, dst_ip, dst_port, payload, count, *, batch=64, netns=None, cpu=None))]
#[allow(clippy::too_many_arguments)]
fn udp_send<'py>(
    py: Python<'py>,
    src_ip: &str,
    dst_ip: &str,
    dst_port: u16,
    payload: Vec<u8>,
    count: u64,
    batch: usize,
    netns: Option<String>,
    cpu: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let src = parse_ip(src_ip, "src_ip")?;
    let dst = SocketAddrV4::new(parse_ip(dst_ip, "dst_ip")?, dst_port);
    if batch == 0 {
        return Err(PyValueError::new_err("batch must be at least 1"));
    }
    let t = py
        .detach(|| {
            let _pin = pinned(cpu)?;
            kernel::udp_send(netns.as_deref(), src, dst, &payload, count, batch)
        })
        .py()?;
    throughput_dict(py, &t)
}

/// Receive UDP datagrams on `ip:port` with `recvmmsg` (kernel RX baseline) until `count`
/// datagrams, `duration` seconds, or `idle` seconds without traffic once it started.
#[pyfunction]
#[pyo3(signature = (ip, port, *, count=None, duration=None, batch=64, idle=0.3, netns=None, cpu=None))]
#[allow(clippy::too_many_arguments)]
fn udp_recv<'py>(
    py: Python<'py>,
    ip: &str,
    port: u16,
    count: Option<u64>,
    duration: Option<f64>,
    batch: usize,
    idle: f64,
    netns: Option<String>,
    cpu: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let addr = SocketAddrV4::new(parse_ip(ip, "ip")?, port);
    let when = stop_when(count, duration, idle)?;
    if batch == 0 {
        return Err(PyValueError::new_err("batch must be at least 1"));
    }
    let t = py
        .detach(|| {
            let _pin = pinned(cpu)?;
            kernel::udp_recv(netns.as_deref(), addr, batch, when)
        })
        .py()?;
    throughput_dict(py, &t)
}

/// Count frames arriving on `ifname` through an AF_PACKET TPACKET_V3 ring (raw-socket RX
/// baseline), with the same stop rules as `udp_recv`.
#[pyfunction]
#[pyo3(signature = (ifname, *, count=None, duration=None, idle=0.3, netns=None, cpu=None))]
fn af_packet_recv<'py>(
    py: Python<'py>,
    ifname: &str,
    count: Option<u64>,
    duration: Option<f64>,
    idle: f64,
    netns: Option<String>,
    cpu: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let when = stop_when(count, duration, idle)?;
    let t = py
        .detach(|| {
            let _pin = pinned(cpu)?;
            kernel::af_packet_recv(netns.as_deref(), ifname, when)
        })
        .py()?;
    throughput_dict(py, &t)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(udp_send, m)?)?;
    m.add_function(wrap_pyfunction!(udp_recv, m)?)?;
    m.add_function(wrap_pyfunction!(af_packet_recv, m)?)?;
    Ok(())
}
