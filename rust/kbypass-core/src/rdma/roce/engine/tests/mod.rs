//! End-to-end tests of the engine: two engines on the two ends of a veth pair in network
//! namespaces the test creates (198.18.0.0/15), each test with its own pair. Root only.

mod faults;
mod other;
mod rc;
mod wire_faults;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::sys::netns::NetnsGuard;
use crate::sys::testutil::{is_root, VethPair};

/// Two engines, `a` on veth0 (198.18.n.1) and `b` on veth1 (198.18.n.2).
pub(super) struct Bench {
    pub a: Arc<Engine>,
    pub b: Arc<Engine>,
    pub pair: VethPair,
}

pub(super) fn bench(progress: Progress) -> Option<Bench> {
    if !is_root() {
        eprintln!("skipped: needs root (AF_XDP, XDP and network namespaces)");
        return None;
    }
    let pair = VethPair::with(Default::default()).expect("veth pair");
    let opts = EngineOptions {
        progress,
        frames: 2048,
        ring_size: 512,
        ..Default::default()
    };
    let open = |ns: &str, ifname: &str, host: u8| {
        let _g = NetnsGuard::enter(ns).unwrap();
        Engine::open(ifname, 0, IpAddr::V4(pair.ip(host)), &opts).unwrap()
    };
    let a = open(&pair.a, VethPair::IF_A, 1);
    let b = open(&pair.b, VethPair::IF_B, 2);
    Some(Bench { a, b, pair })
}

/// One side of a connection: its objects and a region of `len` bytes.
pub(super) struct Side {
    pub cq: CompletionQueue,
    pub qp: QueuePair,
    pub mr: MemoryRegion,
    pub pd: ProtectionDomain,
}

pub(super) fn side(e: &Arc<Engine>, t: QpType, len: usize) -> Side {
    let pd = e.alloc_pd().unwrap();
    let cq = e.create_cq(1024, None).unwrap();
    let mr = pd
        .register(ExternalMemory::zeroed(len), Access::ALL)
        .unwrap();
    let qp = pd.create_qp(t, &cq, &cq, QpCaps::default(), true).unwrap();
    Side { cq, qp, mr, pd }
}

/// Path parameters of the tests: 1024-byte MTU, timers short enough that failures show
/// quickly and long enough (134 ms, 7 retries) for a loaded machine.
pub(super) fn params() -> PathParams {
    PathParams {
        mtu: 3,
        timeout: 15,
        retry_cnt: 7,
        rnr_retry: 6,
        min_rnr_timer: 1,
        ..Default::default()
    }
}

/// A connected pair of `t` QPs with `len`-byte regions.
pub(super) fn connected(b: &Bench, t: QpType, len: usize) -> (Side, Side) {
    let (x, y) = (side(&b.a, t, len), side(&b.b, t, len));
    let p = params();
    x.qp.connect(&p, &y.qp.endpoint(2000), 1000).unwrap();
    y.qp.connect(&p, &x.qp.endpoint(1000), 2000).unwrap();
    (x, y)
}

/// Polls `cq` until `n` completions came or `timeout` passed.
pub(super) fn wait_wcs(cq: &CompletionQueue, n: usize, timeout: Duration) -> Vec<WorkCompletion> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [WorkCompletion::default(); 16];
    while got.len() < n && Instant::now() < deadline {
        let k = cq.poll(&mut buf).unwrap();
        got.extend_from_slice(&buf[..k]);
        if k == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    got
}

/// Bytes with a pattern that shows misplaced data.
pub(super) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
        .collect()
}
