"""kbypass: kernel-bypass networking for Python, with a Rust core.

The kernel's socket path is the cost at millions of packets per second; kbypass gives Python
the techniques DPDK, AF_XDP and RDMA use, behind small, typed classes.
"""

from __future__ import annotations

from kbypass import _core, cpu, packet
from kbypass._capture import capture
from kbypass._core import (
    Batch,
    HugeRegion,
    Kept,
    Mempool,
    Packet,
    PcapWriter,
    Ring,
    RxBatch,
    XdpPort,
    XdpSocket,
    memlock_raises,
)
from kbypass.pipeline import DROP, FORWARD, KEEP, TX, Action, Pipeline, processor
from kbypass.xdp import (
    Rule,
    Verdict,
    XdpAttachment,
    XdpProgram,
    parse_filter,
    probe_xdp,
    xdp_query,
)
from kbypass.xdp_table import TableFullError, UnknownEntryError, XdpTable

__version__: str = _core.__version__

__all__ = [
    "DROP",
    "FORWARD",
    "KEEP",
    "TX",
    "Action",
    "Batch",
    "HugeRegion",
    "Kept",
    "Packet",
    "Pipeline",
    "Mempool",
    "PcapWriter",
    "Ring",
    "Rule",
    "RxBatch",
    "TableFullError",
    "UnknownEntryError",
    "Verdict",
    "XdpAttachment",
    "XdpPort",
    "XdpProgram",
    "XdpSocket",
    "XdpTable",
    "__version__",
    "capture",
    "cpu",
    "memlock_raises",
    "packet",
    "parse_filter",
    "probe_xdp",
    "processor",
    "xdp_query",
]
