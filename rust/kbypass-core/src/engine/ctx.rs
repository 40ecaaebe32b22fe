//! [`BatchCtx`]: one batch as the handler sees it, and what the handler may do with it (see
//! the [module docs](super)).

use std::sync::Arc;

use super::build::{self, EmitRules, Emitted, Reshape};
use super::kept::{Kept, KeptQueue};
use super::worker::{OnError, WorkerStats};
use super::{FORWARD, KEEP, TX};
use crate::error::{Error, Result};
use crate::mem::PoolCache;
use crate::packet::PacketMeta;
use crate::sys::xdp::{XdpDesc, XDP_TX_METADATA};
use crate::xsk::{FrameHold, HeldFrames, Umem, XskSocket, XDP_PACKET_HEADROOM};

/// What became of a frame of the batch beyond its verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Slot {
    /// The batch's own: the verdict applies to it.
    #[default]
    Own,
    /// Held by a [`FrameHold`] the handler took: the worker leaves it alone.
    Held,
    /// Held, and a copy (now in the descriptor) takes its place for the TX/FORWARD verdict.
    Copied(u32),
}

/// One batch as the handler sees it. Slices are `n` long (the frames received).
///
/// Built only by the worker: it lends the handler the batch's frames, which are the worker's
/// until the verdicts are applied. A frame the handler needs beyond that (a KEEP handle, a view
/// that outlived the call) is taken with [`BatchCtx::keep`] or [`BatchCtx::hold_view`]; the
/// worker then never recycles it, and it returns to the pool when its last hold is dropped.
///
/// A handler may also reshape a frame ([`BatchCtx::set_len`], [`BatchCtx::adjust_head`]: the
/// descriptor the verdict sends changes) and emit new frames ([`BatchCtx::emit`]), which the
/// worker sends after the batch's own TX and FORWARD frames (see [`super::build`]).
pub struct BatchCtx<'a> {
    /// Pipeline-wide index of the socket the frames arrived on.
    pub socket: usize,
    /// Index of the worker.
    pub worker: usize,
    /// Parsed headers, one per frame.
    pub metas: &'a [PacketMeta],
    /// Verdicts, pre-filled with the default; the handler overwrites them.
    pub verdicts: &'a mut [u8],
    /// Target socket (pipeline-wide index) of FORWARD verdicts.
    pub forward_to: &'a mut [u16],
    /// The UMEM the frames are in.
    pub umem: &'a Umem,
    /// Errors the handler absorbed itself (a per-packet layer counts per packet here, see
    /// [`BatchCtx::fail_packet`]).
    pub errors: u64,
    /// Set by the handler to stop the pipeline after this batch.
    pub stop: bool,
    pub(super) default_verdict: u8,
    pub(super) on_error: OnError,
    pub(super) descs: &'a mut [XdpDesc],
    pub(super) slots: &'a mut [Slot],
    pub(super) sock: &'a mut XskSocket,
    pub(super) kept: Option<&'a KeptQueue>,
    pub(super) stats: &'a Arc<WorkerStats>,
    pub(super) held: usize,
    pub(super) escaped: u64,
    pub(super) copied: u64,
    pub(super) copy_failed: u64,
    /// Pipeline-wide index of each of the worker's sockets, by local index.
    pub(super) sockets: &'a [usize],
    /// Local index of the batch's socket.
    pub(super) local: usize,
    pub(super) emit_limit: usize,
    pub(super) emits: &'a mut Vec<Emitted>,
    pub(super) emit_failed: u64,
}

impl BatchCtx<'_> {
    /// Frames in the batch.
    pub fn len(&self) -> usize {
        self.descs.len()
    }

    /// Whether the batch is empty (never, for a batch a worker hands out).
    pub fn is_empty(&self) -> bool {
        self.descs.is_empty()
    }

    /// The descriptors (UMEM address of packet data, length).
    pub fn descs(&self) -> &[XdpDesc] {
        self.descs
    }

    /// Pipeline-wide indexes of the worker's sockets: where FORWARD and [`BatchCtx::emit`]
    /// may send.
    pub fn sockets(&self) -> &[usize] {
        self.sockets
    }

    /// Frames emitted so far in this batch.
    pub fn emitted(&self) -> usize {
        self.emits.len()
    }

    /// What an emit from this batch may do (the lease copies it).
    pub(super) fn emit_rules(&self) -> EmitRules<'_> {
        EmitRules {
            sockets: self.sockets,
            local: self.local,
            limit: self.emit_limit,
        }
    }

    /// Swap the batch socket's cache of free frames with `other` (a lease borrows it for the
    /// handler call, and gives it back the same way).
    pub(super) fn swap_cache(&mut self, other: &mut PoolCache) {
        self.sock.swap_cache(other);
    }

    /// Set frame `i`'s packet length to `len` (its start stays): a TX/FORWARD verdict sends
    /// `len` bytes. The packet must stay inside its frame and keep an Ethernet header
    /// ([`crate::xsk::MIN_PACKET`]); bytes it grows by are zeroed. An error (nothing changes)
    /// when it does not fit, `i` is out of range, the frame is held, or it is one buffer of a
    /// multi-buffer packet. [`BatchCtx::metas`] keep describing the frame as received.
    pub fn set_len(&mut self, i: usize, len: u32) -> Result<()> {
        self.reshape(i, Reshape::Len(len))
    }

    /// Move frame `i`'s first byte by `delta` (as `bpf_xdp_adjust_head`: negative pushes
    /// `-delta` zeroed bytes in front of the packet, into the room before it — the kernel's
    /// 256 bytes plus the port's `headroom` for a received frame; positive pops `delta` bytes
    /// off the front); the end stays. Errors as [`BatchCtx::set_len`].
    pub fn adjust_head(&mut self, i: usize, delta: i32) -> Result<()> {
        self.reshape(i, Reshape::Head(delta))
    }

    fn reshape(&mut self, i: usize, op: Reshape) -> Result<()> {
        if self.slots.get(i).is_some_and(|s| *s != Slot::Own) {
            return Err(Error::State(format!(
                "frame {i} is held (kept, or a view of it outlives the batch): its bytes and span no longer change"
            )));
        }
        let new = build::check(self.umem, self.descs, i, op)?;
        let old = self.descs[i];
        let (lo, len) = build::span(&old, &new);
        // SAFETY: the frame is this batch's and not held (checked above), so neither the kernel
        // nor a ring nor a hold has it; `&mut self` makes this the only Rust borrow of the
        // batch's frames, and views handed out of Rust are the caller's, who does not run them
        // while this borrow lives. `frame_bytes_mut` checks the range lies inside the frame.
        let bytes = unsafe { super::frame_bytes_mut(self.umem, lo, len) }
            .ok_or_else(|| Error::State(format!("frame {i} is not there to reshape")))?;
        build::zero_added(bytes, &old, &new);
        self.descs[i] = new;
        Ok(())
    }

    /// Emit a new frame holding a copy of `packet`, sent by the worker after the batch's own
    /// TX and FORWARD frames out of `socket` (pipeline-wide index, one of
    /// [`BatchCtx::sockets`]; None: the batch's socket). Returns false, counted in the worker's
    /// `emit_failed`, when no frame is free; an error for a packet shorter than an Ethernet
    /// header or longer than a frame's TX room ([`Umem::tx_capacity`]), a socket the worker
    /// does not own, or more emits than a batch may make (max(batch size, 64)).
    pub fn emit(&mut self, packet: &[u8], socket: Option<usize>) -> Result<bool> {
        let rules = self.emit_rules();
        let local = rules.target(self.umem, packet.len(), socket, self.emits.len())?;
        let mut a = [0u64];
        if self.sock.alloc(&mut a) == 0 {
            self.emit_failed += 1;
            return Ok(false);
        }
        let len = packet.len() as u32;
        // SAFETY: the frame was just allocated (App): neither the kernel, a ring, a hold nor
        // any view has it, and `&mut self` makes this the only Rust borrow; `packet` is the
        // caller's memory, which cannot be this free frame's.
        match unsafe { super::frame_bytes_mut(self.umem, a[0], len) } {
            Some(dst) => dst.copy_from_slice(packet),
            None => {
                self.sock.release(&a);
                return Err(Error::State(
                    "a frame just allocated was not writable".into(),
                ));
            }
        }
        self.emits.push(Emitted {
            local,
            desc: XdpDesc {
                addr: a[0],
                len,
                options: 0,
            },
        });
        Ok(true)
    }

    /// The packet bytes of frame `i` (None if `i` is out of range).
    pub fn frame(&self, i: usize) -> Option<&[u8]> {
        let d = self.descs.get(i)?;
        // SAFETY: the frame is this batch's (the worker received it and is inside the handler
        // call), so neither the kernel nor a ring has it; the only Rust writer is `frame_mut`,
        // which needs `&mut self` and so cannot overlap this borrow, and views handed out of
        // Rust are the caller's, who does not run them meanwhile.
        unsafe { super::frame_bytes(self.umem, d.addr, d.len) }
    }

    /// The packet bytes of frame `i`, to edit in place (None if `i` is out of range). A frame
    /// already held (a view of it outlived the handler) is refused: its holders' bytes never
    /// change.
    pub fn frame_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        if *self.slots.get(i)? != Slot::Own {
            return None;
        }
        let d = self.descs[i];
        // SAFETY: as in `frame`; `&mut self` makes this the only Rust borrow of the batch's
        // frames, and views handed out of Rust are the caller's, who does not run them while
        // this borrow lives.
        unsafe { super::frame_bytes_mut(self.umem, d.addr, d.len) }
    }

    /// Fill the batch's columns: packet lengths, UMEM addresses and the parsed header records
    /// (64 bytes each, [`PacketMeta::to_bytes`]). Each output holds at least `len()` entries.
    pub fn write_columns(&self, lengths: &mut [u32], addrs: &mut [u64], headers: &mut [u8]) {
        for (i, (d, m)) in self.descs.iter().zip(self.metas).enumerate() {
            lengths[i] = d.len;
            addrs[i] = d.addr;
            headers[i * 64..i * 64 + 64].copy_from_slice(&m.to_bytes());
        }
    }

    /// Frame `i`'s handler failed (per-packet mode): count it and give the frame the verdict
    /// of the pipeline's [`OnError`] policy, stopping the pipeline after this batch if it says
    /// so.
    pub fn fail_packet(&mut self, i: usize) {
        self.errors += 1;
        self.verdicts[i] = self.on_error.verdict(self.default_verdict);
        if self.on_error.stops() {
            self.stop = true;
        }
    }

    /// Hold frame `i` for a KEEP handle (its verdict must be KEEP: a KEEP frame nobody holds
    /// is counted as a bad verdict and dropped). None if `i` is out of range, or the frame was
    /// held before and every hold on it is gone.
    pub fn keep(&mut self, i: usize) -> Option<FrameHold> {
        self.hold(i)
    }

    /// Hold every frame whose verdict is KEEP, as one [`Kept`] in the pipeline's queue of kept
    /// frames ([`super::Pipeline::kept`]). Call it once the verdicts are final; returns how
    /// many frames it kept (0, and nothing held, when the worker has no queue).
    pub fn keep_verdicts(&mut self) -> usize {
        let Some(queue) = self.kept else {
            return 0;
        };
        let mut frames = Vec::new();
        for i in 0..self.len() {
            if self.verdicts[i] != KEEP {
                continue;
            }
            let d = self.descs[i];
            if let Some(h) = self.keep(i) {
                frames.push((d, h));
            }
        }
        let n = frames.len();
        if n > 0 {
            queue.push(Kept::new(HeldFrames::new(frames), Arc::clone(self.stats)));
        }
        n
    }

    /// Hold frame `i` because something that reads or writes it (a NumPy view) outlives the
    /// batch. The worker will not recycle it; if its verdict sends it (TX/FORWARD), a copy of
    /// the packet in a free frame is sent instead, or, with no free frame, nothing is sent and
    /// it counts as a failed TX. The copy is made now: call this once the verdicts are final,
    /// from the thread that owns whatever writes the frame outside Rust (the binding calls it
    /// attached to the interpreter, before any Python code can use the view again). Counted in
    /// the worker's `escaped` statistic once per frame.
    pub fn hold_view(&mut self, i: usize) -> Option<FrameHold> {
        let first = self.slots.get(i) == Some(&Slot::Own);
        let h = self.hold(i)?;
        if first {
            self.escaped += 1;
            if matches!(self.verdicts[i], TX | FORWARD) {
                self.copy_out(i, h.frame());
            }
        }
        Some(h)
    }

    fn hold(&mut self, i: usize) -> Option<FrameHold> {
        match *self.slots.get(i)? {
            Slot::Own => {
                let h = self
                    .umem
                    .hold_app(self.umem.frame_of(self.descs[i].addr)?)?;
                self.slots[i] = Slot::Held;
                self.held += 1;
                Some(h)
            }
            Slot::Held => self
                .umem
                .hold_again(self.umem.frame_of(self.descs[i].addr)?),
            Slot::Copied(f) => self.umem.hold_again(f),
        }
    }

    /// Put a copy of held frame `i` (frame index `orig`) in its place for sending.
    fn copy_out(&mut self, i: usize, orig: u32) {
        let d = self.descs[i];
        let mut a = [0u64];
        if self.sock.alloc(&mut a) == 0 {
            self.copy_failed += 1;
            return;
        }
        // A packet grown or pushed past a frame's TX room starts earlier in the copy's frame.
        let over = d.len.saturating_sub(self.umem.tx_capacity());
        // (Never into the TX metadata bytes the kernel wants in front of a packet sent.)
        a[0] -= over.min(XDP_PACKET_HEADROOM + self.umem.headroom() - self.umem.tx_metadata_len())
            as u64;
        let (Some(src), Some(dst)) = (self.umem.ptr(d.addr, d.len), self.sock.app_ptr(a[0], d.len))
        else {
            self.sock.release(&a);
            self.copy_failed += 1;
            return;
        };
        // SAFETY: `src` is `d.len` bytes inside frame `orig` (checked by `ptr`), held: no kernel
        // ring has it and no Rust API writes a held frame; the only other writers are views
        // outside Rust, which the caller does not run meanwhile (see `hold_view`). `dst` is
        // inside a frame just allocated, which only this worker has. Different frames, so the
        // ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.cast_const(), dst, d.len as usize) };
        let mut options = d.options;
        if options & XDP_TX_METADATA != 0 {
            // The TX metadata request goes with the packet.
            // SAFETY: as above (the original held, the copy's frame only this worker's).
            let copied = unsafe { crate::xsk::txmd::copy_request(self.umem, d.addr, a[0]) };
            if !copied {
                options &= !XDP_TX_METADATA;
            }
        }
        self.descs[i] = XdpDesc {
            addr: a[0],
            len: d.len,
            options,
        };
        self.slots[i] = Slot::Copied(orig);
        self.held -= 1;
        self.copied += 1;
    }
}
