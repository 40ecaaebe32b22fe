//! Packet capture: frames that match a filter, taken off an interface with AF_XDP and written to
//! a pcap file (or printed one line each), in one Rust loop.
//!
//! The loop polls every socket of an [`XskPort`], stamps each burst with the wall clock
//! (nanoseconds), hands each frame to a [`CaptureSink`], and gives the frames straight back to
//! the FILL ring. Frames that do not match the filter stay with the kernel (XDP_PASS), so
//! capturing `udp dst port 9000` does not disturb ARP, SSH or other traffic. The kernel's
//! drop counters (`XDP_STATISTICS`) are in the summary: frames the socket could not take
//! because the loop (or the disk) fell behind.

use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::packet::parse::{
    parse, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, FLAG_MALFORMED, FLAG_TRUNCATED, IPPROTO_ICMP,
    IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};
use crate::packet::pcap::{now_ns, PcapWriter};
use crate::sys::netns::NetnsGuard;
use crate::sys::socket::if_mtu;
use crate::sys::xdp::{poll_fds, XdpDesc, XdpStatistics};
use crate::xdp::{AttachMode, Rule};
use crate::xsk::{
    BindMode, PortConfig, PortProgram, Queues, SocketConfig, UmemConfig, XskPort,
    XDP_PACKET_HEADROOM,
};

/// Where captured frames go.
pub trait CaptureSink {
    /// One frame, received at `ts_ns` (nanoseconds since the Unix epoch).
    fn frame(&mut self, ts_ns: u64, frame: &[u8]) -> io::Result<()>;
    /// The end of a burst (a place to flush for interactive output).
    fn end_burst(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Flush everything buffered.
    fn flush(&mut self) -> io::Result<()>;
}

/// A pcap file (nanosecond timestamps) as a sink; `flush_bursts` flushes after every burst
/// (for a pipe that someone reads live, like `tcpdump -U`).
#[derive(Debug)]
pub struct PcapSink<W: Write> {
    writer: PcapWriter<W>,
    flush_bursts: bool,
}

impl<W: Write> PcapSink<W> {
    /// Write the pcap header to `out`; frames are cut to `snaplen` bytes (0: 262144).
    pub fn new(out: W, snaplen: u32, flush_bursts: bool) -> io::Result<Self> {
        Ok(PcapSink {
            writer: PcapWriter::new(out, snaplen)?,
            flush_bursts,
        })
    }

    /// Frames written.
    pub fn packets(&self) -> u64 {
        self.writer.packets()
    }

    /// Frame bytes written (after snaplen).
    pub fn bytes(&self) -> u64 {
        self.writer.bytes()
    }

    /// Flush and return the writer.
    pub fn into_inner(self) -> io::Result<W> {
        self.writer.into_inner()
    }
}

impl<W: Write> CaptureSink for PcapSink<W> {
    fn frame(&mut self, ts_ns: u64, frame: &[u8]) -> io::Result<()> {
        self.writer.write_frame(ts_ns, frame)
    }
    fn end_burst(&mut self) -> io::Result<()> {
        if self.flush_bursts {
            self.writer.flush()?;
        }
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// One line of text per frame, e.g.
/// `16:40:01.123456789 UDP 198.18.0.1:10000 > 198.18.0.2:9000 len 60` (time of day in UTC).
/// Flushed after every burst, so lines show up as frames arrive.
#[derive(Debug)]
pub struct TextSink<W: Write> {
    out: W,
}

impl<W: Write> TextSink<W> {
    /// Print to `out`.
    pub fn new(out: W) -> Self {
        TextSink { out }
    }

    /// Return the writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

fn mac(b: &[u8]) -> impl std::fmt::Display + '_ {
    struct Mac<'a>(&'a [u8]);
    impl std::fmt::Display for Mac<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            for (i, x) in self.0.iter().enumerate() {
                write!(f, "{}{x:02x}", if i == 0 { "" } else { ":" })?;
            }
            Ok(())
        }
    }
    Mac(b)
}

/// Write the one-line description of `frame` (without the timestamp and newline).
pub fn describe(out: &mut impl Write, frame: &[u8]) -> io::Result<()> {
    let m = parse(frame);
    let proto = match m.proto {
        IPPROTO_UDP => "UDP",
        IPPROTO_TCP => "TCP",
        IPPROTO_ICMP => "ICMP",
        IPPROTO_ICMPV6 => "ICMP6",
        _ => "",
    };
    let ports = m.proto == IPPROTO_UDP || m.proto == IPPROTO_TCP;
    match (m.ethertype, m.ip_version) {
        (ETH_P_IP, 4) => {
            let (s, d) = (Ipv4Addr::from(m.src_ip4), Ipv4Addr::from(m.dst_ip4));
            if proto.is_empty() {
                write!(out, "IP proto {}", m.proto)?;
            } else {
                write!(out, "{proto}")?;
            }
            if ports {
                write!(out, " {s}:{} > {d}:{}", m.src_port, m.dst_port)?;
            } else {
                write!(out, " {s} > {d}")?;
            }
        }
        (ETH_P_IPV6, 6) => {
            let (s, d) = (Ipv6Addr::from(m.src_ip6), Ipv6Addr::from(m.dst_ip6));
            if proto.is_empty() {
                write!(out, "IP6 proto {}", m.proto)?;
            } else {
                write!(out, "{proto}")?;
            }
            if ports {
                write!(out, " [{s}]:{} > [{d}]:{}", m.src_port, m.dst_port)?;
            } else {
                write!(out, " {s} > {d}")?;
            }
        }
        (et, _) if frame.len() >= 14 => {
            if et == ETH_P_ARP {
                write!(out, "ARP")?;
            } else {
                write!(out, "ether 0x{et:04x}")?;
            }
            write!(out, " {} > {}", mac(&frame[6..12]), mac(&frame[0..6]))?;
        }
        _ => write!(out, "runt")?,
    }
    if m.vlan != 0 {
        write!(out, " vlan {}", m.vlan)?;
    }
    write!(out, " len {}", frame.len())?;
    if m.flags & FLAG_TRUNCATED != 0 {
        write!(out, " [truncated]")?;
    }
    if m.flags & FLAG_MALFORMED != 0 {
        write!(out, " [malformed]")?;
    }
    Ok(())
}

impl<W: Write> CaptureSink for TextSink<W> {
    fn frame(&mut self, ts_ns: u64, frame: &[u8]) -> io::Result<()> {
        let secs = ts_ns / 1_000_000_000;
        let day = secs % 86_400;
        write!(
            self.out,
            "{:02}:{:02}:{:02}.{:09} ",
            day / 3600,
            day / 60 % 60,
            day % 60,
            ts_ns % 1_000_000_000
        )?;
        describe(&mut self.out, frame)?;
        self.out.write_all(b"\n")
    }
    fn end_burst(&mut self) -> io::Result<()> {
        self.out.flush()
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// How to open the interface for a capture.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// The queues to capture from.
    pub queues: Queues,
    /// Match rules (empty: every frame).
    pub rules: Vec<Rule>,
    /// Copy or zero-copy (auto: zero-copy where the driver has it).
    pub mode: BindMode,
    /// Native, generic or auto XDP attach.
    pub attach: AttachMode,
    /// UMEM frames shared by the sockets; up to half of them wait on one socket's FILL/RX rings
    /// (more frames: fewer drops when the loop is descheduled).
    pub frames: u32,
    /// Frames taken off the RX ring per burst.
    pub batch: usize,
    /// Run inside this network namespace (an `ip netns` name or a path).
    pub netns: Option<String>,
    /// Replace an XDP program that is not kbypass's.
    pub force: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            queues: Queues::List(vec![0]),
            rules: Vec::new(),
            mode: BindMode::Auto,
            attach: AttachMode::Auto,
            frames: 4096,
            batch: 64,
            netns: None,
            force: false,
        }
    }
}

/// When a capture ends.
#[derive(Debug, Default, Clone, Copy)]
pub struct CaptureLimits<'a> {
    /// After exactly this many frames.
    pub count: Option<u64>,
    /// After this long.
    pub duration: Option<Duration>,
    /// When another thread sets this.
    pub stop: Option<&'a AtomicBool>,
}

/// Why a capture ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The packet count was reached.
    Count,
    /// The duration passed.
    Duration,
    /// The stop flag was set.
    Stopped,
    /// The interrupt check said so (a signal such as Ctrl-C).
    Interrupted,
}

impl StopReason {
    /// `count`, `duration`, `stop` or `signal`.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Count => "count",
            StopReason::Duration => "duration",
            StopReason::Stopped => "stop",
            StopReason::Interrupted => "signal",
        }
    }
}

/// What a capture did.
#[derive(Debug, Clone)]
pub struct CaptureSummary {
    /// Frames captured (handed to the sink).
    pub packets: u64,
    /// Their bytes on the wire (before snaplen).
    pub bytes: u64,
    /// From the start of the loop to its end.
    pub elapsed: Duration,
    /// Why it ended.
    pub reason: StopReason,
    /// The kernel's counters, summed over the sockets.
    pub kernel: XdpStatistics,
    /// Descriptors our side refused (never expected; counted, not silent).
    pub invalid_descs: u64,
    /// Queues captured.
    pub queues: Vec<u32>,
    /// `native` or `generic`.
    pub xdp_mode: String,
    /// Whether the sockets got zero-copy.
    pub zerocopy: bool,
    /// Fallbacks taken when opening (attach mode, copy instead of zero-copy).
    pub notes: Vec<String>,
}

impl CaptureSummary {
    /// Frames the kernel dropped on the way to the socket (RX ring full, no free frame on the
    /// FILL ring, invalid descriptors).
    pub fn kernel_dropped(&self) -> u64 {
        self.kernel.rx_dropped + self.kernel.rx_ring_full + self.kernel.rx_invalid_descs
    }

    /// Frames per second over [`CaptureSummary::elapsed`].
    pub fn pps(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.packets as f64 / s
        } else {
            0.0
        }
    }
}

/// How often the loop asks the interrupt check (it may take the GIL).
const CHECK_EVERY: Duration = Duration::from_millis(50);
/// Empty polling rounds before the loop sleeps in `poll(2)`.
const SPIN_ROUNDS: u32 = 256;

/// Frame size for an interface MTU: 2048 when a frame fits, else 4096.
pub fn frame_size_for_mtu(mtu: u32) -> Result<u32> {
    for size in [2048u32, 4096] {
        if mtu + 14 <= size - XDP_PACKET_HEADROOM {
            return Ok(size);
        }
    }
    Err(Error::invalid(format!(
        "MTU {mtu} is too large for capture (at most {} with 4096-byte frames): lower the MTU \
         with `ip link set IFACE mtu 3500`",
        4096 - XDP_PACKET_HEADROOM - 14
    )))
}

/// Open `ifname` (inside `cfg.netns` when given), capture into `sink` until `limits` or until
/// `interrupted()` returns true (asked every 50 ms and after every wait; e.g. a check for
/// Ctrl-C), flush the sink, close everything, and return the summary. The XDP program is
/// detached before this returns, also on error.
pub fn capture<S: CaptureSink + ?Sized>(
    ifname: &str,
    cfg: &CaptureConfig,
    limits: &CaptureLimits<'_>,
    sink: &mut S,
    interrupted: &mut dyn FnMut() -> bool,
) -> Result<CaptureSummary> {
    if limits.count == Some(0) {
        return Err(Error::invalid(
            "count=0 captures nothing: give a count ≥ 1 or none",
        ));
    }
    if cfg.batch == 0 || cfg.batch > 1024 {
        return Err(Error::invalid(format!(
            "batch={} must be 1..1024",
            cfg.batch
        )));
    }
    if cfg.frames < 128 {
        return Err(Error::invalid(format!(
            "frames={} is too few: give at least 128 (default 4096)",
            cfg.frames
        )));
    }
    let rx_ring = (cfg.frames / 2).next_power_of_two().min(1 << 16);
    let _ns = cfg.netns.as_deref().map(NetnsGuard::enter).transpose()?;
    let mtu = if_mtu(ifname)?;
    let port_cfg = PortConfig {
        umem: UmemConfig {
            frames: cfg.frames,
            frame_size: frame_size_for_mtu(mtu)?,
            ..UmemConfig::default()
        },
        socket: SocketConfig {
            mode: cfg.mode,
            // Deep receive rings: a socket may keep half the UMEM on its receive side, and a
            // capture that is briefly descheduled should lose nothing while the rings hold.
            rx_size: rx_ring,
            fill_size: rx_ring,
            ..SocketConfig::default()
        },
        program: PortProgram::Own(cfg.rules.clone()),
        attach: cfg.attach,
        force: cfg.force,
    };
    let mut port = XskPort::open(ifname, &cfg.queues, &port_cfg)?;
    let run = capture_port(&mut port, cfg.batch, limits, sink, interrupted);
    let flushed = sink.flush();
    let mut summary = run?;
    flushed.map_err(|e| io_error("flush the capture output", e))?;
    summary.xdp_mode = port
        .xdp_mode()
        .map_or("detached", |m| m.as_str())
        .to_string();
    summary.notes = port.notes();
    drop(port);
    Ok(summary)
}

fn io_error(what: &str, e: io::Error) -> Error {
    Error::os(
        what,
        e.raw_os_error().unwrap_or(libc::EIO),
        "is the disk full, or the pipe closed?",
    )
}

/// The capture loop over an open port (see [`capture`]); the sink is not flushed at the end.
pub fn capture_port<S: CaptureSink + ?Sized>(
    port: &mut XskPort,
    batch: usize,
    limits: &CaptureLimits<'_>,
    sink: &mut S,
    interrupted: &mut dyn FnMut() -> bool,
) -> Result<CaptureSummary> {
    let batch = batch.clamp(1, 1024);
    let n_sockets = port.len();
    let mut descs = vec![XdpDesc::default(); batch];
    let mut addrs = vec![0u64; batch];
    let mut pollfds: Vec<libc::pollfd> = (0..n_sockets)
        .filter_map(|i| port.socket(i))
        .map(|s| libc::pollfd {
            fd: s.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let (mut packets, mut bytes) = (0u64, 0u64);
    let start = Instant::now();
    let mut next_check = start + CHECK_EVERY;
    let mut idle = 0u32;
    let reason = 'outer: loop {
        let mut got = 0usize;
        for i in 0..n_sockets {
            let want = match limits.count {
                Some(c) => batch.min((c - packets) as usize),
                None => batch,
            };
            if want == 0 {
                break 'outer StopReason::Count;
            }
            let Some(s) = port.socket_mut(i) else {
                continue;
            };
            let n = s.recv(&mut descs[..want]);
            if n == 0 {
                continue;
            }
            let ts = now_ns();
            let mut k = 0;
            let mut sink_result = Ok(());
            for d in &descs[..n] {
                if sink_result.is_ok() {
                    if let Some(frame) = s.app_bytes(d.addr, d.len) {
                        sink_result = sink.frame(ts, frame);
                        bytes += d.len as u64;
                        packets += 1;
                    }
                }
                addrs[k] = d.addr;
                k += 1;
            }
            // Frames go back to the kernel even when the sink failed.
            s.release(&addrs[..k]);
            sink_result
                .and_then(|()| sink.end_burst())
                .map_err(|e| io_error("write the capture output", e))?;
            got += n;
        }
        if limits.count.is_some_and(|c| packets >= c) {
            break StopReason::Count;
        }
        if got > 0 {
            idle = 0;
        } else {
            idle += 1;
        }
        let mut now = Instant::now();
        if limits
            .duration
            .is_some_and(|d| now.duration_since(start) >= d)
        {
            break StopReason::Duration;
        }
        if limits.stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            break StopReason::Stopped;
        }
        if idle >= SPIN_ROUNDS {
            // Nothing for a while: sleep in poll(2) until a frame arrives, the next check is
            // due, or the duration ends. A signal ends the wait early (EINTR).
            let mut wait = next_check.saturating_duration_since(now);
            if let Some(d) = limits.duration {
                wait = wait.min((start + d).saturating_duration_since(now));
            }
            for i in 0..n_sockets {
                if let Some(s) = port.socket_mut(i) {
                    s.refill();
                }
            }
            for p in pollfds.iter_mut() {
                p.revents = 0;
            }
            let ready = poll_fds(&mut pollfds, wait.as_millis().max(1) as i32)?;
            now = Instant::now();
            if ready == 0 {
                // Timed out or interrupted by a signal: ask now.
                next_check = now;
            }
            idle = 0;
        }
        if now >= next_check {
            next_check = now + CHECK_EVERY;
            if interrupted() {
                break StopReason::Interrupted;
            }
        }
    };
    let elapsed = start.elapsed();
    let mut kernel = XdpStatistics::default();
    let mut invalid_descs = 0;
    let mut zerocopy = true;
    for i in 0..n_sockets {
        if let Some(s) = port.socket(i) {
            let k = s.kernel_stats()?;
            kernel.rx_dropped += k.rx_dropped;
            kernel.rx_invalid_descs += k.rx_invalid_descs;
            kernel.tx_invalid_descs += k.tx_invalid_descs;
            kernel.rx_ring_full += k.rx_ring_full;
            kernel.rx_fill_ring_empty_descs += k.rx_fill_ring_empty_descs;
            kernel.tx_ring_empty_descs += k.tx_ring_empty_descs;
            invalid_descs += s.counters().invalid_descs;
            zerocopy &= s.zerocopy();
        }
    }
    Ok(CaptureSummary {
        packets,
        bytes,
        elapsed,
        reason,
        kernel,
        invalid_descs,
        queues: port.queues().to_vec(),
        xdp_mode: port
            .xdp_mode()
            .map_or("detached", |m| m.as_str())
            .to_string(),
        zerocopy,
        notes: port.notes(),
    })
}

#[cfg(test)]
mod tests;
