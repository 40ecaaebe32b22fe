//! Frames as rows of one buffer: row `i` starts at `i * width` and its frame is the first
//! `lens[i]` bytes (the layout of `kbypass.packet`'s 2-D arrays and of a `Batch`'s columns).
//! Parse, edit, answer, verify and write many frames in one call.

use std::io::{self, Write};

use super::edit;
use super::parse::{parse, PacketMeta};
use super::pcap::PcapWriter;
use super::reply::{Reply, ReplyError};
use crate::error::{Error, Result};

/// Frames laid out as rows (see the [module docs](self)), checked once when made.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    width: usize,
    lens: &'a [u32],
}

impl<'a> Rows<'a> {
    /// `rows` rows of `width` bytes, `lens` bytes used in each; an error if `lens` does not have
    /// one entry per row or a length is longer than a row.
    pub fn new(rows: usize, width: usize, lens: &'a [u32]) -> Result<Self> {
        if lens.len() != rows {
            return Err(Error::invalid(format!(
                "lengths has {} entries for {rows} frames: give one length per row",
                lens.len()
            )));
        }
        if let Some((i, l)) = lens.iter().enumerate().find(|(_, &l)| l as usize > width) {
            return Err(Error::invalid(format!(
                "lengths[{i}] = {l} is longer than a row ({width} bytes)"
            )));
        }
        Ok(Rows { width, lens })
    }

    /// `data`, if it holds every row.
    fn fits<'d>(&self, data: &'d [u8]) -> Result<&'d [u8]> {
        match self.len().checked_mul(self.width) {
            Some(n) if n <= data.len() => Ok(data),
            _ => Err(Error::invalid("the frames buffer is shorter than its rows")),
        }
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    fn frame<'d>(&self, data: &'d [u8], i: usize) -> &'d [u8] {
        &data[i * self.width..i * self.width + self.lens[i] as usize]
    }

    fn check_mask(&self, mask: Option<&[bool]>) -> Result<()> {
        match mask {
            Some(m) if m.len() != self.len() => {
                Err(Error::invalid("mask must have one entry per frame"))
            }
            _ => Ok(()),
        }
    }

    /// Parse every frame into `out`, one 64-byte record each ([`PacketMeta::to_bytes`]).
    pub fn parse_into(&self, data: &[u8], out: &mut [u8]) -> Result<()> {
        let data = self.fits(data)?;
        let rec = std::mem::size_of::<PacketMeta>();
        if out.len() != self.len() * rec {
            return Err(Error::invalid("out must have one record per frame"));
        }
        for (i, o) in out.chunks_exact_mut(rec).enumerate() {
            o.copy_from_slice(&parse(self.frame(data, i)).to_bytes());
        }
        Ok(())
    }

    /// Apply `edits` to the frames where `mask` is true (all without one); returns how many
    /// frames every requested edit applied to.
    pub fn edit(&self, data: &mut [u8], edits: Edits, mask: Option<&[bool]>) -> Result<usize> {
        self.fits(data)?;
        self.check_mask(mask)?;
        let mut applied = 0;
        for i in 0..self.len() {
            if mask.is_some_and(|m| !m[i]) {
                continue;
            }
            let start = i * self.width;
            if edits.apply(&mut data[start..start + self.lens[i] as usize]) {
                applied += 1;
            }
        }
        Ok(applied)
    }

    /// Answer the frames where `mask` is true (all without one) in place with `reply`, each
    /// row's width being the room its reply has: `answered[i]` says whether frame `i` was
    /// answered and `lens_out[i]` is its length afterwards (the reply's, or the frame's as it
    /// was). Returns how many were answered. Frames that are not answered are left untouched.
    pub fn reply(
        &self,
        data: &mut [u8],
        reply: &Reply<'_>,
        mask: Option<&[bool]>,
        lens_out: &mut [u32],
        answered: &mut [bool],
    ) -> Result<usize> {
        self.fits(data)?;
        self.check_mask(mask)?;
        if lens_out.len() != self.len() || answered.len() != self.len() {
            return Err(Error::invalid(
                "the output lengths and answered flags must have one entry per frame",
            ));
        }
        reply.check().map_err(|e| match e {
            ReplyError::Argument(m) => Error::invalid(m),
            e => Error::invalid(e.to_string()),
        })?;
        let mut k = 0;
        for i in 0..self.len() {
            let len = self.lens[i];
            let row = &mut data[i * self.width..(i + 1) * self.width];
            let done = match mask {
                Some(m) if !m[i] => None,
                _ => reply.apply(row, len as usize).ok(),
            };
            answered[i] = done.is_some();
            // A reply is under 64 KiB + its headers: it fits a u32.
            lens_out[i] = done.map_or(len, |n| n as u32);
            k += usize::from(done.is_some());
        }
        Ok(k)
    }

    /// Whether each frame's IPv4 header and UDP/TCP checksums verify, into `out`.
    pub fn checksums_ok(&self, data: &[u8], out: &mut [bool]) -> Result<()> {
        let data = self.fits(data)?;
        if out.len() != self.len() {
            return Err(Error::invalid("out must have one entry per frame"));
        }
        for (i, o) in out.iter_mut().enumerate() {
            let f = self.frame(data, i);
            *o = edit::checksums_ok(f, &parse(f));
        }
        Ok(())
    }

    /// Append every frame to `w`, all stamped `ts_ns`; returns how many.
    pub fn write_pcap<W: Write>(
        &self,
        data: &[u8],
        w: &mut PcapWriter<W>,
        ts_ns: u64,
    ) -> io::Result<usize> {
        let data = self
            .fits(data)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        for i in 0..self.len() {
            w.write_frame(ts_ns, self.frame(data, i))?;
        }
        Ok(self.len())
    }
}

/// A set of edits to apply to a frame, as bits (the `EDIT_*` values of `kbypass.packet`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edits(u32);

impl Edits {
    /// Swap the Ethernet addresses.
    pub const SWAP_MACS: u32 = 1;
    /// Swap the IP addresses.
    pub const SWAP_IPS: u32 = 2;
    /// Swap the UDP/TCP ports.
    pub const SWAP_PORTS: u32 = 4;
    /// Recompute the IPv4 header checksum.
    pub const FIX_IPV4_CHECKSUM: u32 = 8;
    /// Recompute the UDP/TCP checksum.
    pub const FIX_L4_CHECKSUM: u32 = 16;

    /// A non-empty combination of the bits above.
    pub fn new(bits: u32) -> Result<Self> {
        if bits == 0 || bits > 31 {
            return Err(Error::invalid(
                "ops must be a non-empty combination of the EDIT_* bits",
            ));
        }
        Ok(Edits(bits))
    }

    /// Apply the edits to one frame (swaps first, then checksums); true when every requested
    /// edit applied.
    pub fn apply(self, frame: &mut [u8]) -> bool {
        let m = parse(frame);
        let on = |bit: u32| self.0 & bit != 0;
        let mut ok = true;
        if on(Self::SWAP_MACS) {
            ok &= edit::swap_macs(frame);
        }
        if on(Self::SWAP_IPS) {
            ok &= edit::swap_ips(frame, &m);
        }
        if on(Self::SWAP_PORTS) {
            ok &= edit::swap_ports(frame, &m);
        }
        if on(Self::FIX_IPV4_CHECKSUM) {
            ok &= edit::fix_ipv4_checksum(frame, &m);
        }
        if on(Self::FIX_L4_CHECKSUM) {
            ok &= edit::fix_l4_checksum(frame, &m);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::parse::tests::udp4;

    #[test]
    fn rows_are_checked_parsed_edited_verified_and_written() {
        let mut f = udp4(10, 1000, 9000);
        let fix = Edits::new(Edits::FIX_IPV4_CHECKSUM | Edits::FIX_L4_CHECKSUM).unwrap();
        assert!(fix.apply(&mut f));
        let width = f.len() + 6;
        let mut data = vec![0u8; 3 * width];
        for i in 0..3 {
            data[i * width..i * width + f.len()].copy_from_slice(&f);
        }
        let lens = [f.len() as u32, f.len() as u32, 20];
        let rows = Rows::new(3, width, &lens).unwrap();
        let long = [width as u32 + 1];
        let e = Rows::new(1, width, &long).unwrap_err().to_string();
        assert!(e.contains("longer than a row"), "{e}");
        let e = Rows::new(3, width, &[1; 4]).unwrap_err().to_string();
        assert!(e.contains("lengths has 4 entries for 3 frames"), "{e}");
        let short = Rows::new(4, width, &[1; 4]).unwrap();
        assert!(
            short.checksums_ok(&data, &mut [false; 4]).is_err(),
            "3 rows of data for 4"
        );

        let mut recs = vec![0u8; 3 * 64];
        rows.parse_into(&data, &mut recs).unwrap();
        assert_eq!(&recs[..64], &parse(&f).to_bytes()[..]);
        assert!(rows.parse_into(&data, &mut recs[..64]).is_err());

        let mut ok = [false; 3];
        rows.checksums_ok(&data, &mut ok).unwrap();
        assert_eq!(ok, [true, true, false], "the third is cut short");

        let swap = Edits::new(Edits::SWAP_MACS | Edits::SWAP_PORTS).unwrap();
        assert!(Edits::new(0).is_err() && Edits::new(32).is_err());
        let e = rows.edit(&mut data, swap, Some(&[true])).unwrap_err();
        assert!(e.to_string().contains("one entry per frame"), "{e}");
        assert_eq!(
            rows.edit(&mut data, swap, Some(&[false, true, true]))
                .unwrap(),
            1
        );
        assert_eq!(&data[..f.len()], &f[..], "masked out: untouched");
        let m = parse(&data[width..width + f.len()]);
        assert_eq!(
            (m.src_port, m.dst_port),
            (parse(&f).dst_port, parse(&f).src_port)
        );
        rows.checksums_ok(&data, &mut ok).unwrap();
        assert!(ok[1], "a swap keeps the checksum valid");

        let mut w = PcapWriter::new(Vec::new(), 0).unwrap();
        assert_eq!(rows.write_pcap(&data, &mut w, 1).unwrap(), 3);
        assert_eq!(w.packets(), 3);
    }
}
