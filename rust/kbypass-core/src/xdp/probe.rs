//! What this machine's kernel can do for AF_XDP, for `kbypass info`.
//!
//! Every probe touches only objects it creates: the bpf_link and live-frames probes run on the
//! loopback of a throwaway network namespace that vanishes with the probe thread.

use super::asm::{Asm, R0};
use super::program::{redirect_form, RedirectForm};
use crate::error::Result;
use crate::sys::bpf::{
    LinkFd, ProgFd, ProgLoad, TestRun, BPF_F_TEST_XDP_LIVE_FRAMES, BPF_F_XDP_HAS_FRAGS,
    BPF_PROG_TYPE_XDP, XDP_DROP,
};
use crate::sys::netlink::{in_private_netns, xdp_query, XDP_FLAGS_SKB_MODE};
use crate::sys::xdp::XskFd;

/// One probe's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Whether the feature works.
    pub ok: bool,
    /// What was found, or the error with its fix.
    pub detail: String,
}

impl Check {
    fn from<T>(r: Result<T>, ok_detail: impl FnOnce(&T) -> String) -> Self {
        match r {
            Ok(v) => Check {
                ok: true,
                detail: ok_detail(&v),
            },
            Err(e) => Check {
                ok: false,
                detail: e.to_string(),
            },
        }
    }
}

/// The XDP/AF_XDP capabilities of this kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpProbe {
    /// `uname -r`.
    pub kernel: String,
    /// `socket(AF_XDP)` works.
    pub af_xdp_socket: Check,
    /// An XDP program loads.
    pub prog_load: Check,
    /// The redirect form the default program uses (when programs load).
    pub redirect_form: Option<RedirectForm>,
    /// Programs load with `BPF_F_XDP_HAS_FRAGS` (multi-buffer).
    pub frags: Check,
    /// XDP can be attached with a bpf_link.
    pub xdp_link: Check,
    /// `BPF_PROG_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` (the traffic generator).
    pub live_frames: Check,
}

fn drop_prog(name: &str, flags: u32) -> Result<ProgFd> {
    let mut a = Asm::new();
    a.mov64_imm(R0, XDP_DROP as i32).exit();
    let insns = a.finish()?;
    ProgFd::load(&ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insns: &insns,
        name,
        license: "GPL",
        expected_attach_type: 0,
        flags,
    })
}

/// Probe everything; never fails (each failure is a [`Check`] with the reason and fix).
pub fn probe() -> XdpProbe {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_string());
    let af_xdp_socket = Check::from(XskFd::new(), |_| "socket(AF_XDP) works".into());
    let prog = drop_prog("kbypass_probe", 0);
    let prog_load = match &prog {
        Ok(_) => Check {
            ok: true,
            detail: "BPF_PROG_LOAD of an XDP program works".into(),
        },
        Err(e) => Check {
            ok: false,
            detail: e.to_string(),
        },
    };
    let redirect_form = if prog_load.ok {
        redirect_form().ok()
    } else {
        None
    };
    let frags = Check::from(drop_prog("kbypass_probe", BPF_F_XDP_HAS_FRAGS), |_| {
        "multi-buffer (BPF_F_XDP_HAS_FRAGS) programs load".into()
    });
    let (xdp_link, live_frames) = match prog {
        Err(e) => {
            let c = Check {
                ok: false,
                detail: format!("needs a loadable program: {e}"),
            };
            (c.clone(), c)
        }
        Ok(prog) => {
            match in_private_netns(move || {
                let link = LinkFd::create_xdp(&prog, 1, XDP_FLAGS_SKB_MODE).and_then(|l| {
                    let attached = xdp_query(1)?.first().map(|a| a.prog_id);
                    let id = prog.info()?.id;
                    drop(l);
                    // The kernel frees a closed link from a workqueue (bpf_link_put defers),
                    // so the detach shows up shortly after close, not at once.
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
                    let mut gone = xdp_query(1)?.programs.is_empty();
                    while !gone && std::time::Instant::now() < deadline {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        gone = xdp_query(1)?.programs.is_empty();
                    }
                    Ok((attached == Some(id), gone))
                });
                let link = match link {
                Ok((true, true)) => Check { ok: true, detail: "bpf_link attach (generic, loopback) works and detaches on close".into() },
                Ok((a, g)) => Check { ok: false, detail: format!("bpf_link attach misbehaved: attached={a}, detached on close={g}") },
                Err(e) => Check { ok: false, detail: format!("{e}; kbypass falls back to netlink attach (needs kernel ≥ 5.9 for links)") },
            };
                let frame = [0u8; 64];
                let live = prog.test_run(TestRun {
                    data: &frame,
                    repeat: 16,
                    flags: BPF_F_TEST_XDP_LIVE_FRAMES,
                    ..Default::default()
                });
                let live = Check::from(live, |r| {
                    format!("live-frames test run works ({} ns/frame)", r.duration_ns)
                });
                (link, live)
            }) {
                Ok(v) => v,
                Err(e) => {
                    let c = Check {
                        ok: false,
                        detail: e.to_string(),
                    };
                    (c.clone(), c)
                }
            }
        }
    };
    XdpProbe {
        kernel,
        af_xdp_socket,
        prog_load,
        redirect_form,
        frags,
        xdp_link,
        live_frames,
    }
}
