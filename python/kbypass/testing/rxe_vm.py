"""A soft-RoCE virtual machine: real verbs devices (``rdma_rxe``) for tests, on any Linux host.

The host kernel may have no RDMA stack and may not be allowed to load modules, so this module
boots Debian's stock kernel under qemu (TCG, or KVM where it really works), loads ``rdma_rxe``
there and runs commands inside. The VM sees the host's root file system read-only over 9p
(with a throw-away tmpfs overlay on top), so the host's rdma-core, perftest, Python and
virtualenvs run as they are; extra host folders (a checkout, a results folder) can be shared
writable at the same path. The guest mounts fresh tmpfs on /tmp, /var/tmp, /run and /dev/shm,
so a virtual environment or checkout below them is shared read-only by itself (the folders the
running interpreter needs are found with :func:`python_paths`).

Everything it downloads or builds lives in a cache folder (``~/.cache/kbypass/rxe-vm``, or
``$KBYPASS_RXE_CACHE``): Debian's current ``linux-image-6.1.*-amd64`` package fetched with
``apt-get download`` and unpacked with ``dpkg -x`` (never installed), the uncompressed
``vmlinux`` for qemu's fast PVH entry, and an initramfs made of ``busybox-static``, the kernel
modules in dependency order and an init script. Both are rebuilt only when their inputs change.

One boot serves many commands: the VM runs a small loop that picks up jobs from a shared
control folder, so a pytest session fixture boots once and runs every RDMA test inside.

Example::

    from kbypass.testing.rxe_vm import RxeVm

    with RxeVm() as vm:                      # boots (about 10 s under TCG)
        print(vm.run("rdma link").stdout)    # link rxe0/1 state ACTIVE ...
        print(vm.run(["ibv_devinfo", "-d", "rxe0"]).stdout)

With ``RxeVm(l2=True)`` the VM gets a second NIC on one Ethernet segment with a host network
namespace (a tap bridged to a veth, see :class:`L2Segment`) and ``rxe1`` on it, so a
host-side RoCEv2 peer and the VM's rxe talk over a real L2 link.

Command line::

    python -m kbypass.testing.rxe_vm prepare            # download and build, no boot
    python -m kbypass.testing.rxe_vm run -- ibv_devinfo  # boot, run, power off
    python -m kbypass.testing.rxe_vm run --share "$PWD" -- pytest -m rdma   # in $PWD, writable
    python -m kbypass.testing.rxe_vm info               # what is cached, which accelerator

Host packages (Debian): ``qemu-system-x86 busybox-static rdma-core ibverbs-providers
ibverbs-utils perftest rdmacm-utils iproute2`` (see ``.ci/install-system-deps``).
"""

from __future__ import annotations

import argparse
import bz2
import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import lzma
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Callable

from kbypass.testing.veth import _cleanup_stale, _delete_netns

__all__ = [
    "GUEST_FRESH_DIRS",
    "CommandResult",
    "Job",
    "L2Segment",
    "RxeVm",
    "RxeVmError",
    "default_cache_dir",
    "extract_vmlinux",
    "guest_shares",
    "hidden_in_guest",
    "missing_host_tools",
    "prepare",
    "python_paths",
]

#: Kernel modules the VM loads, in an order that already satisfies their symbol dependencies;
#: ``modules.dep`` adds whatever else they need (virtio_ring, failover, configfs, ...).
#: crc32_generic is requested through the crypto API, not a symbol, so nothing else pulls it in.
VM_MODULES: tuple[str, ...] = (
    "virtio",
    "virtio_ring",
    "virtio_pci",
    "virtio_net",
    "9pnet",
    "9pnet_virtio",
    "netfs",
    "fscache",
    "9p",
    "overlay",
    "crc32_generic",
    "ip6_udp_tunnel",
    "udp_tunnel",
    "ib_core",
    "ib_uverbs",
    "rdma_rxe",
    "ib_cm",
    "iw_cm",
    "rdma_cm",
    "rdma_ucm",
)

#: Debian packages the host needs for the rig (the VM uses the host's root as its own).
HOST_PACKAGES: tuple[str, ...] = (
    "qemu-system-x86",
    "busybox-static",
    "rdma-core",
    "ibverbs-providers",
    "ibverbs-utils",
    "perftest",
    "rdmacm-utils",
    "iproute2",
)

#: The guest's eth0 address; qemu's user-mode network is moved into 198.18.0.0/24 to match.
GUEST_ADDRESS = "198.18.0.15/24"
_USER_NET = "198.18.0.0/24"
#: Where the control folder appears inside the VM's root.
GUEST_CONTROL_DIR = "/run/kbypass-rxe"
#: Host folders the guest replaces with an empty tmpfs: what lives below them (a virtual
#: environment in /tmp, a checkout in /run/...) must be shared into the VM to be seen there.
GUEST_FRESH_DIRS: tuple[str, ...] = ("/tmp", "/var/tmp", "/run", "/dev/shm")
#: Host folders whose contents the guest has its own of, and which cannot be shared over 9p.
_GUEST_OWN_DIRS: tuple[str, ...] = ("/proc", "/sys", "/dev")
#: Bump when the initramfs layout or init script changes in a way hashing would not see.
_FORMAT = 2
_QEMU = "qemu-system-x86_64"
_BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")


class RxeVmError(RuntimeError):
    """The rig could not be prepared or booted; the message says what to install or check."""


def default_cache_dir() -> Path:
    """Return the cache folder: ``$KBYPASS_RXE_CACHE`` or ``~/.cache/kbypass/rxe-vm``."""
    env = os.environ.get("KBYPASS_RXE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kbypass" / "rxe-vm"


def _busybox() -> str | None:
    for p in _BUSYBOX_CANDIDATES:
        if os.access(p, os.X_OK):
            return p
    return None


def missing_host_tools() -> list[str]:
    """Host programs the rig needs that are missing, each with the Debian package that has it.

    An empty list means the rig can be prepared and booted.

    Example::

        >>> missing_host_tools()
        []
    """
    need = {
        _QEMU: "qemu-system-x86",
        "apt-get": "apt",
        "apt-cache": "apt",
        "dpkg": "dpkg",
        "rdma": "iproute2",
        "ibv_devinfo": "ibverbs-utils",
    }
    missing = [
        f"{tool} (apt-get install {pkg})" for tool, pkg in need.items() if not shutil.which(tool)
    ]
    if _busybox() is None:
        missing.append("busybox (apt-get install busybox-static)")
    return missing


# --- kernel image -------------------------------------------------------------------------

_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x1f\x8b\x08", "gzip"),
    (b"BZh", "bzip2"),
    (b"\x5d\x00\x00", "lzma"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)


def _decompress(data: bytes, kind: str) -> bytes:
    """Decompress one stream, ignoring whatever follows it (bzImage appends a size field)."""
    if kind == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
    if kind == "lzma":
        return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)
    if kind == "gzip":
        import zlib

        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
    if kind == "bzip2":
        return bz2.BZ2Decompressor().decompress(data)
    if kind == "zstd":
        zstd = shutil.which("zstd")
        if zstd is None:
            raise RxeVmError("the kernel is zstd-compressed: apt-get install zstd")
        out: bytes = subprocess.run(
            [zstd, "-dc"], input=data, capture_output=True, check=True
        ).stdout
        return out
    raise RxeVmError(f"unknown kernel compression {kind!r}")


def extract_vmlinux(bzimage: bytes) -> bytes:
    """Return the uncompressed ELF ``vmlinux`` inside an x86 ``bzImage``.

    The boot protocol header (``HdrS``, version 2.08+) says where the compressed payload
    starts; kernels whose header cannot be read are searched for a known compression magic.
    qemu boots the result through its PVH entry point, skipping the firmware and the
    in-kernel decompressor.

    Example::

        vmlinux = extract_vmlinux(Path("/boot/vmlinuz-6.1.0-56-amd64").read_bytes())
        assert vmlinux[:4] == b"\\x7fELF"
    """
    candidates: list[int] = []
    if len(bzimage) > 0x250 and bzimage[0x202:0x206] == b"HdrS":
        setup_sects = bzimage[0x1F1] or 4
        version = int.from_bytes(bzimage[0x206:0x208], "little")
        if version >= 0x208:
            payload_offset = int.from_bytes(bzimage[0x248:0x24C], "little")
            candidates.append((setup_sects + 1) * 512 + payload_offset)
    for magic, _ in _MAGICS:
        pos = bzimage.find(magic)
        while pos >= 0 and len(candidates) < 64:
            candidates.append(pos)
            pos = bzimage.find(magic, pos + 1)
    errors: list[str] = []
    for start in candidates:
        for magic, kind in _MAGICS:
            if bzimage.startswith(magic, start):
                try:
                    out = _decompress(bzimage[start:], kind)
                except (lzma.LZMAError, OSError, EOFError, ValueError) as e:
                    errors.append(f"{kind} at {start:#x}: {e}")
                    continue
                if out[:4] == b"\x7fELF":
                    return out
                errors.append(f"{kind} at {start:#x}: not an ELF image")
    raise RxeVmError(
        "no compressed ELF kernel found in the bzImage"
        + (f" ({'; '.join(errors[:3])})" if errors else "")
        + "; is it an x86 bzImage?"
    )


# --- cpio (newc) --------------------------------------------------------------------------


class _Cpio:
    """Writes a ``newc`` cpio archive, the format the kernel unpacks as an initramfs."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = itertools.count(1)

    @staticmethod
    def _pad(n: int) -> bytes:
        return b"\0" * (-n % 4)

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        raw = name.encode() + b"\0"
        fields = (next(self._ino), mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(raw), 0)
        header = b"070701" + b"".join(b"%08x" % f for f in fields)
        self._parts += [header, raw, self._pad(len(header) + len(raw)), data, self._pad(len(data))]

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return b"".join(self._parts)


# --- the guest's init ---------------------------------------------------------------------

_INIT = r"""#!/bin/busybox sh
# init of the kbypass soft-RoCE VM (generated by kbypass.testing.rxe_vm; do not edit)
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
LOG=/setup.log
log() { echo "$*" >> $LOG; echo "rxe-vm: $*" > /dev/console; }
die() { log "FATAL: $*"; [ -d /ctl/jobs ] && cp $LOG /ctl/setup.log; poweroff -f; }
up() { cut -d' ' -f1 /proc/uptime; }
while read m; do
  insmod /lib/modules/$m.ko 2>> $LOG || log "insmod $m failed"
done < /etc/kbypass-modules
log "modules loaded at $(up)s"
O=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o $O kbctl /ctl || die "cannot mount the control share"
. /ctl/config
mount -t 9p -o $O,ro,cache=loose hostroot /lower || die "cannot mount the host root"
R=/newroot
mount -t tmpfs -o mode=0755 tmpfs /rw && mkdir -p /rw/upper /rw/work
if ! mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work $R 2>> $LOG
then
  log "overlay failed; the root stays read-only"
  mount -o bind /lower $R
fi
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
for d in tmp var/tmp; do mount -t tmpfs -o mode=1777 tmpfs $R/$d; done
mount -t tmpfs -o mode=0755 tmpfs $R/run
mkdir -p $R/run/kbypass-rxe $R/run/lock && mount -o bind /ctl $R/run/kbypass-rxe
i=0
while [ $i -lt $KB_NSHARES ]; do
  eval p=\$KB_SHARE_$i
  eval ro=\$KB_SHARE_RO_$i
  mkdir -p "$R$p" 2>> $LOG
  mount -t 9p -o $O$ro kbshare$i "$R$p" || die "cannot mount share $i at $p"
  log "shared $p${ro:+ (read-only)}"
  i=$((i+1))
done
CLEAN="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root"
CLEAN="$CLEAN LANG=C.UTF-8 TERM=dumb KBYPASS_RXE_VM=1"
inroot() { env -i $CLEAN chroot $R "$@"; }
ip link set lo up
ip link set eth0 up || die "no eth0"
ip addr add $KB_ADDRESS dev eth0
active() {
  n=0
  until grep -q ACTIVE /sys/class/infiniband/$1/ports/1/state 2> /dev/null; do
    n=$((n+1)); [ $n -gt 200 ] && die "$1 did not become ACTIVE"
    sleep 0.05
  done
  log "$1 ACTIVE at $(up)s"
}
inroot rdma link add rxe0 type rxe netdev eth0 >> $LOG 2>&1 || die "rdma link add rxe0 failed"
active rxe0
if [ -n "$KB_L2_ADDRESS" ]; then
  # The second NIC, on the host's tap: the L2 segment shared with a host network namespace.
  mac=$(cat /sys/class/net/eth1/address 2> /dev/null)
  [ "$mac" = "$KB_L2_MAC" ] || die "eth1 has MAC '$mac', not the L2 NIC's $KB_L2_MAC"
  ip link set eth1 up || die "cannot bring eth1 up"
  ip addr add $KB_L2_ADDRESS dev eth1
  inroot /bin/ip neigh replace $KB_L2_PEER_IP lladdr $KB_L2_PEER_MAC dev eth1 nud permanent \
    >> $LOG 2>&1 || die "cannot add the neighbour entry of $KB_L2_PEER_IP"
  inroot rdma link add rxe1 type rxe netdev eth1 >> $LOG 2>&1 || die "rdma link add rxe1 failed"
  active rxe1
fi
cp $LOG /ctl/setup.log
up > /ctl/ready.tmp && mv /ctl/ready.tmp /ctl/ready
run_job() {
  d=/ctl/jobs/$1
  read t < $d/timeout
  inroot /bin/sh -c "exec timeout -s KILL $t /bin/sh $GUEST_CTL/jobs/$1/cmd.sh" \
    < /dev/null > $d/stdout 2> $d/stderr
  echo $? > $d/rc.tmp && mv $d/rc.tmp $d/rc
}
GUEST_CTL=/run/kbypass-rxe
cd /
while [ ! -e /ctl/stop ]; do
  for q in /ctl/queue/*; do
    [ -e "$q" ] || continue
    id=${q##*/}
    rm -f "$q"
    run_job "$id" &
  done
  sleep 0.05
done
log "stopping at $(up)s"
sync
poweroff -f
"""


# --- preparing the cache ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Artifacts:
    """What :func:`prepare` made: the kernel to boot and the initramfs to boot it with."""

    kernel_version: str
    vmlinux: Path
    bzimage: Path
    initramfs: Path


def _run(cmd: Sequence[str], cwd: Path | None = None) -> str:
    try:
        p = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise RxeVmError(f"{cmd[0]} not found: {e}") from e
    if p.returncode != 0:
        raise RxeVmError(f"`{shlex.join(cmd)}` failed ({p.returncode}): {p.stderr.strip()[-800:]}")
    return p.stdout


def resolve_kernel_package() -> str:
    """Return the kernel package Debian's ``linux-image-amd64`` currently depends on."""
    out = _run(["apt-cache", "depends", "linux-image-amd64"])
    found = re.findall(r"Depends:\s*(linux-image-[0-9][^\s]*-amd64)\b", out)
    if not found:
        raise RxeVmError(
            "apt-cache knows no linux-image-amd64 dependency: run `apt-get update` first "
            "(a Debian host with the main archive is needed)"
        )
    name: str = found[0]
    return name


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _module_order(moddir: Path, wanted: Sequence[str]) -> list[tuple[str, Path]]:
    """Dependency-ordered (name, path) for ``wanted`` and everything they need, from modules.dep."""
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        if ":" in line:
            mod, rest = line.split(":", 1)
            deps[mod.strip()] = rest.split()
    by_name = {_modname(p): p for p in deps}
    builtin = set()
    if (moddir / "modules.builtin").exists():
        builtin = {_modname(p) for p in (moddir / "modules.builtin").read_text().split()}
    order: list[str] = []
    seen: set[str] = set()

    def visit(path: str) -> None:
        if path in seen:
            return
        seen.add(path)
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    for name in wanted:
        if name in builtin:
            continue
        if name not in by_name:
            raise RxeVmError(f"kernel module {name} is neither in modules.dep nor built in")
        visit(by_name[name])
    return [(_modname(p), moddir / p) for p in order]


def _modname(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    for ext in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(ext):
            base = base[: -len(ext)]
            break
    return base.replace("-", "_")


def _prepare_kernel(cache: Path, log: Callable[[str], None]) -> tuple[str, Path]:
    """Download and unpack the kernel package once; returns (version, prepared folder)."""
    deb_override = os.environ.get("KBYPASS_RXE_KERNEL_DEB")
    if deb_override:
        deb = Path(deb_override)
        pkg = deb.name.split("_", 1)[0]
    else:
        pkg = resolve_kernel_package()
        debs = sorted(cache.glob(f"{pkg}_*.deb"))
        if not debs:
            log(f"downloading {pkg} with apt-get download")
            try:
                _run(["apt-get", "download", "-q", pkg], cwd=cache)
            except RxeVmError:
                if os.geteuid() != 0:
                    raise
                # Stale package lists name a version the archive no longer has: refresh once.
                log("apt-get download failed; running apt-get update and trying again")
                _run(["apt-get", "update", "-qq"])
                _run(["apt-get", "download", "-q", resolve_kernel_package()], cwd=cache)
            debs = sorted(cache.glob(f"{pkg}_*.deb"))
            if not debs:
                raise RxeVmError(f"apt-get download {pkg} left no .deb in {cache}")
        deb = debs[-1]
    version = pkg.removeprefix("linux-image-")
    kdir = cache / f"kernel-{deb.stem}"
    if (kdir / ".complete").exists():
        return version, kdir
    log(f"unpacking {deb.name}")
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache))
    try:
        _run(["dpkg", "-x", str(deb), str(tmp)])
        moddir = next(
            (
                tmp / d / "modules" / version
                for d in ("lib", "usr/lib")
                if (tmp / d / "modules" / version).is_dir()
            ),
            None,
        )
        if moddir is None:
            raise RxeVmError(f"{deb.name} has no lib/modules/{version}")
        busybox = _busybox()
        if busybox is None:
            raise RxeVmError("busybox is missing: apt-get install busybox-static")
        _run([busybox, "depmod", "-b", str(moddir.parents[2]), version])
        mods = _module_order(moddir, VM_MODULES)
        staging = Path(tempfile.mkdtemp(prefix=".kernel-", dir=cache))
        (staging / "modules").mkdir()
        for name, path in mods:
            shutil.copyfile(path, staging / "modules" / f"{name}.ko")
        (staging / "modules.order").write_text("".join(f"{n}\n" for n, _ in mods))
        bz = tmp / "boot" / f"vmlinuz-{version}"
        shutil.copyfile(bz, staging / "bzImage")
        (staging / "vmlinux").write_bytes(extract_vmlinux(bz.read_bytes()))
        (staging / ".complete").write_text(f"{deb.name}\n")
        if kdir.exists():
            shutil.rmtree(kdir)
        staging.rename(kdir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in cache.glob("kernel-*"):
        if old != kdir and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    for old_deb in cache.glob("linux-image-*.deb"):
        if old_deb != deb and not deb_override:
            old_deb.unlink()
    return version, kdir


def _build_initramfs(cache: Path, kdir: Path, log: Callable[[str], None]) -> Path:
    busybox = _busybox()
    if busybox is None:
        raise RxeVmError("busybox is missing: apt-get install busybox-static")
    names = (kdir / "modules.order").read_text().split()
    h = hashlib.sha256(f"{_FORMAT}\n{_INIT}\n{kdir.name}\n{names}\n".encode())
    st = os.stat(busybox)
    h.update(f"{busybox}:{st.st_size}:{st.st_mtime_ns}".encode())
    out = cache / f"initramfs-{h.hexdigest()[:16]}.cpio"
    if out.exists():
        return out
    log(f"building {out.name}")
    bb = Path(busybox).read_bytes()
    if b"GLIBC_" in bb[:4096] or b"ld-linux" in bb[:8192]:
        raise RxeVmError(f"{busybox} is dynamically linked: apt-get install busybox-static")
    c = _Cpio()
    for d in (
        "bin",
        "dev",
        "etc",
        "proc",
        "sys",
        "lib",
        "lib/modules",
        "ctl",
        "lower",
        "rw",
        "newroot",
        "tmp",
        "root",
    ):
        c.directory(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3)
    c.file("bin/busybox", bb, 0o755)
    c.file("init", _INIT.encode(), 0o755)
    c.file("etc/kbypass-modules", "".join(f"{n}\n" for n in names).encode())
    for n in names:
        c.file(f"lib/modules/{n}.ko", (kdir / "modules" / f"{n}.ko").read_bytes())
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(c.finish())
    tmp.rename(out)
    for old in cache.glob("initramfs-*.cpio"):
        if old != out:
            old.unlink()
    return out


def prepare(cache_dir: Path | None = None, log: Callable[[str], None] | None = None) -> Artifacts:
    """Download the kernel and build the initramfs if the cache lacks them; never boots.

    Example::

        art = prepare()
        print(art.kernel_version, art.vmlinux, art.initramfs)
    """
    cache = cache_dir or default_cache_dir()
    say = log or (lambda _msg: None)
    with _locked(cache):
        version, kdir = _prepare_kernel(cache, say)
        initramfs = _build_initramfs(cache, kdir, say)
    return Artifacts(version, kdir / "vmlinux", kdir / "bzImage", initramfs)


# --- running ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CommandResult:
    """The outcome of one command run inside the VM."""

    command: str
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def check(self) -> CommandResult:
        """Return self, or raise :class:`subprocess.CalledProcessError` if the command failed."""
        if self.returncode != 0:
            raise subprocess.CalledProcessError(
                self.returncode, self.command, self.stdout, self.stderr
            )
        return self


class Job:
    """A command started in the VM with :meth:`RxeVm.start`; :meth:`wait` collects it."""

    def __init__(self, vm: RxeVm, jid: str, command: str, timeout: float) -> None:
        self._vm = vm
        self.id = jid
        self.command = command
        self._timeout = timeout
        self._t0 = time.monotonic()
        self._result: CommandResult | None = None

    def done(self) -> bool:
        """Tell whether the command has finished."""
        return self._result is not None or (self._vm._jobs / self.id / "rc").exists()

    def wait(self, timeout: float | None = None) -> CommandResult:
        """Wait for the command and return its result.

        Raises :class:`TimeoutError` after ``timeout`` seconds (default: the job's own timeout
        plus a margin); the VM kills the command itself when its own timeout passes.
        """
        if self._result is not None:
            return self._result
        limit = self._t0 + (timeout if timeout is not None else self._timeout + 30.0)
        d = self._vm._jobs / self.id
        while not (d / "rc").exists():
            self._vm._check_alive()
            if time.monotonic() > limit:
                raise TimeoutError(
                    f"command {self.command!r} did not finish in the VM in time; "
                    f"see {d} and {self._vm.console_log}"
                )
            time.sleep(0.02)
        rc = int((d / "rc").read_text().strip() or "255")
        self._result = CommandResult(
            self.command,
            rc,
            (d / "stdout").read_text(errors="replace"),
            (d / "stderr").read_text(errors="replace"),
            time.monotonic() - self._t0,
        )
        return self._result


def _cpu_has_virt() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set(re.findall(r"^flags\s*:(.*)$", text, re.M)[0].split()) if "flags" in text else set()
    return bool(flags & {"vmx", "svm"})


def choose_accelerators(cache: Path) -> list[str]:
    """List the accelerators to try, in order.

    ``kvm`` comes first only if the CPU has vmx/svm, /dev/kvm opens, and no earlier boot in
    this cache found it broken; ``tcg`` always follows. ``$KBYPASS_RXE_ACCEL`` overrides.
    """
    forced = os.environ.get("KBYPASS_RXE_ACCEL")
    if forced:
        return [forced]
    if (
        _cpu_has_virt()
        and os.access("/dev/kvm", os.R_OK | os.W_OK)
        and not (cache / "kvm-broken").exists()
    ):
        return ["kvm", "tcg"]
    return ["tcg"]


def _under(path: Path, top: str) -> bool:
    return path == Path(top) or Path(top) in path.parents


def hidden_in_guest(path: str | os.PathLike[str]) -> bool:
    """Whether the VM would not see host ``path`` at the same place without a share.

    The guest sees the host's root read-only, except below :data:`GUEST_FRESH_DIRS` (fresh
    tmpfs mounts) and the kernel's own ``/proc``, ``/sys`` and ``/dev``.
    """
    p = Path(os.path.realpath(path))
    return any(_under(p, d) for d in GUEST_FRESH_DIRS + _GUEST_OWN_DIRS)


def python_paths() -> list[Path]:
    """Host folders the running interpreter needs to start and import kbypass in the VM.

    Its prefixes (a virtual environment's and the base installation's), the folder of the
    executable it resolves to, the folders on ``sys.path`` and the folder kbypass is imported
    from (a checkout, for an editable install).
    """
    import kbypass

    found = [
        sys.prefix,
        sys.exec_prefix,
        sys.base_prefix,
        sys.base_exec_prefix,
        str(Path(sys.executable).parent),
        os.path.dirname(os.path.realpath(sys.executable)),
        str(Path(kbypass.__file__).resolve().parent.parent),
    ]
    found += [p for p in sys.path if p and os.path.isdir(p)]
    out: list[Path] = []
    for f in found:
        p = Path(os.path.realpath(f))
        if p not in out:
            out.append(p)
    return out


def guest_shares(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Return the folders to share so that the VM sees each of ``paths`` at the same place.

    Paths the guest sees anyway are left out; nested ones are folded into the outermost. A
    path the guest cannot be given (below ``/proc``, ``/sys`` or ``/dev`` other than
    ``/dev/shm``) raises :class:`RxeVmError` saying what to move where.
    """
    need: list[Path] = []
    for raw in paths:
        p = Path(os.path.realpath(raw))
        if not hidden_in_guest(p):
            continue
        if not any(_under(p, d) for d in GUEST_FRESH_DIRS):
            raise RxeVmError(
                f"the soft-RoCE VM cannot see {p}: the guest kernel has its own "
                f"{', '.join(_GUEST_OWN_DIRS)} and 9p cannot share them; move it (a virtual "
                "environment, a checkout) to a folder below / that is not one of those"
            )
        if not p.is_dir():
            p = p.parent
        need.append(p)
    out: list[Path] = []
    for p in sorted(set(need), key=lambda q: len(q.parts)):
        if not any(_under(p, str(o)) for o in out):
            out.append(p)
    return out


# --- the L2 segment between the VM and a host network namespace ----------------------------

_l2_counter = itertools.count()


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RxeVmError(f"`ip {shlex.join(args)}` failed: {r.stderr.strip()}")


class L2Segment:
    """An Ethernet segment joining the VM's second NIC to a host network namespace.

    Two network namespaces, created here and deleted by :meth:`close` (also at interpreter
    exit, and by :meth:`cleanup_stale` once the creating process is gone):

    * ``bridge_netns`` holds bridge ``br0`` joining the VM's tap ``tap0`` (a persistent tap
      that qemu, started in this namespace, attaches to) and ``veth-br``, one end of a veth
      pair;
    * ``host_netns`` holds the pair's other end, ``veth0`` with :attr:`host_ip`: the place for
      a host-side RoCEv2 peer (an AF_XDP engine, a capture).

    Inside the VM that NIC is ``eth1`` (:attr:`guest_mac`) with :attr:`guest_ip`, and
    ``rxe1`` runs on it, so rxe1's GID table holds ``::ffff:<guest_ip>``. Both sides get a
    permanent neighbour entry for the other, so frames flow even when the host side's ARP is
    swallowed by an XDP program. GRO is on at both veth ends (frames an XDP program redirects
    into a veth are dropped unless the receiving end has GRO or an XDP program). IPv6 is off in
    both host namespaces; the addresses are ``<subnet>.1`` (host) and ``<subnet>.2`` (VM), in
    198.18.0.0/15. Needs root and iproute2; the VM is not needed to create one.

    Example::

        with L2Segment() as seg:
            seg.run("ip", "-br", "addr")          # veth0 198.18.1.1/24, in host_netns
    """

    bridge = "br0"
    tap = "tap0"
    bridge_port = "veth-br"
    host_ifname = "veth0"
    guest_ifname = "eth1"
    guest_rxe = "rxe1"
    prefixlen = 24

    def __init__(self, subnet: str = "198.18.1") -> None:
        parts = subnet.split(".")
        if (
            len(parts) != 3
            or not all(p.isdigit() for p in parts)
            or parts[:2] not in (["198", "18"], ["198", "19"])
            or not 0 <= int(parts[2]) <= 255
            or subnet == _USER_NET.rsplit(".", 1)[0]
        ):
            raise ValueError(
                f"subnet {subnet!r} is not a /24 in 198.18.0.0/15 other than the VM's "
                f"user-mode network {_USER_NET}: give e.g. '198.18.1'"
            )
        if os.geteuid() != 0:
            raise PermissionError(
                "the L2 segment creates network namespaces, a bridge and a tap: run as root"
            )
        for tool, pkg in (("ip", "iproute2"), ("ethtool", "ethtool")):
            if shutil.which(tool) is None:
                raise RxeVmError(f"the `{tool}` command is missing: apt-get install {pkg}")
        n = int(parts[2])
        tag = f"kbx-{os.getpid()}-{next(_l2_counter)}"
        self.bridge_netns = f"{tag}-rxebr"
        self.host_netns = f"{tag}-rxehost"
        self.host_ip = f"{subnet}.1"
        self.guest_ip = f"{subnet}.2"
        self.host_mac = f"02:00:c6:12:{n:02x}:01"
        self.guest_mac = f"02:00:c6:12:{n:02x}:02"
        self._finalizer = weakref.finalize(
            self, _delete_netns, (self.bridge_netns, self.host_netns)
        )
        try:
            self._create()
        except BaseException:
            self.close()
            raise

    def _create(self) -> None:
        br, host = self.bridge_netns, self.host_netns
        for ns in (br, host):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            for key in ("all", "default"):
                _run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                      f"net.ipv6.conf.{key}.disable_ipv6=1"])  # fmt: skip
        _ip("-n", br, "link", "add", self.bridge, "type", "bridge", "forward_delay", "0")
        _ip("-n", br, "tuntap", "add", "mode", "tap", "name", self.tap)
        _ip("-n", br, "link", "add", self.bridge_port, "type", "veth",
            "peer", "name", self.host_ifname, "netns", host)  # fmt: skip
        for port in (self.tap, self.bridge_port):
            _ip("-n", br, "link", "set", port, "master", self.bridge)
            _ip("-n", br, "link", "set", port, "up")
        _ip("-n", br, "link", "set", self.bridge, "up")
        _ip("-n", host, "link", "set", self.host_ifname, "address", self.host_mac)
        _ip("-n", host, "addr", "add", f"{self.host_ip}/{self.prefixlen}",
            "dev", self.host_ifname)  # fmt: skip
        _ip("-n", host, "link", "set", self.host_ifname, "up")
        _ip("-n", host, "neigh", "replace", self.guest_ip, "lladdr", self.guest_mac,
            "dev", self.host_ifname, "nud", "permanent")  # fmt: skip
        for ns, dev in ((br, self.bridge_port), (host, self.host_ifname)):
            _run(["ip", "netns", "exec", ns, "ethtool", "-K", dev, "gro", "on"])

    def guest_config(self) -> list[str]:
        """Return the lines of the VM's control config that make its init set up eth1 and rxe1."""
        return [
            f"KB_L2_ADDRESS={self.guest_ip}/{self.prefixlen}",
            f"KB_L2_MAC={self.guest_mac}",
            f"KB_L2_PEER_IP={self.host_ip}",
            f"KB_L2_PEER_MAC={self.host_mac}",
        ]

    def qemu_args(self) -> list[str]:
        """Return qemu's arguments for the VM's NIC on :attr:`tap` (run qemu in bridge_netns)."""
        return [
            "-netdev", f"tap,id=n1,ifname={self.tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n1,mac={self.guest_mac},romfile=",
        ]  # fmt: skip

    def netns_prefix(self, side: str = "host") -> list[str]:
        """``ip netns exec NS``: prefix of a command to run in ``host`` or ``bridge`` netns."""
        if side not in ("host", "bridge"):
            raise ValueError(f"side must be 'host' or 'bridge', not {side!r}")
        return ["ip", "netns", "exec", self.host_netns if side == "host" else self.bridge_netns]

    def run(
        self, *cmd: str, side: str = "host", timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in the host-side (or bridge) namespace; returns its completed process.

        Raises :class:`subprocess.TimeoutExpired` after ``timeout`` seconds (the command is
        killed).
        """
        return subprocess.run(
            [*self.netns_prefix(side), *cmd],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def popen(self, *cmd: str, side: str = "host", **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``cmd`` in the host-side (or bridge) namespace; the caller waits or kills it."""
        return subprocess.Popen([*self.netns_prefix(side), *cmd], **kwargs)

    @property
    def closed(self) -> bool:
        """Whether the namespaces (and with them the bridge, tap and veth) are gone."""
        return not self._finalizer.alive

    def close(self) -> None:
        """Delete both namespaces and every device in them. Idempotent."""
        self._finalizer()

    def __enter__(self) -> L2Segment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"L2Segment({self.host_netns}/{self.host_ifname} {self.host_ip} <-> "
            f"{self.bridge_netns}/{self.bridge}/{self.tap} <-> VM {self.guest_ifname} "
            f"{self.guest_ip}, {'closed' if self.closed else 'open'})"
        )

    @staticmethod
    def cleanup_stale() -> list[str]:
        """Delete namespaces of L2Segments whose process died; return their names."""
        return _cleanup_stale(("rxebr", "rxehost"))


class RxeVm:
    """A booted soft-RoCE VM that runs commands; boot once, run many.

    ``shares`` are host folders mounted writable at the same path inside the VM (the rest of
    the host root is visible read-only, with a discarded tmpfs overlay; /tmp, /run, /var/tmp
    and /dev/shm are fresh). With ``share_python`` (the default), whatever the running
    interpreter needs that the guest would not see (a virtual environment in /tmp, say; see
    :func:`python_paths`) is shared read-only at its own path too, so ``sys.executable`` runs
    in the VM as it does on the host; so are the ``visible`` paths the guest would not see.
    :attr:`auto_shares` lists those folders. Inside, ``rxe0`` on ``eth0`` (198.18.0.15) is
    ACTIVE before the first command runs; GID index 1 is its IPv4-mapped RoCEv2 GID, and its
    active MTU is 1024.

    With ``l2=True`` the VM also gets an :class:`L2Segment` (:attr:`l2`): a second NIC,
    ``eth1`` with ``<l2_subnet>.2``, on a tap bridged in a network namespace of its own to a
    veth whose other end, ``<l2_subnet>.1``, is in a second namespace on the host, and
    ``rxe1`` on that NIC (its IPv4-mapped GID ``::ffff:<l2_subnet>.2`` at index 1). qemu then
    runs in the bridge's namespace; :meth:`close` (or a failed boot) stops qemu by its PID and
    deletes both namespaces with everything in them.

    Example::

        with RxeVm(shares=[Path.cwd()]) as vm:
            r = vm.run("ibv_devices")
            assert "rxe0" in r.stdout
            server = vm.start("ibv_rc_pingpong -d rxe0 -g 1")
            client = vm.run("sleep 1; ibv_rc_pingpong -d rxe0 -g 1 127.0.0.1")
            assert client.returncode == 0 and server.wait().returncode == 0

        with RxeVm(l2=True) as vm:               # rxe1 in the VM, 198.18.1.1 on the host
            assert vm.l2 is not None
            vm.l2.run("ping", "-c1", vm.l2.guest_ip)     # from the host-side namespace
    """

    def __init__(
        self,
        *,
        shares: Sequence[str | os.PathLike[str]] = (),
        share_python: bool = True,
        visible: Sequence[str | os.PathLike[str]] = (),
        cache_dir: str | os.PathLike[str] | None = None,
        memory: str = "2G",
        cpus: int = 2,
        boot_timeout: float = 300.0,
        boot_image: str | None = None,
        log: Callable[[str], None] | None = None,
        l2: bool = False,
        l2_subnet: str = "198.18.1",
    ) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.shares = [Path(s).resolve() for s in shares]
        for s in self.shares:
            if not s.is_dir():
                raise FileNotFoundError(f"share {s} is not a folder: create it or drop it")
        #: Read-only shares added so that the interpreter (and kbypass) run in the VM.
        wanted = [*(python_paths() if share_python else []), *visible]
        self.auto_shares = [
            p for p in guest_shares(wanted) if not any(_under(p, str(s)) for s in self.shares)
        ]
        self.memory = memory
        self.cpus = cpus
        self.boot_timeout = boot_timeout
        self.boot_image = boot_image or os.environ.get("KBYPASS_RXE_BOOT", "vmlinux")
        if self.boot_image not in ("vmlinux", "bzimage"):
            raise ValueError(
                f"boot_image must be 'vmlinux' (PVH) or 'bzimage', not {self.boot_image!r}"
            )
        self._log = log or (lambda _msg: None)
        self._l2_subnet = l2_subnet if l2 else None
        if l2:
            L2Segment.cleanup_stale()
        #: The L2 segment to the host (``l2=True``), made by :meth:`boot`, gone after close.
        self.l2: L2Segment | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctl: Path | None = None
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._console: IO[bytes] | None = None
        self.accel: str | None = None
        self.boot_seconds: float | None = None
        self.guest_boot_seconds: float | None = None
        self.artifacts: Artifacts | None = None

    # paths inside the control folder
    @property
    def _jobs(self) -> Path:
        assert self._ctl is not None, "the VM is not booted"
        return self._ctl / "jobs"

    @property
    def pid(self) -> int | None:
        """The qemu process's id while the VM runs, else None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def console_log(self) -> Path:
        """The VM's serial console, for diagnosing a failed boot."""
        assert self._ctl is not None, "the VM is not booted"
        return self._ctl / "console.log"

    @property
    def setup_log(self) -> str:
        """What the VM's init did (modules, mounts, rxe0), written once it is ready."""
        assert self._ctl is not None, "the VM is not booted"
        p = self._ctl / "setup.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def __enter__(self) -> RxeVm:
        self.boot()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _qemu_cmd(self, accel: str, art: Artifacts, ctl: Path) -> list[str]:
        cmdline = (
            "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init mitigations=off "
            "8250.nr_uarts=1 tsc=reliable"
        )
        cmd = [
            _QEMU,
            "-machine", f"pc,accel={accel}",
            "-cpu", "max" if accel == "tcg" else "host",
            "-m", self.memory,
            "-smp", str(self.cpus),
            "-nographic", "-nodefaults", "-no-reboot", "-no-user-config",
            "-serial", "stdio",
            "-kernel", str(art.vmlinux if self.boot_image == "vmlinux" else art.bzimage),
            "-initrd", str(art.initramfs),
            "-append", cmdline,
            "-netdev", f"user,id=n0,net={_USER_NET},restrict=on",
            "-device", "virtio-net-pci,netdev=n0",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
            "multidevs=remap",
            "-virtfs", f"local,path={ctl},mount_tag=kbctl,security_model=none",
        ]  # fmt: skip
        if self.l2 is not None:
            # qemu attaches to the tap by name, so it runs in the tap's namespace.
            cmd = [*self.l2.netns_prefix("bridge"), *cmd, *self.l2.qemu_args()]
        for i, (s, ro) in enumerate(self._mounts()):
            cmd += [
                "-virtfs",
                f"local,path={s},mount_tag=kbshare{i},security_model=none,multidevs=remap"
                + (",readonly=on" if ro else ""),
            ]
        return cmd

    def _mounts(self) -> list[tuple[Path, bool]]:
        """(folder, read-only) of every share, outer folders before the ones inside them."""
        both = [(s, False) for s in self.shares] + [(s, True) for s in self.auto_shares]
        return sorted(both, key=lambda m: len(m[0].parts))

    def boot(self) -> None:
        """Prepare the cache if needed, start qemu and wait until rxe0 is ACTIVE."""
        if self._proc is not None:
            raise RuntimeError("the VM is already booted; close() it first")
        missing = missing_host_tools()
        if missing:
            raise RxeVmError("the soft-RoCE VM needs: " + ", ".join(missing))
        self.artifacts = prepare(self.cache_dir, self._log)
        last_error: Exception | None = None
        try:
            if self._l2_subnet is not None:
                self.l2 = L2Segment(self._l2_subnet)
                self._log(f"made {self.l2}")
            for accel in choose_accelerators(self.cache_dir):
                try:
                    self._boot_with(accel, self.artifacts)
                    return
                except RxeVmError as e:
                    last_error = e
                    self._teardown(keep=True)
                    if accel == "kvm":
                        (self.cache_dir / "kvm-broken").write_text(f"{e}\n")
                        self._log(f"KVM boot failed, falling back to TCG: {e}")
        except BaseException:
            self._teardown(keep=True)
            self._close_l2()
            raise
        self._close_l2()
        assert last_error is not None
        raise last_error

    def _boot_with(self, accel: str, art: Artifacts) -> None:
        runs = self.cache_dir / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        # Control folders of runs that died without close() (killed test sessions).
        for old in runs.glob("run-*"):
            with contextlib.suppress(OSError):
                if time.time() - old.stat().st_mtime > 86400:
                    shutil.rmtree(old, ignore_errors=True)
        ctl = Path(tempfile.mkdtemp(prefix="run-", dir=runs))
        self._ctl = ctl
        (ctl / "jobs").mkdir()
        (ctl / "queue").mkdir()
        mounts = self._mounts()
        lines = [f"KB_ADDRESS={GUEST_ADDRESS}", f"KB_NSHARES={len(mounts)}"]
        if self.l2 is not None:
            lines += self.l2.guest_config()
        for i, (s, ro) in enumerate(mounts):
            lines += [
                f"KB_SHARE_{i}={shlex.quote(str(s))}",
                f"KB_SHARE_RO_{i}={',ro' if ro else ''}",
            ]
        (ctl / "config").write_text("\n".join(lines) + "\n")
        for s in self.auto_shares:
            self._log(f"sharing {s} read-only: needed in the VM, which would not see it")
        self._console = open(ctl / "console.log", "wb")
        t0 = time.monotonic()
        self.accel = accel
        self._log(f"booting {art.kernel_version} with {accel}")
        self._proc = subprocess.Popen(
            self._qemu_cmd(accel, art, ctl),
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
        )
        self._log(f"qemu pid {self._proc.pid}")
        limit = t0 + (60.0 if accel == "kvm" else self.boot_timeout)
        while not (ctl / "ready").exists():
            if self._proc.poll() is not None:
                raise RxeVmError(
                    f"qemu exited ({self._proc.returncode}) before the VM was ready:\n"
                    + self._console_tail()
                )
            if time.monotonic() > limit:
                raise RxeVmError(
                    f"the VM was not ready after {limit - t0:.0f} s ({accel}):\n"
                    + self._console_tail()
                )
            time.sleep(0.02)
        self.boot_seconds = time.monotonic() - t0
        with contextlib.suppress(ValueError):
            self.guest_boot_seconds = float((ctl / "ready").read_text().strip())

    def _console_tail(self, n: int = 40) -> str:
        if self._ctl is None:
            return ""
        p = self._ctl / "console.log"
        lines = p.read_text(errors="replace").splitlines() if p.exists() else []
        setup = self._ctl / "setup.log"
        extra = f"\n(setup log: {setup})" if setup.exists() else ""
        return "\n".join(lines[-n:]) + f"\n(console log: {p}){extra}"

    def _check_alive(self) -> None:
        if self._proc is None:
            raise RuntimeError("the VM is not booted: call boot() or use `with RxeVm() as vm`")
        if self._proc.poll() is not None:
            raise RxeVmError(
                f"the VM stopped (qemu exit {self._proc.returncode}):\n" + self._console_tail()
            )

    def start(
        self,
        command: str | Sequence[str],
        *,
        timeout: float = 120.0,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Job:
        """Start ``command`` (a shell string or an argv list) in the VM and return at once.

        It runs as root in the host's root file system with a clean environment plus ``env``,
        in ``cwd`` (default ``/``), and is killed after ``timeout`` seconds.
        """
        self._check_alive()
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        text = command if isinstance(command, str) else shlex.join(command)
        script = ["set -e", f"cd {shlex.quote(str(cwd) if cwd is not None else '/')}"]
        for k, v in (env or {}).items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
                raise ValueError(f"environment variable name {k!r} is not valid in a shell")
            script.append(f"export {k}={shlex.quote(v)}")
        script += ["set +e", text]
        with self._lock:
            jid = f"{next(self._counter):06d}"
        d = self._jobs / jid
        d.mkdir()
        (d / "cmd.sh").write_text("\n".join(script) + "\n")
        (d / "timeout").write_text(f"{max(1, int(timeout + 0.999))}\n")
        q = self._jobs.parent / "queue"
        (q / f".{jid}").write_text("")
        os.rename(q / f".{jid}", q / jid)
        return Job(self, jid, text, timeout)

    def run(
        self,
        command: str | Sequence[str],
        *,
        timeout: float = 120.0,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = False,
    ) -> CommandResult:
        """Run ``command`` in the VM and wait for it; see :meth:`start`.

        With ``check=True`` a non-zero exit raises :class:`subprocess.CalledProcessError`.
        """
        r = self.start(command, timeout=timeout, cwd=cwd, env=env).wait()
        return r.check() if check else r

    def close(self, timeout: float = 30.0) -> None:
        """Ask the VM to power off, wait for qemu (kill it after ``timeout``), clean up."""
        if self._proc is None:
            self._close_l2()
            return
        if self._ctl is not None and self._proc.poll() is None:
            (self._ctl / "stop").write_text("")
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._teardown(keep=False)

    def _teardown(self, keep: bool) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
        if self._console is not None:
            self._console.close()
            self._console = None
        if not keep and self._ctl is not None:
            shutil.rmtree(self._ctl, ignore_errors=True)
            self._ctl = None
        if not keep:
            self._close_l2()

    def _close_l2(self) -> None:
        if self.l2 is not None:
            self.l2.close()
            self.l2 = None


# --- command line -------------------------------------------------------------------------


def _main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m kbypass.testing.rxe_vm",
        description="Boot Debian's kernel with soft-RoCE (rdma_rxe) in qemu, run commands there.",
    )
    sub = ap.add_subparsers(dest="action", required=True)
    sub.add_parser("prepare", help="download the kernel and build the initramfs (no boot)")
    sub.add_parser("info", help="show the cache, the kernel and the accelerator that would be used")
    run = sub.add_parser("run", help="boot, run one command, power off; exits with its status")
    run.add_argument("--share", action="append", default=[], help="host folder to mount writable")
    run.add_argument(
        "--cwd",
        default=None,
        help="working folder inside the VM (default: the current folder, shared read-only "
        "when the VM would not see it)",
    )
    run.add_argument("--timeout", type=float, default=600.0, help="command timeout in seconds")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = ap.parse_args(argv)

    def say(msg: str) -> None:
        print(f"rxe-vm: {msg}", file=sys.stderr, flush=True)

    if args.action == "prepare":
        t = time.monotonic()
        art = prepare(log=say)
        say(f"ready in {time.monotonic() - t:.1f} s: {art.vmlinux} {art.initramfs}")
        return 0
    if args.action == "info":
        cache = default_cache_dir()
        print(f"cache: {cache}")
        print(f"accelerators: {', '.join(choose_accelerators(cache))}")
        print(f"missing host tools: {', '.join(missing_host_tools()) or 'none'}")
        for p in sorted(cache.glob("kernel-*")) + sorted(cache.glob("initramfs-*")):
            print(f"cached: {p.name}")
        return 0
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        ap.error("run needs a command after --")
    text = command[0] if len(command) == 1 else shlex.join(command)
    cwd = args.cwd if args.cwd is not None else os.getcwd()
    with RxeVm(shares=args.share, visible=[cwd], log=say) as vm:
        say(f"booted in {vm.boot_seconds:.1f} s ({vm.accel})")
        r = vm.run(text, timeout=args.timeout, cwd=cwd)
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    say(f"exit {r.returncode} after {r.seconds:.1f} s")
    return r.returncode


if __name__ == "__main__":
    sys.exit(_main())
