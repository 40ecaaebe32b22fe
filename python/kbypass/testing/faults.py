"""Fault injection on an L2 path for tests: loss, duplication, reordering and delay.

This kernel-independent stand-in for ``netem`` (which many kernels lack) builds three network
namespaces, ``a`` — ``m`` — ``b``: ``a`` and ``b`` are the ends (addresses in 198.18.0.0/15),
``m`` holds a bridge joining the two veth ends ``ma`` and ``mb``. An XDP program of kbypass's
own sits on each bridge port, for the frames arriving there (direction ``"a>b"`` on ``ma``,
``"b>a"`` on ``mb``):

- frames its filter matches are dropped with probability ``loss``
  (``bpf_get_prandom_u32`` against a threshold in a map);
- of the rest, a share ``duplicate + reorder + delay`` goes to an AF_XDP socket of a middlebox
  thread (Rust, never holding the GIL), which sends each out of the other port twice
  (duplicate), after ``reorder_after`` later frames went the normal way (reorder; at the latest
  after ``reorder_timeout``), or after ``delay_time`` (delay), picking among the three in
  proportion to their probabilities;
- everything else is passed and the bridge forwards it.

Probabilities, filter and timing change at run time (:meth:`FaultyPath.set`) without
reloading the attached programs; :meth:`FaultyPath.stats` gives every counter. Everything
(programs, links, maps, sockets, thread, namespaces) is removed on exit, even on failure; if
the process dies, the kernel drops the links and sockets with its fds, and
``VethPair.cleanup_stale()`` deletes the namespaces it left.

Example::

    from kbypass.testing.faults import FaultyPath

    with FaultyPath(loss=0.01, duplicate=0.01, reorder=0.05, filter="udp dst port 4791") as p:
        p.run("b", "some-server", "--listen", p.b.ip)      # or: with p.enter("a"): sockets...
        p.set("a>b", loss=0.05)
        print(p.stats().a_to_b.dropped)
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import subprocess
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from kbypass import _core
from kbypass.testing.veth import (
    _PREFIX,
    VethEnd,
    _delete_netns,
    _ethtool_value,
    _ip,
    _require_root_tools,
)

Direction = Literal["a>b", "b>a", "both"]
"""Which way the frames go: ``"a>b"`` (arriving on port ``ma``), ``"b>a"`` or ``"both"``."""

_counter = itertools.count()
_ETHTOOL_STXCSUM = 0x17
_DIRS: Final = {"a>b": (0,), "b>a": (1,), "both": (0, 1)}


class _Keep:
    """The "leave it as it is" default of :meth:`FaultyPath.set`'s ``filter``."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Final = _Keep()


@dataclass(frozen=True)
class DirectionStats:
    """The counters of one direction.

    Injector (XDP): ``seen`` frames arrived, ``matched`` the filter; each got one verdict:
    ``passed`` (to the bridge; includes ``no_socket``: chosen for the middlebox while it had no
    socket), ``dropped`` or ``to_middlebox``. Middlebox: ``received`` from its socket
    (``kernel_lost``: redirected but refused by a full RX ring), ``duplicated``, ``reordered``
    (released after ``reorder_after`` later frames), ``reorder_timeouts`` (released at the
    timeout), ``delayed``, ``forwarded`` (no fault left when it arrived), ``sent`` (copies
    included), ``tx_failed`` and ``held`` (inside the middlebox now).
    """

    seen: int
    matched: int
    passed: int
    dropped: int
    to_middlebox: int
    no_socket: int
    received: int
    duplicated: int
    reordered: int
    reorder_timeouts: int
    delayed: int
    forwarded: int
    sent: int
    tx_failed: int
    held: int
    kernel_lost: int

    def balanced(self) -> bool:
        """Whether both exact identities hold.

        ``seen == passed + dropped + to_middlebox`` and
        ``received + duplicated == sent + tx_failed + held``.
        """
        return (
            self.seen == self.passed + self.dropped + self.to_middlebox
            and self.received + self.duplicated == self.sent + self.tx_failed + self.held
        )

    def settled(self) -> bool:
        """Whether nothing is in flight.

        The middlebox holds nothing and took every frame redirected to it
        (``to_middlebox == received + kernel_lost``).
        """
        return self.held == 0 and self.to_middlebox == self.received + self.kernel_lost


@dataclass(frozen=True)
class FaultStats:
    """Both directions' counters."""

    a_to_b: DirectionStats
    b_to_a: DirectionStats


class FaultyPath:
    """Namespaces ``a`` — ``m`` — ``b`` with fault injection in ``m`` (see the module docs).

    Args:
        loss, duplicate, reorder, delay: probabilities for the ``directions`` given
            (``duplicate + reorder + delay`` ≤ 1; the other direction starts fault-free).
        filter: which frames get faults (filter text such as ``"udp dst port 4791"``, a
            ``kbypass.Rule``, a list of them, or None for every frame). Other frames pass.
        directions: ``"a>b"``, ``"b>a"`` or ``"both"`` (default).
        reorder_after: a reordered frame leaves after this many later frames passed.
        reorder_timeout: ... or after this many seconds.
        delay_time: seconds a delayed frame is held.
        mode: XDP attach mode of the injectors (``"auto"``, ``"native"``, ``"generic"``).
        seed: seed of the middlebox's choice among duplicate/reorder/delay.
        subnet: the /24 in 198.18.0.0/15; ``a`` gets ``.1`` and ``b`` ``.2``.
        mtu: MTU of every link.

    ``a`` and ``b`` are :class:`~kbypass.testing.veth.VethEnd` (namespace, ``ifname``, ``ip``,
    ``mac``) with static neighbour entries for each other; ``m`` is the middle namespace.
    """

    def __init__(
        self,
        *,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        delay: float = 0.0,
        filter: str | object | Sequence[str | object] | None = None,
        directions: Direction = "both",
        reorder_after: int = 3,
        reorder_timeout: float = 0.2,
        delay_time: float = 0.001,
        mode: str = "auto",
        seed: int | None = None,
        subnet: str = "198.18.0",
        mtu: int = 1500,
    ) -> None:
        dirs = self._dirs(directions)
        parts = subnet.split(".")
        if (
            len(parts) != 3
            or parts[:2] not in (["198", "18"], ["198", "19"])
            or not parts[2].isdigit()
            or not 0 <= int(parts[2]) <= 255
        ):
            raise ValueError(
                f"subnet {subnet!r} is not a /24 in 198.18.0.0/15: give e.g. '198.18.0'"
            )
        if not 68 <= mtu <= 3500:
            raise ValueError(f"mtu {mtu} is out of range: give 68..3500 (one middlebox frame)")
        _require_root_tools()
        tag = f"{_PREFIX}-{os.getpid()}-f{next(_counter)}"
        self.a = VethEnd(f"{tag}-a", "veth0", f"{subnet}.1", "02:00:c6:12:00:01")
        self.b = VethEnd(f"{tag}-b", "veth1", f"{subnet}.2", "02:00:c6:12:00:02")
        self.m = f"{tag}-m"
        self.ports = ("ma", "mb")
        self.mtu = mtu
        self._core: _core.FaultPath | None = None
        self._finalizer = weakref.finalize(
            self, _delete_netns, (self.a.netns, self.m, self.b.netns)
        )
        try:
            self._create()
            self._core = _core.FaultPath(self.m, self.ports, filter=filter, mode=mode, seed=seed)
            for d in (0, 1):
                self._core.set_timing(d, reorder_after, reorder_timeout, delay_time)
            for d in dirs:
                self._core.set_rates(d, loss, duplicate, reorder, delay)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _dirs(direction: str) -> tuple[int, ...]:
        try:
            return _DIRS[direction]
        except KeyError:
            raise ValueError(
                f"direction {direction!r} is not one of 'a>b', 'b>a', 'both'"
            ) from None

    def _create(self) -> None:
        a, b, m, mtu = self.a, self.b, self.m, str(self.mtu)
        for ns in (a.netns, m, b.netns):
            _ip("netns", "add", ns)
            for scope in ("all", "default"):
                self.run(ns, "sysctl", "-qw", f"net.ipv6.conf.{scope}.disable_ipv6=1")
            _ip("-n", ns, "link", "set", "lo", "up")
        for end, port in ((a, "ma"), (b, "mb")):
            _ip(
                "-n", m, "link", "add", "name", port, "mtu", mtu, "type", "veth",
                "peer", "name", end.ifname, "netns", end.netns,
                "address", end.mac, "mtu", mtu,
            )  # fmt: skip
        _ip("-n", m, "link", "add", "name", "br0", "mtu", mtu, "type", "bridge",
            "forward_delay", "0", "stp_state", "0")  # fmt: skip
        for port in self.ports:
            # "dev" spelled out: ip(8) reads a bare "ma" as an abbreviation of "master".
            _ip("-n", m, "link", "set", "dev", port, "master", "br0")
            _ip("-n", m, "link", "set", "dev", port, "up")
        _ip("-n", m, "link", "set", "dev", "br0", "up")
        for end, peer in ((a, b), (b, a)):
            _ip("-n", end.netns, "addr", "add", end.cidr, "dev", end.ifname)
            _ip("-n", end.netns, "link", "set", end.ifname, "up")
            _ip(
                "-n", end.netns, "neigh", "replace", peer.ip,
                "lladdr", peer.mac, "dev", end.ifname, "nud", "permanent",
            )  # fmt: skip
            # Complete checksums in the frames: one the middlebox takes leaves the kernel's
            # "checksum still to do" mark behind, and would arrive with a partial checksum.
            with self.enter(end.netns):
                _ethtool_value(end.ifname, _ETHTOOL_STXCSUM, 0)

    def _path(self) -> _core.FaultPath:
        if self._core is None or self._core.closed:
            raise RuntimeError("the FaultyPath is closed: make a new one")
        return self._core

    def set(
        self,
        direction: Direction = "both",
        *,
        loss: float | None = None,
        duplicate: float | None = None,
        reorder: float | None = None,
        delay: float | None = None,
        filter: str | object | Sequence[str | object] | None = KEEP,
        reorder_after: int | None = None,
        reorder_timeout: float | None = None,
        delay_time: float | None = None,
    ) -> None:
        """Change one or both directions at run time; arguments left out keep their value.

        ``filter=None`` means every frame. Raises ``ValueError`` (nothing changed) for a
        probability outside 0..1 or ``duplicate + reorder + delay`` above 1.
        """
        p = self._path()
        for d in self._dirs(direction):
            r = p.rates(d)
            new = {
                "loss": r["loss"] if loss is None else loss,
                "duplicate": r["duplicate"] if duplicate is None else duplicate,
                "reorder": r["reorder"] if reorder is None else reorder,
                "delay": r["delay"] if delay is None else delay,
            }
            p.set_rates(d, new["loss"], new["duplicate"], new["reorder"], new["delay"])
            if filter is not KEEP:
                p.set_filter(d, filter)
            if reorder_after is not None or reorder_timeout is not None or delay_time is not None:
                t = p.timing(d)
                p.set_timing(
                    d,
                    t["reorder_after"] if reorder_after is None else reorder_after,
                    t["reorder_timeout"] if reorder_timeout is None else reorder_timeout,
                    t["delay"] if delay_time is None else delay_time,
                )

    def rates(self, direction: Literal["a>b", "b>a"]) -> dict[str, float]:
        """Return the probabilities of one direction (keys loss, duplicate, reorder, delay)."""
        d = self._dirs(direction)
        if len(d) != 1:
            raise ValueError("give one direction: 'a>b' or 'b>a'")
        return {k: float(v) for k, v in self._path().rates(d[0]).items()}

    def filter(self, direction: Literal["a>b", "b>a"]) -> str:
        """Return the filter of one direction, as filter text ("" for every frame)."""
        d = self._dirs(direction)
        if len(d) != 1:
            raise ValueError("give one direction: 'a>b' or 'b>a'")
        return self._path().filter(d[0])

    def info(self) -> dict[str, dict[str, Any]]:
        """Where each direction's injector is attached (port, mode, prog_id)."""
        p = self._path()
        return {"a>b": dict(p.info(0)), "b>a": dict(p.info(1))}

    def stats(self) -> FaultStats:
        """Every counter of both directions (see :class:`DirectionStats`)."""
        p = self._path()
        names = [f.name for f in dataclasses.fields(DirectionStats)]
        one = [DirectionStats(**{k: int(p.counters(d)[k]) for k in names}) for d in (0, 1)]
        return FaultStats(a_to_b=one[0], b_to_a=one[1])

    def wait_settled(self, timeout: float = 5.0, quiet: float = 0.05) -> FaultStats:
        """Wait until nothing is in flight and return the counters.

        That is: both directions are :meth:`DirectionStats.settled` and no counter moved for
        ``quiet`` seconds. Raises ``TimeoutError`` with the counters after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        last = self.stats()
        since = time.monotonic()
        while True:
            time.sleep(0.01)
            s = self.stats()
            if s != last:
                last, since = s, time.monotonic()
            elif s.a_to_b.settled() and s.b_to_a.settled() and time.monotonic() - since >= quiet:
                return s
            if time.monotonic() > deadline:
                raise TimeoutError(f"the faulty path did not settle in {timeout} s: {s}")

    def _ns(self, side: str | VethEnd) -> str:
        if isinstance(side, VethEnd):
            return side.netns
        names = {"a": self.a.netns, "b": self.b.netns, "m": self.m}
        if side in names:
            return names[side]
        if side in names.values():
            return side
        raise ValueError(f"side must be 'a', 'm' or 'b', not {side!r}")

    def run(
        self, side: str | VethEnd, *cmd: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside namespace ``a``, ``m`` or ``b``; return its completed process."""
        ns = self._ns(side)
        r = subprocess.run(
            ["ip", "netns", "exec", ns, *cmd],
            capture_output=True, text=True, check=False, timeout=timeout,
        )  # fmt: skip
        if check and r.returncode != 0:
            raise OSError(f"`{' '.join(cmd)}` in {ns} exited {r.returncode}: {r.stderr.strip()}")
        return r

    def popen(self, side: str | VethEnd, *cmd: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a command inside a namespace (the caller waits for or kills it)."""
        return subprocess.Popen(["ip", "netns", "exec", self._ns(side), *cmd], **kwargs)

    @contextlib.contextmanager
    def enter(self, side: str | VethEnd) -> Iterator[str]:
        """Move the calling thread into namespace ``a``, ``m`` or ``b`` for the block.

        Only this thread moves; sockets opened inside stay in that namespace.
        """
        ns = self._ns(side)
        entry = _core.NetnsEntry(ns)
        try:
            yield ns
        finally:
            entry.exit()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return not self._finalizer.alive

    def close(self) -> None:
        """Stop the middlebox, detach programs, close maps and sockets, delete the namespaces.

        Idempotent.
        """
        core, self._core = self._core, None
        try:
            if core is not None:
                core.close()
        finally:
            self._finalizer()

    def __enter__(self) -> FaultyPath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (
            f"FaultyPath({self.a.netns}/{self.a.ifname} {self.a.ip} <-> {self.m}/br0 <-> "
            f"{self.b.netns}/{self.b.ifname} {self.b.ip}, {state})"
        )
