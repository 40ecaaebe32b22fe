"""Type stubs for the ``kbypass._core`` extension (mirrors ``rust/kbypass-python/src``).

The ``kbypass._core.rdma`` submodule (``src/rdma/``) has its own stub, ``rdma.pyi``.
"""

import builtins
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv6Address
from types import TracebackType
from typing import Any, Literal, Protocol, final

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer, Self, disjoint_base

from . import rdma as rdma

# PyO3 fills __all__ as classes and functions are registered; keep this list in step.
__all__ = [
    "DROP",
    "FORWARD",
    "KEEP",
    "TX",
    "Batch",
    "DropCounter",
    "Engine",
    "EngineConfig",
    "EthHeader",
    "FaultPath",
    "HugeRegion",
    "IpHeader",
    "Kept",
    "L4Header",
    "LiveGenerator",
    "META_DTYPE",
    "Mempool",
    "NetnsEntry",
    "Packet",
    "PcapWriter",
    "ReplyError",
    "Ring",
    "RxBatch",
    "TableFullError",
    "TableHold",
    "UdpEcho",
    "Template",
    "UmemWindow",
    "UnknownEntryError",
    "XdpAttachment",
    "XdpPort",
    "XdpProgram",
    "XdpSocket",
    "XdpTable",
    "_FrameView",
    "_RegionMemory",
    "__version__",
    "_stop_all_engines",
    "af_packet_recv",
    "arp_reply",
    "capture",
    "checksums_ok",
    "cpu_allowed",
    "cpu_pin",
    "cpu_topology",
    "edit_frames",
    "icmp_echo_reply",
    "memlock_raises",
    "neighbor_advert",
    "netns_inode",
    "nic_numa_node",
    "parse_filter",
    "parse_into",
    "probe_xdp",
    "queue_irqs",
    "rdma",
    "reply_rows",
    "rule_text",
    "tcp_rst",
    "udp_recv",
    "udp_reply",
    "udp_send",
    "worker_cpu",
    "xdp_query",
]

__version__: str

# --- netns.rs ----------------------------------------------------------------------------------

@final
class NetnsEntry:
    """Holds the calling thread inside a network namespace until :meth:`exit`."""

    def __new__(cls, name: str) -> NetnsEntry: ...
    def exit(self) -> None: ...
    @property
    def active(self) -> bool: ...

def netns_inode() -> int: ...

# --- packet.rs ---------------------------------------------------------------------------------

META_DTYPE: np.dtype[np.void]

def parse_into(
    frames: npt.NDArray[np.uint8], lengths: npt.NDArray[np.uint32], out: npt.NDArray[np.uint8]
) -> None: ...
def edit_frames(
    frames: npt.NDArray[np.uint8],
    lengths: npt.NDArray[np.uint32],
    ops: int,
    mask: npt.NDArray[np.bool_] | None = None,
) -> int: ...
def checksums_ok(
    frames: npt.NDArray[np.uint8], lengths: npt.NDArray[np.uint32], out: npt.NDArray[np.bool_]
) -> None: ...

@final
class PcapWriter:
    """Writes Ethernet frames to a pcap file with nanosecond timestamps."""

    def __new__(cls, path: str, snaplen: int = 262144) -> PcapWriter: ...
    def write(self, frame: bytes, ts_ns: int | None = None) -> None: ...
    def write_rows(
        self,
        frames: npt.NDArray[np.uint8],
        lengths: npt.NDArray[np.uint32],
        ts_ns: int | None = None,
    ) -> int: ...
    @property
    def packets(self) -> int: ...
    @property
    def path(self) -> str: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> PcapWriter: ...
    def __exit__(
        self,
        t: type[BaseException] | None,
        v: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

# --- template.rs -------------------------------------------------------------------------------

# Field name -> an int, address or MAC string, bytes, or a column (NumPy array or list) with one
# per packet; "payload" -> bytes or a list of bytes. Any: a dict's value type is invariant.
_Fields = dict[str, Any]
_Checksum = Literal["software", "offload"] | None

@final
class Template:
    """A UDP/TCP over IPv4/IPv6 packet with named fields filled per packet in Rust."""

    def __new__(
        cls,
        *,
        dst_mac: str | bytes | None = None,
        src_mac: str | bytes | None = None,
        src_ip: str | bytes | IPv4Address | IPv6Address | None = None,
        dst_ip: str | bytes | IPv4Address | IPv6Address | None = None,
        proto: str = "udp",
        src_port: int | None = None,
        dst_port: int | None = None,
        vlan: int | None = None,
        pcp: int = 0,
        ttl: int | None = None,
        tos: int = 0,
        ip_id: int = 0,
        dont_fragment: bool = True,
        flow_label: int = 0,
        seq: int = 0,
        ack: int = 0,
        tcp_flags: int | str | None = None,
        window: int | None = None,
        payload: bytes | None = None,
    ) -> Template: ...
    @staticmethod
    def from_frame(frame: Buffer) -> Template: ...
    @property
    def fields(self) -> list[str]: ...
    @property
    def ip_version(self) -> int: ...
    @property
    def proto(self) -> int: ...
    @property
    def payload(self) -> bytes: ...
    def __getitem__(self, name: str, /) -> int: ...
    def frame(self) -> bytes: ...
    def frames(self, count: int | None = None, fields: _Fields | None = None) -> list[bytes]: ...

# --- reply.rs ----------------------------------------------------------------------------------

class ReplyError(ValueError): ...

def udp_reply(frame: npt.NDArray[np.uint8], length: int, payload: bytes) -> int: ...
def icmp_echo_reply(frame: npt.NDArray[np.uint8], length: int) -> int: ...
def tcp_rst(frame: npt.NDArray[np.uint8], length: int) -> int: ...
def arp_reply(frame: npt.NDArray[np.uint8], length: int, mac: bytes, ipv4: bytes) -> int: ...
def neighbor_advert(frame: npt.NDArray[np.uint8], length: int, mac: bytes, ipv6: bytes) -> int: ...
def reply_rows(
    frames: npt.NDArray[np.uint8],
    lengths: npt.NDArray[np.uint32],
    kind: str,
    answered: npt.NDArray[np.bool_],
    payload: bytes | None = None,
    mac: bytes | None = None,
    ip: bytes | None = None,
    mask: npt.NDArray[np.bool_] | None = None,
) -> int: ...

# --- mem.rs ------------------------------------------------------------------------------------

@final
class HugeRegion:
    """Anonymous memory on the largest pages available: 1 GiB, 2 MiB, THP, then 4 KiB.

    Populated and locked; ``tier`` says what it got. When RLIMIT_MEMLOCK is too low for the
    lock, its soft limit is raised by what the region needs (never to unlimited) and ``notes``
    says so (see :func:`memlock_raises`). NumPy views stay valid after ``close()`` or garbage
    collection of the region: the memory goes with the last view.

    Example::

        >>> with HugeRegion(64 << 20) as r:
        ...     a = r.array            # zero-copy uint8 view
        ...     a[:4] = 1
        >>> int(a[:4].sum())           # still valid after the with block
        4
    """

    def __new__(
        cls,
        size: int,
        hugepages: Literal["auto", "require", "never", "1g", "2m", "thp", "4k"] | str = "auto",
        numa_node: int | None = None,
        *,
        numa_policy: Literal["bind", "preferred"] | str = "bind",
        lock: bool = True,
    ) -> HugeRegion: ...
    @property
    def tier(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def page_size(self) -> int: ...
    @property
    def huge_bytes(self) -> int: ...
    @property
    def locked(self) -> bool: ...
    @property
    def numa_node(self) -> int | None: ...
    @property
    def notes(self) -> list[str]: ...
    @property
    def closed(self) -> bool: ...
    @property
    def address(self) -> int: ...
    @property
    def array(self) -> npt.NDArray[np.uint8]: ...
    def random_reads(self, count: int, seed: int = 0x2545F4914F6CDD1D) -> int: ...
    def close(self) -> None: ...
    def __enter__(self) -> HugeRegion: ...
    def __exit__(
        self,
        *_args: type[BaseException] | BaseException | TracebackType | None,
    ) -> bool: ...
    def __len__(self) -> int: ...

def memlock_raises() -> list[dict[str, int | None]]:
    """Return the raises of RLIMIT_MEMLOCK kbypass made in this process, oldest first.

    Keys: ``locked``, ``needed``, ``soft_before``, ``hard_before``, ``soft``, ``hard`` (bytes;
    None for unlimited).
    """

# --- cpu.rs ------------------------------------------------------------------------------------

def cpu_topology() -> dict[str, Any]: ...
def cpu_allowed() -> list[int]: ...
def cpu_pin(cpus: list[int]) -> None: ...
def nic_numa_node(ifname: str) -> int | None: ...
def queue_irqs(ifname: str) -> list[dict[str, Any]]: ...
def worker_cpu(ifname: str, queue: int = 0) -> int: ...

# --- mempool.rs --------------------------------------------------------------------------------

@final
class Mempool:
    """A pool of ``count`` fixed-size objects carved from a HugeRegion (rte_mempool-style).

    Example::

        >>> pool = Mempool(4096, 2048)
        >>> idx = pool.get(32)
        >>> pool.view(int(idx[0]))[:4] = [1, 2, 3, 4]
        >>> pool.put(idx)
    """

    def __new__(
        cls,
        count: int,
        size: int,
        hugepages: Literal["auto", "require", "never", "1g", "2m", "thp", "4k"] | str = "auto",
        numa_node: int | None = None,
    ) -> Mempool: ...
    def get(self, n: int) -> npt.NDArray[np.uint32]: ...
    def get_bulk(self, n: int) -> npt.NDArray[np.uint32]: ...
    def put(self, indices_: npt.ArrayLike) -> None: ...
    def view(self, i: int) -> npt.NDArray[np.uint8]: ...
    @property
    def array(self) -> npt.NDArray[np.uint8]: ...
    @property
    def count(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def stride(self) -> int: ...
    @property
    def tier(self) -> str: ...
    @property
    def notes(self) -> list[str]: ...
    @property
    def available(self) -> int: ...
    @property
    def in_use(self) -> int: ...
    def stats(self) -> dict[str, int | str]: ...
    def bench_cycle(self, rounds: int, bulk: int = 32, cache_size: int = 512) -> int: ...
    def close(self) -> None: ...
    def __enter__(self) -> Mempool: ...
    def __exit__(self, *_args: object) -> bool: ...
    def __len__(self) -> int: ...

# --- xdp.rs ------------------------------------------------------------------------------------

# A filter= argument: filter text, a kbypass.Rule (anything with __kbypass_filter__), a list
# of them, or None; read by the one normaliser in xdp.rs.
_Filter = str | object | Sequence[str | object] | None

def parse_filter(text: str) -> list[dict[str, Any]]: ...
def rule_text(
    *,
    ip: int | None = None,
    proto: int | None = None,
    src: str | None = None,
    dst: str | None = None,
    sport: tuple[int, int] | None = None,
    dport: tuple[int, int] | None = None,
    ethertype: int | None = None,
    vlan: int | None = None,
) -> str: ...
def xdp_query(ifname: str) -> list[dict[str, Any]]: ...
def probe_xdp() -> dict[str, Any]: ...

@disjoint_base
class XdpProgram:
    """A loaded XDP program and its XSKMAP (``kbypass.XdpProgram`` adds the Pythonic parts)."""

    def __new__(cls, filter: _Filter = None, frags: bool = False, queues: int = 64) -> Self: ...
    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def tag(self) -> str: ...
    @property
    def filter(self) -> str | None: ...
    @property
    def frags(self) -> bool: ...
    @property
    def queues(self) -> int: ...
    @property
    def insn_count(self) -> int: ...
    @property
    def redirect_form(self) -> str: ...
    @property
    def map_fd(self) -> int: ...
    def set_socket(self, queue: int, fd: int) -> None: ...
    def clear_socket(self, queue: int) -> None: ...
    def run(self, frame: bytes, repeat: int = 1) -> tuple[int, int]: ...
    def attach(self, ifname: str, mode: str = "auto", force: bool = False) -> XdpAttachment: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *_args: object) -> bool: ...

@final
class XdpAttachment:
    @property
    def mode(self) -> str: ...
    @property
    def via(self) -> str: ...
    @property
    def ifname(self) -> str: ...
    @property
    def ifindex(self) -> int: ...
    @property
    def prog_id(self) -> int: ...
    @property
    def notes(self) -> list[str]: ...
    @property
    def attached(self) -> bool: ...
    def detach(self) -> None: ...
    def __enter__(self) -> XdpAttachment: ...
    def __exit__(self, *_args: object) -> bool: ...

@final
class UdpEcho:
    def __new__(cls, port: int = 11111) -> UdpEcho: ...
    def attach(self, ifname: str, mode: str = "auto", force: bool = False) -> XdpAttachment: ...
    def test_run(self, frame: bytes) -> tuple[int, bytes]: ...
    @property
    def port(self) -> int: ...
    @property
    def id(self) -> int: ...
    @property
    def insn_count(self) -> int: ...

# --- faults.rs ---------------------------------------------------------------------------------

@final
class FaultPath:
    """Fault injection between two ports of a namespace (``kbypass.testing.faults``)."""

    def __new__(
        cls,
        netns: str,
        ports: tuple[str, str],
        *,
        filter: _Filter = None,
        mode: str = "auto",
        frames: int = 4096,
        seed: int | None = None,
    ) -> FaultPath: ...
    def set_rates(
        self, direction: int, loss: float, duplicate: float, reorder: float, delay: float
    ) -> None: ...
    def rates(self, direction: int) -> dict[str, float]: ...
    def set_filter(self, direction: int, filter: _Filter = None) -> None: ...
    def filter(self, direction: int) -> str: ...
    def set_timing(
        self, direction: int, reorder_after: int, reorder_timeout: float, delay: float
    ) -> None: ...
    def timing(self, direction: int) -> dict[str, Any]: ...
    def counters(self, direction: int) -> dict[str, int]: ...
    def info(self, direction: int) -> dict[str, Any]: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...

# --- xdp_table.rs ------------------------------------------------------------------------------

class TableFullError(OSError): ...
class UnknownEntryError(KeyError): ...

@final
class TableHold:
    def release(self) -> None: ...
    @property
    def held(self) -> bool: ...
    @property
    def ifname(self) -> str: ...
    @property
    def mode(self) -> str: ...
    @property
    def notes(self) -> list[str]: ...
    def __enter__(self) -> TableHold: ...
    def __exit__(self, *_args: object) -> bool: ...

@final
class XdpTable:
    def __new__(
        cls,
        max_rules: int = 256,
        max_blocks: int = 65536,
        queues: int = 64,
        default: str = "pass",
        frags: bool = False,
    ) -> XdpTable: ...
    def add(
        self, filter: _Filter, action: str, priority: int = 0, expire: float | None = None
    ) -> int: ...
    def apply(
        self, add: Sequence[tuple[_Filter, str, int, float | None]], remove: Sequence[int]
    ) -> list[int]: ...
    def remove(self, id: int) -> None: ...
    def block(
        self, src: str, seconds: float | None = ..., action: str = "drop", wait: bool = False
    ) -> None: ...
    def block_many(
        self,
        srcs: Sequence[str],
        seconds: float | None = ...,
        action: str = "drop",
        wait: bool = False,
    ) -> int: ...
    def unblock(self, src: str) -> bool: ...
    def blocks(self) -> list[dict[str, Any]]: ...
    def entries(self) -> list[dict[str, Any]]: ...
    def stats(self) -> dict[int, tuple[int, int]]: ...
    def default_counts(self) -> tuple[int, int]: ...
    def sweep(self) -> tuple[int, int]: ...
    def table_info(self) -> dict[str, int]: ...
    def set_socket(self, queue: int, fd: int) -> None: ...
    def clear_socket(self, queue: int) -> None: ...
    def attach(self, ifname: str, mode: str = "auto", force: bool = False) -> dict[str, Any]: ...
    def detach(self, ifname: str | None = None) -> int: ...
    def hold(self, ifname: str, mode: str = "auto", force: bool = False) -> TableHold: ...
    def attached(self) -> list[str]: ...
    def test_run(self, frame: bytes, repeat: int = 1) -> tuple[int, int]: ...
    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def tag(self) -> str: ...
    @property
    def insn_count(self) -> int: ...
    @property
    def verifier_stats(self) -> str: ...
    @property
    def max_rules(self) -> int: ...
    @property
    def max_blocks(self) -> int: ...
    @property
    def queues(self) -> int: ...
    @property
    def default(self) -> str: ...
    @property
    def frags(self) -> bool: ...
    @property
    def map_fd(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> XdpTable: ...
    def __exit__(self, *_args: object) -> bool: ...

# --- traffic.rs --------------------------------------------------------------------------------

@final
class LiveGenerator:
    """XDP live-frames traffic generator (a loaded XDP_TX program and its frame)."""

    def __new__(
        cls,
        *,
        size: int | None = None,
        flows: int = 1,
        src_ip: str = "198.18.0.1",
        dst_ip: str = "198.18.0.2",
        src_port: int = 10000,
        dst_port: int = 9000,
        src_mac: str = "02:00:c6:12:00:01",
        dst_mac: str = "02:00:c6:12:00:02",
        udp_checksum: bool = True,
        batch_size: int = 0,
        payload: bytes | None = None,
    ) -> LiveGenerator: ...
    @property
    def frame(self) -> bytes: ...
    @property
    def size(self) -> int: ...
    @property
    def flows(self) -> int: ...
    @property
    def udp_checksum(self) -> bool: ...
    @property
    def keeper_note(self) -> str | None: ...
    @property
    def running(self) -> bool: ...
    def run(
        self,
        ifname: str,
        netns: str | None = None,
        *,
        count: int | None = None,
        duration: float | None = None,
        rate: float | None = None,
        cpu: int | None = None,
        queue: int = 0,
    ) -> dict[str, Any]: ...
    def start(
        self,
        ifname: str,
        netns: str | None = None,
        *,
        count: int | None = None,
        duration: float | None = None,
        rate: float | None = None,
        cpu: int | None = None,
        queue: int = 0,
    ) -> None: ...
    def stop(self) -> dict[str, Any]: ...
    def wait(self, timeout: float | None = None) -> dict[str, Any]: ...
    def __enter__(self) -> LiveGenerator: ...
    def __exit__(self, *_args: object) -> bool: ...

@final
class DropCounter:
    """Counting XDP_DROP program attached to an interface."""

    def __new__(
        cls, ifname: str, netns: str | None = None, mode: str = "native", force: bool = False
    ) -> DropCounter: ...
    @property
    def mode(self) -> str: ...
    @property
    def ifname(self) -> str: ...
    @property
    def attached(self) -> bool: ...
    def read(self) -> dict[str, int]: ...
    def reset(self) -> None: ...
    def measure(self, duration: float) -> dict[str, Any]: ...
    def close(self) -> None: ...
    def __enter__(self) -> DropCounter: ...
    def __exit__(self, *_args: object) -> bool: ...

# --- kernel.rs ---------------------------------------------------------------------------------

def udp_send(
    src_ip: str,
    dst_ip: str,
    dst_port: int,
    payload: bytes,
    count: int,
    *,
    batch: int = 64,
    netns: str | None = None,
    cpu: int | None = None,
) -> dict[str, Any]: ...
def udp_recv(
    ip: str,
    port: int,
    *,
    count: int | None = None,
    duration: float | None = None,
    batch: int = 64,
    idle: float = 0.3,
    netns: str | None = None,
    cpu: int | None = None,
) -> dict[str, Any]: ...
def af_packet_recv(
    ifname: str,
    *,
    count: int | None = None,
    duration: float | None = None,
    idle: float = 0.3,
    netns: str | None = None,
    cpu: int | None = None,
) -> dict[str, Any]: ...

# --- ring.rs -----------------------------------------------------------------------------------

@final
class Ring:
    """A lock-free ring of uint64 items (DPDK rte_ring style), private or shared between processes.

    Example::

        import numpy as np
        from kbypass import Ring
        with Ring(1024) as r:
            r.enqueue_bulk(np.arange(3, dtype=np.uint64))  # -> 3
            r.dequeue_burst(8)                              # -> array([0, 1, 2], dtype=uint64)
            r.dequeue()                                     # -> None (empty)
    """

    def __new__(cls, capacity: int, mode: str = "spsc") -> Ring: ...
    @staticmethod
    def create_shared(name: str, capacity: int, mode: str = "spsc", replace: bool = False) -> Ring:
        """Create a ring named ``name`` in /dev/shm for other processes to ``attach``."""
    @staticmethod
    def attach(name: str) -> Ring:
        """Attach to the shared ring ``name``; FileNotFoundError if there is none."""
    @staticmethod
    def unlink(name: str) -> bool:
        """Remove a shared ring's name (e.g. left by a crashed process); False if absent."""
    def enqueue(self, x: int) -> bool:
        """Enqueue one item; False if the ring is full (or another process's call is stuck)."""
    def dequeue(self) -> int | None:
        """Dequeue one item; None if the ring is empty (or another process's call is stuck)."""
    def enqueue_bulk(self, items: npt.NDArray[np.uint64]) -> int:
        """Enqueue all of ``items`` or none; returns ``len(items)`` or 0."""
    def enqueue_burst(self, items: npt.NDArray[np.uint64]) -> int:
        """Enqueue as many of ``items`` as fit (a prefix); returns how many."""
    def dequeue_bulk(self, n: int) -> npt.NDArray[np.uint64]:
        """Dequeue exactly ``n`` items, or an empty array if fewer are there."""
    def dequeue_burst(self, n: int) -> npt.NDArray[np.uint64]:
        """Dequeue up to ``n`` items (possibly none)."""
    def dequeue_into(self, out: npt.NDArray[np.uint64], bulk: bool = False) -> int:
        """Dequeue into a preallocated uint64 array (no allocation); returns how many."""
    def put(self, x: int, timeout: float | None = None) -> None:
        """Enqueue one item, waiting (GIL released) for room; TimeoutError after ``timeout`` s."""
    def get(self, timeout: float | None = None) -> int:
        """Dequeue one item, waiting (GIL released); TimeoutError after ``timeout`` s."""
    def put_bulk(self, items: npt.NDArray[np.uint64], timeout: float | None = None) -> None:
        """Enqueue all of ``items`` at once, waiting (GIL released) for room."""
    def get_bulk(self, n: int, timeout: float | None = None) -> npt.NDArray[np.uint64]:
        """Dequeue exactly ``n`` items, waiting (GIL released) for all of them."""
    def get_burst(self, n: int, timeout: float | None = None) -> npt.NDArray[np.uint64]:
        """Dequeue 1 to ``n`` items, waiting (GIL released) for the first."""
    def __len__(self) -> int: ...
    @property
    def free(self) -> int:
        """Free slots now (a snapshot)."""
    @property
    def capacity(self) -> int:
        """Number of slots (a power of two)."""
    @property
    def mode(self) -> str:
        """``"spsc"``, ``"mpsc"``, ``"spmc"`` or ``"mpmc"``."""
    @property
    def name(self) -> str | None:
        """The shared-memory name, or None for a private ring."""
    @property
    def closed(self) -> bool:
        """Whether ``close()`` has been called."""
    def stats(self) -> dict[str, int | None]:
        """Counters: full, empty, len, attached; producer/consumer busy, recovered, rolled_back.

        ``producer_claim``/``consumer_claim`` are the pid of the process whose call is in flight
        (None when idle).
        """
    def close(self) -> None:
        """Release the ring; the last user of a shared ring removes its name. Idempotent."""
    def __enter__(self) -> Ring: ...
    def __exit__(
        self,
        *_args: type[BaseException] | BaseException | TracebackType | None,
    ) -> bool: ...

# --- port.rs -----------------------------------------------------------------------------------

class _HasTable(Protocol):
    """What ``program=`` takes besides a bool: an ``XdpTable`` or an object naming one."""

    def __kbypass_table__(self) -> XdpTable: ...

@final
class XdpPort:
    """One AF_XDP socket per queue of an interface, sharing one UMEM and one XDP program."""

    def __new__(
        cls,
        ifname: str,
        queues: Literal["all"] | Sequence[int] | None = None,
        mode: Literal["auto", "copy", "zerocopy"] | str = "auto",
        filter: _Filter = None,
        frames: int | None = None,
        frame_size: int = 2048,
        hugepages: Literal["auto", "require", "never", "1g", "2m", "thp", "4k"] | str = "auto",
        busy_poll: bool = False,
        *,
        xdp_mode: Literal["auto", "native", "generic"] | str = "auto",
        force: bool = False,
        need_wakeup: bool = True,
        multi_buffer: bool = False,
        ring_size: int = 2048,
        headroom: int = 0,
        program: bool | XdpTable | _HasTable | None = None,
        tx_metadata: Literal["offload", "kernel"] | None = None,
    ) -> XdpPort: ...
    @property
    def sockets(self) -> list[XdpSocket]: ...
    @property
    def queues(self) -> list[int]: ...
    @property
    def xdp_mode(self) -> str: ...
    @property
    def ifname(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
    def __len__(self) -> int: ...
    def __enter__(self) -> XdpPort: ...
    def __exit__(self, *_args: object) -> bool: ...

# --- xsk.rs ------------------------------------------------------------------------------------

@final
class XdpSocket:
    """An AF_XDP socket on one interface queue, with its own UMEM and XDP program.

    Example::

        >>> with XdpSocket("eth0", queue=0, filter="udp dst port 9000") as sock:
        ...     with sock.recv(max=64, timeout=1.0) as batch:
        ...         for i in range(len(batch)):
        ...             print(bytes(batch[i][:14]).hex())
    """

    def __new__(
        cls,
        ifname: str,
        queue: int = 0,
        mode: Literal["auto", "copy", "zerocopy"] | str = "auto",
        filter: _Filter = None,
        frames: int = 4096,
        frame_size: int = 2048,
        hugepages: Literal["auto", "require", "never", "1g", "2m", "thp", "4k"] | str = "auto",
        busy_poll: bool = False,
        *,
        xdp_mode: Literal["auto", "native", "generic"] | str = "auto",
        force: bool = False,
        need_wakeup: bool = True,
        multi_buffer: bool = False,
        ring_size: int = 2048,
        headroom: int = 0,
        tx_metadata: Literal["offload", "kernel"] | None = None,
    ) -> XdpSocket: ...
    def recv(self, max: int = 64, timeout: float | None = None) -> RxBatch: ...
    def send(
        self,
        packets: bytes | Sequence[Buffer] | npt.NDArray[np.uint8],
        lengths: npt.NDArray[np.uint32] | None = None,
        *,
        checksum: _Checksum = None,
        timestamp: bool = False,
        launch_time: int | None = None,
    ) -> int: ...
    def tx_timestamps(self) -> list[tuple[int, int]]: ...
    @property
    def tx_offloads(self) -> dict[str, bool]: ...
    def complete(self) -> int: ...
    def rx_drop(
        self,
        duration: float | None = None,
        count: int | None = None,
        batch: int = 64,
        idle: float | None = None,
    ) -> dict[str, float]: ...
    def tx_flood(
        self, frame: bytes, count: int, batch: int = 64, *, fresh: bool = False
    ) -> dict[str, float]: ...
    def stats(self) -> dict[str, int]: ...
    def check_accounting(self) -> dict[str, int]: ...
    def fileno(self) -> int: ...
    @property
    def ifname(self) -> str: ...
    @property
    def queue(self) -> int: ...
    @property
    def mode(self) -> str: ...
    @property
    def xdp_mode(self) -> str: ...
    @property
    def notes(self) -> list[str]: ...
    @property
    def frame_size(self) -> int: ...
    @property
    def frames(self) -> int: ...
    @property
    def tier(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> XdpSocket: ...
    def __exit__(self, *_args: object) -> bool: ...

# --- held.rs -----------------------------------------------------------------------------------

@final
class RxBatch:
    """Frames received by one ``recv()``: held until ``release()`` and their views are gone."""

    def __len__(self) -> int: ...
    def __getitem__(self, key: int, /) -> npt.NDArray[np.uint8]: ...
    def frames(self) -> list[npt.NDArray[np.uint8]]: ...
    def headers(self) -> npt.NDArray[np.void]: ...
    @property
    def addrs(self) -> npt.NDArray[np.uint64]: ...
    @property
    def lengths(self) -> npt.NDArray[np.uint32]: ...
    @property
    def continued(self) -> npt.NDArray[np.bool_]: ...
    @property
    def released(self) -> bool: ...
    def release(self) -> int: ...
    def send(
        self,
        mask: npt.NDArray[np.bool_] | None = None,
        *,
        checksum: _Checksum = None,
        timestamp: bool = False,
        launch_time: int | None = None,
    ) -> int: ...
    def __enter__(self) -> RxBatch: ...
    def __exit__(self, *_args: object) -> bool: ...

@final
class Kept:
    """Frames a handler kept (KEEP verdict), held until ``release()`` and their views are gone."""

    def __len__(self) -> int: ...
    @property
    def frames(self) -> list[npt.NDArray[np.uint8]]: ...
    @property
    def lengths(self) -> npt.NDArray[np.uint32]: ...
    @property
    def released(self) -> bool: ...
    def release(self) -> int: ...
    def __enter__(self) -> Kept: ...
    def __exit__(self, *_args: object) -> bool: ...

# --- views.rs ----------------------------------------------------------------------------------

@final
class _RegionMemory:
    """Keeps a region mapped while a NumPy view uses it (the array's ``base``)."""

@final
class _FrameView:
    """The base of NumPy views of one UMEM frame: keeps it mapped and, once armed, held."""

# --- batch.rs ----------------------------------------------------------------------------------

@final
class Batch:
    """One batch of received frames, valid only while the handler runs."""

    def __len__(self) -> int: ...
    @property
    def socket(self) -> int: ...
    @property
    def worker(self) -> int: ...
    @property
    def valid(self) -> bool: ...
    @property
    def lengths(self) -> npt.NDArray[np.uint32]: ...
    @property
    def addrs(self) -> npt.NDArray[np.uint64]: ...
    @property
    def headers(self) -> npt.NDArray[np.void]: ...
    @property
    def verdicts(self) -> npt.NDArray[np.uint8]: ...
    @property
    def forward_to(self) -> npt.NDArray[np.uint16]: ...
    @property
    def umem(self) -> UmemWindow: ...
    @property
    def frame_size(self) -> int: ...
    def frame(self, i: int) -> npt.NDArray[np.uint8]: ...
    @property
    def frames(self) -> list[npt.NDArray[np.uint8]]: ...
    def swap_macs(self, mask: npt.NDArray[np.bool_] | None = None) -> int: ...
    def swap_ips(self, mask: npt.NDArray[np.bool_] | None = None) -> int: ...
    def swap_ports(self, mask: npt.NDArray[np.bool_] | None = None) -> int: ...
    def fix_checksums(
        self,
        mask: npt.NDArray[np.bool_] | None = None,
        *,
        offload: bool = False,
        timestamp: bool = False,
    ) -> int: ...
    def reflect(
        self,
        mask: npt.NDArray[np.bool_] | None = None,
        *,
        offload: bool = False,
        timestamp: bool = False,
    ) -> int: ...
    def bytes(self, i: int, start: int = 0, stop: int | None = None) -> builtins.bytes: ...
    def set_field(
        self,
        offset: int,
        value: builtins.bytes,
        mask: npt.NDArray[np.bool_] | None = None,
        base: str = "l2",
    ) -> int: ...
    def to_pcap(self, writer: PcapWriter, mask: npt.NDArray[np.bool_] | None = None) -> int: ...
    def set_length(self, i: int, n: int) -> None: ...
    def set_lengths(
        self, lengths: npt.NDArray[np.uint32], mask: npt.NDArray[np.bool_] | None = None
    ) -> int: ...
    def push_front(self, i: int, n: int) -> None: ...
    def pop_front(self, i: int, n: int) -> None: ...
    def adjust_head(self, delta: int, mask: npt.NDArray[np.bool_] | None = None) -> int: ...
    def reparse(self, mask: npt.NDArray[np.bool_] | None = None) -> int: ...
    def push_vlan(
        self,
        vid: int,
        mask: npt.NDArray[np.bool_] | None = None,
        *,
        pcp: int = 0,
        tpid: int = 0x8100,
    ) -> int: ...
    def pop_vlan(self, mask: npt.NDArray[np.bool_] | None = None) -> int: ...
    def reply(
        self,
        kind: str,
        mask: npt.NDArray[np.bool_] | None = None,
        *,
        payload: builtins.bytes | None = None,
        mac: str | builtins.bytes | None = None,
        ip: str | builtins.bytes | IPv4Address | IPv6Address | None = None,
        checksum: _Checksum = None,
        timestamp: bool = False,
    ) -> npt.NDArray[np.bool_]: ...
    def emit(
        self,
        data: Buffer | npt.NDArray[np.uint8],
        socket: int | None = None,
        *,
        checksum: _Checksum = None,
        timestamp: bool = False,
        launch_time: int | None = None,
    ) -> bool: ...
    def emit_template(
        self,
        template: Template,
        count: int | None = None,
        *,
        fields: _Fields | None = None,
        socket: int | None = None,
    ) -> int: ...

@final
class UmemWindow:
    """``Batch.umem``: the UMEM indexed as a (frames, frame_size) array; indexing copies."""

    def __getitem__(self, key: Any, /) -> Any: ...
    def __setitem__(self, key: Any, value: Any, /) -> None: ...
    @property
    def shape(self) -> tuple[int, int]: ...
    def __len__(self) -> int: ...

# --- packet_view.rs ----------------------------------------------------------------------------

@final
class EthHeader:
    """Ethernet header fields of a ``Packet`` (a copy)."""

    @property
    def dst(self) -> list[int]: ...
    @property
    def src(self) -> list[int]: ...
    @property
    def ethertype(self) -> int: ...
    @property
    def vlan(self) -> int: ...
    @property
    def dst_mac(self) -> str: ...
    @property
    def src_mac(self) -> str: ...

@final
class IpHeader:
    """IP header fields of a ``Packet`` (a copy)."""

    @property
    def version(self) -> int: ...
    @property
    def proto(self) -> int: ...
    @property
    def src(self) -> str: ...
    @property
    def dst(self) -> str: ...
    @property
    def src_int(self) -> int: ...
    @property
    def dst_int(self) -> int: ...

@final
class L4Header:
    """UDP/TCP header fields of a ``Packet`` (a copy)."""

    @property
    def src_port(self) -> int: ...
    @property
    def dst_port(self) -> int: ...
    @property
    def payload_len(self) -> int: ...

@final
class Packet:
    """One packet for per-packet handlers; valid only during the call."""

    def __len__(self) -> int: ...
    @property
    def flags(self) -> int: ...
    @property
    def eth(self) -> EthHeader: ...
    @property
    def ip(self) -> IpHeader | None: ...
    @property
    def udp(self) -> L4Header | None: ...
    @property
    def tcp(self) -> L4Header | None: ...
    @property
    def data(self) -> npt.NDArray[np.uint8]: ...
    def bytes(self) -> builtins.bytes: ...
    def set_length(self, n: int) -> None: ...
    def push_front(self, n: int) -> None: ...
    def pop_front(self, n: int) -> None: ...
    def emit(
        self,
        data: Buffer | npt.NDArray[np.uint8],
        socket: int | None = None,
        *,
        checksum: _Checksum = None,
        timestamp: bool = False,
        launch_time: int | None = None,
    ) -> bool: ...
    def emit_template(
        self, template: Template, *, fields: _Fields | None = None, socket: int | None = None
    ) -> bool: ...
    def swap_macs(self) -> bool: ...
    def swap_ips(self) -> bool: ...
    def swap_ports(self) -> bool: ...
    def fix_checksums(self, *, offload: bool = False, timestamp: bool = False) -> bool: ...
    def reflect(self, *, offload: bool = False, timestamp: bool = False) -> bool: ...

# --- engine.rs ---------------------------------------------------------------------------------

DROP: int
TX: int
FORWARD: int
KEEP: int

@final
class EngineConfig:
    """How the workers of an ``Engine`` run, checked once, before any port is opened."""

    def __new__(
        cls,
        *,
        batch: int = 64,
        workers: int | Sequence[Sequence[int]] | None = None,
        cpus: Sequence[int | None] | Literal[False] | None = None,
        default: int | None = None,
        on_error: Literal["drop", "pass", "stop"] | str = "drop",
        idle_wait: float = 0.001,
        latency: Literal["adaptive", "busy", "sleep"] | str = "adaptive",
        spin: float | None = None,
    ) -> EngineConfig: ...

@final
class Engine:
    """The workers of one pipeline over an ``XdpPort`` (used by ``kbypass.Pipeline``)."""

    def __new__(
        cls,
        port: XdpPort,
        handler: Callable[..., Any],
        config: EngineConfig | None = None,
        *,
        per_packet: bool = False,
    ) -> Engine: ...
    def start(self, packets: int | None = None) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...
    def stop(self) -> dict[str, Any] | None: ...
    def check_accounting(self) -> dict[str, Any]: ...
    @property
    def running(self) -> bool: ...
    @property
    def held(self) -> int: ...
    def stats(self) -> list[dict[str, Any]]: ...
    def kept(self) -> list[Kept]: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def elapsed(self) -> float: ...
    @property
    def workers(self) -> list[list[int]]: ...

def _stop_all_engines() -> int: ...

# --- capture.rs --------------------------------------------------------------------------------

def capture(
    ifname: str,
    *,
    queues: int | Sequence[int] | str | None = None,
    filter: _Filter = None,
    count: int | None = None,
    duration: float | None = None,
    write: str | None = None,
    snaplen: int = 0,
    mode: str = "auto",
    xdp_mode: str = "auto",
    netns: str | None = None,
    frames: int = 4096,
    batch: int = 64,
    force: bool = False,
    interrupt: str = "raise",
) -> dict[str, Any]: ...
