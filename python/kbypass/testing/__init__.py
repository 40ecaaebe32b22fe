"""Test benches for kbypass users and for kbypass itself.

- :class:`VethPair`: two network namespaces joined by a veth pair, removed on exit.
- :mod:`kbypass.testing.rxe_vm` (imported on demand): a soft-RoCE (``rdma_rxe``) virtual machine
  that boots Debian's stock kernel under qemu and runs commands against a real verbs device.
"""

from __future__ import annotations

from kbypass.testing.veth import VethEnd, VethPair

__all__ = ["VethEnd", "VethPair"]
