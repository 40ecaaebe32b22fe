"""Type stubs for the ``kbypass._core`` extension (mirrors ``rust/kbypass-python/src``)."""

from typing import final

# PyO3 fills __all__ as classes and functions are registered; keep this list in step.
__all__ = [
    "NetnsEntry",
    "__version__",
    "netns_inode",
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
