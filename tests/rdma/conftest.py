"""RDMA tests: they run inside one soft-RoCE VM booted per session (see kbypass.testing.rxe_vm).

Every test in this folder is marked ``rdma``; deselect them with ``-m "not rdma"``. The VM
needs qemu, busybox-static and rdma-core on the host (``.ci/install-system-deps``); without
them the tests skip with the reason, and CI, which installs them, fails on such a skip.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kbypass.testing.rxe_vm import RxeVm, missing_host_tools

REPO = Path(__file__).resolve().parents[2]
_timings: dict[str, float] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.rdma)


@pytest.fixture(scope="session")
def rxe_vm() -> Iterator[RxeVm]:
    """The session's soft-RoCE VM, with the checkout shared writable at its own path."""
    missing = missing_host_tools()
    if missing:
        pytest.skip("the soft-RoCE VM needs: " + ", ".join(missing))
    t0 = time.monotonic()
    vm = RxeVm(shares=[REPO])
    vm.boot()
    assert vm.boot_seconds is not None
    _timings["boot (host, s)"] = vm.boot_seconds
    if vm.guest_boot_seconds is not None:
        _timings["boot (guest uptime at ready, s)"] = vm.guest_boot_seconds
    _timings["prepare + boot (s)"] = time.monotonic() - t0
    try:
        yield vm
    finally:
        t1 = time.monotonic()
        vm.close()
        _timings["power off (s)"] = time.monotonic() - t1
        _timings["session (s)"] = time.monotonic() - t0


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _timings:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in _timings.items())
        terminalreporter.write_line(f"soft-RoCE VM: {parts}")
