"""kbypass.testing.faults: the fault injector injects what it says.

Numbered UDP datagrams go from namespace ``a`` to ``b`` through the bridge in ``m``; the
receiver checks loss against a binomial bound, and duplicates and reordering (measured from the
sequence numbers in arrival order) against the counters, which must balance exactly.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from kbypass.testing.faults import FaultyPath

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root (network namespaces, XDP, AF_XDP)"
)

PORT = 4791
N = 2000
SO_RCVBUFFORCE = 33


def _netns_exists(name: str) -> bool:
    return os.path.exists(f"/var/run/netns/{name}")


class Flow:
    """A receiver on ``b`` port 4791 and senders on ``a`` (source ports 40000 and 40001)."""

    def __init__(self, p: FaultyPath, src: str = "a", dst: str = "b") -> None:
        self.path, self.src = p, src
        self.dst_ip = p.b.ip if dst == "b" else p.a.ip
        src_ip = p.a.ip if src == "a" else p.b.ip
        with p.enter(dst):
            self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
            self.rx.bind((self.dst_ip, PORT))
        with p.enter(src):
            self.tx = []
            for sport in (40000, 40001):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((src_ip, sport))
                self.tx.append(s)

    def seen(self) -> int:
        s = self.path.stats()
        return (s.a_to_b if self.src == "a" else s.b_to_a).seen

    def send(self, seqs: range, sender: int = 0) -> None:
        """Send numbered datagrams, never more than 128 ahead of the injector: the veth ring
        in front of it holds 256, and on a loaded machine its poll loop can fall behind."""
        start = self.seen()
        for k, seq in enumerate(seqs):
            self.tx[sender].sendto(struct.pack("!I", seq) + bytes(60), (self.dst_ip, PORT))
            if k % 32 == 31:
                deadline = time.monotonic() + 5
                while self.seen() - start < k + 1 - 128 and time.monotonic() < deadline:
                    time.sleep(0.0002)
                time.sleep(0.0002)

    def dropped_on_the_way(self) -> str:
        """What the links dropped (for failure messages)."""
        return self.path.run(self.src, "ip", "-s", "link", "show").stdout

    def receive(self, quiet: float = 0.3) -> list[int]:
        """Sequence numbers in arrival order, until nothing came for ``quiet`` seconds."""
        self.rx.settimeout(quiet)
        out = []
        with_timeout = True
        while with_timeout:
            try:
                out.append(struct.unpack("!I", self.rx.recv(2048)[:4])[0])
            except TimeoutError:
                with_timeout = False
        return out

    def close(self) -> None:
        for s in (self.rx, *self.tx):
            s.close()


@pytest.fixture
def flows() -> Iterator[list[Flow]]:
    made: list[Flow] = []
    yield made
    for f in made:
        f.close()


def late_arrivals(seqs: list[int]) -> int:
    """Frames that arrived after a frame with a higher sequence number."""
    top, late = -1, 0
    for s in seqs:
        if s < top:
            late += 1
        top = max(top, s)
    return late


@pytest.mark.parametrize("p", [0.0, 0.01, 0.05, 0.5, 1.0])
def test_loss_fraction_is_within_a_binomial_bound(p: float, flows: list[Flow]) -> None:
    with FaultyPath(loss=p, filter=f"udp dst port {PORT}", directions="a>b") as path:
        flow = Flow(path)
        flows.append(flow)
        flow.send(range(N))
        # Settle first: a frame the middlebox still holds when the receiver has heard nothing
        # for its quiet time (a loaded machine) would be missed; the socket keeps the order.
        s = path.wait_settled()
        got = flow.receive()
        links = flow.dropped_on_the_way()
    counts = Counter(got)
    assert all(c == 1 for c in counts.values()), "loss alone must not duplicate"
    assert set(counts) <= set(range(N))
    lost = N - len(counts)
    sd = math.sqrt(p * (1 - p) / N)
    assert abs(lost / N - p) <= 4.5 * sd, (f"p={p}: lost {lost}/{N}", s, links)
    ab = s.a_to_b
    assert ab.matched == N
    assert ab.dropped == lost, ab  # every loss is the injector's, and counted
    assert ab.balanced() and ab.to_middlebox == 0, ab
    assert s.b_to_a.dropped == 0


def test_duplicates_arrive_and_equal_the_counter(flows: list[Flow]) -> None:
    with FaultyPath(duplicate=0.05, filter=f"udp dst port {PORT}", seed=7) as path:
        flow = Flow(path)
        flows.append(flow)
        flow.send(range(N))
        # Settle first: a frame the middlebox still holds when the receiver has heard nothing
        # for its quiet time (a loaded machine) would be missed; the socket keeps the order.
        s = path.wait_settled().a_to_b
        got = flow.receive()
        links = flow.dropped_on_the_way()
    counts = Counter(got)
    assert set(counts) == set(range(N)), (s, links)
    dups = sum(c - 1 for c in counts.values())
    assert max(counts.values()) == 2
    assert dups > 0
    assert dups == s.duplicated == s.to_middlebox == s.received, s
    assert len(got) == N + s.duplicated
    assert s.balanced() and s.tx_failed == 0 and s.sent == 2 * s.duplicated, s


def test_reordering_measured_by_sequence_equals_the_counter(flows: list[Flow]) -> None:
    # Faults only on source port 40000; a tail from port 40001 (never held) releases the last
    # held frames, so every held frame is overtaken by later-numbered ones.
    with FaultyPath(
        reorder=0.05, filter="udp src port 40000", reorder_after=3, reorder_timeout=5.0
    ) as path:
        flow = Flow(path)
        flows.append(flow)
        flow.send(range(N), sender=0)
        flow.send(range(N, N + 10), sender=1)
        # Settle first: a frame the middlebox still holds when the receiver has heard nothing
        # for its quiet time (a loaded machine) would be missed; the socket keeps the order.
        s = path.wait_settled().a_to_b
        got = flow.receive()
        links = flow.dropped_on_the_way()
    assert sorted(got) == list(range(N + 10)), (s, links)
    assert s.reordered > 0
    assert s.reorder_timeouts == 0, s
    assert late_arrivals(got) == s.reordered == s.to_middlebox, s
    assert s.balanced() and s.sent == s.received, s


def test_delay_holds_frames_back_and_counts_them(flows: list[Flow]) -> None:
    with FaultyPath(delay=0.1, delay_time=0.02, filter=f"udp dst port {PORT}") as path:
        flow = Flow(path)
        flows.append(flow)
        flow.send(range(500))
        # Settle first: a frame the middlebox still holds when the receiver has heard nothing
        # for its quiet time (a loaded machine) would be missed; the socket keeps the order.
        s = path.wait_settled().a_to_b
        got = flow.receive()
        links = flow.dropped_on_the_way()
    assert sorted(got) == list(range(500)), (s, links)
    assert s.delayed == s.to_middlebox == s.sent > 0, s
    # 20 ms at ~30 frames per ms: a delayed frame is overtaken unless it was among the last.
    assert late_arrivals(got) >= s.delayed - 2 > 0
    assert s.balanced()


def test_run_time_changes_keep_the_program_and_apply_per_direction(flows: list[Flow]) -> None:
    with FaultyPath(filter=f"udp dst port {PORT}") as path:
        ids = {k: v["prog_id"] for k, v in path.info().items()}
        ab, ba = Flow(path), Flow(path, src="b", dst="a")
        flows.extend([ab, ba])
        path.set("b>a", loss=1.0)
        ab.send(range(50))
        ba.send(range(50))
        assert sorted(ab.receive(0.2)) == list(range(50))
        assert ba.receive(0.2) == []
        # Filter changed at run time: 4791 is no longer matched, so loss no longer applies.
        path.set("b>a", filter="udp dst port 9")
        assert path.filter("b>a") == "udp dst port 9"
        assert path.filter("a>b") == f"udp dst port {PORT}"
        ba.send(range(50))
        assert sorted(ba.receive(0.2)) == list(range(50))
        path.set(filter=None, loss=0.0)
        assert path.filter("b>a") == ""
        assert path.rates("b>a")["loss"] == 0.0
        assert {k: v["prog_id"] for k, v in path.info().items()} == ids
        s = path.wait_settled()
        assert s.b_to_a.dropped == 50 and s.a_to_b.dropped == 0
        assert s.b_to_a.balanced() and s.a_to_b.balanced()
        with pytest.raises(ValueError, match="probability"):
            path.set("a>b", loss=1.5)
        with pytest.raises(ValueError, match="exceeds 1"):
            path.set("a>b", duplicate=0.6, reorder=0.6)
        with pytest.raises(ValueError, match="direction"):
            path.set("sideways", loss=0.1)  # type: ignore[arg-type]
        assert path.rates("a>b") == {"loss": 0.0, "duplicate": 0.0, "reorder": 0.0, "delay": 0.0}


def test_everything_is_removed_on_exit_and_on_failure() -> None:
    with pytest.raises(RuntimeError, match="boom"), FaultyPath(loss=0.5) as path:
        names = (path.a.netns, path.m, path.b.netns)
        assert all(_netns_exists(n) for n in names)
        raise RuntimeError("boom")
    assert path.closed
    assert not any(_netns_exists(n) for n in names)
    with pytest.raises(RuntimeError, match="closed"):
        path.stats()
    before = set(os.listdir("/var/run/netns"))
    with pytest.raises(ValueError, match="probability"):
        FaultyPath(loss=2.0)
    assert set(os.listdir("/var/run/netns")) == before
    with pytest.raises(ValueError, match=r"filter|port"):
        FaultyPath(filter="udp dst port banana")
    assert set(os.listdir("/var/run/netns")) == before
