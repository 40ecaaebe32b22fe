//! `XskPort`: everything one interface needs for kernel bypass, owned in one value.
//!
//! One UMEM shared by one socket per queue (`XDP_SHARED_UMEM`, a fill/completion pair each),
//! and the XDP program that sends the queues' frames to the sockets ([`PortProgram`]): the
//! port's own filter program with its XSKMAP and attachment, a rule table
//! ([`crate::xdp::XdpTable`]) the caller owns, or none (another owner's XSKMAP routes to the
//! sockets). Dropping the port undoes what it did, in the safe order: detach its own program
//! or let go of its hold on the table (no more redirects), clear the XSKMAP slots it filled,
//! close the sockets, free the UMEM. It never detaches or closes a table someone else uses.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::sys::netlink::{link_info, XdpMode};
use crate::sys::xdp::if_nametoindex;
use crate::xdp::table::TableHold;
use crate::xdp::{attach, AttachMode, ProgramOptions, Rule, XdpAttachment, XdpProgram, XdpTable};
use crate::xsk::{FrameAccount, SocketConfig, Umem, UmemConfig, XskSocket};

/// Which queues a port opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Queues {
    /// Every RX queue of the interface.
    All,
    /// These queue ids.
    List(Vec<u32>),
}

/// Where a port's sockets get their frames from.
///
/// The shapes libxdp gives an AF_XDP socket: its own program (libxdp loads its default
/// program), a program someone else loaded whose XSKMAP the socket joins
/// (`xsk_socket__update_xskmap`), or none at all (`XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD`).
#[derive(Debug, Clone)]
pub enum PortProgram {
    /// The port's own filter program for these rules (empty: every frame), loaded, attached
    /// and detached by the port.
    Own(Vec<Rule>),
    /// A rule table the caller owns: the port puts its sockets into the table's XSKMAP (a
    /// queue that already has a socket there is refused) and holds the table on the interface
    /// ([`XdpTable::hold`]: attached unless it already runs there; detached when the last
    /// holder goes and the owner did not attach it). The port keeps the table alive until it
    /// closes, so the owner may close its handle first.
    Table(Arc<XdpTable>),
    /// No program: the sockets only; another owner's XSKMAP routes to them (e.g. a parent
    /// process that forked one worker process per queue).
    External,
}

impl Default for PortProgram {
    fn default() -> Self {
        PortProgram::Own(Vec::new())
    }
}

/// How to open an [`XskPort`].
#[derive(Debug, Clone)]
pub struct PortConfig {
    /// The UMEM (frames, frame size, headroom, memory tier).
    pub umem: UmemConfig,
    /// Per-socket settings (ring sizes, copy/zero-copy, need_wakeup, busy poll, multi-buffer).
    pub socket: SocketConfig,
    /// The XDP program.
    pub program: PortProgram,
    /// Native, generic or auto (when the port attaches a program).
    pub attach: AttachMode,
    /// Replace a program that is not ours.
    pub force: bool,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            umem: UmemConfig::default(),
            socket: SocketConfig::default(),
            program: PortProgram::default(),
            attach: AttachMode::Auto,
            force: false,
        }
    }
}

/// The program a port runs, as opened.
#[derive(Debug)]
enum Program {
    Own {
        prog: XdpProgram,
        attachment: Option<XdpAttachment>,
    },
    Table {
        table: Arc<XdpTable>,
        /// None once [`XskPort::detach`] let go of it.
        hold: Option<TableHold>,
    },
    External,
}

impl Program {
    /// Put queue `q`'s socket into the program's XSKMAP.
    fn register(&self, q: u32, fd: std::os::fd::RawFd) -> Result<()> {
        match self {
            Program::Own { prog, .. } => prog.set_socket(q, fd),
            Program::Table { table, .. } => table.add_socket(q, fd),
            Program::External => Ok(()),
        }
    }

    /// Empty queue `q`'s XSKMAP slot.
    fn unregister(&self, q: u32) -> Result<()> {
        match self {
            Program::Own { prog, .. } => prog.clear_socket(q),
            Program::Table { table, .. } => table.clear_socket(q),
            Program::External => Ok(()),
        }
    }
}

/// See the [module docs](self).
#[derive(Debug)]
pub struct XskPort {
    program: Program,
    sockets: Vec<Option<XskSocket>>,
    queues: Vec<u32>,
    umem: Arc<Umem>,
    ifname: String,
    mtu: u32,
    /// `sys::fork::generation()` when opened: a forked child's copy never undoes the parent's
    /// attachment or XSKMAP slots.
    generation: u64,
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
        let max_q = *sorted.last().unwrap_or(&0);
        if let PortProgram::Table(t) = &cfg.program {
            let o = t.options();
            if max_q >= o.queues {
                return Err(Error::invalid(format!(
                    "queue {max_q} is beyond the XdpTable's {} XSKMAP slots: create the table with queues={} or more",
                    o.queues,
                    max_q + 1
                )));
            }
            if frags && !o.frags {
                return Err(Error::invalid(
                    "multi_buffer=True needs a table loaded for multi-buffer frames: create the XdpTable with frags=True",
                ));
            }
        }
        let program = match &cfg.program {
            PortProgram::Own(rules) => Program::Own {
                prog: XdpProgram::new(
                    rules,
                    ProgramOptions {
                        frags,
                        queues: max_q + 1,
                    },
                )?,
                attachment: None,
            },
            PortProgram::Table(table) => Program::Table {
                table: Arc::clone(table),
                hold: None,
            },
            PortProgram::External => Program::External,
        };
        let mut port = XskPort {
            program,
            sockets: Vec::with_capacity(queues.len()),
            queues: Vec::with_capacity(queues.len()),
            umem: Umem::new(&cfg.umem)?,
            ifname: ifname.to_string(),
            mtu: link.mtu,
            generation: crate::sys::fork::generation(),
        };
        // From here on the port's Drop undoes what a failure leaves behind.
        for &q in &queues {
            let s = XskSocket::bind(&port.umem, ifname, q, &cfg.socket)?;
            let registered = port.program.register(q, s.raw_fd());
            port.sockets.push(Some(s));
            registered?;
            // Listed only once its slot is ours: Drop clears the slots of the queues listed
            // (a slot refused because another socket has it stays as it is).
            port.queues.push(q);
        }
        match &mut port.program {
            Program::Own { prog, attachment } => {
                *attachment = Some(attach(prog, ifname, cfg.attach, cfg.force)?);
            }
            Program::Table { table, hold } => {
                *hold = Some(table.hold(ifname, cfg.attach, cfg.force)?);
            }
            Program::External => {}
        }
        Ok(port)
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

    /// The port's own XDP program (None with a table or no program).
    pub fn program(&self) -> Option<&XdpProgram> {
        match &self.program {
            Program::Own { prog, .. } => Some(prog),
            _ => None,
        }
    }

    /// The rule table the sockets get their frames from, if the port was opened on one.
    pub fn table(&self) -> Option<&Arc<XdpTable>> {
        match &self.program {
            Program::Table { table, .. } => Some(table),
            _ => None,
        }
    }

    /// How the program runs on the interface (native/generic), or None without a program or
    /// after [`XskPort::detach`].
    pub fn xdp_mode(&self) -> Option<XdpMode> {
        match &self.program {
            Program::Own { attachment, .. } => attachment.as_ref().map(|a| a.mode()),
            Program::Table { hold, .. } => hold.as_ref().map(|h| h.mode()),
            Program::External => None,
        }
    }

    /// Notes from allocating the UMEM (a raised RLIMIT_MEMLOCK), attaching (fallbacks, a
    /// table found attached) and binding (copy instead of zero-copy).
    pub fn notes(&self) -> Vec<String> {
        let mut n = self.umem.pool().region().notes();
        match &self.program {
            Program::Own {
                attachment: Some(a),
                ..
            } => n.extend(a.notes().iter().cloned()),
            Program::Table { hold: Some(h), .. } => n.extend(h.notes().iter().cloned()),
            _ => {}
        }
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
    /// Crate-private: see [`XskSocket::bind`] for why sockets of one UMEM stay in one hand
    /// outside this crate.
    pub(crate) fn take_socket(&mut self, i: usize) -> Option<XskSocket> {
        self.sockets.get_mut(i).and_then(Option::take)
    }

    /// Return a socket taken with [`XskPort::take_socket`]. A socket that does not belong in
    /// slot `i` (the slot is taken, or is for another queue) is refused: it is dropped (closed)
    /// and the error says so.
    pub(crate) fn put_socket(&mut self, i: usize, s: XskSocket) -> Result<()> {
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
    pub(crate) fn take_sockets(
        &mut self,
        groups: &[Vec<usize>],
    ) -> Result<Vec<Vec<(usize, XskSocket)>>> {
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
    pub(crate) fn put_sockets(
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

    /// Detach the port's own program now (frames go to the kernel again), or let go of its
    /// hold on the table (the table stays attached while its owner or another port wants it
    /// there); sockets stay open.
    pub fn detach(&mut self) -> Result<()> {
        match &mut self.program {
            Program::Own { attachment, .. } => match attachment.take() {
                Some(mut a) => a.detach(),
                None => Ok(()),
            },
            Program::Table { hold, .. } => match hold.take() {
                Some(h) => h.release(),
                None => Ok(()),
            },
            Program::External => Ok(()),
        }
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
        if self.generation != crate::sys::fork::generation() {
            // Inherited across fork(): the attachment and the XSKMAP slots are the parent's,
            // which still uses them; dropping the fields only closes this process's copies of
            // the descriptors (the attachment and a table hold know they were inherited too).
            return;
        }
        let _ = self.detach();
        for &q in &self.queues {
            let _ = self.program.unregister(q);
        }
        // Fields drop in order: the program (a table only lives on while its owner or another
        // port holds it), the sockets, then the UMEM.
    }
}
