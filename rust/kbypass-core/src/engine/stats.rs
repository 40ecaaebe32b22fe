//! A worker's counters: live atomics ([`WorkerStats`], written by the worker, read from any
//! thread) and the copy of them at one moment ([`WorkerStatsSnapshot`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Upper bounds (inclusive) of the batch-size histogram buckets; the last bucket is open.
pub const BATCH_HISTOGRAM_BOUNDS: [u32; 7] = [1, 4, 16, 32, 64, 128, 256];

/// Live counters of one worker, readable from any thread.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub(super) rx: AtomicU64,
    pub(super) rx_bytes: AtomicU64,
    pub(super) tx: AtomicU64,
    pub(super) forwarded: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) kept: AtomicU64,
    pub(super) released: AtomicU64,
    pub(super) handler_errors: AtomicU64,
    pub(super) bad_verdicts: AtomicU64,
    pub(super) tx_failed: AtomicU64,
    pub(super) escaped: AtomicU64,
    pub(super) copied: AtomicU64,
    pub(super) emitted: AtomicU64,
    pub(super) emit_failed: AtomicU64,
    pub(super) forward_ring_full: AtomicU64,
    pub(super) forwarded_out: AtomicU64,
    pub(super) forwarded_in: AtomicU64,
    pub(super) forward_in_failed: AtomicU64,
    pub(super) forward_wakeups: AtomicU64,
    pub(super) batches: AtomicU64,
    pub(super) batch_ns: AtomicU64,
    pub(super) handler_ns: AtomicU64,
    pub(super) idle_waits: AtomicU64,
    pub(super) first_ns: AtomicU64,
    pub(super) last_ns: AtomicU64,
    pub(super) histogram: [AtomicU64; 8],
    pub(super) busy_poll: AtomicBool,
    pub(super) notes: Mutex<Vec<String>>,
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

    pub(super) fn set_notes(&self, notes: Vec<String>) {
        *self.notes.lock().unwrap_or_else(|e| e.into_inner()) = notes;
    }

    /// Count frames handed to this worker that it never took (given back after it stopped).
    pub(crate) fn add_forward_in_failed(&self, n: u64) {
        self.forward_in_failed.fetch_add(n, Relaxed);
    }
}

pub(super) fn bucket(n: usize) -> usize {
    BATCH_HISTOGRAM_BOUNDS
        .iter()
        .position(|&b| n as u32 <= b)
        .unwrap_or(BATCH_HISTOGRAM_BOUNDS.len())
}
