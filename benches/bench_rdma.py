"""RDMA write bandwidth and latency: kbypass next to perftest, on rxe0 in the soft-RoCE VM.

Both run in the same boot on the same device; the ratios say whether kbypass adds overhead
(goal: >= 0.95x perftest's bandwidth, <= 1.1x its latency). Under TCG the absolute numbers
mean nothing and the ratios are noisy, so nothing here gates on them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from kbypass.testing.rxe_vm import RxeVm

SCRIPT = Path(__file__).with_name("vm_rdma_bench.py")


@pytest.mark.rdma
@pytest.mark.benchmark(group="rdma")
def test_rdma_write_vs_perftest(benchmark: Any, rxe_vm: RxeVm) -> None:
    def run() -> dict[str, float]:
        r = rxe_vm.run([sys.executable, str(SCRIPT)], cwd=SCRIPT.parent, timeout=400)
        assert r.returncode == 0, r.stdout + r.stderr
        result: dict[str, float] = json.loads(r.stdout)
        return result

    res = benchmark.pedantic(run, rounds=1, iterations=1)
    assert all(v > 0 for v in res.values()), res
    benchmark.extra_info.update(res)
    benchmark.extra_info["bw_ratio"] = res["kbypass_bw_mb_s"] / res["perftest_bw_mb_s"]
    benchmark.extra_info["lat_ratio"] = res["kbypass_lat_us"] / res["perftest_lat_us"]
    print(
        f"\nrxe0 under {rxe_vm.accel}: write bandwidth kbypass {res['kbypass_bw_mb_s']:.1f} MB/s"
        f" vs ib_write_bw {res['perftest_bw_mb_s']:.1f} MB/s"
        f" ({benchmark.extra_info['bw_ratio']:.2f}x); latency kbypass"
        f" {res['kbypass_lat_us']:.1f} us vs ib_write_lat {res['perftest_lat_us']:.1f} us"
        f" ({benchmark.extra_info['lat_ratio']:.2f}x)"
    )
