//! Fault injection on an L2 path, for tests: loss, duplication, reordering and delay chosen at
//! random with probabilities changed at run time, counted exactly. (For kernels without
//! `sch_netem`, and for faults only on the frames a filter picks.)
//!
//! - [`FaultInjector`] ([`injector`], code in [`program`]): an XDP program for the frames
//!   arriving on one port. Frames its filter matches are dropped with probability `loss`
//!   (`bpf_get_prandom_u32()` against a threshold in a map), or redirected to an AF_XDP socket
//!   with probability `duplicate + reorder + delay`; everything else is passed (a bridge
//!   forwards it). Filter changes swap a matcher program in a PROG_ARRAY slot; the attached
//!   program stays.
//! - [`Middlebox`] ([`middlebox`]): a thread that sends the redirected frames out of the other
//!   port, duplicated, reordered or delayed.
//! - [`FaultPath`] ([`path`]): both directions on two ports (the two bridge ports of the
//!   namespace in the middle of `kbypass.testing.faults.FaultyPath`).
//!
//! ```no_run
//! use kbypass_core::xdp::faults::{FaultPath, FaultRates, PathOptions};
//! use kbypass_core::xdp::parse_filter;
//! let mut opts = PathOptions::default();
//! opts.rules = [parse_filter("udp dst port 4791")?, Vec::new()];
//! opts.rates[0] = FaultRates { loss: 0.01, reorder: 0.05, ..Default::default() };
//! let path = FaultPath::new("kbx-m", ["ma", "mb"], &opts)?;
//! println!("{:?}", path.counters(0)?);
//! # Ok::<(), kbypass_core::Error>(())
//! ```

pub mod injector;
pub mod middlebox;
pub mod path;
pub mod program;
#[cfg(test)]
mod tests;

pub use injector::{FaultInjector, FaultRates, InjectorCounters};
pub use middlebox::{Middlebox, MiddleboxCounters, Timing};
pub use path::{DirectionCounters, FaultPath, PathOptions};
