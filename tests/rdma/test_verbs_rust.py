"""The Rust verbs provider (rust/kbypass-core/src/rdma) on a real verbs device: rxe0 in the VM.

The core crate's on-device tests are ``#[ignore]``d on the host (no RDMA there); this builds
the crate's test binary on the host and runs exactly those tests inside the soft-RoCE VM.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kbypass.testing.rxe_vm import RxeVm

REPO = Path(__file__).resolve().parents[2]


def core_test_binary() -> str:
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.skip("cargo is missing: install a Rust toolchain (rustup) to run the core's tests")
    out = subprocess.run(
        [cargo, "test", "-p", "kbypass-core", "--lib", "--no-run", "--message-format=json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for line in out.stdout.splitlines():
        msg = json.loads(line)
        if (
            msg.get("reason") == "compiler-artifact"
            and msg["target"]["name"] == "kbypass_core"
            and msg["profile"]["test"]
            and msg.get("executable")
        ):
            return str(msg["executable"])
    raise AssertionError("cargo built no kbypass_core test binary")


def test_rust_verbs_provider_on_rxe(rxe_vm: RxeVm) -> None:
    exe = core_test_binary()
    r = rxe_vm.run(
        [exe, "--ignored", "--test-threads=1", "rdma::"],
        env={"KBYPASS_RDMA_DEVICE": "rxe0"},
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"test result: ok\. (\d+) passed; 0 failed", r.stdout)
    assert m is not None and int(m.group(1)) >= 11, r.stdout
    for name in (
        "rdma_rc_write_send_read_and_atomics",
        "rdma_wrong_rkey_is_a_remote_access_error",
        "rdma_ud_send_with_address_handle",
        "rdma_completion_channel_wait",
        "rdma_many_outstanding_and_flush_on_error",
        "rdma_shared_receive_queue_and_inline_send",
        "rdma_rnr_retry_exhausted_without_a_receive",
        "rdma_perf_loops_measure_real_transfers",
        "rdma_kbypass_server_with_ibv_rc_pingpong_client",
        "rdma_kbypass_client_with_ibv_rc_pingpong_server",
    ):
        assert f"{name} ... ok" in r.stdout, r.stdout
