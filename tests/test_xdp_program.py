"""XDP programs from Python: rules, parsing, test runs, attach/detach in a network namespace."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

import kbypass
from kbypass import Rule, Verdict, XdpProgram, packet, parse_filter

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (CAP_BPF, CAP_NET_ADMIN)")


# ---------------------------------------------------------------- frames


def eth(ethertype: int, payload: bytes, vlan: int | None = None) -> bytes:
    head = bytes.fromhex("020000000001020000000002")
    if vlan is not None:
        head += struct.pack("!HH", 0x8100, vlan)
    return head + struct.pack("!H", ethertype) + payload


def l4(sport: int, dport: int) -> bytes:
    return struct.pack("!HHHH", sport, dport, 16, 0) + b"\xab" * 8


def ipv4(proto: int, src: str, dst: str, payload: bytes, options: bytes = b"") -> bytes:
    ihl = 5 + len(options) // 4
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        ihl * 4 + len(payload),
        1,
        0,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return hdr + options + payload


def ipv6(nxt: int, src: str, dst: str, payload: bytes) -> bytes:
    return (
        struct.pack("!IHBB", 0x60000000, len(payload), nxt, 64)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + payload
    )


def udp4(dport: int, src: str = "198.18.0.1") -> bytes:
    return eth(0x0800, ipv4(17, src, "198.18.0.2", l4(40000, dport)))


# ---------------------------------------------------------------- parsing (no privileges)


def test_parse_filter_examples() -> None:
    rules = parse_filter("udp dst port 9000-9010")
    assert rules == [Rule(proto="udp", dport=(9000, 9010))]
    assert str(rules[0]) == "udp dst port 9000-9010"
    assert parse_filter("ip6 tcp src port 22") == [Rule(proto="tcp", ip=6, sport=22)]
    r = parse_filter("ip src 198.18.0.0/15 and udp")[0]
    assert (r.ip, r.src, r.proto) == (4, "198.18.0.0/15", "udp")
    assert parse_filter("ether proto 0x88b5")[0].ethertype == 0x88B5
    assert len(parse_filter("udp port 53 or tcp dst port 80, icmp; vlan 7 udp")) == 5
    assert parse_filter("vlan udp")[0].vlan is True
    assert parse_filter("vlan 12 udp")[0].vlan == 12


def test_rule_roundtrips_through_text() -> None:
    rules = [
        Rule(proto="udp", dport=(9000, 9010)),
        Rule(ip=6, proto="tcp", src="2001:db8::/32", sport=22),
        Rule(ip=4, dst="198.19.0.0/16", proto=47),
        Rule(ethertype=0x88B5, vlan=100),
        Rule(proto="icmp"),
        Rule(),
    ]
    for r in rules:
        assert parse_filter(str(r)) == [r], str(r)
    assert str(Rule()) == "all"
    assert Rule(proto="icmp").ip == 4
    assert Rule(proto="icmp6").ip == 6


def test_parse_errors_point_at_the_token() -> None:
    with pytest.raises(ValueError, match=r"column 14.*9000x") as e:
        parse_filter("udp dst port 9000x")
    assert "^^^^^" in str(e.value)
    with pytest.raises(ValueError, match=r"column 5.*unknown term"):
        parse_filter("udp florp")
    with pytest.raises(ValueError, match="conflicts"):
        parse_filter("ip6 src 198.18.0.1")
    with pytest.raises(ValueError, match="empty"):
        parse_filter("")
    with pytest.raises(TypeError):
        parse_filter(42)  # type: ignore[arg-type]


def test_rule_validation_errors_are_typed() -> None:
    with pytest.raises(ValueError, match=r"0\.\.65535"):
        Rule(proto="udp", dport=70000)
    with pytest.raises(ValueError, match="empty"):
        Rule(proto="udp", dport=(10, 9))
    with pytest.raises(TypeError):
        Rule(proto="udp", dport="80")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not one of"):
        Rule(proto="quic")
    with pytest.raises(ValueError, match="must be 4, 6"):
        Rule(ip=5)
    with pytest.raises(ValueError):
        Rule(ip=6, src="198.18.0.1")
    with pytest.raises(ValueError):
        Rule(src="198.18.0.0/40")
    with pytest.raises(ValueError):
        Rule(src="not-an-address")
    with pytest.raises(ValueError, match="udp, tcp or sctp"):
        Rule(proto="icmp", dport=1)
    with pytest.raises(ValueError):
        Rule(vlan=5000)
    with pytest.raises(ValueError):
        Rule(ethertype=0x10000)
    with pytest.raises(ValueError):
        Rule(ethertype=0x0800)
    with pytest.raises(ValueError, match="IP terms"):
        Rule(ethertype=0x88B5, proto="udp")


def test_bad_filter_argument_types() -> None:
    with pytest.raises(TypeError):
        XdpProgram(filter=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        XdpProgram(filter=[])


def test_unprivileged_gets_permission_error() -> None:
    code = textwrap.dedent(
        """
        import os, kbypass
        os.setgid(65534); os.setuid(65534)
        try:
            kbypass.XdpProgram("udp")
        except PermissionError as e:
            print("PERM", e)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if not IS_ROOT:
        # Not root: we cannot drop to nobody, but the call itself must fail the same way.
        r = subprocess.run(
            [
                sys.executable,
                "-c",
                "import kbypass\ntry:\n kbypass.XdpProgram('udp')\n"
                "except PermissionError as e:\n print('PERM', e)",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("PERM"), r.stdout + r.stderr
    assert "needs CAP_NET_ADMIN and CAP_BPF: run as root" in r.stdout


# ---------------------------------------------------------------- test runs (root)


@needs_root
def test_default_program_redirects_everything() -> None:
    p = XdpProgram()
    assert p.name == "kbypass_xsk"
    assert p.insn_count == 6
    assert p.filter is None and p.rules == []
    assert p.test_run(udp4(1)) is Verdict.REDIRECT
    assert p.test_run(eth(0x0806, bytes(28))) is Verdict.REDIRECT


@needs_root
def test_filter_verdicts() -> None:
    p = XdpProgram(filter="udp dst port 9000-9010")
    assert p.name == "kbypass_filter"
    assert len(p.tag) == 16
    assert p.test_run(udp4(9000)) is Verdict.REDIRECT
    assert p.test_run(udp4(9010), repeat=100) is Verdict.REDIRECT
    assert p.test_run(udp4(8999)) is Verdict.PASS
    assert p.test_run(udp4(9011)) is Verdict.PASS
    assert p.test_run(eth(0x0806, bytes(28))) is Verdict.PASS  # ARP stays with the kernel
    tcp = eth(0x0800, ipv4(6, "198.18.0.1", "198.18.0.2", l4(1, 22)))
    assert p.test_run(tcp) is Verdict.PASS  # SSH too
    v6 = eth(0x86DD, ipv6(17, "2001:db8::1", "2001:db8::2", l4(1, 9005)))
    assert p.test_run(v6) is Verdict.REDIRECT
    # Truncated frames never match (and never read out of bounds): ports need the whole UDP
    # header in the frame.
    full = udp4(9005)
    for n in (14, 20, 33, 37, 38, 41):
        assert p.test_run(full[:n]) is Verdict.PASS, n
    assert p.test_run(full[:42]) is Verdict.REDIRECT
    with pytest.raises(ValueError, match="Ethernet header"):
        p.test_run(b"\x00" * 10)
    with pytest.raises(TypeError):
        p.test_run("frame")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        p.test_run(full, repeat=0)
    assert p.run_time_ns(full, repeat=1000) > 0


def parsed(frame: bytes) -> np.void:
    """The parser's record for one frame."""
    frames, lens = packet.frames_from_bytes([frame])
    row: np.void = packet.parse(frames, lens)[0]
    return row


@needs_root
def test_ports_are_never_read_past_the_ip_datagram() -> None:
    # Issue 8: IPv4 total length 20 (no UDP header) and `04d2 2328` in the Ethernet trailer
    # was redirected by `udp dst port 9000`, and parsed as dst_port 9000.
    p = XdpProgram(filter="udp dst port 9000")
    frame = eth(0x0800, ipv4(17, "198.18.0.1", "198.18.0.2", b"")) + bytes.fromhex("04d22328")
    frame = frame.ljust(60, b"\0")  # Ethernet padding
    assert struct.unpack_from("!H", frame, 16)[0] == 20
    assert p.test_run(frame) is Verdict.PASS
    h = parsed(frame)
    assert (h["src_port"], h["dst_port"], h["flags"] & packet.FLAG_L4) == (0, 0, 0)
    assert h["flags"] & packet.FLAG_MALFORMED
    # Inside a datagram long enough for the whole header, the same bytes are the ports.
    longer = frame[:16] + struct.pack("!H", 28) + frame[18:]
    assert p.test_run(longer) is Verdict.REDIRECT
    assert parsed(longer)["dst_port"] == 9000
    # IPv6 payload length 0: the same.
    trailer = bytes.fromhex("04d2232800080000")
    v6 = eth(0x86DD, ipv6(17, "2001:db8::1", "2001:db8::2", b"")) + trailer
    assert p.test_run(v6) is Verdict.PASS
    assert parsed(v6)["dst_port"] == 0


@needs_root
def test_qinq_frames_match_on_their_inner_ethertype() -> None:
    # Issue 8: the parser read two tags, the program stepped over one and saw no IP.
    def tagged(*tags: tuple[int, int]) -> bytes:
        head = bytes.fromhex("020000000001020000000002")
        head += b"".join(struct.pack("!HH", tpid, tci) for tpid, tci in tags)
        return head + b"\x08\x00" + ipv4(17, "198.18.0.1", "198.18.0.2", l4(1234, 9000))

    qinq = tagged((0x88A8, 100), (0x8100, 7))
    for text in ("udp dst port 9000", "vlan 100 and udp", "vlan and ip src 198.18.0.1"):
        assert XdpProgram(filter=text).test_run(qinq) is Verdict.REDIRECT, text
    assert XdpProgram(filter="vlan 7").test_run(qinq) is Verdict.PASS  # the outer id counts
    h = parsed(qinq)
    assert (h["ethertype"], h["vlan"], h["dst_port"]) == (0x0800, 100, 9000)
    # A third tag is not descended into: tagged, but not IP.
    three = tagged((0x88A8, 100), (0x8100, 7), (0x8100, 8))
    assert XdpProgram(filter="udp").test_run(three) is Verdict.PASS
    assert XdpProgram(filter="vlan 100").test_run(three) is Verdict.REDIRECT
    assert parsed(three)["ip_version"] == 0


def ext(nxt: int, units: int) -> bytes:
    """An IPv6 hop-by-hop/routing/destination options header of (units + 1) * 8 bytes."""
    return bytes([nxt, units]) + bytes(6 + 8 * units)


@needs_root
def test_ipv6_udp_behind_extension_headers() -> None:
    # Issue 8: the program did not walk IPv6 extension headers; the parser did.
    chain = ext(43, 0) + ext(44, 2) + struct.pack("!BBHI", 60, 0, 1, 7) + ext(17, 1)
    frame = eth(0x86DD, ipv6(0, "2001:db8::1", "2001:db8::2", chain + l4(1234, 9000)))
    p = XdpProgram(filter="udp dst port 9000")
    assert p.test_run(frame) is Verdict.REDIRECT
    h = parsed(frame)
    assert (h["proto"], h["dst_port"], h["l4_off"]) == (17, 9000, 14 + 40 + len(chain))
    assert h["flags"] & packet.FLAG_FRAGMENT
    # A later fragment names UDP but has no ports; nine extension headers are one too many.
    frag = struct.pack("!BBHI", 17, 0, 8, 7)  # offset 1 (8 bytes), no M
    later = eth(0x86DD, ipv6(44, "2001:db8::1", "2001:db8::2", frag + l4(1234, 9000)))
    assert p.test_run(later) is Verdict.PASS
    assert XdpProgram(filter="udp").test_run(later) is Verdict.REDIRECT
    deep = b"".join(ext(60, 0) for _ in range(8)) + ext(17, 0)
    too_deep = eth(0x86DD, ipv6(60, "2001:db8::1", "2001:db8::2", deep + l4(1234, 9000)))
    assert p.test_run(too_deep) is Verdict.PASS
    assert XdpProgram(filter="proto 60").test_run(too_deep) is Verdict.REDIRECT
    assert parsed(too_deep)["proto"] == 60


@needs_root
def test_rule_objects_and_lists() -> None:
    p = XdpProgram(filter=[Rule(ip=4, src="198.18.0.0/15", proto="udp"), "vlan 100 and tcp"])
    assert p.filter == "ip udp src 198.18.0.0/15 or vlan 100 tcp"
    assert p.test_run(udp4(1, src="198.19.7.7")) is Verdict.REDIRECT
    assert p.test_run(udp4(1, src="198.20.0.1")) is Verdict.PASS
    tcp = ipv4(6, "10.0.0.1", "10.0.0.2", l4(1, 2))
    assert p.test_run(eth(0x0800, tcp, vlan=100)) is Verdict.REDIRECT
    assert p.test_run(eth(0x0800, tcp, vlan=101)) is Verdict.PASS
    assert p.test_run(eth(0x0800, tcp)) is Verdict.PASS
    # IPv4 options move the UDP header; the program follows IHL.
    opt = eth(0x0800, ipv4(17, "198.18.0.1", "198.18.0.2", l4(1, 9000), options=b"\x01" * 8))
    assert XdpProgram(filter="udp dst port 9000").test_run(opt) is Verdict.REDIRECT


@needs_root
def test_close_and_context_manager() -> None:
    with XdpProgram(filter="udp") as p:
        assert not p.closed
        assert p.test_run(udp4(1)) is Verdict.REDIRECT
        assert p.map_fd >= 0
    assert p.closed
    p.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        p.test_run(udp4(1))
    with pytest.raises(RuntimeError, match="closed"):
        p.attach("lo")
    assert p.name == "kbypass_filter"  # metadata stays readable


@needs_root
def test_frags_variant() -> None:
    p = XdpProgram(filter=Rule(proto="udp", dport=9000), frags=True, queues=8)
    assert p.frags and p.queues == 8
    assert p.name == "kbypass_filt_mb"
    assert p.test_run(udp4(9000)) is Verdict.REDIRECT
    assert p.test_run(udp4(9001)) is Verdict.PASS
    with pytest.raises(ValueError, match="beyond"):
        p.clear_socket(8)


@needs_root
def test_probe_xdp() -> None:
    r = kbypass.probe_xdp()
    for key in ("af_xdp_socket", "prog_load", "frags", "xdp_link", "live_frames"):
        assert r[key]["ok"], (key, r[key])
        assert isinstance(r[key]["detail"], str)
    assert r["redirect_form"] == "flags-default"
    assert r["kernel"]


# ---------------------------------------------------------------- attach in a namespace (root)


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace with a veth pair kbx0/kbx1 (198.18.200.1/.2), removed afterwards."""
    if not IS_ROOT:
        pytest.skip("needs root to create network namespaces")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 (`ip`); .ci/install-system-deps installs it")
    name = f"kbx-py-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (
            ["link", "add", "kbx0", "type", "veth", "peer", "name", "kbx1"],
            ["addr", "add", "198.18.200.1/24", "dev", "kbx0"],
            ["addr", "add", "198.18.200.2/24", "dev", "kbx1"],
            ["link", "set", "kbx0", "up"],
            ["link", "set", "kbx1", "up"],
        ):
            subprocess.run(["ip", "-n", name, *cmd], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def run_in(ns: str, code: str, timeout: float = 60) -> dict[str, object]:
    """Run Python code inside the namespace; it prints one JSON object as its last line."""
    r = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    result: dict[str, object] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


def test_attach_modes_and_context_manager(netns: str) -> None:
    out = run_in(
        netns,
        """
        import json, kbypass
        p = kbypass.XdpProgram("udp dst port 9000")
        res = {}
        for mode in ("native", "generic", "auto"):
            with p.attach("kbx0", mode=mode) as att:
                q = kbypass.xdp_query("kbx0")
                res[mode] = [att.mode, att.via, att.attached, q[0]["prog_id"] == p.id, q[0]["ours"]]
            res[mode].append(att.attached)
            res[mode].append(kbypass.xdp_query("kbx0"))
        with p.attach("lo") as att:  # no native XDP on loopback: auto falls back
            res["lo"] = [att.mode, att.notes]
        try:
            p.attach("nope0")
        except FileNotFoundError as e:
            res["missing"] = str(e)
        try:
            p.attach("kbx0", mode="turbo")
        except ValueError as e:
            res["badmode"] = str(e)
        print(json.dumps(res))
        """,
    )
    assert out["lo"][0] == "generic" and any("native" in n for n in out["lo"][1])  # type: ignore[index]
    assert out["native"] == ["native", "bpf_link", True, True, True, False, []]
    assert out["generic"] == ["generic", "bpf_link", True, True, True, False, []]
    assert out["auto"] == ["native", "bpf_link", True, True, True, False, []]
    assert "no such interface" in str(out["missing"])
    assert "native" in str(out["badmode"])


def test_kbypass_program_held_by_live_link_is_refused(netns: str) -> None:
    out = run_in(
        netns,
        """
        import errno, json, kbypass
        a = kbypass.XdpProgram()
        b = kbypass.XdpProgram("udp")
        res = {}
        att = a.attach("kbx1", mode="native")
        try:
            b.attach("kbx1")
        except OSError as e:
            res["refused"] = [e.errno == errno.EBUSY, str(e)]
        att2 = b.attach("kbx1", force=True)
        res["forced"] = [att2.mode, kbypass.xdp_query("kbx1")[0]["prog_id"] == b.id, att2.notes]
        att.detach()  # its link was already taken over: harmless
        res["still_b"] = kbypass.xdp_query("kbx1")[0]["prog_id"] == b.id
        att2.detach()
        res["empty"] = kbypass.xdp_query("kbx1")
        res["a_id"] = a.id
        print(json.dumps(res))
        """,
    )
    ok, msg = out["refused"]  # type: ignore[misc]
    assert ok, msg
    assert f"id {out['a_id']}" in msg and "kbypass_xsk" in msg and "force=True" in msg
    mode, is_b, notes = out["forced"]  # type: ignore[misc]
    assert mode == "native" and is_b
    assert any("replaced" in n for n in notes)
    assert out["still_b"] is True
    assert out["empty"] == []


# Another tool's program: loaded and attached with a bpf_link through raw bpf(2) via ctypes,
# named "not_ours", held by a live process.
FOREIGN_HOLDER = """
import ctypes, socket, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
SYS_BPF = 321
def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, len(attr))
    r = libc.syscall(SYS_BPF, cmd, buf, len(attr))
    if r < 0:
        raise OSError(ctypes.get_errno(), "bpf")
    return r
insns = struct.pack("<BBhi", 0xB7, 0, 0, 2) + struct.pack("<BBhi", 0x95, 0, 0, 0)
ibuf = ctypes.create_string_buffer(insns, len(insns))
lic = ctypes.create_string_buffer(b"GPL")
attr = struct.pack("<IIQQIIQII16sII", 6, 2, ctypes.addressof(ibuf), ctypes.addressof(lic),
                   0, 0, 0, 0, 0, b"not_ours", 0, 0)
prog = bpf(5, attr)
link = bpf(28, struct.pack("<IIII", prog, socket.if_nametoindex("kbx0"), 37, 1 << 2))
print("ready", flush=True)
time.sleep(120)
"""


def test_refuse_foreign_program_unless_forced(netns: str) -> None:
    holder = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", FOREIGN_HOLDER],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        out = run_in(
            netns,
            """
            import json, kbypass
            res = {"before": kbypass.xdp_query("kbx0")}
            p = kbypass.XdpProgram()
            try:
                p.attach("kbx0")
            except FileExistsError as e:
                res["refused"] = str(e)
            res["untouched"] = kbypass.xdp_query("kbx0")
            with p.attach("kbx0", force=True) as att:
                res["forced"] = [att.mode, kbypass.xdp_query("kbx0")[0]["prog_id"] == p.id]
            res["after"] = kbypass.xdp_query("kbx0")
            print(json.dumps(res))
            """,
        )
    finally:
        holder.kill()
        holder.wait()
    (before,) = out["before"]  # type: ignore[misc]
    assert before["name"] == "not_ours" and not before["ours"] and before["link_id"]
    msg = str(out["refused"])
    assert "not_ours" in msg and f"id {before['prog_id']}" in msg and before["tag"] in msg
    assert "force=True" in msg
    assert out["untouched"] == [before]
    assert out["forced"] == ["native", True]
    assert out["after"] == []


def test_exited_owner_leaves_nothing_behind(netns: str) -> None:
    # A process that attached and exited without detaching leaves no program (bpf_link), so
    # the next attach needs no force.
    first = run_in(
        netns,
        """
        import json, kbypass
        p = kbypass.XdpProgram()
        att = p.attach("kbx0")
        print(json.dumps({"mode": att.mode}))
        """,
    )
    assert first == {"mode": "native"}
    out = run_in(
        netns,
        """
        import json, kbypass
        before = kbypass.xdp_query("kbx0")
        with kbypass.XdpProgram().attach("kbx0") as att:
            mode = att.mode
        print(json.dumps({"before": before, "mode": mode}))
        """,
    )
    assert out == {"before": [], "mode": "native"}


def test_sigkilled_owner_leaves_no_program(netns: str) -> None:
    child = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns,
            sys.executable,
            "-c",
            "import kbypass, sys, time\n"
            "p = kbypass.XdpProgram('udp dst port 9000')\n"
            "att = p.attach('kbx0', mode='native')\n"
            "print('ready', p.id, flush=True)\n"
            "time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().split()
        assert line and line[0] == "ready", line
        prog_id = int(line[1])
        out = run_in(
            netns, "import json, kbypass; print(json.dumps({'q': kbypass.xdp_query('kbx0')}))"
        )
        assert [q["prog_id"] for q in out["q"]] == [prog_id]  # type: ignore[union-attr]
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        out = run_in(
            netns,
            """
            import json, time, kbypass
            for _ in range(100):
                q = kbypass.xdp_query("kbx0")
                if not q:
                    break
                time.sleep(0.02)
            print(json.dumps({"q": q}))
            """,
        )
        assert out["q"] == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
