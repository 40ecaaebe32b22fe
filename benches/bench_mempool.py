"""Mempool get/put throughput: Rust with a per-thread cache, and Python in bulk."""

from __future__ import annotations

import time

import numpy as np
import pytest

from kbypass import Mempool

ROUNDS = 200_000
BULK = 32


@pytest.mark.benchmark(group="mempool")
def test_mempool_rust_cache_bulk32(benchmark) -> None:
    """Objects/s through a cache in Rust (goal ≥ 100 M/s on one core), vs the pool without cache."""
    pool = Mempool(8192, 2048, hugepages="auto")
    # reference: the same cycle with no cache (every get/put goes to the MPMC ring)
    ref_ns = pool.bench_cycle(ROUNDS, BULK, 0)
    ns = benchmark.pedantic(pool.bench_cycle, args=(ROUNDS, BULK, 512), rounds=5, iterations=1)
    rate = 2 * ROUNDS * BULK / (ns / 1e9)  # each round gets and puts BULK objects
    ref_rate = 2 * ROUNDS * BULK / (ref_ns / 1e9)
    benchmark.extra_info.update(
        rate=rate,
        unit="objects/s",
        reference="same pool, no per-thread cache (ring only)",
        reference_rate=ref_rate,
        ratio=rate / ref_rate,
    )
    assert pool.in_use == 0


@pytest.mark.parametrize("bulk", [32, 256])
@pytest.mark.benchmark(group="mempool")
def test_mempool_python_bulk(benchmark, bulk: int) -> None:
    """Objects/s for get(bulk)+put from Python, vs a Python list used as a free list."""
    pool = Mempool(8192, 2048, hugepages="never")
    n = 640_000 // bulk

    def kbypass_cycle() -> None:
        for _ in range(n):
            pool.put(pool.get(bulk))

    free = list(range(8192))

    def list_cycle() -> None:
        for _ in range(n):
            taken = [free.pop() for _ in range(bulk)]
            free.extend(taken)

    t0 = time.perf_counter()
    list_cycle()
    ref = time.perf_counter() - t0
    benchmark.pedantic(kbypass_cycle, rounds=3, iterations=1)
    t0 = time.perf_counter()
    kbypass_cycle()
    took = time.perf_counter() - t0
    rate = 2 * n * bulk / took
    benchmark.extra_info.update(
        rate=rate,
        unit="objects/s",
        reference="Python list as a free list (pop/extend)",
        reference_rate=2 * n * bulk / ref,
        ratio=ref / took,
    )
    assert pool.in_use == 0 and np.all(pool.get(1) >= 0)
