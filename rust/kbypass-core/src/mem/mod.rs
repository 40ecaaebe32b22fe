//! Memory: [`HugeRegion`] (hugepage-backed anonymous memory). Mempools and AF_XDP UMEMs are
//! carved from a region by offset and keep it alive through an `Arc<HugeRegion>`.

pub mod region;

pub use crate::sys::numa::Policy as NumaPolicy;
pub use region::{thp_mode, HugePages, HugeRegion, HugetlbPool, RegionOptions, Tier};
