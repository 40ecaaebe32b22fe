"""RDMA through the verbs API, with libibverbs loaded at run time.

kbypass needs no rdma-core to build or import; on a machine without libibverbs,
:func:`devices` raises :class:`FileNotFoundError` naming the packages to install, and on one
without RDMA hardware or soft-RoCE it returns an empty list.

Example::

    >>> from kbypass import rdma
    >>> [d.name for d in rdma.devices()]  # doctest: +SKIP
    ['rxe0']
"""

from __future__ import annotations

from kbypass._core import RdmaDevice, rdma_devices

__all__ = ["RdmaDevice", "devices"]


def devices() -> list[RdmaDevice]:
    """List this machine's RDMA devices.

    Raises FileNotFoundError ("no libibverbs: apt-get install rdma-core ibverbs-providers")
    when libibverbs is missing.

    Example::

        for d in devices():
            print(d.name, d.uverbs)
    """
    return rdma_devices()
