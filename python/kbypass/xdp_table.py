"""XdpTable: an XDP program whose rules live in BPF maps and change while it runs.

Entries are filters in the grammar of :mod:`kbypass.xdp` (IPv4/IPv6 source and destination
prefixes, protocols, source/destination port ranges, in any combination; ``vlan`` and
``ether proto`` terms are not supported here) with an action: ``"allow"`` (to the AF_XDP
socket of the frame's RX queue), ``"drop"`` (in the kernel) or ``"pass"`` (to the kernel's
stack). Adding and removing entries never reloads or detaches the program: its id stays the
same and every frame sees the table before or after a change, never half of it.

What decides a frame:

1. a frame cut inside its Ethernet header or VLAN tags gets the default action;
2. a live :meth:`XdpTable.block` of the frame's source address;
3. the first live entry in (priority, id) order -- lower priority first, then the order
   added -- one of whose rules matches (exactly as filter rules match, see :mod:`kbypass.xdp`);
4. otherwise the table's default action.

Entries and blocks may expire: the program compares their deadline with the kernel's
monotonic clock on every frame, so they stop matching at the deadline; :meth:`XdpTable.sweep`
frees their slots. Every entry and block counts the packets and bytes it decided, per CPU in
the kernel, summed here.
"""

from __future__ import annotations

import ipaddress
import operator
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, SupportsIndex, Union

import numpy as np
import numpy.typing as npt

from kbypass import _core
from kbypass._core import Batch, RxBatch, TableFullError, UnknownEntryError
from kbypass.xdp import FilterSpec, Verdict

TableAction = Literal["allow", "drop", "pass"]
Address = Union[str, SupportsIndex, bytes, ipaddress.IPv4Address, ipaddress.IPv6Address]
#: Frames whose parsed headers name the sources: a handler's ``Batch``, an ``RxBatch``, or a
#: header array (``batch.headers``, dtype :data:`kbypass.packet.META_DTYPE`).
Frames = Union[Batch, RxBatch, npt.NDArray[np.void]]
EntrySpec = Union[
    tuple[FilterSpec, TableAction],
    tuple[FilterSpec, TableAction, int],
    tuple[FilterSpec, TableAction, int, Union[float, None]],
]


@dataclass(frozen=True)
class TableEntry:
    """An entry of an :class:`XdpTable`, as :meth:`XdpTable.entries` lists it."""

    id: int
    filter: str
    action: TableAction
    priority: int
    #: Seconds until it expires (negative: expired, not swept yet), None if it never does.
    expires_in: float | None


@dataclass(frozen=True)
class TableBlock:
    """A source block of an :class:`XdpTable`, with the frames it decided."""

    addr: str
    action: TableAction
    #: Seconds until it expires (negative: expired, not swept yet), None if it never does.
    expires_in: float | None
    packets: int
    bytes: int


@dataclass(frozen=True)
class TableAttachment:
    """Where an :class:`XdpTable` is attached (it detaches on ``detach()`` or ``close()``)."""

    ifname: str
    ifindex: int
    mode: str
    via: str
    prog_id: int
    notes: list[str]


class Swept(NamedTuple):
    """What :meth:`XdpTable.sweep` removed."""

    entries: int
    blocks: int


def _address(src: Address) -> str:
    if isinstance(src, str):
        return src
    if isinstance(src, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(src)
    if isinstance(src, (bytes, bytearray)):
        if len(src) not in (4, 16):
            raise ValueError(f"an address as bytes has 4 or 16 bytes, not {len(src)}")
        return str(ipaddress.ip_address(bytes(src)))
    if isinstance(src, bool):
        raise TypeError("src must be an address, not bool")
    try:
        n = operator.index(src)  # also NumPy integers, e.g. headers["src_ip4"][i]
    except TypeError:
        raise TypeError(
            f"src must be an address string, an ipaddress object, an IPv4 address as an int "
            f"(as in headers['src_ip4']) or 4/16 bytes (as headers['src_ip6']), "
            f"not {type(src).__name__}"
        ) from None
    if not 0 <= n < 2**32:
        raise ValueError(f"src={n} is not an IPv4 address as a 32-bit integer")
    return str(ipaddress.IPv4Address(n))


def _headers(frames: Frames) -> npt.NDArray[np.void]:
    if isinstance(frames, Batch):
        return frames.headers
    if isinstance(frames, RxBatch):
        return frames.headers()
    if isinstance(frames, np.ndarray) and frames.dtype.names is not None:
        if not {"ip_version", "src_ip4", "src_ip6"} <= set(frames.dtype.names):
            raise TypeError(
                "a header array needs the fields ip_version, src_ip4 and src_ip6 "
                "(kbypass.packet.META_DTYPE, e.g. batch.headers)"
            )
        return frames
    raise TypeError(
        f"frames must be a Batch, an RxBatch or batch.headers, not {type(frames).__name__}"
    )


def _sources(frames: Frames, mask: npt.ArrayLike | None) -> list[str]:
    """Return the distinct IPv4 and IPv6 source addresses of the frames ``mask`` selects."""
    h = _headers(frames)
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype != np.bool_ or m.shape != h.shape:
            raise ValueError(
                f"mask must be a bool array of the frames' shape {h.shape}, got {m.dtype} {m.shape}"
            )
        h = h[m]
    version = h["ip_version"]
    v4 = np.unique(h["src_ip4"][version == 4])
    v6 = h["src_ip6"][version == 6]
    out = [str(ipaddress.IPv4Address(int(a))) for a in v4]
    if len(v6):
        out += [str(ipaddress.IPv6Address(bytes(row))) for row in np.unique(v6, axis=0)]
    return out


def _seconds(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, got {value!r}")
    return float(value)


class XdpTable:
    """Rules in BPF maps, changed at run time; decisions pushed from packet handlers.

    Example::

        with kbypass.XdpTable(max_rules=256, default="pass") as table:
            web = table.add("tcp dst port 80 or tcp dst port 443", "allow")
            table.add("src 198.18.0.0/15 and udp dst port 53", "drop", priority=-1)
            table.add(kbypass.Rule(ip=6, src="2001:db8::/32"), "drop", expire=60)

            def handler(batch: kbypass.Batch) -> None:
                # decided here, dropped in the kernel from the next frame on
                table.block_sources(batch, batch.headers["dst_port"] == 22, seconds=10)

            # "allow" goes to the pipeline's sockets; the table is attached while it runs
            with kbypass.Pipeline("eth0", handler, table=table) as p:
                p.run(duration=10)
                print(table.stats()[web], table.blocks())

    ``max_rules`` (64, 128, 256, 512, 1024) rule slots: each rule of an entry takes one
    (``port N`` without ``src``/``dst`` is two rules). ``max_blocks`` sources can be blocked
    at once. ``default`` is what frames no entry or block decides get. ``queues`` is the
    number of XSKMAP slots for :meth:`set_socket`; ``frags=True`` loads the multi-buffer
    capable variant. Needs CAP_BPF and CAP_NET_ADMIN (root), else ``PermissionError``.

    A change (:meth:`add`, :meth:`remove`, :meth:`add_many`, :meth:`sweep`) waits for an RCU
    grace period (milliseconds) before it rewrites the inactive copy of the rules, so bulk
    changes belong in one :meth:`add_many`. :meth:`block` and :meth:`block_sources` do not
    wait for anything (unless ``wait=True``) and may be called from any thread, also from a
    handler; every method releases the GIL around its system calls.

    Ports use the table as their XDP program with ``XdpPort(ifname, program=table)`` or
    ``Pipeline(ifname, handler, table=table)``: their sockets join the table's XSKMAP, the
    table is attached while a port uses it, and the port keeps it alive until it closes.
    """

    def __init__(
        self,
        max_rules: int = 256,
        max_blocks: int = 65536,
        *,
        default: TableAction = "pass",
        queues: int = 64,
        frags: bool = False,
    ) -> None:
        self._t = _core.XdpTable(
            max_rules=max_rules, max_blocks=max_blocks, queues=queues, default=default, frags=frags
        )

    def add(
        self,
        rule: FilterSpec,
        action: TableAction = "drop",
        *,
        priority: int = 0,
        expire: float | None = None,
    ) -> int:
        """Add an entry and return its id.

        ``rule`` is filter text, a :class:`kbypass.Rule` or a list of them (ORed);
        ``priority``: lower runs first, equal priorities in the order added; ``expire``:
        seconds until it stops matching (None: never). Raises :class:`TableFullError` when
        its rules do not fit, ``ValueError`` for a rule the table cannot hold.

        Example::

            >>> table.add("udp dst port 9000-9010", "allow")  # doctest: +SKIP
            1
        """
        return self._t.add(rule, action, priority, _seconds("expire", expire))

    def add_many(self, entries: Iterable[EntrySpec], remove: Iterable[int] = ()) -> list[int]:
        """Add ``(rule, action[, priority[, expire]])`` entries and remove ids in one change.

        Frames see the table before or after it, never in between; one grace period for all.
        Returns the new ids in order. Nothing changes if an id is unknown
        (:class:`UnknownEntryError`) or the rules do not fit (:class:`TableFullError`).
        """
        specs: list[tuple[FilterSpec, str, int, float | None]] = []
        for e in entries:
            if not isinstance(e, tuple) or not 2 <= len(e) <= 4:
                raise TypeError(
                    f"entries are (rule, action[, priority[, expire]]) tuples, got {e!r}"
                )
            priority = e[2] if len(e) > 2 else 0
            expire = e[3] if len(e) > 3 else None
            specs.append((e[0], e[1], priority, _seconds("expire", expire)))
        return self._t.apply(specs, list(remove))

    def remove(self, id: int) -> None:
        """Remove the entry ``id`` (:class:`UnknownEntryError` if there is none)."""
        self._t.remove(id)

    def block(
        self,
        src: Address,
        seconds: float | None = 10.0,
        *,
        action: TableAction = "drop",
        wait: bool = False,
    ) -> None:
        """Drop (or ``action``) every frame from ``src`` in the kernel for ``seconds``.

        Checked before any entry. ``src`` is one host: an address string, an ``ipaddress``
        object, an IPv4 address as an integer (``batch.headers["src_ip4"][i]``) or 4/16 bytes
        (``headers["src_ip6"][i]``). Blocking a source again renews it (its counters stay).
        ``seconds=None`` blocks until :meth:`unblock`.

        Thread-safe and cheap (two map updates; it never waits for a rule change): call it
        from a handler, and the kernel drops the source's frames from the next one on.
        ``wait=True`` also waits until program runs already under way have finished (a grace
        period, milliseconds), so that when it returns not one more frame of ``src`` gets
        another action. :class:`TableFullError` when ``max_blocks`` sources are blocked.

        Example::

            def handler(batch):
                h = batch.headers
                for src in np.unique(h["src_ip4"][h["dst_port"] == 22]):
                    table.block(src, seconds=10)
        """
        self._t.block(_address(src), _seconds("seconds", seconds), action, wait)

    def block_sources(
        self,
        frames: Frames,
        mask: npt.ArrayLike | None = None,
        *,
        seconds: float | None = 10.0,
        action: TableAction = "drop",
        wait: bool = False,
    ) -> list[str]:
        """Block the source of every frame ``mask`` selects (all frames: None); return them.

        The sources come from the frames' parsed headers (IPv4 and IPv6; frames without an
        IP header are skipped), each distinct address once, in one call that releases the
        GIL: :meth:`block` for a whole batch. ``frames`` is the handler's ``Batch`` (or an
        ``RxBatch``, or ``batch.headers``), ``mask`` a bool array over its frames.

        Example::

            def handler(batch: kbypass.Batch) -> None:
                h = batch.headers
                table.block_sources(batch, h["dst_port"] == 22, seconds=10)
        """
        srcs = _sources(frames, mask)
        if srcs:
            self._t.block_many(srcs, _seconds("seconds", seconds), action, wait)
        return srcs

    def unblock(self, src: Address) -> bool:
        """Remove the block of ``src``; False if there was none."""
        return self._t.unblock(_address(src))

    def blocks(self) -> list[TableBlock]:
        """Return the blocks, with the packets and bytes each one decided."""
        return [TableBlock(**b) for b in self._t.blocks()]

    def entries(self) -> list[TableEntry]:
        """Return the entries in decision order (expired ones too, until swept)."""
        return [TableEntry(**e) for e in self._t.entries()]

    def stats(self) -> dict[int, tuple[int, int]]:
        """Return ``{id: (packets, bytes)}`` per entry, summed over CPUs (bytes: linear part)."""
        return self._t.stats()

    def default_stats(self) -> tuple[int, int]:
        """Return ``(packets, bytes)`` of the frames that got the default action."""
        return self._t.default_counts()

    def sweep(self) -> Swept:
        """Remove the expired entries and blocks (they already stopped matching); count them.

        Entries are changed only by the process that created the table: in a forked worker
        :meth:`add`/:meth:`remove` raise ``RuntimeError`` and ``sweep()`` removes blocks only,
        while :meth:`block`/:meth:`unblock` work everywhere (blocks live in the kernel's maps).
        """
        return Swept(*self._t.sweep())

    def info(self) -> dict[str, Any]:
        """Sizes and bookkeeping: entries, rules, blocks, commits, map_writes, swept_*."""
        return self._t.table_info()

    def set_socket(self, queue: int, fd: int) -> None:
        """Send the "allow" frames of RX queue ``queue`` to the AF_XDP socket ``fd``.

        A port opened on the table (``XdpPort(ifname, program=table)``) does this for its own
        sockets; by hand, e.g. for ``XdpPort(ifname, program=False)`` sockets:
        ``table.set_socket(s.queue, s.fileno())``. Without a socket on its queue, an "allow"
        frame goes to the kernel.
        """
        self._t.set_socket(queue, fd)

    def clear_socket(self, queue: int) -> None:
        """Stop sending queue ``queue``'s frames to a socket."""
        self._t.clear_socket(queue)

    def attach(self, ifname: str, mode: str = "auto", force: bool = False) -> TableAttachment:
        """Attach the program to ``ifname`` ("native", "generic" or "auto").

        The table holds the attachment (a bpf_link, released by the kernel if the process
        dies) and detaches it on :meth:`detach` or :meth:`close`. A program that is not
        kbypass's, or one another kbypass process holds, is not replaced unless ``force``.
        Where a port of this process already attached the table, this only asks for it to
        stay attached after the port closes, and reports the attachment as it is.

        Not needed for a port opened on the table (``XdpPort(ifname, program=table)``): the
        port attaches the table itself unless it already runs there.
        """
        return TableAttachment(**self._t.attach(ifname, mode, force))

    def detach(self, ifname: str | None = None) -> int:
        """Detach from ``ifname`` (None: from every interface); return how many were detached.

        Where an open port uses the table, the program stays attached until the port closes.
        """
        return self._t.detach(ifname)

    def hold(self, ifname: str, mode: str = "auto", force: bool = False) -> _core.TableHold:
        """Keep the program attached to ``ifname`` for as long as the returned hold lives.

        What a port opened on the table does: attached now if it is not there yet (``mode``,
        ``force`` as for :meth:`attach`), and detached when the last hold goes, unless
        :meth:`attach` asked for it too. Holds count, so a hold outlives the port (or other
        hold) that attached the table first. Let go with ``hold.release()`` or ``with``.
        """
        return self._t.hold(ifname, mode, force)

    @property
    def attached(self) -> list[str]:
        """Interfaces the table is attached to (by :meth:`attach` or by a port using it)."""
        return self._t.attached()

    def test_run(self, frame: bytes, repeat: int = 1) -> Verdict:
        """Run the program on ``frame`` as if a socket were bound on queue 0.

        ``Verdict.REDIRECT`` is "allow", ``DROP`` and ``PASS`` the others. A private copy of
        the program runs (attached interfaces are not affected), but it counts into the same
        counters as traffic.
        """
        verdict, _ns = self._t.test_run(_frame(frame), _repeat(repeat))
        return Verdict(verdict)

    def run_time_ns(self, frame: bytes, repeat: int = 100_000) -> float:
        """Return the kernel-measured average time of one run of the program on ``frame``."""
        _verdict, ns = self._t.test_run(_frame(frame), _repeat(repeat))
        return float(ns)

    @property
    def id(self) -> int:
        """Kernel program id (the same for the table's whole life)."""
        return self._t.id

    @property
    def name(self) -> str:
        """Program name, ``kbypass_table``."""
        return self._t.name

    @property
    def tag(self) -> str:
        """Kernel tag (hash of the instructions)."""
        return self._t.tag

    @property
    def insn_count(self) -> int:
        """Number of BPF instructions."""
        return self._t.insn_count

    @property
    def verifier_stats(self) -> str:
        """The verifier's statistics from loading the program ("processed N insns ...")."""
        return self._t.verifier_stats

    @property
    def max_rules(self) -> int:
        """Rule slots."""
        return self._t.max_rules

    @property
    def max_blocks(self) -> int:
        """Sources that can be blocked at once."""
        return self._t.max_blocks

    @property
    def queues(self) -> int:
        """XSKMAP slots."""
        return self._t.queues

    @property
    def default(self) -> str:
        """The default action."""
        return self._t.default

    @property
    def frags(self) -> bool:
        """Whether the multi-buffer capable variant was loaded."""
        return self._t.frags

    @property
    def map_fd(self) -> int:
        """File descriptor of the XSKMAP."""
        return self._t.map_fd

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._t.closed

    def close(self) -> None:
        """Detach what :meth:`attach` attached and release the program and maps (idempotent).

        A port opened on the table (``XdpPort(ifname, program=table)``, ``Pipeline(...,
        table=table)``) keeps the program, its maps and its own attachment until the port
        closes, so closing the table first is safe: its frames go on being decided by the
        rules as they are, and this object raises ``RuntimeError`` from then on. In a process
        forked after :meth:`attach`, the attachments are the parent's: closing this copy lets
        go of them without detaching the parent's program.
        """
        self._t.close()

    def __kbypass_table__(self) -> _core.XdpTable:
        """Return the extension's table (what ``XdpPort(program=table)`` opens the port on)."""
        return self._t

    def __enter__(self) -> XdpTable:
        """Use as a context manager: closes on exit."""
        return self

    def __exit__(self, *_exc: object) -> None:
        """Close the table."""
        self.close()

    def __repr__(self) -> str:
        """Short description with id and sizes."""
        return repr(self._t)


def _frame(frame: bytes) -> bytes:
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise TypeError(f"frame must be bytes, got {type(frame).__name__}")
    return bytes(frame)


def _repeat(repeat: int) -> int:
    if isinstance(repeat, bool) or not isinstance(repeat, int) or not 1 <= repeat < 2**32:
        raise ValueError(f"repeat={repeat!r} must be 1..2**32-1")
    return repeat


__all__ = [
    "Frames",
    "Swept",
    "TableAction",
    "TableAttachment",
    "TableBlock",
    "TableEntry",
    "TableFullError",
    "UnknownEntryError",
    "XdpTable",
]
