//! `bpf(2)` through `libc::syscall`: maps, program load with the verifier log, test runs, XDP
//! links, object info. No libbpf.
//!
//! Each command has its own `#[repr(C)]` attribute struct with explicit padding fields, zeroed
//! before use, and is passed with its own size: the kernel zero-extends a shorter `union
//! bpf_attr`, so we never send uninitialised bytes and never need the whole 144-byte union.
//! Every kernel object is an owned fd type ([`MapFd`], [`ProgFd`], [`LinkFd`]) closed on drop.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::error::{errno, Error, Result};

// Commands (enum bpf_cmd).
const BPF_MAP_CREATE: i32 = 0;
const BPF_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_MAP_UPDATE_ELEM: i32 = 2;
const BPF_MAP_DELETE_ELEM: i32 = 3;
const BPF_MAP_GET_NEXT_KEY: i32 = 4;
const BPF_PROG_LOAD: i32 = 5;
const BPF_PROG_TEST_RUN: i32 = 10;
const BPF_PROG_GET_FD_BY_ID: i32 = 13;
const BPF_OBJ_GET_INFO_BY_FD: i32 = 15;
const BPF_LINK_CREATE: i32 = 28;
const BPF_LINK_GET_FD_BY_ID: i32 = 30;
const BPF_LINK_GET_NEXT_ID: i32 = 31;
const BPF_LINK_DETACH: i32 = 34;

/// `BPF_MAP_TYPE_HASH`.
pub const BPF_MAP_TYPE_HASH: u32 = 1;
/// `BPF_MAP_TYPE_ARRAY`.
pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
/// `BPF_MAP_TYPE_PERCPU_HASH`.
pub const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
/// `BPF_MAP_TYPE_PERCPU_ARRAY`.
pub const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
/// `BPF_MAP_TYPE_LRU_PERCPU_HASH`.
pub const BPF_MAP_TYPE_LRU_PERCPU_HASH: u32 = 10;
/// `BPF_MAP_TYPE_LPM_TRIE`: longest-prefix match on `struct { u32 prefixlen; u8 data[]; }` keys
/// (needs [`BPF_F_NO_PREALLOC`]).
pub const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;
/// `BPF_MAP_TYPE_XSKMAP`: queue index → AF_XDP socket.
pub const BPF_MAP_TYPE_XSKMAP: u32 = 17;

/// `BPF_PROG_TYPE_XDP`.
pub const BPF_PROG_TYPE_XDP: u32 = 6;
/// Attach type `BPF_XDP` (for `BPF_LINK_CREATE` and `expected_attach_type`).
pub const BPF_XDP: u32 = 37;
/// `BPF_LINK_TYPE_XDP` in link info.
pub const BPF_LINK_TYPE_XDP: u32 = 6;

/// Map creation flag: allocate elements on update instead of all at creation (required by
/// LPM tries; hash maps then use memory only for the entries they hold).
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// Map update flag: create or overwrite.
pub const BPF_ANY: u64 = 0;
/// Map update flag: only create.
pub const BPF_NOEXIST: u64 = 1;
/// Map update flag: only overwrite.
pub const BPF_EXIST: u64 = 2;

/// Program flag: the XDP program understands multi-buffer frames (kernel ≥ 5.18).
pub const BPF_F_XDP_HAS_FRAGS: u32 = 1 << 5;
/// Test-run flag: run on the given CPU.
pub const BPF_F_TEST_RUN_ON_CPU: u32 = 1 << 0;
/// Test-run flag: XDP "live frames" — redirects and `XDP_TX` really send (kernel ≥ 5.18).
pub const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// XDP verdicts.
pub const XDP_ABORTED: u32 = 0;
/// Drop the frame.
pub const XDP_DROP: u32 = 1;
/// Hand the frame to the kernel stack.
pub const XDP_PASS: u32 = 2;
/// Bounce the frame out of the interface it came in on.
pub const XDP_TX: u32 = 3;
/// Redirect (to an XSKMAP socket here).
pub const XDP_REDIRECT: u32 = 4;

/// Name of an XDP verdict, for messages.
pub fn xdp_action_name(v: u32) -> &'static str {
    match v {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "unknown",
    }
}

/// Maximum object name length including the NUL (`BPF_OBJ_NAME_LEN`).
pub const BPF_OBJ_NAME_LEN: usize = 16;

/// One eBPF instruction (`struct bpf_insn`): opcode, dst/src registers in one byte, offset, imm.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BpfInsn {
    /// Opcode.
    pub code: u8,
    /// `dst_reg` in the low nibble, `src_reg` in the high nibble.
    pub regs: u8,
    /// Signed offset.
    pub off: i16,
    /// Signed immediate.
    pub imm: i32,
}

const PERM_FIX: &str = "needs CAP_NET_ADMIN and CAP_BPF: run as root";

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; BPF_OBJ_NAME_LEN],
    map_ifindex: u32,
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; BPF_OBJ_NAME_LEN],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkDetachAttr {
    link_fd: u32,
}

/// Prefix of `struct bpf_prog_info` up to `ifindex` (the kernel fills what we ask for).
#[repr(C)]
#[derive(Default)]
struct RawProgInfo {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; BPF_OBJ_NAME_LEN],
    ifindex: u32,
    _pad: u32,
}

/// Prefix of `struct bpf_map_info`.
#[repr(C)]
#[derive(Default)]
struct RawMapInfo {
    map_type: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    name: [u8; BPF_OBJ_NAME_LEN],
}

/// Prefix of `struct bpf_link_info` with the XDP member of its union.
#[repr(C)]
#[derive(Default)]
struct RawLinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    xdp_ifindex: u32,
    _pad2: u32,
}

// Layouts against include/uapi/linux/bpf.h (union bpf_attr members and info structs).
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<BpfInsn>() == 8);
    assert!(offset_of!(MapCreateAttr, map_name) == 28);
    assert!(size_of::<MapCreateAttr>() == 48);
    assert!(offset_of!(MapElemAttr, key) == 8 && size_of::<MapElemAttr>() == 32);
    assert!(offset_of!(ProgLoadAttr, log_buf) == 32);
    assert!(offset_of!(ProgLoadAttr, prog_name) == 48);
    assert!(offset_of!(ProgLoadAttr, expected_attach_type) == 68);
    assert!(size_of::<ProgLoadAttr>() == 72);
    assert!(offset_of!(TestRunAttr, repeat) == 32);
    assert!(offset_of!(TestRunAttr, ctx_in) == 48);
    assert!(offset_of!(TestRunAttr, flags) == 64);
    assert!(offset_of!(TestRunAttr, batch_size) == 72);
    assert!(size_of::<TestRunAttr>() == 80);
    assert!(size_of::<InfoAttr>() == 16);
    assert!(size_of::<LinkCreateAttr>() == 16);
    assert!(offset_of!(RawProgInfo, name) == 64);
    assert!(offset_of!(RawProgInfo, ifindex) == 80);
    assert!(offset_of!(RawMapInfo, name) == 24);
    assert!(offset_of!(RawLinkInfo, xdp_ifindex) == 16);
};

/// The raw `bpf(2)` call; returns the non-negative result or the errno.
fn sys_bpf<T>(cmd: i32, attr: &mut T) -> std::result::Result<i64, i32> {
    // SAFETY: attr is a valid, fully initialised repr(C) attribute struct of the size passed;
    // the kernel reads/writes at most that many bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            core::mem::size_of::<T>() as u32,
        )
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

fn bpf_err(what: &str, e: i32) -> Error {
    let fix = match e {
        libc::EPERM | libc::EACCES => PERM_FIX,
        libc::ENOSYS => "the kernel has no bpf(2) (CONFIG_BPF_SYSCALL)",
        libc::E2BIG => "the kernel is older than this request: upgrade the kernel",
        _ => "",
    };
    Error::os(what, e, fix)
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: `fd` is a fresh descriptor returned by bpf(2) that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

fn name_bytes(name: &str) -> Result<[u8; BPF_OBJ_NAME_LEN]> {
    if name.len() >= BPF_OBJ_NAME_LEN
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    {
        return Err(Error::invalid(format!(
            "BPF object name {name:?} is invalid: at most 15 characters of [A-Za-z0-9_.]"
        )));
    }
    let mut out = [0u8; BPF_OBJ_NAME_LEN];
    out[..name.len()].copy_from_slice(name.as_bytes());
    Ok(out)
}

fn cstr_name(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// An owned BPF map fd.
#[derive(Debug)]
pub struct MapFd {
    fd: OwnedFd,
    key_size: u32,
    value_size: u32,
    /// Bytes a lookup/update value buffer has: `value_size`, or for per-CPU maps one 8-byte
    /// aligned slot per possible CPU.
    value_len: usize,
    /// One value per CPU.
    percpu: bool,
}

/// Whether `map_type` keeps one value per CPU (lookups return all of them side by side).
pub fn is_percpu(map_type: u32) -> bool {
    matches!(
        map_type,
        BPF_MAP_TYPE_PERCPU_HASH | BPF_MAP_TYPE_PERCPU_ARRAY | BPF_MAP_TYPE_LRU_PERCPU_HASH
    )
}

/// Number of possible CPUs (the kernel's per-CPU map values have one slot each), from
/// `/sys/devices/system/cpu/possible`.
pub fn possible_cpus() -> Result<usize> {
    let path = "/sys/devices/system/cpu/possible";
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::os(format!("read {path}"), e.raw_os_error().unwrap_or(0), ""))?;
    let cpus = crate::sys::affinity::parse_cpu_list(&text)?;
    // Slots are indexed by CPU number, so a sparse list still needs max + 1 of them.
    cpus.last()
        .map(|&m| m + 1)
        .ok_or_else(|| Error::invalid(format!("{path} lists no CPU")))
}

/// What a map is, from `BPF_OBJ_GET_INFO_BY_FD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapInfo {
    /// Map type (`BPF_MAP_TYPE_*`).
    pub map_type: u32,
    /// Kernel-wide id.
    pub id: u32,
    /// Key size.
    pub key_size: u32,
    /// Value size.
    pub value_size: u32,
    /// Capacity.
    pub max_entries: u32,
    /// Name.
    pub name: String,
}

impl MapFd {
    /// `BPF_MAP_CREATE`.
    pub fn create(
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        flags: u32,
        name: &str,
    ) -> Result<Self> {
        let mut a = MapCreateAttr {
            map_type,
            key_size,
            value_size,
            max_entries,
            map_flags: flags,
            map_name: name_bytes(name)?,
            ..Default::default()
        };
        let fd = sys_bpf(BPF_MAP_CREATE, &mut a).map_err(|e| {
            if e == libc::EPERM {
                Error::os(
                    format!("bpf(BPF_MAP_CREATE {name})"),
                    e,
                    "needs CAP_NET_ADMIN and CAP_BPF: run as root (kernels < 5.11 also need RLIMIT_MEMLOCK raised)",
                )
            } else {
                bpf_err(&format!("bpf(BPF_MAP_CREATE {name}, type {map_type})"), e)
            }
        })?;
        let value_len = if is_percpu(map_type) {
            (value_size as usize).next_multiple_of(8) * possible_cpus()?
        } else {
            value_size as usize
        };
        Ok(MapFd {
            fd: owned(fd),
            key_size,
            value_size,
            value_len,
            percpu: is_percpu(map_type),
        })
    }

    /// An XSKMAP with `entries` slots (one per queue).
    pub fn xskmap(entries: u32, name: &str) -> Result<Self> {
        Self::create(BPF_MAP_TYPE_XSKMAP, 4, 4, entries, 0, name)
    }

    /// The raw fd.
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn check(&self, key: &[u8], value: Option<usize>) -> Result<()> {
        if key.len() != self.key_size as usize {
            return Err(Error::invalid(format!(
                "map key has {} bytes, the map wants {}",
                key.len(),
                self.key_size
            )));
        }
        if let Some(v) = value {
            if v != self.value_len {
                return Err(Error::invalid(format!(
                    "map value has {v} bytes, the map wants {} (value size {}{})",
                    self.value_len,
                    self.value_size,
                    if self.value_len != self.value_size as usize {
                        ", one 8-byte aligned slot per possible CPU"
                    } else {
                        ""
                    }
                )));
            }
        }
        Ok(())
    }

    /// Bytes of a value buffer for [`MapFd::lookup`]/[`MapFd::update`]: the value size, or for
    /// per-CPU maps one 8-byte aligned slot per possible CPU.
    pub fn value_len(&self) -> usize {
        self.value_len
    }

    /// Look up `key` in a per-CPU map whose value is a row of `u64`s and return the row summed
    /// over all CPUs (None if the key is absent).
    pub fn lookup_percpu_sum(&self, key: &[u8]) -> Result<Option<Vec<u64>>> {
        let slot = (self.value_size as usize).next_multiple_of(8);
        if !self.percpu || self.value_size % 8 != 0 {
            return Err(Error::invalid(
                "lookup_percpu_sum needs a per-CPU map whose value is a row of u64s",
            ));
        }
        let mut buf = vec![0u8; self.value_len];
        if !self.lookup(key, &mut buf)? {
            return Ok(None);
        }
        let mut sum = vec![0u64; self.value_size as usize / 8];
        for cpu in buf.chunks_exact(slot) {
            for (s, v) in sum.iter_mut().zip(cpu.chunks_exact(8)) {
                *s = s.wrapping_add(u64::from_ne_bytes(v.try_into().unwrap_or_default()));
            }
        }
        Ok(Some(sum))
    }

    /// `BPF_MAP_UPDATE_ELEM` with [`BPF_ANY`]/[`BPF_NOEXIST`]/[`BPF_EXIST`].
    pub fn update(&self, key: &[u8], value: &[u8], flags: u64) -> Result<()> {
        self.check(key, Some(value.len()))?;
        let mut a = MapElemAttr {
            map_fd: self.raw() as u32,
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            flags,
            ..Default::default()
        };
        sys_bpf(BPF_MAP_UPDATE_ELEM, &mut a).map_err(|e| bpf_err("bpf(BPF_MAP_UPDATE_ELEM)", e))?;
        Ok(())
    }

    /// `BPF_MAP_DELETE_ELEM`; returns false if the key was absent.
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        self.check(key, None)?;
        let mut a = MapElemAttr {
            map_fd: self.raw() as u32,
            key: key.as_ptr() as u64,
            ..Default::default()
        };
        match sys_bpf(BPF_MAP_DELETE_ELEM, &mut a) {
            Ok(_) => Ok(true),
            Err(libc::ENOENT) => Ok(false),
            Err(e) => Err(bpf_err("bpf(BPF_MAP_DELETE_ELEM)", e)),
        }
    }

    /// `BPF_MAP_LOOKUP_ELEM` into `value`; returns false if the key is absent. (XSKMAP values
    /// cannot be read from user space: the kernel answers `EOPNOTSUPP`.)
    pub fn lookup(&self, key: &[u8], value: &mut [u8]) -> Result<bool> {
        self.check(key, Some(value.len()))?;
        let mut a = MapElemAttr {
            map_fd: self.raw() as u32,
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            ..Default::default()
        };
        match sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut a) {
            Ok(_) => Ok(true),
            Err(libc::ENOENT) => Ok(false),
            Err(e) => Err(bpf_err("bpf(BPF_MAP_LOOKUP_ELEM)", e)),
        }
    }

    /// `BPF_MAP_GET_NEXT_KEY`: the key after `key` (None: the first key), or None after the
    /// last. Keys removed meanwhile are skipped; a walk while others insert may miss or repeat
    /// some (the kernel's hash-order semantics).
    pub fn next_key(&self, key: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
        if let Some(k) = key {
            self.check(k, None)?;
        }
        let mut next = vec![0u8; self.key_size as usize];
        let mut a = MapElemAttr {
            map_fd: self.raw() as u32,
            key: key.map_or(0, |k| k.as_ptr() as u64),
            value: next.as_mut_ptr() as u64,
            ..Default::default()
        };
        match sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut a) {
            Ok(_) => Ok(Some(next)),
            Err(libc::ENOENT) => Ok(None),
            Err(e) => Err(bpf_err("bpf(BPF_MAP_GET_NEXT_KEY)", e)),
        }
    }

    /// All keys, by [`MapFd::next_key`]. A key deleted under the walk makes the kernel start
    /// over; the walk ends at the first key it has already seen.
    pub fn keys(&self) -> Result<Vec<Vec<u8>>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        while let Some(k) = self.next_key(out.last().map(Vec::as_slice))? {
            if !seen.insert(k.clone()) {
                break;
            }
            out.push(k);
        }
        Ok(out)
    }

    /// Put an AF_XDP socket fd into an XSKMAP at `queue`.
    pub fn set_xsk(&self, queue: u32, xsk_fd: RawFd) -> Result<()> {
        self.update(
            &queue.to_ne_bytes(),
            &(xsk_fd as u32).to_ne_bytes(),
            BPF_ANY,
        )
    }

    /// Put `xsk_fd` at `queue` of an XSKMAP only if the slot is empty (`BPF_NOEXIST`); an
    /// occupied slot answers `EEXIST`.
    pub fn add_xsk(&self, queue: u32, xsk_fd: RawFd) -> Result<()> {
        self.update(
            &queue.to_ne_bytes(),
            &(xsk_fd as u32).to_ne_bytes(),
            BPF_NOEXIST,
        )
    }

    /// Remove the socket at `queue` from an XSKMAP (the kernel reports success for an empty slot
    /// too, so the result is `true` unless the index is out of range).
    pub fn clear_xsk(&self, queue: u32) -> Result<bool> {
        self.delete(&queue.to_ne_bytes())
    }

    /// `BPF_OBJ_GET_INFO_BY_FD`.
    pub fn info(&self) -> Result<MapInfo> {
        let mut raw = RawMapInfo::default();
        obj_info(self.raw(), &mut raw, "map")?;
        Ok(MapInfo {
            map_type: raw.map_type,
            id: raw.id,
            key_size: raw.key_size,
            value_size: raw.value_size,
            max_entries: raw.max_entries,
            name: cstr_name(&raw.name),
        })
    }
}

fn obj_info<T>(fd: RawFd, out: &mut T, kind: &str) -> Result<()> {
    let mut a = InfoAttr {
        bpf_fd: fd as u32,
        info_len: core::mem::size_of::<T>() as u32,
        info: out as *mut T as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)
        .map_err(|e| bpf_err(&format!("bpf(BPF_OBJ_GET_INFO_BY_FD {kind})"), e))?;
    Ok(())
}

/// What a program is, from `BPF_OBJ_GET_INFO_BY_FD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgInfo {
    /// Program type (`BPF_PROG_TYPE_*`).
    pub prog_type: u32,
    /// Kernel-wide id.
    pub id: u32,
    /// Name given at load time (up to 15 characters).
    pub name: String,
    /// The kernel's tag (hash of the instructions), as 16 hex digits.
    pub tag: String,
}

impl std::fmt::Display for ProgInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "id {} name {:?} tag {}", self.id, self.name, self.tag)
    }
}

/// What [`ProgFd::load`] loads.
#[derive(Debug, Clone)]
pub struct ProgLoad<'a> {
    /// `BPF_PROG_TYPE_*`.
    pub prog_type: u32,
    /// The instructions.
    pub insns: &'a [BpfInsn],
    /// Program name (≤ 15 characters of `[A-Za-z0-9_.]`).
    pub name: &'a str,
    /// License ("GPL" allows GPL-only helpers).
    pub license: &'a str,
    /// `expected_attach_type` (0 for XDP's default `BPF_XDP`).
    pub expected_attach_type: u32,
    /// `prog_flags` such as [`BPF_F_XDP_HAS_FRAGS`].
    pub flags: u32,
}

/// Result of [`ProgFd::test_run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestRunResult {
    /// The program's return value (the XDP verdict) of the last run.
    pub retval: u32,
    /// Average run time per repetition in nanoseconds, as the kernel measured it.
    pub duration_ns: u32,
    /// Bytes written to `data_out`.
    pub data_size_out: u32,
}

/// Arguments of [`ProgFd::test_run`] (`BPF_PROG_TEST_RUN`).
///
/// For a traffic generator: `data` = the frame template, `repeat` = frames per call (use a large
/// count such as 4 M: each call pays RCU waits), `flags` = [`BPF_F_TEST_XDP_LIVE_FRAMES`] so
/// `XDP_TX`/`XDP_REDIRECT` really transmit, `batch_size` = frames per batch (0: kernel default 64),
/// and `ctx_in` = a `struct xdp_md` naming the ingress ifindex/queue when the program redirects.
#[derive(Debug, Default)]
pub struct TestRun<'a> {
    /// Packet bytes in.
    pub data: &'a [u8],
    /// Buffer for the packet bytes out (not allowed with live frames).
    pub data_out: Option<&'a mut [u8]>,
    /// Optional context in (`struct xdp_md` for XDP: ingress_ifindex, rx_queue_index).
    pub ctx_in: Option<&'a [u8]>,
    /// Repetitions (0 means 1).
    pub repeat: u32,
    /// `BPF_F_TEST_*` flags.
    pub flags: u32,
    /// CPU with [`BPF_F_TEST_RUN_ON_CPU`].
    pub cpu: u32,
    /// Live-frames batch size (0: kernel default).
    pub batch_size: u32,
}

/// Build an XDP test-run context (`struct xdp_md`, 24 bytes) for a frame of `data_len` bytes
/// arriving on `ingress_ifindex`/`rx_queue_index`. The kernel requires `data_end == data_len`,
/// and the queue's XDP rxq info to be registered (for veth: the interface has an XDP program
/// or GRO on).
pub fn xdp_md_ctx(data_len: u32, ingress_ifindex: u32, rx_queue_index: u32) -> [u8; 24] {
    let mut c = [0u8; 24];
    c[4..8].copy_from_slice(&data_len.to_ne_bytes());
    c[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    c[16..20].copy_from_slice(&rx_queue_index.to_ne_bytes());
    c
}

/// An owned BPF program fd.
#[derive(Debug)]
pub struct ProgFd {
    fd: OwnedFd,
}

/// Verifier log buffer sizes tried in turn (the kernel answers `ENOSPC` when one is too small).
const LOG_SIZES: [usize; 3] = [64 << 10, 1 << 20, 16 << 20];

impl ProgFd {
    /// `BPF_PROG_LOAD`. On failure the load is retried with a verifier log, whose tail goes into
    /// the error message.
    pub fn load(p: &ProgLoad<'_>) -> Result<Self> {
        if p.insns.is_empty() || p.insns.len() > 1_000_000 {
            return Err(Error::invalid(
                "a BPF program needs 1..=1,000,000 instructions",
            ));
        }
        let name = name_bytes(p.name)?;
        let license = std::ffi::CString::new(p.license).map_err(Error::invalid)?;
        let attr = |log: Option<&mut Vec<u8>>| ProgLoadAttr {
            prog_type: p.prog_type,
            insn_cnt: p.insns.len() as u32,
            insns: p.insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: u32::from(log.is_some()),
            log_size: log.as_ref().map_or(0, |l| l.len() as u32),
            log_buf: log.map_or(0, |l| l.as_mut_ptr() as u64),
            prog_flags: p.flags,
            prog_name: name,
            expected_attach_type: p.expected_attach_type,
            ..Default::default()
        };
        let what = format!("bpf(BPF_PROG_LOAD {})", p.name);
        let first = sys_bpf(BPF_PROG_LOAD, &mut attr(None));
        let e = match first {
            Ok(fd) => return Ok(ProgFd { fd: owned(fd) }),
            Err(e) => e,
        };
        if e == libc::EPERM {
            return Err(Error::os(what, e, PERM_FIX));
        }
        // Retry with the verifier log to explain the failure.
        for size in LOG_SIZES {
            let mut log = vec![0u8; size];
            match sys_bpf(BPF_PROG_LOAD, &mut attr(Some(&mut log))) {
                Ok(fd) => return Ok(ProgFd { fd: owned(fd) }),
                Err(libc::ENOSPC) => continue,
                Err(e2) => {
                    let text = cstr_name(&log);
                    if text.trim().is_empty() {
                        return Err(bpf_err(&what, e2));
                    }
                    return Err(Error::Os {
                        what,
                        errno: e2,
                        fix: format!(
                            "the verifier rejected the program; log tail:\n{}",
                            log_tail(&text, 25)
                        ),
                    });
                }
            }
        }
        Err(bpf_err(&what, e))
    }

    /// Load `p` with the verifier's statistics log (`BPF_LOG_STATS`) and return it with the
    /// program, e.g. "processed 1234 insns (limit 1000000) max_states_per_insn 2 ...": how
    /// hard the verifier worked, to keep generated programs far from its limits.
    pub fn load_with_stats(p: &ProgLoad<'_>) -> Result<(Self, String)> {
        const BPF_LOG_STATS: u32 = 4;
        let name = name_bytes(p.name)?;
        let license = std::ffi::CString::new(p.license).map_err(Error::invalid)?;
        let mut log = vec![0u8; 64 << 10];
        let mut attr = ProgLoadAttr {
            prog_type: p.prog_type,
            insn_cnt: p.insns.len() as u32,
            insns: p.insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: BPF_LOG_STATS,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            prog_flags: p.flags,
            prog_name: name,
            expected_attach_type: p.expected_attach_type,
            ..Default::default()
        };
        match sys_bpf(BPF_PROG_LOAD, &mut attr) {
            Ok(fd) => Ok((ProgFd { fd: owned(fd) }, cstr_name(&log))),
            // Rejected: load again the ordinary way for the error with the log tail.
            Err(_) => Self::load(p).map(|prog| (prog, cstr_name(&log))),
        }
    }

    /// A second fd for the same program (`dup`).
    pub fn try_clone(&self) -> Result<Self> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| Error::os("dup(prog fd)", e.raw_os_error().unwrap_or(0), ""))?;
        Ok(ProgFd { fd })
    }

    /// The raw fd.
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// `BPF_OBJ_GET_INFO_BY_FD`: id, name, tag.
    pub fn info(&self) -> Result<ProgInfo> {
        let mut raw = RawProgInfo::default();
        obj_info(self.raw(), &mut raw, "prog")?;
        Ok(ProgInfo {
            prog_type: raw.prog_type,
            id: raw.id,
            name: cstr_name(&raw.name),
            tag: raw.tag.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }

    /// `BPF_PROG_TEST_RUN`.
    pub fn test_run(&self, t: TestRun<'_>) -> Result<TestRunResult> {
        if t.data.len() > u32::MAX as usize {
            return Err(Error::invalid("test-run data is larger than 4 GiB"));
        }
        let (out_ptr, out_len) = match t.data_out {
            Some(o) => (o.as_mut_ptr() as u64, o.len() as u32),
            None => (0, 0),
        };
        let (ctx_ptr, ctx_len) = t
            .ctx_in
            .map_or((0, 0), |c| (c.as_ptr() as u64, c.len() as u32));
        let mut a = TestRunAttr {
            prog_fd: self.raw() as u32,
            data_size_in: t.data.len() as u32,
            data_size_out: out_len,
            data_in: t.data.as_ptr() as u64,
            data_out: out_ptr,
            repeat: t.repeat,
            ctx_size_in: ctx_len,
            ctx_in: ctx_ptr,
            flags: t.flags,
            cpu: t.cpu,
            batch_size: t.batch_size,
            ..Default::default()
        };
        sys_bpf(BPF_PROG_TEST_RUN, &mut a).map_err(|e| {
            let fix = match e {
                libc::EINVAL if t.flags & BPF_F_TEST_XDP_LIVE_FRAMES != 0 => {
                    "live frames need kernel ≥ 5.18, no data_out, and a frame of at least 14 bytes"
                }
                libc::EINVAL => "the frame must be 14..=page size - headroom bytes and flags valid for this kernel",
                libc::ENOSPC => "data_out is smaller than the output frame",
                libc::EPERM | libc::EACCES => PERM_FIX,
                _ => "",
            };
            Error::os("bpf(BPF_PROG_TEST_RUN)", e, fix)
        })?;
        Ok(TestRunResult {
            retval: a.retval,
            duration_ns: a.duration,
            data_size_out: a.data_size_out,
        })
    }

    /// Run this XDP program `repeat` times on `frame` with live frames
    /// ([`BPF_F_TEST_XDP_LIVE_FRAMES`], kernel ≥ 5.18): `XDP_TX` and `XDP_REDIRECT` really
    /// transmit, which makes this a traffic generator. `ingress` = `(ifindex, rx_queue)` the
    /// frames appear to arrive on (`XDP_TX` sends them out of that interface; on veth the
    /// interface needs an XDP program or GRO so its queue is registered); `None` uses the
    /// loopback of the calling thread's network namespace. `batch_size` 0 is the kernel default
    /// (64). Each call pays fixed RCU costs, so use large `repeat` counts (millions).
    pub fn run_live(
        &self,
        frame: &[u8],
        repeat: u32,
        batch_size: u32,
        ingress: Option<(u32, u32)>,
    ) -> Result<TestRunResult> {
        let ctx = ingress.map(|(ifindex, queue)| xdp_md_ctx(frame.len() as u32, ifindex, queue));
        self.test_run(TestRun {
            data: frame,
            ctx_in: ctx.as_ref().map(|c| &c[..]),
            repeat: repeat.max(1),
            flags: BPF_F_TEST_XDP_LIVE_FRAMES,
            batch_size,
            ..Default::default()
        })
    }
}

fn log_tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `BPF_PROG_GET_FD_BY_ID`: a new fd for the program with kernel id `id`.
pub fn prog_get_fd_by_id(id: u32) -> Result<ProgFd> {
    let mut a = GetIdAttr {
        id,
        ..Default::default()
    };
    match sys_bpf(BPF_PROG_GET_FD_BY_ID, &mut a) {
        Ok(fd) => Ok(ProgFd { fd: owned(fd) }),
        Err(libc::ENOENT) => Err(Error::NotFound(format!(
            "no BPF program with id {id} (it was unloaded)"
        ))),
        Err(e) => Err(bpf_err(&format!("bpf(BPF_PROG_GET_FD_BY_ID {id})"), e)),
    }
}

/// Info of the program with kernel id `id`.
pub fn prog_info_by_id(id: u32) -> Result<ProgInfo> {
    prog_get_fd_by_id(id)?.info()
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `bpf_ktime_get_ns()` reads in BPF programs, so
/// deadlines computed here compare with it.
pub fn ktime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(r, 0);
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Return once every BPF program run that started before the call has finished.
///
/// Programs run inside RCU read-side sections (XDP in NAPI or the generic hook, test runs), so
/// an RCU grace period is enough: `membarrier(MEMBARRIER_CMD_GLOBAL)` waits for one
/// (`synchronize_rcu`). Takes milliseconds. Where that command is refused (`nohz_full` CPUs),
/// falls back to a 50 ms sleep, far longer than any program run.
pub fn wait_for_program_runs() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers; the command and flags are plain integers.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if r != 0 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// An owned BPF link; closing the last fd detaches the program (also when the process dies).
#[derive(Debug)]
pub struct LinkFd {
    fd: OwnedFd,
}

/// What a link is, from `BPF_OBJ_GET_INFO_BY_FD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    /// `BPF_LINK_TYPE_*`.
    pub link_type: u32,
    /// Kernel-wide link id.
    pub id: u32,
    /// Id of the attached program.
    pub prog_id: u32,
    /// For XDP links: the interface (0 once detached).
    pub ifindex: u32,
}

impl LinkFd {
    /// `BPF_LINK_CREATE` attach type `BPF_XDP` on `ifindex` with `XDP_FLAGS_*` mode flags.
    pub fn create_xdp(prog: &ProgFd, ifindex: u32, flags: u32) -> Result<Self> {
        let mut a = LinkCreateAttr {
            prog_fd: prog.raw() as u32,
            target_ifindex: ifindex,
            attach_type: BPF_XDP,
            flags,
        };
        let fd = sys_bpf(BPF_LINK_CREATE, &mut a).map_err(|e| {
            let fix = match e {
                libc::EBUSY => "the interface already has an XDP program attached: detach it first, or use force",
                libc::EOPNOTSUPP => "the driver has no native XDP: use mode='generic' or 'auto'",
                libc::EINVAL => "the kernel has no XDP bpf_link (needs ≥ 5.9) or the flags are invalid",
                libc::ERANGE => "the MTU is too large for XDP on this driver: lower it, or load the frags-capable program",
                libc::ENODEV => "no such interface",
                _ => "",
            };
            Error::os(format!("bpf(BPF_LINK_CREATE xdp ifindex {ifindex})"), e, fix)
        })?;
        Ok(LinkFd { fd: owned(fd) })
    }

    /// `BPF_LINK_GET_FD_BY_ID`: a new fd for the link with kernel id `id` (lets a forced attach
    /// detach a link another process owns).
    pub fn from_id(id: u32) -> Result<Self> {
        let mut a = GetIdAttr {
            id,
            ..Default::default()
        };
        match sys_bpf(BPF_LINK_GET_FD_BY_ID, &mut a) {
            Ok(fd) => Ok(LinkFd { fd: owned(fd) }),
            Err(libc::ENOENT) => Err(Error::NotFound(format!(
                "no BPF link with id {id} (it was released)"
            ))),
            Err(e) => Err(bpf_err(&format!("bpf(BPF_LINK_GET_FD_BY_ID {id})"), e)),
        }
    }

    /// The raw fd.
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// `BPF_OBJ_GET_INFO_BY_FD`.
    pub fn info(&self) -> Result<LinkInfo> {
        let mut raw = RawLinkInfo::default();
        obj_info(self.raw(), &mut raw, "link")?;
        Ok(LinkInfo {
            link_type: raw.link_type,
            id: raw.id,
            prog_id: raw.prog_id,
            ifindex: raw.xdp_ifindex,
        })
    }

    /// `BPF_LINK_DETACH`: detach now, even if other fds of this link exist (kernel ≥ 5.9).
    pub fn detach(&self) -> Result<()> {
        let mut a = LinkDetachAttr {
            link_fd: self.raw() as u32,
        };
        sys_bpf(BPF_LINK_DETACH, &mut a).map_err(|e| bpf_err("bpf(BPF_LINK_DETACH)", e))?;
        Ok(())
    }
}

/// Ids of all BPF links in the system (`BPF_LINK_GET_NEXT_ID`), in increasing order.
pub fn link_ids() -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    let mut a = GetIdAttr::default();
    loop {
        match sys_bpf(BPF_LINK_GET_NEXT_ID, &mut a) {
            Ok(_) => {
                ids.push(a.next_id);
                a = GetIdAttr {
                    id: a.next_id,
                    ..Default::default()
                };
            }
            Err(libc::ENOENT) => return Ok(ids),
            Err(e) => return Err(bpf_err("bpf(BPF_LINK_GET_NEXT_ID)", e)),
        }
    }
}

/// The XDP link (if any) whose program is attached to `ifindex` in the calling thread's network
/// namespace.
pub fn find_xdp_link(ifindex: u32, prog_id: u32) -> Result<Option<LinkInfo>> {
    for id in link_ids()? {
        let Ok(l) = LinkFd::from_id(id) else { continue };
        let Ok(info) = l.info() else { continue };
        if info.link_type == BPF_LINK_TYPE_XDP && info.ifindex == ifindex && info.prog_id == prog_id
        {
            return Ok(Some(info));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::testutil::is_root;

    // r0 = 2 (XDP_PASS); exit
    const PASS: [BpfInsn; 2] = [
        BpfInsn {
            code: 0xb7,
            regs: 0,
            off: 0,
            imm: 2,
        },
        BpfInsn {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];

    #[test]
    fn names_are_checked() {
        assert!(name_bytes("kbypass_xsk").is_ok());
        assert!(name_bytes("this_name_is_too_long").is_err());
        assert!(name_bytes("bad-name").is_err());
    }

    #[test]
    fn constants_match_installed_headers() {
        let Some(out) = crate::sys::testutil::compile_and_run_c(
            "bpf",
            r#"#include <stdio.h>
#include <linux/bpf.h>
int main(void) { printf("%d %d %d %d %d %d %d %d %u %u\n", BPF_MAP_TYPE_XSKMAP, BPF_PROG_TYPE_XDP, BPF_XDP,
  BPF_LINK_CREATE, BPF_PROG_TEST_RUN, BPF_OBJ_GET_INFO_BY_FD, BPF_FUNC_redirect_map, BPF_LINK_TYPE_XDP,
  BPF_F_XDP_HAS_FRAGS, BPF_F_TEST_XDP_LIVE_FRAMES); return 0; }"#,
        ) else {
            eprintln!("optional: no C compiler or linux UAPI headers");
            return;
        };
        let v: Vec<u32> = out.split_whitespace().map(|s| s.parse().unwrap()).collect();
        assert_eq!(
            v,
            vec![
                BPF_MAP_TYPE_XSKMAP,
                BPF_PROG_TYPE_XDP,
                BPF_XDP,
                BPF_LINK_CREATE as u32,
                BPF_PROG_TEST_RUN as u32,
                BPF_OBJ_GET_INFO_BY_FD as u32,
                51,
                BPF_LINK_TYPE_XDP,
                BPF_F_XDP_HAS_FRAGS,
                BPF_F_TEST_XDP_LIVE_FRAMES
            ]
        );
    }

    #[test]
    fn load_info_test_run_as_root() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let p = ProgFd::load(&ProgLoad {
            prog_type: BPF_PROG_TYPE_XDP,
            insns: &PASS,
            name: "kbx_test_pass",
            license: "GPL",
            expected_attach_type: 0,
            flags: 0,
        })
        .unwrap();
        let info = p.info().unwrap();
        assert_eq!(info.name, "kbx_test_pass");
        assert_eq!(info.prog_type, BPF_PROG_TYPE_XDP);
        assert_eq!(info.tag.len(), 16);
        assert_eq!(prog_info_by_id(info.id).unwrap().tag, info.tag);
        let frame = [0u8; 64];
        let mut out = [0u8; 128];
        let r = p
            .test_run(TestRun {
                data: &frame,
                data_out: Some(&mut out),
                repeat: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(r.retval, XDP_PASS);
        assert_eq!(r.data_size_out, 64);
    }

    #[test]
    fn verifier_log_is_in_the_error_as_root() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        // exit without setting r0: the verifier says "R0 !read_ok".
        let bad = [BpfInsn {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        }];
        let e = ProgFd::load(&ProgLoad {
            prog_type: BPF_PROG_TYPE_XDP,
            insns: &bad,
            name: "kbx_bad",
            license: "GPL",
            expected_attach_type: 0,
            flags: 0,
        })
        .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("verifier") && s.contains("R0"), "{s}");
    }

    #[test]
    fn maps_as_root() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let m = MapFd::create(BPF_MAP_TYPE_ARRAY, 4, 8, 4, 0, "kbx_arr").unwrap();
        m.update(&1u32.to_ne_bytes(), &77u64.to_ne_bytes(), BPF_ANY)
            .unwrap();
        let mut v = [0u8; 8];
        assert!(m.lookup(&1u32.to_ne_bytes(), &mut v).unwrap());
        assert_eq!(u64::from_ne_bytes(v), 77);
        assert!(m.update(&1u32.to_ne_bytes(), &[0u8; 4], BPF_ANY).is_err());
        // Per-CPU maps: one 8-byte aligned slot per possible CPU.
        let pc = MapFd::create(BPF_MAP_TYPE_PERCPU_ARRAY, 4, 4, 1, 0, "kbx_pcpu").unwrap();
        let ncpu = possible_cpus().unwrap();
        assert_eq!(pc.value_len(), 8 * ncpu);
        let vals: Vec<u8> = (0..ncpu)
            .flat_map(|c| (c as u64 + 10).to_ne_bytes())
            .collect();
        pc.update(&0u32.to_ne_bytes(), &vals, BPF_ANY).unwrap();
        let mut back = vec![0u8; pc.value_len()];
        assert!(pc.lookup(&0u32.to_ne_bytes(), &mut back).unwrap());
        assert_eq!(back, vals);
        let e = pc
            .update(&0u32.to_ne_bytes(), &[0u8; 4], BPF_ANY)
            .unwrap_err();
        assert!(e.to_string().contains("per possible CPU"), "{e}");
        let h = MapFd::create(BPF_MAP_TYPE_HASH, 4, 4, 8, 0, "kbx_hash").unwrap();
        assert!(h.keys().unwrap().is_empty());
        h.update(&5u32.to_ne_bytes(), &6u32.to_ne_bytes(), BPF_NOEXIST)
            .unwrap();
        h.update(&7u32.to_ne_bytes(), &8u32.to_ne_bytes(), BPF_NOEXIST)
            .unwrap();
        let mut keys = h.keys().unwrap();
        keys.sort();
        assert_eq!(
            keys,
            vec![5u32.to_ne_bytes().to_vec(), 7u32.to_ne_bytes().to_vec()]
        );
        assert!(h.delete(&7u32.to_ne_bytes()).unwrap());
        assert!(h.delete(&5u32.to_ne_bytes()).unwrap());
        assert!(!h.delete(&5u32.to_ne_bytes()).unwrap());
        let x = MapFd::xskmap(4, "kbx_xsks").unwrap();
        let info = x.info().unwrap();
        assert_eq!(
            (info.map_type, info.max_entries, info.name.as_str()),
            (BPF_MAP_TYPE_XSKMAP, 4, "kbx_xsks")
        );
        let xsk = crate::sys::xdp::XskFd::new().unwrap();
        x.set_xsk(0, xsk.raw()).unwrap();
        assert!(
            x.set_xsk(4, xsk.raw()).is_err(),
            "index beyond max_entries must fail"
        );
        assert!(x.clear_xsk(0).unwrap());
    }
}
