//! The RC state machines one packet at a time: segmentation, PSN arithmetic, the
//! responder's duplicate and sequence handling, remote access checks, hostile input.

use std::collections::VecDeque;

use super::super::wire::{
    Aeth, AtomicEth, Bth, ExtHeaders, NakCode, Op, Opcode, Syndrome, Transport,
};
use super::sim::*;
use super::*;

#[test]
fn remote_access_is_checked_against_key_bounds_and_rights() {
    let mut mem = memory(4096);
    mem.register(
        0x77,
        0x1000,
        64,
        RemoteAccess {
            write: false,
            read: true,
            atomic: false,
        },
    );
    let cases: Vec<WorkRequest> = vec![
        WorkRequest::Write {
            data: vec![1; 10].into(),
            va: VA,
            rkey: 0xdead,
            imm: None,
        },
        WorkRequest::Write {
            data: vec![1; 10].into(),
            va: VA + 4090,
            rkey: RKEY,
            imm: None,
        },
        WorkRequest::Write {
            data: vec![1; 10].into(),
            va: VA - 1,
            rkey: RKEY,
            imm: None,
        },
        WorkRequest::Write {
            data: vec![1; 10].into(),
            va: 0x1000,
            rkey: 0x77,
            imm: None,
        },
        WorkRequest::Read {
            va: 0x1000,
            rkey: 0x77,
            len: 65,
        },
        WorkRequest::Read {
            va: u64::MAX - 3,
            rkey: RKEY,
            len: 8,
        },
        WorkRequest::FetchAdd {
            va: 0x1000,
            rkey: 0x77,
            add: 1,
        },
    ];
    for (i, wr) in cases.into_iter().enumerate() {
        let mut m = MemoryTable::new();
        m.register(RKEY, VA, 4096, RemoteAccess::ALL);
        m.register(
            0x77,
            0x1000,
            64,
            RemoteAccess {
                write: false,
                read: true,
                atomic: false,
            },
        );
        let mut pair = Pair::new(
            RcParams {
                dest_qp: 5,
                ..RcParams::default()
            },
            9,
            CLEAN,
            m,
        );
        pair.req.post(1, wr.clone());
        pair.req.post(
            2,
            WorkRequest::Read {
                va: VA,
                rkey: RKEY,
                len: 4,
            },
        );
        let done = pair.run(1_000_000_000);
        let st: Vec<Status> = done.iter().map(|c| c.status).collect();
        assert_eq!(
            st,
            [Status::RemoteAccessError, Status::Flushed],
            "case {i}: {wr:?}"
        );
        assert!(pair.resp.is_error() && pair.resp.refused == 1);
        assert!(
            pair.resp
                .memory()
                .bytes(RKEY)
                .unwrap()
                .iter()
                .all(|b| *b == 0),
            "nothing written"
        );
    }
    // Zero-length transfers touch no memory and need no key; inside the rights and bounds
    // all of it works.
    let mut pair = Pair::new(
        RcParams {
            dest_qp: 5,
            ..RcParams::default()
        },
        9,
        CLEAN,
        mem,
    );
    pair.req.post(
        1,
        WorkRequest::Read {
            va: 0x1000,
            rkey: 0x77,
            len: 64,
        },
    );
    pair.req.post(
        2,
        WorkRequest::Write {
            data: vec![3; 6].into(),
            va: VA + 4090,
            rkey: RKEY,
            imm: None,
        },
    );
    pair.req.post(
        3,
        WorkRequest::Write {
            data: vec![].into(),
            va: 0,
            rkey: 0xbad,
            imm: None,
        },
    );
    pair.req.post(
        4,
        WorkRequest::Read {
            va: 0,
            rkey: 0xbad,
            len: 0,
        },
    );
    let done = pair.run(1_000_000_000);
    assert_eq!(done.len(), 4);
    assert!(done.iter().all(|c| c.status == Status::Success));
}

#[test]
fn responder_answers_duplicate_atomics_from_its_cache_and_naks_a_gap_once() {
    let p = RcParams {
        dest_qp: 2,
        recv_psn: 100,
        ..RcParams::default()
    };
    let mut r = Responder::new(p, memory(64));
    let fadd = request(
        Op::FetchAdd,
        100,
        ExtHeaders {
            atomic: Some(AtomicEth {
                va: COUNTER_VA,
                rkey: COUNTER,
                swap_add: 5,
                compare: 0,
            }),
            ..ExtHeaders::default()
        },
        Vec::new(),
        true,
    );
    r.on_packet(&fadd);
    r.on_packet(&fadd);
    let out = drain(&mut r);
    assert_eq!(out.len(), 2);
    for a in &out {
        assert_eq!(a.bth.opcode.op(), Op::AtomicAcknowledge);
        assert_eq!((a.bth.psn, a.ext.atomic_ack), (100, Some(0)));
    }
    assert_eq!(
        &r.memory().bytes(COUNTER).unwrap()[..8],
        &5u64.to_ne_bytes(),
        "added once"
    );
    assert_eq!(r.duplicates, 1);
    // PSN 103 and 104 while 101 is expected: one NAK (sequence error, PSN 101), then the gap
    // filled: an ACK coalescing 101 and 102.
    let send = |psn, last| {
        let op = if last { Op::SendOnly } else { Op::WriteOnly };
        let ext = if last {
            ExtHeaders::default()
        } else {
            ExtHeaders {
                reth: Some(super::super::wire::Reth {
                    va: VA,
                    rkey: RKEY,
                    dma_len: 4,
                }),
                ..ExtHeaders::default()
            }
        };
        request(op, psn, ext, vec![1, 2, 3, 4], true)
    };
    r.post_recv(1, 16).unwrap();
    r.on_packet(&send(103, false));
    r.on_packet(&send(104, false));
    let out = drain(&mut r);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].ext.aeth.unwrap().kind(),
        Syndrome::Nak(NakCode::PsnSequenceError)
    );
    assert_eq!(out[0].bth.psn, 101);
    r.on_packet(&send(101, false));
    r.on_packet(&send(102, true));
    let out = drain(&mut r);
    assert_eq!(out.len(), 1, "one coalesced ACK");
    assert_eq!(
        out[0].ext.aeth,
        Some(Aeth::new(Syndrome::Ack { credits: 31 }, 3))
    );
    assert_eq!(out[0].bth.psn, 102);
    assert_eq!(r.poll_completion().unwrap().data, [1, 2, 3, 4]);
}

#[test]
fn psn_arithmetic_wraps_at_24_bits() {
    assert_eq!(psn_add(0xff_ffff, 1), 0);
    assert_eq!(psn_diff(0, 0xff_ffff), 1);
    assert_eq!(psn_diff(0xff_ffff, 0), -1);
    assert_eq!(psn_diff(5, 5), 0);
    assert_eq!(packets_for(0, 256), 1);
    assert_eq!(packets_for(257, 256), 2);
    assert_eq!(rnr_timer_ns(0), 655_360_000);
    assert_eq!(rnr_timer_ns(1), 10_000);
    assert_eq!(rnr_timer_ns(31), 491_520_000);
    assert_eq!(
        RcParams {
            timeout: 14,
            ..RcParams::default()
        }
        .timeout_ns(),
        67_108_864
    );
}

#[test]
fn requester_segments_by_mtu_with_the_right_opcodes() {
    for mtu in [256usize, 512, 1024, 2048, 4096] {
        let mut q = Requester::new(RcParams {
            mtu,
            window: 1000,
            ..RcParams::default()
        });
        let len = 3 * mtu + 1;
        q.post(
            1,
            WorkRequest::Write {
                data: vec![7; len].into(),
                va: 0x10,
                rkey: 3,
                imm: Some(4),
            },
        );
        q.post(
            2,
            WorkRequest::Read {
                va: 0x20,
                rkey: 3,
                len: 2 * mtu as u32,
            },
        );
        q.post(
            3,
            WorkRequest::Send {
                data: vec![].into(),
                imm: None,
            },
        );
        let out: VecDeque<Pkt> = std::iter::from_fn(|| q.poll_tx(0)).collect();
        let ops: Vec<Op> = out.iter().map(|p| p.bth.opcode.op()).collect();
        assert_eq!(
            ops,
            [
                Op::WriteFirst,
                Op::WriteMiddle,
                Op::WriteMiddle,
                Op::WriteLastImm,
                Op::ReadRequest,
                Op::SendOnly
            ]
        );
        let psns: Vec<u32> = out.iter().map(|p| p.bth.psn).collect();
        assert_eq!(psns, [0, 1, 2, 3, 4, 6], "a read takes a PSN per response");
        assert!(out.iter().take(3).all(|p| p.payload.len() == mtu));
        assert_eq!(out[3].payload.len(), 1);
        assert_eq!(out[0].ext.reth.unwrap().dma_len as usize, len);
        assert!(out[3].bth.ack_req && out[5].bth.ack_req);
    }
}

/// Random packets — any RC opcode, headers with random fields, PSNs near and far, payloads
/// up to the MTU and beyond — never panic either side, and the responder's regions keep
/// their sizes.
#[test]
fn hostile_packets_never_panic_either_side() {
    use super::super::wire::{HeaderSet, Reth};
    const WINDOW: u32 = 0x0400_0001;
    let mut g = Rng(0x5eed_0bad);
    let ops: Vec<Opcode> = Opcode::all()
        .filter(|o| o.transport() == Transport::Rc)
        .collect();
    for round in 0..40 {
        // Odd rounds: receives from an SRQ, a key a SEND with invalidate may invalidate, and
        // few (or no) read/atomic credits and resources.
        let p = RcParams {
            dest_qp: 1,
            recv_psn: 1000,
            send_psn: 1000,
            mtu: 256,
            max_rd_atomic: if round % 2 == 1 {
                (round % 3) as u8
            } else {
                16
            },
            max_dest_rd_atomic: if round % 2 == 1 {
                (round % 4) as u8
            } else {
                16
            },
            ..RcParams::default()
        };
        let mut mem = memory(4096);
        mem.register(WINDOW, VA + (1 << 20), 512, RemoteAccess::ALL);
        mem.allow_remote_invalidate(WINDOW);
        let srq = Srq::new(4);
        let mut r = if round % 2 == 1 {
            srq.post_recv(1, 300).unwrap();
            srq.post_recv(2, 30).unwrap();
            Responder::with_srq(p, mem, srq.clone())
        } else {
            let mut r = Responder::new(p, mem);
            r.post_recv(1, 300).unwrap();
            r
        };
        let mut q = Requester::new(p);
        q.post(
            1,
            WorkRequest::Read {
                va: VA,
                rkey: RKEY,
                len: 600,
            },
        );
        q.post(
            2,
            WorkRequest::FetchAdd {
                va: COUNTER_VA,
                rkey: COUNTER,
                add: 1,
            },
        );
        q.post(
            3,
            WorkRequest::Send {
                data: vec![1; 700].into(),
                imm: None,
            },
        );
        while q.poll_tx(0).is_some() {}
        for i in 0..500u64 {
            let opcode = ops[g.below(ops.len() as u64) as usize];
            let near = [VA, VA + 4000, COUNTER_VA, COUNTER_VA + 8, g.next()];
            let va = near[g.below(near.len() as u64) as usize];
            let rkey = match g.below(3) {
                0 | 1 => RKEY,
                _ => COUNTER,
            };
            let dma_len = if g.chance(80) {
                g.below(5000) as u32
            } else {
                g.next() as u32
            };
            let h = opcode.headers();
            let mut ext = ExtHeaders::default();
            if h.contains(HeaderSet::RETH) {
                ext.reth = Some(Reth { va, rkey, dma_len });
            }
            if h.contains(HeaderSet::ATOMIC_ETH) {
                ext.atomic = Some(AtomicEth {
                    va,
                    rkey,
                    swap_add: g.next(),
                    compare: g.below(3),
                });
            }
            if h.contains(HeaderSet::AETH) {
                ext.aeth = Some(Aeth {
                    syndrome: g.next() as u8,
                    msn: g.below(1 << 24) as u32,
                });
            }
            if h.contains(HeaderSet::ATOMIC_ACK_ETH) {
                ext.atomic_ack = Some(g.next());
            }
            if h.contains(HeaderSet::IMM_DT) {
                ext.imm = Some(g.next() as u32);
            }
            if h.contains(HeaderSet::IETH) {
                ext.ieth = Some([RKEY, WINDOW, g.next() as u32][g.below(3) as usize]);
            }
            if g.chance(5) {
                ext.imm = Some(1); // headers that may not be the opcode's
            }
            let psn = if g.chance(80) {
                995 + g.below(12) as u32
            } else {
                g.below(1 << 24) as u32
            };
            let len = if g.chance(80) {
                g.below(300)
            } else {
                g.below(5000)
            } as usize;
            let mut bth = Bth::new(opcode, 1, psn);
            bth.ack_req = g.chance(50);
            let pkt = Pkt {
                bth,
                ext,
                payload: vec![0xee; len].into(),
            };
            r.on_packet(&pkt);
            while r.poll_tx().is_some() {}
            while r.poll_completion().is_some() {}
            if g.chance(2) {
                let _ = r.post_recv(i, g.below(600) as usize);
                let _ = srq.post_recv(i, g.below(600) as usize);
            }
            q.on_packet(i * 1000, &pkt);
            q.tick(i * 1000);
            while q.poll_tx(i * 1000).is_some() {}
        }
        let mem = r.memory();
        assert_eq!(mem.bytes(RKEY).unwrap().len(), 4096, "round {round}");
        assert_eq!(mem.bytes(COUNTER).unwrap().len(), 64);
        assert!(r.dropped + r.refused + r.duplicates + r.out_of_sequence > 0);
    }
}

#[test]
fn a_duplicate_read_replaces_the_responses_still_queued_for_its_psns() {
    // A requester re-asks from each gap it sees; answered while the first answer is still
    // queued, each re-ask must not add a second stream of the same PSNs.
    let p = RcParams {
        dest_qp: 2,
        recv_psn: 100,
        ..RcParams::default()
    };
    let mtu = p.mtu;
    let mut r = Responder::new(p, memory(16 * mtu));
    let read = |psn: u32, k: usize| {
        let ext = ExtHeaders {
            reth: Some(super::super::wire::Reth {
                va: VA + (k * mtu) as u64,
                rkey: RKEY,
                dma_len: ((10 - k) * mtu) as u32,
            }),
            ..ExtHeaders::default()
        };
        request(Op::ReadRequest, psn, ext, Vec::new(), true)
    };
    let bytes: Vec<u8> = (0..16 * mtu).map(|i| (i * 7 / 3) as u8).collect();
    r.memory_mut().write(RKEY, VA, &bytes).unwrap();
    r.on_packet(&read(100, 0));
    r.on_packet(&read(103, 3));
    r.on_packet(&read(105, 5));
    let out = drain(&mut r);
    let psns: Vec<u32> = out.iter().map(|p| p.bth.psn).collect();
    assert_eq!(
        psns,
        (100..110).collect::<Vec<_>>(),
        "each PSN once, in order"
    );
    for (k, p) in out.iter().enumerate() {
        assert_eq!(
            p.payload,
            bytes[k * mtu..(k + 1) * mtu],
            "PSN {}",
            p.bth.psn
        );
    }
    assert_eq!(r.duplicates, 2);
    // Once sent, a re-ask is answered again from its PSN on.
    r.on_packet(&read(107, 7));
    let psns: Vec<u32> = drain(&mut r).iter().map(|p| p.bth.psn).collect();
    assert_eq!(psns, [107, 108, 109]);
    // A duplicate that claims more packets than its read had takes nothing queued for the
    // next read (PSNs 110 and 111) away.
    let mut next = read(110, 0);
    next.ext.reth.as_mut().unwrap().dma_len = 2 * mtu as u32;
    r.on_packet(&next);
    let mut long = read(103, 0);
    long.bth.psn = 103;
    r.on_packet(&long);
    let out = drain(&mut r);
    assert_eq!((out[0].bth.psn, out[1].bth.psn), (110, 111));
    assert_eq!(out[0].payload, bytes[..mtu]);
}
