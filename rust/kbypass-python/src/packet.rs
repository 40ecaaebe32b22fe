//! Header parsing, frame edits and pcap output for Python (`kbypass.packet`).

use std::fs::File;
use std::io::BufWriter;

use kbypass_core::packet::{edit, parse, pcap, PacketMeta, PACKET_META_FIELDS};
use numpy::{
    PyArray1, PyArrayDescr, PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray1,
    PyReadwriteArray2,
};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

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

fn check_lengths(frames: usize, width: usize, lengths: &[u32]) -> PyResult<()> {
    if lengths.len() != frames {
        return Err(PyValueError::new_err(format!(
            "lengths has {} entries for {frames} frames: give one length per row",
            lengths.len()
        )));
    }
    if let Some((i, l)) = lengths
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize > width)
    {
        return Err(PyValueError::new_err(format!(
            "lengths[{i}] = {l} is longer than a row ({width} bytes)"
        )));
    }
    Ok(())
}

/// Parse each row `frames[i, :lengths[i]]` into `out[i]` (raw bytes of the record dtype).
#[pyfunction]
fn parse_into(
    py: Python<'_>,
    frames: PyReadonlyArray2<'_, u8>,
    lengths: PyReadonlyArray1<'_, u32>,
    mut out: PyReadwriteArray2<'_, u8>,
) -> PyResult<()> {
    let f = frames.as_array();
    let lens = lengths.as_slice()?;
    check_lengths(f.nrows(), f.ncols(), lens)?;
    let mut o = out.as_array_mut();
    let rec = std::mem::size_of::<PacketMeta>();
    if o.nrows() != f.nrows() || o.ncols() != rec {
        return Err(PyValueError::new_err("out must have one record per frame"));
    }
    let fs = f
        .as_slice()
        .ok_or_else(|| PyValueError::new_err("frames must be C-contiguous"))?;
    let os = o
        .as_slice_mut()
        .ok_or_else(|| PyValueError::new_err("out must be C-contiguous"))?;
    let width = f.ncols();
    py.detach(|| {
        for (i, &l) in lens.iter().enumerate() {
            let m = parse(&fs[i * width..i * width + l as usize]);
            os[i * rec..(i + 1) * rec].copy_from_slice(&m.to_bytes());
        }
    });
    Ok(())
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
    if ops == 0 || ops > 31 {
        return Err(PyValueError::new_err(
            "ops must be a non-empty combination of the EDIT_* bits",
        ));
    }
    let mut f = frames.as_array_mut();
    let (rows, width) = (f.nrows(), f.ncols());
    let lens = lengths.as_slice()?;
    check_lengths(rows, width, lens)?;
    let mask = match &mask {
        Some(m) => {
            let s = m.as_slice()?;
            if s.len() != rows {
                return Err(PyValueError::new_err("mask must have one entry per frame"));
            }
            Some(s)
        }
        None => None,
    };
    let fs = f
        .as_slice_mut()
        .ok_or_else(|| PyValueError::new_err("frames must be C-contiguous"))?;
    Ok(py.detach(|| {
        let mut applied = 0;
        for (i, &l) in lens.iter().enumerate() {
            if mask.is_some_and(|m| !m[i]) {
                continue;
            }
            let frame = &mut fs[i * width..i * width + l as usize];
            if apply_ops(frame, ops) {
                applied += 1;
            }
        }
        applied
    }))
}

/// Apply the `ops` bit set to one frame; true when every requested edit applied.
pub fn apply_ops(frame: &mut [u8], ops: u32) -> bool {
    let m = parse(frame);
    let mut ok = true;
    if ops & 1 != 0 {
        ok &= edit::swap_macs(frame);
    }
    if ops & 2 != 0 {
        ok &= edit::swap_ips(frame, &m);
    }
    if ops & 4 != 0 {
        ok &= edit::swap_ports(frame, &m);
    }
    if ops & 8 != 0 {
        ok &= edit::fix_ipv4_checksum(frame, &m);
    }
    if ops & 16 != 0 {
        ok &= edit::fix_l4_checksum(frame, &m);
    }
    ok
}

/// Whether each row's IPv4 and UDP/TCP checksums verify.
#[pyfunction]
fn checksums_ok(
    frames: PyReadonlyArray2<'_, u8>,
    lengths: PyReadonlyArray1<'_, u32>,
    mut out: PyReadwriteArray1<'_, bool>,
) -> PyResult<()> {
    let f = frames.as_array();
    let lens = lengths.as_slice()?;
    check_lengths(f.nrows(), f.ncols(), lens)?;
    let o = out.as_slice_mut()?;
    if o.len() != lens.len() {
        return Err(PyValueError::new_err("out must have one entry per frame"));
    }
    for (i, &l) in lens.iter().enumerate() {
        let row = f.row(i);
        let frame = &row
            .as_slice()
            .ok_or_else(|| PyValueError::new_err("frames must be C-contiguous"))?[..l as usize];
        o[i] = edit::checksums_ok(frame, &parse(frame));
    }
    Ok(())
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
        let f = frames.as_array();
        let lens = lengths.as_slice()?;
        check_lengths(f.nrows(), f.ncols(), lens)?;
        let ts = ts_ns.unwrap_or_else(pcap::now_ns);
        let w = self.writer()?;
        for (i, &l) in lens.iter().enumerate() {
            let row = f.row(i);
            let s = row
                .as_slice()
                .ok_or_else(|| PyValueError::new_err("frames must be C-contiguous"))?;
            w.write_frame(ts, &s[..l as usize])
                .map_err(|e| io_err("write pcap record", e))?;
        }
        Ok(lens.len())
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
