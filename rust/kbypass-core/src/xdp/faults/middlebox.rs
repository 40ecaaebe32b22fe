//! The middlebox: a Rust thread that takes the frames the injectors redirect to AF_XDP
//! sockets and transmits them out of the other bridge port, duplicated, held back until later
//! frames passed (reordered) or delayed. Everything it does is counted.
//!
//! Direction `d` receives on `sockets[d]` (bound to the port where the direction's frames
//! arrive) and transmits on `sockets[1 - d]` (the other port, whose peer is the direction's
//! destination). Which fault a frame gets is drawn in proportion to the direction's
//! `duplicate : reorder : delay` (the injector only decides *whether* a frame comes here).
//!
//! A reordered frame is held until the injector's PASSED counter has grown by `reorder_after`
//! since the frame arrived here (so at least that many later frames went the normal way),
//! plus [`SETTLE`] for those frames to leave the kernel's receive batch; or until
//! `reorder_timeout`, whichever comes first (then it counts as a reorder timeout instead).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::injector::{read_counters, FaultRates};
use crate::error::{Error, Result};
use crate::sys::bpf::MapFd;
use crate::sys::xdp::{poll_fds, XdpDesc};
use crate::xsk::XskSocket;

/// How long a held frame waits after its followers were counted (they may still sit in the
/// receive batch of the kernel's poll loop).
pub const SETTLE: Duration = Duration::from_millis(1);
/// Frames waiting for TX room beyond this many are given up (counted in `tx_failed`).
pub const MAX_PENDING: usize = 8192;
/// Descriptors taken per receive.
const BURST: usize = 64;

/// Timing of the reorder and delay faults of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// A reordered frame leaves after this many later frames passed (≥ 1).
    pub reorder_after: u32,
    /// ... or after this long.
    pub reorder_timeout: Duration,
    /// A delayed frame leaves after this long.
    pub delay: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            reorder_after: 3,
            reorder_timeout: Duration::from_millis(200),
            delay: Duration::from_millis(1),
        }
    }
}

impl Timing {
    /// Check the values.
    pub fn validate(&self) -> Result<()> {
        if self.reorder_after == 0 || self.reorder_after > 1 << 20 {
            return Err(Error::invalid(format!(
                "reorder_after={} must be 1..=1048576 frames",
                self.reorder_after
            )));
        }
        for (name, d) in [
            ("reorder_timeout", self.reorder_timeout),
            ("delay", self.delay),
        ] {
            if d > Duration::from_secs(60) {
                return Err(Error::invalid(format!(
                    "{name}={d:?} is longer than 60 s: give a shorter time"
                )));
            }
        }
        Ok(())
    }
}

/// What the middlebox did in one direction.
/// `received + duplicated == sent + tx_failed + held`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MiddleboxCounters {
    /// Frames taken from the RX ring.
    pub received: u64,
    /// Frames sent twice.
    pub duplicated: u64,
    /// Held frames released after `reorder_after` later frames passed.
    pub reordered: u64,
    /// Held frames released at `reorder_timeout` instead (or when the middlebox stopped).
    pub reorder_timeouts: u64,
    /// Frames delayed.
    pub delayed: u64,
    /// Frames sent on unchanged (no fault was configured any more when they arrived).
    pub forwarded: u64,
    /// Frames put on the other port's TX ring (copies of duplicates included).
    pub sent: u64,
    /// Frames given up: too large for a TX frame, or no TX room for too long.
    pub tx_failed: u64,
    /// Frames inside the middlebox now (held, delayed, or waiting for TX room).
    pub held: u64,
    /// Frames the kernel redirected but could not put on the RX ring (`XDP_STATISTICS`
    /// rx_dropped + rx_ring_full of the receiving socket).
    pub kernel_lost: u64,
}

impl MiddleboxCounters {
    /// Whether every frame in is out, failed or still held.
    pub fn balanced(&self) -> bool {
        self.received + self.duplicated == self.sent + self.tx_failed + self.held
    }
}

#[derive(Debug, Default)]
struct Counters([AtomicU64; 10]);

#[derive(Debug)]
struct DirShared {
    /// duplicate, reorder, delay as f64 bits.
    rates: [AtomicU64; 3],
    reorder_after: AtomicU64,
    reorder_timeout_ns: AtomicU64,
    delay_ns: AtomicU64,
    counters: Counters,
}

impl DirShared {
    fn new(rates: &FaultRates, t: &Timing) -> Self {
        let s = DirShared {
            rates: Default::default(),
            reorder_after: AtomicU64::new(0),
            reorder_timeout_ns: AtomicU64::new(0),
            delay_ns: AtomicU64::new(0),
            counters: Counters::default(),
        };
        s.set_rates(rates);
        s.set_timing(t);
        s
    }
    fn set_rates(&self, r: &FaultRates) {
        for (a, p) in self.rates.iter().zip([r.duplicate, r.reorder, r.delay]) {
            a.store(p.to_bits(), Ordering::Relaxed);
        }
    }
    fn set_timing(&self, t: &Timing) {
        self.reorder_after
            .store(u64::from(t.reorder_after), Ordering::Relaxed);
        self.reorder_timeout_ns
            .store(t.reorder_timeout.as_nanos() as u64, Ordering::Relaxed);
        self.delay_ns
            .store(t.delay.as_nanos() as u64, Ordering::Relaxed);
    }
    fn timing(&self) -> Timing {
        Timing {
            reorder_after: self.reorder_after.load(Ordering::Relaxed) as u32,
            reorder_timeout: Duration::from_nanos(self.reorder_timeout_ns.load(Ordering::Relaxed)),
            delay: Duration::from_nanos(self.delay_ns.load(Ordering::Relaxed)),
        }
    }
    fn add(&self, slot: usize, n: u64) {
        self.counters.0[slot].fetch_add(n, Ordering::Relaxed);
    }
    fn set(&self, slot: usize, n: u64) {
        self.counters.0[slot].store(n, Ordering::Relaxed);
    }
    fn read(&self) -> MiddleboxCounters {
        let g = |i: usize| self.counters.0[i].load(Ordering::Relaxed);
        MiddleboxCounters {
            received: g(RECEIVED),
            duplicated: g(DUPLICATED),
            reordered: g(REORDERED),
            reorder_timeouts: g(REORDER_TIMEOUTS),
            delayed: g(DELAYED),
            forwarded: g(FORWARDED),
            sent: g(SENT),
            tx_failed: g(TX_FAILED),
            held: g(HELD),
            kernel_lost: g(KERNEL_LOST),
        }
    }
}

const RECEIVED: usize = 0;
const DUPLICATED: usize = 1;
const REORDERED: usize = 2;
const REORDER_TIMEOUTS: usize = 3;
const DELAYED: usize = 4;
const FORWARDED: usize = 5;
const SENT: usize = 6;
const TX_FAILED: usize = 7;
const HELD: usize = 8;
const KERNEL_LOST: usize = 9;

/// A running middlebox; dropping it stops the thread (held frames are sent first) and closes
/// the sockets.
#[derive(Debug)]
pub struct Middlebox {
    dirs: Arc<[DirShared; 2]>,
    stop: Arc<AtomicBool>,
    error: Arc<Mutex<Option<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Middlebox {
    /// Start the thread on `sockets` (see the module docs); `passed[d]` is direction `d`'s
    /// injector counter map. `seed` seeds the choice of fault.
    pub fn start(
        sockets: [XskSocket; 2],
        passed: [Arc<MapFd>; 2],
        rates: [FaultRates; 2],
        timing: [Timing; 2],
        seed: u64,
    ) -> Result<Self> {
        for t in &timing {
            t.validate()?;
        }
        let dirs = Arc::new([
            DirShared::new(&rates[0], &timing[0]),
            DirShared::new(&rates[1], &timing[1]),
        ]);
        let stop = Arc::new(AtomicBool::new(false));
        let error = Arc::new(Mutex::new(None));
        let mut w = Worker {
            sockets,
            passed,
            dirs: Arc::clone(&dirs),
            state: Default::default(),
            free: Vec::new(),
            rng: seed ^ 0x9e37_79b9_7f4a_7c15 | 1,
        };
        let (st, er) = (Arc::clone(&stop), Arc::clone(&error));
        let thread = std::thread::Builder::new()
            .name("kbypass-faults".into())
            .spawn(move || {
                if let Err(e) = w.run(&st) {
                    if let Ok(mut g) = er.lock() {
                        *g = Some(e.to_string());
                    }
                }
                w.finish();
            })
            .map_err(|e| Error::os("spawn middlebox thread", e.raw_os_error().unwrap_or(0), ""))?;
        Ok(Middlebox {
            dirs,
            stop,
            error,
            thread: Some(thread),
        })
    }

    /// Set direction `dir`'s fault mix (only duplicate, reorder and delay matter here).
    pub fn set_rates(&self, dir: usize, rates: &FaultRates) {
        self.dirs[dir & 1].set_rates(rates);
    }

    /// Set direction `dir`'s timing.
    pub fn set_timing(&self, dir: usize, t: &Timing) -> Result<()> {
        t.validate()?;
        self.dirs[dir & 1].set_timing(t);
        Ok(())
    }

    /// Direction `dir`'s timing.
    pub fn timing(&self, dir: usize) -> Timing {
        self.dirs[dir & 1].timing()
    }

    /// Direction `dir`'s counters.
    pub fn counters(&self, dir: usize) -> MiddleboxCounters {
        self.dirs[dir & 1].read()
    }

    /// Why the thread stopped early, if it did.
    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|g| g.clone())
    }

    /// Whether the thread still runs.
    pub fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stop the thread (it sends what it holds, for at most 100 ms) and wait for it.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Middlebox {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Held {
    buf: Vec<u8>,
    mark: u64,
    deadline: Instant,
    ready_at: Option<Instant>,
}

#[derive(Default)]
struct DirState {
    held: VecDeque<Held>,
    delayed: VecDeque<(Instant, Vec<u8>)>,
    out: VecDeque<Vec<u8>>,
}

impl DirState {
    fn inside(&self) -> usize {
        self.held.len() + self.delayed.len() + self.out.len()
    }
}

enum Fault {
    Duplicate,
    Reorder,
    Delay,
    Forward,
}

struct Worker {
    sockets: [XskSocket; 2],
    passed: [Arc<MapFd>; 2],
    dirs: Arc<[DirShared; 2]>,
    state: [DirState; 2],
    free: Vec<Vec<u8>>,
    rng: u64,
}

impl Worker {
    /// xorshift64*, as a number in [0, 1).
    fn uniform(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn choose(&mut self, d: usize) -> Fault {
        let p = self.dirs[d]
            .rates
            .each_ref()
            .map(|a| f64::from_bits(a.load(Ordering::Relaxed)));
        let total = p[0] + p[1] + p[2];
        if total <= 0.0 {
            return Fault::Forward;
        }
        let x = self.uniform() * total;
        if x < p[0] {
            Fault::Duplicate
        } else if x < p[0] + p[1] {
            Fault::Reorder
        } else {
            Fault::Delay
        }
    }

    fn passed(&self, d: usize) -> Result<u64> {
        Ok(read_counters(&self.passed[d])?.passed)
    }

    /// Take what arrived on direction `d`'s socket; returns how many frames.
    fn receive(&mut self, d: usize, now: Instant) -> Result<usize> {
        let mut descs = [XdpDesc::default(); BURST];
        let n = self.sockets[d].recv(&mut descs);
        if n == 0 {
            return Ok(0);
        }
        let t = self.dirs[d].timing();
        let mut mark = None;
        let mut addrs = [0u64; BURST];
        for (i, desc) in descs[..n].iter().enumerate() {
            addrs[i] = desc.addr;
            let shared = &self.dirs[d];
            shared.add(RECEIVED, 1);
            let mut buf = self.free.pop().unwrap_or_default();
            buf.clear();
            let Some(bytes) = self.sockets[d].app_bytes(desc.addr, desc.len) else {
                // recv() checked the descriptor; a frame that is not readable is given up.
                shared.add(TX_FAILED, 1);
                continue;
            };
            buf.extend_from_slice(bytes);
            let fault = self.choose(d);
            let shared = &self.dirs[d];
            match fault {
                Fault::Duplicate => {
                    shared.add(DUPLICATED, 1);
                    let copy = buf.clone();
                    self.state[d].out.push_back(copy);
                    self.state[d].out.push_back(buf);
                }
                Fault::Forward => {
                    shared.add(FORWARDED, 1);
                    self.state[d].out.push_back(buf);
                }
                Fault::Delay => {
                    shared.add(DELAYED, 1);
                    self.state[d].delayed.push_back((now + t.delay, buf));
                }
                Fault::Reorder => {
                    let m = match mark {
                        Some(m) => m,
                        None => {
                            let m = match self.passed(d) {
                                Ok(m) => m,
                                Err(e) => {
                                    // The burst's frames go back before the error ends the
                                    // thread (what was copied out is in `buf`s, not in them).
                                    self.sockets[d].release(&addrs[..n]);
                                    return Err(e);
                                }
                            };
                            mark = Some(m);
                            m
                        }
                    };
                    self.state[d].held.push_back(Held {
                        buf,
                        mark: m + u64::from(t.reorder_after),
                        deadline: now + t.reorder_timeout,
                        ready_at: None,
                    });
                }
            }
        }
        self.sockets[d].release(&addrs[..n]);
        Ok(n)
    }

    /// Move held and delayed frames whose time has come to the TX queue.
    fn release_due(&mut self, d: usize, now: Instant, all: bool) -> Result<()> {
        let st = &mut self.state[d];
        while st
            .delayed
            .front()
            .is_some_and(|(due, _)| all || *due <= now)
        {
            if let Some((_, b)) = st.delayed.pop_front() {
                st.out.push_back(b);
            }
        }
        if self.state[d].held.is_empty() {
            return Ok(());
        }
        let passed = if all { u64::MAX } else { self.passed(d)? };
        let shared = &self.dirs[d];
        let st = &mut self.state[d];
        let mut i = 0;
        while i < st.held.len() {
            let h = &mut st.held[i];
            if passed >= h.mark && !all {
                let at = *h.ready_at.get_or_insert(now + SETTLE);
                if at <= now {
                    shared.add(REORDERED, 1);
                    if let Some(h) = st.held.remove(i) {
                        st.out.push_back(h.buf);
                    }
                    continue;
                }
            } else if all || h.deadline <= now {
                shared.add(REORDER_TIMEOUTS, 1);
                if let Some(h) = st.held.remove(i) {
                    st.out.push_back(h.buf);
                }
                continue;
            }
            i += 1;
        }
        Ok(())
    }

    /// Put direction `d`'s TX queue on the other port's TX ring, as far as there is room.
    fn transmit(&mut self, d: usize) {
        let out_sock = 1 - d;
        let cap = self.sockets[out_sock].umem().tx_capacity() as usize;
        let shared = &self.dirs[d];
        while self.state[d].out.len() > MAX_PENDING {
            if let Some(b) = self.state[d].out.pop_front() {
                shared.add(TX_FAILED, 1);
                self.free.push(b);
            }
        }
        while !self.state[d].out.is_empty() {
            let front = self.state[d].out.front().map_or(0, Vec::len);
            if front == 0 || front > cap {
                if let Some(b) = self.state[d].out.pop_front() {
                    shared.add(TX_FAILED, 1);
                    self.free.push(b);
                }
                continue;
            }
            let k = self.state[d]
                .out
                .iter()
                .take(BURST)
                .take_while(|b| !b.is_empty() && b.len() <= cap)
                .count();
            let mut refs: [&[u8]; BURST] = [&[]; BURST];
            for (r, b) in refs.iter_mut().zip(self.state[d].out.iter().take(k)) {
                *r = b.as_slice();
            }
            let q = self.sockets[out_sock].send_copies(&refs[..k]).queued;
            shared.add(SENT, q as u64);
            for _ in 0..q {
                if let Some(b) = self.state[d].out.pop_front() {
                    if self.free.len() < 4 * BURST {
                        self.free.push(b);
                    }
                }
            }
            if q < k {
                break;
            }
        }
    }

    fn publish(&self) {
        for d in 0..2 {
            self.dirs[d].set(HELD, self.state[d].inside() as u64);
        }
    }

    fn kernel_stats(&self) {
        for d in 0..2 {
            if let Ok(s) = self.sockets[d].kernel_stats() {
                self.dirs[d].set(KERNEL_LOST, s.rx_dropped + s.rx_ring_full);
            }
        }
    }

    fn run(&mut self, stop: &AtomicBool) -> Result<()> {
        let mut last_stats = Instant::now();
        while !stop.load(Ordering::Acquire) {
            let now = Instant::now();
            let mut got = 0;
            for d in 0..2 {
                got += self.receive(d, now)?;
            }
            for d in 0..2 {
                self.release_due(d, now, false)?;
                self.transmit(d);
                self.sockets[d].complete();
            }
            self.publish();
            if now.duration_since(last_stats) > Duration::from_millis(20) {
                self.kernel_stats();
                last_stats = now;
            }
            if got == 0 {
                let waiting = self.state.iter().any(|s| s.inside() > 0);
                let mut fds = self.sockets.each_ref().map(|s| libc::pollfd {
                    fd: s.raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                for s in &mut self.sockets {
                    s.refill();
                }
                poll_fds(&mut fds, if waiting { 1 } else { 10 })?;
            }
        }
        Ok(())
    }

    /// Send what is still inside (for at most 100 ms); count the rest as failed.
    fn finish(&mut self) {
        let end = Instant::now() + Duration::from_millis(100);
        for d in 0..2 {
            let _ = self.release_due(d, Instant::now(), true);
        }
        while Instant::now() < end && self.state.iter().any(|s| !s.out.is_empty()) {
            for d in 0..2 {
                self.transmit(d);
                self.sockets[d].complete();
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        for d in 0..2 {
            let n = self.state[d].out.len() as u64;
            self.dirs[d].add(TX_FAILED, n);
            self.state[d].out.clear();
        }
        self.publish();
        self.kernel_stats();
    }
}
