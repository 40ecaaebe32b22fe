//! Attaching an [`XdpProgram`] to an interface: bpf_link first (detached by the kernel when the
//! last fd closes, including when the process dies), rtnetlink as the fallback on kernels
//! without XDP links; native / generic / auto modes; never silently replacing someone else's
//! program.

use super::program::{XdpProgram, NAME_PREFIX};
use crate::error::{Error, Result};
use crate::sys::bpf::{find_xdp_link, prog_info_by_id, LinkFd, ProgFd, ProgInfo};
use crate::sys::netlink::{xdp_query, xdp_set, XdpAttached, XdpMode, XDP_FLAGS_UPDATE_IF_NOEXIST};
use crate::sys::xdp::if_nametoindex;

/// Requested attach mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// Driver mode only.
    Native,
    /// Generic (skb) mode only.
    Generic,
    /// Native, falling back to generic; the attachment reports what it got and why.
    Auto,
}

impl std::str::FromStr for AttachMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "native" | "drv" | "driver" => Ok(AttachMode::Native),
            "generic" | "skb" => Ok(AttachMode::Generic),
            "auto" => Ok(AttachMode::Auto),
            _ => Err(Error::invalid(format!(
                "mode {s:?} is not one of 'native', 'generic', 'auto'"
            ))),
        }
    }
}

/// How an attachment holds the interface.
#[derive(Debug)]
enum Holder {
    Link(LinkFd),
    Netlink { prog: ProgFd, flags: u32 },
}

/// A program attached to an interface; dropping it detaches (bpf_link: the kernel also detaches
/// when the process dies; netlink fallback: only an explicit detach or Drop removes it).
///
/// An attachment belongs to the process that made it: in a `fork()` child (a worker process
/// that inherited its parent's port, say) detaching or dropping it only lets go of the child's
/// copy of the handle and leaves the parent's program attached.
#[derive(Debug)]
pub struct XdpAttachment {
    ifindex: u32,
    ifname: String,
    mode: XdpMode,
    prog_id: u32,
    holder: Option<Holder>,
    notes: Vec<String>,
    /// `sys::fork::generation()` when attached: another value means this is a forked copy.
    generation: u64,
}

impl XdpAttachment {
    /// Interface index (in the network namespace of the attaching thread).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The mode the kernel reports after attaching.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// Id of the attached program.
    pub fn prog_id(&self) -> u32 {
        self.prog_id
    }

    /// "bpf_link" or "netlink".
    pub fn via(&self) -> &'static str {
        match self.holder {
            Some(Holder::Link(_)) => "bpf_link",
            Some(Holder::Netlink { .. }) => "netlink",
            None => "detached",
        }
    }

    /// Why an auto attach did not get native mode, replaced programs, and similar notes.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Whether the attachment is still held.
    pub fn is_attached(&self) -> bool {
        self.holder.is_some()
    }

    /// Whether this handle was inherited across `fork()` (it then never detaches: the
    /// attachment is the parent's).
    pub fn inherited(&self) -> bool {
        self.generation != crate::sys::fork::generation()
    }

    /// Detach now and report errors (Drop detaches too, silently). In a forked child this only
    /// drops the child's handle: the parent's program stays attached.
    pub fn detach(&mut self) -> Result<()> {
        if self.inherited() {
            // Closing the child's copy of a link fd leaves the link to the parent's fd.
            self.holder = None;
            return Ok(());
        }
        match self.holder.take() {
            None => Ok(()),
            Some(Holder::Link(l)) => {
                // Explicit detach works even if another fd of the link exists (e.g. after fork).
                match l.detach() {
                    Ok(()) => Ok(()),
                    // Kernels before 5.9's BPF_LINK_DETACH: closing the fd detaches.
                    Err(e) if e.errno() == Some(libc::EINVAL) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Some(Holder::Netlink { prog, flags }) => {
                match xdp_set(self.ifindex, -1, flags, Some(prog.raw())) {
                    Ok(()) => Ok(()),
                    // The interface vanished, or our program was already replaced: nothing of
                    // ours is left to remove.
                    Err(e) if matches!(e.errno(), Some(libc::ENODEV) | Some(libc::EEXIST)) => {
                        Ok(())
                    }
                    // Kernels before 5.7 have no XDP_FLAGS_REPLACE: detach unconditionally, but
                    // only if the program there is still ours.
                    Err(e) if e.errno() == Some(libc::EINVAL) => {
                        let ours = xdp_query(self.ifindex)?
                            .programs
                            .iter()
                            .any(|a| a.prog_id == self.prog_id);
                        if ours {
                            xdp_set(self.ifindex, -1, flags, None)
                        } else {
                            Ok(())
                        }
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }
}

impl Drop for XdpAttachment {
    fn drop(&mut self) {
        let _ = self.detach();
    }
}

/// What is attached to an interface, with the program's identity when it can be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedProgram {
    /// Program id and mode.
    pub attached: XdpAttached,
    /// Id, name, tag (None if the program vanished meanwhile or cannot be read).
    pub info: Option<ProgInfo>,
    /// Id of the bpf_link holding it, if a link does.
    pub link_id: Option<u32>,
}

impl AttachedProgram {
    /// Whether this is one of kbypass's programs (by name).
    pub fn is_ours(&self) -> bool {
        self.info
            .as_ref()
            .is_some_and(|i| i.name.starts_with(NAME_PREFIX))
    }

    fn describe(&self) -> String {
        let who = match &self.info {
            Some(i) => format!("program {i}"),
            None => format!("program id {}", self.attached.prog_id),
        };
        let via = match self.link_id {
            Some(l) => format!("bpf_link id {l}"),
            None => "netlink".into(),
        };
        format!(
            "{who} in {} mode (attached via {via})",
            self.attached.mode.as_str()
        )
    }
}

/// The XDP programs on `ifname` (in the calling thread's network namespace).
pub fn query(ifname: &str) -> Result<Vec<AttachedProgram>> {
    let ifindex = if_nametoindex(ifname)?;
    query_index(ifindex)
}

/// [`query`] by interface index.
pub(crate) fn query_index(ifindex: u32) -> Result<Vec<AttachedProgram>> {
    let q = xdp_query(ifindex)?;
    let mut out = Vec::new();
    for a in q.programs {
        let info = prog_info_by_id(a.prog_id).ok();
        let link_id = find_xdp_link(ifindex, a.prog_id)
            .ok()
            .flatten()
            .map(|l| l.id);
        out.push(AttachedProgram {
            attached: a,
            info,
            link_id,
        });
    }
    Ok(out)
}

fn remove(ifindex: u32, p: &AttachedProgram) -> Result<()> {
    match p.link_id {
        Some(id) => match LinkFd::from_id(id) {
            Ok(l) => l.detach(),
            Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        },
        None => xdp_set(ifindex, -1, p.attached.mode.flag(), None),
    }
}

/// Attach `prog` to `ifname`.
///
/// If the interface already has a program: a stale kbypass program attached via netlink (left
/// by a process that died) is replaced; a program that is not ours, or a kbypass program held
/// by a live bpf_link (another process), is refused with an error naming it unless `force`.
pub fn attach(
    prog: &XdpProgram,
    ifname: &str,
    mode: AttachMode,
    force: bool,
) -> Result<XdpAttachment> {
    attach_fd(prog.prog(), prog.info().id, ifname, mode, force)
}

/// [`attach`] for any loaded XDP program (e.g. the traffic module's counting drop program):
/// `prog_id` is its kernel id ([`ProgFd::info`]). Name the program with the `kbypass` prefix so
/// later attaches recognise it as ours.
pub fn attach_fd(
    prog: &ProgFd,
    prog_id: u32,
    ifname: &str,
    mode: AttachMode,
    force: bool,
) -> Result<XdpAttachment> {
    let ifindex = if_nametoindex(ifname)?;
    let mut notes = Vec::new();
    for p in query_index(ifindex)? {
        if !force {
            if !p.is_ours() {
                return Err(Error::os(
                    format!("attach XDP to {ifname}"),
                    libc::EEXIST,
                    format!(
                        "{ifname} already has {}; it is not a kbypass program: remove it (`ip link set dev {ifname} xdp off`) or pass force=True to replace it",
                        p.describe()
                    ),
                ));
            }
            if p.link_id.is_some() {
                return Err(Error::os(
                    format!("attach XDP to {ifname}"),
                    libc::EBUSY,
                    format!(
                        "{ifname} already has {}, held by another kbypass process: close that one first or pass force=True",
                        p.describe()
                    ),
                ));
            }
        }
        remove(ifindex, &p)?;
        notes.push(format!("replaced {}", p.describe()));
    }

    let modes: &[XdpMode] = match mode {
        AttachMode::Native => &[XdpMode::Native],
        AttachMode::Generic => &[XdpMode::Generic],
        AttachMode::Auto => &[XdpMode::Native, XdpMode::Generic],
    };
    let mut last_err = None;
    for &m in modes {
        let holder = match LinkFd::create_xdp(prog, ifindex, m.flag()) {
            Ok(l) => Holder::Link(l),
            Err(e) if e.errno() == Some(libc::EINVAL) => {
                // Kernels without XDP links (< 5.9) answer EINVAL: fall back to netlink.
                let flags = m.flag() | XDP_FLAGS_UPDATE_IF_NOEXIST;
                match xdp_set(ifindex, prog.raw(), flags, None) {
                    Ok(()) => {
                        notes.push(format!("bpf_link unavailable ({e}); attached via netlink"));
                        Holder::Netlink {
                            prog: prog.try_clone()?,
                            flags: m.flag(),
                        }
                    }
                    Err(e2) => {
                        notes.push(format!("{} mode: {e}; netlink: {e2}", m.as_str()));
                        last_err = Some(e2);
                        continue;
                    }
                }
            }
            Err(e) => {
                notes.push(format!("{} mode failed: {e}", m.as_str()));
                last_err = Some(e);
                continue;
            }
        };
        let got = xdp_query(ifindex)?
            .programs
            .iter()
            .find(|a| a.prog_id == prog_id)
            .map_or(m, |a| a.mode);
        return Ok(XdpAttachment {
            ifindex,
            ifname: ifname.to_string(),
            mode: got,
            prog_id,
            holder: Some(holder),
            notes,
            generation: crate::sys::fork::generation(),
        });
    }
    Err(last_err.unwrap_or_else(|| Error::invalid("no attach mode to try")))
}
