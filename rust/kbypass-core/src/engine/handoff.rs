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
//! workers end are given back by [`super::Pipeline::join`], counted the same way.

use std::sync::Arc;

use crate::error::Result;
use crate::ring::{Consumer, Mode, Producer, Ring};
use crate::sys::xdp::{XdpDesc, XDP_PKT_CONTD};

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
        Ok(Inboxes {
            rings,
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
            scratch: vec![[0; 2]; batch],
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
    scratch: Vec<Item>,
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
    /// room for (those stay this worker's). Returns how many were handed over.
    pub(crate) fn flush(&mut self, refused: &mut Vec<u64>) -> usize {
        let mut k = 0;
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
            let multi = items
                .iter()
                .any(|it| decode(it).0.options & XDP_PKT_CONTD != 0);
            let q = if multi {
                let mut q = 0;
                while q < items.len() {
                    let end = items[q..]
                        .iter()
                        .position(|it| decode(it).0.options & XDP_PKT_CONTD == 0)
                        .map_or(items.len(), |e| q + e + 1);
                    if p.enqueue_bulk(&items[q..end]) == 0 {
                        break;
                    }
                    q = end;
                }
                q
            } else {
                p.enqueue_burst(items)
            };
            k += q;
            refused.extend(items[q..].iter().map(|it| it[0]));
            items.clear();
        }
        k
    }

    /// Take up to a batch of frames handed to this worker.
    pub(crate) fn take(&mut self) -> &[Item] {
        let n = self.inbox.dequeue_burst(&mut self.scratch);
        &self.scratch[..n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(a.flush(&mut refused), 4, "the inbox holds 4");
        assert_eq!(refused, [4 * 2048, 5 * 2048]);
        let got: Vec<(XdpDesc, usize)> = b.take().iter().map(decode).collect();
        assert_eq!(got.len(), 4);
        assert!(got.iter().all(|(d, s)| *s == 1 && d.len == 60));
        assert!(b.take().is_empty());
        a.stage(1, &XdpDesc::default(), 1);
        assert_eq!(a.flush(&mut refused), 1);
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
        assert_eq!(a.flush(&mut refused), 3);
        assert_eq!(refused, [3 * 2048, 4 * 2048, 5 * 2048]);
        let got: Vec<u64> = b.take().iter().map(|it| decode(it).0.addr).collect();
        assert_eq!(got, [0, 2048, 2 * 2048]);
    }
}
