//! A user-space RoCEv2 engine, wire-compatible with Linux rxe: the foundation.
//!
//! [`wire`] is the packet format: RoCEv2 over Ethernet, IPv4 or IPv6 and UDP port 4791,
//! with the InfiniBand BTH and extension headers of RC, UC and UD, the pad and the ICRC,
//! parsed as a checked zero-copy view and built into a caller's buffer.
//!
//! [`rc`] is the reliable connected transport as I/O-free state machines (requester and
//! responder) driven by packets in and out and an abstract clock; [`uc`] and [`ud`] are the
//! unreliable connected and unreliable datagram transports in the same style.
//!
//! Both are pure Rust with no I/O, so they run (and are tested) without RDMA hardware, rxe
//! or privileges.

pub mod engine;
pub mod rc;
pub mod uc;
pub mod ud;
pub mod wire;

#[cfg(test)]
mod rxe_replay_tests;
#[cfg(test)]
mod uc_ud_tests;
