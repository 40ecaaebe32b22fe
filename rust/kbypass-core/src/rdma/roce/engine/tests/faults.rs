//! RC between two engines: what goes wrong (bad keys and rights, missing and vanished peers,
//! RNR, hostile datagrams).

use std::time::Duration;

use super::*;

const T: Duration = Duration::from_secs(10);

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
    // 8 tries of 4.096 µs × 2^15 ≈ 134 ms each.
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(b.a.counters().retransmits >= 7);
}

#[test]
fn rc_a_right_the_qp_lacks_is_refused_whatever_the_region_grants() {
    // As rxe: an invalid request NAK, before any region is looked at.
    let Some(b) = bench(Progress::Thread { cpu: None }) else {
        return;
    };
    let (x, y) = (side(&b.a, QpType::Rc, 4096), side(&b.b, QpType::Rc, 4096));
    let p = params();
    // y's QP allows remote reads only; its region allows everything.
    y.qp.to_init(&p, Access::LOCAL_WRITE | Access::REMOTE_READ)
        .unwrap();
    y.qp.to_rtr(&p, &x.qp.endpoint(1), &crate::rdma::Cancel::never())
        .unwrap();
    y.qp.to_rts(&p, 2).unwrap();
    x.qp.connect(&p, &y.qp.endpoint(2), 1).unwrap();
    assert_eq!((x.qp.state(), y.qp.state()), (QpState::Rts, QpState::Rts));
    let (ra, rk) = (y.mr.addr(), y.mr.rkey());
    let f = SendFlags::SIGNALED;
    y.mr.write(0, b"readable").unwrap();
    x.qp.post_send(
        1,
        SendOp::Read {
            remote_addr: ra,
            rkey: rk,
        },
        &[x.mr.sge(0, 8).unwrap()],
        f,
    )
    .unwrap();
    assert_eq!(wait_wcs(&x.cq, 1, T)[0].status, 0);
    let mut got = [0u8; 8];
    x.mr.read(0, &mut got).unwrap();
    assert_eq!(&got, b"readable");
    x.qp.post_send(
        2,
        SendOp::Write {
            remote_addr: ra,
            rkey: rk,
        },
        &[x.mr.sge(0, 8).unwrap()],
        f,
    )
    .unwrap();
    assert_eq!(wait_wcs(&x.cq, 1, T)[0].status_name(), "REM_INV_REQ_ERR");
}

#[test]
fn rc_hostile_datagrams_are_counted_and_the_connection_carries_on() {
    use crate::rdma::roce::wire::{Bth, ExtHeaders, FrameSpec, IpHeader, Op, Opcode, Transport};
    use std::net::SocketAddrV4;
    let Some(b) = bench(Progress::Thread { cpu: None }) else {
        return;
    };
    let (x, y) = connected(&b, QpType::Rc, 4096);
    let to = SocketAddrV4::new(b.pair.ip(2), 4791);
    let send = |payload: &[u8], n: u64| {
        crate::traffic::kernel::udp_send(Some(&b.pair.a), b.pair.ip(1), to, payload, n, 1).unwrap()
    };
    // Too short for a BTH.
    send(&[1, 2, 3], 10);
    // A well-formed SEND ONLY to y's QP whose ICRC is damaged.
    let spec = FrameSpec {
        eth_dst: [0; 6],
        eth_src: [0; 6],
        vlan_tci: None,
        ip: IpHeader::V4 {
            src: b.pair.ip(1).octets(),
            dst: b.pair.ip(2).octets(),
            tos: 0,
            ttl: 64,
            id: 0,
        },
        udp_src: 1234,
        bth: Bth::new(
            Opcode::new(Transport::Rc, Op::SendOnly).unwrap(),
            y.qp.qp_num(),
            2000,
        ),
        ext: ExtHeaders::default(),
    };
    let mut frame = vec![0u8; spec.frame_len(16)];
    let n = spec.build(&[0x42; 16], &mut frame).unwrap();
    let mut udp_payload = frame[42..n].to_vec();
    *udp_payload.last_mut().unwrap() ^= 0xff;
    send(&udp_payload, 10);
    let deadline = std::time::Instant::now() + T;
    let mut c = b.b.counters();
    while (c.malformed < 10 || c.bad_icrc < 10) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        c = b.b.counters();
    }
    assert_eq!((c.malformed, c.bad_icrc), (10, 10), "{c:?}");
    // Nothing reached the QP: its first real message is still PSN 2000's.
    y.qp.post_recv(1, &[y.mr.sge(0, 64).unwrap()]).unwrap();
    x.mr.write(0, b"after the noise").unwrap();
    x.qp.post_send(
        1,
        SendOp::Send,
        &[x.mr.sge(0, 15).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    assert_eq!(wait_wcs(&x.cq, 1, T)[0].status, 0);
    let w = wait_wcs(&y.cq, 1, T);
    assert_eq!((w[0].status, w[0].byte_len), (0, 15));
}

#[test]
fn rc_rnr_naks_are_retried_until_a_receive_comes_or_the_retries_run_out() {
    let Some(b) = bench(Progress::Thread { cpu: None }) else {
        return;
    };
    // rnr_retry 7 retries forever, every 1.28 ms (timer code 14).
    let (x, y) = (side(&b.a, QpType::Rc, 4096), side(&b.b, QpType::Rc, 4096));
    let p = PathParams {
        rnr_retry: 7,
        min_rnr_timer: 14,
        ..params()
    };
    x.qp.connect(&p, &y.qp.endpoint(1), 1).unwrap();
    y.qp.connect(&p, &x.qp.endpoint(1), 1).unwrap();
    let f = SendFlags::SIGNALED;
    x.qp.post_send(1, SendOp::Send, &[x.mr.sge(0, 100).unwrap()], f)
        .unwrap();
    // No receive yet: RNR NAKs until one is posted.
    let deadline = std::time::Instant::now() + T;
    while b.a.counters().rnr_naks_received == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(b.b.counters().rnr_naks_sent >= 1);
    y.qp.post_recv(1, &[y.mr.sge(0, 100).unwrap()]).unwrap();
    let w = wait_wcs(&x.cq, 1, T);
    // rnr_retry 6 at 10 µs may run out before the receive is posted on a loaded machine;
    // either way the outcome is one of the two the spec allows, never a hang.
    assert!(
        matches!(w[0].status_name(), "SUCCESS" | "RNR_RETRY_EXC_ERR"),
        "{w:?}"
    );

    // With no receive ever and few retries: RNR_RETRY_EXC_ERR.
    let (x, y) = (side(&b.a, QpType::Rc, 4096), side(&b.b, QpType::Rc, 4096));
    let p = PathParams {
        rnr_retry: 2,
        ..params()
    };
    x.qp.connect(&p, &y.qp.endpoint(1), 1).unwrap();
    y.qp.connect(&p, &x.qp.endpoint(1), 1).unwrap();
    x.qp.post_send(2, SendOp::Send, &[x.mr.sge(0, 100).unwrap()], f)
        .unwrap();
    let w = wait_wcs(&x.cq, 1, T);
    assert_eq!((w[0].wr_id, w[0].status_name()), (2, "RNR_RETRY_EXC_ERR"));
}

#[test]
fn rc_reads_on_a_qp_without_read_credits_fail_locally() {
    let Some(b) = bench(Progress::Thread { cpu: None }) else {
        return;
    };
    let (x, y) = (side(&b.a, QpType::Rc, 4096), side(&b.b, QpType::Rc, 4096));
    let p = PathParams {
        max_rd_atomic: 0,
        ..params()
    };
    x.qp.connect(&p, &y.qp.endpoint(1), 2).unwrap();
    y.qp.connect(&p, &x.qp.endpoint(2), 1).unwrap();
    let op = SendOp::Read {
        remote_addr: y.mr.addr(),
        rkey: y.mr.rkey(),
    };
    x.qp.post_send(1, op, &[x.mr.sge(0, 8).unwrap()], SendFlags::SIGNALED)
        .unwrap();
    let w = wait_wcs(&x.cq, 1, T);
    assert_eq!((w[0].wr_id, w[0].status_name()), (1, "LOC_QP_OP_ERR"));
    assert_eq!(b.b.counters().rx_packets, 0, "nothing was sent");
}

#[test]
fn rc_packets_for_a_qp_not_ready_to_receive_are_counted() {
    let Some(b) = bench(Progress::Thread { cpu: None }) else {
        return;
    };
    let (x, y) = (side(&b.a, QpType::Rc, 4096), side(&b.b, QpType::Rc, 4096));
    let p = PathParams {
        timeout: 8,
        retry_cnt: 2,
        ..params()
    };
    // y stays in INIT: it exists but cannot receive.
    y.qp.to_init(&p, Access::ALL).unwrap();
    x.qp.connect(&p, &y.qp.endpoint(0), 0).unwrap();
    x.qp.post_send(
        1,
        SendOp::Send,
        &[x.mr.sge(0, 10).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    let w = wait_wcs(&x.cq, 1, T);
    assert_eq!(w[0].status_name(), "RETRY_EXC_ERR");
    let c = b.b.counters();
    assert_eq!((c.bad_state, c.wrong_qpn), (3, 0), "{c:?}");
}
