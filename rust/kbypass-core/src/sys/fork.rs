//! What a `fork()` child must not inherit: a generation counter that tells values made before the
//! fork from values made after it, and descriptors the child closes at once.
//!
//! A value that belongs to one process (a shared ring's attachment, with its place in the ring's
//! participant table) records [`generation`] when it is made. In a child forked afterwards the
//! counter has moved on, so the value knows it was inherited and refuses to act for the parent.
//! Descriptors registered with [`close_in_child`] are closed in the child right after `fork()`
//! (a `pthread_atfork` child handler), so the child does not keep the parent's open file
//! descriptions — and the file locks on them — alive after the parent dies.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering::Relaxed};
use std::sync::Once;

static GENERATION: AtomicU64 = AtomicU64::new(0);
const SLOTS: usize = 1024;
/// Descriptors to close in a forked child; -1 marks a free slot.
static CHILD_CLOSE: [AtomicI32; SLOTS] = [const { AtomicI32::new(-1) }; SLOTS];
static INSTALL: Once = Once::new();

/// Runs in the child right after `fork()`, on the one thread the child has: only atomics and
/// `close`, both async-signal-safe.
extern "C" fn in_child() {
    GENERATION.fetch_add(1, Relaxed);
    for slot in &CHILD_CLOSE {
        let fd = slot.swap(-1, Relaxed);
        if fd >= 0 {
            // SAFETY: the fd was registered by its owner, which in this child will never use or
            // close it (its fork generation no longer matches); closing it drops only the child's
            // reference to the open file description.
            unsafe { libc::close(fd) };
        }
    }
}

fn install() {
    INSTALL.call_once(|| {
        // SAFETY: registering a child handler that only touches atomics and calls close().
        let rc = unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
        debug_assert_eq!(rc, 0, "pthread_atfork");
    });
}

/// The fork generation of this process: it changes in every child forked after the first call.
pub fn generation() -> u64 {
    install();
    GENERATION.load(Relaxed)
}

/// A descriptor that a forked child closes right after `fork()`; dropping the registration keeps
/// the descriptor open (its owner closes it).
#[derive(Debug)]
pub struct ChildClose {
    slot: Option<usize>,
    fd: i32,
}

/// Register `fd` to be closed in every child forked from now on. When all slots are taken the
/// registration is empty: a child then keeps the descriptor until it exits (see the module docs).
pub fn close_in_child(fd: i32) -> ChildClose {
    install();
    let slot = CHILD_CLOSE
        .iter()
        .position(|s| s.compare_exchange(-1, fd, Relaxed, Relaxed).is_ok());
    ChildClose { slot, fd }
}

impl ChildClose {
    /// Whether the descriptor was registered (false only when every slot was taken).
    pub fn registered(&self) -> bool {
        self.slot.is_some()
    }
}

impl Drop for ChildClose {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            // Only ever clears our own entry: after a fork the child's copy was already cleared.
            let _ = CHILD_CLOSE[i].compare_exchange(self.fd, -1, Relaxed, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_sees_a_new_generation_and_its_registered_fds_closed() {
        let g = generation();
        let (r, w) = {
            let mut fds = [0i32; 2];
            // SAFETY: pipe2 writes two descriptors into our array.
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            (fds[0], fds[1])
        };
        let reg = close_in_child(r);
        assert!(reg.registered());
        // SAFETY: the child only calls async-signal-safe functions and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // fcntl on a closed fd fails with EBADF.
            // SAFETY: fcntl(F_GETFD) only queries the descriptor.
            let closed = unsafe { libc::fcntl(r, libc::F_GETFD) } == -1;
            let code = if generation() != g && closed { 0 } else { 1 };
            // SAFETY: _exit ends the forked child at once.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child we forked.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(generation(), g, "the parent's generation is unchanged");
        drop(reg);
        // SAFETY: closing the pipe we created.
        unsafe {
            assert_eq!(
                libc::fcntl(r, libc::F_GETFD) & libc::FD_CLOEXEC,
                libc::FD_CLOEXEC
            );
            libc::close(r);
            libc::close(w);
        }
    }
}
