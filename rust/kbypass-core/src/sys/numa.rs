//! NUMA memory policy: `mbind(2)` and `get_mempolicy(2)` as raw system calls (glibc has no
//! wrappers; libnuma is not a dependency).

use crate::error::{Error, Result};

/// Bits in the node masks we pass to the kernel (the kernel's `MAX_NUMNODES` is at most 1024).
const MASK_BITS: usize = 1024;
const MASK_WORDS: usize = MASK_BITS / 64;

const MPOL_PREFERRED: libc::c_int = 1;
const MPOL_BIND: libc::c_int = 2;
const MPOL_F_NODE: libc::c_ulong = 1;
const MPOL_F_ADDR: libc::c_ulong = 2;

/// How strictly memory is placed on the chosen node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// `MPOL_BIND`: allocate only on the node; fail rather than spill.
    Bind,
    /// `MPOL_PREFERRED`: allocate on the node when it has free memory, elsewhere otherwise.
    Preferred,
}

/// `mbind(2)` the range `[addr, addr + len)` to `node` before it is faulted in.
///
/// The range must be page aligned and lie inside a mapping the caller owns; only the policy of
/// that range changes.
pub fn mbind(addr: *mut u8, len: usize, node: usize, policy: Policy) -> Result<()> {
    if node >= MASK_BITS {
        return Err(Error::invalid(format!(
            "NUMA node {node} is out of range (at most {})",
            MASK_BITS - 1
        )));
    }
    let mut mask = [0u64; MASK_WORDS];
    mask[node / 64] |= 1 << (node % 64);
    let mode = match policy {
        Policy::Bind => MPOL_BIND,
        Policy::Preferred => MPOL_PREFERRED,
    };
    // SAFETY: mbind only changes the memory policy of the given range (which the caller owns);
    // `mask` is a live array of MASK_BITS bits and the kernel reads at most maxnode - 1 bits.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr as libc::c_ulong,
            len as libc::c_ulong,
            mode as libc::c_ulong,
            mask.as_ptr(),
            (MASK_BITS + 1) as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(Error::last_os(
            format!("mbind(node {node}, {policy:?})"),
            "check the node exists and has memory: `cat /sys/devices/system/node/has_memory`",
        ));
    }
    Ok(())
}

/// The NUMA node holding the (already faulted-in) page at `addr`, via
/// `get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR)`.
pub fn node_of_address(addr: *const u8) -> Result<usize> {
    let mut node: libc::c_int = -1;
    // SAFETY: get_mempolicy writes one int into `node`, which we own; with a null nodemask and
    // maxnode 0 it writes nothing else, and it only inspects the page tables at `addr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut node as *mut libc::c_int,
            std::ptr::null_mut::<libc::c_ulong>(),
            0 as libc::c_ulong,
            addr as libc::c_ulong,
            MPOL_F_NODE | MPOL_F_ADDR,
        )
    };
    if rc != 0 {
        return Err(Error::last_os("get_mempolicy(MPOL_F_NODE|MPOL_F_ADDR)", ""));
    }
    usize::try_from(node).map_err(|_| Error::invalid(format!("get_mempolicy returned node {node}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::mm::Mapping;

    #[test]
    fn bind_to_node_zero_places_pages_there() {
        let m = Mapping::anonymous(1 << 16, 0).unwrap();
        match mbind(m.as_ptr(), m.len(), 0, Policy::Bind) {
            Ok(()) => {}
            // A kernel without CONFIG_NUMA: nothing to bind, nothing to check.
            Err(e) if e.errno() == Some(libc::ENOSYS) => return,
            Err(e) => panic!("{e}"),
        }
        // SAFETY: first byte of our own 64 KiB mapping.
        unsafe { *m.as_ptr() = 1 };
        assert_eq!(node_of_address(m.as_ptr()).unwrap(), 0);
    }

    #[test]
    fn node_out_of_mask_range_is_refused() {
        let m = Mapping::anonymous(4096, 0).unwrap();
        assert!(matches!(
            mbind(m.as_ptr(), 4096, 5000, Policy::Bind),
            Err(Error::InvalidArgument(_))
        ));
    }
}
