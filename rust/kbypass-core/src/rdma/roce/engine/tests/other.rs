//! UC, UD, memory, options and clean-up.

use std::time::Duration;

use super::*;
use crate::sys::netlink::xdp_query;
use crate::sys::xdp::if_nametoindex;

const T: Duration = Duration::from_secs(10);

#[test]
fn uc_send_and_write_arrive() {
    let Some(b) = bench(Progress::Thread { cpu: None }) else {
        return;
    };
    let (x, y) = connected(&b, QpType::Uc, 1 << 16);
    let data = pattern(7000, 4);
    x.mr.write(0, &data).unwrap();
    y.qp.post_recv(3, &[y.mr.sge(0, 8192).unwrap()]).unwrap();
    let f = SendFlags::SIGNALED;
    x.qp.post_send(1, SendOp::Send, &[x.mr.sge(0, 7000).unwrap()], f)
        .unwrap();
    x.qp.post_send(
        2,
        SendOp::Write {
            remote_addr: y.mr.addr() + 20_000,
            rkey: y.mr.rkey(),
        },
        &[x.mr.sge(0, 7000).unwrap()],
        f,
    )
    .unwrap();
    // UC has no reads or atomics.
    let read = SendOp::Read {
        remote_addr: y.mr.addr(),
        rkey: y.mr.rkey(),
    };
    assert!(x
        .qp
        .post_send(9, read, &[x.mr.sge(0, 8).unwrap()], f)
        .is_err());
    let s = wait_wcs(&x.cq, 2, T);
    assert_eq!(
        s.iter().map(|w| (w.wr_id, w.status)).collect::<Vec<_>>(),
        [(1, 0), (2, 0)]
    );
    let r = wait_wcs(&y.cq, 1, T);
    assert_eq!((r[0].wr_id, r[0].opcode, r[0].byte_len), (3, WC_RECV, 7000));
    // The write completes at the sender when sent; give it time to land.
    let deadline = std::time::Instant::now() + T;
    let mut at = vec![0; 7000];
    while std::time::Instant::now() < deadline {
        y.mr.read(20_000, &mut at).unwrap();
        if at == data {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(at == data);
    let mut got = vec![0; 7000];
    y.mr.read(0, &mut got).unwrap();
    assert!(got == data);
}

#[test]
fn ud_send_carries_the_grh_source_qp_and_checks_the_qkey() {
    let Some(b) = bench(Progress::Thread { cpu: None }) else {
        return;
    };
    let (x, y) = (side(&b.a, QpType::Ud, 8192), side(&b.b, QpType::Ud, 8192));
    let p = params();
    for s in [&x, &y] {
        s.qp.connect(&p, &s.qp.endpoint(0), 0).unwrap();
    }
    y.qp.post_recv(1, &[y.mr.sge(0, 40 + 1024).unwrap()])
        .unwrap();
    y.qp.post_recv(2, &[y.mr.sge(2048, 40 + 1024).unwrap()])
        .unwrap();
    let ah = x.pd.create_ah(&y.qp.endpoint(0)).unwrap();
    assert_eq!(ah.mac(), b.pair.mac(2));
    let msg = pattern(1000, 5);
    x.mr.write(0, &msg).unwrap();
    let send = |qkey, imm| SendOp::UdSend {
        ah: &ah,
        remote_qpn: y.qp.qp_num(),
        remote_qkey: qkey,
        imm,
    };
    let f = SendFlags::SIGNALED;
    // The wrong Q_Key is dropped and counted; the right one arrives.
    x.qp.post_send(1, send(0x1234, None), &[x.mr.sge(0, 1000).unwrap()], f)
        .unwrap();
    x.qp.post_send(2, send(p.qkey, Some(77)), &[x.mr.sge(0, 1000).unwrap()], f)
        .unwrap();
    // More than one MTU is refused at post.
    assert!(x
        .qp
        .post_send(3, send(p.qkey, None), &[x.mr.sge(0, 2000).unwrap()], f)
        .is_err());
    assert_eq!(wait_wcs(&x.cq, 2, T).len(), 2);
    let r = wait_wcs(&y.cq, 1, T);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        (r[0].wr_id, r[0].byte_len, r[0].src_qp, r[0].imm()),
        (1, 1040, x.qp.qp_num(), Some(77))
    );
    assert_ne!(r[0].wc_flags & crate::rdma::ffi::WC_GRH, 0);
    let mut grh = [0u8; 40];
    y.mr.read(0, &mut grh).unwrap();
    assert_eq!(
        grh[20] >> 4,
        4,
        "the IPv4 header in the GRH's last 20 bytes"
    );
    assert_eq!(&grh[32..36], &b.pair.ip(1).octets());
    let mut got = vec![0; 1000];
    y.mr.read(40, &mut got).unwrap();
    assert_eq!(got, msg);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(b.b.counters().transport_dropped, 1);
}

#[test]
fn dropping_the_engine_removes_its_xdp_program_and_socket() {
    let Some(b) = bench(Progress::Thread { cpu: None }) else {
        return;
    };
    let Bench { a, b: eb, pair } = b;
    let (x, _y) = (side(&a, QpType::Rc, 4096), side(&eb, QpType::Rc, 4096));
    let ifindex = |ns: &str, ifname: &str| {
        let _g = NetnsGuard::enter(ns).unwrap();
        let i = if_nametoindex(ifname).unwrap();
        xdp_query(i).unwrap().first()
    };
    assert!(ifindex(&pair.a, VethPair::IF_A).is_some());
    // Objects keep the engine alive; the last one dropped releases it.
    drop(a);
    assert!(ifindex(&pair.a, VethPair::IF_A).is_some());
    drop(x);
    assert_eq!(ifindex(&pair.a, VethPair::IF_A), None);
    // The queue is free again: a new engine binds it.
    let _g = NetnsGuard::enter(&pair.a).unwrap();
    let again = Engine::open(
        VethPair::IF_A,
        0,
        IpAddr::V4(pair.ip(1)),
        &Default::default(),
    );
    assert!(again.is_ok(), "{again:?}");
}

#[test]
fn open_refuses_bad_options_without_leaving_anything_behind() {
    let Some(b) = bench(Progress::Caller) else {
        return;
    };
    let _g = NetnsGuard::enter(&b.pair.a).unwrap();
    let ip = IpAddr::V4(b.pair.ip(1));
    let bad = EngineOptions {
        ring_size: 100,
        ..Default::default()
    };
    assert!(Engine::open(VethPair::IF_A, 0, ip, &bad).is_err());
    assert!(Engine::open("kbx-no-such-if", 0, ip, &Default::default()).is_err());
    // The queue is taken by `b.a`: refused, and `b.a`'s program stays.
    assert!(Engine::open(VethPair::IF_A, 0, ip, &Default::default()).is_err());
    let i = if_nametoindex(VethPair::IF_A).unwrap();
    assert!(xdp_query(i).unwrap().first().is_some());
    assert!(Engine::open(VethPair::IF_A, 5, ip, &Default::default()).is_err());
    assert_eq!(
        b.a.gid().0[..12],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]
    );
    assert_eq!(b.a.max_mtu(), 1024, "1500-byte veth MTU");
}

#[test]
fn memory_regions_check_keys_bounds_and_rights() {
    let Some(b) = bench(Progress::Caller) else {
        return;
    };
    let pd = b.a.alloc_pd().unwrap();
    let mem = ExternalMemory::from_vec(vec![7u8; 4096]);
    assert!(
        pd.register(mem.clone(), Access::REMOTE_WRITE).is_err(),
        "needs LOCAL_WRITE"
    );
    assert!(pd
        .register_range(mem.clone(), 4000, 200, Access::ALL)
        .is_err());
    let ro = pd.register(mem.clone(), Access::REMOTE_READ).unwrap();
    let rw = pd.register_range(mem, 1024, 1024, Access::ALL).unwrap();
    assert_ne!(ro.lkey(), rw.lkey());
    assert_eq!(rw.addr(), ro.addr() + 1024);
    assert!(rw.sge(1000, 25).is_err());
    let cq = b.a.create_cq(16, None).unwrap();
    let qp = pd
        .create_qp(QpType::Rc, &cq, &cq, QpCaps::default(), true)
        .unwrap();
    qp.to_init(&params(), Access::ALL).unwrap();
    // A receive needs LOCAL_WRITE; a region another PD owns is not this QP's.
    assert!(qp.post_recv(1, &[ro.sge(0, 64).unwrap()]).is_err());
    qp.post_recv(2, &[rw.sge(0, 64).unwrap()]).unwrap();
    let other = b.a.alloc_pd().unwrap();
    let theirs = other
        .register(ExternalMemory::zeroed(64), Access::ALL)
        .unwrap();
    assert!(qp.post_recv(3, &[theirs.sge(0, 64).unwrap()]).is_err());
    // Posting a send before RTS is refused.
    assert!(qp
        .post_send(
            4,
            SendOp::Send,
            &[rw.sge(0, 8).unwrap()],
            SendFlags::SIGNALED
        )
        .is_err());
    // The error state flushes the receive posted.
    qp.to_error().unwrap();
    let w = wait_wcs(&cq, 1, T);
    assert_eq!((w[0].wr_id, w[0].status_name()), (2, "WR_FLUSH_ERR"));
    // A deregistered key no longer resolves.
    let sge = rw.sge(0, 8).unwrap();
    drop(rw);
    assert!(qp.post_recv(5, &[sge]).is_err());
}

#[test]
fn completion_channel_wakes_a_waiter() {
    let Some(b) = bench(Progress::Thread { cpu: None }) else {
        return;
    };
    let ch = b.b.create_comp_channel().unwrap();
    let (x, _) = (side(&b.a, QpType::Rc, 4096), ());
    let pd = b.b.alloc_pd().unwrap();
    let cq = b.b.create_cq(16, Some(&ch)).unwrap();
    let mr = pd
        .register(ExternalMemory::zeroed(4096), Access::ALL)
        .unwrap();
    let qp = pd
        .create_qp(QpType::Rc, &cq, &cq, QpCaps::default(), false)
        .unwrap();
    let p = params();
    x.qp.connect(&p, &qp.endpoint(5), 9).unwrap();
    qp.connect(&p, &x.qp.endpoint(9), 5).unwrap();
    qp.post_recv(1, &[mr.sge(0, 100).unwrap()]).unwrap();
    cq.req_notify(false).unwrap();
    assert!(!cq.wait(Some(Duration::from_millis(20))).unwrap());
    x.qp.post_send(
        1,
        SendOp::Send,
        &[x.mr.sge(0, 10).unwrap()],
        SendFlags::default(),
    )
    .unwrap();
    assert!(cq.wait(Some(T)).unwrap());
    let mut wc = [WorkCompletion::default(); 2];
    assert_eq!(cq.poll(&mut wc).unwrap(), 1);
    assert_eq!((wc[0].wr_id, wc[0].byte_len), (1, 10));
    // `qp` signals only what is posted SIGNALED: of its two sends, one completes.
    x.qp.post_recv(1, &[x.mr.sge(0, 64).unwrap()]).unwrap();
    x.qp.post_recv(2, &[x.mr.sge(64, 64).unwrap()]).unwrap();
    qp.post_send(
        10,
        SendOp::Send,
        &[mr.sge(0, 8).unwrap()],
        SendFlags::default(),
    )
    .unwrap();
    qp.post_send(
        11,
        SendOp::Send,
        &[mr.sge(0, 8).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    let at_x = wait_wcs(&x.cq, 3, T);
    // x's own send (1, signaled: sq_sig_all) and the two receives, in any order.
    let mut ids: Vec<(i32, u64)> = at_x.iter().map(|w| (w.opcode, w.wr_id)).collect();
    ids.sort();
    assert_eq!(ids, [(WC_SEND, 1), (WC_RECV, 1), (WC_RECV, 2)]);
    let mine = wait_wcs(&cq, 1, T);
    assert_eq!(mine.iter().map(|w| w.wr_id).collect::<Vec<_>>(), [11]);
    // poll_blocking without anything coming returns 0 after the timeout.
    assert_eq!(
        cq.poll_blocking(&mut wc, Some(Duration::from_millis(10)))
            .unwrap(),
        0
    );
}
