"""kbypass: kernel-bypass networking for Python, with a Rust core.

The kernel's socket path is the cost at millions of packets per second; kbypass gives Python
the techniques DPDK, AF_XDP and RDMA use, behind small, typed classes.
"""

from __future__ import annotations

from kbypass import _core
from kbypass._core import Ring

__version__: str = _core.__version__

__all__ = ["Ring", "__version__"]
