//! The one error type of the core crate.
//!
//! Every variant carries a message that says what went wrong *and what to do about it*; the
//! binding crate maps each variant to a Python exception class (see `docs/architecture.md`).

use std::fmt;

/// Result alias used throughout the core crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors raised by kbypass. Each message ends with the fix when there is one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A caller passed a bad argument (Python: `ValueError`).
    #[error("{0}")]
    InvalidArgument(String),

    /// An argument had the wrong type or element type (Python: `TypeError`).
    #[error("{0}")]
    WrongType(String),

    /// The operation needs a privilege the process does not have (Python: `PermissionError`).
    #[error("{what}: {fix}")]
    Permission {
        /// What failed, e.g. "bpf(BPF_PROG_LOAD)".
        what: String,
        /// What to do, e.g. "needs CAP_NET_ADMIN and CAP_BPF: run as root".
        fix: String,
    },

    /// A named thing does not exist (Python: `FileNotFoundError` / `LookupError`).
    #[error("{0}")]
    NotFound(String),

    /// A system call failed (Python: `OSError` with `errno`).
    #[error("{what}: {} (errno {errno}){}", strerror(*errno), fmt_fix(fix))]
    Os {
        /// The operation, e.g. "mmap(2 MiB hugepages)".
        what: String,
        /// The raw errno.
        errno: i32,
        /// What to do about it, possibly empty.
        fix: String,
    },

    /// The kernel or hardware lacks a feature (Python: `OSError` with `EOPNOTSUPP`).
    #[error("{what}: {fix}")]
    Unsupported {
        /// What is unsupported.
        what: String,
        /// What to do instead.
        fix: String,
    },

    /// A blocking call ran out of time (Python: `TimeoutError`).
    #[error("{0}")]
    Timeout(String),

    /// An object was used after it was closed, or in a state that does not allow the call
    /// (Python: `RuntimeError`).
    #[error("{0}")]
    State(String),

    /// The caller cancelled a blocking call (a signal such as Ctrl-C; Python: the signal
    /// handler's exception, `KeyboardInterrupt` by default).
    #[error("{0}")]
    Interrupted(String),
}

fn fmt_fix(fix: &str) -> String {
    if fix.is_empty() {
        String::new()
    } else {
        format!(": {fix}")
    }
}

/// `strerror(3)` as an owned string.
pub fn strerror(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

impl Error {
    /// An `InvalidArgument` error from anything printable.
    pub fn invalid(msg: impl fmt::Display) -> Self {
        Error::InvalidArgument(msg.to_string())
    }

    /// A failed system call, with a fix chosen from the errno when the caller gives none.
    ///
    /// `EPERM`/`EACCES` become [`Error::Permission`] so that Python sees `PermissionError`.
    pub fn os(what: impl Into<String>, errno: i32, fix: impl Into<String>) -> Self {
        let what = what.into();
        let mut fix = fix.into();
        if errno == libc::EPERM || errno == libc::EACCES {
            if fix.is_empty() {
                fix = "needs CAP_NET_ADMIN, CAP_BPF and CAP_IPC_LOCK: run as root".into();
            }
            return Error::Permission { what, fix };
        }
        if fix.is_empty() {
            fix = match errno {
                libc::ENOMEM => "out of memory or RLIMIT_MEMLOCK too low: run as root (CAP_IPC_LOCK) or raise it with `ulimit -l unlimited`".into(),
                libc::EOPNOTSUPP => "the kernel or driver does not support this".into(),
                _ => String::new(),
            };
        }
        Error::Os { what, errno, fix }
    }

    /// The errno of the last failed libc call, as an [`Error::os`].
    pub fn last_os(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::os(what, errno(), fix)
    }

    /// The same error with `fix` as its fix (variants without one are returned unchanged).
    pub fn with_fix(self, fix: impl Into<String>) -> Self {
        match self {
            Error::Os { what, errno, .. } => Error::Os {
                what,
                errno,
                fix: fix.into(),
            },
            Error::Permission { what, .. } => Error::Permission {
                what,
                fix: fix.into(),
            },
            Error::Unsupported { what, .. } => Error::Unsupported {
                what,
                fix: fix.into(),
            },
            other => other,
        }
    }

    /// The errno carried by this error, if it came from a system call.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Os { errno, .. } => Some(*errno),
            Error::Permission { .. } => Some(libc::EPERM),
            Error::Unsupported { .. } => Some(libc::EOPNOTSUPP),
            _ => None,
        }
    }
}

/// The calling thread's `errno`.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eperm_becomes_permission_with_fix() {
        let e = Error::os("bpf(BPF_PROG_LOAD)", libc::EPERM, "");
        assert!(matches!(e, Error::Permission { .. }));
        assert!(e.to_string().contains("run as root"), "{e}");
    }

    #[test]
    fn os_error_message_names_errno_and_fix() {
        let e = Error::os("mmap", libc::ENOMEM, "");
        let s = e.to_string();
        assert!(s.starts_with("mmap: "), "{s}");
        assert!(s.contains("errno 12"), "{s}");
        assert!(s.contains("ulimit -l"), "{s}");
        assert_eq!(e.errno(), Some(libc::ENOMEM));
    }
}
