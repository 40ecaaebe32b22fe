//! AF_XDP TX metadata (kernel ≥ 6.8, `Documentation/networking/xsk-tx-metadata.rst`): a
//! UMEM registered with `tx_metadata_len` carries, right before a TX descriptor's `addr`, a
//! `struct xsk_tx_metadata` the kernel reads when the descriptor has `XDP_TX_METADATA`:
//!
//! ```text
//!   offset 0   u64 flags          XDP_TXMD_FLAGS_CHECKSUM | _TIMESTAMP
//!   offset 8   u16 csum_start     request: sum from here (from addr) ...
//!   offset 10  u16 csum_offset    ... and store at csum_start + csum_offset
//!   offset 12  u32 reserved
//!   offset 16  u64 launch_time    request (6.15): send at this time (XDP_TXMD_FLAGS_LAUNCH_TIME)
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

use super::{Umem, XskSocket};
use crate::sys::xdp::{XdpDesc, XDP_TX_METADATA};

/// Bytes reserved for `struct xsk_tx_metadata` in front of each TX packet (24 since 6.15 with
/// `launch_time`; a multiple of 8 below 256, as the kernel requires).
pub const TX_METADATA_LEN: u32 = 24;
/// `XDP_TXMD_FLAGS_TIMESTAMP`: the kernel writes the TX time into `tx_timestamp`.
pub const XDP_TXMD_FLAGS_TIMESTAMP: u64 = 1 << 0;
/// `XDP_TXMD_FLAGS_CHECKSUM`: the kernel/device completes the L4 checksum.
pub const XDP_TXMD_FLAGS_CHECKSUM: u64 = 1 << 1;
/// `XDP_TXMD_FLAGS_LAUNCH_TIME` (kernel ≥ 6.15): send at `launch_time`; an older kernel
/// refuses a descriptor with this flag.
pub const XDP_TXMD_FLAGS_LAUNCH_TIME: u64 = 1 << 2;

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
    /// Send at this time (ns, in the clock of the device or qdisc that honours it).
    pub launch_time: Option<u64>,
}

impl TxRequest {
    /// Whether it asks anything.
    pub fn is_empty(&self) -> bool {
        self.csum.is_none() && !self.timestamp && self.launch_time.is_none()
    }

    /// The request written in `meta` (by [`TxRequest::write`]); bits it does not know are left
    /// out.
    pub fn read(meta: &[u8]) -> TxRequest {
        let u16_at = |i: usize| u16::from_ne_bytes([meta[i], meta[i + 1]]);
        let u64_at = |i: usize| u64::from_ne_bytes(meta[i..i + 8].try_into().expect("8 bytes"));
        let flags = u64_at(0);
        TxRequest {
            csum: (flags & XDP_TXMD_FLAGS_CHECKSUM != 0).then(|| (u16_at(8), u16_at(10))),
            timestamp: flags & XDP_TXMD_FLAGS_TIMESTAMP != 0,
            launch_time: (flags & XDP_TXMD_FLAGS_LAUNCH_TIME != 0).then(|| u64_at(16)),
        }
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
        if self.launch_time.is_some() {
            flags |= XDP_TXMD_FLAGS_LAUNCH_TIME;
        }
        meta.fill(0);
        meta[0..8].copy_from_slice(&flags.to_ne_bytes());
        meta[8..10].copy_from_slice(&start.to_ne_bytes());
        meta[10..12].copy_from_slice(&off.to_ne_bytes());
        meta[16..24].copy_from_slice(&self.launch_time.unwrap_or(0).to_ne_bytes());
    }

    /// The same request for the packet after its first byte moved `moved` bytes later in the
    /// frame (negative: bytes pushed in front): the checksum start follows the bytes it names,
    /// and is dropped when they were popped off or no longer fit a `len`-byte packet (the
    /// kernel refuses a request past the packet's end).
    pub fn moved(self, moved: i64, len: u32) -> TxRequest {
        let csum = self.csum.and_then(|(start, off)| {
            let s = u16::try_from(start as i64 - moved).ok()?;
            (s as u32 + off as u32 + 2 <= len).then_some((s, off))
        });
        TxRequest { csum, ..self }
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

/// Copy the TX metadata request in front of packet `from` (its descriptor has
/// `XDP_TX_METADATA`) to in front of packet `to`, a copy of it in another frame, and note that
/// frame as asking; false, nothing copied, when either has no room for it in its frame.
///
/// # Safety
/// Nothing may write `from`'s frame meanwhile (the caller holds it), and `to`'s frame must be
/// the caller's alone (App, just allocated): no ring, hold or view has it.
pub(crate) unsafe fn copy_request(umem: &Umem, from: u64, to: u64) -> bool {
    let len = umem.tx_metadata_len();
    let front = |a: u64| {
        let at = a.checked_sub(len as u64)?;
        (len > 0 && umem.frame_of(at) == umem.frame_of(a))
            .then(|| umem.ptr(at, len))
            .flatten()
    };
    let (Some(src), Some(dst), Some(f)) = (front(from), front(to), umem.frame_of(to)) else {
        return false;
    };
    if umem.frame_of(from) == Some(f) {
        return false;
    }
    // SAFETY: both ranges are `len` bytes inside the UMEM mapping (`ptr` checked), in two
    // different frames (so they do not overlap); the caller keeps writers off both.
    unsafe { std::ptr::copy_nonoverlapping(src.cast_const(), dst, len as usize) };
    umem.mark_tx_metadata(f);
    true
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

    /// `struct xsk_tx_metadata` of `include/uapi/linux/if_xdp.h` (6.15), as C lays it out.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Request {
        csum_start: u16,
        csum_offset: u16,
        reserved: u32,
        launch_time: u64,
    }
    #[repr(C)]
    union Body {
        request: Request,
        tx_timestamp: u64,
    }
    #[repr(C)]
    struct XskTxMetadata {
        flags: u64,
        body: Body,
    }

    #[test]
    fn offsets_are_the_uapi_structs() {
        use std::mem::{offset_of, size_of};
        assert_eq!(size_of::<XskTxMetadata>(), TX_METADATA_LEN as usize);
        let body = offset_of!(XskTxMetadata, body);
        assert_eq!(offset_of!(XskTxMetadata, flags), 0);
        assert_eq!(body, 8, "csum_start and tx_timestamp");
        assert_eq!(body + offset_of!(Request, csum_offset), 10);
        assert_eq!(body + offset_of!(Request, reserved), 12);
        assert_eq!(body + offset_of!(Request, launch_time), 16);
        // What `write` puts where, read back through the C layout.
        let mut m = [0u8; TX_METADATA_LEN as usize];
        TxRequest {
            csum: Some((0x1122, 0x3344)),
            timestamp: true,
            launch_time: Some(0x5566),
        }
        .write(&mut m);
        let flags = u64::from_ne_bytes(m[0..8].try_into().unwrap());
        assert_eq!(
            flags,
            XDP_TXMD_FLAGS_TIMESTAMP | XDP_TXMD_FLAGS_CHECKSUM | XDP_TXMD_FLAGS_LAUNCH_TIME
        );
        let r = Request {
            csum_start: u16::from_ne_bytes([m[8], m[9]]),
            csum_offset: u16::from_ne_bytes([m[10], m[11]]),
            reserved: u32::from_ne_bytes(m[12..16].try_into().unwrap()),
            launch_time: u64::from_ne_bytes(m[16..24].try_into().unwrap()),
        };
        assert_eq!(
            (r.csum_start, r.csum_offset, r.reserved),
            (0x1122, 0x3344, 0)
        );
        assert_eq!(r.launch_time, 0x5566);
        let _ = Body { tx_timestamp: 0 };
    }

    #[test]
    fn request_layout_and_completion() {
        let mut m = [0xAAu8; TX_METADATA_LEN as usize];
        let req = TxRequest {
            csum: Some((34, 6)),
            timestamp: true,
            launch_time: None,
        };
        req.write(&mut m);
        assert_eq!(TxRequest::read(&m), req);
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
            launch_time: None,
        }
        .write(&mut m);
        assert_eq!(completion_timestamp(&m), None);
        // Launch time: flag bit 2, the time at offset 16 (struct xsk_tx_metadata, 6.15).
        let req = TxRequest {
            csum: None,
            timestamp: false,
            launch_time: Some(0x0102_0304_0506_0708),
        };
        req.write(&mut m);
        assert_eq!(u64::from_ne_bytes(m[0..8].try_into().unwrap()), 4);
        assert_eq!(&m[16..24], &0x0102_0304_0506_0708u64.to_ne_bytes());
        assert!(m[8..16].iter().all(|&b| b == 0));
        assert_eq!(TxRequest::read(&m), req);
        // Moving: 4 bytes pushed in front (a VLAN tag) move the start with the bytes.
        let c = TxRequest {
            csum: Some((34, 6)),
            ..TxRequest::default()
        };
        assert_eq!(c.moved(-4, 104).csum, Some((38, 6)));
        assert_eq!(c.moved(14, 86).csum, Some((20, 6)));
        assert_eq!(c.moved(36, 64).csum, None, "popped off");
        assert_eq!(c.moved(0, 41).csum, None, "cut short");
        assert_eq!(c.moved(0, 42).csum, Some((34, 6)));
        let r = Requested::new(4);
        r.set(2);
        r.set(9); // out of range: ignored
        assert!(!r.take(1) && r.take(2) && !r.take(2) && !r.take(9));
    }
}
