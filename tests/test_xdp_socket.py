"""AF_XDP sockets end to end on the plugin's veth_pair (two namespaces; issue 3, section 6)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

import kbypass
from kbypass import XdpPort, XdpSocket, packet
from kbypass.testing import VethPair

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for AF_XDP and namespaces")


def _udp_sender(veth_pair: VethPair) -> socket.socket:
    with veth_pair.enter("a"):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((veth_pair.a.ip, 0))
    return s


def _udp_receiver(veth_pair: VethPair, port: int) -> socket.socket:
    with veth_pair.enter("b"):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((veth_pair.b.ip, port))
        s.settimeout(3)
    return s


def _recv_n(sock: XdpSocket, n: int, timeout: float = 5.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        with sock.recv(max=64, timeout=0.2) as batch:
            got.extend(bytes(batch[i]) for i in range(len(batch)))
    return got


def _programs(veth_pair: VethPair, side: str) -> str:
    end = veth_pair.a if side == "a" else veth_pair.b
    return veth_pair.run(side, "ip", "-d", "link", "show", end.ifname).stdout


def test_receives_exactly_the_frames_the_peer_kernel_sends(veth_pair: VethPair) -> None:
    with veth_pair.enter("b"):
        sock = XdpSocket(veth_pair.b.ifname, queue=0, mode="copy", frames=1024, filter="udp")
    assert sock.mode == "copy" and sock.xdp_mode in ("native", "generic")
    tx = _udp_sender(veth_pair)
    frames: list[bytes] = []
    for chunk in range(10):  # 100 at a time: well within the 512 frames on the fill ring
        for i in range(chunk * 100, chunk * 100 + 100):
            tx.sendto(i.to_bytes(4, "big") * 8, (veth_pair.b.ip, 9000))
        frames += _recv_n(sock, 100)
    assert len(frames) == 1000
    assert not _recv_n(sock, 1, timeout=0.3), "exactly N: nothing extra arrives"
    hdr = packet.parse(*packet.frames_from_bytes(frames))
    assert set(hdr["dst_port"].tolist()) == {9000}
    seqs = sorted(int.from_bytes(f[42:46], "big") for f in frames)
    assert seqs == list(range(1000))
    st = sock.stats()
    assert st["rx_packets"] == 1000 and st["invalid_descs"] == 0
    assert st["kernel_rx_dropped"] == 0 and st["kernel_rx_fill_ring_empty"] == 0
    acc = sock.check_accounting()
    assert acc["app"] == 0 and acc["total"] == 1024
    sock.close()
    tx.close()


def test_filter_bifurcates_and_kernel_keeps_ping_and_other_ports(veth_pair: VethPair) -> None:
    with veth_pair.enter("b"):
        sock = XdpSocket(veth_pair.b.ifname, filter="udp dst port 9000-9010", mode="copy")
    kernel_rx = _udp_receiver(veth_pair, 9100)
    tx = _udp_sender(veth_pair)
    for _ in range(50):
        tx.sendto(b"to-kernel", (veth_pair.b.ip, 9100))
        tx.sendto(b"to-xdp", (veth_pair.b.ip, 9005))
    assert all(kernel_rx.recv(64) == b"to-kernel" for _ in range(50))
    frames = _recv_n(sock, 50)
    assert len(frames) == 50 and all(f.endswith(b"to-xdp") for f in frames)
    veth_pair.run(
        "a", "ping", "-c2", "-i0.2", "-W2", veth_pair.b.ip
    )  # ICMP still reaches the kernel
    sock.close()
    kernel_rx.close()
    tx.close()


def test_filter_given_as_rules(veth_pair: VethPair) -> None:
    rules = [kbypass.Rule(proto="udp", dport=9000), kbypass.Rule(proto="udp", dport=9001)]
    with veth_pair.enter("b"):
        sock = XdpSocket(veth_pair.b.ifname, filter=rules, mode="copy")
    tx = _udp_sender(veth_pair)
    tx.sendto(b"x", (veth_pair.b.ip, 9001))
    assert len(_recv_n(sock, 1)) == 1
    sock.close()


def test_tx_arrives_at_peer_kernel_socket_with_valid_checksums(veth_pair: VethPair) -> None:
    rx = _udp_receiver(veth_pair, 9200)
    frames = []
    for i in range(20):
        f = bytearray(42 + 16)
        f[0:6] = bytes.fromhex(veth_pair.b.mac.replace(":", ""))
        f[6:12] = bytes.fromhex(veth_pair.a.mac.replace(":", ""))
        f[12:14] = b"\x08\x00"
        f[14] = 0x45
        f[16:18] = (20 + 8 + 16).to_bytes(2, "big")
        f[22], f[23] = 64, 17
        f[26:30] = socket.inet_aton(veth_pair.a.ip)
        f[30:34] = socket.inet_aton(veth_pair.b.ip)
        f[34:36] = (40000 + i).to_bytes(2, "big")
        f[36:38] = (9200).to_bytes(2, "big")
        f[38:40] = (8 + 16).to_bytes(2, "big")
        f[42:] = i.to_bytes(16, "big")
        frames.append(bytes(f))
    arr, lens = packet.frames_from_bytes(frames)
    assert packet.edit(arr, lens, fix_checksums=True) == 20
    with veth_pair.enter("a"):
        sock = XdpSocket(veth_pair.a.ifname, mode="copy", frames=256)
    assert sock.send(arr, lens) == 20
    got = sorted(int.from_bytes(rx.recv(64), "big") for _ in range(20))
    assert got == list(range(20))  # the kernel dropped none: checksums were valid
    deadline = time.monotonic() + 2
    while sock.stats()["tx_completions"] < 20 and time.monotonic() < deadline:
        sock.complete()
    st = sock.stats()
    assert st["tx_packets"] == 20 and st["tx_completions"] == 20
    assert sock.check_accounting()["tx_side"] == 0
    sock.close()


def test_reflect_batch_back_with_send(veth_pair: VethPair) -> None:
    with veth_pair.enter("b"):
        sock = XdpSocket(veth_pair.b.ifname, filter="udp dst port 9300", mode="copy")
    with veth_pair.enter("a"):
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind((veth_pair.a.ip, 9301))
        peer.settimeout(3)
    peer.sendto(b"ping-1", (veth_pair.b.ip, 9300))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        batch = sock.recv(timeout=0.2)
        if len(batch):
            break
    assert len(batch) == 1
    # swap addresses and ports in place (zero-copy view into the UMEM), then send it back.
    # The peer's kernel left a partial UDP checksum (veth checksum offload), so recompute it.
    view = batch[0]
    frame = view.reshape(1, -1)
    packet.edit(frame, swap_macs=True, swap_ips=True, swap_ports=True, fix_checksums=True)
    assert batch.send() == 1
    data, addr = peer.recvfrom(64)
    assert data == b"ping-1" and addr == (veth_pair.b.ip, 9300)
    with pytest.raises(RuntimeError, match="released"):
        batch[0]
    sock.close()


def test_shared_umem_port_over_two_queues(veth_pair: VethPair) -> None:
    with VethPair(queues=2, subnet="198.18.1") as p2:
        with p2.enter("b"):
            port = XdpPort(p2.b.ifname, queues="all", mode="copy")
        assert port.queues == [0, 1] and len(port) == 2
        tx = _udp_sender(p2)
        for i in range(400):
            tx.sendto(b"q", (p2.b.ip, 10000 + i))  # different flows spread over the queues
        total = 0  # 400 fits the fill rings (2 x 2048), so none is dropped before we poll
        deadline = time.monotonic() + 5
        while total < 400 and time.monotonic() < deadline:
            for s in port.sockets:
                with s.recv(max=64, timeout=0.05) as b:
                    total += len(b)
        assert total == 400
        a0 = port.sockets[0].check_accounting()
        assert a0["app"] == 0
        port.close()
        assert port.closed


def test_busy_poll_socket_receives(veth_pair: VethPair) -> None:
    with veth_pair.enter("b"):
        sock = XdpSocket(veth_pair.b.ifname, mode="copy", busy_poll=True, filter="udp")
    tx = _udp_sender(veth_pair)
    for _ in range(100):
        tx.sendto(b"bp", (veth_pair.b.ip, 9000))
    assert len(_recv_n(sock, 100)) == 100
    before = sock.stats()["rx_wakeups"]
    assert len(sock.recv()) == 0
    # with busy polling an empty poll drives the queue with a syscall, and it is counted
    assert sock.stats()["rx_wakeups"] == before + 1
    sock.close()


def test_multi_buffer_with_jumbo_mtu() -> None:
    with VethPair(mtu=9000, subnet="198.18.2") as p:
        with p.enter("b"):
            sock = XdpSocket(p.b.ifname, mode="copy", multi_buffer=True, frame_size=4096)
        tx = _udp_sender(p)
        payload = bytes(range(256)) * 31  # 7936 bytes: one packet over several frames
        tx.sendto(payload, (p.b.ip, 9000))
        descs: list[bytes] = []
        cont: list[bool] = []
        deadline = time.monotonic() + 5
        while (not cont or cont[-1]) and time.monotonic() < deadline:
            with sock.recv(max=16, timeout=0.2) as b:
                descs.extend(bytes(b[i]) for i in range(len(b)))
                cont.extend(b.continued.tolist())
        assert len(descs) >= 2 and cont[-1] is False and all(cont[:-1])
        whole = b"".join(descs)
        assert len(whole) == 42 + len(payload) and whole[42:] == payload
        sock.close()


def test_tx_flood_fresh_splits_jumbo_frames_over_umem_frames() -> None:
    """tx_flood(fresh=True) copies the frame in for every send; a frame longer than a UMEM frame
    goes out over several on a multi_buffer socket, and the peer's kernel gets each one whole."""
    with VethPair(mtu=9000, subnet="198.18.3") as p:
        payload = bytes(range(256)) * 27  # 6912 bytes: a 6954-byte frame, two 4096-byte frames
        frame = packet.Template(
            dst_mac=p.b.mac, src_mac=p.a.mac, src_ip=p.a.ip, dst_ip=p.b.ip,
            src_port=9001, dst_port=9001, payload=payload,
        ).frame()  # fmt: skip
        rx = _udp_receiver(p, 9001)
        rx.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: 200 frames fit
        with p.enter("a"), XdpSocket(p.a.ifname, multi_buffer=True, frame_size=4096) as tx:
            r = tx.tx_flood(frame, 200, batch=16, fresh=True)
            assert (r["packets"], r["bytes"]) == (200, 200 * len(frame))
            assert tx.stats()["tx_packets"] == 200
        got = [rx.recv(9000) for _ in range(200)]
        assert all(g == payload for g in got)
        rx.close()


def test_close_leaves_no_program_behind(veth_pair: VethPair) -> None:
    with veth_pair.enter("b"):
        sock = XdpSocket(veth_pair.b.ifname, mode="copy")
    assert "prog/xdp" in _programs(veth_pair, "b")
    sock.close()
    sock.close()  # idempotent
    assert "prog/xdp" not in _programs(veth_pair, "b")
    with pytest.raises(RuntimeError, match="closed"):
        sock.recv()


def test_sigkilled_owner_leaves_no_program_behind(veth_pair: VethPair) -> None:
    code = textwrap.dedent(
        f"""
        import sys, time
        from kbypass import _core, XdpSocket
        e = _core.NetnsEntry({veth_pair.b.netns!r})
        s = XdpSocket({veth_pair.b.ifname!r}, mode="copy")
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    assert "prog/xdp" in _programs(veth_pair, "b")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 3
    while "prog/xdp" in _programs(veth_pair, "b") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "prog/xdp" not in _programs(veth_pair, "b")


def test_bad_input_raises_typed_errors_and_leaks_nothing(veth_pair: VethPair) -> None:
    with veth_pair.enter("b"):
        with pytest.raises(FileNotFoundError, match="no such interface"):
            XdpSocket("kbx-nope0")
        with pytest.raises(ValueError, match="queue 3 does not exist"):
            XdpSocket(veth_pair.b.ifname, queue=3)
        with pytest.raises(ValueError, match="mode"):
            XdpSocket(veth_pair.b.ifname, mode="fast")
        with pytest.raises(ValueError, match="2048 or 4096"):
            XdpSocket(veth_pair.b.ifname, frame_size=3000)
        with pytest.raises(ValueError):
            XdpSocket(veth_pair.b.ifname, filter="udp dst port banana")
        with pytest.raises(OSError, match="zero-copy"):
            XdpSocket(veth_pair.b.ifname, mode="zerocopy")
        assert "prog/xdp" not in _programs(veth_pair, "b"), "failed opens leave no program"
        sock = XdpSocket(veth_pair.b.ifname, mode="copy", frames=256)
    with pytest.raises(ValueError, match="max"):
        sock.recv(max=0)
    with pytest.raises(TypeError):
        sock.send(12345)  # type: ignore[arg-type]
    assert sock.send([b"\0" * 5000]) == 0
    assert sock.stats()["tx_oversize"] == 1
    with pytest.raises(ValueError, match="multi_buffer socket"):
        sock.tx_flood(b"\0" * 5000, 1, fresh=True)
    tx = _udp_sender(veth_pair)
    tx.sendto(b"once", (veth_pair.b.ip, 9000))
    batch = None
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        batch = sock.recv(timeout=0.2)
        if len(batch):
            break
    assert batch is not None and len(batch) == 1
    assert batch.release() == 1
    assert batch.release() == 0  # idempotent, no double free
    assert sock.check_accounting()["app"] == 0
    # a batch dropped without release gives its frames back, counted
    tx.sendto(b"dropme", (veth_pair.b.ip, 9000))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        b2 = sock.recv(timeout=0.2)
        if len(b2):
            break
    del b2
    assert sock.stats()["auto_released"] == 1
    assert sock.check_accounting()["app"] == 0
    sock.close()


def test_unprivileged_open_says_run_as_root(veth_pair: VethPair) -> None:
    sys.path.insert(0, os.path.dirname(__file__))
    from _privileges import as_nobody

    name, ns = veth_pair.b.ifname, veth_pair.b.netns

    def attempt() -> str:
        try:
            from kbypass import _core

            e = _core.NetnsEntry(ns)
            e.exit()
        except PermissionError as err:
            return str(err)
        try:
            XdpSocket(name)
        except PermissionError as err:
            return str(err)
        except OSError as err:
            return f"OSError: {err}"
        return "opened"

    msg = as_nobody(attempt)
    assert "run as root" in msg, msg


def test_batch_views_are_zero_copy_numpy(veth_pair: VethPair) -> None:
    with veth_pair.enter("b"):
        sock = XdpSocket(veth_pair.b.ifname, mode="copy", filter="udp")
    tx = _udp_sender(veth_pair)
    tx.sendto(b"abc", (veth_pair.b.ip, 9000))
    frames = []
    deadline = time.monotonic() + 3
    while not frames and time.monotonic() < deadline:
        batch = sock.recv(timeout=0.2)
        frames = batch.frames()
    assert len(frames) == 1
    v = frames[0]
    assert isinstance(v, np.ndarray) and v.dtype == np.uint8 and len(v) == 45
    assert bytes(v[-3:]) == b"abc"
    assert batch.lengths.tolist() == [45] and batch.addrs.dtype == np.uint64
    batch.release()
    sock.close()
    _ = v[0]  # the view stays readable memory after release and close


# --- issue 8: views never see a recycled frame; waits answer Ctrl-C and share the port -------


def _recv_one(sock: XdpSocket, timeout: float = 3.0) -> kbypass.RxBatch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = sock.recv(max=1, timeout=0.2)
        if len(b):
            return b
    raise AssertionError("nothing arrived")


def test_rxbatch_views_never_change_after_release(veth_pair: VethPair) -> None:
    with veth_pair.enter("b"):
        sock = XdpSocket(veth_pair.b.ifname, mode="copy", frames=256, filter="udp")
    tx = _udp_sender(veth_pair)
    tx.sendto(b"first packet", (veth_pair.b.ip, 9000))
    batch = _recv_one(sock)
    view, whole = batch[0], batch.frames()[0]
    snap = bytes(view)
    assert batch.release() == 1
    with pytest.raises(RuntimeError, match="released"):
        batch[0]
    for i in range(1000):  # every other frame of the UMEM is recycled several times over
        tx.sendto(b"later-%04d" % i + bytes(200), (veth_pair.b.ip, 9000))
        if i % 100 == 99:
            assert len(_recv_n(sock, 100)) == 100
    assert bytes(view) == bytes(whole) == snap and snap.endswith(b"first packet")
    assert sock.stats()["frames_held"] == 1  # the views hold it
    del view, whole
    st = sock.stats()
    assert st["frames_held"] == 0 and st["invalid_descs"] == 0
    acc = sock.check_accounting()
    assert acc["app"] == 0 and acc["held"] == 0
    sock.close()


def test_send_with_a_live_view_sends_a_copy(veth_pair: VethPair) -> None:
    with veth_pair.enter("b"):
        sock = XdpSocket(veth_pair.b.ifname, filter="udp dst port 9310", mode="copy", frames=256)
    with veth_pair.enter("a"):
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind((veth_pair.a.ip, 9311))
        peer.settimeout(3)
    peer.sendto(b"ping-copy", (veth_pair.b.ip, 9310))
    batch = _recv_one(sock)
    view = batch[0]
    packet.edit(
        view.reshape(1, -1), swap_macs=True, swap_ips=True, swap_ports=True, fix_checksums=True
    )
    snap = bytes(view)
    assert batch.send() == 1
    assert peer.recvfrom(64) == (b"ping-copy", (veth_pair.b.ip, 9310))
    view[:] = 0xEE  # ours alone: the copy went out, the kernel never sees this frame
    sock.complete()  # the sent frame (the copy) is back in the pool
    # Hold ~160 frames unreleased: with the fill ring's 128 that is more than the UMEM has,
    # so refills draw on every free frame (the kernel drops what finds the ring empty).
    pending: list[kbypass.RxBatch] = []
    for _ in range(2):
        for _ in range(80):
            peer.sendto(b"more", (veth_pair.b.ip, 9310))
        got = 0
        deadline = time.monotonic() + 1
        while got < 80 and time.monotonic() < deadline:
            b = sock.recv(max=64, timeout=0.1)
            got += len(b)
            pending.append(b)
        assert got >= 40
    assert all(bytes(b[i]).endswith(b"more") for b in pending for i in range(len(b)))
    for b in pending:
        b.release()
    for _ in range(4):  # and round the fill ring, whose frames come from the whole pool now
        for _ in range(100):
            peer.sendto(b"more", (veth_pair.b.ip, 9310))
        got = _recv_n(sock, 100)
        assert len(got) >= 90 and all(f.endswith(b"more") for f in got)
    assert bytes(view) == b"\xee" * len(snap)
    assert sock.stats()["frames_held"] == 1
    del view
    assert sock.check_accounting()["held"] == 0
    sock.close()


@contextlib.contextmanager
def _sigint_after(delay: float) -> Iterator[None]:
    """Deliver SIGINT to this process after `delay` s (with Python's handler installed)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGINT, old)


def test_recv_with_timeout_answers_ctrl_c(veth_pair: VethPair) -> None:
    with veth_pair.enter("b"):
        sock = XdpSocket(veth_pair.b.ifname, mode="copy", frames=256, filter="udp port 9999")
    t0 = time.monotonic()
    with _sigint_after(0.3), pytest.raises(KeyboardInterrupt):
        sock.recv(timeout=5.0)
    assert time.monotonic() - t0 < 1.5  # not the 5 s timeout
    t0 = time.monotonic()
    with _sigint_after(0.3), pytest.raises(KeyboardInterrupt):
        sock.rx_drop(duration=5.0)
    assert time.monotonic() - t0 < 1.5
    assert sock.check_accounting()["app"] == 0  # the loops gave everything back
    sock.close()


def test_a_waiting_recv_never_stalls_other_threads(veth_pair: VethPair) -> None:
    # One thread waits in recv(timeout=3) on the socket; meanwhile the others use the same
    # socket and drop a batch unreleased: neither waits for the receiver's timeout, and the
    # drop (which runs with the GIL held) takes no lock at all.
    with veth_pair.enter("b"):
        sock = XdpSocket(veth_pair.b.ifname, mode="copy", frames=256, filter="udp dst port 9000")
    tx = _udp_sender(veth_pair)
    tx.sendto(b"to-drop", (veth_pair.b.ip, 9000))
    batch = _recv_one(sock)
    waiter = threading.Thread(target=lambda: sock.recv(timeout=3.0))
    waiter.start()
    time.sleep(0.2)  # the waiter is in its poll now
    t0 = time.monotonic()
    del batch  # dropped unreleased: frames back, counted
    dropped_in = time.monotonic() - t0
    t0 = time.monotonic()
    st = sock.stats()
    stats_in = time.monotonic() - t0
    waiter.join()
    assert dropped_in < 0.2, dropped_in  # no lock: not the waiter's 3 s, nor a 50 ms slice
    assert stats_in < 1.0, stats_in  # one 50 ms slice, not the waiter's 3 s
    assert st["auto_released"] == 1 and st["frames_held"] == 0
    sock.close()
