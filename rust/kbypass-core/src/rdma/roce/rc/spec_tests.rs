//! SEND with invalidate, and the read/atomic limits (`max_rd_atomic`,
//! `max_dest_rd_atomic`).

use super::super::wire::{AtomicEth, ExtHeaders, NakCode, Op, Reth, Syndrome};
use super::sim::*;
use super::*;

/// A memory window's R_Key in the tests' tables: a peer may invalidate it.
const MW: u32 = 0x0300_0011;
const MW_VA: u64 = 0x7f20_0000_0000;

fn with_window(len: usize) -> MemoryTable {
    let mut m = memory(len);
    m.register(MW, MW_VA, 256, RemoteAccess::ALL);
    assert!(m.allow_remote_invalidate(MW));
    m
}

#[test]
fn send_with_invalidate_segments_with_the_ieth_on_its_last_packet() {
    let mut q = Requester::new(RcParams {
        mtu: 256,
        ..RcParams::default()
    });
    let wr = |len| WorkRequest::SendInv {
        data: vec![9; len].into(),
        invalidate_rkey: MW,
    };
    q.post(1, wr(600));
    q.post(2, wr(10));
    let pkts: Vec<Pkt> = std::iter::from_fn(|| q.poll_tx(0)).collect();
    let ops: Vec<Op> = pkts.iter().map(|p| p.bth.opcode.op()).collect();
    assert_eq!(
        ops,
        [
            Op::SendFirst,
            Op::SendMiddle,
            Op::SendLastInv,
            Op::SendOnlyInv
        ]
    );
    let ieths: Vec<Option<u32>> = pkts.iter().map(|p| p.ext.ieth).collect();
    assert_eq!(ieths, [None, None, Some(MW), Some(MW)]);
    assert_eq!(pkts[2].payload.len(), 600 - 512);
}

#[test]
fn send_with_invalidate_invalidates_the_key_end_to_end() {
    let p = RcParams {
        mtu: 256,
        ..RcParams::default()
    };
    let mut pair = Pair::new(p, 7, CLEAN, with_window(4096));
    pair.resp.post_recv(1, 1024).unwrap();
    pair.req.post(
        1,
        WorkRequest::SendInv {
            data: vec![3; 700].into(),
            invalidate_rkey: MW,
        },
    );
    let done = pair.run(1_000_000_000);
    assert_eq!(done[0].status, Status::Success);
    let c = pair.resp.poll_completion().unwrap();
    assert_eq!(
        (c.status, c.byte_len, c.invalidated_rkey),
        (Status::Success, 700, Some(MW))
    );
    assert!(!pair.resp.memory().is_valid(MW));
    assert!(pair.resp.memory().is_valid(RKEY));
    // The invalidated key no longer grants remote access.
    pair.req.post(
        2,
        WorkRequest::Write {
            data: vec![1; 8].into(),
            va: MW_VA,
            rkey: MW,
            imm: None,
        },
    );
    let done = pair.run(2_000_000_000);
    assert_eq!(done[0].status, Status::RemoteAccessError);
}

fn send_inv(psn: u32, rkey: u32) -> Pkt {
    let ext = ExtHeaders {
        ieth: Some(rkey),
        ..ExtHeaders::default()
    };
    request(Op::SendOnlyInv, psn, ext, vec![5; 32], true)
}

#[test]
fn invalidating_a_key_that_may_not_be_is_class_j_as_rxe_answers() {
    for key in [RKEY, 0xdead_beef] {
        let p = RcParams {
            dest_qp: 2,
            recv_psn: 100,
            ..RcParams::default()
        };
        let mut r = Responder::new(p, with_window(64));
        for id in 1..=3 {
            r.post_recv(id, 256).unwrap();
        }
        let plain = request(Op::SendOnly, 100, ExtHeaders::default(), vec![1; 32], true);
        r.on_packet(&plain);
        r.on_packet(&send_inv(101, key));
        // ACKed like any request, at its PSN, the MSN not counting it; then nothing.
        r.on_packet(&request(
            Op::SendOnly,
            102,
            ExtHeaders::default(),
            vec![2; 32],
            true,
        ));
        let out = drain(&mut r);
        let acks: Vec<(u32, Syndrome, u32)> = out
            .iter()
            .map(|a| {
                let aeth = a.ext.aeth.unwrap();
                (a.bth.psn, aeth.kind(), aeth.msn)
            })
            .collect();
        assert_eq!(
            acks,
            [(101, Syndrome::Ack { credits: 31 }, 1)],
            "key {key:#x}"
        );
        let got: Vec<_> = std::iter::from_fn(|| r.poll_completion())
            .map(|c| (c.wr_id, c.status, c.invalidated_rkey))
            .collect();
        assert_eq!(
            got,
            [
                (1, Status::Success, None),
                (2, Status::RemoteInvalidRequest, None),
                (3, Status::Flushed, None)
            ]
        );
        assert!(r.is_error());
        assert_eq!((r.refused, r.dropped), (1, 1));
        assert!(r.memory().is_valid(RKEY), "the MR stays valid");
    }
    let mut m = with_window(64);
    assert_eq!(
        m.invalidate(RKEY),
        Err(InvalidateError::NotInvalidatable(RKEY))
    );
    assert_eq!(m.invalidate(5), Err(InvalidateError::UnknownKey(5)));
    assert!(!m.allow_remote_invalidate(5));
    assert_eq!((m.invalidate(MW), m.invalidate(MW)), (Ok(()), Ok(())));
}

fn read(psn: u32, va: u64, len: u32) -> Pkt {
    let ext = ExtHeaders {
        reth: Some(Reth {
            va,
            rkey: RKEY,
            dma_len: len,
        }),
        ..ExtHeaders::default()
    };
    request(Op::ReadRequest, psn, ext, Vec::new(), true)
}

fn fetch_add(psn: u32, add: u64) -> Pkt {
    let ext = ExtHeaders {
        atomic: Some(AtomicEth {
            va: COUNTER_VA,
            rkey: COUNTER,
            swap_add: add,
            compare: 0,
        }),
        ..ExtHeaders::default()
    };
    request(Op::FetchAdd, psn, ext, Vec::new(), true)
}

#[test]
fn the_requester_keeps_at_most_max_rd_atomic_reads_and_atomics_outstanding() {
    let p = RcParams {
        mtu: 1024,
        max_rd_atomic: 2,
        ..RcParams::default()
    };
    let mut q = Requester::new(p);
    let rd = |va| WorkRequest::Read {
        va,
        rkey: RKEY,
        len: 8,
    };
    q.post(1, rd(VA));
    q.post(
        2,
        WorkRequest::FetchAdd {
            va: COUNTER_VA,
            rkey: COUNTER,
            add: 1,
        },
    );
    q.post(3, rd(VA + 8));
    q.post(
        4,
        WorkRequest::Send {
            data: vec![1].into(),
            imm: None,
        },
    );
    let sent: Vec<Pkt> = std::iter::from_fn(|| q.poll_tx(0)).collect();
    assert_eq!(sent.len(), 2, "the third waits, and the send behind it");
    assert_eq!(q.rd_atomic_outstanding(), 2);
    assert!(q.rd_atomic_waits > 0);
    // The responder answers the first read: one credit back.
    let mut r = Responder::new(RcParams { recv_psn: 0, ..p }, memory(64));
    r.post_recv(1, 64).unwrap();
    r.on_packet(&sent[0]);
    for resp in drain(&mut r) {
        q.on_packet(1, &resp);
    }
    assert_eq!(q.poll_completion().unwrap().wr_id, 1);
    let more: Vec<Pkt> = std::iter::from_fn(|| q.poll_tx(1)).collect();
    let ops: Vec<Op> = more.iter().map(|p| p.bth.opcode.op()).collect();
    assert_eq!(ops, [Op::ReadRequest, Op::SendOnly]);
    // A retransmission is not a new read: it needs no credit.
    q.tick(1 + p.timeout_ns());
    let again: Vec<Pkt> = std::iter::from_fn(|| q.poll_tx(2 + p.timeout_ns())).collect();
    assert_eq!(again.len(), 3, "FETCH_ADD, READ and SEND go again");
    assert_eq!(again[0].bth.opcode.op(), Op::FetchAdd);
}

#[test]
fn max_rd_atomic_zero_refuses_reads_and_atomics_locally() {
    let mut q = Requester::new(RcParams {
        max_rd_atomic: 0,
        ..RcParams::default()
    });
    q.post(
        1,
        WorkRequest::Send {
            data: vec![1].into(),
            imm: None,
        },
    );
    q.post(
        2,
        WorkRequest::Read {
            va: VA,
            rkey: RKEY,
            len: 4,
        },
    );
    let got: Vec<_> = std::iter::from_fn(|| q.poll_completion())
        .map(|c| (c.wr_id, c.status))
        .collect();
    assert_eq!(
        got,
        [(1, Status::Flushed), (2, Status::LocalQpOperationError)]
    );
    assert!(q.is_error() && q.poll_tx(0).is_none());
}

#[test]
fn max_dest_rd_atomic_zero_naks_reads_and_atomics_as_invalid_requests() {
    for req in [read(100, VA, 8), fetch_add(100, 1)] {
        let p = RcParams {
            recv_psn: 100,
            max_dest_rd_atomic: 0,
            ..RcParams::default()
        };
        let mut r = Responder::new(p, memory(64));
        r.on_packet(&req);
        let out = drain(&mut r);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].ext.aeth.unwrap().kind(),
            Syndrome::Nak(NakCode::InvalidRequest)
        );
        assert!(r.is_error());
        assert_eq!(&r.memory().bytes(COUNTER).unwrap()[..8], &[0; 8]);
    }
}

#[test]
fn duplicates_are_answered_only_from_held_resources() {
    let p = RcParams {
        recv_psn: 100,
        mtu: 1024,
        max_dest_rd_atomic: 2,
        ..RcParams::default()
    };
    let mut r = Responder::new(p, memory(4096));
    r.on_packet(&fetch_add(100, 1));
    r.on_packet(&read(101, VA, 2048)); // PSNs 101 and 102
    r.on_packet(&fetch_add(103, 10)); // recycles the resource of PSN 100
    assert_eq!(drain(&mut r).len(), 4);
    // The atomic at 100 is no longer held: dropped. The one at 103 replays 1.
    r.on_packet(&fetch_add(100, 1));
    r.on_packet(&fetch_add(103, 10));
    let out = drain(&mut r);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].bth.psn, out[0].ext.atomic_ack), (103, Some(1)));
    assert_eq!(
        &r.memory().bytes(COUNTER).unwrap()[..8],
        &11u64.to_ne_bytes(),
        "each added once"
    );
    // A read re-requested from its second response (address advanced) is answered; one
    // outside what the resource named (longer, or another key) is dropped.
    r.on_packet(&read(102, VA + 1024, 1024));
    let out = drain(&mut r);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].bth.opcode.op(), out[0].bth.psn, out[0].payload.len()),
        (Op::ReadResponseOnly, 102, 1024)
    );
    r.on_packet(&read(102, VA + 1024, 2048));
    let mut other = read(101, VA, 2048);
    other.ext.reth.as_mut().unwrap().rkey = COUNTER;
    r.on_packet(&other);
    assert!(drain(&mut r).is_empty());
    assert_eq!((r.duplicates, r.dropped), (5, 3));
}

#[test]
fn lengths_and_qp_access_flags_are_checked_as_rxe_does() {
    let p = RcParams {
        recv_psn: 100,
        mtu: 256,
        ..RcParams::default()
    };
    let reth = |len| {
        Some(Reth {
            va: VA,
            rkey: RKEY,
            dma_len: len,
        })
    };
    let write = |len: u32, payload: usize| {
        let ext = ExtHeaders {
            reth: reth(len),
            ..ExtHeaders::default()
        };
        request(Op::WriteOnly, 100, ext, vec![1; payload], true)
    };
    let send_only = request(Op::SendOnly, 100, ExtHeaders::default(), vec![1; 260], true);
    let cases: Vec<(RemoteAccess, Vec<Pkt>)> = vec![
        // A SEND or WRITE only packet over one MTU (however large the buffer or region).
        (RemoteAccess::ALL, vec![send_only]),
        (RemoteAccess::ALL, vec![write(300, 300)]),
        // An empty SEND last.
        (
            RemoteAccess::ALL,
            vec![
                request(
                    Op::SendFirst,
                    100,
                    ExtHeaders::default(),
                    vec![1; 256],
                    false,
                ),
                request(Op::SendLast, 101, ExtHeaders::default(), Vec::new(), true),
            ],
        ),
        // Operations the QP's access flags do not allow, on a region that would.
        (
            RemoteAccess {
                write: false,
                ..RemoteAccess::ALL
            },
            vec![write(8, 8)],
        ),
        (
            RemoteAccess {
                read: false,
                ..RemoteAccess::ALL
            },
            vec![read(100, VA, 8)],
        ),
        (
            RemoteAccess {
                atomic: false,
                ..RemoteAccess::ALL
            },
            vec![fetch_add(100, 1)],
        ),
    ];
    for (i, (qp_access, pkts)) in cases.into_iter().enumerate() {
        let mut r = Responder::new(RcParams { qp_access, ..p }, memory(4096));
        r.post_recv(1, 8192).unwrap();
        for q in &pkts {
            r.on_packet(q);
        }
        let out = drain(&mut r);
        let last = out.last().unwrap();
        assert_eq!(
            last.ext.aeth.unwrap().kind(),
            Syndrome::Nak(NakCode::InvalidRequest),
            "case {i}"
        );
        assert_eq!(last.bth.psn, pkts.last().unwrap().bth.psn, "case {i}");
        assert!(r.is_error(), "case {i}");
        assert_eq!(
            r.memory().bytes(RKEY).unwrap()[0],
            0,
            "case {i}: nothing written"
        );
        assert_eq!(
            &r.memory().bytes(COUNTER).unwrap()[..8],
            &[0; 8],
            "case {i}"
        );
    }
    // UC drops what RC NAKs: a SEND only over one MTU.
    let mut uc = super::super::uc::UcReceiver::new(0, 256, memory(64));
    uc.post_recv(1, 8192).unwrap();
    let mut big = request(Op::SendOnly, 0, ExtHeaders::default(), vec![1; 260], false);
    big.bth.opcode =
        super::super::wire::Opcode::new(super::super::wire::Transport::Uc, Op::SendOnly).unwrap();
    uc.on_packet(&big);
    assert_eq!((uc.dropped, uc.poll_completion()), (1, None));
}
