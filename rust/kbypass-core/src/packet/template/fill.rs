//! Filling a [`Template`]: what to write into `n` packets ([`Fill`]), checked when it is
//! given, and writing packet `i` (headers, values, payload, lengths, checksums).

use super::Slot;
use super::{Field, Template};
use crate::error::{Error, Result};
use crate::packet::checksum::{fold, ip_addrs, pseudo_header_sum, sum16};
use crate::packet::parse::IPPROTO_UDP;

/// How a filled packet's UDP/TCP checksum is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// Computed in software over the whole segment.
    Full,
    /// Left to the device: the field holds the pseudo-header sum and the device sums from
    /// [`Written::csum_start`], writing at `csum_start + csum_offset`.
    Offload,
}

/// What [`Fill::write`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Frame length (padded to [`super::ETH_ZLEN`]).
    pub len: usize,
    /// Where the device starts summing (the L4 header).
    pub csum_start: u16,
    /// Where, from `csum_start`, the device writes the sum (6 for UDP, 16 for TCP).
    pub csum_offset: u16,
}

/// Values of one field for the packets of a fill.
#[derive(Debug, Clone, Copy)]
pub enum Values<'a> {
    /// The same value for every packet.
    One(u128),
    /// One value per packet.
    Each(&'a [u64]),
    /// One value per packet as `width` big-endian bytes each (IPv6 addresses, MACs).
    Bytes(&'a [u8]),
}

/// The payloads of a fill's packets.
#[derive(Debug, Clone, Copy)]
pub enum Payloads<'a> {
    /// The template's.
    Template,
    /// The same for every packet.
    One(&'a [u8]),
    /// One per packet.
    Each(&'a [&'a [u8]]),
}

/// What to write into `n` packets from one template; every value checked when added.
#[derive(Debug, Clone)]
pub struct Fill<'a> {
    n: usize,
    fields: Vec<(Slot, Values<'a>)>,
    payload: Payloads<'a>,
}

impl<'a> Fill<'a> {
    /// A fill of `n` packets that writes nothing but the template (add fields and a payload).
    pub fn new(n: usize) -> Fill<'a> {
        Fill {
            n,
            fields: Vec::new(),
            payload: Payloads::Template,
        }
    }

    /// Packets in the fill.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the fill has no packets.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Write `values` into `field` (the last set of a field wins). An error, and nothing set,
    /// when the template has no such field, a column is not `n` long, or a value does not fit.
    pub fn set(&mut self, tpl: &Template, field: Field, values: Values<'a>) -> Result<()> {
        let slot = tpl.slot(field)?;
        let name = field.name();
        let too_big = |v: u128| {
            Error::invalid(format!(
                "{name} value {v:#x} does not fit its {} bits",
                slot.bits
            ))
        };
        match values {
            Values::One(v) if !slot.fits(v) => return Err(too_big(v)),
            Values::Each(col) if col.len() != self.n => {
                return Err(Error::invalid(format!(
                    "{name} has {} values for {} packets: give one value, or one per packet",
                    col.len(),
                    self.n
                )))
            }
            Values::Each(col) => {
                if let Some(v) = col.iter().find(|v| !slot.fits(**v as u128)) {
                    return Err(too_big(*v as u128));
                }
            }
            Values::Bytes(b) if b.len() != self.n * slot.width || slot.bits as usize != slot.width * 8 => {
                return Err(Error::invalid(format!(
                    "{name} as bytes needs {} bytes per packet ({} for {} packets), got {}; give integers for fields that are not whole bytes",
                    slot.width,
                    self.n * slot.width,
                    self.n,
                    b.len()
                )))
            }
            _ => {}
        }
        self.fields.retain(|(s, _)| s.field != field);
        self.fields.push((slot, values));
        Ok(())
    }

    /// Give the packets this payload. An error, and nothing set, when a per-packet list is not
    /// `n` long or a payload makes a frame longer than [`MAX_FRAME`].
    pub fn payload(&mut self, tpl: &Template, p: Payloads<'a>) -> Result<()> {
        match p {
            Payloads::Template => {}
            Payloads::One(b) => tpl.check_len(b.len())?,
            Payloads::Each(list) => {
                if list.len() != self.n {
                    return Err(Error::invalid(format!(
                        "payload has {} entries for {} packets: give one payload, or one per packet",
                        list.len(),
                        self.n
                    )));
                }
                for b in list {
                    tpl.check_len(b.len())?;
                }
            }
        }
        self.payload = p;
        Ok(())
    }

    /// Length of packet `i`'s frame.
    pub fn frame_len(&self, tpl: &Template, i: usize) -> usize {
        let p = match self.payload {
            Payloads::Template => tpl.payload.len(),
            Payloads::One(b) => b.len(),
            Payloads::Each(list) => list[i].len(),
        };
        tpl.frame_len(p)
    }

    /// The longest frame of the fill.
    pub fn max_frame_len(&self, tpl: &Template) -> usize {
        (0..self.n)
            .map(|i| self.frame_len(tpl, i))
            .max()
            .unwrap_or(0)
    }

    /// Write packet `i` (< n) into `out` (at least [`Fill::frame_len`] bytes): headers, field
    /// values, payload, zero padding, IP/UDP lengths, the IPv4 header checksum, and the
    /// UDP/TCP checksum as `csum` says. An error, and nothing written, when `out` is short.
    pub fn write(
        &self,
        tpl: &Template,
        i: usize,
        out: &mut [u8],
        csum: Checksum,
    ) -> Result<Written> {
        let len = self.frame_len(tpl, i);
        if i >= self.n || out.len() < len {
            return Err(Error::invalid(format!(
                "packet {i} of {} needs {len} bytes, the buffer has {}",
                self.n,
                out.len()
            )));
        }
        let l = tpl.layout;
        let head = &tpl.head;
        out[..head.len()].copy_from_slice(head);
        let payload = match self.payload {
            Payloads::Template => &tpl.payload[..],
            Payloads::One(b) => b,
            Payloads::Each(list) => list[i],
        };
        let end = l.payload + payload.len();
        out[l.payload..end].copy_from_slice(payload);
        out[end..len].fill(0);
        for (slot, v) in &self.fields {
            match *v {
                Values::One(v) => slot.write(out, v),
                Values::Each(col) => slot.write(out, col[i] as u128),
                Values::Bytes(b) => {
                    out[slot.off..slot.off + slot.width]
                        .copy_from_slice(&b[i * slot.width..(i + 1) * slot.width]);
                }
            }
        }
        let f = &mut out[..len];
        let l3 = l.l3;
        // Lengths: whatever the template said, the packet's own.
        if l.ip_version == 4 {
            f[l3 + 2..l3 + 4].copy_from_slice(&((end - l3) as u16).to_be_bytes());
            let ihl = (f[l3] & 0x0f) as usize * 4;
            f[l3 + 10..l3 + 12].fill(0);
            let c = fold(sum16(&f[l3..l3 + ihl], 0));
            f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        } else {
            f[l3 + 4..l3 + 6].copy_from_slice(&((end - l3 - 40) as u16).to_be_bytes());
        }
        let (l4, seg) = (l.l4, end - l.l4);
        let at = if l.proto == IPPROTO_UDP {
            f[l4 + 4..l4 + 6].copy_from_slice(&(seg as u16).to_be_bytes());
            6
        } else {
            16
        };
        f[l4 + at..l4 + at + 2].fill(0);
        let addrs = ip_addrs(f, l3, l.ip_version).expect("the template's IP header is whole");
        let acc = pseudo_header_sum(addrs, l.proto, seg);
        let c = match csum {
            // The uncomplemented folded pseudo-header sum: the device adds the segment.
            Checksum::Offload => !fold(acc),
            Checksum::Full => match fold(sum16(&f[l4..end], acc)) {
                0 if l.proto == IPPROTO_UDP => 0xffff, // RFC 768: zero is sent as all ones
                c => c,
            },
        };
        f[l4 + at..l4 + at + 2].copy_from_slice(&c.to_be_bytes());
        Ok(Written {
            len,
            csum_start: l4 as u16,
            csum_offset: at as u16,
        })
    }
}
