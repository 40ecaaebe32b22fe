"""Every example's ``--bench`` run as the README of examples/ says, in a subprocess.

Each builds its own veth pair (AF_XDP and namespaces: root), runs a real client against the
example and exits 0 only when the client got its answers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the examples' --bench needs root (AF_XDP, network namespaces)"
)


def run_bench(name: str, timeout: float = 45) -> str:
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--bench"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    return r.stdout


def test_icmp_responder_answers_ping_and_ping6() -> None:
    out = run_bench("icmp_responder.py")
    assert "ping -4 198.18.0.77: 3 packets transmitted, 3 received" in out, out
    assert "ping -6 fd00::77: 3 packets transmitted, 3 received" in out, out
    assert "OK: every ping answered" in out, out


@pytest.mark.skipif(shutil.which("dig") is None, reason="needs dig: apt-get install bind9-dnsutils")
def test_dns_responder_answers_dig() -> None:
    out = run_bench("dns_responder.py")
    assert "dig www.example.test A: ['198.18.1.10'] ok" in out, out
    assert "dig www.example.test AAAA: ['fd00::10'] ok" in out, out
    assert "dig www.example.test AAAA over IPv6: ['fd00::10'] ok" in out, out
    assert "malformed query: rcode 1 (FORMERR) ok" in out, out
    assert "OK: every query answered" in out, out


def test_learning_firewall_blocks_the_heavy_sender() -> None:
    out = run_bench("learning_firewall.py")
    assert "blocked 198.18.0.100 for 30 s" in out, out
    assert "198.18.0.101" not in out.split("blocked", 1)[1].split("\n", 1)[0], out
    assert "table: block 198.18.0.100 dropped" in out, out
    assert "OK: heavy sender blocked in the kernel" in out, out


def test_vxlan_balancer_spreads_flows_over_both_backends() -> None:
    out = run_bench("vxlan_balancer.py")
    assert "captured 40 VXLAN frames, checksums ok: True" in out, out
    assert "OK: flows spread over both backends" in out, out


def test_faulty_path_counts_match_the_receiver() -> None:
    out = run_bench("faulty_path.py")
    assert "counters balance: True" in out, out
    assert "OK: the receiver saw what the counters say" in out, out


def test_udp_burst_answers_every_request_with_its_chunks() -> None:
    out = run_bench("udp_burst.py")
    for r in range(4):
        assert f"request {r}: 8 datagrams ok" in out, out
    assert "emitted=32 emit_failed=0" in out, out
    assert "OK: every chunk arrived" in out, out
