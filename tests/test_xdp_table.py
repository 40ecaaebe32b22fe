"""XdpTable from Python: rules in BPF maps changed at run time, blocks from handlers (issue 10)."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

import kbypass
from kbypass import Rule, TableFullError, UnknownEntryError, Verdict, XdpPort, XdpTable
from kbypass.packet import META_DTYPE
from kbypass.testing import TrafficGenerator, VethPair
from kbypass.xdp_table import _address, _sources

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (CAP_BPF, CAP_NET_ADMIN)")


# ---------------------------------------------------------------- frames

MACS = bytes.fromhex("020000000001020000000002")


def udp4(
    src: str, dst: str, sport: int, dport: int, proto: int = 17, payload: bytes = b""
) -> bytes:
    l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, 2, 0, 0, 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(l4),
        1,
        0x4000,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return MACS + b"\x08\x00" + ip + l4


def udp6(src: str, dst: str, sport: int, dport: int, proto: int = 17) -> bytes:
    l4 = struct.pack("!HHHH", sport, dport, 16, 0) + b"\xab" * 8
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, 2, 0, 0, 0)
    ip = struct.pack("!IHBB", 6 << 28, len(l4), proto, 64)
    ip += ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
    return MACS + b"\x86\xdd" + ip + l4


# ---------------------------------------------------------------- without root


def test_addresses_from_handler_columns() -> None:
    assert _address("198.18.0.7") == "198.18.0.7"
    assert _address(ipaddress.ip_address("2001:db8::1")) == "2001:db8::1"
    # headers["src_ip4"] holds host-order uint32, headers["src_ip6"] 16 bytes.
    assert _address(np.uint32(0xC6120007)) == "198.18.0.7"
    assert _address(0xC6120007) == "198.18.0.7"
    assert _address(ipaddress.IPv6Address("2001:db8::9").packed) == "2001:db8::9"
    assert _address(bytes([198, 18, 0, 1])) == "198.18.0.1"
    with pytest.raises(TypeError, match="headers"):
        _address(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _address(True)
    with pytest.raises(ValueError, match="4 or 16"):
        _address(b"12345")
    with pytest.raises(ValueError, match="32-bit"):
        _address(2**32)


def test_sources_of_a_batch_are_distinct_v4_and_v6_addresses_under_the_mask() -> None:
    h = np.zeros(6, dtype=META_DTYPE)
    h["ip_version"] = [4, 4, 6, 4, 6, 0]  # the last one is not IP: skipped
    h["src_ip4"] = [0xC6120001, 0xC6120001, 0, 0xC6120003, 0, 0xC6120009]
    h["src_ip6"][2] = np.frombuffer(ipaddress.IPv6Address("2001:db8::1").packed, np.uint8)
    h["src_ip6"][4] = h["src_ip6"][2]
    assert _sources(h, None) == ["198.18.0.1", "198.18.0.3", "2001:db8::1"]
    assert _sources(h, np.array([0, 0, 0, 1, 1, 1], dtype=bool)) == [
        "198.18.0.3",
        "2001:db8::1",
    ]
    assert _sources(h, np.zeros(6, dtype=bool)) == []
    with pytest.raises(ValueError, match="bool array"):
        _sources(h, np.ones(5, dtype=bool))
    with pytest.raises(ValueError, match="bool array"):
        _sources(h, np.ones(6, dtype=np.uint8))
    with pytest.raises(TypeError, match="Batch"):
        _sources([1, 2], None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="src_ip4"):
        _sources(np.zeros(2, dtype=[("ip_version", "u1")]), None)


def test_exceptions_are_typed() -> None:
    assert issubclass(TableFullError, OSError)
    assert issubclass(UnknownEntryError, KeyError)
    assert kbypass.XdpTable is XdpTable


# ---------------------------------------------------------------- test runs


@needs_root
def test_actions_priorities_and_counters() -> None:
    with XdpTable(max_rules=64) as t:
        assert t.name == "kbypass_table" and t.default == "pass" and t.max_rules == 64
        allow = t.add("udp dst port 9000-9010", "allow")
        drop = t.add(Rule(proto="udp", src="198.18.0.0/15", dport=9005), "drop")
        pas = t.add([Rule(proto="tcp"), "sctp"], "pass")
        f = udp4("198.18.0.1", "198.18.0.2", 1, 9005)
        assert t.test_run(f) is Verdict.REDIRECT  # the allow entry was added first
        first = t.add("src 198.18.0.0/15 and udp dst port 9005", "drop", priority=-1)
        assert t.test_run(f) is Verdict.DROP
        assert t.test_run(udp4("10.0.0.1", "198.18.0.2", 1, 9005)) is Verdict.REDIRECT
        assert t.test_run(udp4("10.0.0.1", "198.18.0.2", 1, 9005, proto=6)) is Verdict.PASS
        assert t.test_run(udp4("10.0.0.1", "198.18.0.2", 1, 80)) is Verdict.PASS
        assert [e.id for e in t.entries()] == [first, allow, drop, pas]
        assert t.entries()[3].filter == "tcp or sctp"
        s = t.stats()
        assert s[first] == (1, len(f))
        assert s[allow] == (2, 2 * len(f))
        assert s[drop] == (0, 0)
        assert s[pas][0] == 1
        assert t.default_stats()[0] == 1
        t.remove(first)
        assert t.test_run(f) is Verdict.REDIRECT
        with pytest.raises(UnknownEntryError, match="entries"):
            t.remove(first)
        assert t.run_time_ns(f, repeat=1000) > 0


@needs_root
def test_ipv6_prefixes_and_ports_together() -> None:
    with XdpTable(max_rules=64, default="allow") as t:
        t.add("src 2001:db8::/32 and dst 2001:db8:1::/48 and tcp dst port 443", "drop")
        t.add(
            "src 198.18.0.0/15 and dst 198.18.0.2 and udp src port 1000-2000 and dst port 53",
            "drop",
        )
        assert t.test_run(udp6("2001:db8::1", "2001:db8:1::9", 5, 443, proto=6)) is Verdict.DROP
        assert t.test_run(udp4("198.19.255.255", "198.18.0.2", 2000, 53)) is Verdict.DROP
        for miss in [
            udp6("2001:db9::1", "2001:db8:1::9", 5, 443, proto=6),
            udp6("2001:db8::1", "2001:db8:2::9", 5, 443, proto=6),
            udp6("2001:db8::1", "2001:db8:1::9", 5, 443, proto=17),
            udp6("2001:db8::1", "2001:db8:1::9", 5, 444, proto=6),
            udp4("198.18.0.1", "198.18.0.2", 2001, 53),
            udp4("198.18.0.1", "198.18.0.3", 1500, 53),
        ]:
            assert t.test_run(miss) is Verdict.REDIRECT, miss.hex()


@needs_root
def test_expiry_in_the_kernel_and_sweep() -> None:
    with XdpTable(max_rules=64) as t:
        short = t.add("udp", "drop", expire=0.3)
        t.add("udp dst port 9000", "allow")
        f = udp4("198.18.0.1", "198.18.0.2", 1, 9000)
        assert t.test_run(f) is Verdict.DROP
        t.block("198.18.0.9", seconds=0.3)
        assert t.test_run(udp4("198.18.0.9", "198.18.0.2", 1, 1)) is Verdict.DROP
        time.sleep(0.4)
        assert t.test_run(f) is Verdict.REDIRECT, "expired at its deadline, not swept yet"
        assert t.test_run(udp4("198.18.0.9", "198.18.0.2", 1, 1)) is Verdict.PASS
        e = next(e for e in t.entries() if e.id == short)
        assert e.expires_in is not None and e.expires_in < 0
        assert t.sweep() == (1, 1)
        assert [e.action for e in t.entries()] == ["allow"]
        assert t.blocks() == [] and t.info()["swept_entries"] == 1
        with pytest.raises(ValueError, match="positive"):
            t.add("tcp", "drop", expire=0)


@needs_root
def test_full_table_raises_table_full_error_and_changes_nothing() -> None:
    with XdpTable(max_rules=64, max_blocks=2) as t:
        ids = t.add_many([(f"udp port {1000 + i}", "drop") for i in range(32)])  # 2 rules each
        assert len(ids) == 32 and t.info()["rules"] == 64
        with pytest.raises(TableFullError) as exc:
            t.add("tcp", "drop")
        assert exc.value.errno == errno.ENOSPC
        assert "64 of max_rules=64" in str(exc.value) and "remove()" in str(exc.value)
        assert len(t.entries()) == 32
        assert t.add_many([("tcp", "drop"), ("sctp", "pass")], remove=ids[:1]) == [
            ids[-1] + 1,
            ids[-1] + 2,
        ]
        t.block("198.18.0.1")
        t.block("2001:db8::1")
        t.block("198.18.0.1", seconds=None)  # renewing is not a new block
        with pytest.raises(TableFullError, match="max_blocks=2"):
            t.block("198.18.0.3")


@needs_root
def test_bad_rules_and_arguments_say_what_to_do() -> None:
    with XdpTable(max_rules=64) as t:
        with pytest.raises(ValueError, match="XdpProgram filter"):
            t.add("vlan 100 and udp", "drop")
        with pytest.raises(ValueError, match="'allow'"):
            t.add("udp", "reject")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="needs a filter"):
            t.add(None, "drop")
        with pytest.raises(ValueError, match="IPv4 or IPv6"):
            t.block("198.18.0.0/15")
        with pytest.raises(ValueError, match="queue 64"):
            t.set_socket(64, 0)
    with pytest.raises(RuntimeError, match="closed"):
        t.add("udp", "drop")
    with pytest.raises(ValueError, match="64, 128"):
        XdpTable(max_rules=100)


# ---------------------------------------------------------------- on a veth pair


def _table_on(pair: VethPair, **kw: object) -> XdpTable:
    with pair.enter("b"):
        t = XdpTable(max_rules=64, **kw)  # type: ignore[arg-type]
        att = t.attach(pair.b.ifname)
    assert att.prog_id == t.id and att.via == "bpf_link"
    return t


@needs_root
def test_counters_exact_against_what_was_sent_for_each_action(veth_pair: VethPair) -> None:
    t = _table_on(veth_pair)
    ids = {
        9001: t.add("udp dst port 9001", "drop"),
        9002: t.add("udp dst port 9002", "pass"),
        9003: t.add("udp dst port 9003", "allow"),  # no socket: the kernel gets it
    }
    for port in ids:
        r = TrafficGenerator(veth_pair, size=100, dst_port=port).run(count=5000, rate=200_000)
        assert r.packets == 5000
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(c[0] < 5000 for c in t.stats().values()):
        time.sleep(0.05)
    assert t.stats() == {i: (5000, 500_000) for i in ids.values()}
    t.close()
    with veth_pair.enter("b"):
        assert kbypass.xdp_query(veth_pair.b.ifname) == [], "close() detached"


@needs_root
def test_rules_change_while_traffic_flows_without_reloading(veth_pair: VethPair) -> None:
    t = _table_on(veth_pair)
    prog_id = t.id
    a = t.add("udp dst port 9000", "drop")
    gen = TrafficGenerator(veth_pair, size=60)
    gen.start(count=200_000, rate=200_000)
    changes, b = 0, None
    while gen.running:
        x = t.add("tcp dst port 1 or ip6", "allow")
        t.remove(x)
        changes += 2
        if changes == 10:
            b = t.add(f"src {veth_pair.a.ip} and udp dst port 9000", "drop", priority=-1)
    sent = gen.wait().packets
    assert b is not None, "the generator finished before ten changes"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sum(c[0] for c in t.stats().values()) < sent:
        time.sleep(0.05)
    s = t.stats()
    assert s[a][0] > 0 and s[b][0] > 0
    assert s[a][0] + s[b][0] == sent, (s, sent, changes)
    assert s[a][1] + s[b][1] == sent * 60
    assert t.default_stats()[0] == 0
    assert t.id == prog_id and t.info()["commits"] >= changes
    with veth_pair.enter("b"):
        assert [p["prog_id"] for p in kbypass.xdp_query(veth_pair.b.ifname)] == [prog_id]
    t.close()


@needs_root
def test_ipv6_frames_on_the_wire(veth_pair: VethPair) -> None:
    t = _table_on(veth_pair)
    hit = t.add("src 2001:db8::/32 and udp dst port 53", "drop")
    with veth_pair.enter("a"):
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        raw.bind((veth_pair.a.ifname, 0))
    macs = bytes.fromhex(veth_pair.b.mac.replace(":", "") + veth_pair.a.mac.replace(":", ""))
    for dport in (53, 54):
        for _ in range(100):
            raw.send(macs + udp6("2001:db8::5", "2001:db8::6", 1, dport)[12:])
    raw.close()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and t.stats()[hit][0] < 100:
        time.sleep(0.05)
    assert t.stats()[hit] == (100, 100 * 70)
    assert t.default_stats()[0] >= 100  # the port 54 frames
    t.close()


def _recv_sources(sock: kbypass.XdpSocket, want: int, timeout: float) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        with sock.recv(max=64, timeout=0.05) as batch:
            got += [str(ipaddress.IPv4Address(int(s))) for s in batch.headers()["src_ip4"]]
    return got


@needs_root
def test_block_from_a_handler_drops_the_flow_from_the_next_batch(veth_pair: VethPair) -> None:
    """The kernel drops a flow within one batch of the handler's decision, and only that flow."""
    y = "198.18.0.3"
    veth_pair.run("a", "ip", "addr", "add", f"{y}/24", "dev", veth_pair.a.ifname)
    t = _table_on(veth_pair)
    allow = t.add("udp dst port 9000", "allow")
    with veth_pair.enter("b"):
        port = XdpPort(veth_pair.b.ifname, queues=[0], mode="copy", program=False)
    sock = port.sockets[0]
    t.set_socket(0, sock.fileno())
    with veth_pair.enter("a"):
        senders = {}
        for src in (veth_pair.a.ip, y):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((src, 0))
            senders[src] = s
    x = veth_pair.a.ip
    per_flow, decided, after = 16, None, 0
    for rnd in range(8):
        for s in senders.values():
            for i in range(per_flow):
                s.sendto(struct.pack("!Q", i), (veth_pair.b.ip, 9000))
        want = per_flow if decided is not None else 2 * per_flow
        got = _recv_sources(sock, want, 3.0) + _recv_sources(sock, 1, 0.05)
        if decided is None:
            assert (got.count(x), got.count(y)) == (per_flow, per_flow), rnd
            if rnd == 2:
                t.block(x, seconds=10)  # the handler of this batch decides
                decided = rnd
        else:
            assert got.count(x) == 0, f"round {rnd}: flow X reached Python after the block"
            assert got.count(y) == per_flow, f"round {rnd}: flow Y lost frames"
            after += per_flow
    [blk] = t.blocks()
    assert (blk.addr, blk.action, blk.packets) == (x, "drop", 5 * per_flow)
    assert blk.expires_in is not None and 0 < blk.expires_in <= 10
    assert t.stats()[allow][0] == 3 * 2 * per_flow + after
    for s in senders.values():
        s.close()
    port.close()
    t.close()


@needs_root
def test_block_with_wait_is_exact_under_continuous_traffic(veth_pair: VethPair) -> None:
    t = _table_on(veth_pair)
    allow = t.add("udp dst port 9000", "allow")
    with veth_pair.enter("b"):
        port = XdpPort(veth_pair.b.ifname, queues=[0], mode="copy", program=False)
    sock = port.sockets[0]
    t.set_socket(0, sock.fileno())
    gen = TrafficGenerator(veth_pair, size=60)
    gen.start(count=20_000, rate=20_000)
    before = _recv_sources(sock, 1, 3.0)
    assert before, "no frame arrived"
    t.block(veth_pair.a.ip, seconds=30, wait=True)  # from here on not one frame is allowed
    at_decision = t.stats()[allow][0]
    sent = gen.wait().packets
    queued = _recv_sources(sock, at_decision - len(before), 3.0)
    late = _recv_sources(sock, 1, 0.2)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and t.stats()[allow][0] + t.blocks()[0].packets < sent:
        time.sleep(0.05)
    assert t.stats()[allow][0] == at_decision
    assert len(before) + len(queued) == at_decision and late == []
    assert at_decision + t.blocks()[0].packets == sent
    port.close()
    t.close()


@needs_root
def test_block_is_safe_from_many_threads_while_rules_change() -> None:
    with XdpTable(max_rules=64, max_blocks=4096) as t:
        errors: list[BaseException] = []

        def blocker(k: int) -> None:
            try:
                for i in range(500):
                    t.block(f"10.{k}.{i // 256}.{i % 256}", seconds=60)
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=blocker, args=(k,)) for k in range(4)]
        for th in threads:
            th.start()
        for i in range(5):
            t.remove(t.add(f"udp dst port {i}", "drop"))
        for th in threads:
            th.join()
        assert errors == []
        assert len(t.blocks()) == 2000
        assert t.test_run(udp4("10.3.1.243", "198.18.0.2", 1, 1)) is Verdict.DROP


@needs_root
def test_blocks_pushed_by_a_forked_worker_are_one_blocklist() -> None:
    """Blocks live only in the kernel's maps: a forked worker's are the parent's (processes=N)."""
    with XdpTable(max_rules=64) as t:
        t.block("198.18.0.1", seconds=60)
        pid = os.fork()
        if pid == 0:  # the worker: inherited maps, its own Python objects
            code = 1
            try:
                t.block("198.18.0.5", seconds=60)
                t.block("198.18.0.6", seconds=0.01)
                code = 0 if {b.addr for b in t.blocks()} >= {"198.18.0.1", "198.18.0.5"} else 3
                try:
                    t.add("udp", "drop")
                    code = 4
                except RuntimeError as e:
                    code = code if "fork" in str(e) else 5
                time.sleep(0.02)
                if t.sweep() != (0, 1):  # blocks only, in a worker
                    code = 6
                t.block("198.18.0.6", seconds=0.01)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert [b.addr for b in t.blocks()] == ["198.18.0.1", "198.18.0.5", "198.18.0.6"]
        assert t.test_run(udp4("198.18.0.5", "198.18.0.2", 1, 1)) is Verdict.DROP
        time.sleep(0.02)
        assert t.sweep() == (0, 1)
        assert t.unblock("198.18.0.5") and not t.unblock("198.18.0.5")


@needs_root
def test_a_forked_worker_closing_its_copy_leaves_the_program_attached(
    veth_pair: VethPair,
) -> None:
    t = _table_on(veth_pair)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            t.close()  # the inherited attachment is the parent's: let go, not detached
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with veth_pair.enter("b"):
        assert [p["prog_id"] for p in kbypass.xdp_query(veth_pair.b.ifname)] == [t.id]
    assert t.attached == [veth_pair.b.ifname]
    t.close()
    with veth_pair.enter("b"):
        assert kbypass.xdp_query(veth_pair.b.ifname) == []


# ---------------------------------------------------------------- a port's program, a Pipeline


def _until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def _bpf_ids() -> set[tuple[str, int]]:
    """The BPF objects this process has file descriptors of: ("prog" | "map" | "link", id)."""
    out = set()
    for fd in os.listdir("/proc/self/fdinfo"):
        try:
            with open(f"/proc/self/fdinfo/{fd}") as f:
                lines = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
        for kind in ("link", "prog", "map"):
            if f"{kind}_type" in lines and f"{kind}_id" in lines:
                out.add((kind, int(lines[f"{kind}_id"])))
                break
    return out


def _ring_drops(port: XdpPort) -> int:
    """Frames the kernel redirected to the port's socket but could not put on its RX ring."""
    st = port.sockets[0].stats()
    return int(st["kernel_rx_dropped"]) + int(st["kernel_rx_ring_full"])


@needs_root
def test_a_handlers_block_drops_the_source_in_the_kernel_within_one_batch(
    veth_pair: VethPair,
) -> None:
    """Two sources into a Pipeline on the table; the handler blocks one (issue 10's proof).

    The RX ring is one batch long, so after the batch in which the handler decided, Python
    sees at most the one batch the ring held, and nothing of that source after it; the other
    source keeps arriving, the kernel counts every frame of the blocked one, and every frame
    is accounted for.
    """
    x, y = veth_pair.a.ip, "198.18.0.3"
    x4, y4 = int(ipaddress.IPv4Address(x)), int(ipaddress.IPv4Address(y))
    ring = 512
    t = XdpTable(max_rules=64)
    allow_x = t.add(f"src {x} and udp dst port 9000", "allow")
    allow_y = t.add(f"src {y} and udp dst port 9000", "allow")
    batches: list[tuple[int, int]] = []  # frames of (x, y) per batch, in order
    decided: list[int] = []

    def handler(batch: kbypass.Batch) -> None:
        src = batch.headers["src_ip4"]
        batches.append((int((src == x4).sum()), int((src == y4).sum())))
        if not decided and sum(b[0] for b in batches) >= 300:
            time.sleep(0.02)  # a decision that takes its time: the RX ring fills meanwhile
            # wait=True: when it returns, every frame of x the kernel let through before is
            # on the RX ring, so the next batch takes the last of them.
            t.block(x, seconds=60, wait=True)
            decided.append(len(batches) - 1)

    with veth_pair.enter("b"):
        port = XdpPort(
            veth_pair.b.ifname, queues=[0], mode="copy", program=t, ring_size=ring, frames=4096
        )
    gens = [TrafficGenerator(veth_pair, src_ip=s, batch_size=8) for s in (x, y)]
    with port, kbypass.Pipeline(port, handler, batch=ring, cpus=False) as p:
        p.start()
        for g in gens:
            g.start(count=6000, rate=2000)
        sent_x, sent_y = (g.wait(timeout=60).packets for g in gens)

        def blocked() -> int:
            return sum(b.packets for b in t.blocks())

        assert _until(
            lambda: t.stats()[allow_x][0] + blocked() == sent_x and t.stats()[allow_y][0] == sent_y
        ), (t.stats(), t.blocks(), sent_x, sent_y)
        allowed = t.stats()[allow_x][0] + t.stats()[allow_y][0]
        _until(lambda: sum(map(sum, batches)) == allowed, timeout=3.0)  # short only on drops
        acc = p.stop()
        drops = _ring_drops(port)
        totals = p.totals()
    assert acc is not None and acc["balanced"], acc
    assert decided, f"the handler never saw 300 frames of {x}: {batches[:5]}"
    d = decided[0]
    x_after = [b[0] for b in batches[d + 1 :]]
    assert sum(x_after[:1]) <= ring, "at most the RX ring's one batch"
    assert sum(x_after[1:]) == 0, f"{x} reached Python after the batch that followed: {x_after}"
    assert sum(b[1] for b in batches[d + 2 :]) > sent_y // 2, f"{y} stopped arriving"
    [blk] = t.blocks()
    seen_x, seen_y = sum(b[0] for b in batches), sum(b[1] for b in batches)
    assert blk.addr == x and blk.packets == sent_x - t.stats()[allow_x][0] > sent_x // 2
    assert t.stats()[allow_y][0] == sent_y
    # No frame lost silently: what the kernel allowed reached Python or its drop counters.
    assert seen_x + seen_y + drops == allowed and totals["rx"] == seen_x + seen_y
    assert seen_x <= t.stats()[allow_x][0] and seen_y <= sent_y
    t.close()


@needs_root
def test_a_one_second_block_expires_while_the_pipeline_runs(veth_pair: VethPair) -> None:
    """A handler's 1-s block (block_sources, no wait): frames come back after the deadline;
    counters are read while the Pipeline runs."""
    x4 = int(ipaddress.IPv4Address(veth_pair.a.ip))
    ring = 256
    t = XdpTable(max_rules=64)
    allow = t.add("udp dst port 9000", "allow")
    batches: list[tuple[float, int]] = []  # (when, frames of x)
    decided: list[tuple[int, float]] = []

    def handler(batch: kbypass.Batch) -> None:
        mine = batch.headers["src_ip4"] == x4
        batches.append((time.monotonic(), int(mine.sum())))
        if mine.any() and not decided:
            now = time.monotonic()
            assert t.block_sources(batch, mine, seconds=1.0) == [veth_pair.a.ip]
            decided.append((len(batches) - 1, now))

    with veth_pair.enter("b"):
        port = XdpPort(
            veth_pair.b.ifname, queues=[0], mode="copy", program=t, ring_size=ring, frames=4096
        )
    gen = TrafficGenerator(veth_pair, batch_size=8)
    readings: list[tuple[int, int]] = []  # (allowed, blocked) read while running
    with port, kbypass.Pipeline(port, handler, batch=ring, cpus=False) as p:
        p.start()
        gen.start(count=3000, rate=1000)
        while gen.running:
            blocks = t.blocks()
            readings.append((t.stats()[allow][0], blocks[0].packets if blocks else 0))
            time.sleep(0.05)
        sent = gen.wait().packets
        assert _until(lambda: t.stats()[allow][0] + t.blocks()[0].packets == sent)
        _until(lambda: sum(b[1] for b in batches) == t.stats()[allow][0], timeout=3.0)
        assert p.running, "counters were read while it ran"
        acc = p.stop()
        drops = _ring_drops(port)
    assert acc is not None and acc["balanced"], acc
    assert decided
    d, when = decided[0]
    # In flight when it decided: at most two more batches (without wait=True the frames a
    # program run had already let through still arrive); after them, x only once it expired.
    later = [(at, n) for at, n in batches[d + 3 :] if n]
    assert later, "the source never came back after its block expired"
    assert min(at for at, _ in later) >= when + 1.0, (when, later[:3])
    [blk] = t.blocks()
    assert blk.packets > 500, "about a second of frames was dropped in the kernel"
    assert blk.expires_in is not None and blk.expires_in < 0
    allowed = t.stats()[allow][0]
    assert allowed + blk.packets == sent
    assert sum(b[1] for b in batches) + drops == allowed
    # Read while running: they only grow, and the block counted while it was live.
    assert all(a <= b for a, b in zip(readings, readings[1:]))
    assert readings[-1][0] > readings[0][0] and max(r[1] for r in readings) > 0
    assert t.sweep() == (0, 1) and t.blocks() == []
    t.close()


@needs_root
def test_pipeline_table_keyword_and_closing_the_table_while_it_runs(veth_pair: VethPair) -> None:
    """``Pipeline(ifname, handler, table=t)``: the port attaches the table and keeps it alive;
    closing the table first is safe; the last close releases every kernel object."""
    ifname = veth_pair.b.ifname
    before = _bpf_ids()
    t = XdpTable(max_rules=64)
    t.add("udp dst port 9000", "allow")
    prog_id = t.id
    seen = [0]

    def handler(batch: kbypass.Batch) -> None:
        seen[0] += len(batch)

    with veth_pair.enter("b"):
        p = kbypass.Pipeline(ifname, handler, table=t, queues=[0], mode="copy", cpus=False)
        assert [q["prog_id"] for q in kbypass.xdp_query(ifname)] == [prog_id]
    assert t.attached == [ifname]
    with p:
        p.start()
        gen = TrafficGenerator(veth_pair)
        assert gen.run(count=500, rate=50_000).packets == 500
        assert _until(lambda: seen[0] == 500)
        t.close()  # the pipeline's port keeps the program and maps
        assert t.closed
        with pytest.raises(RuntimeError, match="closed"):
            t.block("198.18.0.9")
        assert gen.run(count=500, rate=50_000).packets == 500
        assert _until(lambda: seen[0] == 1000), seen
        with veth_pair.enter("b"):
            assert [q["prog_id"] for q in kbypass.xdp_query(ifname)] == [prog_id]
        acc = p.stop()
        assert acc is not None and acc["balanced"]
    del gen  # its own program and link (a keeper on a loopback) go with it
    with veth_pair.enter("b"):
        assert kbypass.xdp_query(ifname) == [], "the port detached the table it attached"
    assert _bpf_ids() == before, "every program, map and link was released"


@needs_root
def test_a_port_leaves_the_owners_attachment_and_refuses_wrong_arguments(
    veth_pair: VethPair,
) -> None:
    ifname = veth_pair.b.ifname
    with XdpTable(max_rules=64, queues=1) as t:
        with veth_pair.enter("b"):
            t.attach(ifname)
            with XdpPort(ifname, queues=[0], mode="copy", program=t) as port:
                assert port.xdp_mode in ("native", "generic")
            assert [q["prog_id"] for q in kbypass.xdp_query(ifname)] == [t.id], "still the owner's"
            with pytest.raises(ValueError, match=r"table\.add"):
                XdpPort(ifname, queues=[0], program=t, filter="udp")
            with pytest.raises(ValueError, match="program=False opens none"):
                XdpPort(ifname, queues=[0], program=False, filter="udp")
            with pytest.raises(TypeError, match="XdpTable"):
                XdpPort(ifname, queues=[0], program="table")  # type: ignore[arg-type]
            # Queue 0's slot of the table already has a socket (an unbound AF_XDP socket
            # here): the port is refused, and the slot is left as it was.
            with socket.socket(44, socket.SOCK_RAW) as stray:
                t.set_socket(0, stray.fileno())
                for _ in range(2):
                    with pytest.raises(OSError, match="already has a socket") as exc:
                        XdpPort(ifname, queues=[0], mode="copy", program=t)
                    assert exc.value.errno == errno.EEXIST
                t.clear_socket(0)
            with XdpPort(ifname, queues=[0], mode="copy", program=t):
                pass
            with XdpPort(ifname, queues=[0], mode="copy", program=False) as port:
                with pytest.raises(ValueError, match="XdpPort\\(ifname, program=table\\)"):
                    kbypass.Pipeline(port, lambda b: None, table=t)
    with pytest.raises(RuntimeError, match="closed"), veth_pair.enter("b"):
        XdpPort(ifname, queues=[0], program=t)
    with veth_pair.enter("b"):
        assert kbypass.xdp_query(ifname) == []


@needs_root
def test_processes_share_the_table_and_its_blocklist(veth_pair: VethPair) -> None:
    """``Pipeline(processes=1, table=t)``: the parent attaches the table, the worker process's
    port joins its XSKMAP, and the worker's handler pushes blocks the parent sees."""
    ifname = veth_pair.b.ifname
    t = XdpTable(max_rules=64)
    allow = t.add("udp dst port 9000", "allow")
    x4 = int(ipaddress.IPv4Address(veth_pair.a.ip))

    def handler(batch: kbypass.Batch) -> None:
        t.block_sources(batch, batch.headers["src_ip4"] == x4, seconds=60)

    with veth_pair.enter("b"):
        p = kbypass.Pipeline(
            ifname, handler, table=t, processes=1, queues=[0], mode="copy", cpus=False
        )
    with p:
        assert t.attached == [ifname]
        p.start()
        sent = TrafficGenerator(veth_pair, batch_size=8).run(count=2000, rate=2000).packets
        assert _until(
            lambda: bool(t.blocks()) and t.stats()[allow][0] + t.blocks()[0].packets == sent
        )
        [blk] = t.blocks()
        assert blk.addr == veth_pair.a.ip and blk.packets > 0
        acc = p.stop()
        assert acc is not None and acc["balanced"], acc
        # The worker process saw what the table let through, nothing after the block.
        assert 0 < p.totals()["rx"] <= t.stats()[allow][0]
    assert t.attached == [], "the pipeline detached what it attached"
    with veth_pair.enter("b"):
        assert kbypass.xdp_query(ifname) == []
    t.close()


@needs_root
@pytest.mark.veth_pair(queues=2)
def test_processes_keep_the_table_attached_after_a_parent_port_closes(
    veth_pair: VethPair,
) -> None:
    """A table a port of the parent attached: ``processes=`` holds the attachment too, so the
    port closing while the worker process runs does not detach it; closing the pipeline does
    (nobody else holds or asked for it)."""
    ifname = veth_pair.b.ifname
    t = XdpTable(max_rules=64)
    allow = t.add("udp dst port 9000", "allow")
    with veth_pair.enter("b"):
        port = XdpPort(ifname, queues=[1], mode="copy", program=t)
        assert t.attached == [ifname]
        p = kbypass.Pipeline(
            ifname, lambda b: None, table=t, processes=1, queues=[0], mode="copy", cpus=False
        )
    port.close()
    with p:
        assert t.attached == [ifname], "the worker process's table stays attached"
        with veth_pair.enter("b"):
            assert [q["prog_id"] for q in kbypass.xdp_query(ifname)] == [t.id]
        p.start()
        # veth puts a frame the generator sends on RX queue (sending CPU % queues): sent from
        # CPU 0, every frame reaches queue 0, the worker process's (queue 1 has no socket now).
        sent = TrafficGenerator(veth_pair, batch_size=8, cpu=0).run(count=500, rate=2000).packets
        assert _until(lambda: p.totals()["rx"] == sent), (p.totals()["rx"], sent)
        assert t.stats()[allow][0] == sent
        p.stop()
    assert t.attached == [], "the pipeline's hold was the last: detached"
    with veth_pair.enter("b"):
        h = t.hold(ifname)
    assert h.held and h.ifname == ifname and t.attached == [ifname]
    h.release()
    h.release()
    assert not h.held and t.attached == []
    with veth_pair.enter("b"):
        assert kbypass.xdp_query(ifname) == []
    t.close()


def test_table_hold_needs_an_open_table() -> None:
    """``XdpTable.hold`` on a closed table raises, saying so."""
    t = XdpTable(max_rules=64)
    t.close()
    with pytest.raises(RuntimeError, match="closed"):
        t.hold("lo")
