//! Argument conversions the RDMA classes share.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::Duration;

use kbypass_core::rdma::{Context, PathParams};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::errors::IntoPyResult;

/// A timeout in seconds (ValueError below 0, for NaN or infinity).
pub fn seconds(s: f64) -> PyResult<Duration> {
    if s >= 0.0 && s.is_finite() {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(PyValueError::new_err(format!(
            "timeout must be >= 0 seconds, got {s}"
        )))
    }
}

/// `host`:`port` for the connection manager, which needs an IP address.
pub fn socket_addr(host: &str, port: u16) -> PyResult<SocketAddr> {
    let ip: IpAddr = host.parse().map_err(|_| {
        PyValueError::new_err(format!(
            "{host:?} is not an IP address: give the RDMA device's IPv4 or IPv6 address"
        ))
    })?;
    Ok(SocketAddr::new(ip, port))
}

/// The GID index to use on `port`: `index` if given, else the context's default.
pub fn gid_index(ctx: &Context, port: u8, index: Option<i32>) -> PyResult<u8> {
    let idx = match index {
        Some(i) => i,
        None => ctx.default_gid_index(port).py()?,
    };
    u8::try_from(idx).map_err(|_| PyValueError::new_err(format!("bad GID index {idx}")))
}

/// The default path parameters on `port` with its GID index.
pub fn path(ctx: &Context, port: u8, index: Option<i32>) -> PyResult<PathParams> {
    Ok(PathParams {
        port,
        sgid_index: gid_index(ctx, port, index)?,
        ..Default::default()
    })
}

/// A TCP listener for the out-of-band exchanges, with the fix in the error.
pub fn listen(bind: &str, port: u16) -> PyResult<TcpListener> {
    TcpListener::bind((bind, port)).map_err(|e| {
        PyOSError::new_err((
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("listen on {bind}:{port}: {e}: pick a free port"),
        ))
    })
}
