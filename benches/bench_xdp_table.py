"""Cost of the XdpTable program per frame, in the kernel (BPF_PROG_TEST_RUN with repeat), and
what a Pipeline gets with the table as its XDP program.

Each case measures, in the same run and on the same frame, the table, the filter program
built from the same rules (where the filter grammar can say it) and the 6-instruction default
program; the reported ratio is the table's rate to the default program's, and ``filter_ns``
is the filter program's cost for comparison. The table pays for lookups (one array lookup
per frame for the class, one LPM trie lookup per field its rules use, one hash lookup when
blocks exist) where the filter program pays compares per rule: it costs more for a few rules
and stays flat as rules are added.

``test_pipeline_with_table_vs_own_program`` runs a Pipeline (the NumPy port filter of
``bench_processors.py`` as handler) on a veth pair flooded by the live-frames generator,
alternately with the table as its program (``table=``: one "allow" entry, and 0 or 1000
blocks of other sources) and with the port's own filter program for the same rule. Each round
measures both for ``KBYPASS_BENCH_SECONDS``; the ratio (table / own program) is reported as
the median of the rounds with its min and max (``KBYPASS_BENCH_ROUNDS``, at least 3).

    python -m pytest benches/bench_xdp_table.py --benchmark-enable
"""

from __future__ import annotations

import os
import statistics
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

sys.path.insert(0, str(Path(__file__).parent))

import kbypass
from _ratios import spread
from bench_path import GEN_CPU, ROUNDS, RX_CPU, SECONDS
from kbypass import Verdict, XdpProgram, XdpTable
from kbypass.testing import TrafficGenerator, VethPair

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CAP_BPF) to load programs")

REPEAT = 200_000


def udp4(src: bytes, dport: int) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 36, 1, 0, 64, 17, 0, src, bytes([198, 18, 0, 2]))
    eth = bytes.fromhex("020000000002020000000001") + b"\x08\x00"
    return eth + ip + struct.pack("!HHHH", 40000, dport, 16, 0) + bytes(8)


def udp6(dport: int) -> bytes:
    udp = struct.pack("!HHHH", 40000, dport, 16, 0) + bytes(8)
    ip6 = struct.pack("!IHBB", 0x6000_0000, len(udp), 17, 64)
    ip6 += bytes.fromhex("20010db8000000000000000000000001")
    ip6 += bytes.fromhex("20010db8000000000000000000000002")
    return bytes.fromhex("020000000002020000000001") + b"\x86\xdd" + ip6 + udp


A = bytes([198, 18, 0, 1])
MANY = [f"udp dst port {1000 + i}" for i in range(64)] + [
    f"ip6 src 2001:db8:{i:x}::/48" for i in range(64)
]


@dataclass(frozen=True)
class Case:
    entries: list[tuple[str, str]]  # (filter, action) in order
    frame: bytes
    verdict: Verdict
    filter: str | None  # the same decision as a filter program, when there is one
    setup: Callable[[XdpTable], None] | None = None


def _blocks(t: XdpTable) -> None:
    for i in range(1000):
        t.block(f"10.0.{i // 256}.{i % 256}", seconds=3600)


def _blocked(t: XdpTable) -> None:
    _blocks(t)
    t.block("198.18.0.1", seconds=3600)


def _expiring(t: XdpTable) -> None:
    t.add("tcp dst port 1", "drop", expire=3600)


CASES = {
    "one_entry": Case(
        [("udp dst port 9000-9010", "allow")],
        udp4(A, 9005),
        Verdict.REDIRECT,
        "udp dst port 9000-9010",
    ),
    "prefix_and_ports": Case(
        [("src 198.18.0.0/15 and udp dst port 9000-9010", "allow")],
        udp4(A, 9005),
        Verdict.REDIRECT,
        "src 198.18.0.0/15 and udp dst port 9000-9010",
    ),
    "128_rules_no_match": Case(
        [(f, "allow") for f in MANY], udp4(A, 9005), Verdict.PASS, " or ".join(MANY)
    ),
    "128_rules_ipv6_prefix": Case(
        [(f, "allow") for f in MANY], udp6(9005), Verdict.REDIRECT, " or ".join(MANY)
    ),
    "1000_blocks_not_this_source": Case(
        [("udp dst port 9000-9010", "allow")],
        udp4(A, 9005),
        Verdict.REDIRECT,
        "udp dst port 9000-9010",
        _blocks,
    ),
    "blocked_source": Case(
        [("udp dst port 9000-9010", "allow")], udp4(A, 9005), Verdict.DROP, None, _blocked
    ),
    "an_entry_expires": Case(
        [("udp dst port 9000-9010", "allow")],
        udp4(A, 9005),
        Verdict.REDIRECT,
        "udp dst port 9000-9010",
        _expiring,
    ),
}


def ns_per_frame(run: Callable[[bytes, int], float], frame: bytes) -> float:
    # The kernel's own per-run average; the best of a few calls.
    return min(run(frame, REPEAT) for _ in range(3))


@pytest.mark.benchmark(group="xdp-table")
@pytest.mark.parametrize("name", list(CASES))
def test_table_program_cost(benchmark: BenchmarkFixture, name: str) -> None:
    case = CASES[name]
    reference = XdpProgram()
    with XdpTable(max_rules=256) as table:
        table.add_many(case.entries)
        if case.setup:
            case.setup(table)
        assert table.test_run(case.frame) is case.verdict
        ref_ns = ns_per_frame(reference.run_time_ns, case.frame)
        filter_ns = None
        if case.filter is not None:
            filt = XdpProgram(filter=case.filter)
            filter_ns = ns_per_frame(filt.run_time_ns, case.frame)
        ns = benchmark(ns_per_frame, table.run_time_ns, case.frame)
        rate, ref_rate = 1e9 / ns, 1e9 / ref_ns
        benchmark.extra_info.update(
            rate=rate,
            unit="frames/s",
            reference=f"default 6-insn program {ref_rate / 1e6:.1f} M/s",
            ratio=rate / ref_rate,
            ns_per_frame=ns,
            reference_ns_per_frame=ref_ns,
            filter_ns=filter_ns,
            insns=table.insn_count,
        )
        assert ns > 0 and ref_ns > 0


PIPELINE_ROUNDS = max(3, ROUNDS)


def _pipeline_pps(pair: VethPair, handler: Any, **program: Any) -> float:
    """A Pipeline on b's queue 0 for SECONDS; its packets/s."""
    with pair.enter("b"):
        p = kbypass.Pipeline(
            pair.b.ifname,
            handler,
            queues=[0],
            mode="copy",
            frames=4096,
            cpus=[RX_CPU],
            progress=False,
            **program,
        )
    with p:
        t = p.run(duration=SECONDS)
    assert t["rx"] > 0 and t["handler_errors"] == 0, t
    return float(t["pps"])


@pytest.mark.benchmark(group="xdp-table-pipeline")
@pytest.mark.parametrize("blocks", [0, 1000])
def test_pipeline_with_table_vs_own_program(benchmark: BenchmarkFixture, blocks: int) -> None:
    counted = {"port": 0}

    def handler(batch: kbypass.Batch) -> None:
        counted["port"] += int(np.count_nonzero(batch.headers["dst_port"] == 9000))
        batch.verdicts[:] = kbypass.DROP

    own: list[float] = []
    table_pps: list[float] = []
    with VethPair() as pair, XdpTable(max_rules=256) as table:
        allow = table.add("udp dst port 9000", "allow")
        for i in range(blocks):
            table.block(f"10.0.{i // 256}.{i % 256}", seconds=3600)
        gen = TrafficGenerator(pair, size=60, cpu=GEN_CPU)

        def measure() -> None:
            for _ in range(PIPELINE_ROUNDS):
                own.append(_pipeline_pps(pair, handler, filter="udp dst port 9000"))
                table_pps.append(_pipeline_pps(pair, handler, table=table))

        gen.start()
        try:
            benchmark.pedantic(measure, rounds=1, iterations=1)
        finally:
            gen.stop()
        assert table.stats()[allow][0] > 0, "the table let the flow through"
    ratios = [t / o for t, o in zip(table_pps, own) if o > 0]
    assert ratios and counted["port"] > 0
    ratio_min, ratio, ratio_max = spread(ratios)
    benchmark.extra_info.update(
        rate=statistics.median(table_pps),
        unit="packets/s",
        reference=f"port's own filter program {statistics.median(own) / 1e6:.2f} M/s",
        ratio=ratio,
        ratio_min=ratio_min,
        ratio_max=ratio_max,
        own_pps=own,
        table_pps=table_pps,
        blocks=blocks,
        seconds=SECONDS,
        rounds=PIPELINE_ROUNDS,
    )
