//! Page-level operations on a sub-range of a [`Mapping`]: `madvise(2)` (including
//! `MADV_POPULATE_WRITE`) and `mlock(2)`. The range is bounds-checked against the mapping, so
//! these functions are safe to call.

use crate::error::{Error, Result};
use crate::sys::mm::Mapping;

/// `MADV_POPULATE_WRITE` (Linux 5.14): fault the range in writable, reporting failure as an
/// error instead of the SIGBUS that touching an unavailable hugetlb page would raise.
pub const MADV_POPULATE_WRITE: libc::c_int = 23;

fn range(map: &Mapping, offset: usize, len: usize) -> Result<*mut u8> {
    if len == 0 || offset.checked_add(len).is_none_or(|end| end > map.len()) {
        return Err(Error::invalid(format!(
            "range {offset}+{len} is outside the {}-byte mapping",
            map.len()
        )));
    }
    // `wrapping_add` keeps this free of `unsafe`; the bounds check above keeps it in the mapping.
    Ok(map.as_ptr().wrapping_add(offset))
}

/// `madvise(2)` on `[offset, offset + len)` of `map`.
pub fn advise(map: &Mapping, offset: usize, len: usize, advice: libc::c_int) -> Result<()> {
    let p = range(map, offset, len)?;
    // SAFETY: the range lies inside `map`, a live mapping; advice changes paging behaviour only.
    let rc = unsafe { libc::madvise(p.cast(), len, advice) };
    if rc != 0 {
        return Err(Error::last_os(
            format!("madvise({advice}) of {len} bytes"),
            "",
        ));
    }
    Ok(())
}

/// `mlock(2)` on `[offset, offset + len)` of `map` (faults it in and keeps it resident until
/// the mapping is unmapped).
pub fn lock(map: &Mapping, offset: usize, len: usize) -> Result<()> {
    let p = range(map, offset, len)?;
    // SAFETY: the range lies inside `map`, a live mapping.
    let rc = unsafe { libc::mlock(p.cast(), len) };
    if rc != 0 {
        let e = crate::error::errno();
        let limit = match crate::sys::mm::memlock_limit() {
            None => "unlimited".to_string(),
            Some(b) => format!("{} KiB", b / 1024),
        };
        return Err(Error::Os {
            what: format!("mlock of {len} bytes"),
            errno: e,
            fix: format!(
                "RLIMIT_MEMLOCK is {limit}: run as root (CAP_IPC_LOCK), raise it with `ulimit -l unlimited`, or pass lock=False"
            ),
        });
    }
    Ok(())
}

/// Read and write back one byte every `step` bytes of the range: populating by touch, for
/// kernels without `MADV_POPULATE_WRITE`. Contents are unchanged; call it before the memory
/// is shared with other threads.
pub fn touch(map: &Mapping, offset: usize, len: usize, step: usize) -> Result<()> {
    let p = range(map, offset, len)?;
    if step == 0 {
        return Err(Error::invalid("touch step must be greater than zero"));
    }
    for off in (0..len).step_by(step) {
        // SAFETY: off < len and the range lies inside the live mapping; writing back the byte
        // just read faults the page in writable without changing it.
        unsafe {
            let b = p.add(off);
            std::ptr::write_volatile(b, std::ptr::read_volatile(b));
        }
    }
    Ok(())
}

/// The TLB probe behind the memory benchmark: `count` dependent random 8-byte reads over
/// `[offset, offset + len)` of `map`, indices from a xorshift64 generator seeded with `seed`.
///
/// Each index depends on the value just read (the memory is zero, but the compiler and CPU
/// cannot know that), so the reads form one chain and the time per read is the latency of a
/// random access, TLB misses and page walks included. Returns the xor of all values read.
pub fn random_reads(
    map: &Mapping,
    offset: usize,
    len: usize,
    count: u64,
    seed: u64,
) -> Result<u64> {
    let p = range(map, offset, len)?;
    let words = (len / 8) as u64;
    if words == 0 {
        return Err(Error::invalid("range too small for 8-byte reads"));
    }
    let base = p.cast::<u64>();
    let pow2 = words.is_power_of_two();
    let mut x = if seed == 0 {
        0x9E37_79B9_7F4A_7C15
    } else {
        seed
    };
    let mut acc = 0u64;
    for _ in 0..count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // A mask for power-of-two sizes keeps a 64-bit division out of the measured chain.
        let i = if pow2 {
            (x & (words - 1)) as usize
        } else {
            (x % words) as usize
        };
        // SAFETY: i < len / 8 and the mapping start is page aligned, so the aligned 8-byte
        // read lies inside the live mapping.
        let v = unsafe { std::ptr::read_volatile(base.add(i)) };
        acc ^= v;
        x ^= v;
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_is_refused() {
        let m = Mapping::anonymous(8192, 0).unwrap();
        assert!(advise(&m, 4096, 8192, libc::MADV_NORMAL).is_err());
        assert!(advise(&m, usize::MAX, 2, libc::MADV_NORMAL).is_err());
        assert!(lock(&m, 0, 0).is_err());
    }

    #[test]
    fn populate_write_faults_the_range_in() {
        let m = Mapping::anonymous(1 << 20, 0).unwrap();
        match advise(&m, 0, 1 << 20, MADV_POPULATE_WRITE) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::EINVAL) => {} // kernel older than 5.14
            Err(e) => panic!("{e}"),
        }
        advise(&m, 4096, 4096, libc::MADV_NORMAL).unwrap();
        touch(&m, 0, 1 << 20, 4096).unwrap();
    }

    #[test]
    fn random_reads_read_the_memory() {
        let m = Mapping::anonymous(1 << 16, 0).unwrap();
        assert_eq!(random_reads(&m, 0, 1 << 16, 10_000, 1).unwrap(), 0);
        assert!(random_reads(&m, 0, 4, 1, 1).is_err());
    }
}
