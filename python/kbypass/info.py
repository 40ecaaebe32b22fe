"""``kbypass info``: what this machine can do for kernel bypass, and how to fix what it can't.

The report is a dict of sections, each computed by one function in :data:`SECTIONS` (a
registry: other modules replace or add sections with :func:`section`). Every section is a
JSON-able dict with a ``fixes`` list: empty when all is well, otherwise one command or action
per problem. Only the standard library and ``kbypass`` itself are imported, so this stays
cheap and works without root.

Example::

    >>> from kbypass import info
    >>> report = info.collect()
    >>> sorted(report)[:3]
    ['af_xdp', 'bpf', 'cpus']
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SECTIONS", "Section", "collect", "render_text", "section"]

Report = dict[str, Any]

NET = Path("/sys/class/net")
HUGEPAGES = Path("/sys/kernel/mm/hugepages")
THP = Path("/sys/kernel/mm/transparent_hugepage")

# Capability bits (linux/capability.h).
CAPS = {
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_RESOURCE": 24,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
}


# Drivers with native (driver-mode) XDP in mainline Linux. Everything has generic (skb) XDP.
NATIVE_XDP_DRIVERS = frozenset(
    {
        "bnxt_en",
        "ena",
        "i40e",
        "ice",
        "igb",
        "igc",
        "ixgbe",
        "ixgbevf",
        "mlx4_en",
        "mlx5_core",
        "nfp",
        "qede",
        "sfc",
        "tun",
        "veth",
        "virtio_net",
    }
)
# Drivers with AF_XDP zero-copy support (XDP_ZEROCOPY binds).
ZEROCOPY_DRIVERS = frozenset({"i40e", "ice", "igc", "ixgbe", "mlx5_core", "stmmac"})


@dataclass(frozen=True)
class Section:
    """One report section: its key, a title for the text report, and the function computing it."""

    name: str
    title: str
    collect: Callable[[], Report]
    summary: Callable[[Report], str]


SECTIONS: dict[str, Section] = {}


def section(
    name: str, title: str, summary: Callable[[Report], str]
) -> Callable[[Callable[[], Report]], Callable[[], Report]]:
    """Register (or replace) the function computing section ``name`` of the report."""

    def register(fn: Callable[[], Report]) -> Callable[[], Report]:
        SECTIONS[name] = Section(name, title, fn, summary)
        return fn

    return register


def collect(names: list[str] | None = None) -> Report:
    """Compute the report (all sections, or the ones named).

    A section that fails reports its error and a fix rather than hiding the rest.
    """
    unknown = [n for n in names or [] if n not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}: choose from {sorted(SECTIONS)}")
    out: Report = {}
    for name in names or list(SECTIONS):
        try:
            out[name] = SECTIONS[name].collect()
        except Exception as e:  # a broken probe must not hide the other sections
            out[name] = {
                "section_error": f"{type(e).__name__}: {e}",
                "fixes": ["this probe failed; please report it as a kbypass bug"],
            }
    return out


# --- helpers ------------------------------------------------------------------------------


def _read(path: Path | str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _int(path: Path | str) -> int | None:
    s = _read(path)
    try:
        return int(s) if s is not None else None
    except ValueError:
        return None


def _cpu_list(s: str | None) -> list[int]:
    out: list[int] = []
    for part in (s or "").split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def _size_text(n: int | None) -> str:
    if n is None:
        return "unlimited"
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def _yes(b: object) -> str:
    return "yes" if b is True else "no" if b is False else str(b)


def _mounts(fstype: str) -> list[tuple[str, str]]:
    """(mount point, options) of every mount of ``fstype``."""
    out = []
    for line in (_read("/proc/self/mounts") or "").splitlines():
        f = line.split()
        if len(f) >= 4 and f[2] == fstype:
            out.append((f[1].replace("\\040", " "), f[3]))
    return out


def _cap_eff() -> int:
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def _has_cap(name: str) -> bool:
    return bool(_cap_eff() >> CAPS[name] & 1)


def _memlock_limits() -> tuple[int | None, int | None]:
    """RLIMIT_MEMLOCK (soft, hard) in bytes, None for unlimited."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return (
        None if soft == resource.RLIM_INFINITY else soft,
        None if hard == resource.RLIM_INFINITY else hard,
    )


# --- sections -----------------------------------------------------------------------------


@section("kernel", "kernel", lambda r: f"{r['release']} ({r['machine']})")
def kernel() -> Report:
    """Kernel release, version string and architecture."""
    u = os.uname()
    return {"release": u.release, "version": u.version, "machine": u.machine, "fixes": []}


def _privileges_summary(r: Report) -> str:
    caps = " ".join(f"{k}={_yes(v)}" for k, v in r["capabilities"].items())
    raised = len(r["memlock_raises"])
    by_us = f" (raised by kbypass {raised}x)" if raised else ""
    return f"root={_yes(r['root'])} {caps} memlock={r['memlock_limit_text']}{by_us}"


@section("privileges", "privileges", _privileges_summary)
def privileges() -> Report:
    """Effective uid, the capabilities kernel bypass needs, and RLIMIT_MEMLOCK.

    ``memlock_raises`` lists the raises of the limit kbypass made in this process to lock
    memory (:func:`kbypass.memlock_raises`).
    """
    from kbypass._core import memlock_raises

    caps = {name: _has_cap(name) for name in ("CAP_NET_ADMIN", "CAP_BPF", "CAP_IPC_LOCK")}
    caps["CAP_NET_RAW"] = _has_cap("CAP_NET_RAW")
    limit, hard = _memlock_limits()
    fixes = []
    missing = [k for k, v in caps.items() if not v]
    if missing:
        fixes.append(f"missing {', '.join(missing)}: run as root (sudo kbypass ...)")
    if limit is not None and not caps["CAP_IPC_LOCK"]:
        fixes.append(
            f"RLIMIT_MEMLOCK is {_size_text(limit)}: raise it with `ulimit -l unlimited` "
            "(or run as root) to lock UMEMs and mempools"
        )
    return {
        "uid": os.geteuid(),
        "root": os.geteuid() == 0,
        "capabilities": caps,
        "memlock_limit": limit,
        "memlock_limit_text": _size_text(limit),
        "memlock_hard_limit": hard,
        "memlock_raises": memlock_raises(),
        "fixes": fixes,
    }


_probe_cache: dict[tuple[int, int], tuple[float, Report]] = {}


def _xdp_probe() -> Report:
    """``kbypass.probe_xdp()``, shared by the af_xdp and bpf sections of one report.

    Cached for a few seconds per (uid, capabilities), so a forked child that dropped root
    probes again.
    """
    import time

    from kbypass import probe_xdp

    key = (os.geteuid(), _cap_eff())
    hit = _probe_cache.get(key)
    if hit is not None and time.monotonic() - hit[0] < 5.0:
        return hit[1]
    r = probe_xdp()
    _probe_cache.clear()
    _probe_cache[key] = (time.monotonic(), r)
    return r


def _af_xdp_summary(r: Report) -> str:
    if r["socket"]:
        return "socket: yes (socket(AF_XDP) created)"
    return f"socket: no ({r['error']})"


@section("af_xdp", "AF_XDP", _af_xdp_summary)
def af_xdp() -> Report:
    """Whether an AF_XDP socket can be created (``kbypass.probe_xdp()``; no queue is bound)."""
    p = _xdp_probe()
    sock = p["af_xdp_socket"]
    fixes = []
    if not sock["ok"]:
        if not _has_cap("CAP_NET_RAW"):
            fixes.append("AF_XDP sockets need CAP_NET_RAW: run as root")
        elif "EAFNOSUPPORT" in sock["detail"] or "not supported" in sock["detail"]:
            fixes.append(
                "the kernel lacks AF_XDP: use a kernel built with CONFIG_XDP_SOCKETS=y (4.18+)"
            )
        else:
            fixes.append(f"socket(AF_XDP) failed: {sock['detail']}")
    return {
        "socket": sock["ok"],
        "error": None if sock["ok"] else sock["detail"],
        "detail": sock["detail"],
        "check": "socket(AF_XDP, SOCK_RAW) by kbypass.probe_xdp(); binding a queue is not tried",
        "fixes": fixes,
    }


_BPF_CHECKS = ("prog_load", "xdp_link", "frags", "live_frames")


def _bpf_summary(r: Report) -> str:
    checks = " ".join(f"{k}={_yes(r[k]['ok'])}" for k in _BPF_CHECKS)
    mounts = ",".join(r["bpffs_mounts"]) or "none"
    return f"{checks} redirect={r['redirect_form'] or '-'} jit={r['jit_enabled']} bpffs={mounts}"


@section("bpf", "BPF", _bpf_summary)
def bpf() -> Report:
    """Probe loading and attaching XDP programs here (``kbypass.probe_xdp()``).

    It loads a two-instruction XDP program, attaches it with a bpf_link to the loopback of a
    throwaway network namespace, and runs it with live frames there; nothing on the machine's
    interfaces is touched.
    """
    p = _xdp_probe()
    cap_bpf = _has_cap("CAP_BPF") or _has_cap("CAP_SYS_ADMIN")
    privileged = cap_bpf and _has_cap("CAP_NET_ADMIN")
    mounts = [m for m, _ in _mounts("bpf")]
    jit = _int("/proc/sys/net/core/bpf_jit_enable")
    fixes = []
    if not p["prog_load"]["ok"]:
        if not privileged:
            fixes.append("loading XDP programs needs CAP_BPF and CAP_NET_ADMIN: run as root")
        else:
            fixes.append(
                f"XDP programs do not load ({p['prog_load']['detail']}): use a kernel with "
                "CONFIG_BPF_SYSCALL=y and CONFIG_BPF_JIT=y"
            )
    elif privileged:
        if not p["xdp_link"]["ok"]:
            fixes.append(
                "no bpf_link for XDP (kernel < 5.9): kbypass attaches with netlink instead, "
                "which a killed process leaves attached; upgrade to kernel ≥ 5.9"
            )
        if not p["frags"]["ok"]:
            fixes.append(
                "no multi-buffer XDP (kernel < 5.18): MTUs above a page need kernel ≥ 5.18"
            )
        if not p["live_frames"]["ok"]:
            fixes.append(
                "no XDP live-frames test runs (kernel < 5.18): kbypass.testing.TrafficGenerator "
                "needs kernel ≥ 5.18"
            )
    if not mounts:
        fixes.append("bpffs is not mounted (only needed to pin maps): mount -t bpf bpf /sys/fs/bpf")
    if jit == 0:
        fixes.append("the BPF JIT is off: echo 1 > /proc/sys/net/core/bpf_jit_enable")
    return {
        "check": "load",
        "may_load": p["prog_load"]["ok"],
        **{k: p[k] for k in _BPF_CHECKS},
        "redirect_form": p["redirect_form"],
        "cap_bpf": _has_cap("CAP_BPF"),
        "cap_net_admin": _has_cap("CAP_NET_ADMIN"),
        "unprivileged_bpf_disabled": _int("/proc/sys/kernel/unprivileged_bpf_disabled"),
        "bpffs_mounts": mounts,
        "jit_enabled": jit,
        "fixes": fixes,
    }


def _hugepages_summary(r: Report) -> str:
    parts = [
        f"{s['page_size_text']}: {s['free']}/{s['total']} free"
        + (f" (mounted at {', '.join(s['mounts'])})" if s["mounts"] else "")
        for s in r["sizes"].values()
    ]
    return "; ".join(parts) or "none"


@section("hugepages", "hugepages", _hugepages_summary)
def hugepages() -> Report:
    """Hugetlb pools per page size (total, free, reserved, surplus) and hugetlbfs mounts."""
    default_kb = 0
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("Hugepagesize:"):
            default_kb = int(line.split()[1])
    mounts: dict[int, list[str]] = {}
    for point, opts in _mounts("hugetlbfs"):
        kb = default_kb
        for o in opts.split(","):
            if o.startswith("pagesize="):
                v = o.split("=", 1)[1].upper()
                mult = {"K": 1, "M": 1024, "G": 1024 * 1024}.get(v[-1:], 0)
                kb = int(v[:-1]) * mult if mult else int(v) // 1024
        mounts.setdefault(kb, []).append(point)
    sizes: Report = {}
    if HUGEPAGES.is_dir():
        for d in sorted(HUGEPAGES.iterdir(), key=lambda p: int(p.name[10:-2])):
            kb = int(d.name[len("hugepages-") : -2])
            sizes[d.name[len("hugepages-") :]] = {
                "page_size": kb * 1024,
                "page_size_text": _size_text(kb * 1024),
                "total": _int(d / "nr_hugepages") or 0,
                "free": _int(d / "free_hugepages") or 0,
                "reserved": _int(d / "resv_hugepages") or 0,
                "surplus": _int(d / "surplus_hugepages") or 0,
                "mounts": mounts.get(kb, []),
            }
    fixes = []
    if not sizes:
        fixes.append("the kernel has no hugetlb support: use a kernel with CONFIG_HUGETLBFS=y")
    elif not any(s["free"] for s in sizes.values()):
        fixes.append(
            "no free hugepages (kbypass falls back to THP or 4 KiB pages): "
            "echo 64 > /proc/sys/vm/nr_hugepages"
        )
    return {
        "default_page_size": default_kb * 1024,
        "sizes": sizes,
        "note": "kbypass maps hugepages anonymously; a hugetlbfs mount is not required",
        "fixes": fixes,
    }


@section("thp", "transparent hugepages", lambda r: f"enabled={r['mode']} defrag={r['defrag']}")
def thp() -> Report:
    """Transparent hugepage mode (always / madvise / never) and defrag setting."""

    def bracketed(p: Path) -> str | None:
        s = _read(p)
        if s is None or "[" not in s:
            return None
        return s[s.index("[") + 1 : s.index("]")]

    mode = bracketed(THP / "enabled")
    fixes = []
    if mode is None:
        fixes.append("the kernel has no THP: use a kernel with CONFIG_TRANSPARENT_HUGEPAGE=y")
    elif mode == "never":
        fixes.append("echo madvise > /sys/kernel/mm/transparent_hugepage/enabled")
    return {"mode": mode, "defrag": bracketed(THP / "defrag"), "fixes": fixes}


def _cpus_summary(r: Report) -> str:
    nodes = " ".join(f"node{n}={_fmt_list(c)}" for n, c in r["nodes"].items())
    return (
        f"online={_fmt_list(r['online'])} allowed={_fmt_list(r['allowed'])} "
        f"isolated={_fmt_list(r['isolated']) or 'none'} {nodes}"
    )


def _fmt_list(cpus: list[int]) -> str:
    out, i = [], 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(out)


@section("cpus", "CPUs", _cpus_summary)
def cpus() -> Report:
    """Online, allowed and isolated CPUs, SMT, and the NUMA node of each CPU."""
    from kbypass import cpu

    t = cpu.topology()
    fixes = []
    if not t.isolated:
        fixes.append(
            "optional: no isolated CPUs; for steady poll-mode latency boot with "
            "isolcpus=<cpus> nohz_full=<cpus> and pin workers there"
        )
    return {
        "online": list(t.online),
        "allowed": list(t.allowed),
        "isolated": list(t.isolated),
        "nohz_full": list(t.nohz_full),
        "cores": len(t.cores),
        "packages": len(t.packages),
        "smt": any(len(c.cpus) > 1 for c in t.cores),
        "nodes": {str(n): list(c) for n, c in t.nodes.items()},
        "node_of_cpu": {str(c.id): c.node for c in t.cpus},
        "fixes": fixes,
    }


def _ethtool_driver(ifname: str) -> str | None:
    """Driver name via the SIOCETHTOOL ETHTOOL_GDRVINFO ioctl (works for veth and bridges)."""
    siocethtool, gdrvinfo, size = 0x8946, 3, 196
    buf = ctypes.create_string_buffer(struct.pack("I", gdrvinfo), size)
    ifreq = struct.pack("16sP", ifname.encode()[:15], ctypes.addressof(buf))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            fcntl.ioctl(s.fileno(), siocethtool, ifreq)
    except OSError:
        return None
    name = buf.raw[4:36].split(b"\0", 1)[0].decode(errors="replace")
    return name or None


def _interface(ifname: str) -> Report:
    d = NET / ifname
    link = d / "device" / "driver"
    driver = os.path.basename(os.readlink(link)) if link.is_symlink() else _ethtool_driver(ifname)
    queues = [q.name for q in (d / "queues").iterdir()] if (d / "queues").is_dir() else []
    from kbypass import cpu

    node = cpu.nic_numa_node(ifname)
    loopback = _int(d / "type") == 772  # ARPHRD_LOOPBACK
    native: bool | str
    if driver in NATIVE_XDP_DRIVERS:
        native = True
    elif loopback:
        native, driver = False, driver or "loopback"
    else:
        native = "unknown"
    zerocopy: bool | str = True if driver in ZEROCOPY_DRIVERS else "unknown"
    if loopback:
        zerocopy = False
    fixes = []
    if native is not True and not loopback:
        fixes.append(
            f"native XDP on driver {driver or 'unknown'} is not known to work: "
            "use xdp mode 'generic' (slower, works everywhere)"
        )
    return {
        "name": ifname,
        "driver": driver,
        "virtual": not (d / "device").exists(),
        "mtu": _int(d / "mtu"),
        "operstate": _read(d / "operstate"),
        "rx_queues": sum(q.startswith("rx-") for q in queues),
        "tx_queues": sum(q.startswith("tx-") for q in queues),
        "numa_node": node,
        "xdp_modes": {"generic": True, "native": native, "zero_copy": zerocopy},
        "queue_irqs": len(cpu.queue_irqs(ifname)),
        "fixes": fixes,
    }


def _interfaces_summary(r: Report) -> str:
    lines = []
    for i in r["interfaces"]:
        m = i["xdp_modes"]
        lines.append(
            f"{i['name']}: driver={i['driver']} mtu={i['mtu']} queues rx={i['rx_queues']} "
            f"tx={i['tx_queues']} numa={i['numa_node']} xdp native={_yes(m['native'])} "
            f"zero-copy={_yes(m['zero_copy'])}"
        )
    return "\n".join(lines) or "none"


@section("interfaces", "interfaces", _interfaces_summary)
def interfaces() -> Report:
    """Each network interface: driver, MTU, queue counts, NUMA node, XDP modes known to work."""
    names = sorted(p.name for p in NET.iterdir()) if NET.is_dir() else []
    return {"interfaces": [_interface(n) for n in names], "fixes": []}


def _rdma_summary(r: Report) -> str:
    lib = r["libibverbs"] or "not found"
    names = ", ".join(r["devices"]) or "none"
    return f"libibverbs={lib} loadable={_yes(r['loadable'])} devices={names}"


@section("rdma", "RDMA", _rdma_summary)
def rdma() -> Report:
    """Report libibverbs and the RDMA devices it lists (``kbypass.rdma.devices()``)."""
    from kbypass import rdma as rdma_mod

    path = ctypes.util.find_library("ibverbs")
    loadable, error = True, None
    details: list[Report] = []
    try:
        for d in rdma_mod.devices():
            details.append(
                {
                    "name": d.name,
                    "uverbs": d.uverbs,
                    "node_type": d.node_type,
                    "transport_type": d.transport_type,
                    "ibdev_path": d.ibdev_path,
                }
            )
    except FileNotFoundError as e:
        loadable, error = False, str(e)
    except OSError as e:
        error = str(e)
    ib = Path("/sys/class/infiniband")
    sysfs = sorted(p.name for p in ib.iterdir()) if ib.is_dir() else []
    fixes = []
    if not loadable:
        fixes.append("apt-get install rdma-core ibverbs-providers")
    elif error:
        fixes.append(f"listing RDMA devices failed ({error}): check `ibv_devices`")
    elif sysfs and not details:
        fixes.append(
            f"the kernel has {', '.join(sysfs)} but libibverbs lists none: "
            "apt-get install ibverbs-providers"
        )
    if loadable and not sysfs and not details:
        fixes.append(
            "no RDMA devices: for soft-RoCE, "
            "modprobe rdma_rxe && rdma link add rxe0 type rxe netdev <if>"
        )
    return {
        "libibverbs": path,
        "loadable": loadable,
        "error": error,
        "devices": [d["name"] for d in details],
        "device_details": details,
        "sysfs_devices": sysfs,
        "fixes": fixes,
    }


# --- text ---------------------------------------------------------------------------------


def render_text(report: Report) -> str:
    """Format the report as readable text: one block per section, fixes under it."""
    from kbypass import __version__

    lines = [f"kbypass {__version__}: what this machine can do"]
    width = max(len(s.title) for s in SECTIONS.values())
    for name, data in report.items():
        sec = SECTIONS.get(name)
        title = sec.title if sec else name
        if "section_error" in data:
            body = f"probe failed: {data['section_error']}"
        elif sec:
            body = sec.summary(data)
        else:
            body = str(data)
        first, *rest = body.splitlines() or [""]
        lines.append(f"{title.ljust(width)}  {first}")
        lines.extend(f"{''.ljust(width)}  {r}" for r in rest)
        fixes = list(data.get("fixes", []))
        if name == "interfaces":
            fixes += [f"{i['name']}: {f}" for i in data.get("interfaces", []) for f in i["fixes"]]
        lines.extend(f"{''.ljust(width)}    fix: {f}" for f in fixes)
    return "\n".join(lines)
