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
fn rc_bad_rkey_or_range_is_a_remote_access_error() {
    let Some(b) = bench(Progress::Thread { cpu: None }) else {
        return;
    };
    let (x, y) = connected(&b, QpType::Rc, 4096);
    x.qp.post_send(
        1,
        SendOp::Write {
            remote_addr: y.mr.addr() + 4000,
            rkey: y.mr.rkey(),
        },
        &[x.mr.sge(0, 200).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    x.qp.post_send(
        2,
        SendOp::Send,
        &[x.mr.sge(0, 10).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    let wcs = wait_wcs(&x.cq, 2, T);
    assert_eq!(wcs.len(), 2, "{wcs:?}");
    assert_eq!((wcs[0].wr_id, wcs[0].status_name()), (1, "REM_ACCESS_ERR"));
    assert_eq!((wcs[1].wr_id, wcs[1].status_name()), (2, "WR_FLUSH_ERR"));
    assert_eq!(x.qp.state(), QpState::Error);
    // Nothing was written past the region.
    let mut tail = vec![0; 96];
    y.mr.read(4000, &mut tail).unwrap();
    assert!(tail.iter().all(|&b| b == 0));
    assert!(b.b.counters().naks_sent >= 1);
    assert_eq!(y.qp.state(), QpState::Error);

    // A wrong key on a fresh pair: the same.
    let (x, y) = connected(&b, QpType::Rc, 4096);
    x.qp.post_send(
        1,
        SendOp::Read {
            remote_addr: y.mr.addr(),
            rkey: y.mr.rkey() ^ 0x100,
        },
        &[x.mr.sge(0, 16).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    let wcs = wait_wcs(&x.cq, 1, T);
    assert_eq!(wcs[0].status_name(), "REM_ACCESS_ERR");
}

#[test]
fn rc_packets_for_a_missing_qpn_are_counted_and_the_sender_gives_up() {
    let Some(b) = bench(Progress::Thread { cpu: None }) else {
        return;
    };
    let x = side(&b.a, QpType::Rc, 4096);
    let mut ghost = x.qp.endpoint(0);
    ghost.qpn = 0xab_cdef;
    ghost.gid = b.b.gid();
    let p = PathParams {
        timeout: 8,
        retry_cnt: 1,
        ..params()
    };
    x.qp.connect(&p, &ghost, 0).unwrap();
    x.qp.post_send(
        9,
        SendOp::Send,
        &[x.mr.sge(0, 10).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    let wcs = wait_wcs(&x.cq, 1, T);
    assert_eq!((wcs[0].wr_id, wcs[0].status_name()), (9, "RETRY_EXC_ERR"));
    // The first try and one retry, each counted at b.
    assert_eq!(b.b.counters().wrong_qpn, 2);
    assert_eq!(b.a.counters().retransmits, 1);
}

#[test]
fn rc_vanished_peer_ends_in_retry_exceeded_not_a_hang() {
    let Some(b) = bench(Progress::Thread { cpu: None }) else {
        return;
    };
    let (x, y) = connected(&b, QpType::Rc, 1 << 16);
    x.qp.post_send(
        1,
        SendOp::Write {
            remote_addr: y.mr.addr(),
            rkey: y.mr.rkey(),
        },
        &[x.mr.sge(0, 3000).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    assert_eq!(wait_wcs(&x.cq, 1, T)[0].status, 0);
    drop(y);
    let start = std::time::Instant::now();
    x.qp.post_send(
        2,
        SendOp::Write {
            remote_addr: 0,
            rkey: 1,
        },
        &[x.mr.sge(0, 3000).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    let wcs = wait_wcs(&x.cq, 1, T);
    assert_eq!((wcs[0].wr_id, wcs[0].status_name()), (2, "RETRY_EXC_ERR"));
    // 8 tries of 4.096 µs × 2^14 ≈ 67 ms each.
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(b.a.counters().retransmits >= 7);
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
