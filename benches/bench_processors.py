"""Packet processors written in Python vs C and kernel references, measured in the same run.

Same bench as ``bench_path.py`` (its helpers, pair and C reference ``benches/c/xsk_ref.c``): a
veth pair, the live-frames generator in namespace ``a`` on the first allowed CPU, the receiver
in ``b`` pinned to the last one. Each test measures its references first, then kbypass:

* per-batch NumPy port filter (count + verdicts by ``dst_port``) vs the C libxdp rx-drop
  (goal ≥ 0.8x) and vs kernel ``recvmmsg`` (batch 64);
* l2fwd from Python per batch (``swap_macs`` + TX) vs the C libxdp l2fwd (goal ≥ 0.9x);
* a per-packet handler reading ``pkt.udp.dst_port`` vs a Python ``socket.recv_into`` loop
  (goal ≥ 4x);
* batch sizes 1/16/64/256 with the NumPy filter: packets/s and mean batch latency (receive to
  verdicts applied), ratio to batch 64;
* what the once-per-batch check for views that outlive the handler costs: the NumPy filter
  keeping a frame view or a column array from every batch, vs the same handler keeping
  nothing (the common path, where the check finds nothing). The common path's own cost is the
  difference between this branch's and the previous release's ``test_batch_numpy_filter`` and
  ``test_batch_size_sweep[1]`` (batch 1: the per-batch cost is all there is), measured on one
  quiet machine.

* what building frames costs on top of l2fwd (``swap_macs`` + TX) in the same run: a VLAN
  tag pushed and popped again on every frame (``push_vlan`` + ``pop_vlan``: two reshapes of the
  whole batch), every start moved 50 bytes back and forth (``adjust_head``, the room a VXLAN
  header needs), and every frame answered by an emitted copy instead of TX (``emit`` per frame
  from a Python loop, the original dropped).

``KBYPASS_BENCH_SECONDS`` (default 1.0) sets each measurement's length. For docs/performance.md
run e.g. ``KBYPASS_BENCH_SECONDS=3 python -m pytest benches/bench_processors.py
--benchmark-enable``.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

sys.path.insert(0, str(Path(__file__).parent))

import bench_path
import kbypass
from bench_path import GEN_CPU, RX_CPU, SECONDS, _info, run_c, rx_drop_c, side_by_side
from kbypass.testing import TrafficGenerator, VethPair, udp_recv

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to create network namespaces and load XDP programs"
)

xsk_ref = bench_path.xsk_ref  # the compiled C reference (module-scoped fixture)
GOAL_FILTER = 0.8
GOAL_L2FWD = 0.9
GOAL_PER_PACKET = 4.0


@pytest.fixture(scope="module")
def pair() -> Iterator[VethPair]:
    with VethPair() as p:
        yield p


def _filter_handler() -> tuple[Any, dict[str, int]]:
    counts = {"port": 0}

    def handler(batch: kbypass.Batch) -> None:
        hit = batch.headers["dst_port"] == 9000
        counts["port"] += int(np.count_nonzero(hit))
        batch.verdicts[:] = kbypass.DROP  # the count is the work; every frame goes back

    return handler, counts


def _run_pipeline(pair: VethPair, handler: Any = None, **kw: Any) -> dict[str, Any]:
    kw.setdefault("batch", 64)
    with pair.enter("b"):
        p = kbypass.Pipeline(
            pair.b.ifname, handler, mode="copy", frames=4096, cpus=[RX_CPU], progress=False, **kw
        )
    with p:
        t = p.run(duration=SECONDS)
        w = p.stats()[0]
    t["batch_latency_ns"] = w["batch_latency_ns"]
    t["mean_batch"] = w["mean_batch"]
    return t


@pytest.mark.benchmark(group="processors-filter")
@pytest.mark.parametrize("size", [60, 1514])
def test_batch_numpy_filter(
    benchmark: BenchmarkFixture, pair: VethPair, xsk_ref: Path, size: int
) -> None:
    gen = TrafficGenerator(pair, size=size, cpu=GEN_CPU)
    result: dict[str, Any] = {}
    handler, counts = _filter_handler()
    try:
        gen.start()
        c = rx_drop_c(pair, xsk_ref)
        kernel = udp_recv(pair, duration=SECONDS, batch=64, cpu=RX_CPU)

        def measure() -> None:
            result["t"] = _run_pipeline(pair, handler)

        benchmark.pedantic(measure, rounds=1, iterations=1)
    finally:
        gen.stop()
    t = result["t"]
    rate = float(t["pps"])
    assert t["rx"] > 0 and counts["port"] == t["rx"]  # every generated frame is port 9000
    assert t["handler_errors"] == 0
    _info(
        benchmark,
        rate,
        "C libxdp rx-drop",
        rate / c["pps"],
        c_pps=c["pps"],
        recvmmsg_pps=kernel.pps,
        ratio_recvmmsg=rate / kernel.pps if kernel.pps else 0.0,
        goal=GOAL_FILTER,
        size=size,
        mean_batch=t["mean_batch"],
    )


@pytest.mark.benchmark(group="processors-l2fwd")
@pytest.mark.parametrize("size", [60, 1514])
def test_batch_l2fwd(benchmark: BenchmarkFixture, pair: VethPair, xsk_ref: Path, size: int) -> None:
    def l2fwd(batch: kbypass.Batch) -> None:
        batch.swap_macs()
        batch.verdicts[:] = kbypass.TX

    gen = TrafficGenerator(pair, size=size, cpu=GEN_CPU)
    result: dict[str, Any] = {}
    try:
        gen.start()
        c = run_c(pair, "b", xsk_ref, "l2fwd", "-i", pair.b.ifname, "-d", str(SECONDS))

        def measure() -> None:
            result["t"] = _run_pipeline(pair, l2fwd, default=kbypass.TX)

        benchmark.pedantic(measure, rounds=1, iterations=1)
    finally:
        gen.stop()
    t = result["t"]
    rate = float(t["pps"])
    assert t["tx"] > 0 and t["handler_errors"] == 0
    _info(
        benchmark,
        rate,
        "C libxdp l2fwd",
        rate / c["pps"],
        c_pps=c["pps"],
        tx=t["tx"],
        tx_failed=t["tx_failed"],
        goal=GOAL_L2FWD,
        size=size,
    )


def _python_recv_into(pair: VethPair, duration: float) -> float:
    """Packets/s of a plain Python ``socket.recv_into`` loop on b:9000 (pinned)."""
    with pair.enter("b"):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((pair.b.ip, 9000))
    s.settimeout(1.0)
    buf = bytearray(2048)
    prev = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {RX_CPU})
    try:
        s.recv_into(buf)
        n = 0
        dport = 0
        start = time.perf_counter()
        end = start + duration
        while True:
            k = s.recv_into(buf)
            dport += buf[0] if k else 0  # a field read, as the per-packet handler does
            n += 1
            if n & 1023 == 0 and time.perf_counter() >= end:
                break
        return n / (time.perf_counter() - start)
    finally:
        os.sched_setaffinity(0, prev)
        s.close()


@pytest.mark.benchmark(group="processors-per-packet")
def test_per_packet_handler(benchmark: BenchmarkFixture, pair: VethPair) -> None:
    seen = {"n": 0}

    def handle(pkt: kbypass.Packet) -> int:
        udp = pkt.udp
        if udp is not None and udp.dst_port == 9000:
            seen["n"] += 1
        return kbypass.DROP

    gen = TrafficGenerator(pair, size=60, cpu=GEN_CPU)
    result: dict[str, Any] = {}
    try:
        gen.start()
        ref = _python_recv_into(pair, SECONDS)

        def measure() -> None:
            result["t"] = _run_pipeline(pair, per_packet=handle)

        benchmark.pedantic(measure, rounds=1, iterations=1)
    finally:
        gen.stop()
    t = result["t"]
    rate = float(t["pps"])
    assert seen["n"] == t["rx"] > 0
    _info(
        benchmark,
        rate,
        "Python socket.recv_into loop",
        rate / ref,
        reference_pps=ref,
        goal=GOAL_PER_PACKET,
    )


@pytest.mark.benchmark(group="processors-batch-size")
@pytest.mark.parametrize("batch", [1, 16, 64, 256])
def test_batch_size_sweep(benchmark: BenchmarkFixture, pair: VethPair, batch: int) -> None:
    handler, _ = _filter_handler()
    gen = TrafficGenerator(pair, size=60, cpu=GEN_CPU)
    result: dict[str, Any] = {}
    try:
        gen.start()
        ref = _run_pipeline(pair, handler, batch=64)

        def measure() -> None:
            result["t"] = _run_pipeline(pair, handler, batch=batch)

        benchmark.pedantic(measure, rounds=1, iterations=1)
    finally:
        gen.stop()
    t = result["t"]
    rate = float(t["pps"])
    assert t["rx"] > 0 and t["mean_batch"] <= batch
    _info(
        benchmark,
        rate,
        "same handler at batch 64",
        rate / float(ref["pps"]),
        batch=batch,
        mean_batch=t["mean_batch"],
        batch_latency_us=t["batch_latency_ns"] / 1e3,
        per_packet_ns=t["batch_latency_ns"] / max(t["mean_batch"], 1.0),
    )


@pytest.mark.benchmark(group="processors-escape-check")
@pytest.mark.parametrize("keeps", ["a-view", "a-column"])
def test_escape_check_cost(benchmark: BenchmarkFixture, pair: VethPair, keeps: str) -> None:
    """The NumPy filter keeping, from every batch, frame 0's view (held until the next batch
    replaces it) or its lengths column (fresh buffers every batch), vs keeping nothing."""
    handler, _ = _filter_handler()
    box: dict[str, Any] = {}

    def keep_view(batch: kbypass.Batch) -> None:
        handler(batch)
        box["kept"] = batch.frame(0)

    def keep_column(batch: kbypass.Batch) -> None:
        handler(batch)
        box["kept"] = batch.lengths

    subject = keep_view if keeps == "a-view" else keep_column
    gen = TrafficGenerator(pair, size=60, cpu=GEN_CPU)
    try:
        gen.start()
        ref, t = side_by_side(
            benchmark,
            lambda: _run_pipeline(pair, handler),
            lambda: _run_pipeline(pair, subject),
        )
    finally:
        gen.stop()
    box.clear()
    rate = float(t["pps"])
    assert t["rx"] > 0 and t["handler_errors"] == 0
    if keeps == "a-view":
        assert t["escaped"] == t["batches"]  # one held frame per batch
    else:
        assert t["escaped"] == 0
    _info(
        benchmark,
        rate,
        "same handler keeping nothing",
        rate / float(ref["pps"]),
        keeps=keeps,
        escaped=t["escaped"],
        batch_latency_ns=t["batch_latency_ns"],
        reference_batch_latency_ns=ref["batch_latency_ns"],
        extra_ns_per_batch=t["batch_latency_ns"] - ref["batch_latency_ns"],
    )


@pytest.mark.benchmark(group="processors-build")
@pytest.mark.parametrize("work", ["vlan-push-pop", "adjust-head", "emit"])
def test_build_cost(benchmark: BenchmarkFixture, pair: VethPair, work: str) -> None:
    """l2fwd that also builds frames (see the module docs), vs plain l2fwd."""

    def l2fwd(batch: kbypass.Batch) -> None:
        batch.swap_macs()
        batch.verdicts[:] = kbypass.TX

    def vlan_push_pop(batch: kbypass.Batch) -> None:
        batch.swap_macs()
        batch.push_vlan(100)
        batch.pop_vlan()
        batch.verdicts[:] = kbypass.TX

    def adjust_head(batch: kbypass.Batch) -> None:
        batch.swap_macs()
        batch.adjust_head(-50)
        batch.adjust_head(50)
        batch.verdicts[:] = kbypass.TX

    def emit(batch: kbypass.Batch) -> None:
        batch.swap_macs()
        for f in batch.frames:
            batch.emit(f)
        batch.verdicts[:] = kbypass.DROP

    subject = {"vlan-push-pop": vlan_push_pop, "adjust-head": adjust_head, "emit": emit}[work]
    gen = TrafficGenerator(pair, size=60, cpu=GEN_CPU)
    try:
        gen.start()
        ref, t = side_by_side(
            benchmark,
            lambda: _run_pipeline(pair, l2fwd),
            lambda: _run_pipeline(pair, subject),
        )
    finally:
        gen.stop()
    rate = float(t["pps"])
    assert t["rx"] > 0 and t["handler_errors"] == 0
    if work == "emit":
        assert t["emitted"] > 0 and t["tx"] == 0
    else:
        assert t["tx"] > 0 and t["emitted"] == 0
    _info(
        benchmark,
        rate,
        "l2fwd (swap_macs + TX)",
        rate / float(ref["pps"]),
        work=work,
        emitted=t["emitted"],
        emit_failed=t["emit_failed"],
        tx_failed=t["tx_failed"],
        batch_latency_ns=t["batch_latency_ns"],
        reference_batch_latency_ns=ref["batch_latency_ns"],
        extra_ns_per_batch=t["batch_latency_ns"] - ref["batch_latency_ns"],
    )
