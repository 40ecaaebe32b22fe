//! `kbypass.Batch` and `Batch.umem` (`UmemWindow`): one batch as a batch handler sees it.
//!
//! The columns are per-worker NumPy buffers (`Buffers`, `columns.rs`: allocated once and sliced
//! per batch, replaced when a handler kept one); frame access goes through the worker's lease on the
//! batch (`BatchFrames`): views by descriptor index, edits and reads by mask, reshapes (length,
//! start) and emits, all refused once the handler returned.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use kbypass_core::engine::{BatchFrames, Lent, NewLen, Pick};
use kbypass_core::packet::reply::Reply;
use kbypass_core::packet::{edit, PacketMeta};
use kbypass_core::xsk::TxAsk;
use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::exceptions::{PyIndexError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::batch_emit::{checksum_ask, emit, tx_ask};
use crate::columns::Buffers;
use crate::errors::IntoPyResult;
use crate::packet::PcapWriter;
use crate::reply::{ip_arg, mac_arg, reply_err};
use crate::template::PyTemplate;
use crate::umem_window::UmemWindow;
use crate::views::{FrameView, UmemMemory};

/// One batch of received frames, valid only while the handler runs.
///
/// Columns are NumPy arrays of length `len(batch)`: `lengths` (uint32), `addrs` (uint64 UMEM
/// offsets of the packet data), `headers` (structured, `kbypass.packet.META_DTYPE`),
/// `verdicts` (uint8, writable, pre-filled with the pipeline's default) and `forward_to`
/// (uint16 socket index for FORWARD). `frame(i)` / `frames` are zero-copy, writable views of
/// the packet bytes; `umem` is a read-only window on the whole UMEM indexed as a (frames,
/// frame_size) array, so `umem[addrs // frame_size, addrs % frame_size + k]` gives byte k of
/// every packet at once (indexing it returns copies).
///
/// `set_length`/`set_lengths` change where a packet ends and `push_front`/`pop_front`/
/// `adjust_head` where it starts (into the room in front of it: the kernel's 256 bytes plus the
/// port's `headroom=`), within its frame, so a TX/FORWARD verdict sends the reshaped packet;
/// bytes added are zeroed, `lengths`, `addrs` and `headers` follow, and later `frame(i)` views
/// show the new span. `emit(data)` sends a new frame (a copy of `data`) after the batch's own.
///
/// After the handler returns, every method raises RuntimeError. What the handler kept stays
/// valid and never changes under it: a column array (or view of one) it kept is its own (the
/// next batch gets fresh buffers), and a frame whose view it kept is held, not recycled, until
/// the last view is gone (counted in `stats()["escaped"]`; a TX/FORWARD verdict then sends a
/// copy). Holding frames takes them from the pool: copy what you keep for long, or KEEP it.
///
/// Example:
///     >>> def handler(batch):
///     ...     h = batch.headers
///     ...     batch.verdicts[:] = np.where(h["dst_port"] == 9000, kbypass.TX, kbypass.DROP)
///     ...     batch.swap_macs(batch.verdicts == kbypass.TX)
#[pyclass(name = "Batch", module = "kbypass._core", frozen)]
pub struct PyBatch {
    n: usize,
    socket: usize,
    worker: usize,
    /// The worker's lease on the batch's frames, and which lease this batch is.
    frames: Arc<BatchFrames>,
    seq: u64,
    bufs: Arc<Buffers>,
    pub(crate) memory: UmemMemory,
    valid: AtomicBool,
    /// Owner of the views of frame `i` (once one was taken), checked when the handler returns.
    views: Mutex<Vec<Option<Py<FrameView>>>>,
}

impl PyBatch {
    /// The batch `lent` to a handler, over these buffers.
    pub fn new(
        lent: &Lent<'_, '_, '_>,
        frames: &Arc<BatchFrames>,
        bufs: &Arc<Buffers>,
        memory: &UmemMemory,
    ) -> Self {
        PyBatch {
            n: lent.len(),
            socket: lent.socket(),
            worker: lent.worker(),
            frames: Arc::clone(frames),
            seq: lent.seq(),
            bufs: Arc::clone(bufs),
            memory: memory.clone(),
            valid: AtomicBool::new(true),
            views: Mutex::new(Vec::new()),
        }
    }

    /// The handler returned: every method raises from now on.
    pub fn end(&self) {
        self.valid.store(false, Ordering::Release);
    }

    /// The owners of the views the handler took (to check whether they outlived it).
    pub fn take_views(&self) -> Vec<Option<Py<FrameView>>> {
        std::mem::take(&mut *self.lock_views())
    }

    pub(crate) fn check(&self) -> PyResult<()> {
        if !self.valid.load(Ordering::Acquire) {
            return Err(PyRuntimeError::new_err(
                "this Batch ended when the handler returned: its buffers are reused and its frames recycled; copy data you need inside the handler, or give frames the KEEP verdict",
            ));
        }
        Ok(())
    }

    fn lock_views(&self) -> MutexGuard<'_, Vec<Option<Py<FrameView>>>> {
        self.views.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A view of frame `j`, its owner shared by every view of that frame in this batch.
    fn view<'py>(&self, py: Python<'py>, j: usize) -> PyResult<Bound<'py, PyArray1<u8>>> {
        // The worker's descriptor, not the `addrs`/`lengths` a handler may have written to.
        let d = self.frames.desc(self.seq, j).py()?;
        let known = self
            .lock_views()
            .get(j)
            .and_then(|o| o.as_ref().map(|o| o.clone_ref(py)));
        let owner = match known {
            Some(o) => o.into_bound(py),
            None => {
                // Allocate without the lock held: a GC run here may run arbitrary Python.
                let o = self.memory.owner(py, None)?;
                let mut v = self.lock_views();
                // Under the lock the worker takes the owners with: an owner added after it
                // took them would never be checked.
                self.check()?;
                if v.len() < self.n {
                    v.resize_with(self.n, || None);
                }
                match &v[j] {
                    Some(other) => other.clone_ref(py).into_bound(py),
                    None => {
                        v[j] = Some(o.clone().unbind());
                        o
                    }
                }
            }
        };
        FrameView::array(&owner, d.addr, d.len)
    }

    fn col<'py>(&self, py: Python<'py>, arr: &Py<PyAny>) -> PyResult<Bound<'py, PyAny>> {
        self.check()?;
        self.bufs.head(py, arr, self.n)
    }

    /// Move frame `i`'s start by `delta` (see `adjust_head`).
    fn adjust_one(&self, py: Python<'_>, i: isize, delta: i32) -> PyResult<()> {
        self.check()?;
        let j = self.index(i)?;
        self.bufs.with_columns(py, |c| {
            self.frames
                .adjust_head(self.seq, Pick::One(j), delta, Some(c))
        })?;
        Ok(())
    }

    /// Frame index `i` (negative counts from the end), checked.
    fn index(&self, i: isize) -> PyResult<usize> {
        let n = self.n as isize;
        let j = if i < 0 { i + n } else { i };
        if !(0..n).contains(&j) {
            return Err(PyIndexError::new_err(format!(
                "frame {i} out of range for a batch of {n}"
            )));
        }
        Ok(j as usize)
    }

    /// `op` (`prepare_tx`, `reflect`) on the (masked) frames, with the checksums and timestamp
    /// `offload`/`timestamp` ask for.
    fn send_ready(
        &self,
        mask: Option<PyReadonlyArray1<'_, bool>>,
        offload: bool,
        timestamp: bool,
        op: impl FnOnce(&BatchFrames, u64, Pick<'_>, &TxAsk) -> kbypass_core::Result<usize>,
    ) -> PyResult<usize> {
        self.check()?;
        let ask = checksum_ask(offload, timestamp)?;
        let mask = mask.map(|m| m.as_array().to_vec());
        let pick = mask.as_deref().map_or(Pick::All, Pick::Mask);
        op(&self.frames, self.seq, pick, &ask).py()
    }

    /// Apply `f` to every (masked) frame through the lease; returns how many it changed.
    fn edit_each(
        &self,
        mask: Option<PyReadonlyArray1<'_, bool>>,
        f: impl FnMut(&mut [u8], &PacketMeta) -> bool,
    ) -> PyResult<usize> {
        self.check()?;
        let mask = mask.map(|m| m.as_array().to_vec());
        self.frames.edit(self.seq, mask.as_deref(), f).py()
    }
}

#[pymethods]
impl PyBatch {
    fn __len__(&self) -> usize {
        self.n
    }

    /// Pipeline-wide index of the socket the frames arrived on.
    #[getter]
    fn socket(&self) -> usize {
        self.socket
    }

    /// Index of the worker running the handler.
    #[getter]
    fn worker(&self) -> usize {
        self.worker
    }

    /// Whether the batch is still usable (False once the handler returned).
    #[getter]
    fn valid(&self) -> bool {
        self.valid.load(Ordering::Acquire)
    }

    /// Packet lengths (uint32, read-only: change them with `set_length`/`set_lengths`).
    #[getter]
    fn lengths<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.col(py, &self.bufs.lengths_ro)
    }

    /// UMEM offsets of the packet data (uint64, read-only: `push_front`/`pop_front`/
    /// `adjust_head` move them).
    #[getter]
    fn addrs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.col(py, &self.bufs.addrs_ro)
    }

    /// Parsed headers (structured array, `kbypass.packet.META_DTYPE`).
    #[getter]
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.col(py, &self.bufs.headers)
    }

    /// Verdicts (uint8, writable), pre-filled with the pipeline's default.
    #[getter]
    fn verdicts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let arr = self.bufs.verdicts.clone_ref(py).into_any();
        self.col(py, &arr)
    }

    /// Target socket index of FORWARD verdicts (uint16, writable; defaults to this socket).
    #[getter]
    fn forward_to<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let arr = self.bufs.forward_to.clone_ref(py).into_any();
        self.col(py, &arr)
    }

    /// A read-only window on the whole UMEM, indexed as a (frames, frame_size) uint8 array;
    /// indexing it returns copies (usable after the handler).
    #[getter]
    fn umem(slf: &Bound<'_, Self>) -> PyResult<UmemWindow> {
        let me = slf.get();
        me.check()?;
        Ok(UmemWindow::new(
            me.bufs.umem.clone_ref(slf.py()),
            slf.clone().unbind(),
        ))
    }

    /// Bytes per UMEM frame.
    #[getter]
    fn frame_size(&self) -> u32 {
        self.memory.frame_size
    }

    /// A zero-copy, writable uint8 view of frame `i`'s packet bytes. If the view outlives the
    /// handler, the frame is held until the view is gone (never recycled under it).
    fn frame<'py>(&self, py: Python<'py>, i: isize) -> PyResult<Bound<'py, PyArray1<u8>>> {
        self.check()?;
        let j = self.index(i)?;
        self.view(py, j)
    }

    /// Set frame `i`'s packet length to `n` bytes (its start stays): 14 (an Ethernet header)
    /// up to the end of its frame; bytes it grows by are zeroed. ValueError, and nothing
    /// changes, when `n` does not fit. `lengths[i]` and `headers[i]` follow.
    fn set_length(&self, py: Python<'_>, i: isize, n: u32) -> PyResult<()> {
        self.check()?;
        let j = self.index(i)?;
        self.bufs.with_columns(py, |c| {
            self.frames
                .set_len(self.seq, Pick::One(j), NewLen::Each(n), Some(c))
        })?;
        Ok(())
    }

    /// Set the packet length of every (masked) frame from `lengths` (one uint32 per frame;
    /// frames the mask leaves out keep theirs). All or nothing: ValueError naming the first
    /// frame whose length does not fit, and no frame changes. Returns how many changed.
    #[pyo3(signature = (lengths, mask=None))]
    fn set_lengths(
        &self,
        py: Python<'_>,
        lengths: &Bound<'_, PyAny>,
        mask: Option<PyReadonlyArray1<'_, bool>>,
    ) -> PyResult<usize> {
        self.check()?;
        let lengths = lengths.extract::<PyReadonlyArray1<'_, u32>>().map_err(|_| {
            PyTypeError::new_err(
                "lengths must be a 1-D uint32 array with one entry per frame, e.g. batch.lengths + 4 or np.asarray(x, np.uint32)",
            )
        })?;
        let lens = lengths.as_array().to_vec();
        let mask = mask.map(|m| m.as_array().to_vec());
        let pick = mask.as_deref().map_or(Pick::All, Pick::Mask);
        self.bufs.with_columns(py, |c| {
            self.frames
                .set_len(self.seq, pick, NewLen::PerFrame(&lens), Some(c))
        })
    }

    /// Push `n` zeroed bytes in front of frame `i`'s packet (its start moves `n` bytes back,
    /// into the room in front: the kernel's 256 bytes plus the port's `headroom=`), e.g. to add
    /// a VLAN tag or an outer header; write them through a fresh `frame(i)`. ValueError, and
    /// nothing changes, when the room is smaller.
    fn push_front(&self, py: Python<'_>, i: isize, n: u32) -> PyResult<()> {
        let delta = i32::try_from(n)
            .map_err(|_| PyValueError::new_err(format!("cannot push {n} bytes")))?;
        self.adjust_one(py, i, -delta)
    }

    /// Pop `n` bytes off the front of frame `i`'s packet (its start moves `n` bytes on), e.g.
    /// to strip a VLAN tag or an outer header. ValueError, and nothing changes, if fewer than
    /// 14 bytes (an Ethernet header) would stay.
    fn pop_front(&self, py: Python<'_>, i: isize, n: u32) -> PyResult<()> {
        let delta =
            i32::try_from(n).map_err(|_| PyValueError::new_err(format!("cannot pop {n} bytes")))?;
        self.adjust_one(py, i, delta)
    }

    /// Move the start of every (masked) frame's packet by `delta` bytes, as XDP's
    /// `bpf_xdp_adjust_head`: negative pushes `-delta` zeroed bytes in front, positive pops
    /// `delta` bytes. All or nothing: ValueError naming the first frame that cannot, and no
    /// frame changes. Returns how many changed.
    #[pyo3(signature = (delta, mask=None))]
    fn adjust_head(
        &self,
        py: Python<'_>,
        delta: i32,
        mask: Option<PyReadonlyArray1<'_, bool>>,
    ) -> PyResult<usize> {
        self.check()?;
        let mask = mask.map(|m| m.as_array().to_vec());
        let pick = mask.as_deref().map_or(Pick::All, Pick::Mask);
        self.bufs.with_columns(py, |c| {
            self.frames.adjust_head(self.seq, pick, delta, Some(c))
        })
    }

    /// Push a VLAN tag (id `vid`, priority `pcp`, `tpid` 0x8100 or 0x88a8 for 802.1ad) after
    /// the MAC addresses of every (masked) frame, into the room in front; returns how many.
    /// All or nothing (ValueError, no frame changes). `headers` follow.
    #[pyo3(signature = (vid, mask=None, *, pcp=0, tpid=0x8100))]
    fn push_vlan(
        &self,
        py: Python<'_>,
        vid: u16,
        mask: Option<PyReadonlyArray1<'_, bool>>,
        pcp: u8,
        tpid: u16,
    ) -> PyResult<usize> {
        self.check()?;
        if vid > 4095 || pcp > 7 {
            return Err(PyValueError::new_err(format!(
                "vid={vid}, pcp={pcp}: a VLAN id is 0..=4095 and a priority 0..=7"
            )));
        }
        let tci = (pcp as u16) << 13 | vid;
        let mask = mask.map(|m| m.as_array().to_vec());
        let pick = mask.as_deref().map_or(Pick::All, Pick::Mask);
        self.bufs.with_columns(py, |c| {
            self.frames.push_vlan(self.seq, pick, tpid, tci, Some(c))
        })
    }

    /// Pop the outer VLAN tag of every (masked) frame that has one; returns how many had one.
    /// `headers` follow.
    #[pyo3(signature = (mask=None))]
    fn pop_vlan(
        &self,
        py: Python<'_>,
        mask: Option<PyReadonlyArray1<'_, bool>>,
    ) -> PyResult<usize> {
        self.check()?;
        let mask = mask.map(|m| m.as_array().to_vec());
        let pick = mask.as_deref().map_or(Pick::All, Pick::Mask);
        self.bufs
            .with_columns(py, |c| self.frames.pop_vlan(self.seq, pick, Some(c)))
    }

    /// Answer every (masked) frame in place with one kind of reply (`kbypass.packet.reply`'s
    /// kinds and arguments): the reply may grow into the rest of its frame, `lengths` and
    /// `headers` follow, and frames it does not answer are left as they were. Returns which
    /// frames were answered (a bool array: e.g. `batch.verdicts[answered] = TX`). With
    /// `checksum="offload"` a UDP/TCP answer's checksum is left to the kernel or device (AF_XDP
    /// TX metadata; computed here, counted in the socket's `stats()["tx_csum_software"]`, where
    /// the socket cannot), and `timestamp=True` asks each answer's TX time
    /// (`XdpSocket.tx_timestamps()`); OSError(EOPNOTSUPP) when the socket cannot give one.
    #[pyo3(signature = (kind, mask=None, *, payload=None, mac=None, ip=None, checksum=None,
        timestamp=false))]
    #[allow(clippy::too_many_arguments)]
    fn reply<'py>(
        &self,
        py: Python<'py>,
        kind: &str,
        mask: Option<PyReadonlyArray1<'_, bool>>,
        payload: Option<Vec<u8>>,
        mac: Option<&Bound<'_, PyAny>>,
        ip: Option<&Bound<'_, PyAny>>,
        checksum: Option<&str>,
        timestamp: bool,
    ) -> PyResult<Bound<'py, PyArray1<bool>>> {
        self.check()?;
        let ask = tx_ask(checksum, timestamp, None)?;
        let (mac, ip) = (mac.map(mac_arg).transpose()?, ip.map(ip_arg).transpose()?);
        let reply = Reply::new(kind, payload.as_deref(), mac.as_deref(), ip.as_deref())
            .map_err(reply_err)?;
        let mask = mask.map(|m| m.as_array().to_vec());
        let pick = mask.as_deref().map_or(Pick::All, Pick::Mask);
        let mut answered = vec![false; self.n];
        self.bufs.with_columns(py, |c| {
            self.frames
                .reply(self.seq, pick, &reply, &ask, &mut answered, Some(c))
        })?;
        Ok(PyArray1::from_vec(py, answered))
    }

    /// Parse the (masked) frames again into `headers` (and `lengths`, `addrs`), e.g. after
    /// writing a new header into bytes pushed in front; returns how many. A reshape parses
    /// the frames it changes by itself, before anything is written into them.
    #[pyo3(signature = (mask=None))]
    fn reparse(&self, py: Python<'_>, mask: Option<PyReadonlyArray1<'_, bool>>) -> PyResult<usize> {
        self.check()?;
        let mask = mask.map(|m| m.as_array().to_vec());
        let pick = mask.as_deref().map_or(Pick::All, Pick::Mask);
        self.bufs
            .with_columns(py, |c| self.frames.reparse(self.seq, pick, c))
    }

    /// Send a new frame holding a copy of `data` (bytes-like or a 1-D uint8 array, 14 bytes up
    /// to a frame's room) after the batch's own TX/FORWARD frames, out of socket `socket`
    /// (pipeline-wide index of a socket this worker owns; None: the batch's). Returns False,
    /// counted in `stats()["emit_failed"]`, when no UMEM frame is free; sent ones are counted
    /// in `emitted`. ValueError for a bad size or socket; RuntimeError past the per-batch limit
    /// (max(batch size, 64) frames). `checksum`: None sends the bytes as they are,
    /// "software" computes the IPv4 and UDP/TCP checksums, "offload" leaves the UDP/TCP one to
    /// the kernel or device through AF_XDP TX metadata (the port opened with `tx_metadata=`;
    /// where the socket cannot, it is computed here and counted in the socket's
    /// `stats()["tx_csum_software"]`). `timestamp=True` asks the frame's TX time
    /// (`XdpSocket.tx_timestamps()`), `launch_time` (ns, Linux >= 6.15) a time to send it at;
    /// OSError(EOPNOTSUPP) when the socket cannot give either.
    #[pyo3(signature = (data, socket=None, *, checksum=None, timestamp=false, launch_time=None))]
    fn emit(
        &self,
        data: &Bound<'_, PyAny>,
        socket: Option<usize>,
        checksum: Option<&str>,
        timestamp: bool,
        launch_time: Option<u64>,
    ) -> PyResult<bool> {
        self.check()?;
        let ask = tx_ask(checksum, timestamp, launch_time)?;
        emit(&self.frames, self.seq, data, socket, &ask)
    }

    /// Send `count` new frames made from `template` (a `kbypass.packet.Template`) after the
    /// batch's own, out of `socket` (as `emit`), all filled in Rust in one call: `fields` maps
    /// field names to one value for all (an int, an address or MAC string) or a column with
    /// one per packet (a NumPy array or list; IPv6 addresses also as an (n, 16) uint8 array),
    /// and "payload" to bytes or a list of bytes; lengths and IPv4/UDP/TCP checksums are set
    /// for each frame. `count` None: the length of the columns (else 1). Returns how many
    /// went; the rest found no free UMEM frame and are counted in `stats()["emit_failed"]`.
    /// ValueError/KeyError (nothing sent) for a bad field, value, size or socket; RuntimeError
    /// past the per-batch limit (max(batch size, 64) frames).
    #[pyo3(signature = (template, count=None, *, fields=None, socket=None))]
    fn emit_template(
        &self,
        template: &Bound<'_, PyTemplate>,
        count: Option<usize>,
        fields: Option<&Bound<'_, PyDict>>,
        socket: Option<usize>,
    ) -> PyResult<usize> {
        self.check()?;
        crate::batch_emit::emit_template(&self.frames, self.seq, template, count, fields, socket)
    }

    /// Zero-copy views of every frame (one NumPy object each: slower than the columns).
    #[getter]
    fn frames<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.check()?;
        let views = (0..self.n)
            .map(|j| self.view(py, j))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, views)
    }

    /// Swap Ethernet source and destination of the (masked) frames; returns how many.
    #[pyo3(signature = (mask=None))]
    fn swap_macs(&self, mask: Option<PyReadonlyArray1<'_, bool>>) -> PyResult<usize> {
        self.edit_each(mask, |f, _| edit::swap_macs(f))
    }

    /// Swap IPv4/IPv6 source and destination of the (masked) frames; returns how many.
    #[pyo3(signature = (mask=None))]
    fn swap_ips(&self, mask: Option<PyReadonlyArray1<'_, bool>>) -> PyResult<usize> {
        self.edit_each(mask, edit::swap_ips)
    }

    /// Swap UDP/TCP source and destination ports of the (masked) frames; returns how many.
    #[pyo3(signature = (mask=None))]
    fn swap_ports(&self, mask: Option<PyReadonlyArray1<'_, bool>>) -> PyResult<usize> {
        self.edit_each(mask, edit::swap_ports)
    }

    /// Recompute the IPv4 header and UDP/TCP checksums of the (masked) frames; returns how
    /// many frames got a valid L4 checksum. With `offload=True` the UDP/TCP checksum is left
    /// to the kernel or device through AF_XDP TX metadata (the port opened with
    /// `tx_metadata=`; computed here, and counted in the socket's
    /// `stats()["tx_csum_software"]`, where the socket cannot); `timestamp=True` asks each
    /// frame's TX time (`XdpSocket.tx_timestamps()`; OSError(EOPNOTSUPP) when the socket cannot
    /// give one). The request goes with the frame through later reshapes; each call replaces
    /// the frame's earlier one (call it after changing a packet's length).
    #[pyo3(signature = (mask=None, *, offload=false, timestamp=false))]
    fn fix_checksums(
        &self,
        mask: Option<PyReadonlyArray1<'_, bool>>,
        offload: bool,
        timestamp: bool,
    ) -> PyResult<usize> {
        self.send_ready(mask, offload, timestamp, BatchFrames::prepare_tx)
    }

    /// Turn the (masked) frames round to their senders in one call: Ethernet, IP and UDP/TCP
    /// source and destination swapped and the checksums recomputed (`swap_macs`, `swap_ips`,
    /// `swap_ports` and `fix_checksums` at once; `offload` and `timestamp` as there). Returns
    /// how many had their IP addresses and ports swapped.
    #[pyo3(signature = (mask=None, *, offload=false, timestamp=false))]
    fn reflect(
        &self,
        mask: Option<PyReadonlyArray1<'_, bool>>,
        offload: bool,
        timestamp: bool,
    ) -> PyResult<usize> {
        self.send_ready(mask, offload, timestamp, BatchFrames::reflect)
    }

    /// A copy of frame `i`'s packet bytes `[start:stop]` (negative and out-of-range bounds as
    /// in slicing): a look at a few bytes of one frame without making a NumPy view.
    #[pyo3(signature = (i, start=0, stop=None))]
    fn bytes<'py>(
        &self,
        py: Python<'py>,
        i: isize,
        start: isize,
        stop: Option<isize>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        self.check()?;
        let j = self.index(i)?;
        // Made under the lease's lock, as `Packet.bytes`: a bytes object is not tracked by the
        // garbage collector, so allocating one runs no Python that could want the lock.
        self.frames
            .read_one(self.seq, j, |f| {
                let (a, b) = slice_bounds(f.len(), start, stop);
                PyBytes::new(py, &f[a..b])
            })
            .py()?
            .ok_or_else(|| PyRuntimeError::new_err("frame not held"))
    }

    /// Write `value` at byte `offset` from the start of the chosen header (`base`: "l2", "l3",
    /// "l4" or "payload") of the (masked) frames that are long enough; returns how many.
    /// Checksums are not updated: call `fix_checksums` after.
    #[pyo3(signature = (offset, value, mask=None, base="l2"))]
    fn set_field(
        &self,
        offset: usize,
        value: &[u8],
        mask: Option<PyReadonlyArray1<'_, bool>>,
        base: &str,
    ) -> PyResult<usize> {
        let base: edit::HeaderBase = base.parse().py()?;
        self.edit_each(mask, |f, m| edit::set_field(f, m, base, offset, value))
    }

    /// Append the (masked) frames to a `kbypass.packet.PcapWriter`; returns how many.
    #[pyo3(signature = (writer, mask=None))]
    fn to_pcap(
        &self,
        writer: &Bound<'_, PcapWriter>,
        mask: Option<PyReadonlyArray1<'_, bool>>,
    ) -> PyResult<usize> {
        self.check()?;
        let mask = mask.map(|m| m.as_array().to_vec());
        let mut w = writer.borrow_mut();
        let out = w.writer()?;
        let ts = kbypass_core::packet::pcap::now_ns();
        let mut failed = None;
        let k = self
            .frames
            .read(self.seq, mask.as_deref(), |frame| {
                failed.is_none()
                    && match out.write_frame(ts, frame) {
                        Ok(()) => true,
                        Err(e) => {
                            failed = Some(e);
                            false
                        }
                    }
            })
            .py()?;
        match failed {
            Some(e) => Err(crate::packet::io_err("write pcap record", e)),
            None => Ok(k),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Batch({} frames, socket {}{})",
            self.n,
            self.socket,
            if self.valid() { "" } else { ", ended" }
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyBatch>()?;
    Ok(())
}

/// `[start:stop]` of a sequence of `len` items as Python slices it (negative bounds count from
/// the end; bounds past either end are clipped).
fn slice_bounds(len: usize, start: isize, stop: Option<isize>) -> (usize, usize) {
    let n = len as isize;
    let at = |i: isize| (if i < 0 { i + n } else { i }).clamp(0, n) as usize;
    let (a, b) = (at(start), stop.map_or(len, at));
    (a, b.max(a))
}
