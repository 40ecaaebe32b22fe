//! Requester and responder over the bench's lossy link: data arrives intact whatever the
//! faults, and a peer that vanishes or never has a buffer ends in the right status.

use super::sim::*;
use super::*;
/// A seeded mix of sends, writes, reads and atomics, with what each must produce.
fn transfer(mtu: usize, f: Faults, seed: u64) -> (Pair, u64) {
    let p = RcParams {
        dest_qp: 0x22,
        send_psn: 0xff_ff00, // the run wraps the 24-bit PSN
        mtu,
        window: 64,
        timeout: 8,
        retry_cnt: 7,
        rnr_retry: 7,
        min_rnr_timer: 1,
        ..RcParams::default()
    };
    const MEM: usize = 1 << 20;
    let mut pair = Pair::new(p, seed, f, memory(MEM));
    let mut g = Rng(seed ^ 0xabcdef);
    let mut shadow = vec![0u8; MEM];
    let mut written: Vec<(usize, usize)> = Vec::new();
    let mut next_free = 0usize;
    let mut counter = 0u64;
    let mut expect: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut expect_recv: Vec<(Vec<u8>, Option<u32>, usize)> = Vec::new();
    for id in 0..60u64 {
        let kind = g.below(6);
        let wr = match kind {
            0 | 1 => {
                let len = g.below(12_000) as usize;
                let d = data(&mut g, len);
                let imm = g.chance(30).then(|| g.next() as u32);
                pair.resp.post_recv(1000 + id, 16_384).unwrap();
                expect_recv.push((d.clone(), imm, d.len()));
                expect.push((id, Vec::new()));
                WorkRequest::Send {
                    data: d.into(),
                    imm,
                }
            }
            2 | 3 => {
                let len = g.below(20_000) as usize;
                let d = data(&mut g, len);
                let off = next_free;
                next_free += len;
                shadow[off..off + len].copy_from_slice(&d);
                written.push((off, len));
                let imm = g.chance(25).then(|| g.next() as u32);
                if let Some(imm) = imm {
                    pair.resp.post_recv(1000 + id, 0).unwrap();
                    expect_recv.push((Vec::new(), Some(imm), len));
                }
                expect.push((id, Vec::new()));
                WorkRequest::Write {
                    data: d.into(),
                    va: VA + off as u64,
                    rkey: RKEY,
                    imm,
                }
            }
            4 if !written.is_empty() => {
                let (off, len) = written[g.below(written.len() as u64) as usize];
                let skip = g.below(len as u64 / 2 + 1) as usize;
                let n = len - skip;
                expect.push((id, shadow[off + skip..off + skip + n].to_vec()));
                WorkRequest::Read {
                    va: VA + (off + skip) as u64,
                    rkey: RKEY,
                    len: n as u32,
                }
            }
            _ => {
                let orig = counter;
                let wr = if g.chance(50) {
                    let add = g.below(1000);
                    counter = counter.wrapping_add(add);
                    WorkRequest::FetchAdd {
                        va: COUNTER_VA + 8,
                        rkey: COUNTER,
                        add,
                    }
                } else {
                    let hit = g.chance(50);
                    let swap = g.next();
                    if hit {
                        counter = swap;
                    }
                    WorkRequest::CompareSwap {
                        va: COUNTER_VA + 8,
                        rkey: COUNTER,
                        compare: if hit { orig } else { orig ^ 1 },
                        swap,
                    }
                };
                expect.push((id, orig.to_ne_bytes().to_vec()));
                wr
            }
        };
        pair.req.post(id, wr);
    }
    let done = pair.run(60_000_000_000);
    let got: Vec<(u64, Status, Vec<u8>)> = done
        .iter()
        .map(|c| (c.wr_id, c.status, c.data.clone()))
        .collect();
    let want: Vec<(u64, Status, Vec<u8>)> = expect
        .into_iter()
        .map(|(id, d)| (id, Status::Success, d))
        .collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "completion of work request {}", w.0);
    }
    let mut recvs = Vec::new();
    while let Some(c) = pair.resp.poll_completion() {
        recvs.push((c.data, c.imm, c.byte_len));
    }
    assert_eq!(recvs, expect_recv);
    assert_eq!(pair.resp.memory().bytes(RKEY).unwrap(), &shadow[..]);
    let word = &pair.resp.memory().bytes(COUNTER).unwrap()[8..16];
    assert_eq!(u64::from_ne_bytes(word.try_into().unwrap()), counter);
    assert!(!pair.req.is_error() && !pair.resp.is_error());
    let retransmits = pair.req.timeouts + pair.req.go_backs;
    (pair, retransmits)
}

#[test]
fn clean_link_transfers_without_retransmission() {
    for mtu in [256, 1024, 4096] {
        let (pair, retransmits) = transfer(mtu, CLEAN, 7);
        assert_eq!(retransmits, 0, "mtu {mtu}");
        assert_eq!(pair.resp.duplicates + pair.resp.out_of_sequence, 0);
    }
}

#[test]
fn loss_duplication_and_reordering_keep_data_intact() {
    let cases = [
        (
            256,
            Faults {
                loss: 1,
                dup: 1,
                reorder: 1,
            },
            11,
        ),
        (
            1024,
            Faults {
                loss: 1,
                dup: 0,
                reorder: 0,
            },
            12,
        ),
        (
            4096,
            Faults {
                loss: 5,
                dup: 2,
                reorder: 5,
            },
            13,
        ),
        (
            512,
            Faults {
                loss: 5,
                dup: 5,
                reorder: 10,
            },
            14,
        ),
        (
            2048,
            Faults {
                loss: 0,
                dup: 10,
                reorder: 0,
            },
            15,
        ),
        (
            1024,
            Faults {
                loss: 0,
                dup: 0,
                reorder: 20,
            },
            16,
        ),
    ];
    for (mtu, f, seed) in cases {
        let (pair, retransmits) = transfer(mtu, f, seed);
        if f.loss > 0 || f.reorder > 0 {
            assert!(
                retransmits > 0,
                "mtu {mtu} seed {seed}: faults but no retransmission"
            );
        }
        if f.dup > 0 {
            assert!(
                pair.resp.duplicates > 0 || pair.req.dropped > 0,
                "duplicates went unseen"
            );
        }
        eprintln!(
            "mtu {mtu} loss {}% dup {}% reorder {}%: {} frames sent, {} lost, {} timeouts, {} go-backs, {} duplicates answered, {} out of sequence",
            f.loss, f.dup, f.reorder, pair.fwd.sent + pair.back.sent, pair.fwd.lost + pair.back.lost,
            pair.req.timeouts, pair.req.go_backs, pair.resp.duplicates, pair.resp.out_of_sequence,
        );
    }
}

#[test]
fn a_vanished_peer_ends_in_retry_exceeded() {
    let p = RcParams {
        dest_qp: 5,
        timeout: 10,
        retry_cnt: 3,
        ..RcParams::default()
    };
    let mut pair = Pair::new(p, 3, CLEAN, memory(4096));
    pair.fwd.cut = true;
    pair.req.post(
        1,
        WorkRequest::Write {
            data: vec![1; 3000].into(),
            va: VA,
            rkey: RKEY,
            imm: None,
        },
    );
    pair.req.post(
        2,
        WorkRequest::Read {
            va: VA,
            rkey: RKEY,
            len: 8,
        },
    );
    let done = pair.run(1_000_000_000);
    let st: Vec<(u64, Status)> = done.iter().map(|c| (c.wr_id, c.status)).collect();
    assert_eq!(st, [(1, Status::RetryExceeded), (2, Status::Flushed)]);
    assert_eq!(pair.req.timeouts, 3);
    // The first send and three retransmissions, each waiting one timeout.
    let t = p.timeout_ns();
    assert!(
        pair.now >= 4 * t && pair.now < 4 * t + 100 * STEP,
        "{} ns",
        pair.now
    );
    assert!(pair.req.is_error());
    pair.req.post(
        3,
        WorkRequest::Send {
            data: vec![].into(),
            imm: None,
        },
    );
    assert_eq!(
        pair.req.poll_completion().map(|c| c.status),
        Some(Status::Flushed)
    );
}

#[test]
fn rnr_naks_are_retried_until_a_buffer_is_posted() {
    let p = RcParams {
        dest_qp: 5,
        rnr_retry: 7,
        min_rnr_timer: 1,
        ..RcParams::default()
    };
    let mut pair = Pair::new(p, 4, CLEAN, memory(4096));
    pair.req.post(
        1,
        WorkRequest::Send {
            data: b"hello".to_vec().into(),
            imm: Some(9),
        },
    );
    while pair.resp.rnr_naks < 3 {
        pair.step();
        assert!(pair.now < 10_000_000);
    }
    pair.resp.post_recv(77, 64).unwrap();
    let done = pair.run(100_000_000);
    assert_eq!(
        done.iter().map(|c| c.status).collect::<Vec<_>>(),
        [Status::Success]
    );
    assert!(pair.req.rnr_naks >= 3);
    let c = pair.resp.poll_completion().unwrap();
    assert_eq!((c.wr_id, &c.data[..], c.imm), (77, &b"hello"[..], Some(9)));
}

#[test]
fn rnr_retry_exhausted() {
    let p = RcParams {
        dest_qp: 5,
        rnr_retry: 2,
        min_rnr_timer: 1,
        ..RcParams::default()
    };
    let mut pair = Pair::new(p, 4, CLEAN, memory(4096));
    pair.req.post(
        1,
        WorkRequest::Send {
            data: vec![1; 10].into(),
            imm: None,
        },
    );
    let done = pair.run(100_000_000);
    assert_eq!(done[0].status, Status::RnrRetryExceeded);
    assert_eq!((pair.req.rnr_naks, pair.resp.rnr_naks), (3, 3));
}
