"""Packets made from a template (issue 10, "emit ... a template with fields to fill").

`kbypass.packet.Template` is checked against dpkt (an independent parser) for every kind (IPv4 and
IPv6, UDP and TCP, with and without a VLAN tag); `Batch.emit_template` on a veth pair, where the
far kernel receives what the handler emitted (a UDP socket, which drops bad checksums, and an
AF_PACKET socket read with dpkt), and where running out of UMEM frames is counted. Addresses are in
198.18.0.0/15 and fd00::/8 only.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import dpkt
import numpy as np
import pytest

import kbypass
from _pipelines import pipeline, until
from kbypass.packet import Template
from kbypass.testing import VethPair

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for AF_XDP and namespaces")


def _ones_complement_ok(data: bytes) -> bool:
    if len(data) % 2:
        data += b"\0"
    s = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s == 0xFFFF


def _l4_checksum_ok(ip: dpkt.ip.IP | dpkt.ip6.IP6) -> bool:
    """Recompute the UDP/TCP checksum the plain way (RFC 1071 over the pseudo-header)."""
    seg = bytes(ip.data)
    if isinstance(ip, dpkt.ip.IP):
        pseudo = ip.src + ip.dst + bytes([0, ip.p]) + len(seg).to_bytes(2, "big")
    else:
        pseudo = ip.src + ip.dst + len(seg).to_bytes(4, "big") + bytes([0, 0, 0, ip.nxt])
    return _ones_complement_ok(pseudo + seg)


def _ip_of(eth: dpkt.ethernet.Ethernet) -> dpkt.ip.IP | dpkt.ip6.IP6:
    ip = eth.data
    assert isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)), eth
    return ip


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("proto", ["udp", "tcp"])
@pytest.mark.parametrize("vlan", [None, 7])
def test_template_frames_parse_back_with_their_fields(
    version: int, proto: str, vlan: int | None
) -> None:
    src, dst = ("198.18.0.1", "198.18.0.2") if version == 4 else ("fd00::1", "fd00::be:ef")
    tpl = Template(src_ip=src, dst_ip=dst, proto=proto, vlan=vlan, pcp=3, tcp_flags="SA")
    assert (tpl.ip_version, tpl.proto) == (version, 17 if proto == "udp" else 6)
    assert ("seq" in tpl.fields) == (proto == "tcp")
    assert ("vlan" in tpl.fields) == (vlan is not None)
    n = 5
    fields: dict[str, Any] = {
        "src_port": np.arange(n) + 4000,
        "dst_ip": [dst] * n,
        "ttl": 9,
        "dst_mac": "02:00:00:00:00:aa",
        "payload": [b"p%d" % i * (i * 40 + 1) for i in range(n)],
    }
    if proto == "tcp":
        fields["seq"] = np.arange(n, dtype=np.uint32) * 1000
    frames = tpl.frames(fields=fields)
    assert len(frames) == n
    for i, f in enumerate(frames):
        eth = dpkt.ethernet.Ethernet(f)
        assert eth.dst == bytes.fromhex("0200000000aa")
        if vlan is not None:
            assert eth.vlan_tags[0].id == vlan and eth.vlan_tags[0].pri == 3
        ip = _ip_of(eth)
        assert ipaddress.ip_address(ip.src) == ipaddress.ip_address(src)
        assert ipaddress.ip_address(ip.dst) == ipaddress.ip_address(dst)
        l4 = ip.data
        assert l4.sport == 4000 + i and l4.data == b"p%d" % i * (i * 40 + 1)
        if isinstance(ip, dpkt.ip.IP):
            assert ip.ttl == 9 and ip.len == len(bytes(ip))
            assert _ones_complement_ok(bytes(ip)[: ip.hl * 4])
        else:
            assert ip.hlim == 9 and ip.plen == len(bytes(ip.data))
        if proto == "tcp":
            assert l4.seq == 1000 * i and l4.flags == dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK
        else:
            assert l4.ulen == 8 + len(l4.data)
        assert _l4_checksum_ok(ip), f"packet {i}"
        assert len(f) >= 60
    # A template from one of its frames has the same fields and values.
    again = Template.from_frame(frames[0])
    assert again.fields == tpl.fields and again["src_port"] == 4000 and again["ttl"] == 9


def test_bad_fields_and_values_are_refused_with_what_to_give() -> None:
    tpl = Template()
    with pytest.raises(KeyError, match='no field "seq"'):
        tpl.frames(1, {"seq": 1})
    with pytest.raises(KeyError, match='no field "bogus"'):
        tpl.frames(1, {"bogus": 1})
    with pytest.raises(ValueError, match="src_port value 0x10000 does not fit its 16 bits"):
        tpl.frames(2, {"src_port": [1, 65536]})
    with pytest.raises(ValueError, match="src_port has 3 values for 2 packets"):
        tpl.frames(2, {"src_port": np.arange(3)})
    with pytest.raises(ValueError, match="32 bits"):
        tpl.frames(1, {"dst_ip": "fd00::1"})
    with pytest.raises(ValueError, match="different IP versions"):
        Template(src_ip="198.18.0.1", dst_ip="fd00::1")
    with pytest.raises(ValueError, match='give "udp" or "tcp"'):
        Template(proto="sctp")
    with pytest.raises(ValueError, match="cannot be a template"):
        Template.from_frame(bytes(60))
    assert Template(src_ip="fd00::5")["dst_ip"] == int(ipaddress.ip_address("fd00::2"))


@pytest.fixture
def pair() -> Iterator[VethPair]:
    with VethPair() as p:
        yield p


def _sniff(pair: VethPair) -> socket.socket:
    with pair.enter("a"):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((pair.a.ifname, 0))
        s.settimeout(3)
    return s


def _sniffed(s: socket.socket, n: int, want: int) -> list[bytes]:
    """The next ``n`` incoming frames whose Ethernet type is ``want``."""
    out: list[bytes] = []
    deadline = time.monotonic() + 5
    while len(out) < n and time.monotonic() < deadline:
        data, addr = s.recvfrom(4096)
        if addr[2] != PACKET_OUTGOING and data[12:14] == want.to_bytes(2, "big"):
            out.append(data)
    return out


@needs_root
def test_emitted_template_frames_arrive_at_the_far_kernel(pair: VethPair) -> None:
    """UDP/IPv4 to a kernel socket (which checks the checksum), TCP/IPv6 read raw."""
    udp = Template(
        src_ip=pair.b.ip,
        dst_ip=pair.a.ip,
        src_port=7000,
        dst_port=9961,
        dst_mac=pair.a.mac,
        src_mac=pair.b.mac,
    )
    tcp = Template(
        src_ip="fd00::b",
        dst_ip="fd00::a",
        proto="tcp",
        dst_port=443,
        dst_mac=pair.a.mac,
        src_mac=pair.b.mac,
    )
    n = 32
    results: list[int] = []

    def handler(batch: kbypass.Batch) -> None:
        if results:
            return
        ports = np.arange(n, dtype=np.uint16) + 20000
        payloads = [b"tpl-%02d" % i * (i + 1) for i in range(n)]
        results.append(batch.emit_template(udp, fields={"src_port": ports, "payload": payloads}))
        results.append(
            batch.emit_template(tcp, 4, fields={"seq": np.arange(4) * 7, "tcp_flags": "PA"})
        )

    peer_sock = None
    with pair.enter("a"):
        peer_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer_sock.bind((pair.a.ip, 9961))
        peer_sock.settimeout(3)
    raw = _sniff(pair)
    with pipeline(pair, handler, filter="udp dst port 9960") as p:
        p.start()
        peer_sock.sendto(b"go", (pair.b.ip, 9960))
        got = [peer_sock.recvfrom(2048) for _ in range(n)]
        v6 = _sniffed(raw, 4, 0x86DD)
        assert until(lambda: p.totals()["emitted"] == n + 4)
        acc = p.stop()
        t = p.totals()
    assert results == [n, 4]
    assert sorted(got) == sorted(
        (b"tpl-%02d" % i * (i + 1), (pair.b.ip, 20000 + i)) for i in range(n)
    )
    assert len(v6) == 4
    for i, f in enumerate(v6):
        ip = _ip_of(dpkt.ethernet.Ethernet(f))
        assert ip.data.dport == 443 and ip.data.seq == 7 * i and _l4_checksum_ok(ip)
    assert (t["emitted"], t["emit_failed"], t["handler_errors"]) == (n + 4, 0, 0), t
    assert acc is not None and acc["balanced"] and acc["app"] == 0


@needs_root
def test_emit_template_without_free_frames_is_counted(pair: VethPair) -> None:
    out: dict[str, int] = {}
    tpl = Template(src_ip=pair.b.ip, dst_ip=pair.a.ip, dst_port=9971, dst_mac=pair.a.mac)

    def flood(batch: kbypass.Batch) -> None:
        if out:
            return
        try:
            batch.emit_template(tpl, 65)
        except RuntimeError as e:
            out["limit_error"] = int("at most" not in str(e) and "more than the 64" in str(e))
        out["emitted"] = batch.emit_template(tpl, 64)
        batch.verdicts[:] = kbypass.DROP

    # 64 frames, some on the receive side: fewer free than one batch may emit.
    with pipeline(pair, flood, filter="udp dst port 9970", frames=64, batch=64) as p:
        p.start()
        with pair.enter("a"):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(b"x", (pair.b.ip, 9970))
            s.close()
        assert until(lambda: "emitted" in out and p.totals()["emit_failed"] > 0)
        acc = p.stop()
        t = p.totals()
    assert out["limit_error"] == 1, out
    assert 8 <= out["emitted"] < 64, out
    assert t["emitted"] == out["emitted"] and t["emit_failed"] == 64 - out["emitted"], t
    assert acc is not None and acc["balanced"] and acc["app"] == 0


def _complete_partial(frame: bytes) -> bytes:
    """``frame`` with its UDP checksum completed from the pseudo-header sum in the field, as a
    device does for ``CHECKSUM_PARTIAL`` (veth hands such packets over as they are)."""
    ip = _ip_of(dpkt.ethernet.Ethernet(frame))
    seg = bytes(ip.data)
    at = len(frame) - len(seg)  # no Ethernet padding: these frames are longer than 60 bytes
    s = sum(int.from_bytes((seg + b"\0")[i : i + 2], "big") for i in range(0, len(seg), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    c = (~s & 0xFFFF) or 0xFFFF
    return frame[: at + 6] + c.to_bytes(2, "big") + frame[at + 8 :]


@needs_root
@pytest.mark.parametrize("tx_metadata", [None, "kernel", "offload"])
def test_emitted_checksums_are_right_at_the_receiver_on_every_path(
    pair: VethPair, tx_metadata: str | None
) -> None:
    """Software (kbypass), kernel software (XDP_UMEM_TX_SW_CSUM) and driver offload via AF_XDP
    TX metadata: the far kernel accepts every datagram, and the bytes are right (offload:
    once completed as the device would)."""
    n = 8
    tpl = Template(
        src_ip=pair.b.ip, dst_ip=pair.a.ip, dst_port=9981, dst_mac=pair.a.mac, src_mac=pair.b.mac
    )
    done: list[int] = []

    def handler(batch: kbypass.Batch) -> None:
        if not done:
            payloads = [b"csum-%d-" % i * 7 for i in range(n)]
            done.append(batch.emit_template(tpl, fields={"payload": payloads}))

    with pair.enter("a"):
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind((pair.a.ip, 9981))
        peer.settimeout(3)
    raw = _sniff(pair)
    with pipeline(pair, handler, filter="udp dst port 9980", tx_metadata=tx_metadata) as p:
        assert isinstance(p.port, kbypass.XdpPort)
        sock = p.port.sockets[0]
        notes = sock.notes
        m = re.match(r"(\d+)\.(\d+)", os.uname().release)
        if tx_metadata is not None and m and (int(m[1]), int(m[2])) < (6, 8):
            assert any("TX metadata" in x for x in notes), notes  # refused, and said so
            pytest.skip(f"AF_XDP TX metadata needs Linux >= 6.8 (this is {os.uname().release})")
        t0 = time.clock_gettime_ns(time.CLOCK_TAI)
        p.start()
        peer.sendto(b"go", (pair.b.ip, 9980))
        got = sorted(peer.recvfrom(2048)[0] for _ in range(n))
        frames = [f for f in _sniffed(raw, n, 0x0800) if f[36:38] == (9981).to_bytes(2, "big")]
        p.stop()
        t1 = time.clock_gettime_ns(time.CLOCK_TAI)
        times = sock.tx_timestamps()
        stats = sock.stats()
    assert done == [n] and got == sorted(b"csum-%d-" % i * 7 for i in range(n))
    assert not any("TX metadata" in x for x in notes), notes
    assert len(frames) == n
    for f in frames:
        if tx_metadata == "offload":
            assert not _l4_checksum_ok(_ip_of(dpkt.ethernet.Ethernet(f))), "left to the device"
            f = _complete_partial(f)
        assert _l4_checksum_ok(_ip_of(dpkt.ethernet.Ethernet(f)))
    assert stats["tx_metadata"] == (0 if tx_metadata is None else n), stats
    # TX timestamps (CLOCK_TAI; copy mode: the skb destructor's time) for the emitted frames.
    assert len(times) == (0 if tx_metadata is None else n), times
    assert all(t0 <= ns <= t1 for _, ns in times), (t0, times, t1)
    assert stats["tx_timestamps"] == len(times) and stats["tx_timestamps_missing"] == 0, stats


@needs_root
def test_a_per_packet_handler_emits_from_a_template(pair: VethPair) -> None:
    tpl = Template(
        src_ip=pair.b.ip, dst_ip=pair.a.ip, src_port=9990, dst_mac=pair.a.mac, src_mac=pair.b.mac
    )
    errors: list[str] = []

    def handle(pkt: kbypass.Packet) -> kbypass.Action:
        assert pkt.udp is not None
        fields = {"dst_port": pkt.udp.src_port, "payload": b"re:" + pkt.bytes()[42:]}
        assert pkt.emit_template(tpl, fields=fields)
        try:
            pkt.emit_template(tpl, fields={"seq": 1})
        except KeyError as e:
            errors.append(str(e))
        return kbypass.DROP

    with pair.enter("a"):
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind((pair.a.ip, 9991))
        peer.settimeout(3)
    with pair.enter("b"):
        p = kbypass.Pipeline(
            pair.b.ifname, per_packet=handle, mode="copy", cpus=False, filter="udp dst port 9990"
        )
    with p:
        p.start()
        for i in range(5):
            peer.sendto(b"ask-%d" % i, (pair.b.ip, 9990))
        got = sorted(peer.recvfrom(2048) for _ in range(5))
        p.stop()
        t = p.totals()
    assert got == sorted((b"re:ask-%d" % i, (pair.b.ip, 9990)) for i in range(5))
    assert (t["emitted"], t["handler_errors"]) == (5, 0), t
    assert len(errors) == 5 and all('no field "seq"' in e for e in errors), errors
