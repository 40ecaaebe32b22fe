//! perftest's out-of-band exchange (TCP, port 18515), so a kbypass client or server runs
//! against rdma-core's perftest tools: `ib_write_bw`, `ib_read_bw`, `ib_atomic_bw` and
//! `ib_send_bw` ([`Test`]), each as server ([`serve`], [`serve_send`]) or client ([`client`]).
//!
//! One session, as perftest 4.5+ speaks it; in every step the client writes first and the
//! server reads first:
//! 1. the version string (16 bytes, NUL padded; the tools refuse a peer below 5.70);
//! 2. the cycle buffer (page size) and the cache line size, each a big-endian `i32`;
//! 3. the MTU as text: the `enum ibv_mtu` number, 2 bytes (`"3\0"`);
//! 4. the QP's key message three times (after the first, both sides connect their QP);
//! 5. write, read and atomic: the client runs while the server waits on a fourth key
//!    message; then the bandwidth report: size and iterations (`u64`), peak and
//!    average bandwidth and the message rate (`f64`), each sent alone, big-endian (the
//!    server prints the client's numbers);
//!    send: the server posts its receives, a fourth key message says they are there, both
//!    sides run (the client sends, the server counts receives) and report nothing to each
//!    other: each prints its own numbers;
//! 6. a last key message, then `"done\0"` each way.
//!
//! `ib_send_bw -c UD` runs the same steps on UD QPs: each message is one packet (at most the
//! path MTU; perftest refuses a larger `-s`), each receive takes the 40-byte GRH in front of it
//! (perftest's `UD_ADDITION`), and the client sends through an address handle for the
//! server's GID with perftest's Q_Key ([`PERFTEST_QKEY`], also the default of
//! [`PathParams::qkey`](crate::rdma::PathParams::qkey), which a kbypass server's QP must keep).
//! Writes, reads and atomics are refused on UD.
//!
//! What differs between the tests besides that: the `out_reads` of the key message is 1 for
//! write and send and the device's limit of outstanding reads/atomics for read and atomic;
//! each side's QP serves as many as it announced (`max_dest_rd_atomic`) and initiates as many
//! as the peer announced (`max_rd_atomic`). Atomics are 8 bytes (fetch-and-add of 1 by
//! default, `ib_atomic_bw -A CMP_AND_SWAP` compares with 0 and swaps in 0).
//!
//! The key message (with a GID, as `-x <gid index>` on RoCE needs) is 107 characters and a
//! NUL: `LID:OUT_READS:QPN:PSN:RKEY:VADDR:` in hex of 4, 4, 6, 6, 8, 16 digits, then the 16
//! GID bytes as `xx:` each, then the SRQ number as 8 hex digits and `:`.

use std::io::Write;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::cancel::{connect_any, read_exact, Cancel};
use super::{Endpoint, Gid};
use crate::error::{Error, Result};

mod run;
pub use run::{client, out_reads, serve, serve_send, SendRun, Test, PERFTEST_QKEY};

/// The protocol version kbypass announces: the perftest release whose exchange this module
/// speaks (the tools refuse peers older than 5.70).
pub const PERFTEST_VERSION: &str = "6.06";
/// Bytes of the key message with a GID.
pub const KEY_MESSAGE_LEN: usize = 108;
const VERSION_LEN: usize = 16;

/// What one side tells the other about a QP (perftest's `struct pingpong_dest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys {
    /// LID (0 on RoCE).
    pub lid: u16,
    /// Outstanding RDMA reads the side accepts.
    pub out_reads: u32,
    /// QP number.
    pub qpn: u32,
    /// Initial PSN.
    pub psn: u32,
    /// rkey of the buffer the peer may write.
    pub rkey: u32,
    /// Its address.
    pub vaddr: u64,
    /// The port GID.
    pub gid: Gid,
    /// SRQ number (XRC/DC only; 0 otherwise).
    pub srqn: u32,
}

impl Keys {
    /// The endpoint to connect a QP to.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            qpn: self.qpn,
            psn: self.psn,
            gid: self.gid,
            lid: self.lid,
        }
    }
}

/// Encode `k` as perftest's key message with GID.
pub fn key_message(k: &Keys) -> [u8; KEY_MESSAGE_LEN] {
    let mut text = format!(
        "{:04x}:{:04x}:{:06x}:{:06x}:{:08x}:{:016x}:",
        k.lid,
        k.out_reads & 0xffff,
        k.qpn & 0xff_ffff,
        k.psn & 0xff_ffff,
        k.rkey,
        k.vaddr
    );
    for b in k.gid.0 {
        text.push_str(&format!("{b:02x}:"));
    }
    text.push_str(&format!("{:08x}:", k.srqn));
    let mut out = [0u8; KEY_MESSAGE_LEN];
    out[..text.len()].copy_from_slice(text.as_bytes());
    out
}

/// Decode a key message with GID.
pub fn parse_key_message(raw: &[u8]) -> Result<Keys> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let text = std::str::from_utf8(&raw[..end])
        .map_err(|_| Error::invalid("perftest key message is not ASCII"))?;
    let bad = || Error::invalid(format!("not a perftest key message with GID: {text:?}"));
    let f: Vec<&str> = text.split(':').collect();
    if f.len() != 24 || !f[23].is_empty() {
        return Err(bad());
    }
    let hex = |s: &str| u64::from_str_radix(s, 16).map_err(|_| bad());
    let mut gid = [0u8; 16];
    for (i, g) in gid.iter_mut().enumerate() {
        *g = u8::try_from(hex(f[6 + i])?).map_err(|_| bad())?;
    }
    let small = |s: &str| u32::try_from(hex(s)?).map_err(|_| bad());
    Ok(Keys {
        lid: u16::try_from(hex(f[0])?).map_err(|_| bad())?,
        out_reads: small(f[1])?,
        qpn: small(f[2])?,
        psn: small(f[3])?,
        rkey: small(f[4])?,
        vaddr: hex(f[5])?,
        gid: Gid(gid),
        srqn: small(f[22])?,
    })
}

/// A bandwidth report as the tools exchange it (in their units: MB/s are 2^20 bytes/s).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BwReport {
    /// Message size in bytes.
    pub size: u64,
    /// Messages sent.
    pub iters: u64,
    /// Peak bandwidth, MB/s.
    pub bw_peak: f64,
    /// Average bandwidth, MB/s.
    pub bw_avg: f64,
    /// Messages per second, in millions.
    pub msg_rate: f64,
}

fn io_err(what: &str, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Error::Timeout(format!(
            "perftest exchange: {what} timed out: is the peer alive?"
        )),
        _ => Error::os(
            what,
            e.raw_os_error().unwrap_or(libc::EIO),
            "the perftest peer closed the connection: see its output",
        ),
    }
}

/// One perftest TCP session (see the module documentation for the steps). Each of its
/// waits ends when nothing came for its timeout or when its [`Cancel`] says stop.
pub struct Session<'c> {
    stream: TcpStream,
    client: bool,
    timeout: Duration,
    cancel: &'c Cancel<'c>,
    /// The peer's version string.
    pub remote_version: String,
    /// The larger of both sides' cycle buffers (page sizes).
    pub cycle_buffer: u32,
    /// The peer's MTU (`enum ibv_mtu`).
    pub remote_mtu: i32,
}

impl<'c> Session<'c> {
    /// Client: connect to a perftest server (retrying until `timeout`: it may not listen yet)
    /// and negotiate; `mtu` is our active `enum ibv_mtu`.
    pub fn connect(
        addr: impl ToSocketAddrs,
        mtu: i32,
        timeout: Duration,
        cancel: &'c Cancel<'c>,
    ) -> Result<Self> {
        let addrs: Vec<_> = addr
            .to_socket_addrs()
            .map_err(|e| io_err("resolve", e))?
            .collect();
        let what = "connecting to the perftest server";
        let Some(stream) = connect_any(&addrs, timeout, cancel, what)? else {
            return Err(Error::Timeout(format!(
                "no perftest server at {addrs:?} within {timeout:?}: is it listening?"
            )));
        };
        Self::negotiate(stream, true, mtu, timeout, cancel)
    }

    /// Server: accept one perftest client on `listener` and negotiate.
    pub fn accept(
        listener: &TcpListener,
        mtu: i32,
        timeout: Duration,
        cancel: &'c Cancel<'c>,
    ) -> Result<Self> {
        let stream = super::oob::accept_within(listener, timeout, cancel)?;
        Self::negotiate(stream, false, mtu, timeout, cancel)
    }

    fn negotiate(
        stream: TcpStream,
        client: bool,
        mtu: i32,
        timeout: Duration,
        cancel: &'c Cancel<'c>,
    ) -> Result<Self> {
        let mut s = Session {
            stream,
            client,
            timeout,
            cancel,
            remote_version: String::new(),
            cycle_buffer: 0,
            remote_mtu: 0,
        };
        let mut version = [0u8; VERSION_LEN];
        version[..PERFTEST_VERSION.len()].copy_from_slice(PERFTEST_VERSION.as_bytes());
        let mut theirs = [0u8; VERSION_LEN];
        s.xchg(&version, &mut theirs)?;
        let end = theirs.iter().position(|&b| b == 0).unwrap_or(VERSION_LEN);
        s.remote_version = String::from_utf8_lossy(&theirs[..end]).into_owned();
        let v: f64 = s.remote_version.trim().parse().unwrap_or(0.0);
        if v < 5.70 {
            return Err(Error::Unsupported {
                what: format!("perftest peer version {:?}", s.remote_version),
                fix: "use perftest 5.70 or newer (the exchange changed before that)".into(),
            });
        }
        let page = crate::sys::mm::page_size() as u32;
        let mut four = [0u8; 4];
        s.xchg(&page.to_be_bytes(), &mut four)?;
        s.cycle_buffer = page.max(u32::from_be_bytes(four));
        s.xchg(&64u32.to_be_bytes(), &mut four)?; // cache line size
        let digit = u8::try_from(mtu).ok().filter(|m| (1..=5).contains(m));
        let digit = digit.ok_or_else(|| Error::invalid(format!("bad enum ibv_mtu {mtu}")))?;
        let mut two = [0u8; 2];
        s.xchg(&[b'0' + digit, 0], &mut two)?;
        s.remote_mtu = i32::from(two[0].wrapping_sub(b'0'));
        Ok(s)
    }

    /// One exchange: the client writes then reads, the server reads then writes.
    fn xchg(&mut self, mine: &[u8], theirs: &mut [u8]) -> Result<()> {
        let (t, c) = (self.timeout, self.cancel);
        if self.client {
            self.stream
                .write_all(mine)
                .map_err(|e| io_err("write", e))?;
            read_exact(&mut self.stream, theirs, t, c, "read", io_err)?;
        } else {
            read_exact(&mut self.stream, theirs, t, c, "read", io_err)?;
            self.stream
                .write_all(mine)
                .map_err(|e| io_err("write", e))?;
        }
        Ok(())
    }

    /// True when the peer has written something we have not read yet (without reading it):
    /// an `ib_send_bw` client's closing key message, sent once its sends completed.
    pub fn peer_has_spoken(&self) -> Result<bool> {
        self.stream
            .set_nonblocking(true)
            .map_err(|e| io_err("fcntl", e))?;
        let got = self.stream.peek(&mut [0u8; 1]);
        self.stream
            .set_nonblocking(false)
            .map_err(|e| io_err("fcntl", e))?;
        match got {
            Ok(n) => Ok(n > 0),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(io_err("peek", e)),
        }
    }

    /// Exchange key messages; returns the peer's.
    pub fn keys(&mut self, mine: &Keys) -> Result<Keys> {
        let mut theirs = [0u8; KEY_MESSAGE_LEN];
        self.xchg(&key_message(mine), &mut theirs)?;
        parse_key_message(&theirs)
    }

    /// Exchange bandwidth reports; returns the peer's.
    pub fn reports(&mut self, mine: &BwReport) -> Result<BwReport> {
        let mut b = [0u8; 8];
        let mut next = |v: u64, b: &mut [u8; 8]| -> Result<u64> {
            self.xchg(&v.to_be_bytes(), b)?;
            Ok(u64::from_be_bytes(*b))
        };
        Ok(BwReport {
            size: next(mine.size, &mut b)?,
            iters: next(mine.iters, &mut b)?,
            bw_peak: f64::from_bits(next(mine.bw_peak.to_bits(), &mut b)?),
            bw_avg: f64::from_bits(next(mine.bw_avg.to_bits(), &mut b)?),
            msg_rate: f64::from_bits(next(mine.msg_rate.to_bits(), &mut b)?),
        })
    }

    /// The closing key exchange and `"done"` (nobody reads it, and the peer may already have
    /// closed, so a failed write of it is no error).
    pub fn close(mut self, mine: &Keys) -> Result<()> {
        self.keys(mine)?;
        let _ = self.stream.write_all(b"done\0");
        Ok(())
    }
}

#[cfg(test)]
mod tests;
