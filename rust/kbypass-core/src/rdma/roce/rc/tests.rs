//! Requester and responder over an in-memory link that carries real frames (built and
//! parsed, ICRC included) and loses, duplicates and reorders them from a seed.

use std::collections::VecDeque;

use super::super::wire::{
    Aeth, AtomicEth, Bth, ExtHeaders, Frame, FrameSpec, IpHeader, NakCode, Op, Opcode, Syndrome,
    Transport,
};
use super::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

/// Faults of one direction, in percent.
#[derive(Clone, Copy)]
struct Faults {
    loss: u64,
    dup: u64,
    reorder: u64,
}

const CLEAN: Faults = Faults {
    loss: 0,
    dup: 0,
    reorder: 0,
};

/// One direction of the link: frames in flight with their delivery times.
struct Link {
    rng: Rng,
    f: Faults,
    cut: bool,
    q: Vec<(u64, u64, Vec<u8>)>,
    seq: u64,
    sent: u64,
    lost: u64,
}

const LATENCY: u64 = 5_000;

impl Link {
    fn new(seed: u64, f: Faults) -> Self {
        Link {
            rng: Rng(seed | 1),
            f,
            cut: false,
            q: Vec::new(),
            seq: 0,
            sent: 0,
            lost: 0,
        }
    }

    fn send(&mut self, now: u64, p: &Pkt) {
        let spec = FrameSpec {
            eth_dst: [2, 0, 0, 0, 0, 2],
            eth_src: [2, 0, 0, 0, 0, 1],
            vlan_tci: None,
            ip: IpHeader::V4 {
                src: [198, 18, 0, 1],
                dst: [198, 18, 0, 2],
                tos: 0,
                ttl: 64,
                id: 0,
            },
            udp_src: 0xc000,
            bth: p.bth,
            ext: p.ext,
        };
        let mut frame = vec![0u8; spec.frame_len(p.payload.len())];
        spec.build(&p.payload, &mut frame)
            .expect("the state machines make valid packets");
        self.sent += 1;
        if self.cut || self.rng.chance(self.f.loss) {
            self.lost += 1;
            return;
        }
        let copies = if self.rng.chance(self.f.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let extra = if self.rng.chance(self.f.reorder) {
                self.rng.below(20_000)
            } else {
                0
            };
            self.seq += 1;
            self.q
                .push((now + LATENCY + extra, self.seq, frame.clone()));
        }
    }

    fn recv(&mut self, now: u64) -> Vec<Pkt> {
        self.q.sort_by_key(|(t, s, _)| (*t, *s));
        let n = self.q.iter().take_while(|(t, _, _)| *t <= now).count();
        self.q
            .drain(..n)
            .map(|(_, _, f)| {
                let p = Frame::parse(&f).expect("frames arrive intact");
                Pkt {
                    bth: p.packet.bth,
                    ext: p.packet.ext,
                    payload: p.packet.payload.to_vec(),
                }
            })
            .collect()
    }
}

struct Pair {
    req: Requester,
    resp: Responder,
    fwd: Link,
    back: Link,
    now: u64,
}

const STEP: u64 = 1_000;
const BURST: usize = 16;

impl Pair {
    fn new(p: RcParams, seed: u64, f: Faults, mem: MemoryTable) -> Self {
        let rp = RcParams {
            dest_qp: 0x11,
            recv_psn: p.send_psn,
            ..p
        };
        Pair {
            req: Requester::new(p),
            resp: Responder::new(rp, mem),
            fwd: Link::new(seed, f),
            back: Link::new(seed.rotate_left(17), f),
            now: 0,
        }
    }

    fn step(&mut self) {
        for _ in 0..BURST {
            let Some(p) = self.req.poll_tx(self.now) else {
                break;
            };
            self.fwd.send(self.now, &p);
        }
        for p in self.fwd.recv(self.now) {
            self.resp.on_packet(&p);
        }
        while let Some(p) = self.resp.poll_tx() {
            self.back.send(self.now, &p);
        }
        for p in self.back.recv(self.now) {
            self.req.on_packet(self.now, &p);
        }
        self.req.tick(self.now);
        self.now += STEP;
    }

    /// Runs until every work request completed; returns the completions.
    fn run(&mut self, limit_ns: u64) -> Vec<Completion> {
        let mut out = Vec::new();
        while self.req.outstanding() > 0 {
            assert!(
                self.now < limit_ns,
                "no completion after {} ms",
                self.now / 1_000_000
            );
            self.step();
            while let Some(c) = self.req.poll_completion() {
                out.push(c);
            }
        }
        while let Some(c) = self.req.poll_completion() {
            out.push(c);
        }
        // Let the last responses land.
        for _ in 0..40 {
            self.step();
        }
        out
    }
}

const RKEY: u32 = 0x0100_0042;
const VA: u64 = 0x7f00_0000_0000;
const COUNTER: u32 = 0x0200_0007;
const COUNTER_VA: u64 = 0x7f10_0000_0000;

fn memory(len: usize) -> MemoryTable {
    let mut m = MemoryTable::new();
    m.register(RKEY, VA, len, RemoteAccess::ALL);
    m.register(COUNTER, COUNTER_VA, 64, RemoteAccess::ALL);
    m
}

fn data(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next() as u8).collect()
}

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
                pair.resp.post_recv(1000 + id, 16_384);
                expect_recv.push((d.clone(), imm, d.len()));
                expect.push((id, Vec::new()));
                WorkRequest::Send { data: d, imm }
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
                    pair.resp.post_recv(1000 + id, 0);
                    expect_recv.push((Vec::new(), Some(imm), len));
                }
                expect.push((id, Vec::new()));
                WorkRequest::Write {
                    data: d,
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
            data: vec![1; 3000],
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
            data: vec![],
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
            data: b"hello".to_vec(),
            imm: Some(9),
        },
    );
    while pair.resp.rnr_naks < 3 {
        pair.step();
        assert!(pair.now < 10_000_000);
    }
    pair.resp.post_recv(77, 64);
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
            data: vec![1; 10],
            imm: None,
        },
    );
    let done = pair.run(100_000_000);
    assert_eq!(done[0].status, Status::RnrRetryExceeded);
    assert_eq!((pair.req.rnr_naks, pair.resp.rnr_naks), (3, 3));
}

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
            data: vec![1; 10],
            va: VA,
            rkey: 0xdead,
            imm: None,
        },
        WorkRequest::Write {
            data: vec![1; 10],
            va: VA + 4090,
            rkey: RKEY,
            imm: None,
        },
        WorkRequest::Write {
            data: vec![1; 10],
            va: VA - 1,
            rkey: RKEY,
            imm: None,
        },
        WorkRequest::Write {
            data: vec![1; 10],
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
    // Inside the rights and bounds all of it works.
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
            data: vec![3; 6],
            va: VA + 4090,
            rkey: RKEY,
            imm: None,
        },
    );
    let done = pair.run(1_000_000_000);
    assert!(done.iter().all(|c| c.status == Status::Success));
}

fn request(op: Op, psn: u32, ext: ExtHeaders, payload: Vec<u8>, ack_req: bool) -> Pkt {
    let mut bth = Bth::new(Opcode::new(Transport::Rc, op).unwrap(), 1, psn);
    bth.ack_req = ack_req;
    Pkt { bth, ext, payload }
}

fn drain(r: &mut Responder) -> Vec<Pkt> {
    std::iter::from_fn(|| r.poll_tx()).collect()
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
    r.post_recv(1, 16);
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
                data: vec![7; len],
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
                data: vec![],
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
    let mut g = Rng(0x5eed_0bad);
    let ops: Vec<Opcode> = Opcode::all()
        .filter(|o| o.transport() == Transport::Rc)
        .collect();
    for round in 0..40 {
        let p = RcParams {
            dest_qp: 1,
            recv_psn: 1000,
            send_psn: 1000,
            mtu: 256,
            ..RcParams::default()
        };
        let mut r = Responder::new(p, memory(4096));
        r.post_recv(1, 300);
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
                data: vec![1; 700],
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
                ext.ieth = Some(g.next() as u32);
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
                payload: vec![0xee; len],
            };
            r.on_packet(&pkt);
            while r.poll_tx().is_some() {}
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
