//! Kernel ABI and system calls: the only module where `unsafe` system calls live.
//!
//! Each wrapper returns [`crate::Error`] with the errno and, where one is known, the fix.

pub mod affinity;
pub mod mm;
pub mod numa;
pub mod pages;
