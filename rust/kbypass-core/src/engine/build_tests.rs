//! Tests of building frames in a handler (root, on a veth pair): reshaped frames (a VLAN tag
//! pushed into the room in front, the packet grown) go out as reshaped, bad reshapes are refused
//! and change nothing, emitted frames arrive byte for byte and are counted and accounted, the
//! lease carries reshapes and emits back to the worker, a pool without free frames fails an emit
//! visibly, and a failed handler's emits are discarded and counted. What arrives is caught by
//! an AF_XDP port on the other end of the pair. Python's end-to-end runs (encapsulation, VLAN
//! push and pop) are in tests/test_emit.py.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::tests::send;
use super::*;
use crate::sys::netns::NetnsGuard;
use crate::sys::testutil::{is_root, VethOptions, VethPair};
use crate::sys::xdp::XdpDesc;
use crate::traffic::template::UdpTemplate;
use crate::xsk::{BindMode, Queues, SharedPort, SocketConfig, XskPort};

/// A port on `veth1` in namespace b of a fresh pair taking UDP to port 9000, with `frames`
/// frames and `headroom` bytes of application headroom.
fn port(frames: u32, headroom: u32) -> (VethPair, NetnsGuard, Arc<SharedPort>) {
    let pair = VethPair::with(VethOptions::default()).unwrap();
    let ns = NetnsGuard::enter(&pair.b).unwrap();
    let mut cfg = crate::xsk::tests::copy_config(frames, Some("udp dst port 9000"));
    cfg.umem.headroom = headroom;
    cfg.socket = SocketConfig {
        mode: BindMode::Copy,
        ..Default::default()
    };
    let port = XskPort::open("veth1", &Queues::All, &cfg).unwrap();
    (pair, ns, Arc::new(SharedPort::new(port)))
}

/// Catch the frames `filter` matches arriving at `veth0` (namespace a) with an AF_XDP port
/// there, until `n` arrived or 5 s passed; returns once the port is open.
fn catch_on_a(pair: &VethPair, filter: &str, n: usize) -> JoinHandle<Vec<Vec<u8>>> {
    let (ns, filter) = (pair.a.clone(), filter.to_string());
    let (ready, open) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let _in_a = NetnsGuard::enter(&ns).unwrap();
        let cfg = crate::xsk::tests::copy_config(1024, Some(&filter));
        let mut port = XskPort::open("veth0", &Queues::All, &cfg).unwrap();
        ready.send(()).unwrap();
        let sock = port.socket_mut(0).unwrap();
        let (mut got, mut d) = (Vec::new(), vec![XdpDesc::default(); 64]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < n && Instant::now() < deadline {
            let k = sock.recv(&mut d);
            for x in &d[..k] {
                got.push(sock.app_bytes(x.addr, x.len).unwrap().to_vec());
            }
            let addrs: Vec<u64> = d[..k].iter().map(|x| x.addr).collect();
            sock.release(&addrs);
            if k == 0 {
                let _ = sock.wait_rx(Duration::from_millis(10));
            }
        }
        got
    });
    open.recv().unwrap();
    h
}

/// Per frame: push a VLAN tag (id 100) in front, swap the MACs, grow the packet by 8 zeroed
/// bytes, TX. On the first frame it first tries what must be refused, and records the errors.
struct Tagger {
    headroom: u32,
    report: Arc<Mutex<Vec<String>>>,
    originals: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl BatchHandler for Tagger {
    fn handle(&mut self, ctx: &mut BatchCtx<'_>) -> Result<(), HandlerError> {
        let mut report = self.report.lock().unwrap();
        for i in 0..ctx.len() {
            let before = ctx.descs()[i];
            assert_eq!(
                before.addr % 2048,
                (crate::xsk::XDP_PACKET_HEADROOM + self.headroom) as u64,
                "a received packet starts after the kernel's and the port's headroom"
            );
            self.originals
                .lock()
                .unwrap()
                .push(ctx.frame(i).unwrap().to_vec());
            if report.is_empty() {
                let room = (256 + self.headroom) as i32;
                let len = before.len;
                report.push(ctx.adjust_head(i, -room - 1).unwrap_err().to_string());
                report.push(ctx.adjust_head(i, len as i32 - 13).unwrap_err().to_string());
                report.push(ctx.set_len(i, 13).unwrap_err().to_string());
                report.push(
                    ctx.set_len(i, 2048 - room as u32 + 1)
                        .unwrap_err()
                        .to_string(),
                );
                report.push(ctx.set_len(ctx.len(), 60).unwrap_err().to_string());
                assert_eq!(ctx.descs()[i], before, "a refused reshape changes nothing");
                // The whole room can be taken and given back.
                ctx.adjust_head(i, -room).unwrap();
                assert_eq!(ctx.descs()[i].addr % 2048, 0);
                ctx.adjust_head(i, room).unwrap();
                assert_eq!(ctx.descs()[i], before);
            }
            ctx.adjust_head(i, -4).unwrap();
            let len = ctx.descs()[i].len;
            let f = ctx.frame_mut(i).unwrap();
            assert_eq!(f[..4], [0; 4], "pushed bytes are zeroed");
            f.copy_within(4..16, 0);
            let (dst, src) = (f[..6].to_vec(), f[6..12].to_vec());
            f[..6].copy_from_slice(&src);
            f[6..12].copy_from_slice(&dst);
            f[12..16].copy_from_slice(&[0x81, 0x00, 0x00, 100]);
            // Dirty the bytes past the packet: growing must zero them.
            ctx.set_len(i, len + 8).unwrap();
            ctx.frame_mut(i).unwrap()[len as usize..].fill(0xEE);
            ctx.set_len(i, len).unwrap();
            ctx.set_len(i, len + 8).unwrap();
            assert_eq!(ctx.frame(i).unwrap()[len as usize..], [0; 8]);
            ctx.verdicts[i] = TX;
        }
        Ok(())
    }
}

#[test]
fn reshaped_frames_go_out_as_reshaped_and_bad_reshapes_change_nothing() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    for headroom in [0, 128] {
        let (pair, _ns, port) = port(256, headroom);
        let catcher = catch_on_a(&pair, "udp dst port 9000", 10);
        let p = Pipeline::new(Arc::clone(&port), PipelineConfig::default()).unwrap();
        let (report, originals) = (Arc::default(), Arc::default());
        let h = Tagger {
            headroom,
            report: Arc::clone(&report),
            originals: Arc::clone(&originals),
        };
        p.start(vec![Box::new(h)], None).unwrap();
        send(&pair, b"tag-me", 10, || p.stats()[0].snapshot().rx, 10);
        let caught = catcher.join().unwrap();
        p.join().unwrap();
        let s = p.stats()[0].snapshot();
        assert_eq!((s.rx, s.tx, s.tx_failed), (10, 10, 0), "{s:?}");
        let r = report.lock().unwrap().clone();
        let room = 256 + headroom;
        assert!(r[0].contains(&format!("{room} bytes are free")), "{r:?}");
        assert!(r[0].contains("headroom="), "{r:?}");
        assert!(r[1].contains("pop at most"), "{r:?}");
        let max = 2048 - room;
        assert!(r[2].contains(&format!("give 14..={max}")), "{r:?}");
        assert!(r[3].contains(&format!("give 14..={max}")), "{r:?}");
        assert!(r[4].contains("out of range"), "{r:?}");
        // Every frame arrived tagged, swapped, grown by 8 zeroed bytes; the rest untouched.
        let originals = originals.lock().unwrap();
        assert_eq!(caught.len(), 10);
        for (got, orig) in caught.iter().zip(originals.iter()) {
            assert_eq!(got.len(), orig.len() + 4 + 8);
            assert_eq!(got[..6], orig[6..12], "destination: the sender");
            assert_eq!(got[6..12], orig[..6]);
            assert_eq!(got[12..16], [0x81, 0, 0, 100], "the VLAN tag");
            assert_eq!(
                got[16..16 + orig.len() - 12],
                orig[12..],
                "the packet after it"
            );
            assert_eq!(got[got.len() - 8..], [0; 8]);
        }
        let acc = p.check_accounting().unwrap();
        assert_eq!((acc.app, acc.held), (0, 0), "{acc:?}");
    }
}

/// Lends each batch to another thread, as a binding does: there it reshapes by mask (one bad
/// length refuses the whole call), rewrites the columns, and emits one frame per packet
/// through the lease; the received frames are dropped.
struct LeaseEmitter {
    frames: Arc<BatchFrames>,
    template: Vec<u8>,
    report: Arc<Mutex<Vec<String>>>,
    emitted: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl BatchHandler for LeaseEmitter {
    fn handle(&mut self, ctx: &mut BatchCtx<'_>) -> Result<(), HandlerError> {
        let before: Vec<XdpDesc> = ctx.descs().to_vec();
        let mut lent = self.frames.lend(ctx);
        let (seq, n) = (lent.seq(), lent.len());
        lent.verdicts().fill(DROP);
        let frames = Arc::clone(&self.frames);
        let template = self.template.clone();
        let (mut report, emitted) = std::thread::scope(|s| {
            s.spawn(|| {
                let mut r = Vec::new();
                let mut lens: Vec<u32> = before.iter().map(|d| d.len).collect();
                lens[n - 1] = 5000;
                let e = frames.set_len(seq, Pick::All, NewLen::PerFrame(&lens), None);
                r.push(format!("bad {}", e.unwrap_err()));
                let unchanged = (0..n).all(|i| frames.desc(seq, i).unwrap() == before[i]);
                r.push(format!("unchanged {unchanged}"));
                let short = frames.set_len(seq, Pick::All, NewLen::PerFrame(&lens[1..]), None);
                r.push(format!("short {}", short.unwrap_err()));
                let (mut l, mut a, mut h) = (vec![0u32; n], vec![0u64; n], vec![0u8; 64 * n]);
                let cols = Columns {
                    lengths: &mut l,
                    addrs: &mut a,
                    headers: &mut h,
                };
                let k = frames.adjust_head(seq, Pick::All, -6, Some(cols)).unwrap();
                let moved = (0..n).all(|i| {
                    let d = frames.desc(seq, i).unwrap();
                    d.addr == before[i].addr - 6
                        && (l[i], a[i]) == (d.len, d.addr)
                        && h[64 * i..64 * i + 4] == (before[i].len + 6).to_le_bytes()
                });
                r.push(format!("moved {k} {moved}"));
                frames.adjust_head(seq, Pick::One(0), 6, None).unwrap();
                let e = frames.adjust_head(seq, Pick::One(n), 6, None);
                r.push(format!("one {}", e.unwrap_err()));
                let e = frames
                    .emit(seq, &template, Some(9), &Default::default())
                    .unwrap_err();
                r.push(format!("socket {e}"));
                let e = frames
                    .emit(seq, &template[..13], None, &Default::default())
                    .unwrap_err();
                r.push(format!("short {e}"));
                let mut out = Vec::new();
                for i in 0..n {
                    let mut f = template.clone();
                    let tail = format!("emit-{i:04}");
                    let at = f.len() - tail.len();
                    f[at..].copy_from_slice(tail.as_bytes());
                    assert!(
                        frames.emit(seq, &f, None, &Default::default()).unwrap(),
                        "a frame is free"
                    );
                    out.push(f);
                }
                (r, out)
            })
            .join()
            .unwrap()
        });
        let ctx = lent.end();
        report.push(format!("emitted {}", ctx.emitted()));
        report.push(format!(
            "reshaped back {}",
            ctx.descs()[0] == before[0]
                && (1..n).all(|i| ctx.descs()[i].addr == before[i].addr - 6)
        ));
        self.report.lock().unwrap().extend(report);
        self.emitted.lock().unwrap().extend(emitted);
        Ok(())
    }
}

#[test]
fn frames_emitted_through_the_lease_arrive_counted_and_accounted() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (pair, _ns, port) = port(256, 0);
    let umem = Arc::clone(port.lock().as_ref().unwrap().umem());
    let catcher = catch_on_a(&pair, "udp dst port 9001", 5);
    let p = Pipeline::new(Arc::clone(&port), PipelineConfig::default()).unwrap();
    let template = UdpTemplate {
        dst_mac: pair.mac(1),
        src_mac: pair.mac(2),
        src_ip: pair.ip(2),
        dst_ip: pair.ip(1),
        src_port: 9000,
        dst_port: 9001,
        size: 80,
        udp_checksum: false,
    }
    .build()
    .unwrap();
    let (report, emitted) = (Arc::default(), Arc::default());
    let h = LeaseEmitter {
        frames: Arc::new(BatchFrames::new(&umem, 64).unwrap()),
        template,
        report: Arc::clone(&report),
        emitted: Arc::clone(&emitted),
    };
    p.start(vec![Box::new(h)], None).unwrap();
    // Five packets: one batch or a few, each with its own checks.
    send(&pair, b"emit-for-me", 5, || p.stats()[0].snapshot().rx, 5);
    let caught = catcher.join().unwrap();
    p.join().unwrap();
    let s = p.stats()[0].snapshot();
    let r = report.lock().unwrap().clone();
    let batches = s.batches as usize;
    assert_eq!(r.len(), 9 * batches, "{r:?}");
    assert!(
        r[0].contains("frame") && r[0].contains("length 5000"),
        "{r:?}"
    );
    assert_eq!(r[1], "unchanged true");
    assert!(r[2].contains("lengths for a batch of"), "{r:?}");
    assert!(
        r[3].starts_with("moved ") && r[3].ends_with(" true"),
        "{r:?}"
    );
    assert!(r[4].contains("out of range"), "{r:?}");
    assert!(
        r[5].contains("not one of this worker's sockets [0]"),
        "{r:?}"
    );
    assert!(r[6].contains("cannot emit a 13-byte frame"), "{r:?}");
    assert!(r[7].starts_with("emitted "), "{r:?}");
    assert_eq!(r[8], "reshaped back true", "{r:?}");
    let emitted = emitted.lock().unwrap();
    assert_eq!((s.rx, s.emitted, s.emit_failed, s.dropped), (5, 5, 0, 5));
    let mut caught = caught;
    caught.sort();
    let mut want = emitted.clone();
    want.sort();
    assert_eq!(caught, want, "every emitted frame arrived byte for byte");
    let g = port.lock();
    let port = g.as_ref().unwrap();
    assert_eq!(port.socket(0).unwrap().counters().tx_packets, 5);
    let acc = port.check_accounting().unwrap();
    assert_eq!((acc.app, acc.held, acc.tx_side), (0, 0, 0), "{acc:?}");
}

/// Batch 1: emit until no frame is free. Batch 2: emit three frames, then fail.
struct Exhauster {
    batches: usize,
    first: Arc<Mutex<Option<usize>>>,
}

impl BatchHandler for Exhauster {
    fn handle(&mut self, ctx: &mut BatchCtx<'_>) -> Result<(), HandlerError> {
        self.batches += 1;
        let frame = ctx.frame(0).unwrap().to_vec();
        if self.batches == 1 {
            let mut k = 0;
            while ctx.emit(&frame, None).unwrap() {
                k += 1;
            }
            *self.first.lock().unwrap() = Some(k);
            return Ok(());
        }
        for _ in 0..3 {
            assert!(ctx.emit(&frame, Some(ctx.socket)).unwrap());
        }
        assert_eq!(ctx.emitted(), 3);
        Err(HandlerError)
    }
}

#[test]
fn no_free_frame_fails_an_emit_visibly_and_a_failed_batch_discards_its_emits() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    // 256 frames, up to 128 on the receive side: fewer free frames than a batch of 256 may
    // emit, so the first batch runs out.
    let (pair, _ns, port) = port(256, 0);
    let cfg = PipelineConfig {
        batch: 256,
        ..Default::default()
    };
    let p = Pipeline::new(Arc::clone(&port), cfg).unwrap();
    let first = Arc::new(Mutex::new(None));
    let h = Exhauster {
        batches: 0,
        first: Arc::clone(&first),
    };
    p.start(vec![Box::new(h)], None).unwrap();
    send(&pair, b"one", 1, || p.stats()[0].snapshot().rx, 1);
    send(&pair, b"two", 1, || p.stats()[0].snapshot().rx, 2);
    p.join().unwrap();
    let s = p.stats()[0].snapshot();
    let k = first.lock().unwrap().expect("the first batch ran") as u64;
    assert!((32..256).contains(&k), "{k} frames were free");
    assert_eq!((s.rx, s.handler_errors), (2, 1), "{s:?}");
    assert_eq!(s.emitted, k, "{s:?}");
    assert_eq!(
        s.emit_failed,
        1 + 3,
        "the refused emit and the failed batch's three"
    );
    let acc = p.check_accounting().unwrap();
    assert_eq!((acc.app, acc.held, acc.tx_side), (0, 0, 0), "{acc:?}");
}

/// Through the lease: tag every frame twice (802.1Q 100, then 802.1ad 7 outside it), pop the
/// outer tag, and send them on; a bad TPID and a frame out of range are refused.
struct VlanLease {
    frames: Arc<BatchFrames>,
    originals: Arc<Mutex<Vec<Vec<u8>>>>,
    report: Arc<Mutex<Vec<String>>>,
}

impl BatchHandler for VlanLease {
    fn handle(&mut self, ctx: &mut BatchCtx<'_>) -> Result<(), HandlerError> {
        for i in 0..ctx.len() {
            let f = ctx.frame(i).unwrap().to_vec();
            self.originals.lock().unwrap().push(f);
        }
        let mut lent = self.frames.lend(ctx);
        let (seq, n) = (lent.seq(), lent.len());
        lent.verdicts().fill(TX);
        let f = &self.frames;
        let mut r = self.report.lock().unwrap();
        r.push(
            f.push_vlan(seq, Pick::All, 0x0800, 1, None)
                .unwrap_err()
                .to_string(),
        );
        r.push(
            f.push_vlan(seq, Pick::One(n), 0x8100, 1, None)
                .unwrap_err()
                .to_string(),
        );
        let (mut l, mut a, mut h) = (vec![0u32; n], vec![0u64; n], vec![0u8; 64 * n]);
        let cols = Columns {
            lengths: &mut l,
            addrs: &mut a,
            headers: &mut h,
        };
        assert_eq!(
            f.push_vlan(seq, Pick::All, 0x8100, 100, Some(cols))
                .unwrap(),
            n
        );
        // The rewritten headers see the tag (the record's VLAN id is at bytes 6..8).
        assert!((0..n).all(|i| h[64 * i + 6..64 * i + 8] == 100u16.to_le_bytes()));
        assert_eq!(f.push_vlan(seq, Pick::All, 0x88a8, 7, None).unwrap(), n);
        assert_eq!(f.pop_vlan(seq, Pick::All, None).unwrap(), n);
        let mask: Vec<bool> = (0..n).map(|i| i == 0).collect();
        let cols = Columns {
            lengths: &mut l,
            addrs: &mut a,
            headers: &mut h,
        };
        assert_eq!(f.reparse(seq, Pick::Mask(&mask), cols).unwrap(), 1);
        assert_eq!(h[6..8], 100u16.to_le_bytes(), "one tag left, the inner one");
        lent.end();
        Ok(())
    }
}

#[test]
fn vlan_tags_pushed_and_popped_through_the_lease_go_out_as_tagged() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (pair, _ns, port) = port(256, 0);
    let umem = Arc::clone(port.lock().as_ref().unwrap().umem());
    let catcher = catch_on_a(&pair, "udp dst port 9000", 6);
    let p = Pipeline::new(Arc::clone(&port), PipelineConfig::default()).unwrap();
    let (originals, report) = (Arc::default(), Arc::default());
    let h = VlanLease {
        frames: Arc::new(BatchFrames::new(&umem, 64).unwrap()),
        originals: Arc::clone(&originals),
        report: Arc::clone(&report),
    };
    p.start(vec![Box::new(h)], None).unwrap();
    send(&pair, b"vlan-me", 6, || p.stats()[0].snapshot().rx, 6);
    let mut caught = catcher.join().unwrap();
    p.join().unwrap();
    let s = p.stats()[0].snapshot();
    assert_eq!((s.rx, s.tx, s.tx_failed), (6, 6, 0), "{s:?}");
    let r = report.lock().unwrap().clone();
    assert!(r[0].contains("use 0x8100 (802.1Q) or 0x88a8"), "{r:?}");
    assert!(r[1].contains("out of range"), "{r:?}");
    let mut want: Vec<Vec<u8>> = originals
        .lock()
        .unwrap()
        .iter()
        .map(|o| [&o[..12], &[0x81, 0x00, 0x00, 100][..], &o[12..]].concat())
        .collect();
    caught.sort();
    want.sort();
    assert_eq!(caught, want);
    let acc = p.check_accounting().unwrap();
    assert_eq!((acc.app, acc.held), (0, 0), "{acc:?}");
}

/// FORWARD every frame to the other socket of a two-queue port (owned by the other worker);
/// sleeps so batches grow.
struct Across;

impl BatchHandler for Across {
    fn handle(&mut self, ctx: &mut BatchCtx<'_>) -> Result<(), HandlerError> {
        let other = 1 - ctx.socket as u16;
        ctx.verdicts.fill(FORWARD);
        ctx.forward_to.fill(other);
        std::thread::sleep(Duration::from_millis(10));
        Ok(())
    }
}

#[test]
fn forward_to_another_workers_socket_goes_through_its_inbox_counted_when_full() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    for inbox in [4096, 2] {
        let opts = VethOptions {
            queues: 2,
            ..Default::default()
        };
        let (pair, _ns, port) = super::tests::port(opts, SocketConfig::default());
        let cfg = PipelineConfig {
            inbox,
            ..Default::default()
        };
        let p = Pipeline::new(Arc::clone(&port), cfg).unwrap();
        assert_eq!(p.groups(), &[vec![0], vec![1]], "one worker per socket");
        p.start(vec![Box::new(Across), Box::new(Across)], None)
            .unwrap();
        let rx = || p.stats().iter().map(|s| s.snapshot().rx).sum::<u64>();
        send(&pair, b"across", 200, rx, 200);
        p.join().unwrap();
        let s: Vec<WorkerStatsSnapshot> = p.stats().iter().map(|s| s.snapshot()).collect();
        let g = port.lock();
        let port = g.as_ref().unwrap();
        let sock = |i: usize| port.socket(i).unwrap().counters();
        // One flow: every frame arrives on one queue, its worker hands it to the other.
        let j = if sock(0).rx_packets > 0 { 0 } else { 1 };
        let (a, b) = (s[j], s[1 - j]);
        assert_eq!((a.rx, b.rx, a.bad_verdicts), (200, 0, 0), "{s:?}");
        assert_eq!(a.forwarded + a.forward_ring_full, 200, "{a:?}");
        assert_eq!(
            a.dropped, a.forward_ring_full,
            "refused handoffs go back to FILL"
        );
        assert_eq!(a.tx_failed, a.forward_ring_full);
        assert_eq!(b.forwarded_in + b.forward_in_failed, a.forwarded, "{b:?}");
        assert_eq!(
            sock(1 - j).tx_packets,
            b.forwarded_in,
            "sent by the other worker"
        );
        assert_eq!(sock(j).tx_packets, 0);
        if inbox == 4096 {
            assert_eq!((a.forwarded, b.forwarded_in), (200, 200), "{s:?}");
        } else {
            assert!(a.forward_ring_full > 0, "an inbox of 2 overflows: {a:?}");
        }
        let acc = port.check_accounting().unwrap();
        assert_eq!((acc.app, acc.held), (0, 0), "{acc:?}");
    }
}

/// Lends its batches through a lease made for another UMEM.
struct WrongLease(Arc<BatchFrames>);

impl BatchHandler for WrongLease {
    fn handle(&mut self, ctx: &mut BatchCtx<'_>) -> Result<(), HandlerError> {
        self.0.lend(ctx).end();
        Ok(())
    }
}

#[test]
fn a_lease_refuses_a_batch_of_another_umem() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (pair, _ns, port) = port(256, 0);
    let other = crate::xsk::Umem::new(&crate::xsk::UmemConfig {
        frames: 64,
        ..Default::default()
    })
    .unwrap();
    let p = Pipeline::new(Arc::clone(&port), PipelineConfig::default()).unwrap();
    let h = WrongLease(Arc::new(BatchFrames::new(&other, 64).unwrap()));
    p.start(vec![Box::new(h)], None).unwrap();
    send(&pair, b"wrong", 1, || p.stats()[0].snapshot().rx, 1);
    assert!(
        p.wait_until(Instant::now() + Duration::from_secs(5)),
        "the worker ended"
    );
    let e = p.join().unwrap_err().to_string();
    assert!(e.contains("a worker thread panicked"), "{e}");
}
