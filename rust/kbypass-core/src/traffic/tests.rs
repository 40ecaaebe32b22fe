//! Root tests of the live-frames generator and the drop counter on a veth pair between two
//! network namespaces the test creates (198.18.0.0/15 only).

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::live::{LiveGenerator, LiveOptions, LiveRun};
use super::sink::{Counts, DropCounter};
use super::template::UdpTemplate;
use crate::error::Error;
use crate::sys::netns::NetnsGuard;
use crate::sys::testutil::{is_root, VethOptions, VethPair};
use crate::xdp::AttachMode;

/// The shared veth bench with GRO on both ends and no IPv6 (its router solicitations and MLD
/// reports would be counted).
fn pair() -> VethPair {
    VethPair::with(VethOptions {
        gro: true,
        ipv6: false,
        ..Default::default()
    })
    .expect("create veth pair")
}

/// A UDP frame template from veth0 to veth1 of `p`.
fn template(p: &VethPair, size: usize) -> UdpTemplate {
    UdpTemplate {
        src_mac: p.mac(1),
        dst_mac: p.mac(2),
        src_ip: p.ip(1),
        dst_ip: p.ip(2),
        size,
        ..Default::default()
    }
}

fn pair_or_skip(what: &str) -> Option<VethPair> {
    if !is_root() {
        eprintln!("skipped {what}: needs root");
        return None;
    }
    Some(pair())
}

/// Read the counter until it stops changing (frames still in flight on the other core).
fn settled(sink: &DropCounter) -> Counts {
    let mut last = sink.read().unwrap();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = sink.read().unwrap();
        if now == last {
            return now;
        }
        last = now;
    }
}

#[test]
fn exactly_n_frames_reach_a_dropping_peer_as_root() {
    let Some(p) = pair_or_skip("live generator") else {
        return;
    };
    let sink = DropCounter::attach("veth1", Some(&p.b), AttachMode::Native, false).unwrap();
    assert_eq!(sink.mode().unwrap().as_str(), "native");
    for (size, n) in [(60usize, 1_000_000u64), (1514, 200_000)] {
        sink.reset().unwrap();
        let gen = LiveGenerator::new(&LiveOptions {
            template: template(&p, size),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            gen.keeper_note(),
            None,
            "as root the dispatcher keeper works"
        );
        let r = gen
            .run(
                "veth0",
                Some(&p.a),
                &LiveRun {
                    count: Some(n),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(r.throughput.packets, n);
        assert_eq!(r.throughput.bytes, n * size as u64);
        let c = settled(&sink);
        assert_eq!(
            c,
            Counts {
                packets: n,
                bytes: n * size as u64
            },
            "size {size}: sent {n}, {} calls, {:.2} Mpps",
            r.calls,
            r.throughput.pps() / 1e6
        );
        eprintln!(
            "size {size}: {n} frames in {} calls, {:.2} Mpps",
            r.calls,
            r.throughput.pps() / 1e6
        );
    }
}

#[test]
fn a_kernel_socket_receives_the_given_payload_as_root() {
    let Some(p) = pair_or_skip("live generator payload") else {
        return;
    };
    let sock = {
        let _ns = NetnsGuard::enter(&p.b).unwrap();
        std::net::UdpSocket::bind(SocketAddrV4::new(p.ip(2), 9500)).unwrap()
    };
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    for n in [64usize, 5] {
        let payload: Vec<u8> = (0..n).map(|i| (i * 13 + 1) as u8).collect();
        let gen = LiveGenerator::new(&LiveOptions {
            template: UdpTemplate {
                dst_port: 9500,
                ..template(&p, 0)
            },
            payload: Some(payload.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(gen.frame().len(), UdpTemplate::frame_len(&payload));
        assert_eq!(gen.options().template.size, gen.frame().len());
        let run = LiveRun {
            count: Some(3),
            ..Default::default()
        };
        assert_eq!(
            gen.run("veth0", Some(&p.a), &run)
                .unwrap()
                .throughput
                .packets,
            3
        );
        let mut buf = [0u8; 2048];
        for _ in 0..3 {
            let (len, from) = sock.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..len], &payload[..], "payload of {n} bytes");
            assert_eq!(
                from,
                std::net::SocketAddr::V4(SocketAddrV4::new(p.ip(1), 10000))
            );
        }
    }
}

#[test]
fn flows_cycle_the_source_port_as_root() {
    let Some(p) = pair_or_skip("flows") else {
        return;
    };
    const FLOWS: u16 = 8;
    const EACH: u64 = 500;
    // A kernel UDP socket in b sees each datagram's source port (GRO on, no XDP program there).
    let ns_b = p.b.clone();
    let dst = SocketAddrV4::new(p.ip(2), 9000);
    let ready = Arc::new(AtomicBool::new(false));
    let ready2 = Arc::clone(&ready);
    let rx = std::thread::spawn(move || {
        let _ns = NetnsGuard::enter(&ns_b).unwrap();
        let sock = crate::sys::socket::udp_bind(dst, 500).unwrap();
        crate::sys::socket::grow_rcvbuf(&sock, 32 << 20);
        ready2.store(true, Ordering::Release);
        let mut ports = std::collections::BTreeMap::<u16, u64>::new();
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = sock.recv_from(&mut buf) {
            *ports.entry(from.port()).or_default() += 1;
        }
        ports
    });
    while !ready.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let gen = LiveGenerator::new(&LiveOptions {
        template: UdpTemplate {
            src_port: 20000,
            udp_checksum: true,
            ..template(&p, 60)
        },
        flows: u32::from(FLOWS),
        ..Default::default()
    })
    .unwrap();
    assert!(
        !gen.options().template.udp_checksum,
        "flows force checksum 0"
    );
    gen.run(
        "veth0",
        Some(&p.a),
        &LiveRun {
            count: Some(EACH * u64::from(FLOWS)),
            ..Default::default()
        },
    )
    .unwrap();
    let ports = rx.join().unwrap();
    let want: std::collections::BTreeMap<u16, u64> =
        (20000..20000 + FLOWS).map(|p| (p, EACH)).collect();
    assert_eq!(ports, want);
}

#[test]
fn duration_rate_and_stop_limits_as_root() {
    let Some(p) = pair_or_skip("limits") else {
        return;
    };
    let sink = DropCounter::attach("veth1", Some(&p.b), AttachMode::Native, false).unwrap();
    let gen = LiveGenerator::new(&LiveOptions {
        template: template(&p, 60),
        ..Default::default()
    })
    .unwrap();
    // Duration at full speed.
    let r = gen
        .run(
            "veth0",
            Some(&p.a),
            &LiveRun {
                duration: Some(Duration::from_millis(600)),
                ..Default::default()
            },
        )
        .unwrap();
    let secs = r.throughput.elapsed.as_secs_f64();
    // Generous upper bound: the machine may be busy; a run never ends early.
    assert!((0.55..5.0).contains(&secs), "ran {secs:.3} s for 0.6 s");
    assert_eq!(settled(&sink).packets, r.throughput.packets);

    // Rate limit: 200 kpps for 0.5 s ≈ 100k frames.
    sink.reset().unwrap();
    let r = gen
        .run(
            "veth0",
            Some(&p.a),
            &LiveRun {
                duration: Some(Duration::from_millis(500)),
                rate: Some(200_000.0),
                ..Default::default()
            },
        )
        .unwrap();
    let pps = r.throughput.pps();
    // Never above the limit (plus rounding); below it only when the machine is busy (the
    // whole test suite runs in parallel).
    assert!(
        (100_000.0..=205_000.0).contains(&pps),
        "rate 200k, got {pps:.0} pps ({:?})",
        r.throughput
    );
    assert!(
        (50_000..=100_000).contains(&r.throughput.packets),
        "{:?}",
        r.throughput
    );
    assert_eq!(settled(&sink).packets, r.throughput.packets);

    // Stop flag from another thread.
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = Arc::clone(&stop);
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        s2.store(true, Ordering::Relaxed);
    });
    let t0 = Instant::now();
    let r = gen
        .run(
            "veth0",
            Some(&p.a),
            &LiveRun {
                stop: Some(&stop),
                ..Default::default()
            },
        )
        .unwrap();
    t.join().unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    assert!(r.throughput.packets > 0);
}

#[test]
fn bad_input_is_a_typed_error_as_root() {
    let Some(p) = pair_or_skip("bad input") else {
        return;
    };
    let gen = LiveGenerator::new(&LiveOptions {
        template: template(&p, 1600),
        ..Default::default()
    })
    .unwrap();
    let count = LiveRun {
        count: Some(10),
        ..Default::default()
    };
    let e = gen.run("veth0", Some(&p.a), &count).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument(_)) && e.to_string().contains("MTU 1500"),
        "{e}"
    );
    let e = gen.run("kbxnope0", Some(&p.a), &count).unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
    let e = gen
        .run("veth0", Some("kbx-no-such-namespace"), &count)
        .unwrap_err();
    assert!(
        matches!(e, Error::NotFound(_)) && e.to_string().contains("ip netns add"),
        "{e}"
    );
    let e = gen
        .run("veth0", Some(&p.a), &LiveRun::default())
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    let e = gen
        .run(
            "veth0",
            Some(&p.a),
            &LiveRun {
                rate: Some(-1.0),
                ..count
            },
        )
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    // A queue the interface does not have.
    let small = LiveGenerator::new(&LiveOptions {
        template: template(&p, 60),
        ..Default::default()
    })
    .unwrap();
    let e = small
        .run("veth0", Some(&p.a), &LiveRun { queue: 5, ..count })
        .unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument(_)) && e.to_string().contains("does not exist"),
        "{e}"
    );
    // An unknown CPU.
    let e = small
        .run(
            "veth0",
            Some(&p.a),
            &LiveRun {
                cpu: Some(4000),
                ..count
            },
        )
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
}

#[test]
fn drop_counter_detaches_on_drop_as_root() {
    let Some(p) = pair_or_skip("drop counter") else {
        return;
    };
    let sink = DropCounter::attach("veth1", Some(&p.b), AttachMode::Native, false).unwrap();
    let progs = || {
        let _ns = NetnsGuard::enter(&p.b).unwrap();
        crate::xdp::query("veth1").unwrap()
    };
    let there = progs();
    assert_eq!(there.len(), 1);
    assert!(there[0].is_ours());
    assert_eq!(
        there[0].info.as_ref().unwrap().name,
        super::sink::PROGRAM_NAME
    );
    // A second counter on the same interface is refused (held by a live link) unless forced.
    let e = DropCounter::attach("veth1", Some(&p.b), AttachMode::Native, false).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EBUSY), "{e}");
    drop(sink);
    assert!(progs().is_empty());
    let e = DropCounter::attach("nope0", Some(&p.b), AttachMode::Native, false).unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
}

#[test]
fn dropping_the_generator_releases_program_and_keeper_as_root() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let gen = LiveGenerator::new(&LiveOptions::default()).unwrap();
    assert_eq!(gen.keeper_note(), None);
    let id = gen.prog().info().unwrap().id;
    // The keeper's link holds the program while the generator lives.
    let link = crate::sys::bpf::link_ids()
        .unwrap()
        .into_iter()
        .filter_map(|l| crate::sys::bpf::LinkFd::from_id(l).ok()?.info().ok())
        .find(|i| i.prog_id == id)
        .expect("keeper link");
    assert_eq!(link.link_type, crate::sys::bpf::BPF_LINK_TYPE_XDP);
    assert_eq!(link.ifindex, 1, "attached to a loopback");
    drop(gen);
    // Links and programs are freed asynchronously after the last reference goes.
    let t0 = Instant::now();
    while crate::sys::bpf::prog_info_by_id(id).is_ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "program {id} still loaded"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
