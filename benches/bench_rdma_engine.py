"""RDMA on the user-space RoCEv2 engine next to kernel TCP, engine to engine on the veth bench.

No kernel RDMA is used: two ``kbypass.rdma.Context.userspace`` engines, one per namespace of a
veth pair (198.18.0.0/15), move the bytes; the reference is the kernel's TCP stack moving the same
transfer between the same two namespaces over the same veth pair, in the same round:

- bandwidth, per message size (64 B, 4 KiB, 64 KiB): RDMA write, read and send as perftest's
  ``ib_*_bw`` run them (``QueuePair.perftest_serve`` against ``perftest_*_bw``, the engines on
  both ends) against ``iperf3`` streaming the same message size over TCP (``-l``);
- latency at 64 B: RDMA write ping-pong (``measure_write_latency``, as ``ib_write_lat``; the round
  trip is twice each one-way sample; the engines driven by the two measuring threads, caller
  progress) against ``sockperf ping-pong --tcp -m 64`` to
  ``sockperf server --tcp``, both as round-trip percentiles (p50, p99, p99.9).

Bandwidth runs on two set-ups of the pair, TCP and the engines on the same one in each round:

- ``default``: a 1500-byte MTU (path MTU 1024);
- ``jumbo``: a 9000-byte MTU (path MTU 4096: the engines' frames span two UMEM frames, multi-
  buffer AF_XDP; TCP's segments were 64 KiB GSO packets either way);
- ``jumbo+busy_poll``: the same pair, the engines opened with ``busy_poll=True`` (the kernel
  busy-polls the queue from each engine's poll thread, which never sleeps).

``KBYPASS_BENCH_TUNE=1`` also tunes the jumbo pair for bulk transfer: side ``a`` on the first
CPU and ``b`` on the last, receive processing included (threaded NAPI on both veth ends, each
end's NAPI thread pinned to its side's CPU; each engine's poll thread and measuring thread pinned
there too, and iperf3's client and server, ``-A``). On veth a frame's receive work otherwise runs
in the sender's softirq, on the sender's CPU. It helps bulk writes and hurts request/response
traffic (small reads wait on the NAPI threads' wake-ups), so it is not the default.

The ceiling (``test_af_xdp_ceiling_vs_kernel_tcp``, both pairs): what copy-mode AF_XDP on this
veth pair carries at all, with no protocol. ``a`` floods ``b`` with raw UDP frames of the
engines' largest RoCE frame (an RDMA write's middle packet at the pair's path MTU: Ethernet, IP,
UDP, BTH, a path MTU of payload, ICRC), copied into UMEM for every send as the engine's data is
(``XdpSocket.tx_flood(fresh=True)``; split over two UMEM frames on the jumbo pair), and a socket
on ``b`` receives them and gives them straight back (``rx_drop``): no engine, no copy out; it is
counted as the payload those frames would carry (a path MTU each), as TCP's and the engine's
figures count payload. Next to it in the same round, TCP's and the engine's 64 KiB write. No
RoCE sender over this path can pass the ceiling, so its ratio to TCP bounds what the bandwidth
goal can reach here.

Each round measures the kernel and the engine side by side; ratios are taken round by round and
reported as min / median / max in ``extra_info``. Goals (issue 11): at least 1.5 times TCP's
bandwidth at 64 KiB messages (write) and at most 0.5 times its round-trip p50 at 64 B; recorded,
not asserted (a loaded machine moves them). sockperf's client and server block in the kernel as
TCP applications do; the engines spin, as RDMA applications do. With ``--benchmark-disable``
(CI) one short round runs as a check that every path works. For docs/performance.md, on a
quiet machine::

    KBYPASS_BENCH_SECONDS=3 KBYPASS_BENCH_ROUNDS=5 python -m pytest benches/bench_rdma_engine.py \
        --benchmark-enable -s
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from _ratios import Side, bandwidth_vs_tcp, compare, headline, ratios, rtt_vs_tcp, spread
from kbypass import XdpSocket, cpu, rdma
from kbypass.packet import Template
from kbypass.pingpong import parse_sockperf
from kbypass.testing import VethPair, in_thread, server

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: AF_XDP engines in namespaces"),
    pytest.mark.skipif(
        shutil.which("iperf3") is None or shutil.which("sockperf") is None,
        reason="iperf3 and sockperf are the TCP references: bash .ci/install-system-deps",
    ),
]

SIZES = (64, 4096, 65536)
TESTS = ("write", "read", "send")
LAT_SIZE = 64
TCP_PORT = 18790
PERF_PORT = 18791


def _settings(config: pytest.Config) -> tuple[int, int, float]:
    """Rounds, seconds per TCP run, and the engines' iteration scale (short when disabled)."""
    enabled = not config.getoption("benchmark_disable", False)
    rounds = int(os.environ.get("KBYPASS_BENCH_ROUNDS", "3" if enabled else "1"))
    seconds = int(os.environ.get("KBYPASS_BENCH_SECONDS", "2" if enabled else "1"))
    return rounds, seconds, 1.0 if enabled else 0.1


def _iterations(size: int, scale: float) -> int:
    """Messages per RDMA run: 256 MiB at 64 KiB (a shorter run is mostly its start), 80 MiB at
    4 KiB, 50,000 messages at 64 B."""
    base = {64: 50_000, 4096: 20_000, 65536: 4_000}[size]
    return max(100, int(base * scale))


@pytest.fixture(scope="module")
def pair() -> Iterator[VethPair]:
    with VethPair(subnet="198.18.45") as p:
        yield p


CPUS = (min(os.sched_getaffinity(0)), max(os.sched_getaffinity(0)))
"""The tuned set-up's CPUs: side ``a``'s, side ``b``'s."""
TUNE = os.environ.get("KBYPASS_BENCH_TUNE") == "1"


def _napi_threads() -> dict[int, str]:
    """The kernel's threaded-NAPI threads now: pid → name (``napi/<ifname>-<napi id>``)."""
    found: dict[int, str] = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    name = f.read().strip()
            except OSError:
                continue
            if name.startswith("napi/"):
                found[int(pid)] = name
    return found


def tune(pair: VethPair) -> None:
    """Threaded NAPI on both ends of `pair`, each end's NAPI thread pinned to its side's CPU."""
    before = _napi_threads()
    for end in (pair.a, pair.b):
        pair.run(end, "sh", "-c", f"echo 1 > /sys/class/net/{end.ifname}/threaded")
    new = {pid: name for pid, name in _napi_threads().items() if pid not in before}
    for end, where in ((pair.a, CPUS[0]), (pair.b, CPUS[1])):
        mine = [pid for pid, name in new.items() if name.startswith(f"napi/{end.ifname}-")]
        assert mine, f"no NAPI thread for {end.ifname} after turning threaded NAPI on: {new}"
        for pid in mine:
            os.sched_setaffinity(pid, {where})


@pytest.fixture(scope="module")
def jumbo_pair() -> Iterator[VethPair]:
    with VethPair(subnet="198.18.44", mtu=9000) as p:
        if TUNE:
            tune(p)
        yield p


class Engines:
    """Two engine contexts, ``a`` and ``b``, on the pair (poll threads pinned to `cpus`);
    closed on exit."""

    def __init__(
        self,
        pair: VethPair,
        progress: str = "thread",
        cpus: tuple[int, int] | None = None,
        busy_poll: bool = False,
    ) -> None:
        a, b = pair.a, pair.b
        ca, cb = cpus if cpus is not None else (None, None)
        self.a = rdma.Context.userspace(
            a.ifname, ip=a.ip, netns=a.netns, cpu=ca, progress=progress, busy_poll=busy_poll
        )
        try:
            self.b = rdma.Context.userspace(
                b.ifname, ip=b.ip, netns=b.netns, cpu=cb, progress=progress, busy_poll=busy_poll
            )
        except BaseException:
            self.a.close()
            raise

    def __enter__(self) -> Engines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.a.close()
        self.b.close()


def _pinned(where: int | None) -> contextlib.AbstractContextManager[object]:
    """The calling thread pinned to CPU `where` for the block (nothing with None)."""
    return cpu.pinned(where) if where is not None else contextlib.nullcontext()


def rdma_bw(
    pair: VethPair,
    test: str,
    size: int,
    iterations: int,
    cpus: tuple[int, int] | None = None,
    busy_poll: bool = False,
) -> float:
    """One perftest-style run, ``a`` the client, ``b`` the server; MB/s (10^6 B/s) at ``a``.

    With `cpus`, each side's engine poll thread and measuring thread are pinned to its CPU.
    """
    pin_a, pin_b = cpus if cpus is not None else (None, None)
    with Engines(pair, cpus=cpus, busy_poll=busy_poll) as e:
        cqa, cqb = e.a.create_cq(512), e.b.create_cq(512)
        pda, pdb = e.a.alloc_pd(), e.b.alloc_pd()
        qa, qb = pda.create_qp("RC", cqa), pdb.create_qp("RC", cqb)
        bufa, bufb = np.zeros(max(size, 1 << 16), np.uint8), np.zeros(max(size, 1 << 16), np.uint8)
        mra, mrb = pda.register(bufa), pdb.register(bufb)
        if test == "send":
            qb.init()  # the server posts its receives before the exchange

        def serve_b() -> dict[str, Any]:
            with _pinned(pin_b):
                return qb.perftest_serve(
                    mrb, PERF_PORT, timeout=120, test=test, cq=cqb, size=size,
                    iterations=iterations,
                )  # fmt: skip

        serve = in_thread(pair, "b", serve_b, timeout=180)
        client = {
            "write": qa.perftest_write_bw,
            "read": qa.perftest_read_bw,
            "send": qa.perftest_send_bw,
        }[test]
        with pair.enter("a"), _pinned(pin_a):
            rep = client(
                cqa, mra, pair.b.ip, PERF_PORT, size=size, iterations=iterations, timeout=120
            )
        serve()
    assert rep["iters"] == iterations and rep["bw_avg"] > 0, rep
    return float(rep["bw_avg"]) * (1 << 20) / 1e6


def rdma_rtt(pair: VethPair, iterations: int) -> dict[str, float]:
    """RDMA write ping-pong at 64 B between the engines: RTT percentiles in µs.

    The engines run with caller progress: each side's measuring thread drives its engine as it
    spins (run to completion, as a DPDK application polls its own port), so two threads do the
    whole exchange on the two CPUs. With a poll thread per engine, four runnable threads share
    two CPUs and the scheduler's time slices (milliseconds) show in the figures.
    """
    with Engines(pair, progress="caller") as e:
        cqa, cqb = e.a.create_cq(64), e.b.create_cq(64)
        pda, pdb = e.a.alloc_pd(), e.b.alloc_pd()
        qa, qb = pda.create_qp("RC", cqa), pdb.create_qp("RC", cqb)
        qa.connect(qb.endpoint(psn=1), psn=2)
        qb.connect(qa.endpoint(psn=2), psn=1)
        bufa, bufb = np.zeros(2 * LAT_SIZE, np.uint8), np.zeros(2 * LAT_SIZE, np.uint8)
        mra, mrb = pda.register(bufa), pdb.register(bufb)
        one_way = rdma.measure_write_latency(qa, qb, cqa, cqb, mra, mrb, LAT_SIZE, iterations)
    rtt = 2 * np.asarray(one_way, dtype=np.float64)
    return {
        "p50_us": float(np.percentile(rtt, 50)),
        "p99_us": float(np.percentile(rtt, 99)),
        "p99.9_us": float(np.percentile(rtt, 99.9)),
    }


def tcp_bw(pair: VethPair, size: int, seconds: int, cpus: tuple[int, int] | None = None) -> float:
    """iperf3 over TCP from ``a`` to ``b``, ``size``-byte writes; MB/s (10^6 B/s) received;
    with `cpus`, the client pinned to the first and the server to the second (``-A``).

    A run whose report lacks the server's side (seen once on a loaded machine) is run again.
    """
    try:
        return _iperf3(pair, size, seconds, cpus)
    except RuntimeError:
        return _iperf3(pair, size, seconds, cpus)


def _iperf3(pair: VethPair, size: int, seconds: int, cpus: tuple[int, int] | None) -> float:
    cmd = ("iperf3", "-s", "-1", "-B", pair.b.ip, "-p", str(TCP_PORT))
    pin = ("-A", f"{cpus[0]},{cpus[1]}") if cpus is not None else ()
    with server(cmd, netns=pair.b, port=TCP_PORT):
        r = pair.run(
            "a", "iperf3", "-c", pair.b.ip, "-p", str(TCP_PORT), "-t", str(seconds),
            "-l", str(size), "-J", *pin, check=False, timeout=seconds + 30,
        )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    received = report.get("end", {}).get("sum_received")
    if received is None:  # iperf3 could not get the server's side of the report
        raise RuntimeError(f"iperf3 reported no received total: {report.get('error', r.stdout)}")
    return float(received["bits_per_second"]) / 8 / 1e6


def tcp_rtt(pair: VethPair, seconds: int) -> dict[str, float]:
    """sockperf ping-pong over TCP, 64 B: RTT percentiles in µs."""
    port = str(TCP_PORT + 1)
    cmd = ("sockperf", "server", "--tcp", "-i", pair.b.ip, "-p", port)
    with server(cmd, netns=pair.b, port=TCP_PORT + 1):
        r = pair.run(
            "a", "sockperf", "ping-pong", "--tcp", "-i", pair.b.ip, "-p", port,
            "-m", str(LAT_SIZE), "-t", str(seconds), "--full-rtt",
            check=False, timeout=seconds + 30,
        )  # fmt: skip
    return parse_sockperf(r.stdout + r.stderr)


def _bandwidth(
    benchmark: BenchmarkFixture,
    pair: VethPair,
    test: str,
    config: pytest.Config,
    setup: str,
    cpus: tuple[int, int] | None,
    busy_poll: bool = False,
) -> None:
    rounds, seconds, scale = _settings(config)
    per_size: dict[int, dict[str, list[float]]] = {s: {"tcp": [], "rdma": []} for s in SIZES}

    def one_round() -> None:
        for size in SIZES:
            per_size[size]["tcp"].append(tcp_bw(pair, size, seconds, cpus))
            per_size[size]["rdma"].append(rdma_bw(pair, test, size, _iterations(size, scale), cpus))

    benchmark.pedantic(one_round, rounds=rounds, iterations=1)
    bandwidth_vs_tcp(benchmark, test, per_size, "engine", "rdma", where=f"[{setup}] ")
    top = per_size[65536]
    benchmark.extra_info["setup"] = setup
    headline(
        benchmark,
        top["rdma"],
        top["tcp"],
        "MB/s at 64 KiB",
        "kernel TCP (iperf3 -l 65536), same pair, same round",
    )
    assert all(v > 0 for got in per_size.values() for v in got["rdma"] + got["tcp"])


@pytest.mark.benchmark(group="rdma-engine")
@pytest.mark.parametrize("test", TESTS)
def test_engine_bandwidth_vs_kernel_tcp(
    benchmark: BenchmarkFixture, pair: VethPair, test: str, request: pytest.FixtureRequest
) -> None:
    _bandwidth(benchmark, pair, test, request.config, "default", None)


@pytest.mark.benchmark(group="rdma-engine-jumbo")
@pytest.mark.parametrize("test", TESTS)
def test_engine_bandwidth_vs_kernel_tcp_jumbo(
    benchmark: BenchmarkFixture, jumbo_pair: VethPair, test: str, request: pytest.FixtureRequest
) -> None:
    setup, cpus = ("jumbo+tuned", CPUS) if TUNE else ("jumbo", None)
    _bandwidth(benchmark, jumbo_pair, test, request.config, setup, cpus)


@pytest.mark.benchmark(group="rdma-engine-jumbo-busy-poll")
@pytest.mark.parametrize("test", TESTS)
def test_engine_bandwidth_vs_kernel_tcp_jumbo_busy_poll(
    benchmark: BenchmarkFixture, jumbo_pair: VethPair, test: str, request: pytest.FixtureRequest
) -> None:
    setup, cpus = ("jumbo+tuned+busy_poll", CPUS) if TUNE else ("jumbo+busy_poll", None)
    _bandwidth(benchmark, jumbo_pair, test, request.config, setup, cpus, busy_poll=True)


ROCE_FRAME_OVERHEAD = 14 + 20 + 8 + 12 + 4
"""Bytes of a RoCEv2 packet around its payload when it has no extended header (an RDMA write's
middle packet): Ethernet, IPv4, UDP, BTH, ICRC."""


def _udp_frame(pair: VethPair, length: int) -> bytes:
    """A `length`-byte UDP/IPv4 frame from ``a`` to ``b``'s port 4791 (zero payload)."""
    return Template(
        dst_mac=pair.b.mac, src_mac=pair.a.mac, src_ip=pair.a.ip, dst_ip=pair.b.ip,
        src_port=4791, dst_port=4791, payload=bytes(length - 42),
    ).frame()  # fmt: skip


def xsk_ceiling(
    pair: VethPair, path_mtu: int, count: int, cpus: tuple[int, int] | None = None
) -> float:
    """Raw AF_XDP frames of the engines' largest RoCE frame at `path_mtu`, ``a`` to ``b``, fresh
    copies (see the module text); MB/s (10^6 B/s) received at ``b``, counting the path MTU of
    payload each frame would carry (as TCP's and the engine's figures count payload only, not
    headers). With `cpus`, the sending thread is pinned to the first and the receiving one to
    the second."""
    pin_a, pin_b = cpus if cpus is not None else (None, None)
    length = ROCE_FRAME_OVERHEAD + path_mtu
    split = length > 2048 - 256
    frame_size = 4096 if split else 2048
    ready = threading.Event()

    def receive() -> dict[str, float]:
        with (
            _pinned(pin_b),
            XdpSocket(
                pair.b.ifname, filter="udp dst port 4791", frame_size=frame_size, multi_buffer=split
            ) as rx,
        ):
            ready.set()
            return rx.rx_drop(duration=120, count=count * (2 if split else 1), idle=0.5)

    got = in_thread(pair, "b", receive, timeout=150)
    assert ready.wait(30), "the receiving socket did not open"
    with (
        pair.enter("a"),
        _pinned(pin_a),
        XdpSocket(pair.a.ifname, frame_size=frame_size, multi_buffer=split) as tx,
    ):
        sent = tx.tx_flood(_udp_frame(pair, length), count, batch=64, fresh=True)
    rx = got()
    assert sent["packets"] == count, sent
    # What arrived is the ceiling: a receiver that falls behind (threaded NAPI, KBYPASS_BENCH_
    # TUNE=1) loses frames at its full RX ring, as any receiver on this path would.
    assert rx["bytes"] >= 0.5 * count * length, (rx, count, length)
    return float(rx["bytes"]) * path_mtu / length / rx["elapsed"] / 1e6


@pytest.mark.benchmark(group="rdma-engine-ceiling")
@pytest.mark.parametrize("setup", ["default", "jumbo"])
def test_af_xdp_ceiling_vs_kernel_tcp(
    benchmark: BenchmarkFixture, setup: str, request: pytest.FixtureRequest
) -> None:
    """The copy-mode AF_XDP ceiling, kernel TCP and the engine's 64 KiB write, same pair, same
    round: the ceiling's ratio to TCP bounds the bandwidth goal; the engine's to the ceiling is
    how much of it the engine uses."""
    rounds, seconds, scale = _settings(request.config)
    pair = request.getfixturevalue("pair" if setup == "default" else "jumbo_pair")
    path_mtu = 1024 if setup == "default" else 4096
    # KBYPASS_BENCH_TUNE=1 tunes the jumbo pair (see the module text): all three pinned there.
    cpus = CPUS if TUNE and setup == "jumbo" else None
    got: dict[str, list[float]] = {"tcp": [], "ceiling": [], "engine": []}
    count = max(2_000, int(400_000 * scale * 1024 / path_mtu))

    def one_round() -> None:
        got["tcp"].append(tcp_bw(pair, 65536, seconds, cpus))
        got["ceiling"].append(xsk_ceiling(pair, path_mtu, count, cpus))
        got["engine"].append(rdma_bw(pair, "write", 65536, _iterations(65536, scale), cpus))

    benchmark.pedantic(one_round, rounds=rounds, iterations=1)
    head = f"[{setup}] path MTU {path_mtu}"
    compare(
        benchmark, "ceiling",
        Side("AF_XDP ceiling", "ceiling_mb_s", got["ceiling"]),
        Side("kernel TCP", "tcp_mb_s", got["tcp"]),
        head=f"{head}: ceiling vs TCP 64 KiB", unit="MB/s", fmt="7.1f",
    )  # fmt: skip
    compare(
        benchmark, "engine_of_ceiling",
        Side("engine write 64 KiB", "engine_mb_s", got["engine"]),
        Side("AF_XDP ceiling", "ceiling_mb_s", got["ceiling"]),
        head=f"{head}: engine vs ceiling", unit="MB/s", fmt="7.1f",
    )  # fmt: skip
    benchmark.extra_info["engine_vs_tcp_min_median_max"] = spread(ratios(got["engine"], got["tcp"]))
    benchmark.extra_info["setup"] = setup + ("+tuned" if cpus else "")
    headline(
        benchmark, got["ceiling"], got["tcp"], "MB/s in raw frames",
        "kernel TCP (iperf3 -l 65536), same pair, same round",
    )  # fmt: skip


@pytest.mark.benchmark(group="rdma-engine")
def test_engine_write_latency_vs_kernel_tcp(
    benchmark: BenchmarkFixture, pair: VethPair, request: pytest.FixtureRequest
) -> None:
    rounds, seconds, scale = _settings(request.config)
    tcp: list[dict[str, float]] = []
    eng: list[dict[str, float]] = []

    def one_round() -> None:
        tcp.append(tcp_rtt(pair, seconds))
        eng.append(rdma_rtt(pair, max(500, int(20_000 * scale))))

    benchmark.pedantic(one_round, rounds=rounds, iterations=1)
    rtt_vs_tcp(benchmark, eng, tcp, "engine write", "engine", where="")
    assert all(e["p50_us"] > 0 for e in eng) and all(t["p50_us"] > 0 for t in tcp)
