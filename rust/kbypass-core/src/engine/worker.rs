//! The worker thread: poll, parse, call, apply (see the [module docs](super)).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::build::Emitted;
pub use super::ctx::BatchCtx;
use super::ctx::Slot;
use super::handoff::{self, Handoff, MAX_PACKET_BUFS};
use super::idle::{busy_poll_for, Idle, Latency, Waited};
use super::kept::KeptQueue;
use super::stats::bucket;
pub use super::stats::{WorkerStats, WorkerStatsSnapshot, BATCH_HISTOGRAM_BOUNDS};
use super::{DROP, FORWARD, KEEP, TX};
use crate::error::{Error, Result};
use crate::packet::{parse, PacketMeta};
use crate::sys::event::EventFd;
use crate::sys::xdp::XdpDesc;
use crate::xsk::whole::{self, Buffer, Carry};
use crate::xsk::{BusyPoll, Umem, XskSocket};

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
    carry: Vec<Carry<XdpDesc>>,
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
                .map(|_| Carry::with_capacity(MAX_PACKET_BUFS))
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
        let (sockets, batch) = (&mut self.sockets, self.cfg.batch);
        self.carry[j].read(&mut self.descs, batch, want, |out| sockets[j].1.recv(out))
    }

    /// A multi-buffer packet's verdict is its first buffer's, for all its buffers (and its
    /// FORWARD target): it goes whole or not at all. A TX/FORWARD packet one of whose buffers
    /// is held with no copy to send in its place is not sent (its other buffers are dropped,
    /// counted as failed sends). Returns how many buffers that dropped.
    fn whole_verdicts(&mut self, n: usize, any_held: bool) -> u64 {
        let mut failed = 0;
        for r in whole::packets(&self.descs[..n]) {
            let (i, end) = (r.start, r.end);
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
            multi |= d.continues();
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
            // Counted before the inboxes see them and taken back for what they refused, so
            // `forwarded_out` is never behind the targets' `forwarded_in` (in flight >= 0).
            self.stats.forwarded_out.fetch_add(remote, Relaxed);
            let (handed, rung) = h.flush(&mut self.drops);
            ring_full = remote - handed as u64;
            self.stats.forwarded_out.fetch_sub(ring_full, Relaxed);
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
                self.drops
                    .extend(self.carry[j].take().iter().map(|d| d.addr));
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
