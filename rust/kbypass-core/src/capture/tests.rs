//! Capture tests: line format and frame sizing everywhere; end to end on a veth pair as root.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::*;
use crate::sys::testutil::{is_root, VethOptions, VethPair};
use crate::traffic::{LiveGenerator, LiveOptions, LiveRun, UdpTemplate};

fn line(frame: &[u8]) -> String {
    let mut out = Vec::new();
    describe(&mut out, frame).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn describes_udp_arp_and_runts() {
    let udp = UdpTemplate {
        size: 60,
        ..Default::default()
    }
    .build()
    .unwrap();
    assert_eq!(line(&udp), "UDP 198.18.0.1:10000 > 198.18.0.2:9000 len 60");
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&[2, 0, 0xc6, 0x12, 0, 1, 0x08, 0x06]);
    arp.resize(42, 0);
    assert_eq!(
        line(&arp),
        "ARP 02:00:c6:12:00:01 > ff:ff:ff:ff:ff:ff len 42"
    );
    assert_eq!(line(&[1, 2, 3]), "runt len 3 [truncated]");
    // An IPv4 header cut short is flagged, not read past the end.
    assert!(line(&udp[..20]).contains("[truncated]") || line(&udp[..20]).contains("[malformed]"));
}

#[test]
fn text_sink_prints_utc_time_of_day_with_nanoseconds() {
    let mut sink = TextSink::new(Vec::new());
    let ts = 1_700_000_000_123_456_789u64; // 2023-11-14 22:13:20 UTC
    sink.frame(ts, &[0u8; 3]).unwrap();
    assert_eq!(
        String::from_utf8(sink.into_inner()).unwrap(),
        "22:13:20.123456789 runt len 3 [truncated]\n"
    );
}

#[test]
fn frame_size_follows_the_mtu() {
    assert_eq!(frame_size_for_mtu(1500).unwrap(), 2048);
    assert_eq!(frame_size_for_mtu(1778).unwrap(), 2048);
    assert_eq!(frame_size_for_mtu(1779).unwrap(), 4096);
    assert_eq!(frame_size_for_mtu(3826).unwrap(), 4096);
    assert!(frame_size_for_mtu(9000).is_err());
}

/// The shared veth bench with GRO on and no IPv6 (only the generator's frames on the link).
fn pair() -> VethPair {
    VethPair::with(VethOptions {
        gro: true,
        ipv6: false,
        ..Default::default()
    })
    .expect("create veth pair")
}

fn generator(p: &VethPair, dst_port: u16) -> LiveGenerator {
    LiveGenerator::new(&LiveOptions {
        template: UdpTemplate {
            src_mac: p.mac(1),
            dst_mac: p.mac(2),
            src_ip: p.ip(1),
            dst_ip: p.ip(2),
            dst_port,
            size: 100,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn captures_exactly_count_frames_into_a_pcap_and_detaches() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let p = pair();
    let gen = generator(&p, 9000);
    let stop = AtomicBool::new(false);
    let mut sink = PcapSink::new(Vec::new(), 64, false).unwrap();
    let cfg = CaptureConfig {
        rules: crate::xdp::parse_filter("udp dst port 9000").unwrap(),
        netns: Some(p.b.clone()),
        ..Default::default()
    };
    let summary = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            // Background traffic until the capture is done.
            std::thread::sleep(Duration::from_millis(200));
            gen.run(
                "veth0",
                Some(&p.a),
                &LiveRun {
                    rate: Some(50_000.0),
                    duration: Some(Duration::from_secs(20)),
                    stop: Some(&stop),
                    ..Default::default()
                },
            )
        });
        let limits = CaptureLimits {
            count: Some(1000),
            duration: Some(Duration::from_secs(15)),
            stop: None,
        };
        let r = capture("veth1", &cfg, &limits, &mut sink, &mut || false);
        stop.store(true, Ordering::Relaxed);
        sender.join().unwrap().unwrap();
        r.unwrap()
    });
    assert_eq!(summary.reason, StopReason::Count);
    assert_eq!((summary.packets, summary.bytes), (1000, 100_000));
    assert_eq!(summary.queues, vec![0]);
    let out = sink.into_inner().unwrap();
    // 24-byte header, then 1000 records of 16 + 64 (snaplen) bytes with the original length.
    assert_eq!(out.len(), 24 + 1000 * (16 + 64));
    let rec = &out[24..24 + 16];
    assert_eq!(u32::from_le_bytes(rec[8..12].try_into().unwrap()), 64);
    assert_eq!(u32::from_le_bytes(rec[12..16].try_into().unwrap()), 100);
    assert_eq!(&out[24 + 16..24 + 16 + 14], &gen.frame()[..14]);
    // The program went with the port.
    let _ns = NetnsGuard::enter(&p.b).unwrap();
    let ifindex = crate::sys::xdp::if_nametoindex("veth1").unwrap();
    assert!(crate::sys::netlink::xdp_query(ifindex)
        .unwrap()
        .programs
        .is_empty());
}

#[test]
fn interrupt_check_and_duration_end_an_idle_capture() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let p = pair();
    let cfg = CaptureConfig {
        netns: Some(p.b.clone()),
        rules: crate::xdp::parse_filter("udp dst port 9").unwrap(),
        ..Default::default()
    };
    let mut sink = TextSink::new(Vec::new());
    let mut asked = 0;
    let limits = CaptureLimits {
        duration: Some(Duration::from_secs(10)),
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let r = capture("veth1", &cfg, &limits, &mut sink, &mut || {
        asked += 1;
        asked >= 3
    })
    .unwrap();
    assert_eq!(r.reason, StopReason::Interrupted);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let limits = CaptureLimits {
        duration: Some(Duration::from_millis(300)),
        ..Default::default()
    };
    let r = capture("veth1", &cfg, &limits, &mut sink, &mut || false).unwrap();
    assert_eq!((r.reason, r.packets), (StopReason::Duration, 0));
    assert!(r.elapsed >= Duration::from_millis(300) && r.elapsed < Duration::from_secs(3));
}
