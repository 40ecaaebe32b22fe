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
fn reserve_commits_only_written_slots_and_peek_releases_a_prefix() {
    for mode in [Mode::Spsc, Mode::Mpmc] {
        let r = Ring::<u64>::new(8, mode).unwrap();
        let (mut tx, mut rx) = (r.producer().unwrap(), r.consumer().unwrap());
        assert_eq!(tx.enqueue_bulk(&[0; 6]), 6);
        let mut out = [0u64; 6];
        assert_eq!(rx.dequeue_bulk(&mut out), 6);
        // Position 6 of 8: a reservation of 5 wraps.
        let mut w = tx.reserve(5).unwrap();
        assert_eq!(w.len(), 5);
        assert_eq!(w.extend_from_slice(&[100, 101, 102]), 3);
        assert!(w.push(103));
        // Only the four written slots can be published, whatever the reservation's size.
        assert_eq!(w.commit(), 4, "{mode}");
        assert_eq!(r.len(), 4);
        assert!(tx.reserve(5).is_none(), "only 4 free");
        let mut w = tx.reserve_up_to(10);
        assert_eq!(w.len(), 4);
        assert_eq!(w.extend_from_slice(&[1; 9]), 4, "no more than reserved");
        assert!(!w.push(1));
        drop(w); // dropped without commit: nothing published, the claim is given back
        assert_eq!(r.len(), 4);
        assert!(
            tx.push(104),
            "{mode}: the dropped reservation released the side"
        );
        let p = rx.peek(4).unwrap();
        assert_eq!(
            (0..4).map(|i| p.get(i)).collect::<Vec<_>>(),
            vec![100, 101, 102, 103]
        );
        let (a, b) = p.as_slices();
        assert_eq!(a.len() + b.len(), 4);
        p.release(3);
        assert_eq!(rx.pop(), Some(103));
        assert_eq!(rx.pop(), Some(104));
        assert!(rx.peek(1).is_none());
        assert!(rx.peek_up_to(4).is_empty());
        let s = r.stats();
        assert_eq!((s.producer_claim, s.consumer_claim), (None, None));
    }
}

#[test]
fn a_reservation_in_flight_is_visible_and_blocks_only_its_side() {
    let r = Ring::<u64>::new(8, Mode::Mpmc).unwrap();
    let mut a = r.producer().unwrap();
    let w = a.reserve(2).unwrap();
    assert_eq!(r.stats().producer_claim, Some(std::process::id()));
    // A private ring waits for its own threads: another producer finishes once `w` commits.
    let r2 = Arc::clone(&r);
    let t = std::thread::spawn(move || r2.producer().unwrap().push(7));
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !t.is_finished(),
        "the second producer waits for the claim in flight"
    );
    drop(w);
    assert!(t.join().unwrap());
    assert_eq!(r.consumer().unwrap().pop(), Some(7));
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
    #[repr(C)]
    struct Desc {
        addr: u64,
        len: u32,
        opts: u32,
    }
    // SAFETY: three integers, no padding: every bit pattern is a valid Desc.
    unsafe impl Pod for Desc {}
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
    assert!(e.to_string().contains("attach(\""), "{e}");
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
    use std::os::unix::fs::PermissionsExt;
    let name = shm_name("foreign");
    let file = format!("/dev/shm/kbypass.ring.{name}");
    std::fs::write(&file, vec![0xAAu8; 16384]).unwrap();
    // Open to other users: another user could have written it.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = Ring::<u64>::attach(&name).unwrap_err();
    assert!(matches!(e, Error::Permission { .. }), "{e}");
    assert!(e.to_string().contains("chmod 600"), "{e}");
    // Private, but not a ring.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = Ring::<u64>::attach(&name).unwrap_err();
    let _ = std::fs::remove_file(&file);
    assert!(
        matches!(e, Error::State(_) | Error::InvalidArgument(_)),
        "{e}"
    );
    assert!(e.to_string().contains("magic"), "{e}");
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

// ---- crashed, stopped, forked and namespaced peers ----

/// A forked child running `f`; its exit status is its result. Killed on drop if still there.
struct Child(libc::pid_t);

impl Child {
    fn fork(f: impl FnOnce() -> i32) -> Child {
        // SAFETY: the child only runs `f` (ring calls, pipes, sleeps) and leaves with _exit, so
        // no unwinding or atexit handler of the test harness runs in it.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
            // SAFETY: ends the forked child at once.
            unsafe { libc::_exit(code) };
        }
        Child(pid)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(self.0, sig) }, 0);
    }

    fn wait(&mut self) -> i32 {
        let mut status = 0;
        // SAFETY: waiting for our own child, writing into our own int.
        assert_eq!(unsafe { libc::waitpid(self.0, &mut status, 0) }, self.0);
        self.0 = 0;
        if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.0 > 0 {
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
                libc::waitpid(self.0, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// A pipe the child writes one byte into when it is ready.
fn ready_pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two fresh descriptors into our array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    use std::os::fd::FromRawFd;
    // SAFETY: both descriptors are fresh and owned by us from here on.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

/// Wait (at most 20 s) for the child's byte. Other tests' children, forked from other threads,
/// may hold copies of the write end, so a dead child is noticed by the timeout, not by EOF.
fn wait_ready(r: &mut std::fs::File) {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: r.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one pollfd we own.
    let n = unsafe { libc::poll(&mut pfd, 1, 20_000) };
    assert_eq!(n, 1, "the child did not say it is ready within 20 s");
    let mut b = [0u8; 1];
    r.read_exact(&mut b).expect("the child said it is ready");
}

fn say_ready(w: &mut std::fs::File) {
    use std::io::Write;
    w.write_all(b"r").unwrap();
}

#[test]
fn a_producer_killed_mid_enqueue_blocks_nobody_and_is_counted() {
    let name = shm_name("killed");
    let ring = Ring::<u64>::create_shared(&name, 64, Mode::Mpmc, false).unwrap();
    let (mut r, mut w) = ready_pipe();
    let child = Child::fork(|| {
        let ring = Ring::<u64>::attach(&name).unwrap();
        let mut tx = ring.producer().unwrap();
        let mut slots = tx.reserve(4).unwrap(); // the side's claim, in flight
        slots.extend_from_slice(&[666, 667]);
        say_ready(&mut w);
        std::thread::sleep(Duration::from_secs(60));
        0
    });
    wait_ready(&mut r);
    let pid = child.0 as u32;
    assert_eq!(ring.stats().producer_claim, Some(pid));
    drop(child); // SIGKILL between its claim and its publish
    let mut tx = ring.producer().unwrap();
    assert_eq!(
        tx.enqueue_bulk(&[1, 2, 3]),
        3,
        "the dead claim is resolved, not waited for"
    );
    let mut rx = ring.consumer().unwrap();
    let mut out = [0u64; 8];
    assert_eq!(rx.dequeue_burst(&mut out), 3);
    assert_eq!(
        &out[..3],
        &[1, 2, 3],
        "nothing of the dead producer is delivered"
    );
    let s = ring.stats();
    assert_eq!((s.producer_recovered, s.producer_rolled_back), (1, 4));
    assert_eq!((s.producer_claim, s.attached), (None, 1));
}

#[test]
fn a_consumer_killed_mid_dequeue_leaves_its_items_to_the_others() {
    let name = shm_name("killedrx");
    let ring = Ring::<u64>::create_shared(&name, 64, Mode::Mpmc, false).unwrap();
    ring.producer().unwrap().enqueue_bulk(&[1, 2, 3, 4]);
    let (mut r, mut w) = ready_pipe();
    let child = Child::fork(|| {
        let ring = Ring::<u64>::attach(&name).unwrap();
        let mut rx = ring.consumer().unwrap();
        let seen = rx.peek(3).unwrap(); // claimed, never released
        assert_eq!(seen.get(0), 1);
        say_ready(&mut w);
        std::thread::sleep(Duration::from_secs(60));
        0
    });
    wait_ready(&mut r);
    drop(child);
    let mut out = [0u64; 8];
    assert_eq!(ring.consumer().unwrap().dequeue_burst(&mut out), 4);
    assert_eq!(&out[..4], &[1, 2, 3, 4]);
    let s = ring.stats();
    assert_eq!((s.consumer_recovered, s.consumer_rolled_back), (1, 3));
}

#[test]
fn a_stopped_producer_makes_calls_give_up_not_hang() {
    let name = shm_name("stopped");
    let ring = Ring::<u64>::create_shared(&name, 64, Mode::Mpmc, false).unwrap();
    let (mut r, mut w) = ready_pipe();
    let (mut r2, mut w2) = ready_pipe();
    let mut child = Child::fork(|| {
        let ring = Ring::<u64>::attach(&name).unwrap();
        let mut tx = ring.producer().unwrap();
        let mut slots = tx.reserve(2).unwrap();
        slots.extend_from_slice(&[7, 8]);
        say_ready(&mut w);
        wait_ready(&mut r2); // until the parent says commit
        slots.commit();
        0
    });
    wait_ready(&mut r);
    child.signal(libc::SIGSTOP);
    let mut tx = ring.producer().unwrap();
    let t0 = std::time::Instant::now();
    assert!(!tx.push(1), "a live claim in flight: give up");
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    let e = tx
        .enqueue_bulk_wait(&[1], Some(Duration::from_millis(200)))
        .unwrap_err();
    assert!(matches!(e, Error::Timeout(_)), "{e}");
    assert!(ring.stats().producer_busy >= 2);
    assert_eq!(
        ring.stats().producer_recovered,
        0,
        "a stopped process is alive"
    );
    child.signal(libc::SIGCONT);
    say_ready(&mut w2);
    assert_eq!(child.wait(), 0);
    tx.enqueue_bulk_wait(&[9], Some(Duration::from_secs(5)))
        .unwrap();
    let mut out = [0u64; 4];
    assert_eq!(ring.consumer().unwrap().dequeue_burst(&mut out), 3);
    assert_eq!(&out[..3], &[7, 8, 9]);
}

#[test]
fn a_single_side_of_a_dead_process_is_taken_over() {
    let name = shm_name("sp-dead");
    let ring = Ring::<u64>::create_shared(&name, 64, Mode::Spsc, false).unwrap();
    let (mut r, mut w) = ready_pipe();
    let child = Child::fork(|| {
        let ring = Ring::<u64>::attach(&name).unwrap();
        let mut tx = ring.producer().unwrap();
        tx.push(5);
        say_ready(&mut w);
        std::thread::sleep(Duration::from_secs(60));
        0
    });
    wait_ready(&mut r);
    let e = ring.producer().unwrap_err();
    assert!(
        e.to_string().contains(&format!("process {}", child.0)),
        "{e}"
    );
    drop(child);
    let mut tx = ring.producer().unwrap();
    assert!(tx.push(6));
    let mut out = [0u64; 4];
    assert_eq!(ring.consumer().unwrap().dequeue_burst(&mut out), 2);
    assert_eq!(&out[..2], &[5, 6]);
}

#[test]
fn an_owner_in_another_pid_namespace_is_alive_to_us() {
    if !crate::sys::testutil::is_root() {
        eprintln!("skipped: needs root (CLONE_NEWPID)");
        return;
    }
    let name = shm_name("pidns");
    let ring = Ring::<u64>::create_shared(&name, 64, Mode::Spsc, false).unwrap();
    let _tx = ring.producer().unwrap(); // held by us, a pid the other namespace cannot see
    let mut child = Child::fork(|| {
        // SAFETY: unshare in the single-threaded child; its next child is pid 1 of a new
        // PID namespace, where our parent's pid does not exist.
        if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
            return 90;
        }
        let mut inner = Child::fork(|| {
            let ring = Ring::<u64>::attach(&name).unwrap();
            assert_eq!(std::process::id(), 1, "in a new PID namespace");
            match ring.producer() {
                Err(Error::State(m)) if m.contains("already holds it") => 0,
                Ok(_) => 1, // admitted a second single producer
                Err(_) => 2,
            }
        });
        inner.wait()
    });
    assert_eq!(
        child.wait(),
        0,
        "the live owner in our namespace was seen alive"
    );
}

#[test]
fn a_shared_ring_inherited_across_fork_refuses_and_loses_nothing() {
    let name = shm_name("inherit");
    let ring = Ring::<u64>::create_shared(&name, 64, Mode::Spsc, false).unwrap();
    let mut held = Some((Arc::clone(&ring), ring.producer().unwrap()));
    assert!(held.as_mut().unwrap().1.push(100));
    let mut child = Child::fork(|| {
        let (ring, tx) = held.take().unwrap(); // the child's copy of the parent's values
        let inherited = ring.check().is_err() && ring.producer().is_err();
        let e = ring.check().unwrap_err().to_string();
        // Dropping the inherited values must not touch the parent's attachment or name.
        drop(tx);
        drop(ring);
        let ok = inherited && e.contains("attach") && e.contains("fork");
        // A proper attachment by name works in the child.
        let own = Ring::<u64>::attach(&name).unwrap();
        let len = own.stats().len;
        drop(own);
        i32::from(!(ok && len == 1))
    });
    assert_eq!(child.wait(), 0);
    let (_, mut tx) = held.take().unwrap();
    assert!(tx.push(200) && tx.push(300));
    let other = Ring::<u64>::attach(&name).expect("the child's exit did not remove the name");
    let mut rx = other.consumer().unwrap();
    let mut out = [0u64; 4];
    assert_eq!(rx.dequeue_burst(&mut out), 3);
    assert_eq!(&out[..3], &[100, 200, 300]);
    assert_eq!(ring.stats().attached, 2);
}

#[test]
fn a_handle_used_in_a_forked_child_panics_rather_than_corrupts() {
    let name = shm_name("panic");
    let ring = Ring::<u64>::create_shared(&name, 8, Mode::Mpmc, false).unwrap();
    let mut tx = ring.producer().unwrap();
    let mut child = Child::fork(|| {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tx.push(1)));
        let msg = r
            .err()
            .and_then(|p| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        std::mem::forget(tx); // its Drop would run in the child (harmless, but not the point)
        i32::from(!msg.contains("inherited across fork()"))
    });
    assert_eq!(child.wait(), 0);
    assert_eq!(ring.len(), 0, "the child enqueued nothing");
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
                Op::ReserveCommit(n, k) => {
                    let mut w = tx.reserve_up_to(n);
                    proptest::prop_assert_eq!(w.len(), n.min(cap - model.len()));
                    let items: Vec<u64> = (next..next + k as u64).collect();
                    let k = w.extend_from_slice(&items);
                    proptest::prop_assert_eq!(w.commit(), k);
                    model.extend(next..next + k as u64);
                    next += k as u64;
                }
                Op::PeekRelease(n, k) => {
                    let p = rx.peek_up_to(n);
                    proptest::prop_assert_eq!(p.len(), n.min(model.len()));
                    for (i, &want) in model.iter().take(p.len()).enumerate() {
                        proptest::prop_assert_eq!(p.get(i), want);
                    }
                    let k = k.min(p.len());
                    p.release(k);
                    model.drain(..k);
                }
            }
            proptest::prop_assert_eq!(r.len(), model.len());
            proptest::prop_assert_eq!(r.free(), cap - model.len());
        }
    }
}
