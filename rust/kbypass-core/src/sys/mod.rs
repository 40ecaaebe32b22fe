//! Kernel ABI and system calls: the only module where `unsafe` system calls live.
//!
//! Each wrapper returns [`crate::Error`] with the errno and, where one is known, the fix.

pub mod bpf;
pub mod mm;
pub mod netlink;
#[cfg(test)]
pub(crate) mod testutil;
pub mod xdp;
