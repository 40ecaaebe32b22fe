"""``kbypass capture`` into a pcap file vs AF_XDP rx-drop, side by side in one run.

The plugin's ``veth_pair``/``traffic`` fixtures: the live-frames generator floods side ``a`` ->
``b`` at full speed; on ``b`` (pinned to the last allowed CPU) first ``XdpSocket.rx_drop`` (the
same AF_XDP receive path with nothing written: the ceiling of capture) and then
``kbypass.capture`` writing every frame to a pcap file, each for ``KBYPASS_BENCH_SECONDS``. The
ratio is capture / rx-drop: what writing a pcap costs. Also recorded: frames the kernel dropped
because the capture loop fell behind (XDP_STATISTICS).

Run: ``KBYPASS_BENCH_SECONDS=3 python -m pytest benches/bench_capture.py --benchmark-enable``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

import kbypass
from kbypass import cpu
from kbypass.testing import TrafficGenerator, VethPair

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to create network namespaces and load XDP programs"
)

SECONDS = float(os.environ.get("KBYPASS_BENCH_SECONDS", "1.0"))
_ALLOWED = cpu.allowed()
GEN_CPU, RX_CPU = _ALLOWED[0], _ALLOWED[-1]
TRAFFIC = [pytest.param({"size": s, "cpu": GEN_CPU}, id=str(s)) for s in (60, 1514)]


@pytest.mark.benchmark(group="capture")
@pytest.mark.parametrize("traffic", TRAFFIC, indirect=True)
def test_capture_to_pcap(
    benchmark: BenchmarkFixture, veth_pair: VethPair, traffic: TrafficGenerator, tmp_path: Path
) -> None:
    out = tmp_path / "bench.pcap"
    result: dict[str, Any] = {}
    with traffic as gen:
        gen.start()
        with veth_pair.enter("b"), cpu.pinned(RX_CPU):
            with kbypass.XdpSocket(veth_pair.b.ifname, queue=0, mode="copy") as sock:
                ref = sock.rx_drop(duration=SECONDS, batch=64)

        def measure() -> None:
            with cpu.pinned(RX_CPU):
                result["s"] = kbypass.capture(
                    veth_pair.b.ifname, netns=veth_pair.b.netns, duration=SECONDS, write=out,
                    mode="copy",
                )  # fmt: skip

        benchmark.pedantic(measure, rounds=1, iterations=1)
        offered = gen.stop()
    s = result["s"]
    size = traffic.size
    assert s["packets"] > 0
    assert out.stat().st_size == 24 + s["packets"] * (16 + size)
    rate, ref_rate = float(s["pps"]), float(ref["pps"])
    benchmark.extra_info.update(
        rate=rate,
        unit="packets/s",
        reference=f"AF_XDP rx-drop {ref_rate / 1e6:.2f} Mpps",
        ratio=rate / ref_rate,
        seconds=SECONDS,
        size=size,
        write_mb_s=s["bytes"] / s["elapsed"] / 1e6,
        kernel_dropped=s["kernel_dropped"],
        generator_pps=offered.pps,
    )
