//! `XskPort`: everything one interface needs for kernel bypass, owned in one value.
//!
//! One UMEM shared by one socket per queue (`XDP_SHARED_UMEM`, a fill/completion pair each),
//! our XDP program with its XSKMAP, and the program's attachment. Dropping the port undoes it
//! all in the safe order: detach the program (no more redirects), clear the XSKMAP, close the
//! sockets, free the UMEM.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::sys::netlink::{link_info, XdpMode};
use crate::sys::xdp::if_nametoindex;
use crate::xdp::{attach, AttachMode, ProgramOptions, Rule, XdpAttachment, XdpProgram};
use crate::xsk::{SocketConfig, Umem, UmemConfig, XskSocket};

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
                "{ifname} has MTU {} but a {}-byte frame holds {room} bytes of packet: use frame_size=4096, a smaller MTU, or multi_buffer=True",
                link.mtu, cfg.umem.frame_size
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

    /// Return a socket taken with [`XskPort::take_socket`].
    pub fn put_socket(&mut self, i: usize, s: XskSocket) -> Result<()> {
        match self.sockets.get_mut(i) {
            Some(slot @ None) if s.queue() == self.queues[i] => {
                *slot = Some(s);
                Ok(())
            }
            _ => Err(Error::invalid(format!(
                "socket slot {i} is not empty or is for another queue"
            ))),
        }
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
