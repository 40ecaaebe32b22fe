//! `XskSocket`: one AF_XDP socket bound to an interface queue, with its four rings.
//!
//! Frames flow pool → FILL → (kernel) → RX → application → TX → (kernel) → COMPLETION → pool;
//! the application may also give received frames straight back to FILL (`release`, the DROP
//! verdict) or take fresh frames from the pool to send (`alloc`). Every hot-path call is a
//! burst over a caller-provided slice: no allocation, no lock, no syscall unless the kernel
//! asked for a wake-up (need_wakeup) or busy polling drives the queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::holds::{FrameHold, HeldFrames};
use super::ring::{ConsRing, ProdRing};
use super::txmd::TxTimes;
use super::umem::{FrameState, Umem};
use crate::error::{Error, Result};
use crate::mem::PoolCache;
use crate::sys::socket::{SO_BUSY_POLL, SO_BUSY_POLL_BUDGET, SO_PREFER_BUSY_POLL};
use crate::sys::xdp::{
    if_nametoindex, RingKind, SockaddrXdp, XdpDesc, XdpStatistics, XskFd, XDP_COPY,
    XDP_OPTIONS_ZEROCOPY, XDP_PKT_CONTD, XDP_SHARED_UMEM, XDP_TX_METADATA, XDP_USE_NEED_WAKEUP,
    XDP_USE_SG, XDP_ZEROCOPY,
};

/// Copy or zero-copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    /// Zero-copy when the driver supports it, else copy (the socket reports which).
    Auto,
    /// Copy mode (works on every driver, including veth).
    Copy,
    /// Zero-copy or an error.
    ZeroCopy,
}

impl std::str::FromStr for BindMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(BindMode::Auto),
            "copy" => Ok(BindMode::Copy),
            "zerocopy" | "zero-copy" | "zc" => Ok(BindMode::ZeroCopy),
            o => Err(Error::invalid(format!(
                "mode={o:?}: use \"auto\", \"copy\" or \"zerocopy\""
            ))),
        }
    }
}

/// Busy-polling settings (`SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL`, `SO_BUSY_POLL_BUDGET`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusyPoll {
    /// Microseconds to busy-poll per syscall.
    pub usecs: u32,
    /// Packets per busy-poll round.
    pub budget: u32,
}

impl Default for BusyPoll {
    fn default() -> Self {
        BusyPoll {
            usecs: 20,
            budget: 64,
        }
    }
}

/// How to build an [`XskSocket`].
#[derive(Debug, Clone)]
pub struct SocketConfig {
    /// RX ring entries (power of two).
    pub rx_size: u32,
    /// TX ring entries (power of two).
    pub tx_size: u32,
    /// FILL ring entries (power of two).
    pub fill_size: u32,
    /// COMPLETION ring entries (power of two).
    pub comp_size: u32,
    /// Copy / zero-copy.
    pub mode: BindMode,
    /// Use `XDP_USE_NEED_WAKEUP` (syscalls only when the kernel asks).
    pub need_wakeup: bool,
    /// Busy polling.
    pub busy_poll: Option<BusyPoll>,
    /// Multi-buffer (`XDP_USE_SG`): packets larger than a frame arrive as several descriptors.
    pub multi_buffer: bool,
    /// `XDP_MAX_TX_SKB_BUDGET` for copy-mode TX (kernel ≥ 6.17; ignored where unsupported).
    pub tx_budget: Option<u32>,
    /// Keep retrying `bind` on `EBUSY` this long (a queue just released stays busy ~100 ms).
    pub bind_retry: Duration,
}

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            rx_size: 2048,
            tx_size: 2048,
            fill_size: 2048,
            comp_size: 2048,
            mode: BindMode::Auto,
            need_wakeup: true,
            busy_poll: None,
            multi_buffer: false,
            tx_budget: None,
            bind_retry: Duration::from_secs(2),
        }
    }
}

/// Set (Some) or clear (None: all three 0) the busy-poll socket options of `fd`.
fn set_busy_poll_options(fd: &XskFd, bp: Option<BusyPoll>) -> Result<()> {
    let (prefer, usecs, budget) = match bp {
        Some(b) => (1i32, b.usecs as i32, b.budget as i32),
        None => (0, 0, 0),
    };
    fd.set_socket_option(SO_PREFER_BUSY_POLL, &prefer, "SO_PREFER_BUSY_POLL")?;
    fd.set_socket_option(SO_BUSY_POLL, &usecs, "SO_BUSY_POLL")?;
    fd.set_socket_option(SO_BUSY_POLL_BUDGET, &budget, "SO_BUSY_POLL_BUDGET")
}

/// Our own counters (the kernel's are in [`XdpStatistics`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskCounters {
    /// Packets received (descriptors without `XDP_PKT_CONTD`).
    pub rx_packets: u64,
    /// Descriptors received (one per frame; > packets with multi-buffer).
    pub rx_descs: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets sent (descriptors put on the TX ring without `XDP_PKT_CONTD`).
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Frames whose transmission the kernel completed.
    pub tx_completions: u64,
    /// Times the pool had fewer frames than the fill ring had room for.
    pub fill_empty: u64,
    /// Descriptors refused: outside the UMEM, too long for a frame, or naming a frame the
    /// application does not hold (double release, send of a foreign frame).
    pub invalid_descs: u64,
    /// Sends cut short because the TX ring was full.
    pub tx_ring_full: u64,
    /// `recvfrom`/`poll` wake-ups for RX.
    pub rx_wakeups: u64,
    /// `sendto` wake-ups for TX.
    pub tx_wakeups: u64,
    /// Wake-ups (either way) the kernel refused with an error other than "try again later"
    /// (e.g. `ENXIO`: the interface went away, `EFAULT`); counted in the wake-ups too.
    pub wakeup_errors: u64,
    /// Packets sent with a TX metadata request (checksum offload, timestamp).
    pub tx_metadata: u64,
    /// TX timestamps the kernel reported at completion.
    pub tx_timestamps: u64,
    /// TX timestamps asked for that the kernel left at zero (the driver does not report them).
    pub tx_timestamps_missing: u64,
}

/// Where each of the UMEM's frames is, for the accounting check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameAccount {
    /// Free in the pool (shared ring and per-thread caches).
    pub free: u32,
    /// In the fill ring, the kernel's receive path, or the RX ring.
    pub rx_side: u32,
    /// With the application for the current call (a worker's batch, a send).
    pub app: u32,
    /// Held by the application beyond that: kept frames, received batches not yet released,
    /// frames whose views outlived their batch ([`FrameHold`]).
    pub held: u32,
    /// In the TX ring, the kernel's send path, or the completion ring.
    pub tx_side: u32,
    /// Frames in the UMEM.
    pub total: u32,
}

impl FrameAccount {
    /// Whether every frame is in exactly one place.
    pub fn balanced(&self) -> bool {
        self.free + self.rx_side + self.app + self.held + self.tx_side == self.total
    }
}

/// What [`XskSocket::send_copies`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopySend {
    /// Packets queued on the TX ring.
    pub queued: usize,
    /// Packets skipped: empty, or longer than a frame's TX room ([`Umem::tx_capacity`]).
    pub oversize: usize,
}

/// What [`XskSocket::send_holds`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeldSend {
    /// Packets queued on the TX ring (frames and copies).
    pub queued: usize,
    /// Copies made of frames that other holds still keep (sent in their place).
    pub copied: usize,
    /// Packets not sent: TX ring full or no free frame for a copy.
    pub failed: usize,
}

/// An AF_XDP socket (see the [module docs](self)).
#[derive(Debug)]
pub struct XskSocket {
    rx: ConsRing<XdpDesc>,
    tx: ProdRing<XdpDesc>,
    fill: ProdRing<u64>,
    comp: ConsRing<u64>,
    cache: PoolCache,
    scratch: Vec<u32>,
    own_fd: Option<XskFd>,
    umem: Arc<Umem>,
    ifname: String,
    ifindex: u32,
    queue: u32,
    zerocopy: bool,
    need_wakeup: bool,
    busy_poll: Option<BusyPoll>,
    multi_buffer: bool,
    /// The descriptors of a burst of split copies (`send_split_copies`), kept between calls.
    pub(super) split_descs: Vec<XdpDesc>,
    pub(super) counters: XskCounters,
    /// TX timestamps from completions, until taken.
    pub(super) tx_times: TxTimes,
    notes: Vec<String>,
    /// Frames this socket has on its receive side (fill ring, kernel, RX ring).
    rx_outstanding: u32,
    /// At most this many: the rest of the UMEM stays free for sending and other sockets.
    fill_target: u32,
}

const BATCH: usize = 64;

impl XskSocket {
    /// Create a socket on `umem`, bind it to `ifname` queue `queue`, and fill its FILL ring.
    ///
    /// The first socket of a UMEM binds the UMEM's own registration socket and chooses the
    /// copy/zero-copy, need_wakeup and multi-buffer flags; later ones share the UMEM
    /// (`XDP_SHARED_UMEM`, each with its own fill/completion pair) and inherit those flags.
    ///
    /// Crate-private, as is taking a socket out of an [`super::XskPort`]: the frames of a UMEM
    /// carry no record of which socket has them, so two sockets of one UMEM in independent
    /// hands could release or send a frame the other is reading through [`XskSocket::app_bytes`]
    /// (a data race with the kernel). Outside this crate a UMEM's sockets live in one
    /// `XskPort`, reached one `&mut` at a time; inside, each frame has one owner (a worker, the
    /// fault middlebox), who alone releases or sends it.
    pub(crate) fn bind(
        umem: &Arc<Umem>,
        ifname: &str,
        queue: u32,
        cfg: &SocketConfig,
    ) -> Result<Self> {
        for (name, v) in [
            ("rx_size", cfg.rx_size),
            ("tx_size", cfg.tx_size),
            ("fill_size", cfg.fill_size),
            ("comp_size", cfg.comp_size),
        ] {
            if v == 0 || !v.is_power_of_two() || v > 1 << 20 {
                return Err(Error::invalid(format!(
                    "{name}={v} must be a power of two in 1..=1048576"
                )));
            }
        }
        let ifindex = if_nametoindex(ifname)?;
        let first = umem.take_fd();
        let own_fd = if first { None } else { Some(XskFd::new()?) };
        let fd = own_fd.as_ref().unwrap_or(umem.fd());
        let result = Self::setup(umem, fd, first, ifname, ifindex, queue, cfg);
        match result {
            Ok((rx, tx, fill, comp, zerocopy, mut notes)) => {
                let (caps, note) = super::txask::probe(umem, ifindex, zerocopy);
                umem.tx_offload().note(caps);
                notes.extend(note);
                let cache = umem
                    .pool()
                    .cache((cfg.fill_size as usize).min(umem.frames() as usize / 2))?;
                let mut s = XskSocket {
                    rx,
                    tx,
                    fill,
                    comp,
                    cache,
                    scratch: vec![0; cfg.fill_size.max(cfg.comp_size) as usize],
                    own_fd,
                    umem: Arc::clone(umem),
                    ifname: ifname.to_string(),
                    ifindex,
                    queue,
                    zerocopy,
                    need_wakeup: cfg.need_wakeup,
                    busy_poll: cfg.busy_poll,
                    multi_buffer: cfg.multi_buffer,
                    split_descs: Vec::new(),
                    counters: XskCounters::default(),
                    tx_times: TxTimes::default(),
                    notes,
                    rx_outstanding: 0,
                    fill_target: cfg.fill_size.min(umem.frames() / 2),
                };
                s.refill();
                Ok(s)
            }
            Err(e) => {
                if first {
                    // A failed first bind leaves the registration socket free for a retry.
                    umem.release_fd_claim();
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn setup(
        umem: &Arc<Umem>,
        fd: &XskFd,
        first: bool,
        ifname: &str,
        ifindex: u32,
        queue: u32,
        cfg: &SocketConfig,
    ) -> Result<(
        ConsRing<XdpDesc>,
        ProdRing<XdpDesc>,
        ProdRing<u64>,
        ConsRing<u64>,
        bool,
        Vec<String>,
    )> {
        let mut notes = Vec::new();
        fd.set_ring_size(RingKind::Fill, cfg.fill_size)?;
        fd.set_ring_size(RingKind::Completion, cfg.comp_size)?;
        fd.set_ring_size(RingKind::Rx, cfg.rx_size)?;
        fd.set_ring_size(RingKind::Tx, cfg.tx_size)?;
        let off = fd.mmap_offsets()?;
        let rx = ConsRing::new(
            fd.map_ring(RingKind::Rx, &off, cfg.rx_size)?,
            off.rx,
            cfg.rx_size,
        )?;
        let tx = ProdRing::new(
            fd.map_ring(RingKind::Tx, &off, cfg.tx_size)?,
            off.tx,
            cfg.tx_size,
        )?;
        let fill = ProdRing::new(
            fd.map_ring(RingKind::Fill, &off, cfg.fill_size)?,
            off.fr,
            cfg.fill_size,
        )?;
        let comp = ConsRing::new(
            fd.map_ring(RingKind::Completion, &off, cfg.comp_size)?,
            off.cr,
            cfg.comp_size,
        )?;
        if let Some(bp) = cfg.busy_poll {
            set_busy_poll_options(fd, Some(bp))?;
        }
        let zerocopy = if first {
            let mut base = 0u16;
            if cfg.need_wakeup {
                base |= XDP_USE_NEED_WAKEUP;
            }
            if cfg.multi_buffer {
                base |= XDP_USE_SG;
            }
            match cfg.mode {
                BindMode::Copy => {
                    bind_retry(fd, ifindex, queue, base | XDP_COPY, None, cfg.bind_retry)?;
                    false
                }
                BindMode::ZeroCopy => {
                    bind_retry(
                        fd,
                        ifindex,
                        queue,
                        base | XDP_ZEROCOPY,
                        None,
                        cfg.bind_retry,
                    )
                    .map_err(|e| {
                        if e.errno() == Some(libc::EOPNOTSUPP) {
                            Error::Unsupported {
                                what: format!("zero-copy AF_XDP on {ifname}"),
                                fix: "the driver has no zero-copy: use mode='copy' (or 'auto')"
                                    .into(),
                            }
                        } else {
                            e
                        }
                    })?;
                    true
                }
                BindMode::Auto => match bind_retry(
                    fd,
                    ifindex,
                    queue,
                    base | XDP_ZEROCOPY,
                    None,
                    cfg.bind_retry,
                ) {
                    Ok(()) => true,
                    Err(e) if matches!(e.errno(), Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)) => {
                        notes.push(format!(
                            "zero-copy refused on {ifname} ({e}); using copy mode"
                        ));
                        bind_retry(fd, ifindex, queue, base | XDP_COPY, None, cfg.bind_retry)?;
                        false
                    }
                    Err(e) => return Err(e),
                },
            }
        } else {
            // Sockets sharing a UMEM inherit the owner's flags; the kernel refuses any here.
            if cfg.mode == BindMode::ZeroCopy {
                notes.push(
                    "shared-UMEM socket: copy/zero-copy follows the UMEM's first socket".into(),
                );
            }
            bind_retry(
                fd,
                ifindex,
                queue,
                XDP_SHARED_UMEM,
                Some(umem.fd()),
                cfg.bind_retry,
            )?;
            fd.options()
                .map(|o| o.flags & XDP_OPTIONS_ZEROCOPY != 0)
                .unwrap_or(false)
        };
        if let Some(b) = cfg.tx_budget {
            if let Err(e) = fd.set_max_tx_skb_budget(b) {
                notes.push(format!("XDP_MAX_TX_SKB_BUDGET not applied: {e}"));
            }
        }
        Ok((rx, tx, fill, comp, zerocopy, notes))
    }

    fn fd(&self) -> &XskFd {
        self.own_fd.as_ref().unwrap_or(self.umem.fd())
    }

    /// The raw socket fd (for the XSKMAP and for `poll`).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.fd().raw()
    }

    /// The UMEM.
    pub fn umem(&self) -> &Arc<Umem> {
        &self.umem
    }

    /// Interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Interface index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Queue id.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Whether the bind got zero-copy.
    pub fn zerocopy(&self) -> bool {
        self.zerocopy
    }

    /// Whether multi-buffer was requested.
    pub fn multi_buffer(&self) -> bool {
        self.multi_buffer
    }

    /// The busy-polling settings in force (from [`SocketConfig::busy_poll`] or
    /// [`XskSocket::set_busy_poll`]); None: the socket does not busy-poll.
    pub fn busy_poll(&self) -> Option<BusyPoll> {
        self.busy_poll
    }

    /// Turn busy polling on (`SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL`, `SO_BUSY_POLL_BUDGET`) or off
    /// (all three back to 0) on the bound socket. While it is on, an empty receive asks the kernel
    /// to busy-poll the queue's NAPI context (`recvfrom`), and every send kicks the kernel. An
    /// error (the kernel refused an option: before 5.11 `SO_PREFER_BUSY_POLL` and the budget do
    /// not exist; above `net.core.busy_read` `SO_BUSY_POLL` needs CAP_NET_ADMIN) leaves the
    /// socket as it was before the call.
    pub fn set_busy_poll(&mut self, bp: Option<BusyPoll>) -> Result<()> {
        if let Err(e) = set_busy_poll_options(self.fd(), bp) {
            // Put back what was in force (best effort: these were accepted before).
            let _ = set_busy_poll_options(self.fd(), self.busy_poll);
            return Err(e);
        }
        self.busy_poll = bp;
        Ok(())
    }

    /// What the bind had to fall back to, in words.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Our counters.
    pub fn counters(&self) -> XskCounters {
        self.counters
    }

    /// The kernel's counters (`XDP_STATISTICS`).
    pub fn kernel_stats(&self) -> Result<XdpStatistics> {
        self.fd().statistics()
    }

    /// Put free frames on the FILL ring, up to the ring's room and this socket's share of the
    /// UMEM (half of it, so that sending and other sockets always have frames); returns how many.
    pub fn refill(&mut self) -> u32 {
        let share = self.fill_target.saturating_sub(self.rx_outstanding);
        let room = self.fill.free(self.fill.size()).min(share) as usize;
        if room == 0 {
            return 0;
        }
        let want = room.min(self.scratch.len());
        let got = self.cache.get_burst(&mut self.scratch[..want]);
        if got < want {
            self.counters.fill_empty += 1;
        }
        if got == 0 {
            return 0;
        }
        let idx = self
            .fill
            .reserve(got as u32)
            .expect("fill ring had room for `got` entries");
        for (i, &f) in self.scratch[..got].iter().enumerate() {
            self.umem.set_state(f, FrameState::Rx);
            self.fill
                .write(idx.wrapping_add(i as u32), self.umem.frame_addr(f));
        }
        self.fill.submit(got as u32);
        self.rx_outstanding += got as u32;
        got as u32
    }

    /// Receive up to `out.len()` descriptors (addresses are UMEM offsets of packet data).
    /// The frames are the application's until it releases or sends them.
    pub fn recv(&mut self, out: &mut [XdpDesc]) -> usize {
        // Refill in bursts: a burst of BATCH, or half the target on a FILL ring smaller than
        // that (else a small ring were refilled only by a caller that sleeps, `wait_rx`, and a
        // loop that never sleeps would let it run dry).
        let burst = BATCH.min(self.fill_target as usize / 2).max(1);
        if self.fill_target.saturating_sub(self.rx_outstanding) as usize >= burst {
            self.refill();
        }
        let (idx, n) = self.rx.peek(out.len() as u32);
        if n == 0 {
            if self.busy_poll.is_some() || self.fill.needs_wakeup() {
                // Counted whether or not the kernel had work: every syscall is visible.
                if self.fd().wakeup_rx().is_err() {
                    self.counters.wakeup_errors += 1;
                }
                self.counters.rx_wakeups += 1;
            }
            return 0;
        }
        let mut k = 0;
        for i in 0..n {
            let d = self.rx.read(idx.wrapping_add(i));
            let frame = self.umem.frame_of(d.addr);
            match frame {
                Some(f)
                    if self.umem.in_frame(d.addr, d.len)
                        && self.umem.transition(f, FrameState::Rx, FrameState::App) =>
                {
                    out[k] = d;
                    k += 1;
                    self.counters.rx_descs += 1;
                    self.counters.rx_bytes += d.len as u64;
                    if d.options & XDP_PKT_CONTD == 0 {
                        self.counters.rx_packets += 1;
                    }
                }
                _ => self.counters.invalid_descs += 1,
            }
        }
        self.rx.release(n);
        self.rx_outstanding = self.rx_outstanding.saturating_sub(n);
        k
    }

    /// Block in `poll(2)` until RX has descriptors or `timeout` passes (the GIL-free wait of a
    /// non-busy-polling loop). Returns whether RX is readable.
    pub fn wait_rx(&mut self, timeout: Duration) -> Result<bool> {
        self.refill();
        let ev = self
            .fd()
            .poll(false, timeout.as_millis().min(i32::MAX as u128) as i32)?;
        self.counters.rx_wakeups += 1;
        Ok(ev.readable)
    }

    /// Give frames the application holds back to the kernel for receiving (FILL ring), the
    /// rest to the pool. `addrs` may point anywhere inside the frames. Returns how many were
    /// taken; frames the application does not hold are refused and counted as invalid.
    pub fn release(&mut self, addrs: &[u64]) -> usize {
        let share = self.fill_target.saturating_sub(self.rx_outstanding);
        let room = self.fill.free(addrs.len() as u32).min(share) as usize;
        let (idx, _) = self.fill.reserve_burst(room.min(addrs.len()) as u32);
        let mut to_fill = 0u32;
        let mut to_pool = 0usize;
        let mut taken = 0;
        for &a in addrs {
            let Some(f) = self.umem.frame_of(a) else {
                self.counters.invalid_descs += 1;
                continue;
            };
            if (to_fill as usize) < room {
                if !self.umem.transition(f, FrameState::App, FrameState::Rx) {
                    self.counters.invalid_descs += 1;
                    continue;
                }
                self.fill
                    .write(idx.wrapping_add(to_fill), self.umem.frame_addr(f));
                to_fill += 1;
            } else {
                if !self.umem.transition(f, FrameState::App, FrameState::Free) {
                    self.counters.invalid_descs += 1;
                    continue;
                }
                self.scratch[to_pool] = f;
                to_pool += 1;
                if to_pool == self.scratch.len() {
                    self.flush_scratch_to_pool(to_pool);
                    to_pool = 0;
                }
            }
            taken += 1;
        }
        // Give back reserved FILL slots we did not use (refused frames), then publish.
        let reserved = room.min(addrs.len()) as u32;
        self.fill.cancel(reserved - to_fill);
        self.fill.submit(to_fill);
        self.rx_outstanding += to_fill;
        self.flush_scratch_to_pool(to_pool);
        taken
    }

    fn flush_scratch_to_pool(&mut self, n: usize) {
        if n > 0 {
            // The frames were in use (App → Free just now), so the pool accepts them.
            let r = self.cache.put_bulk(&self.scratch[..n]);
            debug_assert!(r.is_ok(), "{r:?}");
        }
    }

    /// Take up to `out.len()` free frames for the application to fill and send; writes the TX
    /// address of each (packet data start) and returns how many.
    pub fn alloc(&mut self, out: &mut [u64]) -> usize {
        let n = out.len().min(self.scratch.len());
        let got = self.cache.get_burst(&mut self.scratch[..n]);
        for (o, &f) in out.iter_mut().zip(&self.scratch[..got]) {
            self.umem.set_state(f, FrameState::App);
            *o = self.umem.tx_addr(f);
        }
        got
    }

    /// Swap this socket's cache of free frames with `other`, a cache of the same UMEM's pool:
    /// a worker lends it to the code that emits frames during a handler call (which cannot
    /// borrow the socket), and swaps it back after. Frames in either cache are free.
    pub(crate) fn swap_cache(&mut self, other: &mut PoolCache) {
        debug_assert!(Arc::ptr_eq(self.cache.pool(), other.pool()));
        std::mem::swap(&mut self.cache, other);
    }

    /// Put descriptors of frames the application holds on the TX ring and kick the kernel if
    /// it asked. Returns how many were queued: always the first ones, whole packets only (the
    /// rest stay with the application, which releases or retries them: the ring was full, or
    /// a descriptor was refused). A descriptor that names a frame the application does not
    /// hold, whose data runs past its frame, or that starts inside the TX metadata room
    /// ([`Umem::tx_front_ok`]) is refused and counted (`invalid_descs`), and ends the send.
    pub fn send(&mut self, descs: &[XdpDesc]) -> usize {
        let (idx, reserved) = self.tx.reserve_burst(descs.len() as u32);
        let mut room = reserved;
        if (room as usize) < descs.len() {
            self.counters.tx_ring_full += 1;
            // Whole packets only: the buffers of a multi-buffer packet the ring cannot take
            // all of stay with the caller (a cut one would run into the next packet sent).
            let fit = &descs[..room as usize];
            if fit.last().is_some_and(|d| d.options & XDP_PKT_CONTD != 0) {
                room = fit
                    .iter()
                    .rposition(|d| d.options & XDP_PKT_CONTD == 0)
                    .map_or(0, |p| p as u32 + 1);
            }
        }
        // What is queued is always a whole-packet prefix of `descs`: a descriptor refused
        // stops the send, and the buffers of its packet queued so far go back with it, so the
        // caller's "the rest were not sent" (`descs[queued..]`) is exact and it releases them.
        let mut queued = 0u32;
        let mut packet_start = 0u32;
        for d in descs {
            if queued == room {
                break;
            }
            let ok = match self.umem.frame_of(d.addr) {
                Some(f)
                    if d.len > 0
                        && self.umem.in_frame(d.addr, d.len)
                        && self.umem.tx_front_ok(d.addr) =>
                {
                    self.umem.transition(f, FrameState::App, FrameState::Tx)
                }
                _ => false,
            };
            if !ok {
                self.counters.invalid_descs += 1;
                for q in &descs[packet_start as usize..queued as usize] {
                    if let Some(f) = self.umem.frame_of(q.addr) {
                        self.umem.transition(f, FrameState::Tx, FrameState::App);
                    }
                }
                queued = packet_start;
                break;
            }
            self.tx.write(idx.wrapping_add(queued), *d);
            queued += 1;
            if d.options & XDP_PKT_CONTD == 0 {
                packet_start = queued;
            }
        }
        for d in &descs[..queued as usize] {
            if d.options & XDP_TX_METADATA != 0 {
                self.counters.tx_metadata += 1;
            } else if let Some(f) = self.umem.frame_of(d.addr) {
                // A request written for this frame but never sent (an emit a failed handler
                // discarded) must not make its completion read bytes that are no request.
                self.umem.take_tx_metadata(f);
            }
            self.counters.tx_bytes += d.len as u64;
            if d.options & XDP_PKT_CONTD == 0 {
                self.counters.tx_packets += 1;
            }
        }
        self.tx.cancel(reserved - queued);
        self.tx.submit(queued);
        if queued > 0 {
            self.kick_tx();
        }
        queued as usize
    }

    /// Ask the kernel to process the TX ring when it needs (or, without need_wakeup, always).
    pub fn kick_tx(&mut self) {
        if !self.need_wakeup || self.tx.needs_wakeup() || self.busy_poll.is_some() {
            if self.fd().wakeup_tx().is_err() {
                self.counters.wakeup_errors += 1;
            }
            self.counters.tx_wakeups += 1;
        }
    }

    /// Reap transmitted frames from the COMPLETION ring back to the pool; returns how many.
    pub fn complete(&mut self) -> usize {
        let (idx, n) = self.comp.peek(self.scratch.len() as u32);
        let mut k = 0;
        for i in 0..n {
            let addr = self.comp.read(idx.wrapping_add(i));
            match self.umem.frame_of(addr) {
                Some(f) if self.umem.state(f) == FrameState::Tx => {
                    if self.umem.take_tx_metadata(f) {
                        self.tx_metadata_done(addr);
                    }
                    self.umem.set_state(f, FrameState::Free);
                    self.scratch[k] = f;
                    k += 1;
                }
                _ => self.counters.invalid_descs += 1,
            }
        }
        self.comp.release(n);
        self.flush_scratch_to_pool(k);
        self.counters.tx_completions += k as u64;
        // In copy mode the kernel sends only when kicked; keep it going while frames wait.
        if self.tx.pending() > 0 {
            self.kick_tx();
        }
        k
    }

    /// Hold frame `addr` (any address inside it), which the application has from
    /// [`XskSocket::recv`] or [`XskSocket::alloc`], beyond the current call: it leaves the
    /// `App` state for `Held` until the last [`FrameHold`] on it is dropped, then goes back to
    /// the pool by itself. None when the frame is not the application's (or already held).
    pub fn hold(&mut self, addr: u64) -> Option<FrameHold> {
        self.umem.hold_app(self.umem.frame_of(addr)?)
    }

    /// Receive up to `max` frames and hold each (see [`HeldFrames`]): the application keeps
    /// them as long as it likes and can release them from any thread without this socket.
    /// When none is there and `wait` is given (and not zero), wait up to that long in `poll(2)`
    /// ([`XskSocket::wait_rx`]) and receive once more.
    pub fn recv_held(&mut self, max: usize, wait: Option<Duration>) -> Result<HeldFrames> {
        let mut d = vec![XdpDesc::default(); max];
        let mut n = self.recv(&mut d);
        if n == 0 {
            if let Some(w) = wait.filter(|w| !w.is_zero()) {
                self.wait_rx(w)?;
                n = self.recv(&mut d);
            }
        }
        let mut frames = Vec::with_capacity(n);
        for x in &d[..n] {
            match self.hold(x.addr) {
                Some(h) => frames.push((*x, h)),
                // `recv` just gave the frame to the application: holding it cannot fail.
                None => {
                    debug_assert!(false, "a received frame could not be held");
                    self.counters.invalid_descs += 1;
                }
            }
        }
        Ok(HeldFrames::new(frames))
    }

    /// Give held frames back (e.g. an `RxBatch` released): a frame whose hold is its only one
    /// goes straight to the FILL ring, as [`XskSocket::release`] does; one that other holds
    /// still keep (a view of it is alive) stays with them and goes back to the pool when the
    /// last of them is dropped. Returns how many holds it took.
    pub fn release_holds(&mut self, holds: Vec<FrameHold>) -> usize {
        let n = holds.len();
        let addrs: Vec<u64> = holds
            .into_iter()
            .filter_map(|h| h.into_app().ok())
            .map(|f| self.umem.frame_addr(f))
            .collect();
        self.release(&addrs);
        n
    }

    /// Send held frames (one [`FrameHold`] and descriptor each, e.g. an `RxBatch` being sent
    /// back). A frame whose hold is its only one is sent as it is; a frame that other holds
    /// still keep (a view of it is alive) stays with them and a copy of its packet, in a free
    /// frame, is sent instead, so nothing the holders see ever changes or leaves. Holds of
    /// packets that could not be sent are dropped.
    pub fn send_holds(&mut self, items: Vec<(FrameHold, XdpDesc)>) -> HeldSend {
        self.send_holds_asking(items, &super::TxAsk::default())
    }

    /// [`XskSocket::send_holds`], each packet made as `ask` says once it is the application's
    /// alone ([`XskSocket::send_holds_with`] checks `ask`).
    pub(super) fn send_holds_asking(
        &mut self,
        items: Vec<(FrameHold, XdpDesc)>,
        ask: &super::TxAsk,
    ) -> HeldSend {
        let mut out = HeldSend::default();
        let mut descs = Vec::with_capacity(items.len());
        for (h, d) in items {
            let frame = h.frame();
            let end = d
                .addr
                .checked_sub(h.addr())
                .and_then(|off| off.checked_add(d.len as u64));
            if d.len == 0 || end.is_none_or(|e| e > self.umem.frame_size() as u64) {
                self.counters.invalid_descs += 1;
                out.failed += 1;
                continue;
            }
            match h.into_app() {
                Ok(f) => {
                    debug_assert_eq!(f, frame);
                    descs.push(d);
                }
                Err(h) => {
                    let mut a = [0u64];
                    if self.alloc(&mut a) == 0 {
                        out.failed += 1;
                        continue;
                    }
                    let (Some(src), Some(dst)) =
                        (h.bytes(d.addr, d.len), self.app_ptr(a[0], d.len))
                    else {
                        self.release(&a);
                        out.failed += 1;
                        continue;
                    };
                    // SAFETY: `dst` is `d.len` bytes inside a frame just allocated (App: neither
                    // the kernel nor any hold has it); `src` is in another frame, held, so the
                    // two ranges do not overlap.
                    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
                    let mut options = d.options;
                    if options & XDP_TX_METADATA != 0 {
                        // SAFETY: as above: the original is held, the copy's frame only ours.
                        let copied = unsafe { super::txmd::copy_request(&self.umem, d.addr, a[0]) };
                        if !copied {
                            options &= !XDP_TX_METADATA;
                        }
                    }
                    descs.push(XdpDesc {
                        addr: a[0],
                        len: d.len,
                        options,
                    });
                    out.copied += 1;
                    // `h` goes here: the other holds keep the original.
                }
            }
        }
        if !ask.is_empty() {
            self.ask_each(&mut descs, ask);
        }
        let q = self.send(&descs);
        if q < descs.len() {
            let back: Vec<u64> = descs[q..].iter().map(|d| d.addr).collect();
            self.release(&back);
            out.failed += descs.len() - q;
        }
        out.queued = q;
        out
    }

    /// Take a free frame for each of `packets` (while there are free frames), copy the packet
    /// into it and describe it in `out`; returns how many `out` holds. Each packet must be
    /// non-empty and fit a frame's TX room ([`Umem::tx_capacity`]); one that does not is
    /// skipped (its frame goes back) and counted as an invalid descriptor.
    pub fn alloc_copies(&mut self, packets: &[&[u8]], out: &mut [XdpDesc]) -> usize {
        let mut addrs = [0u64; BATCH];
        let mut k = 0;
        for chunk in packets.chunks(BATCH) {
            let want = chunk.len().min(out.len() - k);
            let got = self.alloc(&mut addrs[..want]);
            for (p, &a) in chunk.iter().zip(&addrs[..got]) {
                let fits = !p.is_empty() && p.len() as u32 <= self.umem.tx_capacity();
                match self.app_ptr(a, p.len() as u32).filter(|_| fits) {
                    Some(dst) => {
                        // SAFETY: `app_ptr` checked that p.len() bytes at `a` lie inside a
                        // frame just allocated (App: neither the kernel nor any hold has it,
                        // and no view of it exists); `p` is caller memory, not in that frame.
                        unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), dst, p.len()) };
                        out[k] = XdpDesc {
                            addr: a,
                            len: p.len() as u32,
                            options: 0,
                        };
                        k += 1;
                    }
                    None => {
                        self.release(&[a]);
                        self.counters.invalid_descs += 1;
                    }
                }
            }
            if got < want || k == out.len() {
                break;
            }
        }
        k
    }

    /// Send copies of `packets`, in order (the `send()` of an application that has bytes, not
    /// frames): each is copied into a free frame and put on the TX ring, completions reaped as
    /// it goes. Stops at the first packet that finds no free frame or no room on the TX ring
    /// (frames taken for the rest go back). Empty packets and packets longer than a frame's TX
    /// room are skipped and counted in [`CopySend::oversize`].
    ///
    /// On a multi-buffer socket ([`SocketConfig::multi_buffer`]) a packet longer than a
    /// frame's TX room is split over several frames instead (up to
    /// [`MAX_DESCS_PER_PACKET`](super::MAX_DESCS_PER_PACKET)).
    pub fn send_copies(&mut self, packets: &[&[u8]]) -> CopySend {
        let cap = self.umem.tx_capacity() as usize;
        if self.multi_buffer && packets.iter().any(|p| p.len() > cap) {
            return self.send_split_copies(packets);
        }
        let (ok, big): (Vec<&[u8]>, Vec<&[u8]>) = packets
            .iter()
            .partition(|p| !p.is_empty() && p.len() <= cap);
        let mut out = CopySend {
            queued: 0,
            oversize: big.len(),
        };
        let mut descs = [XdpDesc::default(); BATCH];
        for chunk in ok.chunks(BATCH) {
            self.complete();
            let got = self.alloc_copies(chunk, &mut descs);
            let q = self.send(&descs[..got]);
            if q < got {
                let back: Vec<u64> = descs[q..got].iter().map(|d| d.addr).collect();
                self.release(&back);
            }
            out.queued += q;
            if q < chunk.len() {
                break;
            }
        }
        out
    }

    /// Where the UMEM's frames are (over all sockets sharing it).
    pub fn account(&self) -> FrameAccount {
        let c = self.umem.census();
        let s = self.umem.pool().stats();
        FrameAccount {
            free: s.available + s.cached,
            rx_side: c[FrameState::Rx as usize],
            app: c[FrameState::App as usize],
            held: c[FrameState::Held as usize],
            tx_side: c[FrameState::Tx as usize],
            total: self.umem.frames(),
        }
    }

    /// Check that every frame is in exactly one place (the census of frame states agrees with
    /// the pool's free count and the totals); an error says where the counts differ.
    pub fn check_accounting(&self) -> Result<FrameAccount> {
        let a = self.account();
        let census_free = self.umem.census()[FrameState::Free as usize];
        if !a.balanced() || census_free != a.free {
            return Err(Error::State(format!(
                "frame accounting is off: {a:?}, {census_free} frames marked free"
            )));
        }
        Ok(a)
    }

    /// Pointer and bounds check for application access to `len` bytes at UMEM address `addr`
    /// of a frame the application holds.
    pub fn app_ptr(&self, addr: u64, len: u32) -> Option<*mut u8> {
        let f = self.umem.frame_of(addr)?;
        (self.umem.state(f) == FrameState::App)
            .then(|| self.umem.ptr(addr, len))
            .flatten()
    }

    /// The `len` bytes at UMEM address `addr` of a frame the application holds, read-only
    /// (e.g. to write a received frame to a file). None when the range leaves its frame or the
    /// frame is not the application's.
    pub fn app_bytes(&self, addr: u64, len: u32) -> Option<&[u8]> {
        let p = self.app_ptr(addr, len)?;
        // SAFETY: app_ptr checked that `len` bytes at `addr` lie inside one UMEM frame in the
        // application state, which the kernel does not write; the frame leaves that state only
        // through `release`/`send`, which take `&mut self` and so end this borrow first (another
        // socket of the same UMEM is out of reach outside this crate, see `bind`, and inside it
        // never moves a frame it was not given), and the UMEM (held by `self.umem`) outlives it.
        Some(unsafe { std::slice::from_raw_parts(p, len as usize) })
    }
}

impl Drop for XskSocket {
    fn drop(&mut self) {
        // Reap what the kernel already sent. Frames still on this socket's kernel side (FILL,
        // RX, TX, COMPLETION) stay marked there: the kernel may still touch them until the
        // UMEM's registration socket closes, so they are never reused, and go with the UMEM.
        // The per-thread cache is flushed back to the pool by its own Drop.
        let _ = self.complete();
    }
}

fn bind_retry(
    fd: &XskFd,
    ifindex: u32,
    queue: u32,
    flags: u16,
    shared: Option<&XskFd>,
    retry: Duration,
) -> Result<()> {
    let addr = SockaddrXdp::new(ifindex, queue, flags, shared.map(|s| s.raw()));
    let deadline = Instant::now() + retry;
    loop {
        match fd.bind(&addr) {
            Err(e) if e.errno() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}
