"""Test helpers shared by the pipeline tests: a Pipeline on side b of a veth pair, and waiting
for a condition."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kbypass import Pipeline
from kbypass.testing import VethPair


def pipeline(pair: VethPair, handler: Any = None, **kw: Any) -> Pipeline:
    """A Pipeline on ``pair.b`` (opened in namespace b): copy mode and unpinned by default."""
    kw.setdefault("mode", "copy")
    kw.setdefault("cpus", False)
    with pair.enter("b"):
        return Pipeline(pair.b.ifname, handler, **kw)


def until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``cond`` every 10 ms until it holds or ``timeout`` seconds passed; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()
