//! Engine tests with several workers and multi-buffer packets (root: veth pairs in
//! namespaces the tests create): batches never cut a packet, a packet's verdict applies to all
//! its buffers, FORWARDs wake a sleeping worker, the FORWARD counters add up.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::tests::send;
use super::*;
use crate::sys::netns::NetnsGuard;
use crate::sys::testutil::{is_root, VethOptions, VethPair};
use crate::sys::xdp::XDP_PKT_CONTD;
use crate::xsk::{BindMode, Queues, SharedPort, SocketConfig, XskPort};

fn contd(d: &crate::sys::xdp::XdpDesc) -> bool {
    d.options & XDP_PKT_CONTD != 0
}

/// A multi-buffer port (copy mode, 2048-byte frames) on `veth1` of a pair with MTU 9000.
fn jumbo_port() -> (VethPair, NetnsGuard, Arc<SharedPort>) {
    let pair = VethPair::with(VethOptions::default()).unwrap();
    for (ns, dev) in [(&pair.a, VethPair::IF_A), (&pair.b, "veth1")] {
        let ok = std::process::Command::new("ip")
            .args(["-n", ns, "link", "set", dev, "mtu", "9000"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "set mtu 9000 on {dev}");
    }
    let ns = NetnsGuard::enter(&pair.b).unwrap();
    let mut cfg = crate::xsk::tests::copy_config(4096, Some("udp dst port 9000"));
    cfg.socket = SocketConfig {
        mode: BindMode::Copy,
        multi_buffer: true,
        ..Default::default()
    };
    let port = XskPort::open("veth1", &Queues::All, &cfg).unwrap();
    (pair, ns, Arc::new(SharedPort::new(port)))
}

#[derive(Debug, Default)]
struct Probe {
    /// Batches that began or ended inside a packet.
    cut: u64,
    /// Reshapes of a batch's first frame that were accepted (each is one buffer of a
    /// multi-buffer packet: all must be refused).
    reshaped: u64,
    /// Packets seen, and buffers of the packets whose first buffer got TX.
    packets: u64,
    tx_buffers: u64,
    descs: u64,
}

/// TX for buffers at even positions of a batch, DROP for the others: after the worker makes
/// each packet's verdict whole, a packet goes out iff its first buffer got TX.
struct MbProbe(Arc<Mutex<Probe>>);

impl BatchHandler for MbProbe {
    fn handle(&mut self, ctx: &mut BatchCtx<'_>) -> Result<(), HandlerError> {
        let mut p = self.0.lock().unwrap();
        let descs = ctx.descs().to_vec();
        if contd(descs.last().unwrap()) {
            p.cut += 1;
        }
        let len0 = descs[0].len;
        if ctx.set_len(0, len0).is_ok() {
            p.reshaped += 1;
        }
        let mut first = true;
        let mut sent = false;
        for (i, d) in descs.iter().enumerate() {
            ctx.verdicts[i] = if i % 2 == 0 { TX } else { DROP };
            if first {
                sent = i % 2 == 0;
            }
            if sent {
                p.tx_buffers += 1;
            }
            first = !contd(d);
            p.packets += u64::from(first);
        }
        p.descs += descs.len() as u64;
        Ok(())
    }
}

#[test]
fn multi_buffer_packets_are_never_cut_between_batches_and_go_whole_or_not_at_all() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (pair, _ns, port) = jumbo_port();
    for batch in [2, 3, 64] {
        let p = Pipeline::new(
            Arc::clone(&port),
            PipelineConfig {
                batch,
                ..Default::default()
            },
        )
        .unwrap();
        let probe: Arc<Mutex<Probe>> = Arc::default();
        p.start(vec![Box::new(MbProbe(Arc::clone(&probe)))], None)
            .unwrap();
        // 7936 bytes of payload: five buffers of a 2048-byte frame each.
        let payload: Vec<u8> = (0..7936u32).map(|i| i as u8).collect();
        send(&pair, &payload, 20, || probe.lock().unwrap().packets, 20);
        p.join().unwrap();
        let s = p.stats()[0].snapshot();
        let pr = probe.lock().unwrap();
        assert_eq!(pr.packets, 20, "batch {batch}: {pr:?}");
        assert!(pr.descs >= 40, "multi-buffer packets: {pr:?}");
        assert_eq!(
            pr.cut, 0,
            "batch {batch}: no batch ends inside a packet: {pr:?}"
        );
        assert_eq!(
            pr.reshaped, 0,
            "batch {batch}: a batch's first buffer is seen as part of its packet: {pr:?}"
        );
        assert_eq!(s.rx, pr.descs);
        assert_eq!(
            s.tx, pr.tx_buffers,
            "batch {batch}: every buffer of a packet follows its first's verdict: {s:?} {pr:?}"
        );
        assert_eq!(s.tx + s.dropped, s.rx, "{s:?}");
        let g = port.lock();
        let acc = g.as_ref().unwrap().check_accounting().unwrap();
        assert_eq!((acc.app, acc.held), (0, 0), "{acc:?}");
    }
}

/// Forwards every frame to socket `to`, and stamps when it did.
struct ForwardTo {
    to: u16,
    stamps: Arc<Mutex<Vec<Instant>>>,
}

impl BatchHandler for ForwardTo {
    fn handle(&mut self, ctx: &mut BatchCtx<'_>) -> Result<(), HandlerError> {
        ctx.verdicts.fill(FORWARD);
        ctx.forward_to.fill(self.to);
        self.stamps.lock().unwrap().push(Instant::now());
        Ok(())
    }
}

fn two_workers(latency: Latency, idle_wait: Duration) -> (VethPair, NetnsGuard, Pipeline) {
    let opts = VethOptions {
        queues: 2,
        ..Default::default()
    };
    let (pair, ns, port) = super::tests::port(opts, SocketConfig::default());
    let cfg = PipelineConfig {
        latency,
        idle_wait,
        spin: Duration::from_micros(50),
        ..Default::default()
    };
    let p = Pipeline::new(port, cfg).unwrap();
    assert_eq!(p.groups(), &[vec![0], vec![1]]);
    (pair, ns, p)
}

#[test]
fn a_forward_to_a_sleeping_worker_wakes_it_at_once() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    for latency in [Latency::Adaptive, Latency::Sleep] {
        let (pair, _ns, p) = two_workers(latency, Duration::from_secs(1));
        let stamps: Vec<Arc<Mutex<Vec<Instant>>>> = (0..2).map(|_| Arc::default()).collect();
        let handlers: Vec<Box<dyn BatchHandler>> = (0..2)
            .map(|w| {
                Box::new(ForwardTo {
                    to: 1 - w as u16,
                    stamps: Arc::clone(&stamps[w]),
                }) as Box<dyn BatchHandler>
            })
            .collect();
        p.start(handlers, None).unwrap();
        let stats = |w: usize| p.stats()[w].snapshot();
        let sent_in = || stats(0).forwarded_in + stats(1).forwarded_in;
        for k in 1..=3u64 {
            // Long past the spin: both workers sleep, for up to 1 s.
            std::thread::sleep(Duration::from_millis(150));
            let t = Instant::now();
            send(&pair, b"wake", 1, sent_in, k);
            let took = t.elapsed();
            assert_eq!(sent_in(), k, "{latency}: the target sent the handoff");
            assert!(
                took < Duration::from_millis(300),
                "{latency}: FORWARD {k} went out {took:?} after it was sent: the target slept on"
            );
        }
        let wakeups = stats(0).forward_wakeups + stats(1).forward_wakeups;
        assert!(wakeups >= 3, "{latency}: {:?}", p.stats()[0].snapshot());
        p.join().unwrap();
    }
}

/// Even frames to the worker's own other socket, odd ones to a socket of the other worker.
struct Mixed2;

impl BatchHandler for Mixed2 {
    fn handle(&mut self, ctx: &mut BatchCtx<'_>) -> Result<(), HandlerError> {
        let own = ctx.sockets().to_vec();
        let other = own.iter().find(|&&s| s != ctx.socket).copied().unwrap();
        let remote = if own.contains(&0) { 2 } else { 0 };
        ctx.verdicts.fill(FORWARD);
        for (i, t) in ctx.forward_to.iter_mut().enumerate() {
            *t = if i % 2 == 0 { other } else { remote } as u16;
        }
        Ok(())
    }
}

#[test]
fn forward_counters_add_up_over_the_workers() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let opts = VethOptions {
        queues: 4,
        ..Default::default()
    };
    let (pair, _ns, port) = super::tests::port(opts, SocketConfig::default());
    for inbox in [4096, 2] {
        let cfg = PipelineConfig {
            inbox,
            batch: 8,
            workers: Workers::Groups(vec![vec![0, 1], vec![2, 3]]),
            ..Default::default()
        };
        let p = Pipeline::new(Arc::clone(&port), cfg).unwrap();
        p.start(vec![Box::new(Mixed2), Box::new(Mixed2)], None)
            .unwrap();
        let rx = || p.stats().iter().map(|s| s.snapshot().rx).sum::<u64>();
        send(&pair, b"count me", 300, rx, 300);
        p.join().unwrap();
        let s: Vec<WorkerStatsSnapshot> = p.stats().iter().map(|s| s.snapshot()).collect();
        let sum = |f: fn(&WorkerStatsSnapshot) -> u64| s.iter().map(f).sum::<u64>();
        assert_eq!(sum(|x| x.rx), 300, "{s:?}");
        assert!(
            sum(|x| x.forwarded) > sum(|x| x.forwarded_out),
            "local ones too: {s:?}"
        );
        assert_eq!(
            sum(|x| x.forwarded_out),
            sum(|x| x.forwarded_in) + sum(|x| x.forward_in_failed),
            "inbox {inbox}: handed over = sent by the target + failed there: {s:?}"
        );
        assert_eq!(
            sum(|x| x.forwarded) + sum(|x| x.forward_ring_full),
            300,
            "{s:?}"
        );
    }
}
