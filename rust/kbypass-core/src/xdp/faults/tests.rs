//! The injector's programs in the kernel (`BPF_PROG_TEST_RUN`): verdicts, counters, run-time
//! changes, and the drawn fractions against binomial bounds. Root only (skipped otherwise).

use super::*;
use crate::sys::bpf::{XDP_DROP, XDP_PASS, XDP_REDIRECT};
use crate::sys::testutil::is_root;
use crate::sys::xdp::XskFd;
use crate::xdp::rules::parse_filter;

/// An Ethernet + IPv4 + UDP frame to `dport` with 18 bytes of payload.
fn udp_frame(dport: u16) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&46u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[198, 18, 0, 1]);
    ip[16..20].copy_from_slice(&[198, 18, 0, 2]);
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    udp[4..6].copy_from_slice(&26u16.to_be_bytes());
    f
}

fn rates(loss: f64, reorder: f64) -> FaultRates {
    FaultRates {
        loss,
        reorder,
        ..Default::default()
    }
}

#[test]
fn rates_are_validated() {
    assert!(rates(1.5, 0.0).validate().is_err());
    assert!(rates(-0.1, 0.0).validate().is_err());
    assert!(rates(f64::NAN, 0.0).validate().is_err());
    let too_much = FaultRates {
        duplicate: 0.6,
        reorder: 0.6,
        ..Default::default()
    };
    assert!(too_much.validate().is_err());
    assert!(rates(1.0, 1.0).validate().is_ok());
}

#[test]
fn verdicts_follow_rates_and_filter_and_are_counted() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let inj = FaultInjector::new(
        &parse_filter("udp dst port 4791").unwrap(),
        FaultRates::default(),
        4,
    )
    .unwrap();
    let (hit, miss) = (udp_frame(4791), udp_frame(4792));
    let id = inj.prog_id();
    assert_eq!(inj.test_run(&hit, 1).unwrap(), XDP_PASS);
    inj.set_rates(rates(1.0, 0.0)).unwrap();
    assert_eq!(inj.test_run(&hit, 1).unwrap(), XDP_DROP);
    assert_eq!(inj.test_run(&miss, 1).unwrap(), XDP_PASS);
    // Chosen for the middlebox without a socket: passed, and counted as such.
    inj.set_rates(rates(0.0, 1.0)).unwrap();
    assert_eq!(inj.test_run(&hit, 1).unwrap(), XDP_PASS);
    let sock = XskFd::new().unwrap();
    inj.set_socket(0, sock.raw()).unwrap();
    assert_eq!(inj.test_run(&hit, 1).unwrap(), XDP_REDIRECT);
    // A new filter takes effect without touching the attached program.
    inj.set_filter(&parse_filter("udp dst port 4792").unwrap())
        .unwrap();
    assert_eq!(inj.filter(), "udp dst port 4792");
    assert_eq!(inj.test_run(&hit, 1).unwrap(), XDP_PASS);
    assert_eq!(inj.test_run(&miss, 1).unwrap(), XDP_REDIRECT);
    inj.set_filter(&[]).unwrap();
    assert_eq!(inj.test_run(&hit, 1).unwrap(), XDP_REDIRECT);
    assert_eq!(inj.prog_id(), id);
    let c = inj.counters().unwrap();
    assert_eq!(
        c,
        InjectorCounters {
            seen: 8,
            matched: 6,
            passed: 4,
            dropped: 1,
            to_middlebox: 3,
            no_socket: 1,
        }
    );
    assert!(c.balanced());
    assert!(inj.clear_socket(0).unwrap());
}

#[test]
fn drawn_fractions_are_within_binomial_bounds() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let inj = FaultInjector::new(&[], FaultRates::default(), 1).unwrap();
    let sock = XskFd::new().unwrap();
    inj.set_socket(0, sock.raw()).unwrap();
    let frame = udp_frame(9);
    let n = 40_000u32;
    for (loss, mb) in [(0.0, 0.0), (0.01, 0.0), (0.3, 0.2), (0.5, 0.5), (1.0, 1.0)] {
        inj.set_rates(FaultRates {
            loss,
            delay: mb,
            ..Default::default()
        })
        .unwrap();
        let before = inj.counters().unwrap();
        inj.test_run(&frame, n).unwrap();
        let c = inj.counters().unwrap();
        assert!(c.balanced(), "{c:?}");
        let seen = c.seen - before.seen;
        assert_eq!(seen, u64::from(n));
        // No trials (everything dropped): nothing to check.
        let within = |k: u64, trials: u64, p: f64| {
            if trials == 0 {
                return k == 0;
            }
            let sd = (p * (1.0 - p) / trials.max(1) as f64).sqrt();
            let f = k as f64 / trials.max(1) as f64;
            (f - p).abs() <= 5.0 * sd + 1e-12
        };
        let dropped = c.dropped - before.dropped;
        let to_mb = c.to_middlebox - before.to_middlebox;
        assert!(within(dropped, seen, loss), "loss {loss}: {dropped}/{seen}");
        assert!(
            within(to_mb, seen - dropped, mb),
            "middlebox {mb}: {to_mb}/{}",
            seen - dropped
        );
    }
}

#[test]
fn timing_is_validated() {
    assert!(Timing::default().validate().is_ok());
    let zero = Timing {
        reorder_after: 0,
        ..Default::default()
    };
    assert!(zero.validate().is_err());
    let long = Timing {
        delay: std::time::Duration::from_secs(61),
        ..Default::default()
    };
    assert!(long.validate().is_err());
}

#[test]
fn middlebox_balance_counts_copies_and_held_frames() {
    let c = MiddleboxCounters {
        received: 10,
        duplicated: 3,
        sent: 11,
        tx_failed: 1,
        held: 1,
        ..Default::default()
    };
    assert!(c.balanced());
    assert!(!MiddleboxCounters { held: 0, ..c }.balanced());
}
