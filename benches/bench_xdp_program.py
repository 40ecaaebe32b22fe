"""Cost of kbypass's XDP programs per frame, measured in the kernel with BPF_PROG_TEST_RUN.

The reference is the 6-instruction default program (redirect every frame); filter programs are
reported as a ratio to it, measured side by side in the same run.
"""

from __future__ import annotations

import os
import struct

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from kbypass import XdpProgram

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CAP_BPF) to load programs")

REPEAT = 200_000


def udp_frame(dport: int) -> bytes:
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        36,
        1,
        0,
        64,
        17,
        0,
        bytes([198, 18, 0, 1]),
        bytes([198, 18, 0, 2]),
    )
    eth = bytes.fromhex("020000000002020000000001") + b"\x08\x00"
    return eth + ip + struct.pack("!HHHH", 40000, dport, 16, 0) + bytes(8)


def ns_per_frame(prog: XdpProgram, frame: bytes) -> float:
    # The kernel's own per-run average; the best of a few calls.
    return min(prog.run_time_ns(frame, REPEAT) for _ in range(3))


FILTERS = {
    "one_rule": "udp dst port 9000-9010",
    "prefix_and_proto": "ip src 198.18.0.0/15 and udp",
    "sixteen_rules": " or ".join(f"udp dst port {1000 + i}" for i in range(16)),
}


@pytest.mark.benchmark(group="xdp-program")
@pytest.mark.parametrize("name", list(FILTERS))
def test_filter_program_cost(benchmark: BenchmarkFixture, name: str) -> None:
    reference = XdpProgram()
    prog = XdpProgram(filter=FILTERS[name])
    frame = udp_frame(9005)
    ref_ns = ns_per_frame(reference, frame)
    ns = benchmark(ns_per_frame, prog, frame)
    rate = 1e9 / ns
    ref_rate = 1e9 / ref_ns
    benchmark.extra_info.update(
        rate=rate,
        unit="frames/s",
        reference=f"default 6-insn program {ref_rate / 1e6:.1f} M/s",
        ratio=rate / ref_rate,
        ns_per_frame=ns,
        reference_ns_per_frame=ref_ns,
        insns=prog.insn_count,
    )
    assert ns > 0 and ref_ns > 0


def udp6_frame_behind_extension_headers(dport: int, headers: int) -> bytes:
    """IPv6/UDP behind `headers` destination-options headers (8 bytes each)."""
    chain = b"".join(bytes([60 if i + 1 < headers else 17, 0]) + bytes(6) for i in range(headers))
    udp = struct.pack("!HHHH", 40000, dport, 16, 0) + bytes(8)
    first = 60 if headers else 17
    ip6 = struct.pack("!IHBB", 0x6000_0000, len(chain) + len(udp), first, 64)
    ip6 += bytes.fromhex("20010db8000000000000000000000001")
    ip6 += bytes.fromhex("20010db8000000000000000000000002")
    eth = bytes.fromhex("020000000002020000000001") + b"\x86\xdd"
    return eth + ip6 + chain + udp


@pytest.mark.benchmark(group="xdp-program")
@pytest.mark.parametrize("headers", [0, 3, 8])
def test_filter_program_cost_ipv6_extension_headers(
    benchmark: BenchmarkFixture, headers: int
) -> None:
    """One port rule on IPv6 frames behind 0, 3 and 8 extension headers: the walk's cost."""
    reference = XdpProgram()
    prog = XdpProgram(filter=FILTERS["one_rule"])
    frame = udp6_frame_behind_extension_headers(9005, headers)
    assert prog.test_run(frame).name == "REDIRECT"
    ref_ns = ns_per_frame(reference, frame)
    ns = benchmark(ns_per_frame, prog, frame)
    rate = 1e9 / ns
    ref_rate = 1e9 / ref_ns
    benchmark.extra_info.update(
        rate=rate,
        unit="frames/s",
        reference=f"default 6-insn program {ref_rate / 1e6:.1f} M/s",
        ratio=rate / ref_rate,
        ns_per_frame=ns,
        reference_ns_per_frame=ref_ns,
        insns=prog.insn_count,
    )
    assert ns > 0 and ref_ns > 0
