//! Building frames inside a handler: reshaping a batch frame (its length; its start, moved
//! into the room in front of the packet or further in) and emitting new frames.
//!
//! The checks and the bookkeeping are here, shared by the two ways a handler reaches its batch
//! ([`super::BatchCtx`] in Rust, the [`super::BatchFrames`] lease from a binding); the bytes are
//! reached by their callers (through `frame_bytes_mut`, whose exclusivity each of them proves).
//!
//! A reshaped descriptor always lies inside its frame and holds at least an Ethernet header
//! ([`crate::xsk::Umem::adjusted_head`], [`crate::xsk::Umem::with_len`]); the bytes a reshape
//! adds (pushed in front, or grown at the end) are zeroed, so a TX never sends what an earlier
//! packet left in the frame. AF_XDP in aligned mode sends a descriptor from any offset inside
//! its chunk (`xp_aligned_validate_desc`: `offset + len <= chunk_size`, `len > 0`), so a
//! reshaped frame goes out as it is, zero-copy.
//!
//! An emitted frame is taken from the batch socket's cache of free frames, filled with a copy
//! of the packet at [`Umem::tx_addr`] and queued; the worker sends it, after the batch's own
//! TX and FORWARD frames, out of the socket named (one of its own). No free frame is a counted
//! failure the caller sees (`Ok(false)`), never a silent one.

use crate::error::{Error, Result};
use crate::sys::xdp::{XdpDesc, XDP_PKT_CONTD};
use crate::xsk::{Umem, MIN_PACKET};

/// A frame emitted during a batch: which of the worker's sockets sends it, and its descriptor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Emitted {
    /// Index into the worker's sockets.
    pub local: usize,
    /// The frame (state `App` until the worker sends or releases it).
    pub desc: XdpDesc,
}

/// How a reshape changes a batch frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reshape {
    /// Set the packet's length (its start stays).
    Len(u32),
    /// Move the packet's start by this many bytes (`bpf_xdp_adjust_head`'s sense: negative
    /// pushes bytes in front, positive pops them; its end stays).
    Head(i32),
}

/// The descriptor batch frame `i` (of `descs`) gets from `op`, checked; nothing changes yet.
/// A frame of a multi-buffer packet (it or the frame before it carries `XDP_PKT_CONTD`) is
/// refused: its length and start belong to the whole packet.
pub(crate) fn check(umem: &Umem, descs: &[XdpDesc], i: usize, op: Reshape) -> Result<XdpDesc> {
    let d = descs.get(i).ok_or_else(|| {
        Error::invalid(format!(
            "frame {i} out of range for a batch of {}",
            descs.len()
        ))
    })?;
    let contd = |d: &XdpDesc| d.options & XDP_PKT_CONTD != 0;
    if contd(d) || (i > 0 && contd(&descs[i - 1])) {
        return Err(Error::invalid(format!(
            "frame {i} is one buffer of a multi-buffer packet: its length and start cannot be changed alone (reshape single-buffer packets; drop or copy this one)"
        )));
    }
    match op {
        Reshape::Len(len) => umem.with_len(i, d, len),
        Reshape::Head(delta) => umem.adjusted_head(i, d, delta),
    }
}

/// The UMEM range `[start, end)` covering both `old` and `new` (one frame's bytes, as both
/// lie inside the same frame).
pub(crate) fn span(old: &XdpDesc, new: &XdpDesc) -> (u64, u32) {
    let lo = old.addr.min(new.addr);
    let hi = (old.addr + old.len as u64).max(new.addr + new.len as u64);
    (lo, (hi - lo) as u32)
}

/// Zero the bytes `new` covers and `old` did not, in `bytes` (the UMEM range from
/// [`span`] of the two).
pub(crate) fn zero_added(bytes: &mut [u8], old: &XdpDesc, new: &XdpDesc) {
    let (lo, _) = span(old, new);
    let rel = |a: u64| (a - lo) as usize;
    if new.addr < old.addr {
        bytes[rel(new.addr)..rel(old.addr)].fill(0);
    }
    let (old_end, new_end) = (old.addr + old.len as u64, new.addr + new.len as u64);
    if new_end > old_end {
        bytes[rel(old_end)..rel(new_end)].fill(0);
    }
}

/// Where and how much a batch may emit (the worker's sockets, the batch's, a cap per batch).
#[derive(Debug, Clone, Copy)]
pub(crate) struct EmitRules<'s> {
    /// Pipeline-wide index of each of the worker's sockets, by local index.
    pub sockets: &'s [usize],
    /// Local index of the socket the batch arrived on (the default target).
    pub local: usize,
    /// Frames one batch may emit at most.
    pub limit: usize,
}

impl EmitRules<'_> {
    /// Check an emit of a `len`-byte packet to `socket` (pipeline-wide; None: the batch's
    /// socket) after `so_far` emits in this batch; returns the local socket index.
    pub(crate) fn target(
        &self,
        umem: &Umem,
        len: usize,
        socket: Option<usize>,
        so_far: usize,
    ) -> Result<usize> {
        let local = match socket {
            None => self.local,
            Some(s) => self.sockets.iter().position(|&g| g == s).ok_or_else(|| {
                Error::invalid(format!(
                    "socket {s} is not one of this worker's sockets {:?}: emit on a socket the worker owns (Pipeline(workers=[[0, 1]]) gives one worker both sockets)",
                    self.sockets
                ))
            })?,
        };
        let cap = umem.tx_capacity() as usize;
        if len < MIN_PACKET as usize || len > cap {
            return Err(Error::invalid(format!(
                "cannot emit a {len}-byte frame: give {MIN_PACKET}..={cap} bytes (an Ethernet header at least; a frame holds {cap} after the kernel's and the port's headroom, open the port with frame_size=4096 for more)"
            )));
        }
        if so_far >= self.limit {
            return Err(Error::State(format!(
                "this batch already emitted {so_far} frames, the most one batch may (max(batch size, 64)): emit the rest from the next batch, or raise the pipeline's batch="
            )));
        }
        Ok(local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(addr: u64, len: u32) -> XdpDesc {
        XdpDesc {
            addr,
            len,
            options: 0,
        }
    }

    #[test]
    fn span_covers_both_and_only_added_bytes_are_zeroed() {
        // Pushed 4 in front and grown by 3 at the end: [96, 210) covers both.
        let (old, new) = (d(100, 100), d(96, 114));
        assert_eq!(span(&old, &new), (96, 114));
        let mut b = vec![0xAA; 114];
        zero_added(&mut b, &old, &new);
        assert!(b[..4].iter().all(|&x| x == 0));
        assert!(
            b[4..104].iter().all(|&x| x == 0xAA),
            "the packet's bytes stay"
        );
        assert!(b[104..].iter().all(|&x| x == 0));
        // Popped and cut: nothing is added, nothing is zeroed.
        let (old, new) = (d(100, 100), d(118, 50));
        assert_eq!(span(&old, &new), (100, 100));
        let mut b = vec![0xAA; 100];
        zero_added(&mut b, &old, &new);
        assert!(b.iter().all(|&x| x == 0xAA));
    }
}
