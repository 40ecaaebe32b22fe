"""Replies built in place: ``packet.reply`` over a batch of rows vs a Python loop of the
single-frame helper over the same rows (the reference: what a handler without the per-batch
call would write). No root, no traffic: frames in memory.

``KBYPASS_BENCH_SECONDS`` is not used: each case times ``ROUNDS`` batches of ``BATCH`` frames.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import dpkt
import numpy as np
import pytest

from kbypass import packet

BATCH = 64
ROUNDS = 2000


def _udp_request() -> bytes:
    u = dpkt.udp.UDP(sport=40000, dport=9000, ulen=8 + 18, data=b"q" * 18)
    ip = dpkt.ip.IP(
        src=socket.inet_aton("198.18.0.1"), dst=socket.inet_aton("198.18.0.2"), p=17, data=u
    )
    ip.len = 20 + 8 + 18
    return bytes.fromhex("0200000000b20200000000a10800") + bytes(ip)


def _echo_request() -> bytes:
    icmp = dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=1, seq=1, data=b"p" * 56))
    ip = dpkt.ip.IP(
        src=socket.inet_aton("198.18.0.1"), dst=socket.inet_aton("198.18.0.2"), p=1, data=icmp
    )
    ip.len = 20 + len(bytes(icmp))
    return bytes.fromhex("0200000000b20200000000a10800") + bytes(ip)


@pytest.mark.parametrize("kind", ["udp", "icmp_echo"])
@pytest.mark.benchmark(group="reply")
def test_reply_rows_vs_python_loop(benchmark: Any, kind: str) -> None:
    """Frames/s answered by one ``packet.reply`` per batch vs one helper call per frame."""
    req = _udp_request() if kind == "udp" else _echo_request()
    template, lengths0 = packet.frames_from_bytes([req] * BATCH, width=256)
    frames, lengths = template.copy(), lengths0.copy()
    # A UDP reply is a UDP datagram again: answering it again is the same work. An echo
    # reply is not a request: both sides start each round from the requests.
    reset = kind == "icmp_echo"
    payload = b"a" * 18
    kw: dict[str, Any] = {"payload": payload} if kind == "udp" else {}

    def rows() -> None:
        for _ in range(ROUNDS):
            if reset:
                np.copyto(frames, template)
                np.copyto(lengths, lengths0)
            assert packet.reply(frames, lengths, kind, **kw).all()  # type: ignore[arg-type]

    def per_frame() -> None:
        for _ in range(ROUNDS):
            if reset:
                np.copyto(frames, template)
                np.copyto(lengths, lengths0)
            for i in range(BATCH):
                row = frames[i]
                if kind == "udp":
                    lengths[i] = packet.udp_reply(row, payload, length=int(lengths[i]))
                else:
                    lengths[i] = packet.icmp_echo_reply(row, length=int(lengths[i]))

    t0 = time.perf_counter()
    per_frame()
    ref = time.perf_counter() - t0
    benchmark.pedantic(rows, rounds=3, iterations=1)
    t0 = time.perf_counter()
    rows()
    took = time.perf_counter() - t0
    benchmark.extra_info.update(
        rate=ROUNDS * BATCH / took,
        unit="frames/s",
        reference="a Python loop of the single-frame helper over the same rows",
        reference_rate=ROUNDS * BATCH / ref,
        ratio=ref / took,
    )
    assert lengths.tolist() == [len(req) if len(req) >= 60 else 60] * BATCH
