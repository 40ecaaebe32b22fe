"""Ctrl-C (SIGINT) stops kbypass.rdma's long calls well before their timeout.

The calls wait with the GIL released; the core asks every 50 ms whether to stop and the binding
answers by running Python's signal handlers, so KeyboardInterrupt comes out within a fraction of
a second and nothing is left open (the listening port can be bound again at once, the queue
opened again). The engine's own waits too: opening a queue another engine holds (retried for two
seconds) and resolving a peer's MAC address (``connect``, ``create_ah``: up to ``neigh_timeout``).
Runs on the user-space engine (``Context.userspace`` on a veth pair): root, no kernel RDMA.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from kbypass import rdma
from kbypass.testing import VethPair

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the engine needs root (AF_XDP, XDP, network namespaces)"
)

TIMEOUT = 30.0  # every call below would wait this long without the interrupt
PROMPT = 3.0  # ...and must stop within this after SIGINT


@pytest.fixture(scope="module")
def pair() -> Iterator[VethPair]:
    with VethPair(subnet="198.18.43") as p:
        yield p


@pytest.fixture
def ctx(pair: VethPair) -> Iterator[rdma.Context]:
    c = rdma.Context.userspace(pair.a.ifname, ip=pair.a.ip, netns=pair.a.netns)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def qp(ctx: rdma.Context) -> Any:
    return ctx.alloc_pd().create_qp("RC", ctx.create_cq(64))


@pytest.fixture(autouse=True)
def sigint_raises() -> Iterator[None]:
    """Python's own SIGINT handler, even when the run inherited SIGINT ignored."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def interrupted_after(delay: float, call: Callable[[], object]) -> float:
    """Send SIGINT to this (main) thread `delay` s into `call`; return how long it took to stop."""
    main = threading.get_ident()
    timer = threading.Timer(delay, signal.pthread_kill, (main, signal.SIGINT))
    start = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            call()
    finally:
        timer.cancel()
        timer.join()
    took = time.monotonic() - start
    assert delay <= took < delay + PROMPT, f"stopped {took:.2f} s after the call started"
    return took


def test_pingpong_accept_without_a_peer(pair: VethPair, qp: Any) -> None:
    with pair.enter("a"):
        interrupted_after(0.3, lambda: qp.pingpong_accept(port=18750, timeout=TIMEOUT))
        # the listener was closed: the port can be listened on again at once
        with pytest.raises(TimeoutError):
            qp.pingpong_accept(port=18750, timeout=0.2)


@pytest.mark.parametrize("test", ["write", "send"])
def test_perftest_serve_without_a_client(
    pair: VethPair, ctx: rdma.Context, qp: Any, test: str
) -> None:
    pd = ctx.alloc_pd()
    mr = pd.register(np.zeros(1 << 17, dtype=np.uint8))
    cq = ctx.create_cq(64) if test == "send" else None
    serve = lambda t: qp.perftest_serve(mr, 18751, timeout=t, test=test, cq=cq)  # noqa: E731
    with pair.enter("a"):
        interrupted_after(0.3, lambda: serve(TIMEOUT))
        with pytest.raises(TimeoutError):
            serve(0.2)


def test_clients_without_a_server(pair: VethPair, ctx: rdma.Context, qp: Any) -> None:
    mr = ctx.alloc_pd().register(np.zeros(1 << 16, dtype=np.uint8))
    cq = ctx.create_cq(64)
    with pair.enter("a"):  # nobody listens on these: the clients retry until their timeout
        interrupted_after(0.3, lambda: qp.pingpong_connect(pair.b.ip, 18752, timeout=TIMEOUT))
        interrupted_after(
            0.3, lambda: qp.perftest_write_bw(cq, mr, pair.b.ip, 18753, timeout=TIMEOUT)
        )


def test_completion_queue_wait(ctx: rdma.Context) -> None:
    cq = ctx.create_cq(16, channel=True)
    interrupted_after(0.3, lambda: cq.wait(timeout=TIMEOUT))
    assert cq.wait(timeout=0.1) == []  # still usable afterwards


def test_measurements_between_engines(pair: VethPair, ctx: rdma.Context) -> None:
    b = rdma.Context.userspace(pair.b.ifname, ip=pair.b.ip, netns=pair.b.netns)
    try:
        cqa, cqb = ctx.create_cq(256), b.create_cq(256)
        pa, pb = ctx.alloc_pd(), b.alloc_pd()
        qa, qb = pa.create_qp("RC", cqa), pb.create_qp("RC", cqb)
        qa.connect(qb.endpoint(psn=0x22), psn=0x11)
        qb.connect(qa.endpoint(psn=0x11), psn=0x22)
        ma = pa.register(np.zeros(4096, dtype=np.uint8))
        mb = pb.register(np.zeros(4096, dtype=np.uint8))
        # short runs complete (the echo thread's last completion is waited for)...
        assert len(rdma.measure_write_latency(qa, qb, cqa, cqb, ma, mb, 8, 200)) == 200
        assert rdma.measure_write_bandwidth(qa, cqa, ma, mb.addr, mb.rkey, 64, 200) > 0
        # ...and ones far longer than the test stop: a billion writes, a billion ping-pongs
        n = 10**9
        interrupted_after(
            0.3, lambda: rdma.measure_write_bandwidth(qa, cqa, ma, mb.addr, mb.rkey, 64, n)
        )
        interrupted_after(0.3, lambda: rdma.measure_write_latency(qa, qb, cqa, cqb, ma, mb, 8, n))
    finally:
        b.close()


def test_opening_a_busy_queue(pair: VethPair, ctx: rdma.Context) -> None:
    # `ctx` holds queue 0: opening it again retries for two seconds (BUSY_RETRY)...
    def reopen() -> rdma.Context:
        return rdma.Context.userspace(pair.a.ifname, ip=pair.a.ip, netns=pair.a.netns)

    took = interrupted_after(0.3, reopen)
    assert took < 1.5, f"the busy retry ran on for {took:.2f} s after SIGINT"
    # ...and the interrupted open left nothing attached: once `ctx` closed, it opens at once.
    ctx.close()
    start = time.monotonic()
    reopen().close()
    assert time.monotonic() - start < 1.5


NOBODY = 77  # a host of the pair's subnet that nobody answers ARP for


def test_resolving_a_peer_nobody_answers_for(pair: VethPair) -> None:
    # neigh_timeout=30: without the interrupt each call below waits 30 s for ARP
    c = rdma.Context.userspace(
        pair.a.ifname, ip=pair.a.ip, netns=pair.a.netns, neigh_timeout=TIMEOUT
    )
    try:
        pd = c.alloc_pd()
        qp = pd.create_qp("RC", c.create_cq(16))
        nobody = rdma.Endpoint(
            qpn=0x11, psn=0, gid=f"::ffff:{pair.a.ip.rsplit('.', 1)[0]}.{NOBODY}"
        )
        interrupted_after(0.3, lambda: qp.connect(nobody, psn=1))
        assert qp.state == 1  # still INIT: connect can be retried
        interrupted_after(0.3, lambda: pd.create_ah(nobody))
    finally:
        c.close()
    # nothing of the engine stayed behind: the queue opens again at once
    start = time.monotonic()
    rdma.Context.userspace(pair.a.ifname, ip=pair.a.ip, netns=pair.a.netns).close()
    assert time.monotonic() - start < 1.5
