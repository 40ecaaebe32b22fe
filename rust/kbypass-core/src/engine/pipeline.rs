//! A pipeline: the worker threads of one port and their whole life cycle.
//!
//! [`PipelineConfig::validate`] checks what can be checked without a port (batch size, default
//! verdict, idle wait, worker groups' shape) and [`Pipeline::new`] the rest against the port
//! (socket indexes, CPUs per worker), so a bad argument is refused once, here, before anything
//! starts. [`Pipeline::start`] takes the sockets out of the port (all of them or none) and
//! starts one worker per group; [`Pipeline::stop`] asks them to end after their batch;
//! [`Pipeline::join`] waits for them and puts every socket back, reporting the workers' errors
//! and any socket the port refused; dropping a pipeline joins it. KEEP frames wait in a
//! [`KeptQueue`] that [`Pipeline::kept`] drains.
//!
//! Joining from one of the pipeline's own workers would wait for itself: [`Pipeline::on_worker`]
//! tells a handler apart, and [`Pipeline::join`] refuses there.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::handoff::{self, Inboxes};
use super::idle::{Latency, MAX_SPIN};
use super::kept::{Kept, KeptQueue};
use super::worker::{self, on_worker_of, WorkerConfig, WorkerExit};
use super::{valid_verdict, BatchHandler, OnError, WorkerStats, DROP};
use crate::error::{Error, Result};
use crate::sys::event::EventFd;
use crate::xsk::{FrameAccount, SharedPort, Umem};

/// Which sockets each worker runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Workers {
    /// One worker per socket.
    #[default]
    PerSocket,
    /// This many workers (1..=sockets), the sockets dealt round-robin: worker `w` gets sockets
    /// `w, w + n, w + 2n, …`.
    Count(usize),
    /// Explicit groups of socket indexes, each socket in exactly one group (a FORWARD to a
    /// socket of the worker's own group moves only a descriptor; to another group's, the
    /// frame goes through that worker's inbox).
    Groups(Vec<Vec<usize>>),
}

/// Where each worker runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Cpus {
    /// Not pinned.
    #[default]
    Unpinned,
    /// Pinned where [`crate::cpu::worker_cpu`] says for the queue of the worker's first socket
    /// (the NIC's node, away from the queue's IRQ); unpinned where it cannot tell (e.g. the
    /// interface is in another network namespace's /sys).
    Auto,
    /// One entry per worker: a CPU, or None for "not pinned".
    List(Vec<Option<usize>>),
}

/// How a pipeline runs.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Descriptors per batch (1..=4096).
    pub batch: usize,
    /// Which sockets each worker runs.
    pub workers: Workers,
    /// Where the workers run.
    pub cpus: Cpus,
    /// The verdict every frame starts with.
    pub default_verdict: u8,
    /// What a failed handler means for its batch (or packet).
    pub on_error: OnError,
    /// How long one idle sleep lasts at most, in (0, 1 s]. A worker sleeping in `poll(2)`
    /// ([`Latency::Adaptive`], or [`Latency::Sleep`] on one socket) wakes at once on a packet
    /// and on [`Pipeline::stop`]; a plain sleep ([`Latency::Sleep`] over several sockets) lasts
    /// at most 200 µs.
    pub idle_wait: Duration,
    /// [`Latency::Sleep`]: empty polls over a worker's sockets before it sleeps.
    pub idle_spins: u32,
    /// How workers wait when their sockets are idle ([`Latency`]).
    pub latency: Latency,
    /// [`Latency::Adaptive`]: how long a worker keeps polling after its last packet before it
    /// sleeps, in [0, 100 ms].
    pub spin: Duration,
    /// Frames each worker's inbox holds: FORWARDs to its sockets from other workers waiting
    /// for it (a power of two, 2..=1048576; used with several workers).
    pub inbox: usize,
}

/// The default [`PipelineConfig::spin`]: longer than a request/response round trip on a local
/// network (tens of µs), so a worker answering one never pays a wake-up, and short enough that
/// sparse traffic costs little CPU.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(100);

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch: 64,
            workers: Workers::PerSocket,
            cpus: Cpus::Unpinned,
            default_verdict: DROP,
            on_error: OnError::Drop,
            idle_wait: Duration::from_millis(1),
            idle_spins: 512,
            latency: Latency::Adaptive,
            spin: DEFAULT_SPIN,
            inbox: 4096,
        }
    }
}

impl PipelineConfig {
    /// Check everything that does not need the port; every error says what to give instead.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 || self.batch > 4096 {
            return Err(Error::invalid(format!(
                "batch={} must be 1..=4096",
                self.batch
            )));
        }
        if !valid_verdict(self.default_verdict) {
            return Err(Error::invalid(format!(
                "default verdict {} is not a verdict: use DROP, TX, FORWARD or KEEP",
                self.default_verdict
            )));
        }
        if self.idle_wait.is_zero() || self.idle_wait > Duration::from_secs(1) {
            return Err(Error::invalid("idle_wait must be in (0, 1] seconds"));
        }
        if self.spin > MAX_SPIN {
            return Err(Error::invalid(format!(
                "spin={:?} is longer than {MAX_SPIN:?}: give a spin in [0, 0.1] seconds (or \
                 latency=\"busy\" to never sleep)",
                self.spin
            )));
        }
        if !self.inbox.is_power_of_two() || !(2..=1 << 20).contains(&self.inbox) {
            return Err(Error::invalid(format!(
                "inbox={} must be a power of two in 2..=1048576, e.g. 4096",
                self.inbox
            )));
        }
        match &self.workers {
            Workers::Count(0) => Err(Error::invalid(
                "workers=0: give at least one worker (or groups of socket indexes)",
            )),
            Workers::Groups(g) if g.is_empty() => Err(Error::invalid(
                "workers=[]: give at least one group of socket indexes",
            )),
            Workers::Groups(g) if g.iter().any(Vec::is_empty) => Err(Error::invalid(
                "a worker group is empty: give each worker at least one socket index",
            )),
            _ => Ok(()),
        }
    }

    /// The socket groups for a port with `sockets` sockets.
    fn groups(&self, sockets: usize) -> Result<Vec<Vec<usize>>> {
        match &self.workers {
            Workers::PerSocket => Ok((0..sockets).map(|i| vec![i]).collect()),
            &Workers::Count(n) => {
                if n > sockets {
                    return Err(Error::invalid(format!(
                        "workers={n}: give 1..{sockets} (one socket per queue)"
                    )));
                }
                Ok((0..n).map(|w| (w..sockets).step_by(n).collect()).collect())
            }
            Workers::Groups(groups) => {
                // Every socket in exactly one group: a socket left in the port beside running
                // workers could release a frame of theirs (a UMEM's frames name no owner).
                let mut seen = vec![false; sockets];
                for &i in groups.iter().flatten() {
                    if i >= sockets || std::mem::replace(&mut seen[i], true) {
                        return Err(Error::invalid(format!(
                            "workers={groups:?}: socket indexes must be 0..{sockets}, each in one group"
                        )));
                    }
                }
                if let Some(i) = seen.iter().position(|&s| !s) {
                    return Err(Error::invalid(format!(
                        "workers={groups:?}: socket {i} is in no group; give every socket 0..{sockets} a group (open the port on fewer queues to leave one out)"
                    )));
                }
                Ok(groups.clone())
            }
        }
    }

    /// One CPU (or None) per group.
    fn cpus(
        &self,
        ifname: &str,
        queues: &[u32],
        groups: &[Vec<usize>],
    ) -> Result<Vec<Option<usize>>> {
        match &self.cpus {
            Cpus::Unpinned => Ok(vec![None; groups.len()]),
            Cpus::List(c) if c.len() != groups.len() => Err(Error::invalid(format!(
                "cpus has {} entries for {} workers: give one CPU (or None) per worker",
                c.len(),
                groups.len()
            ))),
            Cpus::List(c) => Ok(c.clone()),
            Cpus::Auto => Ok(groups
                .iter()
                .map(|g| crate::cpu::worker_cpu(ifname, queues[g[0]] as usize).ok())
                .collect()),
        }
    }
}

struct Running {
    handles: Vec<JoinHandle<WorkerExit>>,
    started: Instant,
}

#[derive(Default)]
struct State {
    running: Option<Running>,
    /// How long the last run lasted.
    last_run: Option<Duration>,
}

/// The workers of one port (see the [module docs](self)).
pub struct Pipeline {
    port: Arc<SharedPort>,
    umem: Weak<Umem>,
    cfg: PipelineConfig,
    groups: Vec<Vec<usize>>,
    cpus: Vec<Option<usize>>,
    queues: Vec<u32>,
    stop: Arc<AtomicBool>,
    total: Arc<AtomicU64>,
    stats: Vec<Arc<WorkerStats>>,
    kept: Arc<KeptQueue>,
    /// Made readable by [`Pipeline::stop`]: wakes workers sleeping in poll(2).
    waker: Arc<EventFd>,
    /// The workers' inboxes of the current (or last) run, for what is left in them at join.
    inboxes: Mutex<Option<Inboxes>>,
    /// Never held across a join or a wait: every holder only reads or swaps it.
    state: Mutex<State>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("groups", &self.groups)
            .field("cpus", &self.cpus)
            .field("running", &self.running())
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Workers for `port`'s sockets as `cfg` says (checked here, against the port).
    pub fn new(port: Arc<SharedPort>, cfg: PipelineConfig) -> Result<Self> {
        cfg.validate()?;
        let (umem, queues, ifname) = {
            let g = port.lock();
            let p = g
                .as_ref()
                .ok_or_else(|| Error::State("the port is closed: open a new one".into()))?;
            (
                Arc::downgrade(p.umem()),
                p.queues().to_vec(),
                p.ifname().to_string(),
            )
        };
        let groups = cfg.groups(queues.len())?;
        let cpus = cfg.cpus(&ifname, &queues, &groups)?;
        Ok(Pipeline {
            stats: groups.iter().map(|_| Arc::default()).collect(),
            port,
            umem,
            cfg,
            groups,
            cpus,
            queues,
            stop: Arc::default(),
            total: Arc::default(),
            kept: Arc::default(),
            waker: Arc::new(EventFd::new()?),
            inboxes: Mutex::default(),
            state: Mutex::default(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The configuration.
    pub fn config(&self) -> &PipelineConfig {
        &self.cfg
    }

    /// The port.
    pub fn port(&self) -> &Arc<SharedPort> {
        &self.port
    }

    /// Socket indexes per worker.
    pub fn groups(&self) -> &[Vec<usize>] {
        &self.groups
    }

    /// CPU per worker (None: not pinned).
    pub fn cpus(&self) -> &[Option<usize>] {
        &self.cpus
    }

    /// Queue id per socket index.
    pub fn queues(&self) -> &[u32] {
        &self.queues
    }

    /// Live counters, one per worker.
    pub fn stats(&self) -> &[Arc<WorkerStats>] {
        &self.stats
    }

    /// Start one worker per group, each with its handler (`handlers`, one per group, in
    /// order); `limit` stops them all once that many packets arrived in total. The sockets are
    /// taken from the port, all or none. An error if the pipeline runs, the port is closed, a
    /// socket is in use (another pipeline), or a thread cannot be started (then the workers
    /// already started are stopped and every socket goes back).
    pub fn start(&self, handlers: Vec<Box<dyn BatchHandler>>, limit: Option<u64>) -> Result<()> {
        if limit == Some(0) {
            return Err(Error::invalid("packets must be at least 1"));
        }
        if handlers.len() != self.groups.len() {
            return Err(Error::invalid(format!(
                "{} handlers for {} workers: give one per worker",
                handlers.len(),
                self.groups.len()
            )));
        }
        let mut st = self.state();
        if st.running.is_some() {
            return Err(Error::State(
                "the pipeline is already running: stop() it first".into(),
            ));
        }
        let taken = {
            let mut g = self.port.lock();
            let port = g
                .as_mut()
                .ok_or_else(|| Error::State("the port is closed: open a new one".into()))?;
            port.take_sockets(&self.groups)?
        };
        self.stop.store(false, Ordering::Release);
        self.waker.drain();
        self.total.store(0, Ordering::Release);
        // Several workers: an inbox each, for FORWARDs to another worker's sockets.
        let inboxes = if self.groups.len() > 1 {
            match Inboxes::new(&self.groups, self.queues.len(), self.cfg.inbox) {
                Ok(b) => Some(b),
                Err(e) => {
                    drop(st);
                    let put = self
                        .port
                        .lock()
                        .as_mut()
                        .map(|p| p.put_sockets(taken.into_iter().flatten()));
                    return Err(match put {
                        Some(Err(p)) => Error::State(format!("{e}; then: {p}")),
                        _ => e,
                    });
                }
            }
        } else {
            None
        };
        let mut handles = Vec::with_capacity(taken.len());
        let mut failed = None;
        let mut back = Vec::new();
        for (wid, (socks, handler)) in taken.into_iter().zip(handlers).enumerate() {
            if failed.is_some() {
                back.extend(socks);
                continue;
            }
            let cfg = WorkerConfig {
                batch: self.cfg.batch,
                cpu: self.cpus[wid],
                default_verdict: self.cfg.default_verdict,
                on_error: self.cfg.on_error,
                idle_spins: self.cfg.idle_spins,
                idle_wait: self.cfg.idle_wait,
                latency: self.cfg.latency,
                spin: self.cfg.spin,
                waker: Arc::clone(&self.waker),
                stop: Arc::clone(&self.stop),
                total: Arc::clone(&self.total),
                limit: limit.unwrap_or(u64::MAX),
                kept: Some(Arc::clone(&self.kept)),
            };
            let ends = match inboxes
                .as_ref()
                .map(|b| b.ends(wid, self.cfg.batch))
                .transpose()
            {
                Ok(e) => e,
                Err(e) => {
                    back.extend(socks);
                    failed = Some(e);
                    continue;
                }
            };
            let stats = Arc::clone(&self.stats[wid]);
            match worker::spawn(wid, socks, handler, ends, cfg, stats) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    back.extend(e.sockets);
                    failed = Some(e.error);
                }
            }
        }
        *self.inboxes.lock().unwrap_or_else(|e| e.into_inner()) = inboxes;
        st.running = Some(Running {
            handles,
            started: Instant::now(),
        });
        drop(st);
        let Some(error) = failed else {
            return Ok(());
        };
        // The started workers may need what their handlers wait for (a binding's interpreter
        // lock, say): join them without holding anything.
        let joined = self.join();
        let put = match self.port.lock().as_mut() {
            Some(p) => p.put_sockets(back),
            None => Ok(()),
        };
        Err(match (joined, put) {
            (Ok(()), Ok(())) => error,
            (j, p) => {
                let more: Vec<String> = [j.err(), p.err()]
                    .into_iter()
                    .flatten()
                    .map(|e| e.to_string())
                    .collect();
                Error::State(format!("{error}; then: {}", more.join("; ")))
            }
        })
    }

    /// Ask the workers to end after their current batch (from any thread, a handler too).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.waker.signal();
    }

    /// Whether the calling thread is one of this pipeline's workers (a handler is calling).
    pub fn on_worker(&self) -> bool {
        on_worker_of(&self.stop)
    }

    /// Whether no worker runs (never started, ended by itself, or joined).
    pub fn finished(&self) -> bool {
        match &self.state().running {
            None => true,
            Some(r) => r.handles.iter().all(JoinHandle::is_finished),
        }
    }

    /// Whether workers are running.
    pub fn running(&self) -> bool {
        !self.finished()
    }

    /// Wait until every worker ended by itself (packet limit, a handler's stop, the error
    /// policy) or `deadline` passes; returns whether they ended. Holds no lock while it waits.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        loop {
            if self.finished() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(2)));
        }
    }

    /// Stop the workers, wait for them and put their sockets back into the port (into a port
    /// closed meanwhile they cannot: they close). Idempotent. An error names every worker that
    /// failed (pinning, a panic) and every socket the port refused; it is refused outright on
    /// one of the pipeline's own workers, which cannot wait for itself.
    pub fn join(&self) -> Result<()> {
        self.stop();
        if self.on_worker() {
            return Err(Error::State(
                "a pipeline's handler cannot wait for its own worker: stop() it there and join from outside".into(),
            ));
        }
        let Some(r) = self.state().running.take() else {
            return Ok(());
        };
        let exits: Vec<_> = r.handles.into_iter().map(JoinHandle::join).collect();
        self.state().last_run = Some(r.started.elapsed());
        let mut errors = Vec::new();
        let mut back = Vec::new();
        for x in exits {
            match x {
                Ok(exit) => {
                    if let Some(e) = exit.error {
                        errors.push(e.to_string());
                    }
                    back.extend(exit.sockets);
                }
                Err(_) => errors.push("a worker thread panicked".to_string()),
            }
        }
        let mut g = self.port.lock();
        if let Some(port) = g.as_mut() {
            if let Err(e) = port.put_sockets(back) {
                errors.push(e.to_string());
            }
            // Frames handed to a worker that ended before it took them go back, counted.
            let inboxes = self
                .inboxes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(b) = inboxes {
                match b.leftovers() {
                    Ok(left) => {
                        let mut lost = 0;
                        for (w, items) in left.iter().enumerate() {
                            for it in items {
                                let (d, s) = handoff::decode(it);
                                // Its own socket if the port has it back, else any socket of
                                // the port (one UMEM: a release needs only the frame).
                                let i = if port.socket_mut(s).is_some() {
                                    Some(s)
                                } else {
                                    (0..port.len()).find(|&i| port.socket_mut(i).is_some())
                                };
                                let released = i
                                    .and_then(|i| port.socket_mut(i))
                                    .map_or(0, |sock| sock.release(&[d.addr]));
                                lost += usize::from(released == 0);
                            }
                            self.stats[w].add_forward_in_failed(items.len() as u64);
                        }
                        if lost > 0 {
                            errors.push(format!(
                                "{lost} frames left in the workers' inboxes could not be given back (no socket of the port to release them through)"
                            ));
                        }
                    }
                    Err(e) => errors.push(format!("frames left in the workers' inboxes: {e}")),
                }
            }
        }
        drop(g);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::State(format!("worker error: {}", errors.join("; "))))
        }
    }

    /// Ask the workers to stop and let them go without waiting (a handler dropping its own
    /// pipeline, a process tearing down): they end after their batch and their sockets close
    /// with them instead of going back into the port.
    pub fn abandon(&self) {
        self.stop();
        self.state().running.take();
    }

    /// How long the workers ran: so far, or in the last run.
    pub fn elapsed(&self) -> Duration {
        let st = self.state();
        match &st.running {
            Some(r) => r.started.elapsed(),
            None => st.last_run.unwrap_or_default(),
        }
    }

    /// Every [`Kept`] queued since the last call, oldest first.
    pub fn kept(&self) -> Vec<Kept> {
        self.kept.drain()
    }

    /// Frames held now (kept, or held for views that outlived their batch); 0 once the port
    /// is gone.
    pub fn held(&self) -> u32 {
        self.umem.upgrade().map_or(0, |u| u.held())
    }

    /// The port's frame accounting ([`crate::xsk::XskPort::check_accounting`]): an error while
    /// workers have the sockets, once the port is closed, or when a frame is unaccounted for.
    pub fn check_accounting(&self) -> Result<FrameAccount> {
        match self.port.lock().as_ref() {
            Some(p) => p.check_accounting(),
            None => Err(Error::State(
                "no socket of the port is available (closed, or the pipeline runs): stop() first"
                    .into(),
            )),
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if self.on_worker() {
            // Dropped by its own handler: it cannot wait for itself.
            self.abandon();
        } else {
            // Nobody is left to tell: the workers' errors were theirs to report while running.
            let _ = self.join();
        }
    }
}
