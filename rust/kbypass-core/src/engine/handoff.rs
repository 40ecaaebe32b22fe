//! FORWARD between workers: a frame whose FORWARD target is a socket of another worker of the
//! same pipeline goes to that worker through its inbox, a lock-free multi-producer ring of
//! descriptors ([`crate::ring`], private to the process), and that worker sends it.
//!
//! The frame stays in the `App` state all the way: the sending worker gives it up when the
//! enqueue publishes it (release store of the ring's tail) and the target takes it with the
//! dequeue (acquire load), so one worker owns it at every moment, as the frame table wants. An
//! inbox that is full refuses the rest of a batch's handoffs: those frames go back to the
//! sender's FILL ring and are counted (`forward_ring_full`, also in `tx_failed` and `dropped`).
//! The target drains its inbox every time round its loop and sends on the socket named; its TX
//! ring refusing is counted there (`forward_in_failed`). Frames still in an inbox when the
//! workers end are given back by [`super::Pipeline::join`], counted the same way. So, over the
//! workers of a pipeline, `forwarded_out` (handed over) = `forwarded_in` + `forward_in_failed` +
//! what is still in the inboxes (none once the pipeline is joined).
//!
//! Multi-buffer packets (all buffers but the last carry `XDP_PKT_CONTD`) cross whole: a flush
//! hands a packet over with all its buffers or refuses them all, and a take hands the worker
//! whole packets only (the leading buffers of a packet whose rest is not dequeued yet wait for
//! the next take), so the target never sends a packet cut short or mixed with others.
//!
//! Each worker has a doorbell ([`Bell`]): an eventfd in the set it sleeps on, and a flag it
//! raises while it sleeps. A worker that hands frames to a sleeping one rings its bell, so the
//! handoff is sent at once instead of after the target's `idle_wait`; when the target is awake
//! (the busy path) the sender pays one load of the flag. Sleeper and sender follow Dekker's
//! pattern: the sleeper raises the flag, then (after a SeqCst fence) looks at its inbox; the
//! sender publishes into the inbox, then (after a SeqCst fence) reads the flag; so either the
//! sender sees the flag and rings, or the sleeper sees the frames and does not sleep.

use std::os::fd::RawFd;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::Result;
use crate::ring::{Consumer, Mode, Producer, Ring};
use crate::sys::event::EventFd;
use crate::sys::xdp::XdpDesc;
use crate::xsk::whole::{self, Buffer, Carry};

/// Buffers one packet may have at most, as far as the engine is concerned (the kernel's
/// `MAX_SKB_FRAGS` + 1 is 18 by default, 46 at most): batches and takes are sized for a whole
/// packet of this many beyond their usual size.
pub(crate) const MAX_PACKET_BUFS: usize = 64;

impl Buffer for Item {
    /// A handoff item's buffer continues into the next one (see [`encode`]).
    #[inline]
    fn continues(&self) -> bool {
        decode(self).0.continues()
    }
}

/// A worker's doorbell (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct Bell {
    fd: EventFd,
    asleep: AtomicBool,
}

impl Bell {
    fn new() -> Result<Self> {
        Ok(Bell {
            fd: EventFd::new()?,
            asleep: AtomicBool::new(false),
        })
    }

    /// Ring it if its worker sleeps (after the caller published into that worker's inbox);
    /// returns whether it rang.
    fn ring_if_asleep(&self) -> bool {
        fence(Ordering::SeqCst);
        // One load on the busy path; the swap makes one sender of many ring.
        if self.asleep.load(Ordering::Relaxed) && self.asleep.swap(false, Ordering::Relaxed) {
            self.fd.signal();
            return true;
        }
        false
    }
}

/// One handed-off frame: its UMEM address, then its length, the target socket (pipeline-wide
/// index) and the descriptor's options packed in one word.
pub(crate) type Item = [u64; 2];

/// Pack `d`, to be sent out of pipeline socket `socket`.
pub(crate) fn encode(d: &XdpDesc, socket: usize) -> Item {
    [
        d.addr,
        d.len as u64 | (socket as u64 & 0xFFFF) << 32 | (d.options as u64 & 0xFFFF) << 48,
    ]
}

/// The descriptor and target socket of an item.
pub(crate) fn decode(it: &Item) -> (XdpDesc, usize) {
    let d = XdpDesc {
        addr: it[0],
        len: it[1] as u32,
        options: (it[1] >> 48) as u32,
    };
    (d, ((it[1] >> 32) & 0xFFFF) as usize)
}

/// The inboxes of a pipeline's workers, one each (only when there are several workers).
pub(crate) struct Inboxes {
    rings: Vec<Arc<Ring<Item>>>,
    bells: Arc<[Bell]>,
    /// The worker that owns each socket (pipeline-wide index).
    owner: Arc<[usize]>,
}

impl Inboxes {
    /// An inbox of `capacity` items (a power of two) for each of `groups` (the sockets of
    /// each worker) over `sockets` sockets.
    pub(crate) fn new(groups: &[Vec<usize>], sockets: usize, capacity: usize) -> Result<Self> {
        let mut owner = vec![usize::MAX; sockets];
        for (w, g) in groups.iter().enumerate() {
            for &s in g {
                owner[s] = w;
            }
        }
        let rings = groups
            .iter()
            .map(|_| Ring::new(capacity, Mode::Mpsc))
            .collect::<Result<Vec<_>>>()?;
        let bells = groups
            .iter()
            .map(|_| Bell::new())
            .collect::<Result<Vec<_>>>()?;
        Ok(Inboxes {
            rings,
            bells: bells.into(),
            owner: owner.into(),
        })
    }

    /// Worker `w`'s ends: its inbox to drain, the other workers' inboxes to feed.
    pub(crate) fn ends(&self, w: usize, batch: usize) -> Result<Handoff> {
        let outboxes = self
            .rings
            .iter()
            .enumerate()
            .map(|(k, r)| (k != w).then(|| r.producer()).transpose())
            .collect::<Result<Vec<_>>>()?;
        Ok(Handoff {
            me: w,
            owner: Arc::clone(&self.owner),
            inbox: self.rings[w].consumer()?,
            staged: (0..self.rings.len())
                .map(|_| Vec::with_capacity(batch))
                .collect(),
            outboxes,
            bells: Arc::clone(&self.bells),
            scratch: vec![[0; 2]; batch.max(MAX_PACKET_BUFS) + MAX_PACKET_BUFS],
            batch,
            carry: Carry::with_capacity(MAX_PACKET_BUFS),
        })
    }

    /// What is left in every inbox once no worker runs (their consumers are gone): per worker,
    /// the items.
    pub(crate) fn leftovers(&self) -> Result<Vec<Vec<Item>>> {
        self.rings
            .iter()
            .map(|r| {
                let mut c = r.consumer()?;
                let mut all = Vec::new();
                let mut buf = [[0u64; 2]; 64];
                loop {
                    let k = c.dequeue_burst(&mut buf);
                    if k == 0 {
                        return Ok(all);
                    }
                    all.extend_from_slice(&buf[..k]);
                }
            })
            .collect()
    }
}

/// One worker's ends of the inboxes (see the [module docs](self)). Allocated once: staging
/// and scratch are sized for a batch.
pub(crate) struct Handoff {
    me: usize,
    owner: Arc<[usize]>,
    inbox: Consumer<Item>,
    outboxes: Vec<Option<Producer<Item>>>,
    /// Handoffs of the current batch, per target worker.
    staged: Vec<Vec<Item>>,
    /// Every worker's doorbell, by worker.
    bells: Arc<[Bell]>,
    /// Items taken (a batch, or one packet's most buffers, and a packet's carried buffers).
    scratch: Vec<Item>,
    batch: usize,
    /// The leading buffers of a packet whose rest was not dequeued yet (from the last take).
    carry: Carry<Item>,
}

impl Handoff {
    /// The worker (other than this one) that owns pipeline socket `socket`, if any.
    pub(crate) fn worker_of(&self, socket: usize) -> Option<usize> {
        self.owner
            .get(socket)
            .copied()
            .filter(|&w| w != self.me && w < self.outboxes.len())
    }

    /// Stage frame `d` for worker `w`, to go out of pipeline socket `socket`.
    pub(crate) fn stage(&mut self, w: usize, d: &XdpDesc, socket: usize) {
        self.staged[w].push(encode(d, socket));
    }

    /// Hand the staged frames over; `refused` gets the address of each frame an inbox had no
    /// room for (those stay this worker's). Returns how many were handed over, and how many
    /// sleeping workers it woke.
    pub(crate) fn flush(&mut self, refused: &mut Vec<u64>) -> (usize, u64) {
        let (mut k, mut rung) = (0, 0);
        for (w, items) in self.staged.iter_mut().enumerate() {
            if items.is_empty() {
                continue;
            }
            let Some(p) = self.outboxes[w].as_mut() else {
                refused.extend(items.iter().map(|it| it[0]));
                items.clear();
                continue;
            };
            // Whole packets only: the buffers of a multi-buffer packet (all but its last carry
            // XDP_PKT_CONTD) go over together or not at all, so the target never sends a packet
            // cut short.
            let q = if items.iter().any(Buffer::continues) {
                let mut q = 0;
                for r in whole::packets(items) {
                    if p.enqueue_bulk(&items[r.clone()]) == 0 {
                        break;
                    }
                    q = r.end;
                }
                q
            } else {
                p.enqueue_burst(items)
            };
            k += q;
            if q > 0 && self.bells[w].ring_if_asleep() {
                rung += 1;
            }
            refused.extend(items[q..].iter().map(|it| it[0]));
            items.clear();
        }
        (k, rung)
    }

    /// Take up to a batch of frames handed to this worker, whole packets only (more than a
    /// batch when one packet has more buffers than that).
    pub(crate) fn take(&mut self) -> &[Item] {
        let inbox = &mut self.inbox;
        let got = self
            .carry
            .read(&mut self.scratch, self.batch, self.batch, |out| {
                inbox.dequeue_burst(out)
            });
        &self.scratch[..got.unwrap_or(0)]
    }

    /// The leading buffers of a packet the last take kept back (for a worker that ends: they
    /// are its to release, counted).
    pub(crate) fn take_carry(&mut self) -> Vec<Item> {
        self.carry.take()
    }

    /// Whether the inbox is empty (a snapshot).
    pub(crate) fn inbox_empty(&self) -> bool {
        self.inbox.ring().is_empty() && self.carry.is_empty()
    }

    /// This worker's doorbell descriptor (readable once rung), for its sleep's poll set.
    pub(crate) fn bell_fd(&self) -> RawFd {
        self.bells[self.me].fd.raw()
    }

    /// About to sleep: raise the flag senders look at. Returns false (flag down again) when
    /// frames are already waiting, and the worker should take them instead of sleeping.
    pub(crate) fn sleep_begins(&self) -> bool {
        let b = &self.bells[self.me];
        b.asleep.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if !self.inbox_empty() {
            b.asleep.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Awake again: lower the flag, and reset the eventfd when it was rung (`rung`: poll saw it
    /// readable).
    pub(crate) fn sleep_ends(&self, rung: bool) {
        let b = &self.bells[self.me];
        b.asleep.store(false, Ordering::Relaxed);
        if rung {
            b.fd.drain();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::xdp::XDP_PKT_CONTD;

    #[test]
    fn an_item_carries_the_descriptor_and_the_socket() {
        let d = XdpDesc {
            addr: 0x1234_5678_9abc,
            len: 1514,
            options: 1,
        };
        assert_eq!(decode(&encode(&d, 4095)), (d, 4095));
    }

    #[test]
    fn frames_go_to_the_worker_that_owns_the_socket_and_a_full_inbox_refuses() {
        let boxes = Inboxes::new(&[vec![0, 2], vec![1]], 3, 4).unwrap();
        let mut a = boxes.ends(0, 8).unwrap();
        let mut b = boxes.ends(1, 8).unwrap();
        assert_eq!(
            (a.worker_of(1), a.worker_of(2), a.worker_of(9)),
            (Some(1), None, None)
        );
        assert_eq!(b.worker_of(2), Some(0));
        for i in 0..6u64 {
            let d = XdpDesc {
                addr: i * 2048,
                len: 60,
                options: 0,
            };
            a.stage(1, &d, 1);
        }
        let mut refused = Vec::new();
        assert_eq!(a.flush(&mut refused).0, 4, "the inbox holds 4");
        assert_eq!(refused, [4 * 2048, 5 * 2048]);
        let got: Vec<(XdpDesc, usize)> = b.take().iter().map(decode).collect();
        assert_eq!(got.len(), 4);
        assert!(got.iter().all(|(d, s)| *s == 1 && d.len == 60));
        assert!(b.take().is_empty());
        a.stage(1, &XdpDesc::default(), 1);
        assert_eq!(a.flush(&mut refused).0, 1);
        drop((a, b));
        let left = boxes.leftovers().unwrap();
        assert_eq!((left[0].len(), left[1].len()), (0, 1), "one never taken");
    }

    #[test]
    fn a_multi_buffer_packet_goes_over_whole_or_not_at_all() {
        let boxes = Inboxes::new(&[vec![0], vec![1]], 2, 4).unwrap();
        let mut a = boxes.ends(0, 8).unwrap();
        let mut b = boxes.ends(1, 8).unwrap();
        // Packets of 1, 2 and 3 buffers (all but a packet's last carry XDP_PKT_CONTD): the
        // inbox of 4 takes the first two packets (3 buffers) and refuses the whole third one,
        // not its first buffer alone.
        for (i, contd) in [false, true, false, true, true, false].iter().enumerate() {
            let d = XdpDesc {
                addr: i as u64 * 2048,
                len: 1000,
                options: if *contd { XDP_PKT_CONTD } else { 0 },
            };
            a.stage(1, &d, 1);
        }
        let mut refused = Vec::new();
        assert_eq!(a.flush(&mut refused).0, 3);
        assert_eq!(refused, [3 * 2048, 4 * 2048, 5 * 2048]);
        let got: Vec<u64> = b.take().iter().map(|it| decode(it).0.addr).collect();
        assert_eq!(got, [0, 2048, 2 * 2048]);
    }

    fn buf(i: u64, contd: bool) -> XdpDesc {
        XdpDesc {
            addr: i * 2048,
            len: 1000,
            options: if contd { XDP_PKT_CONTD } else { 0 },
        }
    }

    #[test]
    fn a_take_hands_out_whole_packets_only() {
        // Takes of a batch of 2: a packet cut by the batch's end waits for the next take, and
        // a 3-buffer packet is taken whole (with what follows it: more than a batch).
        let boxes = Inboxes::new(&[vec![0], vec![1]], 2, 64).unwrap();
        let mut a = boxes.ends(0, 8).unwrap();
        let mut b = boxes.ends(1, 2).unwrap();
        for (i, contd) in [false, true, false, true, true, false, false]
            .iter()
            .enumerate()
        {
            a.stage(1, &buf(i as u64, *contd), 1);
        }
        assert_eq!(a.flush(&mut Vec::new()), (7, 0), "nobody sleeps: no bell");
        let mut takes = Vec::new();
        for _ in 0..8 {
            let t: Vec<u64> = b.take().iter().map(|it| it[0] / 2048).collect();
            if !t.is_empty() {
                takes.push(t);
            }
        }
        assert_eq!(takes, [vec![0], vec![1, 2], vec![3, 4, 5, 6]]);
        assert!(b.take_carry().is_empty() && b.inbox_empty());
    }

    #[test]
    fn a_handoff_rings_the_bell_of_a_sleeping_worker_only() {
        let boxes = Inboxes::new(&[vec![0], vec![1]], 2, 64).unwrap();
        let mut a = boxes.ends(0, 8).unwrap();
        let mut b = boxes.ends(1, 8).unwrap();
        let readable = |fd: RawFd| {
            let mut p = [libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            }];
            crate::sys::event::poll_for(&mut p, std::time::Duration::ZERO).unwrap() == 1
        };
        assert!(b.sleep_begins(), "an empty inbox: b may sleep");
        a.stage(1, &buf(0, false), 1);
        assert_eq!(a.flush(&mut Vec::new()), (1, 1), "b sleeps: rung once");
        assert!(readable(b.bell_fd()));
        b.sleep_ends(true);
        assert!(!readable(b.bell_fd()), "drained on waking");
        a.stage(1, &buf(1, false), 1);
        assert_eq!(a.flush(&mut Vec::new()), (1, 0), "awake: not rung");
        assert!(!b.sleep_begins(), "frames wait: b does not sleep");
        assert_eq!(b.take().len(), 2);
        assert!(b.sleep_begins());
        b.sleep_ends(false);
        a.stage(1, &buf(2, false), 1);
        assert_eq!(a.flush(&mut Vec::new()).1, 0, "woke by itself: not rung");
    }
}
