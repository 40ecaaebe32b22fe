"""Type stubs for the ``kbypass._core`` extension (mirrors ``rust/kbypass-python/src``)."""

from types import TracebackType
from typing import final

import numpy as np
import numpy.typing as npt

__all__ = ["Ring", "__version__"]
__version__: str

# ---- rust/kbypass-python/src/ring.rs ----

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
        """Enqueue one item; False if the ring is full."""
    def dequeue(self) -> int | None:
        """Dequeue one item; None if the ring is empty."""
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
    def stats(self) -> dict[str, int]:
        """Counters: full, empty, len, attached."""
    def close(self) -> None:
        """Release the ring; the last user of a shared ring removes its name. Idempotent."""
    def __enter__(self) -> Ring: ...
    def __exit__(
        self,
        *_args: type[BaseException] | BaseException | TracebackType | None,
    ) -> bool: ...
