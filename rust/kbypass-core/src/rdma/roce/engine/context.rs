//! The engine: its AF_XDP port, XDP rule and progress (a poll thread or the caller).

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::objects::{CompletionChannel, CompletionQueue, ProtectionDomain};
use super::state::Core;
use super::{EngineCounters, EngineOptions, Gid, Progress};
use crate::error::{Error, Result};
use crate::rdma::roce::wire::ROCE_PORT;
use crate::rdma::Cancel;
use crate::sys::event::{poll_for, EventFd};
use crate::sys::netlink::{link_info, neigh};
use crate::sys::netns::{current_netns_inode, NetnsGuard};
use crate::sys::xdp::if_nametoindex;
use crate::xsk::{
    PortConfig, PortProgram, Queues, SocketConfig, UmemConfig, XskPort, XDP_PACKET_HEADROOM,
};

/// How long opening waits for a busy queue: long enough for one just released (~100 ms);
/// a longer wait is the caller's, between attempts (where it can be interrupted).
const BIND_RETRY: Duration = Duration::from_millis(200);

/// What the poll thread and the callers share.
pub(super) struct Shared {
    core: Mutex<Core>,
    pub wake: EventFd,
    pub stop: AtomicBool,
    pub xsk_fd: RawFd,
    /// Work posted so far (a post counts after its work is queued).
    posts: AtomicU64,
    /// The poll thread is going to sleep, or sleeps: a post must ring `wake`.
    asleep: AtomicBool,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A user-space RoCEv2 device on one queue of one interface (see the [module docs](super)).
pub struct Engine {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    ifname: String,
    ifindex: u32,
    queue: u32,
    ip: IpAddr,
    mac: [u8; 6],
    max_mtu: usize,
    progress: Progress,
    neigh_timeout: Duration,
    netns: File,
    netns_inode: u64,
    next_key: AtomicU32,
    notes: Vec<String>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("ifname", &self.ifname)
            .field("queue", &self.queue)
            .field("ip", &self.ip)
            .finish()
    }
}

/// Bytes a RoCEv2 frame adds to its payload at most: IP, UDP, BTH, the largest extension
/// headers (AtomicETH), pad and ICRC.
fn overhead(ip: IpAddr) -> usize {
    let ip_len = if ip.is_ipv4() { 20 } else { 40 };
    ip_len + 8 + 12 + 28 + 3 + 4
}

/// The largest path MTU (256–4096) whose frames fit the link MTU and, unless the socket is
/// multi-buffer (a frame then spans several UMEM frames), one UMEM frame.
fn max_path_mtu(link_mtu: u32, tx_capacity: Option<u32>, ip: IpAddr) -> Option<usize> {
    let frame = tx_capacity.map_or(usize::MAX, |c| (c as usize).saturating_sub(14));
    let room = (link_mtu as usize).min(frame);
    let o = overhead(ip);
    [4096, 2048, 1024, 512, 256]
        .into_iter()
        .find(|m| m + o <= room)
}

impl Engine {
    /// Opens the engine on `queue` of `ifname` for address `ip` (which should be an address
    /// of the interface, so the kernel answers ARP or neighbour solicitations for it): an
    /// AF_XDP socket, the XDP program that redirects UDP port 4791 for `ip` to it, and the
    /// poll thread unless progress is the caller's. Must be called in the interface's network
    /// namespace (the engine remembers it for resolving peers).
    pub fn open(ifname: &str, queue: u32, ip: IpAddr, opts: &EngineOptions) -> Result<Arc<Self>> {
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(Error::invalid(format!(
                "{ip} cannot be an engine's address: give the interface's unicast address"
            )));
        }
        if !opts.ring_size.is_power_of_two() || opts.ring_size < 8 {
            return Err(Error::invalid(format!(
                "ring_size {} must be a power of two of at least 8",
                opts.ring_size
            )));
        }
        if opts.frames < 2 * opts.ring_size {
            return Err(Error::invalid(format!(
                "frames={} must be at least twice ring_size={} (receive and send share them)",
                opts.frames, opts.ring_size
            )));
        }
        let ifindex = if_nametoindex(ifname)?;
        let mac = neigh::link_mac(ifindex)?;
        let link = link_info(ifindex)?;
        let rules = crate::xdp::parse_filter(&format!("udp dst port {ROCE_PORT} and dst {ip}"))?;
        // A link whose frames do not fit one UMEM frame (a jumbo MTU, for the 4096-byte path
        // MTU) needs a multi-buffer socket and a program loaded for multi-buffer frames.
        let multi_buffer = link.mtu + 14 > opts.frame_size.saturating_sub(XDP_PACKET_HEADROOM);
        let cfg = PortConfig {
            umem: UmemConfig {
                frames: opts.frames,
                frame_size: opts.frame_size,
                ..Default::default()
            },
            socket: SocketConfig {
                rx_size: opts.ring_size,
                tx_size: opts.ring_size,
                fill_size: opts.ring_size,
                comp_size: opts.ring_size,
                mode: opts.bind,
                multi_buffer,
                // One kick sends what a round queued (the copy-mode default is 32 frames per
                // `sendto`, the rest waiting for the next round's kick).
                tx_budget: Some(opts.ring_size),
                bind_retry: BIND_RETRY,
                ..Default::default()
            },
            program: PortProgram::Own(rules),
            attach: opts.attach,
            force: opts.force,
        };
        let mut port = XskPort::open(ifname, &Queues::List(vec![queue]), &cfg)?;
        let mut notes = port.notes();
        if let (Some(bp), Some(sock)) = (opts.busy_poll, port.socket_mut(0)) {
            if let Err(e) = sock.set_busy_poll(Some(bp)) {
                notes.push(format!("busy polling refused ({e}); polling without it"));
            }
        }
        let tx_room = (!multi_buffer).then(|| port.umem().tx_capacity());
        let max_mtu = max_path_mtu(link.mtu, tx_room, ip).ok_or_else(|| {
            Error::invalid(format!(
                "{ifname}'s MTU {} (or a {}-byte UMEM frame) cannot carry a 256-byte RoCE path MTU: raise the MTU or frame_size",
                link.mtu, opts.frame_size
            ))
        })?;
        let xsk_fd = port
            .socket(0)
            .map(|s| s.raw_fd())
            .ok_or_else(|| Error::State("the port opened without its socket".into()))?;
        let netns = File::open("/proc/thread-self/ns/net").map_err(|e| {
            Error::os(
                "open /proc/thread-self/ns/net",
                e.raw_os_error().unwrap_or(0),
                "",
            )
        })?;
        let shared = Arc::new(Shared {
            core: Mutex::new(Core::new(port, mac, ip)),
            wake: EventFd::new()?,
            stop: AtomicBool::new(false),
            xsk_fd,
            posts: AtomicU64::new(0),
            asleep: AtomicBool::new(false),
        });
        let thread = match opts.progress {
            Progress::Thread { cpu } => {
                // A busy-polling engine's thread never sleeps: its polls are what run the
                // queue's receive work.
                let spin = if opts.busy_poll.is_some() {
                    Duration::MAX
                } else {
                    opts.spin
                };
                Some(spawn(&shared, ifname, cpu, spin)?)
            }
            Progress::Caller => None,
        };
        Ok(Arc::new(Engine {
            shared,
            thread: Mutex::new(thread),
            ifname: ifname.to_string(),
            ifindex,
            queue,
            ip,
            mac,
            max_mtu,
            progress: opts.progress,
            neigh_timeout: opts.neigh_timeout,
            netns,
            netns_inode: current_netns_inode()?,
            next_key: AtomicU32::new(1),
            notes,
        }))
    }

    /// Interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }
    /// Queue id.
    pub fn queue(&self) -> u32 {
        self.queue
    }
    /// The engine's IP address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
    /// The interface's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }
    /// The GID: the IPv4-mapped (`::ffff:a.b.c.d`) or IPv6 address, as rxe's RoCEv2 GIDs.
    pub fn gid(&self) -> Gid {
        Gid(match self.ip {
            IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            IpAddr::V6(a) => a.octets(),
        })
    }
    /// The largest path MTU in bytes (connections ask for less or are capped to it).
    pub fn max_mtu(&self) -> usize {
        self.max_mtu
    }
    /// How progress is made.
    pub fn progress_mode(&self) -> Progress {
        self.progress
    }
    /// Notes from opening (memory tier, XDP attach mode fallbacks, copy instead of zero-copy).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The counters now.
    pub fn counters(&self) -> EngineCounters {
        self.shared.lock().counters()
    }

    /// Runs the engine once (receive, timers, completions, send); returns whether it did
    /// anything. Needed only with [`Progress::Caller`], where CQ polls call it already.
    pub fn progress(&self) -> bool {
        self.shared.lock().progress().busy
    }

    /// A protection domain.
    pub fn alloc_pd(self: &Arc<Self>) -> Result<ProtectionDomain> {
        Ok(ProtectionDomain::new(Arc::clone(self)))
    }

    /// A completion channel.
    pub fn create_comp_channel(&self) -> Result<CompletionChannel> {
        CompletionChannel::new()
    }

    /// A completion queue of `cqe` entries, reporting to `channel` when armed.
    pub fn create_cq(
        self: &Arc<Self>,
        cqe: u32,
        channel: Option<&CompletionChannel>,
    ) -> Result<CompletionQueue> {
        CompletionQueue::new(Arc::clone(self), cqe, channel)
    }

    pub(super) fn shared(&self) -> &Shared {
        &self.shared
    }

    pub(super) fn next_key(&self) -> u32 {
        let n = self.next_key.fetch_add(1, Ordering::Relaxed);
        // The low byte varies like rxe's key byte; the index keeps keys unique.
        (n << 8) | ((n.wrapping_mul(0x9d) ^ 0x5a) & 0xff)
    }

    /// Tells the poll thread that work was posted, waking it if it sleeps. A busy poll
    /// thread costs the poster two atomic operations, no system call: the thread raises
    /// `asleep` before it sleeps and then looks at `posts` again (Dekker-style, both
    /// sequentially consistent), so either it sees the post or the post sees it asleep.
    pub(super) fn kick(&self) {
        if self.thread_running() {
            self.shared.posts.fetch_add(1, Ordering::SeqCst);
            if self.shared.asleep.load(Ordering::SeqCst) {
                self.shared.wake.signal();
            }
        }
    }

    fn thread_running(&self) -> bool {
        matches!(self.progress, Progress::Thread { .. })
    }

    /// With caller progress, runs the engine once.
    pub(super) fn caller_progress(&self) {
        if !self.thread_running() {
            self.shared.lock().progress();
        }
    }

    /// Waits until `fd` is readable or `timeout` passes (false then); with caller progress
    /// the engine runs meanwhile.
    pub(super) fn wait_fd(&self, fd: RawFd, timeout: Option<Duration>) -> Result<bool> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let slice = if self.thread_running() {
                left.unwrap_or(Duration::from_millis(100))
                    .min(Duration::from_millis(100))
            } else {
                // Run while there is work, but not past the deadline (a flood must not keep
                // a wait from returning).
                for _ in 0..256 {
                    if !self.shared.lock().progress().busy {
                        break;
                    }
                }
                left.unwrap_or(Duration::from_millis(1))
                    .min(Duration::from_millis(1))
            };
            let mut fds = [
                libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.shared.xsk_fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let n = if self.thread_running() { 1 } else { 2 };
            poll_for(&mut fds[..n], slice)?;
            if fds[0].revents & libc::POLLIN != 0 {
                return Ok(true);
            }
            if left == Some(Duration::ZERO) {
                return Ok(false);
            }
        }
    }

    /// The peer address a GID names; it must be of the engine's address family.
    pub(super) fn peer_ip(&self, gid: &Gid) -> Result<IpAddr> {
        let v6 = Ipv6Addr::from(gid.0);
        let ip = match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        };
        if ip.is_ipv4() != self.ip.is_ipv4() || ip.is_unspecified() {
            return Err(Error::invalid(format!(
                "GID {} is not an {} address the engine at {} can reach",
                gid.to_hex(),
                if self.ip.is_ipv4() {
                    "IPv4-mapped"
                } else {
                    "IPv6"
                },
                self.ip
            )));
        }
        Ok(ip)
    }

    /// The MAC address of on-link `ip`, resolved in the engine's network namespace within
    /// the engine's `neigh_timeout`; [`Error::Interrupted`] as soon as `cancel` says stop.
    pub(super) fn resolve_mac(&self, ip: IpAddr, cancel: &Cancel<'_>) -> Result<[u8; 6]> {
        if ip == self.ip || ip == IpAddr::V4(Ipv4Addr::LOCALHOST) {
            return Err(Error::invalid(format!(
                "{ip} is the engine's own address: a peer must be another host on the link"
            )));
        }
        let what = format!("resolving {ip}'s MAC address on {}", self.ifname);
        let stop = || cancel.check(&what);
        if current_netns_inode()? == self.netns_inode {
            return neigh::resolve_or_stop(self.ifindex, ip, self.neigh_timeout, &stop);
        }
        let path = format!("/proc/self/fd/{}", self.netns.as_raw_fd());
        let _guard = NetnsGuard::enter(&path)?;
        neigh::resolve_or_stop(self.ifindex, ip, self.neigh_timeout, &stop)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.signal();
        let t = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = t {
            // A panic in the thread was already reported; the port goes with `shared`.
            let _ = t.join();
        }
    }
}

/// Starts the poll thread; it reports whether pinning worked before it runs.
fn spawn(
    shared: &Arc<Shared>,
    ifname: &str,
    cpu: Option<usize>,
    spin: Duration,
) -> Result<JoinHandle<()>> {
    let (tx, rx) = mpsc::channel::<Result<()>>();
    let s = Arc::clone(shared);
    let t = std::thread::Builder::new()
        .name(format!("kbx-roce-{ifname}"))
        .spawn(move || {
            let pinned = match cpu {
                Some(c) => crate::sys::affinity::set_current(&[c]),
                None => Ok(()),
            };
            let ok = pinned.is_ok();
            let _ = tx.send(pinned);
            if ok {
                run(&s, spin);
            }
        })
        .map_err(|e| Error::State(format!("cannot start the RoCE poll thread: {e}")))?;
    match rx.recv() {
        Ok(Ok(())) => Ok(t),
        Ok(Err(e)) => {
            let _ = t.join();
            Err(e)
        }
        Err(_) => {
            let _ = t.join();
            Err(Error::State("the RoCE poll thread died at start".into()))
        }
    }
}

/// The poll loop: run the engine while it has work, go on polling for `spin` after the last
/// work, then sleep on the socket and the wake eventfd (1 ms while timers run, 50 ms when
/// idle).
fn run(s: &Shared, spin: Duration) {
    let mut last_work = Instant::now();
    while !s.stop.load(Ordering::Acquire) {
        let seen = s.posts.load(Ordering::SeqCst);
        let p = s.lock().progress();
        if p.busy {
            last_work = Instant::now();
            continue;
        }
        if !spin.is_zero() && last_work.elapsed() < spin {
            std::hint::spin_loop();
            continue;
        }
        s.asleep.store(true, Ordering::SeqCst);
        if s.posts.load(Ordering::SeqCst) != seen {
            // Posted after this round looked: run again instead of sleeping.
            s.asleep.store(false, Ordering::SeqCst);
            continue;
        }
        let wait = if p.timers {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(50)
        };
        let mut fds = [
            libc::pollfd {
                fd: s.xsk_fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: s.wake.raw(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // An error here (EINTR, ENOMEM) only shortens the sleep.
        let _ = poll_for(&mut fds, wait);
        s.asleep.store(false, Ordering::SeqCst);
        if fds[1].revents & libc::POLLIN != 0 {
            s.wake.drain();
        }
        if fds.iter().any(|f| f.revents != 0) {
            // Woken by a packet or a post: traffic is back, spin again after it.
            last_work = Instant::now();
        }
    }
}
