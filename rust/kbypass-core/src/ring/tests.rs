use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::*;

fn shm_name(tag: &str) -> String {
    format!("test-{}-{tag}", std::process::id())
}

#[test]
fn capacity_is_checked() {
    for bad in [0usize, 3, 1000, (MAX_CAPACITY as usize) * 2] {
        let e = Ring::<u64>::new(bad, Mode::Spsc).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{bad}: {e}");
    }
    assert!(Ring::<u64>::new(1000, Mode::Spsc)
        .unwrap_err()
        .to_string()
        .contains("use 512 or 1024"));
    assert_eq!(Ring::<u64>::new(1, Mode::Spsc).unwrap().capacity(), 1);
    assert!(Ring::<u64>::memory_size(1 << 20).unwrap() >= (8 << 20) + 384);
}

#[test]
fn modes_parse_and_print() {
    for m in [Mode::Spsc, Mode::Mpsc, Mode::Spmc, Mode::Mpmc] {
        assert_eq!(m.as_str().parse::<Mode>().unwrap(), m);
    }
    assert!("fifo"
        .parse::<Mode>()
        .unwrap_err()
        .to_string()
        .contains("\"mpmc\""));
    assert!(Mode::Spmc.single_producer() && !Mode::Spmc.single_consumer());
}

#[test]
fn bulk_is_all_or_nothing_and_burst_takes_what_fits() {
    for mode in [Mode::Spsc, Mode::Mpmc, Mode::Mpsc, Mode::Spmc] {
        let r = Ring::<u32>::new(8, mode).unwrap();
        let (mut tx, mut rx) = (r.producer().unwrap(), r.consumer().unwrap());
        assert_eq!(tx.enqueue_bulk(&[1, 2, 3, 4, 5, 6]), 6, "{mode}");
        assert_eq!(
            tx.enqueue_bulk(&[7, 8, 9]),
            0,
            "bulk refuses when 3 > 2 free ({mode})"
        );
        assert_eq!(r.len(), 6);
        assert_eq!(
            tx.enqueue_burst(&[7, 8, 9]),
            2,
            "burst takes a prefix ({mode})"
        );
        assert_eq!((r.len(), r.free()), (8, 0));
        assert!(!tx.push(10));
        let mut out = [0u32; 16];
        assert_eq!(rx.dequeue_bulk(&mut out[..9]), 0, "{mode}");
        assert_eq!(rx.dequeue_bulk(&mut out[..3]), 3);
        assert_eq!(&out[..3], &[1, 2, 3]);
        assert_eq!(rx.dequeue_burst(&mut out), 5);
        assert_eq!(&out[..5], &[4, 5, 6, 7, 8]);
        assert_eq!(rx.pop(), None);
        assert!(tx.push(11));
        assert_eq!(rx.pop(), Some(11));
        // Requests larger than the ring: bulk never fits, burst moves at most capacity.
        assert_eq!(tx.enqueue_bulk(&[0; 9]), 0);
        assert_eq!(tx.enqueue_burst(&[5; 9]), 8);
        assert_eq!(rx.dequeue_burst(&mut out), 8);
        let s = r.stats();
        assert!(s.full >= 4 && s.empty >= 3, "{s:?}");
        assert_eq!((s.len, s.attached), (0, 1));
    }
}

#[test]
fn wraps_around_many_times() {
    let r = Ring::<u64>::new(16, Mode::Spsc).unwrap();
    let (mut tx, mut rx) = (r.producer().unwrap(), r.consumer().unwrap());
    let mut next_in = 0u64;
    let mut next_out = 0u64;
    let mut buf = [0u64; 16];
    for round in 0..10_000u64 {
        let k = (round % 13 + 1) as usize;
        let items: Vec<u64> = (next_in..next_in + k as u64).collect();
        let n = tx.enqueue_burst(&items);
        next_in += n as u64;
        let m = rx.dequeue_burst(&mut buf[..(round % 7 + 1) as usize]);
        for &v in &buf[..m] {
            assert_eq!(v, next_out);
            next_out += 1;
        }
    }
    assert_eq!(r.len() as u64, next_in - next_out);
}

#[test]
fn single_sides_allow_one_handle() {
    let r = Ring::<u64>::new(8, Mode::Spsc).unwrap();
    let tx = r.producer().unwrap();
    let e = r.producer().unwrap_err();
    assert!(matches!(e, Error::State(_)), "{e}");
    assert!(e.to_string().contains("mpmc"), "{e}");
    drop(tx);
    let _tx = r.producer().unwrap();
    let _rx = r.consumer().unwrap();
    assert!(r.consumer().is_err());
    let m = Ring::<u64>::new(8, Mode::Mpmc).unwrap();
    let _handles: Vec<_> = (0..4)
        .map(|_| (m.producer().unwrap(), m.consumer().unwrap()))
        .collect();
}

#[test]
fn reserve_commit_and_peek_release() {
    let r = Ring::<u64>::new(8, Mode::Spsc).unwrap();
    let (mut tx, mut rx) = (r.producer().unwrap(), r.consumer().unwrap());
    assert_eq!(tx.enqueue_bulk(&[0; 6]), 6);
    let mut out = [0u64; 6];
    assert_eq!(rx.dequeue_bulk(&mut out), 6);
    // Head is at 6 of 8: a reservation of 5 wraps.
    let mut w = tx.reserve(5).unwrap();
    assert_eq!((w.first.len(), w.second.len()), (2, 3));
    for i in 0..5 {
        w.write(i, 100 + i as u64);
    }
    w.commit(4);
    assert_eq!(r.len(), 4);
    assert!(tx.reserve(5).is_none(), "only 4 free");
    assert_eq!(tx.reserve_up_to(10).len(), 4);
    let _uncommitted = tx.reserve(1).unwrap(); // dropped without commit: nothing published
    assert_eq!(r.len(), 4);
    let p = rx.peek(4).unwrap();
    assert_eq!(
        (0..4).map(|i| p.get(i)).collect::<Vec<_>>(),
        vec![100, 101, 102, 103]
    );
    p.release(3);
    assert_eq!(rx.pop(), Some(103));
    assert!(rx.peek(1).is_none());
    assert!(rx.peek_up_to(4).is_empty());
}

#[test]
#[should_panic(expected = "single-producer")]
fn reserve_on_multi_producer_panics() {
    let r = Ring::<u64>::new(8, Mode::Mpmc).unwrap();
    let mut tx = r.producer().unwrap();
    let _ = tx.reserve(1);
}

#[test]
fn blocking_calls_wait_and_time_out() {
    let r = Ring::<u64>::new(4, Mode::Spsc).unwrap();
    let (mut tx, mut rx) = (r.producer().unwrap(), r.consumer().unwrap());
    let mut out = [0u64; 2];
    let e = rx
        .dequeue_bulk_wait(&mut out, Some(Duration::from_millis(20)))
        .unwrap_err();
    assert!(matches!(e, Error::Timeout(_)), "{e}");
    assert!(matches!(
        tx.enqueue_bulk_wait(&[0; 5], None),
        Err(Error::InvalidArgument(_))
    ));
    std::thread::scope(|s| {
        s.spawn(move || {
            for i in 0..1000u64 {
                tx.enqueue_bulk_wait(&[i], Some(Duration::from_secs(10)))
                    .unwrap();
            }
        });
        let mut got = Vec::new();
        let mut buf = [0u64; 4];
        while got.len() < 1000 {
            let n = rx
                .dequeue_burst_wait(&mut buf, Some(Duration::from_secs(10)))
                .unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.iter().copied().eq(0..1000));
    });
}

#[test]
fn wide_elements() {
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Desc {
        addr: u64,
        len: u32,
        opts: u32,
    }
    let r = Ring::<Desc>::new(4, Mode::Mpmc).unwrap();
    let (mut tx, mut rx) = (r.producer().unwrap(), r.consumer().unwrap());
    let d = Desc {
        addr: 4096,
        len: 60,
        opts: 1,
    };
    assert!(tx.push(d));
    assert_eq!(rx.pop(), Some(d));
}

#[test]
fn in_mapping_checks_size() {
    let small = crate::sys::mm::Mapping::anonymous(4096, 0).unwrap();
    assert!(matches!(
        Ring::<u64>::in_mapping(small, 1024, Mode::Spsc),
        Err(Error::InvalidArgument(_))
    ));
    let len = Ring::<u64>::memory_size(1024).unwrap();
    let m = crate::sys::mm::Mapping::anonymous(len, 0).unwrap();
    let r = Ring::<u64>::in_mapping(m, 1024, Mode::Mpmc).unwrap();
    assert_eq!(r.capacity(), 1024);
}

// ---- shared memory ----

#[test]
fn shared_create_attach_and_last_user_unlinks() {
    let name = shm_name("life");
    let path = format!("/dev/shm/kbypass.ring.{name}");
    let a = Ring::<u64>::create_shared(&name, 64, Mode::Spsc, false).unwrap();
    assert_eq!(a.name(), Some(name.as_str()));
    assert!(std::path::Path::new(&path).exists());
    let e = Ring::<u64>::create_shared(&name, 64, Mode::Spsc, false).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EEXIST));
    assert!(e.to_string().contains("unlink"), "{e}");
    let b = Ring::<u64>::attach(&name).unwrap();
    assert_eq!(
        (b.capacity(), b.mode(), b.stats().attached),
        (64, Mode::Spsc, 2)
    );
    let mut tx = a.producer().unwrap();
    assert!(
        b.producer().is_err(),
        "the SP side is held through the other mapping"
    );
    let mut rx = b.consumer().unwrap();
    assert_eq!(tx.enqueue_bulk(&[7, 8, 9]), 3);
    let mut out = [0u64; 3];
    assert_eq!(rx.dequeue_bulk(&mut out), 3);
    assert_eq!(out, [7, 8, 9]);
    // Wrong element type is refused.
    let e = Ring::<u32>::attach(&name).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument(_)) && e.to_string().contains("8-byte"),
        "{e}"
    );
    drop((tx, rx, a));
    assert!(std::path::Path::new(&path).exists(), "one user left");
    drop(b);
    assert!(
        !std::path::Path::new(&path).exists(),
        "last user removed the name"
    );
    let e = Ring::<u64>::attach(&name).unwrap_err();
    assert!(
        matches!(e, Error::NotFound(_)) && e.to_string().contains("create it first"),
        "{e}"
    );
}

#[test]
fn shared_replace_and_explicit_unlink() {
    let name = shm_name("replace");
    let old = Ring::<u64>::create_shared(&name, 8, Mode::Mpmc, false).unwrap();
    std::mem::forget(old); // a "crashed" user: never detaches
    let new = Ring::<u64>::create_shared(&name, 16, Mode::Mpmc, true).unwrap();
    assert_eq!(Ring::<u64>::attach(&name).unwrap().capacity(), 16);
    assert!(Ring::<u64>::unlink(&name).unwrap());
    assert!(!Ring::<u64>::unlink(&name).unwrap());
    assert!(matches!(
        Ring::<u64>::attach(&name),
        Err(Error::NotFound(_))
    ));
    assert!(
        new.producer().unwrap().push(1),
        "attached users keep working after unlink"
    );
    assert!(matches!(
        Ring::<u64>::unlink("../etc/passwd"),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn attach_refuses_foreign_files() {
    let name = shm_name("foreign");
    let file = format!("/dev/shm/kbypass.ring.{name}");
    std::fs::write(&file, vec![0xAAu8; 8192]).unwrap();
    let e = Ring::<u64>::attach(&name).unwrap_err();
    let _ = std::fs::remove_file(&file);
    assert!(
        matches!(e, Error::State(_) | Error::InvalidArgument(_)),
        "{e}"
    );
}

/// Two processes: the child (forked) produces, the parent consumes, in order.
#[test]
fn shared_ring_across_fork() {
    const N: u64 = 200_000;
    let name = shm_name("fork");
    let ring = Ring::<u64>::create_shared(&name, 1024, Mode::Spsc, false).unwrap();
    let mut rx = ring.consumer().unwrap();
    // SAFETY: the child only attaches, produces, and leaves with _exit (no unwinding or atexit
    // handlers of the test harness run in it).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let ok = (|| -> Result<()> {
            let r = Ring::<u64>::attach(&name)?;
            let mut tx = r.producer()?;
            let mut next = 0u64;
            let mut batch = [0u64; 64];
            while next < N {
                let k = (N - next).min(64) as usize;
                for (i, b) in batch[..k].iter_mut().enumerate() {
                    *b = next + i as u64;
                }
                tx.enqueue_bulk_wait(&batch[..k], Some(Duration::from_secs(20)))?;
                next += k as u64;
            }
            Ok(())
        })();
        // SAFETY: _exit ends the forked child immediately, which is what we want here.
        unsafe { libc::_exit(if ok.is_ok() { 0 } else { 1 }) };
    }
    let mut buf = [0u64; 256];
    let mut expect = 0u64;
    while expect < N {
        let n = rx
            .dequeue_burst_wait(&mut buf, Some(Duration::from_secs(20)))
            .unwrap();
        for &v in &buf[..n] {
            assert_eq!(v, expect);
            expect += 1;
        }
    }
    let mut status = 0;
    // SAFETY: waitpid on the child we forked, writing into our own int.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    assert_eq!(
        ring.stats().attached,
        1,
        "the child detached when it exited"
    );
}

// ---- many-thread stress ----

fn stress(
    mode: Mode,
    producers: usize,
    consumers: usize,
    per_producer: u64,
    cap: usize,
    bulk: usize,
) {
    let ring = Ring::<u64>::new(cap, mode).unwrap();
    let total = per_producer * producers as u64;
    let taken = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let results: Vec<Vec<u64>> = std::thread::scope(|s| {
        for p in 0..producers {
            let mut tx = ring.producer().unwrap();
            s.spawn(move || {
                let mut i = 0u64;
                let mut batch = vec![0u64; bulk];
                while i < per_producer {
                    let k = ((per_producer - i) as usize).min(bulk);
                    for (j, b) in batch[..k].iter_mut().enumerate() {
                        // producer id in the top byte, sequence below
                        *b = ((p as u64) << 56) | (i + j as u64);
                    }
                    // alternate bulk and burst so both paths race
                    let n = if i % 2 == 0 {
                        tx.enqueue_bulk(&batch[..k])
                    } else {
                        tx.enqueue_burst(&batch[..k])
                    };
                    i += n as u64;
                    if n == 0 {
                        std::thread::yield_now();
                    }
                }
            });
        }
        let handles: Vec<_> = (0..consumers)
            .map(|c| {
                let mut rx = ring.consumer().unwrap();
                let taken = Arc::clone(&taken);
                s.spawn(move || {
                    let mut got = Vec::new();
                    let mut buf = vec![0u64; bulk];
                    let mut last = vec![None::<u64>; producers];
                    while taken.load(std::sync::atomic::Ordering::Relaxed) < total {
                        let n = if c % 2 == 0 {
                            rx.dequeue_burst(&mut buf)
                        } else {
                            rx.dequeue_bulk(&mut buf[..bulk.min(3)])
                        };
                        if n == 0 {
                            std::thread::yield_now();
                            continue;
                        }
                        taken.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        for &v in &buf[..n] {
                            // Per producer, each consumer sees increasing sequence numbers.
                            let p = (v >> 56) as usize;
                            let seq = v & ((1 << 56) - 1);
                            if let Some(prev) = last[p] {
                                assert!(seq > prev, "producer {p}: {seq} after {prev}");
                            }
                            last[p] = Some(seq);
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    got
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all = HashSet::with_capacity(total as usize);
    let mut count = 0u64;
    for v in results.into_iter().flatten() {
        assert!(all.insert(v), "duplicate item {v:#x}");
        count += 1;
    }
    assert_eq!(count, total, "items lost");
    for p in 0..producers as u64 {
        for i in 0..per_producer {
            assert!(all.contains(&((p << 56) | i)), "missing {p}/{i}");
        }
    }
    assert!(ring.is_empty());
}

#[test]
fn stress_spsc_two_threads_in_order() {
    stress(Mode::Spsc, 1, 1, 500_000, 1024, 32);
    stress(Mode::Spsc, 1, 1, 50_000, 4, 3);
}

#[test]
fn stress_mpmc_4x4() {
    stress(Mode::Mpmc, 4, 4, 100_000, 1024, 32);
    stress(Mode::Mpmc, 4, 4, 10_000, 8, 5);
}

#[test]
fn stress_mpsc_and_spmc() {
    stress(Mode::Mpsc, 4, 1, 50_000, 256, 16);
    stress(Mode::Spmc, 1, 4, 200_000, 256, 16);
}

#[test]
fn stress_single_items_mpmc() {
    let ring = Ring::<u64>::new(64, Mode::Mpmc).unwrap();
    const PER: u64 = 20_000;
    let sum = std::thread::scope(|s| {
        for p in 0..3u64 {
            let mut tx = ring.producer().unwrap();
            s.spawn(move || {
                for i in 0..PER {
                    while !tx.push(p * PER + i) {
                        std::thread::yield_now();
                    }
                }
            });
        }
        let hs: Vec<_> = (0..3)
            .map(|_| {
                let mut rx = ring.consumer().unwrap();
                s.spawn(move || {
                    let mut sum = 0u64;
                    let mut n = 0;
                    while n < PER {
                        match rx.pop() {
                            Some(v) => {
                                sum += v;
                                n += 1;
                            }
                            None => std::thread::yield_now(),
                        }
                    }
                    sum
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
    });
    let n = 3 * PER;
    assert_eq!(sum, n * (n - 1) / 2);
}

// ---- property test: any sequence of operations behaves like a bounded VecDeque ----

#[derive(Clone, Debug)]
enum Op {
    EnqBulk(usize),
    EnqBurst(usize),
    DeqBulk(usize),
    DeqBurst(usize),
    Push,
    Pop,
    ReserveCommit(usize, usize),
    PeekRelease(usize, usize),
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        (0usize..40).prop_map(Op::EnqBulk),
        (0usize..40).prop_map(Op::EnqBurst),
        (0usize..40).prop_map(Op::DeqBulk),
        (0usize..40).prop_map(Op::DeqBurst),
        Just(Op::Push),
        Just(Op::Pop),
        (0usize..20, 0usize..20).prop_map(|(a, b)| Op::ReserveCommit(a, b)),
        (0usize..20, 0usize..20).prop_map(|(a, b)| Op::PeekRelease(a, b)),
    ]
}

proptest::proptest! {
    #[test]
    fn behaves_like_a_bounded_deque(
        cap_log in 0u32..6,
        multi in proptest::bool::ANY,
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        use std::collections::VecDeque;
        let cap = 1usize << cap_log;
        let mode = if multi { Mode::Mpmc } else { Mode::Spsc };
        let r = Ring::<u64>::new(cap, mode).unwrap();
        let (mut tx, mut rx) = (r.producer().unwrap(), r.consumer().unwrap());
        let mut model: VecDeque<u64> = VecDeque::new();
        let mut next = 0u64;
        let mut buf = vec![0u64; 64];
        for op in ops {
            match op {
                Op::EnqBulk(n) | Op::EnqBurst(n) => {
                    let items: Vec<u64> = (next..next + n as u64).collect();
                    let free = cap - model.len();
                    let (got, want) = if matches!(op, Op::EnqBulk(_)) {
                        (tx.enqueue_bulk(&items), if n <= free { n } else { 0 })
                    } else {
                        (tx.enqueue_burst(&items), n.min(free))
                    };
                    proptest::prop_assert_eq!(got, want);
                    model.extend(&items[..got]);
                    next += got as u64;
                }
                Op::DeqBulk(n) | Op::DeqBurst(n) => {
                    let (got, want) = if matches!(op, Op::DeqBulk(_)) {
                        (rx.dequeue_bulk(&mut buf[..n]), if n <= model.len() { n } else { 0 })
                    } else {
                        (rx.dequeue_burst(&mut buf[..n]), n.min(model.len()))
                    };
                    proptest::prop_assert_eq!(got, want);
                    let expect: Vec<u64> = model.drain(..got).collect();
                    proptest::prop_assert_eq!(&buf[..got], &expect[..]);
                }
                Op::Push => {
                    let ok = tx.push(next);
                    proptest::prop_assert_eq!(ok, model.len() < cap);
                    if ok {
                        model.push_back(next);
                        next += 1;
                    }
                }
                Op::Pop => proptest::prop_assert_eq!(rx.pop(), model.pop_front()),
                Op::ReserveCommit(n, k) if !multi => {
                    let mut w = tx.reserve_up_to(n);
                    proptest::prop_assert_eq!(w.len(), n.min(cap - model.len()));
                    let k = k.min(w.len());
                    for i in 0..k {
                        w.write(i, next + i as u64);
                    }
                    w.commit(k);
                    model.extend(next..next + k as u64);
                    next += k as u64;
                }
                Op::PeekRelease(n, k) if !multi => {
                    let p = rx.peek_up_to(n);
                    proptest::prop_assert_eq!(p.len(), n.min(model.len()));
                    for (i, &want) in model.iter().take(p.len()).enumerate() {
                        proptest::prop_assert_eq!(p.get(i), want);
                    }
                    let k = k.min(p.len());
                    p.release(k);
                    model.drain(..k);
                }
                Op::ReserveCommit(..) | Op::PeekRelease(..) => {}
            }
            proptest::prop_assert_eq!(r.len(), model.len());
            proptest::prop_assert_eq!(r.free(), cap - model.len());
        }
    }
}
