//! Measurement loops for the RDMA benchmarks, run like perftest runs them (`ib_write_bw`,
//! `ib_write_lat`), so the numbers can be put side by side with rdma-core's tools.

use std::time::Instant;

use super::verbs::{CompletionQueue, MemoryRegion, QueuePair, SendFlags, SendOp, WorkCompletion};
use crate::error::{Error, Result};

/// What [`write_bandwidth`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bandwidth {
    /// Payload bytes written.
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

/// RDMA-write `iterations` messages of `size` bytes from `local` (offset 0) to
/// `remote_addr`/`rkey`, keeping up to `depth` in flight and asking for a completion every
/// `signal_every` writes (perftest's defaults: depth 128, CQ moderation 100).
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
) -> Result<Bandwidth> {
    if iterations == 0 || depth == 0 || signal_every == 0 || signal_every > depth {
        return Err(Error::invalid(
            "need iterations, depth > 0 and 0 < signal_every <= depth",
        ));
    }
    let sge = [local.sge(0, size)?];
    let op = SendOp::Write { remote_addr, rkey };
    let mut wcs = [WorkCompletion::default(); 16];
    let (mut posted, mut completed) = (0u64, 0u64);
    let start = Instant::now();
    while completed < iterations {
        while posted < iterations && posted - completed < depth {
            let last = posted + 1 == iterations || (posted + 1) % signal_every == 0;
            let flags = if last {
                SendFlags::SIGNALED
            } else {
                SendFlags::default()
            };
            qp.post_send(posted, op, &sge, flags)?;
            posted += 1;
        }
        let n = cq.poll(&mut wcs)?;
        for wc in &wcs[..n] {
            wc.check()?;
            // A signaled write completes every unsignaled one posted before it.
            completed = completed.max(wc.wr_id + 1);
        }
    }
    Ok(Bandwidth {
        bytes: iterations * size as u64,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// One-way latency of `size`-byte RDMA writes, measured like `ib_write_lat`: `a` writes into
/// `b`'s region, the receiver spins on the last byte, answers with a write back; half of
/// each round trip is one sample (microseconds). The QPs must be connected to each other;
/// `mr_a`/`mr_b` are their regions (remote-writable), at least `size` bytes each.
pub fn write_latency(
    a: &QueuePair,
    b: &QueuePair,
    cq: &CompletionQueue,
    mr_a: &MemoryRegion,
    mr_b: &MemoryRegion,
    size: usize,
    iterations: usize,
) -> Result<Vec<f64>> {
    if size == 0 || iterations == 0 {
        return Err(Error::invalid("size and iterations must be positive"));
    }
    let last = size - 1;
    let mut samples = Vec::with_capacity(iterations);
    let mut wcs = [WorkCompletion::default(); 16];
    for i in 0..iterations {
        let tag = (i % 255) as u8 + 1;
        let t = Instant::now();
        for (from, src, dst) in [(a, mr_a, mr_b), (b, mr_b, mr_a)] {
            src.write(last, &[tag])?;
            let flags = SendFlags::SIGNALED
                | if size <= 64 {
                    SendFlags::INLINE
                } else {
                    SendFlags::default()
                };
            from.post_send(
                i as u64,
                SendOp::Write {
                    remote_addr: dst.addr(),
                    rkey: dst.rkey(),
                },
                &[src.sge(0, size)?],
                flags,
            )?;
            let spin = Instant::now();
            while dst.read_volatile(last)? != tag {
                if spin.elapsed().as_secs() > 10 {
                    return Err(Error::Timeout(format!("write {i} never landed")));
                }
                std::hint::spin_loop();
            }
            // Reap the send completion so the send queue never fills.
            loop {
                let n = cq.poll(&mut wcs)?;
                if let Some(wc) = wcs[..n].first() {
                    wc.check()?;
                    break;
                }
            }
        }
        samples.push(t.elapsed().as_secs_f64() * 1e6 / 2.0);
    }
    Ok(samples)
}
