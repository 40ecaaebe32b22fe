"""RDMA tests: they run inside one soft-RoCE VM booted per session (see kbypass.testing.rxe_vm).

Every test in this folder is marked ``rdma``; deselect them with ``-m "not rdma"``. The
``rxe_vm`` fixture comes from the ``kbypass.testing.pytest_rxe`` plugin (installed with
kbypass); it needs qemu, busybox-static and rdma-core on the host
(``.ci/install-system-deps``) and skips with the reason without them, and CI, which installs
them, fails on such a skip.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.rdma)
