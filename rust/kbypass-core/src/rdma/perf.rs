//! Measurement loops for the RDMA benchmarks, run like perftest runs them (`ib_write_bw`,
//! `ib_write_lat`), so the numbers can be put side by side with rdma-core's tools.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{
    Cancel, CompletionQueue, MemoryRegion, QueuePair, SendFlags, SendOp, Sge, WorkCompletion,
};
use crate::error::{Error, Result};

/// What a bandwidth loop measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bandwidth {
    /// Payload bytes moved.
    pub bytes: u64,
    /// Wall time from the first post to the last completion.
    pub seconds: f64,
}

impl Bandwidth {
    /// Megabytes (10^6) per second, perftest's unit.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e6
    }
}

/// How long a bandwidth loop spins on an empty CQ after its last completion before it naps.
const SPIN: Duration = Duration::from_micros(20);
/// The longest nap: the loop wakes at the next completion, and at least this often to check
/// for cancellation and stalls.
const NAP: Duration = Duration::from_millis(1);

/// An empty poll `idle` after the last completion: keep spinning at first (the next
/// completion is usually close), then let a user-space engine's poll thread have the CPU
/// until a completion is there ([`CompletionQueue::wait_ready`]; a verbs CQ returns at
/// once). On a host with few cores the spinning caller otherwise takes the CPU the engine
/// needs to produce the completions it waits for.
pub(crate) fn nap(cq: &CompletionQueue, idle: Duration) {
    if idle > SPIN {
        cq.wait_ready(NAP);
    }
}

/// How a bandwidth loop posts: `depth` requests in flight at most, a completion asked for
/// every `signal_every` requests (perftest's defaults: depth 128, CQ moderation 100), and an
/// error when no completion arrives for `stall` (a peer that neither answers nor fails).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// Requests in flight at most.
    pub depth: u64,
    /// A signaled request every this many.
    pub signal_every: u64,
    /// Longest wait for the next completion.
    pub stall: Duration,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            depth: 128,
            signal_every: 100,
            stall: Duration::from_secs(30),
        }
    }
}

/// RDMA-write `iterations` messages of `size` bytes from `local` (offset 0) to
/// `remote_addr`/`rkey`, keeping up to `depth` in flight and asking for a completion every
/// `signal_every` writes (perftest's defaults: depth 128, CQ moderation 100). Stops with
/// [`Error::Interrupted`] when `cancel` says so.
#[allow(clippy::too_many_arguments)]
pub fn write_bandwidth(
    qp: &QueuePair,
    cq: &CompletionQueue,
    local: &MemoryRegion,
    remote_addr: u64,
    rkey: u32,
    size: usize,
    iterations: u64,
    depth: u64,
    signal_every: u64,
    cancel: &Cancel<'_>,
) -> Result<Bandwidth> {
    let pacing = Pacing {
        depth,
        signal_every,
        ..Pacing::default()
    };
    let op = SendOp::Write { remote_addr, rkey };
    op_bandwidth(
        qp,
        cq,
        op,
        &[local.sge(0, size)?],
        iterations,
        &pacing,
        cancel,
    )
}

/// Post `op` with the scatter/gather list `sg` `iterations` times, paced by `pacing`, and
/// time it from the first post to the last completion. Any request kind works: writes and
/// sends carry `sg`'s bytes, reads fill them, atomics land their 8-byte result there.
/// Stops with [`Error::Interrupted`] when `cancel` says so (asked between polls).
pub fn op_bandwidth(
    qp: &QueuePair,
    cq: &CompletionQueue,
    op: SendOp<'_>,
    sg: &[Sge<'_>],
    iterations: u64,
    pacing: &Pacing,
    cancel: &Cancel<'_>,
) -> Result<Bandwidth> {
    let Pacing {
        depth,
        signal_every,
        stall,
    } = *pacing;
    if iterations == 0 || depth == 0 || signal_every == 0 || signal_every > depth {
        return Err(Error::invalid(
            "need iterations, depth > 0 and 0 < signal_every <= depth",
        ));
    }
    let mut wcs = [WorkCompletion::default(); 16];
    let (mut posted, mut completed) = (0u64, 0u64);
    let start = Instant::now();
    let mut progress = start;
    while completed < iterations {
        while posted < iterations && posted - completed < depth {
            let last = posted + 1 == iterations || (posted + 1) % signal_every == 0;
            let flags = if last {
                SendFlags::SIGNALED
            } else {
                SendFlags::default()
            };
            qp.post_send(posted, op, sg, flags)?;
            posted += 1;
        }
        let n = cq.poll(&mut wcs)?;
        for wc in &wcs[..n] {
            wc.check()?;
            // A signaled request completes every unsignaled one posted before it.
            completed = completed.max(wc.wr_id + 1);
        }
        cancel.check("bandwidth run")?;
        if n > 0 {
            progress = Instant::now();
            continue;
        }
        let idle = progress.elapsed();
        if idle > stall {
            return Err(Error::Timeout(format!(
                "{completed} of {iterations} requests completed, then none for {stall:?}: \
                 is the peer alive?"
            )));
        }
        nap(cq, idle);
    }
    let bytes: u64 = sg.iter().map(|s| u64::from(s.length())).sum();
    Ok(Bandwidth {
        bytes: iterations * bytes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// One-way latency of `size`-byte RDMA writes, measured like `ib_write_lat`: two threads, one
/// per QP (as perftest's two processes); `a` writes into `b`'s region, `b`'s thread spins on
/// the last byte and writes back; half of each round trip is one sample (microseconds).
/// The QPs must be connected to each other, each with its own send CQ (`cq_a`, `cq_b`);
/// `mr_a`/`mr_b` are their regions (remote-writable), at least `2 * size` bytes each: the
/// first `size` bytes are sent from, the peer's writes land in the next `size` (one buffer
/// for both would let a side see its own tag and stop waiting). Stops with
/// [`Error::Interrupted`] when `cancel` says so (asked on the calling thread; the echo thread
/// stops with it).
#[allow(clippy::too_many_arguments)]
pub fn write_latency(
    a: &QueuePair,
    b: &QueuePair,
    cq_a: &CompletionQueue,
    cq_b: &CompletionQueue,
    mr_a: &MemoryRegion,
    mr_b: &MemoryRegion,
    size: usize,
    iterations: usize,
    cancel: &Cancel<'_>,
) -> Result<Vec<f64>> {
    if size == 0 || iterations == 0 {
        return Err(Error::invalid("size and iterations must be positive"));
    }
    if mr_a.len() < 2 * size || mr_b.len() < 2 * size {
        return Err(Error::invalid(format!(
            "write_latency needs regions of at least {} bytes",
            2 * size
        )));
    }
    let landed = 2 * size - 1;
    // Set when this thread's run failed (or was cancelled): the echo stops waiting. Not when
    // it succeeded: the echo's last write has landed then, but its completion may be on its way.
    let over = AtomicBool::new(false);
    let stop = || over.load(Ordering::Relaxed);
    let mine_stop = || cancel.cancelled();
    std::thread::scope(|s| {
        let echo = s.spawn(|| -> Result<()> {
            for i in 0..iterations {
                let tag = tag_of(i);
                spin_until(mr_b, cq_b, landed, tag, i, &stop)?;
                ping(b, cq_b, mr_b, mr_a, size, tag, i, &stop)?;
            }
            Ok(())
        });
        let mut samples = Vec::with_capacity(iterations);
        let mut run = || -> Result<()> {
            for i in 0..iterations {
                let tag = tag_of(i);
                let t = Instant::now();
                ping(a, cq_a, mr_a, mr_b, size, tag, i, &mine_stop)?;
                spin_until(mr_a, cq_a, landed, tag, i, &mine_stop)?;
                samples.push(t.elapsed().as_secs_f64() * 1e6 / 2.0);
            }
            Ok(())
        };
        let mine = run();
        if mine.is_err() {
            over.store(true, Ordering::Relaxed);
        }
        let theirs = echo
            .join()
            .map_err(|_| Error::State("the echo thread panicked".into()))?;
        mine.and(theirs).map(|()| samples)
    })
}

fn tag_of(i: usize) -> u8 {
    (i % 255) as u8 + 1
}

fn interrupted(i: usize) -> Error {
    Error::Interrupted(format!("write latency run: interrupted at round {i}"))
}

/// Write `src[..size]` (last byte = `tag`) into `dst[size..2 * size]`; reap the completion
/// (unless `stop` says so first).
#[allow(clippy::too_many_arguments)]
fn ping(
    qp: &QueuePair,
    cq: &CompletionQueue,
    src: &MemoryRegion,
    dst: &MemoryRegion,
    size: usize,
    tag: u8,
    i: usize,
    stop: &dyn Fn() -> bool,
) -> Result<()> {
    src.write(size - 1, &[tag])?;
    let inline = if size <= 64 {
        SendFlags::INLINE
    } else {
        SendFlags::default()
    };
    let op = SendOp::Write {
        remote_addr: dst.addr() + size as u64,
        rkey: dst.rkey(),
    };
    qp.post_send(
        i as u64,
        op,
        &[src.sge(0, size)?],
        SendFlags::SIGNALED | inline,
    )?;
    let mut wcs = [WorkCompletion::default(); 4];
    let start = Instant::now();
    loop {
        let n = cq.poll(&mut wcs)?;
        if let Some(wc) = wcs[..n].first() {
            return wc.check();
        }
        if start.elapsed().as_secs() > 10 {
            return Err(Error::Timeout(format!("write {i} never completed")));
        }
        if stop() {
            return Err(interrupted(i));
        }
    }
}

/// Spins until the peer's write of `tag` lands at `offset`. The CQ is polled for nothing on
/// the way: that is what drives a user-space engine opened with caller progress (the write
/// lands only when someone runs it), and costs a verbs device one empty `poll_cq`. Gives up
/// when `stop` says so.
fn spin_until(
    mr: &MemoryRegion,
    cq: &CompletionQueue,
    offset: usize,
    tag: u8,
    i: usize,
    stop: &dyn Fn() -> bool,
) -> Result<()> {
    let start = Instant::now();
    while mr.read_volatile(offset)? != tag {
        cq.poll(&mut [])?;
        if start.elapsed().as_secs() > 10 {
            return Err(Error::Timeout(format!("write {i} never landed")));
        }
        if stop() {
            return Err(interrupted(i));
        }
        std::hint::spin_loop();
    }
    Ok(())
}
