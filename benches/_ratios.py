"""Same-round comparisons: a path measured next to its reference, round by round.

The benches that put a path (the user-space RDMA engine, rxe) next to a reference (kernel TCP)
measure both in every round and take the ratio of the two round by round, so a machine that slows
down between rounds moves both sides of a ratio alike. What they keep of the rounds is the same:

- :func:`spread`: ``[min, median, max]`` of a figure over the rounds;
- :func:`ratios`: ours over the reference's, round by round;
- :func:`compare`: both sides' spreads and the ratios' spread in ``benchmark.extra_info``, and
  one printed line: the medians, then the ratio as ``min / median / max``;
- :func:`headline`: the ``rate``, ``unit``, ``ratio`` and ``reference`` of conftest.py's summary
  table;
- :func:`bandwidth_vs_tcp` and :func:`rtt_vs_tcp`: those for the RDMA benches' two tables
  against kernel TCP, MB/s per message size and round-trip percentiles at 64 B.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class Benchmark(Protocol):
    """What is used of pytest-benchmark's ``benchmark`` fixture: its ``extra_info`` dict."""

    extra_info: dict[str, Any]


def spread(values: Sequence[float]) -> list[float]:
    """Return ``[min, median, max]`` of `values`, one value per round."""
    if not values:
        raise ValueError("no rounds to spread: measure at least one round")
    return [min(values), statistics.median(values), max(values)]


def ratios(ours: Sequence[float], reference: Sequence[float]) -> list[float]:
    """Return ``ours[i] / reference[i]`` for each round ``i`` (both lists hold the same rounds,
    in order; ValueError if their lengths differ)."""
    return [o / r for o, r in zip(ours, reference, strict=True)]


@dataclass(frozen=True)
class Side:
    """One side of a comparison: its name as printed (``"engine"``, ``"kernel TCP"``), the
    ``extra_info`` key of its spread and its figure per round."""

    name: str
    key: str
    values: Sequence[float]


def compare(
    benchmark: Benchmark, name: str, ours: Side, reference: Side, head: str, unit: str, fmt: str
) -> None:
    """Record `ours` next to `reference` and print the comparison.

    ``benchmark.extra_info`` gets ``<name>_ratio_min_median_max`` (the spread of the round-by-
    round ratios), then each side's spread under its key. The printed line (after an empty one)
    is ``<head>: <ours> <median> <unit>, <reference> <median> <unit>; ratio min/median/max
    <min> / <median> / <max>``, the medians formatted with `fmt` (e.g. ``"9.1f"``), the ratios
    with two decimals.
    """
    r = ratios(ours.values, reference.values)
    benchmark.extra_info.update(
        {
            f"{name}_ratio_min_median_max": spread(r),
            ours.key: spread(ours.values),
            reference.key: spread(reference.values),
        }
    )
    medians = ", ".join(
        f"{side.name} {statistics.median(side.values):{fmt}} {unit}" for side in (ours, reference)
    )
    print(f"\n{head}: {medians}; ratio min/median/max " + " / ".join(f"{x:.2f}" for x in spread(r)))


def headline(
    benchmark: Benchmark,
    ours: Sequence[float],
    reference: Sequence[float],
    unit: str,
    reference_name: str,
) -> None:
    """Store the summary table's figures: ``rate`` (the median of `ours`), ``unit``, ``ratio``
    (the median of the round-by-round ratios to `reference`) and ``reference`` (what it is)."""
    benchmark.extra_info["rate"] = statistics.median(ours)
    benchmark.extra_info["unit"] = unit
    benchmark.extra_info["ratio"] = statistics.median(ratios(ours, reference))
    benchmark.extra_info["reference"] = reference_name


PERCENTILES = ("p50_us", "p99_us", "p99.9_us")
"""The round-trip percentiles the latency benches measure, in µs."""

TCP_RTT = "kernel TCP (sockperf ping-pong --tcp -m 64), same round"
"""The latency benches' reference."""


def bandwidth_vs_tcp(
    benchmark: Benchmark,
    test: str,
    per_size: Mapping[int, Mapping[str, Sequence[float]]],
    ours: str,
    key: str,
    where: str,
) -> None:
    """:func:`compare` MB/s per message size: ``per_size[size][key]`` (printed as `ours`) next
    to ``per_size[size]["tcp"]`` (kernel TCP), recorded as ``<test>_<size>_ratio_min_median_max``,
    ``<test>_<size>_<key>_mb_s`` and ``<test>_<size>_tcp_mb_s``; each line starts with `where`."""
    for size, got in per_size.items():
        compare(
            benchmark,
            f"{test}_{size}",
            Side(ours, f"{test}_{size}_{key}_mb_s", got[key]),
            Side("kernel TCP", f"{test}_{size}_tcp_mb_s", got["tcp"]),
            head=f"{where}{test} {size:>6} B",
            unit="MB/s",
            fmt="9.1f",
        )


def rtt_vs_tcp(
    benchmark: Benchmark,
    rounds: Sequence[Mapping[str, float]],
    tcp: Sequence[Mapping[str, float]],
    ours: str,
    key: str,
    where: str,
) -> None:
    """:func:`compare` each of :data:`PERCENTILES` (one mapping per round) of `ours` next to
    kernel TCP's at 64 B, recorded as ``<pct>_ratio_min_median_max``, ``<key>_rtt_<pct>`` and
    ``tcp_rtt_<pct>``, each line starting with `where`; then the :func:`headline` of the
    p50s."""
    for pct in PERCENTILES:
        compare(
            benchmark,
            pct,
            Side(ours, f"{key}_rtt_{pct}", [r[pct] for r in rounds]),
            Side("kernel TCP", f"tcp_rtt_{pct}", [t[pct] for t in tcp]),
            head=f"{where}RTT {pct[:-3]} at 64 B",
            unit="µs",
            fmt=".1f",
        )
    p50 = PERCENTILES[0]
    headline(benchmark, [r[p50] for r in rounds], [t[p50] for t in tcp], "µs RTT p50", TCP_RTT)
