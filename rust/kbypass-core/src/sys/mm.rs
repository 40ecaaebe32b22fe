//! Memory mappings: `mmap`, `munmap`, `mlock`, `madvise`, `memfd_create`; RLIMIT_MEMLOCK.

use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Mutex;

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
        Self::map(
            len,
            libc::MAP_SHARED | extra_flags,
            Some(fd),
            "mmap(shared)",
        )
    }

    /// A shared mapping of `len` bytes of `fd` at `offset` (AF_XDP rings use page offsets).
    pub fn shared_at(
        fd: BorrowedFd<'_>,
        len: usize,
        offset: i64,
        extra_flags: libc::c_int,
    ) -> Result<Self> {
        Self::map_at(
            len,
            libc::MAP_SHARED | extra_flags,
            Some(fd),
            offset,
            "mmap(shared)",
        )
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
            return Err(Error::invalid(
                "cannot map 0 bytes: give a size greater than zero",
            ));
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
        let ptr =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| Error::invalid("mmap returned NULL"))?;
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
            return Err(Error::Os {
                what: "mlock".into(),
                errno: e,
                fix,
            });
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

/// RLIMIT_MEMLOCK in bytes, `None` meaning unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemlockLimits {
    /// The soft limit: what `mlock(2)` is held to without CAP_IPC_LOCK.
    pub soft: Option<u64>,
    /// The hard limit: how far the soft one may be raised without CAP_SYS_RESOURCE.
    pub hard: Option<u64>,
}

fn rlim_bytes(v: libc::rlim_t) -> Option<u64> {
    (v != libc::RLIM_INFINITY).then_some(v)
}

/// RLIMIT_MEMLOCK, soft and hard.
pub fn memlock_limits() -> MemlockLimits {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) };
    if rc != 0 {
        // Only EFAULT/EINVAL are possible, and neither can happen here.
        return MemlockLimits {
            soft: None,
            hard: None,
        };
    }
    MemlockLimits {
        soft: rlim_bytes(r.rlim_cur),
        hard: rlim_bytes(r.rlim_max),
    }
}

/// The current RLIMIT_MEMLOCK soft limit in bytes (`None` = unlimited).
pub fn memlock_limit() -> Option<u64> {
    memlock_limits().soft
}

fn memlock_limit_text() -> String {
    limit_text(memlock_limit())
}

fn set_memlock_limits(l: MemlockLimits) -> std::result::Result<(), i32> {
    let r = libc::rlimit {
        rlim_cur: l.soft.unwrap_or(libc::RLIM_INFINITY),
        rlim_max: l.hard.unwrap_or(libc::RLIM_INFINITY),
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &r) } == 0 {
        Ok(())
    } else {
        Err(crate::error::errno())
    }
}

/// Bytes this process has locked: `VmLck` of `/proc/self/status`, the count `mlock(2)` adds
/// a request to before comparing with RLIMIT_MEMLOCK.
pub fn locked_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmLck:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// One raise of RLIMIT_MEMLOCK made by kbypass so that a region could be locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemlockRaise {
    /// Bytes the process had locked before.
    pub locked: u64,
    /// Bytes the region needed locked.
    pub needed: u64,
    /// The limits before.
    pub before: MemlockLimits,
    /// The limits after: the soft limit is `locked + needed`; the hard limit changed only if
    /// it was lower (which takes CAP_SYS_RESOURCE).
    pub after: MemlockLimits,
}

impl fmt::Display for MemlockRaise {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RLIMIT_MEMLOCK raised from {} to {}",
            limit_text(self.before.soft),
            limit_text(self.after.soft)
        )?;
        if self.after.hard == self.before.hard {
            write!(f, " (hard limit {})", limit_text(self.after.hard))?;
        } else {
            write!(
                f,
                " (hard limit from {} to {})",
                limit_text(self.before.hard),
                limit_text(self.after.hard)
            )?;
        }
        write!(
            f,
            " to lock {} ({} already locked)",
            bytes_text(self.needed),
            bytes_text(self.locked)
        )
    }
}

/// The limits that let `needed` more bytes be locked when `locked` are, or `None` when the
/// current ones already do. Never unlimited: the soft limit becomes `locked + needed`, and
/// the hard limit is raised to the same value only when it is lower.
pub fn memlock_plan(limits: MemlockLimits, locked: u64, needed: u64) -> Option<MemlockLimits> {
    // RLIM_INFINITY is u64::MAX: an overflowing sum stops at the largest finite limit.
    let target = locked.saturating_add(needed).min(libc::RLIM_INFINITY - 1);
    if limits.soft.is_none_or(|soft| soft >= target) {
        return None;
    }
    let hard = match limits.hard {
        Some(hard) if hard < target => Some(target),
        hard => hard,
    };
    Some(MemlockLimits {
        soft: Some(target),
        hard,
    })
}

/// Every raise this process made, oldest first; also the lock that serialises raising.
static RAISES: Mutex<Vec<MemlockRaise>> = Mutex::new(Vec::new());

/// The raises of RLIMIT_MEMLOCK kbypass made in this process, oldest first.
pub fn memlock_raises() -> Vec<MemlockRaise> {
    RAISES.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// After `failed`, an `mlock(2)` of `needed` bytes refused with ENOMEM or EPERM, raise
/// RLIMIT_MEMLOCK by exactly what is missing ([`memlock_plan`]) and run `retry` (the same
/// lock). On success the raise is recorded ([`memlock_raises`]) and returned; if `retry`
/// fails the limits are put back. When the limit was not what stopped the lock, `failed` is
/// returned; when it cannot be raised (the hard limit is in the way and the process lacks
/// CAP_SYS_RESOURCE), `failed` with a fix that says what to change.
pub fn raise_memlock_and_retry(
    needed: u64,
    failed: Error,
    retry: impl FnOnce() -> Result<()>,
) -> Result<MemlockRaise> {
    // One raise at a time, so two threads never undo each other's limit.
    let mut raises = RAISES.lock().unwrap_or_else(|e| e.into_inner());
    let before = memlock_limits();
    let Some(locked) = locked_bytes() else {
        return Err(failed);
    };
    let Some(after) = memlock_plan(before, locked, needed) else {
        return Err(failed);
    };
    if let Err(errno) = set_memlock_limits(after) {
        let target = after.soft.unwrap_or(locked.saturating_add(needed));
        let why = if errno == libc::EPERM {
            "above the hard limit, which only CAP_SYS_RESOURCE may raise".to_string()
        } else {
            format!("but setrlimit failed: {}", crate::error::strerror(errno))
        };
        return Err(failed.with_fix(format!(
            "RLIMIT_MEMLOCK is {}, hard limit {}, with {} locked: locking {} more needs {}, {why}: \
             raise the hard limit before starting (`ulimit -l {}` as root, LimitMEMLOCK= for a \
             systemd service, memlock in /etc/security/limits.conf, `docker run --ulimit \
             memlock={target}`), run as root (CAP_IPC_LOCK is exempt), or pass lock=False",
            limit_text(before.soft),
            limit_text(before.hard),
            bytes_text(locked),
            bytes_text(needed),
            bytes_text(target),
            target.div_ceil(1024),
        )));
    }
    if let Err(e) = retry() {
        // Lowering back is always allowed.
        let _ = set_memlock_limits(before);
        return Err(e);
    }
    let raise = MemlockRaise {
        locked,
        needed,
        before,
        after,
    };
    raises.push(raise);
    Ok(raise)
}

fn limit_text(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".into(), bytes_text)
}

fn bytes_text(b: u64) -> String {
    match b {
        0 => "0 bytes".into(),
        b if b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b % 1024 == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
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
        assert!(matches!(
            Mapping::anonymous(0, 0),
            Err(Error::InvalidArgument(_))
        ));
    }

    const MIB: u64 = 1 << 20;

    fn limits(soft: Option<u64>, hard: Option<u64>) -> MemlockLimits {
        MemlockLimits { soft, hard }
    }

    #[test]
    fn memlock_plan_raises_the_soft_limit_to_locked_plus_needed_never_unlimited() {
        // Enough already, or unlimited: nothing to raise.
        assert_eq!(
            memlock_plan(limits(Some(8 * MIB), None), MIB, 7 * MIB),
            None
        );
        assert_eq!(memlock_plan(limits(None, None), 64 * MIB, 64 * MIB), None);
        // Room under the hard limit (finite or not): only the soft limit moves.
        assert_eq!(
            memlock_plan(limits(Some(MIB), Some(8 * MIB)), MIB / 2, 4 * MIB),
            Some(limits(Some(4 * MIB + MIB / 2), Some(8 * MIB)))
        );
        assert_eq!(
            memlock_plan(limits(Some(8 * MIB), None), 0, 16 * MIB),
            Some(limits(Some(16 * MIB), None))
        );
        // The hard limit is in the way: both go to exactly what is needed.
        assert_eq!(
            memlock_plan(limits(Some(MIB), Some(MIB)), 0, 4 * MIB),
            Some(limits(Some(4 * MIB), Some(4 * MIB)))
        );
        // A soft limit of 0 (mlock then fails with EPERM) is raised the same way.
        assert_eq!(
            memlock_plan(limits(Some(0), Some(8 * MIB)), 0, MIB),
            Some(limits(Some(MIB), Some(8 * MIB)))
        );
        // An overflowing sum neither wraps to a small limit nor becomes RLIM_INFINITY.
        assert_eq!(
            memlock_plan(limits(Some(0), None), u64::MAX, 1),
            Some(limits(Some(u64::MAX - 1), None))
        );
    }

    #[test]
    fn memlock_raise_says_what_changed() {
        let r = MemlockRaise {
            locked: MIB / 2,
            needed: 4 * MIB,
            before: limits(Some(MIB), Some(8 * MIB)),
            after: limits(Some(4 * MIB + MIB / 2), Some(8 * MIB)),
        };
        assert_eq!(
            r.to_string(),
            "RLIMIT_MEMLOCK raised from 1 MiB to 4608 KiB (hard limit 8 MiB) to lock 4 MiB (512 KiB already locked)"
        );
        let r = MemlockRaise {
            after: limits(Some(4 * MIB), Some(4 * MIB)),
            before: limits(Some(MIB), Some(MIB)),
            locked: 0,
            ..r
        };
        assert!(
            r.to_string().contains(
                "(hard limit from 1 MiB to 4 MiB) to lock 4 MiB (0 bytes already locked)"
            ),
            "{r}"
        );
    }

    #[test]
    fn locked_bytes_reads_vmlck() {
        // Every Linux /proc/self/status has VmLck; a test process locks nothing by itself.
        assert!(locked_bytes().is_some());
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
