"""The host's user-space RoCEv2 engine against Linux rxe: one VM boot, both roles.

The VM's rxe1 and the host engine (``kbypass.rdma.Context.userspace`` on ``veth0`` of the L2
segment's host namespace) share one Ethernet segment: the VM's tap bridged to a veth whose
other end is that namespace (``rxe_vm_l2``, see test_l2.py). rdma-core's tools run in the VM
against kbypass on the host and the other way round: ``ibv_rc_pingpong``, ``ibv_ud_pingpong``,
``ib_write_bw``, ``ib_read_bw``, ``ib_send_bw``, ``ib_atomic_bw``; and kbypass.rdma itself on
both sides (vm_engine_peer.py on rxe1) in both directions. The out-of-band TCP exchanges run
over the same segment (the engine's XDP program takes only UDP 4791 for its address).
"""

from __future__ import annotations

import hashlib
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import vm_engine_peer as peer

from kbypass import _core, rdma
from kbypass.testing.rxe_vm import CommandResult, Job, L2Segment, RxeVm

TOOL = "-d rxe1"
PP_ITERS, PP_SIZE, UD_SIZE = 20, 1024, 512
BW_ITERS = 200


@contextmanager
def inside(netns: str) -> Iterator[None]:
    """This thread inside `netns` (the out-of-band TCP must go over the segment)."""
    entry = _core.NetnsEntry(netns)
    try:
        yield
    finally:
        entry.exit()


@pytest.fixture(scope="module")
def rig(rxe_vm_l2: RxeVm) -> Iterator[tuple[RxeVm, L2Segment, rdma.Context]]:
    seg = rxe_vm_l2.l2
    assert seg is not None
    ctx = rdma.Context.userspace(seg.host_ifname, ip=seg.host_ip, netns=seg.host_netns)
    try:
        with inside(seg.host_netns):
            yield rxe_vm_l2, seg, ctx
    finally:
        ctx.close()
    assert not [d for d in rdma.devices() if d.userspace]


def ok(r: CommandResult) -> str:
    assert r.returncode == 0, f"{r.command!r} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def tool_client(vm: RxeVm, cmd: str, host: str) -> Job:
    """A tool client in the VM, retried until our server listens."""
    loop = f"for i in $(seq 150); do {cmd} {host} && exit 0; sleep 0.2; done; exit 1"
    return vm.start(loop, timeout=180)


def wait_wcs(cq: rdma.CompletionQueue, n: int = 1, timeout: float = 30) -> list[Any]:
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        out += cq.poll(16)
        assert time.monotonic() < deadline, f"only {len(out)} of {n} completions: {out}"
    for wc in out:
        wc.check()
    return out


# --- ibv_rc_pingpong and ibv_ud_pingpong ----------------------------------------------------------


class PingPong:
    """One QP of the engine with its buffer: receives at 0, sends from `send_at`."""

    def __init__(self, ctx: rdma.Context, qp_type: str, size: int) -> None:
        self.size, self.ud = size, qp_type == "UD"
        self.recv_len = size + 40 if self.ud else size
        self.send_at = self.recv_len
        self.cq, self.pd = ctx.create_cq(128), ctx.alloc_pd()
        self.qp = self.pd.create_qp(qp_type, self.cq)
        self.buf = np.full(self.recv_len + size, 0x7B, dtype=np.uint8)
        self.mr = self.pd.register(self.buf)
        self.qp.init()
        for k in range(16):
            self.qp.post_recv(self.mr, length=self.recv_len, wr_id=1000 + k)
        self.pending: list[Any] = []
        self.ah: rdma.AddressHandle | None = None
        self.remote_qpn = 0

    def connected(self, remote: rdma.Endpoint) -> None:
        if self.ud:
            self.ah, self.remote_qpn = self.pd.create_ah(remote), remote.qpn

    def send(self, i: int) -> None:
        if self.ud:
            self.qp.send(self.mr, self.send_at, self.size, wr_id=i, ah=self.ah,
                         remote_qpn=self.remote_qpn)  # fmt: skip
        else:
            self.qp.send(self.mr, self.send_at, self.size, wr_id=i)

    def next(self, recv: bool) -> None:
        deadline = time.monotonic() + 30
        while True:
            for w in self.pending:
                if (w.opcode == rdma.Opcode.RECV) == recv:
                    self.pending.remove(w)
                    w.check()
                    if recv:
                        self.qp.post_recv(self.mr, length=self.recv_len, wr_id=w.wr_id)
                    return
            self.pending += self.cq.poll(16)
            assert time.monotonic() < deadline, self.pending

    def serve(self, iters: int) -> None:
        for i in range(iters):
            self.next(recv=True)
            self.send(i)
            self.next(recv=False)

    def client(self, iters: int) -> None:
        for i in range(iters):
            self.send(i)
            self.next(recv=False)
            self.next(recv=True)


@pytest.mark.parametrize("tool,qp_type,size", [
    ("ibv_rc_pingpong", "RC", PP_SIZE),
    ("ibv_ud_pingpong", "UD", UD_SIZE),
])  # fmt: skip
def test_pingpong_tool_client_against_the_engine(
    rig: tuple[RxeVm, L2Segment, rdma.Context], tool: str, qp_type: str, size: int
) -> None:
    vm, seg, ctx = rig
    port = 18800 if qp_type == "RC" else 18801
    pp = PingPong(ctx, qp_type, size)
    job = tool_client(vm, f"{tool} {TOOL} -g 1 -s {size} -n {PP_ITERS} -p {port}", seg.host_ip)
    remote = pp.qp.pingpong_accept(port=port, psn=0x1234, timeout=120)
    assert remote.gid == f"::ffff:{seg.guest_ip}", remote.gid
    pp.connected(remote)
    pp.serve(PP_ITERS)
    out = ok(job.wait())
    assert f"{PP_ITERS} iters in" in out, out
    assert re.search(rf"remote address: .* GID ::ffff:{re.escape(seg.host_ip)}", out), out


@pytest.mark.parametrize("tool,qp_type,size", [
    ("ibv_rc_pingpong", "RC", PP_SIZE),
    ("ibv_ud_pingpong", "UD", UD_SIZE),
])  # fmt: skip
def test_engine_client_against_the_pingpong_tool(
    rig: tuple[RxeVm, L2Segment, rdma.Context], tool: str, qp_type: str, size: int
) -> None:
    vm, seg, ctx = rig
    port = 18802 if qp_type == "RC" else 18803
    pp = PingPong(ctx, qp_type, size)
    job = vm.start(f"{tool} {TOOL} -g 1 -s {size} -n {PP_ITERS} -p {port}", timeout=180)
    remote = pp.qp.pingpong_connect(seg.guest_ip, port=port, psn=0x4321, timeout=120)
    pp.connected(remote)
    pp.client(PP_ITERS)
    out = ok(job.wait())
    assert f"{PP_ITERS} iters in" in out, out


# --- perftest -------------------------------------------------------------------------------------


def perftest_row(out: str, size: int) -> float:
    row = re.search(rf"^\s*{size}\s+{BW_ITERS}\s+([\d.]+)\s+([\d.]+)", out, re.M)
    assert row is not None, out
    return float(row.group(2))


TESTS = [  # (tool and options, kbypass test, message size)
    ("ib_write_bw -s 4096", "write", 4096),
    ("ib_read_bw -s 4096", "read", 4096),
    ("ib_send_bw -s 4096", "send", 4096),
    ("ib_atomic_bw", "atomic", 8),
    ("ib_atomic_bw -A CMP_AND_SWAP", "compare_swap", 8),
]


@pytest.mark.parametrize("tool,test,size", TESTS)
def test_perftest_tool_client_against_the_engine(
    rig: tuple[RxeVm, L2Segment, rdma.Context], tool: str, test: str, size: int
) -> None:
    vm, seg, ctx = rig
    port = 18810 + [t[1] for t in TESTS].index(test)
    cq, pd = ctx.create_cq(512), ctx.alloc_pd()
    qp = pd.create_qp("RC", cq, max_recv_wr=256)
    buf = np.full(1 << 16, 0xAA, dtype=np.uint8)
    if test in ("atomic", "compare_swap"):
        buf[:] = 0
    mr = pd.register(buf)
    job = tool_client(vm, f"{tool} {TOOL} -x 1 -F -n {BW_ITERS} -p {port}", seg.host_ip)
    kind = "atomic" if test == "compare_swap" else test
    rep = qp.perftest_serve(mr, port, timeout=120, test=kind, cq=cq, size=size,
                            iterations=BW_ITERS, rx_depth=128)  # fmt: skip
    out = ok(job.wait())
    # the tool's numbers (under TCG its clock may round a short run's rate to 0), except for
    # send: there each side measures and prints its own
    assert (rep["size"], rep["iters"]) == (size, BW_ITERS) and rep["bw_avg"] >= 0, (rep, out)
    got = perftest_row(out, size)
    assert test == "send" or abs(got - rep["bw_avg"]) < 0.01 + rep["bw_avg"] * 0.01, (got, rep)
    words = buf.view(np.uint64)
    if test == "atomic":  # fetch-and-adds of 1 on words a cache line apart in one page
        assert int(words.sum()) == BW_ITERS, words[words != 0]
    elif test == "compare_swap":  # compared with 0 and swapped in 0
        assert not words.any()
    elif test == "read":
        assert (buf == 0xAA).all()
    else:  # the tool's random buffer landed
        assert (buf[:size] != 0xAA).any()


@pytest.mark.parametrize("tool,test,size", TESTS)
def test_engine_client_against_the_perftest_tool(
    rig: tuple[RxeVm, L2Segment, rdma.Context], tool: str, test: str, size: int
) -> None:
    vm, seg, ctx = rig
    port = 18820 + [t[1] for t in TESTS].index(test)
    cq, pd = ctx.create_cq(512), ctx.alloc_pd()
    qp = pd.create_qp("RC", cq)
    buf = np.full(1 << 16, 0xAA, dtype=np.uint8)
    mr = pd.register(buf)
    job = vm.start(f"{tool} {TOOL} -x 1 -F -n {BW_ITERS} -p {port}", timeout=180)
    run: dict[str, Callable[..., dict[str, float]]] = {
        "write": qp.perftest_write_bw,
        "read": qp.perftest_read_bw,
        "send": qp.perftest_send_bw,
    }
    if test in run:
        rep = run[test](cq, mr, seg.guest_ip, port, size=size, iterations=BW_ITERS, timeout=120)
    else:
        rep = qp.perftest_atomic_bw(cq, mr, seg.guest_ip, port, iterations=BW_ITERS,
                                    timeout=120, compare_swap=test == "compare_swap")  # fmt: skip
    out = ok(job.wait())
    assert (rep["size"], rep["iters"]) == (size, BW_ITERS) and rep["bw_avg"] > 0, rep
    got = perftest_row(out, size)
    if test != "send":  # the tool prints the report we sent; for send its own measurement
        assert abs(got - rep["bw_avg"]) < 0.01 + rep["bw_avg"] * 0.01, (got, rep)
    if test in ("read", "atomic", "compare_swap"):  # its random bytes (or old values) landed
        assert (buf[:size] != 0xAA).any()


UD_BW = "ib_send_bw -c UD -s 1024"
"""perftest's send test over UD: one 1024-byte packet per message (the segment's path MTU)."""


def test_perftest_ud_send_tool_client_against_the_engine(
    rig: tuple[RxeVm, L2Segment, rdma.Context],
) -> None:
    vm, seg, ctx = rig
    port = 18826
    cq, pd = ctx.create_cq(512), ctx.alloc_pd()
    qp = pd.create_qp("UD", cq, max_recv_wr=256)
    buf = np.full(1 << 16, 0xAA, dtype=np.uint8)
    mr = pd.register(buf)
    qp.init()
    job = tool_client(vm, f"{UD_BW} {TOOL} -x 1 -F -n {BW_ITERS} -p {port}", seg.host_ip)
    rep = qp.perftest_serve(mr, port, timeout=120, test="send", cq=cq, size=1024,
                            iterations=BW_ITERS, rx_depth=BW_ITERS)  # fmt: skip
    out = ok(job.wait())
    # every receive was posted before the tool started sending, but UD may still drop a message
    # (at a full AF_XDP RX ring, counted by the engine): most must come, none twice
    assert rep["size"] == 1024 and 0.9 * BW_ITERS <= rep["iters"] <= BW_ITERS, (rep, out)
    assert rep["bw_avg"] > 0, rep
    assert perftest_row(out, 1024) >= 0
    assert (buf[40 : 40 + 1024] != 0xAA).any(), "the tool's payload landed after the GRH"
    # RoCEv2 over IPv4: the GRH's room holds the packet's IPv4 header in its last 20 bytes
    grh = bytes(buf[:40])
    assert grh[20] == 0x45 and grh[32:36] == socket.inet_aton(seg.guest_ip), grh.hex()


def test_engine_ud_send_client_against_the_perftest_tool(
    rig: tuple[RxeVm, L2Segment, rdma.Context],
) -> None:
    vm, seg, ctx = rig
    port = 18827
    cq, pd = ctx.create_cq(512), ctx.alloc_pd()
    qp = pd.create_qp("UD", cq)
    mr = pd.register(np.arange(1 << 16, dtype=np.uint16).view(np.uint8))
    # perftest's server posts its receives (-r, 512 by default) before the client may start
    job = vm.start(f"{UD_BW} {TOOL} -x 1 -F -n {BW_ITERS} -p {port}", timeout=180)
    rep = qp.perftest_send_bw(cq, mr, seg.guest_ip, port, size=1024, iterations=BW_ITERS,
                              timeout=120)  # fmt: skip
    out = ok(job.wait())
    assert (rep["size"], rep["iters"]) == (1024, BW_ITERS) and rep["bw_avg"] > 0, rep
    assert perftest_row(out, 1024) >= 0, out


# --- kbypass.rdma on both sides ----------------------------------------------------------------


def test_python_engine_and_rxe_both_directions(
    rig: tuple[RxeVm, L2Segment, rdma.Context],
) -> None:
    vm, seg, ctx = rig
    port = 18830
    script = Path(peer.__file__)
    job = vm.start([sys.executable, str(script), str(port)], cwd=script.parent, timeout=240)
    cq, pd = ctx.create_cq(64), ctx.alloc_pd()
    qp = pd.create_qp("RC", cq)
    buf = peer.pattern(peer.HOST_SEED)
    buf[peer.CS1 : peer.CS1 + 8] = 0  # the VM's compare-and-swap expects 0 there
    orig = buf.copy()
    mr = pd.register(buf)
    qp.init()
    qp.post_recv(mr, offset=40000, length=4096, wr_id=77)
    deadline = time.monotonic() + 120
    while True:
        try:
            conn = socket.create_connection((seg.guest_ip, port), timeout=5)
            break
        except OSError:
            assert time.monotonic() < deadline and not job.done(), "the VM peer never listened"
            time.sleep(0.3)
    with conn:
        conn.settimeout(120)
        conn.sendall(qp.endpoint(psn=0x5566, mr=mr).to_bytes())
        vm_ep = rdma.Endpoint.from_bytes(peer.recv_exact(conn, 52))
        qp.connect(vm_ep, psn=0x5566)
        assert vm_ep.gid == f"::ffff:{seg.guest_ip}" and qp.state == 3
        # 1. the VM's rxe is the requester
        conn.sendall(b"go1")
        reply = peer.recv_exact(conn, 3 + 32 + 16)
        assert reply[:3] == b"ok1", reply
        theirs = peer.pattern(peer.VM_SEED)
        w0, w1 = peer.W1
        assert (buf[w0:w1] == theirs[w0:w1]).all(), "the VM's write did not land"
        r0, r1 = peer.R1
        assert reply[3:35] == hashlib.sha256(orig[r0:r1].tobytes()).digest(), "read"
        old = np.frombuffer(reply[35:51], dtype="<u8")
        assert int(old[0]) == peer.word(orig, peer.FA1) and int(old[1]) == 0, old
        assert peer.word(buf, peer.FA1) == (peer.word(orig, peer.FA1) + peer.ADD1) % (1 << 64)
        assert peer.word(buf, peer.CS1) == peer.SWAP1
        wc = wait_wcs(cq)[0]
        s0, s1 = peer.SEND1
        assert (wc.wr_id, wc.imm, wc.byte_len) == (77, peer.IMM1, s1 - s0), wc
        assert (buf[40000 : 40000 + s1 - s0] == theirs[s0:s1]).all()
        # 2. the engine is the requester
        w0, w1 = peer.W2
        qp.write(mr, vm_ep.addr + w0, vm_ep.rkey, offset=w0, length=w1 - w0, wr_id=1)
        r0, r1 = peer.R2
        qp.read(mr, vm_ep.addr + r0, vm_ep.rkey, offset=56000, length=r1 - r0, wr_id=2)
        qp.fetch_add(mr, vm_ep.addr + peer.FA2, vm_ep.rkey, add=peer.ADD2, offset=64000, wr_id=3)
        s0, s1 = peer.SEND2
        qp.send(mr, offset=s0, length=s1 - s0, imm=peer.IMM2, wr_id=4)
        wait_wcs(cq, 4)
        assert (buf[56000 : 56000 + r1 - r0] == theirs[r0:r1]).all(), "our read"
        assert peer.word(buf, 64000) == peer.word(theirs, peer.FA2)
        conn.sendall(b"go2")
        verdict = conn.recv(200)
        assert verdict == b"ok2", verdict
    out = ok(job.wait())
    assert "responder side: ok" in out, out
    counters = ctx.engine_counters()
    assert counters["bad_icrc"] == 0 and counters["malformed"] == 0, counters
