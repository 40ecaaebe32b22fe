"""A veth pair between two network namespaces that the pair itself creates and removes.

Everything lives inside the two namespaces: nothing is added to the namespace the process runs
in, and the addresses are in 198.18.0.0/15 (RFC 2544's benchmarking range).

Example::

    from kbypass.testing import VethPair

    with VethPair() as pair:
        pair.run("a", "ping", "-c1", pair.b.ip)
        with pair.enter("b"):          # this thread is now inside namespace b
            ...                        # open sockets on pair.b.ifname here
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import itertools
import os
import shutil
import socket
import struct
import subprocess
import weakref
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass

from kbypass import _core

_NETNS_DIR = "/var/run/netns"
_PREFIX = "kbx"
_counter = itertools.count()


@dataclass(frozen=True)
class VethEnd:
    """One end of a :class:`VethPair`: its namespace, interface, addresses."""

    netns: str
    ifname: str
    ip: str
    mac: str
    prefixlen: int = 24

    @property
    def cidr(self) -> str:
        """The address with its prefix length, e.g. ``198.18.0.1/24``."""
        return f"{self.ip}/{self.prefixlen}"


_SIOCETHTOOL = 0x8946
_ETHTOOL_GGRO = 0x2B
_ETHTOOL_SGRO = 0x2C


def _ethtool_value(ifname: str, cmd: int, data: int = 0) -> int:
    """Run one ``struct ethtool_value`` SIOCETHTOOL command on ``ifname``; returns ``data``."""
    buf = ctypes.create_string_buffer(struct.pack("II", cmd, data), 8)
    ifreq = struct.pack("16sP", ifname.encode()[:15], ctypes.addressof(buf))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            fcntl.ioctl(s.fileno(), _SIOCETHTOOL, ifreq)
        except OSError as e:
            raise OSError(e.errno, f"SIOCETHTOOL {cmd:#x} on {ifname}: {e.strerror}") from e
    return int(struct.unpack("II", buf.raw)[1])


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise OSError(f"`ip {' '.join(args)}` failed: {r.stderr.strip()}")


def _require_root_tools() -> None:
    if os.geteuid() != 0:
        raise PermissionError(
            "VethPair creates network namespaces: "
            "needs CAP_NET_ADMIN and CAP_SYS_ADMIN: run as root"
        )
    if shutil.which("ip") is None:
        raise FileNotFoundError("the `ip` command is missing: apt-get install iproute2")


def _delete_netns(names: Sequence[str]) -> None:
    for name in names:
        if os.path.exists(os.path.join(_NETNS_DIR, name)):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _cleanup_stale(kinds: Container[str] | None = None) -> list[str]:
    """Delete the namespaces of kbypass test benches whose creating process is gone.

    Names are ``kbx-<pid>-<n>-<kind>``: any kind, or only those in ``kinds``. Returns the names
    deleted.
    """
    removed: list[str] = []
    try:
        names = os.listdir(_NETNS_DIR)
    except FileNotFoundError:
        return removed
    for name in names:
        parts = name.split("-")
        if len(parts) != 4 or parts[0] != _PREFIX or not parts[1].isdigit():
            continue
        if kinds is not None and parts[3] not in kinds:
            continue
        pid = int(parts[1])
        if pid != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            _delete_netns([name])
            removed.append(name)
    return removed


class VethPair:
    """Two network namespaces, ``a`` and ``b``, joined by a veth pair.

    Args:
        mtu: MTU of both ends (native XDP on veth refuses a peer MTU above about 3506 unless the
            program is frags-capable).
        queues: RX/TX queues per end (veth supports several; AF_XDP binds per queue).
        gro: turn GRO on at both ends. Frames that XDP sends into a veth are dropped unless the
            receiving end has GRO on or a native XDP program, so this is on by default.
        subnet: the /24 in 198.18.0.0/15 to use; ``a`` gets ``.1`` and ``b`` gets ``.2``.
        ipv6: keep IPv6 on. Off by default so the pair carries only the traffic a test sends
            (no router solicitations or multicast listener reports).

    The namespaces are named ``kbx-<pid>-<n>-a`` / ``-b`` and are deleted by :meth:`close`, on
    context-manager exit, at interpreter exit, and by :meth:`cleanup_stale` if the creating
    process died. Static neighbour entries are installed both ways, so traffic flows even when an
    XDP program swallows ARP.
    """

    def __init__(
        self,
        *,
        mtu: int = 1500,
        queues: int = 1,
        gro: bool = True,
        subnet: str = "198.18.0",
        ipv6: bool = False,
    ) -> None:
        if not 68 <= mtu <= 65535:
            raise ValueError(f"mtu {mtu} is out of range: give 68..65535")
        if not 1 <= queues <= 64:
            raise ValueError(f"queues {queues} is out of range: give 1..64")
        parts = subnet.split(".")
        if (
            len(parts) != 3
            or not all(p.isdigit() for p in parts)
            or parts[0] != "198"
            or parts[1] not in ("18", "19")
            or not 0 <= int(parts[2]) <= 255
        ):
            raise ValueError(
                f"subnet {subnet!r} is not a /24 in 198.18.0.0/15: give e.g. '198.18.0'"
            )
        _require_root_tools()
        self.mtu = mtu
        self.queues = queues
        self.ipv6 = ipv6
        tag = f"{_PREFIX}-{os.getpid()}-{next(_counter)}"
        self.a = VethEnd(f"{tag}-a", "veth0", f"{subnet}.1", "02:00:c6:12:00:01")
        self.b = VethEnd(f"{tag}-b", "veth1", f"{subnet}.2", "02:00:c6:12:00:02")
        self._finalizer = weakref.finalize(self, _delete_netns, (self.a.netns, self.b.netns))
        try:
            self._create(gro)
        except BaseException:
            self.close()
            raise

    def _create(self, gro: bool) -> None:
        a, b = self.a, self.b
        q = str(self.queues)
        _ip("netns", "add", a.netns)
        _ip("netns", "add", b.netns)
        if not self.ipv6:
            for end in (a, b):
                for scope in ("all", "default"):
                    self.run(end, "sysctl", "-qw", f"net.ipv6.conf.{scope}.disable_ipv6=1")
        _ip(
            "-n", a.netns, "link", "add", a.ifname,
            "numrxqueues", q, "numtxqueues", q, "address", a.mac, "mtu", str(self.mtu),
            "type", "veth", "peer", "name", b.ifname, "netns", b.netns,
            "numrxqueues", q, "numtxqueues", q, "address", b.mac, "mtu", str(self.mtu),
        )  # fmt: skip
        for end, peer in ((a, b), (b, a)):
            _ip("-n", end.netns, "link", "set", "lo", "up")
            _ip("-n", end.netns, "addr", "add", end.cidr, "dev", end.ifname)
            _ip("-n", end.netns, "link", "set", end.ifname, "up")
            _ip(
                "-n", end.netns, "neigh", "replace", peer.ip,
                "lladdr", peer.mac, "dev", end.ifname, "nud", "permanent",
            )  # fmt: skip
            if gro:
                self.set_gro(end, True)

    def set_gro(self, end: VethEnd, on: bool) -> None:
        """Turn GRO on or off on one end (what ``ethtool -K IF gro on|off`` does).

        Done in-process with the ``SIOCETHTOOL`` ioctl from a thread inside the end's namespace,
        so no ``ethtool`` binary is needed.
        """
        with self.enter(end):
            _ethtool_value(end.ifname, _ETHTOOL_SGRO, 1 if on else 0)

    def gro(self, side: str | VethEnd) -> bool:
        """Whether GRO is on at one end."""
        end = self._end(side)
        with self.enter(end):
            return _ethtool_value(end.ifname, _ETHTOOL_GGRO) != 0

    def _end(self, side: str | VethEnd) -> VethEnd:
        if isinstance(side, VethEnd):
            return side
        if side == "a":
            return self.a
        if side == "b":
            return self.b
        raise ValueError(f"side must be 'a' or 'b', not {side!r}")

    def run(
        self, side: str | VethEnd, *cmd: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside one end's namespace and return its completed process."""
        end = self._end(side)
        r = subprocess.run(
            ["ip", "netns", "exec", end.netns, *cmd],
            capture_output=True, text=True, check=False, timeout=timeout,
        )  # fmt: skip
        if check and r.returncode != 0:
            raise OSError(
                f"`{' '.join(cmd)}` in {end.netns} exited {r.returncode}: {r.stderr.strip()}"
            )
        return r

    def popen(self, side: str | VethEnd, *cmd: str, **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a command inside one end's namespace (the caller waits for or kills it)."""
        end = self._end(side)
        return subprocess.Popen(["ip", "netns", "exec", end.netns, *cmd], **kwargs)  # type: ignore[call-overload, no-any-return]

    @contextlib.contextmanager
    def enter(self, side: str | VethEnd) -> Iterator[VethEnd]:
        """Move the calling thread into one end's namespace for the ``with`` block.

        Only this thread moves; sockets opened inside stay in that namespace after the block.
        """
        end = self._end(side)
        entry = _core.NetnsEntry(end.netns)
        try:
            yield end
        finally:
            entry.exit()

    @property
    def closed(self) -> bool:
        """Whether the namespaces have been removed."""
        return not self._finalizer.alive

    def close(self) -> None:
        """Delete both namespaces (and with them the veth pair). Idempotent."""
        self._finalizer()

    def __enter__(self) -> VethPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (
            f"VethPair({self.a.netns}/{self.a.ifname} {self.a.ip} <-> "
            f"{self.b.netns}/{self.b.ifname} {self.b.ip}, mtu={self.mtu}, {state})"
        )

    @staticmethod
    def cleanup_stale() -> list[str]:
        """Delete namespaces left by VethPairs whose process died; return their names."""
        return _cleanup_stale()
