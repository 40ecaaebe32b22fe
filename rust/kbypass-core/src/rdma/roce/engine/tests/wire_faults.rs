//! RC over a faulty wire: two engines in namespaces `a` and `b` joined through a bridge in a
//! namespace `m` whose ports carry the project's fault injector ([`crate::xdp::faults`]: loss
//! by probability in XDP, duplication, reordering and delay in an AF_XDP middlebox), the
//! topology of `kbypass.testing.faults.FaultyPath` built from Rust. Root only.

mod hostile;
mod retry;

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::*;
use crate::xdp::faults::{DirectionCounters, FaultPath, FaultRates, PathOptions, Timing};
use crate::xdp::rules::parse_filter;

const MIB: usize = 1 << 20;
/// Bytes of each side's region.
const REGION: usize = 8 * MIB;

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces `a` (veth0, 198.19.n.1) — `m` (bridge of ports `ma` and `mb`) — `b` (veth1,
/// 198.19.n.2), an engine on each end, the fault path on the bridge ports (direction 0 is
/// a→b, arriving on `ma`). Fields drop in order: engines, path, then the namespaces.
pub(super) struct FaultBench {
    pub a: Arc<Engine>,
    pub b: Arc<Engine>,
    pub path: FaultPath,
    pub net: u8,
    pub ns: Namespaces,
}

/// The bench's three namespaces, deleted on drop.
pub(super) struct Namespaces(pub [String; 3]);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

impl FaultBench {
    /// Both directions' counters.
    pub fn counters(&self) -> [DirectionCounters; 2] {
        [0, 1].map(|d| self.path.counters(d).unwrap())
    }

    /// Address of host 1 (`a`) or 2 (`b`).
    pub fn ip(&self, host: u8) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(198, 19, self.net, host)
    }

    /// MAC of host 1 (`a`) or 2 (`b`).
    pub fn mac(&self, host: u8) -> [u8; 6] {
        [2, 0, 0xc6, 0x13, self.net, host]
    }
}

/// Builds the bench with faults `rates` on both directions for RoCEv2 frames (UDP 4791).
pub(super) fn fault_bench(rates: FaultRates, timing: Timing) -> Option<FaultBench> {
    if !crate::sys::testutil::is_root() {
        eprintln!("skipped: needs root (AF_XDP, XDP and network namespaces)");
        return None;
    }
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let tag = format!("kbx-{}-f{n}", std::process::id());
    let ns = ["a", "m", "b"].map(|s| format!("{tag}-{s}"));
    let net = 1 + (n % 250) as u8;
    let mac = |h: u8| {
        let m = [2u8, 0, 0xc6, 0x13, net, h];
        m.map(|b| format!("{b:02x}")).join(":")
    };
    // Made before any step can fail, so the namespaces go whatever happens.
    let names = Namespaces(ns.clone());
    for n in &ns {
        ip(&["netns", "add", n]);
        crate::sys::netns::in_netns(n, || {
            for k in ["all", "default"] {
                std::fs::write(format!("/proc/sys/net/ipv6/conf/{k}/disable_ipv6"), "1").unwrap();
            }
        })
        .unwrap();
        ip(&["-n", n, "link", "set", "lo", "up"]);
    }
    let m = ns[1].as_str();
    for (end, port, ifname, host) in [(&ns[0], "ma", "veth0", 1u8), (&ns[2], "mb", "veth1", 2)] {
        ip(&[
            "-n",
            m,
            "link",
            "add",
            "name",
            port,
            "type",
            "veth",
            "peer",
            "name",
            ifname,
            "netns",
            end,
            "address",
            &mac(host),
        ]);
    }
    ip(&[
        "-n",
        m,
        "link",
        "add",
        "name",
        "br0",
        "type",
        "bridge",
        "forward_delay",
        "0",
        "stp_state",
        "0",
    ]);
    for port in ["ma", "mb"] {
        ip(&["-n", m, "link", "set", "dev", port, "master", "br0"]);
        ip(&["-n", m, "link", "set", "dev", port, "up"]);
    }
    ip(&["-n", m, "link", "set", "dev", "br0", "up"]);
    let addr = |h: u8| format!("198.19.{net}.{h}");
    for (end, ifname, me, peer) in [(&ns[0], "veth0", 1u8, 2u8), (&ns[2], "veth1", 2, 1)] {
        ip(&[
            "-n",
            end,
            "addr",
            "add",
            &format!("{}/24", addr(me)),
            "dev",
            ifname,
        ]);
        ip(&["-n", end, "link", "set", ifname, "up"]);
        ip(&[
            "-n",
            end,
            "neigh",
            "replace",
            &addr(peer),
            "lladdr",
            &mac(peer),
            "dev",
            ifname,
            "nud",
            "permanent",
        ]);
    }
    let opts = PathOptions {
        rules: [0, 1].map(|_| parse_filter("udp dst port 4791").unwrap()),
        rates: [rates; 2],
        timing: [timing; 2],
        seed: Some(u64::from(n) + 7),
        ..Default::default()
    };
    let path = FaultPath::new(m, ["ma", "mb"], &opts).expect("fault path");
    let eopts = EngineOptions {
        progress: Progress::Thread { cpu: None },
        frames: 4096,
        ring_size: 1024,
        ..Default::default()
    };
    let open = |ns: &str, ifname: &str, host: u8| {
        let _g = NetnsGuard::enter(ns).unwrap();
        let ip = std::net::Ipv4Addr::new(198, 19, net, host);
        Engine::open(ifname, 0, IpAddr::V4(ip), &eopts).unwrap()
    };
    let a = open(&ns[0], "veth0", 1);
    let b = open(&ns[2], "veth1", 2);
    Some(FaultBench {
        a,
        b,
        path,
        net,
        ns: names,
    })
}

/// A connected pair of RC QPs on the bench with `REGION`-byte regions, with `p`.
fn rc_pair(fb: &FaultBench, p: &PathParams) -> (Side, Side) {
    let (x, y) = (
        side(&fb.a, QpType::Rc, REGION),
        side(&fb.b, QpType::Rc, REGION),
    );
    x.qp.connect(p, &y.qp.endpoint(3000), 100).unwrap();
    y.qp.connect(p, &x.qp.endpoint(100), 3000).unwrap();
    (x, y)
}

fn region(s: &Side) -> Vec<u8> {
    let mut v = vec![0; s.mr.len()];
    s.mr.read(0, &mut v).unwrap();
    v
}

/// x writes 2 × 1 MiB into y, reads 1 MiB from y, sends 2 × 1 MiB to y, all posted at once;
/// every completion must be a success in order and both regions must hold exactly what was
/// moved (every other byte still zero). Returns how long it took.
fn move_five_mib(x: &Side, y: &Side, limit: Duration) -> Duration {
    let (p1, p2, p3, p4) = (
        pattern(2 * MIB, 1),
        pattern(MIB, 2),
        pattern(MIB, 3),
        pattern(MIB, 4),
    );
    x.mr.write(0, &p1).unwrap();
    x.mr.write(3 * MIB, &p2).unwrap();
    x.mr.write(4 * MIB, &p3).unwrap();
    y.mr.write(4 * MIB, &p4).unwrap();
    y.qp.post_recv(21, &[y.mr.sge(6 * MIB, MIB).unwrap()])
        .unwrap();
    y.qp.post_recv(22, &[y.mr.sge(7 * MIB, MIB).unwrap()])
        .unwrap();
    let (ya, rk) = (y.mr.addr(), y.mr.rkey());
    let f = SendFlags::SIGNALED;
    let start = Instant::now();
    for (i, off) in [0, MIB].into_iter().enumerate() {
        let op = SendOp::Write {
            remote_addr: ya + off as u64,
            rkey: rk,
        };
        x.qp.post_send(1 + i as u64, op, &[x.mr.sge(off, MIB).unwrap()], f)
            .unwrap();
    }
    let op = SendOp::Read {
        remote_addr: ya + 4 * MIB as u64,
        rkey: rk,
    };
    x.qp.post_send(3, op, &[x.mr.sge(2 * MIB, MIB).unwrap()], f)
        .unwrap();
    for (i, off) in [3 * MIB, 4 * MIB].into_iter().enumerate() {
        x.qp.post_send(
            4 + i as u64,
            SendOp::Send,
            &[x.mr.sge(off, MIB).unwrap()],
            f,
        )
        .unwrap();
    }
    let wcs = wait_wcs(&x.cq, 5, limit);
    let took = start.elapsed();
    let got: Vec<_> = wcs.iter().map(|w| (w.wr_id, w.status_name())).collect();
    assert_eq!(
        got,
        (1..=5).map(|i| (i, "SUCCESS")).collect::<Vec<_>>(),
        "after {took:?}; counters a {:?} b {:?}",
        x.pd.engine().counters(),
        y.pd.engine().counters()
    );
    let r = wait_wcs(&y.cq, 2, limit);
    let r: Vec<_> = r.iter().map(|w| (w.wr_id, w.status, w.byte_len)).collect();
    assert_eq!(r, [(21, 0, MIB as u32), (22, 0, MIB as u32)]);
    let mut want_y = vec![0u8; REGION];
    want_y[..2 * MIB].copy_from_slice(&p1);
    want_y[4 * MIB..5 * MIB].copy_from_slice(&p4);
    want_y[6 * MIB..7 * MIB].copy_from_slice(&p2);
    want_y[7 * MIB..].copy_from_slice(&p3);
    assert!(region(y) == want_y, "y's region is not what was moved");
    let mut want_x = vec![0u8; REGION];
    want_x[..2 * MIB].copy_from_slice(&p1);
    want_x[2 * MIB..3 * MIB].copy_from_slice(&p4);
    want_x[3 * MIB..4 * MIB].copy_from_slice(&p2);
    want_x[4 * MIB..5 * MIB].copy_from_slice(&p3);
    assert!(region(x) == want_x, "x's region is not what was moved");
    took
}

/// Waits until the middlebox holds nothing, took every frame redirected to it and sent (or
/// failed to send) every one it took: its counters move one at a time, so a frame it has let
/// go of and not yet sent shows as neither held nor sent for a moment.
fn settled(fb: &FaultBench) -> [DirectionCounters; 2] {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let c = fb.counters();
        let done = c.iter().all(|d| {
            let (i, m) = (d.injector, d.middlebox);
            m.held == 0 && i.to_middlebox == m.received + m.kernel_lost && m.balanced()
        });
        if done || Instant::now() > deadline {
            for d in &c {
                assert!(d.injector.balanced() && d.middlebox.balanced(), "{d:?}");
            }
            return c;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `k` of `n` trials is within 6 standard deviations (plus one) of probability `p`.
fn binomial_ok(k: u64, n: u64, p: f64) -> bool {
    let (mean, sd) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
    (k as f64 - mean).abs() <= 6.0 * sd + 1.0
}

/// Runs the five-MiB workload through faults `rates`, checks the data and that the path
/// injected what it says (exact identities, drop fraction against the binomial bound), and
/// returns the bench's counters for the scenario's own checks.
fn through(rates: FaultRates) -> Option<([DirectionCounters; 2], EngineCounters, EngineCounters)> {
    let timing = Timing {
        reorder_after: 3,
        reorder_timeout: Duration::from_millis(20),
        delay: Duration::from_millis(1),
    };
    let fb = fault_bench(rates, timing)?;
    let (x, y) = rc_pair(&fb, &params());
    let took = move_five_mib(&x, &y, Duration::from_secs(20));
    let c = settled(&fb);
    let (ca, cb) = (fb.a.counters(), fb.b.counters());
    eprintln!(
        "{rates:?}: {took:?}\n a>b {:?}\n b>a {:?}\n a {ca:?}\n b {cb:?}",
        c[0], c[1]
    );
    for d in &c {
        let i = d.injector;
        assert!(i.matched > 0 && i.matched <= i.seen, "{d:?}");
        assert!(binomial_ok(i.dropped, i.matched, rates.loss), "{d:?}");
        let mb = i.matched - i.dropped;
        assert!(binomial_ok(i.to_middlebox, mb, rates.middlebox()), "{d:?}");
        assert_eq!(d.middlebox.tx_failed, 0, "{d:?}");
    }
    // Every frame a sent the path saw (a veth may drop, never add), and each engine received
    // no more than the path delivered (passed on, or sent by the middlebox, copies included).
    let delivered = |d: &DirectionCounters| d.injector.passed + d.middlebox.sent;
    assert!(c[0].injector.matched <= ca.tx_packets, "{ca:?} {:?}", c[0]);
    assert!(c[1].injector.matched <= cb.tx_packets, "{cb:?} {:?}", c[1]);
    assert!(cb.rx_packets <= delivered(&c[0]), "{cb:?} {:?}", c[0]);
    assert!(ca.rx_packets <= delivered(&c[1]), "{ca:?} {:?}", c[1]);
    assert_eq!(
        (ca.bad_icrc, cb.bad_icrc, ca.malformed, cb.malformed),
        (0, 0, 0, 0)
    );
    Some((c, ca, cb))
}

#[test]
fn rc_through_one_percent_loss_moves_five_mib_intact() {
    let rates = FaultRates {
        loss: 0.01,
        ..Default::default()
    };
    let Some((c, ca, cb)) = through(rates) else {
        return;
    };
    assert!(c[0].injector.dropped + c[1].injector.dropped > 0, "{c:?}");
    assert!(ca.retransmits + ca.go_backs > 0, "{ca:?}");
    assert!(
        cb.out_of_sequence + ca.transport_dropped + cb.duplicates > 0,
        "{cb:?}"
    );
}

#[test]
fn rc_through_five_percent_loss_moves_five_mib_intact_with_retransmissions() {
    let rates = FaultRates {
        loss: 0.05,
        ..Default::default()
    };
    let Some((c, ca, cb)) = through(rates) else {
        return;
    };
    assert!(
        c[0].injector.dropped > 20 && c[1].injector.dropped > 0,
        "{c:?}"
    );
    assert!(ca.retransmits + ca.go_backs > 0, "{ca:?}");
    assert!(
        ca.go_backs > 0,
        "sequence NAKs or implicit NAKs made a go back: {ca:?}"
    );
    assert!(cb.out_of_sequence > 0, "{cb:?}");
}

#[test]
fn rc_through_duplication_moves_five_mib_intact() {
    let rates = FaultRates {
        duplicate: 0.05,
        ..Default::default()
    };
    let Some((c, ca, cb)) = through(rates) else {
        return;
    };
    assert!(c[0].middlebox.duplicated > 0, "{c:?}");
    assert_eq!(c[0].injector.dropped + c[1].injector.dropped, 0);
    // Copies of requests are answered as duplicates; copies of responses are dropped.
    assert!(cb.duplicates > 0, "{cb:?}");
    assert!(ca.transport_dropped > 0, "{ca:?}");
}

#[test]
fn rc_through_reordering_moves_five_mib_intact() {
    let rates = FaultRates {
        reorder: 0.05,
        ..Default::default()
    };
    let Some((c, _ca, cb)) = through(rates) else {
        return;
    };
    assert!(
        c[0].middlebox.reordered + c[0].middlebox.reorder_timeouts > 0,
        "{c:?}"
    );
    // A request overtaken by later ones is out of sequence at the responder.
    assert!(cb.out_of_sequence > 0, "{cb:?}");
}

#[test]
fn rc_through_loss_duplication_reordering_and_delay_at_once_moves_five_mib_intact() {
    let rates = FaultRates {
        loss: 0.02,
        duplicate: 0.02,
        reorder: 0.03,
        delay: 0.01,
    };
    let Some((c, ca, cb)) = through(rates) else {
        return;
    };
    let m = c[0].middlebox;
    assert!(
        m.duplicated > 0 && m.reordered + m.reorder_timeouts > 0 && m.delayed > 0,
        "{c:?}"
    );
    assert!(c[0].injector.dropped > 0, "{c:?}");
    assert!(ca.retransmits + ca.go_backs > 0, "{ca:?}");
    assert!(cb.out_of_sequence > 0 && cb.duplicates > 0, "{cb:?}");
}

#[test]
fn rc_atomics_through_loss_duplication_and_reordering_execute_exactly_once() {
    // A duplicated or retransmitted atomic is answered from the responder's replay cache,
    // never executed twice: 120 fetch-and-adds (the send queue holds 128), four at a time
    // on the wire, find every value once.
    let rates = FaultRates {
        loss: 0.05,
        duplicate: 0.05,
        reorder: 0.03,
        delay: 0.0,
    };
    let timing = Timing {
        reorder_timeout: Duration::from_millis(20),
        ..Timing::default()
    };
    let Some(fb) = fault_bench(rates, timing) else {
        return;
    };
    let p = PathParams {
        max_rd_atomic: 4,
        ..params()
    };
    let (x, y) = rc_pair(&fb, &p);
    y.mr.write(0, &1000u64.to_ne_bytes()).unwrap();
    let (ya, rk) = (y.mr.addr(), y.mr.rkey());
    let n = 120u64;
    for i in 0..n {
        let op = SendOp::FetchAdd {
            remote_addr: ya,
            rkey: rk,
            add: 3,
        };
        let sge = x.mr.sge(8 * i as usize, 8).unwrap();
        x.qp.post_send(i, op, &[sge], SendFlags::SIGNALED).unwrap();
    }
    let w = wait_wcs(&x.cq, n as usize, Duration::from_secs(20));
    let (ca, cb) = (fb.a.counters(), fb.b.counters());
    assert_eq!(w.len(), n as usize, "{ca:?} {cb:?}");
    assert!(
        w.iter()
            .enumerate()
            .all(|(i, w)| w.wr_id == i as u64 && w.status == 0 && w.opcode == WC_FETCH_ADD),
        "{w:?}"
    );
    let mut counter = [0u8; 8];
    y.mr.read(0, &mut counter).unwrap();
    assert_eq!(u64::from_ne_bytes(counter), 1000 + 3 * n, "added once each");
    let mut orig = vec![0u8; 8 * n as usize];
    x.mr.read(0, &mut orig).unwrap();
    let orig: Vec<u64> = orig
        .chunks(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(orig, (0..n).map(|i| 1000 + 3 * i).collect::<Vec<_>>());
    let c = settled(&fb);
    let dup: u64 = c.iter().map(|d| d.middlebox.duplicated).sum();
    let lost: u64 = c.iter().map(|d| d.injector.dropped).sum();
    assert!(dup > 0 && lost > 0, "{c:?}");
    // Copies and re-sent atomics were answered from the cache.
    assert!(cb.duplicates > 0, "{cb:?}");
    assert!(ca.retransmits + ca.go_backs > 0, "{ca:?}");
}

#[test]
fn uc_sends_through_loss_arrive_whole_or_not_at_all_and_the_losses_are_counted() {
    // UC does not retransmit: a message that lost a packet is dropped at the receiver
    // (counted), and every message that does arrive is whole, in order.
    let rates = FaultRates {
        loss: 0.05,
        ..Default::default()
    };
    let Some(fb) = fault_bench(rates, Timing::default()) else {
        return;
    };
    let (x, y) = (
        side(&fb.a, QpType::Uc, REGION),
        side(&fb.b, QpType::Uc, REGION),
    );
    x.qp.connect(&params(), &y.qp.endpoint(3000), 100).unwrap();
    y.qp.connect(&params(), &x.qp.endpoint(100), 3000).unwrap();
    let (n, len) = (60usize, 4096usize);
    let msgs: Vec<Vec<u8>> = (0..n).map(|i| pattern(len, i as u8)).collect();
    for (i, m) in msgs.iter().enumerate() {
        x.mr.write(i * len, m).unwrap();
        let sge = y.mr.sge(i * len, len).unwrap();
        y.qp.post_recv(i as u64, &[sge]).unwrap();
    }
    for i in 0..n {
        let sge = x.mr.sge(i * len, len).unwrap();
        let f = SendFlags::SIGNALED;
        x.qp.post_send(i as u64, SendOp::Send, &[sge], f).unwrap();
        // Paced, so a loss costs one message and no receive ring runs dry.
        std::thread::sleep(Duration::from_millis(2));
    }
    let sent = wait_wcs(&x.cq, n, Duration::from_secs(10));
    assert!(
        sent.len() == n && sent.iter().all(|w| w.status == 0),
        "{sent:?}"
    );
    let c = settled(&fb);
    std::thread::sleep(Duration::from_millis(50));
    let got = wait_wcs(&y.cq, n, Duration::from_millis(200));
    let cb = fb.b.counters();
    assert!(
        !got.is_empty() && got.len() < n,
        "{} of {n} arrived: {cb:?}",
        got.len()
    );
    // Receives complete in order, each holding one whole message; the messages found are
    // in sending order.
    let mut last = None;
    for (k, w) in got.iter().enumerate() {
        assert_eq!((w.wr_id, w.status, w.byte_len), (k as u64, 0, len as u32));
        let mut buf = vec![0u8; len];
        y.mr.read(k * len, &mut buf).unwrap();
        let j = msgs.iter().position(|m| *m == buf);
        assert!(j.is_some(), "receive {k} holds no whole message");
        assert!(j > last, "receive {k} holds message {j:?} after {last:?}");
        last = j;
    }
    // Each message missing lost at least one packet on the path; each aborted one too.
    let lost_msgs = (n - got.len()) as u64;
    assert!(lost_msgs <= c[0].injector.dropped, "{c:?}");
    assert!(cb.uc_aborted > 0 && cb.uc_aborted <= lost_msgs, "{cb:?}");
}
