//! The verbs objects on the user-space backend: two engine contexts on a veth pair in
//! namespaces of the test's own (root; skipped otherwise), through the same API as libibverbs.

use std::net::{IpAddr, TcpListener};
use std::time::Duration;

use super::perftest::{self, Test};
use super::*;
use crate::error::Error;
use crate::sys::mm::Mapping;
use crate::sys::netns::NetnsGuard;
use crate::sys::testutil::{is_root, VethPair};

/// The tests one at a time: `devices()` lists every engine of the process.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn pair() -> Option<VethPair> {
    if !is_root() {
        eprintln!("skipped: needs root (AF_XDP, XDP and network namespaces)");
        return None;
    }
    Some(VethPair::with(Default::default()).expect("veth pair"))
}

fn open(pair: &VethPair, a: bool) -> Context {
    let (ns, ifname, host) = if a {
        (&pair.a, VethPair::IF_A, 1)
    } else {
        (&pair.b, VethPair::IF_B, 2)
    };
    Context::userspace(ifname, 0, IpAddr::V4(pair.ip(host)), Some(ns)).expect("engine")
}

struct Side {
    cq: CompletionQueue,
    qp: QueuePair,
    mr: MemoryRegion,
    local: Endpoint,
}

fn side(ctx: &Context, psn: u32) -> Side {
    let pd = ctx.alloc_pd().unwrap();
    let cq = ctx.create_cq(256, None).unwrap();
    let qp = QueuePair::create(&pd, QpType::Rc, &cq, &cq, QpCaps::default()).unwrap();
    let mr = pd
        .register(Mapping::anonymous(1 << 16, 0).unwrap(), Access::ALL)
        .unwrap();
    let local = Endpoint {
        qpn: qp.qp_num(),
        psn,
        gid: ctx.query_gid(1, 0).unwrap(),
        lid: 0,
    };
    qp.to_init(&PathParams::default(), Access::ALL).unwrap();
    Side { cq, qp, mr, local }
}

#[test]
fn a_user_space_context_is_a_context() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(pair) = pair() else { return };
    let a = open(&pair, true);
    assert!(a.is_userspace() && a.name() == "kbx-veth0" && a.interface() == Some("veth0"));
    assert_eq!(a.query_gid(1, 0).unwrap().ipv4(), Some(pair.ip(1)));
    assert_eq!(a.default_gid_index(1).unwrap(), 0);
    assert_eq!(a.gid_type(1, 0).as_deref(), Some("RoCE v2"));
    let port = a.query_port(1).unwrap();
    assert_eq!((port.state, port.link_layer, port.gid_tbl_len), (4, 2, 1));
    assert!(a.query_port(2).is_err() && a.query_gid(1, 1).is_err());
    let listed = devices().unwrap();
    let me = listed
        .iter()
        .find(|d| d.name == "kbx-veth0")
        .expect("listed");
    assert!(me.userspace && me.interface.as_deref() == Some("veth0"));
    let again = Context::open(Some("kbx-veth0")).unwrap();
    assert_eq!(again.query_gid(1, 0).unwrap(), a.query_gid(1, 0).unwrap());
    // what only libibverbs has is refused with what is supported
    let pd = a.alloc_pd().unwrap();
    let cq = a.create_cq(4, None).unwrap();
    let qp = QueuePair::create(&pd, QpType::Rc, &cq, &cq, QpCaps::default()).unwrap();
    let unsupported = [
        qp.modify(&mut ffi::ibv_qp_attr::default(), ffi::QP_STATE)
            .unwrap_err(),
        cm::CmConnection::connect(
            &qp,
            "198.18.0.2:7471".parse().unwrap(),
            Access::ALL,
            Duration::from_millis(10),
            &super::Cancel::never(),
        )
        .err()
        .unwrap(),
    ];
    for e in unsupported {
        assert_eq!(e.errno(), Some(libc::EOPNOTSUPP), "{e}");
        assert!(e.to_string().contains("user-space"), "{e}");
    }
    drop((qp, cq, pd, again, a));
    assert!(!devices().unwrap().iter().any(|d| d.userspace));
}

/// The next completion of `cq`, within ten seconds.
fn poll_one(cq: &CompletionQueue) -> WorkCompletion {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut wc = [WorkCompletion::default(); 1];
    while cq.poll(&mut wc).unwrap() == 0 {
        assert!(std::time::Instant::now() < deadline, "no completion");
        std::thread::yield_now();
    }
    wc[0]
}

#[test]
fn srq_and_to_reset_on_the_engine() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(pair) = pair() else { return };
    let (a, b) = (open(&pair, true), open(&pair, false));
    let pd = b.alloc_pd().unwrap();
    let cq = b.create_cq(64, None).unwrap();
    let srq = pd.create_srq(16, 1).unwrap();
    assert!(srq.is_userspace());
    let qp = QueuePair::create_with_srq(&pd, QpType::Rc, &cq, &cq, QpCaps::default(), Some(&srq))
        .unwrap();
    let mr = pd
        .register(Mapping::anonymous(1 << 16, 0).unwrap(), Access::ALL)
        .unwrap();
    for i in 0..3u64 {
        let off = (i as usize) * 4096;
        srq.post_recv(i, &[mr.sge(off, 4096).unwrap()]).unwrap();
    }
    assert_eq!(srq.posted().unwrap(), 3);
    srq.set_limit(3).unwrap();
    assert!(!srq.limit_reached().unwrap());
    let gid = b.query_gid(1, 0).unwrap();
    let local = Endpoint {
        qpn: qp.qp_num(),
        psn: 0x20,
        gid,
        lid: 0,
    };
    let s = side(&a, 0x10);
    let p = PathParams::default();
    qp.to_init(&p, Access::ALL).unwrap();
    for round in 0..2u8 {
        s.qp.connect(&p, &local, 0x10).unwrap();
        qp.connect(&p, &s.local, 0x20).unwrap();
        s.mr.write(0, &[round + 1; 100]).unwrap();
        s.qp.post_send(
            1,
            SendOp::Send,
            &[s.mr.sge(0, 100).unwrap()],
            SendFlags::SIGNALED,
        )
        .unwrap();
        let wc = poll_one(&cq);
        assert_eq!((wc.status, wc.byte_len), (0, 100));
        let mut got = [0u8; 100];
        mr.read((wc.wr_id as usize) * 4096, &mut got).unwrap();
        assert_eq!(got, [round + 1; 100]);
        assert_eq!(poll_one(&s.cq).status, 0);
        if round == 0 {
            // the first take left 2 < 3 receives: the limit event fired, once
            assert!(srq.limit_reached().unwrap() && !srq.limit_reached().unwrap());
        }
        // back to RESET on both sides, then reconnect for the next round
        qp.to_reset().unwrap();
        s.qp.to_reset().unwrap();
        assert_eq!((qp.state().unwrap(), s.qp.state().unwrap()), (0, 0));
        qp.to_init(&p, Access::ALL).unwrap();
        s.qp.to_init(&p, Access::ALL).unwrap();
    }
    assert_eq!(srq.posted().unwrap(), 1);
}

#[test]
fn perftest_write_and_read_between_two_engines() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(pair) = pair() else { return };
    let (a, b) = (open(&pair, true), open(&pair, false));
    for (port, test) in [(18910u16, Test::Write), (18911, Test::Read)] {
        let server = side(&a, 0x10);
        let client = side(&b, 0x20);
        client.mr.write(0, &[0x5a; 4096]).unwrap();
        server.mr.write(0, &[0xa5; 4096]).unwrap();
        let ns = pair.a.clone();
        let t = std::thread::spawn(move || {
            let _inside = NetnsGuard::enter(&ns).unwrap();
            let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
            let p = PathParams {
                max_rd_atomic: 16,
                ..Default::default()
            };
            let s = &server;
            let rep = perftest::serve(
                &l,
                test,
                &s.qp,
                &s.mr,
                &p,
                &s.local,
                Duration::from_secs(30),
                &super::Cancel::never(),
            );
            (rep, server)
        });
        let _inside = NetnsGuard::enter(&pair.b).unwrap();
        let p = PathParams {
            max_rd_atomic: 16,
            ..Default::default()
        };
        let c = &client;
        let mine = perftest::client(
            (pair.ip(1), port),
            test,
            &c.qp,
            &c.cq,
            &c.mr,
            &p,
            &c.local,
            4096,
            200,
            Duration::from_secs(30),
            &super::Cancel::never(),
        )
        .unwrap();
        drop(_inside);
        let (theirs, server) = t.join().unwrap();
        assert_eq!(theirs.unwrap(), mine);
        assert_eq!((mine.size, mine.iters), (4096, 200));
        let (mut s, mut c) = ([0u8; 4096], [0u8; 4096]);
        server.mr.read(0, &mut s).unwrap();
        client.mr.read(0, &mut c).unwrap();
        assert_eq!(s, c, "{test:?}: the bytes did not move");
        assert_eq!(s[0], if test == Test::Write { 0x5a } else { 0xa5 });
    }
}

/// A cancel that says stop once `after` passed since it was made.
fn stop_after(after: Duration) -> impl Fn() -> bool {
    let start = std::time::Instant::now();
    move || start.elapsed() >= after
}

#[test]
fn the_waits_of_a_user_space_context_end_when_cancelled() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(pair) = pair() else { return };
    let a = open(&pair, true);
    let ip = IpAddr::V4(pair.ip(1));
    let (opts, ns) = (EngineOptions::default(), Some(pair.a.as_str()));
    // The queue is held by `a`: opening it again retries for two seconds, unless cancelled.
    let start = std::time::Instant::now();
    let ask = stop_after(Duration::from_millis(200));
    let e = Context::userspace_with(VethPair::IF_A, 0, ip, ns, &opts, &Cancel::new(&ask))
        .expect_err("the queue is busy");
    assert!(
        matches!(e, Error::Interrupted(_)),
        "{e} after {:?}",
        start.elapsed()
    );
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    // Nobody answers for .77 of the pair's subnet: resolving its MAC address (QP connect,
    // address handle) waits up to neigh_timeout (3 s), unless cancelled.
    let s = side(&a, 1);
    let nobody = Endpoint {
        qpn: 0x11,
        psn: 0,
        gid: Gid(std::net::Ipv4Addr::new(198, 18, pair.net, 77)
            .to_ipv6_mapped()
            .octets()),
        lid: 0,
    };
    let p = PathParams::default();
    let start = std::time::Instant::now();
    let ask = stop_after(Duration::from_millis(200));
    let e =
        s.qp.connect_cancellable(&p, &nobody, 1, &Cancel::new(&ask))
            .unwrap_err();
    assert!(matches!(e, Error::Interrupted(_)), "{e}");
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(s.qp.state().unwrap(), ffi::QPS_INIT, "the QP stays in INIT");
    let pd = a.alloc_pd().unwrap();
    let ask = stop_after(Duration::from_millis(200));
    let e = pd
        .create_ah_cancellable(&nobody, 0, 1, &Cancel::new(&ask))
        .err()
        .expect("nobody answers");
    assert!(matches!(e, Error::Interrupted(_)), "{e}");
    // Nothing stayed behind: closing and opening the queue again works at once.
    drop((s, pd, a));
    let again = Context::userspace_with(VethPair::IF_A, 0, ip, ns, &opts, &Cancel::never());
    assert!(again.is_ok(), "{:?}", again.err());
}
