"""kbypass.pingpong: the sockperf echo handler, the report parser, same-round ratios."""

from __future__ import annotations

import math
import os
import shutil
import socket
import struct
import time
from typing import Any

import pytest

import kbypass
from kbypass.pingpong import (
    KERNEL,
    SOCKPERF_PORT,
    XDP_ECHO,
    Capacity,
    Measurement,
    Result,
    capacity,
    kernel_server,
    measure,
    parse_sockperf,
    request,
    sockperf_echo,
    summarize,
    xdp_echo_server,
)
from kbypass.testing import VethPair

REPORT = """\
sockperf: [Total Run] RunTime=1.000 sec; Warm up time=400 msec; SentMessages=7504
sockperf: ========= Printing statistics for Server No: 0
sockperf: [Valid Duration] RunTime=0.552 sec; SentMessages=4174; ReceivedMessages=4174
sockperf: \x1b[2;35m====> avg-rtt=132.082 (std-dev=514.297)\x1b[0m
sockperf: # dropped messages = 0; # duplicated messages = 0; # out-of-order messages = 0
sockperf: ---> <MAX> observation = 5977.798
sockperf: ---> percentile 99.999 = 5977.798
sockperf: ---> percentile 99.900 = 3979.591
sockperf: ---> percentile 99.000 = 3343.802
sockperf: ---> percentile 50.000 =   42.339
sockperf: ---> <MIN> observation =   23.534
"""


def test_parse_sockperf_reads_the_valid_run_and_its_percentiles() -> None:
    r = parse_sockperf(REPORT)
    assert (r["seconds"], r["sent"], r["received"]) == (0.552, 4174, 4174)
    assert r["avg_us"] == 132.082
    assert (r["p50_us"], r["p99_us"], r["p99.9_us"], r["p99.999_us"]) == (
        42.339,
        3343.802,
        3979.591,
        5977.798,
    )
    with pytest.raises(RuntimeError, match="measured no answers"):
        parse_sockperf("sockperf: No messages were received from the server. Is it down?")
    with pytest.raises(RuntimeError, match="measured no answers"):
        parse_sockperf(REPORT.replace("ReceivedMessages=4174", "ReceivedMessages=0"))


def _m(server: str, r: int, p50: float, load: float, cap: float = math.nan) -> Measurement:
    return Measurement(
        server, r, p50, 2 * p50, 3 * p50, p50, 1e6 / p50, load, 2 * load, cap, 10 * cap
    )


def test_ratios_are_taken_round_by_round_against_the_kernel() -> None:
    kernel = [_m(KERNEL, 0, 40.0, 100e3, 200e3), _m(KERNEL, 1, 20.0, 200e3, 100e3)]
    sub = Result("x", [_m("x", 0, 20.0, 300e3, 800e3), _m("x", 1, 15.0, 300e3, 500e3)], kernel)
    assert sub.ratios("rtt_p50_us") == [0.5, 0.75]
    assert sub.spread("rtt_p50_us", ratio=True) == (0.5, 0.625, 0.75)
    assert sub.spread("load_msgs_per_s") == (300e3, 300e3, 300e3)
    assert sub.ratios("load_msgs_per_s") == [3.0, 1.5]
    assert sub.ratios("capacity_aps") == [4.0, 5.0]
    d = sub.to_dict()
    assert d["ratio_rtt_p50_us"] == (0.5, 0.625, 0.75) and len(d["kernel_rounds"]) == 2
    assert d["ratio_capacity_aps"] == (4.0, 4.5, 5.0)
    table = summarize([Result(KERNEL, kernel, kernel), sub])
    assert "0.62x" in table and "2.25x" in table  # medians of the ratios
    assert "500k/650k/800k 4.50x" in table and "6.50M" in table  # capacity and offered rate
    # A kernel that answered nothing: the ratio is inf (NaN when both are 0), not an error.
    zero = [_m(KERNEL, 0, 40.0, 100e3, 0.0)]
    assert Result("x", [_m("x", 0, 20.0, 1e3, 5.0)], zero).ratios("capacity_aps") == [math.inf]
    assert math.isnan(Result("x", [_m("x", 0, 20.0, 1e3, 0.0)], zero).ratio("capacity_aps"))
    # Without load runs the capacity cells say so.
    plain = [_m(KERNEL, 0, 40.0, math.nan)]
    assert summarize([Result(KERNEL, plain, plain)]).splitlines()[1].split()[-3:] == ["-"] * 3


def test_request_is_a_sockperf_client_message() -> None:
    r = request(64, seq=9)
    assert len(r) == 64 and r[14:] == bytes(50)
    assert struct.unpack("!QHI", r[:14]) == (9, 0x0003, 64)
    assert Capacity(offered=300, answers=150, seconds=0.5).answers_per_s == 300.0
    assert Capacity(offered=300, answers=150, seconds=0.5).offered_per_s == 600.0
    with pytest.raises(ValueError, match="14"):
        request(10)


def _request(seq: int, flags: int, size: int = 64) -> bytes:
    return struct.pack("!QHI", seq, flags, size).ljust(size, b"\x5a")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for AF_XDP and namespaces")
def test_sockperf_echo_answers_requests_like_sockperf_server_in_batches_of_any_size() -> None:
    sizes: list[int] = []

    def echo(batch: kbypass.Batch) -> Any:
        sizes.append(len(batch))
        if len(sizes) == 1:
            time.sleep(0.3)  # the requests sent meanwhile wait in the RX ring: a large batch
        return sockperf_echo(batch)

    with VethPair() as pair:
        with pair.enter("a"):
            peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            peer.bind((pair.a.ip, 0))
        peer.settimeout(2)
        with pair.enter("b"):
            p = kbypass.Pipeline(
                pair.b.ifname,
                echo,
                filter=f"udp dst port {SOCKPERF_PORT}",
                mode="copy",
                cpus=False,
                progress=False,
            )
        with p:
            p.start()
            dst = (pair.b.ip, SOCKPERF_PORT)
            peer.sendto(_request(0, 0x03), dst)  # a batch of one
            deadline = time.monotonic() + 5
            while not sizes and time.monotonic() < deadline:
                time.sleep(0.001)
            # Then, while the handler sleeps: requests, warm-ups and server messages mixed.
            flags = {seq: (0x03, 0x07, 0x02, 0x01)[seq % 4] for seq in range(1, 41)}
            for seq, f in flags.items():
                peer.sendto(_request(seq, f), dst)
            want = {0} | {seq for seq, f in flags.items() if f == 0x03}
            got = {}
            for _ in want:
                data, addr = peer.recvfrom(2048)
                assert addr == dst
                seq, f, length = struct.unpack("!QHI", data[:14])
                assert (f, length, data[14:]) == (0x02, 64, b"\x5a" * 50)  # the server's answer
                got[seq] = f
            with pytest.raises(socket.timeout):
                peer.recvfrom(2048)  # nothing else is answered
            t = p.stop() and p.totals()
        assert set(got) == want
        assert sizes[0] == 1 and max(sizes) > 1, sizes
        assert t and (t["rx"], t["tx"], t["dropped"]) == (41, len(want), 41 - len(want))
        assert t["handler_errors"] == 0
        assert math.isclose(sum(sizes), 41)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for XDP and namespaces")
def test_xdp_echo_answers_requests_in_the_kernel_like_sockperf_server() -> None:
    """The in-kernel echo (XDP_TX) answers requests that ask for it, drops warm-ups and server
    messages, and leaves other traffic (ARP, other ports) to the kernel."""
    with VethPair() as pair:
        with pair.enter("a"):
            peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            peer.bind((pair.a.ip, 0))
        peer.settimeout(2)
        with xdp_echo_server(pair) as att:
            assert att.attached and att.ifname == pair.b.ifname
            dst = (pair.b.ip, SOCKPERF_PORT)
            flags = {seq: (0x03, 0x07, 0x02, 0x01)[seq % 4] for seq in range(40)}
            for seq, f in flags.items():
                peer.sendto(_request(seq, f), dst)
            want = {seq for seq, f in flags.items() if f == 0x03}
            got = set()
            for _ in want:
                data, addr = peer.recvfrom(2048)
                assert addr == dst
                seq, f, length = struct.unpack("!QHI", data[:14])
                assert (f, length, data[14:]) == (0x02, 64, b"\x5a" * 50)
                got.add(seq)
            with pytest.raises(socket.timeout):
                peer.recvfrom(2048)  # nothing else is answered
        assert got == want
        assert not att.attached
        with pair.enter("b"):
            assert kbypass.xdp_query(pair.b.ifname) == []
        peer.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for XDP and namespaces")
def test_sockperf_ping_pong_gets_answers_from_the_xdp_echo() -> None:
    if shutil.which("sockperf") is None:
        pytest.skip("sockperf is not installed: bash .ci/install-system-deps (or apt-get it)")
    with VethPair() as pair, xdp_echo_server(pair):
        m = measure(pair, XDP_ECHO, seconds=1, load=False)
    assert m.pingpong_msgs_per_s > 0
    assert 0 < m.rtt_p50_us <= m.rtt_p99_us <= m.rtt_p999_us


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")
def test_kernel_server_answers_sockperf_and_is_stopped_on_exit() -> None:
    if shutil.which("sockperf") is None:
        pytest.skip("sockperf is not installed: bash .ci/install-system-deps (or apt-get it)")
    with VethPair() as pair:
        with kernel_server(pair, cpu=0) as srv:
            m = measure(pair, KERNEL, seconds=1, load=False)
        assert m.pingpong_msgs_per_s > 0 and m.rtt_p50_us > 0
        assert srv.returncode is not None  # stopped by its PID when the block ended
        ss = pair.run("b", "ss", "-Hlun", f"sport = :{SOCKPERF_PORT}").stdout
        assert ss.strip() == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for XDP and namespaces")
def test_capacity_counts_the_kernel_servers_answers() -> None:
    """The generator's requests are real sockperf requests: the kernel's server answers them."""
    if shutil.which("sockperf") is None:
        pytest.skip("sockperf is not installed: bash .ci/install-system-deps (or apt-get it)")
    with VethPair() as pair:
        with kernel_server(pair, cpu=0):
            c = capacity(pair, seconds=1.0, cpu=0)
        assert c.offered > 0 and 0 < c.answers <= c.offered, c
        assert c.answers_per_s > 0 and c.late >= 0 and 0.9 < c.seconds < 2, c
        with pair.enter("a"):
            assert kbypass.xdp_query(pair.a.ifname) == []  # the counter is gone


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for XDP and namespaces")
def test_capacity_of_a_server_that_answers_nothing_is_zero() -> None:
    with VethPair() as pair:
        with pair.enter("b"):  # a socket that never reads: no answers and no ICMP errors
            sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sink.bind((pair.b.ip, SOCKPERF_PORT))
        c = capacity(pair, seconds=0.5, cpu=0, rate=50_000)
        sink.close()
    assert 0 < c.offered <= 25_000 and (c.answers, c.late, c.answers_per_s) == (0, 0, 0.0), c


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for XDP and namespaces")
def test_capacity_of_the_xdp_echo_counts_every_answer() -> None:
    """The XDP echo answers in place; the generator still sends requests, not its answers.

    The live-frames test run re-uses its pages without restoring their bytes: without the
    generator writing the frame before each send, the echo answered one kernel batch (64) per
    call.
    """
    with VethPair() as pair, xdp_echo_server(pair):
        c = capacity(pair, seconds=0.5, cpu=0, rate=50_000)
    assert 20_000 <= c.offered <= 25_000 and c.answers + c.late >= 0.95 * c.offered, c
