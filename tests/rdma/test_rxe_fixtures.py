"""The captured rxe packets in tests/data/rxe are what their README says, and well-formed.

Each file is read twice, independently: by tshark's InfiniBand dissector (opcode, QPN, PSN, the
extended headers) and by a small pcap reader here that recomputes every ICRC the way the
RoCEv2 annex defines it (tshark 4.0 shows the ICRC but does not check it). No VM is needed.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from rxe_fixtures import (
    DATA,
    FAKE_PSN,
    FAKE_QPN,
    FAKE_RKEY,
    FAKE_VADDR,
    GUEST6,
    HOST6,
    NO_RD_ATOMIC,
    RD_ATOMIC,
    RESPONDER_FIXTURES,
    RESPONSES,
    SCENARIOS,
    SEND_INV,
    SEND_INV_MW,
    SRQ,
)

HOST, GUEST = "198.18.1.1", "198.18.1.2"
FIELDS = (
    "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "udp.dstport", "infiniband.bth.opcode",
    "infiniband.bth.destqp",
    "infiniband.bth.psn", "infiniband.bth.a", "infiniband.bth.p_key", "infiniband.deth.q_key",
    "infiniband.reth.va", "infiniband.reth.r_key", "infiniband.reth.dmalen",
    "infiniband.atomiceth.swapdt", "infiniband.atomiceth.cmpdt", "infiniband.invariant.crc",
    "infiniband.immdt", "infiniband.aeth.syndrome", "infiniband.aeth.msn",
    "infiniband.atomicacketh.origremdt", "infiniband.ieth",
)  # fmt: skip


def read_pcap(path: Path) -> list[bytes]:
    """Frames of a classic (microsecond or nanosecond) little-endian Ethernet pcap file."""
    raw = path.read_bytes()
    magic, _, _, _, _, _, linktype = struct.unpack_from("<IHHiIII", raw)
    assert magic in (0xA1B2C3D4, 0xA1B23C4D) and linktype == 1, (hex(magic), linktype)
    frames, off = [], 24
    while off < len(raw):
        _, _, incl, orig = struct.unpack_from("<IIII", raw, off)
        assert incl == orig, "a truncated frame"
        frames.append(raw[off + 16 : off + 16 + incl])
        off += 16 + incl
    return frames


def bth_offset(frame: bytes) -> int:
    """Where the BTH starts in an IPv4 or IPv6 RoCEv2 frame."""
    return 14 + (40 if frame[12:14] == b"\x86\xdd" else 20) + 8


def icrc(frame: bytes) -> tuple[int, int]:
    """(ICRC in the frame, ICRC recomputed) of an IPv4 or IPv6 RoCEv2 frame.

    The CRC-32 covers 8 bytes of 0xff (the masked LRH), the IP header with the fields routers
    change set to all ones (IPv4: TOS, TTL and header checksum; IPv6: traffic class, flow label
    and hop limit), the UDP header with its checksum all ones, the BTH with its reserved byte
    (resv8a) all ones, then the rest up to the ICRC. It is sent least significant byte first.
    """
    if frame[12:14] == b"\x86\xdd":
        ip = bytearray(frame[14:54])
        total = 40 + struct.unpack_from(">H", ip, 4)[0]
        ip[0] |= 0x0F
        ip[1:4] = b"\xff\xff\xff"
        ip[7] = 0xFF
    else:
        assert frame[12:14] == b"\x08\x00", "neither IPv4 nor IPv6"
        ip = bytearray(frame[14:34])
        ihl = (ip[0] & 0xF) * 4
        assert ihl == 20, "IPv4 options"
        total = struct.unpack_from(">H", ip, 2)[0]
        ip[1] = 0xFF
        ip[8] = 0xFF
        ip[10:12] = b"\xff\xff"
    u = 14 + len(ip)
    udp = bytearray(frame[u : u + 8])
    udp[6:8] = b"\xff\xff"
    bth = bytearray(frame[u + 8 : u + 20])
    bth[4] = 0xFF
    end = 14 + total
    rest = frame[u + 20 : end - 4]
    want = zlib.crc32(b"\xff" * 8 + ip + udp + bth + rest)
    return int.from_bytes(frame[end - 4 : end], "little"), want


def dissect(path: Path) -> list[dict[str, str]]:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is missing: apt-get install tshark (.ci/install-system-deps)")
    args = [tshark, "-r", str(path), "-T", "fields", "-E", "separator=|", "-E", "occurrence=f"]
    for f in FIELDS:
        args += ["-e", f]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    rows = [dict(zip(FIELDS, line.split("|"))) for line in out.splitlines()]
    assert rows, f"tshark read no packets from {path}"
    return rows


def num(s: str) -> int:
    return int(s, 0)


def psn_steps(rows: list[dict[str, str]]) -> list[int]:
    psns = [num(r["infiniband.bth.psn"]) for r in rows]
    return [(b - a) % (1 << 24) for a, b in zip(psns, psns[1:])]


# name -> (opcodes in order, PSN steps between consecutive packets)
EXPECTED: dict[str, tuple[list[int], list[int]]] = {
    "ud_send": ([0x64], []),
    "rc_send_only": ([0x04] * 3, [0, 0]),  # the SEND, then two retransmissions of it
    "rc_send_multi": ([0x00, 0x01, 0x02], [1, 1]),  # 2500 B at MTU 1024: first, middle, last
    "uc_send": ([0x24], []),
    "rc_write": ([0x0A] * 4, [1, 1, 1]),
    "rc_write_multi": ([0x06, 0x07, 0x08], [1, 1]),
    "rc_read": ([0x0C] * 2, [4]),  # a 4096 B read takes 4 response PSNs at MTU 1024
    "rc_fetch_add": ([0x14] * 2, [1]),
    "rc_cmp_swap": ([0x13] * 2, [1]),
    "rc_imm": ([0x05, 0x0B], [1]),  # SEND only with immediate, RDMA WRITE only with immediate
    "rc_send_inv": ([0x00, 0x01, 0x16], [1, 1]),  # first, middle, last with invalidate
    # max_rd_atomic 2: two of four READs sent, then both again (retransmitted), no third
    "rc_read_credits": ([0x0C] * 4, [1, (1 << 24) - 1, 1]),
    "ud_send_ipv6": ([0x64], []),
    "rc_send_multi_ipv6": ([0x00, 0x01, 0x02], [1, 1]),
    "rc_read_ipv6": ([0x0C] * 2, [4]),
}


def test_every_scenario_has_a_fixture_and_a_readme_line() -> None:
    readme = (DATA / "README.md").read_text()
    assert {s.name for s in SCENARIOS} == set(EXPECTED)
    for name in RESPONDER_FIXTURES:
        assert (DATA / f"{name}.pcap").is_file() and f"`{name}.pcap`" in readme, name
    for s in SCENARIOS:
        assert (DATA / f"{s.name}.pcap").is_file(), (
            f"regenerate: python {DATA.parents[1]}/rdma/rxe_fixtures.py {s.name}"
        )
        assert f"`{s.name}.pcap`" in readme, s.name
    known = {*EXPECTED, *RESPONDER_FIXTURES}
    assert not [p.name for p in DATA.glob("*.pcap") if p.stem not in known]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_matches_its_description(name: str) -> None:
    path = DATA / f"{name}.pcap"
    rows = dissect(path)
    opcodes, steps = EXPECTED[name]
    assert [num(r["infiniband.bth.opcode"]) for r in rows] == opcodes
    assert psn_steps(rows) == steps
    for r in rows:
        if name.endswith("_ipv6"):
            assert (r["ipv6.src"], r["ipv6.dst"], r["ip.src"]) == (GUEST6, HOST6, ""), r
        else:
            assert (r["ip.src"], r["ip.dst"], r["ipv6.src"]) == (GUEST, HOST, ""), r
        assert r["udp.dstport"] == "4791", r
        assert num(r["infiniband.bth.destqp"]) == FAKE_QPN, r
        assert num(r["infiniband.bth.p_key"]) == 0xFFFF, r
    op = opcodes[0]
    if op == 0x64:
        assert num(rows[0]["infiniband.deth.q_key"]) == 0x11111111
    if op in (0x0A, 0x06, 0x0C, 0x13, 0x14):
        rkeys = {r["infiniband.reth.r_key"] for r in rows if r["infiniband.reth.r_key"]}
        assert rkeys <= {hex(FAKE_RKEY), f"0x{FAKE_RKEY:08x}"} or op in (0x13, 0x14), rkeys
    if op in (0x13, 0x14):
        # ib_atomic_bw adds 1, or swaps in 0 where it finds 0.
        for r in rows:
            swap, cmp = num(r["infiniband.atomiceth.swapdt"]), num(r["infiniband.atomiceth.cmpdt"])
            assert (swap, cmp) == ((1, 0) if op == 0x14 else (0, 0)), r
            assert FAKE_VADDR <= num(r["infiniband.reth.va"]) < FAKE_VADDR + (1 << 20), r
    if name == "rc_send_inv":
        assert num(rows[0]["infiniband.bth.psn"]) == 0x003000
        assert [r["infiniband.ieth"].replace(":", "") for r in rows] == ["", "", f"{FAKE_RKEY:08x}"]
    if name == "rc_imm":
        assert num(rows[0]["infiniband.bth.psn"]) == 0x001000
        assert [int(r["infiniband.immdt"], 16) for r in rows] == [0xC0FFEE, 0xBEEF]
        assert num(rows[1]["infiniband.reth.dmalen"]) == 32
        assert num(rows[1]["infiniband.reth.va"]) == FAKE_VADDR
    if op in (0x0A, 0x06, 0x0C):
        for r in rows:
            if r["infiniband.reth.va"]:
                assert FAKE_VADDR <= num(r["infiniband.reth.va"]) < FAKE_VADDR + (1 << 20), r
        lengths = [num(r["infiniband.reth.dmalen"]) for r in rows if r["infiniband.reth.dmalen"]]
        want = {0x0A: [64] * 4, 0x06: [2500], 0x0C: [4096] * 2}[op]
        assert lengths == ([8] * 4 if name == "rc_read_credits" else want), lengths
    # The last request of an RC message asks for an ACK.
    if name.startswith("rc_"):
        assert rows[-1]["infiniband.bth.a"] in ("1", "True"), rows[-1]


H, G = "198.18.1.1", "198.18.1.2"
ACK, RNR, NAK = 0, 1, 3  # AETH syndrome bits 7..5
# rc_responses.pcap: (source, opcode, PSN - FAKE_PSN, AETH kind and code, AtomicAckETH)
RESPONSE_FLOW: list[tuple[str, int, int, tuple[int, int] | None, int | None]] = [
    (H, 0x04, 0, None, None), (G, 0x11, 0, (ACK, 0x1F), None),  # SEND -> ACK (no credits)
    (H, 0x04, 1, None, None), (G, 0x11, 1, (RNR, -1), None),  # no receive posted -> RNR NAK
    (H, 0x0C, 1, None, None),  # READ 2500 B -> response first (AETH), middle, last (AETH)
    (G, 0x0D, 1, (ACK, 0x1F), None), (G, 0x0E, 2, None, None), (G, 0x0F, 3, (ACK, 0x1F), None),
    (H, 0x14, 4, None, None), (G, 0x12, 4, (ACK, 0x1F), 41),  # FETCH_ADD 5 on 41
    (H, 0x13, 5, None, None), (G, 0x12, 5, (ACK, 0x1F), 46),  # COMPARE_SWAP 46 -> 7
    (H, 0x0A, 6, None, None), (G, 0x11, 6, (ACK, 0x1F), None),  # WRITE -> ACK
    (H, 0x04, 10, None, None), (G, 0x11, 7, (NAK, 0), None),  # PSN ahead -> NAK sequence error
    (H, 0x0A, 6, None, None), (G, 0x11, 6, (ACK, 0x1F), None),  # duplicate WRITE -> ACK again
    (H, 0x0A, 7, None, None), (G, 0x11, 7, (NAK, 2), None),  # bad rkey -> NAK remote access
]  # fmt: skip


def test_rc_responses_are_rxe_answering_each_request() -> None:
    rows = dissect(DATA / f"{RESPONSES}.pcap")
    assert len(rows) == len(RESPONSE_FLOW), rows
    vm_qpn = num(rows[0]["infiniband.bth.destqp"])
    for r, (src, op, off, aeth, orig) in zip(rows, RESPONSE_FLOW):
        where = f"{r}: expected {(src, hex(op), off, aeth, orig)}"
        assert (r["ip.src"], num(r["infiniband.bth.opcode"])) == (src, op), where
        assert num(r["infiniband.bth.psn"]) == (FAKE_PSN + off) & 0xFFFFFF, where
        assert num(r["infiniband.bth.destqp"]) == (vm_qpn if src == H else FAKE_QPN), where
        if aeth is None:
            assert r["infiniband.aeth.syndrome"] == "", where
        else:
            syn = num(r["infiniband.aeth.syndrome"])
            assert syn >> 5 == aeth[0] and aeth[1] in (-1, syn & 0x1F), where
        if orig is not None:
            assert num(r["infiniband.atomicacketh.origremdt"]) == orig, where
    # The MSN counts completed messages: SEND, READ, 2 atomics, WRITE.
    assert num(rows[-1]["infiniband.aeth.msn"]) == 5


def test_send_with_invalidate_of_an_mr_is_refused_as_rxe_does() -> None:
    """A SEND with invalidate naming the responder's MR (ibv_reg_mr: not remotely
    invalidatable) is ACKed, MSN unchanged, its receive completes REM_INV_REQ_ERR (class J),
    the QP goes to the error state: the next SEND draws nothing and the last receive is
    flushed."""
    rows = dissect(DATA / f"{SEND_INV}.pcap")
    flow = [(H, 0x04, 0, None), (G, 0x11, 0, 1), (H, 0x17, 1, None), (G, 0x11, 1, 1),
            (H, 0x04, 2, None)]  # fmt: skip
    assert len(rows) == len(flow), rows
    for r, (src, op, off, msn) in zip(rows, flow):
        assert (r["ip.src"], num(r["infiniband.bth.opcode"])) == (src, op), r
        assert num(r["infiniband.bth.psn"]) == (FAKE_PSN + off) & 0xFFFFFF, r
        if msn is not None:
            assert num(r["infiniband.aeth.syndrome"]) == 0x1F, r  # ACK, no credit count
            assert num(r["infiniband.aeth.msn"]) == msn, r
    wcs = json.loads((DATA / f"{SEND_INV}.wc.json").read_text())
    assert [(w["wr_id"], w["status_name"]) for w in wcs] == [
        (1, "SUCCESS"), (2, "REM_INV_REQ_ERR"), (3, "WR_FLUSH_ERR"),
    ]  # fmt: skip
    assert wcs[0]["byte_len"] == 32


def test_send_with_invalidate_of_a_memory_window_invalidates_it() -> None:
    """The SEND with invalidate of a bound type 2 MW's rkey is ACKed with the MSN counting it,
    its receive completes with the key invalidated; a WRITE through the key is then refused
    (NAK remote access error) and the other receive flushed."""
    rows = dissect(DATA / f"{SEND_INV_MW}.pcap")
    flow = [(H, 0x17, 0, None), (G, 0x11, 0, (ACK, 0x1F, 1)), (H, 0x0A, 1, None),
            (G, 0x11, 1, (NAK, 2, 1))]  # fmt: skip
    assert len(rows) == len(flow), rows
    for r, (src, op, off, aeth) in zip(rows, flow):
        assert (r["ip.src"], num(r["infiniband.bth.opcode"])) == (src, op), r
        assert num(r["infiniband.bth.psn"]) == (FAKE_PSN + off) & 0xFFFFFF, r
        if aeth is not None:
            syn = num(r["infiniband.aeth.syndrome"])
            assert (syn >> 5, syn & 0x1F, num(r["infiniband.aeth.msn"])) == aeth, r
    rkey = num(rows[2]["infiniband.reth.r_key"])
    wcs = json.loads((DATA / f"{SEND_INV_MW}.wc.json").read_text())
    assert [(w["wr_id"], w["status"]) for w in wcs] == [(1, 0), (2, 5)]  # SUCCESS, WR_FLUSH_ERR
    assert (wcs[0]["byte_len"], wcs[0]["invalidated_rkey"]) == (32, rkey)
    assert wcs[0]["wc_flags"] & 4, "rxe's provider passes the kernel's WITH_INVALIDATE (1 << 2)"


def test_duplicate_reads_are_answered_only_from_held_resources() -> None:
    """max_dest_rd_atomic 2: three READs answered (MSN 1, 2, 3); the second again is answered
    (its resource held), the first again is dropped (its resource recycled by the third)."""
    rows = dissect(DATA / f"{RD_ATOMIC}.pcap")
    flow = [(H, 0x0C, 0), (G, 0x10, 0), (H, 0x0C, 1), (G, 0x10, 1), (H, 0x0C, 2), (G, 0x10, 2),
            (H, 0x0C, 1), (G, 0x10, 1), (H, 0x0C, 0)]  # fmt: skip
    assert len(rows) == len(flow), rows
    for r, (src, op, off) in zip(rows, flow):
        assert (r["ip.src"], num(r["infiniband.bth.opcode"])) == (src, op), r
        assert num(r["infiniband.bth.psn"]) == (FAKE_PSN + off) & 0xFFFFFF, r
    msns = [num(r["infiniband.aeth.msn"]) for r in rows if r["ip.src"] == G]
    assert msns == [1, 2, 3, 3]
    assert json.loads((DATA / f"{RD_ATOMIC}.wc.json").read_text()) == []


def test_a_read_without_read_resources_is_an_invalid_request() -> None:
    """max_dest_rd_atomic 0: a READ is NAKed invalid request, the QP goes to the error state
    (the SEND after it draws nothing) and both receives are flushed."""
    rows = dissect(DATA / f"{NO_RD_ATOMIC}.pcap")
    assert [(r["ip.src"], num(r["infiniband.bth.opcode"])) for r in rows] == [
        (H, 0x0C), (G, 0x11), (H, 0x04),
    ]  # fmt: skip
    syn = num(rows[1]["infiniband.aeth.syndrome"])
    assert (syn >> 5, syn & 0x1F, num(rows[1]["infiniband.aeth.msn"])) == (NAK, 1, 0)
    wcs = json.loads((DATA / f"{NO_RD_ATOMIC}.wc.json").read_text())
    assert [(w["wr_id"], w["status"]) for w in wcs] == [(1, 5), (2, 5)]  # WR_FLUSH_ERR


def test_an_empty_srq_draws_an_rnr_nak() -> None:
    """Two SENDs take the SRQ's two receives (ACKs, MSN 1 and 2); the third finds it empty."""
    rows = dissect(DATA / f"{SRQ}.pcap")
    flow = [(H, 0x04, 0, None), (G, 0x11, 0, (ACK, 1)), (H, 0x04, 1, None), (G, 0x11, 1, (ACK, 2)),
            (H, 0x04, 2, None), (G, 0x11, 2, (RNR, 2))]  # fmt: skip
    assert len(rows) == len(flow), rows
    for r, (src, op, off, aeth) in zip(rows, flow):
        assert (r["ip.src"], num(r["infiniband.bth.opcode"])) == (src, op), r
        assert num(r["infiniband.bth.psn"]) == (FAKE_PSN + off) & 0xFFFFFF, r
        if aeth is not None:
            assert num(r["infiniband.aeth.syndrome"]) >> 5 == aeth[0], r
            assert num(r["infiniband.aeth.msn"]) == aeth[1], r
    wcs = json.loads((DATA / f"{SRQ}.wc.json").read_text())
    assert [(w["wr_id"], w["status_name"], w["byte_len"]) for w in wcs] == [
        (1, "SUCCESS", 32), (2, "SUCCESS", 32),
    ]  # fmt: skip


@pytest.mark.parametrize("name", [*sorted(EXPECTED), *RESPONDER_FIXTURES])
def test_fixture_icrcs_are_correct(name: str) -> None:
    frames = read_pcap(DATA / f"{name}.pcap")
    assert frames
    for i, frame in enumerate(frames):
        sent, computed = icrc(frame)
        assert sent == computed, f"frame {i + 1}: ICRC {sent:#010x}, computed {computed:#010x}"
        # and one flipped BTH bit (SE, not masked) changes it: the check is not vacuous
        bad = bytearray(frame)
        bad[bth_offset(frame) + 1] ^= 0x80
        assert icrc(bytes(bad))[1] != sent


def test_icrc_of_a_masked_field_does_not_change() -> None:
    """TTL, TOS, IP and UDP checksums and BTH resv8a are masked: changing them keeps the ICRC."""
    frame = bytearray(read_pcap(DATA / "rc_send_only.pcap")[0])
    sent = icrc(bytes(frame))[0]
    frame[14 + 1] ^= 0x5C  # TOS
    frame[14 + 8] -= 1  # TTL
    frame[14 + 10] ^= 0xFF  # IP checksum
    frame[34 + 6] ^= 0xFF  # UDP checksum
    frame[42 + 4] ^= 0xFF  # BTH resv8a
    assert icrc(bytes(frame))[1] == sent
    assert ipaddress.ip_address(bytes(frame[26:30])) == ipaddress.ip_address(GUEST)


# --- the generator's own pieces ---------------------------------------------------------------


def test_oob_mirror_answers_pingpong_and_perftest_key_messages_as_the_made_up_peer() -> None:
    from rxe_fixtures import FAKE_PSN, mapped_gid, rewrite

    gid = mapped_gid(HOST)
    # ibv_*_pingpong: "%04x:%06x:%06x:%s" with the GID as 32 hex digits, 52 bytes with the NUL
    client = b"0000:000011:a1b2c3:" + mapped_gid(GUEST).hex().encode() + b"\0"
    assert len(client) == 52
    want = b"0000:%06x:%06x:%s\0" % (FAKE_QPN, FAKE_PSN, gid.hex().encode())
    assert rewrite(client, gid) == want
    # perftest 4.5 KEY_PRINT_FMT_GID, 108 bytes with the NUL; lid, out_reads and srqn kept
    g = b"".join(b"%02x:" % b for b in mapped_gid(GUEST))
    client = b"0000:0010:000012:d4e5f6:00001a2b:00005566778899aa:" + g + b"00000000:\0"
    assert len(client) == 108
    reply = rewrite(client, gid)
    assert len(reply) == 108
    fields = reply.rstrip(b"\0").split(b":")
    assert fields[:6] == [b"0000", b"0010", b"%06x" % FAKE_QPN, b"%06x" % FAKE_PSN,
                          b"%08x" % FAKE_RKEY, b"%016x" % FAKE_VADDR]  # fmt: skip
    assert bytes(int(x, 16) for x in fields[6:22]) == gid and fields[22] == b"00000000"
    # anything else (versions, MTU, sizes, "done") goes back as it came
    for other in (b"5.60\0" + bytes(11), b"\x00\x00\x10\x00", b"3", b"done\0", client[:-1]):
        assert rewrite(other, gid) == other


def test_built_frames_carry_a_correct_icrc_and_ip_checksum() -> None:
    from rxe_fixtures import atomic_eth, reth, roce_frame

    macs, ips = ("02:00:c6:12:01:01", "02:00:c6:12:01:02"), (HOST, GUEST)
    for frame in (
        roce_frame(macs, ips, 0x04, 0x11, FAKE_PSN, ackreq=True, payload=b"abc"),  # padded
        roce_frame(macs, ips, 0x0C, 0x11, 1, ext=reth(FAKE_VADDR, FAKE_RKEY, 2500)),
        roce_frame(macs, ips, 0x14, 0x11, 2, ext=atomic_eth(FAKE_VADDR, FAKE_RKEY, 5, 0)),
    ):
        sent, computed = icrc(frame)
        assert sent == computed
        ip = frame[14:34]
        total = sum(struct.unpack(">10H", ip))
        while total > 0xFFFF:
            total = (total & 0xFFFF) + (total >> 16)
        assert total == 0xFFFF, "IPv4 header checksum"
        assert struct.unpack(">H", ip[2:4])[0] == len(frame) - 14
    padded = roce_frame(macs, ips, 0x04, 0x11, 0, payload=b"abc")
    assert (padded[43] >> 4) & 3 == 1 and len(padded) == 14 + 20 + 8 + 12 + 4 + 4
