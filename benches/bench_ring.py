"""kbypass.Ring from Python vs the standard library, ratios measured side by side in one run.

Groups:
  ring-single          one item enqueue+dequeue: Ring vs collections.deque, queue.SimpleQueue
  ring-bulk-{8,32,256} a batch of N enqueued then dequeued: Ring with NumPy uint64 arrays vs
                       deque.extend + popleft, SimpleQueue put/get per item
  ring-xproc           items/s from a producer process to this one: shared Ring with bulk
                       NumPy transfers vs multiprocessing.Queue (per item) and faster-fifo
                       (put_many/get_many, if installed)

Every benchmark stores ``extra_info``: ``rate`` (items/s), ``unit``, ``reference`` (what it is
compared with), ``reference_rate`` and ``ratio`` = rate / reference_rate, both rates timed the
same way in the same test. Run with ``python -m pytest benches/bench_ring.py --benchmark-enable``
for pytest-benchmark's tables; by default (``--benchmark-disable``) each runs once, quickly.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
import queue
import subprocess
import sys
import time
import uuid
from typing import Any, Callable

import numpy as np
import pytest

from kbypass import Ring

U64 = np.uint64


def _rate(
    fn: Callable[[], Any], items_per_call: int, rounds: int = 3, min_time: float = 0.02
) -> float:
    """Best-of-``rounds`` items/s of ``fn``, each round at least ``min_time`` seconds long."""
    best = 0.0
    for _ in range(rounds):
        calls = 0
        t0 = time.perf_counter()
        while True:
            fn()
            calls += 1
            dt = time.perf_counter() - t0
            if dt >= min_time:
                break
        best = max(best, calls * items_per_call / dt)
    return best


def _record(benchmark: Any, rate: float, reference: str, reference_rate: float) -> None:
    benchmark.extra_info.update(
        rate=float(rate),
        unit="items/s",
        reference=reference,
        reference_rate=float(reference_rate),
        ratio=float(rate / reference_rate),
    )


# ---------------------------------------------------------------- one process


def _single_cases() -> dict[str, Callable[[], Any]]:
    ring = Ring(1024)
    d: collections.deque[int] = collections.deque()
    sq: queue.SimpleQueue[int] = queue.SimpleQueue()

    def ring_op() -> None:
        ring.enqueue(1)
        ring.dequeue()

    def deque_op() -> None:
        d.append(1)
        d.popleft()

    def sq_op() -> None:
        sq.put(1)
        sq.get()

    return {"Ring": ring_op, "collections.deque": deque_op, "queue.SimpleQueue": sq_op}


@pytest.mark.benchmark(group="ring-single")
@pytest.mark.parametrize("subject", ["Ring", "collections.deque", "queue.SimpleQueue"])
def test_single(benchmark: Any, subject: str) -> None:
    cases = _single_cases()
    benchmark(cases[subject])
    # Reference for Ring is SimpleQueue (the thread-safe queue); for the others, themselves
    # against the Ring so every row has a same-run ratio.
    ref = "queue.SimpleQueue" if subject == "Ring" else "Ring"
    _record(benchmark, _rate(cases[subject], 1), ref, _rate(cases[ref], 1))


def _bulk_cases(n: int) -> dict[str, Callable[[], Any]]:
    ring = Ring(1024)
    items = np.arange(n, dtype=U64)
    as_list = items.tolist()
    d: collections.deque[int] = collections.deque()
    sq: queue.SimpleQueue[int] = queue.SimpleQueue()

    def ring_op() -> None:
        ring.enqueue_bulk(items)
        ring.dequeue_bulk(n)

    def deque_op() -> None:
        d.extend(as_list)
        for _ in range(n):
            d.popleft()

    def sq_op() -> None:
        for x in as_list:
            sq.put(x)
        for _ in range(n):
            sq.get()

    return {"Ring": ring_op, "collections.deque": deque_op, "queue.SimpleQueue": sq_op}


@pytest.mark.parametrize("n", [8, 32, 256])
@pytest.mark.parametrize(
    ("subject", "reference"),
    [
        ("Ring", "collections.deque"),
        ("Ring", "queue.SimpleQueue"),
        ("collections.deque", "Ring"),
        ("queue.SimpleQueue", "Ring"),
    ],
)
def test_bulk(benchmark: Any, n: int, subject: str, reference: str) -> None:
    benchmark.group = f"ring-bulk-{n}"
    cases = _bulk_cases(n)
    benchmark(cases[subject])
    _record(benchmark, _rate(cases[subject], n), reference, _rate(cases[reference], n))


# ---------------------------------------------------------------- two processes

RING_ITEMS = 4_000_000
RING_CHUNK = 8192
MPQ_ITEMS = 20_000
FF_ITEMS = 200_000
FF_CHUNK = 1000

RING_PRODUCER = """
import sys, numpy as np
from kbypass import Ring
name, n, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
batch = np.arange(chunk, dtype=np.uint64)
with Ring.attach(name) as r, Ring.attach(name + "-go") as go:
    go.get(timeout=60)
    for i in range(0, n, chunk):
        r.put_bulk(batch[: min(chunk, n - i)], timeout=60)
"""


def _ring_xproc_rate() -> float:
    """Items/s through a shared SPSC ring, producer in another process, bulk NumPy both sides."""
    name = f"bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with Ring.create_shared(name, 65536) as ring, Ring.create_shared(name + "-go", 2) as go:
        child = subprocess.Popen(
            [sys.executable, "-c", RING_PRODUCER, name, str(RING_ITEMS), str(RING_CHUNK)]
        )
        try:
            while ring.stats()["attached"] < 2 or go.stats()["attached"] < 2:
                time.sleep(0.001)
            got = 0
            t0 = time.perf_counter()
            go.put(1, timeout=10)
            while got < RING_ITEMS:
                got += len(ring.get_burst(65536, timeout=30))
            dt = time.perf_counter() - t0
            assert child.wait(timeout=60) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    return RING_ITEMS / dt


def _mpq_producer(q: Any, go: Any, n: int) -> None:
    go.wait()
    for i in range(n):
        q.put(i)


def _mpq_rate() -> float:
    """Items/s through multiprocessing.Queue, one put/get per item (its normal use)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    go = ctx.Event()
    p = ctx.Process(target=_mpq_producer, args=(q, go, MPQ_ITEMS))
    p.start()
    try:
        t0 = time.perf_counter()
        go.set()
        for _ in range(MPQ_ITEMS):
            q.get(timeout=30)
        dt = time.perf_counter() - t0
        p.join(timeout=30)
    finally:
        if p.is_alive():
            p.kill()
            p.join()
    return MPQ_ITEMS / dt


def _ff_producer(q: Any, go: Any, n: int) -> None:
    go.wait()
    for i in range(0, n, FF_CHUNK):
        q.put_many(list(range(i, min(i + FF_CHUNK, n))), timeout=30)


def _ff_rate() -> float:
    """Items/s through faster_fifo.Queue with put_many/get_many (its batched API)."""
    import faster_fifo

    ctx = mp.get_context("spawn")
    q = faster_fifo.Queue(max_size_bytes=8 * 1024 * 1024)
    go = ctx.Event()
    p = ctx.Process(target=_ff_producer, args=(q, go, FF_ITEMS))
    p.start()
    try:
        got = 0
        t0 = time.perf_counter()
        go.set()
        while got < FF_ITEMS:
            got += len(q.get_many(timeout=30, max_messages_to_get=FF_CHUNK * 8))
        dt = time.perf_counter() - t0
        p.join(timeout=30)
    finally:
        if p.is_alive():
            p.kill()
            p.join()
    return FF_ITEMS / dt


@pytest.fixture(scope="module")
def mpq_rate() -> float:
    return _mpq_rate()


@pytest.mark.benchmark(group="ring-xproc")
def test_xproc_ring_vs_mp_queue(benchmark: Any, mpq_rate: float) -> None:
    rates: list[float] = []
    benchmark.pedantic(lambda: rates.append(_ring_xproc_rate()), rounds=2, iterations=1)
    _record(benchmark, max(rates), "multiprocessing.Queue", mpq_rate)
    benchmark.extra_info["goal_ratio"] = 100.0


@pytest.mark.benchmark(group="ring-xproc")
def test_xproc_mp_queue(benchmark: Any, mpq_rate: float) -> None:
    rates: list[float] = []
    benchmark.pedantic(lambda: rates.append(_mpq_rate()), rounds=1, iterations=1)
    _record(benchmark, max(rates), "multiprocessing.Queue", mpq_rate)


@pytest.mark.benchmark(group="ring-xproc")
def test_xproc_ring_vs_faster_fifo(benchmark: Any) -> None:
    pytest.importorskip("faster_fifo", reason="optional: faster-fifo is not installed")
    ff = _ff_rate()
    rates: list[float] = []
    benchmark.pedantic(lambda: rates.append(_ring_xproc_rate()), rounds=2, iterations=1)
    _record(benchmark, max(rates), "faster_fifo.Queue", ff)
