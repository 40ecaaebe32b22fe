//! Stopping a long RDMA call early: the out-of-band exchanges (TCP accept, connect, reads),
//! the CQ loops of the measurements and perftest runs take a [`Cancel`], a question the
//! caller answers ("stop now?"), asked at most every [`CANCEL_EVERY`] by each waiting loop;
//! the binding answers it by checking Python's signals, so Ctrl-C ends them promptly. Waits
//! on sockets are sliced into [`CANCEL_EVERY`]-long waits to ask it in between.

use std::cell::Cell;
use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How often a waiting loop asks its [`Cancel`] (and how long one socket wait lasts).
pub const CANCEL_EVERY: Duration = Duration::from_millis(50);

/// A caller's "stop now?", asked at most every [`CANCEL_EVERY`]; once it said yes, every
/// later [`Cancel::check`] fails too without asking again.
pub struct Cancel<'a> {
    ask: Option<&'a dyn Fn() -> bool>,
    next: Cell<Option<Instant>>,
    fired: Cell<bool>,
}

impl<'a> Cancel<'a> {
    /// A call nobody cancels (it still ends at its timeout).
    pub fn never() -> Cancel<'static> {
        Cancel {
            ask: None,
            next: Cell::new(None),
            fired: Cell::new(false),
        }
    }

    /// Cancel when `ask` returns true (it runs on the calling thread, between waits).
    pub fn new(ask: &'a dyn Fn() -> bool) -> Self {
        Cancel {
            ask: Some(ask),
            next: Cell::new(None),
            fired: Cell::new(false),
        }
    }

    /// Whether the caller asked to stop (asks it when [`CANCEL_EVERY`] passed since last).
    pub fn cancelled(&self) -> bool {
        if self.fired.get() {
            return true;
        }
        let Some(ask) = self.ask else {
            return false;
        };
        let now = Instant::now();
        if self.next.get().is_some_and(|n| now < n) {
            return false;
        }
        self.next.set(Some(now + CANCEL_EVERY));
        let stop = ask();
        self.fired.set(stop);
        stop
    }

    /// [`Error::Interrupted`] naming `what` when the caller asked to stop.
    pub fn check(&self, what: &str) -> Result<()> {
        if self.cancelled() {
            return Err(Error::Interrupted(format!("{what}: interrupted")));
        }
        Ok(())
    }
}

/// `read_exact` on a blocking stream, in [`CANCEL_EVERY`] slices: fails with
/// [`Error::Timeout`] when no byte came for `idle`, [`Error::Interrupted`] when cancelled.
/// Other I/O errors go through `io_err`.
pub fn read_exact(
    stream: &mut TcpStream,
    buf: &mut [u8],
    idle: Duration,
    cancel: &Cancel<'_>,
    what: &str,
    io_err: impl Fn(&str, std::io::Error) -> Error,
) -> Result<()> {
    stream
        .set_read_timeout(Some(CANCEL_EVERY.min(idle).max(Duration::from_millis(1))))
        .map_err(|e| io_err("setsockopt", e))?;
    let mut got = 0;
    let mut progress = Instant::now();
    while got < buf.len() {
        match stream.read(&mut buf[got..]) {
            Ok(0) => return Err(io_err(what, std::io::Error::from(ErrorKind::UnexpectedEof))),
            Ok(n) => {
                got += n;
                progress = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(io_err(what, e)),
        }
        if got < buf.len() {
            cancel.check(what)?;
            if progress.elapsed() >= idle {
                return Err(Error::Timeout(format!(
                    "{what}: nothing came for {idle:?}: is the peer alive?"
                )));
            }
        }
    }
    Ok(())
}

/// Connect to the first of `addrs` that answers, retrying (every 50 ms, each attempt at
/// most [`CANCEL_EVERY`] × 4) until `timeout`, since a server may not listen yet; `None`
/// at the timeout, [`Error::Interrupted`] when cancelled.
pub fn connect_any(
    addrs: &[SocketAddr],
    timeout: Duration,
    cancel: &Cancel<'_>,
    what: &str,
) -> Result<Option<TcpStream>> {
    let deadline = Instant::now() + timeout;
    loop {
        for a in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = left.min(CANCEL_EVERY * 4).max(Duration::from_millis(1));
            if let Ok(s) = TcpStream::connect_timeout(a, attempt) {
                return Ok(Some(s));
            }
            cancel.check(what)?;
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(CANCEL_EVERY.min(deadline.saturating_duration_since(Instant::now())));
        cancel.check(what)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn asks_at_most_every_period_and_stays_cancelled() {
        let asked = Cell::new(0);
        let ask = || {
            asked.set(asked.get() + 1);
            asked.get() >= 2
        };
        let c = Cancel::new(&ask);
        assert!(c.check("x").is_ok());
        assert!(c.check("x").is_ok(), "asked again within the period");
        assert_eq!(asked.get(), 1);
        std::thread::sleep(CANCEL_EVERY);
        let e = c.check("x").unwrap_err();
        assert!(matches!(e, Error::Interrupted(_)), "{e}");
        assert!(c.cancelled());
        assert_eq!(asked.get(), 2);
        assert!(!Cancel::never().cancelled());
    }

    #[test]
    fn a_read_without_data_stops_when_cancelled() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let _peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let start = Instant::now();
        let ask = || start.elapsed() > Duration::from_millis(200);
        let c = Cancel::new(&ask);
        let io = |w: &str, e: std::io::Error| Error::os(w, e.raw_os_error().unwrap_or(5), "");
        let e = read_exact(&mut s, &mut [0u8; 4], Duration::from_secs(30), &c, "r", io);
        assert!(matches!(e, Err(Error::Interrupted(_))), "{e:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
        let never = Cancel::never();
        let e = read_exact(
            &mut s,
            &mut [0u8; 4],
            Duration::from_millis(100),
            &never,
            "r",
            io,
        );
        assert!(matches!(e, Err(Error::Timeout(_))), "{e:?}");
    }
}
