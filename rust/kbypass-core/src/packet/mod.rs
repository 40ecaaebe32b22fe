//! Frames as data: header parsing into columns, in-place edits and checksums, replies built in
//! place, pcap output.
//!
//! Used by the engine (batch columns and verdict helpers), by `kbypass capture`, and by
//! `kbypass.packet` over many frames at once (`rows`); it has no `unsafe` and no I/O beyond the
//! pcap writer's `Write`.

pub mod checksum;
pub mod edit;
pub mod offload;
pub mod parse;
pub mod pcap;
pub mod reply;
pub mod rows;
pub mod template;

pub use parse::{parse, PacketMeta, PACKET_META_FIELDS};
pub use pcap::PcapWriter;
pub use reply::{Reply, ReplyError};
pub use rows::{Edits, Rows};
pub use template::{Field, Fill, Spec, Template};
