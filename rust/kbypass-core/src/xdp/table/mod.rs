//! `XdpTable`: an XDP program whose rules live in BPF maps, changed at run time without
//! reloading or detaching it.
//!
//! An *entry* is a filter (rules ORed, in the filter grammar of [`crate::xdp::rules`]: IPv4
//! and IPv6 source/destination prefixes, protocol, source/destination port ranges, together)
//! with an [`Action`] — `Allow` (to the AF_XDP socket of the frame's RX queue), `Drop` (in the
//! kernel), `Pass` (to the kernel's stack) — a priority and an optional expiry. A *block* is a
//! decision about one source address pushed from a packet handler (`block()`), kept in a hash
//! map of its own so that pushing one is a single map update.
//!
//! # What decides a frame
//!
//! 1. A frame cut inside its Ethernet header or VLAN tags: the default action.
//! 2. A live block of the frame's IPv4/IPv6 source address.
//! 3. The first live entry, in (priority, id) order — lower priority first, then the order
//!    added — with a rule that matches. Rules match exactly as filter rules do (the program
//!    uses the filter programs' header walk; see [`crate::xdp::rules`]).
//! 4. The table's default action.
//!
//! "Live" means not expired: the program compares the entry's or block's deadline with
//! `bpf_ktime_get_ns()` on every frame, so an expired entry stops matching at its deadline
//! even if nobody sweeps it. [`XdpTable::sweep`] removes expired entries and blocks.
//! [`layout::decide`] is the same decision in Rust; the differential test compares the two on
//! random rule sets and frames.
//!
//! # How the maps change without a reload
//!
//! The rules of all entries, in decision order, get one bit each (their *rank*); per-field
//! maps return bitsets of the ranks a field value lets through (see [`layout`]), the program
//! ANDs them and takes the lowest live rank. All rule maps exist twice, as two *banks* (the
//! bank is part of every key), and a one-byte switch says which bank the program reads. A
//! change is written into the inactive bank, then the switch flips: every frame sees the old
//! rule set or the new one, never a mix, and the program is never reloaded (its id stays).
//! Before a bank is rewritten, [`crate::sys::bpf::wait_for_program_runs`] waits until no
//! program run can still be reading it (an RCU grace period: milliseconds). Counters are
//! per-CPU and belong to an entry for its whole life (a slot is reused only after a grace
//! period), so they stay exact across changes.
//!
//! ```no_run
//! use kbypass_core::xdp::table::{Action, NewEntry, TableOptions, XdpTable};
//! use kbypass_core::xdp::{parse_filter, AttachMode};
//! let table = XdpTable::new(TableOptions::default())?;
//! let id = table.add(NewEntry::new(parse_filter("udp dst port 9000")?, Action::Allow))?;
//! table.attach("eth0", AttachMode::Auto, false)?;
//! table.block("198.18.0.7".parse().unwrap(), Some(10.0), Action::Drop, false)?;
//! println!("{:?}", table.stats()?.get(&id));
//! # Ok::<(), kbypass_core::Error>(())
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

#[cfg(test)]
mod fuzz;
pub mod layout;
pub(crate) mod program;
#[cfg(test)]
mod tests;

pub use layout::{canonical, check_rules, decide, Action, Block, Decision, Entry};

use self::layout::{block_key, Bank, Bits, Ranked, Record, CLASS_PER_BANK};
use self::program::{meta, table_program, MapFds, Shape};
use super::attach::{attach_fd, query_index, AttachMode, XdpAttachment};
use super::program::{redirect_form, RedirectForm};
use super::rules::Rule;
use crate::error::{Error, Result};
use crate::sys::bpf::{
    ktime_ns, wait_for_program_runs, BpfInsn, MapFd, ProgFd, ProgInfo, ProgLoad, TestRun,
    TestRunResult, BPF_ANY, BPF_F_NO_PREALLOC, BPF_F_XDP_HAS_FRAGS, BPF_MAP_TYPE_ARRAY,
    BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LPM_TRIE, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_PERCPU_HASH,
    BPF_NOEXIST, BPF_PROG_TYPE_XDP,
};
use crate::sys::fork;
use crate::sys::netlink::XdpMode;
use crate::sys::netns::current_netns_inode;
use crate::sys::xdp::{if_nametoindex, XskFd};

/// The deadline `seconds` from now on the clock the program reads ([`ktime_ns`]).
pub fn deadline_in(seconds: f64) -> Result<u64> {
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(Error::invalid(format!(
            "{seconds} s must be a positive number of seconds (None for no expiry)"
        )));
    }
    Ok(ktime_ns().saturating_add((seconds * 1e9) as u64))
}

/// Seconds from now until `deadline_ns` (negative once it has passed).
pub fn seconds_left(deadline_ns: u64) -> f64 {
    (deadline_ns as f64 - ktime_ns() as f64) / 1e9
}

/// The address a block key stands for (IPv4-mapped keys as IPv4).
fn addr_of_key(key: &[u8]) -> IpAddr {
    let mut b = [0u8; 16];
    b.copy_from_slice(&key[..16]);
    canonical(IpAddr::from(b))
}

/// Name of the program (the `kbypass` prefix marks it as ours for [`crate::xdp::attach()`]).
pub const PROGRAM_NAME: &str = "kbypass_table";

/// Largest `max_rules`: the program's lowest-rank search is unrolled per 64-rule word.
pub const MAX_RULES: u32 = 1024;

/// How to build an [`XdpTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableOptions {
    /// Rule slots: 64, 128, 256, 512 or 1024. Each rule of an entry takes one (`port N`
    /// without a direction is two rules).
    pub max_rules: u32,
    /// Source addresses that can be blocked at once.
    pub max_blocks: u32,
    /// XSKMAP slots (the highest RX queue index + 1 that can have a socket).
    pub queues: u32,
    /// What happens to frames no entry or block decides.
    pub default: Action,
    /// Load with `BPF_F_XDP_HAS_FRAGS` (multi-buffer sockets; only the linear part is read).
    pub frags: bool,
}

impl Default for TableOptions {
    fn default() -> Self {
        TableOptions {
            max_rules: 256,
            max_blocks: 65536,
            queues: 64,
            default: Action::Pass,
            frags: false,
        }
    }
}

/// An entry to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// Its rules (ORed).
    pub rules: Vec<Rule>,
    /// What matching frames get.
    pub action: Action,
    /// Lower first; equal priorities in the order added. Default 0.
    pub priority: i32,
    /// Deadline on `CLOCK_MONOTONIC` in ns ([`ktime_ns`]), None for none.
    pub expires_ns: Option<u64>,
}

impl NewEntry {
    /// Priority 0, no expiry.
    pub fn new(rules: Vec<Rule>, action: Action) -> Self {
        NewEntry {
            rules,
            action,
            priority: 0,
            expires_ns: None,
        }
    }
}

/// Packets and bytes (the linear part of each frame), summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Frames.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// What [`XdpTable::sweep`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Expired entries.
    pub entries: usize,
    /// Expired blocks.
    pub blocks: usize,
}

/// A block as listed by [`XdpTable::blocks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockInfo {
    /// The source address.
    pub addr: IpAddr,
    /// Action and deadline.
    pub block: Block,
    /// Frames it decided.
    pub counts: Counts,
}

/// Where and how the table is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachInfo {
    /// Interface.
    pub ifname: String,
    /// Its index (in the attaching thread's network namespace).
    pub ifindex: u32,
    /// "native" or "generic".
    pub mode: &'static str,
    /// "bpf_link" or "netlink".
    pub via: &'static str,
    /// Program id.
    pub prog_id: u32,
    /// Why auto did not get native mode, what was replaced.
    pub notes: Vec<String>,
}

/// Bookkeeping of the table's counters and work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableInfo {
    /// Live entries.
    pub entries: usize,
    /// Rule slots they use.
    pub rules: usize,
    /// Blocks.
    pub blocks: usize,
    /// Bank switches so far (one per change).
    pub commits: u64,
    /// Map updates and deletes the changes took.
    pub map_writes: u64,
    /// Entries removed by [`XdpTable::sweep`] so far.
    pub swept_entries: u64,
    /// Blocks removed by [`XdpTable::sweep`] so far.
    pub swept_blocks: u64,
}

#[derive(Debug)]
struct Maps {
    meta: MapFd,
    class: MapFd,
    src4: MapFd,
    dst4: MapFd,
    src6: MapFd,
    dst6: MapFd,
    sport: MapFd,
    dport: MapFd,
    rules: MapFd,
    deadlines: MapFd,
    cmask: MapFd,
    counters: MapFd,
    blocks: MapFd,
    block_counts: MapFd,
    xsks: MapFd,
}

impl Maps {
    fn create(o: &TableOptions, words: u32) -> Result<Self> {
        let bits = 8 * words;
        let n = o.max_rules;
        let trie = |key: u32, entries: u32, name: &str| {
            MapFd::create(
                BPF_MAP_TYPE_LPM_TRIE,
                key,
                bits,
                entries,
                BPF_F_NO_PREALLOC,
                name,
            )
        };
        Ok(Maps {
            meta: MapFd::create(BPF_MAP_TYPE_ARRAY, 4, 8, meta::ENTRIES, 0, "kbx_tbl_meta")?,
            class: MapFd::create(
                BPF_MAP_TYPE_ARRAY,
                4,
                bits,
                2 * CLASS_PER_BANK as u32,
                0,
                "kbx_tbl_class",
            )?,
            src4: trie(12, 2 * (n + 1), "kbx_tbl_src4")?,
            dst4: trie(12, 2 * (n + 1), "kbx_tbl_dst4")?,
            src6: trie(24, 2 * (n + 1), "kbx_tbl_src6")?,
            dst6: trie(24, 2 * (n + 1), "kbx_tbl_dst6")?,
            sport: trie(10, 2 * (30 * n + 1), "kbx_tbl_sport")?,
            dport: trie(10, 2 * (30 * n + 1), "kbx_tbl_dport")?,
            rules: MapFd::create(BPF_MAP_TYPE_ARRAY, 4, 8, 2 * n, 0, "kbx_tbl_rules")?,
            deadlines: MapFd::create(BPF_MAP_TYPE_ARRAY, 4, 8, 2 * n, 0, "kbx_tbl_dline")?,
            cmask: MapFd::create(BPF_MAP_TYPE_ARRAY, 4, bits, 2 * (n + 1), 0, "kbx_tbl_cmask")?,
            counters: MapFd::create(
                BPF_MAP_TYPE_PERCPU_ARRAY,
                4,
                16,
                2 * n + 1,
                0,
                "kbx_tbl_counts",
            )?,
            blocks: MapFd::create(
                BPF_MAP_TYPE_HASH,
                16,
                16,
                o.max_blocks,
                BPF_F_NO_PREALLOC,
                "kbx_tbl_blocks",
            )?,
            block_counts: MapFd::create(
                BPF_MAP_TYPE_PERCPU_HASH,
                16,
                16,
                o.max_blocks,
                BPF_F_NO_PREALLOC,
                "kbx_tbl_bcounts",
            )?,
            xsks: MapFd::xskmap(o.queues, "kbx_tbl_xsks")?,
        })
    }

    fn fds(&self, xsks: RawFd) -> MapFds {
        MapFds {
            meta: self.meta.raw(),
            class: self.class.raw(),
            src4: self.src4.raw(),
            dst4: self.dst4.raw(),
            src6: self.src6.raw(),
            dst6: self.dst6.raw(),
            sport: self.sport.raw(),
            dport: self.dport.raw(),
            rules: self.rules.raw(),
            deadlines: self.deadlines.raw(),
            cmask: self.cmask.raw(),
            counters: self.counters.raw(),
            blocks: self.blocks.raw(),
            block_counts: self.block_counts.raw(),
            xsks,
        }
    }
}

#[derive(Debug, Clone)]
struct Live {
    entry: Entry,
    counter: u32,
}

#[derive(Debug)]
struct RulesState {
    entries: BTreeMap<u64, Live>,
    next_id: u64,
    active: u32,
    /// What each bank holds.
    written: [Bank; 2],
    /// Counter slots no entry uses and no program run can still write.
    free_counters: Vec<u32>,
    /// Slots of entries removed since the last grace period (a run may still count into them).
    quarantined: Vec<u32>,
    /// A bank switch happened since the last grace period.
    flipped: bool,
    commits: u64,
    map_writes: u64,
    swept: u64,
}

/// Serializes this process's block changes and sweeps (the blocks themselves live only in
/// the kernel's maps, so every process sharing them — e.g. forked workers — sees the same).
#[derive(Debug, Default)]
struct BlocksState {
    swept: u64,
}

/// One interface the table is attached to, and who wants it there.
#[derive(Debug)]
struct Attached {
    att: XdpAttachment,
    /// The fork generation it was made in: a forked process lets go of its parent's.
    generation: u64,
    /// The network namespace's inode (interface indexes are per namespace).
    netns: u64,
    /// Asked for with [`XdpTable::attach`] (until [`XdpTable::detach`]).
    user: bool,
    /// [`TableHold`]s on it.
    ports: usize,
}

impl Attached {
    fn is(&self, netns: u64, ifindex: u32, generation: u64) -> bool {
        self.netns == netns && self.att.ifindex() == ifindex && self.generation == generation
    }

    fn info(&self) -> AttachInfo {
        AttachInfo {
            ifname: self.att.ifname().to_string(),
            ifindex: self.att.ifindex(),
            mode: self.att.mode().as_str(),
            via: self.att.via(),
            prog_id: self.att.prog_id(),
            notes: self.att.notes().to_vec(),
        }
    }
}

/// A use of an [`XdpTable`] on one interface ([`XdpTable::hold`]): the program runs there
/// while the hold lives, and the table's program and maps live at least as long. Dropping it
/// detaches the program when it was the last use and [`XdpTable::attach`] did not ask for it.
#[derive(Debug)]
pub struct TableHold {
    table: Arc<XdpTable>,
    /// (namespace, ifindex, fork generation) of the attachment this hold counts on; None when
    /// it uses an attachment someone else holds.
    key: Option<(u64, u32, u64)>,
    mode: XdpMode,
    notes: Vec<String>,
}

impl TableHold {
    /// The table.
    pub fn table(&self) -> &Arc<XdpTable> {
        &self.table
    }

    /// The mode the program runs in on the interface.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// Notes from attaching (fallbacks, a replaced program, an attachment found in place).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Let go now and report a failed detach (Drop lets go too, silently).
    pub fn release(mut self) -> Result<()> {
        match self.key.take() {
            Some(k) => self.table.release(k),
            None => Ok(()),
        }
    }
}

impl Drop for TableHold {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            let _ = self.table.release(k);
        }
    }
}

#[derive(Debug)]
struct Twin {
    prog: ProgFd,
    _xsks: MapFd,
    _sock: XskFd,
}

/// See the [module docs](self).
#[derive(Debug)]
pub struct XdpTable {
    maps: Maps,
    prog: ProgFd,
    info: ProgInfo,
    insn_count: usize,
    verifier_stats: String,
    opts: TableOptions,
    words: usize,
    form: RedirectForm,
    state: Mutex<RulesState>,
    blocks: Mutex<BlocksState>,
    blocks_on: AtomicBool,
    twin: Mutex<Option<Twin>>,
    /// Where it is attached, and for whom.
    attachments: Mutex<Vec<Attached>>,
    /// The fork generation of the process that owns the entries.
    generation: u64,
}

fn lock<'a, T>(m: &'a Mutex<T>, what: &str) -> Result<MutexGuard<'a, T>> {
    m.lock()
        .map_err(|_| Error::State(format!("XdpTable {what} lock poisoned (a thread panicked)")))
}

fn bits_bytes(b: &Bits) -> Vec<u8> {
    b.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

fn trie_key(bank: u32, total_bits: u32, data: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + data.len());
    k.extend_from_slice(&total_bits.to_ne_bytes());
    k.extend_from_slice(&bank.to_ne_bytes());
    k.extend_from_slice(data);
    k
}

/// Bring one trie's bank subtree from `old` to `new`; returns the writes.
fn sync_trie<K: Ord + Copy>(
    map: &MapFd,
    old: &BTreeMap<K, Bits>,
    new: &BTreeMap<K, Bits>,
    key: impl Fn(K) -> Vec<u8>,
) -> Result<u64> {
    let mut n = 0;
    for (k, v) in new {
        if old.get(k) != Some(v) {
            map.update(&key(*k), &bits_bytes(v), BPF_ANY)?;
            n += 1;
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            map.delete(&key(*k))?;
            n += 1;
        }
    }
    Ok(n)
}

fn load(insns: &[BpfInsn], name: &str, frags: bool) -> Result<(ProgFd, String)> {
    ProgFd::load_with_stats(&ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insns,
        name,
        license: "GPL",
        expected_attach_type: 0,
        flags: if frags { BPF_F_XDP_HAS_FRAGS } else { 0 },
    })
    .map_err(|e| match (frags, e.errno()) {
        (true, Some(libc::EINVAL)) => Error::Unsupported {
            what: format!("loading {name} with BPF_F_XDP_HAS_FRAGS"),
            fix: format!("multi-buffer XDP needs kernel ≥ 5.18 ({e}); use frags=False"),
        },
        _ => e,
    })
}

impl XdpTable {
    /// Create the maps and load the program (not attached: see [`XdpTable::attach`]). Needs
    /// CAP_BPF and CAP_NET_ADMIN.
    pub fn new(opts: TableOptions) -> Result<Self> {
        if !opts.max_rules.is_power_of_two() || !(64..=MAX_RULES).contains(&opts.max_rules) {
            return Err(Error::invalid(format!(
                "max_rules={} must be 64, 128, 256, 512 or 1024",
                opts.max_rules
            )));
        }
        if opts.max_blocks == 0 {
            return Err(Error::invalid("max_blocks must be at least 1"));
        }
        if opts.queues == 0 || opts.queues > 4096 {
            return Err(Error::invalid(format!(
                "queues={} must be 1..=4096",
                opts.queues
            )));
        }
        let words = (opts.max_rules / 64) as usize;
        let form = redirect_form()?;
        let maps = Maps::create(&opts, words as u32)?;
        let shape = Shape {
            words,
            slots: opts.max_rules,
            default_counter: 2 * opts.max_rules,
            form,
        };
        let insns = table_program(&maps.fds(maps.xsks.raw()), shape)?;
        let (prog, log) = load(&insns, PROGRAM_NAME, opts.frags)?;
        let info = prog.info()?;
        let counters = 2 * opts.max_rules;
        let zeroed = Bank::zeroed(words);
        let t = XdpTable {
            state: Mutex::new(RulesState {
                entries: BTreeMap::new(),
                next_id: 1,
                active: 0,
                written: [zeroed.clone(), zeroed],
                free_counters: (0..counters).rev().collect(),
                quarantined: Vec::new(),
                flipped: false,
                commits: 0,
                map_writes: 0,
                swept: 0,
            }),
            maps,
            prog,
            info,
            insn_count: insns.len(),
            verifier_stats: log.trim().to_string(),
            opts,
            words,
            form,
            blocks: Mutex::new(BlocksState::default()),
            blocks_on: AtomicBool::new(false),
            twin: Mutex::new(None),
            attachments: Mutex::new(Vec::new()),
            generation: fork::generation(),
        };
        // New maps hold zeros and no trie entries; both banks start as the empty table.
        {
            let mut st = lock(&t.state, "rules")?;
            let empty = Bank::build(&[], words, opts.default);
            for b in 0..2 {
                t.sync_bank(b, &st.written[b as usize], &empty)?;
                st.written[b as usize] = empty.clone();
            }
        }
        Ok(t)
    }

    /// The options it was built with.
    pub fn options(&self) -> &TableOptions {
        &self.opts
    }

    /// The program fd (for attaching it elsewhere, e.g. an [`crate::xsk::XskPort`]).
    pub fn prog(&self) -> &ProgFd {
        &self.prog
    }

    /// Kernel id, name and tag of the program (they never change: rules live in maps).
    pub fn info(&self) -> &ProgInfo {
        &self.info
    }

    /// Number of BPF instructions.
    pub fn insn_count(&self) -> usize {
        self.insn_count
    }

    /// The verifier's statistics from loading the program ("processed N insns ...").
    pub fn verifier_stats(&self) -> &str {
        &self.verifier_stats
    }

    /// The XSKMAP (queue index → socket).
    pub fn xsk_map(&self) -> &MapFd {
        &self.maps.xsks
    }

    fn check_queue(&self, queue: u32) -> Result<()> {
        if queue >= self.opts.queues {
            return Err(Error::invalid(format!(
                "queue {queue} is beyond the table's {} XSKMAP slots: create it with more queues",
                self.opts.queues
            )));
        }
        Ok(())
    }

    /// Send the "allow" frames of RX queue `queue` to the AF_XDP socket `xsk_fd`.
    pub fn set_socket(&self, queue: u32, xsk_fd: RawFd) -> Result<()> {
        self.check_queue(queue)?;
        self.maps.xsks.set_xsk(queue, xsk_fd)
    }

    /// [`XdpTable::set_socket`] only if queue `queue` has no socket yet (what a port does, so
    /// that two ports never take each other's queue).
    pub fn add_socket(&self, queue: u32, xsk_fd: RawFd) -> Result<()> {
        self.check_queue(queue)?;
        self.maps.xsks.add_xsk(queue, xsk_fd).map_err(|e| {
            if e.errno() == Some(libc::EEXIST) {
                Error::os(
                    format!("register a socket for queue {queue} in the XdpTable"),
                    libc::EEXIST,
                    format!(
                        "queue {queue} of the table already has a socket (another port, or set_socket()): close that port or clear_socket({queue}) first"
                    ),
                )
            } else {
                e
            }
        })
    }

    /// Stop sending queue `queue`'s frames to a socket ("allow" then passes them to the kernel).
    pub fn clear_socket(&self, queue: u32) -> Result<()> {
        self.check_queue(queue)?;
        self.maps.xsks.clear_xsk(queue).map(|_| ())
    }

    /// Add one entry; returns its id. See [`XdpTable::apply`].
    pub fn add(&self, e: NewEntry) -> Result<u64> {
        Ok(self.apply(vec![e], &[])?[0])
    }

    /// Remove the entry `id` (`NotFound` if there is none).
    pub fn remove(&self, id: u64) -> Result<()> {
        self.apply(Vec::new(), &[id]).map(|_| ())
    }

    /// Add and remove entries in one change: frames see the table before or after it, never
    /// in between. Returns the ids of the added entries, in order. Fails without changing
    /// anything when an id is unknown or the rules do not fit (`ENOSPC`, with the numbers).
    pub fn apply(&self, add: Vec<NewEntry>, remove: &[u64]) -> Result<Vec<u64>> {
        for e in &add {
            check_rules(&e.rules)?;
        }
        let mut st = lock(&self.state, "rules")?;
        self.apply_in(&mut st, add, remove)
    }

    fn apply_in(
        &self,
        st: &mut RulesState,
        add: Vec<NewEntry>,
        remove: &[u64],
    ) -> Result<Vec<u64>> {
        if fork::generation() != self.generation {
            // The banks' bookkeeping is the creating process's; a copy would diverge from it.
            return Err(Error::State(
                "this XdpTable was inherited across fork(): entries are changed by the process that created it (block()/unblock() work here)".into(),
            ));
        }
        for id in remove {
            if !st.entries.contains_key(id) {
                return Err(Error::NotFound(format!(
                    "no entry with id {id} in the XdpTable (removed, swept after it expired, or never added): see entries() for the ids"
                )));
            }
        }
        let used: usize = st
            .entries
            .iter()
            .filter(|(id, _)| !remove.contains(id))
            .map(|(_, l)| l.entry.rules.len())
            .sum();
        let need: usize = add.iter().map(|e| e.rules.len()).sum();
        if used + need > self.opts.max_rules as usize {
            return Err(Error::os(
                "add to XdpTable",
                libc::ENOSPC,
                format!(
                    "the table is full: {used} of max_rules={} rule slots are in use and this needs {need} more (each rule of a filter takes one; `port N` without src/dst takes two): remove() entries, sweep() expired ones, or create the table with a larger max_rules",
                    self.opts.max_rules
                ),
            ));
        }
        if st.flipped {
            // Frames may still be reading the inactive bank, and counting into quarantined
            // slots: wait until they are done.
            self.grace(st)?;
        }
        if st.free_counters.len() < add.len() {
            return Err(Error::State(format!(
                "XdpTable counter slots exhausted ({} free for {} entries): a bug, please report it",
                st.free_counters.len(),
                add.len()
            )));
        }
        let saved = (st.entries.clone(), st.free_counters.clone(), st.next_id);
        let mut ids = Vec::with_capacity(add.len());
        let mut removed = Vec::new();
        for id in remove {
            if let Some(l) = st.entries.remove(id) {
                removed.push(l.counter);
            }
        }
        for e in add {
            let id = st.next_id;
            st.next_id += 1;
            let counter = st.free_counters.pop().unwrap_or_default();
            st.entries.insert(
                id,
                Live {
                    entry: Entry {
                        id,
                        rules: e.rules,
                        action: e.action,
                        priority: e.priority,
                        expires_ns: e.expires_ns,
                    },
                    counter,
                },
            );
            ids.push(id);
        }
        match self.commit(st) {
            Ok(()) => {
                // A run that started before the switch may still count into them.
                st.quarantined.extend(removed);
                Ok(ids)
            }
            Err(e) => {
                (st.entries, st.free_counters, st.next_id) = saved;
                Err(e)
            }
        }
    }

    /// Zero the quarantined counter slots once no program run can still count into them.
    fn grace(&self, st: &mut RulesState) -> Result<()> {
        wait_for_program_runs();
        st.flipped = false;
        let zeros = vec![0u8; self.maps.counters.value_len()];
        for slot in std::mem::take(&mut st.quarantined) {
            self.maps
                .counters
                .update(&slot.to_ne_bytes(), &zeros, BPF_ANY)?;
            st.free_counters.push(slot);
        }
        Ok(())
    }

    /// Write the entries into the inactive bank and switch to it. The caller has waited for
    /// the runs that could read the inactive bank ([`XdpTable::grace`]).
    fn commit(&self, st: &mut RulesState) -> Result<()> {
        let mut order: Vec<&Live> = st.entries.values().collect();
        order.sort_by_key(|l| (l.entry.priority, l.entry.id));
        let ranked: Vec<Ranked<'_>> = order
            .iter()
            .flat_map(|l| {
                let record = Record {
                    verdict: l.entry.action.verdict(),
                    counter: l.counter,
                };
                l.entry.rules.iter().map(move |rule| Ranked {
                    rule,
                    record,
                    entry: l.entry.id,
                    expires: l.entry.expires_ns,
                })
            })
            .collect();
        let new = Bank::build(&ranked, self.words, self.opts.default);
        let b = 1 - st.active;
        let writes = match self.sync_bank(b, &st.written[b as usize], &new) {
            Ok(n) => n,
            Err(e) => {
                // Half written: make the next sync rewrite every key either side knew.
                st.written[b as usize] = Bank::unknown(&st.written[b as usize], &new);
                return Err(e);
            }
        };
        st.written[b as usize] = new;
        self.maps.meta.update(
            &meta::ACTIVE.to_ne_bytes(),
            &u64::from(b).to_ne_bytes(),
            BPF_ANY,
        )?;
        st.active = b;
        st.flipped = true;
        st.commits += 1;
        st.map_writes += writes + 1;
        Ok(())
    }

    /// Make bank `b` (not read by any program run) hold `new` instead of `old`.
    fn sync_bank(&self, b: u32, old: &Bank, new: &Bank) -> Result<u64> {
        let m = &self.maps;
        let mut n = 0;
        for (i, (o, v)) in old.class.iter().zip(&new.class).enumerate() {
            if o != v {
                let key = b * CLASS_PER_BANK as u32 + i as u32;
                m.class
                    .update(&key.to_ne_bytes(), &bits_bytes(v), BPF_ANY)?;
                n += 1;
            }
        }
        n += sync_trie(&m.src4, &old.src4, &new.src4, |(len, a): (u8, u32)| {
            trie_key(b, 32 + u32::from(len), &a.to_be_bytes())
        })?;
        n += sync_trie(&m.dst4, &old.dst4, &new.dst4, |(len, a): (u8, u32)| {
            trie_key(b, 32 + u32::from(len), &a.to_be_bytes())
        })?;
        n += sync_trie(&m.src6, &old.src6, &new.src6, |(len, a): (u8, u128)| {
            trie_key(b, 32 + u32::from(len), &a.to_be_bytes())
        })?;
        n += sync_trie(&m.dst6, &old.dst6, &new.dst6, |(len, a): (u8, u128)| {
            trie_key(b, 32 + u32::from(len), &a.to_be_bytes())
        })?;
        n += sync_trie(&m.sport, &old.sport, &new.sport, |(len, p): (u8, u16)| {
            trie_key(b, 32 + u32::from(len), &p.to_be_bytes())
        })?;
        n += sync_trie(&m.dport, &old.dport, &new.dport, |(len, p): (u8, u16)| {
            trie_key(b, 32 + u32::from(len), &p.to_be_bytes())
        })?;
        for (rank, (o, v)) in old.records.iter().zip(&new.records).enumerate() {
            if o != v {
                let key = b * self.opts.max_rules + rank as u32;
                m.rules.update(&key.to_ne_bytes(), &v.bytes(), BPF_ANY)?;
                n += 1;
            }
        }
        let n_rules = self.opts.max_rules;
        for (i, (o, v)) in old.deadlines.iter().zip(&new.deadlines).enumerate() {
            if o != v {
                let key = b * n_rules + i as u32;
                m.deadlines
                    .update(&key.to_ne_bytes(), &v.to_ne_bytes(), BPF_ANY)?;
                n += 1;
            }
        }
        for (c, (o, v)) in old.cmask.iter().zip(&new.cmask).enumerate() {
            if o != v {
                let key = b * (n_rules + 1) + c as u32;
                m.cmask
                    .update(&key.to_ne_bytes(), &bits_bytes(v), BPF_ANY)?;
                n += 1;
            }
        }
        m.meta.update(
            &(meta::BANK0 + b).to_ne_bytes(),
            &new.meta().to_ne_bytes(),
            BPF_ANY,
        )?;
        Ok(n + 1)
    }

    /// The live entries (expired ones included until swept), in decision order.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let st = lock(&self.state, "rules")?;
        let mut v: Vec<Entry> = st.entries.values().map(|l| l.entry.clone()).collect();
        v.sort_by_key(|e| (e.priority, e.id));
        Ok(v)
    }

    /// Per-entry counters `{id: counts}`, summed over CPUs.
    pub fn stats(&self) -> Result<BTreeMap<u64, Counts>> {
        let st = lock(&self.state, "rules")?;
        let mut out = BTreeMap::new();
        for (id, l) in &st.entries {
            out.insert(*id, self.read_counter(l.counter)?);
        }
        Ok(out)
    }

    /// Frames no block or entry decided (the default action's counter).
    pub fn default_counts(&self) -> Result<Counts> {
        self.read_counter(2 * self.opts.max_rules)
    }

    fn read_counter(&self, slot: u32) -> Result<Counts> {
        let v = self
            .maps
            .counters
            .lookup_percpu_sum(&slot.to_ne_bytes())?
            .unwrap_or_default();
        Ok(Counts {
            packets: v.first().copied().unwrap_or(0),
            bytes: v.get(1).copied().unwrap_or(0),
        })
    }

    /// Push a decision about the source address `src`: its frames get `action` (usually
    /// `Drop`) in the kernel, before any entry is looked at, for `seconds` (None: until
    /// [`XdpTable::unblock`]). Blocking an address again replaces its action and deadline and
    /// keeps its counters.
    ///
    /// Cheap and safe from any thread, also from a packet handler: a few map updates under a
    /// lock only blocks and sweeps take, never waiting for a rule change. The kernel applies it
    /// to every frame that reaches the program after the call returns; `wait` also waits until
    /// runs that started before have finished (a grace period, milliseconds), so that when it
    /// returns not even a frame already being processed gets another action.
    pub fn block(
        &self,
        src: IpAddr,
        seconds: Option<f64>,
        action: Action,
        wait: bool,
    ) -> Result<()> {
        let expires_ns = seconds.map(deadline_in).transpose()?;
        self.block_until(src, expires_ns, action)?;
        if wait {
            wait_for_program_runs();
        }
        Ok(())
    }

    /// [`XdpTable::block`] for several sources at once (e.g. every source a handler flagged in
    /// a batch), with one grace period at the end when `wait`; returns how many were blocked.
    /// Stops at the first source that cannot be blocked (the blocklist is full): the ones
    /// before it stay blocked.
    pub fn block_many(
        &self,
        srcs: &[IpAddr],
        seconds: Option<f64>,
        action: Action,
        wait: bool,
    ) -> Result<usize> {
        let expires_ns = seconds.map(deadline_in).transpose()?;
        for &src in srcs {
            self.block_until(src, expires_ns, action)?;
        }
        if wait && !srcs.is_empty() {
            wait_for_program_runs();
        }
        Ok(srcs.len())
    }

    /// [`XdpTable::block`] with an absolute deadline (`CLOCK_MONOTONIC` ns; one in the past
    /// makes a block that never matches, until swept).
    pub fn block_until(&self, src: IpAddr, expires_ns: Option<u64>, action: Action) -> Result<()> {
        let src = canonical(src);
        let key = block_key(src);
        let _bs = lock(&self.blocks, "blocks")?;
        // Counters first (kept when the source is blocked again), so the first frame counts.
        let zeros = vec![0u8; self.maps.block_counts.value_len()];
        let fresh = match self.maps.block_counts.update(&key, &zeros, BPF_NOEXIST) {
            Ok(()) => true,
            Err(e) if e.errno() == Some(libc::EEXIST) => false,
            Err(e) => return Err(self.blocks_full(src, e)),
        };
        let mut v = [0u8; 16];
        v[0..8].copy_from_slice(&expires_ns.unwrap_or(0).to_ne_bytes());
        v[8..12].copy_from_slice(&action.verdict().to_ne_bytes());
        if let Err(e) = self.maps.blocks.update(&key, &v, BPF_ANY) {
            if fresh {
                let _ = self.maps.block_counts.delete(&key);
            }
            return Err(self.blocks_full(src, e));
        }
        if !self.blocks_on.swap(true, Ordering::Relaxed) {
            self.maps
                .meta
                .update(&meta::BLOCKS.to_ne_bytes(), &1u64.to_ne_bytes(), BPF_ANY)?;
        }
        Ok(())
    }

    /// A full hash map answers E2BIG: say which limit and what to do.
    fn blocks_full(&self, src: IpAddr, e: Error) -> Error {
        if e.errno() != Some(libc::E2BIG) {
            return e;
        }
        Error::os(
            format!("block {src}"),
            libc::ENOSPC,
            format!(
                "the blocklist is full (max_blocks={}): sweep() expired blocks, unblock() some, or create the table with a larger max_blocks",
                self.opts.max_blocks
            ),
        )
    }

    /// Remove the block of `src`; false if there was none.
    pub fn unblock(&self, src: IpAddr) -> Result<bool> {
        let key = block_key(canonical(src));
        let _bs = lock(&self.blocks, "blocks")?;
        let had = self.maps.blocks.delete(&key)?;
        self.maps.block_counts.delete(&key)?;
        Ok(had)
    }

    /// The blocks with their counters, read from the kernel's maps (so blocks pushed by other
    /// processes sharing the table are there too).
    pub fn blocks(&self) -> Result<Vec<BlockInfo>> {
        let mut out = Vec::new();
        for key in self.maps.blocks.keys()? {
            let Some(b) = self.read_block(&key)? else {
                continue; // unblocked meanwhile
            };
            let v = self
                .maps
                .block_counts
                .lookup_percpu_sum(&key)?
                .unwrap_or_default();
            out.push(BlockInfo {
                addr: addr_of_key(&key),
                block: b,
                counts: Counts {
                    packets: v.first().copied().unwrap_or(0),
                    bytes: v.get(1).copied().unwrap_or(0),
                },
            });
        }
        out.sort_by_key(|b| b.addr);
        Ok(out)
    }

    fn read_block(&self, key: &[u8]) -> Result<Option<Block>> {
        let mut v = [0u8; 16];
        if !self.maps.blocks.lookup(key, &mut v)? {
            return Ok(None);
        }
        let expires = u64::from_ne_bytes(v[0..8].try_into().unwrap_or_default());
        let verdict = u32::from_ne_bytes(v[8..12].try_into().unwrap_or_default());
        let action = [Action::Allow, Action::Drop, Action::Pass]
            .into_iter()
            .find(|a| a.verdict() == verdict)
            .unwrap_or(Action::Pass);
        Ok(Some(Block {
            action,
            expires_ns: (expires != 0).then_some(expires),
        }))
    }

    /// Remove the entries and blocks whose deadline has passed (they already stopped matching
    /// in the kernel at their deadline; this frees their slots). In a process that inherited
    /// the table across `fork()`, only blocks.
    pub fn sweep(&self) -> Result<Swept> {
        let now = ktime_ns();
        let mut swept = Swept::default();
        // Entries only in the process that owns them (see `apply`); blocks anywhere.
        if fork::generation() == self.generation {
            let mut st = lock(&self.state, "rules")?;
            let expired: Vec<u64> = st
                .entries
                .values()
                .filter(|l| !l.entry.live(now))
                .map(|l| l.entry.id)
                .collect();
            if !expired.is_empty() {
                self.apply_in(&mut st, Vec::new(), &expired)?;
                swept.entries = expired.len();
                st.swept += expired.len() as u64;
            }
        }
        // One at a time, re-read under the lock: this process's block() cannot renew it
        // between the check and the delete. (Another process sharing the maps could: its
        // renewal is then undone, and its handler blocks the source again when it shows up.)
        for key in self.maps.blocks.keys()? {
            let mut bs = lock(&self.blocks, "blocks")?;
            if self.read_block(&key)?.is_some_and(|b| !b.live(now)) {
                self.maps.blocks.delete(&key)?;
                self.maps.block_counts.delete(&key)?;
                bs.swept += 1;
                swept.blocks += 1;
            }
        }
        Ok(swept)
    }

    /// Bookkeeping: sizes, changes, sweeps.
    pub fn table_info(&self) -> Result<TableInfo> {
        let st = lock(&self.state, "rules")?;
        let bs = lock(&self.blocks, "blocks")?;
        Ok(TableInfo {
            entries: st.entries.len(),
            rules: st.entries.values().map(|l| l.entry.rules.len()).sum(),
            blocks: self.maps.blocks.keys()?.len(),
            commits: st.commits,
            map_writes: st.map_writes,
            swept_entries: st.swept,
            swept_blocks: bs.swept,
        })
    }

    /// Attach the program to `ifname` (bpf_link, netlink on old kernels); the table holds the
    /// attachment and detaches it on [`XdpTable::detach`] or when dropped. Another program on
    /// the interface is refused unless `force` (see [`crate::xdp::attach()`]). Attaching where
    /// the table already is (a port of this process attached it) only marks it as wanted by
    /// the caller too, and reports it as it is.
    pub fn attach(&self, ifname: &str, mode: AttachMode, force: bool) -> Result<AttachInfo> {
        let netns = current_netns_inode()?;
        let ifindex = if_nametoindex(ifname)?;
        let mut atts = lock(&self.attachments, "attachments")?;
        let generation = fork::generation();
        if let Some(a) = atts.iter_mut().find(|a| a.is(netns, ifindex, generation)) {
            a.user = true;
            return Ok(a.info());
        }
        let att = attach_fd(&self.prog, self.info.id, ifname, mode, force)?;
        let a = Attached {
            att,
            generation,
            netns,
            user: true,
            ports: 0,
        };
        let info = a.info();
        atts.push(a);
        Ok(info)
    }

    /// Let go of the attachments made with [`XdpTable::attach`] to `ifname` (None: to every
    /// interface); returns how many were detached. Where a port of this process still uses the
    /// table ([`XdpTable::hold`]) the program stays attached until the port lets go of it. In a
    /// process forked after the attach, the attachment is the parent's: it is let go of here
    /// without detaching the parent's program.
    pub fn detach(&self, ifname: Option<&str>) -> Result<usize> {
        let mut atts = lock(&self.attachments, "attachments")?;
        let mut n = 0;
        let mut keep = Vec::new();
        let mut first_err = None;
        for mut a in atts.drain(..) {
            if ifname.is_some_and(|i| i != a.att.ifname()) {
                keep.push(a);
            } else if a.generation != fork::generation() {
                // Its Drop would detach the link for every process; the descriptor goes with
                // this process instead.
                std::mem::forget(a.att);
            } else if a.ports > 0 {
                a.user = false;
                keep.push(a);
            } else {
                match a.att.detach() {
                    Ok(()) => n += 1,
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        *atts = keep;
        match first_err {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    /// Interfaces it is attached to (by [`XdpTable::attach`] or by a port's
    /// [`XdpTable::hold`]).
    pub fn attached(&self) -> Result<Vec<String>> {
        Ok(lock(&self.attachments, "attachments")?
            .iter()
            .map(|a| a.att.ifname().to_string())
            .collect())
    }

    /// Make sure the program runs on `ifname` for as long as the returned [`TableHold`] lives
    /// (what an [`crate::xsk::XskPort`] opened on the table does). Like libxdp's sockets
    /// sharing one XDP program, the program is attached once per interface and holds count:
    /// if the table is attached there already — by [`XdpTable::attach`], another hold, or a
    /// parent process this one was forked from — that attachment is used as it is; otherwise
    /// it is attached (`mode`, `force` as for [`XdpTable::attach`]) and detached again when
    /// the last hold goes and `attach` did not ask for it too. The hold keeps the table (its
    /// program and maps) alive: dropping every other reference to it is safe.
    pub fn hold(
        self: &Arc<Self>,
        ifname: &str,
        mode: AttachMode,
        force: bool,
    ) -> Result<TableHold> {
        let netns = current_netns_inode()?;
        let ifindex = if_nametoindex(ifname)?;
        let generation = fork::generation();
        let mut atts = lock(&self.attachments, "attachments")?;
        let hold = |counted: bool, mode: XdpMode, notes: Vec<String>| TableHold {
            table: Arc::clone(self),
            key: counted.then_some((netns, ifindex, generation)),
            mode,
            notes,
        };
        if let Some(a) = atts.iter_mut().find(|a| a.is(netns, ifindex, generation)) {
            a.ports += 1;
            return Ok(hold(true, a.att.mode(), Vec::new()));
        }
        // Attached by someone else: an inherited attachment, a parent process, a pinned link.
        if let Some(p) = query_index(ifindex)?
            .into_iter()
            .find(|p| p.attached.prog_id == self.info.id)
        {
            let note = format!(
                "the XdpTable (program id {}) was already attached to {ifname} by another holder: used as it is",
                self.info.id
            );
            return Ok(hold(false, p.attached.mode, vec![note]));
        }
        let att = attach_fd(&self.prog, self.info.id, ifname, mode, force)?;
        let h = hold(true, att.mode(), att.notes().to_vec());
        atts.push(Attached {
            att,
            generation,
            netns,
            user: false,
            ports: 1,
        });
        Ok(h)
    }

    /// The end of a [`TableHold`]: detach when it was the last use of an attachment nobody
    /// asked for with [`XdpTable::attach`].
    fn release(&self, key: (u64, u32, u64)) -> Result<()> {
        let (netns, ifindex, generation) = key;
        if generation != fork::generation() {
            return Ok(()); // an inherited hold: the parent's to count
        }
        let mut atts = lock(&self.attachments, "attachments")?;
        let Some(i) = atts.iter().position(|a| a.is(netns, ifindex, generation)) else {
            return Ok(());
        };
        let a = &mut atts[i];
        a.ports = a.ports.saturating_sub(1);
        if a.ports == 0 && !a.user {
            let mut a = atts.swap_remove(i);
            a.att.detach()?;
        }
        Ok(())
    }

    /// Run the program on `frame` as if it arrived on RX queue 0 with a socket bound there:
    /// `XDP_REDIRECT` is "allow", `XDP_DROP` "drop", `XDP_PASS` "pass". Runs a twin of the
    /// program (same maps, a private XSKMAP holding an unbound socket at queue 0), so attached
    /// interfaces are not affected — but the counters, shared with the real program, count
    /// test runs like traffic.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<TestRunResult> {
        if frame.len() < 14 {
            return Err(Error::invalid(format!(
                "frame of {} bytes is shorter than an Ethernet header (14): XDP never sees such frames",
                frame.len()
            )));
        }
        let mut g = lock(&self.twin, "test twin")?;
        if g.is_none() {
            let xsks = MapFd::xskmap(1, "kbx_tbl_twin")?;
            let shape = Shape {
                words: self.words,
                slots: self.opts.max_rules,
                default_counter: 2 * self.opts.max_rules,
                form: self.form,
            };
            let insns = table_program(&self.maps.fds(xsks.raw()), shape)?;
            let (prog, _) = load(&insns, "kbypass_tbltest", self.opts.frags)?;
            let sock = XskFd::new()?;
            xsks.set_xsk(0, sock.raw())?;
            *g = Some(Twin {
                prog,
                _xsks: xsks,
                _sock: sock,
            });
        }
        let t = g
            .as_ref()
            .ok_or_else(|| Error::State("test twin missing".into()))?;
        let mut out = vec![0u8; frame.len() + 256];
        t.prog.test_run(TestRun {
            data: frame,
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })
    }
}

impl Drop for XdpTable {
    fn drop(&mut self) {
        // Detach before the maps close (only what this process attached, see `detach`).
        let _ = self.detach(None);
    }
}

impl super::SocketProgram for XdpTable {
    fn prog_fd(&self) -> &ProgFd {
        &self.prog
    }
    fn prog_id(&self) -> u32 {
        self.info.id
    }
    fn queues(&self) -> u32 {
        self.opts.queues
    }
    fn frags(&self) -> bool {
        self.opts.frags
    }
    fn set_socket(&self, queue: u32, xsk_fd: RawFd) -> Result<()> {
        XdpTable::set_socket(self, queue, xsk_fd)
    }
    fn clear_socket(&self, queue: u32) -> Result<()> {
        XdpTable::clear_socket(self, queue)
    }
}
