"""Checksum offload, TX timestamps and launch time through AF_XDP TX metadata (issue 10), with the
software path as fallback.

On a veth pair in copy mode (root, namespaces the test creates, 198.18.0.0/15): what the far side
receives is checked on every path. The far kernel's UDP socket drops datagrams whose checksum is
wrong (a control packet shows it does), and an AF_PACKET socket reads the bytes: computed by
kbypass ("software"), by the kernel before the driver (``tx_metadata="kernel"``,
``XDP_UMEM_TX_SW_CSUM``), or left to the device (``tx_metadata="offload"``: veth hands the
``CHECKSUM_PARTIAL`` skb to its peer as it is, the pseudo-header sum in the field, which the
peer's kernel accepts unverified). In copy mode the kernel honours every request on any driver
(a timestamp is the software time at which the driver freed the skb, CLOCK_TAI); an offload the
UMEM cannot have (no TX metadata) is computed in software and counted in
``stats()["tx_csum_software"]``; a timestamp or launch time it cannot have is an
``OSError(EOPNOTSUPP)``.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import struct
import time
from collections.abc import Iterator

import dpkt
import pytest

import kbypass
from _pipelines import pipeline
from kbypass import XdpSocket
from kbypass.testing import VethPair

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 1 << 4
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for AF_XDP and namespaces")
_m = re.match(r"(\d+)\.(\d+)", os.uname().release)
KERNEL = (int(_m[1]), int(_m[2])) if _m else (0, 0)
needs_txmd = pytest.mark.skipif(
    KERNEL < (6, 8), reason=f"AF_XDP TX metadata needs Linux >= 6.8 (this is {os.uname().release})"
)


@pytest.fixture
def pair() -> Iterator[VethPair]:
    with VethPair() as p:
        yield p


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _udp_ok(ip: dpkt.ip.IP) -> bool:
    seg = bytes(ip.data)
    pseudo = ip.src + ip.dst + bytes([0, ip.p]) + len(seg).to_bytes(2, "big")
    return _sum16(pseudo + seg) == 0xFFFF


def _ip_header_ok(frame: bytes, l3: int = 14) -> bool:
    return _sum16(frame[l3 : l3 + 20]) == 0xFFFF


def _complete(frame: bytes, l4: int) -> bytes:
    """``frame`` with the UDP checksum at ``l4`` completed from the pseudo-header sum in the
    field, as a device completes ``CHECKSUM_PARTIAL`` (sum from ``l4`` to the end)."""
    c = (~_sum16(frame[l4:]) & 0xFFFF) or 0xFFFF
    return frame[: l4 + 6] + c.to_bytes(2, "big") + frame[l4 + 8 :]


def _udp_frame(pair: VethPair, dport: int, payload: bytes) -> bytes:
    """A UDP/IPv4 frame from b to a with both checksums wrong (0x1234): sent as it is, the far
    kernel drops it."""
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0x1234) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        7,
        0x4000,
        64,
        17,
        0x1234,
        socket.inet_aton(pair.b.ip),
        socket.inet_aton(pair.a.ip),
    )
    eth = bytes.fromhex(pair.a.mac.replace(":", "")) + bytes.fromhex(pair.b.mac.replace(":", ""))
    return eth + b"\x08\x00" + ip + udp


def _sniff(pair: VethPair) -> socket.socket:
    """An AF_PACKET socket on a's end that reports the VLAN tag the kernel took off a frame."""
    with pair.enter("a"):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        s.bind((pair.a.ifname, 0))
        s.settimeout(0.5)
    return s


def _sniffed_tagged(s: socket.socket, n: int, dport: int) -> list[tuple[int | None, bytes]]:
    """The next ``n`` incoming UDP/IPv4 frames to ``dport``: (VLAN id or None, frame). The
    receiving kernel takes a VLAN tag off the frame into the packet's metadata."""
    out: list[tuple[int | None, bytes]] = []
    deadline = time.monotonic() + 5
    while len(out) < n and time.monotonic() < deadline:
        try:
            data, anc, _, addr = s.recvmsg(4096, socket.CMSG_SPACE(20))
        except TimeoutError:
            continue
        if addr[2] == PACKET_OUTGOING or len(data) < 42 or data[12:14] != b"\x08\x00":
            continue
        if data[36:38] != dport.to_bytes(2, "big"):
            continue
        vlan = None
        for level, kind, raw in anc:
            if level == SOL_PACKET and kind == PACKET_AUXDATA:
                status, _, _, _, _, tci, _ = struct.unpack("IIIHHHH", raw[:20])
                if status & TP_STATUS_VLAN_VALID:
                    vlan = tci & 0xFFF
        out.append((vlan, data))
    return out


def _sniffed(s: socket.socket, n: int, dport: int) -> list[bytes]:
    """The next ``n`` incoming untagged UDP/IPv4 frames to ``dport``."""
    return [f for v, f in _sniffed_tagged(s, n, dport) if v is None]


def _receiver(pair: VethPair, port: int) -> socket.socket:
    with pair.enter("a"):
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.bind((pair.a.ip, port))
        r.settimeout(0.5)
    return r


def _drain(r: socket.socket, n: int, timeout: float = 3.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        try:
            got.append(r.recv(2048))
        except TimeoutError:
            pass
    return got


def _socket(pair: VethPair, tx_metadata: str | None) -> XdpSocket:
    with pair.enter("b"):
        return XdpSocket(
            pair.b.ifname,
            mode="copy",
            frames=1024,
            filter="udp dst port 1",
            tx_metadata=tx_metadata,  # type: ignore[arg-type]
        )


@needs_root
@needs_txmd
@pytest.mark.parametrize(
    ("tx_metadata", "checksum"),
    [(None, "software"), (None, "offload"), ("kernel", "offload"), ("offload", "offload")],
)
def test_sent_checksums_are_right_on_every_path_and_fallbacks_counted(
    pair: VethPair, tx_metadata: str | None, checksum: str
) -> None:
    n, port = 6, 9700
    recv = _receiver(pair, port)
    raw = _sniff(pair)
    sock = _socket(pair, tx_metadata)
    with sock:
        offloads = sock.tx_offloads
        # The control: as it is (both checksums wrong) the far kernel drops it.
        assert sock.send([_udp_frame(pair, port, b"control")]) == 1
        assert _drain(recv, 1, timeout=0.5) == []
        assert len(_sniffed(raw, 1, port)) == 1
        payloads = [b"txmd-%d-" % i * (i + 3) for i in range(n)]
        t0 = time.clock_gettime_ns(time.CLOCK_TAI)
        sent = sock.send(
            [_udp_frame(pair, port, p) for p in payloads],
            checksum=checksum,  # type: ignore[arg-type]
            timestamp=tx_metadata is not None,
        )
        got = _drain(recv, n)
        frames = _sniffed(raw, n, port)
        t1 = time.clock_gettime_ns(time.CLOCK_TAI)
        time.sleep(0.05)
        times = sock.tx_timestamps()
        stats = sock.stats()
    recv.close()
    raw.close()
    assert sent == n
    assert sorted(got) == sorted(payloads), "the far kernel accepted every datagram"
    assert len(frames) == n
    for f in frames:
        assert _ip_header_ok(f), f.hex()  # always computed by kbypass
        ip = dpkt.ethernet.Ethernet(f).data
        if tx_metadata == "offload":
            # veth hands the CHECKSUM_PARTIAL skb over as it is: the pseudo-header sum is in
            # the field, and completing it as a device does gives the right checksum.
            assert not _udp_ok(ip)
            ip = dpkt.ethernet.Ethernet(_complete(f, 34)).data
        assert _udp_ok(ip), f.hex()
    assert offloads == {
        "checksum": tx_metadata is not None,
        "timestamp": tx_metadata is not None,
        "launch_time": tx_metadata is not None and KERNEL >= (6, 15),
    }
    offloaded = n if tx_metadata is not None else 0
    fallback = n if tx_metadata is None and checksum == "offload" else 0
    assert (stats["tx_csum_offload"], stats["tx_csum_software"]) == (offloaded, fallback), stats
    assert stats["tx_metadata"] == offloaded, stats
    assert len(times) == offloaded and stats["tx_timestamps"] == offloaded, (times, stats)
    assert all(t0 <= ns <= t1 for _, ns in times), (t0, times, t1)
    assert stats["tx_timestamps_missing"] == 0 and stats["invalid_descs"] == 0, stats


@needs_root
def test_a_timestamp_or_launch_time_without_tx_metadata_is_refused_and_nothing_sent(
    pair: VethPair,
) -> None:
    sock = _socket(pair, None)
    with sock:
        assert sock.tx_offloads == {"checksum": False, "timestamp": False, "launch_time": False}
        frame = _udp_frame(pair, 9701, b"x")
        for kw in ({"timestamp": True}, {"launch_time": time.clock_gettime_ns(time.CLOCK_TAI)}):
            with pytest.raises(OSError, match="tx_metadata") as e:
                sock.send([frame], **kw)
            assert e.value.errno == errno.EOPNOTSUPP
        with pytest.raises(ValueError, match="checksum="):
            sock.send([frame], checksum="hardware")  # type: ignore[arg-type]
        assert sock.stats()["tx_packets"] == 0


@needs_root
@needs_txmd
def test_launch_time_where_the_kernel_has_it(pair: VethPair) -> None:
    """XDP_TXMD_FLAGS_LAUNCH_TIME (Linux >= 6.15): in copy mode it becomes the skb's transmit
    time, which veth does not act on (the packet goes at once); older kernels refuse the flag,
    so kbypass does not send it and says so."""
    port = 9702
    recv = _receiver(pair, port)
    sock = _socket(pair, "offload")
    with sock:
        at = time.clock_gettime_ns(time.CLOCK_TAI) + 1_000_000
        frame = _udp_frame(pair, port, b"at a time")
        if KERNEL < (6, 15):
            assert not sock.tx_offloads["launch_time"]
            with pytest.raises(OSError, match=r"6\.15") as e:
                sock.send([frame], checksum="software", launch_time=at)
            assert e.value.errno == errno.EOPNOTSUPP
            return
        assert sock.tx_offloads["launch_time"]
        assert sock.send([frame], checksum="software", launch_time=at) == 1
        assert _drain(recv, 1) == [b"at a time"]
        stats = sock.stats()
    recv.close()
    assert stats["tx_metadata"] == 1 and stats["invalid_descs"] == 0, stats


@needs_root
@needs_txmd
@pytest.mark.parametrize("tx_metadata", [None, "offload"])
def test_udp_replies_offload_their_checksum_and_report_tx_times(
    pair: VethPair, tx_metadata: str | None
) -> None:
    """``Batch.reply(..., checksum="offload", timestamp=...)``: the far kernel's client gets
    every answer; with TX metadata each has a TX time, without the checksum is computed in
    software and counted."""
    n, port = 5, 9703

    def handler(batch: kbypass.Batch) -> None:
        answered = batch.reply(
            "udp", payload=b"pong", checksum="offload", timestamp=tx_metadata is not None
        )
        batch.verdicts[answered] = kbypass.TX

    with pair.enter("a"):
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind((pair.a.ip, 0))
        client.settimeout(3)
    with pipeline(pair, handler, filter=f"udp dst port {port}", tx_metadata=tx_metadata) as p:
        assert isinstance(p.port, kbypass.XdpPort)
        sock = p.port.sockets[0]
        p.start()
        got = []
        for i in range(n):
            client.sendto(b"ping %d" % i, (pair.b.ip, port))
            got.append(client.recv(2048))
        time.sleep(0.1)
        p.stop()
        times = sock.tx_timestamps()
        stats = sock.stats()
        totals = p.totals()
    client.close()
    assert got == [b"pong"] * n
    assert totals["handler_errors"] == 0, totals
    if tx_metadata is None:
        assert (stats["tx_csum_offload"], stats["tx_csum_software"]) == (0, n), stats
        assert times == []
    else:
        assert (stats["tx_csum_offload"], stats["tx_csum_software"]) == (n, 0), stats
        assert len(times) == n and stats["tx_timestamps_missing"] == 0, (times, stats)


@needs_root
@needs_txmd
def test_a_request_moves_with_a_pushed_vlan_tag_and_goes_with_a_copy(pair: VethPair) -> None:
    """``fix_checksums(offload=True, timestamp=True)``, then a VLAN tag pushed in front: the
    checksum start moves with the bytes (``tx_metadata="kernel"`` completes it in the kernel at
    the start asked, so a start left behind would write the wrong bytes). The first batch keeps
    a view of its frame, so the TX verdict sends a copy, which carries the request too."""
    port = 9704
    kept: list[object] = []

    def handler(batch: kbypass.Batch) -> None:
        batch.swap_macs()
        batch.swap_ips()
        batch.swap_ports()
        assert batch.fix_checksums(offload=True, timestamp=True) == len(batch)
        batch.push_vlan(5)
        if not kept:
            kept.append(batch.frame(0))  # held: the verdict sends a copy
        batch.verdicts[:] = kbypass.TX

    with pair.enter("a"):
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind((pair.a.ip, 7777))
    raw = _sniff(pair)
    n = 4
    with pipeline(pair, handler, filter=f"udp dst port {port}", tx_metadata="kernel") as p:
        assert isinstance(p.port, kbypass.XdpPort)
        sock = p.port.sockets[0]
        p.start()
        frames: list[tuple[int | None, bytes]] = []
        for i in range(n):
            client.sendto(b"tagged %d" % i * (i + 1), (pair.b.ip, port))
            frames += _sniffed_tagged(raw, 1, 7777)
        time.sleep(0.1)
        p.stop()
        times = sock.tx_timestamps()
        stats = sock.stats()
        totals = p.totals()
    kept.clear()
    client.close()
    raw.close()
    assert len(frames) == n, frames
    for vlan, f in frames:
        # Tagged on the wire (the kernel took the tag off); a checksum start left 4 bytes
        # behind would have summed and written inside the IP header.
        assert vlan == 5, f.hex()
        assert _ip_header_ok(f) and _udp_ok(dpkt.ethernet.Ethernet(f).data), f.hex()
    assert totals["copied"] >= 1 and totals["handler_errors"] == 0, totals
    assert stats["tx_csum_offload"] == n and stats["tx_csum_software"] == 0, stats
    assert len(times) == n and stats["tx_metadata"] == n, (times, stats)


@needs_root
@needs_txmd
def test_a_per_packet_handler_offloads_what_it_emits_and_sends_back(pair: VethPair) -> None:
    """``pkt.emit(data, checksum="offload", timestamp=True)`` for a new frame (its checksums
    wrong as given) and ``pkt.fix_checksums(offload=True)`` for the answer sent back in place,
    popped and pushed on the way (the request moves with the packet)."""
    port, n = 9705, 3

    def handle(pkt: kbypass.Packet) -> kbypass.Action:
        assert pkt.emit(_udp_frame(pair, 9706, b"emitted"), checksum="offload", timestamp=True)
        data = pkt.data
        data[0:6], data[6:12] = data[6:12].copy(), data[0:6].copy()
        data[26:30], data[30:34] = data[30:34].copy(), data[26:30].copy()
        data[34:36], data[36:38] = data[36:38].copy(), data[34:36].copy()
        assert pkt.fix_checksums(offload=True)
        pkt.push_front(8)
        pkt.pop_front(8)
        return kbypass.TX

    with pair.enter("a"):
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind((pair.a.ip, 0))
        client.settimeout(3)
    other = _receiver(pair, 9706)
    with pipeline(
        pair, per_packet=handle, filter=f"udp dst port {port}", tx_metadata="kernel"
    ) as p:
        assert isinstance(p.port, kbypass.XdpPort)
        sock = p.port.sockets[0]
        p.start()
        echoes = []
        for i in range(n):
            client.sendto(b"echo %d" % i, (pair.b.ip, port))
            echoes.append(client.recv(2048))
        emitted = _drain(other, n)
        time.sleep(0.1)
        p.stop()
        stats = sock.stats()
        totals = p.totals()
        times = sock.tx_timestamps()
    client.close()
    other.close()
    assert echoes == [b"echo %d" % i for i in range(n)], "the kernel checked each checksum"
    assert emitted == [b"emitted"] * n
    assert totals["handler_errors"] == 0 and totals["emitted"] == n, totals
    assert stats["tx_csum_offload"] == 2 * n and stats["tx_csum_software"] == 0, stats
    assert len(times) == n, times  # only the emitted frames asked for one


@needs_root
@needs_txmd
def test_icmp_echo_replies_ask_only_a_timestamp(pair: VethPair) -> None:
    """``ping`` gets the answers of ``Batch.reply("icmp_echo", checksum="offload",
    timestamp=True)``: ICMP has no checksum offload (the helper computes it, not counted as a
    fallback), each answer has a TX time."""

    def handler(batch: kbypass.Batch) -> None:
        answered = batch.reply("icmp_echo", checksum="offload", timestamp=True)
        batch.verdicts[answered] = kbypass.TX

    with pipeline(pair, handler, filter="icmp", tx_metadata="offload") as p:
        assert isinstance(p.port, kbypass.XdpPort)
        sock = p.port.sockets[0]
        p.start()
        r = pair.run("a", "ping", "-c3", "-i0.2", "-W2", pair.b.ip, check=False, timeout=30)
        time.sleep(0.1)
        p.stop()
        stats = sock.stats()
        times = sock.tx_timestamps()
    assert r.returncode == 0 and " 3 received" in r.stdout, r.stdout + r.stderr
    assert (stats["tx_csum_offload"], stats["tx_csum_software"]) == (0, 0), stats
    assert len(times) == 3 and stats["tx_metadata"] == 3, (times, stats)


@needs_root
@needs_txmd
def test_an_xdp_socket_reflects_received_frames_with_offloaded_checksums(pair: VethPair) -> None:
    """``RxBatch.send(checksum="offload", timestamp=True)``: frames edited in place (addresses
    and ports swapped, checksums left stale) go back with the checksum completed by the kernel
    (``tx_metadata="kernel"``); one whose view is still alive goes as a copy, asking the same."""
    port, n = 9707, 4
    with pair.enter("b"):
        sock = XdpSocket(
            pair.b.ifname, mode="copy", frames=1024, filter=f"udp dst port {port}",
            tx_metadata="kernel",
        )  # fmt: skip
    with pair.enter("a"):
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind((pair.a.ip, 0))
        client.settimeout(3)
    kept = []
    echoes = []
    with sock:
        for i in range(n):
            client.sendto(b"reflect %d" % i * (i + 1), (pair.b.ip, port))
            with sock.recv(max=8, timeout=3) as batch:
                assert len(batch) == 1
                f = batch[0]
                f[0:6], f[6:12] = f[6:12].copy(), f[0:6].copy()
                f[26:30], f[30:34] = f[30:34].copy(), f[26:30].copy()
                f[34:36], f[36:38] = f[36:38].copy(), f[34:36].copy()
                f[40], f[41] = 0x12, 0x34  # wrong: the kernel computes it
                if i == 0:
                    kept.append(f)  # a live view: this one goes as a copy
                del f
                assert batch.send(checksum="offload", timestamp=True) == 1
            echoes.append(client.recv(2048))
        time.sleep(0.1)
        times = sock.tx_timestamps()
        stats = sock.stats()
    kept.clear()
    client.close()
    assert echoes == [b"reflect %d" % i * (i + 1) for i in range(n)]
    assert (stats["tx_csum_offload"], stats["tx_csum_software"]) == (n, 0), stats
    assert len(times) == n and stats["tx_metadata"] == n, (times, stats)
