//! kbypass core: kernel-bypass networking primitives in pure Rust.
//!
//! Layers (see `docs/architecture.md`): `sys` (syscalls, the only home of `unsafe` system
//! calls), `mem` (HugeRegion, Mempool), `ring` (lock-free rings), `cpu` (topology and pinning),
//! `xdp`/`xsk` (AF_XDP), `engine` (poll-mode workers), `rdma` (verbs provider).

pub mod capture;
pub mod cpu;
pub mod engine;
pub mod error;
pub mod mem;
pub mod packet;
pub mod rdma;
pub mod ring;
pub mod sys;
pub mod traffic;
pub mod xdp;
pub mod xsk;

pub use error::{Error, Result};
