//! The test bench of the RC state machines: an in-memory link that carries real frames
//! (built and parsed, ICRC included) and loses, duplicates and reorders them from a seed, a
//! requester and a responder joined by it, and an abstract clock.

use super::super::wire::{Frame, FrameSpec, IpHeader};
use super::*;

pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub(super) fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

/// Faults of one direction, in percent.
#[derive(Clone, Copy)]
pub(super) struct Faults {
    pub(super) loss: u64,
    pub(super) dup: u64,
    pub(super) reorder: u64,
}

pub(super) const CLEAN: Faults = Faults {
    loss: 0,
    dup: 0,
    reorder: 0,
};

/// One direction of the link: frames in flight with their delivery times.
pub(super) struct Link {
    pub(super) rng: Rng,
    pub(super) f: Faults,
    pub(super) cut: bool,
    pub(super) q: Vec<(u64, u64, Vec<u8>)>,
    pub(super) seq: u64,
    pub(super) sent: u64,
    pub(super) lost: u64,
}

pub(super) const LATENCY: u64 = 5_000;

impl Link {
    pub(super) fn new(seed: u64, f: Faults) -> Self {
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

    pub(super) fn send(&mut self, now: u64, p: &Pkt) {
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

    pub(super) fn recv(&mut self, now: u64) -> Vec<Pkt> {
        self.q.sort_by_key(|(t, s, _)| (*t, *s));
        let n = self.q.iter().take_while(|(t, _, _)| *t <= now).count();
        self.q
            .drain(..n)
            .map(|(_, _, f)| {
                let p = Frame::parse(&f).expect("frames arrive intact");
                Pkt {
                    bth: p.packet.bth,
                    ext: p.packet.ext,
                    payload: p.packet.payload.to_vec().into(),
                }
            })
            .collect()
    }
}

pub(super) struct Pair {
    pub(super) req: Requester,
    pub(super) resp: Responder,
    pub(super) fwd: Link,
    pub(super) back: Link,
    pub(super) now: u64,
}

pub(super) const STEP: u64 = 1_000;
pub(super) const BURST: usize = 16;

impl Pair {
    pub(super) fn new(p: RcParams, seed: u64, f: Faults, mem: MemoryTable) -> Self {
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

    pub(super) fn step(&mut self) {
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
    pub(super) fn run(&mut self, limit_ns: u64) -> Vec<Completion> {
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

pub(super) const RKEY: u32 = 0x0100_0042;
pub(super) const VA: u64 = 0x7f00_0000_0000;
pub(super) const COUNTER: u32 = 0x0200_0007;
pub(super) const COUNTER_VA: u64 = 0x7f10_0000_0000;

pub(super) fn memory(len: usize) -> MemoryTable {
    let mut m = MemoryTable::new();
    m.register(RKEY, VA, len, RemoteAccess::ALL);
    m.register(COUNTER, COUNTER_VA, 64, RemoteAccess::ALL);
    m
}

pub(super) fn data(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next() as u8).collect()
}

/// An RC request packet to QP 1.
pub(super) fn request(
    op: super::super::wire::Op,
    psn: u32,
    ext: super::super::wire::ExtHeaders,
    payload: Vec<u8>,
    ack_req: bool,
) -> Pkt {
    use super::super::wire::{Bth, Opcode, Transport};
    let mut bth = Bth::new(Opcode::new(Transport::Rc, op).unwrap(), 1, psn);
    bth.ack_req = ack_req;
    Pkt {
        bth,
        ext,
        payload: payload.into(),
    }
}

/// Every response the responder has to send.
pub(super) fn drain(r: &mut Responder) -> Vec<Pkt> {
    std::iter::from_fn(|| r.poll_tx()).collect()
}
