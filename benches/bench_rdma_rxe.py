"""rxe to rxe next to kernel TCP, inside the soft-RoCE VM: the relative figure of issue 11.

``bench_rdma_engine.py`` puts the user-space engine next to kernel TCP on the host's veth bench;
this bench puts the kernel's own soft-RoCE (``rdma_rxe``) next to kernel TCP in the same way,
inside the VM of ``kbypass.testing.rxe_vm`` (2 vCPUs, KVM where it works), so the two ratios can
be read side by side. Every round is one job in the VM (``vm_rxe_vs_tcp.py``) that measures both,
back to back:

- bandwidth, per message size (64 B, 4 KiB, 64 KiB): perftest's ``ib_write_bw``, ``ib_read_bw``
  and ``ib_send_bw`` (50,000 / 10,000 / 1,000 messages) against ``iperf3 -l <size>`` over TCP;
- latency at 64 B: ``ib_write_lat -s 64`` (20,000 exchanges; perftest's one-way figures doubled
  into round trips) against ``sockperf ping-pong --tcp -m 64`` to ``sockperf server --tcp``,
  both as round-trip percentiles (p50, p99, p99.9).

Both ends of each transfer run in the VM. rxe has one device here (``rxe0`` on eth0), and rxe
supports loopback: a packet for one of its own GIDs is looped back inside the driver, so
perftest's server and client are two processes on ``rxe0`` (GID index 1, 198.18.0.15); TCP runs
between 198.18.0.15 and itself, which the kernel routes over loopback. Neither crosses a wire, as
neither does on the host's veth bench. The VM runs the host's root file system, so the tools are
the host's (``bash .ci/install-system-deps`` installs perftest, iperf3 and sockperf).

Ratios (rxe over TCP) are taken round by round and reported as min / median / max in
``extra_info``, with the same names as ``bench_rdma_engine.py``; recorded, not asserted. With
``--benchmark-disable`` (CI) one short round runs as a check that every path works. For
docs/performance.md, on a quiet machine::

    KBYPASS_BENCH_SECONDS=2 KBYPASS_BENCH_ROUNDS=3 python -m pytest benches/bench_rdma_rxe.py \\
        --benchmark-enable -s
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from _ratios import PERCENTILES, bandwidth_vs_tcp, headline, rtt_vs_tcp
from kbypass.testing.rxe_vm import RxeVm

pytestmark = [
    pytest.mark.rdma,
    pytest.mark.skipif(
        shutil.which("iperf3") is None or shutil.which("sockperf") is None,
        reason="iperf3 and sockperf (run in the VM from the host's root) are the TCP references: "
        "bash .ci/install-system-deps",
    ),
]

SCRIPT = Path(__file__).with_name("vm_rxe_vs_tcp.py")
SIZES = (64, 4096, 65536)
TESTS = ("write", "read", "send")


def _settings(config: pytest.Config) -> tuple[int, int, float]:
    """Rounds, seconds per TCP run, and perftest's iteration scale (short when disabled)."""
    enabled = not config.getoption("benchmark_disable", False)
    rounds = int(os.environ.get("KBYPASS_BENCH_ROUNDS", "3" if enabled else "1"))
    seconds = int(os.environ.get("KBYPASS_BENCH_SECONDS", "2" if enabled else "1"))
    return rounds, seconds, 1.0 if enabled else 0.1


def _in_vm(vm: RxeVm, *args: str) -> dict[str, dict[str, float]]:
    """One round of vm_rxe_vs_tcp.py in the VM; its JSON report."""
    r = vm.run([sys.executable, str(SCRIPT), *args], cwd=SCRIPT.parent, timeout=600)
    assert r.returncode == 0, f"vm_rxe_vs_tcp.py {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
    out: dict[str, dict[str, float]] = json.loads(r.stdout)
    return out


@pytest.mark.benchmark(group="rdma-rxe")
@pytest.mark.parametrize("test", TESTS)
def test_rxe_bandwidth_vs_kernel_tcp(
    benchmark: BenchmarkFixture, rxe_vm: RxeVm, test: str, request: pytest.FixtureRequest
) -> None:
    rounds, seconds, scale = _settings(request.config)
    per_size: dict[int, dict[str, list[float]]] = {s: {"tcp": [], "rxe": []} for s in SIZES}

    def one_round() -> None:
        got = _in_vm(rxe_vm, "bw", test, "--seconds", str(seconds), "--scale", str(scale))
        for size in SIZES:
            per_size[size]["tcp"].append(got[str(size)]["tcp_mb_s"])
            per_size[size]["rxe"].append(got[str(size)]["rxe_mb_s"])

    benchmark.pedantic(one_round, rounds=rounds, iterations=1)
    assert all(v > 0 for got in per_size.values() for v in got["rxe"] + got["tcp"]), per_size
    where = f"in the VM ({rxe_vm.accel}), "
    bandwidth_vs_tcp(benchmark, test, per_size, "rxe", "rxe", where=where)
    top = per_size[65536]
    headline(
        benchmark,
        top["rxe"],
        top["tcp"],
        "MB/s at 64 KiB",
        "kernel TCP (iperf3 -l 65536), same VM, same round",
    )
    benchmark.extra_info["accel"] = rxe_vm.accel


@pytest.mark.benchmark(group="rdma-rxe")
def test_rxe_write_latency_vs_kernel_tcp(
    benchmark: BenchmarkFixture, rxe_vm: RxeVm, request: pytest.FixtureRequest
) -> None:
    rounds, seconds, scale = _settings(request.config)
    tcp: list[dict[str, float]] = []
    rxe: list[dict[str, float]] = []

    def one_round() -> None:
        got = _in_vm(rxe_vm, "lat", "--seconds", str(seconds), "--scale", str(scale))
        tcp.append(got["tcp"])
        rxe.append(got["rxe"])

    benchmark.pedantic(one_round, rounds=rounds, iterations=1)
    assert all(x[p] > 0 for x in rxe + tcp for p in PERCENTILES), (rxe, tcp)
    where = f"in the VM ({rxe_vm.accel}), "
    rtt_vs_tcp(benchmark, rxe, tcp, "rxe (ib_write_lat)", "rxe", where=where)
    benchmark.extra_info["accel"] = rxe_vm.accel
