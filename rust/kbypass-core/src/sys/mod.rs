//! Kernel ABI and system calls: the only module where `unsafe` system calls live.
//!
//! Each wrapper returns [`crate::Error`] with the errno and, where one is known, the fix.

pub mod affinity;
pub mod bpf;
pub mod event;
pub mod fork;
pub mod mm;
pub mod netdev;
pub mod netlink;
pub mod netns;
pub mod numa;
pub mod pages;
pub mod shm;
pub mod signal;
pub mod socket;
#[cfg(test)]
pub(crate) mod testutil;
pub mod xdp;
