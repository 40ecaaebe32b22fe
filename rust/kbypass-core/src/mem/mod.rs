//! Memory: [`HugeRegion`] (hugepage-backed anonymous memory) and [`Mempool`] (fixed-size
//! objects carved from a region, with per-thread caches). Mempools and AF_XDP UMEMs are
//! carved from a region by offset and keep it alive through an `Arc<HugeRegion>`.

pub mod mempool;
pub mod region;

pub use crate::sys::numa::Policy as NumaPolicy;
pub use mempool::{Mempool, MempoolStats, PoolCache};
pub use region::{thp_mode, HugePages, HugeRegion, HugetlbPool, RegionOptions, Tier};
