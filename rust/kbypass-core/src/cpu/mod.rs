//! CPU topology, thread pinning, and where a NIC queue's interrupts land.
//!
//! Everything is read from sysfs and procfs (`/sys/devices/system/cpu`, `/sys/devices/system/node`,
//! `/sys/class/net`, `/proc/interrupts`, `/proc/irq`). The readers take a [`Roots`] so tests can
//! point them at a fake tree; the public functions use the real one.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::sys::affinity;

/// Where sysfs and procfs are mounted (the real `/sys` and `/proc` unless a test says otherwise).
#[derive(Debug, Clone)]
pub struct Roots {
    /// sysfs mount point.
    pub sys: PathBuf,
    /// procfs mount point.
    pub proc: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            sys: "/sys".into(),
            proc: "/proc".into(),
        }
    }
}

/// One logical CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpu {
    /// Logical CPU number.
    pub id: usize,
    /// `topology/core_id` (unique only within a package).
    pub core_id: i64,
    /// `topology/physical_package_id` (the socket).
    pub package: i64,
    /// NUMA node, if the kernel has NUMA.
    pub node: Option<usize>,
    /// Hyper-threads sharing this CPU's core, itself included.
    pub siblings: Vec<usize>,
}

/// One physical core: the logical CPUs (SMT siblings) that share it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Core {
    /// Package (socket) of the core.
    pub package: i64,
    /// `core_id` within the package.
    pub core_id: i64,
    /// Logical CPUs on this core.
    pub cpus: Vec<usize>,
}

/// One NUMA node and its CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Node number.
    pub id: usize,
    /// CPUs on the node.
    pub cpus: Vec<usize>,
}

/// The machine's CPU layout as seen by this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Online CPUs.
    pub online: Vec<usize>,
    /// CPUs the calling thread may run on (`sched_getaffinity`).
    pub allowed: Vec<usize>,
    /// CPUs isolated from the scheduler (`isolcpus=`).
    pub isolated: Vec<usize>,
    /// CPUs without the periodic tick (`nohz_full=`).
    pub nohz_full: Vec<usize>,
    /// Every online CPU.
    pub cpus: Vec<Cpu>,
    /// Physical cores, by package then core id.
    pub cores: Vec<Core>,
    /// Packages (sockets) and their CPUs.
    pub packages: BTreeMap<i64, Vec<usize>>,
    /// NUMA nodes (empty when the kernel has no NUMA support).
    pub nodes: Vec<Node>,
}

impl Topology {
    /// The CPUs of `node`, or an empty list if it does not exist.
    pub fn node_cpus(&self, node: usize) -> &[usize] {
        self.nodes
            .iter()
            .find(|n| n.id == node)
            .map_or(&[], |n| &n.cpus)
    }

    /// The entry of logical CPU `id`.
    pub fn cpu(&self, id: usize) -> Option<&Cpu> {
        self.cpus.iter().find(|c| c.id == id)
    }
}

pub use crate::sys::affinity::parse_cpu_list;

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn read_list(p: &Path) -> Vec<usize> {
    read_trim(p)
        .and_then(|s| parse_cpu_list(&s).ok())
        .unwrap_or_default()
}

/// Read the topology from the real sysfs.
pub fn topology() -> Result<Topology> {
    topology_at(&Roots::default(), affinity::get_current()?)
}

/// Read the topology under `roots`, with `allowed` as the thread's affinity.
pub fn topology_at(roots: &Roots, allowed: Vec<usize>) -> Result<Topology> {
    let cpu_dir = roots.sys.join("devices/system/cpu");
    let online = match read_trim(&cpu_dir.join("online")) {
        Some(s) => parse_cpu_list(&s)?,
        None => {
            return Err(Error::NotFound(format!(
                "{} is missing: is sysfs mounted?",
                cpu_dir.join("online").display()
            )))
        }
    };
    let node_dir = roots.sys.join("devices/system/node");
    let mut nodes = Vec::new();
    if let Ok(rd) = fs::read_dir(&node_dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name
                .strip_prefix("node")
                .and_then(|n| n.parse::<usize>().ok())
            {
                nodes.push(Node {
                    id,
                    cpus: read_list(&e.path().join("cpulist")),
                });
            }
        }
    }
    nodes.sort_by_key(|n| n.id);
    let mut cpus = Vec::new();
    for &id in &online {
        let t = cpu_dir.join(format!("cpu{id}/topology"));
        let num = |f: &str| {
            read_trim(&t.join(f))
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or(-1)
        };
        let mut siblings = read_list(&t.join("thread_siblings_list"));
        if siblings.is_empty() {
            siblings = read_list(&t.join("core_cpus_list"));
        }
        if siblings.is_empty() {
            siblings = vec![id];
        }
        let node = nodes.iter().find(|n| n.cpus.contains(&id)).map(|n| n.id);
        cpus.push(Cpu {
            id,
            core_id: num("core_id"),
            package: num("physical_package_id"),
            node,
            siblings,
        });
    }
    let mut cores: BTreeMap<(i64, i64), Vec<usize>> = BTreeMap::new();
    let mut packages: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for c in &cpus {
        // Without topology files every CPU is its own core.
        let key = if c.core_id < 0 {
            (c.package, c.id as i64)
        } else {
            (c.package, c.core_id)
        };
        cores.entry(key).or_default().push(c.id);
        packages.entry(c.package).or_default().push(c.id);
    }
    let cores = cores
        .into_iter()
        .map(|((package, core_id), cpus)| Core {
            package,
            core_id,
            cpus,
        })
        .collect();
    Ok(Topology {
        online,
        allowed,
        isolated: read_list(&cpu_dir.join("isolated")),
        nohz_full: read_list(&cpu_dir.join("nohz_full")),
        cpus,
        cores,
        packages,
        nodes,
    })
}

/// CPUs the calling thread may run on.
pub fn allowed() -> Result<Vec<usize>> {
    affinity::get_current()
}

/// Pin the calling thread to `cpus`. Every CPU must be online and inside the process's
/// cpuset (the kernel would silently drop the others; here they are an error and the old
/// affinity stays).
pub fn pin(cpus: &[usize]) -> Result<()> {
    if cpus.is_empty() {
        return Err(Error::invalid("pin() needs at least one CPU"));
    }
    let online = parse_cpu_list(
        &read_trim(Path::new("/sys/devices/system/cpu/online")).unwrap_or_default(),
    )?;
    for &c in cpus {
        if c >= affinity::MAX_CPUS || (!online.is_empty() && !online.contains(&c)) {
            return Err(Error::invalid(format!(
                "CPU {c} is not online: online CPUs are {}",
                format_cpu_list(&online)
            )));
        }
    }
    let previous = affinity::get_current()?;
    let refused = |bad: &[usize]| {
        Error::invalid(format!(
            "CPU(s) {} are outside this process's cpuset: pick from the online CPUs the cgroup allows (kbypass.cpu.allowed() before pinning was {})",
            format_cpu_list(bad),
            format_cpu_list(&previous)
        ))
    };
    match affinity::set_current(cpus) {
        Ok(()) => {}
        Err(e) if e.errno() == Some(libc::EINVAL) => return Err(refused(cpus)),
        Err(e) => return Err(e),
    }
    let now = affinity::get_current()?;
    let dropped: Vec<usize> = cpus.iter().copied().filter(|c| !now.contains(c)).collect();
    if !dropped.is_empty() {
        let _ = affinity::set_current(&previous);
        return Err(refused(&dropped));
    }
    Ok(())
}

/// Pins the calling thread while alive and restores its previous affinity on drop.
/// Not `Send`: affinity belongs to the thread that created the guard.
#[derive(Debug)]
pub struct Pinned {
    previous: Vec<usize>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Pinned {
    /// Pin the calling thread to `cpus`, remembering its current affinity.
    pub fn new(cpus: &[usize]) -> Result<Self> {
        let previous = affinity::get_current()?;
        pin(cpus)?;
        Ok(Pinned {
            previous,
            _not_send: std::marker::PhantomData,
        })
    }

    /// The affinity that will be restored.
    pub fn previous(&self) -> &[usize] {
        &self.previous
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // The old set was valid a moment ago; if a cpuset shrank meanwhile there is nothing
        // better to restore, so the error is ignored.
        let _ = affinity::set_current(&self.previous);
    }
}

/// `0-3,8` style text for a CPU list.
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut v: Vec<usize> = cpus.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

fn check_ifname(ifname: &str) -> Result<()> {
    if ifname.is_empty()
        || ifname.len() > 15
        || ifname.contains('/')
        || ifname == "."
        || ifname == ".."
        || ifname.contains('\0')
        || ifname.chars().any(char::is_whitespace)
    {
        return Err(Error::invalid(format!(
            "{ifname:?} is not a valid interface name (1-15 characters, no '/' or spaces)"
        )));
    }
    Ok(())
}

fn net_dir(roots: &Roots, ifname: &str) -> Result<PathBuf> {
    check_ifname(ifname)?;
    let d = roots.sys.join("class/net").join(ifname);
    if !d.exists() {
        return Err(Error::NotFound(format!(
            "no such network interface {ifname:?}: list them with `ip link`"
        )));
    }
    Ok(d)
}

/// The hardware device behind a netdev: `device`, or its parent for virtio (the PCI function
/// holds `numa_node` and `msi_irqs`). `None` for virtual interfaces (veth, bridge, lo).
fn hw_device(net: &Path) -> Option<PathBuf> {
    let dev = fs::canonicalize(net.join("device")).ok()?;
    let subsystem = fs::read_link(dev.join("subsystem")).ok();
    let is_virtio = subsystem
        .as_ref()
        .and_then(|s| s.file_name())
        .is_some_and(|n| n == "virtio");
    if is_virtio {
        if let Some(parent) = dev.parent() {
            if parent.join("numa_node").exists() || parent.join("msi_irqs").exists() {
                return Some(parent.to_path_buf());
            }
        }
    }
    Some(dev)
}

/// NUMA node of the NIC behind `ifname`; `None` when unknown (-1) or the interface is virtual.
pub fn nic_numa_node(ifname: &str) -> Result<Option<usize>> {
    nic_numa_node_at(&Roots::default(), ifname)
}

/// [`nic_numa_node`] under `roots`.
pub fn nic_numa_node_at(roots: &Roots, ifname: &str) -> Result<Option<usize>> {
    let net = net_dir(roots, ifname)?;
    let Some(dev) = hw_device(&net) else {
        return Ok(None);
    };
    Ok(read_trim(&dev.join("numa_node"))
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(|n| usize::try_from(n).ok()))
}

/// What a queue interrupt serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QueueKind {
    /// Receive queue.
    Rx,
    /// Transmit queue.
    Tx,
    /// One interrupt for a receive and a transmit queue pair.
    Combined,
}

impl QueueKind {
    /// `rx`, `tx`, `combined` (as in `ethtool -l`).
    pub fn name(self) -> &'static str {
        match self {
            QueueKind::Rx => "rx",
            QueueKind::Tx => "tx",
            QueueKind::Combined => "combined",
        }
    }
}

/// One interrupt of a NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueIrq {
    /// IRQ number.
    pub irq: u32,
    /// Action name from `/proc/interrupts` (e.g. `virtio2-input.0`, `i40e-eth0-TxRx-3`).
    pub name: String,
    /// The queue it serves, when the name says (`None` for config/async/misc interrupts).
    pub queue: Option<(QueueKind, usize)>,
    /// `/proc/irq/N/smp_affinity_list`: CPUs the IRQ may be delivered to.
    pub affinity: Vec<usize>,
    /// `/proc/irq/N/effective_affinity_list`: where it is actually delivered (falls back to
    /// `affinity` on kernels without it).
    pub effective: Vec<usize>,
}

impl QueueIrq {
    /// `rx-0` style queue name (as in `/sys/class/net/IF/queues`), if known.
    pub fn queue_name(&self) -> Option<String> {
        self.queue.map(|(k, i)| format!("{}-{i}", k.name()))
    }
}

/// Parse the queue an IRQ action name serves, e.g. `eth0-TxRx-3` → combined 3,
/// `virtio2-input.0` → rx 0, `mlx5_comp5@pci:…` → combined 5.
pub fn parse_queue(name: &str) -> Option<(QueueKind, usize)> {
    let base = name.split('@').next().unwrap_or(name).to_ascii_lowercase();
    // The queue number is the trailing run of digits.
    let digits_at = base.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits_at == base.len() {
        return None;
    }
    let idx: usize = base[digits_at..].parse().ok()?;
    let head = base[..digits_at].trim_end_matches(['-', '.', '_']);
    let word = head.rsplit(['-', '.', '_']).next().unwrap_or(head);
    let kind = match word {
        "txrx" | "rxtx" | "comp" | "combined" | "io" | "queue" | "q" => QueueKind::Combined,
        "rx" | "input" | "rxq" => QueueKind::Rx,
        "tx" | "output" | "txq" => QueueKind::Tx,
        _ => return None,
    };
    Some((kind, idx))
}

/// The interrupts of `ifname`'s queues: the device's MSI/MSI-X vectors plus any
/// `/proc/interrupts` line naming the interface. Empty for virtual interfaces (veth).
pub fn queue_irqs(ifname: &str) -> Result<Vec<QueueIrq>> {
    queue_irqs_at(&Roots::default(), ifname)
}

/// [`queue_irqs`] under `roots`.
pub fn queue_irqs_at(roots: &Roots, ifname: &str) -> Result<Vec<QueueIrq>> {
    let net = net_dir(roots, ifname)?;
    let mut device_irqs: BTreeSet<u32> = BTreeSet::new();
    if let Some(dev) = hw_device(&net) {
        if let Ok(rd) = fs::read_dir(dev.join("msi_irqs")) {
            device_irqs.extend(
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()),
            );
        }
    }
    let interrupts = fs::read_to_string(roots.proc.join("interrupts")).unwrap_or_default();
    let mut out = Vec::new();
    for line in interrupts.lines() {
        let Some((num, rest)) = line.trim_start().split_once(':') else {
            continue;
        };
        let Ok(irq) = num.parse::<u32>() else {
            continue;
        };
        // Last column is the action name (comma-separated when an IRQ is shared).
        let name = rest.split_whitespace().last().unwrap_or("").to_string();
        let names_if = name
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .any(|tok| tok == ifname);
        if !(device_irqs.contains(&irq) || names_if) {
            continue;
        }
        let irq_dir = roots.proc.join(format!("irq/{irq}"));
        let affinity = read_list(&irq_dir.join("smp_affinity_list"));
        let mut effective = read_list(&irq_dir.join("effective_affinity_list"));
        if effective.is_empty() {
            effective = affinity.clone();
        }
        out.push(QueueIrq {
            irq,
            queue: parse_queue(&name),
            name,
            affinity,
            effective,
        });
    }
    Ok(out)
}

/// Choose a CPU for the poll-mode worker of `ifname`'s queue `queue`: allowed, on the NIC's
/// NUMA node when known, away from the CPUs that take the queue's interrupts and their SMT
/// siblings, isolated CPUs first, CPU 0 (housekeeping) last. It gives up constraints one at a
/// time rather than fail (TX interrupt, then siblings, then the RX interrupt CPU, then the
/// node), because a machine with one CPU still has to run the worker somewhere.
pub fn worker_cpu(ifname: &str, queue: usize) -> Result<usize> {
    let topo = topology()?;
    let node = nic_numa_node(ifname)?;
    let irqs = queue_irqs(ifname)?;
    Ok(choose_worker_cpu(&topo, node, &irqs, queue))
}

/// The policy behind [`worker_cpu`], on given facts.
pub fn choose_worker_cpu(
    topo: &Topology,
    node: Option<usize>,
    irqs: &[QueueIrq],
    queue: usize,
) -> usize {
    let allowed: BTreeSet<usize> = topo.allowed.iter().copied().collect();
    let irq_cpus = |kinds: &[QueueKind]| -> BTreeSet<usize> {
        irqs.iter()
            .filter(|q| {
                q.queue
                    .is_some_and(|(k, i)| i == queue && kinds.contains(&k))
            })
            // An IRQ that may land anywhere tells nothing about where it lands.
            .filter(|q| topo.online.is_empty() || q.effective.len() < topo.online.len())
            .flat_map(|q| q.effective.iter().copied())
            .collect()
    };
    let with_siblings = |set: &BTreeSet<usize>| -> BTreeSet<usize> {
        let mut out = set.clone();
        out.extend(
            set.iter()
                .filter_map(|&c| topo.cpu(c))
                .flat_map(|c| c.siblings.iter().copied()),
        );
        out
    };
    let rx = irq_cpus(&[QueueKind::Rx, QueueKind::Combined]);
    let all = irq_cpus(&[QueueKind::Rx, QueueKind::Tx, QueueKind::Combined]);
    let avoid_sets = [with_siblings(&all), with_siblings(&rx), rx, BTreeSet::new()];
    let on_node: BTreeSet<usize> = match node {
        Some(n) => topo
            .node_cpus(n)
            .iter()
            .copied()
            .filter(|c| allowed.contains(c))
            .collect(),
        None => BTreeSet::new(),
    };
    let isolated: BTreeSet<usize> = topo.isolated.iter().copied().collect();
    for pool in [&on_node, &allowed] {
        for avoid in &avoid_sets {
            let best = pool
                .iter()
                .copied()
                .filter(|c| !avoid.contains(c))
                .min_by_key(|c| (!isolated.contains(c), *c == 0, *c));
            if let Some(cpu) = best {
                return cpu;
            }
        }
    }
    // `allowed` is never empty for a running thread; 0 is the last resort.
    topo.allowed.first().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throw-away sysfs/procfs tree describing 2 nodes × 2 cores × 2 threads and one NIC.
    struct Fake {
        dir: PathBuf,
    }

    impl Fake {
        fn new(tag: &str) -> Fake {
            let dir =
                std::env::temp_dir().join(format!("kbypass-cpu-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            let w = |rel: &str, text: &str| {
                let p = dir.join(rel);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(p, text).unwrap();
            };
            w("sys/devices/system/cpu/online", "0-7\n");
            w("sys/devices/system/cpu/isolated", "7\n");
            for cpu in 0..8usize {
                let core = (cpu % 4) as i64; // siblings are n and n+4, like Intel numbering
                let t = format!("sys/devices/system/cpu/cpu{cpu}/topology");
                w(&format!("{t}/core_id"), &format!("{}\n", core % 2));
                w(
                    &format!("{t}/physical_package_id"),
                    &format!("{}\n", core / 2),
                );
                w(
                    &format!("{t}/thread_siblings_list"),
                    &format!("{},{}\n", cpu % 4, cpu % 4 + 4),
                );
            }
            w("sys/devices/system/node/node0/cpulist", "0-1,4-5\n");
            w("sys/devices/system/node/node1/cpulist", "2-3,6-7\n");
            // eth9: a PCI NIC on node 1 with MSI-X vectors 50-52.
            w("sys/devices/pci0000:00/0000:00:03.0/numa_node", "1\n");
            for irq in [50, 51, 52] {
                w(
                    &format!("sys/devices/pci0000:00/0000:00:03.0/msi_irqs/{irq}"),
                    "msix\n",
                );
            }
            fs::create_dir_all(dir.join("sys/class/net/eth9")).unwrap();
            std::os::unix::fs::symlink(
                dir.join("sys/devices/pci0000:00/0000:00:03.0"),
                dir.join("sys/class/net/eth9/device"),
            )
            .unwrap();
            // veth0: virtual, no device link.
            fs::create_dir_all(dir.join("sys/class/net/veth0")).unwrap();
            w(
                "proc/interrupts",
                "           CPU0 CPU1\n 50:  1 2 PCI-MSIX-0000:00:03.0 0-edge eth9-config\n 51:  1 2 PCI-MSIX-0000:00:03.0 1-edge eth9-TxRx-0\n 52:  1 2 PCI-MSIX-0000:00:03.0 2-edge eth9-TxRx-1\n 60:  0 0 IO-APIC 4-edge ttyS0\nNMI: 0 0 Non-maskable interrupts\n",
            );
            for (irq, cpus) in [(50, "0-7"), (51, "2"), (52, "3")] {
                w(
                    &format!("proc/irq/{irq}/smp_affinity_list"),
                    &format!("{cpus}\n"),
                );
            }
            Fake { dir }
        }

        fn roots(&self) -> Roots {
            Roots {
                sys: self.dir.join("sys"),
                proc: self.dir.join("proc"),
            }
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn cpu_lists_parse_and_format() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11").unwrap(),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_cpu_list("").unwrap(), Vec::<usize>::new());
        assert_eq!(parse_cpu_list("0-6:2").unwrap(), vec![0, 2, 4, 6]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert_eq!(format_cpu_list(&[3, 0, 1, 2, 8, 10, 11]), "0-3,8,10-11");
    }

    #[test]
    fn fake_tree_topology() {
        let f = Fake::new("topo");
        let t = topology_at(&f.roots(), vec![0, 1, 2, 3, 4, 5, 6, 7]).unwrap();
        assert_eq!(t.online, (0..8).collect::<Vec<_>>());
        assert_eq!(t.isolated, vec![7]);
        assert!(t.nohz_full.is_empty());
        assert_eq!(t.cores.len(), 4);
        assert!(t.cores.iter().all(|c| c.cpus.len() == 2));
        assert_eq!(t.packages.len(), 2);
        assert_eq!(t.cpu(6).unwrap().siblings, vec![2, 6]);
        assert_eq!(t.cpu(6).unwrap().node, Some(1));
        assert_eq!(t.node_cpus(1), &[2, 3, 6, 7]);
    }

    #[test]
    fn fake_nic_node_and_queue_irqs() {
        let f = Fake::new("nic");
        let r = f.roots();
        assert_eq!(nic_numa_node_at(&r, "eth9").unwrap(), Some(1));
        assert_eq!(nic_numa_node_at(&r, "veth0").unwrap(), None);
        assert!(matches!(
            nic_numa_node_at(&r, "nope0"),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            nic_numa_node_at(&r, "../x"),
            Err(Error::InvalidArgument(_))
        ));
        let irqs = queue_irqs_at(&r, "eth9").unwrap();
        assert_eq!(
            irqs.iter().map(|q| q.irq).collect::<Vec<_>>(),
            vec![50, 51, 52]
        );
        assert_eq!(irqs[0].queue, None);
        assert_eq!(irqs[1].queue_name().as_deref(), Some("combined-0"));
        assert_eq!(irqs[2].effective, vec![3]);
        assert!(queue_irqs_at(&r, "veth0").unwrap().is_empty());

        let t = topology_at(&r, (0..8).collect()).unwrap();
        // Queue 0's IRQ is on CPU 2 (sibling 6): on node 1 that leaves 3 and 7; 7 is isolated.
        assert_eq!(choose_worker_cpu(&t, Some(1), &irqs, 0), 7);
        // Only node-1 CPUs 2 and 6 allowed: both are the IRQ core; take the sibling, not the IRQ CPU.
        let narrow = Topology {
            allowed: vec![2, 6],
            ..t.clone()
        };
        assert_eq!(choose_worker_cpu(&narrow, Some(1), &irqs, 0), 6);
        // Unknown node: any allowed CPU away from the IRQ core, CPU 0 last, isolated first.
        assert_eq!(choose_worker_cpu(&t, None, &irqs, 0), 7);
        let no_iso = Topology {
            isolated: vec![],
            ..t
        };
        assert_eq!(choose_worker_cpu(&no_iso, None, &[], 0), 1);
        // Two CPUs, RX interrupt on 1 and TX on 0 (this machine's virtio NIC): RX matters more.
        let two = topology_at(&r, vec![0, 1]).unwrap();
        let two = Topology {
            online: vec![0, 1],
            cpus: two.cpus[..2].to_vec(),
            isolated: vec![],
            ..two
        };
        let q = |name: &str, cpu: usize| QueueIrq {
            irq: 1,
            name: name.into(),
            queue: parse_queue(name),
            affinity: vec![0, 1],
            effective: vec![cpu],
        };
        let virtio = [q("virtio2-input.0", 1), q("virtio2-output.0", 0)];
        assert_eq!(choose_worker_cpu(&two, None, &virtio, 0), 0);
    }

    #[test]
    fn queue_names_parse() {
        assert_eq!(parse_queue("virtio2-input.0"), Some((QueueKind::Rx, 0)));
        assert_eq!(parse_queue("virtio2-output.3"), Some((QueueKind::Tx, 3)));
        assert_eq!(
            parse_queue("i40e-eth0-TxRx-12"),
            Some((QueueKind::Combined, 12))
        );
        assert_eq!(
            parse_queue("mlx5_comp5@pci:0000:3b:00.0"),
            Some((QueueKind::Combined, 5))
        );
        assert_eq!(parse_queue("eth0-rx-2"), Some((QueueKind::Rx, 2)));
        assert_eq!(parse_queue("virtio2-config"), None);
        assert_eq!(parse_queue("mlx5_async0"), None);
    }

    #[test]
    fn real_topology_and_pinning_round_trip() {
        let t = topology().unwrap();
        assert!(!t.online.is_empty());
        assert!(t.allowed.iter().all(|c| t.online.contains(c)));
        assert!(t.cpus.iter().all(|c| c.siblings.contains(&c.id)));
        let before = allowed().unwrap();
        let target = *before.last().unwrap();
        {
            let g = Pinned::new(&[target]).unwrap();
            assert_eq!(g.previous(), &before[..]);
            assert_eq!(allowed().unwrap(), vec![target]);
        }
        assert_eq!(allowed().unwrap(), before);
    }

    #[test]
    fn bad_pins_are_refused_and_leave_affinity_alone() {
        let before = allowed().unwrap();
        assert!(matches!(pin(&[]), Err(Error::InvalidArgument(_))));
        let e = pin(&[100_000]).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        let offline =
            parse_cpu_list(&fs::read_to_string("/sys/devices/system/cpu/online").unwrap())
                .unwrap()
                .last()
                .unwrap()
                + 1;
        let e = pin(&[offline]).unwrap_err();
        assert!(e.to_string().contains("not online"), "{e}");
        assert_eq!(allowed().unwrap(), before);
    }

    #[test]
    fn real_interfaces() {
        assert!(matches!(
            nic_numa_node("kbp-none0"),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(queue_irqs("kbp-none0"), Err(Error::NotFound(_))));
        // Loopback is virtual: no node, no IRQs.
        assert_eq!(nic_numa_node("lo").unwrap(), None);
        assert!(queue_irqs("lo").unwrap().is_empty());
        let cpu = worker_cpu("lo", 0).unwrap();
        assert!(allowed().unwrap().contains(&cpu));
    }
}
