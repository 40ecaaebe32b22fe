//! The engine's state behind its lock: the AF_XDP port, the QPs, frames waiting to be sent,
//! and one round of progress (receive, timers, completions, send).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::transport::{Peer, QpEntry};
use super::work::GRH_LEN;
use super::EngineCounters;
use crate::rdma::roce::rc::{Bytes, Pkt};
use crate::rdma::roce::wire::{icrc, Frame, FrameSpec, IpHeader, WireError, ICRC_LEN};
use crate::sys::xdp::XdpDesc;
use crate::xsk::whole::{self, Buffer, Carry};
use crate::xsk::{XskPort, MAX_DESCS_PER_PACKET};

/// Frames received per round.
const RX_BURST: usize = 64;
/// Frames put on the TX ring per submission.
const TX_BURST: usize = 64;
/// Frames built ahead of the TX ring at most.
const TX_BUDGET: usize = 256;
/// The longest frame joined from several descriptors (RoCE frames are at most a 4096-byte
/// path MTU plus headers); longer ones are dropped as malformed.
const MAX_RX_FRAME: usize = 1 << 14;
/// A frame the link has not taken for this long is dropped (and counted): RC retransmits.
const TX_GIVE_UP: Duration = Duration::from_secs(1);

/// What a round did.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Round {
    /// Something moved: run again at once.
    pub busy: bool,
    /// Retransmission timers are running: sleep briefly.
    pub timers: bool,
}

/// A frame waiting for the TX ring.
enum Queued {
    /// Built in place in a UMEM frame the engine holds.
    Frame(XdpDesc),
    /// Built in memory, sent by copy: a frame larger than one UMEM frame (multi-buffer), or
    /// one built when no UMEM frame was free.
    Bytes(Vec<u8>),
}

pub(super) struct Core {
    port: XskPort,
    mac: [u8; 6],
    ip: IpAddr,
    qps: HashMap<u32, QpEntry>,
    next_qpn: u32,
    /// Frames built and not yet on the TX ring, oldest first, with when they were built.
    pending: VecDeque<(Instant, Queued)>,
    /// A burst's descriptors, with room for a frame's most behind them.
    descs: Vec<XdpDesc>,
    /// The first descriptors of a frame that spans several (multi-buffer) whose last has not
    /// come yet.
    rx_carry: Carry<XdpDesc>,
    /// A multi-buffer frame's bytes, joined.
    rx_joined: Vec<u8>,
    /// A burst's packets for their QPs, and the addresses of its frames (kept: no allocation
    /// per burst).
    rx_got: Vec<(Pkt, [u8; GRH_LEN])>,
    rx_addrs: Vec<u64>,
    /// The QP numbers a round builds for, and the descriptors a flush offers.
    qpn_list: Vec<u32>,
    tx_descs: Vec<XdpDesc>,
    /// Buffers of frames built aside ([`Queued::Bytes`]) that went out, for the next ones.
    spare: Vec<Vec<u8>>,
    epoch: Instant,
    ip_id: u16,
    c: EngineCounters,
    /// Transport counters of destroyed QPs.
    retired: EngineCounters,
}

impl Core {
    pub fn new(port: XskPort, mac: [u8; 6], ip: IpAddr) -> Self {
        Core {
            port,
            mac,
            ip,
            qps: HashMap::new(),
            next_qpn: 0x11,
            pending: VecDeque::new(),
            descs: vec![XdpDesc::default(); RX_BURST + MAX_DESCS_PER_PACKET],
            rx_carry: Carry::with_capacity(MAX_DESCS_PER_PACKET),
            rx_joined: Vec::new(),
            rx_got: Vec::with_capacity(RX_BURST),
            rx_addrs: Vec::with_capacity(RX_BURST + MAX_DESCS_PER_PACKET),
            qpn_list: Vec::new(),
            tx_descs: Vec::with_capacity(TX_BURST),
            spare: Vec::new(),
            epoch: Instant::now(),
            ip_id: 0,
            c: EngineCounters::default(),
            retired: EngineCounters::default(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// A fresh QP number (24 bits, never 0 or 1, not in use).
    pub fn alloc_qpn(&mut self) -> u32 {
        loop {
            let q = self.next_qpn;
            self.next_qpn = if q >= 0xff_fff0 { 0x11 } else { q + 1 };
            if !self.qps.contains_key(&q) {
                return q;
            }
        }
    }

    pub fn insert(&mut self, qp: QpEntry) {
        self.qps.insert(qp.qpn, qp);
    }

    pub fn qp(&mut self, qpn: u32) -> Option<&mut QpEntry> {
        self.qps.get_mut(&qpn)
    }

    /// Destroys a QP (its counters stay in the engine's).
    pub fn remove(&mut self, qpn: u32) {
        if let Some(q) = self.qps.remove(&qpn) {
            q.add_counters(&mut self.retired);
        }
    }

    pub fn counters(&self) -> EngineCounters {
        let mut c = self.c;
        let r = &self.retired;
        let add = |c: &mut EngineCounters, q: &EngineCounters| {
            c.transport_dropped += q.transport_dropped;
            c.retransmits += q.retransmits;
            c.go_backs += q.go_backs;
            c.rnr_naks_received += q.rnr_naks_received;
            c.rnr_naks_sent += q.rnr_naks_sent;
            c.naks_sent += q.naks_sent;
            c.duplicates += q.duplicates;
            c.out_of_sequence += q.out_of_sequence;
            c.uc_aborted += q.uc_aborted;
            c.cq_overflows += q.cq_overflows;
        };
        add(&mut c, r);
        if let Some(Ok(k)) = self.port.socket(0).map(|s| s.kernel_stats()) {
            c.rx_ring_full = k.rx_ring_full;
            c.kernel_rx_dropped = k.rx_dropped + k.rx_invalid_descs;
        }
        for q in self.qps.values() {
            let mut t = EngineCounters::default();
            q.add_counters(&mut t);
            add(&mut c, &t);
        }
        c
    }

    /// One round of progress.
    pub fn progress(&mut self) -> Round {
        let now = self.now();
        let rx = self.receive(now);
        let mut timers = false;
        for q in self.qps.values_mut() {
            timers |= q.tick(now);
            q.complete();
        }
        let built = self.build(now);
        let sent = self.flush();
        Round {
            busy: rx > 0 || built > 0 || sent > 0,
            timers: timers || !self.pending.is_empty(),
        }
    }

    /// Receives a burst and hands each packet to its QP; returns how many descriptors came
    /// (whole frames' and those of a frame whose rest has not come yet). On a multi-buffer
    /// socket a frame larger than a UMEM frame comes as several descriptors, joined here
    /// (across bursts too) before it is parsed.
    fn receive(&mut self, now: u64) -> usize {
        let Some(sock) = self.port.socket_mut(0) else {
            return 0;
        };
        let carried = self.rx_carry.len();
        let Some(n) = self
            .rx_carry
            .read(&mut self.descs, RX_BURST, RX_BURST, |out| sock.recv(out))
        else {
            return 0;
        };
        let came = n + self.rx_carry.len() - carried;
        let mut got = std::mem::take(&mut self.rx_got);
        got.clear();
        for r in whole::packets(&self.descs[..n]) {
            let descs = &self.descs[r];
            let bytes = match descs {
                [d] => sock.app_bytes(d.addr, d.len),
                // No end among a frame's most descriptors: not a frame the kernel makes.
                _ if descs.last().is_some_and(Buffer::continues) => None,
                _ => {
                    self.rx_joined.clear();
                    let joined = &mut self.rx_joined;
                    descs
                        .iter()
                        .try_for_each(|d| {
                            let b = sock.app_bytes(d.addr, d.len)?;
                            (joined.len() + b.len() <= MAX_RX_FRAME)
                                .then(|| joined.extend_from_slice(b))
                        })
                        .map(|()| &joined[..])
                }
            };
            match bytes {
                Some(b) => got.extend(accept(&mut self.c, self.ip, b)),
                // A bad descriptor, or a frame longer than any RoCE frame: dropped whole.
                None => self.c.malformed += 1,
            }
        }
        self.rx_addrs.clear();
        self.rx_addrs.extend(self.descs[..n].iter().map(|d| d.addr));
        sock.release(&self.rx_addrs);
        for (pkt, grh) in got.drain(..) {
            match self.qps.get_mut(&pkt.bth.dest_qp) {
                None => self.c.wrong_qpn += 1,
                Some(q) => {
                    if !q.on_packet(now, &pkt, &grh) {
                        self.c.bad_state += 1;
                    }
                }
            }
        }
        self.rx_got = got;
        came
    }

    /// Frames the QPs' next packets while the budget allows; returns how many.
    fn build(&mut self, now: u64) -> usize {
        let mut built = 0;
        let mut qpns = std::mem::take(&mut self.qpn_list);
        qpns.clear();
        qpns.extend(self.qps.keys().copied());
        for &qpn in &qpns {
            while self.pending.len() < TX_BUDGET {
                let Some(q) = self.qps.get_mut(&qpn) else {
                    break;
                };
                let udp_src = q.udp_src;
                let Some((pkt, peer)) = q.poll_tx(now) else {
                    break;
                };
                self.frame(&pkt, peer, udp_src);
                built += 1;
            }
        }
        self.qpn_list = qpns;
        built
    }

    fn frame(&mut self, pkt: &Pkt, peer: Peer, udp_src: u16) {
        self.ip_id = self.ip_id.wrapping_add(1);
        let ip = match (self.ip, peer.ip) {
            (IpAddr::V4(s), IpAddr::V4(d)) => IpHeader::V4 {
                src: s.octets(),
                dst: d.octets(),
                tos: 0,
                ttl: 64,
                id: self.ip_id,
            },
            (IpAddr::V6(s), IpAddr::V6(d)) => IpHeader::V6 {
                src: s.octets(),
                dst: d.octets(),
                traffic_class: 0,
                flow_label: 0,
                hop_limit: 64,
            },
            // Peers are checked to be of the engine's family when connected.
            _ => {
                self.c.malformed += 1;
                return;
            }
        };
        let spec = FrameSpec {
            eth_dst: peer.mac,
            eth_src: self.mac,
            vlan_tci: None,
            ip,
            udp_src,
            bth: pkt.bth,
            ext: pkt.ext,
        };
        let len = spec.frame_len(pkt.payload.len());
        if let Some(sock) = self.port.socket_mut(0) {
            if len <= sock.umem().tx_capacity() as usize {
                let mut bad = false;
                let built = sock.build_frame(|buf| match spec.build(&pkt.payload, buf) {
                    Ok(n) => Some(n),
                    Err(_) => {
                        bad = true;
                        None
                    }
                });
                match built {
                    Some(d) => {
                        self.pending.push_back((Instant::now(), Queued::Frame(d)));
                        return;
                    }
                    None if bad => {
                        self.c.malformed += 1;
                        return;
                    }
                    None => {} // no free frame now: built aside, sent by copy later
                }
            }
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.resize(len, 0);
        match spec.build(&pkt.payload, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                self.pending.push_back((Instant::now(), Queued::Bytes(buf)));
            }
            Err(_) => self.c.malformed += 1,
        }
    }

    /// Puts waiting frames on the TX ring, in order; returns how many went.
    fn flush(&mut self) -> usize {
        let Some(sock) = self.port.socket_mut(0) else {
            return 0;
        };
        sock.complete();
        let mut sent = 0;
        let mut descs = std::mem::take(&mut self.tx_descs);
        loop {
            // Frames offered, frames taken off the queue, and of those, put on the ring.
            let (want, taken, went) =
                match self.pending.front() {
                    None => break,
                    Some((_, Queued::Frame(_))) => {
                        descs.clear();
                        descs.extend(self.pending.iter().take(TX_BURST).map_while(
                            |(_, q)| match q {
                                Queued::Frame(d) => Some(*d),
                                Queued::Bytes(_) => None,
                            },
                        ));
                        let q = sock.send(&descs);
                        (descs.len(), q, q)
                    }
                    Some((_, Queued::Bytes(_))) => {
                        let mut batch: [&[u8]; TX_BURST] = [&[]; TX_BURST];
                        let mut k = 0;
                        for (_, q) in self.pending.iter().take(TX_BURST) {
                            let Queued::Bytes(b) = q else { break };
                            batch[k] = b;
                            k += 1;
                        }
                        let batch = &batch[..k];
                        let r = sock.send_copies(batch);
                        // Frames are built to fit, so none is oversize; any that were are dropped
                        // and counted with the frames sent before them.
                        self.c.dropped_no_frame += r.oversize as u64;
                        let taken = (r.queued + r.oversize).min(batch.len());
                        (batch.len(), taken, r.queued)
                    }
                };
            for (_, q) in self.pending.drain(..taken) {
                self.c.tx_bytes += match q {
                    Queued::Frame(d) => u64::from(d.len),
                    Queued::Bytes(b) => {
                        let n = b.len() as u64;
                        if self.spare.len() < TX_BUDGET {
                            self.spare.push(b);
                        }
                        n
                    }
                };
            }
            self.c.tx_packets += went as u64;
            sent += went;
            if taken < want {
                break;
            }
        }
        self.tx_descs = descs;
        while self
            .pending
            .front()
            .is_some_and(|(t, _)| t.elapsed() > TX_GIVE_UP)
        {
            if let Some((_, Queued::Frame(d))) = self.pending.pop_front() {
                sock.release(&[d.addr]);
            }
            self.c.dropped_no_frame += 1;
        }
        sent
    }
}

/// A received frame checked and copied out for its QP (with the GRH a UD receive gets), or
/// None, counted: bad checksums, malformed, or not for the engine's address.
fn accept(c: &mut EngineCounters, ip: IpAddr, bytes: &[u8]) -> Option<(Pkt, [u8; GRH_LEN])> {
    c.rx_packets += 1;
    c.rx_bytes += bytes.len() as u64;
    let parsed = match Frame::parse(bytes) {
        Err(WireError::BadUdpChecksum) => icrc_only(bytes).inspect(|_| c.udp_checksum_ignored += 1),
        r => r,
    };
    let f = match parsed {
        Ok(f) => f,
        Err(WireError::BadIcrc { .. }) => {
            c.bad_icrc += 1;
            return None;
        }
        Err(_) => {
            c.malformed += 1;
            return None;
        }
    };
    let ours = match (f.ip, ip) {
        (IpHeader::V4 { dst, .. }, IpAddr::V4(a)) => dst == a.octets(),
        (IpHeader::V6 { dst, .. }, IpAddr::V6(a)) => dst == a.octets(),
        _ => false,
    };
    if !ours {
        c.not_for_us += 1;
        return None;
    }
    // The GRH verbs puts in front of a UD receive: the IPv6 header, or the IPv4 header in
    // its last 20 bytes.
    let mut grh = [0u8; GRH_LEN];
    let l3 = 14 + if f.vlan_tci.is_some() { 4 } else { 0 };
    match f.ip {
        IpHeader::V4 { .. } => grh[20..].copy_from_slice(&bytes[l3..l3 + 20]),
        IpHeader::V6 { .. } => grh.copy_from_slice(&bytes[l3..l3 + 40]),
    }
    let p = f.packet;
    Some((
        Pkt {
            bth: p.bth,
            ext: p.ext,
            payload: Bytes::copy_from_slice(p.payload),
        },
        grh,
    ))
}

/// A frame whose UDP checksum did not verify, checked by its ICRC alone. A sender on the
/// same host (a veth peer, a tap) hands frames over with the UDP checksum offloaded and
/// unfinished (`CHECKSUM_PARTIAL`), which the kernel's own receive path trusts and XDP sees
/// as it is; the ICRC covers every byte the checksum does but the masked ones, so a frame
/// whose ICRC verifies is intact.
pub(super) fn icrc_only(bytes: &[u8]) -> Result<Frame<'_>, WireError> {
    let f = Frame::parse_headers(bytes)?;
    let l3 = 14 + if f.vlan_tci.is_some() { 4 } else { 0 };
    let (total, hdr) = match f.ip {
        IpHeader::V4 { .. } => (
            usize::from(u16::from_be_bytes([bytes[l3 + 2], bytes[l3 + 3]])),
            usize::from(bytes[l3] & 0x0f) * 4,
        ),
        IpHeader::V6 { .. } => (
            40 + usize::from(u16::from_be_bytes([bytes[l3 + 4], bytes[l3 + 5]])),
            40,
        ),
    };
    // parse_headers checked these lengths against the frame.
    let body = &bytes[l3..l3 + total - ICRC_LEN];
    let computed = icrc::compute(body, hdr)?;
    if computed != f.packet.icrc {
        return Err(WireError::BadIcrc {
            computed,
            found: f.packet.icrc,
        });
    }
    Ok(f)
}
