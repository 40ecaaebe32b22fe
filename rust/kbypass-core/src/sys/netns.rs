//! Network namespaces: enter one for the calling thread, and come back.
//!
//! `setns(CLONE_NEWNET)` affects only the calling thread, so a worker thread (or a Python
//! thread) can work inside a test namespace while the rest of the process stays outside.
//! Unlike `ip netns exec`, nothing is remounted: bpffs and /sys stay as they were.

use std::fs::File;
use std::os::fd::AsRawFd;

use crate::error::{Error, Result};

/// Where `ip netns add NAME` puts the namespace handle.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

/// While alive, the calling thread is inside another network namespace; dropping it returns the
/// thread to the namespace it was in. Not `Send`: it must be dropped on the thread that made it.
#[derive(Debug)]
pub struct NetnsGuard {
    previous: File,
    _not_send: std::marker::PhantomData<*const ()>,
}

fn setns(fd: &File, what: &str) -> Result<()> {
    // SAFETY: setns only reads the descriptor, which stays open for the duration of the call.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(Error::last_os(
            format!("setns({what})"),
            "entering a network namespace needs CAP_SYS_ADMIN: run as root",
        ));
    }
    Ok(())
}

/// Path of the namespace handle for `name` (a name made by `ip netns add`), or `name` itself
/// when it is already a path (e.g. `/proc/PID/ns/net`).
pub fn netns_path(name: &str) -> Result<String> {
    if name.is_empty() || name.contains('\0') {
        return Err(Error::invalid(
            "network namespace name must be a non-empty string",
        ));
    }
    if name.starts_with('/') {
        return Ok(name.to_string());
    }
    if name.contains('/') || name == "." || name == ".." {
        return Err(Error::invalid(format!(
            "bad network namespace name {name:?}: give a name from `ip netns list` or an absolute path"
        )));
    }
    Ok(format!("{NETNS_RUN_DIR}/{name}"))
}

impl NetnsGuard {
    /// Move the calling thread into the namespace `name` (see [`netns_path`]).
    pub fn enter(name: &str) -> Result<Self> {
        let path = netns_path(name)?;
        let target = File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound(format!(
                    "no network namespace {name:?} ({path} is missing): create it with `ip netns add {name}`"
                ))
            } else {
                Error::os(format!("open {path}"), e.raw_os_error().unwrap_or(0), "")
            }
        })?;
        let previous = File::open("/proc/thread-self/ns/net").map_err(|e| {
            Error::os(
                "open /proc/thread-self/ns/net",
                e.raw_os_error().unwrap_or(0),
                "",
            )
        })?;
        setns(&target, name)?;
        Ok(NetnsGuard {
            previous,
            _not_send: std::marker::PhantomData,
        })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // Returning to a namespace we were in cannot fail for lack of privilege (we just left it
        // with the same credentials); if it somehow does, the thread is in a wrong namespace and
        // continuing would send traffic to the wrong place, so abort loudly.
        if let Err(e) = setns(&self.previous, "previous") {
            eprintln!("kbypass: cannot return to the previous network namespace: {e}");
            std::process::abort();
        }
    }
}

/// Run `f` with the calling thread inside namespace `name`, then return.
pub fn in_netns<T>(name: &str, f: impl FnOnce() -> T) -> Result<T> {
    let _guard = NetnsGuard::enter(name)?;
    Ok(f())
}

/// The inode of the calling thread's network namespace (to tell namespaces apart).
pub fn current_netns_inode() -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino())
        .map_err(|e| {
            Error::os(
                "stat /proc/thread-self/ns/net",
                e.raw_os_error().unwrap_or(0),
                "",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(netns_path("").is_err());
        assert!(netns_path("../etc").is_err());
        assert_eq!(netns_path("kbx-a").unwrap(), "/var/run/netns/kbx-a");
        assert_eq!(netns_path("/proc/1/ns/net").unwrap(), "/proc/1/ns/net");
    }

    #[test]
    fn missing_namespace_is_not_found() {
        let e = NetnsGuard::enter("kbx-definitely-missing-ns").unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e}");
        assert!(e.to_string().contains("ip netns add"), "{e}");
    }

    #[test]
    fn enter_and_return_when_root() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to create a network namespace");
            return;
        }
        let name = format!("kbx-ut-{}", std::process::id());
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status();
        if !matches!(ok, Ok(s) if s.success()) {
            eprintln!("skipped: `ip netns add` unavailable");
            return;
        }
        let before = current_netns_inode().unwrap();
        let inside = in_netns(&name, || current_netns_inode().unwrap()).unwrap();
        let after = current_netns_inode().unwrap();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .status();
        assert_ne!(before, inside);
        assert_eq!(before, after);
    }
}
