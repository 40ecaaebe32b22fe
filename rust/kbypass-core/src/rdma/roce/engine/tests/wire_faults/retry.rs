//! What the requester's retries cost and bound: re-reading after lost responses, and a
//! peer that disappears in the middle of a transfer.

use std::time::{Duration, Instant};

use super::super::*;
use super::{binomial_ok, fault_bench, ip, rc_pair, settled, FaultBench, MIB};
use crate::xdp::faults::{FaultRates, Timing};

#[test]
fn rc_read_through_response_loss_re_reads_only_from_the_first_missing() {
    // Responses lost (b→a only): the requester asks again from its first missing response,
    // and the responder answers from there once, replacing what it still had queued. A
    // 4 MiB read in 256-byte packets: 16384 of them.
    let Some(fb) = fault_bench(FaultRates::default(), Timing::default()) else {
        return;
    };
    let rates = FaultRates {
        loss: 0.003,
        ..Default::default()
    };
    fb.path.set_rates(1, rates).unwrap();
    let p = PathParams { mtu: 1, ..params() };
    let (x, y) = rc_pair(&fb, &p);
    let data = pattern(4 * MIB, 9);
    y.mr.write(MIB, &data).unwrap();
    let op = SendOp::Read {
        remote_addr: y.mr.addr() + MIB as u64,
        rkey: y.mr.rkey(),
    };
    let sge = x.mr.sge(2 * MIB, data.len()).unwrap();
    x.qp.post_send(1, op, &[sge], SendFlags::SIGNALED).unwrap();
    let w = wait_wcs(&x.cq, 1, Duration::from_secs(20));
    let w: Vec<_> = w.iter().map(|w| (w.status_name(), w.byte_len)).collect();
    let (ca, cb) = (fb.a.counters(), fb.b.counters());
    assert_eq!(w, [("SUCCESS", data.len() as u32)], "{ca:?} {cb:?}");
    let mut got = vec![0; data.len()];
    x.mr.read(2 * MIB, &mut got).unwrap();
    assert!(got == data, "the read came back damaged");
    let c = settled(&fb);
    let (ca, cb) = (fb.a.counters(), fb.b.counters());
    let n = (data.len() / 256) as u64;
    let d = c[1].injector;
    assert!(binomial_ok(d.dropped, d.matched, rates.loss), "{c:?}");
    assert!(d.dropped > 0 && ca.go_backs > 0, "{c:?} {ca:?}");
    // Every response b sent passed the injector (no ACKs: a read has none).
    assert_eq!(d.matched, cb.tx_packets, "{cb:?}");
    // Each re-ask is a duplicate at the responder, at most one per go-back or timeout.
    let asks = ca.go_backs + ca.retransmits;
    assert!(cb.duplicates > 0 && cb.duplicates <= asks, "{ca:?} {cb:?}");
    // A re-ask costs what was already on its way beyond the gap (b's TX ring of 1024, the
    // kernel's queues, a's RX ring: under 4096 packets), not a second stream of the rest of
    // the read (8192 packets on average).
    assert!(cb.tx_packets >= n, "{cb:?}");
    let extra = cb.tx_packets - n;
    let per_ask = extra / cb.duplicates;
    eprintln!(
        "{n} packets, {extra} extra for {} re-asks: {per_ask} each",
        cb.duplicates
    );
    assert!(
        per_ask < 4096,
        "{extra} extra for {} re-asks",
        cb.duplicates
    );
}

/// Posts eight 1 MiB writes from x to y, waits for the first, runs `cut` (which makes the
/// peer disappear), and checks what follows: the head ends in RETRY_EXC_ERR within the
/// bound of `timeout` and `retry_cnt`, everything after it is flushed, and so is any later
/// work. Returns nothing; panics on a failed check.
fn gone_mid_transfer(fb: FaultBench, cut: impl FnOnce(FaultBench, Side) -> FaultBench) {
    let p = params();
    let (x, y) = rc_pair(&fb, &p);
    let (ya, rk) = (y.mr.addr(), y.mr.rkey());
    for i in 0..8u64 {
        let op = SendOp::Write {
            remote_addr: ya + i * MIB as u64,
            rkey: rk,
        };
        x.qp.post_send(i, op, &[x.mr.sge(0, MIB).unwrap()], SendFlags::SIGNALED)
            .unwrap();
    }
    // The first completion, and any others the same poll found (the writes go on meanwhile).
    let first = wait_wcs(&x.cq, 1, Duration::from_secs(10));
    let done: Vec<_> = first.iter().map(|w| w.status_name()).collect();
    assert!(
        !done.is_empty() && done.len() < 8 && done.iter().all(|n| *n == "SUCCESS"),
        "{done:?}"
    );
    let start = Instant::now();
    let before = fb.a.counters().retransmits;
    let fb = cut(fb, y);
    let cut_done = Instant::now();
    let left = 8 - done.len();
    let rest = wait_wcs(&x.cq, left, Duration::from_secs(10));
    let (took, after_cut) = (start.elapsed(), cut_done.elapsed());
    let names: Vec<_> = rest.iter().map(|w| w.status_name()).collect();
    assert_eq!(
        names.len(),
        left,
        "{names:?} after {took:?}: {:?}",
        fb.a.counters()
    );
    // Those done before the cut, then one RETRY_EXC_ERR, then the flushed.
    let ok = names.iter().take_while(|n| **n == "SUCCESS").count();
    assert!(ok < left, "{names:?}");
    assert_eq!(names[ok], "RETRY_EXC_ERR", "{names:?}");
    assert!(
        names[ok + 1..].iter().all(|n| *n == "WR_FLUSH_ERR"),
        "{names:?}"
    );
    // 4.096 µs × 2^timeout per try, retry_cnt retries after the first, counted from the
    // last progress, which came before the cut was done (dropping an engine takes a while
    // on a loaded machine); 3 s of slack for the scheduler.
    let per_try = Duration::from_nanos(4096 << p.timeout);
    let bound = per_try * (u32::from(p.retry_cnt) + 1);
    assert!(
        after_cut < bound + Duration::from_secs(3),
        "{after_cut:?} after the cut, {took:?} in all (bound {bound:?})"
    );
    assert!(took > per_try * 4, "gave up after {took:?}: too early");
    let retried = fb.a.counters().retransmits - before;
    assert!(retried >= u64::from(p.retry_cnt), "{retried}");
    assert_eq!(x.qp.state(), QpState::Error);
    x.qp.post_send(
        9,
        SendOp::Send,
        &[x.mr.sge(0, 8).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    let w = wait_wcs(&x.cq, 1, Duration::from_secs(2));
    assert_eq!((w[0].wr_id, w[0].status_name()), (9, "WR_FLUSH_ERR"));
}

#[test]
fn rc_peer_link_down_mid_transfer_is_retry_exceeded_within_the_bound() {
    let Some(fb) = fault_bench(FaultRates::default(), Timing::default()) else {
        return;
    };
    gone_mid_transfer(fb, |fb, y| {
        ip(&["-n", &fb.ns.0[1], "link", "set", "dev", "mb", "down"]);
        drop(y);
        fb
    });
}

#[test]
fn rc_peer_engine_dropped_mid_transfer_is_retry_exceeded_within_the_bound() {
    let Some(fb) = fault_bench(FaultRates::default(), Timing::default()) else {
        return;
    };
    gone_mid_transfer(fb, |fb, y| {
        // The peer's objects and its engine go: its XDP program and socket with them.
        drop(y);
        let FaultBench {
            a,
            b,
            path,
            net,
            ns,
            ..
        } = fb;
        assert_eq!(Arc::strong_count(&b), 1, "the peer engine's last handle");
        drop(b);
        let b = a.clone();
        FaultBench {
            a,
            b,
            path,
            net,
            ns,
        }
    });
}
