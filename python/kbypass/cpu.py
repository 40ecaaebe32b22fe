"""CPU topology, thread pinning, and where a NIC's queue interrupts land.

Poll-mode workers belong on the NIC's NUMA node, on a core that does not also take the queue's
interrupt. This module tells you the layout and pins the calling thread::

    from kbypass import cpu

    topo = cpu.topology()
    with cpu.pinned(cpu.worker_cpu("eth0", queue=0)):
        ...  # runs on that CPU; the old affinity comes back afterwards
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kbypass import _core

__all__ = [
    "Core",
    "CpuInfo",
    "QueueIrq",
    "Topology",
    "allowed",
    "nic_numa_node",
    "pin",
    "pinned",
    "queue_irqs",
    "topology",
    "worker_cpu",
]


@dataclass(frozen=True)
class CpuInfo:
    """One logical CPU: its core, package (socket), NUMA node and SMT siblings (itself included)."""

    id: int
    core_id: int
    package: int
    node: int | None
    siblings: tuple[int, ...]


@dataclass(frozen=True)
class Core:
    """One physical core and the logical CPUs (hyper-threads) sharing it."""

    package: int
    core_id: int
    cpus: tuple[int, ...]


@dataclass(frozen=True)
class Topology:
    """The CPU layout as this thread sees it.

    Example::

        >>> t = topology()
        >>> t.allowed[0] in t.online
        True
    """

    online: tuple[int, ...]
    allowed: tuple[int, ...]
    isolated: tuple[int, ...]
    nohz_full: tuple[int, ...]
    cpus: tuple[CpuInfo, ...]
    cores: tuple[Core, ...]
    packages: dict[int, tuple[int, ...]]
    nodes: dict[int, tuple[int, ...]]

    def node_of(self, cpu: int) -> int | None:
        """NUMA node of ``cpu`` (None without NUMA or for an offline CPU)."""
        for c in self.cpus:
            if c.id == cpu:
                return c.node
        return None


@dataclass(frozen=True)
class QueueIrq:
    """One interrupt of a NIC.

    Its IRQ number, its /proc/interrupts name, the queue it serves (``"rx-0"``, ``"tx-0"``,
    ``"combined-3"`` or None), and the CPUs it may go to / actually goes to.
    """

    irq: int
    name: str
    queue: str | None
    affinity: tuple[int, ...]
    effective: tuple[int, ...]


def topology() -> Topology:
    """Read the CPU topology: online, allowed and isolated CPUs, cores, packages, NUMA nodes."""
    d: dict[str, Any] = _core.cpu_topology()
    return Topology(
        online=tuple(d["online"]),
        allowed=tuple(d["allowed"]),
        isolated=tuple(d["isolated"]),
        nohz_full=tuple(d["nohz_full"]),
        cpus=tuple(
            CpuInfo(c["id"], c["core_id"], c["package"], c["node"], tuple(c["siblings"]))
            for c in d["cpus"]
        ),
        cores=tuple(Core(c["package"], c["core_id"], tuple(c["cpus"])) for c in d["cores"]),
        packages={k: tuple(v) for k, v in d["packages"].items()},
        nodes={k: tuple(v) for k, v in d["nodes"].items()},
    )


def allowed() -> list[int]:
    """CPUs the calling thread may run on now."""
    return _core.cpu_allowed()


def _cpu_list(cpus: int | Iterable[int]) -> list[int]:
    if isinstance(cpus, bool):
        raise TypeError("give a CPU number or an iterable of CPU numbers, not a bool")
    if isinstance(cpus, int):
        return [cpus]
    out = []
    for c in cpus:
        if isinstance(c, bool) or not isinstance(c, int):
            raise TypeError(f"CPU numbers must be ints, got {c!r}")
        out.append(c)
    return out


def pin(cpus: int | Iterable[int]) -> None:
    """Pin the calling thread to ``cpus`` (one CPU or several).

    Raises ValueError for a CPU that is negative, offline or outside the process's cpuset
    (the old affinity stays in place).
    """
    _core.cpu_pin(_cpu_list(cpus))


@contextmanager
def pinned(cpus: int | Iterable[int]) -> Iterator[list[int]]:
    """Pin the calling thread for the ``with`` block, then restore its previous affinity.

    Yields the previous affinity.
    """
    previous = allowed()
    pin(cpus)
    try:
        yield previous
    finally:
        _core.cpu_pin(previous)


def nic_numa_node(ifname: str) -> int | None:
    """NUMA node of the NIC behind ``ifname``; None when unknown (-1) or the interface is virtual.

    Raises FileNotFoundError when there is no such interface, ValueError for a malformed name.
    """
    return _core.nic_numa_node(ifname)


def queue_irqs(ifname: str) -> list[QueueIrq]:
    """List the interrupts of ``ifname`` with the queue each serves, where sysfs/procfs tell.

    Empty for virtual interfaces (veth, lo). Raises FileNotFoundError for an unknown interface.
    """
    return [
        QueueIrq(q["irq"], q["name"], q["queue"], tuple(q["affinity"]), tuple(q["effective"]))
        for q in _core.queue_irqs(ifname)
    ]


def worker_cpu(ifname: str, queue: int = 0) -> int:
    """Choose a CPU for the poll-mode worker of ``ifname``'s ``queue``.

    On the NIC's NUMA node when known, away from the queue's interrupt CPU and its SMT
    sibling, isolated CPUs first, CPU 0 last; constraints are relaxed one by one rather than
    fail on small machines.
    """
    return _core.worker_cpu(ifname, queue)
