//! Kernel-socket baselines: what the kernel's own paths do on the same bench.
//!
//! * [`udp_send`]: a connected UDP socket, `sendmmsg` in batches (the kernel TX baseline);
//! * [`udp_recv`]: a bound UDP socket, `recvmmsg` in batches (the kernel RX baseline);
//! * [`af_packet_recv`]: `AF_PACKET` with a `TPACKET_V3` ring (the raw-socket RX baseline).
//!
//! Each runs on the calling thread, inside network namespace `netns` when one is given.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::sys::netns::NetnsGuard;
use crate::sys::socket::{self, PacketV3Socket};
use crate::sys::xdp::if_nametoindex;

/// Packets and bytes moved over a measured time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Throughput {
    /// Packets.
    pub packets: u64,
    /// Bytes (payload bytes for UDP sockets, frame bytes otherwise; 0 when not counted).
    pub bytes: u64,
    /// Time from the first to the last packet, or the whole run when there were none.
    pub elapsed: Duration,
}

impl Throughput {
    /// Packets per second.
    pub fn pps(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.packets as f64 / s
        } else {
            0.0
        }
    }
}

/// When a receive loop stops: after `count` packets, after `duration`, when `stop` is set, or
/// when nothing arrived for `idle` (the sender finished). The first that happens wins.
#[derive(Debug, Clone, Copy)]
pub struct StopWhen<'a> {
    /// Stop after this many packets.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Stop after this long without traffic, once traffic has started.
    pub idle: Duration,
    /// Set from another thread to stop.
    pub stop: Option<&'a AtomicBool>,
}

impl Default for StopWhen<'_> {
    fn default() -> Self {
        StopWhen {
            count: None,
            duration: Some(Duration::from_secs(1)),
            idle: Duration::from_millis(300),
            stop: None,
        }
    }
}

impl StopWhen<'_> {
    fn validate(&self) -> Result<()> {
        if self.count.is_none() && self.duration.is_none() && self.stop.is_none() {
            return Err(Error::invalid(
                "give a packet count, a duration or a stop flag, or the loop never ends",
            ));
        }
        Ok(())
    }

    /// Whether the loop should stop now.
    pub fn done(&self, packets: u64, start: Instant, last: Option<Instant>) -> bool {
        self.count.is_some_and(|c| packets >= c)
            || self.duration.is_some_and(|d| start.elapsed() >= d)
            || self.stop.is_some_and(|s| s.load(Ordering::Relaxed))
            || last.is_some_and(|l| l.elapsed() >= self.idle)
    }
}

fn enter(netns: Option<&str>) -> Result<Option<NetnsGuard>> {
    netns.map(NetnsGuard::enter).transpose()
}

/// Send `count` UDP datagrams of `payload` to `dst` from `src`, `batch` per `sendmmsg`.
pub fn udp_send(
    netns: Option<&str>,
    src: Ipv4Addr,
    dst: SocketAddrV4,
    payload: &[u8],
    count: u64,
    batch: usize,
) -> Result<Throughput> {
    let _ns = enter(netns)?;
    let sock = UdpSocket::bind(SocketAddrV4::new(src, 0)).map_err(|e| {
        Error::os(
            format!("bind UDP {src}"),
            e.raw_os_error().unwrap_or(0),
            "is the address on an interface of this namespace?",
        )
    })?;
    sock.connect(dst).map_err(|e| {
        Error::os(
            format!("connect UDP {dst}"),
            e.raw_os_error().unwrap_or(0),
            "",
        )
    })?;
    let start = Instant::now();
    let sent = socket::sendmmsg_repeat(&sock, payload, count as usize, batch)? as u64;
    Ok(Throughput {
        packets: sent,
        bytes: sent * payload.len() as u64,
        elapsed: start.elapsed(),
    })
}

/// Receive UDP datagrams on `addr` with `recvmmsg` (`batch` per call) until `when`.
pub fn udp_recv(
    netns: Option<&str>,
    addr: SocketAddrV4,
    batch: usize,
    when: StopWhen<'_>,
) -> Result<Throughput> {
    when.validate()?;
    let _ns = enter(netns)?;
    let sock = socket::udp_bind(addr, 50)?;
    socket::grow_rcvbuf(&sock, 32 << 20);
    let batch = batch.clamp(1, socket::MAX_BATCH);
    let mut bufs = vec![vec![0u8; 2048]; batch];
    let mut lens = vec![0u32; batch];
    let (mut packets, mut bytes) = (0u64, 0u64);
    let start = Instant::now();
    let (mut first, mut last) = (None, None);
    while !when.done(packets, start, last) {
        let n = socket::recvmmsg_into(&sock, &mut bufs, &mut lens)?;
        if n > 0 {
            let now = Instant::now();
            first.get_or_insert(now);
            last = Some(now);
            packets += n as u64;
            bytes += lens[..n].iter().map(|&l| l as u64).sum::<u64>();
        }
    }
    Ok(Throughput {
        packets,
        bytes,
        elapsed: span(start, first, last),
    })
}

/// Count frames arriving on `ifname` through an `AF_PACKET` `TPACKET_V3` ring until `when`.
pub fn af_packet_recv(netns: Option<&str>, ifname: &str, when: StopWhen<'_>) -> Result<Throughput> {
    when.validate()?;
    let _ns = enter(netns)?;
    let mut s = PacketV3Socket::open(if_nametoindex(ifname)?, 1 << 20, 64)?;
    let mut packets = 0u64;
    let start = Instant::now();
    let (mut first, mut last) = (None, None);
    while !when.done(packets, start, last) {
        let n = s.drain(20)?;
        if n > 0 {
            let now = Instant::now();
            first.get_or_insert(now);
            last = Some(now);
            packets += n;
        }
    }
    Ok(Throughput {
        packets,
        bytes: 0,
        elapsed: span(start, first, last),
    })
}

/// Time from the first to the last packet, or since `start` when fewer than two instants differ.
pub(crate) fn span(start: Instant, first: Option<Instant>, last: Option<Instant>) -> Duration {
    match (first, last) {
        (Some(f), Some(l)) if l > f => l - f,
        _ => start.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_send_and_recv_on_loopback() {
        let rx = std::thread::spawn(|| {
            udp_recv(
                None,
                SocketAddrV4::new(Ipv4Addr::LOCALHOST, 47011),
                64,
                StopWhen {
                    count: Some(5000),
                    duration: Some(Duration::from_secs(5)),
                    ..Default::default()
                },
            )
        });
        std::thread::sleep(Duration::from_millis(100));
        let tx = udp_send(
            None,
            Ipv4Addr::LOCALHOST,
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 47011),
            &[7u8; 18],
            5000,
            64,
        )
        .unwrap();
        assert_eq!(tx.packets, 5000);
        let r = rx.join().unwrap().unwrap();
        // loopback may drop under load, but most arrive and the count never exceeds what was sent
        assert!(r.packets > 1000 && r.packets <= 5000, "{r:?}");
        assert_eq!(r.bytes, r.packets * 18);
    }

    #[test]
    fn a_loop_without_an_end_is_refused() {
        let w = StopWhen {
            count: None,
            duration: None,
            ..Default::default()
        };
        assert!(udp_recv(None, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 8, w).is_err());
    }
}
