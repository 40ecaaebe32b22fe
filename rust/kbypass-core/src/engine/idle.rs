//! What a worker does when a poll round over its sockets found nothing: the latency modes.
//!
//! * [`Latency::Adaptive`] (the default): keep polling the rings for `spin` after the last
//!   packet, then sleep in `poll(2)` on the sockets' descriptors and the pipeline's wake-up
//!   descriptor, for at most `idle_wait`. A packet makes a socket readable and wakes the worker
//!   at once; `stop()` does the same through the wake-up descriptor. Traffic that keeps coming
//!   within `spin` (a request/response exchange, a stream) never pays a wake-up; an idle worker
//!   costs nothing but a wake-up every `idle_wait`.
//! * [`Latency::Busy`]: never sleep. Each socket gets `SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL` and
//!   `SO_BUSY_POLL_BUDGET` for the run (put back when the worker ends), so every empty receive
//!   asks the kernel to busy-poll the queue's NAPI context; where the kernel refuses them
//!   (before 5.11, no CAP_NET_ADMIN) the worker spins on the rings alone, and says so in its
//!   notes and its `busy_poll` statistic. One CPU per worker, always at 100 %.
//! * [`Latency::Sleep`]: `idle_spins` empty rounds, then one sleep of `idle_wait` (in `poll(2)` on
//!   the socket and the wake-up descriptor when the worker has one socket, else a plain sleep of
//!   at most 200 µs): the behaviour before the modes existed.
//!
//! A worker of a pipeline of several also sleeps on its doorbell (`handoff::Bell`): a worker
//! that hands it frames while it sleeps rings it, so a FORWARD to a sleeping worker goes out at
//! once, not after its `idle_wait` (in every mode that sleeps; the multi-socket `Sleep` mode's
//! short plain sleep becomes a `poll(2)` on the stop and doorbell descriptors for as long).
//!
//! None of this runs with the GIL (or any lock): a worker takes it only to call a handler.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use super::handoff::Handoff;
use crate::error::{Error, Result};
use crate::sys::event::{poll_for, EventFd};
use crate::xsk::{BusyPoll, XskSocket};

/// How a worker waits for packets when a poll over its sockets found none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Latency {
    /// Poll for [`super::PipelineConfig::spin`] after the last packet, then sleep in `poll(2)`
    /// on the sockets and the pipeline's stop descriptor (at most `idle_wait`): a packet or a
    /// stop wakes the worker at once.
    #[default]
    Adaptive,
    /// Never sleep: poll on, with the kernel's busy polling (`SO_PREFER_BUSY_POLL`,
    /// `SO_BUSY_POLL`, `SO_BUSY_POLL_BUDGET`) on the sockets where it accepts it.
    Busy,
    /// `idle_spins` empty polls, then a sleep of `idle_wait` (the behaviour before the modes).
    Sleep,
}

impl Latency {
    /// The mode's name, as [`std::str::FromStr`] takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Latency::Adaptive => "adaptive",
            Latency::Busy => "busy",
            Latency::Sleep => "sleep",
        }
    }
}

impl std::str::FromStr for Latency {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "adaptive" => Ok(Latency::Adaptive),
            "busy" => Ok(Latency::Busy),
            "sleep" => Ok(Latency::Sleep),
            o => Err(Error::invalid(format!(
                "latency={o:?}: use \"adaptive\" (spin briefly, then sleep until a packet), \
                 \"busy\" (never sleep) or \"sleep\" (fixed sleeps)"
            ))),
        }
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest adaptive spin [`super::PipelineConfig::validate`] accepts.
pub const MAX_SPIN: Duration = Duration::from_millis(100);

/// What one idle round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// Kept spinning.
    Spun,
    /// Slept (in `poll(2)` or a plain sleep).
    Slept,
}

/// A worker's idle policy and state (one per worker, on its thread).
pub(crate) struct Idle {
    latency: Latency,
    spin: Duration,
    idle_spins: u32,
    idle_wait: Duration,
    /// Sleep mode: empty rounds since the last packet or sleep.
    rounds: u32,
    /// Adaptive mode: when the sockets went idle (None: a packet came since the last sleep).
    since: Option<Instant>,
    /// The sockets' descriptors, then the wake-up descriptor, then the doorbell (if any).
    fds: Vec<libc::pollfd>,
    /// How many of `fds` are sockets.
    sockets: usize,
    /// Whether the last of `fds` is the worker's doorbell.
    bell: bool,
}

impl Idle {
    pub(crate) fn new(
        latency: Latency,
        spin: Duration,
        idle_spins: u32,
        idle_wait: Duration,
        sockets: &[RawFd],
        waker: &EventFd,
        bell: Option<RawFd>,
    ) -> Self {
        let fds = sockets
            .iter()
            .copied()
            .chain(std::iter::once(waker.raw()))
            .chain(bell)
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        Idle {
            latency,
            spin,
            idle_spins,
            idle_wait,
            rounds: 0,
            since: None,
            fds,
            sockets: sockets.len(),
            bell: bell.is_some(),
        }
    }

    /// A poll round received packets: the idle clock starts again.
    #[inline]
    pub(crate) fn active(&mut self) {
        self.rounds = 0;
        self.since = None;
    }

    /// A poll round over `sockets` found nothing: spin on, or sleep as the mode says.
    /// `handoff`: the worker's inboxes, whose doorbell it sleeps on (several workers).
    pub(crate) fn idle(
        &mut self,
        sockets: &mut [(usize, XskSocket)],
        handoff: Option<&Handoff>,
    ) -> Result<Waited> {
        match self.latency {
            Latency::Busy => {
                std::hint::spin_loop();
                Ok(Waited::Spun)
            }
            Latency::Sleep => {
                self.rounds += 1;
                if self.rounds < self.idle_spins {
                    return Ok(Waited::Spun);
                }
                self.rounds = 0;
                if sockets.len() == 1 {
                    self.sleep_in_poll(sockets, handoff, true)
                } else if self.bell {
                    self.sleep_in_poll(sockets, handoff, false)
                } else {
                    std::thread::sleep(self.idle_wait.min(Duration::from_micros(200)));
                    Ok(Waited::Slept)
                }
            }
            Latency::Adaptive => {
                let now = Instant::now();
                let since = *self.since.get_or_insert(now);
                if now.duration_since(since) < self.spin {
                    std::hint::spin_loop();
                    return Ok(Waited::Spun);
                }
                // `since` stays: an idle worker whose sleep times out sleeps again at once
                // (only packets, through `active`, start a new spin).
                self.sleep_in_poll(sockets, handoff, true)
            }
        }
    }

    /// Fill every FILL ring, then sleep until a socket has packets (`on_sockets`; else the
    /// sleep lasts at most 200 µs, the multi-socket `Sleep` mode), the pipeline stops, another
    /// worker hands this one frames (its doorbell), or `idle_wait` passes. Frames already
    /// handed over mean no sleep (`Spun`).
    fn sleep_in_poll(
        &mut self,
        sockets: &mut [(usize, XskSocket)],
        handoff: Option<&Handoff>,
        on_sockets: bool,
    ) -> Result<Waited> {
        for (_, s) in sockets.iter_mut() {
            s.refill();
        }
        let bell = handoff.filter(|_| self.bell);
        if bell.is_some_and(|h| !h.sleep_begins()) {
            return Ok(Waited::Spun);
        }
        for p in &mut self.fds {
            p.revents = 0;
        }
        let (fds, wait) = if on_sockets {
            (&mut self.fds[..], self.idle_wait)
        } else {
            let w = self.idle_wait.min(Duration::from_micros(200));
            (&mut self.fds[self.sockets..], w)
        };
        let r = poll_for(fds, wait);
        if let Some(h) = bell {
            let rung = self.fds.last().is_some_and(|p| p.revents != 0);
            h.sleep_ends(rung);
        }
        r?;
        Ok(Waited::Slept)
    }
}

/// The busy-poll settings a busy worker gives its sockets: the kernel's default busy-poll time
/// (20 µs per call) and a budget of one batch (at most NAPI's weight, 64: more needs
/// CAP_NET_ADMIN).
pub(crate) fn busy_poll_for(batch: usize) -> BusyPoll {
    BusyPoll {
        budget: batch.clamp(1, 64) as u32,
        ..BusyPoll::default()
    }
}
