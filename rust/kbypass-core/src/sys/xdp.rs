//! AF_XDP kernel ABI (`include/uapi/linux/if_xdp.h`) and the socket system calls AF_XDP needs.
//!
//! Every struct here is `#[repr(C)]` with *no implicit padding*: each layout is checked at compile
//! time against the kernel UAPI (size and field offsets), and a test compiles a small C program
//! against the installed headers to compare where they exist. The point of "no implicit padding"
//! is [`XdpUmemReg`]: before `tx_metadata_len` existed (kernel < 6.8) the C struct ended with four
//! bytes of padding, and programs that passed `sizeof(struct xdp_umem_reg)` with uninitialised
//! padding had the kernel read garbage as `tx_metadata_len` and fail with `EINVAL`. Here the field
//! is explicit and every constructor zeroes it.
//!
//! # Socket wrappers
//! [`XskFd`] owns an `AF_XDP` socket; its methods are thin, typed wrappers over `setsockopt`,
//! `getsockopt`, `bind`, `sendto` (the TX wake-up), `recvfrom` (the RX wake-up), `poll` and `mmap`
//! of the four rings. The ring protocol itself (cached producer/consumer, acquire/release) lives
//! in `xsk/`, built on these. Typical order (what the kernel requires):
//!
//! 1. [`XskFd::new`] — `socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0)`.
//! 2. [`XskFd::umem_reg`] — register the UMEM area (page aligned, `chunk_size` a power of two
//!    2048..=page size in aligned mode); skip for a socket that shares another's UMEM.
//! 3. [`XskFd::set_ring_size`] with [`XDP_UMEM_FILL_RING`] / [`XDP_UMEM_COMPLETION_RING`] (on the
//!    UMEM owner, or on each socket sharing a UMEM across queues), and [`XDP_RX_RING`] /
//!    [`XDP_TX_RING`]; sizes must be powers of two.
//! 4. [`XskFd::mmap_offsets`], then [`XskFd::map_ring`] for each ring with its page offset
//!    ([`XDP_PGOFF_RX_RING`], ...). The mapping length is `offsets.desc + entries * entry_size`
//!    (entry: [`XdpDesc`] for RX/TX, `u64` for fill/completion).
//! 5. [`XskFd::bind`] with a [`SockaddrXdp`] (ifindex, queue, flags such as
//!    [`XDP_USE_NEED_WAKEUP`], [`XDP_COPY`]/[`XDP_ZEROCOPY`], [`XDP_SHARED_UMEM`] + the owner fd).
//! 6. Put the socket's fd into the XSKMAP at the queue index (see `sys::bpf`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::error::{errno, Error, Result};
use crate::sys::mm::Mapping;

/// Address family of XDP sockets (`AF_XDP`).
pub const AF_XDP: i32 = 44;
/// Socket option level of XDP sockets (`SOL_XDP`).
pub const SOL_XDP: i32 = 283;

// Bind flags (`sockaddr_xdp.sxdp_flags`).
/// Share the UMEM of the socket in `sxdp_shared_umem_fd`.
pub const XDP_SHARED_UMEM: u16 = 1 << 0;
/// Force copy mode.
pub const XDP_COPY: u16 = 1 << 1;
/// Force zero-copy mode (fails with `EOPNOTSUPP` when the driver has none).
pub const XDP_ZEROCOPY: u16 = 1 << 2;
/// The kernel sets [`XDP_RING_NEED_WAKEUP`] in ring flags when user space must kick it.
pub const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;
/// Multi-buffer (scatter-gather): packets span several descriptors ([`XDP_PKT_CONTD`]), kernel ≥ 6.6.
pub const XDP_USE_SG: u16 = 1 << 4;

// UMEM registration flags (`xdp_umem_reg.flags`).
/// Unaligned chunk mode: descriptors may point anywhere in the UMEM.
pub const XDP_UMEM_UNALIGNED_CHUNK_FLAG: u32 = 1 << 0;
/// Software TX checksum offload via TX metadata (kernel ≥ 6.8, for testing).
pub const XDP_UMEM_TX_SW_CSUM: u32 = 1 << 1;
/// `tx_metadata_len` is valid (kernel ≥ 6.11 requires this flag for it to be honoured).
pub const XDP_UMEM_TX_METADATA_LEN: u32 = 1 << 2;

/// Ring flag: the kernel needs a wake-up (`sendto` for TX, `recvfrom`/`poll` for fill/RX).
pub const XDP_RING_NEED_WAKEUP: u32 = 1 << 0;

// Socket options at level SOL_XDP.
/// `getsockopt`: [`XdpMmapOffsets`].
pub const XDP_MMAP_OFFSETS: i32 = 1;
/// `setsockopt`: RX ring size (entries, power of two).
pub const XDP_RX_RING: i32 = 2;
/// `setsockopt`: TX ring size.
pub const XDP_TX_RING: i32 = 3;
/// `setsockopt`: [`XdpUmemReg`].
pub const XDP_UMEM_REG: i32 = 4;
/// `setsockopt`: fill ring size.
pub const XDP_UMEM_FILL_RING: i32 = 5;
/// `setsockopt`: completion ring size.
pub const XDP_UMEM_COMPLETION_RING: i32 = 6;
/// `getsockopt`: [`XdpStatistics`].
pub const XDP_STATISTICS: i32 = 7;
/// `getsockopt`: [`XdpOptions`].
pub const XDP_OPTIONS: i32 = 8;
/// `setsockopt` (`u32`): frames the copy-mode TX path sends per `sendto` (default 32; kernel ≥ 6.17).
pub const XDP_MAX_TX_SKB_BUDGET: i32 = 9;

/// [`XdpOptions::flags`]: the socket is bound in zero-copy mode.
pub const XDP_OPTIONS_ZEROCOPY: u32 = 1 << 0;

// Page offsets for mmap of the rings.
/// mmap offset of the RX ring.
pub const XDP_PGOFF_RX_RING: i64 = 0;
/// mmap offset of the TX ring.
pub const XDP_PGOFF_TX_RING: i64 = 0x8000_0000;
/// mmap offset of the fill ring.
pub const XDP_UMEM_PGOFF_FILL_RING: i64 = 0x1_0000_0000;
/// mmap offset of the completion ring.
pub const XDP_UMEM_PGOFF_COMPLETION_RING: i64 = 0x1_8000_0000;

/// Unaligned mode: the offset is stored in the top 16 bits of a descriptor address.
pub const XSK_UNALIGNED_BUF_OFFSET_SHIFT: u32 = 48;
/// Unaligned mode: mask of the base address in a descriptor address.
pub const XSK_UNALIGNED_BUF_ADDR_MASK: u64 = (1 << XSK_UNALIGNED_BUF_OFFSET_SHIFT) - 1;

// `xdp_desc.options`.
/// The packet continues in the next descriptor (multi-buffer).
pub const XDP_PKT_CONTD: u32 = 1 << 0;
/// TX descriptor carries TX metadata in front of the frame (kernel ≥ 6.8).
pub const XDP_TX_METADATA: u32 = 1 << 1;

/// `struct sockaddr_xdp`: the address an XDP socket binds to.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SockaddrXdp {
    /// Always [`AF_XDP`].
    pub sxdp_family: u16,
    /// Bind flags ([`XDP_COPY`], [`XDP_USE_NEED_WAKEUP`], ...).
    pub sxdp_flags: u16,
    /// Interface index.
    pub sxdp_ifindex: u32,
    /// Queue id.
    pub sxdp_queue_id: u32,
    /// With [`XDP_SHARED_UMEM`]: fd of the socket that owns the UMEM.
    pub sxdp_shared_umem_fd: u32,
}

impl SockaddrXdp {
    /// An address for `(ifindex, queue)` with `flags`; `shared_umem_fd` only with [`XDP_SHARED_UMEM`].
    pub fn new(ifindex: u32, queue_id: u32, flags: u16, shared_umem_fd: Option<RawFd>) -> Self {
        SockaddrXdp {
            sxdp_family: AF_XDP as u16,
            sxdp_flags: flags,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue_id,
            sxdp_shared_umem_fd: shared_umem_fd.map_or(0, |fd| fd as u32),
        }
    }
}

/// `struct xdp_umem_reg` (kernel ≥ 6.8 layout, 32 bytes, no padding).
///
/// Older kernels accept the same 32 bytes and ignore `tx_metadata_len` only if it is zero, which
/// [`XdpUmemReg::new`] guarantees.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpUmemReg {
    /// Start of the packet data area (page aligned).
    pub addr: u64,
    /// Length of the packet data area.
    pub len: u64,
    /// Frame size: a power of two between 2048 and the page size in aligned mode.
    pub chunk_size: u32,
    /// Headroom the kernel leaves in front of each received frame.
    pub headroom: u32,
    /// [`XDP_UMEM_UNALIGNED_CHUNK_FLAG`], [`XDP_UMEM_TX_METADATA_LEN`], ...
    pub flags: u32,
    /// Bytes of TX metadata in front of each TX frame (0, or a multiple of 8 below 256 with
    /// [`XDP_UMEM_TX_METADATA_LEN`]).
    pub tx_metadata_len: u32,
}

impl XdpUmemReg {
    /// A registration with every field, including `tx_metadata_len`, initialised (to 0 for it).
    pub fn new(addr: u64, len: u64, chunk_size: u32, headroom: u32, flags: u32) -> Self {
        XdpUmemReg {
            addr,
            len,
            chunk_size,
            headroom,
            flags,
            tx_metadata_len: 0,
        }
    }
}

/// `struct xdp_ring_offset`: where a ring's fields are, relative to the start of its mapping.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpRingOffset {
    /// Offset of the producer index (`u32`).
    pub producer: u64,
    /// Offset of the consumer index (`u32`).
    pub consumer: u64,
    /// Offset of the first descriptor.
    pub desc: u64,
    /// Offset of the ring flags (`u32`, [`XDP_RING_NEED_WAKEUP`]).
    pub flags: u64,
}

/// `struct xdp_mmap_offsets` (the v2 layout with `flags`, kernel ≥ 5.4).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpMmapOffsets {
    /// RX ring.
    pub rx: XdpRingOffset,
    /// TX ring.
    pub tx: XdpRingOffset,
    /// Fill ring.
    pub fr: XdpRingOffset,
    /// Completion ring.
    pub cr: XdpRingOffset,
}

/// `struct xdp_desc`: one RX/TX descriptor.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpDesc {
    /// Offset of the frame data in the UMEM.
    pub addr: u64,
    /// Length of the data.
    pub len: u32,
    /// [`XDP_PKT_CONTD`], [`XDP_TX_METADATA`].
    pub options: u32,
}

/// `struct xdp_statistics` (v2, kernel ≥ 5.9).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpStatistics {
    /// Dropped for other reasons.
    pub rx_dropped: u64,
    /// Dropped due to invalid descriptor.
    pub rx_invalid_descs: u64,
    /// Dropped due to invalid descriptor.
    pub tx_invalid_descs: u64,
    /// Dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Failed to take a frame from the fill ring.
    pub rx_fill_ring_empty_descs: u64,
    /// Failed to take a descriptor from the TX ring.
    pub tx_ring_empty_descs: u64,
}

/// `struct xdp_options`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpOptions {
    /// [`XDP_OPTIONS_ZEROCOPY`].
    pub flags: u32,
}

// Layouts against include/uapi/linux/if_xdp.h.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<SockaddrXdp>() == 16);
    assert!(offset_of!(SockaddrXdp, sxdp_flags) == 2);
    assert!(offset_of!(SockaddrXdp, sxdp_ifindex) == 4);
    assert!(offset_of!(SockaddrXdp, sxdp_queue_id) == 8);
    assert!(offset_of!(SockaddrXdp, sxdp_shared_umem_fd) == 12);
    assert!(size_of::<XdpUmemReg>() == 32);
    assert!(offset_of!(XdpUmemReg, len) == 8);
    assert!(offset_of!(XdpUmemReg, chunk_size) == 16);
    assert!(offset_of!(XdpUmemReg, headroom) == 20);
    assert!(offset_of!(XdpUmemReg, flags) == 24);
    assert!(offset_of!(XdpUmemReg, tx_metadata_len) == 28);
    assert!(size_of::<XdpRingOffset>() == 32);
    assert!(offset_of!(XdpRingOffset, consumer) == 8);
    assert!(offset_of!(XdpRingOffset, desc) == 16);
    assert!(offset_of!(XdpRingOffset, flags) == 24);
    assert!(size_of::<XdpMmapOffsets>() == 128);
    assert!(offset_of!(XdpMmapOffsets, tx) == 32);
    assert!(offset_of!(XdpMmapOffsets, fr) == 64);
    assert!(offset_of!(XdpMmapOffsets, cr) == 96);
    assert!(size_of::<XdpDesc>() == 16);
    assert!(offset_of!(XdpDesc, len) == 8);
    assert!(offset_of!(XdpDesc, options) == 12);
    assert!(size_of::<XdpStatistics>() == 48);
    assert!(offset_of!(XdpStatistics, rx_invalid_descs) == 8);
    assert!(offset_of!(XdpStatistics, tx_invalid_descs) == 16);
    assert!(offset_of!(XdpStatistics, rx_ring_full) == 24);
    assert!(offset_of!(XdpStatistics, rx_fill_ring_empty_descs) == 32);
    assert!(offset_of!(XdpStatistics, tx_ring_empty_descs) == 40);
    assert!(size_of::<XdpOptions>() == 4);
};

/// Plain-old-data types that may be passed to and filled by the kernel byte for byte.
///
/// # Safety
/// Implementors are `#[repr(C)]`, have no padding and accept every bit pattern.
pub unsafe trait Pod: Copy + Default {}
// SAFETY: all of these are repr(C) integer-only structs whose layouts are asserted above to have
// no padding; any bit pattern is a valid value.
unsafe impl Pod for SockaddrXdp {}
// SAFETY: as above.
unsafe impl Pod for XdpUmemReg {}
// SAFETY: as above.
unsafe impl Pod for XdpMmapOffsets {}
// SAFETY: as above.
unsafe impl Pod for XdpStatistics {}
// SAFETY: as above.
unsafe impl Pod for XdpOptions {}
// SAFETY: integers.
unsafe impl Pod for u32 {}
// SAFETY: integers.
unsafe impl Pod for i32 {}
// SAFETY: integers.
unsafe impl Pod for u64 {}

/// Which ring a [`XskFd::map_ring`] call maps (selects the page offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingKind {
    /// RX ring ([`XdpDesc`] entries).
    Rx,
    /// TX ring ([`XdpDesc`] entries).
    Tx,
    /// Fill ring (`u64` entries).
    Fill,
    /// Completion ring (`u64` entries).
    Completion,
}

impl RingKind {
    /// The mmap page offset of this ring.
    pub fn pgoff(self) -> i64 {
        match self {
            RingKind::Rx => XDP_PGOFF_RX_RING,
            RingKind::Tx => XDP_PGOFF_TX_RING,
            RingKind::Fill => XDP_UMEM_PGOFF_FILL_RING,
            RingKind::Completion => XDP_UMEM_PGOFF_COMPLETION_RING,
        }
    }

    /// The size of one ring entry in bytes.
    pub fn entry_size(self) -> usize {
        match self {
            RingKind::Rx | RingKind::Tx => core::mem::size_of::<XdpDesc>(),
            RingKind::Fill | RingKind::Completion => core::mem::size_of::<u64>(),
        }
    }

    /// The sockopt that sets this ring's size.
    pub fn size_sockopt(self) -> i32 {
        match self {
            RingKind::Rx => XDP_RX_RING,
            RingKind::Tx => XDP_TX_RING,
            RingKind::Fill => XDP_UMEM_FILL_RING,
            RingKind::Completion => XDP_UMEM_COMPLETION_RING,
        }
    }

    /// The ring's offsets within [`XdpMmapOffsets`].
    pub fn offsets(self, off: &XdpMmapOffsets) -> XdpRingOffset {
        match self {
            RingKind::Rx => off.rx,
            RingKind::Tx => off.tx,
            RingKind::Fill => off.fr,
            RingKind::Completion => off.cr,
        }
    }

    fn name(self) -> &'static str {
        match self {
            RingKind::Rx => "RX",
            RingKind::Tx => "TX",
            RingKind::Fill => "fill",
            RingKind::Completion => "completion",
        }
    }
}

/// Result of [`XskFd::poll`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollEvents {
    /// `POLLIN`: the RX ring has descriptors.
    pub readable: bool,
    /// `POLLOUT`: the TX ring has room.
    pub writable: bool,
    /// `POLLERR`/`POLLHUP`/`POLLNVAL`.
    pub error: bool,
}

/// An owned `AF_XDP` socket; dropping it closes the socket (and with it the kernel's rings).
#[derive(Debug)]
pub struct XskFd {
    fd: OwnedFd,
}

const PERM_FIX: &str = "needs CAP_NET_ADMIN and CAP_BPF: run as root";

impl XskFd {
    /// `socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0)`.
    pub fn new() -> Result<Self> {
        // SAFETY: plain syscall with constant arguments; the returned fd is checked.
        let fd = unsafe { libc::socket(AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            let e = errno();
            let fix = match e {
                libc::EAFNOSUPPORT => {
                    "the kernel has no AF_XDP (CONFIG_XDP_SOCKETS): use a kernel built with it"
                }
                libc::EPERM | libc::EACCES => PERM_FIX,
                _ => "",
            };
            return Err(Error::os("socket(AF_XDP)", e, fix));
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(XskFd { fd })
    }

    /// The raw fd (for the XSKMAP, `XDP_SHARED_UMEM` and poll sets).
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Typed `setsockopt(SOL_XDP, opt, value)`.
    pub fn setsockopt<T: Pod>(&self, opt: i32, value: &T, what: &str) -> Result<()> {
        setsockopt_raw(self.raw(), SOL_XDP, opt, value, what)
    }

    /// Typed `getsockopt(SOL_XDP, opt)`; fails if the kernel returns fewer bytes than `T`.
    pub fn getsockopt<T: Pod>(&self, opt: i32, what: &str) -> Result<T> {
        let (v, len) = getsockopt_raw::<T>(self.raw(), SOL_XDP, opt, what)?;
        if len != core::mem::size_of::<T>() {
            return Err(Error::Unsupported {
                what: format!(
                    "{what}: the kernel returned {len} bytes, expected {}",
                    core::mem::size_of::<T>()
                ),
                fix: "kbypass needs kernel ≥ 5.9 for AF_XDP; upgrade the kernel".into(),
            });
        }
        Ok(v)
    }

    /// Register the UMEM (`XDP_UMEM_REG`).
    pub fn umem_reg(&self, reg: &XdpUmemReg) -> Result<()> {
        self.setsockopt(XDP_UMEM_REG, reg, "setsockopt(XDP_UMEM_REG)").map_err(|e| match e.errno() {
            Some(libc::EINVAL) => Error::os(
                "setsockopt(XDP_UMEM_REG)",
                libc::EINVAL,
                "the UMEM must be page aligned, chunk_size a power of two in 2048..=page size and headroom smaller than the chunk",
            ),
            _ => e,
        })
    }

    /// Set the number of entries of `ring` (a power of two).
    pub fn set_ring_size(&self, ring: RingKind, entries: u32) -> Result<()> {
        if !entries.is_power_of_two() {
            return Err(Error::invalid(format!(
                "{} ring size {entries} is not a power of two: use e.g. 2048 or 4096",
                ring.name()
            )));
        }
        self.setsockopt(
            ring.size_sockopt(),
            &entries,
            &format!("setsockopt({} ring size)", ring.name()),
        )
    }

    /// `getsockopt(XDP_MMAP_OFFSETS)`.
    pub fn mmap_offsets(&self) -> Result<XdpMmapOffsets> {
        self.getsockopt(XDP_MMAP_OFFSETS, "getsockopt(XDP_MMAP_OFFSETS)")
    }

    /// `getsockopt(XDP_STATISTICS)`.
    pub fn statistics(&self) -> Result<XdpStatistics> {
        self.getsockopt(XDP_STATISTICS, "getsockopt(XDP_STATISTICS)")
    }

    /// `getsockopt(XDP_OPTIONS)`; `flags & XDP_OPTIONS_ZEROCOPY` says whether the bind got zero-copy.
    pub fn options(&self) -> Result<XdpOptions> {
        self.getsockopt(XDP_OPTIONS, "getsockopt(XDP_OPTIONS)")
    }

    /// Raise the copy-mode TX budget per `sendto` (`XDP_MAX_TX_SKB_BUDGET`, kernel ≥ 6.17).
    /// Returns `Error::Unsupported` on older kernels (`ENOPROTOOPT`).
    pub fn set_max_tx_skb_budget(&self, budget: u32) -> Result<()> {
        self.setsockopt(
            XDP_MAX_TX_SKB_BUDGET,
            &budget,
            "setsockopt(XDP_MAX_TX_SKB_BUDGET)",
        )
        .map_err(|e| match e.errno() {
            Some(libc::ENOPROTOOPT) => Error::Unsupported {
                what: "XDP_MAX_TX_SKB_BUDGET".into(),
                fix: "needs kernel ≥ 6.17; the default budget of 32 frames per sendto applies"
                    .into(),
            },
            _ => e,
        })
    }

    /// Map one ring: length `offsets.desc + entries * entry_size`, shared, populated.
    pub fn map_ring(
        &self,
        ring: RingKind,
        offsets: &XdpMmapOffsets,
        entries: u32,
    ) -> Result<Mapping> {
        let off = ring.offsets(offsets);
        let len = off.desc as usize + entries as usize * ring.entry_size();
        use std::os::fd::AsFd;
        Mapping::shared_at(self.fd.as_fd(), len, ring.pgoff(), libc::MAP_POPULATE).map_err(|e| {
            Error::os(
                format!("mmap({} ring, {len} bytes)", ring.name()),
                e.errno().unwrap_or(libc::EINVAL),
                "set the ring size with setsockopt before mapping it",
            )
        })
    }

    /// `bind(2)` to an interface queue.
    pub fn bind(&self, addr: &SockaddrXdp) -> Result<()> {
        // SAFETY: addr points to a valid, fully initialised sockaddr_xdp of the size passed.
        let r = unsafe {
            libc::bind(
                self.raw(),
                (addr as *const SockaddrXdp).cast(),
                core::mem::size_of::<SockaddrXdp>() as libc::socklen_t,
            )
        };
        if r < 0 {
            let e = errno();
            let fix = match e {
                libc::EOPNOTSUPP => "the driver has no zero-copy: use copy mode",
                libc::EBUSY => "the queue is in use (or was just released: retry after ~100 ms)",
                libc::EINVAL => "check the queue id (ethtool -l), that the UMEM and fill/completion rings are set up, and the flags",
                libc::ENODEV => "no such interface index",
                _ => "",
            };
            return Err(Error::os(
                format!(
                    "bind(AF_XDP ifindex {} queue {})",
                    addr.sxdp_ifindex, addr.sxdp_queue_id
                ),
                e,
                fix,
            ));
        }
        Ok(())
    }

    /// Kick the kernel to transmit: `sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0)`.
    ///
    /// `EAGAIN`, `EBUSY` and `ENOBUFS` mean "try again later" and are returned as `Ok(false)`;
    /// `Ok(true)` means the kernel accepted the kick.
    pub fn wakeup_tx(&self) -> Result<bool> {
        // SAFETY: zero-length send with null buffer and address, as the AF_XDP ABI documents.
        let r = unsafe {
            libc::sendto(
                self.raw(),
                core::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                core::ptr::null(),
                0,
            )
        };
        if r >= 0 {
            return Ok(true);
        }
        match errno() {
            libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN => Ok(false),
            e => Err(Error::os("sendto(AF_XDP wake-up)", e, "")),
        }
    }

    /// Kick the kernel to refill RX from the fill ring: `recvfrom(fd, NULL, 0, MSG_DONTWAIT, ..)`.
    /// `EAGAIN`/`EBUSY` are `Ok(false)`.
    pub fn wakeup_rx(&self) -> Result<bool> {
        // SAFETY: zero-length receive with null buffer and address, as the AF_XDP ABI documents.
        let r = unsafe {
            libc::recvfrom(
                self.raw(),
                core::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                core::ptr::null_mut(),
                core::ptr::null_mut(),
            )
        };
        if r >= 0 {
            return Ok(true);
        }
        match errno() {
            libc::EAGAIN | libc::EBUSY | libc::ENETDOWN => Ok(false),
            e => Err(Error::os("recvfrom(AF_XDP wake-up)", e, "")),
        }
    }

    /// `poll(2)` this socket for `POLLIN` (and `POLLOUT` when `want_tx`); `timeout_ms < 0` waits
    /// forever. `EINTR` returns no events.
    pub fn poll(&self, want_tx: bool, timeout_ms: i32) -> Result<PollEvents> {
        let mut pfd = libc::pollfd {
            fd: self.raw(),
            events: libc::POLLIN | if want_tx { libc::POLLOUT } else { 0 },
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if r < 0 {
            let e = errno();
            if e == libc::EINTR {
                return Ok(PollEvents::default());
            }
            return Err(Error::os("poll(AF_XDP)", e, ""));
        }
        Ok(PollEvents {
            readable: pfd.revents & libc::POLLIN != 0,
            writable: pfd.revents & libc::POLLOUT != 0,
            error: pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0,
        })
    }

    /// A generic `setsockopt(SOL_SOCKET, ..)`, e.g. `SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL`,
    /// `SO_BUSY_POLL_BUDGET` for busy polling.
    pub fn set_socket_option<T: Pod>(&self, opt: i32, value: &T, what: &str) -> Result<()> {
        setsockopt_raw(self.raw(), libc::SOL_SOCKET, opt, value, what)
    }
}

impl AsRawFd for XskFd {
    fn as_raw_fd(&self) -> RawFd {
        self.raw()
    }
}

/// `poll(2)` over several fds (e.g. one AF_XDP socket per queue); returns how many have events.
/// `EINTR` returns 0.
pub fn poll_fds(fds: &mut [libc::pollfd], timeout_ms: i32) -> Result<usize> {
    // SAFETY: fds is a valid, writable array of fds.len() pollfd structs.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = errno();
        if e == libc::EINTR {
            return Ok(0);
        }
        return Err(Error::os("poll", e, ""));
    }
    Ok(r as usize)
}

/// Typed `setsockopt` on any fd.
pub fn setsockopt_raw<T: Pod>(
    fd: RawFd,
    level: i32,
    opt: i32,
    value: &T,
    what: &str,
) -> Result<()> {
    // SAFETY: value is a valid, fully initialised Pod of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (value as *const T).cast(),
            core::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        let e = errno();
        return Err(Error::os(
            what,
            e,
            if matches!(e, libc::EPERM | libc::EACCES) {
                PERM_FIX
            } else {
                ""
            },
        ));
    }
    Ok(())
}

/// Typed `getsockopt` on any fd; returns the value and the length the kernel wrote.
pub fn getsockopt_raw<T: Pod>(fd: RawFd, level: i32, opt: i32, what: &str) -> Result<(T, usize)> {
    let mut v = T::default();
    let mut len = core::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: v is a writable Pod of `len` bytes; the kernel writes at most len bytes.
    let r = unsafe { libc::getsockopt(fd, level, opt, (&mut v as *mut T).cast(), &mut len) };
    if r < 0 {
        return Err(Error::last_os(what, ""));
    }
    Ok((v, len as usize))
}

/// `if_nametoindex(3)`; a missing interface is [`Error::NotFound`] ("no such interface").
pub fn if_nametoindex(name: &str) -> Result<u32> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(Error::invalid(format!(
            "interface name {name:?} is invalid: it must be 1..15 bytes without NUL"
        )));
    }
    let c = std::ffi::CString::new(name).map_err(Error::invalid)?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        let e = errno();
        if e == libc::ENODEV || e == libc::ENXIO || e == 0 {
            return Err(Error::NotFound(format!(
                "no such interface: {name:?} (list them with `ip link`; inside a network namespace run in it)"
            )));
        }
        return Err(Error::os(format!("if_nametoindex({name})"), e, ""));
    }
    Ok(idx)
}

/// `if_indextoname(3)`.
pub fn if_indextoname(index: u32) -> Result<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as required.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return Err(Error::NotFound(format!("no such interface index: {index}")));
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Ok(s.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn umem_reg_new_zeroes_tx_metadata_len() {
        let r = XdpUmemReg::new(0x1000, 1 << 20, 2048, 0, 0);
        assert_eq!(r.tx_metadata_len, 0);
        // Every byte of the struct is a declared field: the byte image ends with four zero bytes.
        // SAFETY: XdpUmemReg is Pod (no padding), so viewing it as bytes is sound.
        let bytes: &[u8; 32] = unsafe { &*(&r as *const XdpUmemReg).cast() };
        assert_eq!(&bytes[28..], &[0, 0, 0, 0]);
        assert_eq!(&bytes[16..20], &2048u32.to_ne_bytes());
    }

    #[test]
    fn ring_kinds_map_to_uapi_offsets() {
        assert_eq!(RingKind::Fill.pgoff(), 0x1_0000_0000);
        assert_eq!(RingKind::Rx.entry_size(), 16);
        assert_eq!(RingKind::Completion.entry_size(), 8);
        assert_eq!(RingKind::Tx.size_sockopt(), XDP_TX_RING);
    }

    #[test]
    fn nametoindex_reports_missing_interface() {
        let e = if_nametoindex("kbx-nope0").unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e}");
        assert!(e.to_string().contains("no such interface"), "{e}");
        assert!(matches!(if_nametoindex(""), Err(Error::InvalidArgument(_))));
        assert_eq!(if_nametoindex("lo").unwrap(), 1);
        assert_eq!(if_indextoname(1).unwrap(), "lo");
    }

    #[test]
    fn layouts_match_installed_c_headers() {
        // Compiles a C program against /usr/include/linux/if_xdp.h and compares sizes/offsets.
        // The installed header may predate tx_metadata_len (linux-libc-dev < 6.8): then only the
        // shared prefix is compared.
        let Some(out) = crate::sys::testutil::compile_and_run_c(
            "if_xdp",
            r#"#include <stdio.h>
#include <stddef.h>
#include <linux/if_xdp.h>
int main(void) {
  printf("%zu %zu %zu %zu %zu %zu %zu %zu %zu %zu %zu\n",
    sizeof(struct sockaddr_xdp), offsetof(struct sockaddr_xdp, sxdp_shared_umem_fd),
    offsetof(struct xdp_umem_reg, flags), sizeof(struct xdp_mmap_offsets),
    offsetof(struct xdp_mmap_offsets, cr), sizeof(struct xdp_desc), offsetof(struct xdp_desc, options),
    sizeof(struct xdp_statistics), sizeof(struct xdp_options), sizeof(struct xdp_umem_reg),
    (size_t)XDP_UMEM_PGOFF_COMPLETION_RING);
  return 0;
}"#,
        ) else {
            eprintln!(
                "optional: no C compiler or linux UAPI headers; compile-time asserts still hold"
            );
            return;
        };
        let v: Vec<u64> = out.split_whitespace().map(|s| s.parse().unwrap()).collect();
        use core::mem::{offset_of, size_of};
        assert_eq!(v[0], size_of::<SockaddrXdp>() as u64);
        assert_eq!(v[1], offset_of!(SockaddrXdp, sxdp_shared_umem_fd) as u64);
        assert_eq!(v[2], offset_of!(XdpUmemReg, flags) as u64);
        assert_eq!(v[3], size_of::<XdpMmapOffsets>() as u64);
        assert_eq!(v[4], offset_of!(XdpMmapOffsets, cr) as u64);
        assert_eq!(v[5], size_of::<XdpDesc>() as u64);
        assert_eq!(v[6], offset_of!(XdpDesc, options) as u64);
        assert_eq!(v[7], size_of::<XdpStatistics>() as u64);
        assert_eq!(v[8], size_of::<XdpOptions>() as u64);
        // Old headers: 28 bytes of fields padded to 32 — the padding our struct names explicitly.
        assert_eq!(v[9], size_of::<XdpUmemReg>() as u64);
        assert_eq!(v[10], XDP_UMEM_PGOFF_COMPLETION_RING as u64);
    }

    #[test]
    fn xsk_socket_roundtrip_as_root() {
        if !crate::sys::testutil::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let s = XskFd::new().expect("AF_XDP socket");
        // Register a small UMEM and size the rings: exercises the padding-free XdpUmemReg.
        let ps = crate::sys::mm::page_size();
        let area = Mapping::anonymous(16 * ps, 0).unwrap();
        let reg = XdpUmemReg::new(area.as_ptr() as u64, (16 * ps) as u64, 2048, 0, 0);
        s.umem_reg(&reg).expect("XDP_UMEM_REG");
        s.set_ring_size(RingKind::Fill, 64).unwrap();
        s.set_ring_size(RingKind::Completion, 64).unwrap();
        s.set_ring_size(RingKind::Rx, 64).unwrap();
        assert!(matches!(
            s.set_ring_size(RingKind::Tx, 63),
            Err(Error::InvalidArgument(_))
        ));
        s.set_ring_size(RingKind::Tx, 64).unwrap();
        let off = s.mmap_offsets().unwrap();
        assert!(off.rx.desc > off.rx.consumer);
        for k in [
            RingKind::Rx,
            RingKind::Tx,
            RingKind::Fill,
            RingKind::Completion,
        ] {
            let m = s.map_ring(k, &off, 64).unwrap();
            assert!(m.len() >= 64 * k.entry_size());
        }
        let st = s.statistics().unwrap();
        assert_eq!(st, XdpStatistics::default());
        assert_eq!(s.options().unwrap().flags & XDP_OPTIONS_ZEROCOPY, 0);
        // Unbound: no events yet, and the wake-ups are harmless.
        let ev = s.poll(true, 0).unwrap();
        assert!(!ev.readable);
        let mut fds = [libc::pollfd {
            fd: s.raw(),
            events: libc::POLLIN,
            revents: 0,
        }];
        assert_eq!(poll_fds(&mut fds, 0).unwrap(), 0);
        // XDP_MAX_TX_SKB_BUDGET exists from 6.17; older kernels report Unsupported.
        match s.set_max_tx_skb_budget(64) {
            Ok(()) | Err(Error::Unsupported { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        // Binding to a missing ifindex fails with a typed error, never a crash.
        let e = s
            .bind(&SockaddrXdp::new(0x7fff_fff0, 0, XDP_COPY, None))
            .unwrap_err();
        assert!(e.errno().is_some(), "{e}");
    }

    /// Raw AF_PACKET sender for crafted frames (test helper).
    fn send_raw(ifindex: u32, frame: &[u8]) {
        // SAFETY: plain socket syscall; the fd is checked and closed below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        // SAFETY: fresh fd we own; closed on drop.
        let _own = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an all-zero sockaddr_ll is valid; the fields are set below.
        let mut sa: libc::sockaddr_ll = unsafe { core::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_ifindex = ifindex as i32;
        sa.sll_halen = 6;
        // SAFETY: frame and sa are valid for the lengths passed.
        let r = unsafe {
            libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sa as *const libc::sockaddr_ll).cast(),
                core::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            r,
            frame.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
    }

    fn udp_frame(macs: ([u8; 6], [u8; 6]), src: [u8; 4], dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut f = macs.1.to_vec();
        f.extend_from_slice(&macs.0);
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 28 + 4, 0, 1, 0x40, 0, 64, 17, 0, 0];
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        let mut sum: u32 = ip
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0, 12, 0, 0, b'k', b'b', b'x', b'!']);
        f
    }

    #[test]
    fn af_xdp_receive_end_to_end_as_root() {
        // The sys layer is complete enough for a receive path: UMEM, fill and RX rings, bind in
        // copy mode, XSKMAP entry, our filter program attached. Matching frames land in the RX
        // ring; others reach the kernel's UDP socket.
        use std::sync::atomic::{AtomicU32, Ordering};
        if !crate::sys::testutil::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let ns = crate::sys::testutil::VethPair::with(crate::sys::testutil::VethOptions {
            one_namespace: true,
            ..Default::default()
        })
        .expect("netns");
        let net = ns.net;
        let macs = (ns.mac(1), ns.mac(2)); // (source, destination)
        ns.in_a(move || {
            use crate::xdp::{attach, parse_filter, AttachMode, ProgramOptions, XdpProgram};
            let rx_if = if_nametoindex("veth1").unwrap();
            let tx_if = if_nametoindex("veth0").unwrap();
            let prog = XdpProgram::new(
                &parse_filter("udp dst port 9000").unwrap(),
                ProgramOptions::default(),
            )
            .unwrap();
            let _att = attach(&prog, "veth1", AttachMode::Native, false).unwrap();

            const N: u32 = 64;
            const FRAME: u32 = 2048;
            let area = Mapping::anonymous((N * FRAME) as usize, 0).unwrap();
            let s = XskFd::new().unwrap();
            s.umem_reg(&XdpUmemReg::new(
                area.as_ptr() as u64,
                u64::from(N * FRAME),
                FRAME,
                0,
                0,
            ))
            .unwrap();
            for k in [RingKind::Fill, RingKind::Completion, RingKind::Rx] {
                s.set_ring_size(k, N).unwrap();
            }
            let off = s.mmap_offsets().unwrap();
            let fill = s.map_ring(RingKind::Fill, &off, N).unwrap();
            let rx = s.map_ring(RingKind::Rx, &off, N).unwrap();
            // SAFETY: the offsets come from the kernel for these mappings; producer/consumer are
            // u32s shared with the kernel, accessed atomically; descriptors are read only below
            // the producer index the kernel published (acquire) and written only above ours.
            let (fill_prod, fill_desc, rx_prod, rx_cons, rx_desc) = unsafe {
                (
                    &*(fill.as_ptr().add(off.fr.producer as usize) as *const AtomicU32),
                    fill.as_ptr().add(off.fr.desc as usize) as *mut u64,
                    &*(rx.as_ptr().add(off.rx.producer as usize) as *const AtomicU32),
                    &*(rx.as_ptr().add(off.rx.consumer as usize) as *const AtomicU32),
                    rx.as_ptr().add(off.rx.desc as usize) as *const XdpDesc,
                )
            };
            for i in 0..N {
                // SAFETY: i < N entries of the fill ring.
                unsafe { fill_desc.add(i as usize).write(u64::from(i * FRAME)) };
            }
            fill_prod.store(N, Ordering::Release);
            let mut bound = Err(Error::State("not tried".into()));
            for _ in 0..20 {
                bound = s.bind(&SockaddrXdp::new(
                    rx_if,
                    0,
                    XDP_COPY | XDP_USE_NEED_WAKEUP,
                    None,
                ));
                if !matches!(
                    bound.as_ref().map_err(|e| e.errno()),
                    Err(Some(libc::EBUSY))
                ) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            bound.unwrap();
            assert_eq!(s.options().unwrap().flags & XDP_OPTIONS_ZEROCOPY, 0);
            prog.set_socket(0, s.raw()).unwrap();

            let dst = [198, 18, net, 2];
            let udp = std::net::UdpSocket::bind((std::net::Ipv4Addr::from(dst), 9001)).unwrap();
            udp.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            let src = [198, 18, net, 77];
            for _ in 0..5 {
                send_raw(tx_if, &udp_frame(macs, src, dst, 9000));
            }
            send_raw(tx_if, &udp_frame(macs, src, dst, 9001));

            let mut got = Vec::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while got.len() < 5 && std::time::Instant::now() < deadline {
                let prod = rx_prod.load(Ordering::Acquire);
                let mut cons = rx_cons.load(Ordering::Relaxed);
                while cons != prod {
                    // SAFETY: cons < prod: the kernel published this descriptor.
                    let d = unsafe { rx_desc.add((cons % N) as usize).read() };
                    // SAFETY: addr/len lie inside the UMEM area the kernel wrote.
                    let bytes = unsafe {
                        std::slice::from_raw_parts(
                            area.as_ptr().add(d.addr as usize),
                            d.len as usize,
                        )
                    };
                    got.push(bytes.to_vec());
                    cons = cons.wrapping_add(1);
                }
                rx_cons.store(cons, Ordering::Release);
                if got.len() < 5 {
                    s.poll(false, 50).unwrap();
                }
            }
            assert_eq!(got.len(), 5, "frames in the RX ring");
            for f in &got {
                assert_eq!(f.len(), 46);
                assert_eq!(u16::from_be_bytes([f[36], f[37]]), 9000);
                assert_eq!(&f[42..], b"kbx!");
            }
            let mut buf = [0u8; 64];
            let (n, from) = udp
                .recv_from(&mut buf)
                .expect("the non-matching datagram reaches the kernel socket");
            assert_eq!(&buf[..n], b"kbx!");
            assert_eq!(from.port(), 40000);
            let st = s.statistics().unwrap();
            assert_eq!(
                st.rx_dropped + st.rx_invalid_descs + st.rx_ring_full,
                0,
                "{st:?}"
            );
        });
    }
}
