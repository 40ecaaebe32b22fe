//! AF_XDP loops for benches: receive-and-drop, and a TX flood of a template frame.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::kernel::{span, StopWhen, Throughput};
use crate::error::{Error, Result};
use crate::sys::xdp::XdpDesc;
use crate::xsk::XskSocket;

/// Receive and immediately give every frame back to the FILL ring until `when`
/// (the classic `xdpsock rxdrop`). Returns packets and bytes received.
pub fn rx_drop(sock: &mut XskSocket, batch: usize, when: StopWhen<'_>) -> Result<Throughput> {
    let batch = batch.clamp(1, 1024);
    let mut descs = vec![XdpDesc::default(); batch];
    let mut addrs = vec![0u64; batch];
    let (mut packets, mut bytes) = (0u64, 0u64);
    let start = Instant::now();
    let (mut first, mut last) = (None, None);
    let mut idle_polls = 0u32;
    loop {
        let n = sock.recv(&mut descs);
        if n > 0 {
            idle_polls = 0;
            let now = Instant::now();
            first.get_or_insert(now);
            last = Some(now);
            for (a, d) in addrs.iter_mut().zip(&descs[..n]) {
                *a = d.addr;
                bytes += d.len as u64;
            }
            packets += n as u64;
            sock.release(&addrs[..n]);
        } else {
            idle_polls += 1;
            // Check the clock only when idle or every so often: Instant::now costs ~20 ns.
            if idle_polls % 64 == 0 && when.done(packets, start, last) {
                break;
            }
            continue;
        }
        if packets % 4096 < n as u64 && when.done(packets, start, last) {
            break;
        }
    }
    Ok(Throughput {
        packets,
        bytes,
        elapsed: span(start, first, last),
    })
}

/// Send `count` copies of `frame` as fast as the TX ring and completions allow. Frames are
/// written once (every free frame gets the template) and recycled through the completion ring;
/// with `fresh`, the frame is copied into UMEM for every send instead, as a sender of new data
/// must ([`XskSocket::send_copies`]). A frame longer than one UMEM frame's TX room is always sent
/// fresh, split over several UMEM frames, and needs a multi-buffer socket. `stop` (set from
/// another thread) ends it early.
pub fn tx_flood(
    sock: &mut XskSocket,
    frame: &[u8],
    count: u64,
    batch: usize,
    fresh: bool,
    stop: Option<&AtomicBool>,
) -> Result<Throughput> {
    let umem = std::sync::Arc::clone(sock.umem());
    let split = frame.len() as u32 > umem.tx_capacity();
    let parts = frame.len().div_ceil(umem.tx_capacity() as usize);
    if frame.is_empty()
        || (split && (!sock.multi_buffer() || parts > crate::xsk::MAX_DESCS_PER_PACKET))
    {
        return Err(Error::invalid(format!(
            "a {}-byte frame does not fit the {}-byte TX room of a frame: use a larger frame_size{}",
            frame.len(),
            umem.tx_capacity(),
            if sock.multi_buffer() {
                ""
            } else {
                " or a multi_buffer socket"
            }
        )));
    }
    let batch = batch.clamp(1, 1024);
    if fresh || split {
        let copies = vec![frame; batch];
        return flood(sock, frame.len(), count, batch, stop, |s, want| {
            let done = s.send_copies(&copies[..want]);
            if done.oversize > 0 {
                return Err(Error::State(format!(
                    "the socket refused a {}-byte frame as oversize",
                    frame.len()
                )));
            }
            Ok(done.queued)
        });
    }
    // Stamp the template into every free frame once (taking them all, so each is stamped),
    // then give them back: whichever the loop below takes already holds the packet.
    let template = [frame; 64];
    let mut stamp = [XdpDesc::default(); 64];
    let mut stamped = Vec::with_capacity(umem.frames() as usize);
    loop {
        let got = sock.alloc_copies(&template, &mut stamp);
        stamped.extend(stamp[..got].iter().map(|d| d.addr));
        if got < template.len() {
            break;
        }
    }
    sock.release(&stamped);
    let mut descs = vec![XdpDesc::default(); batch];
    let mut out = vec![0u64; batch];
    flood(sock, frame.len(), count, batch, stop, |s, want| {
        let got = s.alloc(&mut out[..want]);
        for (d, &a) in descs.iter_mut().zip(&out[..got]) {
            *d = XdpDesc {
                addr: a,
                len: frame.len() as u32,
                options: 0,
            };
        }
        let q = s.send(&descs[..got]);
        if q < got {
            // Ring full: the frames we could not queue go back to the pool.
            s.release(&out[q..got]);
        }
        Ok(q)
    })
}

/// [`tx_flood`]'s loop: `step` queues up to the count it is given and says how many went,
/// until `count` went or `stop` says so; completions are reaped as it goes, a step that
/// queues nothing for 1 s (no free frames, no completions) is an error, and the last
/// completions are awaited (bounded) so the frames are back.
fn flood(
    sock: &mut XskSocket,
    frame_len: usize,
    count: u64,
    batch: usize,
    stop: Option<&AtomicBool>,
    mut step: impl FnMut(&mut XskSocket, usize) -> Result<usize>,
) -> Result<Throughput> {
    let mut sent = 0u64;
    let start = Instant::now();
    let mut last_progress = Instant::now();
    let mut spins = 0u32;
    while sent < count && !stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
        if sock.complete() > 0 {
            last_progress = Instant::now();
        }
        let want = batch.min((count - sent) as usize);
        let q = step(sock, want)?;
        if q == 0 {
            spins += 1;
            if spins % 1024 == 0 && last_progress.elapsed() > std::time::Duration::from_secs(1) {
                return Err(Error::State(format!(
                    "TX stalled after {sent} frames: no free frames and no completions for 1 s (is the interface up? frames in use: {:?})",
                    sock.account()
                )));
            }
            std::hint::spin_loop();
            continue;
        }
        last_progress = Instant::now();
        sent += q as u64;
    }
    let deadline = Instant::now() + std::time::Duration::from_millis(500);
    while sock.account().tx_side > 0 && Instant::now() < deadline {
        sock.complete();
    }
    Ok(Throughput {
        packets: sent,
        bytes: sent * frame_len as u64,
        elapsed: start.elapsed(),
    })
}
