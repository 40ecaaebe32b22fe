//! Out-of-band connection setup over TCP, compatible with rdma-core's `ibv_rc_pingpong`
//! (and `ibv_uc_pingpong`): the client sends `"LLLL:QQQQQQ:PPPPPP:GGGG…"` (LID, QPN and PSN in
//! hex, then the GID as 32 hex digits, NUL-terminated, 52 bytes), the server connects its QP,
//! answers with its own message, and the client ends with `"done\0"`.

use std::io::Write;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::cancel::{connect_any, read_exact, Cancel, CANCEL_EVERY};
use super::{Endpoint, Gid};
use crate::error::{Error, Result};

/// The port `ibv_rc_pingpong` and perftest listen on by default.
pub const PINGPONG_PORT: u16 = 18515;
/// Bytes of one endpoint message, NUL included.
pub const PINGPONG_MESSAGE_LEN: usize = 52;
const DONE: &[u8; 5] = b"done\0";

/// Encode `e` the way `ibv_rc_pingpong` does.
pub fn pingpong_message(e: &Endpoint) -> [u8; PINGPONG_MESSAGE_LEN] {
    let text = format!(
        "{:04x}:{:06x}:{:06x}:{}",
        e.lid,
        e.qpn & 0xff_ffff,
        e.psn & 0xff_ffff,
        e.gid.to_hex()
    );
    let mut out = [0u8; PINGPONG_MESSAGE_LEN];
    out[..text.len()].copy_from_slice(text.as_bytes());
    out
}

/// Decode an `ibv_rc_pingpong` endpoint message.
pub fn parse_pingpong_message(raw: &[u8]) -> Result<Endpoint> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let text = std::str::from_utf8(&raw[..end])
        .map_err(|_| Error::invalid("pingpong message is not ASCII"))?;
    let bad = || Error::invalid(format!("not a pingpong endpoint message: {text:?}"));
    let parts: Vec<&str> = text.split(':').collect();
    let [lid, qpn, psn, gid] = parts.as_slice() else {
        return Err(bad());
    };
    let hex = |s: &str, digits: usize| {
        if s.len() == digits {
            u32::from_str_radix(s, 16).map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    Ok(Endpoint {
        lid: u16::try_from(hex(lid, 4)?).map_err(|_| bad())?,
        qpn: hex(qpn, 6)?,
        psn: hex(psn, 6)?,
        gid: Gid::from_hex(gid)?,
    })
}

/// A registered buffer a peer may access remotely (the `rkey`, address and length of an MR).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteBuffer {
    /// Virtual address of the first byte, as the peer registered it.
    pub addr: u64,
    /// Remote key of the memory region.
    pub rkey: u32,
    /// Bytes the peer may access from `addr`.
    pub length: u64,
}

/// Bytes of kbypass's own endpoint record ([`endpoint_bytes`]).
pub const ENDPOINT_BYTES: usize = 52;
const ENDPOINT_MAGIC: &[u8; 4] = b"KBE1";

/// A fixed 52-byte, big-endian record of an endpoint and the buffer it exposes, for any
/// out-of-band channel (a file, a socket, a key-value store): `"KBE1"`, QPN, PSN, LID, 2 zero
/// bytes, the 16-byte GID, rkey, address, length.
pub fn endpoint_bytes(e: &Endpoint, buf: &RemoteBuffer) -> [u8; ENDPOINT_BYTES] {
    let mut out = [0u8; ENDPOINT_BYTES];
    out[0..4].copy_from_slice(ENDPOINT_MAGIC);
    out[4..8].copy_from_slice(&e.qpn.to_be_bytes());
    out[8..12].copy_from_slice(&e.psn.to_be_bytes());
    out[12..14].copy_from_slice(&e.lid.to_be_bytes());
    out[16..32].copy_from_slice(&e.gid.0);
    out[32..36].copy_from_slice(&buf.rkey.to_be_bytes());
    out[36..44].copy_from_slice(&buf.addr.to_be_bytes());
    out[44..52].copy_from_slice(&buf.length.to_be_bytes());
    out
}

/// Decode an [`endpoint_bytes`] record.
pub fn parse_endpoint_bytes(raw: &[u8]) -> Result<(Endpoint, RemoteBuffer)> {
    if raw.len() != ENDPOINT_BYTES || &raw[0..4] != ENDPOINT_MAGIC {
        return Err(Error::invalid(format!(
            "not a kbypass endpoint record ({} bytes): pass exactly what to_bytes() returned",
            raw.len()
        )));
    }
    let u32_at = |i: usize| u32::from_be_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
    let u64_at = |i: usize| (u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4));
    let mut gid = [0u8; 16];
    gid.copy_from_slice(&raw[16..32]);
    Ok((
        Endpoint {
            qpn: u32_at(4),
            psn: u32_at(8),
            lid: u16::from_be_bytes([raw[12], raw[13]]),
            gid: Gid(gid),
        },
        RemoteBuffer {
            rkey: u32_at(32),
            addr: u64_at(36),
            length: u64_at(44),
        },
    ))
}

fn io_err(what: &str, e: std::io::Error) -> Error {
    Error::os(what, e.raw_os_error().unwrap_or(libc::EIO), "")
}

/// Accept one connection on `listener` within `timeout` (a blocking accept would wait forever
/// for a peer that never comes), or until `cancel` says stop; the stream is returned in
/// blocking mode.
pub fn accept_within(
    listener: &TcpListener,
    timeout: Duration,
    cancel: &Cancel<'_>,
) -> Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    listener
        .set_nonblocking(true)
        .map_err(|e| io_err("set_nonblocking", e))?;
    let got = loop {
        match listener.accept() {
            Ok((s, _)) => break Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    break Err(Error::Timeout(format!(
                        "no peer connected to {:?} within {timeout:?}: start the client",
                        listener.local_addr().ok()
                    )));
                }
                if let Err(e) = cancel.check("waiting for a peer to connect") {
                    break Err(e);
                }
                std::thread::sleep(Duration::from_millis(20).min(CANCEL_EVERY));
            }
            Err(e) => break Err(io_err("accept", e)),
        }
    };
    listener
        .set_nonblocking(false)
        .map_err(|e| io_err("set_nonblocking", e))?;
    let s = got?;
    s.set_nonblocking(false)
        .map_err(|e| io_err("set_nonblocking", e))?;
    Ok(s)
}

/// Server side: accept one peer on `listener`, read its endpoint, call `connect` with it
/// (bring the local QP to RTS before answering, as rdma-core does), answer with `local`, and
/// wait for the peer's "done". Returns the peer's endpoint. Every wait ends at `timeout` or
/// when `cancel` says stop ([`Error::Interrupted`]).
pub fn pingpong_accept(
    listener: &TcpListener,
    local: &Endpoint,
    timeout: Duration,
    cancel: &Cancel<'_>,
    connect: impl FnOnce(&Endpoint) -> Result<()>,
) -> Result<Endpoint> {
    let mut s = accept_within(listener, timeout, cancel)?;
    let mut msg = [0u8; PINGPONG_MESSAGE_LEN];
    let what = "read the peer's endpoint";
    read_exact(&mut s, &mut msg, timeout, cancel, what, io_err)?;
    let remote = parse_pingpong_message(&msg)?;
    connect(&remote)?;
    s.write_all(&pingpong_message(local))
        .map_err(|e| io_err("send our endpoint", e))?;
    let mut done = [0u8; 5];
    read_exact(&mut s, &mut done, timeout, cancel, "read \"done\"", io_err)?;
    if &done != DONE {
        return Err(Error::invalid(format!(
            "expected \"done\" from the peer, got {done:?}"
        )));
    }
    Ok(remote)
}

/// Client side: connect to `addr` (retrying until `timeout`, since the server may not listen
/// yet), send `local`, read the server's endpoint, say "done". Returns the server's endpoint.
/// Every wait ends at `timeout` or when `cancel` says stop ([`Error::Interrupted`]).
pub fn pingpong_connect(
    addr: impl ToSocketAddrs,
    local: &Endpoint,
    timeout: Duration,
    cancel: &Cancel<'_>,
) -> Result<Endpoint> {
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| io_err("resolve", e))?
        .collect();
    let Some(mut s) = connect_any(&addrs, timeout, cancel, "connecting to the pingpong server")?
    else {
        return Err(Error::Timeout(format!(
            "no pingpong server at {addrs:?} within {timeout:?}: is it listening?"
        )));
    };
    s.write_all(&pingpong_message(local))
        .map_err(|e| io_err("send our endpoint", e))?;
    let mut msg = [0u8; PINGPONG_MESSAGE_LEN];
    let what = "read the server's endpoint";
    read_exact(&mut s, &mut msg, timeout, cancel, what, io_err)?;
    let remote = parse_pingpong_message(&msg)?;
    s.write_all(DONE).map_err(|e| io_err("send \"done\"", e))?;
    Ok(remote)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trip_matches_rdma_core_format() {
        let e = Endpoint {
            lid: 0,
            qpn: 0x11,
            psn: 0x58967a,
            gid: Gid::from_hex("00000000000000000000ffffc612000f").unwrap(),
        };
        let m = pingpong_message(&e);
        assert_eq!(
            &m[..51],
            b"0000:000011:58967a:00000000000000000000ffffc612000f"
        );
        assert_eq!(m[51], 0);
        assert_eq!(parse_pingpong_message(&m).unwrap(), e);
        assert!(parse_pingpong_message(b"0000:11:58967a:00").is_err());
        assert!(parse_pingpong_message(b"garbage").is_err());
    }

    #[test]
    fn endpoint_record_round_trip() {
        let e = Endpoint {
            lid: 0x1234,
            qpn: 0xab_cdef,
            psn: 0x12_3456,
            gid: Gid::from_hex("00000000000000000000ffffc612000f").unwrap(),
        };
        let b = RemoteBuffer {
            addr: 0x7f00_1234_5678,
            rkey: 0xdead_beef,
            length: 1 << 33,
        };
        let raw = endpoint_bytes(&e, &b);
        assert_eq!(&raw[..4], b"KBE1");
        assert_eq!(&raw[4..8], &[0, 0xab, 0xcd, 0xef]);
        assert_eq!(parse_endpoint_bytes(&raw).unwrap(), (e, b));
        assert!(parse_endpoint_bytes(&raw[..51]).is_err());
        let mut bad = raw;
        bad[0] = b'X';
        assert!(parse_endpoint_bytes(&bad).is_err());
    }

    #[test]
    fn accept_times_out_without_a_peer() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let t = Instant::now();
        let e = accept_within(&l, Duration::from_millis(100), &Cancel::never()).unwrap_err();
        assert!(matches!(e, Error::Timeout(_)), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn accept_stops_when_cancelled() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let t = Instant::now();
        let ask = || t.elapsed() > Duration::from_millis(200);
        let e = accept_within(&l, Duration::from_secs(30), &Cancel::new(&ask)).unwrap_err();
        assert!(matches!(e, Error::Interrupted(_)), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        // The listener is still usable (and blocking again) after the interrupted accept.
        let port = l.local_addr().unwrap().port();
        let _c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        accept_within(&l, Duration::from_secs(5), &Cancel::never()).unwrap();
    }

    #[test]
    fn exchange_over_loopback_tcp() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let gid = Gid::from_hex("fe800000000000000000000000000001").unwrap();
        let server_ep = Endpoint {
            lid: 1,
            qpn: 0x123,
            psn: 0x456,
            gid,
        };
        let client_ep = Endpoint {
            lid: 2,
            qpn: 0xabc,
            psn: 0xdef,
            gid,
        };
        let t = std::thread::spawn(move || {
            let mut seen = None;
            let never = Cancel::never();
            let r = pingpong_accept(&l, &server_ep, Duration::from_secs(5), &never, |e| {
                seen = Some(*e);
                Ok(())
            });
            (r.unwrap(), seen.unwrap())
        });
        let never = Cancel::never();
        let got = pingpong_connect(
            ("127.0.0.1", port),
            &client_ep,
            Duration::from_secs(5),
            &never,
        )
        .unwrap();
        assert_eq!(got, server_ep);
        let (remote, seen) = t.join().unwrap();
        assert_eq!((remote, seen), (client_ep, client_ep));
    }
}
