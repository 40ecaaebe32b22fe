//! Header parsing, frame edits and pcap output for Python (`kbypass.packet`).

use std::fs::File;
use std::io::BufWriter;

use kbypass_core::packet::{pcap, Edits, PacketMeta, Rows, PACKET_META_FIELDS};
use numpy::{
    PyArray1, PyArrayDescr, PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray1,
    PyReadwriteArray2, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

use crate::errors::IntoPyResult;

/// `META_DTYPE`, built once from the core's field table.
static META_DTYPE: PyOnceLock<Py<PyArrayDescr>> = PyOnceLock::new();

/// The structured dtype of a parsed-header record (`kbypass.packet.META_DTYPE`): the core's
/// `PACKET_META_FIELDS` (name, NumPy type, offset) in a 64-byte item.
pub fn meta_dtype(py: Python<'_>) -> PyResult<&Bound<'_, PyArrayDescr>> {
    META_DTYPE
        .get_or_try_init(py, || {
            let spec = PyDict::new(py);
            spec.set_item(
                "names",
                PACKET_META_FIELDS.iter().map(|f| f.0).collect::<Vec<_>>(),
            )?;
            spec.set_item(
                "formats",
                PACKET_META_FIELDS.iter().map(|f| f.1).collect::<Vec<_>>(),
            )?;
            spec.set_item(
                "offsets",
                PACKET_META_FIELDS.iter().map(|f| f.2).collect::<Vec<_>>(),
            )?;
            spec.set_item("itemsize", std::mem::size_of::<PacketMeta>())?;
            PyArrayDescr::new(py, spec).map(Bound::unbind)
        })
        .map(|d| d.bind(py))
}

/// `n` parsed-header records from their raw bytes (`n * 64`, as the core writes them), as a
/// structured array of `META_DTYPE`.
pub fn records(py: Python<'_>, raw: Vec<u8>) -> PyResult<Bound<'_, PyAny>> {
    PyArray1::from_vec(py, raw).call_method1(pyo3::intern!(py, "view"), (meta_dtype(py)?,))
}

/// The row layout of a (frames, width) array with `lens` bytes used per row, checked.
fn rows<'a>(shape: &[usize], lens: &'a [u32]) -> PyResult<Rows<'a>> {
    Rows::new(shape[0], shape[1], lens).py()
}

fn contiguous<T>(s: Option<T>, what: &str) -> PyResult<T> {
    s.ok_or_else(|| PyValueError::new_err(format!("{what} must be C-contiguous")))
}

/// Parse each row `frames[i, :lengths[i]]` into `out[i]` (raw bytes of the record dtype).
#[pyfunction]
fn parse_into(
    py: Python<'_>,
    frames: PyReadonlyArray2<'_, u8>,
    lengths: PyReadonlyArray1<'_, u32>,
    mut out: PyReadwriteArray2<'_, u8>,
) -> PyResult<()> {
    let rows = rows(frames.shape(), lengths.as_slice()?)?;
    let data = contiguous(frames.as_slice().ok(), "frames")?;
    let out = contiguous(out.as_slice_mut().ok(), "out")?;
    py.detach(|| rows.parse_into(data, out)).py()
}

/// Apply edits to the rows selected by `mask` (all rows when None). `ops` is a bit set:
/// 1 swap MACs, 2 swap IPs, 4 swap ports, 8 fix IPv4 checksum, 16 fix UDP/TCP checksum.
/// Returns how many rows every requested edit applied to.
#[pyfunction]
#[pyo3(signature = (frames, lengths, ops, mask=None))]
fn edit_frames(
    py: Python<'_>,
    mut frames: PyReadwriteArray2<'_, u8>,
    lengths: PyReadonlyArray1<'_, u32>,
    ops: u32,
    mask: Option<PyReadonlyArray1<'_, bool>>,
) -> PyResult<usize> {
    let edits = Edits::new(ops).py()?;
    let rows = rows(frames.shape(), lengths.as_slice()?)?;
    let mask = mask.as_ref().map(|m| m.as_slice()).transpose()?;
    let data = contiguous(frames.as_slice_mut().ok(), "frames")?;
    py.detach(|| rows.edit(data, edits, mask)).py()
}

/// Whether each row's IPv4 and UDP/TCP checksums verify.
#[pyfunction]
fn checksums_ok(
    frames: PyReadonlyArray2<'_, u8>,
    lengths: PyReadonlyArray1<'_, u32>,
    mut out: PyReadwriteArray1<'_, bool>,
) -> PyResult<()> {
    let rows = rows(frames.shape(), lengths.as_slice()?)?;
    let data = contiguous(frames.as_slice().ok(), "frames")?;
    rows.checksums_ok(data, out.as_slice_mut()?).py()
}

/// Writes Ethernet frames to a pcap file with nanosecond timestamps.
#[pyclass(module = "kbypass._core")]
pub struct PcapWriter {
    inner: Option<pcap::PcapWriter<BufWriter<File>>>,
    path: String,
}

pub(crate) fn io_err(what: &str, e: std::io::Error) -> PyErr {
    PyOSError::new_err((e.raw_os_error().unwrap_or(0), format!("{what}: {e}")))
}

impl PcapWriter {
    pub(crate) fn writer(&mut self) -> PyResult<&mut pcap::PcapWriter<BufWriter<File>>> {
        self.inner.as_mut().ok_or_else(|| {
            pyo3::exceptions::PyRuntimeError::new_err(format!(
                "pcap file {} is closed: open a new PcapWriter",
                self.path
            ))
        })
    }
}

#[pymethods]
impl PcapWriter {
    /// Create (truncate) `path` and write the pcap header.
    #[new]
    #[pyo3(signature = (path, snaplen=262144))]
    fn new(path: &str, snaplen: u32) -> PyResult<Self> {
        let file = File::create(path).map_err(|e| io_err(&format!("create {path}"), e))?;
        let inner = pcap::PcapWriter::new(BufWriter::with_capacity(1 << 20, file), snaplen)
            .map_err(|e| io_err("write pcap header", e))?;
        Ok(PcapWriter {
            inner: Some(inner),
            path: path.to_string(),
        })
    }

    /// Append one frame; `ts_ns` defaults to now.
    #[pyo3(signature = (frame, ts_ns=None))]
    fn write(&mut self, frame: &[u8], ts_ns: Option<u64>) -> PyResult<()> {
        let ts = ts_ns.unwrap_or_else(pcap::now_ns);
        self.writer()?
            .write_frame(ts, frame)
            .map_err(|e| io_err("write pcap record", e))
    }

    /// Append rows `frames[i, :lengths[i]]`, all stamped `ts_ns` (default now).
    #[pyo3(signature = (frames, lengths, ts_ns=None))]
    fn write_rows(
        &mut self,
        frames: PyReadonlyArray2<'_, u8>,
        lengths: PyReadonlyArray1<'_, u32>,
        ts_ns: Option<u64>,
    ) -> PyResult<usize> {
        let rows = rows(frames.shape(), lengths.as_slice()?)?;
        let data = contiguous(frames.as_slice().ok(), "frames")?;
        let ts = ts_ns.unwrap_or_else(pcap::now_ns);
        rows.write_pcap(data, self.writer()?, ts)
            .map_err(|e| io_err("write pcap record", e))
    }

    /// Frames written so far.
    #[getter]
    fn packets(&mut self) -> PyResult<u64> {
        Ok(self.writer()?.packets())
    }

    /// The file's path.
    #[getter]
    fn path(&self) -> &str {
        &self.path
    }

    /// Flush buffered records to the file.
    fn flush(&mut self) -> PyResult<()> {
        self.writer()?.flush().map_err(|e| io_err("flush pcap", e))
    }

    /// Flush and close the file. Idempotent.
    fn close(&mut self) -> PyResult<()> {
        if let Some(w) = self.inner.take() {
            w.into_inner().map_err(|e| io_err("flush pcap", e))?;
        }
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &mut self,
        _t: Option<Bound<'_, PyAny>>,
        _v: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.close()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("META_DTYPE", meta_dtype(m.py())?)?;
    m.add_function(wrap_pyfunction!(parse_into, m)?)?;
    m.add_function(wrap_pyfunction!(edit_frames, m)?)?;
    m.add_function(wrap_pyfunction!(checksums_ok, m)?)?;
    m.add_class::<PcapWriter>()?;
    Ok(())
}
