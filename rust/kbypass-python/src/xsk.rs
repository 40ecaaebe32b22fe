//! `kbypass.XdpSocket`: one AF_XDP socket of a port for Python (the port's shared state is in
//! `port.rs`, the frames a receive holds, `RxBatch`, in `held.rs`).
//!
//! Every call runs on the port's `SharedPort` with the GIL released (`PortHandle::with_socket`);
//! waits come back every `SIGNAL_CHECK` to check for Ctrl-C. Received frames are held
//! (`FrameHold`) by their `RxBatch` and by every view taken from it, so releasing a batch or
//! dropping it needs no lock and never lets a view see a recycled frame.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kbypass_core::traffic::xsk::{rx_drop, tx_flood};
use kbypass_core::traffic::StopWhen;
use kbypass_core::xsk::Queues;
use numpy::{PyReadonlyArray1, PyReadonlyArray2};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::held::PyRxBatch;
use crate::port::{account_dict, open_port, PortArgs, PortHandle, SIGNAL_CHECK};
use crate::traffic::throughput_dict;

/// An AF_XDP socket on one interface queue, with its own UMEM and XDP program.
///
/// Frames matching `filter` (all frames when None) arrive on the socket; everything else goes to
/// the kernel as usual. Open it inside the interface's network namespace. Needs root
/// (CAP_NET_ADMIN, CAP_BPF, CAP_IPC_LOCK).
///
/// Example:
///     >>> with XdpSocket("eth0", queue=0, filter="udp dst port 9000") as sock:
///     ...     with sock.recv(max=64, timeout=1.0) as batch:
///     ...         for i in range(len(batch)):
///     ...             print(bytes(batch[i][:14]).hex())
#[pyclass(name = "XdpSocket", module = "kbypass._core", frozen)]
pub struct PyXdpSocket {
    pub(crate) handle: Arc<PortHandle>,
    pub(crate) index: usize,
}

#[pymethods]
impl PyXdpSocket {
    #[new]
    #[pyo3(signature = (ifname, queue=0, mode="auto", filter=None, frames=4096, frame_size=2048,
        hugepages="auto", busy_poll=false, *, xdp_mode="auto", force=false, need_wakeup=true,
        multi_buffer=false, ring_size=2048, headroom=0, tx_metadata=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        ifname: &str,
        queue: u32,
        mode: &str,
        filter: Option<&Bound<'_, PyAny>>,
        frames: u32,
        frame_size: u32,
        hugepages: &str,
        busy_poll: bool,
        xdp_mode: &str,
        force: bool,
        need_wakeup: bool,
        multi_buffer: bool,
        ring_size: u32,
        headroom: u32,
        tx_metadata: Option<&str>,
    ) -> PyResult<Self> {
        let args = PortArgs {
            mode,
            filter,
            frames,
            frame_size,
            hugepages,
            busy_poll,
            xdp_mode,
            force,
            need_wakeup,
            multi_buffer,
            ring_size,
            headroom,
            tx_metadata,
            program: None,
        };
        let handle = open_port(py, ifname, Queues::List(vec![queue]), args.config()?)?;
        Ok(PyXdpSocket { handle, index: 0 })
    }

    /// Receive up to `max` frames. With `timeout` (seconds), wait for the first one without
    /// holding the GIL (Ctrl-C interrupts the wait); returns an empty batch on timeout.
    #[pyo3(signature = (max=64, timeout=None))]
    fn recv(&self, py: Python<'_>, max: usize, timeout: Option<f64>) -> PyResult<PyRxBatch> {
        if max == 0 || max > 4096 {
            return Err(PyValueError::new_err(format!("max={max} must be 1..=4096")));
        }
        let wait = match timeout {
            Some(t) if !(0.0..=86_400.0).contains(&t) => {
                return Err(PyValueError::new_err(
                    "timeout must be between 0 and 86400 seconds",
                ))
            }
            Some(t) => Some(Duration::from_secs_f64(t)),
            None => None,
        };
        let deadline = wait.map(|w| Instant::now() + w);
        loop {
            // One slice: receive, else wait up to SIGNAL_CHECK and receive again. The port's
            // mutex is held for the slice only, the GIL not at all. Every frame received is
            // held from now on: no lock is needed to give it back, and no view of it can
            // outlive its hold.
            let left = deadline.map(|d| {
                d.saturating_duration_since(Instant::now())
                    .min(SIGNAL_CHECK)
            });
            let frames = self
                .handle
                .with_socket(py, self.index, |s| s.recv_held(max, left))?;
            let expired = deadline.is_none_or(|d| Instant::now() >= d);
            if !frames.is_empty() || expired {
                return Ok(PyRxBatch::new(Arc::clone(&self.handle), self.index, frames));
            }
            py.check_signals()?;
        }
    }

    /// Send packets (a list of bytes-like objects, or a 2-D uint8 array with `lengths`), each
    /// copied into a free frame. Returns how many were queued; packets larger than a frame are
    /// skipped and counted in `stats()["tx_oversize"]`. `checksum`, `timestamp` and
    /// `launch_time` as `Batch.emit` (AF_XDP TX metadata: open the socket with
    /// `tx_metadata=`); OSError(EOPNOTSUPP), nothing sent, for a timestamp or launch time the
    /// socket cannot give.
    #[pyo3(signature = (packets, lengths=None, *, checksum=None, timestamp=false,
        launch_time=None))]
    fn send(
        &self,
        py: Python<'_>,
        packets: &Bound<'_, PyAny>,
        lengths: Option<PyReadonlyArray1<'_, u32>>,
        checksum: Option<&str>,
        timestamp: bool,
        launch_time: Option<u64>,
    ) -> PyResult<usize> {
        let ask = crate::batch_emit::tx_ask(checksum, timestamp, launch_time)?;
        let data: Vec<Vec<u8>> = if let Ok(arr) = packets.extract::<PyReadonlyArray2<'_, u8>>() {
            let a = arr.as_array();
            let lens: Vec<u32> = match &lengths {
                Some(l) => l.as_slice()?.to_vec(),
                None => vec![a.ncols() as u32; a.nrows()],
            };
            if lens.len() != a.nrows() {
                return Err(PyValueError::new_err("lengths must have one entry per row"));
            }
            a.rows()
                .into_iter()
                .zip(&lens)
                .map(|(r, &l)| r.iter().take(l as usize).copied().collect())
                .collect()
        } else if let Ok(b) = buf_bytes(py, packets) {
            vec![b]
        } else if let Ok(list) = packets.try_iter() {
            let mut v = Vec::new();
            for p in list {
                v.push(buf_bytes(py, &p?).map_err(|_| {
                    PyTypeError::new_err(
                        "each packet must be bytes, bytearray, memoryview or a 1-D uint8 array",
                    )
                })?);
            }
            v
        } else {
            return Err(PyTypeError::new_err(
                "packets must be bytes, a list of bytes-like objects, or a 2-D uint8 array",
            ));
        };
        let r = self.handle.with_socket(py, self.index, move |s| {
            let packets: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            s.send_copies_with(&packets, ask)
        })?;
        self.handle
            .tx_oversize
            .fetch_add(r.oversize as u64, Ordering::Relaxed);
        Ok(r.queued)
    }

    /// TX timestamps the kernel reported for frames sent with TX metadata (the port opened
    /// with `tx_metadata=`; `emit_template` asks one for each frame it makes), taken: a list of
    /// (UMEM address, CLOCK_TAI nanoseconds), oldest first (at most 65536 are kept until
    /// taken). Frames whose driver reports none count in `stats()["tx_timestamps_missing"]`.
    fn tx_timestamps(&self, py: Python<'_>) -> PyResult<Vec<(u64, u64)>> {
        self.handle.with_socket(py, self.index, |s| {
            s.complete();
            Ok(s.take_tx_timestamps())
        })
    }

    /// What the socket's UMEM can ask of the kernel or device through AF_XDP TX metadata, for
    /// every socket bound on it: {"checksum", "timestamp", "launch_time"} (all False without
    /// `tx_metadata=`; in copy mode the kernel does them, in zero-copy mode the driver, as its
    /// netdev `xsk-features` say).
    #[getter]
    fn tx_offloads(&self, py: Python<'_>) -> PyResult<std::collections::HashMap<String, bool>> {
        let c = self
            .handle
            .with_socket(py, self.index, |s| Ok(s.umem().tx_caps()))?;
        Ok([
            ("checksum", c.checksum),
            ("timestamp", c.timestamp),
            ("launch_time", c.launch_time),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect())
    }

    /// Reap transmitted frames back to the pool; returns how many.
    fn complete(&self, py: Python<'_>) -> PyResult<usize> {
        self.handle
            .with_socket(py, self.index, |s| Ok(s.complete()))
    }

    /// Receive and drop in a Rust loop (the GIL released) for `duration` seconds or `count`
    /// packets; returns {packets, bytes, elapsed, pps}.
    #[pyo3(signature = (duration=None, count=None, batch=64, idle=None))]
    fn rx_drop<'py>(
        &self,
        py: Python<'py>,
        duration: Option<f64>,
        count: Option<u64>,
        batch: usize,
        idle: Option<f64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        if duration.is_none() && count.is_none() {
            return Err(PyValueError::new_err(
                "give duration (seconds) or count (packets)",
            ));
        }
        let when = StopWhen {
            count,
            duration: duration.map(Duration::from_secs_f64),
            idle: Duration::from_secs_f64(idle.unwrap_or(3600.0)),
            stop: None,
        };
        let t = self
            .handle
            .with_socket_interruptible(py, self.index, move |s, stop| {
                rx_drop(
                    s,
                    batch,
                    StopWhen {
                        stop: Some(stop),
                        ..when
                    },
                )
            })?;
        throughput_dict(py, &t)
    }

    /// Send `count` copies of `frame` in a Rust loop (the GIL released); returns
    /// {packets, bytes, elapsed, pps}. `fresh`: copy the frame into UMEM for every send (what a
    /// sender of new data pays) instead of writing each UMEM frame once; a frame longer than one
    /// UMEM frame is always sent fresh, split over several, on a `multi_buffer` socket.
    #[pyo3(signature = (frame, count, batch=64, *, fresh=false))]
    fn tx_flood<'py>(
        &self,
        py: Python<'py>,
        frame: &[u8],
        count: u64,
        batch: usize,
        fresh: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let frame = frame.to_vec();
        let t = self
            .handle
            .with_socket_interruptible(py, self.index, move |s, stop| {
                tx_flood(s, &frame, count, batch, fresh, Some(stop))
            })?;
        throughput_dict(py, &t)
    }

    /// Counters: ours (rx/tx packets and bytes, completions, fill-ring empty, invalid
    /// descriptors, ring full, wake-ups and the wake-ups the kernel refused), the kernel's
    /// XDP_STATISTICS, and frame accounting.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (c, k, a, ts_dropped, off) = self.handle.with_socket(py, self.index, |s| {
            Ok((
                s.counters(),
                s.kernel_stats()?,
                s.account(),
                s.tx_timestamps_dropped(),
                s.umem().tx_offload_counts(),
            ))
        })?;
        let d = PyDict::new(py);
        d.set_item("rx_packets", c.rx_packets)?;
        d.set_item("rx_descs", c.rx_descs)?;
        d.set_item("rx_bytes", c.rx_bytes)?;
        d.set_item("tx_packets", c.tx_packets)?;
        d.set_item("tx_bytes", c.tx_bytes)?;
        d.set_item("tx_completions", c.tx_completions)?;
        d.set_item("fill_empty", c.fill_empty)?;
        d.set_item("invalid_descs", c.invalid_descs)?;
        d.set_item("tx_ring_full", c.tx_ring_full)?;
        d.set_item(
            "tx_oversize",
            self.handle.tx_oversize.load(Ordering::Relaxed),
        )?;
        d.set_item(
            "auto_released",
            self.handle.auto_released.load(Ordering::Relaxed),
        )?;
        d.set_item("rx_wakeups", c.rx_wakeups)?;
        d.set_item("tx_wakeups", c.tx_wakeups)?;
        d.set_item("wakeup_errors", c.wakeup_errors)?;
        d.set_item("tx_metadata", c.tx_metadata)?;
        d.set_item("tx_timestamps", c.tx_timestamps)?;
        d.set_item("tx_timestamps_missing", c.tx_timestamps_missing)?;
        d.set_item("tx_timestamps_dropped", ts_dropped)?;
        d.set_item("tx_csum_offload", off.csum_offload)?;
        d.set_item("tx_csum_software", off.csum_software)?;
        d.set_item("kernel_rx_dropped", k.rx_dropped)?;
        d.set_item("kernel_rx_invalid_descs", k.rx_invalid_descs)?;
        d.set_item("kernel_tx_invalid_descs", k.tx_invalid_descs)?;
        d.set_item("kernel_rx_ring_full", k.rx_ring_full)?;
        d.set_item("kernel_rx_fill_ring_empty", k.rx_fill_ring_empty_descs)?;
        d.set_item("kernel_tx_ring_empty", k.tx_ring_empty_descs)?;
        d.set_item("frames_free", a.free)?;
        d.set_item("frames_rx_side", a.rx_side)?;
        d.set_item("frames_app", a.app)?;
        d.set_item("frames_held", a.held)?;
        d.set_item("frames_tx_side", a.tx_side)?;
        d.set_item("frames_total", a.total)?;
        Ok(d)
    }

    /// Check that every frame is in exactly one place; returns the counts (and `balanced`) or
    /// raises RuntimeError saying where they differ.
    fn check_accounting<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let a = self
            .handle
            .with_socket(py, self.index, |s| s.check_accounting())?;
        account_dict(py, &a)
    }

    /// The socket's file descriptor (for select/poll).
    fn fileno(&self, py: Python<'_>) -> PyResult<i32> {
        self.handle.with_socket(py, self.index, |s| Ok(s.raw_fd()))
    }

    /// Interface name.
    #[getter]
    fn ifname(&self) -> &str {
        &self.handle.ifname
    }

    /// Queue id.
    #[getter]
    fn queue(&self) -> u32 {
        self.handle.queues[self.index]
    }

    /// "zerocopy" or "copy": what the bind got.
    #[getter]
    fn mode(&self) -> &'static str {
        if self.handle.zerocopy[self.index] {
            "zerocopy"
        } else {
            "copy"
        }
    }

    /// "native" or "generic": how the XDP program is attached.
    #[getter]
    fn xdp_mode(&self) -> &str {
        &self.handle.xdp_mode
    }

    /// Fallbacks taken while opening (zero-copy refused, native XDP refused, …).
    #[getter]
    fn notes(&self) -> Vec<String> {
        self.handle.notes.clone()
    }

    /// Bytes per UMEM frame.
    #[getter]
    fn frame_size(&self) -> u32 {
        self.handle.memory.frame_size
    }

    /// Frames in the UMEM.
    #[getter]
    fn frames(&self) -> u32 {
        self.handle.memory.frames
    }

    /// Page tier of the UMEM: "1g", "2m", "thp" or "4k".
    #[getter]
    fn tier(&self) -> &'static str {
        self.handle.tier
    }

    /// Whether the socket (its port) is closed.
    #[getter]
    fn closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Detach the program, close the socket(s) and free the UMEM. Idempotent. Views of frames
    /// stay valid memory (they hold the UMEM's memory) but are no longer meaningful.
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.handle.close());
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "XdpSocket({:?}, queue={}, mode={:?}, xdp_mode={:?}, frames={}, frame_size={})",
            self.handle.ifname,
            self.queue(),
            self.mode(),
            self.handle.xdp_mode,
            self.handle.memory.frames,
            self.handle.memory.frame_size
        )
    }
}

/// The bytes of any object exporting a byte buffer (bytes, bytearray, memoryview, uint8 array).
fn buf_bytes(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let b = pyo3::buffer::PyBuffer::<u8>::get(obj)?;
    b.to_vec(py)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyXdpSocket>()?;
    Ok(())
}
