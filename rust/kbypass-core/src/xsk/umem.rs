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
use crate::error::{Error, Result};
use crate::mem::{Mempool, RegionOptions, Tier};
use crate::sys::xdp::{XdpUmemReg, XskFd};

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
}

impl Default for UmemConfig {
    fn default() -> Self {
        UmemConfig {
            frames: 4096,
            frame_size: 2048,
            headroom: 0,
            region: RegionOptions::default(),
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
        Self::from_pool(pool, cfg.headroom)
    }

    /// Register an existing pool as a UMEM (its objects become the frames).
    pub fn from_pool(pool: Arc<Mempool>, headroom: u32) -> Result<Arc<Self>> {
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
        let reg = XdpUmemReg::new(
            pool.base() as u64,
            pool.len() as u64,
            frame_size,
            headroom,
            0,
        );
        fd.umem_reg(&reg).map_err(|e| match e.errno() {
            Some(libc::ENOMEM) | Some(libc::EPERM) => Error::Os {
                what: format!("register a {}-byte UMEM", pool.len()),
                errno: e.errno().unwrap_or(libc::ENOMEM),
                fix: "the kernel pins UMEM pages against RLIMIT_MEMLOCK: run as root (CAP_IPC_LOCK) or raise it with `ulimit -l unlimited`".into(),
            },
            _ => e,
        })?;
        let table = Arc::new(FrameTable::new(Arc::clone(&pool), frame_size));
        Ok(Arc::new(Umem {
            pool,
            fd,
            fd_taken: AtomicBool::new(false),
            frame_size,
            frame_shift: frame_size.trailing_zeros(),
            headroom,
            table,
        }))
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

fn check_frame_size(fs: u32) -> Result<()> {
    if fs != 2048 && fs != 4096 {
        return Err(Error::invalid(format!(
            "frame_size={fs}: AF_XDP aligned mode needs 2048 or 4096"
        )));
    }
    Ok(())
}
