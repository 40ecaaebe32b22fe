//! [`FaultPath`]: the injectors of both directions on two bridge ports, and their middlebox.

use std::time::{SystemTime, UNIX_EPOCH};

use super::injector::{FaultInjector, FaultRates, InjectorCounters};
use super::middlebox::{Middlebox, MiddleboxCounters, Timing};
use crate::error::{Error, Result};
use crate::sys::netns::NetnsGuard;
use crate::xdp::attach::AttachMode;
use crate::xdp::rules::Rule;
use crate::xsk::{BindMode, SocketConfig, Umem, UmemConfig, XskSocket};

/// How to build a [`FaultPath`]. Index 0 is the direction whose frames arrive on `ports[0]`
/// (and leave by `ports[1]`), index 1 the other way.
#[derive(Debug, Clone)]
pub struct PathOptions {
    /// Filter of each direction (empty: every frame).
    pub rules: [Vec<Rule>; 2],
    /// Probabilities of each direction.
    pub rates: [FaultRates; 2],
    /// Reorder and delay timing of each direction.
    pub timing: [Timing; 2],
    /// XDP attach mode of the injectors.
    pub mode: AttachMode,
    /// UMEM frames of each middlebox socket.
    pub frames: u32,
    /// Seed of the middlebox's choice of fault (None: from the clock).
    pub seed: Option<u64>,
}

impl Default for PathOptions {
    fn default() -> Self {
        PathOptions {
            rules: [Vec::new(), Vec::new()],
            rates: [FaultRates::default(); 2],
            timing: [Timing::default(); 2],
            mode: AttachMode::Auto,
            frames: 4096,
            seed: None,
        }
    }
}

/// Counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionCounters {
    /// The XDP program's.
    pub injector: InjectorCounters,
    /// The middlebox's.
    pub middlebox: MiddleboxCounters,
}

/// Fault injection between two ports (e.g. the two ports of a bridge in a namespace):
/// an injector on each port for the frames arriving there, and one middlebox thread that
/// sends the redirected frames out of the other port. Dropping it stops the middlebox, closes
/// its sockets, detaches the programs and closes the maps.
#[derive(Debug)]
pub struct FaultPath {
    netns: String,
    ports: [String; 2],
    middlebox: Option<Middlebox>,
    injectors: Option<[FaultInjector; 2]>,
}

impl FaultPath {
    /// Build it on `ports` inside network namespace `netns` (an `ip netns` name or a path;
    /// the calling thread comes back to its own namespace).
    pub fn new(netns: &str, ports: [&str; 2], opts: &PathOptions) -> Result<Self> {
        if ports[0] == ports[1] {
            return Err(Error::invalid(format!(
                "both ports are {:?}: give the two ports of the path",
                ports[0]
            )));
        }
        for t in &opts.timing {
            t.validate()?;
        }
        let _guard = NetnsGuard::enter(netns)?;
        let mut injectors = [
            FaultInjector::new(&opts.rules[0], opts.rates[0], 64)?,
            FaultInjector::new(&opts.rules[1], opts.rates[1], 64)?,
        ];
        for (inj, port) in injectors.iter_mut().zip(ports) {
            inj.attach(port, opts.mode)?;
        }
        let mut sockets = Vec::with_capacity(2);
        for (inj, port) in injectors.iter().zip(ports) {
            let umem = Umem::new(&UmemConfig {
                frames: opts.frames,
                frame_size: 4096,
                ..Default::default()
            })?;
            let cfg = SocketConfig {
                mode: BindMode::Auto,
                ..Default::default()
            };
            let sock = XskSocket::bind(&umem, port, 0, &cfg)?;
            inj.set_socket(0, sock.raw_fd())?;
            sockets.push(sock);
        }
        let sockets: [XskSocket; 2] = sockets
            .try_into()
            .map_err(|_| Error::State("two sockets expected".into()))?;
        let seed = opts.seed.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
        let middlebox = Middlebox::start(
            sockets,
            [injectors[0].counter_map(), injectors[1].counter_map()],
            opts.rates,
            opts.timing,
            seed,
        )?;
        Ok(FaultPath {
            netns: netns.to_string(),
            ports: ports.map(str::to_string),
            middlebox: Some(middlebox),
            injectors: Some(injectors),
        })
    }

    fn parts(&self, dir: usize) -> Result<(&FaultInjector, &Middlebox)> {
        if dir > 1 {
            return Err(Error::invalid(format!("direction {dir} is not 0 or 1")));
        }
        match (&self.injectors, &self.middlebox) {
            (Some(i), Some(m)) => Ok((&i[dir], m)),
            _ => Err(Error::State("the fault path is closed".into())),
        }
    }

    /// The namespace.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The ports (direction 0 arrives on the first).
    pub fn ports(&self) -> [&str; 2] {
        [&self.ports[0], &self.ports[1]]
    }

    /// Direction `dir`'s injector (its program id, attach mode, filter, rates).
    pub fn injector(&self, dir: usize) -> Result<&FaultInjector> {
        Ok(self.parts(dir)?.0)
    }

    /// Set direction `dir`'s probabilities.
    pub fn set_rates(&self, dir: usize, rates: FaultRates) -> Result<()> {
        let (inj, mb) = self.parts(dir)?;
        rates.validate()?;
        mb.set_rates(dir, &rates);
        inj.set_rates(rates)
    }

    /// Set direction `dir`'s filter.
    pub fn set_filter(&self, dir: usize, rules: &[Rule]) -> Result<()> {
        self.parts(dir)?.0.set_filter(rules)
    }

    /// Set direction `dir`'s timing.
    pub fn set_timing(&self, dir: usize, t: &Timing) -> Result<()> {
        self.parts(dir)?.1.set_timing(dir, t)
    }

    /// Direction `dir`'s timing.
    pub fn timing(&self, dir: usize) -> Result<Timing> {
        Ok(self.parts(dir)?.1.timing(dir))
    }

    /// Direction `dir`'s counters; an error if the middlebox thread failed.
    pub fn counters(&self, dir: usize) -> Result<DirectionCounters> {
        let (inj, mb) = self.parts(dir)?;
        if let Some(e) = mb.error() {
            return Err(Error::State(format!("the fault middlebox stopped: {e}")));
        }
        Ok(DirectionCounters {
            injector: inj.counters()?,
            middlebox: mb.counters(dir),
        })
    }

    /// Stop the middlebox, detach and close everything. Idempotent.
    pub fn close(&mut self) {
        if let Some(mut m) = self.middlebox.take() {
            m.stop();
        }
        if let Some(inj) = self.injectors.take() {
            // Inside the namespace, so a netlink-attached program (kernels without bpf_link)
            // is removed from the right interface; a vanished namespace took it with it.
            let _guard = NetnsGuard::enter(&self.netns).ok();
            drop(inj);
        }
    }

    /// Whether [`FaultPath::close`] ran.
    pub fn closed(&self) -> bool {
        self.injectors.is_none()
    }
}

impl Drop for FaultPath {
    fn drop(&mut self) {
        self.close();
    }
}
