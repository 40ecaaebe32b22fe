"""Test benches for kbypass users and for kbypass itself.

* :class:`VethPair` — two network namespaces joined by a veth pair, removed on exit.
"""

from __future__ import annotations

from kbypass.testing.veth import VethEnd, VethPair

__all__ = ["VethEnd", "VethPair"]
