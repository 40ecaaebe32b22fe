import socket
import struct
from decimal import Decimal

import dpkt
import numpy as np
import pytest

from kbypass import packet


def udp4(src: str, dst: str, sport: int, dport: int, payload: bytes, csum: bool = True) -> bytes:
    """An Ethernet/IPv4/UDP frame built independently of kbypass (checksums via dpkt)."""
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=17, ttl=64, data=u)
    ip.len = 20 + 8 + len(payload)
    u.ulen = 8 + len(payload)
    raw = bytes(ip)  # dpkt fills both checksums
    if not csum:
        raw = raw[:10] + b"\0\0" + raw[12:26] + b"\0\0" + raw[28:]
    return b"\x02\0\0\0\0\x02" + b"\x02\0\0\0\0\x01" + b"\x08\x00" + raw


def tcp6(sport: int, dport: int, payload: bytes, vlan: int | None = None) -> bytes:
    t = dpkt.tcp.TCP(sport=sport, dport=dport, off=5, data=payload)
    ip6 = dpkt.ip6.IP6(
        src=socket.inet_pton(socket.AF_INET6, "2001:2::1"),
        dst=socket.inet_pton(socket.AF_INET6, "2001:2::2"),
        nxt=6,
        hlim=64,
        data=t,
    )
    ip6.plen = len(bytes(t))
    l2 = b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01"
    if vlan is not None:
        l2 += struct.pack("!HH", 0x8100, vlan)
    return l2 + b"\x86\xdd" + bytes(ip6)


def test_parse_columns_match_independent_construction() -> None:
    raw = [udp4("198.18.0.1", "198.18.0.2", 4000, 9000, b"a" * 18), tcp6(443, 50000, b"xyz", 7)]
    frames, lens = packet.frames_from_bytes(raw)
    h = packet.parse(frames, lens)
    assert h.dtype == packet.META_DTYPE and h.dtype.itemsize == 64
    assert h["len"].tolist() == [len(r) for r in raw]
    assert h["ip_version"].tolist() == [4, 6]
    assert h["proto"].tolist() == [17, 6]
    assert h["src_port"].tolist() == [4000, 443]
    assert h["dst_port"].tolist() == [9000, 50000]
    assert h["src_ip4"][0] == struct.unpack("!I", socket.inet_aton("198.18.0.1"))[0]
    assert bytes(h["dst_ip6"][1]) == socket.inet_pton(socket.AF_INET6, "2001:2::2")
    assert h["vlan"].tolist() == [0, 7]
    assert h["flags"][1] & packet.FLAG_VLAN
    assert h["payload_len"].tolist() == [18, 3]
    assert h["payload_off"][0] == 42


def test_truncated_and_garbage_frames_are_flagged_never_crash() -> None:
    full = udp4("198.18.0.1", "198.18.0.2", 1, 2, b"z" * 30)
    rows = [full[:n] for n in range(len(full) + 1)]
    rng = np.random.default_rng(7)
    sizes = rng.integers(0, 200, 300)
    rows += [bytes(rng.integers(0, 256, size=int(n), dtype=np.uint8)) for n in sizes]
    frames, lens = packet.frames_from_bytes(rows, width=256)
    h = packet.parse(frames, lens)
    for n in range(42):  # anything shorter than Ethernet+IPv4+UDP is flagged truncated
        assert h["flags"][n] & packet.FLAG_TRUNCATED, n
    # the payload never extends past the frame
    end = h["payload_off"].astype(int) + h["payload_len"]
    assert np.all(end <= np.maximum(lens, h["payload_off"]))


def test_ports_exist_only_inside_the_ip_datagram() -> None:
    # Issue 8: total length 20 (no UDP header) and `04d2 2328` in the Ethernet trailer used
    # to parse as dst_port 9000 (flagged truncated).
    full = udp4("198.18.0.1", "198.18.0.2", 1234, 9000, b"")
    cut = full[:16] + struct.pack("!H", 20) + full[18:34]
    rows = [
        (cut + bytes.fromhex("04d22328")).ljust(60, b"\0"),  # trailer, not ports
        full,  # the same bytes inside the datagram are ports
        full[:41],  # UDP header cut by the frame end
    ]
    h = packet.parse(*packet.frames_from_bytes(rows))
    assert h["dst_port"].tolist() == [0, 9000, 0]
    assert (h["flags"] & packet.FLAG_L4).astype(bool).tolist() == [False, True, False]
    assert h["flags"][0] & packet.FLAG_MALFORMED and not h["flags"][0] & packet.FLAG_TRUNCATED
    assert h["flags"][2] & packet.FLAG_TRUNCATED
    assert h["proto"].tolist() == [17, 17, 17]  # the protocol is known either way


def test_ipv6_extension_headers_sctp_and_qinq() -> None:
    def ext(nxt: int, units: int) -> bytes:
        return bytes([nxt, units]) + bytes(6 + 8 * units)

    def ip6(first: int, rest: bytes) -> bytes:
        src = socket.inet_pton(socket.AF_INET6, "2001:2::1")
        dst = socket.inet_pton(socket.AF_INET6, "2001:2::2")
        hdr = struct.pack("!IHBB", 0x6000_0000, len(rest), first, 64) + src + dst
        return bytes(12) + b"\x86\xdd" + hdr + rest

    udp = struct.pack("!HHHH", 1234, 9000, 8, 0)
    chain = ext(43, 0) + ext(44, 1) + struct.pack("!BBHI", 17, 0, 1, 9)  # HBH, routing, 1st frag
    sctp = struct.pack("!HHII", 5000, 6000, 0, 0)
    qinq = bytes(12) + struct.pack("!HHHH", 0x88A8, 100, 0x8100, 7) + b"\x08\x00"
    ip4 = bytes.fromhex("4500001c000000004011000001020304050607080001000200080000")
    rows = [
        ip6(0, chain + udp),
        ip6(60, b"".join(ext(60, 0) for _ in range(8)) + ext(17, 0) + udp),  # nine: too deep
        ip6(132, sctp),
        qinq + ip4,
    ]
    h = packet.parse(*packet.frames_from_bytes(rows, width=256))
    assert h["proto"].tolist() == [17, 60, 132, 17]
    assert h["dst_port"].tolist() == [9000, 0, 6000, 2]
    assert h["l4_off"][0] == 14 + 40 + len(chain)
    assert h["vlan"][3] == 100 and h["l3_off"][3] == 22


def test_edit_swaps_and_keeps_checksums_valid_with_mask() -> None:
    raw = [udp4("198.18.0.1", "198.18.0.2", 4000, 9000 + i, bytes([i]) * 40) for i in range(4)]
    frames, lens = packet.frames_from_bytes(raw)
    assert packet.checksums_ok(frames, lens).all()
    mask = np.array([True, False, True, False])
    n = packet.edit(frames, lens, swap_macs=True, swap_ips=True, swap_ports=True, mask=mask)
    assert n == 2
    h = packet.parse(frames, lens)
    assert h["src_port"].tolist() == [9000, 4000, 9002, 4000]
    assert packet.checksums_ok(frames, lens).all()
    # independent check with dpkt
    eth = dpkt.ethernet.Ethernet(bytes(frames[0, : lens[0]]))
    assert eth.dst == b"\x02\0\0\0\0\x01"
    assert socket.inet_ntoa(eth.data.src) == "198.18.0.2"


def test_fix_checksums_after_a_payload_change() -> None:
    frames, lens = packet.frames_from_bytes([udp4("198.18.0.1", "198.18.0.2", 1, 2, b"q" * 20)])
    frames[0, 50] ^= 0xFF
    assert not packet.checksums_ok(frames, lens)[0]
    assert packet.edit(frames, lens, fix_checksums=True) == 1
    assert packet.checksums_ok(frames, lens)[0]
    ip = dpkt.ethernet.Ethernet(bytes(frames[0, : lens[0]])).data
    reference = dpkt.ip.IP(bytes(ip))
    reference.sum = 0
    reference.data.sum = 0
    assert dpkt.ip.IP(bytes(reference)).sum == ip.sum  # dpkt recomputes the same value


def test_pcap_written_is_read_back_by_dpkt(tmp_path) -> None:
    raw = [udp4("198.18.0.1", "198.18.0.2", 5, 6, bytes([i]) * (10 + i)) for i in range(5)]
    frames, lens = packet.frames_from_bytes(raw)
    path = tmp_path / "out.pcap"
    with packet.PcapWriter(str(path)) as w:
        w.write_rows(frames, lens, ts_ns=1_700_000_000_123_456_789)
        w.write(raw[0])
        assert w.packets == 6
    with open(path, "rb") as f:
        r = dpkt.pcap.Reader(f)
        assert r.datalink() == dpkt.pcap.DLT_EN10MB
        got = [(ts, buf) for ts, buf in r]
    assert [b for _, b in got[:5]] == raw
    # dpkt reads nanosecond pcaps with Decimal timestamps: the full resolution survives
    assert got[0][0] == Decimal("1700000000.123456789")


def test_bad_inputs_raise_typed_errors(tmp_path) -> None:
    with pytest.raises(TypeError, match="uint8"):
        packet.parse(np.zeros((2, 10), dtype=np.int32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one length per row"):
        packet.parse(np.zeros((2, 10), dtype=np.uint8), np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="longer than a row"):
        packet.parse(np.zeros((1, 10), dtype=np.uint8), np.array([11]))
    with pytest.raises(ValueError, match="nothing to do"):
        packet.edit(np.zeros((1, 60), dtype=np.uint8))
    with pytest.raises(OSError):
        packet.PcapWriter(str(tmp_path / "missing-dir" / "x.pcap"))
    w = packet.PcapWriter(str(tmp_path / "c.pcap"))
    w.close()
    w.close()
    with pytest.raises(RuntimeError, match="closed"):
        w.write(b"\0" * 60)
