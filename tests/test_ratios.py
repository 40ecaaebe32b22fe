"""benches/_ratios.py: the same-round comparison the RDMA benches record and print."""

from __future__ import annotations

from typing import Any

import pytest

from _ratios import Side, bandwidth_vs_tcp, compare, headline, ratios, rtt_vs_tcp, spread


class FakeBenchmark:
    def __init__(self) -> None:
        self.extra_info: dict[str, Any] = {}


def test_spread_is_min_median_max_over_the_rounds() -> None:
    assert spread([3.0, 1.0, 2.0]) == [1.0, 2.0, 3.0]
    assert spread([4.0, 1.0, 3.0, 2.0]) == [1.0, 2.5, 4.0]  # an even count: the mean of the two
    assert spread([7.5]) == [7.5, 7.5, 7.5]


def test_spread_of_no_rounds_says_to_measure_one() -> None:
    with pytest.raises(ValueError, match="at least one round"):
        spread([])


def test_ratios_pair_the_rounds_in_order() -> None:
    # Round by round, not sorted: the fastest of ours over the fastest reference would say 2.0.
    assert ratios([10.0, 40.0, 9.0], [5.0, 20.0, 18.0]) == [2.0, 2.0, 0.5]
    with pytest.raises(ValueError):
        ratios([1.0, 2.0], [1.0])  # rounds missing on one side


def test_compare_records_both_spreads_and_the_ratios_spread_and_prints_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    b = FakeBenchmark()
    compare(
        b,
        "write_64",
        Side("engine", "write_64_rdma_mb_s", [300.0, 100.0, 200.0]),
        Side("kernel TCP", "write_64_tcp_mb_s", [100.0, 100.0, 50.0]),
        head="[default] write     64 B",
        unit="MB/s",
        fmt="9.1f",
    )
    assert b.extra_info == {
        "write_64_ratio_min_median_max": [1.0, 3.0, 4.0],  # rounds: 3.0, 1.0, 4.0
        "write_64_rdma_mb_s": [100.0, 200.0, 300.0],
        "write_64_tcp_mb_s": [50.0, 100.0, 100.0],
    }
    assert list(b.extra_info) == [
        "write_64_ratio_min_median_max",
        "write_64_rdma_mb_s",
        "write_64_tcp_mb_s",
    ]
    assert capsys.readouterr().out == (
        "\n[default] write     64 B: engine     200.0 MB/s, kernel TCP     100.0 MB/s;"
        " ratio min/median/max 1.00 / 3.00 / 4.00\n"
    )


def test_headline_is_the_median_rate_and_the_median_of_the_round_ratios() -> None:
    b = FakeBenchmark()
    headline(b, [10.0, 30.0, 20.0], [10.0, 5.0, 40.0], "µs RTT p50", "kernel TCP")
    # Ratios per round 1.0, 6.0, 0.5: their median, not median(ours) / median(reference) (2.0).
    assert b.extra_info == {
        "rate": 20.0,
        "unit": "µs RTT p50",
        "ratio": 1.0,
        "reference": "kernel TCP",
    }


def test_the_tcp_tables_name_their_keys_and_lines_as_the_rdma_benches_did(
    capsys: pytest.CaptureFixture[str],
) -> None:
    b = FakeBenchmark()
    per_size = {64: {"rxe": [2.0, 4.0], "tcp": [1.0, 1.0]}}
    bandwidth_vs_tcp(b, "read", per_size, "rxe", "rxe", where="in the VM (tcg), ")
    rounds = [{"p50_us": 4.0, "p99_us": 8.0, "p99.9_us": 9.0}] * 2
    tcp = [{"p50_us": 8.0, "p99_us": 8.0, "p99.9_us": 9.0}] * 2
    rtt_vs_tcp(b, rounds, tcp, "engine write", "engine", where="")
    assert b.extra_info["read_64_ratio_min_median_max"] == [2.0, 3.0, 4.0]
    assert b.extra_info["read_64_rxe_mb_s"] == [2.0, 3.0, 4.0]
    assert b.extra_info["p50_us_ratio_min_median_max"] == [0.5, 0.5, 0.5]
    assert b.extra_info["engine_rtt_p99.9_us"] == b.extra_info["tcp_rtt_p99.9_us"] == [9.0] * 3
    assert (b.extra_info["rate"], b.extra_info["ratio"]) == (4.0, 0.5)
    assert b.extra_info["reference"] == "kernel TCP (sockperf ping-pong --tcp -m 64), same round"
    lines = capsys.readouterr().out.split("\n")
    assert [x for x in lines if x] == [
        "in the VM (tcg), read     64 B: rxe       3.0 MB/s, kernel TCP       1.0 MB/s;"
        " ratio min/median/max 2.00 / 3.00 / 4.00",
        "RTT p50 at 64 B: engine write 4.0 µs, kernel TCP 8.0 µs; ratio min/median/max"
        " 0.50 / 0.50 / 0.50",
        "RTT p99 at 64 B: engine write 8.0 µs, kernel TCP 8.0 µs; ratio min/median/max"
        " 1.00 / 1.00 / 1.00",
        "RTT p99.9 at 64 B: engine write 9.0 µs, kernel TCP 9.0 µs; ratio min/median/max"
        " 1.00 / 1.00 / 1.00",
    ]
