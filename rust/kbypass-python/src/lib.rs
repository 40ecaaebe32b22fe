//! `kbypass._core`: the thin PyO3 layer over `kbypass-core`.
//!
//! One file per area, mirrored section by section in `python/kbypass/_core.pyi`; nothing here
//! does real work beyond converting arguments, making NumPy views (`views.rs`), releasing the
//! GIL around blocking calls, and mapping errors (`errors.rs`).

use pyo3::prelude::*;

mod batch;
mod batch_emit;
mod capture;
mod columns;
mod cpu;
mod engine;
mod errors;
mod faults;
mod handler;
mod held;
mod kernel;
mod mem;
mod mempool;
mod netns;
mod packet;
mod packet_view;
mod port;
mod rdma;
mod reply;
mod ring;
mod template;
mod traffic;
mod umem_window;
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
    reply::register(m)?;
    template::register(m)?;
    mem::register(m)?;
    mempool::register(m)?;
    ring::register(m)?;
    cpu::register(m)?;
    xdp::register(m)?;
    xdp_table::register(m)?;
    views::register(m)?;
    port::register(m)?;
    xsk::register(m)?;
    held::register(m)?;
    traffic::register(m)?;
    kernel::register(m)?;
    batch::register(m)?;
    umem_window::register(m)?;
    packet_view::register(m)?;
    engine::register(m)?;
    rdma::register(m)?;
    capture::register(m)?;
    faults::register(m)?;
    Ok(())
}
