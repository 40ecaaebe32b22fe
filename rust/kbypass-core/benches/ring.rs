//! Ring throughput: kbypass SPSC/MPMC vs rtrb (SPSC) and crossbeam's ArrayQueue (MPMC), side
//! by side in one run.
//!
//! ```sh
//! cargo bench -p kbypass-core --bench ring                       # criterion groups + TSC summary
//! RING_BENCH_MS=200 cargo bench -p kbypass-core --bench ring     # shorter measurement per case
//! cargo bench -p kbypass-core --bench ring -- 1thread/bulk32      # one group (criterion filter)
//! ```
//!
//! Cases: `1thread/bulkN` enqueues N then dequeues N on one thread (the ring stays hot in L1:
//! this is the per-operation cost); `2threads/bulkN` moves items from a producer pinned to one
//! CPU to a consumer pinned to another, 64 Ki items per iteration (burst calls of N). crossbeam's
//! ArrayQueue has no bulk API, so its "bulk" is N single pushes/pops. At the end a summary
//! prints cycles per element (TSC ticks) for single-thread bulk 32, measured with rdtsc in the
//! same run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use kbypass_core::ring::{Mode, Ring};

const SIZES: [usize; 4] = [8, 32, 128, 256];
const CAP: usize = 1024;

fn measurement() -> Duration {
    let ms = std::env::var("RING_BENCH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    Duration::from_millis(ms)
}

/// Pin the calling thread to `cpus` (new threads inherit it).
fn pin_to(cpus: impl IntoIterator<Item = usize>) {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET and sched_setaffinity only touch
    // the set we own and the calling thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn pin(cpu: usize) {
    pin_to([cpu]);
}

/// Online CPUs (not `available_parallelism`, which shrinks once this thread is pinned).
fn cpus() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    n.max(1) as usize
}

/// One-thread round trip: enqueue n, dequeue n.
trait RoundTrip {
    fn round(&mut self, src: &[u64], dst: &mut [u64]);
}

struct Kb(
    kbypass_core::ring::Producer<u64>,
    kbypass_core::ring::Consumer<u64>,
);
impl RoundTrip for Kb {
    #[inline]
    fn round(&mut self, src: &[u64], dst: &mut [u64]) {
        assert_eq!(self.0.enqueue_bulk(src), src.len());
        assert_eq!(self.1.dequeue_bulk(dst), dst.len());
    }
}
fn kb(mode: Mode) -> Kb {
    let r = Ring::<u64>::new(CAP, mode).unwrap();
    Kb(r.producer().unwrap(), r.consumer().unwrap())
}

struct Rt(rtrb::Producer<u64>, rtrb::Consumer<u64>);
impl RoundTrip for Rt {
    #[inline]
    fn round(&mut self, src: &[u64], dst: &mut [u64]) {
        self.0.push_entire_slice(src).unwrap();
        self.1.pop_entire_slice(dst).unwrap();
    }
}
fn rt() -> Rt {
    let (p, c) = rtrb::RingBuffer::new(CAP);
    Rt(p, c)
}

struct Cb(ArrayQueue<u64>);
impl RoundTrip for Cb {
    #[inline]
    fn round(&mut self, src: &[u64], dst: &mut [u64]) {
        for &v in src {
            self.0.push(v).unwrap();
        }
        for d in dst.iter_mut() {
            *d = self.0.pop().unwrap();
        }
    }
}

type Case = Box<dyn FnMut(&[u64], &mut [u64])>;

fn one_thread(c: &mut Criterion) {
    for n in SIZES {
        let mut g = c.benchmark_group(format!("ring/1thread/bulk{n}"));
        g.throughput(Throughput::Elements(n as u64));
        let src: Vec<u64> = (0..n as u64).collect();
        let mut dst = vec![0u64; n];
        let mut cases: Vec<(&str, Case)> = Vec::new();
        let mut a = kb(Mode::Spsc);
        cases.push(("kbypass-spsc", Box::new(move |s, d| a.round(s, d))));
        let mut b = rt();
        cases.push(("rtrb-spsc", Box::new(move |s, d| b.round(s, d))));
        let mut m = kb(Mode::Mpmc);
        cases.push(("kbypass-mpmc", Box::new(move |s, d| m.round(s, d))));
        let mut q = Cb(ArrayQueue::new(CAP));
        cases.push((
            "crossbeam-arrayqueue-mpmc",
            Box::new(move |s, d| q.round(s, d)),
        ));
        for (name, mut f) in cases {
            g.bench_function(name, |bch| {
                bch.iter(|| f(black_box(&src), black_box(&mut dst)))
            });
        }
        g.finish();
    }
}

/// Items moved per criterion iteration in the two-thread cases: large enough that thread
/// start-up and the start signal are noise.
const XFER: u64 = 1 << 16;

/// Move `total` items from a producer thread (pinned to CPU 0) to this thread (CPU 1) in
/// batches of `n`; returns the elapsed time. Both threads spin (no futex wake-up) at the start.
fn transfer<P, C>(total: u64, n: usize, mut produce: P, mut consume: C) -> Duration
where
    P: FnMut(&[u64]) -> usize + Send,
    C: FnMut(&mut [u64]) -> usize,
{
    use std::sync::atomic::{AtomicU32, Ordering};
    let ready = AtomicU32::new(0);
    // Spawn from an unpinned thread: a producer inheriting the consumer's CPU would wait behind
    // the spinning consumer for a whole time slice before it could move itself.
    pin_to(0..cpus());
    std::thread::scope(|s| {
        let ready = &ready;
        s.spawn(move || {
            pin(0);
            let batch: Vec<u64> = (0..n as u64).collect();
            ready.fetch_add(1, Ordering::AcqRel);
            while ready.load(Ordering::Acquire) < 2 {
                std::hint::spin_loop();
            }
            let mut sent = 0u64;
            while sent < total {
                let k = ((total - sent) as usize).min(n);
                let m = produce(&batch[..k]);
                sent += m as u64;
                if m == 0 {
                    std::hint::spin_loop();
                }
            }
        });
        let mut buf = vec![0u64; n];
        while ready.load(Ordering::Acquire) < 1 {
            std::thread::yield_now();
        }
        pin(1 % cpus());
        let t0 = Instant::now();
        ready.store(2, Ordering::Release);
        let mut got = 0u64;
        while got < total {
            let m = consume(&mut buf);
            got += m as u64;
            black_box(&buf);
        }
        t0.elapsed()
    })
}

fn two_threads(c: &mut Criterion) {
    if cpus() < 2 {
        eprintln!("ring/2threads: skipped, needs 2 CPUs");
        return;
    }
    for n in SIZES {
        let mut g = c.benchmark_group(format!("ring/2threads/bulk{n}"));
        g.throughput(Throughput::Elements(XFER));
        g.sample_size(10);
        for mode in [Mode::Spsc, Mode::Mpmc] {
            g.bench_function(format!("kbypass-{mode}"), |b| {
                b.iter_custom(|iters| {
                    let r = Ring::<u64>::new(CAP, mode).unwrap();
                    let (mut tx, mut rx) = (r.producer().unwrap(), r.consumer().unwrap());
                    transfer(
                        iters * XFER,
                        n,
                        move |s| tx.enqueue_burst(s),
                        move |d| rx.dequeue_burst(d),
                    )
                })
            });
        }
        g.bench_function("rtrb-spsc", |b| {
            b.iter_custom(|iters| {
                let (mut p, mut q) = rtrb::RingBuffer::<u64>::new(CAP);
                transfer(
                    iters * XFER,
                    n,
                    move |s| p.push_partial_slice(s).0.len(),
                    move |d| q.pop_partial_slice(d).0.len(),
                )
            })
        });
        g.bench_function("crossbeam-arrayqueue-mpmc", |b| {
            b.iter_custom(|iters| {
                let q = ArrayQueue::<u64>::new(CAP);
                let q = &q;
                transfer(
                    iters * XFER,
                    n,
                    move |s| s.iter().take_while(|&&v| q.push(v).is_ok()).count(),
                    move |d| {
                        let mut k = 0;
                        while k < d.len() {
                            match q.pop() {
                                Some(v) => d[k] = v,
                                None => break,
                            }
                            k += 1;
                        }
                        k
                    },
                )
            })
        });
        g.finish();
    }
}

/// TSC ticks per element for the one-thread round trip (enqueue + dequeue of one element).
#[cfg(target_arch = "x86_64")]
fn tsc_per_elem(f: &mut dyn FnMut(&[u64], &mut [u64]), n: usize) -> f64 {
    let src: Vec<u64> = (0..n as u64).collect();
    let mut dst = vec![0u64; n];
    let rounds = 200_000;
    let mut best = f64::MAX;
    for _ in 0..5 {
        // SAFETY: rdtsc has no preconditions on x86_64.
        let t0 = unsafe { core::arch::x86_64::_rdtsc() };
        for _ in 0..rounds {
            f(black_box(&src), black_box(&mut dst));
        }
        // SAFETY: as above.
        let t1 = unsafe { core::arch::x86_64::_rdtsc() };
        best = best.min((t1 - t0) as f64 / (rounds * n) as f64);
    }
    best
}

#[cfg(target_arch = "x86_64")]
fn summary() {
    pin(0);
    let n = 32;
    let mut a = kb(Mode::Spsc);
    let mut b = rt();
    let mut m = kb(Mode::Mpmc);
    let mut q = Cb(ArrayQueue::new(CAP));
    let rows = [
        ("kbypass-spsc", tsc_per_elem(&mut |s, d| a.round(s, d), n)),
        ("rtrb-spsc", tsc_per_elem(&mut |s, d| b.round(s, d), n)),
        ("kbypass-mpmc", tsc_per_elem(&mut |s, d| m.round(s, d), n)),
        (
            "crossbeam-arrayqueue-mpmc",
            tsc_per_elem(&mut |s, d| q.round(s, d), n),
        ),
    ];
    println!(
        "\nsummary: one thread, bulk {n}, enqueue+dequeue, TSC cycles per element (best of 5)"
    );
    for (name, c) in rows {
        println!("  {name:<28} {c:6.2}");
    }
    println!("  goal: kbypass-spsc <= 3.00 and <= rtrb-spsc");
}

#[cfg(not(target_arch = "x86_64"))]
fn summary() {}

fn main() {
    let mut c = Criterion::default()
        .measurement_time(measurement())
        .warm_up_time(Duration::from_millis(100))
        .sample_size(20)
        .without_plots()
        .configure_from_args();
    one_thread(&mut c);
    two_threads(&mut c);
    c.final_summary();
    summary();
}
