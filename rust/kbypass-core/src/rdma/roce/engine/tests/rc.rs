//! RC between two engines.

use std::time::Duration;

use super::*;

const T: Duration = Duration::from_secs(10);

#[test]
fn rc_send_and_send_with_immediate_land_in_the_receive_buffers() {
    let Some(b) = bench(Progress::Thread { cpu: None }) else {
        return;
    };
    let (x, y) = connected(&b, QpType::Rc, 1 << 16);
    y.qp.post_recv(7, &[y.mr.sge(0, 8192).unwrap()]).unwrap();
    y.qp.post_recv(
        8,
        &[y.mr.sge(8192, 64).unwrap(), y.mr.sge(9000, 64).unwrap()],
    )
    .unwrap();
    let msg = pattern(5000, 1);
    x.mr.write(0, &msg).unwrap();
    x.mr.write(6000, &pattern(100, 2)).unwrap();
    x.qp.post_send(
        1,
        SendOp::Send,
        &[x.mr.sge(0, 5000).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    x.qp.post_send(
        2,
        SendOp::SendImm(0xdead_beef),
        &[x.mr.sge(6000, 100).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    let sent = wait_wcs(&x.cq, 2, T);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(
        sent.iter().all(|w| w.status == 0 && w.opcode == WC_SEND),
        "{sent:?}"
    );
    assert_eq!((sent[0].wr_id, sent[1].wr_id), (1, 2));
    let got = wait_wcs(&y.cq, 2, T);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (got[0].wr_id, got[0].status, got[0].opcode, got[0].byte_len),
        (7, 0, WC_RECV, 5000)
    );
    assert_eq!(got[0].imm(), None);
    assert_eq!(
        (got[1].wr_id, got[1].byte_len, got[1].imm()),
        (8, 100, Some(0xdead_beef))
    );
    assert_eq!(got[1].qp_num, y.qp.qp_num());
    let mut back = vec![0; 5000];
    y.mr.read(0, &mut back).unwrap();
    assert_eq!(back, msg);
    // Scattered over two SGEs: 64 bytes, then the rest at the second.
    let p = pattern(100, 2);
    let (mut s1, mut s2) = (vec![0; 64], vec![0; 36]);
    y.mr.read(8192, &mut s1).unwrap();
    y.mr.read(9000, &mut s2).unwrap();
    assert_eq!((&s1[..], &s2[..]), (&p[..64], &p[64..]));
    let c = b.b.counters();
    assert!(c.rx_packets >= 6, "{c:?}");
    assert_eq!((c.bad_icrc, c.malformed, c.wrong_qpn), (0, 0, 0));
}

#[test]
fn rc_write_write_imm_and_read_move_large_messages_intact() {
    let Some(b) = bench(Progress::Thread { cpu: Some(0) }) else {
        return;
    };
    let (x, y) = connected(&b, QpType::Rc, 1 << 20);
    let data = pattern(300_000, 3);
    x.mr.write(0, &data).unwrap();
    let remote = y.mr.addr() + 4096;
    x.qp.post_send(
        1,
        SendOp::Write {
            remote_addr: remote,
            rkey: y.mr.rkey(),
        },
        &[x.mr.sge(0, data.len()).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    // A write with immediate consumes a receive and reports its length.
    y.qp.post_recv(5, &[]).unwrap();
    x.qp.post_send(
        2,
        SendOp::WriteImm {
            remote_addr: y.mr.addr(),
            rkey: y.mr.rkey(),
            imm: 42,
        },
        &[x.mr.sge(0, 2048).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    // Read the written bytes back into another part of x's region.
    x.qp.post_send(
        3,
        SendOp::Read {
            remote_addr: remote,
            rkey: y.mr.rkey(),
        },
        &[x.mr.sge(400_000, data.len()).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    let wcs = wait_wcs(&x.cq, 3, T);
    assert_eq!(wcs.len(), 3, "{wcs:?}");
    let ops: Vec<_> = wcs.iter().map(|w| (w.wr_id, w.status, w.opcode)).collect();
    assert_eq!(
        ops,
        [
            (1, 0, WC_RDMA_WRITE),
            (2, 0, WC_RDMA_WRITE),
            (3, 0, WC_RDMA_READ)
        ]
    );
    assert_eq!(wcs[2].byte_len, data.len() as u32);
    let r = wait_wcs(&y.cq, 1, T);
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].wr_id, r[0].opcode, r[0].byte_len, r[0].imm()),
        (5, WC_RECV_RDMA_WITH_IMM, 2048, Some(42))
    );
    let mut at_y = vec![0; data.len()];
    y.mr.read(4096, &mut at_y).unwrap();
    assert!(at_y == data, "the write landed damaged");
    let mut read = vec![0; data.len()];
    x.mr.read(400_000, &mut read).unwrap();
    assert!(read == data, "the read came back damaged");
}

#[test]
fn rc_atomics_return_the_original_value_and_update_memory() {
    let Some(b) = bench(Progress::Thread { cpu: None }) else {
        return;
    };
    let (x, y) = connected(&b, QpType::Rc, 4096);
    y.mr.write(64, &100u64.to_ne_bytes()).unwrap();
    let (ra, rk) = (y.mr.addr() + 64, y.mr.rkey());
    let f = SendFlags::SIGNALED;
    x.qp.post_send(
        1,
        SendOp::FetchAdd {
            remote_addr: ra,
            rkey: rk,
            add: 5,
        },
        &[x.mr.sge(0, 8).unwrap()],
        f,
    )
    .unwrap();
    x.qp.post_send(
        2,
        SendOp::CompareSwap {
            remote_addr: ra,
            rkey: rk,
            compare: 105,
            swap: 7,
        },
        &[x.mr.sge(8, 8).unwrap()],
        f,
    )
    .unwrap();
    x.qp.post_send(
        3,
        SendOp::CompareSwap {
            remote_addr: ra,
            rkey: rk,
            compare: 1,
            swap: 9,
        },
        &[x.mr.sge(16, 8).unwrap()],
        f,
    )
    .unwrap();
    let wcs = wait_wcs(&x.cq, 3, T);
    assert_eq!(wcs.len(), 3, "{wcs:?}");
    let ops: Vec<_> = wcs.iter().map(|w| (w.status, w.opcode)).collect();
    assert_eq!(
        ops,
        [(0, WC_FETCH_ADD), (0, WC_COMP_SWAP), (0, WC_COMP_SWAP)]
    );
    let mut w = [0u8; 24];
    x.mr.read(0, &mut w).unwrap();
    let vals: Vec<u64> = w
        .chunks(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(vals, [100, 105, 7]);
    let mut now = [0u8; 8];
    y.mr.read(64, &mut now).unwrap();
    assert_eq!(u64::from_ne_bytes(now), 7);
    // Misuse is refused at post: an atomic needs exactly 8 bytes for its result.
    assert!(x
        .qp
        .post_send(
            4,
            SendOp::FetchAdd {
                remote_addr: ra,
                rkey: rk,
                add: 1
            },
            &[x.mr.sge(0, 4).unwrap()],
            f
        )
        .is_err());
}

#[test]
fn wait_ready_sleeps_until_the_poll_thread_pushes_a_completion() {
    let Some(b) = bench(Progress::Thread { cpu: None }) else {
        return;
    };
    let (x, y) = connected(&b, QpType::Rc, 1 << 16);
    // Nothing posted: the wait runs out and says so.
    let t0 = std::time::Instant::now();
    assert!(!x.cq.wait_ready(Duration::from_millis(30)));
    assert!(
        t0.elapsed() >= Duration::from_millis(30),
        "{:?}",
        t0.elapsed()
    );
    // A write's completion wakes the waiter long before its timeout.
    x.mr.write(0, &pattern(4096, 3)).unwrap();
    let post = std::time::Instant::now();
    x.qp.post_send(
        1,
        SendOp::Write {
            remote_addr: y.mr.addr(),
            rkey: y.mr.rkey(),
        },
        &[x.mr.sge(0, 4096).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    assert!(x.cq.wait_ready(T));
    assert!(
        post.elapsed() < Duration::from_secs(5),
        "{:?}",
        post.elapsed()
    );
    let mut wc = [WorkCompletion::default(); 2];
    assert_eq!(x.cq.poll(&mut wc).unwrap(), 1);
    assert_eq!((wc[0].wr_id, wc[0].status), (1, 0));
    // A completion already there: no wait at all.
    x.qp.post_send(
        2,
        SendOp::Write {
            remote_addr: y.mr.addr(),
            rkey: y.mr.rkey(),
        },
        &[x.mr.sge(0, 64).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    assert!(x.cq.wait_ready(T));
    assert!(
        x.cq.wait_ready(Duration::ZERO),
        "the completion stays until polled"
    );
    assert_eq!(x.cq.poll(&mut wc).unwrap(), 1);
}

#[test]
fn rc_with_caller_progress_moves_only_when_polled() {
    let Some(b) = bench(Progress::Caller) else {
        return;
    };
    let (x, y) = connected(&b, QpType::Rc, 1 << 16);
    let data = pattern(20_000, 9);
    x.mr.write(0, &data).unwrap();
    y.qp.post_recv(1, &[y.mr.sge(0, 1 << 16).unwrap()]).unwrap();
    x.qp.post_send(
        1,
        SendOp::Send,
        &[x.mr.sge(0, data.len()).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        b.a.counters().tx_packets,
        0,
        "nothing moves until someone polls"
    );
    let mut buf = [WorkCompletion::default(); 4];
    let (mut sent, mut got) = (None, None);
    let deadline = std::time::Instant::now() + T;
    while (sent.is_none() || got.is_none()) && std::time::Instant::now() < deadline {
        if x.cq.poll(&mut buf).unwrap() > 0 {
            sent = Some(buf[0]);
        }
        if y.cq.poll(&mut buf).unwrap() > 0 {
            got = Some(buf[0]);
        }
    }
    assert_eq!(sent.unwrap().status, 0);
    assert_eq!(got.unwrap().byte_len, data.len() as u32);
    let mut back = vec![0; data.len()];
    y.mr.read(0, &mut back).unwrap();
    assert!(back == data);
}

#[test]
fn rc_both_directions_at_once_many_large_messages_arrive_intact() {
    let Some(b) = bench(Progress::Thread { cpu: None }) else {
        return;
    };
    let (x, y) = connected(&b, QpType::Rc, 8 << 20);
    const N: usize = 48;
    const LEN: usize = 64 << 10;
    let fill = |s: &Side, seed: u8| {
        for i in 0..N {
            s.mr.write(i * LEN, &pattern(LEN, seed.wrapping_add(i as u8)))
                .unwrap();
        }
    };
    fill(&x, 10);
    fill(&y, 100);
    // Each side writes its first half into the other's second half and sends the rest.
    for (me, peer) in [(&x, &y), (&y, &x)] {
        for i in 0..N / 2 {
            peer.qp
                .post_recv(i as u64, &[peer.mr.sge((N + i) * LEN, LEN).unwrap()])
                .unwrap();
        }
        for i in 0..N / 2 {
            let op = SendOp::Write {
                remote_addr: peer.mr.addr() + ((N + N / 2 + i) * LEN) as u64,
                rkey: peer.mr.rkey(),
            };
            me.qp
                .post_send(
                    i as u64,
                    op,
                    &[me.mr.sge(i * LEN, LEN).unwrap()],
                    SendFlags::SIGNALED,
                )
                .unwrap();
            me.qp
                .post_send(
                    100 + i as u64,
                    SendOp::Send,
                    &[me.mr.sge((N / 2 + i) * LEN, LEN).unwrap()],
                    SendFlags::SIGNALED,
                )
                .unwrap();
        }
    }
    // Each CQ gets its side's N sends/writes and N/2 receives.
    for s in [&x, &y] {
        let w = wait_wcs(&s.cq, N + N / 2, Duration::from_secs(60));
        assert_eq!(w.len(), N + N / 2);
        assert!(w.iter().all(|w| w.status == 0), "{w:?}");
    }
    for (peer, seed) in [(&y, 10u8), (&x, 100u8)] {
        let mut got = vec![0; LEN];
        for i in 0..N / 2 {
            peer.mr.read((N + i) * LEN, &mut got).unwrap();
            assert!(
                got == pattern(LEN, seed.wrapping_add((N / 2 + i) as u8)),
                "send {i}"
            );
            peer.mr.read((N + N / 2 + i) * LEN, &mut got).unwrap();
            assert!(got == pattern(LEN, seed.wrapping_add(i as u8)), "write {i}");
        }
    }
    let (ca, cb) = (b.a.counters(), b.b.counters());
    assert_eq!(
        (ca.bad_icrc, ca.malformed, cb.bad_icrc, cb.malformed),
        (0, 0, 0, 0)
    );
    // RC's window (128 packets) keeps a 512-entry RX ring from overflowing.
    assert_eq!((ca.rx_ring_full, cb.rx_ring_full), (0, 0));
}

#[test]
fn rc_path_mtus_from_256_to_what_the_link_carries() {
    if !crate::sys::testutil::is_root() {
        eprintln!("skipped: needs root (AF_XDP, XDP and network namespaces)");
        return;
    }
    let bench = bench_with_mtu(3000);
    // A 3000-byte link MTU carries a 2048-byte path MTU (4096 needs 4171 bytes).
    assert_eq!(bench.a.max_mtu(), 2048);
    for (code, mtu) in [(1, 256), (2, 512), (4, 2048), (5, 2048)] {
        let (x, y) = (
            side(&bench.a, QpType::Rc, 1 << 16),
            side(&bench.b, QpType::Rc, 1 << 16),
        );
        let p = PathParams {
            mtu: code,
            ..params()
        };
        x.qp.connect(&p, &y.qp.endpoint(7), 3).unwrap();
        y.qp.connect(&p, &x.qp.endpoint(3), 7).unwrap();
        let data = pattern(10_000, code as u8);
        x.mr.write(0, &data).unwrap();
        let before = bench.b.counters().rx_packets;
        let op = SendOp::Write {
            remote_addr: y.mr.addr(),
            rkey: y.mr.rkey(),
        };
        x.qp.post_send(
            1,
            op,
            &[x.mr.sge(0, data.len()).unwrap()],
            SendFlags::SIGNALED,
        )
        .unwrap();
        assert_eq!(wait_wcs(&x.cq, 1, T)[0].status, 0, "mtu {mtu}");
        let mut got = vec![0; data.len()];
        y.mr.read(0, &mut got).unwrap();
        assert!(got == data, "mtu {mtu}");
        assert_eq!(
            bench.b.counters().rx_packets - before,
            10_000usize.div_ceil(mtu) as u64,
            "mtu {mtu}"
        );
    }
}

#[test]
fn rc_path_mtu_4096_over_a_jumbo_link_with_multi_buffer_frames() {
    if !crate::sys::testutil::is_root() {
        eprintln!("skipped: needs root (AF_XDP, XDP and network namespaces)");
        return;
    }
    let bench = bench_with_mtu(9000);
    // A 4096-byte path MTU makes 4170-byte frames: two 4096-byte UMEM frames each, so the
    // engines opened multi-buffer sockets and a program loaded for multi-buffer frames.
    assert_eq!((bench.a.max_mtu(), bench.b.max_mtu()), (4096, 4096));
    let (x, y) = (
        side(&bench.a, QpType::Rc, 1 << 20),
        side(&bench.b, QpType::Rc, 1 << 20),
    );
    let p = PathParams { mtu: 5, ..params() };
    x.qp.connect(&p, &y.qp.endpoint(7), 3).unwrap();
    y.qp.connect(&p, &x.qp.endpoint(3), 7).unwrap();
    // A write of 1 MiB: 256 full packets, each split over two descriptors both ways.
    let data = pattern(1 << 20, 5);
    x.mr.write(0, &data).unwrap();
    let before = bench.b.counters().rx_packets;
    let write = SendOp::Write {
        remote_addr: y.mr.addr(),
        rkey: y.mr.rkey(),
    };
    x.qp.post_send(
        1,
        write,
        &[x.mr.sge(0, data.len()).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    assert_eq!(wait_wcs(&x.cq, 1, T)[0].status, 0);
    let mut got = vec![0; data.len()];
    y.mr.read(0, &mut got).unwrap();
    assert!(got == data, "the write landed intact");
    let c = bench.b.counters();
    assert_eq!(
        c.rx_packets - before,
        256,
        "1 MiB in 4096-byte packets: {c:?}"
    );
    assert_eq!((c.malformed, c.bad_icrc), (0, 0), "{c:?}");
    // A read back of 100,000 bytes: the responses are the jumbo frames now.
    let back = pattern(100_000, 6);
    y.mr.write(0, &back).unwrap();
    let read = SendOp::Read {
        remote_addr: y.mr.addr(),
        rkey: y.mr.rkey(),
    };
    x.qp.post_send(
        2,
        read,
        &[x.mr.sge(0, back.len()).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    assert_eq!(wait_wcs(&x.cq, 1, T)[0].status, 0);
    let mut mine = vec![0; back.len()];
    x.mr.read(0, &mut mine).unwrap();
    assert!(mine == back, "the read came back intact");
    let c = bench.a.counters();
    assert_eq!((c.malformed, c.bad_icrc), (0, 0), "{c:?}");
}

/// Two engines (default options) on a veth pair whose link MTU is `mtu`.
fn bench_with_mtu(mtu: u32) -> Bench {
    let pair = VethPair::with(Default::default()).expect("veth pair");
    let open = |ns: &str, ifname: &str, host: u8| {
        let _g = NetnsGuard::enter(ns).unwrap();
        let out = std::process::Command::new("ip")
            .args(["link", "set", ifname, "mtu", &mtu.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        Engine::open(ifname, 0, IpAddr::V4(pair.ip(host)), &Default::default()).unwrap()
    };
    let a = open(&pair.a, VethPair::IF_A, 1);
    let b = open(&pair.b, VethPair::IF_B, 2);
    Bench { a, b, pair }
}
