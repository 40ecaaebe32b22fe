//! `kbypass._core`: the thin PyO3 layer over `kbypass-core`.
//!
//! One file per area; nothing here does real work beyond converting arguments, releasing the
//! GIL around blocking calls, and mapping errors (see `errors.rs`).

use pyo3::prelude::*;

mod capture;
mod cpu;
mod engine;
mod errors;
mod mem;
mod mempool;
mod netns;
mod packet;
mod rdma;
mod ring;
mod traffic;
mod views;
mod xdp;
mod xdp_table;
mod xsk;

/// The extension module. Declared free-threading safe: every class guards its own state.
#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    netns::register(m)?;
    packet::register(m)?;
    mem::register(m)?;
    mempool::register(m)?;
    ring::register(m)?;
    cpu::register(m)?;
    xdp::register(m)?;
    xdp_table::register(m)?;
    views::register(m)?;
    xsk::register(m)?;
    traffic::register(m)?;
    engine::register(m)?;
    rdma::register(m)?;
    capture::register(m)?;
    Ok(())
}
