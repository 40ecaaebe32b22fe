//! perftest's out-of-band exchange (`ib_write_bw` over TCP, port 18515), so a kbypass client
//! or server runs against rdma-core's perftest tools.
//!
//! One session, as perftest 4.5+ speaks it; in every step the client writes first and the
//! server reads first:
//! 1. the version string (16 bytes, NUL padded; the tools refuse a peer below 5.70);
//! 2. the cycle buffer (page size) and the cache line size, each a big-endian `i32`;
//! 3. the MTU as text: the `enum ibv_mtu` number, 2 bytes (`"3\0"`);
//! 4. the QP's key message three times (after the first, both sides connect their QP);
//! 5. the test runs; then one more key message (the server waits on it);
//! 6. the bandwidth report: size and iterations (`u64`), peak and average bandwidth and the
//!    message rate (`f64`), each sent alone, big-endian;
//! 7. a last key message, then `"done\0"` each way.
//!
//! The key message (with a GID, as `-x <gid index>` on RoCE needs) is 107 characters and a
//! NUL: `LID:OUT_READS:QPN:PSN:RKEY:VADDR:` in hex of 4, 4, 6, 6, 8, 16 digits, then the 16
//! GID bytes as `xx:` each, then the SRQ number as 8 hex digits and `:`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::perf::write_bandwidth;
use super::{CompletionQueue, Endpoint, Gid, MemoryRegion, PathParams, QueuePair};
use crate::error::{Error, Result};

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

/// One perftest TCP session (see the module documentation for the steps).
pub struct Session {
    stream: TcpStream,
    client: bool,
    /// The peer's version string.
    pub remote_version: String,
    /// The larger of both sides' cycle buffers (page sizes).
    pub cycle_buffer: u32,
    /// The peer's MTU (`enum ibv_mtu`).
    pub remote_mtu: i32,
}

impl Session {
    /// Client: connect to a perftest server (retrying until `timeout`: it may not listen yet)
    /// and negotiate; `mtu` is our active `enum ibv_mtu`.
    pub fn connect(addr: impl ToSocketAddrs, mtu: i32, timeout: Duration) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        let addrs: Vec<_> = addr
            .to_socket_addrs()
            .map_err(|e| io_err("resolve", e))?
            .collect();
        let stream = loop {
            match addrs.iter().find_map(|a| TcpStream::connect(a).ok()) {
                Some(s) => break s,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                None => {
                    return Err(Error::Timeout(format!(
                        "no perftest server at {addrs:?} within {timeout:?}: is it listening?"
                    )))
                }
            }
        };
        Self::negotiate(stream, true, mtu, timeout)
    }

    /// Server: accept one perftest client on `listener` and negotiate.
    pub fn accept(listener: &TcpListener, mtu: i32, timeout: Duration) -> Result<Self> {
        let stream = super::oob::accept_within(listener, timeout)?;
        Self::negotiate(stream, false, mtu, timeout)
    }

    fn negotiate(stream: TcpStream, client: bool, mtu: i32, timeout: Duration) -> Result<Self> {
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| io_err("setsockopt", e))?;
        let mut s = Session {
            stream,
            client,
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
        if self.client {
            self.stream
                .write_all(mine)
                .map_err(|e| io_err("write", e))?;
            self.stream
                .read_exact(theirs)
                .map_err(|e| io_err("read", e))?;
        } else {
            self.stream
                .read_exact(theirs)
                .map_err(|e| io_err("read", e))?;
            self.stream
                .write_all(mine)
                .map_err(|e| io_err("write", e))?;
        }
        Ok(())
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

/// Our keys for `qp`, exposing `mr` for the peer's writes.
fn local_keys(qp: &QueuePair, local: &Endpoint, mr: &MemoryRegion) -> Keys {
    Keys {
        lid: local.lid,
        out_reads: 1,
        qpn: qp.qp_num(),
        psn: local.psn,
        rkey: mr.rkey(),
        vaddr: mr.addr(),
        gid: local.gid,
        srqn: 0,
    }
}

/// Be the server of an `ib_write_bw` client: negotiate on `listener`, expose `mr` (remote
/// writable; at least the client's message size plus a page), bring `qp` (in INIT) to RTS
/// towards the client, wait for its test to end, and return the report it sends.
pub fn serve_write_bw(
    listener: &TcpListener,
    qp: &QueuePair,
    mr: &MemoryRegion,
    p: &PathParams,
    local: &Endpoint,
    timeout: Duration,
) -> Result<BwReport> {
    let mut s = Session::accept(listener, p.mtu, timeout)?;
    let mine = local_keys(qp, local, mr);
    let remote = s.keys(&mine)?;
    let mut path = *p;
    path.mtu = path.mtu.min(s.remote_mtu.max(1));
    qp.connect(&path, &remote.endpoint(), local.psn)?;
    s.keys(&mine)?;
    s.keys(&mine)?;
    s.keys(&mine)?; // the client's test runs before this one returns
    let theirs = s.reports(&BwReport::default())?;
    s.close(&mine)?;
    Ok(theirs)
}

/// Be the client of an `ib_write_bw` server at `addr`: negotiate, bring `qp` (in INIT) to RTS,
/// RDMA-write `iterations` messages of `size` bytes from `mr` into the server's buffer (128 in
/// flight, a completion every 100, as the tool does), send the report and close. Returns the
/// report sent (MB/s of 2^20 bytes, as the tool prints).
#[allow(clippy::too_many_arguments)]
pub fn client_write_bw(
    addr: impl ToSocketAddrs,
    qp: &QueuePair,
    cq: &CompletionQueue,
    mr: &MemoryRegion,
    p: &PathParams,
    local: &Endpoint,
    size: usize,
    iterations: u64,
    timeout: Duration,
) -> Result<BwReport> {
    let mut s = Session::connect(addr, p.mtu, timeout)?;
    let mine = local_keys(qp, local, mr);
    let remote = s.keys(&mine)?;
    let mut path = *p;
    path.mtu = path.mtu.min(s.remote_mtu.max(1));
    qp.connect(&path, &remote.endpoint(), local.psn)?;
    s.keys(&mine)?;
    s.keys(&mine)?;
    let depth = iterations.min(128);
    let bw = write_bandwidth(
        qp,
        cq,
        mr,
        remote.vaddr,
        remote.rkey,
        size,
        iterations,
        depth,
        depth.min(100),
    )?;
    s.keys(&mine)?;
    let mib = bw.bytes as f64 / bw.seconds / f64::from(1u32 << 20);
    let report = BwReport {
        size: size as u64,
        iters: iterations,
        bw_peak: mib,
        bw_avg: mib,
        msg_rate: iterations as f64 / bw.seconds / 1e6,
    };
    s.reports(&report)?;
    s.close(&mine)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys {
            lid: 0,
            out_reads: 0x10,
            qpn: 0x11,
            psn: 0xabcdef,
            rkey: 0x1234,
            vaddr: 0x5555_dead_b000,
            gid: Gid::from_hex("00000000000000000000ffffc612000f").unwrap(),
            srqn: 0,
        }
    }

    #[test]
    fn key_message_matches_perftest_format() {
        let m = key_message(&keys());
        let text = std::str::from_utf8(&m[..107]).unwrap();
        assert_eq!(
            text,
            "0000:0010:000011:abcdef:00001234:00005555deadb000:\
             00:00:00:00:00:00:00:00:00:00:ff:ff:c6:12:00:0f:00000000:"
        );
        assert_eq!(m[107], 0);
        assert_eq!(parse_key_message(&m).unwrap(), keys());
        assert!(parse_key_message(b"0000:0010:000011").is_err());
    }

    #[test]
    fn session_over_loopback_tcp() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let mut s = Session::accept(&l, 3, Duration::from_secs(5)).unwrap();
            let k = s.keys(&keys()).unwrap();
            let r = s.reports(&BwReport::default()).unwrap();
            assert_eq!(s.remote_version, PERFTEST_VERSION);
            s.close(&keys()).unwrap();
            (k, r)
        });
        let mut c = Session::connect(("127.0.0.1", port), 3, Duration::from_secs(5)).unwrap();
        assert_eq!(
            (c.remote_version.as_str(), c.remote_mtu),
            (PERFTEST_VERSION, 3)
        );
        let mut mine = keys();
        mine.qpn = 0x22;
        assert_eq!(c.keys(&mine).unwrap(), keys());
        let rep = BwReport {
            size: 65536,
            iters: 5000,
            bw_peak: 1.5,
            bw_avg: 1.25,
            msg_rate: 0.02,
        };
        assert_eq!(c.reports(&rep).unwrap(), BwReport::default());
        c.close(&mine).unwrap();
        let (k, r) = t.join().unwrap();
        assert_eq!((k, r), (mine, rep));
    }
}
