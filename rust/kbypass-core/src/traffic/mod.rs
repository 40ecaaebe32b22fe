//! Traffic for benches and tests: frame templates, the kernel-socket baselines, and (in
//! [`live`]) the XDP live-frames generator, with the counting drop sink
//! ([`sink`]) for the receiving end.

pub mod kernel;
pub mod live;
mod program;
pub mod sink;
pub mod template;
#[cfg(test)]
mod tests;
pub mod xsk;

pub use kernel::{StopWhen, Throughput};
pub use live::{LiveGenerator, LiveOptions, LiveResult, LiveRun};
pub use sink::{Counts, DropCounter};
pub use template::UdpTemplate;
