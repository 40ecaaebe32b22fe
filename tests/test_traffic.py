"""The live-frames generator, drop counter and kernel baselines on the plugin's veth_pair."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from kbypass import _core, xdp_query
from kbypass.testing import (
    Counts,
    DropCounter,
    TrafficGenerator,
    TrafficResult,
    VethPair,
    af_packet_recv,
    udp_recv,
    udp_send,
)
from kbypass.testing.process import _listening

root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces")


class Thread(threading.Thread):
    """A thread that keeps its target's result or exception."""

    def __init__(self, fn: Any, **kwargs: Any) -> None:
        super().__init__(daemon=True)
        self.fn, self.kwargs = fn, kwargs
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn(**self.kwargs)
        except BaseException as e:
            self.error = e

    def get(self, timeout: float = 30) -> Any:
        self.join(timeout)
        assert not self.is_alive(), "receiver did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def _until_bound(bound: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until a receiver thread's socket is bound: a fixed sleep races its set-up (a 64 MiB
    AF_PACKET ring takes its time on a loaded machine) and frames sent before are never seen."""
    deadline = time.monotonic() + timeout
    while not bound():
        assert time.monotonic() < deadline, "the receiver did not bind its socket"
        time.sleep(0.02)


def _packet_socket_on(pair: VethPair, side: str) -> bool:
    """Whether an AF_PACKET socket in ``side``'s namespace is bound to its interface."""
    end = pair.a if side == "a" else pair.b
    ifindex = pair.run(side, "cat", f"/sys/class/net/{end.ifname}/ifindex").stdout.strip()
    rows = pair.run(side, "cat", "/proc/net/packet").stdout.splitlines()[1:]
    return any(r.split()[4] == ifindex for r in rows)  # sk RefCnt Type Proto Iface ...


def udp_socket_in(veth_pair: VethPair, side: str, port: int) -> socket.socket:
    with veth_pair.enter(side) as end:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        s.bind((end.ip, port))
    s.settimeout(1.0)
    return s


@root
@pytest.mark.parametrize("size", [60, 1514])
def test_exactly_n_frames_reach_the_drop_counter(veth_pair: VethPair, size: int) -> None:
    n = 300_000
    with DropCounter(veth_pair, side="b") as sink:
        assert sink.mode == "native" and sink.attached
        sink.reset()
        gen = TrafficGenerator(veth_pair, side="a", size=size)
        assert gen.size == size and len(gen.frame) == size
        assert gen.keeper_note is None, "as root the program stays in the XDP dispatcher"
        r = gen.run(count=n)
        assert isinstance(r, TrafficResult)
        assert (r.packets, r.bytes) == (n, n * size)
        assert r.elapsed > 0 and r.pps == pytest.approx(n / r.elapsed)
        assert sink.wait_for(n) == Counts(n, n * size)
    assert not sink.attached
    with veth_pair.enter("b"):
        assert xdp_query(veth_pair.b.ifname) == []


@root
def test_exactly_n_frames_seen_by_af_packet(veth_pair: VethPair) -> None:
    n = 20_000
    # A listener, so the kernel does not answer with ICMP (AF_PACKET sees outgoing frames too).
    sink = udp_socket_in(veth_pair, "b", 9000)
    rx = Thread(af_packet_recv, pair=veth_pair, side="b", duration=20.0, idle=0.5)
    rx.start()
    _until_bound(lambda: _packet_socket_on(veth_pair, "b"))
    sent = TrafficGenerator(veth_pair, size=60).run(count=n, rate=200_000)
    got = rx.get()
    sink.close()
    assert sent.packets == n
    assert got.packets == n


@root
def test_flows_cycle_the_udp_source_port(veth_pair: VethPair) -> None:
    flows, each = 4, 250
    rx = udp_socket_in(veth_pair, "b", 9000)
    gen = TrafficGenerator(veth_pair, size=100, flows=flows, src_port=30000)
    assert gen.flows == flows
    frame = gen.frame
    assert frame[40:42] == b"\x00\x00", "UDP checksum 0 when flows vary"
    gen.run(count=flows * each)
    ports: Counter[int] = Counter()
    try:
        while True:
            data, (ip, port) = rx.recvfrom(2048)
            assert ip == veth_pair.a.ip and len(data) == 100 - 42
            ports[port] += 1
    except socket.timeout:
        pass
    rx.close()
    assert ports == {30000 + i: each for i in range(flows)}


@root
def test_frames_carry_the_given_udp_payload(veth_pair: VethPair) -> None:
    rx = udp_socket_in(veth_pair, "b", 9000)
    for payload in (bytes(range(7, 71)), b"hi"):
        gen = TrafficGenerator(veth_pair, payload=payload, src_port=30100)
        assert gen.payload == payload
        f = gen.frame
        assert gen.size == len(f) == max(60, 42 + len(payload))
        assert f[42 : 42 + len(payload)] == payload
        assert int.from_bytes(f[16:18], "big") == 28 + len(payload)  # IPv4 total length
        assert int.from_bytes(f[38:40], "big") == 8 + len(payload)  # UDP length
        assert f[40:42] != b"\x00\x00", "a UDP checksum (one flow)"
        assert gen.run(count=5).packets == 5
        for _ in range(5):
            data, addr = rx.recvfrom(2048)  # the kernel checked the checksums on the way
            assert (data, addr) == (payload, (veth_pair.a.ip, 30100))
    with pytest.raises(socket.timeout):
        rx.recvfrom(2048)
    rx.close()
    assert TrafficGenerator(veth_pair, size=106, payload=bytes(64)).size == 106
    with pytest.raises(ValueError, match="conflicts"):
        TrafficGenerator(veth_pair, size=60, payload=bytes(64))
    with pytest.raises(ValueError, match="at most 8972"):
        TrafficGenerator(veth_pair, payload=bytes(9000))
    gen = TrafficGenerator(veth_pair, payload=bytes(2000))
    with pytest.raises(ValueError, match="MTU 1500"):
        gen.run(count=1)


@root
def test_rate_limit_is_respected(veth_pair: VethPair) -> None:
    with DropCounter(veth_pair) as sink:
        sink.reset()
        r = TrafficGenerator(veth_pair).run(duration=1.0, rate=100_000)
        # Never above the limit; below it (or late) only when the machine is busy.
        assert 0.95 <= r.elapsed <= 1.6, r
        assert 70_000 <= r.pps <= 102_000, r
        assert r.packets <= 100_000, r
        assert sink.settle().packets == r.packets


@root
def test_duration_at_full_speed(veth_pair: VethPair) -> None:
    with DropCounter(veth_pair) as sink:
        sink.reset()
        r = TrafficGenerator(veth_pair, cpu=0).run(duration=0.5)
        assert 0.45 <= r.elapsed <= 1.5, r
        assert r.calls >= 1 and not r.interrupted
        assert sink.settle().packets == r.packets > 0


@root
def test_background_start_stop_and_wait(veth_pair: VethPair) -> None:
    with DropCounter(veth_pair) as sink, TrafficGenerator(veth_pair) as gen:
        sink.reset()
        gen.start(rate=50_000)
        assert gen.running
        with pytest.raises(RuntimeError, match="already running"):
            gen.start()
        live = sink.measure(0.3)
        assert live.packets > 5_000
        t0 = time.monotonic()
        r = gen.stop()
        assert time.monotonic() - t0 < 1.0
        assert not gen.running
        assert sink.settle().packets == r.packets
        with pytest.raises(RuntimeError, match="not running"):
            gen.stop()
        gen.start(count=1000)
        assert gen.wait(timeout=10).packets == 1000
        gen.start(rate=10)
        with pytest.raises(TimeoutError, match="still running"):
            gen.wait(timeout=0.1)
    # the context manager stopped the last run


@root
def test_kernel_udp_send_recv_counts(veth_pair: VethPair) -> None:
    n = 20_000
    rx = Thread(udp_recv, pair=veth_pair, side="b", port=9000, count=n, duration=20.0)
    rx.start()
    _until_bound(lambda: _listening(veth_pair.b, 9000, "udp"))
    tx = udp_send(veth_pair, side="a", count=n, size=100, batch=64)
    got = rx.get()
    assert tx.packets == n and tx.bytes == n * 58
    assert got.packets == n and got.bytes == n * 58


@root
def test_bad_input_raises_typed_errors(veth_pair: VethPair) -> None:
    with pytest.raises(ValueError, match="out of range"):
        TrafficGenerator(veth_pair, size=30)
    with pytest.raises(ValueError, match="flows"):
        TrafficGenerator(veth_pair, flows=0)
    with pytest.raises(ValueError, match="65535"):
        TrafficGenerator(veth_pair, flows=100, src_port=65500)
    with pytest.raises(ValueError, match="batch_size"):
        TrafficGenerator(veth_pair, batch_size=1000)
    with pytest.raises(ValueError, match="side"):
        TrafficGenerator(veth_pair, side="c")
    with pytest.raises(TypeError, match="VethPair"):
        TrafficGenerator("veth0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="MAC"):
        _core.LiveGenerator(dst_mac="02:00")
    with pytest.raises(ValueError, match="IPv4"):
        _core.LiveGenerator(src_ip="198.18.0.300")
    gen = TrafficGenerator(veth_pair, size=1600)
    with pytest.raises(ValueError, match="MTU 1500"):
        gen.run(count=10)
    gen = TrafficGenerator(veth_pair)
    with pytest.raises(ValueError, match="never stops"):
        gen.run()
    with pytest.raises(ValueError, match="rate"):
        gen.run(count=10, rate=-5)
    with pytest.raises(ValueError, match="duration"):
        gen.run(duration=-1)
    raw = _core.LiveGenerator()
    with pytest.raises(FileNotFoundError, match="no such interface"):
        raw.run("kbxnope0", veth_pair.a.netns, count=10)
    with pytest.raises(FileNotFoundError, match="ip netns add"):
        raw.run("veth0", "kbx-no-such-namespace", count=10)
    with pytest.raises(FileNotFoundError, match="no such interface"):
        raw.start("kbxnope0", veth_pair.a.netns)
    assert not raw.running
    with pytest.raises(ValueError, match="1 RX queue"):
        raw.run(veth_pair.a.ifname, veth_pair.a.netns, count=10, queue=7)
    with pytest.raises(ValueError, match="not online"):
        raw.run(veth_pair.a.ifname, veth_pair.a.netns, count=10, cpu=4000)
    with pytest.raises(FileNotFoundError):
        _core.DropCounter("kbxnope0", veth_pair.b.netns)
    with pytest.raises(ValueError, match="mode"):
        DropCounter(veth_pair, mode="fast")
    with pytest.raises(ValueError, match="never stops"):
        udp_recv(veth_pair)
    with pytest.raises(ValueError, match="headers"):
        udp_send(veth_pair, count=1, size=20)
    with DropCounter(veth_pair) as sink, pytest.raises(OSError) as busy:
        DropCounter(veth_pair)
    assert busy.value.errno == 16 and "force" in str(busy.value)
    assert not sink.attached
    veth_pair.close()
    with pytest.raises(RuntimeError, match="closed"):
        TrafficGenerator(veth_pair)
