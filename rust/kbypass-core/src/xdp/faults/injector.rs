//! [`FaultInjector`]: one direction's XDP programs and maps, attached to one interface.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use super::program::{counter, entry_program, matcher_program, threshold, Maps, CONFIG_VALUE_SIZE};
use crate::error::{Error, Result};
use crate::sys::bpf::{
    BpfInsn, MapFd, ProgFd, ProgInfo, ProgLoad, TestRun, BPF_ANY, BPF_MAP_TYPE_ARRAY,
    BPF_MAP_TYPE_PERCPU_ARRAY, BPF_PROG_TYPE_XDP,
};
use crate::xdp::attach::{attach_fd, AttachMode, XdpAttachment};
use crate::xdp::program::{redirect_form, RedirectForm};
use crate::xdp::rules::{format_filter, Rule};

/// `BPF_MAP_TYPE_PROG_ARRAY`.
const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;
/// Name of the attached program (the `kbypass` prefix marks it as ours).
pub const ENTRY_NAME: &str = "kbypass_faults";
/// Name of the matcher stage.
pub const MATCHER_NAME: &str = "kbypass_fault_m";

/// Fault probabilities of one direction. Loss applies to every matching frame; of the frames
/// not dropped, `duplicate + reorder + delay` go to the middlebox, which picks one of the three
/// in proportion.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FaultRates {
    /// Probability that a matching frame is dropped.
    pub loss: f64,
    /// Probability that a surviving frame is sent twice.
    pub duplicate: f64,
    /// Probability that a surviving frame is held back until later frames passed.
    pub reorder: f64,
    /// Probability that a surviving frame is delayed by a fixed time.
    pub delay: f64,
}

impl FaultRates {
    /// Check each probability is in 0..=1 and the middlebox's share is at most 1.
    pub fn validate(&self) -> Result<()> {
        for (name, p) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
            ("delay", self.delay),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::invalid(format!(
                    "{name}={p} is not a probability: give a number in 0..=1"
                )));
            }
        }
        if self.middlebox() > 1.0 + 1e-12 {
            return Err(Error::invalid(format!(
                "duplicate + reorder + delay = {} exceeds 1: lower them",
                self.middlebox()
            )));
        }
        Ok(())
    }

    /// Probability that a surviving frame goes to the middlebox.
    pub fn middlebox(&self) -> f64 {
        self.duplicate + self.reorder + self.delay
    }
}

/// The injector's counters, summed over CPUs. `seen == passed + dropped + to_middlebox`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InjectorCounters {
    /// Frames the program saw.
    pub seen: u64,
    /// Frames the filter matched.
    pub matched: u64,
    /// Frames passed to the kernel (the bridge).
    pub passed: u64,
    /// Frames dropped.
    pub dropped: u64,
    /// Frames redirected to the middlebox.
    pub to_middlebox: u64,
    /// Frames chosen for the middlebox with no socket there (passed instead; also in `passed`).
    pub no_socket: u64,
}

impl InjectorCounters {
    /// Whether every frame seen got exactly one verdict.
    pub fn balanced(&self) -> bool {
        self.seen == self.passed + self.dropped + self.to_middlebox
    }
}

fn load(insns: &[BpfInsn], name: &str) -> Result<ProgFd> {
    ProgFd::load(&ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insns,
        name,
        license: "GPL",
        expected_attach_type: 0,
        flags: 0,
    })
}

/// One direction of a faulty path: the entry program (attached), the matcher for the current
/// filter (in a PROG_ARRAY slot, swapped at run time), and the config, counter and XSKMAP
/// maps. Probabilities and the filter change with map updates; the attached program is never
/// reloaded or detached. Dropping it detaches and closes everything.
#[derive(Debug)]
pub struct FaultInjector {
    entry: ProgFd,
    entry_info: ProgInfo,
    matcher: Mutex<(ProgFd, Vec<Rule>)>,
    config: MapFd,
    counters: Arc<MapFd>,
    xsks: MapFd,
    progs: MapFd,
    rates: Mutex<FaultRates>,
    attachment: Option<XdpAttachment>,
}

impl FaultInjector {
    /// Load the programs for `rules` (empty: every frame) with `rates`; not attached yet.
    /// `queues` is the XSKMAP size (RX queues that can reach a middlebox socket).
    pub fn new(rules: &[Rule], rates: FaultRates, queues: u32) -> Result<Self> {
        rates.validate()?;
        if queues == 0 || queues > 4096 {
            return Err(Error::invalid(format!("queues={queues} must be 1..=4096")));
        }
        if redirect_form()? != RedirectForm::FlagsDefault {
            return Err(Error::Unsupported {
                what: "fault injection".into(),
                fix: "bpf_redirect_map with a default action needs kernel ≥ 5.3".into(),
            });
        }
        for r in rules {
            r.validate()?;
        }
        let config = MapFd::create(
            BPF_MAP_TYPE_ARRAY,
            4,
            CONFIG_VALUE_SIZE,
            1,
            0,
            "kbypass_fcfg",
        )?;
        let counters = Arc::new(MapFd::create(
            BPF_MAP_TYPE_PERCPU_ARRAY,
            4,
            8 * counter::COUNT as u32,
            1,
            0,
            "kbypass_fcnt",
        )?);
        let xsks = MapFd::xskmap(queues, "kbypass_fxsk")?;
        let progs = MapFd::create(BPF_MAP_TYPE_PROG_ARRAY, 4, 4, 1, 0, "kbypass_fprog")?;
        let maps = Maps {
            config: config.raw(),
            counters: counters.raw(),
            xsks: xsks.raw(),
            progs: progs.raw(),
        };
        let entry = load(&entry_program(maps)?, ENTRY_NAME)?;
        let entry_info = entry.info()?;
        let matcher = load(&matcher_program(rules, maps)?, MATCHER_NAME)?;
        progs.update(&0u32.to_ne_bytes(), &matcher.raw().to_ne_bytes(), BPF_ANY)?;
        let inj = FaultInjector {
            entry,
            entry_info,
            matcher: Mutex::new((matcher, rules.to_vec())),
            config,
            counters,
            xsks,
            progs,
            rates: Mutex::new(FaultRates::default()),
            attachment: None,
        };
        inj.set_rates(rates)?;
        Ok(inj)
    }

    fn maps(&self) -> Maps {
        Maps {
            config: self.config.raw(),
            counters: self.counters.raw(),
            xsks: self.xsks.raw(),
            progs: self.progs.raw(),
        }
    }

    /// Attach the entry program to `ifname` (in the calling thread's network namespace).
    pub fn attach(&mut self, ifname: &str, mode: AttachMode) -> Result<()> {
        if self.attachment.is_some() {
            return Err(Error::State(
                "this fault injector is already attached: make another one".into(),
            ));
        }
        self.attachment = Some(attach_fd(
            &self.entry,
            self.entry_info.id,
            ifname,
            mode,
            false,
        )?);
        Ok(())
    }

    /// Where it is attached: interface and mode ("native"/"generic"), if attached.
    pub fn attached(&self) -> Option<(&str, &'static str)> {
        self.attachment
            .as_ref()
            .map(|a| (a.ifname(), a.mode().as_str()))
    }

    /// Kernel id of the attached (entry) program; it never changes.
    pub fn prog_id(&self) -> u32 {
        self.entry_info.id
    }

    /// Set the probabilities (one map update; frames in flight see the old or the new ones).
    pub fn set_rates(&self, rates: FaultRates) -> Result<()> {
        rates.validate()?;
        let mut v = [0u8; CONFIG_VALUE_SIZE as usize];
        v[..8].copy_from_slice(&threshold(rates.loss).to_ne_bytes());
        v[8..].copy_from_slice(&threshold(rates.middlebox()).to_ne_bytes());
        let mut g = self
            .rates
            .lock()
            .map_err(|_| Error::State("fault rates lock poisoned".into()))?;
        self.config.update(&0u32.to_ne_bytes(), &v, BPF_ANY)?;
        *g = rates;
        Ok(())
    }

    /// The probabilities in force.
    pub fn rates(&self) -> FaultRates {
        self.rates.lock().map(|g| *g).unwrap_or_default()
    }

    /// Match `rules` from now on (empty: every frame): a new matcher is loaded and swapped into
    /// the PROG_ARRAY slot in one update; the attached program, maps and counters stay.
    pub fn set_filter(&self, rules: &[Rule]) -> Result<()> {
        for r in rules {
            r.validate()?;
        }
        let prog = load(&matcher_program(rules, self.maps())?, MATCHER_NAME)?;
        let mut g = self
            .matcher
            .lock()
            .map_err(|_| Error::State("fault filter lock poisoned".into()))?;
        self.progs
            .update(&0u32.to_ne_bytes(), &prog.raw().to_ne_bytes(), BPF_ANY)?;
        *g = (prog, rules.to_vec());
        Ok(())
    }

    /// The filter in force, in the filter grammar ("" for every frame).
    pub fn filter(&self) -> String {
        self.matcher
            .lock()
            .map(|g| format_filter(&g.1))
            .unwrap_or_default()
    }

    /// Send chosen frames of RX queue `queue` to the AF_XDP socket `xsk_fd`.
    pub fn set_socket(&self, queue: u32, xsk_fd: RawFd) -> Result<()> {
        self.xsks.set_xsk(queue, xsk_fd)
    }

    /// Stop sending queue `queue`'s chosen frames to a socket (they are passed and counted).
    pub fn clear_socket(&self, queue: u32) -> Result<bool> {
        self.xsks.clear_xsk(queue)
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<InjectorCounters> {
        read_counters(&self.counters)
    }

    /// The counter map, for the middlebox (it waits on PASSED to reorder).
    pub(crate) fn counter_map(&self) -> Arc<MapFd> {
        Arc::clone(&self.counters)
    }

    /// Run the attached program on `frame` with `BPF_PROG_TEST_RUN` (as if it arrived on RX
    /// queue 0; counted like real frames); returns the XDP verdict. Frames are not delivered.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<u32> {
        if frame.len() < 14 {
            return Err(Error::invalid(format!(
                "frame of {} bytes is shorter than an Ethernet header (14)",
                frame.len()
            )));
        }
        let mut out = vec![0u8; frame.len() + 256];
        Ok(self
            .entry
            .test_run(TestRun {
                data: frame,
                data_out: Some(&mut out),
                repeat,
                ..Default::default()
            })?
            .retval)
    }
}

/// Sum the per-CPU counter row.
pub(crate) fn read_counters(map: &MapFd) -> Result<InjectorCounters> {
    let v = map
        .lookup_percpu_sum(&0u32.to_ne_bytes())?
        .ok_or_else(|| Error::State("fault counter row is missing".into()))?;
    let g = |i: usize| v.get(i).copied().unwrap_or(0);
    Ok(InjectorCounters {
        seen: g(counter::SEEN),
        matched: g(counter::MATCHED),
        passed: g(counter::PASSED),
        dropped: g(counter::DROPPED),
        to_middlebox: g(counter::TO_MIDDLEBOX),
        no_socket: g(counter::NO_SOCKET),
    })
}

impl Drop for FaultInjector {
    fn drop(&mut self) {
        // Detach first, so no frame runs the programs while their maps close.
        if let Some(mut a) = self.attachment.take() {
            let _ = a.detach();
        }
    }
}
