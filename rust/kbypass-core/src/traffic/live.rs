//! The main traffic generator: the kernel's XDP "live frames" test run.
//!
//! `BPF_PROG_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` (kernel ≥ 5.18) runs an XDP program `repeat`
//! times on copies of one frame as if they had arrived on `(ifindex, queue)`, and really carries
//! out the verdicts. Our program answers `XDP_TX`, which the test run turns into a redirect out of
//! that interface, so on a veth pair every frame lands on the peer at the cost of one XDP run and
//! one `ndo_xdp_xmit` — far more than AF_XDP copy-mode TX or `sendmmsg` manage (see
//! `docs/performance.md`).
//!
//! Flows: with `flows > 1` the program rewrites the UDP source port of every frame to
//! `src_port + (n mod flows)`, `n` counting the frames this CPU sent since the run started (a
//! per-CPU array map; one run stays on one CPU, so the flows get equal shares, in order). The
//! frame then carries UDP checksum 0 ("no checksum", valid for UDP over IPv4), so nothing else in
//! the frame has to change. A counter rather than `bpf_get_prandom_u32` because tests can then
//! check the exact distribution, and because it costs less.
//!
//! Cost model: a test run with `repeat > 1` adds the program to the kernel's XDP dispatcher
//! (`bpf_prog_change_xdp`) on entry and removes it on exit, and each change waits for RCU: about
//! 20 ms per call here, whatever the repeat count (65,536 frames per call gave 2.4 Mpps, 4 M gave
//! 14 Mpps in the issue's measurements). The dispatcher only changes when a program enters or
//! leaves it, so [`LiveGenerator::new`] keeps the program in it for its whole life: it attaches
//! the same program, in generic mode through a bpf_link, to the loopback of a private network
//! namespace that nothing else can reach and that carries no traffic (and the program answers
//! `XDP_PASS` for frames from a loopback anyway). Calls then cost microseconds, so runs use short
//! calls (stop flags are seen within ~50 ms, rate limits are smooth). If that keeper cannot be
//! made (no CAP_SYS_ADMIN), the generator still works and sizes its calls from the measured rate
//! to amortise the waits ([`LiveGenerator::keeper_note`] says why).
//!
//! A frame with a given UDP payload ([`LiveOptions::payload`]) is a message for a server; the
//! program then writes the whole frame before each send, because the test run re-uses its pages
//! without restoring their bytes and a server answering in place would edit them (see
//! [`super::program`]).
//!
//! On veth, `XDP_TX` out of an interface only delivers when its peer can take XDP frames (GRO on
//! or a native XDP program, e.g. [`super::sink::DropCounter`]) and the frame fits the peer's MTU;
//! the generator also needs the ingress interface's own XDP queue registered (GRO on or an XDP
//! program there). `kbypass.testing.VethPair` turns GRO on at both ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::kernel::Throughput;
use super::program::{generator_program, Steps};
use super::template::UdpTemplate;
use crate::cpu::Pinned;
use crate::error::{Error, Result};
use crate::sys::bpf::{
    LinkFd, MapFd, ProgFd, ProgLoad, BPF_ANY, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_PROG_TYPE_XDP,
};
use crate::sys::netlink::{in_private_netns, link_info, XDP_FLAGS_SKB_MODE};
use crate::sys::netns::NetnsGuard;
use crate::sys::xdp::if_nametoindex;
/// Largest live-frames batch the kernel accepts (`TEST_XDP_MAX_BATCH`).
pub const MAX_BATCH: u32 = 256;
/// Most distinct UDP source ports.
pub const MAX_FLOWS: u32 = 65_536;

/// Frames in the first call of a run, before a rate has been measured.
const FIRST_CHUNK: u64 = 1 << 16;
/// Aim for calls of about this long at full speed: with the dispatcher keeper calls are cheap
/// and short ones keep the stop flag responsive; without it, long calls amortise the ~20 ms of
/// RCU waits per call.
const TARGET_CALL: Duration = Duration::from_millis(50);
const TARGET_CALL_NO_KEEPER: Duration = Duration::from_millis(250);
/// Under a rate limit, send one slice of this many seconds' worth of frames per call.
const RATE_SLICE: Duration = Duration::from_millis(10);
const RATE_SLICE_NO_KEEPER: Duration = Duration::from_millis(50);
/// Stop a duration-limited run when less than this is left (one call costs at least that much).
const MIN_CALL: Duration = Duration::from_millis(2);

/// What the generator sends: the frame template, how many flows, the kernel batch size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveOptions {
    /// The frame. With `flows > 1` its UDP checksum is forced to 0 (see the module docs).
    pub template: UdpTemplate,
    /// Distinct UDP source ports, `template.src_port ..` (1..=65536, and the last port must be
    /// ≤ 65535).
    pub flows: u32,
    /// Frames per kernel batch, 1..=256 (0: the kernel's default, 64).
    pub batch_size: u32,
    /// The frames' UDP payload instead of the template's fill; the frame's length follows from
    /// it, and `template.size` must then be 0 or that length
    /// ([`UdpTemplate::build_with_payload`]). With a payload the program writes the whole frame
    /// before each send (a message for a server, which may answer by editing the frame in
    /// place: see [`super::program`]).
    pub payload: Option<Vec<u8>>,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions {
            template: UdpTemplate {
                udp_checksum: true,
                ..Default::default()
            },
            flows: 1,
            batch_size: 0,
            payload: None,
        }
    }
}

/// How long and how fast one [`LiveGenerator::run`] sends. At least one of `count`, `duration`
/// and `stop` must be given; the first limit reached ends the run.
#[derive(Debug, Clone, Copy, Default)]
pub struct LiveRun<'a> {
    /// Send exactly this many frames (unless another limit ends the run first).
    pub count: Option<u64>,
    /// Send for about this long.
    pub duration: Option<Duration>,
    /// Average rate limit in frames per second (frames leave in short bursts, one slice of
    /// 10 ms worth per call).
    pub rate: Option<f64>,
    /// Set from another thread to stop (seen between calls, within ~50 ms).
    pub stop: Option<&'a AtomicBool>,
    /// Pin the sending thread to this CPU for the run (the kernel does the receive work of a
    /// veth peer on the same CPU).
    pub cpu: Option<usize>,
    /// RX queue of the ingress interface the frames appear on (and leave from).
    pub queue: u32,
    /// Set to true once the set-up (namespace, pinning, interface checks) succeeded and sending
    /// begins, so a thread that started the run in the background can report set-up errors.
    pub ready: Option<&'a AtomicBool>,
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LiveResult {
    /// Frames handed to the interface and the wall time of the run.
    pub throughput: Throughput,
    /// `BPF_PROG_RUN` calls made.
    pub calls: u64,
    /// Whether a signal interrupted a call (the run stopped there; frames of the interrupted
    /// call are not counted).
    pub interrupted: bool,
}

/// The live-frames generator: a loaded XDP_TX program, its flow counter, and the frame. Dropping
/// it unloads the program and frees the map.
///
/// ```no_run
/// use kbypass_core::traffic::live::{LiveGenerator, LiveOptions, LiveRun};
/// let gen = LiveGenerator::new(&LiveOptions { flows: 16, ..Default::default() })?;
/// let r = gen.run("veth0", Some("kbx-a"), &LiveRun {
///     duration: Some(std::time::Duration::from_secs(1)),
///     cpu: Some(0),
///     ..Default::default()
/// })?;
/// println!("{:.1} Mpps", r.throughput.pps() / 1e6);
/// # Ok::<(), kbypass_core::Error>(())
/// ```
#[derive(Debug)]
pub struct LiveGenerator {
    // Declared first so it is dropped (detached) before the program fd closes.
    keeper: std::result::Result<DispatcherKeeper, String>,
    prog: ProgFd,
    flows_map: Option<MapFd>,
    frame: Vec<u8>,
    opts: LiveOptions,
}

/// Keeps a program in the kernel's XDP dispatcher: attached in generic mode to the (down)
/// loopback of a private network namespace. Dropping it closes the link (detach) and the last
/// reference to the namespace (which then disappears).
#[derive(Debug)]
struct DispatcherKeeper {
    _link: LinkFd,
    _netns: std::fs::File,
}

impl DispatcherKeeper {
    fn new(prog: &ProgFd) -> Result<Self> {
        let prog = prog.try_clone()?;
        in_private_netns(move || -> Result<Self> {
            // The open handle keeps the namespace alive after this thread ends.
            let netns = std::fs::File::open("/proc/thread-self/ns/net").map_err(|e| {
                Error::os(
                    "open /proc/thread-self/ns/net",
                    e.raw_os_error().unwrap_or(0),
                    "",
                )
            })?;
            let lo = if_nametoindex("lo")?;
            let link = LinkFd::create_xdp(&prog, lo, XDP_FLAGS_SKB_MODE)?;
            Ok(DispatcherKeeper {
                _link: link,
                _netns: netns,
            })
        })?
    }
}

impl LiveGenerator {
    /// Build the frame and load the program (needs CAP_BPF/CAP_NET_ADMIN).
    pub fn new(opts: &LiveOptions) -> Result<Self> {
        let mut opts = opts.clone();
        if opts.flows == 0 || opts.flows > MAX_FLOWS {
            return Err(Error::invalid(format!(
                "flows={} is out of range: give 1..={MAX_FLOWS}",
                opts.flows
            )));
        }
        let last = u32::from(opts.template.src_port) + opts.flows - 1;
        if last > u32::from(u16::MAX) {
            return Err(Error::invalid(format!(
                "flows={} from source port {} would go past port 65535 (to {last}): lower src_port or flows",
                opts.flows, opts.template.src_port
            )));
        }
        if opts.batch_size > MAX_BATCH {
            return Err(Error::invalid(format!(
                "batch_size={} is too large: the kernel takes at most {MAX_BATCH} frames per batch (0 = its default, 64)",
                opts.batch_size
            )));
        }
        if opts.flows > 1 {
            opts.template.udp_checksum = false;
        }
        let frame = match &opts.payload {
            Some(p) => opts.template.build_with_payload(p)?,
            None => opts.template.build()?,
        };
        opts.template.size = frame.len();
        let flows_map = if opts.flows > 1 {
            Some(MapFd::create(
                BPF_MAP_TYPE_PERCPU_ARRAY,
                4,
                4,
                1,
                0,
                "kbypass_flows",
            )?)
        } else {
            None
        };
        let insns = generator_program(&Steps {
            rewrite: opts.payload.is_some().then_some(&frame[..]),
            flows: opts.flows,
            base_port: opts.template.src_port,
            map_fd: flows_map.as_ref().map(MapFd::raw),
        })?;
        let prog = ProgFd::load(&ProgLoad {
            prog_type: BPF_PROG_TYPE_XDP,
            insns: &insns,
            name: "kbypass_gen",
            license: "GPL",
            expected_attach_type: 0,
            flags: 0,
        })?;
        let keeper = DispatcherKeeper::new(&prog).map_err(|e| {
            format!(
                "no dispatcher keeper ({e}): every call waits ~20 ms for RCU, so calls are long (250 ms) to amortise it"
            )
        });
        Ok(LiveGenerator {
            keeper,
            prog,
            flows_map,
            frame,
            opts,
        })
    }

    /// Why the program is not kept in the XDP dispatcher between calls (None when it is, the
    /// normal case as root); see the module docs.
    pub fn keeper_note(&self) -> Option<&str> {
        self.keeper.as_ref().err().map(String::as_str)
    }

    /// The frame every run sends (before the per-flow source port).
    pub fn frame(&self) -> &[u8] {
        &self.frame
    }

    /// The options in effect (with `udp_checksum` false when flows vary, and `template.size`
    /// the frame's length).
    pub fn options(&self) -> &LiveOptions {
        &self.opts
    }

    /// The program.
    pub fn prog(&self) -> &ProgFd {
        &self.prog
    }

    fn reset_flows(&self) -> Result<()> {
        if let Some(m) = &self.flows_map {
            m.update(&0u32.to_ne_bytes(), &vec![0u8; m.value_len()], BPF_ANY)?;
        }
        Ok(())
    }

    /// Send frames out of `ifname` (inside network namespace `netns` when given: the calling
    /// thread enters it for the run) until a limit of `run` is reached.
    ///
    /// Errors: unknown interface or namespace ([`Error::NotFound`]); a queue the interface
    /// lacks, a frame larger than the interface's MTU allows, no limit, a bad rate
    /// ([`Error::InvalidArgument`]); an interface whose XDP queue is not registered (`EINVAL`:
    /// turn GRO on or attach an XDP program); no privileges ([`Error::Permission`]).
    pub fn run(&self, ifname: &str, netns: Option<&str>, run: &LiveRun<'_>) -> Result<LiveResult> {
        if run.count.is_none() && run.duration.is_none() && run.stop.is_none() {
            return Err(Error::invalid(
                "give a count, a duration or a stop flag, or the generator never stops",
            ));
        }
        if let Some(r) = run.rate {
            if !(r.is_finite() && r > 0.0) {
                return Err(Error::invalid(format!(
                    "rate={r} must be a positive number of frames per second (None: as fast as possible)"
                )));
            }
        }
        let _ns = netns.map(NetnsGuard::enter).transpose()?;
        let _pin = run.cpu.map(|c| Pinned::new(&[c])).transpose()?;
        let ifindex = if_nametoindex(ifname)?;
        let link = link_info(ifindex)?;
        if link.rx_queues > 0 && run.queue >= link.rx_queues {
            return Err(Error::invalid(format!(
                "queue {} does not exist: {ifname} has {} RX queue(s) (0..{})",
                run.queue,
                link.rx_queues,
                link.rx_queues - 1
            )));
        }
        let mtu = link.mtu as usize;
        if self.frame.len() > mtu + 14 {
            return Err(Error::invalid(format!(
                "a {}-byte frame does not fit {ifname}'s MTU {mtu} (at most {} bytes with the Ethernet header): the peer would drop it; raise the MTU or send a smaller frame (size or payload)",
                self.frame.len(),
                mtu + 14
            )));
        }
        self.reset_flows()?;
        if let Some(r) = run.ready {
            r.store(true, Ordering::Release);
        }
        self.send_loop(ifindex, ifname, run)
    }

    fn call(&self, ifindex: u32, ifname: &str, queue: u32, n: u32) -> Result<bool> {
        // A signal pending for this thread would end the run with EINTR after an unknown part
        // of the frames; block signals for this short call so every count stays exact.
        let _blocked = crate::sys::signal::SignalsBlocked::new();
        match self
            .prog
            .run_live(&self.frame, n, self.opts.batch_size, Some((ifindex, queue)))
        {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc::EINTR) => Ok(false),
            Err(e) => Err(match e.errno() {
                Some(libc::EINVAL) => Error::os(
                    format!("live-frames test run on {ifname} queue {queue}"),
                    libc::EINVAL,
                    format!(
                        "needs kernel ≥ 5.18, a queue that exists, XDP rx-queue info registered on {ifname} (on veth: `ethtool -K {ifname} gro on` or attach an XDP program) and a frame of at most about 3.4 KB (one page)"
                    ),
                ),
                Some(libc::ENODEV) => Error::NotFound(format!(
                    "interface {ifname} vanished during the run"
                )),
                _ => e,
            }),
        }
    }

    fn send_loop(&self, ifindex: u32, ifname: &str, run: &LiveRun<'_>) -> Result<LiveResult> {
        let stopped = || run.stop.is_some_and(|s| s.load(Ordering::Relaxed));
        let (target_call, rate_slice) = if self.keeper.is_ok() {
            (TARGET_CALL, RATE_SLICE)
        } else {
            (TARGET_CALL_NO_KEEPER, RATE_SLICE_NO_KEEPER)
        };
        let start = Instant::now();
        let mut sent = 0u64;
        let mut calls = 0u64;
        let mut interrupted = false;
        // Frames per second of the last call, fixed costs included.
        let mut measured: Option<f64> = None;
        loop {
            if stopped() {
                break;
            }
            let left = match run.count {
                Some(c) if sent >= c => break,
                Some(c) => c - sent,
                None => u64::MAX,
            };
            if let Some(r) = run.rate {
                // Pace: this chunk may start once the frames so far are "paid for".
                if !sleep_until(start, sent as f64 / r, run) {
                    break;
                }
            }
            let mut chunk = match measured {
                Some(m) => (m * target_call.as_secs_f64()) as u64,
                None => FIRST_CHUNK,
            };
            if let Some(r) = run.rate {
                chunk = chunk.min((r * rate_slice.as_secs_f64()) as u64);
            }
            if let Some(d) = run.duration {
                let rest = d.saturating_sub(start.elapsed());
                if rest < MIN_CALL {
                    break;
                }
                if let Some(m) = measured {
                    chunk = chunk.min((m * rest.as_secs_f64()) as u64);
                }
                if let Some(r) = run.rate {
                    // Never get ahead of the schedule's end.
                    let allowed = (r * d.as_secs_f64()) as u64;
                    chunk = chunk.min(allowed.saturating_sub(sent));
                    if chunk == 0 {
                        break;
                    }
                }
            }
            let n = chunk.clamp(1, u64::from(u32::MAX)).min(left) as u32;
            let t0 = Instant::now();
            calls += 1;
            if !self.call(ifindex, ifname, run.queue, n)? {
                interrupted = true;
                break;
            }
            let dt = t0.elapsed().as_secs_f64();
            sent += u64::from(n);
            if dt > 0.0 && u64::from(n) * 4 >= chunk {
                measured = Some(f64::from(n) / dt);
            }
        }
        if let (Some(r), false) = (run.rate, interrupted) {
            // The last burst went out early; the run lasts until it is due.
            sleep_until(start, sent as f64 / r, run);
        }
        Ok(LiveResult {
            throughput: Throughput {
                packets: sent,
                bytes: sent * self.frame.len() as u64,
                elapsed: start.elapsed(),
            },
            calls,
            interrupted,
        })
    }
}

/// Sleep until `start + secs`, in short naps so the stop flag and the duration are honoured;
/// false when the run should end instead.
fn sleep_until(start: Instant, secs: f64, run: &LiveRun<'_>) -> bool {
    let due = start + Duration::from_secs_f64(secs);
    loop {
        if run.stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            return false;
        }
        if run.duration.is_some_and(|d| start.elapsed() >= d) {
            return false;
        }
        let now = Instant::now();
        if now >= due {
            return true;
        }
        std::thread::sleep((due - now).min(Duration::from_millis(10)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_options_are_refused() {
        let bad = |o: LiveOptions| LiveGenerator::new(&o).unwrap_err();
        assert!(matches!(
            bad(LiveOptions {
                flows: 0,
                ..Default::default()
            }),
            Error::InvalidArgument(_)
        ));
        let e = bad(LiveOptions {
            flows: 60_000,
            ..Default::default()
        });
        assert!(e.to_string().contains("65535"), "{e}");
        assert!(matches!(
            bad(LiveOptions {
                batch_size: 257,
                ..Default::default()
            }),
            Error::InvalidArgument(_)
        ));
        let e = bad(LiveOptions {
            template: UdpTemplate {
                size: 20,
                ..Default::default()
            },
            ..Default::default()
        });
        assert!(e.to_string().contains("out of range"), "{e}");
        let e = bad(LiveOptions {
            payload: Some(vec![0; 64]),
            ..Default::default()
        });
        assert!(
            e.to_string().contains("conflicts"),
            "size 60 and a 106-byte frame: {e}"
        );
    }
}
