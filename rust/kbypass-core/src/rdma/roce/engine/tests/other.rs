//! UC, UD, memory, options and clean-up.

use std::net::Ipv6Addr;
use std::time::Duration;

use super::*;
use crate::sys::netlink::xdp_query;
use crate::sys::testutil::is_root;
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
    let ah =
        x.pd.create_ah(&y.qp.endpoint(0), &crate::rdma::Cancel::never())
            .unwrap();
    assert_eq!(ah.mac(), b.pair.mac(2));
    let ah = crate::rdma::AddressHandle::from(ah);
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
    let (x, y) = (
        side(&a, QpType::Rc, 1 << 20),
        side(&eb, QpType::Rc, 1 << 20),
    );
    let p = params();
    x.qp.connect(&p, &y.qp.endpoint(1), 2).unwrap();
    y.qp.connect(&p, &x.qp.endpoint(2), 1).unwrap();
    // Work in flight when everything goes must not hold anything up.
    for i in 0..8 {
        let op = SendOp::Write {
            remote_addr: y.mr.addr(),
            rkey: y.mr.rkey(),
        };
        x.qp.post_send(i, op, &[x.mr.sge(0, 1 << 20).unwrap()], SendFlags::SIGNALED)
            .unwrap();
    }
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
    // A CPU that does not exist: refused after the port opened, and the port is released
    // (queue 0 of veth1 in the other namespace is taken by `b.b`; use a fresh pair's).
    drop(_g);
    let pair = VethPair::with(Default::default()).unwrap();
    let _g = NetnsGuard::enter(&pair.a).unwrap();
    let pinned = EngineOptions {
        progress: Progress::Thread { cpu: Some(4095) },
        ..Default::default()
    };
    let ip = IpAddr::V4(pair.ip(1));
    assert!(Engine::open(VethPair::IF_A, 0, ip, &pinned).is_err());
    let i = if_nametoindex(VethPair::IF_A).unwrap();
    assert_eq!(xdp_query(i).unwrap().first(), None, "nothing left attached");
    assert!(Engine::open(VethPair::IF_A, 0, ip, &Default::default()).is_ok());
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
    assert!(
        ro.write(0, b"no").is_err(),
        "a read-only registration is not written"
    );
    let cq = b.a.create_cq(16, None).unwrap();
    let qp = pd
        .create_qp(QpType::Rc, &cq, &cq, QpCaps::default(), true)
        .unwrap();
    qp.to_init(&params(), Access::ALL).unwrap();
    // A receive needs LOCAL_WRITE; a region another PD owns is not this QP's.
    assert!(qp.post_recv(1, &[ro.sge(0, 64).unwrap()]).is_err());
    qp.post_recv(2, &[rw.sge(0, 64).unwrap()]).unwrap();
    let five = [rw.sge(0, 8).unwrap(); 5];
    assert!(
        qp.post_recv(9, &five).is_err(),
        "more SGEs than max_recv_sge"
    );
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
    // Back to RESET and up again.
    qp.to_reset().unwrap();
    assert_eq!(qp.state(), QpState::Reset);
    assert!(qp.post_recv(6, &[rw.sge(0, 8).unwrap()]).is_err());
    qp.to_init(&params(), Access::ALL).unwrap();
    qp.post_recv(7, &[rw.sge(0, 8).unwrap()]).unwrap();
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

#[test]
fn ipv6_engines_resolve_each_other_and_run_rc_and_ud() {
    if !is_root() {
        eprintln!("skipped: needs root (AF_XDP, XDP and network namespaces)");
        return;
    }
    let pair = VethPair::with(Default::default()).expect("veth pair");
    // RFC 5180's benchmarking prefix, one /64 per bench.
    let ip6 = |h: u16| IpAddr::from([0x2001, 2, 0, u16::from(pair.net), 0, 0, 0, h]);
    let open = |ns: &str, ifname: &str, host: u16| {
        let _g = NetnsGuard::enter(ns).unwrap();
        let out = std::process::Command::new("ip")
            .args([
                "-6",
                "addr",
                "add",
                &format!("{}/64", ip6(host)),
                "dev",
                ifname,
                "nodad",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        Engine::open(ifname, 0, ip6(host), &Default::default()).unwrap()
    };
    let a = open(&pair.a, VethPair::IF_A, 1);
    let b = open(&pair.b, VethPair::IF_B, 2);
    assert_eq!(IpAddr::V6(Ipv6Addr::from(a.gid().0)), ip6(1));
    let bench = Bench { a, b, pair };
    let (x, y) = connected(&bench, QpType::Rc, 1 << 16);
    let data = pattern(10_000, 6);
    x.mr.write(0, &data).unwrap();
    y.qp.post_recv(1, &[y.mr.sge(0, 1 << 16).unwrap()]).unwrap();
    x.qp.post_send(
        1,
        SendOp::Send,
        &[x.mr.sge(0, data.len()).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    assert_eq!(wait_wcs(&x.cq, 1, T)[0].status, 0);
    let r = wait_wcs(&y.cq, 1, T);
    assert_eq!(r[0].byte_len, 10_000);
    let mut back = vec![0; data.len()];
    y.mr.read(0, &mut back).unwrap();
    assert!(back == data);
    // UD: the GRH is the whole IPv6 header.
    let (u, v) = (
        side(&bench.a, QpType::Ud, 4096),
        side(&bench.b, QpType::Ud, 4096),
    );
    for s in [&u, &v] {
        s.qp.connect(&params(), &s.qp.endpoint(0), 0).unwrap();
    }
    v.qp.post_recv(1, &[v.mr.sge(0, 1064).unwrap()]).unwrap();
    let ah = crate::rdma::AddressHandle::from(
        u.pd.create_ah(&v.qp.endpoint(0), &crate::rdma::Cancel::never())
            .unwrap(),
    );
    let op = SendOp::UdSend {
        ah: &ah,
        remote_qpn: v.qp.qp_num(),
        remote_qkey: params().qkey,
        imm: None,
    };
    u.qp.post_send(1, op, &[u.mr.sge(0, 500).unwrap()], SendFlags::SIGNALED)
        .unwrap();
    let r = wait_wcs(&v.cq, 1, T);
    assert_eq!(
        (r[0].status, r[0].byte_len, r[0].src_qp),
        (0, 540, u.qp.qp_num())
    );
    let mut grh = [0u8; 40];
    v.mr.read(0, &mut grh).unwrap();
    assert_eq!(grh[0] >> 4, 6);
    assert_eq!(&grh[8..24], &Ipv6Addr::from(bench.a.gid().0).octets());
}

#[test]
fn srq_feeds_two_qps_and_send_with_invalidate_revokes_a_key() {
    let Some(b) = bench(Progress::Thread { cpu: None }) else {
        return;
    };
    let (x1, x2) = (
        side(&b.a, QpType::Rc, 1 << 16),
        side(&b.a, QpType::Rc, 1 << 16),
    );
    let pd = b.b.alloc_pd().unwrap();
    let cq = b.b.create_cq(64, None).unwrap();
    let mr = pd
        .register(ExternalMemory::zeroed(1 << 16), Access::ALL)
        .unwrap();
    let srq = pd.create_srq(8, 2).unwrap();
    let mk = || {
        pd.create_qp_with_srq(QpType::Rc, &cq, &cq, QpCaps::default(), true, &srq)
            .unwrap()
    };
    let (y1, y2) = (mk(), mk());
    let p = params();
    for (x, y) in [(&x1, &y1), (&x2, &y2)] {
        x.qp.connect(&p, &y.endpoint(3), 4).unwrap();
        y.connect(&p, &x.qp.endpoint(4), 3).unwrap();
    }
    assert!(
        y1.post_recv(1, &[mr.sge(0, 64).unwrap()]).is_err(),
        "post to the SRQ"
    );
    for i in 0..3u64 {
        srq.post_recv(10 + i, &[mr.sge(i as usize * 1024, 1024).unwrap()])
            .unwrap();
    }
    assert_eq!(srq.len(), 3);
    let f = SendFlags::SIGNALED;
    x1.mr.write(0, b"from x1").unwrap();
    x2.mr.write(0, b"from x2").unwrap();
    x1.qp
        .post_send(1, SendOp::Send, &[x1.mr.sge(0, 7).unwrap()], f)
        .unwrap();
    assert_eq!(wait_wcs(&x1.cq, 1, T)[0].status, 0);
    x2.qp
        .post_send(1, SendOp::Send, &[x2.mr.sge(0, 7).unwrap()], f)
        .unwrap();
    assert_eq!(wait_wcs(&x2.cq, 1, T)[0].status, 0);
    let got = wait_wcs(&cq, 2, T);
    let seen: Vec<(u64, u32)> = got.iter().map(|w| (w.wr_id, w.qp_num)).collect();
    assert_eq!(seen, [(10, y1.qp_num()), (11, y2.qp_num())]);
    let mut m = [0u8; 7];
    mr.read(1024, &mut m).unwrap();
    assert_eq!(&m, b"from x2");
    assert_eq!(srq.len(), 1);

    // SEND with invalidate: the key of a region that allows it stops working.
    let target = pd
        .register(ExternalMemory::zeroed(4096), Access::ALL)
        .unwrap();
    target.allow_remote_invalidate();
    assert!(target.is_valid());
    let inv = SendOp::SendInv {
        invalidate_rkey: target.rkey(),
    };
    x1.qp
        .post_send(2, inv, &[x1.mr.sge(0, 7).unwrap()], f)
        .unwrap();
    assert_eq!(wait_wcs(&x1.cq, 1, T)[0].status, 0);
    let w = wait_wcs(&cq, 1, T);
    assert_eq!((w[0].wr_id, w[0].status), (12, 0));
    assert_ne!(w[0].wc_flags & 8, 0, "IBV_WC_WITH_INV");
    assert_eq!(w[0].invalidated_rkey(), Some(target.rkey()));
    assert!(!target.is_valid());
    let write = SendOp::Write {
        remote_addr: target.addr(),
        rkey: target.rkey(),
    };
    x1.qp
        .post_send(3, write, &[x1.mr.sge(0, 7).unwrap()], f)
        .unwrap();
    assert_eq!(wait_wcs(&x1.cq, 1, T)[0].status_name(), "REM_ACCESS_ERR");
}

#[test]
fn reads_beyond_max_rd_atomic_wait_for_credits_and_all_complete() {
    let Some(b) = bench(Progress::Thread { cpu: None }) else {
        return;
    };
    let (x, y) = connected(&b, QpType::Rc, 1 << 16);
    let data = pattern(1 << 15, 8);
    y.mr.write(0, &data).unwrap();
    // params() keeps max_rd_atomic at 1: eight reads go one at a time.
    for i in 0..8usize {
        let op = SendOp::Read {
            remote_addr: y.mr.addr() + (i * 4096) as u64,
            rkey: y.mr.rkey(),
        };
        x.qp.post_send(
            i as u64,
            op,
            &[x.mr.sge(i * 4096, 4096).unwrap()],
            SendFlags::SIGNALED,
        )
        .unwrap();
    }
    let w = wait_wcs(&x.cq, 8, T);
    assert_eq!(
        w.iter().map(|w| (w.wr_id, w.status)).collect::<Vec<_>>(),
        (0..8).map(|i| (i, 0)).collect::<Vec<_>>()
    );
    let mut back = vec![0; data.len()];
    x.mr.read(0, &mut back).unwrap();
    assert!(back == data);
}

#[test]
fn a_frame_with_an_unfinished_udp_checksum_is_judged_by_its_icrc() {
    use crate::rdma::roce::wire::{
        Bth, ExtHeaders, Frame, FrameSpec, IpHeader, Op, Opcode, Transport, WireError,
    };
    let spec = FrameSpec {
        eth_dst: [2, 0, 0, 0, 0, 2],
        eth_src: [2, 0, 0, 0, 0, 1],
        vlan_tci: None,
        ip: IpHeader::V6 {
            src: [0x20, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            dst: [0x20, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            traffic_class: 0,
            flow_label: 0,
            hop_limit: 64,
        },
        udp_src: 0xc011,
        bth: Bth::new(Opcode::new(Transport::Rc, Op::SendOnly).unwrap(), 0x11, 5),
        ext: ExtHeaders::default(),
    };
    let mut f = vec![0u8; spec.frame_len(100)];
    let n = spec.build(&[7; 100], &mut f).unwrap();
    f.truncate(n);
    // The UDP checksum (bytes 6..8 of the UDP header after 14 + 40 bytes) left as a
    // partial sum: the ICRC masks it, so the frame is intact.
    f[14 + 40 + 6] ^= 0x5a;
    assert_eq!(Frame::parse(&f).unwrap_err(), WireError::BadUdpChecksum);
    let ok = super::super::state::icrc_only(&f).unwrap();
    assert_eq!(ok.packet.payload, &[7; 100][..]);
    // Damage under the ICRC as well: refused.
    f[n - 10] ^= 1;
    assert!(matches!(
        super::super::state::icrc_only(&f),
        Err(WireError::BadIcrc { .. })
    ));
}

#[test]
fn solicited_only_notification_waits_for_a_solicited_send() {
    let Some(b) = bench(Progress::Thread { cpu: None }) else {
        return;
    };
    let x = side(&b.a, QpType::Rc, 1 << 16);
    let ch = b.b.create_comp_channel().unwrap();
    let pd = b.b.alloc_pd().unwrap();
    let cq = b.b.create_cq(16, Some(&ch)).unwrap();
    let mr = pd
        .register(ExternalMemory::zeroed(1 << 16), Access::ALL)
        .unwrap();
    let qp = pd
        .create_qp(QpType::Rc, &cq, &cq, QpCaps::default(), true)
        .unwrap();
    let p = params();
    x.qp.connect(&p, &qp.endpoint(5), 9).unwrap();
    qp.connect(&p, &x.qp.endpoint(9), 5).unwrap();
    for i in 0..2 {
        qp.post_recv(i, &[mr.sge(i as usize * 8192, 8192).unwrap()])
            .unwrap();
    }
    cq.req_notify(true).unwrap();
    x.qp.post_send(
        1,
        SendOp::Send,
        &[x.mr.sge(0, 3000).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    assert_eq!(wait_wcs(&x.cq, 1, T)[0].status, 0);
    assert!(
        !cq.wait(Some(Duration::from_millis(30))).unwrap(),
        "not solicited"
    );
    // A three-packet send: the bit is on its last packet.
    x.qp.post_send(
        2,
        SendOp::Send,
        &[x.mr.sge(0, 3000).unwrap()],
        SendFlags::SIGNALED | SendFlags::SOLICITED,
    )
    .unwrap();
    assert!(cq.wait(Some(T)).unwrap());
    assert_eq!(wait_wcs(&cq, 2, T).len(), 2);
}

#[test]
fn memory_table_bytes_mut_writes_back_when_dropped() {
    use crate::rdma::roce::rc::{MemoryTable, RemoteAccess};
    let mut t = MemoryTable::new();
    t.register(0x100, 0x1000, 16, RemoteAccess::ALL);
    for (i, b) in t.bytes_mut(0x100).unwrap().iter_mut().enumerate() {
        *b = i as u8;
    }
    assert_eq!(t.bytes(0x100).unwrap(), (0..16).collect::<Vec<u8>>());
    assert!(t.bytes_mut(0x200).is_none());
    // Shared handles see it; a masked one refuses what the mask lacks.
    let ro = t.with_mask(RemoteAccess {
        read: true,
        ..Default::default()
    });
    assert_eq!(ro.bytes(0x100).unwrap()[3], 3);
    assert!(
        ro.local(0x100, 0x1000, 16, true).is_some(),
        "local access is the region's"
    );
    assert!(t.invalidate_local(0x100));
    assert!(!ro.is_valid(0x100));
}
