"""Hugepages vs 4 KiB pages: random 8-byte reads over a large region, ns per access by tier.

The reads run in Rust (``HugeRegion.random_reads``: a chain of dependent loads at indices from
a fixed-seed xorshift, so each costs a full random access including its TLB miss and page
walk). Every tier is compared with a 4 KiB-page region of the same size measured in the same
run. As root the regions are 1 GiB and the hugetlb pages are reserved for the run (one 1 GiB
page, 512 x 2 MiB pages) and given back afterwards; without root only THP and 4 KiB pages are
measured, on 256 MiB regions.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _privileges import hugepages
from kbypass import HugeRegion

ROOT = os.geteuid() == 0
SIZE = (1 << 30) if ROOT else (256 << 20)
READS = 1_000_000
ROUNDS = 4
TIERS = {"1g": 1024 * 1024, "2m": 2048}


def ns_per_access(region: HugeRegion) -> float:
    """Median ns per access over ROUNDS runs of READS reads."""
    return statistics.median(region.random_reads(READS) for _ in range(ROUNDS)) / READS


def side_by_side(region: HugeRegion, reference: HugeRegion) -> tuple[float, float]:
    """ns per access of ``region`` and ``reference``, measured alternately so both see the
    same machine load (the machine is shared; absolute numbers drift, ratios much less)."""
    for r in (region, reference):
        r.random_reads(READS // 4)  # warm-up: same cache and TLB history for both
    ours: list[int] = []
    ref: list[int] = []
    for i in range(ROUNDS):
        # Alternate which goes first, so neither always runs right after the other.
        pair = ((region, ours), (reference, ref))
        for r, out in pair if i % 2 == 0 else pair[::-1]:
            out.append(r.random_reads(READS))
    return statistics.median(ours) / READS, statistics.median(ref) / READS


@pytest.fixture(scope="module")
def small_region() -> Iterator[HugeRegion]:
    """The 4 KiB-page reference region, the same size as the measured one."""
    r = HugeRegion(SIZE, hugepages="4k", lock=ROOT)
    yield r
    r.close()


@pytest.fixture
def region(request: pytest.FixtureRequest) -> Iterator[HugeRegion]:
    tier: str = request.param
    if tier in TIERS:
        if not ROOT:
            pytest.skip("needs root to reserve hugetlb pages for the benchmark")
        page_kb = TIERS[tier]
        with hugepages(page_kb, SIZE // (page_kb * 1024)) as ok:
            if not ok:
                if tier == "1g":
                    pytest.skip("optional: the kernel found no contiguous free 1 GiB for a page")
                pytest.fail(f"could not reserve {SIZE >> 20} MiB of {tier} hugepages")
            r = HugeRegion(SIZE, hugepages=tier, lock=ROOT)
            yield r
            r.close()
        return
    if tier == "thp" and "[never]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text(
        encoding="ascii"
    ):
        pytest.skip("optional: transparent hugepages are disabled on this machine")
    r = HugeRegion(SIZE, hugepages=tier, lock=ROOT)
    yield r
    r.close()


@pytest.mark.benchmark(group="memory: random 8-byte reads")
@pytest.mark.parametrize("region", ["1g", "2m", "thp", "4k"], indirect=True)
def test_random_reads(benchmark: Any, region: HugeRegion, small_region: HugeRegion) -> None:
    ns, small_ns = side_by_side(region, small_region)
    benchmark.pedantic(region.random_reads, args=(READS,), rounds=1, iterations=1)
    assert ns > 0 and small_ns > 0
    benchmark.extra_info.update(
        {
            "rate": round(ns, 2),
            "unit": "ns/access",
            "reference": "4k pages, same size, same run",
            "reference_rate": round(small_ns, 2),
            "ratio": round(ns / small_ns, 3),
            "tier": region.tier,
            "region_bytes": region.size,
            "huge_bytes": region.huge_bytes,
            "reads": READS,
        }
    )
