//! Whole packets out of a stream of buffers.
//!
//! A multi-buffer packet comes as several buffers, all but its last marked `XDP_PKT_CONTD`, and
//! a read (from an RX ring, or from a ring between workers) can end between two of them. A
//! [`Carry`] keeps the leading buffers of such a cut packet from one read to the next and puts
//! them back in front of what the next read brings, so its user only ever sees whole packets.
//! The pipeline's workers (their sockets and their inboxes) and the RoCE engine read this way.

use crate::sys::xdp::{XdpDesc, XDP_PKT_CONTD};

/// A buffer of a packet: it knows whether the packet continues into the next buffer.
pub(crate) trait Buffer: Copy {
    /// Whether this buffer is not its packet's last (`XDP_PKT_CONTD`).
    fn continues(&self) -> bool;
}

impl Buffer for XdpDesc {
    #[inline]
    fn continues(&self) -> bool {
        self.options & XDP_PKT_CONTD != 0
    }
}

/// How many of `bufs` make whole packets: up to the last buffer that ends a packet.
#[inline]
pub(crate) fn whole<T: Buffer>(bufs: &[T]) -> usize {
    match bufs.last() {
        None => 0,
        Some(b) if !b.continues() => bufs.len(),
        Some(_) => bufs
            .iter()
            .rposition(|b| !b.continues())
            .map_or(0, |p| p + 1),
    }
}

/// The packets in `bufs`, each as the range of its buffers (a trailing packet without its last
/// buffer is given as it is: [`Carry::read`] hands such a run over only when no packet end fits).
pub(crate) fn packets<T: Buffer>(bufs: &[T]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= bufs.len() {
            return None;
        }
        let end = bufs[start..]
            .iter()
            .position(|b| !b.continues())
            .map_or(bufs.len(), |p| start + p + 1);
        let r = start..end;
        start = end;
        Some(r)
    })
}

/// The leading buffers of a packet whose rest was not read yet (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct Carry<T> {
    items: Vec<T>,
}

impl<T: Buffer> Carry<T> {
    /// An empty carry with room for `cap` buffers (a packet's most) without allocating.
    pub(crate) fn with_capacity(cap: usize) -> Self {
        Carry {
            items: Vec::with_capacity(cap),
        }
    }

    /// How many buffers wait for the rest of their packet.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no buffer waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Read into `buf` behind the carried buffers and give how many of `buf`'s leading buffers
    /// make whole packets (possibly 0); the buffers of a packet cut at the end are carried to
    /// the next read. `read` gets the part of `buf` to fill and returns how many it filled.
    ///
    /// While fewer than `batch` buffers are carried, `read` gets room for at most `limit`
    /// (≤ `batch`) and `batch` in all, so a read stays within a batch; otherwise it gets the
    /// rest of `buf`, which should hold a packet's most buffers: a packet longer than a batch
    /// still completes. When `buf` is full and holds no packet end (no kernel makes such a
    /// packet), all of it is given as it is rather than carried for ever.
    ///
    /// None when `read` brought nothing (the carried buffers stay carried).
    pub(crate) fn read(
        &mut self,
        buf: &mut [T],
        batch: usize,
        limit: usize,
        read: impl FnOnce(&mut [T]) -> usize,
    ) -> Option<usize> {
        let c = self.items.len();
        let room = if c < batch {
            limit.min(batch - c)
        } else {
            buf.len() - c
        };
        let got = read(&mut buf[c..c + room]);
        if got == 0 {
            return None;
        }
        if c == 0 && !buf[got - 1].continues() {
            return Some(got); // the usual case: no packet cut, nothing carried
        }
        buf[..c].copy_from_slice(&self.items);
        self.items.clear();
        let n = c + got;
        let mut w = whole(&buf[..n]);
        if w == 0 && n == buf.len() {
            w = n;
        }
        self.items.extend_from_slice(&buf[w..n]);
        Some(w)
    }

    /// Take the carried buffers (a reader that stops: their frames are its to give back).
    pub(crate) fn take(&mut self) -> Vec<T> {
        std::mem::take(&mut self.items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(addr: u64, more: bool) -> XdpDesc {
        XdpDesc {
            addr,
            len: 100,
            options: if more { XDP_PKT_CONTD } else { 0 },
        }
    }

    /// A source of buffers read in pieces of whatever size the reader asks for.
    struct Source(Vec<XdpDesc>, usize);

    impl Source {
        fn read(&mut self, out: &mut [XdpDesc], most: usize) -> usize {
            let k = out.len().min(most).min(self.0.len() - self.1);
            out[..k].copy_from_slice(&self.0[self.1..self.1 + k]);
            self.1 += k;
            k
        }
    }

    #[test]
    fn whole_counts_up_to_the_last_packet_end() {
        assert_eq!(whole::<XdpDesc>(&[]), 0);
        assert_eq!(whole(&[d(0, false), d(1, true)]), 1);
        assert_eq!(whole(&[d(0, true), d(1, false), d(2, true), d(3, true)]), 2);
        assert_eq!(whole(&[d(0, true), d(1, true)]), 0);
        assert_eq!(whole(&[d(0, true), d(1, false)]), 2);
    }

    #[test]
    fn packets_splits_at_each_end() {
        let b = [d(0, false), d(1, true), d(2, true), d(3, false), d(4, true)];
        let r: Vec<_> = packets(&b).collect();
        assert_eq!(r, vec![0..1, 1..4, 4..5]);
        assert_eq!(packets::<XdpDesc>(&[]).count(), 0);
    }

    #[test]
    fn packets_cut_by_reads_come_whole_and_in_order() {
        // Packets of 1, 3, 2, 5 and 1 buffers, read 2 buffers at a time with a batch of 4:
        // every read's packets are whole and all buffers come once, in order.
        let mut all = Vec::new();
        let mut a = 0;
        for n in [1usize, 3, 2, 5, 1] {
            for k in 0..n {
                all.push(d(a, k + 1 < n));
                a += 1;
            }
        }
        let mut src = Source(all.clone(), 0);
        let mut carry = Carry::with_capacity(8);
        let mut buf = vec![XdpDesc::default(); 4 + 8];
        let mut seen = Vec::new();
        for _ in 0..20 {
            let Some(w) = carry.read(&mut buf, 4, 4, |out| src.read(out, 2)) else {
                continue;
            };
            assert_eq!(whole(&buf[..w]), w, "a read gave part of a packet");
            seen.extend_from_slice(&buf[..w]);
        }
        assert!(carry.is_empty());
        assert_eq!(
            seen.iter().map(|x| x.addr).collect::<Vec<_>>(),
            (0..a).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_packet_longer_than_a_batch_completes() {
        // 6 buffers with a batch of 2: the carried buffers open the read to the whole buffer.
        let all: Vec<_> = (0..6).map(|i| d(i, i < 5)).collect();
        let mut src = Source(all, 0);
        let mut carry = Carry::with_capacity(8);
        let mut buf = vec![XdpDesc::default(); 2 + 8];
        let mut got = None;
        for _ in 0..10 {
            if let Some(w) = carry.read(&mut buf, 2, 2, |out| src.read(out, usize::MAX)) {
                if w > 0 {
                    got = Some(w);
                    break;
                }
            }
        }
        assert_eq!(got, Some(6));
        assert!(carry.is_empty());
    }

    #[test]
    fn nothing_read_leaves_the_carry_and_no_end_in_a_full_buffer_is_given() {
        let mut carry = Carry::with_capacity(4);
        let mut buf = vec![XdpDesc::default(); 4];
        assert_eq!(
            carry.read(&mut buf, 4, 4, |out| {
                out[0] = d(7, true);
                1
            }),
            Some(0)
        );
        assert_eq!(carry.len(), 1);
        assert_eq!(carry.read(&mut buf, 4, 4, |_| 0), None);
        assert_eq!(carry.len(), 1);
        // The limit caps a read below a batch.
        assert_eq!(
            carry.read(&mut buf, 4, 1, |out| {
                assert_eq!(out.len(), 1);
                out[0] = d(8, true);
                1
            }),
            Some(0)
        );
        // Full, and no end: given as it is.
        let w = carry.read(&mut buf, 2, 2, |out| {
            out.iter_mut().for_each(|x| *x = d(9, true));
            out.len()
        });
        assert_eq!(w, Some(4));
        assert!(carry.is_empty());
        assert_eq!(carry.take(), vec![]);
    }
}
