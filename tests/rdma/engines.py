"""Two user-space engine contexts on a veth pair, for the tests that run engine to engine."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from kbypass import rdma
from kbypass.testing import VethPair


@contextlib.contextmanager
def engine_pair(pair: VethPair) -> Iterator[tuple[rdma.Context, rdma.Context]]:
    """``Context.userspace`` on each end of `pair` (in its namespace), both closed on exit."""
    a = rdma.Context.userspace(pair.a.ifname, ip=pair.a.ip, netns=pair.a.netns)
    try:
        b = rdma.Context.userspace(pair.b.ifname, ip=pair.b.ip, netns=pair.b.netns)
    except BaseException:
        a.close()
        raise
    try:
        yield a, b
    finally:
        a.close()
        b.close()
