//! Frames as data: header parsing into columns, in-place edits and checksums, pcap output.
//!
//! Used by the engine (batch columns and verdict helpers) and by `kbypass capture`; it has no
//! `unsafe` and no I/O beyond the pcap writer's `Write`.

pub mod edit;
pub mod parse;
pub mod pcap;

pub use parse::{parse, PacketMeta, PACKET_META_FIELDS};
pub use pcap::PcapWriter;
