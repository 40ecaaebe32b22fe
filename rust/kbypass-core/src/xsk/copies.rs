//! Packets the application makes itself: written in place into a free frame
//! ([`XskSocket::build_frame`]), or copies of packets larger than one frame sent on a
//! multi-buffer (`XDP_USE_SG`) socket, each split over as many frames as it needs, every
//! descriptor but its last marked [`XDP_PKT_CONTD`](crate::sys::xdp::XDP_PKT_CONTD).

use super::socket::{CopySend, XskSocket};
use crate::sys::xdp::{XdpDesc, XDP_PKT_CONTD};

/// Descriptors one packet may span: the kernel builds an skb of one linear part and at most
/// `MAX_SKB_FRAGS` (17 by default) fragments from them.
pub const MAX_DESCS_PER_PACKET: usize = 18;

/// Packets per TX ring submission (one kick).
const BURST: usize = 64;

impl XskSocket {
    /// Takes a free frame and lets `write` build a packet in it: `write` gets the frame's TX
    /// room ([`Umem::tx_capacity`](super::Umem::tx_capacity) bytes, with whatever an earlier
    /// packet left there) and returns the packet's length. Returns the descriptor to
    /// [`send`](XskSocket::send) (the frame is the application's until then), or None when no
    /// frame is free or `write` returned None, 0 or more than the room (the frame goes back).
    /// Saves the copy of [`send_copies`](XskSocket::send_copies) for a packet made anyway.
    pub fn build_frame(
        &mut self,
        write: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> Option<XdpDesc> {
        let cap = self.umem().tx_capacity();
        let mut a = [0u64; 1];
        if self.alloc(&mut a) == 0 {
            return None;
        }
        let addr = a[0];
        let Some(ptr) = self.app_ptr(addr, cap) else {
            self.release(&a);
            return None;
        };
        // SAFETY: `app_ptr` checked that `cap` bytes at `addr` lie inside one UMEM frame in the
        // application state, which the kernel does not touch; `alloc` took that frame from the
        // pool just now and its address has not left this call, so no hold, descriptor or view
        // names it (another socket of the same UMEM is out of reach outside this crate, see
        // `XskSocket::bind`, and inside it never reads a frame it was not given); the slice
        // lives only for `write`'s call, and the UMEM (held by the socket) outlives it.
        let frame = unsafe { std::slice::from_raw_parts_mut(ptr, cap as usize) };
        match write(frame) {
            Some(len) if len > 0 && len <= cap as usize => Some(XdpDesc {
                addr,
                len: len as u32,
                options: 0,
            }),
            _ => {
                self.release(&a);
                None
            }
        }
    }

    /// The multi-buffer path of [`XskSocket::send_copies`]: `packets` in order, each split
    /// over `ceil(len / tx_capacity)` frames; stops at the first packet that finds too few
    /// free frames or no room on the TX ring (its frames and the rest's go back). Empty
    /// packets and packets of more than [`MAX_DESCS_PER_PACKET`] frames are skipped and
    /// counted in [`CopySend::oversize`].
    pub(super) fn send_split_copies(&mut self, packets: &[&[u8]]) -> CopySend {
        let cap = self.umem().tx_capacity() as usize;
        let mut out = CopySend::default();
        let mut descs = std::mem::take(&mut self.split_descs);
        let mut addrs = [0u64; MAX_DESCS_PER_PACKET];
        let mut rest = packets;
        while !rest.is_empty() {
            self.complete();
            descs.clear();
            let mut taken = 0;
            let mut short = false;
            for p in rest.iter().take(BURST) {
                let n = p.len().div_ceil(cap);
                if n == 0 || n > MAX_DESCS_PER_PACKET {
                    out.oversize += 1;
                    taken += 1;
                    continue;
                }
                let got = self.alloc(&mut addrs[..n]);
                if got < n {
                    self.release(&addrs[..got]);
                    short = true;
                    break;
                }
                let start = descs.len();
                for (i, (chunk, &a)) in p.chunks(cap).zip(&addrs[..n]).enumerate() {
                    let Some(dst) = self.app_ptr(a, chunk.len() as u32) else {
                        break;
                    };
                    // SAFETY: `app_ptr` checked that chunk.len() bytes at `a` lie inside a
                    // frame just allocated (App: neither the kernel nor any hold has it, and
                    // no view of it exists); `chunk` is caller memory, not in that frame.
                    unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), dst, chunk.len()) };
                    descs.push(XdpDesc {
                        addr: a,
                        len: chunk.len() as u32,
                        options: if i + 1 < n { XDP_PKT_CONTD } else { 0 },
                    });
                }
                if descs.len() - start < n {
                    // A frame fresh from the pool always takes its share; if one did not,
                    // give the packet's frames back and stop rather than send a cut packet.
                    let back: Vec<u64> = addrs[..n].to_vec();
                    descs.truncate(start);
                    self.release(&back);
                    short = true;
                    break;
                }
                taken += 1;
            }
            let q = self.send(&descs);
            if q < descs.len() {
                let back: Vec<u64> = descs[q..].iter().map(|d| d.addr).collect();
                self.release(&back);
            }
            let sent = descs[..q]
                .iter()
                .filter(|d| d.options & XDP_PKT_CONTD == 0)
                .count();
            out.queued += sent;
            let whole = descs
                .iter()
                .filter(|d| d.options & XDP_PKT_CONTD == 0)
                .count();
            if short || sent < whole {
                break;
            }
            rest = &rest[taken..];
        }
        self.split_descs = descs;
        out
    }
}
