//! Traffic for benches and tests: frame templates, the kernel-socket baselines, and (in
//! `live`) the XDP live-frames generator.

pub mod kernel;
pub mod template;
pub mod xsk;

pub use kernel::{StopWhen, Throughput};
pub use template::UdpTemplate;
