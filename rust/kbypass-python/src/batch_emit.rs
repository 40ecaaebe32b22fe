//! Emitting from a handler (`Batch.emit`, `Batch.emit_template` and their `Packet`
//! counterparts): the bytes or the template fill go to the core lease, which takes free UMEM
//! frames and counts the emits that find none.

use kbypass_core::engine::BatchFrames;
use kbypass_core::xsk::{CsumAsk, TxAsk};
use numpy::PyReadonlyArray1;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::errors::IntoPyResult;
use crate::template::{FillArgs, PyTemplate};

/// What `checksum=`, `timestamp=` and `launch_time=` ask of a packet sent (`Batch.emit`,
/// `Batch.reply`, `XdpSocket.send`).
pub(crate) fn tx_ask(
    checksum: Option<&str>,
    timestamp: bool,
    launch_time: Option<u64>,
) -> PyResult<TxAsk> {
    let checksum = match checksum {
        None => CsumAsk::Keep,
        Some("software") => CsumAsk::Software,
        Some("offload") => CsumAsk::Offload,
        Some(o) => {
            return Err(PyValueError::new_err(format!(
                "checksum={o:?}: give None (the bytes as they are), \"software\" (computed by kbypass) or \"offload\" (left to the kernel or device through AF_XDP TX metadata where the socket can, else computed by kbypass and counted)"
            )))
        }
    };
    Ok(TxAsk {
        checksum,
        timestamp,
        launch_time,
    })
}

/// What `offload=` and `timestamp=` of `fix_checksums`/`reflect` ask (`Batch`, `Packet`): the
/// UDP/TCP checksum computed here or left to the kernel or device, and a TX timestamp.
pub(crate) fn checksum_ask(offload: bool, timestamp: bool) -> PyResult<TxAsk> {
    let checksum = if offload { "offload" } else { "software" };
    tx_ask(Some(checksum), timestamp, None)
}

/// Emit a copy of `data` (bytes, a contiguous 1-D uint8 array, or any bytes-like object) from
/// lease `seq`, made as `ask` says (see `Batch.emit`).
pub(crate) fn emit(
    frames: &BatchFrames,
    seq: u64,
    data: &Bound<'_, PyAny>,
    socket: Option<usize>,
    ask: &TxAsk,
) -> PyResult<bool> {
    let emit = |bytes: &[u8]| frames.emit(seq, bytes, socket, ask).py();
    if let Ok(b) = data.cast::<PyBytes>() {
        return emit(b.as_bytes());
    }
    if let Ok(a) = data.extract::<PyReadonlyArray1<'_, u8>>() {
        if let Ok(s) = a.as_slice() {
            return emit(s);
        }
    }
    let buf = PyBuffer::<u8>::get(data).map_err(|_| {
        PyTypeError::new_err("data must be bytes, bytearray, memoryview or a 1-D uint8 array")
    })?;
    emit(&buf.to_vec(data.py())?)
}

/// Emit `count` frames filled from `template` from lease `seq` (see `Batch.emit_template`);
/// returns how many went.
pub(crate) fn emit_template(
    frames: &BatchFrames,
    seq: u64,
    template: &Bound<'_, PyTemplate>,
    count: Option<usize>,
    fields: Option<&Bound<'_, PyDict>>,
    socket: Option<usize>,
) -> PyResult<usize> {
    let tpl = &template.get().inner;
    let args = FillArgs::new(tpl, count, fields)?;
    args.with_fill(tpl, |fill| {
        frames.emit_template(seq, tpl, fill, socket).py()
    })
}
