//! The UMEM: the packet memory AF_XDP sockets share with the kernel.
//!
//! As in DPDK's AF_XDP PMD, the UMEM *is* a [`Mempool`]: frame `i` is pool object `i`, at UMEM
//! address `i * frame_size` (aligned mode). Free frames live in the pool (and in the sockets'
//! per-thread caches); every frame handed out is in exactly one other place, tracked here per
//! frame so that bad input (releasing a frame twice, sending a frame the application does not
//! hold) is refused and counted instead of corrupting the rings.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use super::holds::{FrameHold, FrameTable};
use super::txask::{TxCaps, TxOffload, TxOffloadCounts};
use super::txmd::{Requested, TxMetadataMode, TX_METADATA_LEN};
use crate::error::{Error, Result};
use crate::mem::{Mempool, PoolCache, RegionOptions, Tier};
use crate::sys::xdp::{XdpDesc, XdpUmemReg, XskFd, XDP_UMEM_TX_METADATA_LEN, XDP_UMEM_TX_SW_CSUM};

/// Where a frame that is not free in the pool is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameState {
    /// Free in the pool or a socket's cache.
    Free = 0,
    /// Given to the kernel for receiving: fill ring, kernel, or RX ring.
    Rx = 1,
    /// Held by the application.
    App = 2,
    /// Given to the kernel for sending: TX ring, kernel, or completion ring.
    Tx = 3,
    /// Held by the application through [`FrameHold`]s (a kept frame, a received batch, a
    /// frame whose Python view outlived its batch): never sent, released or refilled; it goes
    /// back to the pool when the last hold is dropped.
    Held = 4,
}

impl FrameState {
    #[inline]
    pub(crate) fn from_u8(v: u8) -> FrameState {
        match v {
            1 => FrameState::Rx,
            2 => FrameState::App,
            3 => FrameState::Tx,
            4 => FrameState::Held,
            _ => FrameState::Free,
        }
    }
}

/// How to build a [`Umem`].
#[derive(Debug, Clone)]
pub struct UmemConfig {
    /// Frames in the UMEM.
    pub frames: u32,
    /// Bytes per frame: 2048 or 4096 (aligned mode needs a power of two ≤ the page size).
    pub frame_size: u32,
    /// Extra headroom before each packet, for the application (the kernel adds its own 256).
    pub headroom: u32,
    /// Memory tiers and NUMA placement.
    pub region: RegionOptions,
    /// TX metadata (checksum offload, TX timestamps) where the kernel offers it; a kernel that
    /// refuses it leaves the UMEM without (noted in [`Umem::notes`]).
    pub tx_metadata: TxMetadataMode,
}

impl Default for UmemConfig {
    fn default() -> Self {
        UmemConfig {
            frames: 4096,
            frame_size: 2048,
            headroom: 0,
            region: RegionOptions::default(),
            tx_metadata: TxMetadataMode::Off,
        }
    }
}

/// `XDP_PACKET_HEADROOM`: the kernel's headroom before packet data in each frame.
pub const XDP_PACKET_HEADROOM: u32 = 256;

/// A registered UMEM (see the [module docs](self)).
#[derive(Debug)]
pub struct Umem {
    pool: Arc<Mempool>,
    fd: XskFd,
    fd_taken: AtomicBool,
    frame_size: u32,
    frame_shift: u32,
    headroom: u32,
    table: Arc<FrameTable>,
    /// Bytes of TX metadata in front of each TX packet (0: none), and how checksums complete.
    tx_metadata_len: u32,
    tx_metadata: TxMetadataMode,
    /// Frames whose TX descriptor carries a metadata request.
    txmd_requested: Requested,
    /// What the UMEM's sockets can honour of a request, and the checksum counts.
    tx_offload: TxOffload,
    notes: Vec<String>,
}

impl Umem {
    /// Allocate the frames (hugepages when available) and register them with the kernel.
    pub fn new(cfg: &UmemConfig) -> Result<Arc<Self>> {
        check_frame_size(cfg.frame_size)?;
        if cfg.frames < 64 || cfg.frames > 1 << 24 {
            return Err(Error::invalid(format!(
                "frames={} must be 64..=16777216: the fill and RX rings need frames to work with",
                cfg.frames
            )));
        }
        let pool = Mempool::new(cfg.frames as usize, cfg.frame_size as usize, &cfg.region)?;
        Self::from_pool_with(pool, cfg.headroom, cfg.tx_metadata)
    }

    /// Register an existing pool as a UMEM (its objects become the frames).
    pub fn from_pool(pool: Arc<Mempool>, headroom: u32) -> Result<Arc<Self>> {
        Self::from_pool_with(pool, headroom, TxMetadataMode::Off)
    }

    /// [`Umem::from_pool`] asking for TX metadata as `txmd` says.
    pub fn from_pool_with(
        pool: Arc<Mempool>,
        headroom: u32,
        txmd: TxMetadataMode,
    ) -> Result<Arc<Self>> {
        let frame_size = pool.stride() as u32;
        check_frame_size(frame_size)?;
        if pool.size() != pool.stride() {
            return Err(Error::invalid(
                "a UMEM needs a pool whose object size is its stride (2048 or 4096)",
            ));
        }
        if headroom + XDP_PACKET_HEADROOM + 64 > frame_size {
            return Err(Error::invalid(format!(
                "headroom {headroom} leaves no room for packets in {frame_size}-byte frames: use less than {}",
                frame_size - XDP_PACKET_HEADROOM - 64
            )));
        }
        let fd = XskFd::new()?;
        let mut reg = XdpUmemReg::new(
            pool.base() as u64,
            pool.len() as u64,
            frame_size,
            headroom,
            0,
        );
        let mut notes = Vec::new();
        let mut tx_metadata = txmd;
        if txmd != TxMetadataMode::Off {
            // Kernels 6.8..6.10 take tx_metadata_len without the flag (and refuse the flag).
            reg.tx_metadata_len = TX_METADATA_LEN;
            let sw = if txmd == TxMetadataMode::KernelSoftware {
                XDP_UMEM_TX_SW_CSUM
            } else {
                0
            };
            // Before 6.8 `tx_metadata_len` was padding the kernel ignored unread: a register
            // without the flag would "succeed" with no TX metadata at all, so it is tried only
            // on kernels that have the field.
            let retries: &[u32] = if kernel_at_least(6, 8) { &[sw] } else { &[] };
            let mut got = None;
            for &flags in [XDP_UMEM_TX_METADATA_LEN | sw].iter().chain(retries) {
                reg.flags = flags;
                match fd.umem_reg(&reg) {
                    Ok(()) => {
                        got = Some(Ok(()));
                        break;
                    }
                    Err(e) if e.errno() == Some(libc::EINVAL) => got = Some(Err(e)),
                    Err(e) => return Err(Self::reg_error(&pool, e)),
                }
            }
            if let Some(Err(e)) = got {
                notes.push(format!(
                    "the kernel refused TX metadata ({e}): checksums are computed in software and no TX timestamps are reported"
                ));
                tx_metadata = TxMetadataMode::Off;
                reg.tx_metadata_len = 0;
                reg.flags = 0;
                fd.umem_reg(&reg).map_err(|e| Self::reg_error(&pool, e))?;
            }
        } else {
            fd.umem_reg(&reg).map_err(|e| Self::reg_error(&pool, e))?;
        }
        let pool_frames = pool.count();
        let table = Arc::new(FrameTable::new(Arc::clone(&pool), frame_size));
        Ok(Arc::new(Umem {
            pool,
            fd,
            fd_taken: AtomicBool::new(false),
            frame_size,
            frame_shift: frame_size.trailing_zeros(),
            headroom,
            txmd_requested: Requested::new(pool_frames),
            tx_offload: TxOffload::default(),
            table,
            tx_metadata_len: reg.tx_metadata_len,
            tx_metadata,
            notes,
        }))
    }

    fn reg_error(pool: &Mempool, e: Error) -> Error {
        match e.errno() {
            Some(libc::ENOMEM) | Some(libc::EPERM) => Error::Os {
                what: format!("register a {}-byte UMEM", pool.len()),
                errno: e.errno().unwrap_or(libc::ENOMEM),
                fix: "the kernel pins UMEM pages against RLIMIT_MEMLOCK: run as root (CAP_IPC_LOCK) or raise it with `ulimit -l unlimited`".into(),
            },
            _ => e,
        }
    }

    /// Bytes of TX metadata in front of each TX packet: [`TX_METADATA_LEN`] when the UMEM has
    /// TX metadata, else 0.
    #[inline]
    pub fn tx_metadata_len(&self) -> u32 {
        self.tx_metadata_len
    }

    /// The TX metadata the UMEM has (Off when not asked for, or refused: see [`Umem::notes`]).
    pub fn tx_metadata(&self) -> TxMetadataMode {
        self.tx_metadata
    }

    /// What the kernel refused when the UMEM was registered, and what stands in for it.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// What every socket bound on this UMEM so far can honour of a TX metadata request
    /// (nothing before the first binds, or without TX metadata).
    pub fn tx_caps(&self) -> TxCaps {
        self.tx_offload.caps()
    }

    /// Checksum offloads made, and those computed in software instead (over all sockets).
    pub fn tx_offload_counts(&self) -> TxOffloadCounts {
        self.tx_offload.counts()
    }

    pub(crate) fn tx_offload(&self) -> &TxOffload {
        &self.tx_offload
    }

    /// Note that frame `idx`'s TX descriptor carries a metadata request.
    pub(crate) fn mark_tx_metadata(&self, idx: u32) {
        self.txmd_requested.set(idx);
    }

    /// Whether frame `idx`'s TX descriptor carried a metadata request (forgotten after).
    pub(crate) fn take_tx_metadata(&self, idx: u32) -> bool {
        self.tx_metadata_len > 0 && self.txmd_requested.take(idx)
    }

    /// The frame pool.
    pub fn pool(&self) -> &Arc<Mempool> {
        &self.pool
    }

    /// Frames in the UMEM.
    #[inline]
    pub fn frames(&self) -> u32 {
        self.pool.count()
    }

    /// Bytes per frame.
    #[inline]
    pub fn frame_size(&self) -> u32 {
        self.frame_size
    }

    /// Application headroom per frame.
    #[inline]
    pub fn headroom(&self) -> u32 {
        self.headroom
    }

    /// Bytes available for packet data in a frame the application fills for TX.
    #[inline]
    pub fn tx_capacity(&self) -> u32 {
        self.frame_size - self.headroom - XDP_PACKET_HEADROOM
    }

    /// Page tier of the frame memory.
    pub fn tier(&self) -> Tier {
        self.pool.tier()
    }

    /// Bytes of frame memory.
    pub fn len(&self) -> usize {
        self.pool.len()
    }

    /// Always false: empty UMEMs are refused.
    pub fn is_empty(&self) -> bool {
        self.pool.is_empty()
    }

    /// The socket the UMEM is registered on.
    pub(crate) fn fd(&self) -> &XskFd {
        &self.fd
    }

    /// Claim the registration socket for the first [`super::XskSocket`]; false if taken.
    pub(crate) fn take_fd(&self) -> bool {
        !self.fd_taken.swap(true, Relaxed)
    }

    /// Undo [`Umem::take_fd`] after a failed first bind.
    pub(crate) fn release_fd_claim(&self) {
        self.fd_taken.store(false, Relaxed);
    }

    /// The frame index of a UMEM address (any address inside the frame).
    #[inline]
    pub fn frame_of(&self, addr: u64) -> Option<u32> {
        let i = addr >> self.frame_shift;
        (i < self.frames() as u64).then_some(i as u32)
    }

    /// The UMEM address of frame `idx`'s start.
    #[inline]
    pub fn frame_addr(&self, idx: u32) -> u64 {
        (idx as u64) << self.frame_shift
    }

    /// Where packet data for TX starts in frame `idx` (after the headrooms).
    #[inline]
    pub fn tx_addr(&self, idx: u32) -> u64 {
        self.frame_addr(idx) + (XDP_PACKET_HEADROOM + self.headroom) as u64
    }

    /// The state of frame `idx`.
    #[inline]
    pub fn state(&self, idx: u32) -> FrameState {
        self.table.state(idx)
    }

    #[inline]
    pub(crate) fn set_state(&self, idx: u32, s: FrameState) {
        self.table.set_state(idx, s);
    }

    /// Move frame `idx` from `from` to `to`; false (and no change) if it was not in `from`.
    ///
    /// A frame has one owner at a time (one socket's thread, or the application), and only the
    /// owner moves it, so a plain load and store suffice: no locked instruction on the hot path.
    /// Two threads racing to release the *same* frame (a bug either way) could both pass; the
    /// single-threaded mistakes (double release, sending a frame not held) are always caught.
    #[inline]
    pub(crate) fn transition(&self, idx: u32, from: FrameState, to: FrameState) -> bool {
        self.table.transition(idx, from, to)
    }

    /// Put the first hold on frame `idx`, which the caller owns in the application state
    /// (`App` → `Held`); None if it is not in that state.
    pub(crate) fn hold_app(&self, idx: u32) -> Option<FrameHold> {
        FrameTable::hold_app(&self.table, idx)
    }

    /// Another hold on frame `idx` while at least one other hold keeps it (None if none does:
    /// a frame whose last hold went may already be back in the pool).
    pub(crate) fn hold_again(&self, idx: u32) -> Option<FrameHold> {
        FrameTable::hold_again(&self.table, idx)
    }

    /// Whether `addr..addr+len` lies inside one frame.
    #[inline]
    pub fn in_frame(&self, addr: u64, len: u32) -> bool {
        let off = addr & (self.frame_size as u64 - 1);
        self.frame_of(addr).is_some() && off + len as u64 <= self.frame_size as u64
    }

    /// Pointer to UMEM address `addr` with `len` bytes checked to stay inside its frame.
    #[inline]
    pub fn ptr(&self, addr: u64, len: u32) -> Option<*mut u8> {
        self.in_frame(addr, len)
            .then(|| self.pool.base().wrapping_add(addr as usize))
    }

    /// Bytes free in front of packet `d` inside its frame (room to push headers) and after it
    /// (room to grow it); None when `d` does not lie inside one frame.
    ///
    /// On a UMEM with TX metadata the front room leaves out the `tx_metadata_len` bytes the
    /// kernel expects in front of every packet sent ([`Umem::tx_front_ok`]).
    pub fn room(&self, d: &XdpDesc) -> Option<(u32, u32)> {
        self.frame_of(d.addr)?;
        room(self.frame_size, d)
            .map(|(front, back)| (front.saturating_sub(self.tx_metadata_len), back))
    }

    /// Whether a packet starting at `addr` may be sent: on a UMEM registered with TX metadata
    /// the kernel checks `addr - tx_metadata_len` against the frame for every TX descriptor
    /// (with or without `XDP_TX_METADATA`), and skips one that starts closer to its frame's
    /// start, never completing it.
    #[inline]
    pub fn tx_front_ok(&self, addr: u64) -> bool {
        addr & (self.frame_size as u64 - 1) >= self.tx_metadata_len as u64
    }

    /// Packet `i`'s descriptor `d` with its first byte moved by `delta` (the sense of
    /// `bpf_xdp_adjust_head`: negative pushes `-delta` bytes in front, into the room before
    /// the packet; positive pops `delta` bytes off the front), its end unchanged. An error,
    /// saying how much fits, when the start would leave the frame or the packet would be
    /// shorter than an Ethernet header ([`MIN_PACKET`]).
    pub fn adjusted_head(&self, i: usize, d: &XdpDesc, delta: i32) -> Result<XdpDesc> {
        self.frame_of(d.addr).ok_or_else(|| outside(i))?;
        adjusted_head(
            self.frame_size,
            self.headroom,
            self.tx_metadata_len,
            i,
            d,
            delta,
        )
    }

    /// Packet `i`'s descriptor `d` with length `len`, its start unchanged. An error, saying how
    /// much fits, when the packet would run past its frame or be shorter than an Ethernet header
    /// ([`MIN_PACKET`]).
    pub fn with_len(&self, i: usize, d: &XdpDesc, len: u32) -> Result<XdpDesc> {
        self.frame_of(d.addr).ok_or_else(|| outside(i))?;
        with_len(self.frame_size, i, d, len)
    }

    /// A free frame from `cache` (a cache of this UMEM's pool) for the application to fill,
    /// now in the `App` state; None when the cache and the pool are empty.
    pub(crate) fn take_free(&self, cache: &mut PoolCache) -> Option<u32> {
        let mut f = [0u32];
        if cache.get_burst(&mut f) == 0 {
            return None;
        }
        self.set_state(f[0], FrameState::App);
        Some(f[0])
    }

    /// Give back a frame [`Umem::take_free`] took and nothing else saw.
    pub(crate) fn put_free(&self, cache: &mut PoolCache, f: u32) {
        if self.transition(f, FrameState::App, FrameState::Free) {
            let r = cache.put_bulk(&[f]);
            debug_assert!(r.is_ok(), "{r:?}");
        }
    }

    /// Count frames in each state, indexed by [`FrameState`] (free, rx side, application, tx
    /// side, held).
    pub fn census(&self) -> [u32; 5] {
        self.table.census()
    }

    /// Frames the application holds through [`FrameHold`]s (state `Held`).
    pub fn held(&self) -> u32 {
        self.census()[FrameState::Held as usize]
    }

    /// Frames given back to the pool by their last [`FrameHold`], ever.
    pub fn holds_returned(&self) -> u64 {
        self.table.returned()
    }

    /// Frames the pool refused when their last hold went (a bookkeeping bug: always 0).
    pub fn holds_lost(&self) -> u64 {
        self.table.lost()
    }
}

/// Whether the running kernel's release (`/proc/sys/kernel/osrelease`) is at least
/// `major.minor` (false when it cannot be read or parsed).
pub(crate) fn kernel_at_least(major: u32, minor: u32) -> bool {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").is_ok_and(|r| {
        let mut it = r
            .trim()
            .split(|c: char| !c.is_ascii_digit())
            .map(|n| n.parse::<u32>().unwrap_or(0));
        let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
        (a, b) >= (major, minor)
    })
}

/// The shortest packet a frame may be sent with, or cut or popped down to: an Ethernet header
/// (the kernel refuses empty descriptors, and a driver reads the header of whatever it sends).
pub const MIN_PACKET: u32 = 14;

/// See [`Umem::room`], for frames of `frame_size` bytes (a power of two).
fn room(frame_size: u32, d: &XdpDesc) -> Option<(u32, u32)> {
    let front = (d.addr & (frame_size as u64 - 1)) as u32;
    let back = frame_size.checked_sub(front)?.checked_sub(d.len)?;
    Some((front, back))
}

fn outside(i: usize) -> Error {
    Error::State(format!(
        "frame {i}'s descriptor does not lie inside one UMEM frame: it cannot be reshaped"
    ))
}

/// See [`Umem::adjusted_head`], for frames of `frame_size` bytes and `headroom` bytes of
/// application headroom (named in the error's fix).
/// `tx_meta` bytes (the UMEM's TX metadata length) in front of a packet are never pushed into.
fn adjusted_head(
    frame_size: u32,
    headroom: u32,
    tx_meta: u32,
    i: usize,
    d: &XdpDesc,
    delta: i32,
) -> Result<XdpDesc> {
    let (front, _) = room(frame_size, d).ok_or_else(|| outside(i))?;
    let front = front.saturating_sub(tx_meta);
    let n = delta.unsigned_abs();
    if delta < 0 {
        if n > front {
            return Err(Error::invalid(format!(
                "frame {i}: cannot push {n} bytes in front of the packet, {front} bytes are free before it (the kernel's {XDP_PACKET_HEADROOM} plus headroom={headroom}, less {tx_meta} of TX metadata): open the port with a larger headroom= (XdpPort/Pipeline), up to {}",
                frame_size - XDP_PACKET_HEADROOM - 64
            )));
        }
        return Ok(XdpDesc {
            addr: d.addr - n as u64,
            len: d.len + n,
            options: d.options,
        });
    }
    if d.len < MIN_PACKET || n > d.len - MIN_PACKET {
        return Err(Error::invalid(format!(
            "frame {i}: cannot pop {n} bytes off a {}-byte packet: at least {MIN_PACKET} bytes (an Ethernet header) must stay, pop at most {}",
            d.len,
            d.len.saturating_sub(MIN_PACKET)
        )));
    }
    Ok(XdpDesc {
        addr: d.addr + n as u64,
        len: d.len - n,
        options: d.options,
    })
}

/// See [`Umem::with_len`], for frames of `frame_size` bytes.
fn with_len(frame_size: u32, i: usize, d: &XdpDesc, len: u32) -> Result<XdpDesc> {
    let (front, _) = room(frame_size, d).ok_or_else(|| outside(i))?;
    let max = frame_size - front;
    if !(MIN_PACKET..=max).contains(&len) {
        return Err(Error::invalid(format!(
            "frame {i}: length {len} is out of range: the packet starts {front} bytes into its {frame_size}-byte frame, so give {MIN_PACKET}..={max} (an Ethernet header at least; for more, open the port with frame_size=4096)"
        )));
    }
    Ok(XdpDesc {
        addr: d.addr,
        len,
        options: d.options,
    })
}

fn check_frame_size(fs: u32) -> Result<()> {
    if fs != 2048 && fs != 4096 {
        return Err(Error::invalid(format!(
            "frame_size={fs}: AF_XDP aligned mode needs 2048 or 4096"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(addr: u64, len: u32) -> XdpDesc {
        XdpDesc {
            addr,
            len,
            options: 0,
        }
    }

    /// A received packet: 256 bytes of kernel headroom plus 64 of ours before it, in frame 3.
    const RX: u64 = 3 * 2048 + 256 + 64;

    #[test]
    fn room_is_measured_inside_the_frame() {
        assert_eq!(room(2048, &desc(RX, 100)), Some((320, 2048 - 420)));
        assert_eq!(room(2048, &desc(3 * 2048, 2048)), Some((0, 0)));
        assert_eq!(room(2048, &desc(RX, 2000)), None, "runs past the frame");
    }

    #[test]
    fn the_head_moves_inside_the_frame_and_the_end_stays() {
        let d = desc(RX, 100);
        let pushed = adjusted_head(2048, 64, 0, 0, &d, -4).unwrap();
        assert_eq!((pushed.addr, pushed.len), (RX - 4, 104));
        let all = adjusted_head(2048, 64, 0, 0, &d, -320).unwrap();
        assert_eq!(
            (all.addr, all.len),
            (3 * 2048, 420),
            "to the frame's first byte"
        );
        let e = adjusted_head(2048, 64, 0, 7, &d, -321)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("frame 7") && e.contains("320 bytes are free") && e.contains("headroom="),
            "{e}"
        );
        let popped = adjusted_head(2048, 64, 0, 0, &d, 86).unwrap();
        assert_eq!((popped.addr, popped.len), (RX + 86, 14));
        let e = adjusted_head(2048, 64, 0, 0, &d, 87)
            .unwrap_err()
            .to_string();
        assert!(e.contains("pop at most 86"), "{e}");
        let e = adjusted_head(2048, 0, 0, 0, &d, i32::MIN)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot push 2147483648"), "{e}");
        assert_eq!(adjusted_head(2048, 0, 0, 0, &d, 0).unwrap(), d);
        let contd = XdpDesc { options: 1, ..d };
        assert_eq!(adjusted_head(2048, 0, 0, 0, &contd, -4).unwrap().options, 1);
    }

    #[test]
    fn a_length_stays_inside_the_frame_from_the_packet_start() {
        let d = desc(RX, 100);
        assert_eq!(with_len(2048, 0, &d, 14).unwrap().len, 14);
        let max = with_len(2048, 0, &d, 2048 - 320).unwrap();
        assert_eq!((max.addr, max.len), (RX, 1728));
        for bad in [0, 13, 1729, u32::MAX] {
            let e = with_len(2048, 2, &d, bad).unwrap_err().to_string();
            assert!(
                e.contains("frame 2") && e.contains("give 14..=1728"),
                "{bad}: {e}"
            );
        }
        assert!(
            with_len(2048, 0, &desc(RX, 2000), 100).is_err(),
            "not inside a frame"
        );
    }
}
