"""Soak: shared rings whose producers are SIGKILLed at random, beside a Pipeline under traffic.

Run it as root (the Pipeline half needs a veth bench)::

    python -m kbypass.testing.soak --seconds 600

**Rings.** ``producers`` processes feed one shared MPMC ring with numbered items (the
incarnation in the top bits, a sequence number below) in bulks of random size, and the soak
consumes them. Every few milliseconds it SIGKILLs a random producer and starts a new one. Before
each bulk a producer writes its size (its *intent*) to a small shared table and after the call
returns the new total (its *ack*). A killed producer's last bulk was either enqueued or not (a
claim cut short by the kill is rolled back by the next caller and counted), so once everything
is drained each incarnation must have delivered exactly ``ack`` or ``ack + intent`` items, in
order, with no gap and no duplicate — while the survivors never stopped working.

**Pipeline.** A ``Pipeline`` on a veth pair takes XDP live-frames traffic for the whole soak,
dropping most frames, sending some back and keeping some (released later). At the end every
frame the generator sent is either counted by the pipeline or by the kernel as dropped at the
socket, and the UMEM's frames are all accounted for.

:func:`run` returns a :class:`SoakReport`; ``report.ok`` is true when nothing was lost,
duplicated, reordered or left unaccounted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from kbypass import Ring

__all__ = ["SoakReport", "run"]

_SEQ_BITS = 40
_MAX_INCARNATIONS = 1 << 16

_PRODUCER = """
import sys, numpy as np
from kbypass import Ring
name, table, inc, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
marks = np.memmap(table, dtype=np.uint64, mode="r+", shape=({n}, 2))
rng = np.random.default_rng(seed)
r = Ring.attach(name)
seq = 0
print("ready", flush=True)
while True:
    # Mostly small bulks, sometimes large ones (long claims: where a kill does harm).
    b = int(rng.integers(1, 64)) if rng.random() < 0.9 else int(rng.integers(1024, 8192))
    marks[inc, 1] = b                      # intent
    r.put_bulk(np.uint64(inc << {bits}) | np.arange(seq, seq + b, dtype=np.uint64), timeout=None)
    seq += b
    marks[inc, 0] = seq                    # ack
"""


@dataclasses.dataclass
class SoakReport:
    """What a soak did and found."""

    seconds: float
    #: Items delivered through the shared ring.
    ring_items: int = 0
    #: Producer processes started / SIGKILLed.
    incarnations: int = 0
    killed: int = 0
    #: Killed producers whose last bulk was enqueued before the kill (ack + intent) or not (ack).
    last_bulk_delivered: int = 0
    last_bulk_lost: int = 0
    #: The ring's own counters of dead producers' claims resolved and slots rolled back.
    recovered: int = 0
    rolled_back: int = 0
    #: Pipeline: frames the generator sent, the pipeline received, the kernel dropped at the
    #: socket; the verdicts; the accounting check.
    offered: int = 0
    pipeline_rx: int = 0
    kernel_dropped: int = 0
    verdicts: dict[str, int] = dataclasses.field(default_factory=dict)
    accounting: dict[str, Any] = dataclasses.field(default_factory=dict)
    errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing was lost, duplicated, reordered or unaccounted for."""
        return not self.errors

    def summary(self) -> str:
        """Return a few lines for a terminal."""
        lines = [
            f"soak of {self.seconds:.0f} s: {'OK' if self.ok else 'FAILED'}",
            f"ring: {self.ring_items:,} items from {self.incarnations} producer processes, "
            f"{self.killed} SIGKILLed (last bulk delivered {self.last_bulk_delivered}, rolled back "
            f"{self.last_bulk_lost}); the ring resolved {self.recovered} dead claims "
            f"({self.rolled_back:,} slots rolled back)",
        ]
        if self.offered:
            lines.append(
                f"pipeline: {self.offered:,} frames offered = {self.pipeline_rx:,} received + "
                f"{self.kernel_dropped:,} dropped by the kernel at the socket; verdicts "
                f"{self.verdicts}; accounting balanced={self.accounting.get('balanced')}"
            )
        lines += [f"error: {e}" for e in self.errors[:20]]
        return "\n".join(lines)


class _Ledger:
    """What the consumer saw, per producer incarnation: the next sequence number expected."""

    def __init__(self) -> None:
        self.next: dict[int, int] = {}
        self.items = 0
        self.errors: list[str] = []

    def take(self, items: np.ndarray) -> None:
        incs = (items >> np.uint64(_SEQ_BITS)).astype(np.int64)
        seqs = (items & np.uint64((1 << _SEQ_BITS) - 1)).astype(np.int64)
        for inc in np.unique(incs):
            mine = seqs[incs == inc]
            start = self.next.get(int(inc), 0)
            want = np.arange(start, start + len(mine))
            if not np.array_equal(mine, want):
                bad = int(np.argmax(mine != want))
                self.errors.append(
                    f"producer {int(inc)}: got seq {int(mine[bad])} where {int(want[bad])} was due "
                    "(a lost, duplicated or reordered item)"
                )
            self.next[int(inc)] = start + len(mine)
        self.items += len(items)


def _ring_half(
    seconds: float,
    producers: int,
    kill_every: tuple[float, float],
    report: SoakReport,
    log: Callable[[str], None],
) -> None:
    name = f"soak-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    table_path = f"/dev/shm/kbypass.soak.{name}"
    marks = np.memmap(table_path, dtype=np.uint64, mode="w+", shape=(_MAX_INCARNATIONS, 2))
    ring = Ring.create_shared(name, 1 << 14, mode="mpmc")
    ledger = _Ledger()
    done = threading.Event()
    live: dict[int, subprocess.Popen[bytes]] = {}
    ended: list[int] = []

    def consume() -> None:
        while not done.is_set() or len(ring):
            try:
                ledger.take(ring.get_burst(4096, timeout=0.1))
            except TimeoutError:
                continue

    def spawn() -> None:
        inc = report.incarnations + 1
        report.incarnations = inc
        code = _PRODUCER.format(n=_MAX_INCARNATIONS, bits=_SEQ_BITS)
        p = subprocess.Popen(
            [sys.executable, "-c", code, name, table_path, str(inc), str(random.getrandbits(32))],
            stdout=subprocess.PIPE,
        )
        assert p.stdout is not None
        if p.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"producer {inc} did not start (exit {p.wait()})")
        live[inc] = p

    def kill(inc: int) -> None:
        p = live.pop(inc)
        p.send_signal(signal.SIGKILL)
        p.wait()
        ended.append(inc)

    consumer = threading.Thread(target=consume, name="soak-consumer", daemon=True)
    consumer.start()
    try:
        for _ in range(producers):
            spawn()
        deadline = time.monotonic() + seconds
        next_log = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(random.uniform(*kill_every))
            kill(random.choice(list(live)))
            report.killed += 1
            spawn()
            if time.monotonic() > next_log:
                next_log += 10
                log(f"ring: {ledger.items:,} items, {report.killed} kills, {ring.stats()}")
        for inc in list(live):
            kill(inc)
            report.killed += 1
    finally:
        for p in live.values():
            p.kill()
            p.wait()
        done.set()
        consumer.join(timeout=60)
    if consumer.is_alive():
        report.errors.append("the consumer did not drain the ring within 60 s")
    for inc in ended:
        ack, intent = int(marks[inc, 0]), int(marks[inc, 1])
        got = ledger.next.get(inc, 0)
        if got == ack + intent and intent > 0:
            report.last_bulk_delivered += 1
        elif got == ack:
            report.last_bulk_lost += 1
        else:
            report.errors.append(
                f"producer {inc}: {got} items delivered, but it acknowledged {ack} and had "
                f"{intent} in flight (expected {ack} or {ack + intent})"
            )
    s = ring.stats()
    report.recovered = int(s["producer_recovered"] or 0)
    report.rolled_back = int(s["producer_rolled_back"] or 0)
    report.ring_items = ledger.items
    report.errors += ledger.errors
    if len(ring):
        report.errors.append(f"{len(ring)} items were left in the ring")
    ring.close()
    del marks
    os.unlink(table_path)


def _pipeline_half(
    seconds: float, stop: threading.Event, report: SoakReport, log: Callable[[str], None]
) -> None:
    import kbypass
    from kbypass.testing import TrafficGenerator, VethPair

    verdict_of = np.array([kbypass.DROP] * 60 + [kbypass.TX] * 3 + [kbypass.KEEP], dtype=np.uint8)

    def handler(batch: kbypass.Batch) -> None:
        batch.verdicts[:] = verdict_of[batch.headers["src_port"] % len(verdict_of)]

    with VethPair() as pair:
        with pair.enter("b"):
            p = kbypass.Pipeline(pair.b.ifname, handler, mode="copy", cpus=False)
        with p, TrafficGenerator(pair, "a", size=60, flows=64) as gen:
            p.start()
            gen.start(rate=100_000)
            while not stop.wait(0.05):
                for k in p.kept():
                    k.release()
            report.offered = gen.stop().packets
            deadline = time.monotonic() + 5
            last = -1
            while time.monotonic() < deadline:
                rx = int(p.totals()["rx"])
                if rx == last:
                    break
                last = rx
                time.sleep(0.2)
            p.stop()
            for k in p.kept():
                k.release()
            report.accounting = p.check_accounting()
            t = p.totals()
            report.pipeline_rx = int(t["rx"])
            assert isinstance(p.port, kbypass.XdpPort)  # one process: the pipeline's own port
            report.kernel_dropped = int(p.port.sockets[0].stats()["kernel_rx_dropped"])
            report.verdicts = {k: int(t[k]) for k in ("dropped", "tx", "kept", "released")}
            handled = sum(int(t[k]) for k in ("dropped", "tx", "kept", "tx_failed"))
            if report.pipeline_rx + report.kernel_dropped != report.offered:
                report.errors.append(
                    f"pipeline: {report.offered} frames offered but {report.pipeline_rx} received "
                    f"and {report.kernel_dropped} dropped by the kernel"
                )
            if handled != report.pipeline_rx:
                report.errors.append(
                    f"pipeline: {report.pipeline_rx} received but verdicts account for {handled}"
                )
            if not report.accounting.get("balanced") or report.accounting.get("app"):
                report.errors.append(f"pipeline accounting: {report.accounting}")
    log(f"pipeline: {report.pipeline_rx:,} frames")


def run(
    seconds: float = 60.0,
    *,
    producers: int = 3,
    kill_every: tuple[float, float] = (0.005, 0.05),
    pipeline: bool = True,
    log: Callable[[str], None] | None = None,
) -> SoakReport:
    """Soak for ``seconds``; see the module docs. The Pipeline half needs root.

    Example::

        report = run(60)
        assert report.ok, report.summary()
    """
    if seconds <= 0 or producers < 1:
        raise ValueError("seconds must be positive and producers at least 1")
    say = log or (lambda _m: None)
    report = SoakReport(seconds=seconds)
    stop = threading.Event()
    errors: list[BaseException] = []

    def pipeline_thread() -> None:
        try:
            _pipeline_half(seconds, stop, report, say)
        except BaseException as e:  # reported below, after the ring half
            errors.append(e)

    t = threading.Thread(target=pipeline_thread, name="soak-pipeline", daemon=True)
    if pipeline:
        t.start()
    try:
        _ring_half(seconds, producers, kill_every, report, say)
    finally:
        stop.set()
        if pipeline:
            t.join(timeout=120)
    for e in errors:
        report.errors.append(f"pipeline half raised {type(e).__name__}: {e}")
    return report


def _main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kbypass.testing.soak", description=__doc__)
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--producers", type=int, default=3)
    ap.add_argument("--no-pipeline", action="store_true", help="rings only (no root needed)")
    args = ap.parse_args(argv)
    report = run(
        args.seconds,
        producers=args.producers,
        pipeline=not args.no_pipeline,
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(_main())
