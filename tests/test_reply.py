"""kbypass.packet's reply helpers, judged by independent readers.

Requests are built with dpkt; replies are read back by tshark (every checksum verified) and by
dpkt. As root, an XdpSocket on a veth end whose kernel has no address answers the peer kernel's
``ping`` (ARP + ICMP echo, Neighbor Solicitation + ICMPv6 echo).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dpkt
import numpy as np
import pytest

from kbypass import packet

ASKER_MAC = bytes.fromhex("0200000000a1")
MY_MAC = "02:00:00:00:00:b2"
MY_MAC_B = bytes.fromhex("0200000000b2")
OTHER_MAC = bytes.fromhex("0200000000c3")
ASKER4, MY4 = "198.18.0.1", "198.18.0.2"
ASKER6, MY6 = "fd00::1", "fd00::beef"
SOLICITED_MY6 = "ff02::1:ff00:beef"


def a4(ip: str) -> bytes:
    return socket.inet_aton(ip)


def a6(ip: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, ip)


def l2(
    ethertype: int, vlans: Sequence[int] = (), src: bytes = ASKER_MAC, dst: bytes = MY_MAC_B
) -> bytes:
    """Ethernet with 0, 1 (802.1Q) or 2 (802.1ad + 802.1Q) VLAN tags."""
    hdr = dst + src
    tpids = [0x88A8, 0x8100] if len(vlans) == 2 else [0x8100]
    for tpid, vid in zip(tpids, vlans):
        hdr += struct.pack("!HH", tpid, vid)
    return hdr + struct.pack("!H", ethertype)


def ip4(proto: int, l4: dpkt.Packet, opts: bytes = b"") -> bytes:
    """IPv4 from the asker to us; dpkt computes the header and UDP/TCP/ICMP checksums."""
    ip = dpkt.ip.IP(src=a4(ASKER4), dst=a4(MY4), p=proto, ttl=64, id=0x4242, opts=opts, data=l4)
    ip.hl = 5 + len(opts) // 4
    ip.len = 20 + len(opts) + len(bytes(l4))
    return bytes(ip)


def ip6(nxt: int, l4: dpkt.Packet, src: str = ASKER6, dst: str = MY6, hlim: int = 64) -> bytes:
    ip = dpkt.ip6.IP6(src=a6(src), dst=a6(dst), nxt=nxt, hlim=hlim, data=l4)
    ip.plen = len(bytes(l4))
    return bytes(ip)


def udp(payload: bytes) -> dpkt.udp.UDP:
    return dpkt.udp.UDP(sport=47000, dport=48000, ulen=8 + len(payload), data=payload)


def udp4_req(payload: bytes, vlans: Sequence[int] = (), opts: bytes = b"") -> bytes:
    return l2(0x0800, vlans) + ip4(17, udp(payload), opts)


def udp6_req(payload: bytes, vlans: Sequence[int] = ()) -> bytes:
    return l2(0x86DD, vlans) + ip6(17, udp(payload))


def echo4_req(data: bytes, vlans: Sequence[int] = (), opts: bytes = b"") -> bytes:
    icmp = dpkt.icmp.ICMP(type=8, code=0, data=dpkt.icmp.ICMP.Echo(id=0x1234, seq=7, data=data))
    return l2(0x0800, vlans) + ip4(1, icmp, opts)


def echo6_req(data: bytes, vlans: Sequence[int] = ()) -> bytes:
    icmp = dpkt.icmp6.ICMP6(type=128, code=0, data=dpkt.icmp6.ICMP6.Echo(id=0x1234, seq=7))
    icmp.data.data = data
    return l2(0x86DD, vlans) + ip6(58, icmp)


def tcp_req(version: int, flags: int, seq: int, ack: int, data: bytes) -> bytes:
    t = dpkt.tcp.TCP(sport=47000, dport=80, seq=seq, ack=ack, flags=flags, off=5, data=data)
    if version == 4:
        return l2(0x0800) + ip4(6, t)
    return l2(0x86DD) + ip6(6, t)


def arp_req(vlans: Sequence[int] = (), tpa: str = MY4) -> bytes:
    arp = dpkt.arp.ARP(
        op=dpkt.arp.ARP_OP_REQUEST, sha=ASKER_MAC, spa=a4(ASKER4), tha=b"\0" * 6, tpa=a4(tpa)
    )
    return l2(0x0806, vlans, dst=b"\xff" * 6) + bytes(arp)


def ns_req(src: str = ASKER6, sllao: bytes | None = OTHER_MAC, vlans: Sequence[int] = ()) -> bytes:
    """A Neighbor Solicitation for MY6 to its solicited-node address."""
    opts = b"" if sllao is None else b"\x01\x01" + sllao
    icmp = dpkt.icmp6.ICMP6(type=135, code=0, data=b"\0\0\0\0" + a6(MY6) + opts)
    eth_dst = bytes.fromhex("3333ff00beef")
    return l2(0x86DD, vlans, dst=eth_dst) + ip6(58, icmp, src=src, dst=SOLICITED_MY6, hlim=255)


def answered(
    request: bytes, fn: Callable[[bytearray, int], int], room: int = 64
) -> tuple[bytes, bytearray]:
    """Answer ``request`` in a bytearray with ``room`` bytes more; the reply and the buffer."""
    buf = bytearray(request) + bytearray(b"\x5a" * room)
    n = fn(buf, len(request))
    return bytes(buf[:n]), buf


# --- read back by tshark -----------------------------------------------------------------------

FIELDS = [
    "eth.src", "eth.dst", "ieee8021ad.id", "vlan.id",
    "ip.src", "ip.dst", "ip.ttl", "ip.hdr_len", "ip.len", "ip.flags.df", "ip.checksum.status",
    "ipv6.src", "ipv6.dst", "ipv6.hlim", "ipv6.plen",
    "udp.srcport", "udp.dstport", "udp.length", "udp.payload", "udp.checksum.status",
    "tcp.srcport", "tcp.dstport", "tcp.seq_raw", "tcp.ack_raw", "tcp.flags.reset",
    "tcp.flags.ack", "tcp.flags.syn", "tcp.checksum.status",
    "icmp.type", "icmp.ident", "icmp.seq", "icmp.checksum.status", "data.data",
    "icmpv6.type", "icmpv6.checksum.status", "icmpv6.echo.identifier",
    "icmpv6.nd.na.flag.s", "icmpv6.nd.na.flag.o", "icmpv6.nd.na.target_address",
    "icmpv6.opt.type", "icmpv6.opt.linkaddr",
    "arp.opcode", "arp.src.hw_mac", "arp.src.proto_ipv4", "arp.dst.hw_mac", "arp.dst.proto_ipv4",
    "_ws.malformed",
]  # fmt: skip

GOOD = "1"  # tshark's checksum status: 0 bad, 1 good, 2 unverified


def tshark_read(frames: Sequence[bytes], tmp_path: Path) -> list[dict[str, Any]]:
    """Write ``frames`` to a pcap with kbypass's writer and read each back with tshark, checksum
    checks on; one dict per frame, a field's values joined with ','."""
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("optional: tshark is not installed (bash .ci/install-system-deps)")
    path = tmp_path / "replies.pcap"
    with packet.PcapWriter(str(path)) as w:
        for f in frames:
            w.write(f)
    args = [tshark, "-r", str(path), "-T", "json"]
    for pref in ("ip", "udp", "tcp"):
        args += ["-o", f"{pref}.check_checksum:TRUE"]
    # The replies' UDP ports are not a protocol's: their payload is data.
    args += ["-d", "udp.port==47000,data", "-d", "udp.port==48000,data"]
    for f in FIELDS:
        args += ["-e", f]
    r = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    rows = [p["_source"]["layers"] for p in json.loads(r.stdout)]
    assert len(rows) == len(frames)
    return [{k: ",".join(v) for k, v in row.items()} for row in rows]


def test_replies_read_back_by_tshark(tmp_path: Path) -> None:
    cases: list[tuple[bytes, Callable[[bytearray, int], int], dict[str, str]]] = []

    def udp_to(payload: bytes) -> Callable[[bytearray, int], int]:
        return lambda f, n: packet.udp_reply(f, payload, length=n)

    echo = packet.icmp_echo_reply
    ip4_reply = {"ip.src": MY4, "ip.dst": ASKER4, "ip.ttl": "64", "ip.hdr_len": "20"}
    ip4_reply |= {"ip.flags.df": "1", "ip.checksum.status": GOOD}
    ip6_reply = {"ipv6.src": MY6, "ipv6.dst": ASKER6, "ipv6.hlim": "64"}
    eth = {"eth.src": MY_MAC, "eth.dst": "02:00:00:00:00:a1"}
    udp_out = {"udp.srcport": "48000", "udp.dstport": "47000", "udp.checksum.status": GOOD}
    # UDP: IPv4 untagged; IPv4 with options under QinQ; IPv6 tagged with a longer payload.
    cases.append(
        (
            udp4_req(b"question"),
            udp_to(b"pong!"),
            eth | ip4_reply | udp_out | {"udp.length": "13", "udp.payload": b"pong!".hex()},
        )
    )
    cases.append(
        (
            udp4_req(b"question", vlans=(100, 7), opts=b"\x94\x04\x00\x00"),
            udp_to(b"an answer"),
            eth
            | ip4_reply
            | udp_out
            | {"ieee8021ad.id": "100", "vlan.id": "7", "ip.len": str(20 + 8 + 9)},
        )
    )
    cases.append(
        (
            udp6_req(b"q", vlans=(7,)),
            udp_to(b"a much longer answer than the question"),
            eth | ip6_reply | udp_out | {"vlan.id": "7", "ipv6.plen": str(8 + 38)},
        )
    )
    # ICMP echo: IPv4 with options; IPv6 under QinQ.
    cases.append(
        (
            echo4_req(b"0123456789abcdef", opts=b"\x94\x04\x00\x00"),
            echo,
            eth
            | ip4_reply
            | {"icmp.type": "0", "icmp.ident": "4660", "icmp.seq": "7"}
            | {"icmp.checksum.status": GOOD, "data.data": b"0123456789abcdef".hex()},
        )
    )
    cases.append(
        (
            echo6_req(b"abc", vlans=(100, 7)),
            echo,
            eth
            | ip6_reply
            | {"ieee8021ad.id": "100", "vlan.id": "7", "icmpv6.type": "129"}
            | {"icmpv6.checksum.status": GOOD, "icmpv6.echo.identifier": "0x1234"},
        )
    )
    # TCP: a SYN gets RST+ACK acknowledging it; a segment with ACK a RST at its ack number.
    tcp_out = {"tcp.srcport": "80", "tcp.dstport": "47000", "tcp.flags.reset": "1"}
    tcp_out |= {"tcp.flags.syn": "0", "tcp.checksum.status": GOOD}
    cases.append(
        (
            tcp_req(4, dpkt.tcp.TH_SYN, 1000, 0, b""),
            packet.tcp_rst,
            eth
            | ip4_reply
            | tcp_out
            | {"tcp.seq_raw": "0", "tcp.ack_raw": "1001"}
            | {"tcp.flags.ack": "1"},
        )
    )
    cases.append(
        (
            tcp_req(6, dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, 5, 0xDEADBEEF, b"data"),
            packet.tcp_rst,
            eth | ip6_reply | tcp_out | {"tcp.seq_raw": str(0xDEADBEEF), "tcp.flags.ack": "0"},
        )
    )
    # ARP, untagged and tagged.
    arp_out = {"arp.opcode": "2", "arp.src.hw_mac": MY_MAC, "arp.src.proto_ipv4": MY4}
    arp_out |= {"arp.dst.hw_mac": "02:00:00:00:00:a1", "arp.dst.proto_ipv4": ASKER4}
    for vlans in [(), (42,)]:
        cases.append(
            (
                arp_req(vlans),
                lambda f, n: packet.arp_reply(f, MY_MAC, MY4, length=n),
                eth | arp_out | ({"vlan.id": "42"} if vlans else {}),
            )
        )

    # Neighbor Advertisements: to a solicitation from an address (to its link-layer option's
    # MAC, solicited) and to duplicate address detection (to all nodes, not solicited).
    def na(f: bytearray, n: int) -> int:
        return packet.neighbor_advert(f, MY_MAC, MY6, length=n)

    na_out = {"ipv6.src": MY6, "ipv6.hlim": "255", "icmpv6.type": "136"}
    na_out |= {"icmpv6.checksum.status": GOOD, "icmpv6.nd.na.target_address": MY6}
    na_out |= {"icmpv6.opt.type": "2", "icmpv6.opt.linkaddr": MY_MAC, "icmpv6.nd.na.flag.o": "1"}
    cases.append(
        (
            ns_req(vlans=(9,)),
            na,
            na_out
            | {"eth.src": MY_MAC, "eth.dst": "02:00:00:00:00:c3", "ipv6.dst": ASKER6}
            | {"icmpv6.nd.na.flag.s": "1", "vlan.id": "9"},
        )
    )
    cases.append(
        (
            ns_req(src="::", sllao=None),
            na,
            na_out
            | {"eth.src": MY_MAC, "eth.dst": "33:33:00:00:00:01", "ipv6.dst": "ff02::1"}
            | {"icmpv6.nd.na.flag.s": "0"},
        )
    )
    replies = [answered(req, fn)[0] for req, fn, _ in cases]
    for reply, row, (req, _, want) in zip(replies, tshark_read(replies, tmp_path), cases):
        assert "_ws.malformed" not in row, (req.hex(), row)
        got = {k: row.get(k) for k in want}
        assert got == want, (req.hex(), reply.hex())
    # dpkt reads the same: e.g. the QinQ IPv6 echo reply carries the request's data.
    eth_frame = dpkt.ethernet.Ethernet(replies[4])
    assert [t.id for t in eth_frame.vlan_tags] == [100, 7]
    assert bytes(eth_frame.data.data.data.data) == b"abc"


def test_frames_in_any_writable_buffer() -> None:
    req = echo4_req(b"x" * 20)
    want = answered(req, packet.icmp_echo_reply, room=0)[0]
    # A bytearray, a writable memoryview of one, a uint8 array, a row of a 2-D array.
    ba = bytearray(req)
    assert packet.icmp_echo_reply(ba) == len(want) and bytes(ba) == want
    ba = bytearray(req)
    assert packet.icmp_echo_reply(memoryview(ba)) == len(want) and bytes(ba) == want
    arr = np.frombuffer(bytearray(req), dtype=np.uint8)
    assert packet.icmp_echo_reply(arr) == len(want) and arr.tobytes() == want
    frames, lengths = packet.frames_from_bytes([req, req], width=128)
    n = packet.icmp_echo_reply(frames[1], length=int(lengths[1]))
    assert frames[1, :n].tobytes() == want + bytes(n - len(want))
    assert frames[0, : len(req)].tobytes() == req
    # What cannot be answered in place is refused with the reason.
    with pytest.raises(TypeError, match="read-only"):
        packet.icmp_echo_reply(req)  # type: ignore[arg-type]
    ro = np.frombuffer(req, dtype=np.uint8)
    with pytest.raises(TypeError, match="read-only"):
        packet.icmp_echo_reply(ro)
    with pytest.raises(TypeError, match="1-D uint8"):
        packet.icmp_echo_reply(frames)
    with pytest.raises(TypeError, match="1-D uint8"):
        packet.icmp_echo_reply(np.zeros(64, dtype=np.uint16))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="contiguous"):
        packet.icmp_echo_reply(np.zeros(128, dtype=np.uint8)[::2])
    with pytest.raises(TypeError, match="not list"):
        packet.icmp_echo_reply([1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="longer than the buffer"):
        packet.icmp_echo_reply(bytearray(req), length=len(req) + 1)
    with pytest.raises(ValueError, match="negative"):
        packet.icmp_echo_reply(bytearray(req), length=-1)


def test_refusals_say_why_and_leave_the_frame_alone() -> None:
    def refused(request: bytes, fn: Callable[[bytearray, int], int], room: int = 64) -> str:
        buf = bytearray(request) + bytearray(room)
        with pytest.raises(packet.ReplyError) as e:
            fn(buf, len(request))
        assert bytes(buf) == request + bytes(room), "left as it was"
        assert isinstance(e.value, ValueError)
        return str(e.value)

    def udp_x(f: bytearray, n: int) -> int:
        return packet.udp_reply(f, b"x" * 40, length=n)

    def arp(f: bytearray, n: int) -> int:
        return packet.arp_reply(f, MY_MAC, MY4, length=n)

    def na(f: bytearray, n: int) -> int:
        return packet.neighbor_advert(f, MY_MAC, MY6, length=n)

    echo = packet.icmp_echo_reply
    assert "not an ICMP or ICMPv6 echo request" in refused(udp4_req(b""), echo)
    assert "not a UDP datagram" in refused(echo4_req(b""), udp_x)
    assert "needs 82 bytes but the buffer holds 70" in refused(
        udp4_req(b"abcdefghijklmnopqrstuvwxyzAB"), udp_x, room=0
    )
    assert "cut short" in refused(udp4_req(b"abc")[:-1], udp_x)
    bad = bytearray(echo4_req(b"abcd"))
    bad[-1] ^= 1
    assert "ICMP checksum does not verify" in refused(bytes(bad), echo)
    assert "IP fragment" in refused(l2(0x0800) + _fragment(), echo)
    assert "TCP RST is never answered" in refused(
        tcp_req(4, dpkt.tcp.TH_RST, 1, 0, b""), packet.tcp_rst
    )
    assert "asks for 198.18.0.9, not for 198.18.0.2" in refused(arp_req(tpa="198.18.0.9"), arp)
    assert "multicast or broadcast MAC" in refused(
        l2(0x0800, dst=b"\xff" * 6) + ip4(1, _echo()), echo
    )
    ns_hop_64 = dpkt.icmp6.ICMP6(type=135, data=b"\0" * 4 + a6(MY6))
    assert "hop limit below 255" in refused(l2(0x86DD) + ip6(58, ns_hop_64, dst=SOLICITED_MY6), na)
    # Arguments are the caller's mistakes: ValueError, not ReplyError.
    req = bytearray(arp_req())
    for mac, ip, msg in [
        ("ff:ff:ff:ff:ff:ff", MY4, "multicast or zero address"),
        ("02:00:00:00:00", MY4, "not a MAC address"),
        (b"\x02\0\0", MY4, "6 bytes, not 3"),
        (MY_MAC, MY6, "must be an IPv4 address"),
        (MY_MAC, "224.0.0.1", "not a unicast address"),
    ]:
        with pytest.raises(ValueError, match=msg) as e:
            packet.arp_reply(req, mac, ip)
        assert not isinstance(e.value, packet.ReplyError)
    assert bytes(req) == arp_req()
    with pytest.raises(ValueError, match="must be an IPv6 address"):
        packet.neighbor_advert(bytearray(ns_req()), MY_MAC, MY4)
    # Addresses in every spelling.
    for ip4_like in (MY4, a4(MY4), int(ipaddress.IPv4Address(MY4)), ipaddress.IPv4Address(MY4)):
        assert packet.arp_reply(bytearray(arp_req()), MY_MAC_B, ip4_like) == 42
    for ip6_like in (MY6, a6(MY6), int(ipaddress.IPv6Address(MY6)), ipaddress.IPv6Address(MY6)):
        assert packet.neighbor_advert(bytearray(ns_req()), "02-00-00-00-00-B2", ip6_like) == 86


def _echo() -> dpkt.icmp.ICMP:
    return dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=1, seq=1, data=b"abcd"))


def _fragment() -> bytes:
    ip = dpkt.ip.IP(src=a4(ASKER4), dst=a4(MY4), p=1, ttl=64, data=_echo())
    ip.mf = 1
    ip.len = 20 + len(bytes(_echo()))
    return bytes(ip)


def test_reply_rows_answers_the_masked_rows_and_updates_lengths() -> None:
    reqs = [echo4_req(b"a" * 30), udp4_req(b"b"), echo6_req(b"c" * 30, vlans=(5,)), echo4_req(b"d")]
    frames, lengths = packet.frames_from_bytes(reqs, width=256)
    before = frames.copy()
    mask = np.array([True, True, True, False])
    done = packet.reply(frames, lengths, "icmp_echo", mask=mask)
    assert done.tolist() == [True, False, True, False]
    assert lengths.tolist() == [len(reqs[0]), len(reqs[1]), len(reqs[2]), len(reqs[3])]
    assert (frames[[1, 3]] == before[[1, 3]]).all(), "not an echo, masked out: untouched"
    for i in (0, 2):
        want = answered(reqs[i], packet.icmp_echo_reply, room=0)[0]
        assert frames[i, : lengths[i]].tobytes() == want
    # UDP with a payload longer than the request: lengths grow; ARP by address.
    frames, lengths = packet.frames_from_bytes([udp6_req(b""), arp_req()], width=128)
    done = packet.reply(frames, lengths, "udp", payload=b"z" * 50)
    assert done.tolist() == [True, False] and lengths.tolist() == [14 + 40 + 8 + 50, 42]
    done = packet.reply(frames, lengths, "arp", mac=MY_MAC, ip=MY4)
    assert done.tolist() == [False, True] and lengths.tolist() == [112, 60]
    assert packet.reply(frames, lengths, "neighbor_advert", mac=MY_MAC, ip=MY6).sum() == 0
    # Shapes and arguments are checked before any row is touched.
    with pytest.raises(ValueError, match="needs a payload"):
        packet.reply(frames, lengths, "udp")
    with pytest.raises(ValueError, match="takes no payload"):
        packet.reply(frames, lengths, "icmp_echo", payload=b"x")
    with pytest.raises(ValueError, match=r"kind=\"ping\": use one of"):
        packet.reply(frames, lengths, "ping")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="updated in place"):
        packet.reply(frames, lengths.astype(np.int64), "icmp_echo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one entry per frame"):
        packet.reply(frames, lengths, "icmp_echo", mask=np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="longer than a row"):
        packet.reply(frames, np.array([500, 1], dtype=np.uint32), "icmp_echo")
    with pytest.raises(TypeError, match="2-D"):
        packet.reply(frames[0], lengths, "icmp_echo")
    assert packet.REPLY_KINDS == ("udp", "icmp_echo", "tcp_rst", "arp", "neighbor_advert")


# --- end to end: a processor owns addresses the kernel does not have ---------------------------

MINE4, MINE6, PEER6 = "198.18.0.77", "fd00::77", "fd00::1"
NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for AF_XDP and namespaces")
OWNED = "ether proto arp or icmp or icmp6"
"""The XDP filter of the responders: everything they may answer."""


class Responder:
    """Answers, with the helpers, what a host owning MINE4 and MINE6 at ``mac`` answers."""

    def __init__(self, mac: str) -> None:
        self.mac = mac
        self.counts = {"arp": 0, "na": 0, "echo": 0, "other": 0}

    def __call__(self, frame: packet.Frame, length: int) -> int | None:
        """Answer ``frame[:length]`` in place; the reply's length, or None."""
        answers: list[tuple[str, Callable[[], int]]] = [
            ("arp", lambda: packet.arp_reply(frame, self.mac, MINE4, length=length)),
            ("na", lambda: packet.neighbor_advert(frame, self.mac, MINE6, length=length)),
            ("echo", lambda: packet.icmp_echo_reply(frame, length=length)),
        ]
        for kind, answer in answers:
            try:
                n = answer()
            except packet.ReplyError:
                continue
            self.counts[kind] += 1
            return n
        self.counts["other"] += 1  # router solicitations, MLD reports, DAD of a's own address
        return None


def owned_by_nobody(veth_pair: Any) -> None:
    """Leave b's interface without any address, give a an IPv6 one (no DAD wait)."""
    veth_pair.run("b", "ip", "addr", "flush", "dev", veth_pair.b.ifname)
    veth_pair.run("a", "ip", "addr", "add", f"{PEER6}/64", "dev", veth_pair.a.ifname, "nodad")


def ping_the_owned_addresses(veth_pair: Any, responder: Responder) -> None:
    """a's kernel, with no neighbour entry for them, pings MINE4 and MINE6 three times each:
    every ping is answered, and a's neighbour table learned b's MAC from our ARP/NA replies."""
    for target, flag in ((MINE4, "-4"), (MINE6, "-6")):
        r = veth_pair.run("a", "ping", flag, "-c3", "-i0.2", "-W2", target, check=False, timeout=30)
        assert r.returncode == 0 and " 3 received" in r.stdout, (
            r.stdout + r.stderr,
            responder.counts,
        )
    neigh = veth_pair.run("a", "ip", "neigh", "show", "dev", veth_pair.a.ifname).stdout
    for addr in (MINE4, MINE6):
        line = next((ln for ln in neigh.splitlines() if ln.startswith(addr + " ")), "")
        assert f"lladdr {veth_pair.b.mac}" in line, neigh
    counts = responder.counts
    assert counts["arp"] >= 1 and counts["na"] >= 1 and counts["echo"] == 6, counts


@NEEDS_ROOT
@pytest.mark.veth_pair(ipv6=True)
def test_an_xdp_socket_answers_the_kernels_ping(veth_pair: Any) -> None:
    """An XdpSocket on b copies each frame into a bytearray with room, answers it there and
    sends the reply."""
    from kbypass import XdpSocket

    owned_by_nobody(veth_pair)
    with veth_pair.enter("b"):
        sock = XdpSocket(veth_pair.b.ifname, queue=0, mode="copy", frames=1024, filter=OWNED)
    responder = Responder(veth_pair.b.mac)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            out = []
            with sock.recv(max=64, timeout=0.05) as batch:
                for i in range(len(batch)):
                    buf = bytearray(batch[i]) + bytearray(64)
                    n = responder(buf, len(batch[i]))
                    if n is not None:
                        out.append(bytes(buf[:n]))
            if out:
                sock.send(out)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        ping_the_owned_addresses(veth_pair, responder)
    finally:
        stop.set()
        t.join(timeout=5)
        sock.close()
    assert not t.is_alive()


@NEEDS_ROOT
@pytest.mark.veth_pair(ipv6=True)
def test_a_pipeline_handler_answers_the_kernels_ping_in_place(veth_pair: Any) -> None:
    """A Pipeline's batch handler answers each frame in place in its ``batch.frame(i)`` view
    (ARP, NA and echo replies are as long as their requests) and gives it the TX verdict."""
    import kbypass

    owned_by_nobody(veth_pair)
    responder = Responder(veth_pair.b.mac)

    def handler(batch: kbypass.Batch) -> None:
        for i in range(len(batch)):
            frame = batch.frame(i)
            n = responder(frame, len(frame))
            if n is not None:
                assert n == len(frame)
                batch.verdicts[i] = kbypass.TX

    with veth_pair.enter("b"):
        p = kbypass.Pipeline(
            veth_pair.b.ifname, handler, filter=OWNED, mode="copy", cpus=False, progress=False
        )
    with p:
        p.start()
        ping_the_owned_addresses(veth_pair, responder)
        p.stop()
        totals = p.totals()
    assert totals["handler_errors"] == 0 and totals["tx_failed"] == 0, totals
    assert totals["tx"] == sum(responder.counts[k] for k in ("arp", "na", "echo")), totals
