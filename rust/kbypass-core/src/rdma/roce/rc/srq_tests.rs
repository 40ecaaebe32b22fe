//! Shared receive queues across RC, UC and UD, and the flush of receives when a responder
//! goes to the error state.

use super::super::uc::{UcReceiver, UcRequest, UcSender};
use super::super::ud::{UdDest, UdReceiver, UdSender};
use super::super::wire::{ExtHeaders, NakCode, Op, Reth, Syndrome};
use super::sim::*;
use super::*;

fn params() -> RcParams {
    RcParams {
        dest_qp: 2,
        recv_psn: 100,
        mtu: 256,
        ..RcParams::default()
    }
}

fn send(psn: u32, payload: &[u8]) -> Pkt {
    request(
        Op::SendOnly,
        psn,
        ExtHeaders::default(),
        payload.to_vec(),
        true,
    )
}

#[test]
fn one_srq_feeds_rc_uc_and_ud_in_posting_order() {
    let srq = Srq::new(8);
    for id in 1..=4 {
        srq.post_recv(id, 64).unwrap();
    }
    let mut rc = Responder::with_srq(params(), memory(64), srq.clone());
    let mut uc = UcReceiver::with_srq(0, 256, memory(64), srq.clone());
    let mut ud = UdReceiver::with_srq(0x21, 0x1111, srq.clone());
    assert!(rc.srq().is_some_and(|s| s.same_queue(&srq)));
    // Receives go to the SRQ, not to a QP that uses one.
    assert_eq!(rc.post_recv(9, 64), Err(RecvError::HasSrq));
    assert_eq!(uc.post_recv(9, 64), Err(RecvError::HasSrq));
    assert_eq!(ud.post_recv(9, 64), Err(RecvError::HasSrq));

    rc.on_packet(&send(100, b"rc"));
    let mut us = UcSender::new(0x22, 0, 256).unwrap();
    us.post(
        1,
        UcRequest::Send {
            data: b"uc".to_vec().into(),
            imm: None,
        },
    );
    uc.on_packet(&us.poll_tx().unwrap());
    let mut ds = UdSender::new(0x33, 256).unwrap();
    let dest = UdDest {
        qpn: 0x21,
        qkey: 0x1111,
    };
    ud.on_packet(&ds.send(dest, b"ud", None).unwrap());
    rc.on_packet(&send(101, b"rc2"));

    let a = rc.poll_completion().unwrap();
    assert_eq!(
        (a.wr_id, a.status, &a.data[..]),
        (1, Status::Success, &b"rc"[..])
    );
    assert_eq!(uc.poll_completion().unwrap().wr_id, 2);
    let d = ud.poll_completion().unwrap();
    assert_eq!((d.wr_id, &d.data[..], d.src_qp), (3, &b"ud"[..], 0x33));
    assert_eq!(rc.poll_completion().unwrap().wr_id, 4);
    assert!(srq.is_empty());
    assert_eq!(srq.taken(), 4);
}

#[test]
fn an_empty_srq_is_an_rnr_nak_for_rc_and_a_counted_drop_for_uc_and_ud() {
    let srq = Srq::new(2);
    let mut rc = Responder::with_srq(params(), memory(64), srq.clone());
    rc.on_packet(&send(100, b"x"));
    let out = drain(&mut rc);
    assert_eq!(out.len(), 1);
    let kind = out[0].ext.aeth.unwrap().kind();
    assert!(matches!(kind, Syndrome::RnrNak { timer: 12 }), "{kind:?}");
    assert_eq!((out[0].bth.psn, rc.rnr_naks), (100, 1));
    // Posted, the retry succeeds.
    srq.post_recv(7, 64).unwrap();
    rc.on_packet(&send(100, b"x"));
    assert_eq!(rc.poll_completion().unwrap().wr_id, 7);

    let mut uc = UcReceiver::with_srq(0, 256, memory(64), srq.clone());
    let mut us = UcSender::new(0x22, 0, 256).unwrap();
    for (i, imm) in [None, Some(5)].into_iter().enumerate() {
        let wr = if imm.is_none() {
            UcRequest::Send {
                data: vec![1; 300].into(),
                imm,
            }
        } else {
            UcRequest::Write {
                data: vec![2; 8].into(),
                va: VA,
                rkey: RKEY,
                imm,
            }
        };
        us.post(i as u64, wr);
    }
    while let Some(p) = us.poll_tx() {
        uc.on_packet(&p);
    }
    assert_eq!(uc.no_buffer, 2, "the send and the write with immediate");
    assert!(uc.poll_completion().is_none());
    assert_eq!(
        &uc.memory().bytes(RKEY).unwrap()[..8],
        &[0; 8],
        "the write with immediate left no bytes without a receive"
    );

    let mut ud = UdReceiver::with_srq(0x21, 0x1111, srq.clone());
    let mut ds = UdSender::new(0x33, 256).unwrap();
    let dest = UdDest {
        qpn: 0x21,
        qkey: 0x1111,
    };
    ud.on_packet(&ds.send(dest, b"lost", None).unwrap());
    assert_eq!(ud.no_buffer, 1);
    // A message too long for the receive leaves it in the SRQ, first in line.
    srq.post_recv(8, 2).unwrap();
    srq.post_recv(9, 64).unwrap();
    assert_eq!(srq.post_recv(10, 64), Err(RecvError::SrqFull { max_wr: 2 }));
    ud.on_packet(&ds.send(dest, b"long", None).unwrap());
    assert_eq!((ud.too_long, srq.len()), (1, 2));
    ud.on_packet(&ds.send(dest, b"ok", None).unwrap());
    assert_eq!(
        ud.poll_completion().unwrap().wr_id,
        8,
        "wr 8 was still first"
    );
}

#[test]
fn the_srq_limit_raises_one_event_when_a_take_leaves_fewer() {
    let srq = Srq::new(16);
    for id in 0..5 {
        srq.post_recv(id, 64).unwrap();
    }
    srq.set_limit(3);
    assert_eq!(srq.limit(), 3);
    let mut rc = Responder::with_srq(params(), memory(64), srq.clone());
    rc.on_packet(&send(100, b"a")); // 4 left
    rc.on_packet(&send(101, b"b")); // 3 left: not fewer than 3
    assert!(!srq.take_limit_event());
    rc.on_packet(&send(102, b"c")); // 2 left
    assert!(srq.take_limit_event(), "raised");
    assert!(!srq.take_limit_event(), "once");
    assert_eq!((srq.limit(), srq.limit_events()), (0, 1), "and disarmed");
    rc.on_packet(&send(103, b"d")); // 1 left, disarmed: nothing
    assert!(!srq.take_limit_event());
    srq.set_limit(2); // re-armed below the count: the next take raises it
    rc.on_packet(&send(104, b"e"));
    assert!(srq.take_limit_event());
    assert_eq!(srq.limit_events(), 2);
}

fn bad_write(psn: u32) -> Pkt {
    let reth = Reth {
        va: VA,
        rkey: RKEY ^ 0xff,
        dma_len: 4,
    };
    let ext = ExtHeaders {
        reth: Some(reth),
        ..ExtHeaders::default()
    };
    request(Op::WriteOnly, psn, ext, vec![0; 4], true)
}

#[test]
fn the_error_state_flushes_posted_receives() {
    let mut r = Responder::new(params(), memory(64));
    for id in 1..=3 {
        r.post_recv(id, 1024).unwrap();
    }
    r.on_packet(&send(100, b"done"));
    // A send of several packets holds receive 2 when a packet breaks the sequence rules
    // (a WRITE inside a SEND): NAK invalid request, receive 2 completes with that error,
    // receive 3 is flushed.
    let first = request(
        Op::SendFirst,
        101,
        ExtHeaders::default(),
        vec![7; 256],
        false,
    );
    r.on_packet(&first);
    r.on_packet(&bad_write(102));
    let out = drain(&mut r);
    let last = out.last().unwrap();
    assert_eq!(
        last.ext.aeth.unwrap().kind(),
        Syndrome::Nak(NakCode::InvalidRequest)
    );
    assert!(r.is_error());
    let got: Vec<(u64, Status)> = std::iter::from_fn(|| r.poll_completion())
        .map(|c| (c.wr_id, c.status))
        .collect();
    assert_eq!(
        got,
        [
            (1, Status::Success),
            (2, Status::RemoteInvalidRequest),
            (3, Status::Flushed)
        ]
    );
    // A receive posted in the error state is flushed at once; packets are dropped.
    r.post_recv(4, 64).unwrap();
    assert_eq!(
        r.poll_completion().map(|c| (c.wr_id, c.status, c.byte_len)),
        Some((4, Status::Flushed, 0))
    );
    r.on_packet(&send(103, b"late"));
    assert_eq!((drain(&mut r).len(), r.dropped), (0, 1));

    // A bad R_Key with receives posted: all flushed (no receive was in use).
    let mut r = Responder::new(params(), memory(64));
    r.post_recv(1, 64).unwrap();
    r.post_recv(2, 64).unwrap();
    r.on_packet(&bad_write(100));
    let got: Vec<_> = std::iter::from_fn(|| r.poll_completion())
        .map(|c| (c.wr_id, c.status))
        .collect();
    assert_eq!(got, [(1, Status::Flushed), (2, Status::Flushed)]);
}

#[test]
fn set_error_flushes_own_receives_but_leaves_the_srqs() {
    let mut r = Responder::new(params(), memory(64));
    r.post_recv(1, 64).unwrap();
    r.set_error();
    assert_eq!(
        r.poll_completion().map(|c| (c.wr_id, c.status)),
        Some((1, Status::Flushed))
    );
    assert!(r.is_error());

    let srq = Srq::new(4);
    for id in 1..=3 {
        srq.post_recv(id, 1024).unwrap();
    }
    let mut a = Responder::with_srq(params(), memory(64), srq.clone());
    let mut b = Responder::with_srq(params(), memory(64), srq.clone());
    // a's send of several packets holds receive 1 when a is moved to the error state.
    a.on_packet(&request(
        Op::SendFirst,
        100,
        ExtHeaders::default(),
        vec![1; 256],
        false,
    ));
    a.set_error();
    assert_eq!(
        a.poll_completion().map(|c| (c.wr_id, c.status)),
        Some((1, Status::Flushed))
    );
    assert!(
        a.poll_completion().is_none(),
        "the SRQ's receives are not a's"
    );
    assert_eq!(srq.len(), 2);
    assert_eq!(a.post_recv(5, 64), Err(RecvError::HasSrq));
    b.on_packet(&send(100, b"b"));
    assert_eq!(b.poll_completion().unwrap().wr_id, 2);
}
