//! kbypass core: kernel-bypass networking primitives in pure Rust.
//!
//! Layers (see `docs/architecture.md`): `sys` (syscalls, the only home of `unsafe` system
//! calls), `mem` (HugeRegion, Mempool), `ring` (lock-free rings), `cpu` (topology and pinning),
//! `xdp`/`xsk` (AF_XDP), `engine` (poll-mode workers), `rdma` (verbs provider).

pub mod error;
pub mod rdma;
pub mod sys;

pub use error::{Error, Result};
