//! Thread CPU affinity: `sched_getaffinity(2)` / `sched_setaffinity(2)` for the calling thread,
//! and the kernel's CPU-list format (`0-3,8`) that sysfs and procfs use for CPU sets.

use std::collections::BTreeSet;

use crate::error::{Error, Result};

/// The largest CPU number a `cpu_set_t` can hold, plus one.
pub const MAX_CPUS: usize = libc::CPU_SETSIZE as usize;

/// Parse a kernel CPU list such as `0-3,8,10-11` (empty string → empty list).
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>> {
    let mut out = BTreeSet::new();
    for part in s.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || Error::invalid(format!("bad CPU list {s:?}: expected e.g. \"0-3,8\""));
        let (range, stride) = match part.split_once(':') {
            Some((r, st)) => (r, st.parse::<usize>().map_err(|_| bad())?.max(1)),
            None => (part, 1),
        };
        let (lo, hi) = match range.split_once('-') {
            Some((a, b)) => (
                a.parse::<usize>().map_err(|_| bad())?,
                b.parse::<usize>().map_err(|_| bad())?,
            ),
            None => {
                let v = range.parse::<usize>().map_err(|_| bad())?;
                (v, v)
            }
        };
        if lo > hi || hi >= MAX_CPUS {
            return Err(bad());
        }
        out.extend((lo..=hi).step_by(stride));
    }
    Ok(out.into_iter().collect())
}

/// The CPUs the calling thread may run on, ascending.
pub fn get_current() -> Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain bits; all-zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the kernel writes at most size_of::<cpu_set_t>()
    // bytes into `set`, which we own.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(Error::last_os("sched_getaffinity", ""));
    }
    // SAFETY: CPU_ISSET reads bit `i` of our set, and i < CPU_SETSIZE.
    Ok((0..MAX_CPUS)
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect())
}

/// Restrict the calling thread to `cpus`. The caller validates the list; the kernel still
/// refuses (EINVAL) a set with no CPU the thread's cpuset allows.
pub fn set_current(cpus: &[usize]) -> Result<()> {
    if cpus.is_empty() {
        return Err(Error::invalid("empty CPU list: give at least one CPU"));
    }
    // SAFETY: all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c >= MAX_CPUS {
            return Err(Error::invalid(format!(
                "CPU {c} is out of range (at most {})",
                MAX_CPUS - 1
            )));
        }
        // SAFETY: c < CPU_SETSIZE, so the bit lies inside `set`.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; the kernel reads exactly the set we pass.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(Error::last_os(
            format!("sched_setaffinity({cpus:?})"),
            "use CPUs from kbypass.cpu.allowed() (the process's cpuset)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_current_affinity() {
        let before = get_current().unwrap();
        assert!(!before.is_empty());
        set_current(&before[..1]).unwrap();
        assert_eq!(get_current().unwrap(), vec![before[0]]);
        set_current(&before).unwrap();
        assert_eq!(get_current().unwrap(), before);
    }

    #[test]
    fn bad_sets_are_refused() {
        assert!(matches!(set_current(&[]), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            set_current(&[MAX_CPUS]),
            Err(Error::InvalidArgument(_))
        ));
    }
}
