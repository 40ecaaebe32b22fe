"""Type stubs for the ``kbypass._core`` extension (mirrors ``rust/kbypass-python/src``)."""

from types import TracebackType
from typing import Any, Literal, final

import numpy as np
import numpy.typing as npt

# PyO3 fills __all__ as classes and functions are registered; keep this list in step.
__all__ = [
    "HugeRegion",
    "Mempool",
    "NetnsEntry",
    "PcapWriter",
    "_RegionMemory",
    "__version__",
    "checksums_ok",
    "cpu_allowed",
    "cpu_pin",
    "cpu_topology",
    "edit_frames",
    "netns_inode",
    "nic_numa_node",
    "packet_meta_fields",
    "parse_into",
    "queue_irqs",
    "worker_cpu",
]

__version__: str

# --- netns.rs -------------------------------------------------------------------------------

@final
class NetnsEntry:
    """Holds the calling thread inside a network namespace until :meth:`exit`."""

    def __new__(cls, name: str) -> NetnsEntry: ...
    def exit(self) -> None: ...
    @property
    def active(self) -> bool: ...

def netns_inode() -> int: ...

# --- packet.rs ------------------------------------------------------------------------------

def packet_meta_fields() -> tuple[list[tuple[str, str, int]], int]: ...
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

# --- mem.rs ---------------------------------------------------------------------------------

@final
class _RegionMemory:
    """Keeps a region mapped while a NumPy view uses it (the array's ``base``)."""

@final
class HugeRegion:
    """Anonymous memory on the largest pages available: 1 GiB, 2 MiB, THP, then 4 KiB.

    Populated and locked; ``tier`` says what it got. NumPy views stay valid after ``close()``
    or garbage collection of the region: the memory goes with the last view.

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

# --- cpu.rs ---------------------------------------------------------------------------------

def cpu_topology() -> dict[str, Any]: ...
def cpu_allowed() -> list[int]: ...
def cpu_pin(cpus: list[int]) -> None: ...
def nic_numa_node(ifname: str) -> int | None: ...
def queue_irqs(ifname: str) -> list[dict[str, Any]]: ...
def worker_cpu(ifname: str, queue: int = 0) -> int: ...

# --- mempool.rs -----------------------------------------------------------------------------

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
    def available(self) -> int: ...
    @property
    def in_use(self) -> int: ...
    def stats(self) -> dict[str, int | str]: ...
    def bench_cycle(self, rounds: int, bulk: int = 32, cache_size: int = 512) -> int: ...
    def close(self) -> None: ...
    def __enter__(self) -> Mempool: ...
    def __exit__(self, *_args: object) -> bool: ...
    def __len__(self) -> int: ...
