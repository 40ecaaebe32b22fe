//! The worker thread: poll, parse, call, apply (see the [module docs](super)).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::build::{self, EmitRules, Emitted, Reshape};
use super::handoff::{self, Handoff, MAX_PACKET_BUFS};
use super::idle::{busy_poll_for, Idle, Latency, Waited};
use super::kept::{Kept, KeptQueue};
use super::{DROP, FORWARD, KEEP, TX};
use crate::error::{Error, Result};
use crate::mem::PoolCache;
use crate::packet::{parse, PacketMeta};
use crate::sys::event::EventFd;
use crate::sys::xdp::XdpDesc;
use crate::xsk::{BusyPoll, FrameHold, HeldFrames, Umem, XskSocket, XDP_PACKET_HEADROOM};

/// What to do with a batch whose handler failed (raised, returned the wrong type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Every frame of the batch goes back to the FILL ring.
    Drop,
    /// Every frame gets the pipeline's default verdict, as if the handler had accepted the
    /// batch untouched (AF_XDP cannot hand a frame back to the kernel's stack, so this is the
    /// nearest thing to "let it through").
    Pass,
    /// Drop the batch and stop all workers of the pipeline.
    Stop,
}

impl std::str::FromStr for OnError {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "drop" => Ok(OnError::Drop),
            "pass" => Ok(OnError::Pass),
            "stop" => Ok(OnError::Stop),
            o => Err(Error::invalid(format!(
                "on_error={o:?}: use \"drop\", \"pass\" or \"stop\""
            ))),
        }
    }
}

impl OnError {
    /// The verdict of a frame whose handler failed (its whole batch, or the one packet in
    /// per-packet mode), `default` being the pipeline's default verdict.
    #[inline]
    pub fn verdict(self, default: u8) -> u8 {
        match self {
            OnError::Pass => default,
            OnError::Drop | OnError::Stop => DROP,
        }
    }

    /// Whether a failure stops the pipeline (after the batch it happened in).
    #[inline]
    pub fn stops(self) -> bool {
        self == OnError::Stop
    }
}

/// The handler failed on a batch; the worker counts it and applies [`OnError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandlerError;

/// What became of a frame of the batch beyond its verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Slot {
    /// The batch's own: the verdict applies to it.
    #[default]
    Own,
    /// Held by a [`FrameHold`] the handler took: the worker leaves it alone.
    Held,
    /// Held, and a copy (now in the descriptor) takes its place for the TX/FORWARD verdict.
    Copied(u32),
}

/// One batch as the handler sees it. Slices are `n` long (the frames received).
///
/// Built only by the worker: it lends the handler the batch's frames, which are the worker's
/// until the verdicts are applied. A frame the handler needs beyond that (a KEEP handle, a view
/// that outlived the call) is taken with [`BatchCtx::keep`] or [`BatchCtx::hold_view`]; the
/// worker then never recycles it, and it returns to the pool when its last hold is dropped.
///
/// A handler may also reshape a frame ([`BatchCtx::set_len`], [`BatchCtx::adjust_head`]: the
/// descriptor the verdict sends changes) and emit new frames ([`BatchCtx::emit`]), which the
/// worker sends after the batch's own TX and FORWARD frames (see [`super::build`]).
pub struct BatchCtx<'a> {
    /// Pipeline-wide index of the socket the frames arrived on.
    pub socket: usize,
    /// Index of the worker.
    pub worker: usize,
    /// Parsed headers, one per frame.
    pub metas: &'a [PacketMeta],
    /// Verdicts, pre-filled with the default; the handler overwrites them.
    pub verdicts: &'a mut [u8],
    /// Target socket (pipeline-wide index) of FORWARD verdicts.
    pub forward_to: &'a mut [u16],
    /// The UMEM the frames are in.
    pub umem: &'a Umem,
    /// Errors the handler absorbed itself (a per-packet layer counts per packet here, see
    /// [`BatchCtx::fail_packet`]).
    pub errors: u64,
    /// Set by the handler to stop the pipeline after this batch.
    pub stop: bool,
    default_verdict: u8,
    on_error: OnError,
    pub(super) descs: &'a mut [XdpDesc],
    slots: &'a mut [Slot],
    sock: &'a mut XskSocket,
    kept: Option<&'a KeptQueue>,
    stats: &'a Arc<WorkerStats>,
    held: usize,
    escaped: u64,
    copied: u64,
    copy_failed: u64,
    /// Pipeline-wide index of each of the worker's sockets, by local index.
    sockets: &'a [usize],
    /// Local index of the batch's socket.
    local: usize,
    emit_limit: usize,
    pub(super) emits: &'a mut Vec<Emitted>,
    pub(super) emit_failed: u64,
}

impl BatchCtx<'_> {
    /// Frames in the batch.
    pub fn len(&self) -> usize {
        self.descs.len()
    }

    /// Whether the batch is empty (never, for a batch a worker hands out).
    pub fn is_empty(&self) -> bool {
        self.descs.is_empty()
    }

    /// The descriptors (UMEM address of packet data, length).
    pub fn descs(&self) -> &[XdpDesc] {
        self.descs
    }

    /// Pipeline-wide indexes of the worker's sockets: where FORWARD and [`BatchCtx::emit`]
    /// may send.
    pub fn sockets(&self) -> &[usize] {
        self.sockets
    }

    /// Frames emitted so far in this batch.
    pub fn emitted(&self) -> usize {
        self.emits.len()
    }

    /// What an emit from this batch may do (the lease copies it).
    pub(super) fn emit_rules(&self) -> EmitRules<'_> {
        EmitRules {
            sockets: self.sockets,
            local: self.local,
            limit: self.emit_limit,
        }
    }

    /// Swap the batch socket's cache of free frames with `other` (a lease borrows it for the
    /// handler call, and gives it back the same way).
    pub(super) fn swap_cache(&mut self, other: &mut PoolCache) {
        self.sock.swap_cache(other);
    }

    /// Set frame `i`'s packet length to `len` (its start stays): a TX/FORWARD verdict sends
    /// `len` bytes. The packet must stay inside its frame and keep an Ethernet header
    /// ([`crate::xsk::MIN_PACKET`]); bytes it grows by are zeroed. An error (nothing changes)
    /// when it does not fit, `i` is out of range, the frame is held, or it is one buffer of a
    /// multi-buffer packet. [`BatchCtx::metas`] keep describing the frame as received.
    pub fn set_len(&mut self, i: usize, len: u32) -> Result<()> {
        self.reshape(i, Reshape::Len(len))
    }

    /// Move frame `i`'s first byte by `delta` (as `bpf_xdp_adjust_head`: negative pushes
    /// `-delta` zeroed bytes in front of the packet, into the room before it — the kernel's
    /// 256 bytes plus the port's `headroom` for a received frame; positive pops `delta` bytes
    /// off the front); the end stays. Errors as [`BatchCtx::set_len`].
    pub fn adjust_head(&mut self, i: usize, delta: i32) -> Result<()> {
        self.reshape(i, Reshape::Head(delta))
    }

    fn reshape(&mut self, i: usize, op: Reshape) -> Result<()> {
        if self.slots.get(i).is_some_and(|s| *s != Slot::Own) {
            return Err(Error::State(format!(
                "frame {i} is held (kept, or a view of it outlives the batch): its bytes and span no longer change"
            )));
        }
        let new = build::check(self.umem, self.descs, i, op)?;
        let old = self.descs[i];
        let (lo, len) = build::span(&old, &new);
        // SAFETY: the frame is this batch's and not held (checked above), so neither the kernel
        // nor a ring nor a hold has it; `&mut self` makes this the only Rust borrow of the
        // batch's frames, and views handed out of Rust are the caller's, who does not run them
        // while this borrow lives. `frame_bytes_mut` checks the range lies inside the frame.
        let bytes = unsafe { super::frame_bytes_mut(self.umem, lo, len) }
            .ok_or_else(|| Error::State(format!("frame {i} is not there to reshape")))?;
        build::zero_added(bytes, &old, &new);
        self.descs[i] = new;
        Ok(())
    }

    /// Emit a new frame holding a copy of `packet`, sent by the worker after the batch's own
    /// TX and FORWARD frames out of `socket` (pipeline-wide index, one of
    /// [`BatchCtx::sockets`]; None: the batch's socket). Returns false, counted in the worker's
    /// `emit_failed`, when no frame is free; an error for a packet shorter than an Ethernet
    /// header or longer than a frame's TX room ([`Umem::tx_capacity`]), a socket the worker
    /// does not own, or more emits than a batch may make (max(batch size, 64)).
    pub fn emit(&mut self, packet: &[u8], socket: Option<usize>) -> Result<bool> {
        let rules = self.emit_rules();
        let local = rules.target(self.umem, packet.len(), socket, self.emits.len())?;
        let mut a = [0u64];
        if self.sock.alloc(&mut a) == 0 {
            self.emit_failed += 1;
            return Ok(false);
        }
        let len = packet.len() as u32;
        // SAFETY: the frame was just allocated (App): neither the kernel, a ring, a hold nor
        // any view has it, and `&mut self` makes this the only Rust borrow; `packet` is the
        // caller's memory, which cannot be this free frame's.
        match unsafe { super::frame_bytes_mut(self.umem, a[0], len) } {
            Some(dst) => dst.copy_from_slice(packet),
            None => {
                self.sock.release(&a);
                return Err(Error::State(
                    "a frame just allocated was not writable".into(),
                ));
            }
        }
        self.emits.push(Emitted {
            local,
            desc: XdpDesc {
                addr: a[0],
                len,
                options: 0,
            },
        });
        Ok(true)
    }

    /// The packet bytes of frame `i` (None if `i` is out of range).
    pub fn frame(&self, i: usize) -> Option<&[u8]> {
        let d = self.descs.get(i)?;
        // SAFETY: the frame is this batch's (the worker received it and is inside the handler
        // call), so neither the kernel nor a ring has it; the only Rust writer is `frame_mut`,
        // which needs `&mut self` and so cannot overlap this borrow, and views handed out of
        // Rust are the caller's, who does not run them meanwhile.
        unsafe { super::frame_bytes(self.umem, d.addr, d.len) }
    }

    /// The packet bytes of frame `i`, to edit in place (None if `i` is out of range). A frame
    /// already held (a view of it outlived the handler) is refused: its holders' bytes never
    /// change.
    pub fn frame_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        if *self.slots.get(i)? != Slot::Own {
            return None;
        }
        let d = self.descs[i];
        // SAFETY: as in `frame`; `&mut self` makes this the only Rust borrow of the batch's
        // frames, and views handed out of Rust are the caller's, who does not run them while
        // this borrow lives.
        unsafe { super::frame_bytes_mut(self.umem, d.addr, d.len) }
    }

    /// Fill the batch's columns: packet lengths, UMEM addresses and the parsed header records
    /// (64 bytes each, [`PacketMeta::to_bytes`]). Each output holds at least `len()` entries.
    pub fn write_columns(&self, lengths: &mut [u32], addrs: &mut [u64], headers: &mut [u8]) {
        for (i, (d, m)) in self.descs.iter().zip(self.metas).enumerate() {
            lengths[i] = d.len;
            addrs[i] = d.addr;
            headers[i * 64..i * 64 + 64].copy_from_slice(&m.to_bytes());
        }
    }

    /// Frame `i`'s handler failed (per-packet mode): count it and give the frame the verdict
    /// of the pipeline's [`OnError`] policy, stopping the pipeline after this batch if it says
    /// so.
    pub fn fail_packet(&mut self, i: usize) {
        self.errors += 1;
        self.verdicts[i] = self.on_error.verdict(self.default_verdict);
        if self.on_error.stops() {
            self.stop = true;
        }
    }

    /// Hold frame `i` for a KEEP handle (its verdict must be KEEP: a KEEP frame nobody holds
    /// is counted as a bad verdict and dropped). None if `i` is out of range, or the frame was
    /// held before and every hold on it is gone.
    pub fn keep(&mut self, i: usize) -> Option<FrameHold> {
        self.hold(i)
    }

    /// Hold every frame whose verdict is KEEP, as one [`Kept`] in the pipeline's queue of kept
    /// frames ([`super::Pipeline::kept`]). Call it once the verdicts are final; returns how
    /// many frames it kept (0, and nothing held, when the worker has no queue).
    pub fn keep_verdicts(&mut self) -> usize {
        let Some(queue) = self.kept else {
            return 0;
        };
        let mut frames = Vec::new();
        for i in 0..self.len() {
            if self.verdicts[i] != KEEP {
                continue;
            }
            let d = self.descs[i];
            if let Some(h) = self.keep(i) {
                frames.push((d, h));
            }
        }
        let n = frames.len();
        if n > 0 {
            queue.push(Kept::new(HeldFrames::new(frames), Arc::clone(self.stats)));
        }
        n
    }

    /// Hold frame `i` because something that reads or writes it (a NumPy view) outlives the
    /// batch. The worker will not recycle it; if its verdict sends it (TX/FORWARD), a copy of
    /// the packet in a free frame is sent instead, or, with no free frame, nothing is sent and
    /// it counts as a failed TX. The copy is made now: call this once the verdicts are final,
    /// from the thread that owns whatever writes the frame outside Rust (the binding calls it
    /// attached to the interpreter, before any Python code can use the view again). Counted in
    /// the worker's `escaped` statistic once per frame.
    pub fn hold_view(&mut self, i: usize) -> Option<FrameHold> {
        let first = self.slots.get(i) == Some(&Slot::Own);
        let h = self.hold(i)?;
        if first {
            self.escaped += 1;
            if matches!(self.verdicts[i], TX | FORWARD) {
                self.copy_out(i, h.frame());
            }
        }
        Some(h)
    }

    fn hold(&mut self, i: usize) -> Option<FrameHold> {
        match *self.slots.get(i)? {
            Slot::Own => {
                let h = self
                    .umem
                    .hold_app(self.umem.frame_of(self.descs[i].addr)?)?;
                self.slots[i] = Slot::Held;
                self.held += 1;
                Some(h)
            }
            Slot::Held => self
                .umem
                .hold_again(self.umem.frame_of(self.descs[i].addr)?),
            Slot::Copied(f) => self.umem.hold_again(f),
        }
    }

    /// Put a copy of held frame `i` (frame index `orig`) in its place for sending.
    fn copy_out(&mut self, i: usize, orig: u32) {
        let d = self.descs[i];
        let mut a = [0u64];
        if self.sock.alloc(&mut a) == 0 {
            self.copy_failed += 1;
            return;
        }
        // A packet grown or pushed past a frame's TX room starts earlier in the copy's frame.
        let over = d.len.saturating_sub(self.umem.tx_capacity());
        a[0] -= over.min(XDP_PACKET_HEADROOM + self.umem.headroom()) as u64;
        let (Some(src), Some(dst)) = (self.umem.ptr(d.addr, d.len), self.sock.app_ptr(a[0], d.len))
        else {
            self.sock.release(&a);
            self.copy_failed += 1;
            return;
        };
        // SAFETY: `src` is `d.len` bytes inside frame `orig` (checked by `ptr`), held: no kernel
        // ring has it and no Rust API writes a held frame; the only other writers are views
        // outside Rust, which the caller does not run meanwhile (see `hold_view`). `dst` is
        // inside a frame just allocated, which only this worker has. Different frames, so the
        // ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.cast_const(), dst, d.len as usize) };
        self.descs[i] = XdpDesc {
            addr: a[0],
            len: d.len,
            options: d.options,
        };
        self.slots[i] = Slot::Copied(orig);
        self.held -= 1;
        self.copied += 1;
    }
}

/// A batch callback. Called on the worker thread; must not block for long.
pub trait BatchHandler: Send {
    /// Look at the batch, write verdicts (and edit frames). An `Err` applies [`OnError`].
    fn handle(&mut self, batch: &mut BatchCtx<'_>) -> std::result::Result<(), HandlerError>;

    /// Called once on the worker thread before the first batch (e.g. to set up per-thread
    /// interpreter state once instead of per batch).
    fn thread_start(&mut self) {}

    /// Called once on the worker thread after the last batch.
    fn thread_end(&mut self) {}
}

/// Upper bounds (inclusive) of the batch-size histogram buckets; the last bucket is open.
pub const BATCH_HISTOGRAM_BOUNDS: [u32; 7] = [1, 4, 16, 32, 64, 128, 256];

/// Live counters of one worker, readable from any thread.
#[derive(Debug, Default)]
pub struct WorkerStats {
    rx: AtomicU64,
    rx_bytes: AtomicU64,
    tx: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    kept: AtomicU64,
    released: AtomicU64,
    handler_errors: AtomicU64,
    bad_verdicts: AtomicU64,
    tx_failed: AtomicU64,
    escaped: AtomicU64,
    copied: AtomicU64,
    emitted: AtomicU64,
    emit_failed: AtomicU64,
    forward_ring_full: AtomicU64,
    forwarded_out: AtomicU64,
    forwarded_in: AtomicU64,
    forward_in_failed: AtomicU64,
    forward_wakeups: AtomicU64,
    batches: AtomicU64,
    batch_ns: AtomicU64,
    handler_ns: AtomicU64,
    idle_waits: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    histogram: [AtomicU64; 8],
    busy_poll: AtomicBool,
    notes: Mutex<Vec<String>>,
}

/// A copy of [`WorkerStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStatsSnapshot {
    /// Packets received.
    pub rx: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets sent back out of their own socket (TX).
    pub tx: u64,
    /// Packets sent out of another socket (FORWARD): of this worker, or handed to the worker
    /// that owns the socket (which sends them, see `forwarded_in`).
    pub forwarded: u64,
    /// Packets returned to the FILL ring: DROP, bad verdicts, failed batches, failed sends.
    pub dropped: u64,
    /// Packets kept by the application (KEEP).
    pub kept: u64,
    /// Kept packets whose handles the application released later.
    pub released: u64,
    /// Batches (or packets, in per-packet mode) whose handler failed.
    pub handler_errors: u64,
    /// Verdict values that are not a verdict, or FORWARD to a socket the pipeline does not
    /// have.
    pub bad_verdicts: u64,
    /// TX/FORWARD frames not sent: the TX ring had no room (those are dropped, and counted
    /// in `dropped` too), or a held frame had no free frame for its copy.
    pub tx_failed: u64,
    /// Frames whose views outlived their batch: held (not recycled) until the views are gone.
    pub escaped: u64,
    /// Of those, TX/FORWARD frames sent as a copy (the original stays with the views).
    pub copied: u64,
    /// New frames the handlers emitted that went on a TX ring.
    pub emitted: u64,
    /// Emits that sent nothing: no free frame when asked (the handler was told), the TX ring
    /// full, or the handler failed after emitting (its emits are discarded with its batch).
    pub emit_failed: u64,
    /// FORWARDs to another worker's socket that its inbox had no room for (dropped, and
    /// counted in `tx_failed` and `dropped` too).
    pub forward_ring_full: u64,
    /// Of `forwarded`, frames handed to another worker's inbox (that worker sends them).
    /// Over the workers of a pipeline: the sum of `forwarded_out` = the sum of `forwarded_in`
    /// + the sum of `forward_in_failed` + frames still in an inbox (none once it is joined).
    pub forwarded_out: u64,
    /// Frames other workers handed to this one that it sent out of its sockets.
    pub forwarded_in: u64,
    /// Frames other workers handed to this one that were not sent: its TX ring was full, or
    /// the pipeline stopped before it took them (back to the pool).
    pub forward_in_failed: u64,
    /// Times this worker woke a sleeping worker it had just handed frames to (its doorbell
    /// eventfd), so the handoff went out at once instead of after that worker's `idle_wait`.
    pub forward_wakeups: u64,
    /// Batches handled.
    pub batches: u64,
    /// Nanoseconds from receive to verdicts applied, summed over batches.
    pub batch_ns: u64,
    /// Nanoseconds spent in the handler, summed over batches.
    pub handler_ns: u64,
    /// Times the worker slept (in poll(2), or a plain sleep) because every socket was idle.
    pub idle_waits: u64,
    /// Whether the worker's sockets busy-poll this run ([`Latency::Busy`] with the kernel's
    /// busy-poll socket options accepted; false: plain spinning, see [`WorkerStats::notes`]).
    pub busy_poll: bool,
    /// Nanoseconds since the worker started at its first and latest packet (0: none yet).
    pub first_ns: u64,
    /// See `first_ns`.
    pub last_ns: u64,
    /// Batches per size bucket ([`BATCH_HISTOGRAM_BOUNDS`], then "more").
    pub histogram: [u64; 8],
}

impl WorkerStatsSnapshot {
    /// Packets per second between the first and the latest packet.
    pub fn pps(&self) -> f64 {
        let span = self.last_ns.saturating_sub(self.first_ns);
        if span == 0 || self.rx < 2 {
            return 0.0;
        }
        (self.rx - 1) as f64 * 1e9 / span as f64
    }
}

impl WorkerStats {
    /// Read every counter.
    pub fn snapshot(&self) -> WorkerStatsSnapshot {
        let mut h = [0u64; 8];
        for (o, a) in h.iter_mut().zip(&self.histogram) {
            *o = a.load(Relaxed);
        }
        WorkerStatsSnapshot {
            rx: self.rx.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            tx: self.tx.load(Relaxed),
            forwarded: self.forwarded.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            kept: self.kept.load(Relaxed),
            released: self.released.load(Relaxed),
            handler_errors: self.handler_errors.load(Relaxed),
            bad_verdicts: self.bad_verdicts.load(Relaxed),
            tx_failed: self.tx_failed.load(Relaxed),
            escaped: self.escaped.load(Relaxed),
            copied: self.copied.load(Relaxed),
            emitted: self.emitted.load(Relaxed),
            emit_failed: self.emit_failed.load(Relaxed),
            forward_ring_full: self.forward_ring_full.load(Relaxed),
            forwarded_out: self.forwarded_out.load(Relaxed),
            forwarded_in: self.forwarded_in.load(Relaxed),
            forward_in_failed: self.forward_in_failed.load(Relaxed),
            forward_wakeups: self.forward_wakeups.load(Relaxed),
            batches: self.batches.load(Relaxed),
            batch_ns: self.batch_ns.load(Relaxed),
            handler_ns: self.handler_ns.load(Relaxed),
            idle_waits: self.idle_waits.load(Relaxed),
            busy_poll: self.busy_poll.load(Relaxed),
            first_ns: self.first_ns.load(Relaxed),
            last_ns: self.last_ns.load(Relaxed),
            histogram: h,
        }
    }

    /// Count kept frames given back from outside the worker (e.g. after it stopped).
    pub fn add_released(&self, n: u64) {
        self.released.fetch_add(n, Relaxed);
    }

    /// What the worker could not do as configured, in words (e.g. busy polling the kernel
    /// refused, so the worker spins on the rings alone), for its latest run.
    pub fn notes(&self) -> Vec<String> {
        self.notes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_notes(&self, notes: Vec<String>) {
        *self.notes.lock().unwrap_or_else(|e| e.into_inner()) = notes;
    }

    /// Count frames handed to this worker that it never took (given back after it stopped).
    pub(crate) fn add_forward_in_failed(&self, n: u64) {
        self.forward_in_failed.fetch_add(n, Relaxed);
    }
}

/// Frames a worker may hand its handler in one batch, for batches of `batch` descriptors: a
/// batch ends at a packet's end, so one multi-buffer packet of more buffers than `batch` makes
/// a longer one (columns are sized for this many).
pub fn batch_capacity(batch: usize) -> usize {
    batch.max(MAX_PACKET_BUFS)
}

/// Frames one batch may emit at most, for batches of up to `batch` frames.
pub(crate) fn emit_limit(batch: usize) -> usize {
    batch.max(64)
}

fn bucket(n: usize) -> usize {
    BATCH_HISTOGRAM_BOUNDS
        .iter()
        .position(|&b| n as u32 <= b)
        .unwrap_or(BATCH_HISTOGRAM_BOUNDS.len())
}

/// How a worker runs (checked by [`super::PipelineConfig::validate`] before any worker starts).
#[derive(Clone)]
pub(crate) struct WorkerConfig {
    /// Descriptors per batch (1..=4096).
    pub batch: usize,
    /// CPU to pin the thread to (None: not pinned).
    pub cpu: Option<usize>,
    /// Verdict every frame starts with.
    pub default_verdict: u8,
    /// What a failed handler means for its batch.
    pub on_error: OnError,
    /// Empty polls (over all sockets) before the worker sleeps in poll(2) for `idle_wait`.
    pub idle_spins: u32,
    /// How long one idle sleep lasts at most.
    pub idle_wait: Duration,
    /// How the worker waits when its sockets are idle.
    pub latency: Latency,
    /// [`Latency::Adaptive`]: how long the worker keeps polling after the last packet.
    pub spin: Duration,
    /// Readable once the pipeline stops: wakes workers sleeping in poll(2).
    pub waker: Arc<EventFd>,
    /// Stop flag shared by the workers of a pipeline; also names the pipeline a thread works
    /// for ([`on_worker_of`]).
    pub stop: Arc<AtomicBool>,
    /// Packets received over all workers (for `limit`).
    pub total: Arc<AtomicU64>,
    /// Stop every worker once `total` reaches this (u64::MAX: no limit).
    pub limit: u64,
    /// Where [`BatchCtx::keep_verdicts`] puts KEEP frames.
    pub kept: Option<Arc<KeptQueue>>,
}

/// What a worker gives back when it ends: its sockets, and the error that ended it, if any.
pub(crate) struct WorkerExit {
    /// (pipeline-wide index, socket), to put back into the port.
    pub sockets: Vec<(usize, XskSocket)>,
    /// Why the worker ended early (pinning failed; a handler asking to stop is not an error).
    pub error: Option<Error>,
}

/// A worker thread that could not be started, and the sockets it would have run.
pub(crate) struct SpawnError {
    pub error: Error,
    pub sockets: Vec<(usize, XskSocket)>,
}

thread_local! {
    /// On a worker thread: the address of its pipeline's stop flag (0 elsewhere).
    static STOP_FLAG_OF: Cell<usize> = const { Cell::new(0) };
}

/// Whether the calling thread is a worker whose pipeline's stop flag is `stop` (that is, a
/// handler of that pipeline is calling).
pub(crate) fn on_worker_of(stop: &Arc<AtomicBool>) -> bool {
    STOP_FLAG_OF.with(|w| w.get() == Arc::as_ptr(stop) as usize)
}

/// Start a worker thread named `kbx-worker-<id>` on `sockets` (at least one; `cfg` checked).
/// If the thread cannot be created the sockets come back with the error.
/// `handoff`: the worker's ends of the pipeline's inboxes (several workers only).
pub(crate) fn spawn(
    id: usize,
    sockets: Vec<(usize, XskSocket)>,
    handler: Box<dyn BatchHandler>,
    handoff: Option<Handoff>,
    cfg: WorkerConfig,
    stats: Arc<WorkerStats>,
) -> std::result::Result<JoinHandle<WorkerExit>, SpawnError> {
    debug_assert!(!sockets.is_empty() && (1..=4096).contains(&cfg.batch));
    // The thread takes its sockets from here; if it is never created they are still here.
    let slot = Arc::new(Mutex::new(Some((sockets, handler))));
    let theirs = Arc::clone(&slot);
    let started = std::thread::Builder::new()
        .name(format!("kbx-worker-{id}"))
        .spawn(move || {
            let taken = theirs.lock().unwrap_or_else(|e| e.into_inner()).take();
            let Some((sockets, handler)) = taken else {
                return WorkerExit {
                    sockets: Vec::new(),
                    error: Some(Error::State("the worker's sockets were gone".into())),
                };
            };
            STOP_FLAG_OF.with(|w| w.set(Arc::as_ptr(&cfg.stop) as usize));
            let mut w = Worker::new(id, sockets, handler, handoff, cfg, stats);
            w.handler.thread_start();
            let error = w.run().err();
            if error.is_some() {
                // A worker that fails stops the pipeline: the others would otherwise go on
                // handing FORWARDs to an inbox nobody drains.
                w.cfg.stop.store(true, Relaxed);
            }
            if w.cfg.stop.load(Relaxed) {
                // Whoever asked (a handler, the packet limit), the other workers may sleep.
                w.cfg.waker.signal();
            }
            w.finish();
            w.handler.thread_end();
            STOP_FLAG_OF.with(|w| w.set(0));
            WorkerExit {
                sockets: w.sockets,
                error,
            }
        });
    started.map_err(|e| {
        let taken = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        SpawnError {
            error: Error::os(
                "spawn a worker thread",
                e.raw_os_error().unwrap_or(0),
                "lower the number of workers",
            ),
            sockets: taken.map(|(s, _)| s).unwrap_or_default(),
        }
    })
}

struct Worker {
    id: usize,
    sockets: Vec<(usize, XskSocket)>,
    handler: Box<dyn BatchHandler>,
    cfg: WorkerConfig,
    stats: Arc<WorkerStats>,
    umem: Arc<Umem>,
    descs: Vec<XdpDesc>,
    slots: Vec<Slot>,
    metas: Vec<PacketMeta>,
    verdicts: Vec<u8>,
    forward_to: Vec<u16>,
    drops: Vec<u64>,
    outs: Vec<Vec<XdpDesc>>,
    /// Pipeline-wide index of each socket, by local index.
    socket_ids: Vec<usize>,
    /// Frames the handler emitted this batch, and per socket how many of `outs` are emits.
    emits: Vec<Emitted>,
    emit_counts: Vec<usize>,
    /// Inboxes of the pipeline's other workers, and this one's (None: the only worker).
    handoff: Option<Handoff>,
    /// Per socket (local index): the leading buffers of a multi-buffer packet the last receive
    /// cut (the batch was full); they start the socket's next batch, so no batch ever begins
    /// or ends inside a packet.
    carry: Vec<Vec<XdpDesc>>,
    epoch: Instant,
    idle: Idle,
    /// Busy-poll settings of the sockets (by local index) before a busy run changed them.
    busy_restore: Vec<(usize, Option<BusyPoll>)>,
}

impl Worker {
    fn new(
        id: usize,
        sockets: Vec<(usize, XskSocket)>,
        handler: Box<dyn BatchHandler>,
        handoff: Option<Handoff>,
        cfg: WorkerConfig,
        stats: Arc<WorkerStats>,
    ) -> Self {
        let b = batch_capacity(cfg.batch);
        let umem = Arc::clone(sockets[0].1.umem());
        let outs = (0..sockets.len())
            .map(|_| Vec::with_capacity(b + emit_limit(b)))
            .collect();
        let fds: Vec<_> = sockets.iter().map(|(_, s)| s.raw_fd()).collect();
        let idle = Idle::new(
            cfg.latency,
            cfg.spin,
            cfg.idle_spins,
            cfg.idle_wait,
            &fds,
            &cfg.waker,
            handoff.as_ref().map(Handoff::bell_fd),
        );
        Worker {
            socket_ids: sockets.iter().map(|(g, _)| *g).collect(),
            emits: Vec::with_capacity(emit_limit(b)),
            emit_counts: vec![0; sockets.len()],
            carry: (0..sockets.len())
                .map(|_| Vec::with_capacity(MAX_PACKET_BUFS))
                .collect(),
            handoff,
            id,
            handler,
            stats,
            umem,
            descs: vec![XdpDesc::default(); b],
            slots: vec![Slot::Own; b],
            metas: vec![PacketMeta::default(); b],
            verdicts: vec![0; b],
            forward_to: vec![0; b],
            drops: Vec::with_capacity(b),
            outs,
            epoch: Instant::now(),
            idle,
            busy_restore: Vec::new(),
            sockets,
            cfg,
        }
    }

    fn run(&mut self) -> Result<()> {
        if let Some(c) = self.cfg.cpu {
            crate::cpu::pin(&[c])?;
        }
        self.start_busy_poll();
        while !self.cfg.stop.load(Relaxed) {
            let mut got_any = self.take_handoffs() > 0;
            for j in 0..self.sockets.len() {
                self.sockets[j].1.complete();
                let want = self.want();
                if want == 0 {
                    self.cfg.stop.store(true, Relaxed);
                    break;
                }
                let Some(n) = self.receive(j, want) else {
                    continue;
                };
                got_any = true;
                if n > 0 {
                    self.batch(j, n);
                    // A stop asked during this batch (by its handler, an error policy, the
                    // packet limit or another thread) ends the worker before the next one.
                    if self.cfg.stop.load(Relaxed) {
                        break;
                    }
                }
            }
            if got_any {
                self.idle.active();
            } else if self.idle.idle(&mut self.sockets, self.handoff.as_ref())? == Waited::Slept {
                self.stats.idle_waits.fetch_add(1, Relaxed);
            }
        }
        Ok(())
    }

    /// [`Latency::Busy`]: turn on the kernel's busy polling on every socket that does not
    /// have it (put back by [`Worker::finish`]); where the kernel refuses, the worker spins
    /// on the rings alone and its notes say why.
    fn start_busy_poll(&mut self) {
        let mut notes = Vec::new();
        if self.cfg.latency == Latency::Busy {
            let bp = busy_poll_for(self.cfg.batch);
            let mut all = true;
            for (k, (g, s)) in self.sockets.iter_mut().enumerate() {
                let before = s.busy_poll();
                if before.is_some() {
                    continue; // the port's own settings stay
                }
                match s.set_busy_poll(Some(bp)) {
                    Ok(()) => self.busy_restore.push((k, before)),
                    Err(e) => {
                        all = false;
                        notes.push(format!(
                            "socket {g}: busy polling refused ({e}); spinning on the rings alone"
                        ));
                    }
                }
            }
            self.stats.busy_poll.store(all, Relaxed);
        } else {
            self.stats.busy_poll.store(false, Relaxed);
        }
        self.stats.set_notes(notes);
    }

    /// Receive into `descs` from socket `j`, after the buffers carried from its last batch:
    /// None when nothing came, else how many descriptors make whole packets (the batch to
    /// handle, possibly 0). At most `want` new ones while the carried buffers are fewer than a
    /// batch (so a batch stays within `cfg.batch`), else up to a packet's most buffers (one
    /// packet with more buffers than a batch). The leading buffers of a packet cut at the
    /// end are carried to the next batch.
    fn receive(&mut self, j: usize, want: usize) -> Option<usize> {
        let c = self.carry[j].len();
        let cap = self.descs.len();
        let room = if c < self.cfg.batch {
            want.min(self.cfg.batch - c)
        } else {
            cap - c
        };
        let got = self.sockets[j].1.recv(&mut self.descs[c..c + room]);
        if got == 0 {
            return None;
        }
        if c == 0 && !handoff::continues(&self.descs[got - 1]) {
            return Some(got); // the usual case: no packet cut, nothing carried
        }
        self.descs[..c].copy_from_slice(&self.carry[j]);
        self.carry[j].clear();
        let n = c + got;
        let mut whole = handoff::whole(&self.descs[..n]);
        if whole == 0 && n == cap {
            // No packet end within a packet's most buffers: not what a kernel sends. Handle
            // the buffers as they are rather than carry them for ever.
            whole = n;
        }
        self.carry[j].extend_from_slice(&self.descs[whole..n]);
        Some(whole)
    }

    /// A multi-buffer packet's verdict is its first buffer's, for all its buffers (and its
    /// FORWARD target): it goes whole or not at all. A TX/FORWARD packet one of whose buffers
    /// is held with no copy to send in its place is not sent (its other buffers are dropped,
    /// counted as failed sends). Returns how many buffers that dropped.
    fn whole_verdicts(&mut self, n: usize, any_held: bool) -> u64 {
        let mut failed = 0;
        let mut i = 0;
        while i < n {
            let end = match self.descs[i..n].iter().position(|d| !handoff::continues(d)) {
                Some(p) => i + p + 1,
                None => n,
            };
            if end - i > 1 {
                let (v, t) = (self.verdicts[i], self.forward_to[i]);
                let cut = matches!(v, TX | FORWARD)
                    && any_held
                    && self.slots[i..end].contains(&Slot::Held);
                for k in i..end {
                    self.forward_to[k] = t;
                    self.verdicts[k] = if cut { DROP } else { v };
                    if cut && self.slots[k] != Slot::Held {
                        failed += 1;
                    }
                }
            }
            i = end;
        }
        failed
    }

    /// How many descriptors the next receive may take (the packet limit caps it).
    fn want(&self) -> usize {
        if self.cfg.limit == u64::MAX {
            return self.cfg.batch;
        }
        let left = self.cfg.limit.saturating_sub(self.cfg.total.load(Relaxed));
        (left.min(self.cfg.batch as u64)) as usize
    }

    fn batch(&mut self, j: usize, n: usize) {
        let t0 = Instant::now();
        let now_ns = (t0 - self.epoch).as_nanos() as u64;
        let s = &self.stats;
        if s.first_ns.load(Relaxed) == 0 {
            s.first_ns.store(now_ns.max(1), Relaxed);
        }
        s.last_ns.store(now_ns.max(1), Relaxed);
        let total = self.cfg.total.fetch_add(n as u64, Relaxed) + n as u64;
        if total >= self.cfg.limit {
            self.cfg.stop.store(true, Relaxed);
        }
        let mut bytes = 0u64;
        let mut multi = false;
        for i in 0..n {
            let d = self.descs[i];
            bytes += d.len as u64;
            multi |= handoff::continues(&d);
            // SAFETY: the worker just received this frame: no other reference to it exists
            // and nothing outside Rust has seen it yet.
            self.metas[i] = match unsafe { super::frame_bytes(&self.umem, d.addr, d.len) } {
                Some(f) => parse(f),
                // A descriptor outside its frame never reaches `recv`'s caller; be safe anyway.
                None => PacketMeta {
                    len: d.len,
                    flags: crate::packet::parse::FLAG_TRUNCATED,
                    ..PacketMeta::default()
                },
            };
        }
        self.verdicts[..n].fill(self.cfg.default_verdict);
        self.forward_to[..n].fill(self.sockets[j].0 as u16);
        let socket = self.sockets[j].0;
        let mut ctx = BatchCtx {
            socket,
            worker: self.id,
            metas: &self.metas[..n],
            verdicts: &mut self.verdicts[..n],
            forward_to: &mut self.forward_to[..n],
            umem: &self.umem,
            errors: 0,
            stop: false,
            default_verdict: self.cfg.default_verdict,
            on_error: self.cfg.on_error,
            descs: &mut self.descs[..n],
            slots: &mut self.slots[..n],
            sock: &mut self.sockets[j].1,
            kept: self.cfg.kept.as_deref(),
            stats: &self.stats,
            held: 0,
            escaped: 0,
            copied: 0,
            copy_failed: 0,
            sockets: &self.socket_ids,
            local: j,
            emit_limit: emit_limit(self.cfg.batch),
            emits: &mut self.emits,
            emit_failed: 0,
        };
        let th = Instant::now();
        let r = self.handler.handle(&mut ctx);
        let (errors, stop, held) = (ctx.errors, ctx.stop, ctx.held);
        let (escaped, copied, copy_failed) = (ctx.escaped, ctx.copied, ctx.copy_failed);
        let mut emit_failed = ctx.emit_failed;
        let touched = held > 0 || copied > 0;
        let handler_ns = th.elapsed().as_nanos() as u64;
        if stop {
            self.cfg.stop.store(true, Relaxed);
        }
        if errors > 0 {
            s.handler_errors.fetch_add(errors, Relaxed);
        }
        if r.is_err() {
            s.handler_errors.fetch_add(1, Relaxed);
            if self.cfg.on_error.stops() {
                self.cfg.stop.store(true, Relaxed);
            }
            self.verdicts[..n].fill(self.cfg.on_error.verdict(self.cfg.default_verdict));
            self.forward_to[..n].fill(socket as u16);
            // What the handler emitted goes with its batch: back to the pool, counted.
            if !self.emits.is_empty() {
                self.drops.clear();
                self.drops.extend(self.emits.iter().map(|e| e.desc.addr));
                self.sockets[j].1.release(&self.drops);
                emit_failed += self.emits.len() as u64;
                self.emits.clear();
            }
        }
        if emit_failed > 0 {
            s.emit_failed.fetch_add(emit_failed, Relaxed);
        }
        if multi {
            let cut = self.whole_verdicts(n, held > 0);
            if cut > 0 {
                self.stats.tx_failed.fetch_add(cut, Relaxed);
            }
        }
        self.apply(j, n, held > 0);
        if touched {
            self.slots[..n].fill(Slot::Own);
        }
        let s = &self.stats;
        if escaped > 0 {
            s.escaped.fetch_add(escaped, Relaxed);
            s.copied.fetch_add(copied, Relaxed);
        }
        if copy_failed > 0 {
            s.tx_failed.fetch_add(copy_failed, Relaxed);
        }
        s.rx.fetch_add(n as u64, Relaxed);
        s.rx_bytes.fetch_add(bytes, Relaxed);
        s.batches.fetch_add(1, Relaxed);
        s.histogram[bucket(n)].fetch_add(1, Relaxed);
        s.handler_ns.fetch_add(handler_ns, Relaxed);
        s.batch_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
    }

    fn local_index(&self, global: u16) -> Option<usize> {
        self.sockets.iter().position(|(g, _)| *g == global as usize)
    }

    /// Apply the verdicts. With `any_held`, frames the handler held are left alone (a KEEP
    /// among them is counted as kept; a TX/FORWARD among them had no copy and was counted as
    /// failed when the copy failed).
    fn apply(&mut self, j: usize, n: usize, any_held: bool) {
        self.drops.clear();
        for o in &mut self.outs {
            o.clear();
        }
        self.emit_counts.fill(0);
        let (mut kept, mut bad, mut fwd, mut tx) = (0u64, 0u64, 0u64, 0u64);
        let mut remote = 0u64;
        for i in 0..n {
            let d = self.descs[i];
            if any_held && self.slots[i] == Slot::Held {
                match self.verdicts[i] {
                    KEEP => kept += 1,
                    DROP | TX | FORWARD => {}
                    _ => bad += 1,
                }
                continue;
            }
            match self.verdicts[i] {
                DROP => self.drops.push(d.addr),
                TX => {
                    self.outs[j].push(d);
                    tx += 1;
                }
                FORWARD => match self.local_index(self.forward_to[i]) {
                    Some(k) => {
                        self.outs[k].push(d);
                        if k == j {
                            tx += 1;
                        } else {
                            fwd += 1;
                        }
                    }
                    None => {
                        let target = self.forward_to[i] as usize;
                        let owner = self.handoff.as_mut();
                        match owner.and_then(|h| h.worker_of(target).map(|w| (h, w))) {
                            Some((h, w)) => {
                                h.stage(w, &d, target);
                                remote += 1;
                            }
                            None => {
                                bad += 1;
                                self.drops.push(d.addr);
                            }
                        }
                    }
                },
                // KEEP without a hold: nobody could ever give the frame back.
                _ => {
                    bad += 1;
                    self.drops.push(d.addr);
                }
            }
        }
        let mut dropped = self.drops.len() as u64;
        if !self.drops.is_empty() {
            self.sockets[j].1.release(&self.drops);
        }
        // FORWARDs to other workers' sockets go into their inboxes; what does not fit comes
        // back to FILL, counted.
        let mut ring_full = 0u64;
        if let Some(h) = self.handoff.as_mut().filter(|_| remote > 0) {
            self.drops.clear();
            let (handed, rung) = h.flush(&mut self.drops);
            ring_full = remote - handed as u64;
            self.stats.forwarded_out.fetch_add(handed as u64, Relaxed);
            if rung > 0 {
                self.stats.forward_wakeups.fetch_add(rung, Relaxed);
            }
            if !self.drops.is_empty() {
                self.sockets[j].1.release(&self.drops);
            }
        }
        // Emitted frames go after the batch's own, so a full ring refuses them first.
        for e in self.emits.drain(..) {
            self.outs[e.local].push(e.desc);
            self.emit_counts[e.local] += 1;
        }
        // Socket j's queue holds its TX verdicts (and FORWARDs to itself, counted as TX); every
        // other socket's holds FORWARDs: a failed send is counted where it was going.
        let (mut tx_failed, mut fwd_failed) = (0u64, 0u64);
        let (mut emitted, mut emit_failed) = (0u64, 0u64);
        for k in 0..self.outs.len() {
            if self.outs[k].is_empty() {
                continue;
            }
            let q = self.sockets[k].1.send(&self.outs[k]);
            let emits = self.emit_counts[k];
            let unsent = self.outs[k].len() - q;
            let emits_unsent = unsent.min(emits);
            emitted += (emits - emits_unsent) as u64;
            emit_failed += emits_unsent as u64;
            if unsent > 0 {
                // TX ring full: the rest go back to FILL, counted.
                self.drops.clear();
                self.drops.extend(self.outs[k][q..].iter().map(|d| d.addr));
                self.sockets[j].1.release(&self.drops);
                let f = (unsent - emits_unsent) as u64;
                if k == j {
                    tx_failed += f;
                } else {
                    fwd_failed += f;
                }
            }
        }
        let failed = tx_failed + fwd_failed + ring_full;
        dropped += failed;
        let s = &self.stats;
        if remote > 0 {
            s.forward_ring_full.fetch_add(ring_full, Relaxed);
            fwd += remote;
            fwd_failed += ring_full;
        }
        if emitted + emit_failed > 0 {
            s.emitted.fetch_add(emitted, Relaxed);
            s.emit_failed.fetch_add(emit_failed, Relaxed);
        }
        s.tx.fetch_add(tx - tx_failed, Relaxed);
        s.forwarded.fetch_add(fwd - fwd_failed, Relaxed);
        s.dropped.fetch_add(dropped, Relaxed);
        s.kept.fetch_add(kept, Relaxed);
        s.bad_verdicts.fetch_add(bad, Relaxed);
        s.tx_failed.fetch_add(failed, Relaxed);
    }

    /// Send what other workers handed to this one (up to a batch); returns how many it took.
    fn take_handoffs(&mut self) -> usize {
        let Some(h) = self.handoff.as_mut() else {
            return 0;
        };
        let items = h.take();
        if items.is_empty() {
            return 0;
        }
        let n = items.len();
        for o in &mut self.outs {
            o.clear();
        }
        self.drops.clear();
        for it in items {
            let (d, target) = handoff::decode(it);
            match self.socket_ids.iter().position(|&g| g == target) {
                Some(k) => self.outs[k].push(d),
                // Handed here by the socket's owner table: cannot happen; never lose a frame.
                None => self.drops.push(d.addr),
            }
        }
        let mut failed = self.drops.len();
        if failed > 0 {
            self.sockets[0].1.release(&self.drops);
        }
        for k in 0..self.outs.len() {
            if self.outs[k].is_empty() {
                continue;
            }
            self.sockets[k].1.complete();
            let q = self.sockets[k].1.send(&self.outs[k]);
            if q < self.outs[k].len() {
                self.drops.clear();
                self.drops.extend(self.outs[k][q..].iter().map(|d| d.addr));
                self.sockets[k].1.release(&self.drops);
                failed += self.drops.len();
            }
        }
        let s = &self.stats;
        s.forwarded_in.fetch_add((n - failed) as u64, Relaxed);
        if failed > 0 {
            s.forward_in_failed.fetch_add(failed as u64, Relaxed);
        }
        n
    }

    /// Send what other workers handed over (bounded), then reap the last completions
    /// (bounded) so frames sent just before stop are back.
    fn finish(&mut self) {
        for (k, before) in std::mem::take(&mut self.busy_restore) {
            // Back as the port had it (accepted before, so this cannot fail in practice).
            let _ = self.sockets[k].1.set_busy_poll(before);
        }
        for _ in 0..64 {
            if self.take_handoffs() == 0 {
                break;
            }
        }
        // Buffers of packets cut short by the stop (the rest never came): back, counted.
        if let Some(h) = self.handoff.as_mut() {
            let left = h.take_carry();
            if !left.is_empty() {
                self.drops.clear();
                self.drops.extend(left.iter().map(|it| it[0]));
                self.sockets[0].1.release(&self.drops);
                self.stats
                    .forward_in_failed
                    .fetch_add(left.len() as u64, Relaxed);
            }
        }
        for j in 0..self.carry.len() {
            if !self.carry[j].is_empty() {
                self.drops.clear();
                self.drops.extend(self.carry[j].iter().map(|d| d.addr));
                self.carry[j].clear();
                self.sockets[j].1.release(&self.drops);
                let k = self.drops.len() as u64;
                self.stats.rx.fetch_add(k, Relaxed);
                self.stats.dropped.fetch_add(k, Relaxed);
            }
        }
        let deadline = Instant::now() + Duration::from_millis(300);
        loop {
            for (_, s) in &mut self.sockets {
                s.complete();
            }
            if self.umem_tx_side() == 0 || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn umem_tx_side(&self) -> u32 {
        self.umem.census()[crate::xsk::FrameState::Tx as usize]
    }
}
