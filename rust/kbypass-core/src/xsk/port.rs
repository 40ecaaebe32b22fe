//! `XskPort`: everything one interface needs for kernel bypass, owned in one value.
//!
//! One UMEM shared by one socket per queue (`XDP_SHARED_UMEM`, a fill/completion pair each),
//! our XDP program with its XSKMAP, and the program's attachment. Dropping the port undoes it
//! all in the safe order: detach the program (no more redirects), clear the XSKMAP, close the
//! sockets, free the UMEM.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::sys::netlink::{link_info, XdpMode};
use crate::sys::xdp::if_nametoindex;
use crate::xdp::{attach, AttachMode, ProgramOptions, Rule, XdpAttachment, XdpProgram};
use crate::xsk::{FrameAccount, SocketConfig, Umem, UmemConfig, XskSocket};

/// Which queues a port opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Queues {
    /// Every RX queue of the interface.
    All,
    /// These queue ids.
    List(Vec<u32>),
}

/// How to open an [`XskPort`].
#[derive(Debug, Clone)]
pub struct PortConfig {
    /// The UMEM (frames, frame size, headroom, memory tier).
    pub umem: UmemConfig,
    /// Per-socket settings (ring sizes, copy/zero-copy, need_wakeup, busy poll, multi-buffer).
    pub socket: SocketConfig,
    /// Match rules; empty redirects everything.
    pub rules: Vec<Rule>,
    /// Native, generic or auto.
    pub attach: AttachMode,
    /// Replace a program that is not ours.
    pub force: bool,
    /// Load and attach our own program (false: the sockets only; another owner's XSKMAP
    /// routes to them, e.g. a parent process that forked one worker process per queue).
    pub program: bool,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            umem: UmemConfig::default(),
            socket: SocketConfig::default(),
            rules: Vec::new(),
            attach: AttachMode::Auto,
            force: false,
            program: true,
        }
    }
}

/// See the [module docs](self).
#[derive(Debug)]
pub struct XskPort {
    attachment: Option<XdpAttachment>,
    sockets: Vec<Option<XskSocket>>,
    queues: Vec<u32>,
    prog: Option<XdpProgram>,
    umem: Arc<Umem>,
    ifname: String,
    mtu: u32,
}

impl XskPort {
    /// Open `ifname`: UMEM, sockets on `queues`, program, attachment.
    pub fn open(ifname: &str, queues: &Queues, cfg: &PortConfig) -> Result<Self> {
        let ifindex = if_nametoindex(ifname)?;
        let link = link_info(ifindex)?;
        let queues = match queues {
            Queues::All => (0..link.rx_queues.max(1)).collect::<Vec<_>>(),
            Queues::List(q) => q.clone(),
        };
        if queues.is_empty() {
            return Err(Error::invalid(
                "no queues given: name at least one queue, or use all",
            ));
        }
        let mut sorted = queues.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != queues.len() {
            return Err(Error::invalid(format!(
                "queue list {queues:?} names a queue twice"
            )));
        }
        if let Some(&q) = queues.iter().find(|&&q| q >= link.rx_queues.max(1)) {
            return Err(Error::invalid(format!(
                "{ifname} has {} RX queue(s): queue {q} does not exist (see `ethtool -l {ifname}`)",
                link.rx_queues
            )));
        }
        let frags = cfg.socket.multi_buffer;
        // A frame must hold an MTU-sized packet unless multi-buffer splits it.
        let room = cfg
            .umem
            .frame_size
            .saturating_sub(cfg.umem.headroom + super::XDP_PACKET_HEADROOM);
        if !frags && link.mtu + 14 > room && link.mtu > 0 {
            return Err(Error::invalid(format!(
                "{ifname} has MTU {} but a {}-byte frame holds {room} bytes of packet after the kernel's {} bytes of headroom and headroom={}: use frame_size=4096, less headroom, a smaller MTU, or multi_buffer=True",
                link.mtu, cfg.umem.frame_size, super::XDP_PACKET_HEADROOM, cfg.umem.headroom
            )));
        }
        let umem = Umem::new(&cfg.umem)?;
        let max_q = *sorted.last().unwrap_or(&0);
        let prog = if cfg.program {
            Some(XdpProgram::new(
                &cfg.rules,
                ProgramOptions {
                    frags,
                    queues: max_q + 1,
                },
            )?)
        } else {
            None
        };
        let mut sockets = Vec::with_capacity(queues.len());
        for &q in &queues {
            let s = XskSocket::bind(&umem, ifname, q, &cfg.socket)?;
            if let Some(p) = &prog {
                p.set_socket(q, s.raw_fd())?;
            }
            sockets.push(Some(s));
        }
        let attachment = match &prog {
            Some(p) => Some(attach(p, ifname, cfg.attach, cfg.force)?),
            None => None,
        };
        Ok(XskPort {
            attachment,
            sockets,
            queues,
            prog,
            umem,
            ifname: ifname.to_string(),
            mtu: link.mtu,
        })
    }

    /// Interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Interface MTU when the port opened.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// Queue ids, in socket order.
    pub fn queues(&self) -> &[u32] {
        &self.queues
    }

    /// The shared UMEM.
    pub fn umem(&self) -> &Arc<Umem> {
        &self.umem
    }

    /// The XDP program (None when opened with `program: false`).
    pub fn program(&self) -> Option<&XdpProgram> {
        self.prog.as_ref()
    }

    /// How the program is attached (native/generic), or None after [`XskPort::detach`].
    pub fn xdp_mode(&self) -> Option<XdpMode> {
        self.attachment.as_ref().map(|a| a.mode())
    }

    /// Notes from allocating the UMEM (a raised RLIMIT_MEMLOCK), attaching (fallbacks) and
    /// binding (copy instead of zero-copy).
    pub fn notes(&self) -> Vec<String> {
        let mut n = self.umem.pool().region().notes();
        n.extend(
            self.attachment
                .iter()
                .flat_map(|a| a.notes().iter().cloned()),
        );
        for s in self.sockets.iter().flatten() {
            n.extend(s.notes().iter().cloned());
        }
        n
    }

    /// Socket `i` (in [`XskPort::queues`] order), unless it was taken.
    pub fn socket(&self, i: usize) -> Option<&XskSocket> {
        self.sockets.get(i).and_then(|s| s.as_ref())
    }

    /// Socket `i`, mutable.
    pub fn socket_mut(&mut self, i: usize) -> Option<&mut XskSocket> {
        self.sockets.get_mut(i).and_then(|s| s.as_mut())
    }

    /// Take socket `i` out (e.g. to hand it to a worker thread); put it back with
    /// [`XskPort::put_socket`]. The XSKMAP keeps routing its queue to it meanwhile.
    pub fn take_socket(&mut self, i: usize) -> Option<XskSocket> {
        self.sockets.get_mut(i).and_then(Option::take)
    }

    /// Return a socket taken with [`XskPort::take_socket`]. A socket that does not belong in
    /// slot `i` (the slot is taken, or is for another queue) is refused: it is dropped (closed)
    /// and the error says so.
    pub fn put_socket(&mut self, i: usize, s: XskSocket) -> Result<()> {
        match self.sockets.get_mut(i) {
            Some(slot @ None) if s.queue() == self.queues[i] => {
                *slot = Some(s);
                Ok(())
            }
            _ => Err(Error::State(format!(
                "socket {i} (queue {}) could not go back into the port: its slot is taken or is for another queue; the socket was closed",
                s.queue()
            ))),
        }
    }

    /// Take the sockets named in `groups` (indexes into [`XskPort::queues`]), all of them or
    /// none: if one is missing (a worker has it) the others go back and the error names it.
    pub fn take_sockets(&mut self, groups: &[Vec<usize>]) -> Result<Vec<Vec<(usize, XskSocket)>>> {
        let mut taken: Vec<Vec<(usize, XskSocket)>> = Vec::with_capacity(groups.len());
        for g in groups {
            let mut v = Vec::with_capacity(g.len());
            for &i in g {
                match self.take_socket(i) {
                    Some(s) => v.push((i, s)),
                    None => {
                        taken.push(v);
                        // Back into the slots they just left: cannot be refused.
                        let back = self.put_sockets(taken.into_iter().flatten());
                        debug_assert!(back.is_ok(), "{back:?}");
                        return Err(Error::State(format!(
                            "socket {i} is in use (another Pipeline?): stop it first"
                        )));
                    }
                }
            }
            taken.push(v);
        }
        Ok(taken)
    }

    /// Put sockets back (see [`XskPort::put_socket`]); every socket is tried, and the error
    /// names each one that was refused.
    pub fn put_sockets(
        &mut self,
        sockets: impl IntoIterator<Item = (usize, XskSocket)>,
    ) -> Result<()> {
        let refused: Vec<String> = sockets
            .into_iter()
            .filter_map(|(i, s)| self.put_socket(i, s).err())
            .map(|e| e.to_string())
            .collect();
        if refused.is_empty() {
            Ok(())
        } else {
            Err(Error::State(refused.join("; ")))
        }
    }

    /// Where the UMEM's frames are, checked (see [`XskSocket::check_accounting`]) through any
    /// socket in the port. With every socket in the port no worker is inside a batch, so a
    /// frame with the application must be held: one that is not is lost, and that is an error
    /// too.
    pub fn check_accounting(&self) -> Result<FrameAccount> {
        let s = self.sockets.iter().flatten().next().ok_or_else(|| {
            Error::State(
                "no socket of the port is available (closed, or the pipeline runs): stop() first"
                    .into(),
            )
        })?;
        let a = s.check_accounting()?;
        let idle = self.sockets.iter().all(Option::is_some);
        if idle && a.app != 0 {
            return Err(Error::State(format!(
                "frame accounting is off: {} frames are with the application without a hold ({a:?})",
                a.app
            )));
        }
        Ok(a)
    }

    /// Number of sockets.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Always false: a port has at least one socket.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Detach the program now (frames go to the kernel again); sockets stay open.
    pub fn detach(&mut self) -> Result<()> {
        if let Some(mut a) = self.attachment.take() {
            a.detach()?;
        }
        Ok(())
    }
}

/// An [`XskPort`] several users share: handles on its sockets, and a pipeline whose workers
/// take sockets out and put them back. `None` once closed.
#[derive(Debug)]
pub struct SharedPort(Mutex<Option<XskPort>>);

impl SharedPort {
    /// Share `port`.
    pub fn new(port: XskPort) -> Self {
        SharedPort(Mutex::new(Some(port)))
    }

    /// The port (None once closed). Never hold the guard across a wait longer than one
    /// socket call: every other user of the port waits for it.
    pub fn lock(&self) -> MutexGuard<'_, Option<XskPort>> {
        // A panic while the port was locked leaves it as the panicking call left it: every
        // socket call keeps the frame states consistent on its own.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Close the port now (detach, clear the XSKMAP, close the sockets it has, free the UMEM
    /// once nothing else uses it). Returns whether it was open.
    pub fn close(&self) -> bool {
        let port = self.lock().take();
        port.is_some()
    }
}

impl Drop for XskPort {
    fn drop(&mut self) {
        let _ = self.detach();
        if let Some(p) = &self.prog {
            for &q in &self.queues {
                let _ = p.clear_socket(q);
            }
        }
        // Sockets close before the UMEM (fields drop in order: attachment, sockets, …, umem).
    }
}
