//! Blocking signals on the calling thread around a long system call.
//!
//! `BPF_PROG_RUN` with live frames stops with `EINTR` when a signal is pending for the calling
//! thread, after sending an unknown part of its frames. Blocking signals for the (short) call
//! makes the count exact: process-directed signals go to another thread, and those aimed at
//! this thread wait until the call returns.

/// While alive, every blockable signal is blocked on the calling thread; dropping it restores
/// the previous mask. Not `Send`: the mask belongs to the thread that made it.
#[derive(Debug)]
pub struct SignalsBlocked {
    old: libc::sigset_t,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl SignalsBlocked {
    /// Block all signals on this thread (SIGKILL and SIGSTOP cannot be blocked).
    pub fn new() -> Self {
        // SAFETY: sigset_t is plain old data; sigfillset/pthread_sigmask only write the sets we
        // own and change this thread's mask.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
            SignalsBlocked {
                old,
                _not_send: std::marker::PhantomData,
            }
        }
    }
}

impl Default for SignalsBlocked {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `new` on the same thread (the type is not Send).
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_to_this_thread_waits_until_the_guard_goes() {
        use std::sync::atomic::{AtomicBool, Ordering};
        static GOT: AtomicBool = AtomicBool::new(false);
        extern "C" fn on_usr2(_: libc::c_int) {
            GOT.store(true, Ordering::SeqCst);
        }
        // SAFETY: installs a handler that only stores to an atomic; raise() targets this thread.
        unsafe {
            libc::signal(libc::SIGUSR2, on_usr2 as *const () as libc::sighandler_t);
            let g = SignalsBlocked::new();
            libc::raise(libc::SIGUSR2);
            assert!(!GOT.load(Ordering::SeqCst), "delivered while blocked");
            drop(g);
            assert!(GOT.load(Ordering::SeqCst), "delivered once unblocked");
            libc::signal(libc::SIGUSR2, libc::SIG_DFL);
        }
    }
}
