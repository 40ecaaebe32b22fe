"""Test helpers for kbypass and for projects that use it.

Submodules are imported on demand so that importing ``kbypass.testing`` stays cheap:

- :mod:`kbypass.testing.rxe_vm`: a soft-RoCE (``rdma_rxe``) virtual machine that boots Debian's
  stock kernel under qemu and runs commands against a real verbs device.
"""

from __future__ import annotations
