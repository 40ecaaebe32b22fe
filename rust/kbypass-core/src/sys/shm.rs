//! Named shared memory: files in `/dev/shm` (what `shm_open(3)` does), and process liveness.
//!
//! Names are validated here so no caller can escape the directory: 1–200 characters from
//! `[A-Za-z0-9._-]`, not starting with a dot.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use crate::error::{errno, Error, Result};

/// The directory where POSIX shared memory lives on Linux.
pub const SHM_DIR: &str = "/dev/shm";

/// Check a shared-memory object name; returns it unchanged when valid.
pub fn validate_name(name: &str) -> Result<&str> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if name.is_empty() || name.len() > 200 || !ok_chars || name.starts_with('.') {
        return Err(Error::invalid(format!(
            "invalid shared-memory name {name:?}: use 1-200 characters from A-Z a-z 0-9 . _ - (not starting with '.'), e.g. \"flows-0\""
        )));
    }
    Ok(name)
}

/// The path of a (validated) object name under `/dev/shm`.
pub fn path_of(file_name: &str) -> Result<PathBuf> {
    validate_name(file_name)?;
    Ok(PathBuf::from(SHM_DIR).join(file_name))
}

fn cpath(file_name: &str) -> Result<CString> {
    let p = path_of(file_name)?;
    CString::new(p.into_os_string().into_encoded_bytes())
        .map_err(|_| Error::invalid("shared-memory name must not contain NUL bytes"))
}

/// Create a new object of `len` bytes, failing with `EEXIST` if the name is taken.
/// Mode 0600: only the creating user (and root) may attach.
pub fn create_exclusive(file_name: &str, len: usize) -> Result<OwnedFd> {
    let c = cpath(file_name)?;
    // SAFETY: c is a valid NUL-terminated path; open has no other memory preconditions.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        let e = errno();
        let fix = match e {
            libc::EEXIST => format!(
                "a shared object named {file_name:?} already exists in {SHM_DIR}: attach to it instead, pick another name, or remove a stale one left by a crashed process (replace=True, or unlink(name))"
            ),
            libc::ENOENT => format!("{SHM_DIR} is missing: mount a tmpfs there (`mount -t tmpfs tmpfs {SHM_DIR}`)"),
            _ => String::new(),
        };
        return Err(Error::os(format!("create {SHM_DIR}/{file_name}"), e, fix));
    }
    // SAFETY: fd is a fresh descriptor this process owns exclusively.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on our own fresh descriptor.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
        let e = Error::last_os(
            format!("ftruncate {SHM_DIR}/{file_name} to {len} bytes"),
            "",
        );
        let _ = unlink(file_name);
        return Err(e);
    }
    Ok(fd)
}

/// Open an existing object read-write. A missing name is [`Error::NotFound`] with `fix_missing`.
pub fn open_existing(file_name: &str, fix_missing: &str) -> Result<OwnedFd> {
    let c = cpath(file_name)?;
    // SAFETY: c is a valid NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    };
    if fd < 0 {
        let e = errno();
        if e == libc::ENOENT {
            return Err(Error::NotFound(format!(
                "no shared object {SHM_DIR}/{file_name}: {fix_missing}"
            )));
        }
        return Err(Error::os(format!("open {SHM_DIR}/{file_name}"), e, ""));
    }
    // SAFETY: fd is a fresh descriptor this process owns exclusively.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Size in bytes of the file behind `fd`.
pub fn file_size(fd: &OwnedFd) -> Result<u64> {
    // SAFETY: an all-zero `stat` is a valid value of the plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into the struct we own; fd is open.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(Error::last_os("fstat", ""));
    }
    Ok(st.st_size as u64)
}

/// Remove the name (the memory lives on while someone has it mapped).
/// Returns `Ok(false)` when there was nothing to remove.
pub fn unlink(file_name: &str) -> Result<bool> {
    let c = cpath(file_name)?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::unlink(c.as_ptr()) } != 0 {
        let e = errno();
        if e == libc::ENOENT {
            return Ok(false);
        }
        return Err(Error::os(format!("unlink {SHM_DIR}/{file_name}"), e, ""));
    }
    Ok(true)
}

/// (device, inode) of an open file: tells two files of the same name apart.
pub fn identity_of_fd(fd: &OwnedFd) -> Result<(u64, u64)> {
    // SAFETY: an all-zero `stat` is a valid value of the plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into the struct we own; fd is open.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(Error::last_os("fstat", ""));
    }
    Ok((st.st_dev, st.st_ino))
}

/// (device, inode) of the object currently under `file_name`, `None` if there is none.
pub fn identity_of_name(file_name: &str) -> Option<(u64, u64)> {
    let c = cpath(file_name).ok()?;
    // SAFETY: an all-zero `stat` is a valid value of the plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path; stat writes into the struct we own.
    if unsafe { libc::stat(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.st_dev, st.st_ino))
}

/// This process's id.
pub fn getpid() -> u32 {
    std::process::id()
}

/// Whether a process with this id exists (a zombie or another user's process counts as alive).
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission; it sends nothing.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || errno() == libc::EPERM
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for bad in [
            "",
            ".hidden",
            "a/b",
            "../etc",
            "sp ace",
            "nul\0",
            &"x".repeat(201),
        ] {
            assert!(
                matches!(validate_name(bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
        for good in ["a", "flows-0", "kbypass.ring.x_1"] {
            assert_eq!(validate_name(good).unwrap(), good);
        }
    }

    #[test]
    fn create_open_unlink_roundtrip() {
        let name = format!("kbypass-test-shm-{}", getpid());
        let _ = unlink(&name);
        let fd = create_exclusive(&name, 4096).unwrap();
        assert_eq!(file_size(&fd).unwrap(), 4096);
        let e = create_exclusive(&name, 4096).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EEXIST));
        assert!(e.to_string().contains("unlink"), "{e}");
        let fd2 = open_existing(&name, "create it first").unwrap();
        assert_eq!(file_size(&fd2).unwrap(), 4096);
        assert!(unlink(&name).unwrap());
        assert!(!unlink(&name).unwrap());
        let e = open_existing(&name, "create it first").unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e}");
        assert!(e.to_string().contains("create it first"));
    }

    #[test]
    fn liveness() {
        assert!(pid_alive(getpid()));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
    }
}
