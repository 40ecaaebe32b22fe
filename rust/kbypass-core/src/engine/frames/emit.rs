//! Emitting new frames through a lease: a copy of the caller's bytes, or packets filled from a
//! [`Template`] (one call for many, every frame written in Rust).
//!
//! Each frame comes from the batch socket's cache of free frames (the lease borrows it); a frame
//! that finds none is counted in the worker's `emit_failed` (the caller sees how many went), so
//! running out of UMEM is never silent.

use super::{BatchFrames, EmitRules, Emitted};
use crate::error::{Error, Result};
use crate::packet::template::{Checksum, Fill, Template};
use crate::sys::xdp::{XdpDesc, XDP_TX_METADATA};
use crate::xsk::{TxAsk, TxRequest};

impl BatchFrames {
    /// Emit a new frame holding a copy of `packet` from lease `seq`'s batch, out of `socket`
    /// (pipeline-wide; None: the batch's socket), made as `ask` says (its checksums, a TX
    /// metadata request: see [`crate::xsk::txask`]); see [`super::BatchCtx::emit`]. Returns
    /// false, counted in the worker's `emit_failed`, when no frame is free; an
    /// [`Error::Unsupported`] when the sockets cannot honour a timestamp or launch time asked.
    pub fn emit(
        &self,
        seq: u64,
        packet: &[u8],
        socket: Option<usize>,
        ask: &TxAsk,
    ) -> Result<bool> {
        let umem = self.umem()?;
        ask.check(&umem)?;
        let md = umem.tx_metadata_len() as usize;
        let front = if ask.is_empty() { 0 } else { md };
        let caps = umem.tx_caps();
        let k = self.emit_each(
            seq,
            1,
            socket,
            packet.len(),
            front,
            |_| packet.len(),
            |_, dst| {
                let (meta, pkt) = dst.split_at_mut(front);
                pkt.copy_from_slice(packet);
                match ask.prepare(caps, umem.tx_offload(), pkt) {
                    (Some(req), _) if front > 0 => {
                        req.write(meta);
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            },
        )?;
        Ok(k == 1)
    }

    /// Emit `fill.len()` packets filled from `tpl` (fields, payload, lengths, IPv4 header and
    /// UDP/TCP checksums written here) from lease `seq`'s batch, out of `socket` (as
    /// [`BatchFrames::emit`]). Where the UMEM's sockets can ([`crate::xsk::TxCaps`]) the
    /// UDP/TCP checksum is requested from the kernel or device (`csum_start`/`csum_offset`)
    /// and a TX timestamp asked for, else the checksum is computed here. Returns how
    /// many went; the rest (no free frame) are counted in
    /// the worker's `emit_failed`. An error, and nothing emitted, for a bad socket, a frame
    /// longer than a frame's room, or more than the batch may still emit.
    pub fn emit_template(
        &self,
        seq: u64,
        tpl: &Template,
        fill: &Fill<'_>,
        socket: Option<usize>,
    ) -> Result<usize> {
        let n = fill.len();
        let longest = fill.max_frame_len(tpl);
        let umem = self.umem()?;
        // Where the sockets can, the UDP/TCP checksum is left to the kernel or the device and
        // a TX timestamp is asked for (the request goes in front of the packet; the socket
        // collects the times at completion); else the checksum is computed here (counted as a
        // fallback on a UMEM with TX metadata whose zero-copy driver lacks the offload).
        let md = umem.tx_metadata_len() as usize;
        let caps = umem.tx_caps();
        let offload = md > 0 && (caps.checksum || caps.timestamp);
        let csum = if md > 0 && caps.checksum {
            Checksum::Offload
        } else {
            Checksum::Full
        };
        let counts = umem.tx_offload();
        self.emit_each(
            seq,
            n,
            socket,
            longest,
            md,
            |i| fill.frame_len(tpl, i),
            |i, dst| {
                let (meta, pkt) = dst.split_at_mut(md);
                let w = fill.write(tpl, i, pkt, csum)?;
                if csum == Checksum::Offload {
                    counts.count_offload();
                } else if md > 0 {
                    counts.count_software();
                }
                if offload {
                    TxRequest {
                        csum: (csum == Checksum::Offload).then_some((w.csum_start, w.csum_offset)),
                        timestamp: caps.timestamp,
                        launch_time: None,
                    }
                    .write(meta);
                }
                Ok(offload)
            },
        )
    }

    /// Emit `n` frames, frame `i` of `len(i)` bytes (at most `longest`) written by `write(i,
    /// bytes)` (the `front` bytes in front of the packet, then the packet; true: they hold a
    /// TX metadata request), each into a free frame; stops at the first frame that finds none
    /// and counts the rest in `emit_failed`. Returns how many went.
    #[allow(clippy::too_many_arguments)]
    fn emit_each(
        &self,
        seq: u64,
        n: usize,
        socket: Option<usize>,
        longest: usize,
        front: usize,
        len: impl Fn(usize) -> usize,
        mut write: impl FnMut(usize, &mut [u8]) -> Result<bool>,
    ) -> Result<usize> {
        if n == 0 {
            return Ok(0);
        }
        let umem = self.umem()?;
        let mut g = self.open(seq)?;
        let l = &mut *g;
        let rules = EmitRules {
            sockets: &l.sockets,
            local: l.local,
            limit: l.limit,
        };
        let so_far = l.emitted_before + l.emits.len();
        // The last frame is the one that must still fit the batch's limit.
        let local = rules
            .target(&umem, longest, socket, so_far + n - 1)
            .map_err(|e| match e {
                Error::State(_) if n > 1 => Error::State(format!(
                    "{n} frames would make this batch emit {}, more than the {} one batch may (max(batch size, 64)): emit the rest from the next batch, or raise the pipeline's batch=",
                    so_far + n,
                    l.limit
                )),
                e => e,
            })?;
        for i in 0..n {
            let Some(f) = umem.take_free(&mut l.cache) else {
                l.emit_failed += (n - i) as u64;
                return Ok(i);
            };
            let mut desc = XdpDesc {
                addr: umem.tx_addr(f),
                len: len(i) as u32,
                options: 0,
            };
            // The kernel's 256 bytes of headroom are always in front of `tx_addr`, so the
            // `front` bytes (at most TX_METADATA_LEN) lie in the same frame.
            let start = desc.addr - front as u64;
            let span = desc.len + front as u32;
            // SAFETY: the frame was just taken from the free cache (App): neither the kernel,
            // a ring, a hold nor any view has it, and the lease's mutex makes this the only
            // Rust borrow; what `write` reads (the caller's bytes, a template) cannot be a
            // free frame.
            let written = match unsafe { super::super::frame_bytes_mut(&umem, start, span) } {
                Some(dst) => write(i, dst),
                None => Err(Error::State("a frame just taken was not writable".into())),
            };
            match written {
                Ok(true) => {
                    umem.mark_tx_metadata(f);
                    desc.options |= XDP_TX_METADATA;
                }
                Ok(false) => {}
                Err(e) => {
                    umem.put_free(&mut l.cache, f);
                    return Err(e);
                }
            }
            l.emits.push(Emitted { local, desc });
        }
        Ok(n)
    }
}
