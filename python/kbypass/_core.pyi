"""Type stubs for the ``kbypass._core`` extension (mirrors ``rust/kbypass-python/src``)."""

from types import TracebackType
from typing import final

import numpy as np
import numpy.typing as npt

# PyO3 fills __all__ as classes and functions are registered; keep this list in step.
__all__ = [
    "NetnsEntry",
    "PcapWriter",
    "__version__",
    "checksums_ok",
    "edit_frames",
    "netns_inode",
    "packet_meta_fields",
    "parse_into",
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
