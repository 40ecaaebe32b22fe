//! Unit tests of the engine's pure parts (the end-to-end runs on veth are in tests/test_pipeline.py).

use super::worker::*;
use super::*;

#[test]
fn verdict_values_are_the_four_constants() {
    assert_eq!([DROP, TX, FORWARD, KEEP], [0, 1, 2, 3]);
    assert!((0..=3).all(valid_verdict));
    assert!(!valid_verdict(4) && !valid_verdict(255));
}

#[test]
fn on_error_parses_and_refuses_unknown_policies_with_the_choices() {
    assert_eq!("drop".parse::<OnError>().unwrap(), OnError::Drop);
    assert_eq!("pass".parse::<OnError>().unwrap(), OnError::Pass);
    assert_eq!("stop".parse::<OnError>().unwrap(), OnError::Stop);
    let e = "ignore".parse::<OnError>().unwrap_err().to_string();
    assert!(e.contains("\"drop\", \"pass\" or \"stop\""), "{e}");
}

#[test]
fn pps_is_measured_between_first_and_last_packet() {
    let s = WorkerStatsSnapshot {
        rx: 1_000_001,
        first_ns: 1_000,
        last_ns: 1_000_000_000 + 1_000,
        ..Default::default()
    };
    assert!((s.pps() - 1e6).abs() < 1.0, "{}", s.pps());
    assert_eq!(WorkerStatsSnapshot::default().pps(), 0.0);
}

#[test]
fn histogram_bounds_are_increasing() {
    assert!(BATCH_HISTOGRAM_BOUNDS.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        WorkerStats::default().snapshot().histogram.len(),
        BATCH_HISTOGRAM_BOUNDS.len() + 1
    );
}
