"""kbypass.rdma (the Python API) on rxe0, each scenario run inside the soft-RoCE VM."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kbypass.testing.rxe_vm import CommandResult, RxeVm

SCRIPT = Path(__file__).with_name("vm_python_verbs.py")
SCENARIOS = [
    "rc_numpy_bytearray",
    "bulk_poll_into_numpy",
    "wrong_rkey_and_recovery",
    "completion_channel_wait",
    "any_close_order",
    "ud_send_with_address_handle",
    "bad_input_is_an_exception",
    "send_with_invalidate_on_rxe",
    "kbypass_memory",
    "dropped_in_any_order",
    "srq_from_python",
    "srq_limit_event_on_rxe",
    "inline_send_from_a_region",
    "error_state_flush_and_exceptions",
    "endpoint_serialization",
    "pingpong_interop_from_python",
    "perftest_interop_from_python",
    "perftest_read_send_atomic_from_python",
    "perftest_uc_and_ipv6_gid_from_python",
    "uc_sg_lists_and_write_with_imm",
    "rdma_cm_connect_accept",
    "rping_client_against_kbypass_cm_server",
]


def test_every_scenario_is_listed() -> None:
    text = "".join(
        SCRIPT.with_name(f).read_text()
        for f in ("vm_python_verbs.py", "vm_perftest.py", "vm_srq_events.py")
    )
    assert sorted(SCENARIOS) == sorted(
        line.split("def scenario_")[1].split("(")[0]
        for line in text.splitlines()
        if line.startswith("def scenario_")
    )


@pytest.fixture(scope="module")
def scenario_run(rxe_vm: RxeVm) -> CommandResult:
    """All scenarios in one interpreter inside the VM (Python + NumPy start slowly under TCG)."""
    return rxe_vm.run([sys.executable, str(SCRIPT), *SCENARIOS], cwd=SCRIPT.parent, timeout=300)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_python_rdma_in_vm(scenario_run: CommandResult, scenario: str) -> None:
    lines = scenario_run.stdout.splitlines()
    assert f"ok {scenario}" in lines, f"{scenario_run.stdout}\n{scenario_run.stderr}"
