//! AF_XDP TX metadata (kernel ≥ 6.8, `Documentation/networking/xsk-tx-metadata.rst`): a
//! UMEM registered with `tx_metadata_len` carries, right before a TX descriptor's `addr`, a
//! `struct xsk_tx_metadata` the kernel reads when the descriptor has `XDP_TX_METADATA`:
//!
//! ```text
//!   offset 0   u64 flags          XDP_TXMD_FLAGS_CHECKSUM | _TIMESTAMP
//!   offset 8   u16 csum_start     request: sum from here (from addr) ...
//!   offset 10  u16 csum_offset    ... and store at csum_start + csum_offset
//!   offset 8   u64 tx_timestamp   completion: written by the kernel (same bytes)
//! ```
//!
//! In copy mode (`xsk_build_skb`) a checksum request makes the skb `CHECKSUM_PARTIAL` (the
//! checksum field must hold the pseudo-header sum), which the driver then completes; with
//! `XDP_UMEM_TX_SW_CSUM` the kernel completes it in software (`skb_checksum_help`) before the
//! driver sees it. A timestamp request in copy mode gets a software timestamp (CLOCK_TAI, ns)
//! written into `tx_timestamp` by the skb destructor, i.e. when the driver freed the skb, before
//! the descriptor reaches the completion ring; zero-copy drivers write a hardware timestamp if
//! they implement it. Which frames asked is tracked here (not read back from the frame, whose
//! bytes in front of a packet may be an older packet's), so a completion is read only for them.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use super::XskSocket;
use crate::sys::xdp::{XdpDesc, XDP_TX_METADATA};

/// Bytes reserved for `struct xsk_tx_metadata` in front of each TX packet (24 since 6.15 with
/// `launch_time`; a multiple of 8 below 256, as the kernel requires).
pub const TX_METADATA_LEN: u32 = 24;
/// `XDP_TXMD_FLAGS_TIMESTAMP`: the kernel writes the TX time into `tx_timestamp`.
pub const XDP_TXMD_FLAGS_TIMESTAMP: u64 = 1 << 0;
/// `XDP_TXMD_FLAGS_CHECKSUM`: the kernel/device completes the L4 checksum.
pub const XDP_TXMD_FLAGS_CHECKSUM: u64 = 1 << 1;

/// Whether a UMEM asks for TX metadata, and how checksums are completed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TxMetadataMode {
    /// No TX metadata: checksums are computed by kbypass in software, no TX timestamps.
    #[default]
    Off,
    /// TX metadata; checksum requests go to the driver (`CHECKSUM_PARTIAL`).
    Offload,
    /// TX metadata with `XDP_UMEM_TX_SW_CSUM`: the kernel completes requested checksums in
    /// software before the driver (for drivers without checksum offload, and for testing).
    KernelSoftware,
}

/// What one TX descriptor asks of the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxRequest {
    /// Complete the checksum: sum from `csum_start` (from the packet's first byte) to its end,
    /// store at `csum_start + csum_offset`; the field must hold the pseudo-header sum.
    pub csum: Option<(u16, u16)>,
    /// Report the TX time at completion.
    pub timestamp: bool,
}

impl TxRequest {
    /// Whether it asks anything.
    pub fn is_empty(&self) -> bool {
        self.csum.is_none() && !self.timestamp
    }

    /// Write the request into `meta` (the [`TX_METADATA_LEN`] bytes in front of the packet).
    pub fn write(&self, meta: &mut [u8]) {
        let mut flags = 0;
        let (start, off) = self.csum.unwrap_or((0, 0));
        if self.csum.is_some() {
            flags |= XDP_TXMD_FLAGS_CHECKSUM;
        }
        if self.timestamp {
            flags |= XDP_TXMD_FLAGS_TIMESTAMP;
        }
        meta.fill(0);
        meta[0..8].copy_from_slice(&flags.to_ne_bytes());
        meta[8..10].copy_from_slice(&start.to_ne_bytes());
        meta[10..12].copy_from_slice(&off.to_ne_bytes());
    }
}

/// The completion's timestamp in `meta` when the request asked for one (0: the kernel wrote
/// none).
pub fn completion_timestamp(meta: &[u8]) -> Option<u64> {
    let flags = u64::from_ne_bytes(meta[0..8].try_into().ok()?);
    (flags & XDP_TXMD_FLAGS_TIMESTAMP != 0)
        .then(|| u64::from_ne_bytes(meta[8..16].try_into().expect("8 bytes")))
}

/// TX timestamps a socket collected from completions, oldest first, at most [`TxTimes::CAP`]
/// (older ones are dropped and counted).
#[derive(Debug, Default)]
pub struct TxTimes {
    times: std::collections::VecDeque<(u64, u64)>,
    /// Timestamps dropped because nobody took them in time.
    pub dropped: u64,
}

impl TxTimes {
    /// Timestamps kept until taken.
    pub const CAP: usize = 65536;

    pub(crate) fn push(&mut self, addr: u64, ns: u64) {
        if self.times.len() == Self::CAP {
            self.times.pop_front();
            self.dropped += 1;
        }
        self.times.push_back((addr, ns));
    }

    /// Take the collected `(UMEM address, TX time in CLOCK_TAI ns)` pairs.
    pub fn take(&mut self) -> Vec<(u64, u64)> {
        self.times.drain(..).collect()
    }
}

impl XskSocket {
    /// Read the completion metadata in front of `addr` (a frame that just completed, whose TX
    /// descriptor carried a request).
    pub(super) fn tx_metadata_done(&mut self, addr: u64) {
        let len = self.umem().tx_metadata_len();
        let Some(p) = addr
            .checked_sub(len as u64)
            .and_then(|at| self.umem().ptr(at, len))
        else {
            return;
        };
        // SAFETY: the frame came back on the completion ring and is still in state Tx: the
        // kernel is done with it and no application code, ring or hold has it; `ptr` checked
        // that the `len` bytes lie inside the UMEM mapping, which `self.umem` keeps mapped.
        let meta = unsafe { std::slice::from_raw_parts(p, len as usize) };
        match completion_timestamp(meta) {
            Some(0) => self.counters.tx_timestamps_missing += 1,
            Some(ns) => {
                self.counters.tx_timestamps += 1;
                self.tx_times.push(addr, ns);
            }
            None => {}
        }
    }

    /// Take the TX timestamps collected from completions: (UMEM address of the packet, TX time
    /// in CLOCK_TAI ns), oldest first. Only packets sent with a [`TxRequest`] asking for one
    /// (see [`XskSocket::request_tx_metadata`]) on a UMEM with TX metadata have one.
    pub fn take_tx_timestamps(&mut self) -> Vec<(u64, u64)> {
        self.tx_times.take()
    }

    /// Timestamps dropped because nobody took them before [`TxTimes::CAP`] more arrived.
    pub fn tx_timestamps_dropped(&self) -> u64 {
        self.tx_times.dropped
    }

    /// Ask the kernel for `req` on `desc` (a frame the application holds, about to be sent):
    /// writes the request in front of the packet and marks the descriptor. False, and nothing
    /// changes, when the UMEM has no TX metadata or the frame has no room in front of `desc`.
    pub fn request_tx_metadata(&mut self, desc: &mut XdpDesc, req: TxRequest) -> bool {
        let len = self.umem().tx_metadata_len();
        let (Some(f), Some(at)) = (
            self.umem().frame_of(desc.addr),
            desc.addr.checked_sub(len as u64),
        ) else {
            return false;
        };
        if len == 0 || self.umem().frame_of(at) != Some(f) {
            return false;
        }
        let Some(p) = self.app_ptr(at, len) else {
            return false;
        };
        // SAFETY: `app_ptr` checked that the `len` bytes lie inside frame `f`, which is the
        // application's (App): the kernel and the rings do not use it, and `&mut self` is the
        // only way this socket's caller reaches it now; the bytes are in front of the packet.
        req.write(unsafe { std::slice::from_raw_parts_mut(p, len as usize) });
        self.umem().mark_tx_metadata(f);
        desc.options |= XDP_TX_METADATA;
        true
    }
}

/// Per frame: whether its TX descriptor carries a metadata request (set when it is written,
/// taken when the frame completes).
#[derive(Debug)]
pub(crate) struct Requested(Box<[AtomicBool]>);

impl Requested {
    pub(crate) fn new(frames: u32) -> Self {
        Requested((0..frames).map(|_| AtomicBool::new(false)).collect())
    }

    pub(crate) fn set(&self, frame: u32) {
        if let Some(b) = self.0.get(frame as usize) {
            b.store(true, Relaxed);
        }
    }

    pub(crate) fn take(&self, frame: u32) -> bool {
        self.0
            .get(frame as usize)
            .is_some_and(|b| b.swap(false, Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout_and_completion() {
        let mut m = [0xAAu8; TX_METADATA_LEN as usize];
        TxRequest {
            csum: Some((34, 6)),
            timestamp: true,
        }
        .write(&mut m);
        assert_eq!(u64::from_ne_bytes(m[0..8].try_into().unwrap()), 3);
        assert_eq!(u16::from_ne_bytes([m[8], m[9]]), 34);
        assert_eq!(u16::from_ne_bytes([m[10], m[11]]), 6);
        assert!(m[12..].iter().all(|&b| b == 0));
        // The kernel's completion overwrites the request with the time.
        m[8..16].copy_from_slice(&123u64.to_ne_bytes());
        assert_eq!(completion_timestamp(&m), Some(123));
        TxRequest {
            csum: Some((34, 6)),
            timestamp: false,
        }
        .write(&mut m);
        assert_eq!(completion_timestamp(&m), None);
        let r = Requested::new(4);
        r.set(2);
        r.set(9); // out of range: ignored
        assert!(!r.take(1) && r.take(2) && !r.take(2) && !r.take(9));
    }
}
