//! Tests of the verbs provider. The `#[ignore]`d ones need an RDMA device: tests/rdma runs
//! them inside the soft-RoCE VM (`<test binary> --ignored rdma::`), on rxe0 in loopback.

use std::time::{Duration, Instant};

use super::*;
use crate::sys::mm::Mapping;
use crate::Error;

#[test]
fn devices_lists_or_says_what_to_install() {
    match devices() {
        Ok(list) => {
            for d in list {
                assert!(
                    !d.name.is_empty() && d.uverbs.starts_with("uverbs"),
                    "{d:?}"
                );
            }
        }
        Err(Error::NotFound(msg)) => {
            assert!(
                msg.contains("apt-get install rdma-core ibverbs-providers"),
                "{msg}"
            );
        }
        Err(e) => panic!("devices() failed in an unexpected way: {e}"),
    }
}

#[test]
fn opening_a_missing_device_is_not_found() {
    match Context::open(Some("no-such-rdma-device")) {
        Err(Error::NotFound(msg)) => assert!(
            msg.contains("no-such-rdma-device") || msg.contains("apt-get"),
            "{msg}"
        ),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("opened a device that does not exist"),
    }
}

#[test]
fn gid_hex_round_trip_and_ipv4() {
    let g = Gid::from_hex("00000000000000000000ffffc612000f").unwrap();
    assert_eq!(g.ipv4(), Some(std::net::Ipv4Addr::new(198, 18, 0, 15)));
    assert_eq!(g.to_hex(), "00000000000000000000ffffc612000f");
    assert_eq!(g.to_string(), "::ffff:198.18.0.15");
    assert!(Gid::from_hex("xyz").is_err());
    assert!(Gid::default().is_zero());
    assert_eq!(mtu_bytes(3), Some(1024));
    assert_eq!(mtu_bytes(0), None);
}

#[test]
fn completion_status_names() {
    let wc = WorkCompletion {
        status: 10,
        ..Default::default()
    };
    assert_eq!(wc.status_name(), "REM_ACCESS_ERR");
    assert!(!wc.is_success());
    let wc = WorkCompletion {
        status: 99,
        ..Default::default()
    };
    assert_eq!(wc.status_name(), "UNKNOWN");
    let wc = WorkCompletion {
        wc_flags: ffi::WC_WITH_IMM,
        imm_data: 0x1234_5678u32.to_be(),
        ..Default::default()
    };
    assert_eq!(wc.imm(), Some(0x1234_5678));
    assert_eq!(wc.invalidated_rkey(), None);
    // `invalidated_rkey` shares `imm_data`'s place, in host order (libibverbs' union).
    let wc = WorkCompletion {
        wc_flags: ffi::WC_WITH_INV,
        imm_data: 0x1234_5678,
        ..Default::default()
    };
    assert_eq!((wc.invalidated_rkey(), wc.imm()), (Some(0x1234_5678), None));
}

// --- on a real device ---------------------------------------------------------------------

fn device_name() -> Option<String> {
    std::env::var("KBYPASS_RDMA_DEVICE").ok()
}

struct Pair {
    ctx: Context,
    cq: CompletionQueue,
    a: QueuePair,
    b: QueuePair,
    mr_a: MemoryRegion,
    mr_b: MemoryRegion,
}

fn rc_pair(caps: QpCaps, params: impl Fn(&mut PathParams)) -> Pair {
    let ctx = Context::open(device_name().as_deref()).expect("open the RDMA device");
    let mut p = PathParams {
        sgid_index: ctx.default_gid_index(1).unwrap() as u8,
        ..Default::default()
    };
    params(&mut p);
    let gid = ctx.query_gid(1, i32::from(p.sgid_index)).unwrap();
    let lid = ctx.query_port(1).unwrap().lid;
    let pd = ctx.alloc_pd().unwrap();
    let cq = ctx.create_cq(256, None).unwrap();
    let a = QueuePair::create(&pd, QpType::Rc, &cq, &cq, caps).unwrap();
    let b = QueuePair::create(&pd, QpType::Rc, &cq, &cq, caps).unwrap();
    connect_pair(&p, gid, lid, (&a, 0x1000), (&b, 0x2000));
    assert_eq!(a.state().unwrap(), ffi::QPS_RTS);
    let mr_a = pd
        .register(Mapping::anonymous(1 << 16, 0).unwrap(), Access::ALL)
        .unwrap();
    let mr_b = pd
        .register(Mapping::anonymous(1 << 16, 0).unwrap(), Access::ALL)
        .unwrap();
    Pair {
        ctx,
        cq,
        a,
        b,
        mr_a,
        mr_b,
    }
}

/// Both QPs to INIT (all access rights), then each to RTS towards the other (same port and
/// GID); each pair is a QP and the PSN it starts sending from.
fn connect_pair(
    p: &PathParams,
    gid: Gid,
    lid: u16,
    (a, psn_a): (&QueuePair, u32),
    (b, psn_b): (&QueuePair, u32),
) {
    for qp in [a, b] {
        qp.to_init(p, Access::ALL).unwrap();
    }
    let towards = |qp: &QueuePair, psn| Endpoint {
        qpn: qp.qp_num(),
        psn,
        gid,
        lid,
    };
    a.connect(p, &towards(b, psn_b), psn_a).unwrap();
    b.connect(p, &towards(a, psn_a), psn_b).unwrap();
}

/// Poll until `n` completions arrived (or 10 s passed).
fn completions(cq: &CompletionQueue, n: usize) -> Vec<WorkCompletion> {
    let mut out = Vec::new();
    let mut buf = [WorkCompletion::default(); 16];
    let t = Instant::now();
    while out.len() < n {
        let got = cq.poll(&mut buf).unwrap();
        out.extend_from_slice(&buf[..got]);
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "only {} of {n} completions: {out:?}",
            out.len()
        );
    }
    out
}

#[test]
#[ignore = "needs an RDMA device: run through tests/rdma (soft-RoCE VM)"]
fn rdma_device_and_port_queries() {
    let ctx = Context::open(device_name().as_deref()).unwrap();
    let d = ctx.query_device().unwrap();
    assert!(
        d.max_qp > 0 && d.max_cqe > 0 && d.phys_port_cnt >= 1,
        "{d:?}"
    );
    let port = ctx.query_port(1).unwrap();
    assert_eq!(port.state, ffi::PORT_ACTIVE, "{port:?}");
    assert!(port.gid_tbl_len > 1, "{port:?}");
    if port.link_layer == ffi::LINK_LAYER_ETHERNET {
        let i = ctx.default_gid_index(1).unwrap();
        let g = ctx.query_gid(1, i).unwrap();
        assert!(g.ipv4().is_some(), "default GID {g} is not IPv4-mapped");
        assert_eq!(ctx.gid_type(1, i).as_deref(), Some("RoCE v2"));
    }
}

#[test]
#[ignore = "needs an RDMA device: run through tests/rdma (soft-RoCE VM)"]
fn rdma_rc_write_send_read_and_atomics() {
    let t = rc_pair(QpCaps::default(), |_| ());
    let msg = b"kbypass rdma write";
    t.mr_a.write(0, msg).unwrap();
    // RDMA WRITE a → b
    let sg = [t.mr_a.sge(0, msg.len()).unwrap()];
    let op = SendOp::Write {
        remote_addr: t.mr_b.addr() + 100,
        rkey: t.mr_b.rkey(),
    };
    t.a.post_send(1, op, &sg, SendFlags::SIGNALED).unwrap();
    let wc = completions(&t.cq, 1);
    assert!(
        wc[0].is_success() && wc[0].wr_id == 1 && wc[0].opcode == 1,
        "{wc:?}"
    );
    let mut got = vec![0u8; msg.len()];
    t.mr_b.read(100, &mut got).unwrap();
    assert_eq!(got, msg);

    // SEND with immediate b → a into a posted receive
    t.mr_b.write(4096, b"send-imm").unwrap();
    t.a.post_recv(7, &[t.mr_a.sge(8192, 64).unwrap()]).unwrap();
    t.b.post_send(
        2,
        SendOp::SendImm(0xfeed_beef),
        &[t.mr_b.sge(4096, 8).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    let wcs = completions(&t.cq, 2);
    let recv = wcs
        .iter()
        .find(|w| w.wr_id == 7)
        .expect("receive completion");
    assert!(
        recv.is_success() && recv.opcode == 128 && recv.byte_len == 8,
        "{recv:?}"
    );
    assert_eq!(recv.imm(), Some(0xfeed_beef));
    assert_eq!(recv.qp_num, t.a.qp_num());
    let mut got = [0u8; 8];
    t.mr_a.read(8192, &mut got).unwrap();
    assert_eq!(&got, b"send-imm");

    // RDMA READ b's bytes back into a, with two SGEs (scatter)
    t.mr_b.write(200, b"0123456789").unwrap();
    let sg = [t.mr_a.sge(300, 4).unwrap(), t.mr_a.sge(400, 6).unwrap()];
    t.a.post_send(
        3,
        SendOp::Read {
            remote_addr: t.mr_b.addr() + 200,
            rkey: t.mr_b.rkey(),
        },
        &sg,
        SendFlags::SIGNALED,
    )
    .unwrap();
    let wc = completions(&t.cq, 1);
    assert!(wc[0].is_success() && wc[0].opcode == 2, "{wc:?}");
    let (mut x, mut y) = ([0u8; 4], [0u8; 6]);
    t.mr_a.read(300, &mut x).unwrap();
    t.mr_a.read(400, &mut y).unwrap();
    assert_eq!((&x, &y), (b"0123", b"456789"));

    // Atomics on an 8-byte aligned word of b; the old value lands in a.
    t.mr_b.write(512, &41u64.to_ne_bytes()).unwrap();
    let old = [t.mr_a.sge(600, 8).unwrap()];
    let (addr, rkey) = (t.mr_b.addr() + 512, t.mr_b.rkey());
    t.a.post_send(
        4,
        SendOp::FetchAdd {
            remote_addr: addr,
            rkey,
            add: 1,
        },
        &old,
        SendFlags::SIGNALED,
    )
    .unwrap();
    assert!(completions(&t.cq, 1)[0].is_success());
    let mut w = [0u8; 8];
    t.mr_a.read(600, &mut w).unwrap();
    assert_eq!(u64::from_ne_bytes(w), 41);
    t.a.post_send(
        5,
        SendOp::CompareSwap {
            remote_addr: addr,
            rkey,
            compare: 42,
            swap: 7,
        },
        &old,
        SendFlags::SIGNALED,
    )
    .unwrap();
    assert!(completions(&t.cq, 1)[0].is_success());
    t.mr_a.read(600, &mut w).unwrap();
    assert_eq!(u64::from_ne_bytes(w), 42);
    t.mr_b.read(512, &mut w).unwrap();
    assert_eq!(u64::from_ne_bytes(w), 7);
    drop(t.ctx);
}

#[test]
#[ignore = "needs an RDMA device: run through tests/rdma (soft-RoCE VM)"]
fn rdma_wrong_rkey_is_a_remote_access_error() {
    let t = rc_pair(QpCaps::default(), |p| p.retry_cnt = 1);
    let sg = [t.mr_a.sge(0, 8).unwrap()];
    let op = SendOp::Write {
        remote_addr: t.mr_b.addr(),
        rkey: t.mr_b.rkey() ^ 0x5a5a,
    };
    t.a.post_send(9, op, &sg, SendFlags::SIGNALED).unwrap();
    let wc = completions(&t.cq, 1);
    assert_eq!(wc[0].status_name(), "REM_ACCESS_ERR", "{wc:?}");
    let err = wc[0].check().unwrap_err().to_string();
    assert!(
        err.contains("work request 9 completed with REM_ACCESS_ERR") && err.contains("remote key"),
        "{err}"
    );
    assert_eq!(t.a.state().unwrap(), ffi::QPS_ERR);
    // Recovery: RESET → INIT → RTR → RTS again, and a write goes through.
    let p = PathParams {
        sgid_index: t.ctx.default_gid_index(1).unwrap() as u8,
        ..Default::default()
    };
    let gid = t.ctx.query_gid(1, i32::from(p.sgid_index)).unwrap();
    t.a.to_reset().unwrap();
    t.b.to_reset().unwrap();
    connect_pair(&p, gid, 0, (&t.a, 9), (&t.b, 5));
    t.mr_a.write(0, b"again!!!").unwrap();
    let op = SendOp::Write {
        remote_addr: t.mr_b.addr(),
        rkey: t.mr_b.rkey(),
    };
    t.a.post_send(10, op, &sg, SendFlags::SIGNALED).unwrap();
    let wc = completions(&t.cq, 1);
    assert!(wc[0].is_success(), "{wc:?}");
    let mut got = [0u8; 8];
    t.mr_b.read(0, &mut got).unwrap();
    assert_eq!(&got, b"again!!!");
}

#[test]
#[ignore = "needs an RDMA device: run through tests/rdma (soft-RoCE VM)"]
fn rdma_completion_channel_wait() {
    let ctx = Context::open(device_name().as_deref()).unwrap();
    let ch = ctx.create_comp_channel().unwrap();
    let cq = ctx.create_cq(16, Some(&ch)).unwrap();
    let pd = ctx.alloc_pd().unwrap();
    let p = PathParams {
        sgid_index: ctx.default_gid_index(1).unwrap() as u8,
        ..Default::default()
    };
    let gid = ctx.query_gid(1, i32::from(p.sgid_index)).unwrap();
    let a = QueuePair::create(&pd, QpType::Rc, &cq, &cq, QpCaps::default()).unwrap();
    let b = QueuePair::create(&pd, QpType::Rc, &cq, &cq, QpCaps::default()).unwrap();
    connect_pair(&p, gid, 0, (&a, 2), (&b, 1));
    let mr = pd
        .register(Mapping::anonymous(4096, 0).unwrap(), Access::ALL)
        .unwrap();
    cq.req_notify(false).unwrap();
    assert!(
        !cq.wait(Some(Duration::from_millis(50))).unwrap(),
        "an event without any work"
    );
    b.post_recv(1, &[mr.sge(0, 64).unwrap()]).unwrap();
    a.post_send(
        2,
        SendOp::Send,
        &[mr.sge(1024, 16).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    assert!(
        cq.wait(Some(Duration::from_secs(10))).unwrap(),
        "no completion event"
    );
    let wcs = completions(&cq, 2);
    assert!(wcs.iter().all(|w| w.is_success()), "{wcs:?}");
    // poll_blocking: times out empty, then returns completions that arrive while it sleeps.
    let mut buf = [WorkCompletion::default(); 4];
    assert_eq!(
        cq.poll_blocking(&mut buf, Some(Duration::from_millis(50)))
            .unwrap(),
        0
    );
    b.post_recv(3, &[mr.sge(0, 64).unwrap()]).unwrap();
    a.post_send(
        4,
        SendOp::Send,
        &[mr.sge(1024, 16).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    let mut got = 0;
    while got < 2 {
        let n = cq
            .poll_blocking(&mut buf[got..], Some(Duration::from_secs(10)))
            .unwrap();
        assert!(n > 0, "poll_blocking timed out with work outstanding");
        got += n;
    }
    assert!(
        buf[..2]
            .iter()
            .all(|w| w.is_success() && (w.wr_id == 3 || w.wr_id == 4)),
        "{buf:?}"
    );
    // Drop the parents first: children keep them alive, and release in the right order.
    drop(ctx);
    drop(pd);
    drop(ch);
    drop(cq);
    drop(a);
    drop(mr);
    drop(b);
}

#[test]
#[ignore = "needs an RDMA device: run through tests/rdma (soft-RoCE VM)"]
fn rdma_ud_send_with_address_handle() {
    let ctx = Context::open(device_name().as_deref()).unwrap();
    let p = PathParams {
        sgid_index: ctx.default_gid_index(1).unwrap() as u8,
        ..Default::default()
    };
    let gid = ctx.query_gid(1, i32::from(p.sgid_index)).unwrap();
    let pd = ctx.alloc_pd().unwrap();
    let cq = ctx.create_cq(64, None).unwrap();
    let a = QueuePair::create(&pd, QpType::Ud, &cq, &cq, QpCaps::default()).unwrap();
    let b = QueuePair::create(&pd, QpType::Ud, &cq, &cq, QpCaps::default()).unwrap();
    for qp in [&a, &b] {
        qp.to_init(&p, Access::LOCAL_WRITE).unwrap();
        qp.connect(
            &p,
            &Endpoint {
                qpn: 0,
                psn: 0,
                gid,
                lid: 0,
            },
            0,
        )
        .unwrap();
    }
    let mr = pd
        .register(Mapping::anonymous(8192, 0).unwrap(), Access::LOCAL_WRITE)
        .unwrap();
    // UD receives start with a 40-byte GRH.
    b.post_recv(1, &[mr.sge(0, 40 + 256).unwrap()]).unwrap();
    mr.write(4096, b"datagram").unwrap();
    let ah = pd
        .create_ah(
            &Endpoint {
                qpn: b.qp_num(),
                psn: 0,
                gid,
                lid: 0,
            },
            p.sgid_index,
            1,
        )
        .unwrap();
    let op = SendOp::UdSend {
        ah: &ah,
        remote_qpn: b.qp_num(),
        remote_qkey: p.qkey,
        imm: Some(77),
    };
    a.post_send(2, op, &[mr.sge(4096, 8).unwrap()], SendFlags::SIGNALED)
        .unwrap();
    let wcs = completions(&cq, 2);
    let recv = wcs
        .iter()
        .find(|w| w.wr_id == 1)
        .expect("receive completion");
    assert!(
        recv.is_success() && recv.byte_len == 48 && recv.imm() == Some(77),
        "{recv:?}"
    );
    assert_eq!(recv.src_qp, a.qp_num());
    let mut got = [0u8; 8];
    mr.read(40, &mut got).unwrap();
    assert_eq!(&got, b"datagram");
}

#[test]
#[ignore = "needs an RDMA device: run through tests/rdma (soft-RoCE VM)"]
fn rdma_many_outstanding_and_flush_on_error() {
    let caps = QpCaps {
        max_send_wr: 64,
        max_recv_wr: 64,
        ..Default::default()
    };
    let t = rc_pair(caps, |_| ());
    for i in 0..64 {
        t.b.post_recv(1000 + i, &[t.mr_b.sge(i as usize * 64, 64).unwrap()])
            .unwrap();
    }
    for i in 0..32u64 {
        t.mr_a.write(i as usize * 64, &i.to_ne_bytes()).unwrap();
        t.a.post_send(
            i,
            SendOp::Send,
            &[t.mr_a.sge(i as usize * 64, 8).unwrap()],
            SendFlags::SIGNALED,
        )
        .unwrap();
    }
    let wcs = completions(&t.cq, 64);
    assert!(wcs.iter().all(|w| w.is_success()), "{wcs:?}");
    for i in 0..32u64 {
        let mut w = [0u8; 8];
        t.mr_b.read(i as usize * 64, &mut w).unwrap();
        assert_eq!(u64::from_ne_bytes(w), i);
    }
    // The 32 receives still posted on b flush when b goes to the error state.
    t.b.to_error().unwrap();
    let flushed = completions(&t.cq, 32);
    assert!(
        flushed.iter().all(|w| w.status_name() == "WR_FLUSH_ERR"),
        "{flushed:?}"
    );
}

// --- interop with rdma-core's ibv_rc_pingpong ----------------------------------------------

const PP_ITERS: usize = 50;
const PP_SIZE: usize = 4096;

struct PingpongSide {
    cq: CompletionQueue,
    qp: QueuePair,
    mr: MemoryRegion,
    params: PathParams,
    local: Endpoint,
}

fn pingpong_side(psn: u32) -> PingpongSide {
    let ctx = Context::open(device_name().as_deref()).unwrap();
    // ibv_rc_pingpong is run with `-g 1`; use the same GID index.
    let params = PathParams {
        sgid_index: 1,
        ..Default::default()
    };
    let gid = ctx.query_gid(1, 1).unwrap();
    let pd = ctx.alloc_pd().unwrap();
    let cq = ctx.create_cq(256, None).unwrap();
    let qp = QueuePair::create(&pd, QpType::Rc, &cq, &cq, QpCaps::default()).unwrap();
    qp.to_init(&params, Access::LOCAL_WRITE).unwrap();
    let mr = pd
        .register(
            Mapping::anonymous(2 * PP_SIZE, 0).unwrap(),
            Access::LOCAL_WRITE,
        )
        .unwrap();
    for i in 0..16 {
        qp.post_recv(100 + i, &[mr.sge(0, PP_SIZE).unwrap()])
            .unwrap();
    }
    let local = Endpoint {
        qpn: qp.qp_num(),
        psn,
        gid,
        lid: ctx.query_port(1).unwrap().lid,
    };
    PingpongSide {
        cq,
        qp,
        mr,
        params,
        local,
    }
}

/// Wait for one completion of `kind` (128 = receive, 0 = send), checking its status.
fn wait_for(cq: &CompletionQueue, pending: &mut Vec<WorkCompletion>, kind: i32) {
    let t = Instant::now();
    loop {
        if let Some(i) = pending.iter().position(|w| w.opcode == kind) {
            let w = pending.remove(i);
            assert!(w.is_success(), "{w:?} ({})", w.status_name());
            return;
        }
        let mut buf = [WorkCompletion::default(); 8];
        let n = cq.poll(&mut buf).unwrap();
        pending.extend_from_slice(&buf[..n]);
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no completion of kind {kind}"
        );
    }
}

fn run_pingpong(args: &[&str]) -> std::process::Child {
    std::process::Command::new("ibv_rc_pingpong")
        .args([
            "-d",
            device_name().as_deref().unwrap_or("rxe0"),
            "-g",
            "1",
            "-s",
            "4096",
        ])
        .args(["-n", &PP_ITERS.to_string()])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ibv_rc_pingpong (apt-get install ibverbs-utils)")
}

fn finish(child: std::process::Child) {
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ibv_rc_pingpong failed: {text}");
    assert!(text.contains(&format!("{PP_ITERS} iters in")), "{text}");
}

#[test]
#[ignore = "needs an RDMA device: run through tests/rdma (soft-RoCE VM)"]
fn rdma_kbypass_server_with_ibv_rc_pingpong_client() {
    let s = pingpong_side(0x1234);
    let listener = std::net::TcpListener::bind(("0.0.0.0", 18600)).unwrap();
    let child = run_pingpong(&["-p", "18600", "127.0.0.1"]);
    let never = Cancel::never();
    let t = Duration::from_secs(30);
    let remote = oob::pingpong_accept(&listener, &s.local, t, &never, |r| {
        s.qp.connect(&s.params, r, s.local.psn)
    })
    .unwrap();
    assert_eq!(
        remote.gid, s.local.gid,
        "loopback: both ends share the one rxe GID"
    );
    let mut pending = Vec::new();
    for i in 0..PP_ITERS as u64 {
        wait_for(&s.cq, &mut pending, 128);
        s.qp.post_recv(100 + i, &[s.mr.sge(0, PP_SIZE).unwrap()])
            .unwrap();
        s.qp.post_send(
            i,
            SendOp::Send,
            &[s.mr.sge(PP_SIZE, PP_SIZE).unwrap()],
            SendFlags::SIGNALED,
        )
        .unwrap();
        wait_for(&s.cq, &mut pending, 0);
    }
    finish(child);
}

#[test]
#[ignore = "needs an RDMA device: run through tests/rdma (soft-RoCE VM)"]
fn rdma_kbypass_client_with_ibv_rc_pingpong_server() {
    let s = pingpong_side(0x4321);
    let child = run_pingpong(&["-p", "18601"]);
    let (t, never) = (Duration::from_secs(30), Cancel::never());
    let remote = oob::pingpong_connect(("127.0.0.1", 18601), &s.local, t, &never).unwrap();
    s.qp.connect(&s.params, &remote, s.local.psn).unwrap();
    let mut pending = Vec::new();
    for i in 0..PP_ITERS as u64 {
        s.qp.post_send(
            i,
            SendOp::Send,
            &[s.mr.sge(PP_SIZE, PP_SIZE).unwrap()],
            SendFlags::SIGNALED,
        )
        .unwrap();
        wait_for(&s.cq, &mut pending, 0);
        wait_for(&s.cq, &mut pending, 128);
        s.qp.post_recv(100 + i, &[s.mr.sge(0, PP_SIZE).unwrap()])
            .unwrap();
    }
    finish(child);
}

#[test]
#[ignore = "needs an RDMA device: run through tests/rdma (soft-RoCE VM)"]
fn rdma_shared_receive_queue_and_inline_send() {
    let ctx = Context::open(device_name().as_deref()).unwrap();
    let p = PathParams {
        sgid_index: ctx.default_gid_index(1).unwrap() as u8,
        ..Default::default()
    };
    let gid = ctx.query_gid(1, i32::from(p.sgid_index)).unwrap();
    let pd = ctx.alloc_pd().unwrap();
    let cq = ctx.create_cq(64, None).unwrap();
    let srq = pd.create_srq(32, 1).unwrap();
    let a = QueuePair::create(&pd, QpType::Rc, &cq, &cq, QpCaps::default()).unwrap();
    let b = QueuePair::create_with_srq(&pd, QpType::Rc, &cq, &cq, QpCaps::default(), Some(&srq))
        .unwrap();
    connect_pair(&p, gid, 0, (&a, 4), (&b, 3));
    let mr = pd
        .register(Mapping::anonymous(4096, 0).unwrap(), Access::LOCAL_WRITE)
        .unwrap();
    for i in 0..4 {
        srq.post_recv(50 + i, &[mr.sge(i as usize * 64, 64).unwrap()])
            .unwrap();
    }
    // Inline: the provider copies the payload into the work request during post_send; it
    // comes from a memory region (the lkey is not checked, the memory is still ours).
    let src = pd
        .register(Mapping::anonymous(4096, 0).unwrap(), Access::LOCAL_READ)
        .unwrap();
    src.write(0, b"inline!!").unwrap();
    assert!(a.max_inline_data() >= QpCaps::default().max_inline_data);
    let too_long = src.sge(0, a.max_inline_data() as usize + 1).unwrap();
    let e = a
        .post_send(9, SendOp::Send, &[too_long], SendFlags::INLINE)
        .unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument(_)) && e.to_string().contains("max_inline_data"),
        "{e}"
    );
    let read = SendOp::Read {
        remote_addr: mr.addr(),
        rkey: mr.rkey(),
    };
    let e = a
        .post_send(9, read, &[src.sge(0, 8).unwrap()], SendFlags::INLINE)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    a.post_send(
        1,
        SendOp::Send,
        &[src.sge(0, 8).unwrap()],
        SendFlags::SIGNALED | SendFlags::INLINE,
    )
    .unwrap();
    let wcs = completions(&cq, 2);
    assert!(wcs.iter().all(|w| w.check().is_ok()), "{wcs:?}");
    let recv = wcs.iter().find(|w| w.opcode == 128).unwrap();
    assert_eq!(
        (recv.wr_id, recv.qp_num, recv.byte_len),
        (50, b.qp_num(), 8)
    );
    let mut got = [0u8; 8];
    mr.read(0, &mut got).unwrap();
    assert_eq!(&got, b"inline!!");
    drop(srq); // b still holds it
}

#[test]
#[ignore = "needs an RDMA device: run through tests/rdma (soft-RoCE VM)"]
fn rdma_rnr_retry_exhausted_without_a_receive() {
    // rnr_retry 1 (7 would retry forever) and the shortest RNR timer: a SEND to a QP with no
    // receive posted fails with RNR_RETRY_EXC_ERR instead of hanging.
    let t = rc_pair(QpCaps::default(), |p| {
        p.rnr_retry = 1;
        p.min_rnr_timer = 1;
    });
    t.a.post_send(
        1,
        SendOp::Send,
        &[t.mr_a.sge(0, 8).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    let wc = completions(&t.cq, 1);
    assert_eq!(wc[0].status_name(), "RNR_RETRY_EXC_ERR", "{wc:?}");
    assert!(wc[0]
        .check()
        .unwrap_err()
        .to_string()
        .contains("no receive posted"));
}

#[test]
#[ignore = "needs an RDMA device: run through tests/rdma (soft-RoCE VM)"]
fn rdma_perf_loops_measure_real_transfers() {
    let t = rc_pair(QpCaps::default(), |_| ());
    t.mr_a.write(0, &[0xab; 4096]).unwrap();
    let bw = perf::write_bandwidth(
        &t.a,
        &t.cq,
        &t.mr_a,
        t.mr_b.addr(),
        t.mr_b.rkey(),
        4096,
        300,
        64,
        16,
        &Cancel::never(),
    )
    .unwrap();
    assert_eq!(bw.bytes, 300 * 4096);
    assert!(bw.seconds > 0.0 && bw.mb_per_s() > 0.0, "{bw:?}");
    let mut got = [0u8; 4096];
    t.mr_b.read(0, &mut got).unwrap();
    assert!(got.iter().all(|&b| b == 0xab), "the writes did not land");
    // Latency needs one CQ per side: a second pair with separate CQs.
    let pd = t.ctx.alloc_pd().unwrap();
    let (cq_a, cq_b) = (
        t.ctx.create_cq(16, None).unwrap(),
        t.ctx.create_cq(16, None).unwrap(),
    );
    let p = PathParams {
        sgid_index: t.ctx.default_gid_index(1).unwrap() as u8,
        ..Default::default()
    };
    let gid = t.ctx.query_gid(1, i32::from(p.sgid_index)).unwrap();
    let a = QueuePair::create(&pd, QpType::Rc, &cq_a, &cq_a, QpCaps::default()).unwrap();
    let b = QueuePair::create(&pd, QpType::Rc, &cq_b, &cq_b, QpCaps::default()).unwrap();
    connect_pair(&p, gid, 0, (&a, 2), (&b, 1));
    let mr_a = pd
        .register(Mapping::anonymous(4096, 0).unwrap(), Access::ALL)
        .unwrap();
    let mr_b = pd
        .register(Mapping::anonymous(4096, 0).unwrap(), Access::ALL)
        .unwrap();
    let lat = perf::write_latency(&a, &b, &cq_a, &cq_b, &mr_a, &mr_b, 8, 50, &Cancel::never());
    let lat = lat.unwrap();
    assert_eq!(lat.len(), 50);
    assert!(lat.iter().all(|&us| us > 0.0), "{lat:?}");
    assert!(
        perf::write_bandwidth(&t.a, &t.cq, &t.mr_a, 0, 0, 8, 10, 4, 8, &Cancel::never()).is_err(),
        "signal_every > depth"
    );
}
