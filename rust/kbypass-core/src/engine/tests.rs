//! Tests of the engine: its pure parts (configuration checks, the error policy), and pipelines
//! with Rust handlers on a veth pair (root): the life cycle (start/stop/join, sockets back into
//! the port, kept frames, the packet limit, a handler stopping its own pipeline), frame holds,
//! failed sends counted where they were going. The Python end-to-end runs are in
//! tests/test_pipeline.py.

use super::*;

#[test]
fn verdict_values_are_the_four_constants() {
    assert_eq!([DROP, TX, FORWARD, KEEP], [0, 1, 2, 3]);
    assert!((0..=3).all(valid_verdict));
    assert!(!valid_verdict(4) && !valid_verdict(255));
}

#[test]
fn on_error_parses_and_refuses_unknown_policies_with_the_choices() {
    assert_eq!("drop".parse::<OnError>().unwrap(), OnError::Drop);
    assert_eq!("pass".parse::<OnError>().unwrap(), OnError::Pass);
    assert_eq!("stop".parse::<OnError>().unwrap(), OnError::Stop);
    let e = "ignore".parse::<OnError>().unwrap_err().to_string();
    assert!(e.contains("\"drop\", \"pass\" or \"stop\""), "{e}");
}

#[test]
fn the_error_policy_gives_a_failed_frame_its_verdict() {
    assert_eq!(OnError::Drop.verdict(TX), DROP);
    assert_eq!(OnError::Pass.verdict(TX), TX);
    assert_eq!(OnError::Stop.verdict(TX), DROP);
    assert!(OnError::Stop.stops() && !OnError::Drop.stops() && !OnError::Pass.stops());
}

#[test]
fn a_config_is_checked_once_with_the_fix_in_each_error() {
    assert!(PipelineConfig::default().validate().is_ok());
    let bad = |c: PipelineConfig| c.validate().unwrap_err().to_string();
    for batch in [0, 4097] {
        let e = bad(PipelineConfig {
            batch,
            ..Default::default()
        });
        assert!(e.contains("must be 1..=4096"), "{e}");
    }
    let e = bad(PipelineConfig {
        default_verdict: 4,
        ..Default::default()
    });
    assert!(e.contains("DROP, TX, FORWARD or KEEP"), "{e}");
    for idle_wait in [Duration::ZERO, Duration::from_secs(2)] {
        let e = bad(PipelineConfig {
            idle_wait,
            ..Default::default()
        });
        assert!(e.contains("idle_wait"), "{e}");
    }
    let e = bad(PipelineConfig {
        workers: Workers::Count(0),
        ..Default::default()
    });
    assert!(e.contains("at least one worker"), "{e}");
    let e = bad(PipelineConfig {
        workers: Workers::Groups(vec![vec![0], vec![]]),
        ..Default::default()
    });
    assert!(e.contains("group is empty"), "{e}");
}

#[test]
fn pps_is_measured_between_first_and_last_packet() {
    let s = WorkerStatsSnapshot {
        rx: 1_000_001,
        first_ns: 1_000,
        last_ns: 1_000_000_000 + 1_000,
        ..Default::default()
    };
    assert!((s.pps() - 1e6).abs() < 1.0, "{}", s.pps());
    assert_eq!(WorkerStatsSnapshot::default().pps(), 0.0);
}

#[test]
fn histogram_bounds_are_increasing() {
    assert!(BATCH_HISTOGRAM_BOUNDS.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        WorkerStats::default().snapshot().histogram.len(),
        BATCH_HISTOGRAM_BOUNDS.len() + 1
    );
}

// --- pipelines on a veth pair (root) ---------------------------------------------------------

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::sys::netns::NetnsGuard;
use crate::sys::testutil::{is_root, VethOptions, VethPair};
use crate::traffic::kernel::udp_send;
use crate::xsk::{BindMode, FrameHold, Queues, SharedPort, SocketConfig, XskPort};

/// What a test handler kept: holds with the bytes it saw.
type Seen = Arc<Mutex<Vec<(FrameHold, u64, u32, Vec<u8>)>>>;

/// Sets `verdict` on every frame (KEEP frames through `keep_verdicts`); holds frame 0 of the
/// first `views` batches as a view that outlives the batch would (`hold_view`).
struct Holder {
    verdict: u8,
    views: usize,
    seen: Seen,
}

impl BatchHandler for Holder {
    fn handle(&mut self, ctx: &mut BatchCtx<'_>) -> Result<(), HandlerError> {
        ctx.verdicts.fill(self.verdict);
        if self.verdict == KEEP && self.views == usize::MAX {
            ctx.keep_verdicts();
            return Ok(());
        }
        let mut seen = self.seen.lock().unwrap();
        if seen.len() < self.views {
            let d = ctx.descs()[0];
            assert_eq!(ctx.frame(0).unwrap().len(), d.len as usize);
            let h = ctx.hold_view(0).expect("a batch frame can be held");
            assert!(ctx.hold_view(0).is_some(), "a second view holds it again");
            assert!(ctx.frame_mut(0).is_none(), "a held frame is not edited");
            let b = h.bytes(d.addr, d.len).unwrap().to_vec();
            seen.push((h, d.addr, d.len, b));
        }
        Ok(())
    }
}

/// A port on `veth1` in namespace b of a fresh pair (the guard keeps this thread there).
pub(super) fn port(
    opts: VethOptions,
    socket: SocketConfig,
) -> (VethPair, NetnsGuard, Arc<SharedPort>) {
    // Each socket keeps up to half the UMEM on its receive side and its cache as much again:
    // a port of several sockets needs frames for each (as `XdpPort` gives it by default).
    let frames = if opts.queues > 1 {
        4096 * opts.queues
    } else {
        256
    };
    let pair = VethPair::with(opts).unwrap();
    let ns = NetnsGuard::enter(&pair.b).unwrap();
    let mut cfg = crate::xsk::tests::copy_config(frames, Some("udp dst port 9000"));
    cfg.socket = SocketConfig {
        mode: BindMode::Copy,
        ..socket
    };
    let port = XskPort::open("veth1", &Queues::All, &cfg).unwrap();
    (pair, ns, Arc::new(SharedPort::new(port)))
}

/// A port over both queues of a two-queue veth pair.
fn two_queue_port(socket: SocketConfig) -> (VethPair, NetnsGuard, Arc<SharedPort>) {
    let opts = VethOptions {
        queues: 2,
        ..Default::default()
    };
    port(opts, socket)
}

/// Send `n` UDP packets with `payload` from a to b:9000, and wait until `rx` counts `want`.
pub(super) fn send(pair: &VethPair, payload: &[u8], n: u64, rx: impl Fn() -> u64, want: u64) {
    let (a, src, dst) = (pair.a.clone(), pair.ip(1), pair.ip(2));
    let p = payload.to_vec();
    std::thread::spawn(move || {
        udp_send(Some(&a), src, SocketAddrV4::new(dst, 9000), &p, n, 8).unwrap()
    })
    .join()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while rx() < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn run_holder(
    verdict: u8,
    views: usize,
    traffic: &[(&[u8], u64)],
) -> (Seen, WorkerStatsSnapshot, Arc<SharedPort>) {
    let (pair, _ns, port) = port(VethOptions::default(), SocketConfig::default());
    let p = Pipeline::new(Arc::clone(&port), PipelineConfig::default()).unwrap();
    let seen: Seen = Arc::default();
    let h = Holder {
        verdict,
        views,
        seen: Arc::clone(&seen),
    };
    p.start(vec![Box::new(h)], None).unwrap();
    let mut want = 0;
    for &(payload, n) in traffic {
        want += n;
        send(&pair, payload, n, || p.stats()[0].snapshot().rx, want);
    }
    p.join().unwrap();
    let snap = p.stats()[0].snapshot();
    (seen, snap, port)
}

#[test]
fn frames_a_handler_holds_are_never_recycled_under_it() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    // One packet at a time first, so each is a batch of its own (frame 0 of 5 batches held).
    let mut traffic: Vec<(&[u8], u64)> = vec![(b"first", 1); 5];
    traffic.extend([(&[0x5A; 400][..], 50); 12]); // 50 at a time: the fill ring holds 128
    let (seen, s, port) = run_holder(DROP, 5, &traffic);
    let g = port.lock();
    let sock = g.as_ref().unwrap().socket(0).unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 5);
    for (h, addr, len, b) in seen.iter() {
        assert!(b.ends_with(b"first"));
        assert_eq!(
            h.bytes(*addr, *len).unwrap(),
            &b[..],
            "a held frame never changes"
        );
    }
    assert_eq!(s.rx, 605);
    assert_eq!((s.escaped, s.copied, s.dropped), (5, 0, 600));
    let acc = sock.check_accounting().unwrap();
    assert_eq!((acc.app, acc.held), (0, 5), "{acc:?}");
    assert_eq!(sock.counters().invalid_descs, 0);
}

#[test]
fn tx_of_a_held_frame_sends_a_copy_and_keep_without_a_hold_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut traffic: Vec<(&[u8], u64)> = vec![(b"send-me", 1); 3];
    traffic.push((b"send-me", 17));
    let (seen, s, port) = run_holder(TX, 3, &traffic);
    {
        let g = port.lock();
        let sock = g.as_ref().unwrap().socket(0).unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        for (h, addr, len, b) in seen.iter() {
            assert_eq!(h.bytes(*addr, *len).unwrap(), &b[..]);
        }
        assert_eq!(
            (s.rx, s.tx, s.escaped, s.copied, s.tx_failed),
            (20, 20, 3, 3, 0)
        );
        assert_eq!(sock.counters().tx_packets, 20);
        let acc = sock.account();
        assert_eq!(
            (acc.app, acc.held),
            (0, 3),
            "the originals stay held: {acc:?}"
        );
    }
    seen.lock().unwrap().clear();
    assert_eq!(
        port.lock()
            .as_ref()
            .unwrap()
            .check_accounting()
            .unwrap()
            .held,
        0
    );

    // KEEP with no hold taken: nobody could ever give the frame back, so it is refused.
    let (seen, s, port) = run_holder(KEEP, 0, &[(b"keep-me", 10)]);
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!((s.kept, s.bad_verdicts, s.dropped), (0, 10, 10));
    let acc = port.lock().as_ref().unwrap().check_accounting().unwrap();
    assert_eq!((acc.app, acc.held), (0, 0), "{acc:?}");
}

/// A handler that counts its batches and, on the batch numbered `stop_at`, checks what a
/// handler can and cannot do to its own pipeline, then stops it.
struct Stopper {
    me: Arc<OnceLock<Weak<Pipeline>>>,
    batches: Arc<AtomicUsize>,
    stop_at: usize,
    join_refused: Arc<Mutex<Option<String>>>,
}

impl BatchHandler for Stopper {
    fn handle(&mut self, ctx: &mut BatchCtx<'_>) -> Result<(), HandlerError> {
        let n = self.batches.fetch_add(1, Relaxed) + 1;
        if n == self.stop_at {
            let p = self.me.get().unwrap().upgrade().unwrap();
            assert!(p.on_worker());
            *self.join_refused.lock().unwrap() = p.join().err().map(|e| e.to_string());
            p.stop();
        }
        ctx.verdicts.fill(DROP);
        Ok(())
    }
}

#[test]
fn a_pipeline_starts_stops_joins_and_gives_every_socket_back() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (pair, _ns, port) = two_queue_port(SocketConfig::default());
    let cfg = |workers| PipelineConfig {
        workers,
        ..Default::default()
    };
    // Checked against the port before anything starts.
    let err = |c| Pipeline::new(Arc::clone(&port), c).unwrap_err().to_string();
    assert!(err(cfg(Workers::Count(3))).contains("give 1..2"));
    assert!(err(cfg(Workers::Groups(vec![vec![0], vec![0]]))).contains("each in one group"));
    assert!(err(cfg(Workers::Groups(vec![vec![2]]))).contains("must be 0..2"));
    // A socket left in the port beside running workers could release a frame of theirs.
    let e = err(cfg(Workers::Groups(vec![vec![1]])));
    assert!(e.contains("socket 0 is in no group"), "{e}");
    let e = err(PipelineConfig {
        cpus: Cpus::List(vec![None]),
        ..Default::default()
    });
    assert!(e.contains("cpus has 1 entries for 2 workers"), "{e}");
    let dealt = Pipeline::new(Arc::clone(&port), cfg(Workers::Count(1))).unwrap();
    assert_eq!(dealt.groups(), &[vec![0, 1]]);
    assert_eq!(dealt.queues(), &[0, 1]);
    drop(dealt);

    let me: Arc<OnceLock<Weak<Pipeline>>> = Arc::default();
    let batches = Arc::new(AtomicUsize::new(0));
    let join_refused = Arc::new(Mutex::new(None));
    let p = Arc::new(Pipeline::new(Arc::clone(&port), cfg(Workers::Count(1))).unwrap());
    me.set(Arc::downgrade(&p)).unwrap();
    let handler = || -> Vec<Box<dyn BatchHandler>> {
        vec![Box::new(Stopper {
            me: Arc::clone(&me),
            batches: Arc::clone(&batches),
            stop_at: 3,
            join_refused: Arc::clone(&join_refused),
        })]
    };
    assert!(p
        .start(vec![], None)
        .unwrap_err()
        .to_string()
        .contains("0 handlers for 1 workers"));
    assert!(p.start(handler(), Some(0)).is_err());
    assert!(!p.running() && p.finished());
    p.start(handler(), None).unwrap();
    assert!(p.running() && !p.on_worker());
    assert!(p
        .start(handler(), None)
        .unwrap_err()
        .to_string()
        .contains("already running"));
    assert!(
        port.lock().as_ref().unwrap().socket(0).is_none(),
        "the worker has the sockets"
    );
    let e = p.check_accounting().unwrap_err().to_string();
    assert!(e.contains("no socket of the port is available"), "{e}");
    // A second pipeline on the same port finds its sockets in use and takes none.
    let other = Pipeline::new(Arc::clone(&port), cfg(Workers::PerSocket)).unwrap();
    let none = || -> Vec<Box<dyn BatchHandler>> {
        (0..2)
            .map(|_| {
                Box::new(Holder {
                    verdict: DROP,
                    views: 0,
                    seen: Arc::default(),
                }) as Box<dyn BatchHandler>
            })
            .collect()
    };
    let e = other.start(none(), None).unwrap_err().to_string();
    assert!(e.contains("is in use"), "{e}");

    // Traffic in batches of one: the third batch's handler stops the pipeline.
    for _ in 0..5 {
        send(&pair, b"x", 1, || 0, 0);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        p.wait_until(Instant::now() + Duration::from_secs(5)),
        "the handler's stop ends it: {} batches, {:?}",
        batches.load(Relaxed),
        p.stats()[0].snapshot()
    );
    assert_eq!(batches.load(Relaxed), 3);
    let refused = join_refused
        .lock()
        .unwrap()
        .clone()
        .expect("join on a worker is refused");
    assert!(
        refused.contains("cannot wait for its own worker"),
        "{refused}"
    );
    p.join().unwrap();
    p.join().unwrap(); // idempotent
    assert!(p.elapsed() > Duration::ZERO);
    {
        let g = port.lock();
        let port = g.as_ref().unwrap();
        assert!(
            port.socket(0).is_some() && port.socket(1).is_some(),
            "every socket is back"
        );
    }
    let acc = p.check_accounting().unwrap();
    assert!(acc.balanced() && acc.app == 0, "{acc:?}");

    // Once they are back another pipeline can take them; the packet limit ends it by itself.
    other.start(none(), Some(10)).unwrap();
    send(
        &pair,
        b"y",
        30,
        || other.stats().iter().map(|s| s.snapshot().rx).sum(),
        10,
    );
    assert!(
        other.wait_until(Instant::now() + Duration::from_secs(5)),
        "{:?}",
        other
            .stats()
            .iter()
            .map(|s| s.snapshot())
            .collect::<Vec<_>>()
    );
    let rx: u64 = other.stats().iter().map(|s| s.snapshot().rx).sum();
    assert!((10..=10 + 64).contains(&rx), "{rx}");
    drop(other); // dropping joins: the sockets are back
    assert!(port.lock().as_ref().unwrap().check_accounting().is_ok());
}

#[test]
fn kept_frames_wait_in_the_queue_until_released() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (pair, _ns, port) = port(VethOptions::default(), SocketConfig::default());
    let p = Pipeline::new(Arc::clone(&port), PipelineConfig::default()).unwrap();
    let keep_all = Holder {
        verdict: KEEP,
        views: usize::MAX,
        seen: Arc::default(),
    };
    p.start(vec![Box::new(keep_all)], None).unwrap();
    send(&pair, b"keep-me", 12, || p.stats()[0].snapshot().rx, 12);
    p.join().unwrap();
    let s = p.stats()[0].snapshot();
    assert_eq!((s.rx, s.kept, s.bad_verdicts, s.released), (12, 12, 0, 0));
    assert_eq!(p.held(), 12);
    let kept = p.kept();
    assert!(p.kept().is_empty(), "drained");
    assert_eq!(kept.iter().map(|k| k.frames().len()).sum::<usize>(), 12);
    for k in &kept {
        for (d, h) in k.frames().descs().iter().zip(k.frames().holds().unwrap()) {
            assert!(h.bytes(d.addr, d.len).unwrap().ends_with(b"keep-me"));
        }
    }
    // The port's accounting sees held frames, none lost.
    let acc = p.check_accounting().unwrap();
    assert_eq!((acc.held, acc.app), (12, 0), "{acc:?}");
    let first = kept[0].frames().len();
    assert_eq!(kept[0].release(), first);
    assert_eq!(kept[0].release(), 0, "idempotent");
    assert_eq!(p.stats()[0].snapshot().released, first as u64);
    drop(kept); // the rest go back when dropped, counted as released
    assert_eq!(p.stats()[0].snapshot().released, 12);
    assert_eq!(p.held(), 0);
}

/// TX for the first half of each batch, FORWARD to the other socket for the rest; sleeps so
/// batches grow past the tiny TX rings.
struct Mixed {
    tx_verdicts: Arc<AtomicUsize>,
    fwd_verdicts: Arc<AtomicUsize>,
}

impl BatchHandler for Mixed {
    fn handle(&mut self, ctx: &mut BatchCtx<'_>) -> Result<(), HandlerError> {
        let n = ctx.len();
        let other = 1 - ctx.socket as u16;
        for i in 0..n {
            if i < n / 2 {
                ctx.verdicts[i] = TX;
            } else {
                ctx.verdicts[i] = FORWARD;
                ctx.forward_to[i] = other;
            }
        }
        self.tx_verdicts.fetch_add(n / 2, Relaxed);
        self.fwd_verdicts.fetch_add(n - n / 2, Relaxed);
        std::thread::sleep(Duration::from_millis(10));
        Ok(())
    }
}

#[test]
fn a_failed_send_is_counted_where_it_was_going() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tiny = SocketConfig {
        tx_size: 8,
        comp_size: 8,
        ..Default::default()
    };
    let (pair, _ns, port) = two_queue_port(tiny);
    let cfg = PipelineConfig {
        workers: Workers::Groups(vec![vec![0, 1]]),
        ..Default::default()
    };
    let p = Pipeline::new(Arc::clone(&port), cfg).unwrap();
    let (tx_v, fwd_v) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let h = Mixed {
        tx_verdicts: Arc::clone(&tx_v),
        fwd_verdicts: Arc::clone(&fwd_v),
    };
    p.start(vec![Box::new(h)], None).unwrap();
    // One flow: every frame arrives on the same queue (the sender's hash picks one).
    send(&pair, b"mixed", 120, || p.stats()[0].snapshot().rx, 120);
    p.join().unwrap();
    let s = p.stats()[0].snapshot();
    let g = port.lock();
    let port = g.as_ref().unwrap();
    let sock = |i: usize| port.socket(i).unwrap().counters();
    let j = if sock(0).rx_packets > 0 { 0 } else { 1 };
    assert_eq!(sock(1 - j).rx_packets, 0, "one flow, one queue");
    assert_eq!(s.rx, 120);
    assert!(s.tx_failed > 0, "the 8-entry TX rings overflowed: {s:?}");
    // TX went out of socket j, FORWARD out of the other: each counted where it went.
    assert_eq!(s.tx, sock(j).tx_packets, "{s:?}");
    assert_eq!(s.forwarded, sock(1 - j).tx_packets, "{s:?}");
    let (tv, fv) = (tx_v.load(Relaxed) as u64, fwd_v.load(Relaxed) as u64);
    assert_eq!(s.tx + s.forwarded + s.tx_failed, tv + fv);
    assert!(s.tx <= tv && s.forwarded <= fv);
    assert_eq!(s.dropped, s.tx_failed);
}

/// Lends each batch's frames to another thread, as the binding's batch objects are used: edits
/// and reads by mask and index while the lease is open, an error after.
struct Lender {
    frames: Arc<BatchFrames>,
    report: Arc<Mutex<Vec<String>>>,
}

impl BatchHandler for Lender {
    fn handle(&mut self, ctx: &mut BatchCtx<'_>) -> Result<(), HandlerError> {
        let mut lent = self.frames.lend(ctx);
        let (seq, n) = (lent.seq(), lent.len());
        lent.verdicts().fill(DROP);
        let frames = Arc::clone(&self.frames);
        let mut out = std::thread::scope(|s| {
            s.spawn(|| {
                let mut r = Vec::new();
                let before = frames
                    .read_one(seq, 0, |f| f[..6].to_vec())
                    .unwrap()
                    .unwrap();
                let mask: Vec<bool> = (0..n).map(|i| i == 0).collect();
                let swapped =
                    frames.edit(seq, Some(&mask), |f, _| crate::packet::edit::swap_macs(f));
                r.push(format!("swapped {}", swapped.unwrap()));
                let after = frames
                    .read_one(seq, 0, |f| f[6..12].to_vec())
                    .unwrap()
                    .unwrap();
                r.push(format!("moved {}", before == after));
                let bad = frames
                    .edit(seq, Some(&[true; 1000]), |_, _| true)
                    .unwrap_err();
                r.push(format!("bad mask {bad}"));
                r.push(format!(
                    "one {}",
                    frames.edit_one(seq, n - 1, |_, _| true).unwrap()
                ));
                r.push(format!("desc {}", frames.desc(seq, 0).unwrap().len));
                r
            })
            .join()
            .unwrap()
        });
        let ctx = lent.end();
        assert_eq!(ctx.len(), n);
        let ended = self.frames.read(seq, None, |_| true).unwrap_err();
        out.push(format!("ended {ended}"));
        *self.report.lock().unwrap() = out;
        Ok(())
    }
}

#[test]
fn a_lease_lends_the_batch_frames_by_mask_and_index_until_it_ends() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (pair, _ns, port) = port(VethOptions::default(), SocketConfig::default());
    let umem = Arc::clone(port.lock().as_ref().unwrap().umem());
    let p = Pipeline::new(Arc::clone(&port), PipelineConfig::default()).unwrap();
    let report = Arc::new(Mutex::new(Vec::new()));
    let h = Lender {
        frames: Arc::new(BatchFrames::new(&umem, 64).unwrap()),
        report: Arc::clone(&report),
    };
    p.start(vec![Box::new(h)], None).unwrap();
    send(&pair, b"lend-me", 1, || p.stats()[0].snapshot().rx, 1);
    p.join().unwrap();
    let r = report.lock().unwrap().clone();
    assert_eq!(r[0], "swapped 1");
    assert_eq!(
        r[1], "moved true",
        "the destination MAC moved to the source"
    );
    assert!(
        r[2].contains("mask has 1000 entries for a batch of 1"),
        "{r:?}"
    );
    assert_eq!(r[3], "one true");
    assert_eq!(r[4], "desc 49", "{r:?}");
    assert!(r[5].contains("this batch ended"), "{r:?}");
}

/// A per-packet handler through the lease: fails on every packet (the error policy decides).
struct FailsEach {
    frames: Arc<BatchFrames>,
}

impl BatchHandler for FailsEach {
    fn handle(&mut self, ctx: &mut BatchCtx<'_>) -> Result<(), HandlerError> {
        let mut lent = self.frames.lend(ctx);
        let mut seen = 0;
        lent.for_each_packet(|i, meta| {
            assert_eq!((i, meta.dst_port), (seen, 9000));
            seen += 1;
            PacketVerdict::Failed
        });
        lent.end();
        Ok(())
    }
}

#[test]
fn a_failed_packet_gets_the_error_policy_per_packet() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    for (on_error, default) in [(OnError::Pass, TX), (OnError::Stop, TX)] {
        let (pair, _ns, port) = port(VethOptions::default(), SocketConfig::default());
        let umem = Arc::clone(port.lock().as_ref().unwrap().umem());
        let cfg = PipelineConfig {
            on_error,
            default_verdict: default,
            ..Default::default()
        };
        let p = Pipeline::new(Arc::clone(&port), cfg).unwrap();
        let h = FailsEach {
            frames: Arc::new(BatchFrames::new(&umem, 64).unwrap()),
        };
        p.start(vec![Box::new(h)], None).unwrap();
        send(&pair, b"fail-me", 1, || p.stats()[0].snapshot().rx, 1);
        let stopped = p.wait_until(Instant::now() + Duration::from_millis(300));
        p.join().unwrap();
        let s = p.stats()[0].snapshot();
        assert_eq!((s.rx, s.handler_errors), (1, 1), "{on_error:?}: {s:?}");
        match on_error {
            // "pass": the packet gets the default verdict (TX), the pipeline goes on.
            OnError::Pass => assert!(!stopped && s.tx == 1 && s.dropped == 0, "{s:?}"),
            // "stop": the packet is dropped and the pipeline ends by itself.
            _ => assert!(stopped && s.tx == 0 && s.dropped == 1, "{s:?}"),
        }
    }
}

// --- latency modes -----------------------------------------------------------------------------

#[test]
fn latency_modes_parse_by_name_and_adaptive_is_the_default() {
    for m in [Latency::Adaptive, Latency::Busy, Latency::Sleep] {
        assert_eq!(m.as_str().parse::<Latency>().unwrap(), m);
        assert_eq!(m.to_string(), m.as_str());
    }
    let e = "fast".parse::<Latency>().unwrap_err().to_string();
    assert!(e.contains("\"adaptive\"") && e.contains("\"busy\"") && e.contains("\"sleep\""));
    let d = PipelineConfig::default();
    assert_eq!((d.latency, d.spin), (Latency::Adaptive, DEFAULT_SPIN));
    let ok = |spin| {
        PipelineConfig {
            spin,
            ..Default::default()
        }
        .validate()
    };
    assert!(ok(Duration::ZERO).is_ok() && ok(MAX_SPIN).is_ok());
    let e = ok(MAX_SPIN + Duration::from_nanos(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("[0, 0.1] seconds"), "{e}");
}

/// Records when each batch arrived (DROP verdicts).
struct Stamps(Arc<Mutex<Vec<Instant>>>);

impl BatchHandler for Stamps {
    fn handle(&mut self, ctx: &mut BatchCtx<'_>) -> Result<(), HandlerError> {
        self.0.lock().unwrap().push(Instant::now());
        ctx.verdicts.fill(DROP);
        Ok(())
    }
}

/// One UDP packet from a to b:9000, sent now; returns when it was sent.
fn send_one(pair: &VethPair) -> Instant {
    let (a, src, dst) = (pair.a.clone(), pair.ip(1), pair.ip(2));
    std::thread::spawn(move || {
        let t = Instant::now();
        udp_send(Some(&a), src, SocketAddrV4::new(dst, 9000), b"wake", 1, 1).unwrap();
        t
    })
    .join()
    .unwrap()
}

fn wait_for(what: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !what() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_sleeping_adaptive_worker_wakes_on_a_packet_and_on_stop_not_on_its_timeout() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (pair, _ns, port) = port(VethOptions::default(), SocketConfig::default());
    let cfg = PipelineConfig {
        latency: Latency::Adaptive,
        spin: Duration::from_micros(50),
        idle_wait: Duration::from_secs(1),
        ..Default::default()
    };
    let p = Pipeline::new(Arc::clone(&port), cfg).unwrap();
    let stamps: Arc<Mutex<Vec<Instant>>> = Arc::default();
    p.start(vec![Box::new(Stamps(Arc::clone(&stamps)))], None)
        .unwrap();
    let stats = || p.stats()[0].snapshot();
    for k in 1..=3u64 {
        // Long past the 50 µs spin: the worker sleeps in poll(2), for up to a second.
        std::thread::sleep(Duration::from_millis(150));
        let sent = send_one(&pair);
        wait_for(|| stats().rx >= k);
        let got = *stamps.lock().unwrap().last().expect("the packet arrived");
        let took = got.saturating_duration_since(sent);
        assert!(
            took < Duration::from_millis(300),
            "packet {k} reached the handler {took:?} after it was sent: the sleep did not end on it"
        );
    }
    let s = stats();
    assert_eq!(s.rx, 3);
    assert!(
        s.idle_waits >= 3,
        "the worker slept before each packet: {s:?}"
    );
    assert!(!s.busy_poll && p.stats()[0].notes().is_empty());
    // A stop reaches the sleeping worker through the wake-up descriptor, not its 1 s timeout.
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    p.join().unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "stop took {:?}",
        t.elapsed()
    );
}

#[test]
fn an_adaptive_worker_spins_for_a_time_not_a_count() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (pair, _ns, port) = port(VethOptions::default(), SocketConfig::default());
    let cfg = PipelineConfig {
        latency: Latency::Adaptive,
        spin: MAX_SPIN, // 100 ms
        idle_wait: Duration::from_secs(1),
        ..Default::default()
    };
    let p = Pipeline::new(Arc::clone(&port), cfg).unwrap();
    p.start(vec![Box::new(Stamps(Arc::default()))], None)
        .unwrap();
    let stats = || p.stats()[0].snapshot();
    send_one(&pair);
    wait_for(|| stats().rx >= 1);
    let before = stats().idle_waits;
    // Packets 5 ms apart: each comes within the spin, millions of empty polls later.
    for k in 2..=10 {
        std::thread::sleep(Duration::from_millis(5));
        send_one(&pair);
        wait_for(|| stats().rx >= k);
    }
    let s = stats();
    assert_eq!(s.rx, 10);
    assert_eq!(
        s.idle_waits, before,
        "no sleep while packets come within the spin: {s:?}"
    );
    p.join().unwrap();
}

#[test]
fn a_busy_worker_busy_polls_never_sleeps_and_gives_the_sockets_back_as_they_were() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (pair, _ns, port) = port(VethOptions::default(), SocketConfig::default());
    let cfg = PipelineConfig {
        latency: Latency::Busy,
        ..Default::default()
    };
    let p = Pipeline::new(Arc::clone(&port), cfg).unwrap();
    p.start(vec![Box::new(Stamps(Arc::default()))], None)
        .unwrap();
    let stats = || p.stats()[0].snapshot();
    send(&pair, b"busy", 20, || stats().rx, 20);
    std::thread::sleep(Duration::from_millis(50));
    let s = stats();
    assert_eq!((s.rx, s.dropped, s.idle_waits), (20, 20, 0), "{s:?}");
    // As root on a kernel >= 5.11 every option is accepted; otherwise the notes say why not.
    let notes = p.stats()[0].notes();
    assert_eq!(s.busy_poll, notes.is_empty(), "{notes:?}");
    assert!(s.busy_poll, "root on this kernel busy-polls: {notes:?}");
    let t = Instant::now();
    p.join().unwrap();
    assert!(t.elapsed() < Duration::from_millis(500));
    let g = port.lock();
    let sock = g.as_ref().unwrap().socket(0).unwrap();
    assert_eq!(sock.busy_poll(), None, "the port's setting is back");
    assert!(
        sock.counters().rx_wakeups > 0,
        "empty receives asked the kernel to busy-poll"
    );
}

#[test]
fn sleep_mode_sleeps_after_its_empty_polls_and_still_receives() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (pair, _ns, port) = port(VethOptions::default(), SocketConfig::default());
    let cfg = PipelineConfig {
        latency: Latency::Sleep,
        idle_wait: Duration::from_millis(2),
        ..Default::default()
    };
    let p = Pipeline::new(Arc::clone(&port), cfg).unwrap();
    p.start(vec![Box::new(Stamps(Arc::default()))], None)
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let stats = || p.stats()[0].snapshot();
    assert!(stats().idle_waits > 0);
    send(&pair, b"sleepy", 5, || stats().rx, 5);
    assert_eq!(stats().rx, 5);
    p.join().unwrap();
}
