//! `eventfd(2)`: a file descriptor another thread makes readable, to wake a thread that sleeps in
//! `poll(2)` on other descriptors too (a pipeline's workers sleeping on their sockets are woken
//! by `stop()` this way).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::error::{errno, Error, Result};

/// An owned, non-blocking `eventfd`. [`EventFd::signal`] makes it readable (and it stays so)
/// until [`EventFd::drain`].
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// `eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)`.
    pub fn new() -> Result<Self> {
        // SAFETY: plain syscall with constant arguments; the returned fd is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::os(
                "eventfd",
                errno(),
                "the process is out of file descriptors: raise `ulimit -n`",
            ));
        }
        // SAFETY: `fd` is a descriptor the kernel just created and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(EventFd { fd })
    }

    /// Make the descriptor readable: every `poll(2)` on it returns at once until [`Self::drain`].
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one` to our own descriptor. It can only fail with
        // EAGAIN when the counter is about to overflow, i.e. it is readable anyway.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Reset the descriptor to not readable.
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into `v`, an 8-byte local; EAGAIN (already clear) is
        // the only other outcome of a non-blocking read on our own eventfd.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    /// The raw descriptor, for a `pollfd`.
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// `ppoll(2)` over `fds` for at most `timeout` (nanosecond resolution, unlike `poll`'s
/// milliseconds); returns how many have events. `EINTR` returns 0.
pub fn poll_for(fds: &mut [libc::pollfd], timeout: Duration) -> Result<usize> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `fds` is a valid, writable array of `fds.len()` pollfd structs, `ts` a valid
    // timespec for the call, and a null signal mask leaves the thread's mask alone.
    let r = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    if r < 0 {
        let e = errno();
        if e == libc::EINTR {
            return Ok(0);
        }
        return Err(Error::os("ppoll", e, ""));
    }
    Ok(r as usize)
}

/// Make `fd` non-blocking (`O_NONBLOCK`), so a read with nothing to read answers `EAGAIN`.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl F_GETFL on a descriptor the borrow keeps open.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    // SAFETY: fcntl F_SETFL on the same descriptor, adding one status flag.
    if flags < 0 || unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(Error::os("fcntl(O_NONBLOCK)", errno(), ""));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(e: &EventFd) -> bool {
        let mut p = [libc::pollfd {
            fd: e.raw(),
            events: libc::POLLIN,
            revents: 0,
        }];
        poll_for(&mut p, Duration::ZERO).unwrap() == 1
    }

    #[test]
    fn set_nonblocking_sets_o_nonblock() {
        use std::os::fd::AsFd;

        let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
        set_nonblocking(r.as_fd()).unwrap();
        // SAFETY: F_GETFL on the socket's open descriptor.
        let flags = unsafe { libc::fcntl(r.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(flags & libc::O_NONBLOCK, 0);
    }

    #[test]
    fn poll_for_waits_its_timeout_below_a_millisecond_and_wakes_on_a_signal() {
        let e = EventFd::new().unwrap();
        let mut p = [libc::pollfd {
            fd: e.raw(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let t = std::time::Instant::now();
        assert_eq!(poll_for(&mut p, Duration::from_micros(300)).unwrap(), 0);
        assert!(
            t.elapsed() >= Duration::from_micros(300),
            "{:?}",
            t.elapsed()
        );
        let e = std::sync::Arc::new(e);
        let e2 = std::sync::Arc::clone(&e);
        let signaller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            e2.signal();
        });
        let t = std::time::Instant::now();
        assert_eq!(poll_for(&mut p, Duration::from_secs(10)).unwrap(), 1);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "woken by the signal, not the timeout"
        );
        signaller.join().unwrap();
    }

    #[test]
    fn an_eventfd_is_readable_from_signal_until_drained() {
        let e = EventFd::new().unwrap();
        assert!(!readable(&e));
        e.signal();
        e.signal();
        assert!(readable(&e), "signalled");
        assert!(readable(&e), "stays readable");
        e.drain();
        assert!(!readable(&e), "drained");
        e.drain(); // draining a clear eventfd is harmless
    }
}
