"""Pipelines end to end on a veth pair (issue 4: processing model, bad input)."""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import kbypass
from _pipelines import pipeline as _pipeline
from _pipelines import until as _until
from _signals import sigint_default
from kbypass import Pipeline, packet
from kbypass.testing import TrafficGenerator, VethPair

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for AF_XDP and namespaces")


@pytest.fixture
def pair() -> Iterator[VethPair]:
    with VethPair() as p:
        yield p


@pytest.fixture
def pair2() -> Iterator[VethPair]:
    with VethPair(queues=2) as p:
        yield p


def _peer(pair: VethPair, port: int) -> socket.socket:
    with pair.enter("a"):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((pair.a.ip, port))
        s.settimeout(3)
    return s


def _reflect(batch: kbypass.Batch) -> None:
    batch.swap_macs()
    batch.swap_ips()
    batch.swap_ports()
    # The peer's kernel left a partial UDP checksum (veth offload): recompute before TX.
    batch.fix_checksums()
    batch.verdicts[:] = kbypass.TX


def test_batch_handler_counts_and_filters_with_numpy(pair: VethPair) -> None:
    counts = {"all": 0, "port": 0, "proto": 0}

    def count(batch: kbypass.Batch) -> None:
        h = batch.headers
        assert h.dtype == packet.META_DTYPE and len(h) == len(batch) == len(batch.lengths)
        counts["all"] += len(batch)
        counts["port"] += int((h["dst_port"] == 9000).sum())
        counts["proto"] += int((h["proto"] == packet.IPPROTO_UDP).sum())
        assert (batch.verdicts == kbypass.DROP).all()  # pre-filled default

    n = 20_000
    with _pipeline(pair, count, filter="udp") as p:
        p.start()
        TrafficGenerator(pair, size=60, dst_port=9000).run(count=n // 2, rate=100_000)
        TrafficGenerator(pair, size=60, dst_port=9001).run(count=n // 2, rate=100_000)

        def arrived() -> int:
            return int(p.totals()["rx"])

        _until(lambda: arrived() >= n, timeout=3.0)
        acc = p.stop()
        t = p.totals()
        # On a loaded machine the kernel may drop some (fill ring empty): counted, so exact.
        lost = p.port.sockets[0].stats()["kernel_rx_dropped"]
    # Exact whatever the load; the share that arrived only guards against a broken path (a CI
    # machine running the soft-RoCE VM beside the suite has dropped 11 %).
    assert t["rx"] + lost == n and t["rx"] >= n * 0.5
    assert counts["all"] == counts["proto"] == t["rx"]
    assert counts["port"] <= n // 2 and counts["all"] - counts["port"] <= n // 2
    assert t["dropped"] == t["rx"] and t["handler_errors"] == 0
    assert acc["balanced"] and acc["app"] == 0 and acc["tx_side"] == 0
    w = p.stats()[0]
    assert w["batches"] > 0 and sum(w["batch_sizes"].values()) == w["batches"]
    assert 1 <= w["mean_batch"] <= 64 and w["batch_latency_ns"] > 0


def test_tx_reflect_arrives_at_the_peer_kernel_socket(pair: VethPair) -> None:
    peer = _peer(pair, 9401)
    with _pipeline(pair, _reflect, filter="udp dst port 9400") as p:
        p.start()
        for i in range(10):
            peer.sendto(b"ping-%d" % i, (pair.b.ip, 9400))
        got = sorted(peer.recvfrom(64) for _ in range(10))
        p.stop()
        t = p.totals()
    assert [d for d, _ in got] == sorted(b"ping-%d" % i for i in range(10))
    assert {a for _, a in got} == {(pair.b.ip, 9400)}
    assert t["tx"] == 10 and t["dropped"] == 0


def test_reflect_answers_the_masked_frames_in_one_call_and_bytes_reads_a_frame(
    pair: VethPair,
) -> None:
    payloads: list[bytes] = []
    slices_ok: list[bool] = []
    unchanged: list[bool] = []

    def handle(batch: kbypass.Batch) -> None:
        for i in range(len(batch)):
            whole = batch.frame(i).tobytes()
            payloads.append(batch.bytes(i, 42))
            slices_ok.append(
                batch.bytes(i) == whole
                and batch.bytes(i - len(batch)) == whole  # a negative index counts from the end
                and batch.bytes(i, -2) == whole[-2:]
                and batch.bytes(i, 5, 2) == b""  # stop before start: empty, as slicing gives
                and batch.bytes(i, 40, 10**6) == whole[40:]  # clipped to the packet
            )
        with pytest.raises(IndexError, match="out of range"):
            batch.bytes(len(batch))
        before = [batch.bytes(i) for i in range(len(batch))]
        with pytest.raises(OSError):  # no TX metadata on this port: refused before any change
            batch.reflect(timestamp=True)
        unchanged.append(before == [batch.bytes(i) for i in range(len(batch))])
        answer = np.array([batch.bytes(i, 42, 45) == b"yes" for i in range(len(batch))])
        assert batch.reflect(answer) == int(answer.sum())  # IPs and ports swapped
        batch.verdicts[answer] = kbypass.TX

    sent = [b"%s-%d" % (b"yes" if i % 2 else b"no", i) for i in range(6)]
    peer = _peer(pair, 9405)
    with _pipeline(pair, handle, filter="udp dst port 9404") as p:
        p.start()
        for d in sent:
            peer.sendto(d, (pair.b.ip, 9404))
            time.sleep(0.01)
        # The peer's kernel checks the UDP checksum reflect made (a bad one is dropped).
        got = sorted(peer.recvfrom(64) for _ in range(3))
        assert _until(lambda: p.totals()["rx"] == 6)
        p.stop()
        t = p.totals()
    assert [d for d, _ in got] == [b"yes-1", b"yes-3", b"yes-5"]
    assert {a for _, a in got} == {(pair.b.ip, 9404)}
    assert t["tx"] == 3 and t["dropped"] == 3
    assert sorted(payloads) == sorted(sent) and slices_ok == [True] * 6
    assert unchanged and all(unchanged)


@pytest.mark.parametrize("latency", ["adaptive", "busy", "sleep"])
def test_each_latency_mode_answers_and_reports_how_it_waits(pair: VethPair, latency: str) -> None:
    peer = _peer(pair, 9403)
    with _pipeline(pair, _reflect, filter="udp dst port 9402", latency=latency) as p:
        p.start()
        time.sleep(0.05)  # idle: longer than the adaptive spin (100 µs)
        for i in range(20):  # one at a time: each answer comes back before the next request
            peer.sendto(b"ping-%d" % i, (pair.b.ip, 9402))
            assert peer.recvfrom(64) == (b"ping-%d" % i, (pair.b.ip, 9402))
            if i % 5 == 4:
                time.sleep(0.01)
        w = p.stats()[0]
        p.stop()
    assert (w["latency"], w["rx"], w["tx"], w["handler_errors"]) == (latency, 20, 20, 0)
    if latency == "busy":
        # Never slept; as root on this kernel the busy-poll options are accepted.
        assert w["idle_waits"] == 0 and w["busy_poll"] is True and w["notes"] == [], w
    else:
        assert w["idle_waits"] > 0 and w["busy_poll"] is False and w["notes"] == [], w


def test_latency_arguments_are_checked_before_a_port_opens() -> None:
    with pytest.raises(ValueError, match=r'"adaptive".*"busy".*"sleep"'):
        Pipeline("lo", lambda b: None, latency="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"spin.*\[0, 0\.1\] seconds"):
        Pipeline("lo", lambda b: None, spin=0.5)
    with pytest.raises(ValueError, match="spin"):
        Pipeline("lo", lambda b: None, spin=-1.0)
    cfg = kbypass._core.EngineConfig(latency="busy", spin=0.00005)
    assert 'latency="busy"' in repr(cfg) and "spin=0.00005" in repr(cfg)


def test_forward_to_the_other_socket_of_the_port(pair2: VethPair) -> None:
    def fwd(batch: kbypass.Batch) -> None:
        _reflect(batch)
        batch.verdicts[:] = kbypass.FORWARD
        batch.forward_to[:] = 1 - batch.socket

    peer = _peer(pair2, 9411)
    # One worker owns both sockets, so it can forward between them.
    with _pipeline(pair2, fwd, filter="udp dst port 9410", workers=[[0, 1]]) as p:
        p.start()
        for i in range(10):
            peer.sendto(b"fwd-%d" % i, (pair2.b.ip, 9410))
        got = sorted(peer.recvfrom(64)[0] for _ in range(10))
        acc = p.stop()
        t = p.totals()
    assert got == sorted(b"fwd-%d" % i for i in range(10))
    assert t["forwarded"] == 10 and t["tx"] == 0 and acc["tx_side"] == 0


def test_keep_holds_frames_until_released(pair: VethPair) -> None:
    peer = _peer(pair, 9421)
    with _pipeline(pair, lambda b: kbypass.KEEP, filter="udp dst port 9420") as p:
        p.start()
        for i in range(5):
            peer.sendto(b"keep-%d" % i, (pair.b.ip, 9420))
        assert _until(lambda: p.totals()["kept"] == 5)
        kept = p.kept()
        assert sum(len(k) for k in kept) == 5
        payloads = sorted(bytes(f[42:]) for k in kept for f in k.frames)
        assert payloads == sorted(b"keep-%d" % i for i in range(5))
        # Release one handle while running ...
        assert kept[0].release() == len(kept[0])
        assert _until(lambda: p.totals()["released"] == len(kept[0]))
        acc = p.stop()
        assert acc is not None
        assert acc["held"] == 5 - len(kept[0]) and acc["app"] == 0
        # ... and the rest after stop (back to the pool, no worker needed).
        for k in kept[1:]:
            k.release()
        acc = p.check_accounting()
        assert acc["held"] == 0 and acc["app"] == 0
        with pytest.raises(RuntimeError, match="released"):
            kept[0].frames  # noqa: B018
    assert p.totals()["released"] == 5


@pytest.mark.parametrize("one_call", [False, True])
def test_per_packet_handler_reads_fields_and_reflects(pair: VethPair, one_call: bool) -> None:
    seen: list[tuple[int, str, str]] = []

    def handle(pkt: kbypass.Packet) -> kbypass.Action:
        assert pkt.udp is not None and pkt.tcp is None and pkt.ip is not None
        seen.append((pkt.udp.dst_port, pkt.ip.src, pkt.eth.src_mac))
        if one_call:
            assert pkt.reflect()  # the four calls below in one
        else:
            pkt.swap_macs()
            pkt.swap_ips()
            pkt.swap_ports()
            pkt.fix_checksums()
        return kbypass.TX

    peer = _peer(pair, 9431)
    with pair.enter("b"):
        p = kbypass.processor(
            pair.b.ifname, filter="udp dst port 9430", mode="copy", frames=1024, cpus=False
        )(handle)
    with p:
        p.start()
        for i in range(5):
            peer.sendto(b"pp-%d" % i, (pair.b.ip, 9430))
        got = sorted(peer.recvfrom(64) for _ in range(5))
        p.stop()
    assert [d for d, _ in got] == sorted(b"pp-%d" % i for i in range(5))
    assert {a for _, a in got} == {(pair.b.ip, 9430)}  # from the address and port asked
    assert seen == [(9430, pair.a.ip, pair.a.mac)] * 5


@pytest.mark.parametrize("policy", ["drop", "pass", "stop"])
def test_handler_that_raises_is_counted_and_the_policy_applied(
    pair: VethPair, policy: str, capfd: pytest.CaptureFixture[str]
) -> None:
    def bad(batch: kbypass.Batch) -> None:
        raise ZeroDivisionError("boom in handler")

    peer = _peer(pair, 9441)
    with _pipeline(pair, bad, filter="udp dst port 9440", on_error=policy, default=kbypass.TX) as p:
        p.start()
        for i in range(3):
            peer.sendto(b"e-%d" % i, (pair.b.ip, 9440))
            time.sleep(0.05)
        if policy == "stop":
            assert p.wait(3.0)  # the workers ended by themselves
        else:
            assert _until(lambda: p.totals()["rx"] == 3)
        acc = p.stop()
        t = p.totals()
    assert acc["balanced"] and acc["app"] == 0
    err = capfd.readouterr().err
    assert err.count("ZeroDivisionError: boom in handler") == 1  # first traceback, once
    assert "boom in handler" in (t["last_error"] or "")
    if policy == "pass":
        # "pass" = the default verdict (TX here): the unchanged frames went back out.
        assert t["handler_errors"] == 3 and t["tx"] == 3
    elif policy == "drop":
        assert t["handler_errors"] == 3 and t["dropped"] == 3
    else:
        assert t["handler_errors"] == 1 and t["rx"] == 1 and t["dropped"] == 1


def test_wrong_return_type_and_bad_verdicts_are_counted(pair: VethPair) -> None:
    calls = {"n": 0}

    def weird(batch: kbypass.Batch) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            return "not a verdict"
        batch.verdicts[:] = 77
        return None

    peer = _peer(pair, 9451)
    with _pipeline(pair, weird, filter="udp dst port 9450") as p:
        p.start()
        peer.sendto(b"x", (pair.b.ip, 9450))
        assert _until(lambda: p.totals()["rx"] == 1)
        peer.sendto(b"y", (pair.b.ip, 9450))
        assert _until(lambda: p.totals()["rx"] == 2)
        acc = p.stop()
        t = p.totals()
    assert t["handler_errors"] == 1 and t["bad_verdicts"] == 1 and t["dropped"] == 2
    assert "returned a wrong value" in (t["last_error"] or "")
    assert acc["balanced"] and acc["app"] == 0


def test_batch_refuses_access_after_the_handler_returned(pair: VethPair) -> None:
    stash: list[kbypass.Batch] = []
    with _pipeline(pair, stash.append, filter="udp dst port 9460") as p:
        p.start()
        peer = _peer(pair, 9461)
        peer.sendto(b"late", (pair.b.ip, 9460))
        assert _until(lambda: p.totals()["rx"] == 1)
        p.stop()
    b = stash[0]
    assert not b.valid and len(b) == 1
    for access in (
        lambda: b.headers,
        lambda: b.verdicts,
        lambda: b.frame(0),
        lambda: b.frames,
        lambda: b.swap_macs(),
    ):
        with pytest.raises(RuntimeError, match="ended when the handler returned"):
            access()


def test_truncated_frames_are_flagged_never_read_out_of_bounds(pair: VethPair) -> None:
    flags: list[int] = []
    lens: list[int] = []

    def look(batch: kbypass.Batch) -> None:
        flags.extend(int(f) for f in batch.headers["flags"])
        lens.extend(int(n) for n in batch.lengths)
        # Edits on short frames do nothing rather than write past the end.
        assert batch.swap_ports() == 0 and batch.fix_checksums() == 0

    with _pipeline(pair, look) as p:
        p.start()
        eth = bytes.fromhex(pair.b.mac.replace(":", "")) + bytes.fromhex(
            pair.a.mac.replace(":", "")
        )
        frames = [
            eth + b"\x08\x00",  # IPv4 ethertype, no IP header
            eth + b"\x08\x00" + bytes([0x45, 0, 0, 60]) + bytes(16),  # IP says 60, has 20
            eth + b"\x08\x00" + bytes([0x45, 0, 0, 28]) + bytes(5) + b"\x11" + bytes(10),  # UDP cut
        ]
        with pair.enter("a"):
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            s.bind((pair.a.ifname, 0))
        for f in frames:
            s.send(f)
        assert _until(lambda: p.totals()["rx"] >= 3)
        acc = p.stop()
    assert lens[:3] == [len(f) for f in frames]
    assert all(f & packet.FLAG_TRUNCATED for f in flags[:3])
    assert acc["balanced"]


def test_multi_worker_over_two_queues(pair2: VethPair) -> None:
    n = 2000
    seen: dict[int, int] = {}

    def count(batch: kbypass.Batch) -> None:
        seen[batch.worker] = seen.get(batch.worker, 0) + len(batch)

    with _pipeline(pair2, count, filter="udp") as p:
        assert p._engine.workers == [[0], [1]]
        p.start()
        # Many source sockets so the sender's XPS/hash spreads flows over both TX queues.
        socks = [_peer(pair2, 0) for _ in range(16)]
        for i in range(n):
            socks[i % 16].sendto(b"m", (pair2.b.ip, 9470))
            if i % 200 == 0:
                time.sleep(0.005)
        assert _until(lambda: p.totals()["rx"] >= n)
        acc = p.stop()
        ws = p.stats()
    assert sum(w["rx"] for w in ws) == n and sum(seen.values()) == n
    assert [w["queues"] for w in ws] == [[0], [1]]
    assert acc["balanced"] and acc["app"] == 0


def test_state_across_workers_goes_through_a_ring(pair2: VethPair) -> None:
    # Workers run in several threads: per-flow state they share goes through a Ring (MPSC:
    # every worker produces, one consumer aggregates), not through Python objects and locks.
    ring = kbypass.Ring(1024, mode="mpsc")

    def sizes(batch: kbypass.Batch) -> None:
        assert ring.enqueue_bulk(np.asarray(batch.lengths, dtype=np.uint64)) == len(batch)

    peer = _peer(pair2, 9481)
    with _pipeline(pair2, sizes, filter="udp dst port 9480") as p:
        p.start()
        for i in range(20):
            peer.sendto(bytes(i), (pair2.b.ip, 9480))
        assert _until(lambda: p.totals()["rx"] == 20)
        p.stop()
    got = sorted(int(x) for x in ring.dequeue_burst(64))
    assert got == sorted(42 + i for i in range(20))  # veth does not pad short frames


def test_run_with_packet_limit_and_bad_arguments(pair: VethPair) -> None:
    with _pipeline(pair, lambda b: None, filter="udp") as p:
        gen = TrafficGenerator(pair, size=60)
        gen.start(rate=50_000)
        try:
            t = p.run(duration=5, packets=1000)
        finally:
            gen.stop()
        assert 1000 <= t["rx"] <= 1000 + 64
        assert p.check_accounting()["app"] == 0
    with pytest.raises(TypeError, match="exactly one"):
        Pipeline("lo", None)
    with pytest.raises(ValueError, match="on_error"):
        Pipeline("lo", lambda b: None, on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch"):
        _pipeline(pair, lambda b: None, batch=0)
    with pytest.raises(ValueError, match="cpus"):
        _pipeline(pair, lambda b: None, cpus=[0, 1])


def test_ctrl_c_stops_cleanly_and_detaches(pair: VethPair) -> None:
    code = textwrap.dedent(
        f"""
        import os, sys, kbypass, kbypass._core as c
        entry = c.NetnsEntry({pair.b.netns!r})
        p = kbypass.Pipeline({pair.b.ifname!r}, lambda b: None, mode="copy",
                             frames=1024, cpus=False, progress=False)
        entry.exit()
        print("ready", flush=True)
        try:
            p.run()
        except KeyboardInterrupt:
            acc = p.check_accounting()
            p.close()
            print("clean", acc["balanced"], acc["app"], flush=True)
            sys.exit(0)
        sys.exit(3)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_default,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        assert "xdp" in pair.run("b", "ip", "-d", "link", "show", pair.b.ifname).stdout
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "clean True 0" in out
    assert "xdp" not in pair.run("b", "ip", "-d", "link", "show", pair.b.ifname).stdout


def test_processes_mode_one_worker_process_per_queue(pair2: VethPair) -> None:
    # The handler runs in forked children (no pickling); its return value is all they report.
    def reflect(batch: kbypass.Batch) -> None:
        _reflect(batch)

    peer = _peer(pair2, 9491)
    with pair2.enter("b"):
        p = Pipeline(
            pair2.b.ifname,
            reflect,
            filter="udp dst port 9490",
            processes=2,
            mode="copy",
            cpus=False,
        )
    with p:
        assert "xdp" in pair2.run("b", "ip", "-d", "link", "show", pair2.b.ifname).stdout
        p.start()
        for i in range(10):
            peer.sendto(b"proc-%d" % i, (pair2.b.ip, 9490))
        got = sorted(peer.recvfrom(64)[0] for _ in range(10))
        acc = p.stop()
        ws = p.stats()
    assert got == sorted(b"proc-%d" % i for i in range(10))
    assert len(ws) == 2 and sum(w["tx"] for w in ws) == 10
    assert acc["balanced"] and acc["app"] == 0
    assert "xdp" not in pair2.run("b", "ip", "-d", "link", "show", pair2.b.ifname).stdout


def test_set_field_views_and_pcap(pair: VethPair, tmp_path: Any) -> None:
    dpkt = pytest.importorskip("dpkt", reason="optional: dpkt (pip install kbypass[test])")
    pcap = tmp_path / "batch.pcap"
    writer = packet.PcapWriter(str(pcap))
    checks: list[bool] = []

    def handler(batch: kbypass.Batch) -> None:
        addrs = batch.addrs
        fs = batch.frame_size
        # Byte 0 of every packet through the 2-D UMEM view equals the per-frame view.
        row0 = batch.umem[addrs // fs, addrs % fs]
        checks.append(
            bool((row0 == np.array([batch.frame(i)[0] for i in range(len(batch))])).all())
        )
        assert batch.to_pcap(writer) == len(batch)
        assert batch.set_field(0, b"PONG", base="payload") == len(batch)
        assert batch.set_field(10_000, b"x", base="payload") == 0  # past the end: skipped
        _reflect(batch)

    peer = _peer(pair, 9501)
    with _pipeline(pair, handler, filter="udp dst port 9500") as p:
        p.start()
        for i in range(3):
            peer.sendto(b"ping-%d" % i, (pair.b.ip, 9500))
        got = sorted(peer.recvfrom(64)[0] for _ in range(3))
        p.stop()
    writer.close()
    assert got == sorted(b"PONG-%d" % i for i in range(3))  # checksums fixed after the edit
    assert checks and all(checks)
    with open(pcap, "rb") as f:
        frames = [bytes(buf) for _ts, buf in dpkt.pcap.Reader(f)]
    assert sorted(fr[42:] for fr in frames) == sorted(b"ping-%d" % i for i in range(3))


def test_progress_display_renders_with_rich(pair: VethPair, capsys: Any) -> None:
    pytest.importorskip("rich", reason="optional: rich (pip install kbypass[progress])")
    with _pipeline(pair, lambda b: None, filter="udp", progress=True) as p:
        p.run(duration=0.3)
    assert "kbypass pipeline on veth1" in capsys.readouterr().out


# --- issue 8: what Python can still see is never recycled ------------------------------------


def test_views_kept_after_the_handler_never_change(pair: VethPair) -> None:
    # Frame views, column arrays and umem rows a handler keeps must show, forever, what the
    # handler saw: the frames are held (not recycled) while a view lives, the columns are the
    # handler's own (the next batch gets fresh buffers), and umem hands out copies.
    frames: list[tuple[np.ndarray, bytes]] = []
    cols: list[tuple[np.ndarray, bytes]] = []
    rows: list[tuple[np.ndarray, bytes]] = []
    held: set[int] = set()

    def keep_some(batch: kbypass.Batch) -> None:
        if len(frames) >= 30:
            return
        v = batch.frame(0)
        frames.append((v, bytes(v)))
        frames.extend((f, bytes(f)) for f in batch.frames[1:3])
        a, fs = int(batch.addrs[0]), batch.frame_size
        held.update(int(x) // fs for x in batch.addrs[:3])
        r = batch.umem[a // fs]
        rows.append((r, r.tobytes()))
        for c in (batch.headers, batch.lengths, batch.addrs, batch.verdicts[:2]):
            cols.append((c, c.tobytes()))

    with _pipeline(pair, keep_some, filter="udp", frames=512) as p:
        p.start()
        gen = TrafficGenerator(pair, size=60, flows=16, dst_port=9000)
        while len(frames) < 30:  # small batches at this rate: many handler calls
            gen.run(count=100, rate=20_000)
        # Then other sizes, ports and sources: a recycled frame would show different bytes.
        TrafficGenerator(pair, size=300, flows=64, dst_port=9100).run(count=5000, rate=50_000)
        _until(lambda: p.totals()["rx"] >= 5000, timeout=3.0)
        acc = p.stop()
        t = p.totals()
        assert acc is not None
        assert all(bytes(v) == b for v, b in frames)
        assert all(r.tobytes() == b for r, b in rows)
        assert all(c.tobytes() == b for c, b in cols)
        assert t["escaped"] == len(held) and acc["held"] == len(held) and acc["balanced"]
        assert p.totals()["held"] == len(held)
        assert t["rx"] > 2_000  # traffic went on, in the frames nobody holds
        frames.clear()
        acc = p.check_accounting()
        assert acc["held"] == 0 and acc["app"] == 0 and acc["balanced"]
        assert p.totals()["held"] == 0


def test_umem_window_indexes_like_the_umem_and_returns_copies(pair: VethPair) -> None:
    out: dict[str, Any] = {}

    def look(batch: kbypass.Batch) -> None:
        u, fs, a = batch.umem, batch.frame_size, batch.addrs
        out["shape"] = u.shape
        out["first"] = u[a // fs, a % fs]  # byte 0 of every packet (fancy indexing)
        out["same"] = bool((out["first"] == [batch.frame(i)[0] for i in range(len(batch))]).all())
        out["row"] = u[int(a[0]) // fs]  # basic indexing: a copy, not a view into the UMEM
        out["row_is_copy"] = out["row"].base is None or out["row"].flags.owndata
        try:
            u[0, 0] = 1
        except TypeError as e:
            out["write"] = str(e)
        out["u"] = u

    with _pipeline(pair, look, filter="udp dst port 9540", frames=256) as p:
        p.start()
        _peer(pair, 9541).sendto(b"window", (pair.b.ip, 9540))
        assert _until(lambda: p.totals()["rx"] == 1)
        p.stop()
    assert out["shape"] == (256, 2048) and out["same"] and out["row_is_copy"]
    assert "read-only" in out["write"]
    with pytest.raises(RuntimeError, match="ended when the handler returned"):
        out["u"][0, 0]


def test_writes_through_kept_views_never_reach_the_wire(pair: VethPair) -> None:
    # Every frame's view outlives the handler (the last 100 are kept), and after each reply
    # the test writes a marker through the view of that packet's frame. The TX verdict sent a
    # copy, so every reply is intact, and the frame stays held: no later packet lands in it
    # (which would overwrite the marker) and no marker lands in a packet. A 32-entry fill ring
    # brings a recycled frame back within ~32 packets, well inside the 100 kept.
    kept: collections.deque[np.ndarray] = collections.deque(maxlen=100)

    def reflect_and_keep(batch: kbypass.Batch) -> None:
        _reflect(batch)
        kept.extend(batch.frames)

    peer = _peer(pair, 9521)
    peer.settimeout(1)
    n = 300
    with pair.enter("b"):
        port = kbypass.XdpPort(
            pair.b.ifname, mode="copy", frames=256, ring_size=32, filter="udp dst port 9520"
        )
    with port, Pipeline(port, reflect_and_keep, cpus=False) as p:
        p.start()
        got = []
        for i in range(n):
            peer.sendto(b"ping-%06d" % i, (pair.b.ip, 9520))
            try:
                got.append(peer.recvfrom(64)[0])
            except TimeoutError:
                got.append(b"lost")
            v = kept[-1]
            v[:] = np.resize(np.frombuffer(b"%06d" % i, dtype=np.uint8), len(v))
            del v
        markers = [bytes(v[:6]) for v in kept]
        acc = p.stop()  # then the counters: a reply can arrive before its batch is counted
        t = p.totals()
        assert got == [b"ping-%06d" % i for i in range(n)]
        assert markers == [b"%06d" % i for i in range(n - 100, n)]
        assert acc is not None and acc["held"] == len(kept) == 100
        kept.clear()
        assert p.check_accounting()["held"] == 0
    assert t["tx"] == n and t["escaped"] == n and t["copied"] == n and t["tx_failed"] == 0


def test_per_packet_data_kept_never_changes(pair: VethPair) -> None:
    kept: list[tuple[np.ndarray, bytes]] = []

    def handle(pkt: kbypass.Packet) -> kbypass.Action:
        if len(kept) < 10:
            d = pkt.data
            kept.append((d, bytes(d)))
        return kbypass.DROP

    with pair.enter("b"):
        p = Pipeline(
            pair.b.ifname, per_packet=handle, filter="udp", mode="copy", frames=256, cpus=False
        )
    with p:
        p.start()
        TrafficGenerator(pair, size=60, dst_port=9000).run(count=100, rate=10_000)
        assert _until(lambda: len(kept) == 10)
        TrafficGenerator(pair, size=400, flows=64, dst_port=9100).run(count=5000, rate=100_000)
        _until(lambda: p.totals()["rx"] >= 5000, timeout=3.0)
        acc = p.stop()
        t = p.totals()
        assert all(bytes(d) == b for d, b in kept)
        assert t["escaped"] == 10 and acc is not None and acc["held"] == 10
        kept.clear()
        assert p.check_accounting()["held"] == 0


def test_kept_frame_views_outlive_release(pair: VethPair) -> None:
    n = {"kept": 0, "limit": 5}

    def keep_first(batch: kbypass.Batch) -> None:
        k = max(0, min(n["limit"] - n["kept"], len(batch)))
        batch.verdicts[:k] = kbypass.KEEP
        n["kept"] += k

    peer = _peer(pair, 9531)
    with _pipeline(pair, keep_first, filter="udp dst port 9530", frames=256) as p:
        p.start()
        for i in range(5):
            peer.sendto(b"keep-%d" % i, (pair.b.ip, 9530))
        assert _until(lambda: p.totals()["kept"] == 5)
        handles = p.kept()
        views = [(f, bytes(f)) for k in handles for f in k.frames]
        assert sum(k.release() for k in handles) == 5
        # Keep 200 more (beyond the fill ring's 128): refills draw on every free frame.
        n["limit"] = 205
        for r in range(2):
            for i in range(100):
                peer.sendto(b"other-traffic-%06d" % i, (pair.b.ip, 9530))
            assert _until(lambda r=r: p.totals()["kept"] == 105 + 100 * r)
        assert all(bytes(v) == b for v, b in views)
        assert sorted(b[42:] for _, b in views) == [b"keep-%d" % i for i in range(5)]
        assert p._engine.held == 205  # the 5 released are still held by their views
        for k in p.kept():
            k.release()
        del views
        assert p._engine.held == 0
        acc = p.stop()
    assert acc is not None and acc["held"] == 0 and acc["app"] == 0
    assert p.totals()["released"] == 205


# --- issue 8: signals, shutdown, re-entry -------------------------------------------------------


def test_stop_inside_the_handler_ends_after_that_batch(pair: VethPair) -> None:
    seen: list[int] = []
    box: dict[str, Any] = {}

    def stop_now(batch: kbypass.Batch) -> None:
        seen.append(len(batch))
        box["stop"] = box["p"].stop()
        for name in ("wait", "close"):
            try:
                getattr(box["p"], name)()
            except RuntimeError as e:
                box[name] = str(e)

    with _pipeline(pair, stop_now, filter="udp", frames=256) as p:
        box["p"] = p
        p.start()
        TrafficGenerator(pair, size=60).run(count=2000, rate=100_000)
        assert p.wait(3.0)
        assert not p.running
        acc = p.stop()
        t = p.totals()
    assert box["stop"] is None  # inside a handler: asked, not joined
    assert len(seen) == 1 and t["batches"] == 1 and t["rx"] == seen[0]
    assert t["handler_errors"] == 0 and p.last_error is None
    assert acc is not None and acc["balanced"] and acc["app"] == 0
    assert "inside the handler" in box["wait"] and "inside a handler" in box["close"]


def test_wait_without_timeout_answers_ctrl_c(pair: VethPair) -> None:
    code = textwrap.dedent(
        f"""
        import sys, time, kbypass, kbypass._core as c
        entry = c.NetnsEntry({pair.b.netns!r})
        p = kbypass.Pipeline({pair.b.ifname!r}, lambda b: None, mode="copy",
                             frames=256, cpus=False, progress=False)
        entry.exit()
        p.start()
        print("ready", flush=True)
        t0 = time.monotonic()
        try:
            p.wait()
        except KeyboardInterrupt:
            print("interrupted after", time.monotonic() - t0, flush=True)
            p.close()
            sys.exit(0)
        sys.exit(3)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_default,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "interrupted after" in out and took < 2.0


_EXIT_CHILD = """
import atexit, sys, time, weakref
import numpy as np

state = {{}}


def after_kbypass_hooks():
    # Registered before kbypass is imported, so it runs after kbypass's own exit hooks.
    box = state["ref"]()
    obj = box.obj if box is not None else None
    print("after-hooks", obj is not None and obj.running, getattr(obj, "_closed", None),
          flush=True)


atexit.register(after_kbypass_hooks)
import kbypass, kbypass._core as c


class Box:
    pass


def handler(batch):
    np.asarray(batch.lengths).sum()
    time.sleep(0.0005)  # a worker is likely inside a batch when the interpreter exits


entry = c.NetnsEntry({netns!r})
if {variant!r} == "engine":
    port = kbypass.XdpPort({ifname!r}, mode="copy", frames=1024)
    obj = c.Engine(port, handler)
else:
    obj = kbypass.Pipeline({ifname!r}, handler, mode="copy", frames=1024, cpus=False,
                           progress=False)
entry.exit()
obj.start()
box = Box()
box.obj = obj
state["ref"] = weakref.ref(box)
if {variant!r} != "plain":
    box.me = box  # a cycle: only the garbage collector frees it, during finalization
    del box, obj
print("ready", flush=True)
time.sleep(0.3)
"""


@pytest.mark.parametrize("variant", ["plain", "cycle", "engine"])
def test_interpreter_exit_with_a_running_pipeline(pair: VethPair, variant: str) -> None:
    # The exit hooks stop the workers while the interpreter is intact (a worker that takes the
    # GIL during finalization is ended by CPython inside Rust frames: hang or crash), return
    # the sockets and detach the program; the child exits 0, promptly, and leaves nothing.
    code = _EXIT_CHILD.format(netns=pair.b.netns, ifname=pair.b.ifname, variant=variant)
    gen = TrafficGenerator(pair, size=60)
    gen.start(rate=100_000)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
        )
    finally:
        gen.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ready" in proc.stdout
    closed = "True" if variant != "engine" else "None"
    assert f"after-hooks False {closed}" in proc.stdout, proc.stdout
    assert "xdp" not in pair.run("b", "ip", "-d", "link", "show", pair.b.ifname).stdout
