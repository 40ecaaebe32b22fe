"""Type stubs for the ``kbypass._core`` extension (mirrors ``rust/kbypass-python/src``)."""

from typing import final

__all__ = ["RdmaDevice", "__version__", "rdma_devices"]

__version__: str

# --- rdma.rs -----------------------------------------------------------------------------------

@final
class RdmaDevice:
    @property
    def name(self) -> str: ...
    @property
    def uverbs(self) -> str: ...
    @property
    def node_type(self) -> int: ...
    @property
    def transport_type(self) -> int: ...
    @property
    def ibdev_path(self) -> str: ...

def rdma_devices() -> list[RdmaDevice]: ...
