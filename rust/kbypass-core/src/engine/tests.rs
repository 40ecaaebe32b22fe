//! Tests of the engine: its pure parts, and workers with Rust handlers on a veth pair (root) for
//! the frame holds; the Python end-to-end runs are in tests/test_pipeline.py.

use super::worker::*;
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

// --- workers on a veth pair (root) ------------------------------------------------------------

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sys::netns::NetnsGuard;
use crate::sys::testutil::{is_root, VethOptions, VethPair};
use crate::traffic::kernel::udp_send;
use crate::xsk::{BindMode, FrameHold, PortConfig, Queues, SocketConfig, UmemConfig, XskPort};

/// What a test handler kept: holds with the bytes it saw.
type Seen = Arc<Mutex<Vec<(FrameHold, u64, u32, Vec<u8>)>>>;

/// Sets `verdict` on every frame; holds frame 0 of the first `views` batches as a view that
/// outlives the batch would (`hold_view`).
struct Holder {
    verdict: u8,
    views: usize,
    seen: Seen,
}

impl BatchHandler for Holder {
    fn handle(&mut self, ctx: &mut BatchCtx<'_>) -> Result<(), HandlerError> {
        ctx.verdicts.fill(self.verdict);
        let mut seen = self.seen.lock().unwrap();
        if seen.len() < self.views {
            let d = ctx.descs()[0];
            let h = ctx.hold_view(0).expect("a batch frame can be held");
            assert!(ctx.hold_view(0).is_some(), "a second view holds it again");
            let b = h.bytes(d.addr, d.len).unwrap().to_vec();
            seen.push((h, d.addr, d.len, b));
        }
        Ok(())
    }
}

fn run_worker(
    verdict: u8,
    views: usize,
    payloads: &[(&[u8], u64)],
) -> (Seen, WorkerStatsSnapshot, XskPort) {
    let pair = VethPair::with(VethOptions::default()).unwrap();
    let _ns = NetnsGuard::enter(&pair.b).unwrap();
    let cfg = PortConfig {
        rules: crate::xdp::parse_filter("udp dst port 9000").unwrap(),
        umem: UmemConfig {
            frames: 256,
            ..Default::default()
        },
        socket: SocketConfig {
            mode: BindMode::Copy,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut port = XskPort::open("veth1", &Queues::All, &cfg).unwrap();
    let sock = port.take_socket(0).unwrap();
    let seen: Seen = Arc::default();
    let stats = Arc::new(WorkerStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let h = spawn(
        0,
        vec![(0, sock)],
        Box::new(Holder {
            verdict,
            views,
            seen: Arc::clone(&seen),
        }),
        WorkerConfig {
            batch: 64,
            cpu: None,
            default_verdict: DROP,
            on_error: OnError::Drop,
            idle_spins: 64,
            idle_wait: Duration::from_millis(1),
            stop: Arc::clone(&stop),
            total: Arc::new(AtomicU64::new(0)),
            limit: u64::MAX,
        },
        Arc::clone(&stats),
    )
    .unwrap();
    let mut want = 0;
    for &(p, n) in payloads {
        let (a, src, dst) = (pair.a.clone(), pair.ip(1), pair.ip(2));
        let p = p.to_vec();
        std::thread::spawn(move || {
            udp_send(Some(&a), src, SocketAddrV4::new(dst, 9000), &p, n, 8).unwrap()
        })
        .join()
        .unwrap();
        want += n;
        let deadline = Instant::now() + Duration::from_secs(5);
        while stats.snapshot().rx < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let exit = h.join().unwrap();
    assert!(exit.error.is_none());
    for (i, s) in exit.sockets {
        port.put_socket(i, s).unwrap();
    }
    let snap = stats.snapshot();
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
    let (seen, s, port) = run_worker(DROP, 5, &traffic);
    let sock = port.socket(0).unwrap();
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
    drop(seen);
}

#[test]
fn tx_of_a_held_frame_sends_a_copy_and_keep_without_a_hold_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut traffic: Vec<(&[u8], u64)> = vec![(b"send-me", 1); 3];
    traffic.push((b"send-me", 17));
    let (seen, s, port) = run_worker(TX, 3, &traffic);
    let sock = port.socket(0).unwrap();
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        for (h, addr, len, b) in seen.iter() {
            assert_eq!(h.bytes(*addr, *len).unwrap(), &b[..]);
        }
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
    seen.lock().unwrap().clear();
    assert_eq!(sock.account().held, 0);

    // KEEP with no hold taken: nobody could ever give the frame back, so it is refused.
    let (seen, s, port) = run_worker(KEEP, 0, &[(b"keep-me", 10)]);
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!((s.kept, s.bad_verdicts, s.dropped), (0, 10, 10));
    let acc = port.socket(0).unwrap().check_accounting().unwrap();
    assert_eq!((acc.app, acc.held), (0, 0), "{acc:?}");
}
