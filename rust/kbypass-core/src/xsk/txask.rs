//! What an application asks of a packet it sends ([`TxAsk`]: checksum in software or by the
//! kernel/device, a TX timestamp, a launch time), what the UMEM's sockets can honour
//! ([`TxCaps`]), and the fallback: a checksum offload nobody can do is computed in software
//! and counted ([`TxOffloadCounts::csum_software`]), never left wrong; a timestamp or launch
//! time nobody can honour is an [`Error::Unsupported`] saying why.
//!
//! What can be honoured (decided when each socket binds, the UMEM keeping what all of its
//! sockets can do):
//! - no TX metadata on the UMEM (`tx_metadata` off, or refused by a kernel before 6.8): none;
//! - copy mode: the kernel builds an skb per descriptor (`xsk_build_skb`): a checksum request
//!   makes it `CHECKSUM_PARTIAL`, which the device completes or, for one without checksum
//!   offload, the kernel's transmit path does in software (`validate_xmit_skb`), so it is
//!   always right; a timestamp is the software time at which the driver freed the skb; a
//!   launch time (kernel ≥ 6.15) becomes the skb's transmit time, which only a driver with
//!   launch-time offload acts on (copy mode skips the qdisc; veth sends at once);
//! - zero-copy: what the driver implements, as the "netdev" family's `xsk-features` says
//!   ([`crate::sys::netdev`]); the kernel ignores a request the driver lacks, so kbypass does
//!   not make one.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};

use super::txmd::TxRequest;
use super::umem::kernel_at_least;
use super::{Umem, XskSocket};
use crate::error::{Error, Result};
use crate::packet::edit::{fix_ipv4_checksum, fix_l4_checksum};
use crate::packet::offload::partial_l4_checksum;
use crate::packet::parse;
use crate::sys::netdev::{self, XSK_TX_CHECKSUM, XSK_TX_LAUNCH_TIME, XSK_TX_TIMESTAMP};
use crate::sys::xdp::XdpDesc;

/// How the UDP/TCP checksum of a packet sent is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CsumAsk {
    /// Left as the packet has it.
    #[default]
    Keep,
    /// Computed by kbypass (and the IPv4 header checksum).
    Software,
    /// Left to the kernel or device through TX metadata where the socket can (the IPv4 header
    /// checksum is computed here); computed by kbypass, and counted, where it cannot.
    Offload,
}

/// What one packet sent asks (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxAsk {
    /// The checksum.
    pub checksum: CsumAsk,
    /// A TX timestamp at completion ([`XskSocket::take_tx_timestamps`]).
    pub timestamp: bool,
    /// Send at this time (ns, in the clock of whatever honours it: the device's PTP clock in
    /// zero-copy, the skb's transmit time in copy mode).
    pub launch_time: Option<u64>,
}

/// What the sockets of a UMEM can honour of a [`TxRequest`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxCaps {
    /// Checksum completion by the kernel or the device.
    pub checksum: bool,
    /// TX timestamps.
    pub timestamp: bool,
    /// Launch time.
    pub launch_time: bool,
}

impl TxCaps {
    const SET: u8 = 1 << 7;

    fn bits(self) -> u8 {
        self.checksum as u8 | (self.timestamp as u8) << 1 | (self.launch_time as u8) << 2
    }

    fn from_bits(b: u8) -> Self {
        TxCaps {
            checksum: b & 1 != 0,
            timestamp: b & 2 != 0,
            launch_time: b & 4 != 0,
        }
    }

    /// What a socket bound in `zerocopy` mode on a UMEM with (`metadata`) or without TX
    /// metadata can honour, given the device's `xsk-features` (None: unknown) and whether
    /// the kernel is at least 6.15 (launch time).
    pub fn of(metadata: bool, zerocopy: bool, xsk_features: Option<u64>, k615: bool) -> Self {
        if !metadata {
            return TxCaps::default();
        }
        if !zerocopy {
            return TxCaps {
                checksum: true,
                timestamp: true,
                launch_time: k615,
            };
        }
        let f = xsk_features.unwrap_or(0);
        TxCaps {
            checksum: f & XSK_TX_CHECKSUM != 0,
            timestamp: f & XSK_TX_TIMESTAMP != 0,
            launch_time: k615 && f & XSK_TX_LAUNCH_TIME != 0,
        }
    }
}

/// Counts of [`TxAsk`] checksums, over the UMEM's sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxOffloadCounts {
    /// Checksums left to the kernel or device.
    pub csum_offload: u64,
    /// Offloads asked that were computed in software: the sockets cannot (no TX metadata, a
    /// zero-copy driver without `tx-checksum`) or the packet cannot (not UDP/TCP with only
    /// zero padding after it; a multi-buffer packet).
    pub csum_software: u64,
}

/// A UMEM's [`TxCaps`] (what every socket bound so far can honour) and counts.
#[derive(Debug, Default)]
pub(crate) struct TxOffload {
    caps: AtomicU8,
    csum_offload: AtomicU64,
    csum_software: AtomicU64,
}

impl TxOffload {
    /// A socket bound that can honour `c`: the UMEM keeps what all of them can.
    pub(crate) fn note(&self, c: TxCaps) {
        let new = c.bits() | TxCaps::SET;
        let _ = self.caps.fetch_update(Relaxed, Relaxed, |old| {
            Some(if old & TxCaps::SET == 0 {
                new
            } else {
                old & new
            })
        });
    }

    pub(crate) fn caps(&self) -> TxCaps {
        TxCaps::from_bits(self.caps.load(Relaxed))
    }

    pub(crate) fn counts(&self) -> TxOffloadCounts {
        TxOffloadCounts {
            csum_offload: self.csum_offload.load(Relaxed),
            csum_software: self.csum_software.load(Relaxed),
        }
    }

    pub(crate) fn count_offload(&self) {
        self.csum_offload.fetch_add(1, Relaxed);
    }

    pub(crate) fn count_software(&self) {
        self.csum_software.fetch_add(1, Relaxed);
    }
}

/// What socket `ifindex` bound in `zerocopy` mode on `umem` can honour, and a note when a
/// zero-copy driver's offloads could not be asked.
pub(crate) fn probe(umem: &Umem, ifindex: u32, zerocopy: bool) -> (TxCaps, Option<String>) {
    let md = umem.tx_metadata_len() > 0;
    let (feats, note) = if md && zerocopy {
        match netdev::dev_features(ifindex) {
            Ok(Some(f)) => {
                let names = f.xsk_names();
                let note = format!(
                    "zero-copy: the driver completes TX metadata requests for {}; kbypass computes the rest in software (checksums, counted in tx_csum_software) or refuses them (timestamps, launch time)",
                    if names.is_empty() { "nothing".to_string() } else { names.join(", ") }
                );
                (Some(f.xsk_features), Some(note))
            }
            Ok(None) => (None, Some("the kernel has no netdev netlink family to say which TX metadata offloads the zero-copy driver has: checksums are computed in software, no TX timestamps".to_string())),
            Err(e) => (None, Some(format!("the zero-copy driver's TX metadata offloads are unknown ({e}): checksums are computed in software, no TX timestamps"))),
        }
    } else {
        (None, None)
    };
    (
        TxCaps::of(md, zerocopy, feats, kernel_at_least(6, 15)),
        note,
    )
}

impl TxAsk {
    /// Whether it asks anything.
    pub fn is_empty(&self) -> bool {
        *self == TxAsk::default()
    }

    /// An [`Error::Unsupported`] when `umem`'s sockets cannot honour the timestamp or launch
    /// time asked (a checksum always can be made: in software).
    pub fn check(&self, umem: &Umem) -> Result<()> {
        let caps = umem.tx_caps();
        let md = umem.tx_metadata_len() > 0;
        let fix = |what: &str| -> String {
            if !md {
                format!("open the port with tx_metadata=\"offload\" (AF_XDP TX metadata, Linux >= 6.8) for {what}; this UMEM has none (see the socket's notes)")
            } else {
                format!("the zero-copy driver does not implement {what} (netdev xsk-features): bind in copy mode (mode=\"copy\") or do without")
            }
        };
        if self.timestamp && !caps.timestamp {
            return Err(Error::Unsupported {
                what: "a TX timestamp".into(),
                fix: fix("TX timestamps"),
            });
        }
        if self.launch_time.is_some() && !caps.launch_time {
            let fix = if md && !kernel_at_least(6, 15) {
                "launch time (XDP_TXMD_FLAGS_LAUNCH_TIME) needs Linux >= 6.15".to_string()
            } else {
                fix("launch time")
            };
            return Err(Error::Unsupported {
                what: "a launch time".into(),
                fix,
            });
        }
        Ok(())
    }

    /// Make `pkt`'s checksums as asked and return the request to write in front of it (None:
    /// no request), and whether its UDP/TCP checksum is now made (in software, or left to the
    /// kernel or device). `caps` is what the sockets can honour; the request is only for what
    /// they can (the caller checked the rest with [`TxAsk::check`]). A checksum offload the
    /// sockets or the packet cannot have is computed here and counted in `offload`.
    pub(crate) fn prepare(
        &self,
        caps: TxCaps,
        offload: &TxOffload,
        pkt: &mut [u8],
    ) -> (Option<TxRequest>, bool) {
        let mut req = TxRequest {
            csum: None,
            timestamp: self.timestamp && caps.timestamp,
            launch_time: self.launch_time.filter(|_| caps.launch_time),
        };
        let mut l4 = false;
        if self.checksum != CsumAsk::Keep {
            let m = parse(pkt);
            fix_ipv4_checksum(pkt, &m);
            if self.checksum == CsumAsk::Offload && caps.checksum {
                req.csum = partial_l4_checksum(pkt, &m);
            }
            if req.csum.is_some() {
                offload.count_offload();
                l4 = true;
            } else {
                l4 = fix_l4_checksum(pkt, &m);
                if l4 && self.checksum == CsumAsk::Offload {
                    offload.count_software();
                }
            }
        }
        ((!req.is_empty()).then_some(req), l4)
    }
}

impl XskSocket {
    /// [`XskSocket::send_copies`], each packet made as `ask` says (its checksum, and a TX
    /// metadata request for what the socket can honour). An [`Error::Unsupported`], and nothing
    /// sent, when it asks a timestamp or launch time the socket cannot honour.
    pub fn send_copies_with(&mut self, packets: &[&[u8]], ask: TxAsk) -> Result<super::CopySend> {
        ask.check(self.umem())?;
        if ask.is_empty() {
            return Ok(self.send_copies(packets));
        }
        let cap = self.umem().tx_capacity() as usize;
        let (ok, big): (Vec<&[u8]>, Vec<&[u8]>) = packets
            .iter()
            .partition(|p| !p.is_empty() && p.len() <= cap);
        let mut out = super::CopySend {
            queued: 0,
            oversize: big.len(),
        };
        let mut descs = [XdpDesc::default(); 64];
        for chunk in ok.chunks(64) {
            self.complete();
            let got = self.alloc_copies(chunk, &mut descs);
            self.ask_each(&mut descs[..got], &ask);
            let q = self.send(&descs[..got]);
            if q < got {
                let back: Vec<u64> = descs[q..got].iter().map(|d| d.addr).collect();
                self.release(&back);
            }
            out.queued += q;
            if q < chunk.len() {
                break;
            }
        }
        Ok(out)
    }

    /// [`XskSocket::send_holds`], each packet made as `ask` says (see
    /// [`XskSocket::send_copies_with`]); an [`Error::Unsupported`], nothing sent and the holds
    /// dropped (the frames go back), when the socket cannot honour a timestamp or launch time.
    pub fn send_holds_with(
        &mut self,
        items: Vec<(super::FrameHold, XdpDesc)>,
        ask: TxAsk,
    ) -> Result<super::HeldSend> {
        ask.check(self.umem())?;
        Ok(self.send_holds_asking(items, &ask))
    }

    /// Make each of `descs` (packets in frames the application alone has, about to be sent) as
    /// `ask` says, with a TX metadata request for what the socket can honour; the buffers of a
    /// multi-buffer packet are left as they are.
    pub(super) fn ask_each(&mut self, descs: &mut [XdpDesc], ask: &TxAsk) {
        let umem = std::sync::Arc::clone(self.umem());
        let caps = umem.tx_caps();
        let mut after_contd = false;
        for d in descs {
            // A buffer of a multi-buffer packet (it or the one before continues): sent as it is.
            let contd = d.options & crate::sys::xdp::XDP_PKT_CONTD != 0;
            let skip = contd || after_contd;
            after_contd = contd;
            if skip {
                continue;
            }
            let Some(p) = self.app_ptr(d.addr, d.len) else {
                continue;
            };
            // SAFETY: `app_ptr` checked that the packet lies inside a frame the application
            // holds (App: no kernel ring, hold or view has it, the caller says it is about to
            // send it), and `&mut self` keeps every other Rust writer out while this slice
            // lives.
            let pkt = unsafe { std::slice::from_raw_parts_mut(p, d.len as usize) };
            if let (Some(req), _) = ask.prepare(caps, umem.tx_offload(), pkt) {
                self.request_tx_metadata(d, req);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_by_mode_and_driver() {
        let none = TxCaps::default();
        assert_eq!(TxCaps::of(false, false, None, true), none);
        let copy = TxCaps::of(true, false, None, true);
        assert!(copy.checksum && copy.timestamp && copy.launch_time);
        assert!(
            !TxCaps::of(true, false, None, false).launch_time,
            "before 6.15"
        );
        assert_eq!(
            TxCaps::of(true, true, None, true),
            none,
            "zero-copy, features unknown"
        );
        assert_eq!(
            TxCaps::of(true, true, Some(0), true),
            none,
            "a driver without offloads"
        );
        let zc = TxCaps::of(true, true, Some(XSK_TX_CHECKSUM | XSK_TX_LAUNCH_TIME), true);
        assert!(zc.checksum && !zc.timestamp && zc.launch_time);
    }

    #[test]
    fn a_umem_keeps_what_all_its_sockets_can() {
        let t = TxOffload::default();
        assert_eq!(t.caps(), TxCaps::default(), "no socket yet");
        let all = TxCaps {
            checksum: true,
            timestamp: true,
            launch_time: true,
        };
        t.note(all);
        assert_eq!(t.caps(), all);
        t.note(TxCaps {
            checksum: false,
            ..all
        });
        t.note(all);
        assert_eq!(
            t.caps(),
            TxCaps {
                checksum: false,
                ..all
            }
        );
    }

    #[test]
    fn prepare_offloads_where_it_can_and_counts_the_software_fallback() {
        use crate::packet::edit::checksums_ok;
        use crate::packet::template::{Spec, Template};
        let t = Template::build(&Spec {
            src_ip: "198.18.0.1".parse().unwrap(),
            dst_ip: "198.18.0.2".parse().unwrap(),
            payload: b"x".repeat(33),
            ..Spec::default()
        })
        .unwrap();
        let mut broken = t.frame();
        broken[40] ^= 0xff; // the UDP checksum
        let m = parse(&broken);
        assert!(!checksums_ok(&broken, &m));
        let off = TxOffload::default();
        let all = TxCaps {
            checksum: true,
            timestamp: true,
            launch_time: false,
        };
        let ask = TxAsk {
            checksum: CsumAsk::Offload,
            timestamp: true,
            launch_time: None,
        };
        let mut f = broken.clone();
        let (r, l4) = ask.prepare(all, &off, &mut f);
        let r = r.unwrap();
        assert!(l4);
        assert_eq!(r.csum, Some((34, 6)));
        assert!(r.timestamp);
        assert!(crate::packet::offload::complete_partial(&mut f, 34, 6));
        assert!(checksums_ok(&f, &m));
        // No checksum offload: computed here, counted.
        let mut f = broken.clone();
        let r = ask.prepare(TxCaps::default(), &off, &mut f);
        assert_eq!(r, (None, true));
        assert!(checksums_ok(&f, &m));
        assert_eq!(
            off.counts(),
            TxOffloadCounts {
                csum_offload: 1,
                csum_software: 1
            }
        );
        // Software asked: not a fallback.
        let mut f = broken.clone();
        let soft = TxAsk {
            checksum: CsumAsk::Software,
            ..TxAsk::default()
        };
        assert_eq!(soft.prepare(all, &off, &mut f), (None, true));
        assert!(checksums_ok(&f, &m));
        assert_eq!(off.counts().csum_software, 1);
        // An ICMP echo (as a reply helper makes them): no L4 offload, only the timestamp.
        let mut icmp = vec![0u8; 14 + 20 + 8];
        icmp[12..14].copy_from_slice(&[0x08, 0x00]);
        icmp[14] = 0x45;
        icmp[16..18].copy_from_slice(&28u16.to_be_bytes());
        icmp[22] = 64;
        icmp[23] = 1;
        icmp[26..30].copy_from_slice(&[198, 18, 0, 1]);
        icmp[30..34].copy_from_slice(&[198, 18, 0, 2]);
        let (r, l4) = ask.prepare(all, &off, &mut icmp);
        assert_eq!(
            r,
            Some(TxRequest {
                timestamp: true,
                ..TxRequest::default()
            })
        );
        assert!(!l4);
        assert!(
            checksums_ok(&icmp, &parse(&icmp)),
            "the IPv4 header checksum is made"
        );
        assert_eq!(
            off.counts().csum_software,
            1,
            "not a fallback: ICMP has no offload"
        );
        // Keep: the bytes stay as they are.
        let mut f = broken.clone();
        assert_eq!(TxAsk::default().prepare(all, &off, &mut f), (None, false));
        assert_eq!(f, broken);
    }
}
