//! TX metadata requests on a lease's frames ([`crate::xsk::txask`]): checksums made as asked
//! and a request written in front of the packet, carried by the descriptor's `XDP_TX_METADATA`
//! (the verdict sends the descriptor as it is, FORWARD and KEEP included). A request moves with
//! its packet when a reshape moves the packet's first byte (its checksum start follows the
//! bytes it names), and goes with a copy of the frame (`copy_request`).

use super::super::build::{self, Reshape};
use super::{check_pick, BatchFrames, Pick};
use crate::error::Result;
use crate::packet::{edit, parse};
use crate::sys::xdp::{XdpDesc, XDP_TX_METADATA};
use crate::xsk::txmd::TxRequest;
use crate::xsk::{TxAsk, Umem};

/// The request in front of packet `d`, when its descriptor carries one.
///
/// # Safety
/// As `frame_bytes`: the caller holds the open lease's mutex (no other Rust reference to the
/// frame lives, the frame is App), and views outside Rust are the lender's to keep still.
pub(super) unsafe fn request_of(umem: &Umem, d: &XdpDesc) -> Option<TxRequest> {
    let md = umem.tx_metadata_len();
    if d.options & XDP_TX_METADATA == 0 || md == 0 {
        return None;
    }
    let at = d.addr.checked_sub(md as u64)?;
    // SAFETY: the caller's contract, for the bytes in front of the packet in the same frame
    // (`frame_bytes` checks the range lies inside one frame in the App state).
    let meta = unsafe { super::super::frame_bytes(umem, at, md) }?;
    Some(TxRequest::read(meta))
}

/// Write `req` in front of packet `d` and mark `d` and its frame as asking (Some), or take the
/// mark off `d` (None, or no room in front of the packet).
///
/// # Safety
/// As [`request_of`], and no other slice of the frame lives meanwhile.
pub(super) unsafe fn set_request(umem: &Umem, d: &mut XdpDesc, req: Option<TxRequest>) {
    d.options &= !XDP_TX_METADATA;
    let md = umem.tx_metadata_len();
    let (Some(req), Some(f)) = (req, umem.frame_of(d.addr)) else {
        return;
    };
    if md == 0 || !umem.tx_front_ok(d.addr) {
        return;
    }
    // SAFETY: the caller's contract; `tx_front_ok` put the `md` bytes inside `d`'s frame.
    if let Some(meta) = unsafe { super::super::frame_bytes_mut(umem, d.addr - md as u64, md) } {
        req.write(meta);
        umem.mark_tx_metadata(f);
        d.options |= XDP_TX_METADATA;
    }
}

/// Make packet `d` as `ask` says (see [`TxAsk::prepare`]) and write or clear its request;
/// returns whether its UDP/TCP checksum is made.
///
/// # Safety
/// As [`set_request`].
pub(super) unsafe fn apply(umem: &Umem, d: &mut XdpDesc, ask: &TxAsk) -> bool {
    // SAFETY: the caller's contract; one slice at a time.
    let Some(pkt) = (unsafe { super::super::frame_bytes_mut(umem, d.addr, d.len) }) else {
        return false;
    };
    let (req, l4) = ask.prepare(umem.tx_caps(), umem.tx_offload(), pkt);
    // SAFETY: the caller's contract; `pkt` is no longer used.
    unsafe { set_request(umem, d, req) };
    l4
}

impl BatchFrames {
    /// Make the checksums of each picked frame of lease `seq` as `ask` says and ask the kernel
    /// for its timestamp or launch time (see [`crate::xsk::txask`]); each call replaces the
    /// frame's earlier request. Returns how many frames got a valid UDP/TCP checksum (in
    /// software or left to the kernel/device). An [`crate::Error::Unsupported`], nothing
    /// changed, when the sockets cannot honour a timestamp or launch time asked. A buffer of a
    /// multi-buffer packet is left alone.
    pub fn prepare_tx(&self, seq: u64, pick: Pick<'_>, ask: &TxAsk) -> Result<usize> {
        let umem = self.umem()?;
        ask.check(&umem)?;
        let mut g = self.open(seq)?;
        let l = &mut *g;
        check_pick(pick, l.descs.len())?;
        let mut k = 0;
        for i in (0..l.descs.len()).filter(|&i| pick.picks(i)) {
            if build::check(&umem, &l.descs, i, Reshape::Len(l.descs[i].len)).is_err() {
                continue;
            }
            let mut d = l.descs[i];
            // SAFETY: the lease is open and we hold its mutex, so the worker is inside the
            // handler call that lent this frame, its `BatchCtx` borrowed by the `Lent`; the
            // frame state (App, checked) keeps the kernel and the rings off it; views outside
            // Rust are the lender's to keep still.
            if unsafe { apply(&umem, &mut d, ask) } {
                k += 1;
            }
            if d.options != l.descs[i].options {
                l.descs[i] = d;
                l.reshaped = true;
            }
        }
        Ok(k)
    }

    /// Turn each picked frame of lease `seq` round to its sender: Ethernet, IP and UDP/TCP
    /// source and destination swapped, then the checksums made as `ask` says (as
    /// [`BatchFrames::prepare_tx`]): an echo or reflector's whole edit in one call. Returns how
    /// many frames had their IP addresses and ports swapped (the others, not IP or without
    /// ports, get what applies to them).
    pub fn reflect(&self, seq: u64, pick: Pick<'_>, ask: &TxAsk) -> Result<usize> {
        // Refused before any frame changes: a frame is never left turned round without its
        // checksums.
        ask.check(&*self.umem()?)?;
        let n = self.each(seq, pick, |frame| {
            let m = parse(frame);
            edit::swap_macs(frame);
            edit::swap_ips(frame, &m) & edit::swap_ports(frame, &m)
        })?;
        self.prepare_tx(seq, pick, ask)?;
        Ok(n)
    }
}

/// The request `old` carried, for the packet `new` (the same packet after a reshape): moved
/// with the packet's first byte (see [`TxRequest::moved`]).
pub(super) fn moved_request(
    req: Option<TxRequest>,
    old: &XdpDesc,
    new: &XdpDesc,
) -> Option<TxRequest> {
    let req = req?.moved(new.addr as i64 - old.addr as i64, new.len);
    (!req.is_empty()).then_some(req)
}
