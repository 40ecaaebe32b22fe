//! pcap files with nanosecond timestamps (magic `0xa1b23c4d`), readable by tshark, Wireshark,
//! scapy and dpkt.

use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

/// pcap magic for nanosecond-resolution timestamps, written in host (little-endian) order.
pub const PCAP_MAGIC_NS: u32 = 0xa1b2_3c4d;
/// LINKTYPE_ETHERNET.
pub const LINKTYPE_ETHERNET: u32 = 1;

/// Writes frames to a pcap stream. Frames longer than `snaplen` are cut and keep their original
/// length in the record header, as tcpdump does.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
    snaplen: u32,
    packets: u64,
    bytes: u64,
}

impl<W: Write> PcapWriter<W> {
    /// Write the global header and return the writer.
    pub fn new(mut out: W, snaplen: u32) -> io::Result<Self> {
        let snaplen = if snaplen == 0 { 262_144 } else { snaplen };
        let mut h = [0u8; 24];
        h[0..4].copy_from_slice(&PCAP_MAGIC_NS.to_le_bytes());
        h[4..6].copy_from_slice(&2u16.to_le_bytes());
        h[6..8].copy_from_slice(&4u16.to_le_bytes());
        // thiszone and sigfigs stay 0
        h[16..20].copy_from_slice(&snaplen.to_le_bytes());
        h[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        out.write_all(&h)?;
        Ok(PcapWriter {
            out,
            snaplen,
            packets: 0,
            bytes: 0,
        })
    }

    /// Append one frame with a timestamp in nanoseconds since the Unix epoch.
    pub fn write_frame(&mut self, ts_ns: u64, frame: &[u8]) -> io::Result<()> {
        let incl = frame.len().min(self.snaplen as usize);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&((ts_ns / 1_000_000_000) as u32).to_le_bytes());
        h[4..8].copy_from_slice(&((ts_ns % 1_000_000_000) as u32).to_le_bytes());
        h[8..12].copy_from_slice(&(incl as u32).to_le_bytes());
        h[12..16].copy_from_slice(&(frame.len().min(u32::MAX as usize) as u32).to_le_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(&frame[..incl])?;
        self.packets += 1;
        self.bytes += incl as u64;
        Ok(())
    }

    /// Frames written so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Frame bytes written so far (after snaplen).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Flush buffered output.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Flush and return the underlying writer.
    pub fn into_inner(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Nanoseconds since the Unix epoch (the pcap timestamp clock).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_records_have_the_pcap_layout() {
        let mut w = PcapWriter::new(Vec::new(), 64).unwrap();
        w.write_frame(1_700_000_000_123_456_789, &[0xaa; 10])
            .unwrap();
        w.write_frame(5, &[0xbb; 100]).unwrap();
        assert_eq!((w.packets(), w.bytes()), (2, 74));
        let b = w.into_inner().unwrap();
        assert_eq!(&b[0..4], &[0x4d, 0x3c, 0xb2, 0xa1]);
        assert_eq!(u32::from_le_bytes(b[16..20].try_into().unwrap()), 64);
        let r1 = &b[24..40];
        assert_eq!(
            u32::from_le_bytes(r1[0..4].try_into().unwrap()),
            1_700_000_000
        );
        assert_eq!(
            u32::from_le_bytes(r1[4..8].try_into().unwrap()),
            123_456_789
        );
        assert_eq!(u32::from_le_bytes(r1[8..12].try_into().unwrap()), 10);
        let r2 = &b[24 + 16 + 10..24 + 32 + 10];
        assert_eq!(u32::from_le_bytes(r2[8..12].try_into().unwrap()), 64); // cut to snaplen
        assert_eq!(u32::from_le_bytes(r2[12..16].try_into().unwrap()), 100); // original length
        assert_eq!(b.len(), 24 + 16 + 10 + 16 + 64);
    }
}
