"""kbypass.rdma on the user-space RoCEv2 engine: two engine contexts on a veth pair.

No RDMA in the kernel is needed (nor used): ``Context.userspace`` runs the verbs objects over an
AF_XDP socket. Each test opens its two contexts in the namespaces of a veth pair the module
creates (198.18.0.0/15) and closes them; root only (AF_XDP, XDP, namespaces).
"""

from __future__ import annotations

import errno
import gc
import os
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from engines import engine_pair

from kbypass import rdma
from kbypass.testing import VethPair, in_thread

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the engine needs root (AF_XDP, XDP, network namespaces)"
)


@pytest.fixture(scope="module")
def pair() -> Iterator[VethPair]:
    with VethPair(subnet="198.18.41") as p:
        yield p


@pytest.fixture
def ctxs(pair: VethPair) -> Iterator[tuple[rdma.Context, rdma.Context]]:
    with engine_pair(pair) as both:
        yield both
    # closing them closed everything made from them: no engine is left for the next test
    assert not [d.name for d in rdma.devices() if d.userspace]


# Completions a poll returned beyond what its caller waited for, kept for the next wait on the
# same CQ (a send's and the next receive's completions can come in one poll).
_early: weakref.WeakKeyDictionary[rdma.CompletionQueue, list[Any]] = weakref.WeakKeyDictionary()


def wait_wcs(cq: rdma.CompletionQueue, n: int = 1, timeout: float = 10) -> list[Any]:
    """The next `n` completions of `cq` in order (any polled beyond them wait for the next call)."""
    out: list[Any] = _early.pop(cq, [])
    deadline = time.monotonic() + timeout
    while len(out) < n:
        out += cq.poll(16)
        assert time.monotonic() < deadline, f"only {len(out)} of {n} completions: {out}"
    if len(out) > n:
        _early[cq] = out[n:]
    return out[:n]


class Conn:
    """Two connected QPs, one per context, each with its CQ and PD."""

    def __init__(self, a: rdma.Context, b: rdma.Context, qp_type: str = "RC") -> None:
        self.cqa, self.cqb = a.create_cq(256), b.create_cq(256)
        self.pda, self.pdb = a.alloc_pd(), b.alloc_pd()
        self.qa = self.pda.create_qp(qp_type, self.cqa)
        self.qb = self.pdb.create_qp(qp_type, self.cqb)
        if qp_type == "UD":
            self.qa.connect()
            self.qb.connect()
        else:
            self.qa.connect(self.qb.endpoint(psn=0x22), psn=0x11)
            self.qb.connect(self.qa.endpoint(psn=0x11), psn=0x22)


def test_context_is_listed_and_answers_queries(
    pair: VethPair, ctxs: tuple[rdma.Context, rdma.Context]
) -> None:
    a, _ = ctxs
    assert (a.name, a.is_userspace, a.interface) == ("kbx-veth0", True, "veth0")
    assert a.gid() == f"::ffff:{pair.a.ip}" and a.default_gid_index() == 0
    port = a.query_port()
    assert (port.state, port.link_layer, port.gid_tbl_len) == (4, "Ethernet", 1)
    assert 256 <= port.active_mtu <= 4096
    listed = {d.name: d for d in rdma.devices() if d.userspace}
    assert set(listed) == {"kbx-veth0", "kbx-veth1"}, listed
    assert listed["kbx-veth1"].interface == "veth1"
    other = rdma.Context("kbx-veth0")  # another handle on the open engine
    assert other.is_userspace and other.gid() == a.gid()
    pd = other.alloc_pd()
    other.close()  # closes what was made from it, like the first handle
    with pytest.raises(RuntimeError, match="closed"):
        pd.context()
    assert a.engine_counters()["bad_icrc"] == 0


def test_rc_send_write_read_and_atomics(ctxs: tuple[rdma.Context, rdma.Context]) -> None:
    a, b = ctxs
    c = Conn(a, b)
    pda, pdb, qa, qb, cqa, cqb = c.pda, c.pdb, c.qa, c.qb, c.cqa, c.cqb
    assert qa.context() is a and pdb.context() is b and qa.state == 3
    src = np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8)
    here, there = np.zeros(20000, dtype=np.uint8), np.zeros(20000, dtype=np.uint8)
    msrc, mhere, mthere = pda.register(src), pda.register(here), pdb.register(there)
    # send with immediate data into a posted receive
    qb.post_recv(mthere, wr_id=7)
    qa.send(msrc, length=3000, wr_id=1, imm=0xABCD)
    wcs = wait_wcs(cqb)
    assert (wcs[0].wr_id, wcs[0].byte_len, wcs[0].imm) == (7, 3000, 0xABCD), wcs
    assert wait_wcs(cqa)[0].status_name == "SUCCESS"
    assert (there[:3000] == src[:3000]).all()
    # a multi-packet RDMA write, then a read of it back
    qa.write(msrc, mthere.addr, mthere.rkey, wr_id=2)
    assert wait_wcs(cqa)[0].status_name == "SUCCESS" and (there == src).all()
    qa.read(mhere, mthere.addr, mthere.rkey, wr_id=3)
    wc = wait_wcs(cqa)[0]
    assert (wc.status_name, wc.opcode) == ("SUCCESS", rdma.Opcode.RDMA_READ)
    assert (here == src).all()
    # atomics on an 8-byte word of the peer's region
    there[:8] = 0
    words = there[:8].view(np.uint64)
    qa.fetch_add(mhere, mthere.addr, mthere.rkey, add=5, wr_id=4)
    wait_wcs(cqa)[0].check()
    qa.compare_swap(mhere, mthere.addr, mthere.rkey, compare=5, swap=99, offset=8, wr_id=5)
    wait_wcs(cqa)[0].check()
    assert int(words[0]) == 99 and int(here[8:16].view(np.uint64)[0]) == 5
    # a bad rkey is the peer's refusal, not a crash
    qa.write(msrc, mthere.addr, mthere.rkey ^ 0x100, length=8, wr_id=6)
    wc = wait_wcs(cqa)[0]
    assert rdma.Status(wc.status) is rdma.Status.REM_ACCESS_ERR, wc.status_name
    with pytest.raises(rdma.CompletionError):
        wc.check()


def test_uc_write_and_ud_send_with_address_handle(
    ctxs: tuple[rdma.Context, rdma.Context],
) -> None:
    a, b = ctxs
    uc, ud = Conn(a, b, "UC"), Conn(a, b, "UD")
    src = np.arange(256, dtype=np.uint8)
    dst = np.zeros(256 + 40, dtype=np.uint8)
    msrc, mdst = uc.pda.register(src), uc.pdb.register(dst)
    uc.qa.write(msrc, mdst.addr, mdst.rkey, length=100)
    assert wait_wcs(uc.cqa)[0].status_name == "SUCCESS"
    deadline = time.monotonic() + 5
    while not (dst[:100] == src[:100]).all():
        assert time.monotonic() < deadline, "the UC write did not land"
    usrc, udst = ud.pda.register(src), ud.pdb.register(dst)
    ud.qb.post_recv(udst, wr_id=9)
    ah = ud.pda.create_ah(ud.qb.endpoint())
    ud.qa.send(usrc, length=200, ah=ah, remote_qpn=ud.qb.qp_num, wr_id=3)
    wc = wait_wcs(ud.cqb)[0]
    assert (wc.wr_id, wc.byte_len, wc.src_qp) == (9, 240, ud.qa.qp_num), wc
    assert (dst[40:240] == src[:200]).all()  # after the 40-byte GRH, as verbs places it
    assert wait_wcs(ud.cqa)[0].status_name == "SUCCESS"


def test_pingpong_between_engines(pair: VethPair, ctxs: tuple[rdma.Context, rdma.Context]) -> None:
    a, b = ctxs
    size, iters = 2048, 20

    def side(ctx: rdma.Context) -> tuple[Any, Any, Any, Any]:
        cq, pd = ctx.create_cq(64), ctx.alloc_pd()
        qp = pd.create_qp("RC", cq)
        buf = np.zeros(2 * size, dtype=np.uint8)
        mr = pd.register(buf)
        qp.init()
        for k in range(4):
            qp.post_recv(mr, length=size, wr_id=100 + k)
        return cq, qp, mr, buf

    cqa, qa, mra, bufa = side(a)
    cqb, qb, mrb, bufb = side(b)
    bufb[size:] = 0x5A

    def serve() -> None:
        qa.pingpong_accept(port=18700, psn=0x77, timeout=30)
        for i in range(iters):  # echo every message back
            assert wait_wcs(cqa)[0].opcode == rdma.Opcode.RECV
            qa.post_recv(mra, length=size, wr_id=200 + i)
            bufa[size:] = bufa[:size]
            qa.send(mra, offset=size, length=size, wr_id=i)
            wait_wcs(cqa)[0].check()

    join = in_thread(pair, "a", serve)
    try:  # the server thread is joined whatever happens here (it holds the engine's QP)
        with pair.enter("b"):
            remote = qb.pingpong_connect(pair.a.ip, port=18700, psn=0x88, timeout=30)
        assert remote.gid == a.gid() and remote.qpn == qa.qp_num
        for i in range(iters):
            qb.send(mrb, offset=size, length=size, wr_id=i)
            got = sorted(wait_wcs(cqb, 2), key=lambda w: w.opcode)
            assert [w.status_name for w in got] == ["SUCCESS", "SUCCESS"], got
            qb.post_recv(mrb, length=size, wr_id=300 + i)
    finally:
        join()
    assert (bufb[:size] == 0x5A).all()


@pytest.mark.parametrize("test", ["write", "read", "send", "atomic"])
def test_perftest_between_engines(
    pair: VethPair, ctxs: tuple[rdma.Context, rdma.Context], test: str
) -> None:
    a, b = ctxs
    port, size, iters = 18710 + ["write", "read", "send", "atomic"].index(test), 4096, 300
    cqa, cqb = a.create_cq(256), b.create_cq(256)
    pa, pb = a.alloc_pd(), b.alloc_pd()
    qa, qb = pa.create_qp("RC", cqa), pb.create_qp("RC", cqb)
    rng = np.random.default_rng(2)
    bufa = rng.integers(0, 256, 1 << 16, dtype=np.uint8)
    bufb = rng.integers(0, 256, 1 << 16, dtype=np.uint8)
    if test == "atomic":
        bufa[:] = 0
    mra, mrb = pa.register(bufa), pb.register(bufb)
    if test == "send":
        qa.init()
    serve = in_thread(
        pair,
        "a",
        lambda: qa.perftest_serve(
            mra, port, timeout=30, test=test, cq=cqa, size=size, iterations=iters
        ),
    )
    try:
        with pair.enter("b"):
            client = {
                "write": qb.perftest_write_bw,
                "read": qb.perftest_read_bw,
                "send": qb.perftest_send_bw,
            }
            if test == "atomic":
                rep = qb.perftest_atomic_bw(cqb, mrb, pair.a.ip, port, iterations=iters)
            else:
                rep = client[test](cqb, mrb, pair.a.ip, port, size=size, iterations=iters)
    finally:
        theirs = serve()
    want = 8 if test == "atomic" else size
    assert (rep["size"], rep["iters"]) == (want, iters) and rep["bw_avg"] > 0, rep
    assert (theirs["size"], theirs["iters"]) == (want, iters), theirs
    if test == "atomic":  # fetch-and-adds of 1 on the server's first word, old values back
        assert int(bufa[:8].view(np.uint64)[0]) == iters == int(bufa.view(np.uint64).sum())
        assert int(bufb[:8].view(np.uint64)[0]) == iters - 1
    else:  # writes and sends landed at the server's start, reads at the client's
        assert (bufa[:size] == bufb[:size]).all()


def test_perftest_send_over_ud_between_engines(
    pair: VethPair, ctxs: tuple[rdma.Context, rdma.Context]
) -> None:
    """``ib_send_bw -c UD`` between engines: one packet per message (at most the path MTU),
    sent through an address handle with perftest's Q_Key; each receive takes the GRH first."""
    a, b = ctxs
    port, size, iters = 18716, 1024, 200  # every receive posted before the client starts
    cqa, cqb = a.create_cq(256), b.create_cq(256)
    pa, pb = a.alloc_pd(), b.alloc_pd()
    qa = pa.create_qp("UD", cqa, max_recv_wr=256)
    qb = pb.create_qp("UD", cqb)
    bufa = np.zeros(1 << 16, dtype=np.uint8)
    bufb = np.random.default_rng(3).integers(0, 256, 1 << 16, dtype=np.uint8)
    mra, mrb = pa.register(bufa), pb.register(bufb)
    qa.init()
    serve = in_thread(
        pair, "a",
        lambda: qa.perftest_serve(
            mra, port, timeout=30, test="send", cq=cqa, size=size, iterations=iters, rx_depth=iters
        ),
    )  # fmt: skip
    try:
        with pair.enter("b"):
            rep = qb.perftest_send_bw(cqb, mrb, pair.a.ip, port, size=size, iterations=iters)
    finally:
        theirs = serve()
    assert (rep["size"], rep["iters"]) == (size, iters) and rep["bw_avg"] > 0, rep
    assert (theirs["size"], theirs["iters"]) == (size, iters) and theirs["bw_avg"] > 0, theirs
    assert (bufa[40 : 40 + size] == bufb[:size]).all(), "the payload lands after the GRH"
    assert bufa[:40].any(), "the GRH is there"
    # A UD message larger than the path MTU (1024 on this 1500-byte link) is refused.
    qa2, qb2 = pa.create_qp("UD", cqa), pb.create_qp("UD", cqb)
    qa2.init()
    serve = in_thread(
        pair, "a", lambda: qa2.perftest_serve(mra, port + 1, timeout=10, test="send", cq=cqa,
                                               size=size, iterations=10),
    )  # fmt: skip
    try:
        with pair.enter("b"), pytest.raises(ValueError, match="one packet"):
            qb2.perftest_send_bw(cqb, mrb, pair.a.ip, port + 1, size=4096, iterations=10)
    finally:
        with pytest.raises((OSError, TimeoutError)):
            serve()


def test_two_rc_qps_on_one_srq(ctxs: tuple[rdma.Context, rdma.Context]) -> None:
    a, b = ctxs
    cqa, cqb = a.create_cq(64), b.create_cq(64)
    pda, pdb = a.alloc_pd(), b.alloc_pd()
    srq = pdb.create_srq(max_wr=16, max_sge=1)
    # two receivers on b share the SRQ, each fed by its own sender on a
    senders = [pda.create_qp("RC", cqa) for _ in range(2)]
    receivers = [pdb.create_qp("RC", cqb, srq=srq) for _ in range(2)]
    for k, (qa, qb) in enumerate(zip(senders, receivers, strict=True)):
        qa.connect(qb.endpoint(psn=0x100 + k), psn=0x200 + k)
        qb.connect(qa.endpoint(psn=0x200 + k), psn=0x100 + k)
    src = np.repeat(np.arange(1, 5, dtype=np.uint8), 512)  # message k is 512 bytes of k+1
    dst = np.zeros(8 * 512, dtype=np.uint8)
    msrc, mdst = pda.register(src), pdb.register(dst)
    for i in range(8):
        srq.post_recv(mdst, offset=512 * i, length=512, wr_id=i)
    assert srq.posted == 8
    srq.set_limit(5)
    assert not srq.limit_reached()
    for k in range(4):  # alternate the two connections
        senders[k % 2].send(msrc, offset=512 * k, length=512, wr_id=k)
    recv = wait_wcs(cqb, 4)
    assert all(wc.status_name == "SUCCESS" and wc.byte_len == 512 for wc in recv), recv
    # both QPs took receives from the one pool, in posting order
    assert {wc.qp_num for wc in recv} == {q.qp_num for q in receivers}, recv
    assert sorted(wc.wr_id for wc in recv) == [0, 1, 2, 3]
    landed: set[int] = set()
    for wc in recv:  # each message landed whole where its receive pointed
        slot = dst[512 * wc.wr_id : 512 * (wc.wr_id + 1)]
        assert (slot == slot[0]).all(), wc
        landed.add(int(slot[0]))
    assert landed == {1, 2, 3, 4}
    assert srq.posted == 4
    # 8 posted, limit 5: the take that left 4 raised the event, once
    assert srq.limit_reached() and not srq.limit_reached()
    # the engine raises no asynchronous events: the limit came through limit_reached()
    assert b.async_events() == {}
    assert all(wc.status_name == "SUCCESS" for wc in wait_wcs(cqa, 4))
    with pytest.raises(ValueError, match="SGEs"):
        srq.post_recv(mdst, length=8, sg=[(mdst, 8, 8)])
    with pytest.raises(RuntimeError, match="post them to the SRQ"):  # no queue of its own
        receivers[0].post_recv(mdst, length=8)


def test_ud_qp_on_an_srq(ctxs: tuple[rdma.Context, rdma.Context]) -> None:
    a, b = ctxs
    cqa, cqb = a.create_cq(16), b.create_cq(16)
    pda, pdb = a.alloc_pd(), b.alloc_pd()
    srq = pdb.create_srq(4)
    qa, qb = pda.create_qp("UD", cqa), pdb.create_qp("UD", cqb, srq=srq)
    qa.connect()
    qb.connect()
    src, dst = np.arange(256, dtype=np.uint8), np.zeros(296, dtype=np.uint8)
    msrc, mdst = pda.register(src), pdb.register(dst)
    srq.post_recv(mdst, wr_id=5)
    ah = pda.create_ah(qb.endpoint())
    qa.send(msrc, length=200, ah=ah, remote_qpn=qb.qp_num, wr_id=1)
    wc = wait_wcs(cqb)[0]
    assert (wc.wr_id, wc.byte_len, wc.qp_num, wc.src_qp) == (5, 240, qb.qp_num, qa.qp_num), wc
    assert (dst[40:240] == src[:200]).all() and srq.posted == 0
    assert wait_wcs(cqa)[0].status_name == "SUCCESS"


def test_an_empty_srq_makes_the_sender_retry_until_a_receive_is_posted(
    ctxs: tuple[rdma.Context, rdma.Context],
) -> None:
    a, b = ctxs
    cqa, cqb = a.create_cq(16), b.create_cq(16)
    pda, pdb = a.alloc_pd(), b.alloc_pd()
    srq = pdb.create_srq(4)
    qa, qb = pda.create_qp("RC", cqa), pdb.create_qp("RC", cqb, srq=srq)
    qa.connect(qb.endpoint(psn=1), psn=2)  # rnr_retry 7: retry for ever
    qb.connect(qa.endpoint(psn=2), psn=1)
    src, dst = np.full(100, 7, dtype=np.uint8), np.zeros(100, dtype=np.uint8)
    msrc, mdst = pda.register(src), pdb.register(dst)
    qa.send(msrc, wr_id=1)
    deadline = time.monotonic() + 10
    while b.engine_counters()["rnr_naks_sent"] < 2:  # the SRQ is empty: RNR NAKs, retries
        assert time.monotonic() < deadline, b.engine_counters()
        time.sleep(0.01)
    assert cqa.poll(4) == [] and cqb.poll(4) == []
    assert a.engine_counters()["rnr_naks_received"] >= 2
    srq.post_recv(mdst, wr_id=9)
    wc = wait_wcs(cqb)[0]
    assert (wc.wr_id, wc.byte_len, wc.qp_num) == (9, 100, qb.qp_num), wc
    assert wait_wcs(cqa)[0].status_name == "SUCCESS" and (dst == 7).all()


def test_to_reset_then_reconnect(ctxs: tuple[rdma.Context, rdma.Context]) -> None:
    a, b = ctxs
    c = Conn(a, b)
    src = np.arange(256, dtype=np.uint8)
    dst = np.zeros(256, dtype=np.uint8)
    msrc, mdst = c.pda.register(src), c.pdb.register(dst)
    for rnd in range(2):
        c.qb.post_recv(mdst, wr_id=rnd)
        c.qa.send(msrc, length=128 * (rnd + 1), wr_id=10 + rnd)
        wc = wait_wcs(c.cqb)[0]
        assert (wc.wr_id, wc.byte_len) == (rnd, 128 * (rnd + 1)), wc
        assert wait_wcs(c.cqa)[0].status_name == "SUCCESS"
        assert (dst[: 128 * (rnd + 1)] == src[: 128 * (rnd + 1)]).all()
        dst[:] = 0
        # a receive left posted is discarded by the reset, without a completion
        c.qb.post_recv(mdst, wr_id=99)
        c.qa.to_reset()
        c.qb.to_reset()
        assert (c.qa.state, c.qb.state) == (0, 0)
        assert c.cqa.poll(4) == [] and c.cqb.poll(4) == []
        # new PSNs, as after any reset
        c.qa.connect(c.qb.endpoint(psn=0x500 + rnd), psn=0x600 + rnd)
        c.qb.connect(c.qa.endpoint(psn=0x600 + rnd), psn=0x500 + rnd)
        assert (c.qa.state, c.qb.state) == (3, 3)


def test_verbs_only_calls_say_what_is_supported(
    pair: VethPair, ctxs: tuple[rdma.Context, rdma.Context]
) -> None:
    a, b = ctxs
    pd, cq = a.alloc_pd(), a.create_cq(16)
    qp = pd.create_qp("RC", cq)
    with pytest.raises(OSError) as e:
        qp.cm_connect(pair.b.ip)
    assert e.value.errno == errno.EOPNOTSUPP, e.value
    assert "user-space" in str(e.value), e.value
    ud = pd.create_qp("UD", cq)
    with pytest.raises(OSError, match="over UD") as e:
        ud.perftest_write_bw(cq, pd.register(bytearray(64)), pair.b.ip, 18799, size=64)
    assert e.value.errno == errno.EOPNOTSUPP
    with pytest.raises(ValueError, match="one GID"):
        a.gid(index=1)
    with pytest.raises(ValueError, match=r"belongs to another (context|engine)"):
        pd.create_qp("RC", b.create_cq(4))
    with pytest.raises(ValueError, match="not an IP address"):
        rdma.Context.userspace("veth0", ip="nope", netns=pair.a.netns)
    with pytest.raises(ValueError, match="progress"):
        rdma.Context.userspace("veth0", ip=pair.a.ip, netns=pair.a.netns, progress="sometimes")
    with pytest.raises(OSError):
        rdma.Context.userspace("kbx-none0", ip=pair.a.ip, netns=pair.a.netns)
    with pytest.raises(FileNotFoundError):
        rdma.Context("kbx-none0")  # no such user-space context open (nor device)


def xdp_attached(pair: VethPair, side: str) -> bool:
    out = pair.run(side, "ip", "-d", "link", "show", "dev", pair._end(side).ifname).stdout
    return "prog/xdp" in out or " xdp" in out


def test_close_releases_the_engine_and_its_children(pair: VethPair) -> None:
    a = rdma.Context.userspace(pair.a.ifname, ip=pair.a.ip, netns=pair.a.netns)
    try:
        assert xdp_attached(pair, "a")
        pd, cq = a.alloc_pd(), a.create_cq(8)
        qp, mr = pd.create_qp("RC", cq), pd.register(bytearray(64))
    finally:
        a.close()  # closes pd, cq, qp and mr first, then the engine goes
    for call in (lambda: qp.qp_num, lambda: mr.rkey, lambda: cq.poll(), lambda: pd.context()):
        with pytest.raises(RuntimeError, match="closed"):
            call()
    assert not [d for d in rdma.devices() if d.userspace]
    assert not xdp_attached(pair, "a")

    # a PD no Python name holds any more still has its QP and MR closed with the context
    def from_a_dropped_pd(ctx: rdma.Context) -> tuple[Any, Any]:
        pd = ctx.alloc_pd()
        return pd.create_qp("RC", ctx.create_cq(4)), pd.register(bytearray(64))

    b = rdma.Context.userspace(pair.a.ifname, ip=pair.a.ip, netns=pair.a.netns)
    qp3, mr3 = from_a_dropped_pd(b)
    gc.collect()
    b.close()
    for call in (lambda: qp3.qp_num, lambda: mr3.rkey):
        with pytest.raises(RuntimeError, match="closed"):
            call()
    assert not [d for d in rdma.devices() if d.userspace]
    assert not xdp_attached(pair, "a")
    # dropped without close(): the engine goes with the last object
    again = rdma.Context.userspace(pair.a.ifname, ip=pair.a.ip, netns=pair.a.netns)
    qp2 = again.alloc_pd().create_qp("UD", again.create_cq(4))
    del again
    gc.collect()
    assert xdp_attached(pair, "a")  # the QP still holds it
    del qp2
    gc.collect()
    assert not xdp_attached(pair, "a")


def test_a_closed_regions_memory_is_let_go_by_the_poll_thread_without_the_gil(
    ctxs: tuple[rdma.Context, rdma.Context],
) -> None:
    # The receive keeps the memory of a region closed (and unreferenced) before it completed;
    # the poll thread completes it under the engine's lock and lets go of the memory there,
    # while this thread holds the GIL and takes that lock (reading the counters): letting go
    # must not wait for the GIL.
    a, b = ctxs
    c = Conn(a, b)
    for round_ in range(5):
        dst = bytearray(256)
        mdst = c.pdb.register(dst)
        c.qb.post_recv(mdst, wr_id=round_)
        mdst.close()
        del mdst, dst
        gc.collect()
        src = bytearray(b"x" * 256)
        msrc = c.pda.register(src)
        c.qa.send(msrc, wr_id=round_)
        deadline = time.monotonic() + 10
        got: list[Any] = []
        while not got:  # take b's engine lock, GIL held, while the receive completes there
            b.engine_counters()
            got = c.cqb.poll(4)
            assert time.monotonic() < deadline, "the receive never completed"
        assert got[0].status_name == "SUCCESS" and got[0].byte_len == 256
        assert wait_wcs(c.cqa)[0].status_name == "SUCCESS"


def test_caller_progress(pair: VethPair) -> None:
    a = rdma.Context.userspace(
        pair.a.ifname, ip=pair.a.ip, netns=pair.a.netns, progress="caller", ring_size=256,
        frames=1024,
    )  # fmt: skip
    b = rdma.Context.userspace(pair.b.ifname, ip=pair.b.ip, netns=pair.b.netns)
    with a, b:
        c = Conn(a, b)
        src = bytearray(b"kbypass" * 100)
        dst = bytearray(len(src))
        msrc, mdst = c.pda.register(src), c.pdb.register(dst)
        c.qa.write(msrc, mdst.addr, mdst.rkey)
        assert wait_wcs(c.cqa)[0].status_name == "SUCCESS"  # these polls ran engine a
        assert dst == src


def test_ipv6_engines() -> None:
    with VethPair(subnet="198.18.42", ipv6=True) as p:
        for end in (p.a, p.b):
            p.run(end, "ip", "addr", "add", f"fd00:c612::{end.ip.rsplit('.', 1)[1]}/64", "dev",
                  end.ifname, "nodad")  # fmt: skip
        ip_a, ip_b = "fd00:c612::1", "fd00:c612::2"
        a = rdma.Context.userspace(p.a.ifname, ip=ip_a, netns=p.a.netns)
        b = rdma.Context.userspace(p.b.ifname, ip=ip_b, netns=p.b.netns)
        with a, b:
            assert a.gid() == ip_a
            cqa, cqb = a.create_cq(16), b.create_cq(16)
            pa, pb = a.alloc_pd(), b.alloc_pd()
            qa, qb = pa.create_qp("RC", cqa), pb.create_qp("RC", cqb)
            qa.connect(qb.endpoint(psn=1), psn=2)
            qb.connect(qa.endpoint(psn=2), psn=1)
            src, dst = bytearray(os.urandom(5000)), bytearray(5000)
            ms, md = pa.register(src), pb.register(dst)
            qa.write(ms, md.addr, md.rkey)
            assert wait_wcs(cqa)[0].status_name == "SUCCESS" and dst == src
    assert p.closed


def test_readme_example() -> None:
    """The README's "RDMA on a host without RDMA" example, run as written."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    marker = "tested by tests/rdma/test_userspace.py::test_readme_example"
    block = readme.split(marker, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "Context.userspace" in block and len(block.splitlines()) <= 16, block
    exec(compile(block, "README.md", "exec"), {})
    assert not [d for d in rdma.devices() if d.userspace]


def test_a_busy_queue_is_retried_for_two_seconds(pair: VethPair) -> None:
    first = rdma.Context.userspace(pair.a.ifname, ip=pair.a.ip, netns=pair.a.netns)
    t0 = time.monotonic()
    try:
        with pytest.raises(OSError) as e:
            rdma.Context.userspace(pair.a.ifname, ip=pair.a.ip, netns=pair.a.netns)
    except BaseException:
        first.close()
        raise
    assert e.value.errno == errno.EBUSY and 1.9 < time.monotonic() - t0 < 10, e.value
    # the queue frees while a second open retries: that open succeeds
    threading.Timer(0.5, first.close).start()
    second = rdma.Context.userspace(pair.a.ifname, ip=pair.a.ip, netns=pair.a.netns)
    assert second.is_userspace and 0.4 < time.monotonic() - t0 - 2 < 5
    second.close()


def test_engine_options_from_python(pair: VethPair) -> None:
    where = {"ip": pair.a.ip, "netns": pair.a.netns}
    with rdma.Context.userspace(
        pair.a.ifname, **where, cpu=0, frames=1024, frame_size=2048, ring_size=256, bind="copy",
        attach="generic", neigh_timeout=1.0, spin=1e-4,
    ) as ctx:  # fmt: skip
        assert ctx.is_userspace and isinstance(ctx.notes, list)
        assert ctx.query_port().active_mtu <= 1024  # a 2048-byte frame caps the path MTU
    for bad, what in (
        ({"ring_size": 100}, "power of two"),
        ({"frames": 64, "ring_size": 64}, "twice"),
        ({"bind": "sideways"}, "bind|mode"),
        ({"progress": "caller", "cpu": 0}, "cpu"),
        ({"neigh_timeout": -1.0}, "timeout"),
        ({"spin": -1.0}, "spin"),
        ({"progress": "caller", "spin": 1e-4}, "spin"),
    ):
        with pytest.raises(ValueError, match=what):
            rdma.Context.userspace(pair.a.ifname, **where, **bad)  # type: ignore[arg-type]
    assert not [d for d in rdma.devices() if d.userspace]


@pytest.mark.parametrize(
    "opts",
    [{"spin": 2e-4}, {"busy_poll": True}, {"busy_poll": True, "progress": "caller"}],
    ids=["spin", "busy_poll", "busy_poll_caller"],
)
def test_polling_options_move_data(pair: VethPair, opts: dict[str, Any]) -> None:
    """With ``spin`` the poll threads poll on after their last work instead of sleeping at
    once; with ``busy_poll`` the kernel busy-polls the queue from the polling thread, which
    never sleeps (or from the caller's polls). Data moves as it does without, and a closed
    engine's thread stops."""
    a = rdma.Context.userspace(pair.a.ifname, ip=pair.a.ip, netns=pair.a.netns, **opts)
    b = rdma.Context.userspace(pair.b.ifname, ip=pair.b.ip, netns=pair.b.netns, **opts)
    try:
        if opts.get("busy_poll"):  # veth has NAPI with an XDP program: the kernel takes them
            assert not [n for n in a.notes + b.notes if "busy polling" in n], a.notes + b.notes
        c = Conn(a, b)
        src = np.arange(1 << 14, dtype=np.uint32).view(np.uint8).copy()
        dst = np.zeros(1 << 16, np.uint8)
        ms, md = c.pda.register(src), c.pdb.register(dst)
        for i in range(20):
            c.qa.write(ms, md.addr, md.rkey, wr_id=i)
        if opts.get("progress") == "caller":  # only polls move a caller-progress engine
            got: list[Any] = []
            deadline = time.monotonic() + 10
            while len(got) < 20 and time.monotonic() < deadline:
                got += c.cqa.poll(16)
                c.cqb.poll(1)
        else:
            got = wait_wcs(c.cqa, 20)
        assert [w.status_name for w in got] == ["SUCCESS"] * 20 and (dst == src).all()
    finally:
        a.close()
        b.close()
    assert not [d for d in rdma.devices() if d.userspace]


def test_completion_channel_and_bulk_poll(ctxs: tuple[rdma.Context, rdma.Context]) -> None:
    a, b = ctxs
    cqa, cqb = a.create_cq(16, channel=True), b.create_cq(16)
    pa, pb = a.alloc_pd(), b.alloc_pd()
    qa, qb = pa.create_qp("RC", cqa), pb.create_qp("RC", cqb)
    qa.connect(qb.endpoint(psn=9), psn=8)
    qb.connect(qa.endpoint(psn=8), psn=9)
    src, dst = bytearray(b"x" * 512), bytearray(512)
    ms, md = pa.register(src), pb.register(dst)
    t0 = time.monotonic()
    assert cqa.wait(timeout=0.2) == [] and time.monotonic() - t0 >= 0.15  # nothing yet
    for i in range(3):
        qa.write(ms, md.addr, md.rkey, wr_id=40 + i)
    got: list[Any] = []
    while len(got) < 3:
        got += cqa.wait(timeout=10)  # sleeps on the engine's eventfd, GIL released
    assert [w.wr_id for w in got] == [40, 41, 42] and dst == src
    qa.write(ms, md.addr, md.rkey, length=8, wr_id=50)
    qa.write(ms, md.addr, md.rkey, length=8, wr_id=51)
    wcs = rdma.completion_array(8)
    n, deadline = 0, time.monotonic() + 10
    while n < 2:
        n += cqa.poll_into(wcs[n:])
        assert time.monotonic() < deadline
    assert list(wcs[:2]["wr_id"]) == [50, 51] and not wcs[:2]["status"].any()


@pytest.mark.parametrize(("link_mtu", "path_mtu"), [(3000, 2048), (9000, 4096)])
def test_perftest_runs_at_the_ports_active_mtu(link_mtu: int, path_mtu: int) -> None:
    """As perftest without ``-m``: the path MTU is the port's active MTU (2048 on a 3000-byte
    link; 4096 on a jumbo link, whose frames span two UMEM frames), so a 64 KiB write goes as
    64 KiB / path MTU packets, not 64 at the verbs default of 1024."""
    with VethPair(subnet="198.18.43", mtu=link_mtu) as p:
        a = rdma.Context.userspace(p.a.ifname, ip=p.a.ip, netns=p.a.netns)
        b = rdma.Context.userspace(p.b.ifname, ip=p.b.ip, netns=p.b.netns)
        try:
            assert a.query_port().active_mtu == b.query_port().active_mtu == path_mtu
            cqa, cqb = a.create_cq(256), b.create_cq(256)
            pa, pb = a.alloc_pd(), b.alloc_pd()
            qa, qb = pa.create_qp("RC", cqa), pb.create_qp("RC", cqb)
            bufa, bufb = np.zeros(1 << 16, np.uint8), np.full(1 << 16, 7, np.uint8)
            mra, mrb = pa.register(bufa), pb.register(bufb)
            serve = in_thread(
                p,
                "a",
                lambda: qa.perftest_serve(mra, 18719, timeout=30, size=1 << 16, iterations=20),
            )
            try:
                before = b.engine_counters()["tx_packets"]
                with p.enter("b"):
                    rep = qb.perftest_write_bw(cqb, mrb, p.a.ip, 18719, size=1 << 16, iterations=20)
                sent = b.engine_counters()["tx_packets"] - before
            finally:
                serve()
            assert rep["iters"] == 20 and (bufa == 7).all()
            per_message = (1 << 16) // path_mtu
            assert 20 * per_message <= sent < 20 * per_message + 20, sent
        finally:
            a.close()
            b.close()
