"""RDMA tests: they run inside one soft-RoCE VM booted per session (see kbypass.testing.rxe_vm).

Every test in this folder is marked ``rdma``; deselect them with ``-m "not rdma"``. The
``rxe_vm`` fixture comes from the ``kbypass.testing.pytest_rxe`` plugin (installed with
kbypass); it needs qemu, busybox-static and rdma-core on the host
(``.ci/install-system-deps``) and skips with the reason without them, and CI, which installs
them, fails on such a skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from kbypass.testing.rxe_vm import RxeVm


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.rdma)


@pytest.fixture(scope="session")
def rxe_vm_l2(request: pytest.FixtureRequest) -> Iterator[RxeVm]:
    """A second soft-RoCE VM, with ``rxe1`` on an L2 segment to a host namespace.

    ``vm.l2`` (:class:`kbypass.testing.rxe_vm.L2Segment`) names both namespaces and addresses.
    Booted only by the tests that ask for it; closed (qemu stopped by its PID, namespaces, tap,
    bridge and veth deleted) at the end of the session whatever the tests did, and the teardown
    checks that nothing is left.
    """
    from kbypass.testing.rxe_vm import RxeVm, missing_host_tools

    missing = missing_host_tools()
    if missing:
        pytest.skip("the soft-RoCE VM needs: " + ", ".join(missing))
    if os.geteuid() != 0:
        pytest.skip("the L2 segment creates network namespaces, a bridge and a tap: needs root")
    vm = RxeVm(shares=[request.config.rootpath], l2=True)
    vm.boot()
    assert vm.l2 is not None
    names = [vm.l2.bridge_netns, vm.l2.host_netns]
    pid = vm.pid
    try:
        yield vm
    finally:
        vm.close()
        left = [n for n in names if os.path.exists(f"/var/run/netns/{n}")]
        assert not left, f"namespaces left behind: {left}"
        assert pid is not None and not os.path.exists(f"/proc/{pid}"), f"qemu {pid} still runs"
