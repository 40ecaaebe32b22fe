//! Emitting from a handler (`Batch.emit`, `Batch.emit_template` and their `Packet`
//! counterparts): the bytes or the template fill go to the core lease, which takes free UMEM
//! frames and counts the emits that find none.

use kbypass_core::engine::BatchFrames;
use numpy::PyReadonlyArray1;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::errors::IntoPyResult;
use crate::template::{FillArgs, PyTemplate};

/// Emit a copy of `data` (bytes, a contiguous 1-D uint8 array, or any bytes-like object) from
/// lease `seq` (see `Batch.emit`).
pub(crate) fn emit(
    frames: &BatchFrames,
    seq: u64,
    data: &Bound<'_, PyAny>,
    socket: Option<usize>,
) -> PyResult<bool> {
    let emit = |bytes: &[u8]| frames.emit(seq, bytes, socket).py();
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
