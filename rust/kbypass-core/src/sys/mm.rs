//! Memory mappings: `mmap`, `munmap`, `mlock`, `madvise`, `memfd_create`.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use crate::error::{Error, Result};

/// One `mmap(2)` mapping, unmapped when dropped.
///
/// The mapping is raw memory: `Mapping` hands out a pointer and leaves synchronisation of the
/// bytes to its users (rings, mempools), which is why it is `Send` and `Sync`.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Mapping is a plain region of process memory; it has no thread affinity, and the
// types built on it synchronise access to its bytes themselves.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only exposes the address and length.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// A private anonymous mapping of `len` bytes, with extra `mmap` flags (e.g. `MAP_HUGETLB`
    /// with a page-size shift, `MAP_POPULATE`, `MAP_LOCKED`).
    pub fn anonymous(len: usize, extra_flags: libc::c_int) -> Result<Self> {
        Self::map(
            len,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra_flags,
            None,
            "mmap(anonymous)",
        )
    }

    /// A shared mapping of `len` bytes of the file `fd` from offset 0.
    pub fn shared(fd: BorrowedFd<'_>, len: usize, extra_flags: libc::c_int) -> Result<Self> {
        Self::map(len, libc::MAP_SHARED | extra_flags, Some(fd), "mmap(shared)")
    }

    /// A shared mapping of `len` bytes of `fd` at `offset` (AF_XDP rings use page offsets).
    pub fn shared_at(fd: BorrowedFd<'_>, len: usize, offset: i64, extra_flags: libc::c_int) -> Result<Self> {
        Self::map_at(len, libc::MAP_SHARED | extra_flags, Some(fd), offset, "mmap(shared)")
    }

    fn map(len: usize, flags: libc::c_int, fd: Option<BorrowedFd<'_>>, what: &str) -> Result<Self> {
        Self::map_at(len, flags, fd, 0, what)
    }

    fn map_at(
        len: usize,
        flags: libc::c_int,
        fd: Option<BorrowedFd<'_>>,
        offset: i64,
        what: &str,
    ) -> Result<Self> {
        if len == 0 {
            return Err(Error::invalid("cannot map 0 bytes: give a size greater than zero"));
        }
        let raw_fd = fd.map_or(-1, |f| f.as_raw_fd());
        // SAFETY: mmap with a null hint creates a new mapping and touches no existing memory;
        // the result is checked against MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                raw_fd,
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::last_os(format!("{what} of {len} bytes"), ""));
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| Error::invalid("mmap returned NULL"))?;
        Ok(Mapping { ptr, len })
    }

    /// Start of the mapping.
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: empty mappings cannot be created.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `mlock(2)` the whole mapping (fault it in and keep it resident).
    pub fn lock(&self) -> Result<()> {
        // SAFETY: the range is exactly this live mapping.
        let rc = unsafe { libc::mlock(self.ptr.as_ptr().cast(), self.len) };
        if rc != 0 {
            let e = crate::error::errno();
            let fix = if e == libc::ENOMEM || e == libc::EPERM || e == libc::EAGAIN {
                format!(
                    "RLIMIT_MEMLOCK ({}) is too low for {} bytes: run as root (CAP_IPC_LOCK) or raise it with `ulimit -l unlimited`",
                    memlock_limit_text(),
                    self.len
                )
            } else {
                String::new()
            };
            return Err(Error::Os { what: "mlock".into(), errno: e, fix });
        }
        Ok(())
    }

    /// `madvise(2)` over the whole mapping.
    pub fn advise(&self, advice: libc::c_int) -> Result<()> {
        // SAFETY: the range is exactly this live mapping.
        let rc = unsafe { libc::madvise(self.ptr.as_ptr().cast(), self.len, advice) };
        if rc != 0 {
            return Err(Error::last_os(format!("madvise({advice})"), ""));
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe a mapping this value created and nobody else unmaps.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// The current RLIMIT_MEMLOCK soft limit in bytes (`None` = unlimited).
pub fn memlock_limit() -> Option<u64> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) };
    if rc != 0 || r.rlim_cur == libc::RLIM_INFINITY {
        None
    } else {
        Some(r.rlim_cur)
    }
}

fn memlock_limit_text() -> String {
    match memlock_limit() {
        None => "unlimited".into(),
        Some(b) => format!("{} KiB", b / 1024),
    }
}

/// Raise RLIMIT_MEMLOCK to unlimited if the process may (root / CAP_SYS_RESOURCE).
/// Returns whether the limit is now unlimited.
pub fn raise_memlock_limit() -> bool {
    let r = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads the struct we own.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &r) == 0 }
}

/// `memfd_create(2)` with close-on-exec; the name shows in /proc/PID/fd for debugging.
pub fn memfd_create(name: &str, flags: libc::c_uint) -> Result<OwnedFd> {
    let cname = std::ffi::CString::new(name)
        .map_err(|_| Error::invalid("memfd name must not contain NUL bytes"))?;
    // SAFETY: cname is a valid NUL-terminated string for the duration of the call.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | flags) };
    if fd < 0 {
        return Err(Error::last_os(format!("memfd_create({name})"), ""));
    }
    // SAFETY: fd is a fresh descriptor this process owns exclusively.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The system's base page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 {
        v as usize
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_mapping_is_writable_and_zeroed() {
        let m = Mapping::anonymous(1 << 16, 0).unwrap();
        assert_eq!(m.len(), 1 << 16);
        // SAFETY: the mapping is 64 KiB, readable and writable, and owned by this test.
        let s = unsafe { std::slice::from_raw_parts_mut(m.as_ptr(), m.len()) };
        assert!(s.iter().all(|&b| b == 0));
        s[100] = 7;
        assert_eq!(s[100], 7);
    }

    #[test]
    fn zero_length_is_refused() {
        assert!(matches!(Mapping::anonymous(0, 0), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn memfd_maps_shared() {
        let fd = memfd_create("kbypass-test", 0).unwrap();
        // SAFETY: ftruncate on our own fresh memfd.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), 4096) }, 0);
        let a = Mapping::shared(fd.as_fd_borrowed(), 4096, 0).unwrap();
        let b = Mapping::shared(fd.as_fd_borrowed(), 4096, 0).unwrap();
        // SAFETY: both mappings are 4 KiB views of the same memfd page.
        unsafe {
            *a.as_ptr() = 42;
            assert_eq!(*b.as_ptr(), 42);
        }
    }

    trait BorrowFd {
        fn as_fd_borrowed(&self) -> BorrowedFd<'_>;
    }
    impl BorrowFd for OwnedFd {
        fn as_fd_borrowed(&self) -> BorrowedFd<'_> {
            use std::os::fd::AsFd;
            self.as_fd()
        }
    }
}
