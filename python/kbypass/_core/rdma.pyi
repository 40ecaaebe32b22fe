"""Type stubs for ``kbypass._core.rdma`` (mirrors ``rust/kbypass-python/src/rdma/``)."""

from collections.abc import Sequence
from typing import Any, final

from typing_extensions import Buffer, Self, disjoint_base

from kbypass._core import HugeRegion, Mempool

# PyO3 fills __all__ as classes and functions are registered; keep this list in step.
__all__ = [
    "AddressHandle",
    "CmConnection",
    "CompletionError",
    "CompletionQueue",
    "Context",
    "Endpoint",
    "MemoryRegion",
    "Port",
    "ProtectionDomain",
    "QueuePair",
    "RdmaDevice",
    "ReceiveQueue",
    "Resource",
    "SharedReceiveQueue",
    "WorkCompletion",
    "devices",
    "write_bandwidth",
    "write_latency",
]

# --- resource.rs -------------------------------------------------------------------------------

@disjoint_base
class Resource:
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, _t: object | None, _v: object | None, _tb: object | None) -> None: ...

# --- recv.rs ---------------------------------------------------------------------------------

class ReceiveQueue(Resource):
    def post_recv(
        self,
        mr: MemoryRegion,
        offset: int = 0,
        length: int | None = None,
        wr_id: int = 0,
        sg: Sequence[tuple[MemoryRegion, int, int]] | None = None,
    ) -> None: ...

# --- device.rs ---------------------------------------------------------------------------------

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
    @property
    def userspace(self) -> bool: ...
    @property
    def interface(self) -> str | None: ...

def devices() -> list[RdmaDevice]: ...

@final
class Port:
    @property
    def state(self) -> int: ...
    @property
    def active_mtu(self) -> int: ...
    @property
    def max_mtu(self) -> int: ...
    @property
    def gid_tbl_len(self) -> int: ...
    @property
    def lid(self) -> int: ...
    @property
    def link_layer(self) -> str: ...

# --- endpoint.rs -------------------------------------------------------------------------------

@final
class Endpoint:
    def __new__(
        cls,
        qpn: int,
        psn: int,
        gid: str,
        lid: int = 0,
        rkey: int = 0,
        addr: int = 0,
        length: int = 0,
    ) -> Endpoint: ...
    @property
    def qpn(self) -> int: ...
    @property
    def psn(self) -> int: ...
    @property
    def gid(self) -> str: ...
    @property
    def lid(self) -> int: ...
    @property
    def rkey(self) -> int: ...
    @property
    def addr(self) -> int: ...
    @property
    def length(self) -> int: ...
    def to_bytes(self) -> bytes: ...
    @staticmethod
    def from_bytes(data: bytes) -> Endpoint: ...
    def __reduce__(self) -> tuple[Any, tuple[bytes]]: ...
    def to_pingpong(self) -> bytes: ...
    @staticmethod
    def from_pingpong(data: bytes) -> Endpoint: ...
    def __eq__(self, value: object, /) -> bool: ...

@final
class CmConnection(Resource):
    @property
    def closed(self) -> bool: ...

# --- context.rs --------------------------------------------------------------------------------

@final
class Context(Resource):
    def __new__(cls, name: str | None = None) -> Context: ...
    @staticmethod
    def userspace(
        interface: str,
        queue: int = 0,
        *,
        ip: str,
        netns: str | None = None,
        progress: str = "thread",
        cpu: int | None = None,
        frames: int = 4096,
        frame_size: int = 4096,
        ring_size: int = 1024,
        bind: str = "auto",
        attach: str = "auto",
        force: bool = False,
        neigh_timeout: float = 3.0,
        spin: float = 0.0,
        busy_poll: bool = False,
    ) -> Context: ...
    @property
    def name(self) -> str: ...
    @property
    def is_userspace(self) -> bool: ...
    @property
    def interface(self) -> str | None: ...
    @property
    def notes(self) -> list[str]: ...
    def engine_counters(self) -> dict[str, int]: ...
    def async_events(self) -> dict[str, int]: ...
    def query_port(self, port: int = 1) -> Port: ...
    def default_gid_index(self, port: int = 1) -> int: ...
    def gid(self, port: int = 1, index: int | None = None) -> str: ...
    def alloc_pd(self) -> ProtectionDomain: ...
    def create_cq(self, entries: int = 256, channel: bool = False) -> CompletionQueue: ...

# --- pd.rs -------------------------------------------------------------------------------------

@final
class ProtectionDomain(Resource):
    def register(self, buffer: Buffer | HugeRegion | Mempool, access: int = 15) -> MemoryRegion: ...
    def context(self) -> Context: ...
    def create_srq(self, max_wr: int = 128, max_sge: int = 1) -> SharedReceiveQueue: ...
    def create_ah(
        self, remote: Endpoint, port: int = 1, gid_index: int | None = None
    ) -> AddressHandle: ...
    def create_qp(
        self,
        qp_type: str,
        send_cq: CompletionQueue,
        recv_cq: CompletionQueue | None = None,
        max_send_wr: int = 128,
        max_recv_wr: int = 128,
        max_sge: int = 4,
        max_inline_data: int = 64,
        srq: SharedReceiveQueue | None = None,
    ) -> QueuePair: ...

# --- mr.rs -------------------------------------------------------------------------------------

@final
class MemoryRegion(Resource):
    @property
    def addr(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def lkey(self) -> int: ...
    @property
    def rkey(self) -> int: ...
    @property
    def valid(self) -> bool: ...
    def allow_remote_invalidate(self) -> None: ...

# --- cq.rs -------------------------------------------------------------------------------------

class CompletionError(OSError): ...

@final
class WorkCompletion:
    @property
    def wr_id(self) -> int: ...
    @property
    def status(self) -> int: ...
    @property
    def status_name(self) -> str: ...
    @property
    def opcode(self) -> int: ...
    @property
    def byte_len(self) -> int: ...
    @property
    def imm(self) -> int | None: ...
    @property
    def invalidated_rkey(self) -> int | None: ...
    @property
    def wc_flags(self) -> int: ...
    @property
    def qp_num(self) -> int: ...
    @property
    def src_qp(self) -> int: ...
    @property
    def vendor_err(self) -> int: ...
    def check(self) -> WorkCompletion: ...

@final
class CompletionQueue(Resource):
    def poll(self, max: int = 16) -> list[WorkCompletion]: ...
    def poll_into(self, out: Buffer) -> int: ...
    def wait(self, timeout: float | None = None, max: int = 16) -> list[WorkCompletion]: ...

# --- qp.rs -------------------------------------------------------------------------------------

@final
class QueuePair(ReceiveQueue):
    def context(self) -> Context: ...
    @property
    def qp_num(self) -> int: ...
    @property
    def state(self) -> int: ...
    def endpoint(
        self,
        psn: int = 0,
        port: int = 1,
        gid_index: int | None = None,
        mr: MemoryRegion | None = None,
    ) -> Endpoint: ...
    def init(self, port: int = 1, access: int = 15) -> None: ...
    def pingpong_accept(
        self,
        port: int = 18515,
        psn: int = 0,
        timeout: float = 30.0,
        gid_index: int | None = None,
        bind: str = "0.0.0.0",
    ) -> Endpoint: ...
    def pingpong_connect(
        self,
        host: str,
        port: int = 18515,
        psn: int = 0,
        timeout: float = 30.0,
        gid_index: int | None = None,
    ) -> Endpoint: ...
    def cm_connect(
        self, host: str, port: int = 7471, timeout: float = 30.0, access: int = 15
    ) -> CmConnection: ...
    def cm_accept(
        self, bind: str, port: int = 7471, timeout: float = 30.0, access: int = 15
    ) -> CmConnection: ...
    def perftest_serve(
        self,
        mr: MemoryRegion,
        port: int = 18515,
        psn: int = 0,
        timeout: float = 60.0,
        gid_index: int | None = None,
        bind: str = "0.0.0.0",
        *,
        test: str = "write",
        cq: CompletionQueue | None = None,
        size: int = 65536,
        iterations: int = 1000,
        rx_depth: int = 64,
    ) -> dict[str, float]: ...
    def perftest_write_bw(
        self,
        cq: CompletionQueue,
        mr: MemoryRegion,
        host: str,
        port: int = 18515,
        size: int = 65536,
        iterations: int = 1000,
        psn: int = 0,
        timeout: float = 60.0,
        gid_index: int | None = None,
    ) -> dict[str, float]: ...
    def perftest_read_bw(
        self,
        cq: CompletionQueue,
        mr: MemoryRegion,
        host: str,
        port: int = 18515,
        size: int = 65536,
        iterations: int = 1000,
        psn: int = 0,
        timeout: float = 60.0,
        gid_index: int | None = None,
    ) -> dict[str, float]: ...
    def perftest_send_bw(
        self,
        cq: CompletionQueue,
        mr: MemoryRegion,
        host: str,
        port: int = 18515,
        size: int = 65536,
        iterations: int = 1000,
        psn: int = 0,
        timeout: float = 60.0,
        gid_index: int | None = None,
    ) -> dict[str, float]: ...
    def perftest_atomic_bw(
        self,
        cq: CompletionQueue,
        mr: MemoryRegion,
        host: str,
        port: int = 18515,
        iterations: int = 1000,
        psn: int = 0,
        timeout: float = 60.0,
        gid_index: int | None = None,
        compare_swap: bool = False,
    ) -> dict[str, float]: ...
    def connect(
        self,
        remote: Endpoint | None = None,
        psn: int = 0,
        port: int = 1,
        gid_index: int | None = None,
        access: int = 15,
    ) -> None: ...
    def to_error(self) -> None: ...
    def to_reset(self) -> None: ...
    def send(
        self,
        mr: MemoryRegion,
        offset: int = 0,
        length: int | None = None,
        wr_id: int = 0,
        imm: int | None = None,
        signaled: bool = True,
        inline: bool = False,
        ah: AddressHandle | None = None,
        remote_qpn: int | None = None,
        remote_qkey: int = 286331153,
        sg: Sequence[tuple[MemoryRegion, int, int]] | None = None,
        invalidate_rkey: int | None = None,
    ) -> None: ...
    def write(
        self,
        mr: MemoryRegion,
        remote_addr: int,
        rkey: int,
        offset: int = 0,
        length: int | None = None,
        wr_id: int = 0,
        imm: int | None = None,
        signaled: bool = True,
        sg: Sequence[tuple[MemoryRegion, int, int]] | None = None,
    ) -> None: ...
    def read(
        self,
        mr: MemoryRegion,
        remote_addr: int,
        rkey: int,
        offset: int = 0,
        length: int | None = None,
        wr_id: int = 0,
        signaled: bool = True,
        sg: Sequence[tuple[MemoryRegion, int, int]] | None = None,
    ) -> None: ...
    def compare_swap(
        self,
        mr: MemoryRegion,
        remote_addr: int,
        rkey: int,
        compare: int,
        swap: int,
        offset: int = 0,
        wr_id: int = 0,
    ) -> None: ...
    def fetch_add(
        self,
        mr: MemoryRegion,
        remote_addr: int,
        rkey: int,
        add: int,
        offset: int = 0,
        wr_id: int = 0,
    ) -> None: ...

# --- srq.rs ------------------------------------------------------------------------------------

@final
class SharedReceiveQueue(ReceiveQueue):
    def set_limit(self, limit: int) -> None: ...
    def limit_reached(self) -> bool: ...
    @property
    def posted(self) -> int: ...

# --- ah.rs -------------------------------------------------------------------------------------

@final
class AddressHandle(Resource): ...

# --- perf.rs -----------------------------------------------------------------------------------

def write_bandwidth(
    qp: QueuePair,
    cq: CompletionQueue,
    mr: MemoryRegion,
    remote_addr: int,
    rkey: int,
    size: int,
    iterations: int,
    depth: int = 128,
    signal_every: int = 100,
) -> tuple[int, float]: ...
def write_latency(
    a: QueuePair,
    b: QueuePair,
    cq_a: CompletionQueue,
    cq_b: CompletionQueue,
    mr_a: MemoryRegion,
    mr_b: MemoryRegion,
    size: int = 2,
    iterations: int = 1000,
) -> list[float]: ...
