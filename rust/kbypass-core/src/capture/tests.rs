//! Capture tests: line format and frame sizing everywhere; end to end on a veth pair as root.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use super::*;
use crate::sys::testutil::is_root;
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

/// Namespaces `kbx-<pid>-c<n>-a/-b`, veth0 (198.18.<net>.1) <-> veth1 (.2), GRO on, no IPv6.
struct Pair {
    a: String,
    b: String,
    net: u8,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pair {
    fn new() -> Pair {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let tag = format!("kbx-{}-c{n}", std::process::id());
        let p = Pair {
            a: format!("{tag}-a"),
            b: format!("{tag}-b"),
            net: 150 + (n % 50) as u8,
        };
        sh(&["ip", "netns", "add", &p.a]);
        sh(&["ip", "netns", "add", &p.b]);
        sh(&[
            "ip",
            "-n",
            &p.a,
            "link",
            "add",
            "veth0",
            "address",
            "02:00:c6:12:00:01",
            "type",
            "veth",
            "peer",
            "name",
            "veth1",
            "netns",
            &p.b,
            "address",
            "02:00:c6:12:00:02",
        ]);
        for (ns, ifname, me) in [(&p.a, "veth0", 1), (&p.b, "veth1", 2)] {
            let addr = format!("198.18.{}.{me}/24", p.net);
            let v6 = "net.ipv6.conf.all.disable_ipv6=1";
            sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", v6]);
            sh(&["ip", "-n", ns, "addr", "add", &addr, "dev", ifname]);
            sh(&["ip", "-n", ns, "link", "set", ifname, "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            sh(&[
                "ip", "netns", "exec", ns, "ethtool", "-K", ifname, "gro", "on",
            ]);
        }
        p
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.a]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.b]).output();
    }
}

fn generator(p: &Pair, dst_port: u16) -> LiveGenerator {
    LiveGenerator::new(&LiveOptions {
        template: UdpTemplate {
            src_ip: Ipv4Addr::new(198, 18, p.net, 1),
            dst_ip: Ipv4Addr::new(198, 18, p.net, 2),
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
    let p = Pair::new();
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
    let p = Pair::new();
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
