//! Hostile frames into a live engine: crafted in namespace `a` and sent from a raw
//! `AF_PACKET` socket on its link, while the engine's answers are captured on the bridge
//! port in `m` that carries b's frames.

use std::time::{Duration, Instant};

use super::super::*;
use super::{fault_bench, FaultBench};
use crate::rdma::roce::wire::{
    Aeth, Bth, ExtHeaders, Frame, FrameSpec, IpHeader, NakCode, Op, Opcode, Reth, Syndrome,
    Transport,
};
use crate::sys::testutil::RawSocket;
use crate::xdp::faults::{FaultRates, Timing};

const PAGE: usize = 4096;
const GUARD: u8 = 0xee;
/// The PSN each responder expects first.
const EPSN: u32 = 100;

/// A connected RC pair whose responder `y` has a one-page region with a page of guard
/// bytes on each side (in the same memory, not registered).
struct Guarded {
    x: Side,
    y: Side,
    mem: Arc<ExternalMemory>,
}

fn guarded(fb: &FaultBench) -> Guarded {
    let x = side(&fb.a, QpType::Rc, PAGE);
    let pd = fb.b.alloc_pd().unwrap();
    let cq = fb.b.create_cq(64, None).unwrap();
    let mem = ExternalMemory::zeroed(3 * PAGE);
    assert!(mem.write(0, &[GUARD; 3 * PAGE]));
    let mr = pd
        .register_range(Arc::clone(&mem), PAGE, PAGE, Access::ALL)
        .unwrap();
    let qp = pd
        .create_qp(QpType::Rc, &cq, &cq, QpCaps::default(), true)
        .unwrap();
    let y = Side { cq, qp, mr, pd };
    // x sends from EPSN, which y expects; y's own PSNs start at 7.
    x.qp.connect(&params(), &y.qp.endpoint(7), EPSN).unwrap();
    y.qp.connect(&params(), &x.qp.endpoint(EPSN), 7).unwrap();
    Guarded { x, y, mem }
}

impl Guarded {
    fn guards_intact(&self) -> bool {
        let mut g = vec![0u8; PAGE];
        [0, 2 * PAGE]
            .iter()
            .all(|&off| self.mem.read(off, &mut g) && g.iter().all(|&b| b == GUARD))
    }
}

/// Makes a request for a pair's responder: opcode, headers, payload.
type Request = fn(&Guarded) -> (Op, ExtHeaders, Vec<u8>);

/// A well-formed RoCEv2 frame from a's address to b's QP `qpn`.
fn frame(fb: &FaultBench, qpn: u32, op: Op, psn: u32, ext: ExtHeaders, payload: &[u8]) -> Vec<u8> {
    let mut bth = Bth::new(Opcode::new(Transport::Rc, op).unwrap(), qpn, psn);
    bth.ack_req = true;
    let spec = FrameSpec {
        eth_dst: fb.mac(2),
        eth_src: fb.mac(1),
        vlan_tci: None,
        ip: IpHeader::V4 {
            src: fb.ip(1).octets(),
            dst: fb.ip(2).octets(),
            tos: 0,
            ttl: 64,
            id: 0,
        },
        udp_src: 0xc123,
        bth,
        ext,
    };
    let mut out = vec![0u8; spec.frame_len(payload.len())];
    let n = spec.build(payload, &mut out).unwrap();
    out.truncate(n);
    out
}

fn reth(va: u64, rkey: u32, dma_len: u32) -> ExtHeaders {
    ExtHeaders {
        reth: Some(Reth { va, rkey, dma_len }),
        ..ExtHeaders::default()
    }
}

/// Cuts an IPv4 frame to `len` bytes and makes its IP and UDP lengths and IP checksum say
/// so (the UDP checksum zero: none).
fn refit(mut f: Vec<u8>, len: usize) -> Vec<u8> {
    f.truncate(len);
    let ip_len = (len - 14) as u16;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let sum = f[14..34]
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    f[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    f[40..42].copy_from_slice(&[0, 0]);
    f
}

/// The ACKs and NAKs b sent to a's QP `qpn` seen on the sniffer, until 300 ms pass quiet.
fn answers(sniff: &RawSocket, fb: &FaultBench, qpn: u32) -> Vec<(u32, Syndrome)> {
    let mut got = Vec::new();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(300) {
        let Some(f) = sniff.recv() else { continue };
        let Ok(fr) = Frame::parse(&f) else { continue };
        let p = fr.packet;
        if fr.eth_src != fb.mac(2) || p.bth.dest_qp != qpn || p.bth.opcode.op() != Op::Acknowledge {
            continue;
        }
        let a: Aeth = p.ext.aeth.expect("an ACK has an AETH");
        got.push((p.bth.psn, a.kind()));
        quiet_since = Instant::now();
    }
    got
}

/// Waits until `f` holds for b's counters (or 3 s) and returns them.
fn counters_when(fb: &FaultBench, f: impl Fn(&EngineCounters) -> bool) -> EngineCounters {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut c = fb.b.counters();
    while !f(&c) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        c = fb.b.counters();
    }
    c
}

#[test]
fn hostile_frames_are_counted_answered_as_the_spec_says_and_never_write_outside_a_region() {
    let Some(fb) = fault_bench(FaultRates::default(), Timing::default()) else {
        return;
    };
    let sniff = {
        let _g = NetnsGuard::enter(&fb.ns.0[1]).unwrap();
        RawSocket::open("mb", Duration::from_millis(20)).unwrap()
    };
    let inject = {
        let _g = NetnsGuard::enter(&fb.ns.0[0]).unwrap();
        RawSocket::open("veth0", Duration::from_millis(20)).unwrap()
    };
    let live = guarded(&fb);
    let (yq, xq) = (live.y.qp.qp_num(), live.x.qp.qp_num());
    let va = live.y.mr.addr();
    let base = fb.b.counters();

    // Silently dropped and counted: a damaged ICRC, an unknown QP, headers cut short, and
    // lengths that claim more than the frame holds.
    let mut bad_icrc = frame(&fb, yq, Op::SendOnly, EPSN, ExtHeaders::default(), &[1; 16]);
    *bad_icrc.last_mut().unwrap() ^= 0x5a;
    inject.send(&bad_icrc).unwrap();
    let ghost = frame(
        &fb,
        0xfe_dcba,
        Op::SendOnly,
        EPSN,
        ExtHeaders::default(),
        &[1; 16],
    );
    inject.send(&ghost).unwrap();
    let write = frame(
        &fb,
        yq,
        Op::WriteOnly,
        EPSN,
        reth(va, live.y.mr.rkey(), 16),
        &[2; 16],
    );
    // The RETH cut in half (IP and UDP lengths saying so).
    inject.send(&refit(write.clone(), 42 + 12 + 8)).unwrap();
    // Only part of the BTH.
    inject.send(&refit(write.clone(), 42 + 6)).unwrap();
    // A UDP length beyond the IP packet.
    let mut long_udp = write.clone();
    long_udp[38..40].copy_from_slice(&4000u16.to_be_bytes());
    inject.send(&long_udp).unwrap();
    let c = counters_when(&fb, |c| c.malformed >= base.malformed + 3);
    assert_eq!(
        (
            c.bad_icrc - base.bad_icrc,
            c.wrong_qpn - base.wrong_qpn,
            c.malformed - base.malformed
        ),
        (1, 1, 3),
        "{c:?}"
    );
    assert!(
        answers(&sniff, &fb, xq).is_empty(),
        "no answer to a dropped frame"
    );

    // A PSN ahead of the expected one: one sequence NAK for the expected PSN (and none for
    // the next such request); one far behind is a duplicate, answered with an ACK.
    let ahead = |psn| frame(&fb, yq, Op::SendOnly, psn, ExtHeaders::default(), &[3; 8]);
    inject.send(&ahead(EPSN + 5000)).unwrap();
    inject.send(&ahead(EPSN + 1)).unwrap();
    let got = answers(&sniff, &fb, xq);
    assert_eq!(got, [(EPSN, Syndrome::Nak(NakCode::PsnSequenceError))]);
    inject
        .send(&ahead(EPSN.wrapping_sub(1 << 20) & 0xff_ffff))
        .unwrap();
    let got = answers(&sniff, &fb, xq);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, EPSN - 1);
    assert!(matches!(got[0].1, Syndrome::Ack { .. }), "{got:?}");
    let c = fb.b.counters();
    assert_eq!(c.out_of_sequence - base.out_of_sequence, 2, "{c:?}");
    assert_eq!(c.duplicates - base.duplicates, 1, "{c:?}");
    assert_eq!(live.y.qp.state(), QpState::Rts);

    // Requests refused: each answered with its NAK, its QP (a fresh one each) in the error
    // state, nothing written, the guard pages intact.
    let cases: [(&str, Request, NakCode); 5] = [
        (
            "bad rkey",
            |g| {
                (
                    Op::WriteOnly,
                    reth(g.y.mr.addr(), g.y.mr.rkey().wrapping_add(0x5a5a_0000), 16),
                    vec![4; 16],
                )
            },
            NakCode::RemoteAccessError,
        ),
        (
            "write past the region's end",
            |g| {
                let va = g.y.mr.addr() + PAGE as u64 - 8;
                (Op::WriteOnly, reth(va, g.y.mr.rkey(), 16), vec![5; 16])
            },
            NakCode::RemoteAccessError,
        ),
        (
            "read before the region's start",
            |g| {
                (
                    Op::ReadRequest,
                    reth(g.y.mr.addr() - 8, g.y.mr.rkey(), 16),
                    Vec::new(),
                )
            },
            NakCode::RemoteAccessError,
        ),
        (
            "a 1 GiB length with 16 bytes",
            |g| {
                (
                    Op::WriteOnly,
                    reth(g.y.mr.addr(), g.y.mr.rkey(), 1 << 30),
                    vec![6; 16],
                )
            },
            NakCode::RemoteAccessError,
        ),
        (
            "a payload over the path MTU",
            |_| (Op::SendOnly, ExtHeaders::default(), vec![7; 1200]),
            NakCode::InvalidRequest,
        ),
    ];
    let before = fb.b.counters();
    for (what, make, code) in cases {
        let g = guarded(&fb);
        g.y.qp
            .post_recv(1, &[g.y.mr.sge(0, PAGE).unwrap()])
            .unwrap();
        let (op, ext, payload) = make(&g);
        inject
            .send(&frame(&fb, g.y.qp.qp_num(), op, EPSN, ext, &payload))
            .unwrap();
        let got = answers(&sniff, &fb, g.x.qp.qp_num());
        assert_eq!(got, [(EPSN, Syndrome::Nak(code))], "{what}");
        assert_eq!(g.y.qp.state(), QpState::Error, "{what}");
        let mut page = vec![0u8; PAGE];
        g.y.mr.read(0, &mut page).unwrap();
        assert!(
            page.iter().all(|&b| b == GUARD),
            "{what}: the region was written"
        );
        assert!(g.guards_intact(), "{what}: a guard page was written");
    }
    let c = fb.b.counters();
    assert_eq!(c.naks_sent - before.naks_sent, 5, "{c:?}");

    // The engine and the connection the noise was aimed at carry on: the first real
    // request is still the expected PSN's.
    let data = pattern(PAGE, 11);
    live.x.mr.write(0, &data).unwrap();
    live.y
        .qp
        .post_recv(1, &[live.y.mr.sge(0, 64).unwrap()])
        .unwrap();
    let f = SendFlags::SIGNALED;
    let op = SendOp::Write {
        remote_addr: va,
        rkey: live.y.mr.rkey(),
    };
    live.x
        .qp
        .post_send(1, op, &[live.x.mr.sge(0, PAGE).unwrap()], f)
        .unwrap();
    live.x
        .qp
        .post_send(2, SendOp::Send, &[live.x.mr.sge(0, 64).unwrap()], f)
        .unwrap();
    let w = wait_wcs(&live.x.cq, 2, Duration::from_secs(10));
    let w: Vec<_> = w.iter().map(|w| (w.wr_id, w.status_name())).collect();
    assert_eq!(w, [(1, "SUCCESS"), (2, "SUCCESS")]);
    let r = wait_wcs(&live.y.cq, 1, Duration::from_secs(10));
    assert_eq!((r[0].status, r[0].byte_len), (0, 64));
    let mut page = vec![0u8; PAGE];
    live.y.mr.read(0, &mut page).unwrap();
    assert!(page == data, "the write landed damaged");
    assert!(live.guards_intact());
}
