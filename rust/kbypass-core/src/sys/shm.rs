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

/// This process's id (in its own PID namespace: for messages, never for liveness).
pub fn getpid() -> u32 {
    std::process::id()
}

/// Check that the object behind `fd` is a regular file owned by this process's effective user
/// and open to nobody else (mode 0600 or stricter), as `create_exclusive` makes them: a file
/// another user planted under the name could otherwise feed this process a forged header.
pub fn check_private(fd: &OwnedFd, file_name: &str) -> Result<()> {
    // SAFETY: an all-zero `stat` is a valid value of the plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into the struct we own; fd is open.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(Error::last_os("fstat", ""));
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let path = format!("{SHM_DIR}/{file_name}");
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Error::invalid(format!(
            "{path} is not a regular file: remove it (it is not a kbypass object)"
        )));
    }
    if st.st_uid != me {
        return Err(Error::Permission {
            what: format!(
                "{path} belongs to uid {}, not to this process (uid {me})",
                st.st_uid
            ),
            fix: "attach as the user that created it, or remove it and create it again".into(),
        });
    }
    if st.st_mode & 0o077 != 0 {
        return Err(Error::Permission {
            what: format!(
                "{path} is open to other users (mode {:o})",
                st.st_mode & 0o7777
            ),
            fix: format!("restrict it (`chmod 600 {path}`) or remove it and create it again"),
        });
    }
    Ok(())
}

/// Byte ranges of a file locked with open-file-description locks (`F_OFD_SETLK`): a lock belongs
/// to the open file description, so it holds across PID namespaces, is released by the kernel
/// when the last descriptor of that description closes (a killed process included), and is not
/// taken over by a forked child (see `sys::fork`).
fn ofd(
    fd: &OwnedFd,
    cmd: libc::c_int,
    kind: libc::c_short,
    start: u64,
    len: u64,
) -> Result<libc::flock> {
    // SAFETY: an all-zero flock is a valid value of the plain C struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start as libc::off_t;
    fl.l_len = len as libc::off_t;
    fl.l_pid = 0; // required by the OFD commands
                  // SAFETY: fcntl with an OFD lock command reads (and for GETLK writes) the flock we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &mut fl) } != 0 {
        return Err(Error::last_os(format!("fcntl(OFD lock at {start})"), ""));
    }
    Ok(fl)
}

/// Take a write lock on `[start, start + len)` without waiting; `Ok(false)` when another open
/// file description holds a lock there.
pub fn try_lock(fd: &OwnedFd, start: u64, len: u64) -> Result<bool> {
    match ofd(
        fd,
        libc::F_OFD_SETLK,
        libc::F_WRLCK as libc::c_short,
        start,
        len,
    ) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.errno(), Some(libc::EAGAIN) | Some(libc::EPERM)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Release what this description holds on `[start, start + len)`.
pub fn unlock(fd: &OwnedFd, start: u64, len: u64) -> Result<()> {
    ofd(
        fd,
        libc::F_OFD_SETLK,
        libc::F_UNLCK as libc::c_short,
        start,
        len,
    )
    .map(|_| ())
}

/// Whether another open file description (of any process, this one included) holds a lock that
/// overlaps `[start, start + len)`. Locks of `fd`'s own description are not seen.
pub fn locked_by_other(fd: &OwnedFd, start: u64, len: u64) -> Result<bool> {
    let fl = ofd(
        fd,
        libc::F_OFD_GETLK,
        libc::F_WRLCK as libc::c_short,
        start,
        len,
    )?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
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
    fn ofd_locks_conflict_between_descriptions_and_go_with_the_last_close() {
        let name = format!("kbypass-test-lock-{}", getpid());
        let _ = unlink(&name);
        let a = create_exclusive(&name, 4096).unwrap();
        let b = open_existing(&name, "").unwrap();
        check_private(&a, &name).unwrap();
        assert!(try_lock(&a, 1 << 32, 1).unwrap());
        assert!(
            !try_lock(&b, 1 << 32, 1).unwrap(),
            "another description conflicts"
        );
        assert!(locked_by_other(&b, 1 << 32, 1).unwrap());
        assert!(
            locked_by_other(&b, 1 << 31, 1 << 32).unwrap(),
            "a range covering it"
        );
        assert!(
            !locked_by_other(&a, 1 << 32, 1).unwrap(),
            "its own lock is not seen"
        );
        assert!(
            try_lock(&b, (1 << 32) + 1, 1).unwrap(),
            "a different byte is free"
        );
        // A duplicate shares the description: closing it keeps the lock, closing all drops it.
        let dup = a.try_clone().unwrap();
        drop(a);
        assert!(locked_by_other(&b, 1 << 32, 1).unwrap());
        drop(dup);
        assert!(!locked_by_other(&b, 1 << 32, 1).unwrap());
        unlock(&b, (1 << 32) + 1, 1).unwrap();
        // Another user's file, or one open to others, is refused.
        std::fs::set_permissions(
            path_of(&name).unwrap(),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        let e = check_private(&b, &name).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        assert!(unlink(&name).unwrap());
    }
}
