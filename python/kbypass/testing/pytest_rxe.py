"""pytest plugin: the ``rxe_vm`` fixture, one soft-RoCE VM per test session.

Installed with kbypass (entry point ``pytest11``), so any test suite can ask for it::

    def test_ibv_devices(rxe_vm):
        assert "rxe0" in rxe_vm.run("ibv_devices").stdout

The VM shares pytest's rootdir (the checkout) writable at the same path. Without qemu and
friends the fixture skips with the packages to install; at the end of the session the
terminal summary shows how long booting took.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from kbypass.testing.rxe_vm import RxeVm

#: Seconds spent booting and running the session's VM, shown in the terminal summary.
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="session")
def rxe_vm(request: pytest.FixtureRequest) -> Iterator[RxeVm]:
    """Return the session's soft-RoCE VM, with the rootdir shared writable at its own path."""
    from kbypass.testing.rxe_vm import RxeVm, missing_host_tools

    missing = missing_host_tools()
    if missing:
        pytest.skip("the soft-RoCE VM needs: " + ", ".join(missing))
    t0 = time.monotonic()
    vm = RxeVm(shares=[request.config.rootpath])
    vm.boot()
    if vm.boot_seconds is not None:
        TIMINGS["boot (host, s)"] = vm.boot_seconds
    if vm.guest_boot_seconds is not None:
        TIMINGS["boot (guest uptime at ready, s)"] = vm.guest_boot_seconds
    TIMINGS["prepare + boot (s)"] = time.monotonic() - t0
    try:
        yield vm
    finally:
        t1 = time.monotonic()
        vm.close()
        TIMINGS["power off (s)"] = time.monotonic() - t1
        TIMINGS["session (s)"] = time.monotonic() - t0


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the VM's timings when a session used it."""
    if TIMINGS:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in TIMINGS.items())
        terminalreporter.write_line(f"soft-RoCE VM: {parts}")
