"""Test benches for kbypass users and for kbypass itself.

- :class:`VethPair`: two network namespaces joined by a veth pair, removed on exit.
- :class:`TrafficGenerator`: XDP live-frames UDP traffic from one end to the other;
  :class:`DropCounter`: count and drop what arrives; :func:`udp_send`, :func:`udp_recv`,
  :func:`af_packet_recv`: the kernel socket baselines.
- :func:`in_thread`: a call in a thread inside one end's namespace, joined later;
  :func:`server`: a server process (in a namespace), ready once it listens, stopped by its PID.
- :mod:`kbypass.testing.rxe_vm` (imported on demand): a soft-RoCE (``rdma_rxe``) virtual machine
  that boots Debian's stock kernel under qemu and runs commands against a real verbs device.
"""

from __future__ import annotations

from kbypass.testing.process import in_thread, server
from kbypass.testing.traffic import (
    Counts,
    DropCounter,
    TrafficGenerator,
    TrafficResult,
    af_packet_recv,
    udp_recv,
    udp_send,
)
from kbypass.testing.veth import VethEnd, VethPair

__all__ = [
    "Counts",
    "DropCounter",
    "TrafficGenerator",
    "TrafficResult",
    "VethEnd",
    "VethPair",
    "af_packet_recv",
    "in_thread",
    "server",
    "udp_recv",
    "udp_send",
]
