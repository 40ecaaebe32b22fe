"""Building frames in a handler (issue 10, "build and emit"), end to end on a veth pair.

Reshaped frames (a length set, bytes pushed or popped at the front) and emitted frames are
checked where they arrive, on the far side of the pair, by the kernel there: a UDP socket that
gets the reply, an AF_PACKET socket that reads the VLAN tag the kernel parsed, the kernel's
VXLAN device that decapsulates what the handler encapsulated (and encapsulates what it
decapsulates). Addresses are in 198.18.0.0/15 only.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import kbypass
from _pipelines import pipeline as _pipeline
from _pipelines import until as _until
from kbypass import Pipeline
from kbypass.testing import VethPair

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for AF_XDP and namespaces")

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_OUTGOING = 4
TP_STATUS_VLAN_VALID = 1 << 4


@pytest.fixture
def pair() -> Iterator[VethPair]:
    with VethPair() as p:
        yield p


@pytest.fixture
def pair2() -> Iterator[VethPair]:
    with VethPair(queues=2) as p:
        yield p


def _udp(pair: VethPair, port: int, host: str = "") -> socket.socket:
    """A UDP socket in namespace a bound to ``host:port`` (every address by default)."""
    with pair.enter("a"):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((host, port))
        s.settimeout(3)
    return s


def _recv_all(s: socket.socket, n: int) -> list[tuple[bytes, tuple[str, int]]]:
    return [s.recvfrom(2048) for _ in range(n)]


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _ip(text: str) -> bytes:
    return socket.inet_aton(text)


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _udp_frame(
    dst_mac: str, src_mac: str, src: str, dst: str, sport: int, dport: int, payload: bytes,
    vlan: int | None = None,
) -> bytes:  # fmt: skip
    """An Ethernet + IPv4 + UDP frame (UDP checksum 0), VLAN-tagged if ``vlan`` is given."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, _ip(src), _ip(dst)
    )
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    tag = b"" if vlan is None else struct.pack("!HH", 0x8100, vlan)
    return _mac(dst_mac) + _mac(src_mac) + tag + b"\x08\x00" + ip + udp


def _error_of(call: Callable[[], object]) -> str:
    """``"Type: message"`` of what ``call`` raises. Not ``pytest.raises`` inside a handler: its
    traceback would keep the handler's frame, and with it the frame views in its locals, alive
    past the batch (they would be counted as escaped, rightly)."""
    try:
        call()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def _be16(f: np.ndarray, at: int, value: int) -> None:
    f[at : at + 2] = (value >> 8, value & 0xFF)


def test_set_length_grows_and_cuts_replies_and_bad_lengths_change_nothing(pair: VethPair) -> None:
    errors: list[str] = []

    def reply(batch: kbypass.Batch) -> None:
        if not errors:
            n0 = int(batch.lengths[0])

            def write() -> None:
                batch.lengths[0] = 60

            errors.extend(
                _error_of(bad)
                for bad in (
                    lambda: batch.set_length(0, 13),
                    lambda: batch.set_length(0, 5000),
                    lambda: batch.set_lengths(np.full(len(batch), 5000, np.uint32)),
                    lambda: batch.set_lengths(np.zeros(len(batch) + 1, np.uint32)),
                    lambda: batch.push_front(0, 10_000),
                    lambda: batch.pop_front(0, n0),
                    lambda: batch.adjust_head(-257),
                    lambda: batch.set_length(len(batch), 60),
                    write,
                    lambda: batch.push_vlan(5000),
                    lambda: batch.push_vlan(1, tpid=0x0800),
                    lambda: batch.set_lengths([60] * len(batch)),  # type: ignore[arg-type]
                )
            )
            assert int(batch.lengths[0]) == n0 == len(batch.frame(0)), "nothing changed"
        batch.swap_macs()
        batch.swap_ips()
        batch.swap_ports()
        h = batch.headers
        for i in range(len(batch)):
            n, l3, l4 = int(batch.lengths[i]), int(h["l3_off"][i]), int(h["l4_off"][i])
            even = int(chr(batch.frame(i)[l4 + 8 + 6])) % 2 == 0  # "ping-NN": N's parity
            new = n + 5 if even else l4 + 8 + 6  # grow by "/pong", or cut to "ping-N"
            batch.set_length(i, new)
            f = batch.frame(i)
            assert len(f) == new == int(batch.lengths[i])
            if new > n:
                assert bytes(f[n:]) == bytes(5), "grown bytes are zeroed"
                f[n:] = np.frombuffer(b"/pong", np.uint8)
            _be16(f, l3 + 2, new - l3)  # IPv4 total length
            _be16(f, l4 + 4, new - l4)  # UDP length
        batch.fix_checksums()
        batch.verdicts[:] = kbypass.TX

    peer = _udp(pair, 9801)
    sent = [b"ping-%02d-xxxxxxxx" % i for i in range(10)]
    with _pipeline(pair, reply, filter="udp dst port 9800") as p:
        p.start()
        for d in sent:
            peer.sendto(d, (pair.b.ip, 9800))
        got = _recv_all(peer, 10)
        acc = p.stop()
        t = p.totals()
    assert sorted(d for d, _ in got) == sorted(
        [d + b"/pong" for d in sent[::2]] + [d[:6] for d in sent[1::2]]
    ), got
    assert {a for _, a in got} == {(pair.b.ip, 9800)}
    assert t["tx"] == 10 and t["tx_failed"] == 0 and acc is not None and acc["app"] == 0
    assert all(e.startswith("ValueError: ") for e in errors[:7]), errors
    assert "give 14..=1792" in errors[0] and "give 14..=1792" in errors[1], errors
    assert "length 5000" in errors[2] and "lengths for a batch of" in errors[3], errors
    assert "256 bytes are free" in errors[4] and "headroom=" in errors[4], errors
    assert "pop at most" in errors[5] and "cannot push 257" in errors[6], errors
    assert errors[7].startswith("IndexError: frame"), errors
    assert errors[8] == "ValueError: assignment destination is read-only", errors
    assert "a VLAN id is 0..=4095" in errors[9] and "use 0x8100 (802.1Q)" in errors[10], errors
    assert errors[11].startswith("TypeError: lengths must be a 1-D uint32 array"), errors
    assert t["escaped"] == 0, t


def _sniff(pair: VethPair) -> socket.socket:
    """An AF_PACKET socket on veth0 (namespace a) that reports the VLAN tag the kernel parsed."""
    with pair.enter("a"):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        s.bind((pair.a.ifname, 0))
        s.settimeout(3)
    return s


def _sniffed_udp(s: socket.socket, dport: int, n: int) -> list[tuple[int | None, bytes]]:
    """The next ``n`` incoming UDP frames to ``dport``: (VLAN id or None, frame as received)."""
    out: list[tuple[int | None, bytes]] = []
    deadline = time.monotonic() + 5
    while len(out) < n and time.monotonic() < deadline:
        data, anc, _, addr = s.recvmsg(4096, socket.CMSG_SPACE(20))
        if addr[2] == PACKET_OUTGOING or len(data) < 42 or data[12:14] != b"\x08\x00":
            continue
        if struct.unpack("!H", data[36:38])[0] != dport:
            continue
        vlan = None
        for level, kind, raw in anc:
            if level == SOL_PACKET and kind == PACKET_AUXDATA:
                status, _, _, _, _, tci, _ = struct.unpack("IIIHHHH", raw[:20])
                if status & TP_STATUS_VLAN_VALID:
                    vlan = tci & 0xFFF
        out.append((vlan, data))
    return out


@pytest.mark.parametrize("how", ["by-hand", "helpers"])
def test_vlan_tag_pushed_and_popped_as_the_far_kernel_sees_it(pair: VethPair, how: str) -> None:
    seen: dict[str, list[int]] = {"push": [], "pop": []}

    def vlan(batch: kbypass.Batch) -> None:
        h = batch.headers
        push = (h["dst_port"] == 9700) & (h["vlan"] == 0)
        pop = h["vlan"] == 42
        batch.swap_macs()
        batch.swap_ips()
        batch.swap_ports()
        batch.fix_checksums()
        if how == "helpers":
            assert batch.pop_vlan(pop) == int(pop.sum())
            assert batch.push_vlan(42, push) == int(push.sum())
        else:
            for i in np.flatnonzero(pop):
                f = batch.frame(i)
                f[4:16] = f[0:12].copy()  # the MACs over the tag, then the tag is gone
                batch.pop_front(int(i), 4)
            assert batch.adjust_head(-4, push) == int(push.sum())
            for i in np.flatnonzero(push):
                f = batch.frame(i)
                assert bytes(f[:4]) == bytes(4)
                f[0:12] = f[4:16].copy()
                f[12:16] = (0x81, 0x00, 0x00, 42)
            batch.reparse(push)
        h = batch.headers
        seen["push"] += h["vlan"][push].tolist()
        seen["pop"] += h["vlan"][pop].tolist()
        batch.verdicts[:] = kbypass.TX

    sniff = _sniff(pair)
    sock = _udp(pair, 9702)
    raw = _sniff(pair)  # to send tagged frames from a
    with _pipeline(pair, vlan, filter="udp dst port 9700 or udp dst port 9701") as p:
        p.start()
        # Untagged to b: it answers tagged.
        for i in range(5):
            sock.sendto(b"tag-me-%d" % i, (pair.b.ip, 9700))
        tagged = _sniffed_udp(sniff, 9702, 5)
        # Tagged to b (VLAN 42; no VLAN device here, so only the tag-less answer reaches the
        # UDP socket): it answers untagged.
        for i in range(5):
            raw.send(
                _udp_frame(
                    pair.b.mac, pair.a.mac, pair.a.ip, pair.b.ip, 9702, 9701,
                    b"untag-me-%d" % i, vlan=42,
                )
            )  # fmt: skip
        untagged = _recv_all(sock, 5)
        acc = p.stop()
        t = p.totals()
    assert sorted(v for v, _ in tagged) == [42] * 5, tagged
    assert sorted(f[42:] for _, f in tagged) == [b"tag-me-%d" % i for i in range(5)]
    assert all(f[:6] == _mac(pair.a.mac) and f[6:12] == _mac(pair.b.mac) for _, f in tagged)
    assert sorted(d for d, _ in untagged) == [b"untag-me-%d" % i for i in range(5)]
    assert {a for _, a in untagged} == {(pair.b.ip, 9701)}
    assert seen == {"push": [42] * 5, "pop": [0] * 5}, seen
    assert t["tx"] == 10 and t["tx_failed"] == 0 and acc is not None and acc["app"] == 0


VX_MAC = "02:00:c6:13:00:01"  # vx0, the VXLAN device in namespace a
GHOST_MAC = "02:00:c6:13:00:02"  # the inner peer behind b (nothing owns it)
INNER_A, INNER_B = "198.19.0.1", "198.19.0.2"
VNI = 42


def _vxlan_in_a(pair: VethPair) -> None:
    """A VXLAN device in namespace a, 198.19.0.1/24, tunnelling to b's veth address."""
    pair.run(
        "a", "ip", "link", "add", "vx0", "address", VX_MAC, "type", "vxlan", "id", str(VNI),
        "dstport", "4789", "local", pair.a.ip, "remote", pair.b.ip, "dev", pair.a.ifname,
    )  # fmt: skip
    pair.run("a", "ip", "addr", "add", f"{INNER_A}/24", "dev", "vx0")
    pair.run("a", "ip", "link", "set", "vx0", "up")
    pair.run(
        "a", "ip", "neigh", "replace", INNER_B, "lladdr", GHOST_MAC, "dev", "vx0",
        "nud", "permanent",
    )  # fmt: skip


def test_vxlan_encapsulation_and_decapsulation_through_the_far_kernel(pair: VethPair) -> None:
    headroom = 64
    seen: dict[str, Any] = {"offsets": set(), "inner_ports": []}
    b_mac, a_mac = (
        np.frombuffer(_mac(pair.b.mac), np.uint8),
        np.frombuffer(_mac(pair.a.mac), np.uint8),
    )

    def tunnel(batch: kbypass.Batch) -> None:
        seen["offsets"].update((batch.addrs % batch.frame_size).tolist())
        h = batch.headers
        encap = h["dst_port"] == 9500  # plain from a: answer inside VXLAN
        decap = h["dst_port"] == 4789  # VXLAN from a's kernel: answer the inner packet
        # Decapsulate: 14 + 20 + 8 + 8 bytes of outer headers off the front.
        assert batch.adjust_head(50, decap) == int(decap.sum())
        seen["inner_ports"] += batch.headers["dst_port"][decap].tolist()
        batch.swap_ips()
        batch.swap_ports()
        for i in np.flatnonzero(decap):
            f = batch.frame(i)
            f[0:6], f[6:12] = a_mac, b_mac  # straight to a's veth, no tunnel
        for i in np.flatnonzero(encap):
            f = batch.frame(i)
            f[0:6] = np.frombuffer(_mac(VX_MAC), np.uint8)
            f[6:12] = np.frombuffer(_mac(GHOST_MAC), np.uint8)
        batch.set_field(12, _ip(INNER_B), encap, base="l3")
        batch.set_field(16, _ip(INNER_A), encap, base="l3")
        batch.fix_checksums()  # the inner packets: then they are sealed
        # Encapsulate: outer Ethernet + IPv4 + UDP + VXLAN in front.
        assert batch.adjust_head(-50, encap) == int(encap.sum())
        for i in np.flatnonzero(encap):
            f = batch.frame(i)
            n = len(f)
            f[0:6], f[6:12], f[12:14] = a_mac, b_mac, (0x08, 0x00)
            ip = struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, n - 14, 0, 0x4000, 64, 17, 0,
                _ip(pair.b.ip), _ip(pair.a.ip),
            )  # fmt: skip
            udp = struct.pack("!HHHH", 49152 + int(i), 4789, n - 34, 0)
            vxlan = struct.pack("!II", 0x08000000, VNI << 8)
            f[14:50] = np.frombuffer(ip + udp + vxlan, np.uint8)
        batch.fix_checksums(encap)  # the outer IPv4 and UDP checksums
        batch.reparse(encap)
        assert (batch.headers["dst_port"][encap] == 4789).all()
        batch.verdicts[:] = kbypass.TX

    _vxlan_in_a(pair)
    sock = _udp(pair, 9502)  # every address of a: its veth's and vx0's
    with _pipeline(
        pair, tunnel, filter="udp dst port 9500 or udp dst port 4789", headroom=headroom
    ) as p:
        p.start()
        # Plain to b's veth address: b answers inside VXLAN, a's kernel decapsulates it and
        # delivers the inner packet from the inner peer.
        for i in range(5):
            sock.sendto(b"wrap-me-%d" % i, (pair.b.ip, 9500))
        wrapped = _recv_all(sock, 5)
        # To the inner peer: a's kernel encapsulates it to b, b answers the inner packet alone.
        for i in range(5):
            sock.sendto(b"unwrap-me-%d" % i, (INNER_B, 9600))
        unwrapped = _recv_all(sock, 5)
        acc = p.stop()
        t = p.totals()
    assert sorted(d for d, _ in wrapped) == [b"wrap-me-%d" % i for i in range(5)]
    assert {a for _, a in wrapped} == {(INNER_B, 9500)}, "delivered by vx0, from the inner peer"
    assert sorted(d for d, _ in unwrapped) == [b"unwrap-me-%d" % i for i in range(5)]
    assert {a for _, a in unwrapped} == {(INNER_B, 9600)}
    assert seen["inner_ports"] == [9600] * 5, seen
    assert seen["offsets"] == {256 + headroom}, "received packets start after both headrooms"
    assert t["tx"] == 10 and t["tx_failed"] == 0 and acc is not None and acc["app"] == 0


def test_emit_sends_new_frames_counted_and_accounted(pair: VethPair) -> None:
    errors: list[str] = []

    def answer(batch: kbypass.Batch) -> None:
        if not errors:
            errors.extend(
                _error_of(bad)
                for bad in (
                    lambda: batch.emit(b"short"),
                    lambda: batch.emit(bytes(3000)),
                    lambda: batch.emit(bytes(60), socket=3),
                    lambda: batch.emit("text"),  # type: ignore[arg-type]
                )
            )
        batch.swap_macs()
        batch.swap_ips()
        batch.swap_ports()
        batch.fix_checksums()
        for i in range(len(batch)):
            f = batch.frame(i)
            # Every other one as bytes, the rest straight from the NumPy view.
            assert batch.emit(bytes(f) if i % 2 else f) is True
        batch.verdicts[:] = kbypass.DROP  # the originals go back; the copies answer

    peer = _udp(pair, 9901)
    sent = [b"emit-%02d" % i for i in range(20)]
    kept: list[kbypass.Batch] = []
    with _pipeline(pair, lambda b: (kept.append(b), answer(b))[1], filter="udp dst port 9900") as p:
        p.start()
        for d in sent:
            peer.sendto(d, (pair.b.ip, 9900))
        got = _recv_all(peer, 20)
        assert _until(lambda: p.totals()["emitted"] == 20)
        acc = p.stop()
        t = p.totals()
    assert sorted(d for d, _ in got) == sent
    assert {a for _, a in got} == {(pair.b.ip, 9900)}
    assert (t["emitted"], t["emit_failed"], t["dropped"], t["tx"]) == (20, 0, 20, 0), t
    assert acc is not None and acc["balanced"] and acc["app"] == 0 and acc["held"] == 0
    assert errors[0].startswith("ValueError: cannot emit a 5-byte frame"), errors
    assert errors[1].startswith("ValueError: ") and "give 14..=1792" in errors[1], errors
    assert "socket 3 is not one of this worker's sockets [0]" in errors[2], errors
    assert errors[3].startswith("TypeError: data must be bytes"), errors
    assert t["escaped"] == 0, t
    with pytest.raises(RuntimeError, match="ended"):
        kept[0].emit(bytes(60))


def test_emit_on_another_socket_of_the_worker(pair2: VethPair) -> None:
    def other(batch: kbypass.Batch) -> None:
        batch.swap_macs()
        batch.swap_ips()
        batch.swap_ports()
        batch.fix_checksums()
        for f in batch.frames:
            assert batch.emit(f, socket=1 - batch.socket)
        batch.verdicts[:] = kbypass.DROP

    peer = _udp(pair2, 9911)
    with _pipeline(pair2, other, filter="udp dst port 9910", workers=[[0, 1]]) as p:
        p.start()
        for i in range(10):
            peer.sendto(b"other-%d" % i, (pair2.b.ip, 9910))
        got = sorted(d for d, _ in _recv_all(peer, 10))
        acc = p.stop()
        t = p.totals()
        sockets = p.port.sockets
        tx = [int(s.stats()["tx_packets"]) for s in sockets]
        rx = [int(s.stats()["rx_packets"]) for s in sockets]
    assert got == sorted(b"other-%d" % i for i in range(10))
    assert t["emitted"] == 10 and acc is not None and acc["app"] == 0
    # Each frame went out of the socket it did not arrive on.
    assert tx == rx[::-1], (tx, rx)


def test_per_packet_handler_emits_and_cuts(pair: VethPair) -> None:
    errors: list[str] = []

    def handle(pkt: kbypass.Packet) -> kbypass.Action:
        pkt.swap_macs()
        pkt.swap_ips()
        pkt.swap_ports()
        pkt.fix_checksums()
        assert pkt.emit(pkt.bytes())  # the whole answer, as a new frame
        errors.append(_error_of(lambda: pkt.set_length(13)))
        n = len(pkt)
        pkt.set_length(34 + 8 + 4)  # and a cut one (IPv4 without options: UDP at 34)
        assert len(pkt) == len(pkt.data) == 46 and pkt.udp is not None
        d = pkt.data
        _be16(d, 16, 46 - 14)
        _be16(d, 38, 46 - 34)
        pkt.fix_checksums()
        pkt.push_front(4)
        assert len(pkt) == 50 and bytes(pkt.data[:4]) == bytes(4)
        pkt.pop_front(4)
        assert len(pkt.bytes()) == 46 < n
        return kbypass.TX

    peer = _udp(pair, 9931)
    with pair.enter("b"):
        p = Pipeline(
            pair.b.ifname, per_packet=handle, mode="copy", cpus=False, filter="udp dst port 9930"
        )
    with p:
        p.start()
        for i in range(5):
            peer.sendto(b"pkt-%d-long" % i, (pair.b.ip, 9930))
        got = sorted(d for d, _ in _recv_all(peer, 10))
        acc = p.stop()
        t = p.totals()
    want = sorted([b"pkt-%d-long" % i for i in range(5)] + [b"pkt-" for _ in range(5)])
    assert got == want, got
    assert (t["emitted"], t["tx"], t["handler_errors"], t["escaped"]) == (5, 5, 0, 0), t
    assert all("give 14..=1792" in e for e in errors) and len(errors) == 5, errors
    assert acc is not None and acc["app"] == 0


def test_forward_to_a_socket_of_another_worker(pair2: VethPair) -> None:
    def across(batch: kbypass.Batch) -> None:
        batch.swap_macs()
        batch.swap_ips()
        batch.swap_ports()
        batch.fix_checksums()
        batch.verdicts[:] = kbypass.FORWARD
        batch.forward_to[:] = 1 - batch.socket

    peer = _udp(pair2, 9941)
    # One worker per socket: each FORWARD goes to the other worker, which sends it.
    with _pipeline(pair2, across, filter="udp dst port 9940") as p:
        assert p.stats()[0]["queues"] != p.stats()[1]["queues"]
        p.start()
        for i in range(20):
            peer.sendto(b"across-%02d" % i, (pair2.b.ip, 9940))
        got = sorted(d for d, _ in _recv_all(peer, 20))
        acc = p.stop()
        ws = p.stats()
        t = p.totals()
        tx = [int(s.stats()["tx_packets"]) for s in p.port.sockets]
        rx = [int(s.stats()["rx_packets"]) for s in p.port.sockets]
    assert got == [b"across-%02d" % i for i in range(20)]
    assert (t["forwarded"], t["forwarded_in"], t["forward_ring_full"]) == (20, 20, 0), t
    assert t["bad_verdicts"] == 0 and t["forward_in_failed"] == 0, t
    # Each worker forwarded what arrived on its queue; the other one sent it.
    assert [w["forwarded"] for w in ws] == rx and [w["forwarded_in"] for w in ws] == tx
    assert tx == rx[::-1], (tx, rx)
    assert acc is not None and acc["balanced"] and acc["app"] == 0


def test_an_emit_without_a_free_frame_returns_false_and_is_counted(pair: VethPair) -> None:
    out: dict[str, int] = {}

    def flood(batch: kbypass.Batch) -> None:
        if out:
            return
        f = bytes(batch.frame(0))
        k = 0
        while batch.emit(f):
            k += 1
        out["emitted"] = k
        batch.verdicts[:] = kbypass.DROP

    peer = _udp(pair, 9921)
    # 64 frames, at most half of them on the receive side: fewer free than one batch may emit.
    with _pipeline(pair, flood, filter="udp dst port 9920", frames=64, batch=64) as p:
        p.start()
        peer.sendto(b"x", (pair.b.ip, 9920))
        assert _until(lambda: p.totals()["emit_failed"] == 1)
        acc = p.stop()
        t = p.totals()
    assert 8 <= out["emitted"] < 64, out
    assert t["emitted"] == out["emitted"] and t["emit_failed"] == 1, t
    assert acc is not None and acc["balanced"] and acc["app"] == 0


def test_headroom_is_refused_when_it_leaves_no_room_and_with_an_open_port(pair: VethPair) -> None:
    with pytest.raises(ValueError, match="headroom"):
        _pipeline(pair, lambda b: None, headroom=2048)
    with pair.enter("b"):
        port = kbypass.XdpPort(pair.b.ifname, mode="copy", headroom=128)
    try:
        with pytest.raises(ValueError, match="give them to XdpPort"):
            Pipeline(port, lambda b: None, headroom=64)
    finally:
        port.close()


def test_batch_reply_answers_in_place_growing_into_the_frame(pair: VethPair) -> None:
    """``batch.reply("udp", payload=...)`` answers every datagram with a longer payload (the
    reply grows into its frame; lengths, headers and checksums right, as the far kernel's UDP
    socket accepts them), masks leave frames alone, and a frame it cannot answer (here a
    non-UDP frame the filter lets through) is reported unanswered and left as it was."""
    payload = b"pong:" + bytes(range(200))  # longer than every request
    seen: list[tuple[int, int, int]] = []

    def handler(batch: kbypass.Batch) -> None:
        h = batch.headers
        is_udp = h["proto"] == socket.IPPROTO_UDP
        before = batch.lengths.copy()
        first = bytes(batch.frame(0))
        answered = batch.reply("udp", mask=is_udp, payload=payload)
        assert answered.dtype == np.bool_ and answered.shape == (len(batch),)
        assert (answered == is_udp).all(), (answered, is_udp)
        for i in np.flatnonzero(~answered):
            assert int(batch.lengths[i]) == int(before[i])
        if not answered[0]:
            assert bytes(batch.frame(0)) == first, "an unanswered frame is left as it was"
        # The columns describe the replies: their length and their (swapped) ports.
        n = int(batch.lengths[0]) if answered[0] else 0
        seen.append((len(batch), int(answered.sum()), n))
        batch.verdicts[answered] = kbypass.TX
        with pytest.raises(ValueError, match="needs a payload"):
            batch.reply("udp")
        with pytest.raises(ValueError, match="not a MAC address"):
            batch.reply("arp", mac="zz", ip="198.18.0.9")

    peer = _udp(pair, 9811)
    sent = [b"q-%02d" % i for i in range(8)]
    with _pipeline(pair, handler, filter="udp dst port 9810 or icmp") as p:
        p.start()
        for d in sent:
            peer.sendto(d, (pair.b.ip, 9810))
        got = _recv_all(peer, len(sent))
        pair.run("a", "ping", "-c1", "-W1", pair.b.ip, check=False)  # an ICMP frame: unanswered
        assert _until(lambda: sum(k for k, _, _ in seen) >= len(sent) + 1)
        p.stop()
        t = p.totals()
    assert [d for d, _ in got] == [payload] * len(sent)
    assert {a for _, a in got} == {(pair.b.ip, 9810)}
    assert sum(a for _, a, _ in seen) == len(sent), seen
    assert all(n in (0, 14 + 20 + 8 + len(payload)) for _, _, n in seen), seen
    assert t["tx"] == len(sent) and t["tx_failed"] == 0 and t["handler_errors"] == 0, t


def test_forward_counters_add_up_to_the_documented_identity() -> None:
    """After a run with FORWARDs to the worker's own sockets and to another worker's:
    ``forwarded_out == forwarded_in + forward_in_failed + forward_in_flight`` summed over the
    workers, with nothing in flight once stopped; local FORWARDs are in ``forwarded`` only."""
    with VethPair(queues=3) as pair:

        def spread(batch: kbypass.Batch) -> None:
            s = batch.socket
            batch.verdicts[:] = kbypass.FORWARD
            batch.forward_to[0::2] = (s + 1) % 3
            batch.forward_to[1::2] = (s + 2) % 3

        senders = [_udp(pair, 9950 + k) for k in range(6)]  # flows hashed over the queues
        with _pipeline(pair, spread, filter="udp dst port 9940", workers=[[0, 1], [2]]) as p:
            p.start()
            for i in range(60):
                senders[i % 6].sendto(b"spread-%02d" % i, (pair.b.ip, 9940))
            assert _until(lambda: p.totals()["rx"] == 60)
            p.stop()
            t = p.totals()
            ws = p.stats()
        for s in senders:
            s.close()
    assert t["rx"] == 60 and t["forwarded"] + t["forward_ring_full"] == 60, t
    assert t["forward_in_flight"] == 0, t
    assert t["forwarded_out"] == t["forwarded_in"] + t["forward_in_failed"], t
    assert sum(w["forwarded_out"] for w in ws) == t["forwarded_out"]
    # Worker 1 owns socket 2 alone: all its FORWARDs were handed over; worker 0 forwards to its
    # own other socket too (counted in forwarded, not forwarded_out).
    assert ws[1]["forwarded"] == ws[1]["forwarded_out"], ws
    assert ws[0]["forwarded"] >= ws[0]["forwarded_out"], ws


def test_multi_buffer_packets_reach_a_handler_whole_in_every_batch() -> None:
    """Jumbo frames over a ``multi_buffer=True`` port with ``batch=2``: each packet takes
    several buffers, yet a batch always holds whole packets (its length a multiple of the
    buffers per packet), its first frame is always refused a new length (it is one buffer of a
    multi-buffer packet, never mistaken for a single one), and TX sends every buffer."""
    with VethPair(mtu=9000) as pair:
        sizes: list[int] = []
        refused: list[bool] = []

        def echo(batch: kbypass.Batch) -> None:
            sizes.append(len(batch))
            try:
                batch.set_length(0, int(batch.lengths[0]))
                refused.append(False)
            except ValueError:
                refused.append(True)
            batch.verdicts[:] = kbypass.TX

        with pair.enter("b"):
            port = kbypass.XdpPort(pair.b.ifname, mode="copy", multi_buffer=True)
        peer = _udp(pair, 9961)
        with Pipeline(port, echo, batch=2, cpus=False, progress=False) as p:
            p.start()
            for i in range(10):
                peer.sendto(bytes([i]) * 7936, (pair.b.ip, 9000))
            assert _until(lambda: len(refused) > 0 and p.totals()["rx"] >= 10 * 5)
            p.stop()
            t = p.totals()
        peer.close()
        port.close()
    per_packet = t["rx"] // 10
    assert per_packet >= 2 and t["rx"] == 10 * per_packet, t
    assert all(n % per_packet == 0 for n in sizes), (sizes, per_packet)
    assert all(refused), refused
    assert t["tx"] == t["rx"] and t["dropped"] == 0, t
