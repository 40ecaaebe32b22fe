//! `HugeRegion`: anonymous memory on the largest pages the machine will give.
//!
//! Tiers, tried in order: 1 GiB hugetlb pages, 2 MiB hugetlb pages, transparent hugepages
//! (a 2 MiB-aligned range with `MADV_HUGEPAGE`), 4 KiB pages. The region is populated up front
//! (`MADV_POPULATE_WRITE`, so a missing hugepage is an error rather than a SIGBUS later),
//! optionally bound to a NUMA node (`mbind` before the first fault), and locked (`mlock`) when
//! it is swappable. When RLIMIT_MEMLOCK is too low for the lock, its soft limit is raised by
//! what the region needs, never to unlimited, and [`HugeRegion::notes`] says so. A Mempool or an AF_XDP UMEM is carved from it by offset: the base pointer,
//! length, page size and tier never change for the life of the value. Share it with `Arc`.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::sys::mm::{self, Mapping};
use crate::sys::numa::{self, Policy};
use crate::sys::pages;

const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;
const THP_SIZE: usize = 2 * MIB;

/// The kind of page backing a [`HugeRegion`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// 1 GiB hugetlb pages.
    Huge1G,
    /// 2 MiB hugetlb pages.
    Huge2M,
    /// Transparent hugepages: 2 MiB pages the kernel assembled on request (`MADV_HUGEPAGE`).
    Thp,
    /// Base pages (4 KiB on x86-64).
    Small,
}

impl Tier {
    /// All tiers, largest page first (the order `auto` tries them in).
    pub const ALL: [Tier; 4] = [Tier::Huge1G, Tier::Huge2M, Tier::Thp, Tier::Small];

    /// Page size of this tier in bytes.
    pub fn page_size(self) -> usize {
        match self {
            Tier::Huge1G => GIB,
            Tier::Huge2M | Tier::Thp => THP_SIZE,
            Tier::Small => mm::page_size(),
        }
    }

    /// Short name used in Python and in messages: `1g`, `2m`, `thp`, `4k`.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Huge1G => "1g",
            Tier::Huge2M => "2m",
            Tier::Thp => "thp",
            Tier::Small => "4k",
        }
    }

    /// Whether this tier is hugetlbfs memory (reserved pages, never swapped).
    pub fn is_hugetlb(self) -> bool {
        matches!(self, Tier::Huge1G | Tier::Huge2M)
    }

    fn mmap_flags(self) -> libc::c_int {
        match self {
            Tier::Huge1G => libc::MAP_HUGETLB | libc::MAP_HUGE_1GB,
            Tier::Huge2M => libc::MAP_HUGETLB | libc::MAP_HUGE_2MB,
            Tier::Thp | Tier::Small => 0,
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which tiers a [`HugeRegion`] may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HugePages {
    /// Largest tier available, falling back down to 4 KiB pages.
    Auto,
    /// hugetlb pages (1 GiB or 2 MiB) or an error that says how to reserve them.
    Require,
    /// 4 KiB pages only (and `MADV_NOHUGEPAGE`, so THP "always" does not change that).
    Never,
    /// Exactly this tier or an error (benchmarks compare tiers this way).
    Only(Tier),
}

impl FromStr for HugePages {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => HugePages::Auto,
            "require" => HugePages::Require,
            "never" => HugePages::Never,
            "1g" => HugePages::Only(Tier::Huge1G),
            "2m" => HugePages::Only(Tier::Huge2M),
            "thp" => HugePages::Only(Tier::Thp),
            "4k" => HugePages::Only(Tier::Small),
            other => {
                return Err(Error::invalid(format!(
                    "hugepages={other:?} is not a mode: use \"auto\", \"require\", \"never\", or one tier: \"1g\", \"2m\", \"thp\", \"4k\""
                )))
            }
        })
    }
}

/// How to build a [`HugeRegion`].
#[derive(Debug, Clone)]
pub struct RegionOptions {
    /// Which tiers to try.
    pub hugepages: HugePages,
    /// Place the memory on this NUMA node.
    pub numa_node: Option<usize>,
    /// `Bind` (only that node) or `Preferred` (that node first).
    pub numa_policy: Policy,
    /// `mlock` swappable tiers (THP, 4 KiB). hugetlb pages are never swapped and are not locked.
    pub lock: bool,
}

impl Default for RegionOptions {
    fn default() -> Self {
        RegionOptions {
            hugepages: HugePages::Auto,
            numa_node: None,
            numa_policy: Policy::Bind,
            lock: true,
        }
    }
}

/// Anonymous, populated, optionally NUMA-bound and locked memory on the largest pages
/// available. Unmapped when dropped; `Send + Sync` (the bytes are raw memory whose users
/// synchronise themselves), shared by `Arc`.
#[derive(Debug)]
pub struct HugeRegion {
    map: Mapping,
    offset: usize,
    len: usize,
    tier: Tier,
    page_size: usize,
    huge_bytes: usize,
    locked: bool,
    numa_node: Option<usize>,
    memlock_raise: Option<mm::MemlockRaise>,
}

impl HugeRegion {
    /// Allocate at least `size` bytes (rounded up to the page size of the tier it gets).
    pub fn new(size: usize, opts: &RegionOptions) -> Result<Self> {
        check_size(size)?;
        if let Some(node) = opts.numa_node {
            check_node(node)?;
        }
        let mut refusals: Vec<String> = Vec::new();
        for tier in candidates(size, opts.hugepages) {
            match Self::try_tier(size, tier, opts) {
                Ok(r) => return Ok(r),
                // Errors that no other tier would fix end the search at once.
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Unavailable(why)) => refusals.push(why),
            }
        }
        Err(no_tier_error(size, opts.hugepages, &refusals))
    }

    fn try_tier(size: usize, tier: Tier, opts: &RegionOptions) -> Result<Self, Attempt> {
        let page = tier.page_size();
        let len = round_up(size, page).ok_or_else(|| Attempt::Fatal(too_large(size)))?;
        if tier.is_hugetlb() {
            let pool = HugetlbPool::read(page).ok_or_else(|| {
                Attempt::Unavailable(format!(
                    "{} pages: not supported by this kernel/CPU (no {})",
                    size_text(page),
                    HugetlbPool::dir(page)
                ))
            })?;
            let need = len / page;
            if pool.available() < need as u64 {
                return Err(Attempt::Unavailable(pool.shortage_text(need as u64)));
            }
        }
        if tier == Tier::Thp && thp_mode().as_deref() == Some("never") {
            return Err(Attempt::Unavailable(
                "transparent hugepages are disabled: echo madvise > /sys/kernel/mm/transparent_hugepage/enabled".into(),
            ));
        }
        // THP needs a 2 MiB-aligned range: over-map by one huge page and use the aligned part.
        let slack = if tier == Tier::Thp { THP_SIZE } else { 0 };
        let map =
            Mapping::anonymous(len + slack, tier.mmap_flags()).map_err(|e| match e.errno() {
                Some(libc::ENOMEM) if tier.is_hugetlb() => Attempt::Unavailable(format!(
                    "mmap of {} on {} pages failed: {e}",
                    size_text(len),
                    size_text(page)
                )),
                _ => Attempt::Fatal(e),
            })?;
        let offset = if slack > 0 {
            align_offset(map.as_ptr() as usize, THP_SIZE)
        } else {
            0
        };
        match tier {
            Tier::Thp => {
                pages::advise(&map, offset, len, libc::MADV_HUGEPAGE).map_err(Attempt::Fatal)?
            }
            // Keep 4 KiB pages 4 KiB even when THP is "always", so the tier is what we report.
            Tier::Small => {
                let _ = pages::advise(&map, offset, len, libc::MADV_NOHUGEPAGE);
            }
            _ => {}
        }
        if let Some(node) = opts.numa_node {
            match numa::mbind(
                map.as_ptr().wrapping_add(offset),
                len,
                node,
                opts.numa_policy,
            ) {
                Ok(()) => {}
                // No CONFIG_NUMA: one node, node 0 was checked to exist, nothing to bind.
                Err(e) if e.errno() == Some(libc::ENOSYS) => {}
                Err(e) => return Err(Attempt::Fatal(e)),
            }
        }
        populate(&map, offset, len, tier).map_err(|e| {
            if tier.is_hugetlb() {
                Attempt::Unavailable(format!("faulting in {} pages failed: {e}", size_text(page)))
            } else {
                Attempt::Fatal(e)
            }
        })?;
        let mut locked = tier.is_hugetlb();
        let mut memlock_raise = None;
        if opts.lock && !tier.is_hugetlb() {
            memlock_raise = lock(&map, offset, len).map_err(Attempt::Fatal)?;
            locked = true;
        }
        let huge_bytes = match tier {
            Tier::Huge1G | Tier::Huge2M => len,
            Tier::Small => 0,
            Tier::Thp => anon_huge_bytes(map.as_ptr() as usize + offset, len).unwrap_or(0),
        };
        if tier == Tier::Thp && huge_bytes == 0 {
            return Err(Attempt::Unavailable(
                "transparent hugepages requested but the kernel backed the range with 4 KiB pages (memory fragmented?): try `echo 1 > /proc/sys/vm/compact_memory`".into(),
            ));
        }
        Ok(HugeRegion {
            map,
            offset,
            len,
            tier,
            page_size: page,
            huge_bytes,
            locked,
            numa_node: opts.numa_node,
            memlock_raise,
        })
    }

    /// Start of the region (aligned to [`Self::page_size`]).
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr().wrapping_add(self.offset)
    }

    /// Length in bytes: the request rounded up to the page size.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Address of `[offset, offset + len)` inside the region, bounds-checked: how a Mempool or
    /// an AF_XDP UMEM carves its part (`len` may be 0 only for `offset == self.len()`).
    pub fn range(&self, offset: usize, len: usize) -> Result<*mut u8> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.as_ptr().wrapping_add(offset)),
            _ => Err(Error::invalid(format!(
                "range {offset}+{len} does not fit in the {}-byte region: carve smaller pieces or allocate a larger region",
                self.len
            ))),
        }
    }

    /// Always false: empty regions are refused.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The tier the region got.
    #[inline]
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// The page size backing the region.
    #[inline]
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Bytes backed by huge pages (all of it for hugetlb tiers, what `/proc/self/smaps` reports
    /// as AnonHugePages for THP, 0 for 4 KiB pages).
    #[inline]
    pub fn huge_bytes(&self) -> usize {
        self.huge_bytes
    }

    /// Whether the memory cannot be swapped out (mlocked, or hugetlb).
    #[inline]
    pub fn locked(&self) -> bool {
        self.locked
    }

    /// The NUMA node the region was bound to, if one was asked for.
    #[inline]
    pub fn numa_node(&self) -> Option<usize> {
        self.numa_node
    }

    /// The raise of RLIMIT_MEMLOCK that locking this region took, if it took one.
    #[inline]
    pub fn memlock_raise(&self) -> Option<&mm::MemlockRaise> {
        self.memlock_raise.as_ref()
    }

    /// What was changed to get this region, one sentence each (today: a raised
    /// RLIMIT_MEMLOCK).
    pub fn notes(&self) -> Vec<String> {
        self.memlock_raise.iter().map(|r| r.to_string()).collect()
    }

    /// `count` dependent random 8-byte reads over the region (fixed-seed xorshift); returns
    /// (elapsed nanoseconds, xor of the values read). The memory benchmark's probe.
    pub fn random_reads(&self, count: u64, seed: u64) -> Result<(u64, u64)> {
        let t = std::time::Instant::now();
        let acc = pages::random_reads(&self.map, self.offset, self.len, count, seed)?;
        Ok((t.elapsed().as_nanos() as u64, std::hint::black_box(acc)))
    }
}

enum Attempt {
    /// This tier cannot be had; the next one may work. The text explains and gives the fix.
    Unavailable(String),
    /// An error no other tier would avoid (bad NUMA node, mlock limit).
    Fatal(Error),
}

fn candidates(size: usize, mode: HugePages) -> Vec<Tier> {
    // Rounding a request up to a page more than twice its size wastes more than it gains.
    let worth = |t: Tier| size >= t.page_size() / 2;
    match mode {
        HugePages::Auto => Tier::ALL
            .into_iter()
            .filter(|&t| t == Tier::Small || worth(t))
            .collect(),
        HugePages::Require => {
            let mut v = Vec::new();
            if worth(Tier::Huge1G) {
                v.push(Tier::Huge1G);
            }
            v.push(Tier::Huge2M);
            v
        }
        HugePages::Never => vec![Tier::Small],
        HugePages::Only(t) => vec![t],
    }
}

fn no_tier_error(size: usize, mode: HugePages, refusals: &[String]) -> Error {
    let what = match mode {
        HugePages::Require => format!(
            "hugepages=\"require\": no hugetlb pages for {}",
            size_text(size)
        ),
        HugePages::Only(t) => format!(
            "hugepages=\"{t}\": cannot allocate {} on that tier",
            size_text(size)
        ),
        _ => format!("cannot allocate {}", size_text(size)),
    };
    Error::Os {
        what,
        errno: libc::ENOMEM,
        fix: refusals.join("; "),
    }
}

fn check_size(size: usize) -> Result<()> {
    if size == 0 {
        return Err(Error::invalid(
            "size must be greater than zero: give the region size in bytes",
        ));
    }
    if let Some(total) = mem_total() {
        if size as u64 > total {
            return Err(too_large(size));
        }
    }
    if size > isize::MAX as usize / 2 {
        return Err(too_large(size));
    }
    Ok(())
}

fn too_large(size: usize) -> Error {
    let total = mem_total().map_or_else(|| "unknown".into(), |t| size_text(t as usize));
    Error::invalid(format!(
        "size {size} bytes is larger than this machine's memory ({total}): ask for less"
    ))
}

fn check_node(node: usize) -> Result<()> {
    let base = std::path::Path::new("/sys/devices/system/node");
    if !base.exists() {
        // No NUMA support in the kernel: only "node 0" makes sense.
        return if node == 0 {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "NUMA node {node} does not exist: this kernel has no NUMA support, use None or 0"
            )))
        };
    }
    let with_mem = std::fs::read_to_string(base.join("has_memory"))
        .ok()
        .and_then(|s| crate::sys::affinity::parse_cpu_list(s.trim()).ok())
        .unwrap_or_else(|| vec![0]);
    if !with_mem.contains(&node) {
        return Err(Error::invalid(format!(
            "NUMA node {node} does not exist or has no memory: nodes with memory are {with_mem:?}"
        )));
    }
    Ok(())
}

fn populate(map: &Mapping, offset: usize, len: usize, tier: Tier) -> Result<()> {
    match pages::advise(map, offset, len, pages::MADV_POPULATE_WRITE) {
        Err(e) if e.errno() == Some(libc::EINVAL) => {
            // Kernel before 5.14. hugetlb was reserved at mmap, so touching it is safe.
            pages::touch(
                map,
                offset,
                len,
                tier.page_size().min(mm::page_size().max(4096)),
            )
        }
        r => r,
    }
}

/// `mlock` the range; when RLIMIT_MEMLOCK is in the way, raise it by what the range needs
/// (never to unlimited) and say so in the returned raise.
fn lock(map: &Mapping, offset: usize, len: usize) -> Result<Option<mm::MemlockRaise>> {
    let failed = match pages::lock(map, offset, len) {
        Ok(()) => return Ok(None),
        Err(e) => e,
    };
    if !matches!(failed.errno(), Some(libc::ENOMEM | libc::EPERM)) {
        return Err(failed);
    }
    mm::raise_memlock_and_retry(len as u64, failed, || pages::lock(map, offset, len)).map(Some)
}

/// Sum of `AnonHugePages` over the smaps entries overlapping `[start, start + len)`.
fn anon_huge_bytes(start: usize, len: usize) -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let end = start + len;
    let mut inside = false;
    let mut total = 0usize;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                inside = a < end && b > start;
                continue;
            }
        }
        if inside {
            if let Some(rest) = line.strip_prefix("AnonHugePages:") {
                let kb: usize = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
                total += kb * 1024;
            }
        }
    }
    Some(total)
}

/// Counters of one hugetlb page size from `/sys/kernel/mm/hugepages/hugepages-<N>kB/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HugetlbPool {
    /// Page size in bytes.
    pub page_size: usize,
    /// `nr_hugepages`: pages in the pool.
    pub total: u64,
    /// `free_hugepages`: pages not faulted in by anyone.
    pub free: u64,
    /// `resv_hugepages`: free pages promised to existing mappings.
    pub reserved: u64,
}

impl HugetlbPool {
    /// The sysfs directory of this page size.
    pub fn dir(page_size: usize) -> String {
        format!("/sys/kernel/mm/hugepages/hugepages-{}kB", page_size / 1024)
    }

    /// Read the counters; `None` when the kernel does not offer this page size.
    pub fn read(page_size: usize) -> Option<Self> {
        let dir = Self::dir(page_size);
        let num = |f: &str| -> Option<u64> {
            std::fs::read_to_string(format!("{dir}/{f}"))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        Some(HugetlbPool {
            page_size,
            total: num("nr_hugepages")?,
            free: num("free_hugepages")?,
            reserved: num("resv_hugepages").unwrap_or(0),
        })
    }

    /// Pages a new mapping can still reserve.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserved)
    }

    fn shortage_text(&self, need: u64) -> String {
        let target = self.total + need - self.available().min(need);
        let nr = if self.page_size == 2 * MIB {
            "/proc/sys/vm/nr_hugepages".to_string()
        } else {
            format!("{}/nr_hugepages", Self::dir(self.page_size))
        };
        format!(
            "no free {} hugepages (need {need}, {} free): echo {target} > {nr}",
            size_text(self.page_size),
            self.available()
        )
    }
}

/// The system-wide THP mode (`always`, `madvise`, `never`), if the kernel has THP.
pub fn thp_mode() -> Option<String> {
    let s = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
    let start = s.find('[')?;
    let end = s[start..].find(']')?;
    Some(s[start + 1..start + end].to_string())
}

fn mem_total() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn round_up(size: usize, page: usize) -> Option<usize> {
    size.checked_add(page - 1).map(|s| s / page * page)
}

fn align_offset(addr: usize, align: usize) -> usize {
    (align - addr % align) % align
}

fn size_text(bytes: usize) -> String {
    if bytes >= GIB && bytes % GIB == 0 {
        format!("{} GiB", bytes / GIB)
    } else if bytes >= MIB && bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex, MutexGuard};

    /// hugetlb pool changes are process-global: serialise the tests that make them.
    static POOL: Mutex<()> = Mutex::new(());

    fn pool_lock() -> MutexGuard<'static, ()> {
        POOL.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_root() -> bool {
        use std::os::unix::fs::MetadataExt;
        // /proc/self belongs to the effective uid.
        std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
    }

    /// Adds `n` pages of `page_size` to the pool for its lifetime, then takes back exactly what
    /// it added (other users of the machine may change the pool meanwhile).
    struct Reserve {
        path: String,
        added: u64,
    }

    impl Reserve {
        fn new(page_size: usize, n: u64) -> Option<Reserve> {
            let path = format!("{}/nr_hugepages", HugetlbPool::dir(page_size));
            let before = HugetlbPool::read(page_size)?;
            if before.available() >= n {
                return Some(Reserve { path, added: 0 });
            }
            let want = before.total + n - before.available();
            std::fs::write(&path, want.to_string()).ok()?;
            let after = HugetlbPool::read(page_size)?;
            let r = Reserve {
                path,
                added: after.total.saturating_sub(before.total),
            };
            (after.available() >= n).then_some(r)
        }
    }

    impl Drop for Reserve {
        fn drop(&mut self) {
            if self.added > 0 {
                let now: u64 = std::fs::read_to_string(&self.path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0);
                let _ = std::fs::write(&self.path, now.saturating_sub(self.added).to_string());
            }
        }
    }

    fn no_lock(mode: HugePages) -> RegionOptions {
        RegionOptions {
            hugepages: mode,
            lock: false,
            ..RegionOptions::default()
        }
    }

    fn reads_back_zero(r: &HugeRegion) {
        let (ns, acc) = r.random_reads(10_000, 7).unwrap();
        assert_eq!(acc, 0, "fresh anonymous memory reads as zero");
        assert!(ns > 0);
    }

    #[test]
    fn never_gives_small_pages() {
        let r = HugeRegion::new(
            3 * 4096 + 1,
            &RegionOptions {
                hugepages: HugePages::Never,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.tier(), Tier::Small);
        assert_eq!(r.page_size(), mm::page_size());
        assert_eq!(r.len(), 4 * mm::page_size());
        assert_eq!(r.huge_bytes(), 0);
        assert!(r.locked());
        assert_eq!(r.as_ptr() as usize % r.page_size(), 0);
        assert_eq!(
            r.range(4096, 4096).unwrap() as usize,
            r.as_ptr() as usize + 4096
        );
        assert!(r.range(r.len(), 0).is_ok());
        assert!(matches!(
            r.range(r.len(), 1),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            r.range(usize::MAX, 2),
            Err(Error::InvalidArgument(_))
        ));
        reads_back_zero(&r);
    }

    #[test]
    fn bad_sizes_are_refused() {
        let o = RegionOptions::default();
        assert!(matches!(
            HugeRegion::new(0, &o),
            Err(Error::InvalidArgument(_))
        ));
        let e = HugeRegion::new(usize::MAX, &o).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        assert!(e.to_string().contains("larger than this machine"), "{e}");
        let total = mem_total().unwrap() as usize;
        assert!(matches!(
            HugeRegion::new(total + 1, &o),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn mode_names_parse_and_bad_ones_say_what_to_use() {
        assert_eq!("auto".parse::<HugePages>().unwrap(), HugePages::Auto);
        assert_eq!(
            "2m".parse::<HugePages>().unwrap(),
            HugePages::Only(Tier::Huge2M)
        );
        let e = "huge".parse::<HugePages>().unwrap_err().to_string();
        assert!(e.contains("\"require\""), "{e}");
    }

    #[test]
    fn auto_skips_tiers_much_larger_than_the_request() {
        assert_eq!(candidates(4096, HugePages::Auto), vec![Tier::Small]);
        assert_eq!(
            candidates(4 * MIB, HugePages::Auto),
            vec![Tier::Huge2M, Tier::Thp, Tier::Small]
        );
        assert_eq!(candidates(GIB, HugePages::Auto), Tier::ALL.to_vec());
        assert_eq!(candidates(4096, HugePages::Require), vec![Tier::Huge2M]);
    }

    #[test]
    fn numa_node_zero_binds_and_missing_node_is_refused() {
        let o = RegionOptions {
            numa_node: Some(0),
            ..no_lock(HugePages::Never)
        };
        let r = HugeRegion::new(1 << 20, &o).unwrap();
        assert_eq!(r.numa_node(), Some(0));
        match numa::node_of_address(r.as_ptr()) {
            Ok(n) => assert_eq!(n, 0),
            Err(e) => assert_eq!(e.errno(), Some(libc::ENOSYS), "{e}"),
        }
        let e = HugeRegion::new(
            1 << 20,
            &RegionOptions {
                numa_node: Some(999),
                ..o
            },
        )
        .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }

    #[test]
    fn thp_tier_gets_aligned_huge_pages_when_thp_is_enabled() {
        if thp_mode().as_deref().is_none_or(|m| m == "never") {
            eprintln!("THP disabled on this machine; nothing to test");
            return;
        }
        let r = match HugeRegion::new(4 * MIB, &no_lock(HugePages::Only(Tier::Thp))) {
            Ok(r) => r,
            // Fragmented memory is a property of the machine, not a bug; the error says so.
            Err(e) => {
                assert!(e.to_string().contains("compact_memory"), "{e}");
                return;
            }
        };
        assert_eq!(r.tier(), Tier::Thp);
        assert_eq!(r.as_ptr() as usize % THP_SIZE, 0);
        assert!(r.huge_bytes() > 0);
        reads_back_zero(&r);
    }

    #[test]
    fn require_without_free_pages_fails_with_the_fix() {
        let _g = pool_lock();
        let pool =
            HugetlbPool::read(2 * MIB).expect("2 MiB hugepages are always supported on x86-64");
        // One page more than is free, whatever other users of the machine hold.
        let need = pool.available() as usize + 1;
        let e = HugeRegion::new(need * 2 * MIB, &no_lock(HugePages::Require)).unwrap_err();
        let s = e.to_string();
        assert_eq!(e.errno(), Some(libc::ENOMEM));
        assert!(s.contains("no free 2 MiB hugepages"), "{s}");
        assert!(s.contains("> /proc/sys/vm/nr_hugepages"), "{s}");
        let e =
            HugeRegion::new(need * 2 * MIB, &no_lock(HugePages::Only(Tier::Huge2M))).unwrap_err();
        assert!(e.to_string().starts_with("hugepages=\"2m\""), "{e}");
    }

    #[test]
    fn huge_2m_tier_works_when_pages_are_reserved() {
        let _g = pool_lock();
        if !is_root() {
            eprintln!("not root: cannot reserve hugepages");
            return;
        }
        let Some(_res) = Reserve::new(2 * MIB, 3) else {
            panic!("could not reserve three 2 MiB hugepages");
        };
        let r = Arc::new(
            HugeRegion::new(
                5 * MIB,
                &RegionOptions {
                    numa_node: Some(0),
                    ..RegionOptions::default()
                },
            )
            .unwrap(),
        );
        assert_eq!(r.tier(), Tier::Huge2M);
        assert_eq!(r.len(), 6 * MIB);
        assert_eq!(r.huge_bytes(), 6 * MIB);
        assert_eq!(r.as_ptr() as usize % (2 * MIB), 0);
        // Shared across threads like a Mempool's backing store.
        let r2 = Arc::clone(&r);
        let acc = std::thread::spawn(move || r2.random_reads(1000, 3).unwrap().1)
            .join()
            .unwrap();
        assert_eq!(acc, 0);
        drop(r);
    }

    #[test]
    fn huge_1g_tier_works_when_a_page_can_be_reserved() {
        let _g = pool_lock();
        if !is_root() {
            eprintln!("not root: cannot reserve hugepages");
            return;
        }
        let Some(_res) = Reserve::new(GIB, 1) else {
            eprintln!(
                "the kernel could not find 1 GiB of contiguous memory; tier not testable here"
            );
            return;
        };
        let r = HugeRegion::new(GIB, &RegionOptions::default()).unwrap();
        assert_eq!(r.tier(), Tier::Huge1G);
        assert_eq!(r.page_size(), GIB);
        assert_eq!(r.as_ptr() as usize % GIB, 0);
        reads_back_zero(&r);
    }

    #[test]
    fn shortage_text_names_the_target_count() {
        let p = HugetlbPool {
            page_size: 2 * MIB,
            total: 4,
            free: 1,
            reserved: 0,
        };
        assert_eq!(
            p.shortage_text(3),
            "no free 2 MiB hugepages (need 3, 1 free): echo 6 > /proc/sys/vm/nr_hugepages"
        );
        let g = HugetlbPool {
            page_size: GIB,
            total: 0,
            free: 0,
            reserved: 0,
        };
        assert!(g
            .shortage_text(1)
            .contains("echo 1 > /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages"));
    }
}
